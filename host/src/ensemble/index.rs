//! The routing index: what every routable expert says about itself, as
//! sentence embeddings.
//!
//! Each expert contributes a few texts (its description with its tags, and
//! each example prompt), embedded once when it is loaded. The vectors are
//! cached on disk under a key made of the embedder's name, the component's
//! sha256 and the texts themselves, so a restart with a thousand unchanged
//! bundles embeds nothing, and any change to what a bundle says about
//! itself (or to the embedder) re-embeds it.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use sha2::Digest as _;

use crate::bindings::types::ExpertInfo;
use crate::inference::{ModelEngine, ModelError};

/// Environment variable that overrides the embedding cache directory.
pub const EMBEDDING_CACHE_ENV: &str = "TESSERA_EMBEDDING_CACHE";
/// Most example prompts of one expert that are embedded; later ones are
/// ignored by the router (they still show in `/v1/models`).
pub const MAX_EXAMPLES: usize = 32;
/// Longest text embedded for routing, in bytes; longer ones are cut.
pub const MAX_TEXT_BYTES: usize = 1024;

const CACHE_MAGIC: &[u8; 8] = b"TSEMB01\n";

/// One routable expert in the index.
#[derive(Debug)]
pub struct Entry {
    /// The expert's name.
    pub name: String,
    /// Its `routing.cost`.
    pub cost: u32,
    /// What it said about itself (handed to router plugins).
    pub info: ExpertInfo,
    /// `count` unit vectors of `dim` floats, one per text.
    vectors: Vec<f32>,
    dim: usize,
}

impl Entry {
    /// The best cosine similarity between `query` (a unit vector) and any
    /// of this expert's texts.
    pub fn score(&self, query: &[f32]) -> f32 {
        if self.dim != query.len() {
            return f32::NEG_INFINITY;
        }
        self.vectors
            .chunks_exact(self.dim)
            .map(|v| dot(v, query))
            .fold(f32::NEG_INFINITY, f32::max)
    }

    /// How many texts were embedded.
    pub fn texts(&self) -> usize {
        self.vectors.len() / self.dim.max(1)
    }
}

/// Dot product with eight independent partial sums, which the compiler
/// turns into SIMD (a plain iterator sum must add in order and does not
/// vectorise): the search over a thousand experts is ~5× faster.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a8
        .remainder()
        .iter()
        .zip(b8.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in a8.zip(b8) {
        for i in 0..8 {
            lanes[i] += x[i] * y[i];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// Counts of the index's work since start, for logs, metrics and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct IndexStats {
    /// Experts whose vectors came from the disk cache.
    pub from_cache: u64,
    /// Experts embedded with the model.
    pub embedded: u64,
    /// Texts embedded with the model.
    pub texts_embedded: u64,
}

/// The routing index of an ensemble.
#[derive(Default)]
pub struct RoutingIndex {
    entries: RwLock<BTreeMap<String, Arc<Entry>>>,
    cache_dir: RwLock<Option<PathBuf>>,
    from_cache: AtomicU64,
    embedded: AtomicU64,
    texts_embedded: AtomicU64,
}

impl RoutingIndex {
    /// Keep embeddings under `dir` (none are kept when never called).
    pub fn set_cache_dir(&self, dir: Option<PathBuf>) {
        *self.cache_dir.write().unwrap_or_else(|e| e.into_inner()) = dir;
    }

    /// The default cache directory: `$TESSERA_EMBEDDING_CACHE`, else the
    /// user's cache directory; `None` without either.
    pub fn default_cache_dir() -> Option<PathBuf> {
        crate::paths::user_dir(EMBEDDING_CACHE_ENV, dirs::cache_dir(), "embeddings")
    }

    /// What the index did since start.
    pub fn stats(&self) -> IndexStats {
        IndexStats {
            from_cache: self.from_cache.load(Ordering::Relaxed),
            embedded: self.embedded.load(Ordering::Relaxed),
            texts_embedded: self.texts_embedded.load(Ordering::Relaxed),
        }
    }

    /// Every routable expert, by name.
    pub fn entries(&self) -> Vec<Arc<Entry>> {
        self.read().values().cloned().collect()
    }

    /// How many experts are routable.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// Whether no expert is routable.
    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<Entry>>> {
        self.entries.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Embed (or fetch from the cache) what `info` says and index it under
    /// its name, replacing an older entry.
    pub async fn index(
        &self,
        engine: &dyn ModelEngine,
        info: &ExpertInfo,
        component_sha256: &str,
        cost: u32,
    ) -> Result<(), ModelError> {
        let Some(embedder) = engine.embedder_name() else {
            return Err(ModelError::Failed(
                "no embedding model is loaded, so the router cannot index experts".into(),
            ));
        };
        let texts = routing_texts(info);
        let key = cache_key(embedder, component_sha256, &texts);
        let cache_dir = self
            .cache_dir
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let cached = cache_dir
            .as_deref()
            .and_then(|dir| read_cached(&dir.join(&key), texts.len()));
        let (vectors, dim) = match cached {
            Some(hit) => {
                self.from_cache.fetch_add(1, Ordering::Relaxed);
                hit
            }
            None => {
                let embedded = engine.embed(texts.clone()).await?;
                let dim = embedded.first().map_or(0, Vec::len);
                if embedded.len() != texts.len() || embedded.iter().any(|v| v.len() != dim) {
                    return Err(ModelError::Failed(
                        "the embedder returned vectors of the wrong count or size".into(),
                    ));
                }
                let vectors: Vec<f32> = embedded.into_iter().flat_map(normalised).collect();
                self.embedded.fetch_add(1, Ordering::Relaxed);
                self.texts_embedded
                    .fetch_add(texts.len() as u64, Ordering::Relaxed);
                if let Some(dir) = &cache_dir
                    && let Err(e) = write_cached(dir, &key, &vectors, dim)
                {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot write the embedding cache");
                }
                (vectors, dim)
            }
        };
        let entry = Entry {
            name: info.name.clone(),
            cost,
            info: info.clone(),
            vectors,
            dim,
        };
        self.entries
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(info.name.clone(), Arc::new(entry));
        Ok(())
    }

    /// Drop `name` from the index.
    pub fn remove(&self, name: &str) {
        self.entries
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
    }

    /// The `k` experts closest to any of `queries` (vectors of one query,
    /// normalised here), best first, with their scores.
    pub fn rank(&self, queries: &[Vec<f32>], k: usize) -> Vec<(Arc<Entry>, f32)> {
        let queries: Vec<Vec<f32>> = queries.iter().map(|q| normalised(q.clone())).collect();
        let entries = self.read();
        let mut scored: Vec<(Arc<Entry>, f32)> = entries
            .values()
            .map(|e| {
                let best = queries
                    .iter()
                    .map(|q| e.score(q))
                    .fold(f32::NEG_INFINITY, f32::max);
                (e.clone(), best)
            })
            .collect();
        drop(entries);
        let k = k.min(scored.len());
        if k == 0 {
            return Vec::new();
        }
        let by_score = |a: &(Arc<Entry>, f32), b: &(Arc<Entry>, f32)| {
            b.1.total_cmp(&a.1).then_with(|| a.0.name.cmp(&b.0.name))
        };
        if k < scored.len() {
            scored.select_nth_unstable_by(k - 1, by_score);
            scored.truncate(k);
        }
        scored.sort_by(by_score);
        scored
    }
}

/// The texts an expert is known by: its description with its name and
/// tags, then each example prompt.
pub fn routing_texts(info: &ExpertInfo) -> Vec<String> {
    let mut about = format!("{}: {}", info.name.replace('-', " "), info.description);
    if !info.tags.is_empty() {
        about.push_str(" Topics: ");
        about.push_str(&info.tags.join(", "));
        about.push('.');
    }
    std::iter::once(about)
        .chain(info.examples.iter().take(MAX_EXAMPLES).cloned())
        .map(|t| cut(&t, MAX_TEXT_BYTES).to_string())
        .collect()
}

use crate::text::cut;

fn normalised(mut v: Vec<f32>) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
    v
}

/// Widest embedding a cache file may hold (MiniLM's is 384).
const MAX_CACHED_DIM: usize = 4096;

fn cache_key(embedder: &str, component_sha256: &str, texts: &[String]) -> String {
    let mut hash = sha2::Sha256::new();
    for part in [embedder, component_sha256]
        .into_iter()
        .chain(texts.iter().map(String::as_str))
    {
        hash.update((part.len() as u64).to_le_bytes());
        hash.update(part.as_bytes());
    }
    format!("{}.emb", hex::encode(hash.finalize()))
}

/// Vectors stored as: magic, count (u32), dim (u32), count × dim f32, all
/// little-endian. A file of the wrong size or count, or with a vector that
/// is not finite and of unit length (the embedder's output always is), is
/// ignored and the texts embedded again.
fn read_cached(path: &Path, count: usize) -> Option<(Vec<f32>, usize)> {
    let limit = (count as u64).saturating_mul(MAX_CACHED_DIM as u64 * 4) + 64;
    let bytes = crate::bundle::read_capped(path, limit).ok()?;
    let rest = bytes.strip_prefix(CACHE_MAGIC.as_slice())?;
    let (head, body) = rest.split_at_checked(8)?;
    let stored = u32::from_le_bytes(head[..4].try_into().ok()?) as usize;
    let dim = u32::from_le_bytes(head[4..].try_into().ok()?) as usize;
    if stored != count || dim == 0 || dim > MAX_CACHED_DIM || body.len() != stored * dim * 4 {
        return None;
    }
    let vectors: Vec<f32> = body
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let unit = vectors.chunks_exact(dim).all(|v| {
        let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter().all(|x| x.is_finite()) && (norm - 1.0).abs() < 1e-3
    });
    unit.then_some((vectors, dim))
}

fn write_cached(dir: &Path, key: &str, vectors: &[f32], dim: usize) -> std::io::Result<()> {
    crate::paths::private_dir(dir)?;
    let mut bytes = Vec::with_capacity(16 + vectors.len() * 4);
    bytes.extend_from_slice(CACHE_MAGIC);
    bytes.extend_from_slice(&((vectors.len() / dim.max(1)) as u32).to_le_bytes());
    bytes.extend_from_slice(&(dim as u32).to_le_bytes());
    for v in vectors {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    // Write then rename, so a reader never sees half a file.
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(&bytes)?;
    tmp.persist(dir.join(key)).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str, examples: &[&str]) -> ExpertInfo {
        ExpertInfo {
            name: name.into(),
            version: "0.1.0".into(),
            description: format!("about {name}"),
            tags: vec!["t".into()],
            examples: examples.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn entry(name: &str, vectors: &[[f32; 2]]) -> Entry {
        Entry {
            name: name.into(),
            cost: 1,
            info: info(name, &[]),
            vectors: vectors
                .iter()
                .flat_map(|v| normalised(v.to_vec()))
                .collect(),
            dim: 2,
        }
    }

    #[test]
    fn an_expert_scores_its_closest_text() {
        let e = entry("e", &[[1.0, 0.0], [0.0, 1.0]]);
        assert!((e.score(&[0.0, 1.0]) - 1.0).abs() < 1e-6);
        assert!((e.score(&normalised(vec![1.0, 1.0])) - 0.70710677).abs() < 1e-6);
        assert_eq!(e.score(&[1.0, 0.0, 0.0]), f32::NEG_INFINITY);
    }

    #[test]
    fn the_simd_dot_product_matches_the_plain_one() {
        let a: Vec<f32> = (0..389).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..389).map(|i| (i as f32 * 0.11).cos()).collect();
        let plain: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot(&a, &b) - plain).abs() < 1e-4);
    }

    #[test]
    fn rank_returns_the_top_k_best_first() {
        let index = RoutingIndex::default();
        {
            let mut entries = index.entries.write().unwrap();
            for (name, v) in [("a", [1.0, 0.0]), ("b", [0.6, 0.8]), ("c", [0.0, 1.0])] {
                entries.insert(name.into(), Arc::new(entry(name, &[v])));
            }
        }
        let top: Vec<String> = index
            .rank(&[vec![0.0, 2.0]], 2)
            .into_iter()
            .map(|(e, _)| e.name.clone())
            .collect();
        assert_eq!(top, ["c", "b"]);
        assert_eq!(index.rank(&[vec![1.0, 0.0]], 10).len(), 3);
        assert!(index.rank(&[vec![1.0, 0.0]], 0).is_empty());
        // Several views of a query: each expert keeps its best.
        let top = index.rank(&[vec![1.0, 0.0], vec![0.0, 1.0]], 3);
        assert!(
            top.iter()
                .all(|(e, s)| e.name == "b" || (*s - 1.0).abs() < 1e-6)
        );
    }

    #[test]
    fn the_cache_round_trips_and_rejects_a_wrong_count() {
        let dir = tempfile::tempdir().unwrap();
        let vectors = [0.6f32, -0.8, 0.0, 0.0, 0.0, 1.0];
        write_cached(dir.path(), "k.emb", &vectors, 3).unwrap();
        let (read, dim) = read_cached(&dir.path().join("k.emb"), 2).unwrap();
        assert_eq!((read.as_slice(), dim), (vectors.as_slice(), 3));
        assert!(read_cached(&dir.path().join("k.emb"), 3).is_none());
    }

    /// A cache file is not trusted: vectors that are not finite and of
    /// unit length (as the embedder's always are) make it a miss.
    #[test]
    fn cached_vectors_must_be_finite_unit_vectors() {
        let dir = tempfile::tempdir().unwrap();
        for (name, bad) in [
            ("long.emb", [3.0f32, 4.0, 0.0]),
            ("nan.emb", [f32::NAN, 0.0, 1.0]),
            ("inf.emb", [f32::INFINITY, 0.0, 0.0]),
        ] {
            write_cached(dir.path(), name, &bad, 3).unwrap();
            assert!(read_cached(&dir.path().join(name), 1).is_none(), "{name}");
        }
    }

    #[test]
    fn the_cache_key_changes_with_any_text_or_the_embedder() {
        let texts = routing_texts(&info("x", &["one", "two"]));
        assert_eq!(texts.len(), 3);
        assert!(texts[0].starts_with("x: about x Topics: t."));
        let key = cache_key("minilm", "abc", &texts);
        assert_eq!(key, cache_key("minilm", "abc", &texts));
        assert_ne!(key, cache_key("other", "abc", &texts));
        assert_ne!(key, cache_key("minilm", "abd", &texts));
        let other = routing_texts(&info("x", &["one", "three"]));
        assert_ne!(key, cache_key("minilm", "abc", &other));
    }
}
