//! Where a model's weights come from: a GGUF file or a Hugging Face
//! directory (`config.json` + `*.safetensors`). Both are read through
//! [`WeightSource`], under llama.cpp's tensor names.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::gguf::{GgufFile, Value};
use super::llama::{LlamaConfig, RopeLayout};

/// Architectures the Llama code runs.
pub const SUPPORTED_ARCHITECTURES: &[&str] = &["llama", "qwen2", "mistral"];

/// Why a model cannot be loaded.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct LoadError {
    /// The file or directory.
    pub path: PathBuf,
    /// What is wrong, and where it helps, what to do.
    pub message: String,
}

/// Weights under llama.cpp's names (`blk.0.attn_q.weight`, ...), each
/// matrix row-major `[out, in]`.
pub trait WeightSource {
    /// The model's shape.
    fn config(&self) -> &LlamaConfig;
    /// Whether tensor `name` exists.
    fn has(&self, name: &str) -> bool;
    /// Tensor `name` as f32, checked to have shape `dims` (outermost first).
    fn read(&self, name: &str, dims: &[usize]) -> Result<Vec<f32>, LoadError>;
    /// Matrix `name`, dequantized, checked to be `[rows, cols]`.
    fn matrix(&self, name: &str, rows: usize, cols: usize) -> Result<Vec<f32>, LoadError> {
        self.read(name, &[rows, cols])
    }
    /// Matrix `name` in its quantized blocks, checked to be `[rows, cols]`,
    /// when the source holds it in a type the kernels multiply; `None`
    /// for any other type (read it with [`matrix`](Self::matrix)).
    fn quantized(
        &self,
        name: &str,
        rows: usize,
        cols: usize,
    ) -> Result<Option<tessera_kernels::QMatrix>, LoadError> {
        let _ = (name, rows, cols);
        Ok(None)
    }
    /// Vector `name`, checked to hold `len` values.
    fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>, LoadError> {
        self.read(name, &[len])
    }
    /// Tensor `name` was copied (dequantized, or its rows reordered) and
    /// its bytes in the source are not needed any more: a memory-mapped
    /// source lets the pages go. A no-op by default.
    fn release(&self, name: &str) {
        let _ = name;
    }
    /// An error about this source.
    fn error(&self, message: String) -> LoadError;
}

/// A GGUF checkpoint.
pub struct GgufWeights {
    file: GgufFile,
    /// The file, memory-mapped: quantized tensors are slices of it.
    map: bytes::Bytes,
    config: LlamaConfig,
}

impl GgufWeights {
    /// Read the header of `path` and the model shape from its metadata.
    pub fn open(path: &Path) -> Result<GgufWeights, LoadError> {
        let err = |message: String| LoadError {
            path: path.to_path_buf(),
            message,
        };
        let file = GgufFile::open(path).map_err(|e| err(e.to_string()))?;
        let arch = file
            .architecture()
            .ok_or_else(|| err("metadata `general.architecture` is missing".into()))?
            .to_string();
        if !SUPPORTED_ARCHITECTURES.contains(&arch.as_str()) {
            return Err(err(format!(
                "architecture `{arch}` is not supported; supported: {}",
                SUPPORTED_ARCHITECTURES.join(", ")
            )));
        }
        let int = |key: &str| {
            file.require_u64(&format!("{arch}.{key}"))
                .map(|v| v as usize)
                .map_err(|e| err(e.to_string()))
        };
        let float = |key: &str, default: f64| {
            file.get(&format!("{arch}.{key}"))
                .and_then(Value::as_f64)
                .unwrap_or(default)
        };
        let heads = int("attention.head_count")?;
        let hidden = int("embedding_length")?;
        let embd = file
            .tensor("token_embd.weight")
            .ok_or_else(|| err("tensor `token_embd.weight` is missing".into()))?;
        let vocab = *embd.dims.get(1).unwrap_or(&0) as usize;
        let config = LlamaConfig {
            layers: int("block_count")?,
            hidden,
            ffn: int("feed_forward_length")?,
            heads,
            kv_heads: int("attention.head_count_kv").unwrap_or(heads),
            vocab,
            rope_base: float("rope.freq_base", 10_000.0),
            rms_eps: float("attention.layer_norm_rms_epsilon", 1e-5),
            context: int("context_length")?,
            rope_layout: if arch == "qwen2" {
                RopeLayout::NeoX
            } else {
                RopeLayout::Interleaved
            },
            qkv_bias: file.tensor("blk.0.attn_q.bias").is_some(),
            architecture: arch.clone(),
        };
        if let Ok(rope_dims) = int("rope.dimension_count")
            && rope_dims != config.head_dim()
        {
            return Err(err(format!(
                "partial RoPE ({rope_dims} of {} head dimensions) is not supported",
                config.head_dim()
            )));
        }
        let map = file.map().map_err(|e| err(e.to_string()))?;
        Ok(GgufWeights { file, map, config })
    }

    /// The parsed file.
    pub fn file(&self) -> &GgufFile {
        &self.file
    }

    fn read_tensor(&self, name: &str, dims: &[usize]) -> Result<Vec<f32>, LoadError> {
        let info = self
            .file
            .tensor(name)
            .ok_or_else(|| self.error(format!("tensor `{name}` is missing")))?;
        // GGUF lists dimensions innermost first.
        let have: Vec<usize> = info.dims.iter().rev().map(|&d| d as usize).collect();
        if have != dims {
            return Err(self.error(format!(
                "tensor `{name}` has shape {have:?}, expected {dims:?}"
            )));
        }
        let (info, bytes) = self
            .file
            .tensor_slice(&self.map, name)
            .map_err(|e| self.error(e.to_string()))?;
        let values = super::quant::dequantize(info.ty, &bytes, info.elements() as usize)
            .map_err(|e| self.error(format!("tensor `{name}`: {e}")))?;
        self.release(name);
        Ok(values)
    }
}

impl WeightSource for GgufWeights {
    fn config(&self) -> &LlamaConfig {
        &self.config
    }

    fn has(&self, name: &str) -> bool {
        self.file.tensor(name).is_some()
    }

    fn read(&self, name: &str, dims: &[usize]) -> Result<Vec<f32>, LoadError> {
        self.read_tensor(name, dims)
    }

    fn quantized(
        &self,
        name: &str,
        rows: usize,
        cols: usize,
    ) -> Result<Option<tessera_kernels::QMatrix>, LoadError> {
        use super::gguf::TensorType;
        use tessera_kernels::QType;
        let info = self
            .file
            .tensor(name)
            .ok_or_else(|| self.error(format!("tensor `{name}` is missing")))?;
        let ty = match info.ty {
            TensorType::Q8_0 => QType::Q8_0,
            TensorType::Q4_0 => QType::Q4_0,
            TensorType::Q4_1 => QType::Q4_1,
            TensorType::Q4K => QType::Q4_K,
            TensorType::Q6K => QType::Q6_K,
            _ => return Ok(None),
        };
        let have: Vec<usize> = info.dims.iter().rev().map(|&d| d as usize).collect();
        if have != [rows, cols] {
            return Err(self.error(format!(
                "tensor `{name}` has shape {have:?}, expected {:?}",
                [rows, cols]
            )));
        }
        let (_, bytes) = self
            .file
            .tensor_slice(&self.map, name)
            .map_err(|e| self.error(e.to_string()))?;
        tessera_kernels::QMatrix::new(ty, rows, cols, bytes)
            .map(Some)
            .map_err(|e| self.error(format!("tensor `{name}`: {e}")))
    }

    fn release(&self, name: &str) {
        let Ok((_, bytes)) = self.file.tensor_slice(&self.map, name) else {
            return;
        };
        // The whole pages inside the tensor: those at its ends may hold
        // a neighbour's bytes.
        let page = 4096;
        let start = (bytes.as_ptr() as usize).next_multiple_of(page);
        let end = (bytes.as_ptr() as usize + bytes.len()) / page * page;
        if end > start {
            // SAFETY: the range lies inside the live, private, read-only
            // file mapping `self.map` holds, and nothing in the process
            // writes through it. MADV_DONTNEED drops these pages from the
            // process; a later read faults them in again from the file, so
            // the bytes any other slice sees stay the same.
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
            }
        }
    }

    fn error(&self, message: String) -> LoadError {
        LoadError {
            path: self.file.path.clone(),
            message,
        }
    }
}

/// A Hugging Face checkpoint directory: `config.json`, one or more
/// `*.safetensors`, `tokenizer.json` (and `tokenizer_config.json` for the
/// chat template).
pub struct HfWeights {
    dir: PathBuf,
    config: LlamaConfig,
    /// Tensor name (Hugging Face's) -> file holding it.
    index: HashMap<String, PathBuf>,
    files: HashMap<PathBuf, memmap2::Mmap>,
}

#[derive(serde::Deserialize)]
struct HfConfig {
    model_type: String,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    vocab_size: usize,
    #[serde(default = "default_rope_theta")]
    rope_theta: f64,
    #[serde(default = "default_rms_eps")]
    rms_norm_eps: f64,
    #[serde(default = "default_context")]
    max_position_embeddings: usize,
    head_dim: Option<usize>,
}

fn default_rope_theta() -> f64 {
    10_000.0
}
fn default_rms_eps() -> f64 {
    1e-6
}
fn default_context() -> usize {
    4096
}

impl HfWeights {
    /// Read `dir/config.json` and index the tensors of its safetensors files.
    pub fn open(dir: &Path) -> Result<HfWeights, LoadError> {
        let err = |path: &Path, message: String| LoadError {
            path: path.to_path_buf(),
            message,
        };
        let config_path = dir.join("config.json");
        let text = std::fs::read_to_string(&config_path)
            .map_err(|e| err(&config_path, format!("cannot read it: {e}")))?;
        let hf: HfConfig = serde_json::from_str(&text)
            .map_err(|e| err(&config_path, format!("not a Llama-family config: {e}")))?;
        if !SUPPORTED_ARCHITECTURES.contains(&hf.model_type.as_str()) {
            return Err(err(
                &config_path,
                format!(
                    "model_type `{}` is not supported; supported: {}",
                    hf.model_type,
                    SUPPORTED_ARCHITECTURES.join(", ")
                ),
            ));
        }
        if let Some(head_dim) = hf.head_dim
            && head_dim * hf.num_attention_heads != hf.hidden_size
        {
            return Err(err(
                &config_path,
                format!(
                    "head_dim {head_dim} × {} heads differs from hidden_size {}; not supported",
                    hf.num_attention_heads, hf.hidden_size
                ),
            ));
        }

        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| err(dir, format!("cannot list it: {e}")))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
            .collect();
        paths.sort();
        if paths.is_empty() {
            return Err(err(dir, "no *.safetensors files".into()));
        }
        let mut index = HashMap::new();
        let mut files = HashMap::new();
        for path in paths {
            let file =
                std::fs::File::open(&path).map_err(|e| err(&path, format!("cannot open: {e}")))?;
            // SAFETY: the map is read-only and private to this loader; a
            // file changed underneath it while loading gives wrong weights,
            // the same as changing it before.
            let map = unsafe { memmap2::Mmap::map(&file) }
                .map_err(|e| err(&path, format!("cannot map: {e}")))?;
            let (_, meta) = safetensors::SafeTensors::read_metadata(&map)
                .map_err(|e| err(&path, format!("not a safetensors file: {e}")))?;
            for name in meta.tensors().keys() {
                index.insert(name.clone(), path.clone());
            }
            files.insert(path, map);
        }
        let qkv_bias = index.contains_key("model.layers.0.self_attn.q_proj.bias");
        let config = LlamaConfig {
            layers: hf.num_hidden_layers,
            hidden: hf.hidden_size,
            ffn: hf.intermediate_size,
            heads: hf.num_attention_heads,
            kv_heads: hf.num_key_value_heads.unwrap_or(hf.num_attention_heads),
            vocab: hf.vocab_size,
            rope_base: hf.rope_theta,
            rms_eps: hf.rms_norm_eps,
            context: hf.max_position_embeddings,
            rope_layout: RopeLayout::NeoX,
            qkv_bias,
            architecture: hf.model_type,
        };
        Ok(HfWeights {
            dir: dir.to_path_buf(),
            config,
            index,
            files,
        })
    }

    fn read_tensor(&self, name: &str, dims: &[usize]) -> Result<Vec<f32>, LoadError> {
        let hf = hf_name(name)
            .ok_or_else(|| self.error(format!("no Hugging Face name for tensor `{name}`")))?;
        let path = self
            .index
            .get(&hf)
            .ok_or_else(|| self.error(format!("tensor `{hf}` is missing")))?;
        let tensors = safetensors::SafeTensors::deserialize(&self.files[path])
            .map_err(|e| self.error(format!("{}: {e}", path.display())))?;
        let view = tensors
            .tensor(&hf)
            .map_err(|e| self.error(format!("tensor `{hf}`: {e}")))?;
        if view.shape() != dims {
            return Err(self.error(format!(
                "tensor `{hf}` has shape {:?}, expected {dims:?}",
                view.shape()
            )));
        }
        to_f32(view.dtype(), view.data()).map_err(|e| self.error(format!("tensor `{hf}`: {e}")))
    }
}

/// A safetensors tensor's bytes as f32: F32, F16 or BF16.
pub(crate) fn to_f32(dtype: safetensors::Dtype, data: &[u8]) -> Result<Vec<f32>, String> {
    use safetensors::Dtype;
    Ok(match dtype {
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F16 => data
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::BF16 => data
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        other => return Err(format!("dtype {other:?}; supported: F32, F16, BF16")),
    })
}

/// The Hugging Face name of a llama.cpp tensor name.
fn hf_name(name: &str) -> Option<String> {
    let fixed = match name {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(fixed) = fixed {
        return Some(fixed.to_string());
    }
    let rest = name.strip_prefix("blk.")?;
    let (layer, part) = rest.split_once('.')?;
    let part = match part {
        "attn_norm.weight" => "input_layernorm.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_q.bias" => "self_attn.q_proj.bias",
        "attn_k.bias" => "self_attn.k_proj.bias",
        "attn_v.bias" => "self_attn.v_proj.bias",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{part}"))
}

impl WeightSource for HfWeights {
    fn config(&self) -> &LlamaConfig {
        &self.config
    }

    fn has(&self, name: &str) -> bool {
        hf_name(name).is_some_and(|hf| self.index.contains_key(&hf))
    }

    fn read(&self, name: &str, dims: &[usize]) -> Result<Vec<f32>, LoadError> {
        self.read_tensor(name, dims)
    }

    fn error(&self, message: String) -> LoadError {
        LoadError {
            path: self.dir.clone(),
            message,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_hugging_face() {
        assert_eq!(
            hf_name("blk.3.ffn_down.weight").unwrap(),
            "model.layers.3.mlp.down_proj.weight"
        );
        assert_eq!(hf_name("output.weight").unwrap(), "lm_head.weight");
        assert_eq!(hf_name("blk.3.unknown"), None);
    }

    #[test]
    fn unsupported_architecture_is_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"model_type":"gpt2","hidden_size":8,"intermediate_size":8,"num_hidden_layers":1,"num_attention_heads":2,"vocab_size":10}"#,
        )
        .unwrap();
        let err = HfWeights::open(dir.path()).err().unwrap();
        assert!(
            err.message.contains("model_type `gpt2` is not supported"),
            "{err}"
        );
        assert!(err.message.contains("llama, qwen2, mistral"));
    }
}
