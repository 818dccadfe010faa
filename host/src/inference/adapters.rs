//! The engine's LoRA adapters: registered by name, loaded on demand,
//! evicted least-recently-used under a memory budget.
//!
//! A request for an adapter that is not in memory waits for its load on
//! the blocking pool, never on an engine or runtime thread; concurrent
//! requests for it wait for the same load. An evicted adapter stays with
//! the sequences that run with it until they end.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use burn::tensor::Device;

use super::ModelError;
use super::llama::LlamaConfig;
use super::lora::{AdapterError, LoraAdapter};

/// Memory for loaded adapters when not told otherwise, bytes.
pub const DEFAULT_ADAPTER_BUDGET_BYTES: usize = 1 << 30;

/// What a registered adapter is.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct AdapterInfo {
    /// Its name (the model name clients and experts use).
    pub name: String,
    /// Its rank.
    pub rank: usize,
    /// The projections it adapts (PEFT names).
    pub targets: Vec<&'static str>,
    /// Bytes it takes when loaded.
    pub bytes: usize,
    /// The base model its config names.
    pub base_model: Option<String>,
}

/// The base model adapters are loaded for.
struct Base {
    config: LlamaConfig,
    device: Device,
    name: String,
}

struct Slot {
    dir: PathBuf,
    info: AdapterInfo,
    loaded: Option<Arc<LoraAdapter>>,
    last_used: u64,
    /// Held while the adapter loads, so that one load serves everyone.
    loading: Arc<tokio::sync::Mutex<()>>,
}

/// The adapters of one engine.
pub(crate) struct AdapterSet {
    base: Option<Base>,
    budget_bytes: usize,
    slots: Mutex<BTreeMap<String, Slot>>,
    clock: AtomicU64,
    loads: AtomicU64,
}

impl AdapterSet {
    /// No adapters, for an engine whose model takes none.
    pub(crate) fn none() -> AdapterSet {
        AdapterSet {
            base: None,
            budget_bytes: 0,
            slots: Mutex::new(BTreeMap::new()),
            clock: AtomicU64::new(0),
            loads: AtomicU64::new(0),
        }
    }

    /// Adapters for the Llama model `name` of shape `config` on `device`,
    /// within `budget_bytes` of memory.
    pub(crate) fn for_llama(
        config: LlamaConfig,
        device: Device,
        name: String,
        budget_bytes: usize,
    ) -> AdapterSet {
        AdapterSet {
            base: Some(Base {
                config,
                device,
                name,
            }),
            budget_bytes,
            ..AdapterSet::none()
        }
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Slot>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Register the PEFT adapter in `dir` as `name`: read and checked now
    /// (so a bad adapter is refused at once), kept in memory while the
    /// budget allows.
    pub(crate) fn register(&self, name: &str, dir: &Path) -> Result<AdapterInfo, ModelError> {
        let base = self.base.as_ref().ok_or_else(|| {
            ModelError::InvalidInput("this engine's model takes no LoRA adapters".into())
        })?;
        let adapter = LoraAdapter::load(dir, &base.config, &base.name, &base.device)
            .map_err(adapter_error)?;
        self.loads.fetch_add(1, Ordering::Relaxed);
        let info = AdapterInfo {
            name: name.to_string(),
            rank: adapter.rank,
            targets: adapter.targets.iter().map(|t| t.peft_name()).collect(),
            bytes: adapter.bytes,
            base_model: adapter.base_model.clone(),
        };
        let mut slots = self.slots();
        slots.insert(
            name.to_string(),
            Slot {
                dir: dir.to_path_buf(),
                info: info.clone(),
                loaded: Some(Arc::new(adapter)),
                last_used: self.clock.fetch_add(1, Ordering::Relaxed),
                loading: Arc::default(),
            },
        );
        self.evict(&mut slots, name);
        Ok(info)
    }

    /// Forget adapter `name`.
    pub(crate) fn unregister(&self, name: &str) -> bool {
        self.slots().remove(name).is_some()
    }

    /// Every registered adapter.
    pub(crate) fn list(&self) -> Vec<AdapterInfo> {
        self.slots().values().map(|s| s.info.clone()).collect()
    }

    /// Adapters read from disk so far (registrations and reloads).
    pub(crate) fn loads(&self) -> u64 {
        self.loads.load(Ordering::Relaxed)
    }

    /// Bytes of adapters in memory now.
    pub(crate) fn loaded_bytes(&self) -> usize {
        loaded_bytes(&self.slots())
    }

    /// Adapter `name`, loaded if it was evicted.
    pub(crate) async fn get(&self, name: &str) -> Result<Arc<LoraAdapter>, ModelError> {
        let lock = {
            let mut slots = self.slots();
            let slot = slots
                .get_mut(name)
                .ok_or_else(|| ModelError::UnknownAdapter(name.to_string()))?;
            slot.last_used = self.clock.fetch_add(1, Ordering::Relaxed);
            if let Some(adapter) = &slot.loaded {
                return Ok(adapter.clone());
            }
            slot.loading.clone()
        };
        let _loading = lock.lock().await;
        // Someone else may have loaded it meanwhile.
        let dir = {
            let slots = self.slots();
            let slot = slots
                .get(name)
                .ok_or_else(|| ModelError::UnknownAdapter(name.to_string()))?;
            if let Some(adapter) = &slot.loaded {
                return Ok(adapter.clone());
            }
            slot.dir.clone()
        };
        let base = self.base.as_ref().expect("registered adapters have a base");
        let (config, device, base_name) =
            (base.config.clone(), base.device.clone(), base.name.clone());
        let adapter = tokio::task::spawn_blocking(move || {
            LoraAdapter::load(&dir, &config, &base_name, &device)
        })
        .await
        .map_err(|e| ModelError::Failed(format!("loading adapter `{name}` failed: {e}")))?
        .map_err(adapter_error)?;
        self.loads.fetch_add(1, Ordering::Relaxed);
        let adapter = Arc::new(adapter);
        let mut slots = self.slots();
        if let Some(slot) = slots.get_mut(name) {
            slot.loaded = Some(adapter.clone());
            slot.last_used = self.clock.fetch_add(1, Ordering::Relaxed);
        }
        self.evict(&mut slots, name);
        Ok(adapter)
    }

    /// Drop least-recently-used adapters (never `keep`) until the loaded
    /// ones fit the budget.
    fn evict(&self, slots: &mut BTreeMap<String, Slot>, keep: &str) {
        while loaded_bytes(slots) > self.budget_bytes {
            let oldest = slots
                .iter_mut()
                .filter(|(name, s)| s.loaded.is_some() && name.as_str() != keep)
                .min_by_key(|(_, s)| s.last_used);
            match oldest {
                Some((name, slot)) => {
                    tracing::debug!(adapter = %name, "adapter evicted (--adapter-budget-mib)");
                    slot.loaded = None;
                }
                None => break,
            }
        }
    }
}

fn loaded_bytes(slots: &BTreeMap<String, Slot>) -> usize {
    slots
        .values()
        .filter(|s| s.loaded.is_some())
        .map(|s| s.info.bytes)
        .sum()
}

fn adapter_error(e: AdapterError) -> ModelError {
    ModelError::InvalidInput(e.to_string())
}

#[cfg(test)]
mod tests {
    use crate::inference::lora::{Target, write_random_peft};
    use crate::inference::{
        BurnEngine, EngineOptions, GenerateRequest, ModelEngine, ModelError, Prompt,
        SamplingParams, open_weights, test_smollm2,
    };

    fn greedy() -> SamplingParams {
        SamplingParams {
            temperature: 0.0,
            max_tokens: 6,
            ..SamplingParams::default()
        }
    }

    async fn generate(engine: &BurnEngine, adapter: Option<&str>) -> (String, Vec<u32>, Vec<f32>) {
        let request = GenerateRequest {
            prompt: Prompt::Text("The capital of France is".into()),
            params: greedy(),
            adapter: adapter.map(str::to_string),
        };
        let g = engine.generate(request, None).await.unwrap();
        let logprobs = g.token_logprobs.iter().map(|(_, l)| *l).collect();
        (g.text, g.token_ids, logprobs)
    }

    /// Two adapters under a budget that holds one: each request evicts
    /// the other and reloads its own, and answers stay identical; ratings
    /// honour the adapter; an unknown adapter is named.
    #[tokio::test]
    async fn adapters_load_on_demand_evict_under_budget_and_answer_the_same() {
        let model = test_smollm2();
        let (weights, _) = open_weights(&model).unwrap();
        let cfg = weights.config().clone();
        drop(weights);
        let engine = BurnEngine::load(
            &model,
            None,
            EngineOptions {
                adapter_budget_bytes: 1,
                ..EngineOptions::default()
            },
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        for (name, seed) in [("a", 11), ("b", 12)] {
            write_random_peft(
                &dir.path().join(name),
                &cfg,
                "SmolLM2-135M-Instruct",
                4,
                &Target::ALL,
                seed,
            )
            .unwrap();
            let info = engine
                .register_adapter(name, &dir.path().join(name))
                .unwrap();
            assert_eq!(info.rank, 4);
        }
        let names: Vec<String> = engine.adapters().into_iter().map(|a| a.name).collect();
        assert_eq!(names, ["a", "b"]);

        let base = generate(&engine, None).await;
        let a = generate(&engine, Some("a")).await;
        let b = generate(&engine, Some("b")).await;
        let a_again = generate(&engine, Some("a")).await;
        assert_eq!(a, a_again, "a reloaded adapter answers the same");
        assert_ne!(a.2, base.2, "the adapter changes the model");
        assert_ne!(a.2, b.2);
        let (loads, in_memory) = engine.adapter_memory();
        assert!(loads >= 4, "{loads} loads: evicted and loaded again");
        assert!(in_memory > 0);

        // Ratings honour the adapter: a's tokens, rated with a, get the
        // log-probabilities a's generation reported.
        let prompt = Prompt::Text("The capital of France is".into());
        let rated = engine
            .rate(prompt.clone(), a.1.clone(), Some("a".into()))
            .await
            .unwrap();
        let with_a: Vec<f32> = rated.scores.iter().map(|s| s.logprob).collect();
        let worst = with_a
            .iter()
            .zip(&a.2)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max);
        assert!(worst < 1e-3, "{with_a:?} vs {:?}", a.2);
        let rated_base = engine.rate(prompt, a.1.clone(), None).await.unwrap();
        assert!(
            rated_base
                .scores
                .iter()
                .zip(&a.2)
                .any(|(s, l)| (s.logprob - l).abs() > 0.01)
        );

        let request = GenerateRequest {
            prompt: Prompt::Text("x".into()),
            params: greedy(),
            adapter: Some("nope".into()),
        };
        let err = engine.generate(request, None).await.unwrap_err();
        assert_eq!(err, ModelError::UnknownAdapter("nope".into()));
    }
}
