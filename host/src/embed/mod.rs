//! Sentence embeddings: all-MiniLM-L6-v2 (a 6-layer BERT) in burn.
//!
//! Texts are tokenized with the model's own `tokenizer.json` (WordPiece,
//! lower-cased, truncated to 128 tokens), padded to the longest text of the
//! batch, run through the encoder with padded keys masked out of attention,
//! mean-pooled over real tokens only and L2-normalised, as
//! sentence-transformers does.

use std::path::{Path, PathBuf};

use burn::tensor::activation::{gelu, softmax};
use burn::tensor::{Device, Tensor, TensorData};

use crate::inference::{LoadError, ModelError};

#[derive(serde::Deserialize)]
struct BertConfig {
    model_type: String,
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    intermediate_size: usize,
    max_position_embeddings: usize,
    #[serde(default = "default_eps")]
    layer_norm_eps: f64,
}

fn default_eps() -> f64 {
    1e-12
}

struct Linear {
    /// `[in, out]`.
    weight: Tensor<2>,
    /// `[1, out]`.
    bias: Tensor<2>,
}

impl Linear {
    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        x.matmul(self.weight.clone()) + self.bias.clone()
    }
}

struct LayerNorm {
    weight: Tensor<2>,
    bias: Tensor<2>,
    eps: f64,
}

impl LayerNorm {
    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let mean = x.clone().mean_dim(1);
        let centered = x - mean;
        let var = centered.clone().square().mean_dim(1);
        centered * var.add_scalar(self.eps).sqrt().recip() * self.weight.clone() + self.bias.clone()
    }
}

struct Layer {
    query: Linear,
    key: Linear,
    value: Linear,
    attn_out: Linear,
    attn_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    out_norm: LayerNorm,
}

/// A loaded sentence-embedding model.
pub struct Embedder {
    device: Device,
    tokenizer: tokenizers::Tokenizer,
    /// `[vocab, hidden]`, on the host: a lookup is a row copy.
    word: Vec<f32>,
    /// `[positions, hidden]`, on the host.
    position: Vec<f32>,
    /// Token type 0's embedding, `[hidden]`.
    token_type: Vec<f32>,
    embed_norm: LayerNorm,
    layers: Vec<Layer>,
    hidden: usize,
    heads: usize,
    max_positions: usize,
}

struct Weights {
    dir: PathBuf,
    map: memmap2::Mmap,
}

impl Weights {
    fn error(&self, message: String) -> LoadError {
        LoadError {
            path: self.dir.clone(),
            message,
        }
    }

    fn read(&self, name: &str, dims: &[usize]) -> Result<Vec<f32>, LoadError> {
        let tensors = safetensors::SafeTensors::deserialize(&self.map)
            .map_err(|e| self.error(format!("model.safetensors: {e}")))?;
        let view = tensors
            .tensor(name)
            .map_err(|e| self.error(format!("tensor `{name}`: {e}")))?;
        if view.shape() != dims || view.dtype() != safetensors::Dtype::F32 {
            return Err(self.error(format!(
                "tensor `{name}` is {:?} {:?}, expected F32 {dims:?}",
                view.dtype(),
                view.shape()
            )));
        }
        Ok(view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    }
}

impl Embedder {
    /// Load `config.json`, `model.safetensors` and `tokenizer.json` from
    /// `dir`.
    pub fn load(dir: &Path, device: &Device) -> Result<Embedder, LoadError> {
        let err = |message: String| LoadError {
            path: dir.to_path_buf(),
            message,
        };
        let text = std::fs::read_to_string(dir.join("config.json"))
            .map_err(|e| err(format!("config.json: {e}")))?;
        let cfg: BertConfig =
            serde_json::from_str(&text).map_err(|e| err(format!("config.json: {e}")))?;
        if cfg.model_type != "bert" {
            return Err(err(format!(
                "model_type `{}` is not supported for embeddings; supported: bert",
                cfg.model_type
            )));
        }
        let mut tokenizer = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json"))
            .map_err(|e| err(format!("tokenizer.json: {e}")))?;
        // The file pads every text to 128 tokens; batches pad themselves.
        tokenizer.with_padding(None);
        let file = std::fs::File::open(dir.join("model.safetensors"))
            .map_err(|e| err(format!("model.safetensors: {e}")))?;
        // SAFETY: read-only private map, as in the Llama loader.
        let map = unsafe { memmap2::Mmap::map(&file) }
            .map_err(|e| err(format!("model.safetensors: {e}")))?;
        let w = Weights {
            dir: dir.to_path_buf(),
            map,
        };

        let h = cfg.hidden_size;
        let linear = |name: &str, out: usize, inp: usize| -> Result<Linear, LoadError> {
            let weight = w.read(&format!("{name}.weight"), &[out, inp])?;
            let bias = w.read(&format!("{name}.bias"), &[out])?;
            Ok(Linear {
                weight: Tensor::<2>::from_data(
                    TensorData::new(crate::inference::transpose(&weight, out, inp), [inp, out]),
                    device,
                ),
                bias: Tensor::<2>::from_data(TensorData::new(bias, [1, out]), device),
            })
        };
        let norm = |name: &str| -> Result<LayerNorm, LoadError> {
            Ok(LayerNorm {
                weight: Tensor::<2>::from_data(
                    TensorData::new(w.read(&format!("{name}.weight"), &[h])?, [1, h]),
                    device,
                ),
                bias: Tensor::<2>::from_data(
                    TensorData::new(w.read(&format!("{name}.bias"), &[h])?, [1, h]),
                    device,
                ),
                eps: cfg.layer_norm_eps,
            })
        };
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let p = format!("encoder.layer.{i}");
            layers.push(Layer {
                query: linear(&format!("{p}.attention.self.query"), h, h)?,
                key: linear(&format!("{p}.attention.self.key"), h, h)?,
                value: linear(&format!("{p}.attention.self.value"), h, h)?,
                attn_out: linear(&format!("{p}.attention.output.dense"), h, h)?,
                attn_norm: norm(&format!("{p}.attention.output.LayerNorm"))?,
                intermediate: linear(&format!("{p}.intermediate.dense"), cfg.intermediate_size, h)?,
                output: linear(&format!("{p}.output.dense"), h, cfg.intermediate_size)?,
                out_norm: norm(&format!("{p}.output.LayerNorm"))?,
            });
        }
        let vocab = tokenizer.get_vocab_size(true);
        let word = w.read("embeddings.word_embeddings.weight", &[vocab, h])?;
        let position = w.read(
            "embeddings.position_embeddings.weight",
            &[cfg.max_position_embeddings, h],
        )?;
        let token_types = w.read("embeddings.token_type_embeddings.weight", &[2, h])?;
        Ok(Embedder {
            device: device.clone(),
            tokenizer,
            word,
            position,
            token_type: token_types[..h].to_vec(),
            embed_norm: norm("embeddings.LayerNorm")?,
            layers,
            hidden: h,
            heads: cfg.num_attention_heads,
            max_positions: cfg.max_position_embeddings,
        })
    }

    /// Width of the embeddings.
    pub fn dimensions(&self) -> usize {
        self.hidden
    }

    /// One L2-normalised embedding per text, computed as one batch.
    pub fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, ModelError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| ModelError::InvalidInput(format!("cannot tokenize: {e}")))?;
        let (batch, h) = (texts.len(), self.hidden);
        let len = encodings
            .iter()
            .map(|e| e.get_ids().len().min(self.max_positions))
            .max()
            .unwrap_or(1)
            .max(1);
        let mut x = vec![0f32; batch * len * h];
        let mut mask = vec![0f32; batch * len];
        let mut lengths = Vec::with_capacity(batch);
        for (b, enc) in encodings.iter().enumerate() {
            let ids = &enc.get_ids()[..enc.get_ids().len().min(len)];
            lengths.push(ids.len());
            for (t, &id) in ids.iter().enumerate() {
                let id = id as usize;
                let row = &mut x[(b * len + t) * h..(b * len + t + 1) * h];
                for (j, v) in row.iter_mut().enumerate() {
                    *v = self.word[id * h + j] + self.position[t * h + j] + self.token_type[j];
                }
                mask[b * len + t] = 1.0;
            }
        }
        let rows = batch * len;
        let mut x = self.embed_norm.forward(Tensor::<2>::from_data(
            TensorData::new(x, [rows, h]),
            &self.device,
        ));
        // Padded keys get -inf-like scores: [batch, 1, 1, len].
        let key_bias: Vec<f32> = mask
            .iter()
            .map(|&m| if m > 0.0 { 0.0 } else { -1e9 })
            .collect();
        let key_bias =
            Tensor::<4>::from_data(TensorData::new(key_bias, [batch, 1, 1, len]), &self.device);
        let hd = h / self.heads;
        let scale = 1.0 / (hd as f64).sqrt();
        for layer in &self.layers {
            let split = |t: Tensor<2>| t.reshape([batch, len, self.heads, hd]).swap_dims(1, 2);
            let q = split(layer.query.forward(x.clone()));
            let k = split(layer.key.forward(x.clone()));
            let v = split(layer.value.forward(x.clone()));
            let scores = q.matmul(k.swap_dims(2, 3)).mul_scalar(scale) + key_bias.clone();
            let context = softmax(scores, 3)
                .matmul(v)
                .swap_dims(1, 2)
                .reshape([rows, h]);
            x = layer.attn_norm.forward(layer.attn_out.forward(context) + x);
            let inner = gelu(layer.intermediate.forward(x.clone()));
            x = layer.out_norm.forward(layer.output.forward(inner) + x);
        }
        let hidden = x
            .into_data()
            .try_into_vec::<f32>()
            .map_err(|e| ModelError::Failed(format!("reading embeddings: {e:?}")))?;
        Ok((0..batch)
            .map(|b| {
                let mut pooled = vec![0f32; h];
                for t in 0..lengths[b] {
                    let row = &hidden[(b * len + t) * h..(b * len + t + 1) * h];
                    pooled.iter_mut().zip(row).for_each(|(p, v)| *p += v);
                }
                let n = lengths[b].max(1) as f32;
                pooled.iter_mut().for_each(|p| *p /= n);
                let norm = pooled.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
                pooled.iter_mut().for_each(|p| *p /= norm);
                pooled
            })
            .collect())
    }
}

/// Cosine similarity of two vectors.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb).max(1e-12)
}
