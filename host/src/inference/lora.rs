//! LoRA adapters in Hugging Face PEFT's format, applied unmerged.
//!
//! A PEFT adapter directory holds `adapter_config.json` (`r`,
//! `lora_alpha`, `target_modules`, `base_model_name_or_path`, ...) and
//! `adapter_model.safetensors` with one pair per adapted projection:
//! `base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight`
//! (`[r, in]`) and `...lora_B.weight` (`[out, r]`). The projection's
//! output becomes `x·Wᵀ + scale · (x·Aᵀ)·Bᵀ` with `scale = alpha / r`
//! (`alpha / √r` with rsLoRA); the base weights are never changed, so one
//! batch can mix sequences of several adapters and of the base model.
//!
//! Row order of Q and K: the engine holds Q and K in Hugging Face's
//! (NeoX) order — it permutes llama.cpp's interleaved GGUF rows back at
//! load (`llama.rs`). PEFT adapters are trained on Hugging Face models, so
//! their `lora_B` rows are already in that order and are used as they
//! are, for GGUF and safetensors bases alike; an adapter whose B rows were
//! in GGUF order would need [`super::llama::interleaved_to_neox_rows`]
//! first, as the base weights do.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};
use serde::Deserialize;

use super::llama::LlamaConfig;

/// The adapter's settings file.
pub const ADAPTER_CONFIG: &str = "adapter_config.json";
/// The adapter's weights file.
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";
/// Largest `adapter_config.json` read.
pub const MAX_ADAPTER_CONFIG_BYTES: u64 = 256 * 1024;
/// Largest `adapter_model.safetensors` read.
pub const MAX_ADAPTER_WEIGHTS_BYTES: u64 = 1 << 30;
/// Largest rank accepted.
pub const MAX_RANK: usize = 512;

/// A projection a LoRA can adapt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Target {
    /// Query projection.
    Q,
    /// Key projection.
    K,
    /// Value projection.
    V,
    /// Attention output.
    O,
    /// MLP gate.
    Gate,
    /// MLP up.
    Up,
    /// MLP down.
    Down,
}

impl Target {
    /// Every target, in layer order.
    pub const ALL: [Target; 7] = [
        Target::Q,
        Target::K,
        Target::V,
        Target::O,
        Target::Gate,
        Target::Up,
        Target::Down,
    ];

    /// PEFT's module name (`q_proj`, ...).
    pub fn peft_name(self) -> &'static str {
        match self {
            Target::Q => "q_proj",
            Target::K => "k_proj",
            Target::V => "v_proj",
            Target::O => "o_proj",
            Target::Gate => "gate_proj",
            Target::Up => "up_proj",
            Target::Down => "down_proj",
        }
    }

    /// The target of a PEFT module name.
    pub fn from_peft(name: &str) -> Option<Target> {
        Target::ALL.into_iter().find(|t| t.peft_name() == name)
    }

    fn parent(self) -> &'static str {
        match self {
            Target::Q | Target::K | Target::V | Target::O => "self_attn",
            Target::Gate | Target::Up | Target::Down => "mlp",
        }
    }

    /// `(out, in)` of the projection in a model of shape `cfg`.
    pub fn shape(self, cfg: &LlamaConfig) -> (usize, usize) {
        let kv = cfg.kv_heads * cfg.head_dim();
        match self {
            Target::Q | Target::O => (cfg.hidden, cfg.hidden),
            Target::K | Target::V => (kv, cfg.hidden),
            Target::Gate | Target::Up => (cfg.ffn, cfg.hidden),
            Target::Down => (cfg.hidden, cfg.ffn),
        }
    }

    /// The PEFT tensor name of this target's `A` or `B` in layer `layer`.
    pub fn tensor_name(self, layer: usize, which: char) -> String {
        format!(
            "base_model.model.model.layers.{layer}.{}.{}.lora_{which}.weight",
            self.parent(),
            self.peft_name()
        )
    }
}

/// Why an adapter cannot be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdapterError {
    /// A file could not be read.
    #[error("{path}: {message}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// `adapter_config.json` is malformed.
    #[error("{path}: {message}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A PEFT option this host does not implement.
    #[error("{path}: `{option}` is not supported ({why}); {fix}")]
    Unsupported {
        /// The file.
        path: PathBuf,
        /// The option.
        option: &'static str,
        /// Its value.
        why: String,
        /// What to do.
        fix: &'static str,
    },
    /// The adapter was made for another base model.
    #[error(
        "{path}: the adapter is for a model with {what} {adapter}, the served base model has {base}"
    )]
    Mismatch {
        /// The adapter directory.
        path: PathBuf,
        /// What differs.
        what: &'static str,
        /// The adapter's side.
        adapter: String,
        /// The base model's side.
        base: String,
    },
    /// A tensor is missing, misshapen or of an unknown type.
    #[error("{path}: {message}")]
    Tensor {
        /// The weights file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// `target_modules`: a list of names, or one name.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Modules {
    List(Vec<String>),
    One(String),
}

/// The fields of `adapter_config.json` this host reads or refuses. PEFT
/// writes many more (dropout, task type, revision, ...); they do not
/// change inference and are ignored.
#[derive(Debug, Clone, Deserialize)]
struct PeftConfig {
    peft_type: Option<String>,
    r: usize,
    lora_alpha: f64,
    target_modules: Modules,
    base_model_name_or_path: Option<String>,
    #[serde(default)]
    bias: Option<String>,
    #[serde(default)]
    use_dora: bool,
    #[serde(default)]
    use_rslora: bool,
    #[serde(default)]
    fan_in_fan_out: bool,
    #[serde(default)]
    modules_to_save: Option<Vec<String>>,
    #[serde(default)]
    layers_to_transform: Option<serde_json::Value>,
    #[serde(default)]
    rank_pattern: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    alpha_pattern: BTreeMap<String, serde_json::Value>,
}

/// One adapted projection: `A` transposed to `[in, r]` and `B` transposed
/// to `[r, out]`, so that the delta is `x · A · B · scale`.
struct Pair {
    a: Tensor<2>,
    b: Tensor<2>,
}

/// One adapted projection as host f32 arrays, for the CPU model: `A` as
/// `[inputs, rank]` and `B` as `[rank, outputs]`, row-major.
#[derive(Debug)]
pub struct HostPair {
    /// `A`, `[inputs, rank]`.
    pub a: Vec<f32>,
    /// `B`, `[rank, outputs]`.
    pub b: Vec<f32>,
    /// Input width.
    pub inputs: usize,
    /// The rank.
    pub rank: usize,
    /// Output width.
    pub outputs: usize,
}

type HostLayers = Vec<[Option<HostPair>; 7]>;

/// A loaded LoRA adapter.
pub struct LoraAdapter {
    /// Its rank.
    pub rank: usize,
    /// `alpha / r` (or `alpha / √r` with rsLoRA).
    pub scale: f32,
    /// The projections it adapts.
    pub targets: Vec<Target>,
    /// The base model it names, if any.
    pub base_model: Option<String>,
    /// Bytes its weights take in memory.
    pub bytes: usize,
    /// Per layer, per target (in [`Target::ALL`] order).
    layers: Vec<[Option<Pair>; 7]>,
    /// The same as host arrays, made when the CPU model first asks.
    host: std::sync::OnceLock<HostLayers>,
}

impl std::fmt::Debug for LoraAdapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoraAdapter")
            .field("rank", &self.rank)
            .field("scale", &self.scale)
            .field("targets", &self.targets)
            .field("bytes", &self.bytes)
            .finish()
    }
}

impl LoraAdapter {
    /// Load the PEFT adapter in `dir` for a base model of shape `base`
    /// (named `base_name`), onto `device`.
    pub fn load(
        dir: &Path,
        base: &LlamaConfig,
        base_name: &str,
        device: &Device,
    ) -> Result<LoraAdapter, AdapterError> {
        let config_path = dir.join(ADAPTER_CONFIG);
        let text = read_capped(&config_path, MAX_ADAPTER_CONFIG_BYTES)?;
        let config: PeftConfig =
            serde_json::from_slice(&text).map_err(|e| AdapterError::Config {
                path: config_path.clone(),
                message: format!("not a PEFT LoRA config: {e}"),
            })?;
        let targets = check_config(&config, &config_path, base_name)?;
        let weights_path = dir.join(ADAPTER_WEIGHTS);
        let bytes = read_capped(&weights_path, MAX_ADAPTER_WEIGHTS_BYTES)?;
        let tensors =
            safetensors::SafeTensors::deserialize(&bytes).map_err(|e| AdapterError::Tensor {
                path: weights_path.clone(),
                message: format!("not a safetensors file: {e}"),
            })?;
        let tensor_error = |message: String| AdapterError::Tensor {
            path: weights_path.clone(),
            message,
        };
        // Layer count: the highest layer the file names must exist in the
        // base model.
        let layer_of = |name: &str| -> Option<usize> {
            name.strip_prefix("base_model.model.model.layers.")?
                .split('.')
                .next()?
                .parse()
                .ok()
        };
        if let Some(max) = tensors.names().iter().filter_map(|n| layer_of(n)).max()
            && max >= base.layers
        {
            return Err(AdapterError::Mismatch {
                path: dir.to_path_buf(),
                what: "layers up to",
                adapter: (max + 1).to_string(),
                base: base.layers.to_string(),
            });
        }
        let r = config.r;
        let mut total = 0usize;
        let mut layers = Vec::with_capacity(base.layers);
        for layer in 0..base.layers {
            let mut pairs: [Option<Pair>; 7] = Default::default();
            for &target in &targets {
                let (out, inp) = target.shape(base);
                let a_name = target.tensor_name(layer, 'A');
                let b_name = target.tensor_name(layer, 'B');
                let a = read_tensor(&tensors, &a_name).map_err(&tensor_error)?;
                let b = read_tensor(&tensors, &b_name).map_err(&tensor_error)?;
                let (a, a_dims) = a;
                let (b, b_dims) = b;
                if a_dims.len() == 2 && b_dims.len() == 2 && a_dims[1] != inp {
                    return Err(AdapterError::Mismatch {
                        path: dir.to_path_buf(),
                        what: "hidden size",
                        adapter: format!("{} (`{a_name}` is {a_dims:?})", a_dims[1]),
                        base: inp.to_string(),
                    });
                }
                if a_dims != [r, inp] || b_dims != [out, r] {
                    return Err(tensor_error(format!(
                        "`{a_name}` is {a_dims:?} and `{b_name}` {b_dims:?}; rank {r} on this base needs [{r}, {inp}] and [{out}, {r}]"
                    )));
                }
                total += (a.len() + b.len()) * std::mem::size_of::<f32>();
                pairs[target as usize] = Some(Pair {
                    a: Tensor::<2>::from_data(
                        TensorData::new(super::llama::transpose(&a, r, inp), [inp, r]),
                        device,
                    ),
                    b: Tensor::<2>::from_data(
                        TensorData::new(super::llama::transpose(&b, out, r), [r, out]),
                        device,
                    ),
                });
            }
            layers.push(pairs);
        }
        let scale = if config.use_rslora {
            config.lora_alpha / (r as f64).sqrt()
        } else {
            config.lora_alpha / r as f64
        } as f32;
        Ok(LoraAdapter {
            rank: r,
            scale,
            targets,
            base_model: config.base_model_name_or_path,
            bytes: total,
            layers,
            host: std::sync::OnceLock::new(),
        })
    }

    /// `scale · (x · Aᵀ) · Bᵀ` for `target` of layer `layer`, or `None`
    /// when the adapter leaves that projection alone.
    pub fn delta(&self, layer: usize, target: Target, x: Tensor<2>) -> Option<Tensor<2>> {
        let pair = self.layers.get(layer)?[target as usize].as_ref()?;
        Some(
            x.matmul(pair.a.clone())
                .matmul(pair.b.clone())
                .mul_scalar(self.scale),
        )
    }

    /// `A` and `B` of `target` in `layer` as host arrays (copied from the
    /// tensors once, on first use); `None` when the adapter leaves that
    /// projection alone.
    pub fn host_pair(&self, layer: usize, target: Target) -> Option<&HostPair> {
        let host = self.host.get_or_init(|| {
            self.layers
                .iter()
                .map(|pairs| {
                    pairs.each_ref().map(|pair| {
                        let pair = pair.as_ref()?;
                        let [inputs, rank] = pair.a.dims();
                        let [_, outputs] = pair.b.dims();
                        Some(HostPair {
                            a: pair.a.clone().into_data().try_into_vec::<f32>().ok()?,
                            b: pair.b.clone().into_data().try_into_vec::<f32>().ok()?,
                            inputs,
                            rank,
                            outputs,
                        })
                    })
                })
                .collect()
        });
        host.get(layer)?[target as usize].as_ref()
    }

    /// An adapter of rank `rank` from its tensors: per layer, per target
    /// in [`Target::ALL`] order, `A` transposed to `[in, r]` and `B` to
    /// `[r, out]`. The tensors may be autodiff leaves (training).
    pub(crate) fn from_pairs(
        rank: usize,
        scale: f32,
        base_model: Option<String>,
        layers: Vec<[Option<(Tensor<2>, Tensor<2>)>; 7]>,
    ) -> LoraAdapter {
        let targets: Vec<Target> = Target::ALL
            .into_iter()
            .filter(|&t| layers.iter().any(|l| l[t as usize].is_some()))
            .collect();
        let mut bytes = 0;
        let layers = layers
            .into_iter()
            .map(|pairs| {
                pairs.map(|pair| {
                    pair.map(|(a, b)| {
                        bytes += (a.shape().num_elements() + b.shape().num_elements())
                            * std::mem::size_of::<f32>();
                        Pair { a, b }
                    })
                })
            })
            .collect();
        LoraAdapter {
            rank,
            scale,
            targets,
            base_model,
            bytes,
            layers,
            host: std::sync::OnceLock::new(),
        }
    }

    /// PEFT's `lora_A` (`[r, in]`) and `lora_B` (`[out, r]`), row-major,
    /// of `target` in `layer`; `None` when the adapter leaves it alone.
    pub fn peft_tensors(&self, layer: usize, target: Target) -> Option<(Vec<f32>, Vec<f32>)> {
        let pair = self.layers.get(layer)?[target as usize].as_ref()?;
        let [inp, r] = pair.a.dims();
        let [_, out] = pair.b.dims();
        let a = pair.a.clone().into_data().try_into_vec::<f32>().ok()?;
        let b = pair.b.clone().into_data().try_into_vec::<f32>().ok()?;
        Some((
            super::llama::transpose(&a, inp, r),
            super::llama::transpose(&b, r, out),
        ))
    }

    /// The merged weight delta `scale · B · A` (`[out, in]`, row-major) of
    /// `target` in `layer`, for tests and merging.
    pub fn merged_delta(&self, layer: usize, target: Target) -> Option<Vec<f32>> {
        let pair = self.layers.get(layer)?[target as usize].as_ref()?;
        // [in, r] · [r, out] = [in, out]; transposed to [out, in].
        let w = pair.a.clone().matmul(pair.b.clone()).mul_scalar(self.scale);
        let [inp, out] = w.dims();
        let data = w.into_data().try_into_vec::<f32>().ok()?;
        Some(super::llama::transpose(&data, inp, out))
    }
}

/// The targets of a config, or why it cannot be served.
fn check_config(
    config: &PeftConfig,
    path: &Path,
    base_name: &str,
) -> Result<Vec<Target>, AdapterError> {
    let unsupported = |option: &'static str, why: String, fix: &'static str| {
        Err(AdapterError::Unsupported {
            path: path.to_path_buf(),
            option,
            why,
            fix,
        })
    };
    if let Some(kind) = &config.peft_type
        && kind != "LORA"
    {
        return unsupported(
            "peft_type",
            format!("`{kind}`"),
            "only LoRA adapters (peft_type LORA) are served",
        );
    }
    if config.use_dora {
        return unsupported(
            "use_dora",
            "DoRA rescales the merged weight's columns".into(),
            "train a plain LoRA (use_dora = false)",
        );
    }
    if config.fan_in_fan_out {
        return unsupported(
            "fan_in_fan_out",
            "true (GPT-2 style Conv1D weights)".into(),
            "Llama-family adapters store [out, in]; set it to false",
        );
    }
    if let Some(bias) = &config.bias
        && bias != "none"
    {
        return unsupported(
            "bias",
            format!("`{bias}`: trained biases change the base model's layers"),
            "train with bias = \"none\"",
        );
    }
    if config
        .modules_to_save
        .as_ref()
        .is_some_and(|m| !m.is_empty())
    {
        return unsupported(
            "modules_to_save",
            format!("{:?}: whole modules replaced", config.modules_to_save),
            "train without modules_to_save (only LoRA pairs are served)",
        );
    }
    if config
        .layers_to_transform
        .as_ref()
        .is_some_and(|v| !v.is_null())
    {
        return unsupported(
            "layers_to_transform",
            "set".into(),
            "adapt every layer (the file's tensors say which exist)",
        );
    }
    if !config.rank_pattern.is_empty() || !config.alpha_pattern.is_empty() {
        return unsupported(
            "rank_pattern / alpha_pattern",
            "per-module ranks or alphas".into(),
            "train with one rank and alpha for every module",
        );
    }
    if config.r == 0 || config.r > MAX_RANK {
        return Err(AdapterError::Config {
            path: path.to_path_buf(),
            message: format!("r = {} is outside 1..={MAX_RANK}", config.r),
        });
    }
    if !config.lora_alpha.is_finite() {
        return Err(AdapterError::Config {
            path: path.to_path_buf(),
            message: "lora_alpha is not a finite number".into(),
        });
    }
    if let Some(name) = &config.base_model_name_or_path
        && !base_matches(name, base_name)
    {
        return Err(AdapterError::Mismatch {
            path: path.parent().unwrap_or(path).to_path_buf(),
            what: "name",
            adapter: format!("`{name}`"),
            base: format!("`{base_name}`"),
        });
    }
    let names = match &config.target_modules {
        Modules::List(names) => names.clone(),
        Modules::One(name) => vec![name.clone()],
    };
    let mut targets = Vec::new();
    for name in names {
        match Target::from_peft(&name) {
            Some(t) if !targets.contains(&t) => targets.push(t),
            Some(_) => {}
            None => {
                return Err(AdapterError::Config {
                    path: path.to_path_buf(),
                    message: format!(
                        "target module `{name}` is not one of q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj"
                    ),
                });
            }
        }
    }
    if targets.is_empty() {
        return Err(AdapterError::Config {
            path: path.to_path_buf(),
            message: "target_modules is empty".into(),
        });
    }
    targets.sort();
    Ok(targets)
}

/// Whether the base model an adapter names is the one served: the last
/// path component, compared without case and without the file-format
/// suffixes a GGUF name adds (`SmolLM2-135M-Instruct` matches
/// `HuggingFaceTB/SmolLM2-135M-Instruct`).
fn base_matches(adapter_base: &str, served: &str) -> bool {
    let norm = |s: &str| {
        s.rsplit('/')
            .next()
            .unwrap_or(s)
            .to_ascii_lowercase()
            .trim_end_matches(".gguf")
            .to_string()
    };
    let (a, b) = (norm(adapter_base), norm(served));
    a == b || b.starts_with(&format!("{a}.")) || a.starts_with(&format!("{b}."))
}

fn read_capped(path: &Path, max: u64) -> Result<Vec<u8>, AdapterError> {
    let io = |message: String| AdapterError::Io {
        path: path.to_path_buf(),
        message,
    };
    let meta = std::fs::metadata(path).map_err(|e| io(e.to_string()))?;
    if !meta.is_file() {
        return Err(io("not a regular file".into()));
    }
    if meta.len() > max {
        return Err(io(format!(
            "{} bytes, over the {max} bytes this host reads",
            meta.len()
        )));
    }
    std::fs::read(path).map_err(|e| io(e.to_string()))
}

/// Tensor `name` as f32, with its shape.
fn read_tensor(
    tensors: &safetensors::SafeTensors<'_>,
    name: &str,
) -> Result<(Vec<f32>, Vec<usize>), String> {
    let view = tensors
        .tensor(name)
        .map_err(|_| format!("tensor `{name}` is missing"))?;
    let values = super::weights::to_f32(view.dtype(), view.data())
        .map_err(|e| format!("tensor `{name}`: {e}"))?;
    Ok((values, view.shape().to_vec()))
}

/// What `adapter_config.json` says of an adapter [`write_peft`] writes.
#[derive(Debug, Clone)]
pub struct PeftSpec {
    /// Rank.
    pub r: usize,
    /// `lora_alpha` (the scale is `alpha / r`).
    pub alpha: f64,
    /// Adapted projections.
    pub targets: Vec<Target>,
    /// `base_model_name_or_path`.
    pub base_model: String,
}

/// Write a PEFT LoRA adapter to `dir`: `adapter_config.json` and
/// `adapter_model.safetensors` with PEFT's names, `[r, in]` / `[out, r]`
/// shapes and f32 entries. `tensors(layer, target)` gives `lora_A` and
/// `lora_B` row-major. What Hugging Face `peft` saves for a Llama model
/// has the same names, shapes and dtypes, so either side loads the other's.
pub fn write_peft(
    dir: &Path,
    cfg: &LlamaConfig,
    spec: &PeftSpec,
    mut tensors: impl FnMut(usize, Target) -> (Vec<f32>, Vec<f32>),
) -> std::io::Result<()> {
    let bytes = |v: Vec<f32>| -> Vec<u8> { v.into_iter().flat_map(f32::to_le_bytes).collect() };
    let r = spec.r;
    let mut entries: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for layer in 0..cfg.layers {
        for &t in &spec.targets {
            let (out, inp) = t.shape(cfg);
            let (a, b) = tensors(layer, t);
            if a.len() != r * inp || b.len() != out * r {
                return Err(std::io::Error::other(format!(
                    "layer {layer} {}: A has {} and B {} entries; rank {r} needs {} and {}",
                    t.peft_name(),
                    a.len(),
                    b.len(),
                    r * inp,
                    out * r
                )));
            }
            entries.push((t.tensor_name(layer, 'A'), vec![r, inp], bytes(a)));
            entries.push((t.tensor_name(layer, 'B'), vec![out, r], bytes(b)));
        }
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = entries
        .iter()
        .map(|(name, shape, data)| {
            let view =
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), data)
                    .expect("shape and bytes agree");
            (name.clone(), view)
        })
        .collect();
    std::fs::create_dir_all(dir)?;
    // PEFT writes `{"format": "pt"}`; `transformers` warns without it.
    let metadata = Some(std::collections::HashMap::from([(
        "format".to_string(),
        "pt".to_string(),
    )]));
    safetensors::serialize_to_file(views, metadata, &dir.join(ADAPTER_WEIGHTS))
        .map_err(std::io::Error::other)?;
    let names: Vec<&str> = spec.targets.iter().map(|t| t.peft_name()).collect();
    let config = serde_json::json!({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": spec.alpha,
        "lora_dropout": 0.0, "target_modules": names, "bias": "none",
        "base_model_name_or_path": spec.base_model, "use_dora": false, "use_rslora": false,
        "modules_to_save": null, "fan_in_fan_out": false, "inference_mode": true,
        "init_lora_weights": true, "layers_to_transform": null, "layers_pattern": null,
        "rank_pattern": {}, "alpha_pattern": {}, "revision": null
    });
    let text = serde_json::to_string_pretty(&config).map_err(std::io::Error::other)?;
    std::fs::write(dir.join(ADAPTER_CONFIG), text + "\n")
}

/// Write a random PEFT adapter of rank `r` (alpha `2r`) on `targets` for a
/// base of shape `cfg` to `dir` (entries uniform in ±0.05, from `seed`):
/// for tests and benches, which make their adapters rather than check any
/// in.
pub fn write_random_peft(
    dir: &Path,
    cfg: &LlamaConfig,
    base_model: &str,
    r: usize,
    targets: &[Target],
    seed: u64,
) -> std::io::Result<()> {
    use rand_chacha::ChaCha8Rng;
    use rand_chacha::rand_core::{RngCore, SeedableRng};
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut uniform = |n: usize| -> Vec<f32> {
        (0..n)
            .map(|_| ((rng.next_u32() as f32 / u32::MAX as f32) * 2.0 - 1.0) * 0.05)
            .collect()
    };
    let spec = PeftSpec {
        r,
        alpha: 2.0 * r as f64,
        targets: targets.to_vec(),
        base_model: base_model.to_string(),
    };
    write_peft(dir, cfg, &spec, |_, t| {
        let (out, inp) = t.shape(cfg);
        (uniform(r * inp), uniform(out * r))
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::inference::batch::StepInput;
    use crate::inference::llama::{
        Llama, RopeLayout, interleaved_to_neox_rows, neox_to_interleaved_rows,
    };
    use crate::inference::weights::{LoadError, WeightSource};
    use crate::inference::{DeviceChoice, open_weights, test_smollm2};

    const BASE: &str = "HuggingFaceTB/SmolLM2-135M-Instruct";

    /// llama.cpp's name of a target's weight in layer `layer`.
    fn gguf_name(layer: usize, t: Target) -> String {
        let part = match t {
            Target::Q => "attn_q",
            Target::K => "attn_k",
            Target::V => "attn_v",
            Target::O => "attn_output",
            Target::Gate => "ffn_gate",
            Target::Up => "ffn_up",
            Target::Down => "ffn_down",
        };
        format!("blk.{layer}.{part}.weight")
    }

    /// A source that serves some matrices from memory, and can present an
    /// interleaved checkpoint in the NeoX layout (Q and K rows permuted,
    /// as a Hugging Face checkpoint of the same model has them).
    struct Edited<'a> {
        inner: &'a dyn WeightSource,
        config: LlamaConfig,
        overrides: HashMap<String, Vec<f32>>,
    }

    impl<'a> Edited<'a> {
        fn new(inner: &'a dyn WeightSource, layout: RopeLayout) -> Edited<'a> {
            let mut config = inner.config().clone();
            let mut overrides = HashMap::new();
            if layout == RopeLayout::NeoX && config.rope_layout == RopeLayout::Interleaved {
                let hd = config.head_dim();
                for layer in 0..config.layers {
                    for (t, heads) in [(Target::Q, config.heads), (Target::K, config.kv_heads)] {
                        let (out, inp) = t.shape(&config);
                        let w = inner.matrix(&gguf_name(layer, t), out, inp).unwrap();
                        overrides.insert(
                            gguf_name(layer, t),
                            interleaved_to_neox_rows(&w, heads, hd, inp),
                        );
                    }
                }
                config.rope_layout = RopeLayout::NeoX;
            }
            Edited {
                inner,
                config,
                overrides,
            }
        }

        /// Merge `adapter` into the weights, in this source's layout.
        fn merge(&mut self, adapter: &LoraAdapter) {
            let cfg = self.config.clone();
            let hd = cfg.head_dim();
            for layer in 0..cfg.layers {
                for &t in &adapter.targets {
                    let (out, inp) = t.shape(&cfg);
                    let name = gguf_name(layer, t);
                    let w = self.read(&name, &[out, inp]).unwrap();
                    let delta = adapter.merged_delta(layer, t).unwrap();
                    let heads = match t {
                        Target::Q => Some(cfg.heads),
                        Target::K => Some(cfg.kv_heads),
                        _ => None,
                    };
                    // The delta is in Hugging Face's row order; an
                    // interleaved checkpoint holds Q and K rows otherwise.
                    let merged = match (heads, cfg.rope_layout) {
                        (Some(heads), RopeLayout::Interleaved) => {
                            let hf = interleaved_to_neox_rows(&w, heads, hd, inp);
                            let sum: Vec<f32> = hf.iter().zip(&delta).map(|(a, b)| a + b).collect();
                            neox_to_interleaved_rows(&sum, heads, hd, inp)
                        }
                        _ => w.iter().zip(&delta).map(|(a, b)| a + b).collect(),
                    };
                    self.overrides.insert(name, merged);
                }
            }
        }
    }

    impl WeightSource for Edited<'_> {
        fn config(&self) -> &LlamaConfig {
            &self.config
        }
        fn has(&self, name: &str) -> bool {
            self.overrides.contains_key(name) || self.inner.has(name)
        }
        fn read(&self, name: &str, dims: &[usize]) -> Result<Vec<f32>, LoadError> {
            match self.overrides.get(name) {
                Some(w) => Ok(w.clone()),
                None => self.inner.read(name, dims),
            }
        }
        fn error(&self, message: String) -> LoadError {
            self.inner.error(message)
        }
    }

    /// Last-token logits of `tokens` run alone through `model`, with
    /// `adapter`.
    fn logits(model: &Llama, tokens: &[u32], adapter: Option<&LoraAdapter>) -> Vec<f32> {
        let mut cache = model.new_cache();
        let mut inputs = [StepInput {
            tokens,
            cache: &mut cache,
            all_logits: false,
            adapter,
        }];
        model.step(&mut inputs).remove(0).remove(0)
    }

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    /// Unmerged LoRA gives the logits of the merged model (W + B·A·α/r)
    /// on every target module, in both RoPE layouts; a mixed batch of
    /// three adapters and the base model gives each sequence its solo
    /// logits.
    #[test]
    fn unmerged_lora_matches_merged_weights_and_mixes_in_one_batch() {
        let (gguf, tokenizer) = open_weights(&test_smollm2()).unwrap();
        let device = DeviceChoice::Cpu.device().unwrap();
        let tokens = tokenizer.encode("The capital of France is").unwrap();
        let dir = tempfile::tempdir().unwrap();
        for layout in [RopeLayout::Interleaved, RopeLayout::NeoX] {
            let source = Edited::new(gguf.as_ref(), layout);
            let cfg = source.config().clone();
            let base = Llama::load(&source, &device).unwrap();
            let path = dir.path().join(format!("all-{layout:?}"));
            write_random_peft(&path, &cfg, BASE, 4, &Target::ALL, 7).unwrap();
            let adapter = LoraAdapter::load(&path, &cfg, "SmolLM2-135M-Instruct", &device).unwrap();
            assert_eq!(adapter.targets, Target::ALL);
            assert_eq!(adapter.scale, 2.0);

            let mut merged_source = Edited::new(gguf.as_ref(), layout);
            merged_source.merge(&adapter);
            let merged = Llama::load(&merged_source, &device).unwrap();
            let want = logits(&merged, &tokens, None);
            let got = logits(&base, &tokens, Some(&adapter));
            let plain = logits(&base, &tokens, None);
            assert!(
                max_diff(&want, &plain) > 0.1,
                "the adapter changes the logits"
            );
            let diff = max_diff(&want, &got);
            assert!(
                diff < 1e-4,
                "{layout:?}: unmerged differs from merged by {diff}"
            );
        }

        // Three adapters and the base model in one batch.
        let source = Edited::new(gguf.as_ref(), RopeLayout::Interleaved);
        let cfg = source.config().clone();
        let model = Llama::load(&source, &device).unwrap();
        let adapters: Vec<LoraAdapter> = [
            (&[Target::Q, Target::V][..], 1),
            (&[Target::O, Target::Down][..], 2),
            (&Target::ALL[..], 3),
        ]
        .iter()
        .map(|(targets, seed)| {
            let path = dir.path().join(format!("mix-{seed}"));
            write_random_peft(&path, &cfg, BASE, 8, targets, *seed).unwrap();
            LoraAdapter::load(&path, &cfg, BASE, &device).unwrap()
        })
        .collect();
        let prompts = ["The capital of France is", "1, 2, 3,", "Hello", "Rust is a"];
        let ids: Vec<Vec<u32>> = prompts
            .iter()
            .map(|p| tokenizer.encode(p).unwrap())
            .collect();
        let choice = |i: usize| adapters.get(i);
        let solo: Vec<Vec<f32>> = (0..4).map(|i| logits(&model, &ids[i], choice(i))).collect();
        let mut caches: Vec<_> = (0..4).map(|_| model.new_cache()).collect();
        let mut inputs: Vec<StepInput<'_, _>> = caches
            .iter_mut()
            .enumerate()
            .map(|(i, cache)| StepInput {
                tokens: &ids[i],
                cache,
                all_logits: false,
                adapter: choice(i),
            })
            .collect();
        let batched = model.step(&mut inputs);
        // A batch changes the matmuls' shapes and so the order of their
        // sums: the base model alone moves its logits (±20) by ~1e-4 too.
        for i in 0..4 {
            let diff = max_diff(&batched[i][0], &solo[i]);
            assert!(diff < 1e-3, "sequence {i} differs in the batch by {diff}");
            // Its own adapter, not its neighbour's.
            let neighbours = logits(&model, &ids[i], choice((i + 1) % 4));
            assert!(
                max_diff(&batched[i][0], &neighbours) > 0.1,
                "{i} ran another adapter"
            );
        }
    }

    #[test]
    fn adapters_for_another_base_or_with_unsupported_options_are_refused() {
        let (gguf, _) = open_weights(&test_smollm2()).unwrap();
        let cfg = gguf.config().clone();
        let device = DeviceChoice::Cpu.device().unwrap();
        let dir = tempfile::tempdir().unwrap();
        write_random_peft(dir.path(), &cfg, BASE, 2, &[Target::Q], 1).unwrap();
        let config_path = dir.path().join(ADAPTER_CONFIG);
        let original: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
        let with = |key: &str, value: serde_json::Value| {
            let mut c = original.clone();
            c[key] = value;
            std::fs::write(&config_path, c.to_string()).unwrap();
            LoraAdapter::load(dir.path(), &cfg, "SmolLM2-135M-Instruct", &device)
                .unwrap_err()
                .to_string()
        };
        let err = with("base_model_name_or_path", "meta-llama/Llama-3.2-1B".into());
        assert!(
            err.contains("`meta-llama/Llama-3.2-1B`") && err.contains("`SmolLM2-135M-Instruct`"),
            "{err}"
        );
        assert!(with("use_dora", true.into()).contains("`use_dora`"));
        assert!(with("bias", "all".into()).contains("`bias`"));
        assert!(
            with("modules_to_save", serde_json::json!(["lm_head"])).contains("`modules_to_save`")
        );
        let err = with("target_modules", serde_json::json!(["q_proj", "lm_head"]));
        assert!(err.contains("`lm_head`"), "{err}");
        // A base of another width: both sides named.
        std::fs::write(&config_path, original.to_string()).unwrap();
        let mut wider = cfg.clone();
        wider.hidden = 1024;
        wider.heads = 16;
        let err = LoraAdapter::load(dir.path(), &wider, BASE, &device)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("hidden size") && err.contains("576") && err.contains("1024"),
            "{err}"
        );
        // More layers than the base.
        let mut shallow = cfg.clone();
        shallow.layers = 10;
        let err = LoraAdapter::load(dir.path(), &shallow, BASE, &device)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("layers up to 30") && err.contains("10"),
            "{err}"
        );
    }

    #[test]
    fn peft_files_round_trip_with_peft_names_shapes_and_dtypes() {
        let (gguf, _) = open_weights(&test_smollm2()).unwrap();
        let cfg = gguf.config().clone();
        let device = DeviceChoice::Cpu.device().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let spec = PeftSpec {
            r: 3,
            alpha: 5.0,
            targets: vec![Target::K, Target::Down],
            base_model: BASE.into(),
        };
        // Distinct, exactly representable entries for every tensor.
        let mut written = HashMap::new();
        write_peft(dir.path(), &cfg, &spec, |layer, t| {
            let (out, inp) = t.shape(&cfg);
            let fill = |n: usize, salt: usize| -> Vec<f32> {
                (0..n)
                    .map(|i| ((i * 7 + layer * 13 + salt) % 1000) as f32 / 1024.0 - 0.5)
                    .collect()
            };
            let pair = (fill(3 * inp, t as usize), fill(out * 3, 100 + t as usize));
            written.insert((layer, t), pair.clone());
            pair
        })
        .unwrap();

        // The file as any safetensors reader sees it.
        let bytes = std::fs::read(dir.path().join(ADAPTER_WEIGHTS)).unwrap();
        let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(file.len(), cfg.layers * 2 * 2);
        let a = file
            .tensor("base_model.model.model.layers.29.self_attn.k_proj.lora_A.weight")
            .unwrap();
        assert_eq!(
            (a.dtype(), a.shape()),
            (safetensors::Dtype::F32, &[3, 576][..])
        );
        let b = file
            .tensor("base_model.model.model.layers.0.mlp.down_proj.lora_B.weight")
            .unwrap();
        assert_eq!(
            (b.dtype(), b.shape()),
            (safetensors::Dtype::F32, &[576, 3][..])
        );
        let config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join(ADAPTER_CONFIG)).unwrap())
                .unwrap();
        assert_eq!(config["peft_type"], "LORA");
        assert_eq!(
            config["target_modules"],
            serde_json::json!(["k_proj", "down_proj"])
        );
        assert_eq!(config["base_model_name_or_path"], BASE);

        // Read back: the same tensors, bit for bit, and alpha / r.
        let adapter = LoraAdapter::load(dir.path(), &cfg, BASE, &device).unwrap();
        assert_eq!(adapter.rank, 3);
        assert_eq!(adapter.scale, 5.0 / 3.0);
        assert_eq!(adapter.targets, [Target::K, Target::Down]);
        for layer in 0..cfg.layers {
            for t in Target::ALL {
                assert_eq!(
                    adapter.peft_tensors(layer, t),
                    written.get(&(layer, t)).cloned(),
                    "layer {layer} {t:?}"
                );
            }
        }
    }
}
