//! The Llama-family decoder on the CPU with quantized weights.
//!
//! Weights stay in the blocks the GGUF file holds them in and the
//! projections run on [`tessera_kernels`]' integer kernels (activations
//! quantized per block to 8 bits); f32/f16/bf16 checkpoints run dense, or
//! are quantized to Q8_0 at load ([`CpuOptions::quantize`]). Each
//! sequence's keys and values are appended in place to one buffer per
//! layer, and every step runs on a thread pool of its own
//! ([`CpuOptions::threads`]) that sleeps while the engine is idle.
//!
//! The burn model in `llama.rs` stays the reference (and the path for
//! wgpu and for training): the tests compare the two.

use std::sync::Arc;

use bytes::Bytes;
use half::f16;
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;
use tessera_kernels::{Isa, Q16Row, QMatrix, QType};

use super::batch::{BatchModel, ModelShape, StepInput};
use super::llama::{LlamaConfig, RopeLayout, interleaved_to_neox_rows};
use super::lora::{LoraAdapter, Target};
use super::weights::{LoadError, WeightSource};

/// How to run the model on the CPU.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CpuOptions {
    /// Threads of the model's pool (`None`: one per core).
    pub threads: Option<usize>,
    /// Quantize f32/f16/bf16 weights to Q8_0 at load.
    pub quantize: bool,
    /// How activations meet quantized weights.
    pub activations: Activations,
    /// How the KV cache stores keys and values.
    pub kv: KvType,
    /// How steps of [`TILE_MIN_ROWS`] rows or more multiply.
    pub batch: BatchPrecision,
}

/// How steps of [`TILE_MIN_ROWS`] rows or more (a prompt's prefill, a
/// batch of sequences) multiply activations and quantized weights.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum BatchPrecision {
    /// f32 activations on weight tiles dequantized to f32: the f32
    /// model's answers (the default).
    #[default]
    F32,
    /// Activations and dequantized weights rounded to bf16 (8 significant
    /// bits), products summed in f32, on AVX-512 BF16: twice the
    /// multiply-adds per instruction. Refused at load on a CPU without
    /// it.
    Bf16,
}

/// How the KV cache stores keys and values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum KvType {
    /// 32-bit floats: the f32 model's answers (the default).
    #[default]
    F32,
    /// 16-bit floats: half the memory, so twice the tokens in the same
    /// `--kv-budget-mib`; each key and value is rounded to 11 significant
    /// bits, which moves attention by rounding only.
    F16,
}

impl KvType {
    /// Bytes one value takes.
    pub fn bytes(self) -> usize {
        match self {
            KvType::F32 => 4,
            KvType::F16 => 2,
        }
    }
}

/// How the projections quantize their activations for the integer
/// kernels.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Activations {
    /// 16 bits per value, a scale per 32, for steps of fewer than
    /// [`TILE_MIN_ROWS`] rows (a lone sequence's decode); from there (a
    /// batch, a prompt) f32 activations on dequantized weight tiles, which
    /// reuse each unpacked block for every row. Either way the f32
    /// model's answers (the default); a row's logits in a batch and alone
    /// differ by rounding only (16-bit activations move each by at most
    /// 1/65534 of its block's largest value).
    #[default]
    I16,
    /// 8 bits per value, a scale per block, as llama.cpp does, for steps
    /// of fewer than [`TILE_MIN_ROWS`] rows: fewer instructions, but
    /// SmolLM2-135M's logits move by ~5% of the largest and some greedy
    /// answers change. From there, the tiles of [`BatchPrecision`], as
    /// with 16 bits: on this project's AVX-512 VNNI machine f32 tiles ran
    /// 32 rows of every SmolLM2 matrix in 74.5 ms against 147 ms for the
    /// 8-bit kernels (`cargo bench -p tessera-kernels`), and 8-bit
    /// register tiles (tried) ran slower than f32 ones: with a float scale
    /// per 32-value block, each block and row pair needs a conversion and
    /// two float operations besides its `vpdpbusd` (see
    /// `kernels/benches/peak.rs`).
    I8,
}

/// Rows from which a step's projections run on f32 tiles
/// ([`QMatrix::matmul_f32`]) instead of the 16-bit kernels. Measured with
/// `cargo bench -p tessera-kernels` (all of SmolLM2's matrices of one
/// step, 2 threads, AVX-512 VNNI machine), 16-bit / f32 tiles on 512-bit
/// registers: 1 row 15.2 / 20.7 ms, 2 rows 15.6 / 18.3, 4 rows 27.0 /
/// 23.8, 8 rows 46.2 / 31.1, 32 rows 180 / 127 (on 256-bit registers 4
/// rows took 28.5 ms and 8 rows 36.1).
pub const TILE_MIN_ROWS: usize = 4;

/// A weight matrix `[rows, cols]` (output rows, input columns).
enum Matrix {
    /// Quantized blocks.
    Quant(QMatrix),
    /// f32, row-major.
    Dense {
        w: Arc<[f32]>,
        rows: usize,
        cols: usize,
    },
}

impl Matrix {
    fn rows(&self) -> usize {
        match self {
            Matrix::Quant(m) => m.rows(),
            Matrix::Dense { rows, .. } => *rows,
        }
    }

    fn cols(&self) -> usize {
        match self {
            Matrix::Quant(m) => m.cols(),
            Matrix::Dense { cols, .. } => *cols,
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Matrix::Quant(m) => m.bytes(),
            Matrix::Dense { w, .. } => w.len() * 4,
        }
    }

    /// `x · selfᵀ` for `x` of `[n, cols]`: `[n, rows]`.
    fn matmul(&self, x: &Input<'_>) -> Vec<f32> {
        let n = x.x.len() / self.cols();
        let mut out = vec![0f32; n * self.rows()];
        match self {
            Matrix::Quant(m) => match x.activations {
                _ if n >= TILE_MIN_ROWS => match x.batch {
                    BatchPrecision::F32 => m.matmul_f32(x.x, &mut out, Isa::best()),
                    BatchPrecision::Bf16 => m.matmul_bf16(x.x, &mut out),
                },
                Activations::I16 => m.matmul_wide(x.wide(self.cols()), &mut out, Isa::best()),
                Activations::I8 => m.matmul_int8(x.x, &mut out),
            },
            Matrix::Dense { w, rows, cols } => dense_matmul(w, *rows, *cols, x.x, &mut out),
        }
        out
    }

    /// Row `r` as f32 (an embedding lookup).
    fn row(&self, r: usize, out: &mut Vec<f32>) {
        match self {
            Matrix::Quant(m) => tessera_kernels::dequantize(m.qtype(), m.row(r), out),
            Matrix::Dense { w, cols, .. } => out.extend_from_slice(&w[r * cols..(r + 1) * cols]),
        }
    }
}

/// Activations that several projections multiply (Q, K and V; gate and
/// up): quantized once, when the first quantized matrix asks.
struct Input<'a> {
    x: &'a [f32],
    activations: Activations,
    batch: BatchPrecision,
    wide: std::sync::OnceLock<Vec<Q16Row>>,
}

impl<'a> Input<'a> {
    fn new(x: &'a [f32], model: &CpuLlama) -> Input<'a> {
        Input {
            x,
            activations: model.activations,
            batch: model.batch,
            wide: std::sync::OnceLock::new(),
        }
    }

    fn wide(&self, cols: usize) -> &[Q16Row] {
        self.wide
            .get_or_init(|| self.x.par_chunks(cols).map(Q16Row::quantize).collect())
    }
}

/// `out = x · wᵀ` with f32 weights, rows split over the pool.
fn dense_matmul(w: &[f32], rows: usize, cols: usize, x: &[f32], out: &mut [f32]) {
    let n = x.len() / cols;
    let mut transposed = vec![0f32; rows * n];
    transposed
        .par_chunks_mut(n * 16)
        .enumerate()
        .for_each(|(task, chunk)| {
            for (i, o) in chunk.chunks_exact_mut(n).enumerate() {
                let row = &w[(task * 16 + i) * cols..][..cols];
                for (o, x) in o.iter_mut().zip(x.chunks_exact(cols)) {
                    *o = dot(row, x);
                }
            }
        });
    for (r, column) in transposed.chunks_exact(n).enumerate() {
        for (t, v) in column.iter().enumerate() {
            out[t * rows + r] = *v;
        }
    }
}

/// f32 dot product in eight lanes (vectorizes without target features).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (a, b) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += a[i] * b[i];
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(a, b)| a * b).sum();
    acc.iter().sum::<f32>() + tail
}

/// `y += s · x`.
fn axpy(y: &mut [f32], s: f32, x: &[f32]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y += s * x;
    }
}

struct Layer {
    attn_norm: Vec<f32>,
    wq: Matrix,
    wk: Matrix,
    wv: Matrix,
    bq: Option<Vec<f32>>,
    bk: Option<Vec<f32>>,
    bv: Option<Vec<f32>>,
    wo: Matrix,
    ffn_norm: Vec<f32>,
    w_gate: Matrix,
    w_up: Matrix,
    w_down: Matrix,
}

/// One sequence's keys and values, appended in place: per layer,
/// `[len, kv_heads · head_dim]` each.
pub struct CpuKvCache {
    keys: Vec<KvRows>,
    values: Vec<KvRows>,
    len: usize,
}

/// One layer's keys (or values), in the cache's [`KvType`].
#[derive(Clone)]
enum KvRows {
    F32(Vec<f32>),
    F16(Vec<f16>),
}

impl KvRows {
    fn new(ty: KvType) -> KvRows {
        match ty {
            KvType::F32 => KvRows::F32(Vec::new()),
            KvType::F16 => KvRows::F16(Vec::new()),
        }
    }

    fn len(&self) -> usize {
        match self {
            KvRows::F32(v) => v.len(),
            KvRows::F16(v) => v.len(),
        }
    }

    fn truncate(&mut self, len: usize) {
        match self {
            KvRows::F32(v) => v.truncate(len),
            KvRows::F16(v) => v.truncate(len),
        }
    }

    fn extend(&mut self, values: &[f32]) {
        match self {
            KvRows::F32(v) => v.extend_from_slice(values),
            KvRows::F16(v) => {
                let start = v.len();
                v.resize(start + values.len(), f16::ZERO);
                v[start..].convert_from_f32_slice(values);
            }
        }
    }

    /// Values `start..start + out.len()` as f32: borrowed when stored so,
    /// else converted into `out`.
    fn get<'a>(&'a self, start: usize, out: &'a mut [f32]) -> &'a [f32] {
        match self {
            KvRows::F32(v) => &v[start..start + out.len()],
            KvRows::F16(v) => {
                v[start..start + out.len()].convert_to_f32_slice(out);
                out
            }
        }
    }
}

impl CpuKvCache {
    /// Tokens cached.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Keep the first `len` tokens only.
    pub fn truncate(&mut self, len: usize) {
        if len >= self.len {
            return;
        }
        for layer in self.keys.iter_mut().chain(&mut self.values) {
            let width = layer.len() / self.len;
            layer.truncate(len * width);
        }
        self.len = len;
    }
}

/// A Llama-family model on the CPU; see the module docs.
pub struct CpuLlama {
    config: LlamaConfig,
    embeddings: Matrix,
    layers: Vec<Layer>,
    norm: Vec<f32>,
    head: Matrix,
    cos: Vec<f32>,
    sin: Vec<f32>,
    pool: rayon::ThreadPool,
    activations: Activations,
    batch: BatchPrecision,
    kv: KvType,
}

impl CpuLlama {
    /// Load the model in `source`.
    pub fn load(source: &dyn WeightSource, options: &CpuOptions) -> Result<CpuLlama, LoadError> {
        let config = source.config().clone();
        config.validate().map_err(|m| source.error(m))?;
        if options.batch == BatchPrecision::Bf16 && !tessera_kernels::bf16_available() {
            return Err(source.error(
                "bf16 batches need a CPU with AVX-512 BF16, which this one does not have; \
                 use f32 batches (the default)"
                    .into(),
            ));
        }
        let hd = config.head_dim();
        let (h, ffn) = (config.hidden, config.ffn);
        let kv = config.kv_heads * hd;
        let interleaved = config.rope_layout == RopeLayout::Interleaved;

        let matrix = |name: &str, rows: usize, cols: usize, heads: Option<usize>| {
            let permute = heads.filter(|_| interleaved);
            if let Some(m) = source.quantized(name, rows, cols)? {
                return Ok(Matrix::Quant(match permute {
                    Some(heads) => {
                        let permuted = permute_rows(&m, heads, hd);
                        drop(m);
                        source.release(name);
                        permuted
                    }
                    None => m,
                }));
            }
            let mut w = source.matrix(name, rows, cols)?;
            if let Some(heads) = permute {
                w = interleaved_to_neox_rows(&w, heads, hd, cols);
            }
            if options.quantize && cols.is_multiple_of(32) {
                let data = Bytes::from(tessera_kernels::quantize_q8_0(&w));
                let m = QMatrix::new(QType::Q8_0, rows, cols, data)
                    .map_err(|e| source.error(format!("`{name}`: {e}")))?;
                return Ok(Matrix::Quant(m));
            }
            Ok::<_, LoadError>(Matrix::Dense {
                w: w.into(),
                rows,
                cols,
            })
        };
        let vector = |name: &str, len: usize, heads: Option<usize>| {
            let v = source.vector(name, len)?;
            Ok::<_, LoadError>(match heads.filter(|_| interleaved) {
                Some(heads) => interleaved_to_neox_rows(&v, heads, hd, 1),
                None => v,
            })
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
        let embeddings = matrix("token_embd.weight", config.vocab, h, None)?;
        let head = if source.has("output.weight") {
            matrix("output.weight", config.vocab, h, None)?
        } else {
            // Tied: the same weights, shared.
            match &embeddings {
                Matrix::Quant(m) => Matrix::Quant(m.clone()),
                Matrix::Dense { w, rows, cols } => Matrix::Dense {
                    w: w.clone(),
                    rows: *rows,
                    cols: *cols,
                },
            }
        };
        let norm = vector("output_norm.weight", h, None)?;
        let (cos, sin) = super::llama::rope_tables(config.context, hd, config.rope_base);
        let mut pool = rayon::ThreadPoolBuilder::new().thread_name(|i| format!("tessera-cpu-{i}"));
        if let Some(threads) = options.threads {
            pool = pool.num_threads(threads.max(1));
        }
        let pool = pool
            .build()
            .map_err(|e| source.error(format!("cannot start the model's threads: {e}")))?;
        Ok(CpuLlama {
            config,
            embeddings,
            layers,
            norm,
            head,
            cos,
            sin,
            pool,
            activations: options.activations,
            batch: options.batch,
            kv: options.kv,
        })
    }

    /// The model's shape.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// Threads the model runs on.
    pub fn threads(&self) -> usize {
        self.pool.current_num_threads()
    }

    /// Bytes of weights in memory.
    pub fn weight_bytes(&self) -> usize {
        let layers: usize = self
            .layers
            .iter()
            .map(|l| {
                [&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down]
                    .iter()
                    .map(|m| m.bytes())
                    .sum::<usize>()
            })
            .sum();
        layers + self.embeddings.bytes()
    }

    /// What the projections run on: each distinct weight type and the
    /// instruction set, for logs.
    pub fn describe(&self) -> String {
        let mut types: Vec<String> = Vec::new();
        let l = &self.layers[0];
        for m in [&l.wq, &l.w_down, &self.head] {
            let t = match m {
                Matrix::Quant(m) => m.qtype().to_string(),
                Matrix::Dense { .. } => "f32".into(),
            };
            if !types.contains(&t) {
                types.push(t);
            }
        }
        let activations = match self.activations {
            Activations::I16 => "16-bit",
            Activations::I8 => "8-bit",
        };
        let kv = match self.kv {
            KvType::F32 => "f32",
            KvType::F16 => "f16",
        };
        let batch = match self.batch {
            BatchPrecision::F32 => "f32",
            BatchPrecision::Bf16 => "bf16",
        };
        format!(
            "{} weights, {activations} activations on {}, {batch} batches, {kv} KV cache, {} threads",
            types.join("/"),
            Isa::best().name(),
            self.threads()
        )
    }

    /// An empty cache for a new sequence.
    pub fn new_cache(&self) -> CpuKvCache {
        CpuKvCache {
            keys: vec![KvRows::new(self.kv); self.config.layers],
            values: vec![KvRows::new(self.kv); self.config.layers],
            len: 0,
        }
    }

    /// Run one batch step; see [`BatchModel::step`].
    ///
    /// # Panics
    ///
    /// If an input has no tokens, a token id is outside the vocabulary, or
    /// a sequence would outgrow the context; the scheduler checks these.
    pub fn step(&self, inputs: &mut [StepInput<'_, CpuKvCache>]) -> Vec<Vec<Vec<f32>>> {
        self.pool.install(|| self.forward(inputs))
    }

    fn forward(&self, inputs: &mut [StepInput<'_, CpuKvCache>]) -> Vec<Vec<Vec<f32>>> {
        let cfg = &self.config;
        let (h, hd) = (cfg.hidden, cfg.head_dim());
        let kv = cfg.kv_heads * hd;
        let rows: usize = inputs.iter().map(|i| i.tokens.len()).sum();
        let mut x = Vec::with_capacity(rows * h);
        let mut positions = Vec::with_capacity(rows);
        for input in inputs.iter() {
            assert!(!input.tokens.is_empty(), "a step input needs tokens");
            let start = input.cache.len;
            assert!(
                start + input.tokens.len() <= cfg.context,
                "context overflow"
            );
            for (offset, &token) in input.tokens.iter().enumerate() {
                assert!(
                    (token as usize) < cfg.vocab,
                    "token {token} is outside the vocabulary"
                );
                self.embeddings.row(token as usize, &mut x);
                positions.push(start + offset);
            }
        }
        let runs = adapter_runs(inputs);

        for (li, layer) in self.layers.iter().enumerate() {
            let normed = rms_norm(&x, &layer.attn_norm, cfg.rms_eps);
            let project = |w: &Matrix, b: Option<&Vec<f32>>, input: &Input<'_>, t: Target| {
                let mut y = w.matmul(input);
                if let Some(b) = b {
                    for row in y.chunks_exact_mut(b.len()) {
                        axpy(row, 1.0, b);
                    }
                }
                adapt(&mut y, input.x, &runs, li, t);
                y
            };
            let normed = Input::new(&normed, self);
            let mut q = project(&layer.wq, layer.bq.as_ref(), &normed, Target::Q);
            let mut k = project(&layer.wk, layer.bk.as_ref(), &normed, Target::K);
            let v = project(&layer.wv, layer.bv.as_ref(), &normed, Target::V);
            self.rope(&mut q, &positions, cfg.heads);
            self.rope(&mut k, &positions, cfg.kv_heads);

            // Append the new keys and values, then attend per sequence.
            let mut row = 0;
            let mut spans = Vec::with_capacity(inputs.len());
            for input in inputs.iter_mut() {
                let n = input.tokens.len();
                input.cache.keys[li].extend(&k[row * kv..(row + n) * kv]);
                input.cache.values[li].extend(&v[row * kv..(row + n) * kv]);
                spans.push((row, n, input.cache.len));
                row += n;
            }
            let attn = self.attention(&q, inputs, li, &spans);
            let o = project(&layer.wo, None, &Input::new(&attn, self), Target::O);
            axpy(&mut x, 1.0, &o);

            let normed = rms_norm(&x, &layer.ffn_norm, cfg.rms_eps);
            let normed = Input::new(&normed, self);
            let gate = project(&layer.w_gate, None, &normed, Target::Gate);
            let up = project(&layer.w_up, None, &normed, Target::Up);
            let act: Vec<f32> = gate.iter().zip(&up).map(|(g, u)| silu(*g) * u).collect();
            let down = project(&layer.w_down, None, &Input::new(&act, self), Target::Down);
            axpy(&mut x, 1.0, &down);
        }
        for input in inputs.iter_mut() {
            input.cache.len += input.tokens.len();
        }

        // Logits only for the rows someone reads.
        let mut picked = Vec::new();
        let mut counts = Vec::with_capacity(inputs.len());
        let mut row = 0;
        for input in inputs.iter() {
            let n = input.tokens.len();
            let (first, count) = if input.all_logits {
                (row, n)
            } else {
                (row + n - 1, 1)
            };
            picked.extend_from_slice(&x[first * h..(first + count) * h]);
            counts.push(count);
            row += n;
        }
        let normed = rms_norm(&picked, &self.norm, cfg.rms_eps);
        let logits = self.head.matmul(&Input::new(&normed, self));
        let mut chunks = logits.chunks_exact(cfg.vocab).map(<[f32]>::to_vec);
        counts
            .into_iter()
            .map(|n| chunks.by_ref().take(n).collect())
            .collect()
    }

    /// NeoX rotation of `x` (`[rows, heads · hd]`) at each row's position.
    fn rope(&self, x: &mut [f32], positions: &[usize], heads: usize) {
        let hd = self.config.head_dim();
        let half = hd / 2;
        for (row, &pos) in x.chunks_exact_mut(heads * hd).zip(positions) {
            let (cos, sin) = (
                &self.cos[pos * half..(pos + 1) * half],
                &self.sin[pos * half..(pos + 1) * half],
            );
            for head in row.chunks_exact_mut(hd) {
                let (x1, x2) = head.split_at_mut(half);
                for i in 0..half {
                    let (a, b) = (x1[i], x2[i]);
                    x1[i] = a * cos[i] - b * sin[i];
                    x2[i] = b * cos[i] + a * sin[i];
                }
            }
        }
    }

    /// Causal attention of each sequence's new queries over its cache
    /// (already holding the new keys): `[rows, hidden]`. One task per
    /// sequence and query head.
    fn attention(
        &self,
        q: &[f32],
        inputs: &[StepInput<'_, CpuKvCache>],
        layer: usize,
        spans: &[(usize, usize, usize)],
    ) -> Vec<f32> {
        let cfg = &self.config;
        let (h, hd, heads) = (cfg.hidden, cfg.head_dim(), cfg.heads);
        let kv = cfg.kv_heads * hd;
        let group = heads / cfg.kv_heads;
        let scale = 1.0 / (hd as f32).sqrt();
        let rows: usize = spans.iter().map(|s| s.1).sum();
        let tasks: Vec<(usize, usize)> = (0..inputs.len())
            .flat_map(|s| (0..heads).map(move |head| (s, head)))
            .collect();
        let work: usize = spans
            .iter()
            .map(|&(_, n, past)| n * (past + n))
            .sum::<usize>()
            * heads;
        let run = |&(s, head): &(usize, usize)| {
            let (first, n, past) = spans[s];
            let (keys, values) = (&inputs[s].cache.keys[layer], &inputs[s].cache.values[layer]);
            let g = head / group;
            let mut out = vec![0f32; n * hd];
            let mut scores = Vec::with_capacity(past + n);
            let mut row = vec![0f32; hd];
            for i in 0..n {
                let qi = &q[(first + i) * h + head * hd..][..hd];
                let seen = past + i + 1;
                scores.clear();
                scores.extend(
                    (0..seen).map(|t| dot(qi, keys.get(t * kv + g * hd, &mut row)) * scale),
                );
                let max = scores.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
                let mut sum = 0f32;
                for s in &mut scores {
                    *s = (*s - max).exp();
                    sum += *s;
                }
                let o = &mut out[i * hd..(i + 1) * hd];
                for (t, p) in scores.iter().enumerate() {
                    axpy(o, p / sum, values.get(t * kv + g * hd, &mut row));
                }
            }
            out
        };
        // Short contexts are not worth a hand-off per head.
        let outs: Vec<Vec<f32>> = if work * hd > 1 << 16 {
            tasks.par_iter().map(run).collect()
        } else {
            tasks.iter().map(run).collect()
        };
        let mut attn = vec![0f32; rows * h];
        for (&(s, head), out) in tasks.iter().zip(outs) {
            let first = spans[s].0;
            for (i, o) in out.chunks_exact(hd).enumerate() {
                attn[(first + i) * h + head * hd..][..hd].copy_from_slice(o);
            }
        }
        attn
    }
}

impl BatchModel for CpuLlama {
    type Cache = CpuKvCache;

    fn shape(&self) -> ModelShape {
        ModelShape {
            context: self.config.context,
            vocab: self.config.vocab,
            kv_bytes_per_token: self.config.kv_bytes_per_token() / std::mem::size_of::<f32>()
                * self.kv.bytes(),
        }
    }

    fn new_cache(&self) -> CpuKvCache {
        CpuLlama::new_cache(self)
    }

    fn truncate(&self, cache: &mut CpuKvCache, len: usize) {
        cache.truncate(len);
    }

    fn step(&self, inputs: &mut [StepInput<'_, CpuKvCache>]) -> Vec<Vec<Vec<f32>>> {
        CpuLlama::step(self, inputs)
    }
}

/// Reorder the rows of a Q or K projection from interleaved RoPE pairs to
/// NeoX halves (see [`interleaved_to_neox_rows`]): whole rows of blocks.
fn permute_rows(m: &QMatrix, heads: usize, hd: usize) -> QMatrix {
    let row_bytes = m.qtype().row_bytes(m.cols());
    let mut data = Vec::with_capacity(m.bytes());
    for r in 0..m.rows() {
        data.extend_from_slice(m.row(r));
    }
    let permuted = interleaved_to_neox_rows(&data, heads, hd, row_bytes);
    QMatrix::new(m.qtype(), m.rows(), m.cols(), Bytes::from(permuted))
        .expect("a permutation keeps the shape")
}

fn rms_norm(x: &[f32], weight: &[f32], eps: f64) -> Vec<f32> {
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks_exact(weight.len()) {
        let mean = row.iter().map(|v| v * v).sum::<f32>() / row.len() as f32;
        let scale = 1.0 / (mean + eps as f32).sqrt();
        out.extend(row.iter().zip(weight).map(|(v, w)| v * scale * w));
    }
    out
}

fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// Consecutive rows that run with the same adapter: `(first row, rows,
/// adapter)`; empty when no input has one.
type Runs<'a> = Vec<(usize, usize, &'a LoraAdapter)>;

fn adapter_runs<'a>(inputs: &[StepInput<'a, CpuKvCache>]) -> Runs<'a> {
    let mut runs: Runs<'a> = Vec::new();
    let mut row = 0;
    for input in inputs {
        let n = input.tokens.len();
        if let Some(adapter) = input.adapter {
            match runs.last_mut() {
                Some(last) if last.0 + last.1 == row && std::ptr::eq(last.2, adapter) => {
                    last.1 += n;
                }
                _ => runs.push((row, n, adapter)),
            }
        }
        row += n;
    }
    runs
}

/// Add each run's adapter delta `scale · (x · A) · B` for `target` of
/// `layer` to its rows of `y`.
fn adapt(y: &mut [f32], x: &[f32], runs: &Runs<'_>, layer: usize, target: Target) {
    for &(first, n, adapter) in runs {
        let Some(pair) = adapter.host_pair(layer, target) else {
            continue;
        };
        let (inp, r, out) = (pair.inputs, pair.rank, pair.outputs);
        for row in first..first + n {
            let xr = &x[row * inp..(row + 1) * inp];
            // x · A: A is [in, r].
            let mut mid = vec![0f32; r];
            for (xi, a_row) in xr.iter().zip(pair.a.chunks_exact(r)) {
                axpy(&mut mid, *xi, a_row);
            }
            let yr = &mut y[row * out..(row + 1) * out];
            for (m, b_row) in mid.iter().zip(pair.b.chunks_exact(out)) {
                axpy(yr, m * adapter.scale, b_row);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_rows_round_to_half_precision_and_truncate() {
        let values = [1.0f32, -0.333_333_34, 65_504.0, 1e-3, 3.140_625, 0.0];
        let mut rows = KvRows::new(KvType::F16);
        rows.extend(&values[..4]);
        rows.extend(&values[4..]);
        assert_eq!(rows.len(), 6);
        let mut out = [0f32; 6];
        let got = rows.get(0, &mut out).to_vec();
        for (g, v) in got.iter().zip(values) {
            // Independent reference: the half crate's scalar rounding.
            assert_eq!(*g, f16::from_f32(v).to_f32());
            assert!((g - v).abs() <= v.abs() / 1024.0, "{v} became {g}");
        }
        let mut out = [0f32; 2];
        assert_eq!(rows.get(4, &mut out), [3.140_625, 0.0]);
        rows.truncate(2);
        assert_eq!(rows.len(), 2);

        let mut rows = KvRows::new(KvType::F32);
        rows.extend(&values);
        let mut out = [0f32; 3];
        assert_eq!(rows.get(1, &mut out), &values[1..4]);
        assert_eq!(KvType::F16.bytes() * 2, KvType::F32.bytes());
    }
}
