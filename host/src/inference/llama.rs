//! The Llama-family decoder (llama, qwen2, mistral) in burn.
//!
//! The model code is backend-free: the [`Device`] passed to
//! [`Llama::load`] picks burn's `flex` CPU backend or wgpu. One forward pass
//! runs a *batch step*: any number of sequences, each adding one or more
//! tokens (a prompt chunk or one decoded token) to its own KV cache. The
//! projections and the MLP see every token of every sequence as one matrix,
//! so concurrent generations share their weight reads; attention runs per
//! sequence against that sequence's cache.
//!
//! RoPE comes in two layouts: interleaved pairs `(2i, 2i+1)` (llama.cpp's
//! GGUF Llama files) and NeoX halves `(i, i + d/2)` (Hugging Face weights,
//! Qwen2). Rotating pairs commutes with permuting a head's dimensions, and
//! attention scores are dot products of query and key heads, so interleaved
//! weights are permuted to the NeoX layout at load time and one kernel
//! serves both.

use burn::tensor::activation::{silu, softmax};
use burn::tensor::quantization::{QuantScheme, QuantStore, QuantValue, ScaleDtype};
use burn::tensor::{Device, Tensor, TensorData};

use super::batch::{BatchModel, ModelShape, StepInput};
use super::lora::{LoraAdapter, Target};
use super::weights::{LoadError, WeightSource};

/// How a checkpoint pairs the dimensions that RoPE rotates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeLayout {
    /// Pairs `(2i, 2i+1)`: llama.cpp's layout for Llama GGUF files.
    Interleaved,
    /// Pairs `(i, i + d/2)`: Hugging Face's `rotate_half`, Qwen2 GGUF files.
    NeoX,
}

/// The shape of a Llama-family model.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    /// Architecture name as the checkpoint gives it (`llama`, `qwen2`, ...).
    pub architecture: String,
    /// Decoder layers.
    pub layers: usize,
    /// Width of the residual stream.
    pub hidden: usize,
    /// Width of the MLP.
    pub ffn: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (grouped-query attention when fewer than `heads`).
    pub kv_heads: usize,
    /// Vocabulary size.
    pub vocab: usize,
    /// RoPE base frequency.
    pub rope_base: f64,
    /// RMSNorm epsilon.
    pub rms_eps: f64,
    /// Longest context the model was trained for.
    pub context: usize,
    /// RoPE pairing of the checkpoint's Q and K weights.
    pub rope_layout: RopeLayout,
    /// Whether Q, K and V projections carry a bias (Qwen2).
    pub qkv_bias: bool,
}

impl LlamaConfig {
    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden / self.heads
    }

    /// Bytes of KV cache one token takes (f32 keys and values, all layers).
    pub fn kv_bytes_per_token(&self) -> usize {
        self.layers * 2 * self.kv_heads * self.head_dim() * std::mem::size_of::<f32>()
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.heads == 0 || self.kv_heads == 0 || self.layers == 0 {
            return Err("layer and head counts must be positive".into());
        }
        if !self.hidden.is_multiple_of(self.heads) {
            return Err(format!(
                "hidden size {} is not a multiple of the {} heads",
                self.hidden, self.heads
            ));
        }
        if !self.heads.is_multiple_of(self.kv_heads) {
            return Err(format!(
                "{} query heads cannot be grouped over {} key/value heads",
                self.heads, self.kv_heads
            ));
        }
        if !self.head_dim().is_multiple_of(2) {
            return Err(format!("head width {} is odd", self.head_dim()));
        }
        Ok(())
    }
}

/// How the burn model holds its projection matrices (the seven per layer
/// and the output head; norms, biases and the embedding table stay f32).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BurnWeights {
    /// 32-bit floats: what the checkpoint's values dequantize to. Training
    /// (`tessera adapt`) and the LoRA merge tests read these.
    #[default]
    F32,
    /// Signed 8-bit values in blocks of [`Q8_BLOCK`] inputs of one output,
    /// one f32 scale a block: 1.125 bytes a weight against f32's 4.
    /// burn quantizes each matrix on the device at load, so the f32
    /// matrices never stay resident; on wgpu cubecl's tiled matmul kernels
    /// read the blocks as they load a tile (burn's CPU backend dequantizes
    /// a matrix for each product: there this is a correctness path).
    Q8Blocks,
}

/// Values per scale in [`BurnWeights::Q8Blocks`]: the GGUF block width.
pub const Q8_BLOCK: usize = 32;

/// How far [`BurnWeights::Q8Blocks`] may move a logit, as a fraction of the
/// largest logit, against the same model in f32. Measured on SmolLM2-135M
/// Q4_1 after "The capital of France is": 0.63 against a largest logit of
/// 19.8 (0.032), with each weight within 1/254 of its block's largest
/// (0.54% RMS): thirty layers of a small model carry that far. The top
/// three tokens stay, p(" Paris") goes from 0.773 to 0.765.
pub const Q8_LOGIT_TOLERANCE: f32 = 0.05;

impl BurnWeights {
    /// `f32` or `q8`.
    pub fn as_str(self) -> &'static str {
        match self {
            BurnWeights::F32 => "f32",
            BurnWeights::Q8Blocks => "q8",
        }
    }

    /// The burn scheme of a matrix stored `[outputs, inputs]`: blocks of
    /// [`Q8_BLOCK`] inputs of one output. `None` where the matrix stays f32
    /// (an input width the blocks do not divide).
    fn scheme(self, inputs: usize) -> Option<QuantScheme> {
        match self {
            BurnWeights::Q8Blocks if inputs.is_multiple_of(Q8_BLOCK) => Some(
                QuantScheme::default()
                    .with_value(QuantValue::Q8S)
                    .with_store(QuantStore::PackedU32(0))
                    .per_block([1, Q8_BLOCK as u8], ScaleDtype::F32),
            ),
            _ => None,
        }
    }

    /// Bytes a matrix of `outputs × inputs` weights takes held this way.
    fn bytes(self, outputs: usize, inputs: usize) -> usize {
        let n = outputs * inputs;
        match self.scheme(inputs) {
            Some(_) => n + n / Q8_BLOCK * 4,
            None => n * 4,
        }
    }
}

struct Layer {
    attn_norm: Tensor<2>,
    wq: Tensor<2>,
    wk: Tensor<2>,
    wv: Tensor<2>,
    bq: Option<Tensor<2>>,
    bk: Option<Tensor<2>>,
    bv: Option<Tensor<2>>,
    wo: Tensor<2>,
    ffn_norm: Tensor<2>,
    w_gate: Tensor<2>,
    w_up: Tensor<2>,
    w_down: Tensor<2>,
}

/// Keys and values seen so far by one sequence, per layer: buffers of
/// `[kv_heads, capacity, head_dim]` whose first `len` rows are written.
/// A step writes its new rows in place (burn assigns into a buffer nothing
/// else holds); a full buffer is copied once into one [`KV_CHUNK`] rows
/// larger. Concatenating the whole cache with the new rows at every step,
/// as before, copied every cached row again for each token.
pub struct KvCache {
    layers: Vec<Option<(Tensor<3>, Tensor<3>)>>,
    len: usize,
}

/// Rows a [`KvCache`] buffer grows by: at most this many rows per layer
/// are allocated past what a sequence has written (for SmolLM2, 5.6 MiB a
/// sequence in f32), and a sequence of `t` tokens is copied `t / KV_CHUNK`
/// times.
pub const KV_CHUNK: usize = 128;

impl KvCache {
    /// Tokens cached.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Keep the first `len` tokens only: later rows are written over.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Layer `layer`'s key and value buffers, taken out of the cache, with
    /// room for `n` rows after the `len` written ones (`shape` is
    /// `[kv_heads, head_dim]`).
    fn room(
        &mut self,
        layer: usize,
        n: usize,
        [heads, hd]: [usize; 2],
        device: &Device,
    ) -> (Tensor<3>, Tensor<3>) {
        let need = self.len + n;
        match self.layers[layer].take() {
            Some((k, v)) if k.dims()[1] >= need => (k, v),
            old => {
                let capacity = need.next_multiple_of(KV_CHUNK);
                let written = self.len;
                let grow = |old: Option<Tensor<3>>| {
                    let fresh = Tensor::<3>::zeros([heads, capacity, hd], device);
                    match old {
                        Some(old) if written > 0 => fresh
                            .slice_assign([0..heads, 0..written, 0..hd], old.narrow(1, 0, written)),
                        _ => fresh,
                    }
                };
                let (k, v) = old.unzip();
                (grow(k), grow(v))
            }
        }
    }
}

impl BatchModel for Llama {
    type Cache = KvCache;

    fn shape(&self) -> ModelShape {
        ModelShape {
            context: self.config.context,
            vocab: self.config.vocab,
            kv_bytes_per_token: self.config.kv_bytes_per_token(),
        }
    }

    fn new_cache(&self) -> KvCache {
        Llama::new_cache(self)
    }

    fn truncate(&self, cache: &mut KvCache, len: usize) {
        cache.truncate(len);
    }

    fn step(&self, inputs: &mut [StepInput<'_, KvCache>]) -> Vec<Vec<Vec<f32>>> {
        Llama::step(self, inputs)
    }
}

/// A Llama-family model loaded on one device.
pub struct Llama {
    config: LlamaConfig,
    device: Device,
    /// Token embeddings, `[vocab, hidden]`, kept on the host: a lookup is a
    /// row copy.
    embeddings: Vec<f32>,
    layers: Vec<Layer>,
    norm: Tensor<2>,
    /// Output projection `[hidden, vocab]`.
    head: Tensor<2>,
    /// RoPE tables, `[context, head_dim / 2]` each.
    cos: Vec<f32>,
    sin: Vec<f32>,
    /// How the projection matrices are held.
    weights: BurnWeights,
    /// Bytes the projection matrices, norms and biases take on the device.
    device_bytes: usize,
}

impl Llama {
    /// Load the model in `source` onto `device`, its matrices in f32.
    pub fn load(source: &dyn WeightSource, device: &Device) -> Result<Llama, LoadError> {
        Self::load_with(source, device, BurnWeights::F32)
    }

    /// Load the model in `source` onto `device`, its projection matrices
    /// held as `weights` says.
    pub fn load_with(
        source: &dyn WeightSource,
        device: &Device,
        weights: BurnWeights,
    ) -> Result<Llama, LoadError> {
        let config = source.config().clone();
        config.validate().map_err(|m| source.error(m))?;
        let hd = config.head_dim();
        let (h, ffn) = (config.hidden, config.ffn);
        let kv = config.kv_heads * hd;
        let device_bytes = std::cell::Cell::new(0usize);

        // Stored [out, in]; the forward pass multiplies x · W, so W is used
        // as [in, out]. In f32 it is transposed here. Quantized, it is
        // quantized as stored, in blocks of 32 inputs of one output (where
        // the GGUF's own blocks are, so a requantized Q4/Q8 block keeps its
        // range; blocks of 32 outputs of one input moved the logits twice
        // as far), and used through a transposed view: cubecl packs four
        // 8-bit values a word along a tensor's last dimension, so the
        // blocks must run along it.
        let place = |w: Vec<f32>, rows: usize, cols: usize| {
            device_bytes.set(device_bytes.get() + weights.bytes(rows, cols));
            match weights.scheme(cols) {
                Some(scheme) => Tensor::<2>::from_data(TensorData::new(w, [rows, cols]), device)
                    .quantize_dynamic(&scheme)
                    .transpose(),
                None => Tensor::<2>::from_data(
                    TensorData::new(transpose(&w, rows, cols), [cols, rows]),
                    device,
                ),
            }
        };
        let matrix = |name: &str, rows: usize, cols: usize, permute_heads: Option<usize>| {
            let mut w = source.matrix(name, rows, cols)?;
            if let (Some(heads), RopeLayout::Interleaved) = (permute_heads, config.rope_layout) {
                w = interleaved_to_neox_rows(&w, heads, hd, cols);
            }
            Ok::<_, LoadError>(place(w, rows, cols))
        };
        let vector = |name: &str, len: usize, permute_heads: Option<usize>| {
            let mut v = source.vector(name, len)?;
            if let (Some(heads), RopeLayout::Interleaved) = (permute_heads, config.rope_layout) {
                v = interleaved_to_neox_rows(&v, heads, hd, 1);
            }
            device_bytes.set(device_bytes.get() + len * 4);
            Ok::<_, LoadError>(Tensor::<2>::from_data(TensorData::new(v, [1, len]), device))
        };

        let mut layers = Vec::with_capacity(config.layers);
        for i in 0..config.layers {
            let name = |part: &str| format!("blk.{i}.{part}");
            let bias = |part: &str, len, heads| {
                config
                    .qkv_bias
                    .then(|| vector(&name(part), len, heads))
                    .transpose()
            };
            layers.push(Layer {
                attn_norm: vector(&name("attn_norm.weight"), h, None)?,
                wq: matrix(&name("attn_q.weight"), h, h, Some(config.heads))?,
                wk: matrix(&name("attn_k.weight"), kv, h, Some(config.kv_heads))?,
                wv: matrix(&name("attn_v.weight"), kv, h, None)?,
                bq: bias("attn_q.bias", h, Some(config.heads))?,
                bk: bias("attn_k.bias", kv, Some(config.kv_heads))?,
                bv: bias("attn_v.bias", kv, None)?,
                wo: matrix(&name("attn_output.weight"), h, h, None)?,
                ffn_norm: vector(&name("ffn_norm.weight"), h, None)?,
                w_gate: matrix(&name("ffn_gate.weight"), ffn, h, None)?,
                w_up: matrix(&name("ffn_up.weight"), ffn, h, None)?,
                w_down: matrix(&name("ffn_down.weight"), h, ffn, None)?,
            });
        }
        let embeddings = source.matrix("token_embd.weight", config.vocab, h)?;
        let head = if source.has("output.weight") {
            matrix("output.weight", config.vocab, h, None)?
        } else {
            place(embeddings.clone(), config.vocab, h)
        };
        let norm = vector("output_norm.weight", h, None)?;
        let (cos, sin) = rope_tables(config.context, hd, config.rope_base);
        Ok(Llama {
            config,
            device: device.clone(),
            embeddings,
            layers,
            norm,
            head,
            cos,
            sin,
            weights,
            device_bytes: device_bytes.get(),
        })
    }

    /// How the projection matrices are held.
    pub fn weights(&self) -> BurnWeights {
        self.weights
    }

    /// Bytes the model's matrices, norms and biases take on its device
    /// (the embedding table is on the host: a lookup is a row copy).
    pub fn device_bytes(&self) -> usize {
        self.device_bytes
    }

    /// How many of the projection matrices the device holds quantized, out
    /// of how many: read back from the tensors' types, so it reports what
    /// burn keeps, not what was asked for.
    pub fn quantized_matrices(&self) -> (usize, usize) {
        let matrices = self
            .layers
            .iter()
            .flat_map(|l| [&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down])
            .chain([&self.head]);
        let (mut quantized, mut total) = (0, 0);
        for m in matrices {
            total += 1;
            quantized += usize::from(matches!(m.dtype(), burn::tensor::DType::QFloat(_)));
        }
        (quantized, total)
    }

    /// The model's shape.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// The device it runs on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// An empty cache for a new sequence.
    pub fn new_cache(&self) -> KvCache {
        KvCache {
            layers: (0..self.config.layers).map(|_| None).collect(),
            len: 0,
        }
    }

    /// Run one batch step. Returns, per input, the logits of its last new
    /// token (or of every new token with `all_logits`), each `vocab` long.
    ///
    /// # Panics
    ///
    /// If an input has no tokens, a token id is outside the vocabulary, or
    /// a sequence would outgrow the context; the scheduler checks these.
    pub fn step(&self, inputs: &mut [StepInput<'_, KvCache>]) -> Vec<Vec<Vec<f32>>> {
        let cfg = &self.config;
        let x = self.hidden(inputs);

        // Logits only for the rows someone reads.
        let mut wanted = Vec::new();
        let mut counts = Vec::with_capacity(inputs.len());
        let mut row = 0;
        for input in inputs.iter() {
            let n = input.tokens.len();
            if input.all_logits {
                wanted.push(x.clone().narrow(0, row, n));
                counts.push(n);
            } else {
                wanted.push(x.clone().narrow(0, row + n - 1, 1));
                counts.push(1);
            }
            row += n;
        }
        let picked = if wanted.len() == 1 {
            wanted.pop().unwrap()
        } else {
            Tensor::cat(wanted, 0)
        };
        let flat = self
            .logits(picked)
            .into_data()
            .try_into_vec::<f32>()
            .expect("logits are f32");
        let mut chunks = flat.chunks_exact(cfg.vocab).map(<[f32]>::to_vec);
        counts
            .into_iter()
            .map(|n| chunks.by_ref().take(n).collect())
            .collect()
    }

    /// Logits (`[rows, vocab]`) of final hidden states from
    /// [`hidden`](Self::hidden).
    pub(crate) fn logits(&self, hidden: Tensor<2>) -> Tensor<2> {
        rms_norm(hidden, &self.norm, self.config.rms_eps).matmul(self.head.clone())
    }

    /// The forward pass of [`step`](Self::step) up to the final hidden
    /// state of every new token (`[rows, hidden]`, inputs in order), the
    /// caches updated. When an adapter's tensors are autodiff leaves the
    /// result carries their graph: `tessera adapt` trains through this.
    pub(crate) fn hidden(&self, inputs: &mut [StepInput<'_, KvCache>]) -> Tensor<2> {
        let cfg = &self.config;
        let (h, hd) = (cfg.hidden, cfg.head_dim());
        let rows: usize = inputs.iter().map(|i| i.tokens.len()).sum();

        // Embedding lookup and the RoPE angles of every new token.
        let mut x = Vec::with_capacity(rows * h);
        let half = hd / 2;
        let mut cos = Vec::with_capacity(rows * half);
        let mut sin = Vec::with_capacity(rows * half);
        for input in inputs.iter() {
            assert!(!input.tokens.is_empty(), "a step input needs tokens");
            let start = input.cache.len;
            assert!(
                start + input.tokens.len() <= cfg.context,
                "context overflow"
            );
            for (offset, &token) in input.tokens.iter().enumerate() {
                let t = token as usize;
                x.extend_from_slice(&self.embeddings[t * h..(t + 1) * h]);
                let pos = start + offset;
                cos.extend_from_slice(&self.cos[pos * half..(pos + 1) * half]);
                sin.extend_from_slice(&self.sin[pos * half..(pos + 1) * half]);
            }
        }
        let mut x = Tensor::<2>::from_data(TensorData::new(x, [rows, h]), &self.device);
        let cos = Tensor::<3>::from_data(TensorData::new(cos, [rows, 1, half]), &self.device);
        let sin = Tensor::<3>::from_data(TensorData::new(sin, [rows, 1, half]), &self.device);
        let masks: Vec<Option<Tensor<3>>> = inputs
            .iter()
            .map(|i| self.causal_mask(i.tokens.len(), i.cache.len))
            .collect();
        let runs = adapter_runs(inputs);
        // Each projection: the base matmul once for every row, then each
        // run of rows adds its own adapter's low-rank delta.
        let project = |x: &Tensor<2>, w: &Tensor<2>, b: Option<&Tensor<2>>, li, t| {
            adapt(linear(x.clone(), w, b), x, &runs, li, t)
        };

        for (li, layer) in self.layers.iter().enumerate() {
            let normed = rms_norm(x.clone(), &layer.attn_norm, cfg.rms_eps);
            let q = project(&normed, &layer.wq, layer.bq.as_ref(), li, Target::Q);
            let k = project(&normed, &layer.wk, layer.bk.as_ref(), li, Target::K);
            let v = project(&normed, &layer.wv, layer.bv.as_ref(), li, Target::V);
            let q = rope(q.reshape([rows, cfg.heads, hd]), &cos, &sin);
            let k = rope(k.reshape([rows, cfg.kv_heads, hd]), &cos, &sin);
            let v = v.reshape([rows, cfg.kv_heads, hd]);

            let mut outputs = Vec::with_capacity(inputs.len());
            let mut row = 0;
            for (input, mask) in inputs.iter_mut().zip(&masks) {
                let n = input.tokens.len();
                let q = q.clone().narrow(0, row, n);
                let k = k.clone().narrow(0, row, n).swap_dims(0, 1);
                let v = v.clone().narrow(0, row, n).swap_dims(0, 1);
                row += n;
                let past = input.cache.len;
                let (kb, vb) = input.cache.room(li, n, [cfg.kv_heads, hd], &self.device);
                let new = [0..cfg.kv_heads, past..past + n, 0..hd];
                let (kb, vb) = (kb.slice_assign(new.clone(), k), vb.slice_assign(new, v));
                let (k, v) = (
                    kb.clone().narrow(1, 0, past + n),
                    vb.clone().narrow(1, 0, past + n),
                );
                outputs.push(self.attention(q, &k, &v, mask.as_ref()));
                input.cache.layers[li] = Some((kb, vb));
            }
            let attn = if outputs.len() == 1 {
                outputs.pop().unwrap()
            } else {
                Tensor::cat(outputs, 0)
            };
            x = x + project(&attn, &layer.wo, None, li, Target::O);

            let normed = rms_norm(x.clone(), &layer.ffn_norm, cfg.rms_eps);
            let gate = silu(project(&normed, &layer.w_gate, None, li, Target::Gate));
            let up = project(&normed, &layer.w_up, None, li, Target::Up);
            x = x + project(&(gate * up), &layer.w_down, None, li, Target::Down);
        }
        for input in inputs.iter_mut() {
            input.cache.len += input.tokens.len();
        }
        x
    }

    /// Scaled dot-product attention of one sequence's new queries
    /// (`[n, heads, hd]`) over its keys and values (`[kv_heads, len, hd]`).
    /// Query heads are grouped over key/value heads by a reshape, so keys
    /// are never copied per head.
    fn attention(
        &self,
        q: Tensor<3>,
        k: &Tensor<3>,
        v: &Tensor<3>,
        mask: Option<&Tensor<3>>,
    ) -> Tensor<2> {
        let cfg = &self.config;
        let (n, hd) = (q.dims()[0], cfg.head_dim());
        let group = cfg.heads / cfg.kv_heads;
        // [n, heads, hd] -> [heads, n, hd] -> [kv_heads, group * n, hd]
        let q = q.swap_dims(0, 1).reshape([cfg.kv_heads, group * n, hd]);
        let mut scores = q
            .matmul(k.clone().swap_dims(1, 2))
            .mul_scalar(1.0 / (hd as f64).sqrt());
        if let Some(mask) = mask {
            scores = scores + mask.clone();
        }
        let out = softmax(scores, 2).matmul(v.clone());
        // [kv_heads, group * n, hd] -> [heads, n, hd] -> [n, heads * hd]
        out.reshape([cfg.heads, n, hd])
            .swap_dims(0, 1)
            .reshape([n, cfg.hidden])
    }

    /// Additive causal mask for `n` new tokens after `past` cached ones, in
    /// the grouped row order of [`Llama::attention`]; `None` for one token.
    fn causal_mask(&self, n: usize, past: usize) -> Option<Tensor<3>> {
        if n == 1 {
            return None;
        }
        let group = self.config.heads / self.config.kv_heads;
        let total = past + n;
        let mut mask = vec![0f32; group * n * total];
        for g in 0..group {
            for t in 0..n {
                let row = &mut mask[(g * n + t) * total..(g * n + t + 1) * total];
                for value in &mut row[past + t + 1..] {
                    *value = f32::NEG_INFINITY;
                }
            }
        }
        Some(Tensor::<3>::from_data(
            TensorData::new(mask, [1, group * n, total]),
            &self.device,
        ))
    }
}

/// Consecutive rows that run with the same adapter: `(first row, rows,
/// adapter)`; empty when no input has one.
type Runs<'a> = Vec<(usize, usize, Option<&'a LoraAdapter>)>;

fn adapter_runs<'a>(inputs: &[StepInput<'a, KvCache>]) -> Runs<'a> {
    if inputs.iter().all(|i| i.adapter.is_none()) {
        return Vec::new();
    }
    let same = |a: Option<&LoraAdapter>, b: Option<&LoraAdapter>| match (a, b) {
        (Some(a), Some(b)) => std::ptr::eq(a, b),
        (None, None) => true,
        _ => false,
    };
    let mut runs: Runs<'a> = Vec::new();
    let mut row = 0;
    for input in inputs {
        let n = input.tokens.len();
        match runs.last_mut() {
            Some(last) if same(last.2, input.adapter) => last.1 += n,
            _ => runs.push((row, n, input.adapter)),
        }
        row += n;
    }
    runs
}

/// `y` (the projection of `x`) plus, for each run of rows, its adapter's
/// delta for `target` in layer `layer` (gathered per run, as Punica's
/// SGMV does; base rows and adapters that leave `target` alone add
/// nothing).
fn adapt(y: Tensor<2>, x: &Tensor<2>, runs: &Runs<'_>, layer: usize, target: Target) -> Tensor<2> {
    let deltas: Vec<Option<Tensor<2>>> = runs
        .iter()
        .map(|&(start, n, adapter)| {
            adapter.and_then(|a| a.delta(layer, target, x.clone().narrow(0, start, n)))
        })
        .collect();
    if deltas.iter().all(Option::is_none) {
        return y;
    }
    let out = y.dims()[1];
    let device = y.device();
    let parts: Vec<Tensor<2>> = runs
        .iter()
        .zip(deltas)
        .map(|(&(_, n, _), d)| d.unwrap_or_else(|| Tensor::<2>::zeros([n, out], &device)))
        .collect();
    let delta = if parts.len() == 1 {
        parts.into_iter().next().expect("one part")
    } else {
        Tensor::cat(parts, 0)
    };
    y + delta
}

fn linear(x: Tensor<2>, w: &Tensor<2>, bias: Option<&Tensor<2>>) -> Tensor<2> {
    let y = x.matmul(w.clone());
    match bias {
        Some(b) => y + b.clone(),
        None => y,
    }
}

fn rms_norm(x: Tensor<2>, weight: &Tensor<2>, eps: f64) -> Tensor<2> {
    let scale = x
        .clone()
        .square()
        .mean_dim(1)
        .add_scalar(eps)
        .sqrt()
        .recip();
    x * scale * weight.clone()
}

/// NeoX rotation of `x` (`[rows, heads, hd]`) by per-row angles
/// (`[rows, 1, hd / 2]`).
fn rope(x: Tensor<3>, cos: &Tensor<3>, sin: &Tensor<3>) -> Tensor<3> {
    let half = x.dims()[2] / 2;
    let x1 = x.clone().narrow(2, 0, half);
    let x2 = x.narrow(2, half, half);
    let rotated1 = x1.clone() * cos.clone() - x2.clone() * sin.clone();
    let rotated2 = x2 * cos.clone() + x1 * sin.clone();
    Tensor::cat(vec![rotated1, rotated2], 2)
}

pub(crate) fn rope_tables(context: usize, head_dim: usize, base: f64) -> (Vec<f32>, Vec<f32>) {
    let half = head_dim / 2;
    let mut cos = Vec::with_capacity(context * half);
    let mut sin = Vec::with_capacity(context * half);
    for pos in 0..context {
        for i in 0..half {
            let freq = base.powf(-2.0 * i as f64 / head_dim as f64);
            let angle = pos as f64 * freq;
            cos.push(angle.cos() as f32);
            sin.push(angle.sin() as f32);
        }
    }
    (cos, sin)
}

/// Row-major `[rows, cols]` to `[cols, rows]`.
pub(crate) fn transpose(w: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; w.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = w[r * cols + c];
        }
    }
    out
}

/// Reorder the output rows of a Q or K projection (`[heads * hd, cols]`)
/// from interleaved RoPE pairs to NeoX halves: within each head, rows
/// `0, 2, 4, ...` come first, then `1, 3, 5, ...`.
pub fn interleaved_to_neox_rows<T: Copy>(w: &[T], heads: usize, hd: usize, cols: usize) -> Vec<T> {
    let mut out = Vec::with_capacity(w.len());
    for head in 0..heads {
        for parity in 0..2 {
            for i in (parity..hd).step_by(2) {
                let row = head * hd + i;
                out.extend_from_slice(&w[row * cols..(row + 1) * cols]);
            }
        }
    }
    out
}

/// The inverse of [`interleaved_to_neox_rows`].
pub fn neox_to_interleaved_rows(w: &[f32], heads: usize, hd: usize, cols: usize) -> Vec<f32> {
    let half = hd / 2;
    let mut out = Vec::with_capacity(w.len());
    for head in 0..heads {
        for i in 0..half {
            for src in [i, i + half] {
                let row = head * hd + src;
                out.extend_from_slice(&w[row * cols..(row + 1) * cols]);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rope_permutation_round_trips() {
        let (heads, hd, cols) = (2, 6, 3);
        let w: Vec<f32> = (0..heads * hd * cols).map(|i| i as f32).collect();
        let neox = interleaved_to_neox_rows(&w, heads, hd, cols);
        // Head 0, NeoX row 1 is interleaved row 2.
        assert_eq!(&neox[cols..2 * cols], &w[2 * cols..3 * cols]);
        assert_eq!(neox_to_interleaved_rows(&neox, heads, hd, cols), w);
    }

    /// The burn model with its matrices in 8-bit blocks (what wgpu runs)
    /// against the same model in f32, on the CPU backend. Every matrix is
    /// held quantized (read back from the tensors), in under a third of the
    /// bytes, and the answer stays SmolLM2's: p(" Paris") ≈ 0.77 after "The
    /// capital of France is" (the sanity figure of the model's card, not of
    /// this code), the same top three tokens, every logit within
    /// [`Q8_LOGIT_TOLERANCE`] of the largest.
    #[test]
    fn q8_blocks_hold_the_matrices_quantized_and_keep_the_answers() {
        let (weights, tokenizer) =
            crate::inference::open_weights(&crate::inference::test_smollm2()).unwrap();
        let device = Device::flex();
        let f32_model = Llama::load(weights.as_ref(), &device).unwrap();
        let q8 = Llama::load_with(weights.as_ref(), &device, BurnWeights::Q8Blocks).unwrap();
        assert_eq!(f32_model.quantized_matrices(), (0, 211));
        assert_eq!(q8.quantized_matrices(), (211, 211));
        assert!(
            q8.device_bytes() * 3 < f32_model.device_bytes(),
            "{} against {} bytes",
            q8.device_bytes(),
            f32_model.device_bytes()
        );

        let tokens = tokenizer.encode_prompt("The capital of France is").unwrap();
        let logits = |model: &Llama| {
            let mut cache = model.new_cache();
            let mut input = [StepInput {
                tokens: &tokens,
                cache: &mut cache,
                all_logits: false,
                adapter: None,
            }];
            model.step(&mut input).remove(0).remove(0)
        };
        let (exact, quantized) = (logits(&f32_model), logits(&q8));
        let largest = exact.iter().fold(0f32, |m, x| m.max(x.abs()));
        let diff = exact
            .iter()
            .zip(&quantized)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            diff < Q8_LOGIT_TOLERANCE * largest,
            "largest logit difference {diff}, largest logit {largest}"
        );
        let top = |l: &[f32]| {
            let mut ids: Vec<usize> = (0..l.len()).collect();
            ids.sort_by(|&a, &b| l[b].total_cmp(&l[a]));
            ids.truncate(3);
            ids
        };
        assert_eq!(top(&exact), top(&quantized));
        let paris = tokenizer.encode(" Paris").unwrap();
        assert_eq!(paris.len(), 1);
        let p = crate::inference::sampler::log_softmax_at(&quantized, paris[0] as usize).exp();
        assert!((p - 0.77).abs() < 0.05, "p(\" Paris\") = {p}");
    }

    /// The cache written in place gives the logits of one pass over the
    /// whole text: a 120-token prompt, then single tokens across the
    /// buffer's growth at [`KV_CHUNK`] rows, then a truncation back to 100
    /// tokens and the same tokens again, written over the old rows.
    #[test]
    fn the_kv_cache_grows_and_truncates_in_place_without_changing_logits() {
        let (weights, _) =
            crate::inference::open_weights(&crate::inference::test_smollm2()).unwrap();
        let model = Llama::load(weights.as_ref(), &Device::flex()).unwrap();
        let tokens: Vec<u32> = (0..140u32).map(|i| 200 + i * 37 % 5000).collect();
        let run = |cache: &mut KvCache, tokens: &[u32]| {
            let mut input = [StepInput {
                tokens,
                cache,
                all_logits: true,
                adapter: None,
            }];
            model.step(&mut input).remove(0)
        };
        let whole = run(&mut model.new_cache(), &tokens);
        let close = |got: &[f32], t: usize| {
            let diff = got
                .iter()
                .zip(&whole[t])
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(diff < 1e-3, "token {t}: largest logit difference {diff}");
        };

        let mut cache = model.new_cache();
        run(&mut cache, &tokens[..120]);
        for t in 120..140 {
            close(&run(&mut cache, &tokens[t..=t])[0], t);
        }
        assert_eq!(cache.len(), 140);
        cache.truncate(100);
        assert_eq!(cache.len(), 100);
        for (i, logits) in run(&mut cache, &tokens[100..]).iter().enumerate() {
            close(logits, 100 + i);
        }
    }

    #[test]
    fn transpose_swaps_axes() {
        assert_eq!(
            transpose(&[1., 2., 3., 4., 5., 6.], 2, 3),
            [1., 4., 2., 5., 3., 6.]
        );
    }
}
