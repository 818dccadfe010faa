//! Hot reload: the bundle directories a host serves, rescanned for bundles
//! added, replaced or removed.
//!
//! A *root* is a bundle directory (it holds `tessera.toml`), a `.tessera`
//! pack, or a directory of them. Each scan lists the bundles under the roots and compares each
//! one's files (names, sizes, modification times) with the last scan: a
//! new or changed bundle is opened, compiled and `describe`d before it
//! replaces the old version, so a broken one is reported and the old one
//! keeps serving; in-flight requests hold the version they started with.
//! For a plugin crate the files compared are those `tessera build` writes.
//!
//! A plain Hugging Face PEFT LoRA directory (`adapter_config.json`, no
//! manifest) is served too: as a model named after its directory, a
//! fine-tune of the base model (see [`crate::inference::lora`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use super::Ensemble;
use crate::bundle::pack::PACK_EXTENSION;
use crate::bundle::{Bundle, MANIFEST_FILE};

/// A scan logs its progress every this many bundles.
pub const PROGRESS_EVERY: usize = 100;

/// The files of a bundle directory as last seen.
type Fingerprint = Vec<(PathBuf, u64, Option<SystemTime>)>;

/// What one scan changed.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ScanReport {
    /// Experts added, by name.
    pub added: Vec<String>,
    /// Experts replaced by a new version.
    pub replaced: Vec<String>,
    /// Experts removed because their directory is gone.
    pub removed: Vec<String>,
    /// Bundles that failed this scan: (directory, why).
    pub failed: Vec<(PathBuf, String)>,
}

impl ScanReport {
    /// Did anything change or fail?
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.replaced.is_empty()
            && self.removed.is_empty()
            && self.failed.is_empty()
    }
}

struct Loaded {
    fingerprint: Fingerprint,
    name: String,
    sha256: String,
    /// A PEFT directory served as an adapter, not an expert.
    adapter: bool,
}

/// The bundle directories of a host and what was loaded from each.
pub struct BundleWatcher {
    roots: Vec<PathBuf>,
    loaded: BTreeMap<PathBuf, Loaded>,
    /// Bundles that failed, with the files they failed with: retried only
    /// once those change.
    failed: BTreeMap<PathBuf, (Fingerprint, String)>,
}

impl BundleWatcher {
    /// Watch `roots`.
    pub fn new(roots: Vec<PathBuf>) -> Self {
        BundleWatcher {
            roots,
            loaded: BTreeMap::new(),
            failed: BTreeMap::new(),
        }
    }

    /// The bundle directories under the roots now.
    pub fn discover(&self) -> Vec<PathBuf> {
        discover(&self.roots)
    }

    /// Bundles that failed to load and have not changed since, with why.
    pub fn problems(&self) -> Vec<(PathBuf, String)> {
        self.failed
            .iter()
            .map(|(dir, (_, why))| (dir.clone(), why.clone()))
            .collect()
    }

    /// Load what is new or changed and remove what is gone. Directory
    /// listings and file reads run on blocking threads, compiles too (in
    /// [`Ensemble::add`]), so a scan never stalls the request workers.
    pub async fn scan(&mut self, ensemble: &Arc<Ensemble>) -> ScanReport {
        let mut report = ScanReport::default();
        let roots = self.roots.clone();
        let listed = tokio::task::spawn_blocking(move || {
            discover(&roots)
                .into_iter()
                .map(|d| {
                    let f = fingerprint(&d);
                    (d, f)
                })
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        let dirs: Vec<PathBuf> = listed.iter().map(|(d, _)| d.clone()).collect();
        let gone: Vec<PathBuf> = self
            .loaded
            .keys()
            .filter(|d| !dirs.contains(d))
            .cloned()
            .collect();
        for dir in gone {
            let old = self.loaded.remove(&dir).expect("listed above");
            self.remove_if_ours(ensemble, &old);
            report.removed.push(old.name);
        }
        self.failed.retain(|d, _| dirs.contains(d));

        let total = listed.len();
        let started = std::time::Instant::now();
        for (done, (dir, fingerprint)) in listed.into_iter().enumerate() {
            // A long first load shows progress.
            if done > 0 && done % PROGRESS_EVERY == 0 {
                tracing::info!(
                    "loading bundles: {done}/{total} in {:.1?}",
                    started.elapsed()
                );
            }
            if self
                .loaded
                .get(&dir)
                .is_some_and(|l| l.fingerprint == fingerprint)
                || self
                    .failed
                    .get(&dir)
                    .is_some_and(|(f, _)| *f == fingerprint)
            {
                continue;
            }
            match self.load(ensemble, &dir, &fingerprint).await {
                Ok(Change::Added(name)) => report.added.push(name),
                Ok(Change::Replaced(name)) => report.replaced.push(name),
                Ok(Change::Same) => {}
                Err(why) => {
                    tracing::error!(bundle = %dir.display(), "bundle not loaded: {why}");
                    report.failed.push((dir.clone(), why.clone()));
                    self.failed.insert(dir, (fingerprint, why));
                }
            }
        }
        report
    }

    async fn load(
        &mut self,
        ensemble: &Arc<Ensemble>,
        dir: &Path,
        fingerprint: &Fingerprint,
    ) -> Result<Change, String> {
        if is_peft(dir) {
            return self.load_adapter(ensemble, dir, fingerprint).await;
        }
        let path = dir.to_path_buf();
        let bundle = tokio::task::spawn_blocking(move || Bundle::open(&path))
            .await
            .map_err(|e| format!("reading the bundle failed: {e}"))?
            .map_err(|e| e.to_string())?;
        let name = bundle.manifest.name.clone();
        if let Some(old) = self.loaded.get_mut(dir)
            && old.sha256 == bundle.sha256
            && old.name == name
        {
            // Touched, not changed (a rebuild that produced the same bytes).
            old.fingerprint = fingerprint.clone();
            self.failed.remove(dir);
            return Ok(Change::Same);
        }
        if let Some((other, _)) = self
            .loaded
            .iter()
            .find(|(d, l)| l.name == name && d.as_path() != dir)
        {
            return Err(format!(
                "the name `{name}` is already served from {}; give one of them another name in its {MANIFEST_FILE}",
                other.display()
            ));
        }
        let sha256 = bundle.sha256.clone();
        let expert = ensemble.add(bundle).await.map_err(|e| e.to_string())?;
        let name = expert.name().to_string();
        self.failed.remove(dir);
        let previous = self.loaded.insert(
            dir.to_path_buf(),
            Loaded {
                fingerprint: fingerprint.clone(),
                name: name.clone(),
                sha256,
                adapter: false,
            },
        );
        match previous {
            None => Ok(Change::Added(name)),
            Some(old) => {
                if old.name != name {
                    ensemble.remove(&old.name);
                }
                Ok(Change::Replaced(name))
            }
        }
    }

    /// Serve the PEFT directory `dir` as the adapter named after it.
    async fn load_adapter(
        &mut self,
        ensemble: &Arc<Ensemble>,
        dir: &Path,
        fingerprint: &Fingerprint,
    ) -> Result<Change, String> {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if !crate::bundle::is_valid_name(&name) {
            return Err(format!(
                "a PEFT adapter is served under its directory's name, and `{name}` is not a model name (1 to 64 lowercase letters, digits and dashes): rename the directory"
            ));
        }
        if ensemble.expert(&name).is_some()
            || self
                .loaded
                .iter()
                .any(|(d, l)| l.name == name && d.as_path() != dir)
        {
            return Err(format!(
                "the name `{name}` is already served; rename the adapter's directory"
            ));
        }
        let engine = ensemble.model().clone();
        let (path, registered) = (dir.to_path_buf(), name.clone());
        tokio::task::spawn_blocking(move || engine.register_adapter(&registered, &path))
            .await
            .map_err(|e| format!("loading the adapter failed: {e}"))?
            .map_err(|e| e.to_string())?;
        self.failed.remove(dir);
        let previous = self.loaded.insert(
            dir.to_path_buf(),
            Loaded {
                fingerprint: fingerprint.clone(),
                name: name.clone(),
                sha256: String::new(),
                adapter: true,
            },
        );
        Ok(match previous {
            None => Change::Added(name),
            Some(_) => Change::Replaced(name),
        })
    }

    fn remove_if_ours(&self, ensemble: &Ensemble, old: &Loaded) {
        if old.adapter {
            ensemble.model().unregister_adapter(&old.name);
            return;
        }
        if ensemble
            .expert(&old.name)
            .is_some_and(|e| e.sha256 == old.sha256)
        {
            ensemble.remove(&old.name);
        }
    }
}

enum Change {
    Added(String),
    Replaced(String),
    Same,
}

/// Whether `path` is a bundle: a directory with a manifest, a pack, or a
/// plain PEFT adapter directory.
fn is_bundle(path: &Path) -> bool {
    path.join(MANIFEST_FILE).is_file()
        || (path.is_file() && path.extension().is_some_and(|e| e == PACK_EXTENSION))
        || is_peft(path)
}

/// A Hugging Face PEFT adapter directory without a manifest.
fn is_peft(path: &Path) -> bool {
    path.join(crate::inference::lora::ADAPTER_CONFIG).is_file()
        && !path.join(MANIFEST_FILE).is_file()
}

/// The bundles under `roots`: each root that is a bundle, and the bundles
/// directly inside the others.
fn discover(roots: &[PathBuf]) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for root in roots {
        if is_bundle(root) {
            dirs.push(root.clone());
            continue;
        }
        let Ok(entries) = std::fs::read_dir(root) else {
            continue;
        };
        let mut found: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| is_bundle(p))
            .collect();
        found.sort();
        dirs.extend(found);
    }
    dirs
}

/// The files directly in `dir` and in the bundle `tessera build` writes
/// for a crate there; a pack's own file.
fn fingerprint(dir: &Path) -> Fingerprint {
    let mut files = Vec::new();
    if let Ok(meta) = std::fs::metadata(dir)
        && meta.is_file()
    {
        files.push((dir.to_path_buf(), meta.len(), meta.modified().ok()));
        return files;
    }
    for d in [dir.to_path_buf(), crate::build::default_bundle_dir(dir)] {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_file() {
                files.push((entry.path(), meta.len(), meta.modified().ok()));
            }
        }
    }
    files.sort();
    files
}
