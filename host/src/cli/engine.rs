//! Options shared by the commands that load the model engine.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use clap::builder::TypedValueParser as _;
use tessera_host::inference::{
    BurnEngine, BurnWeights, DeviceChoice, EngineOptions, ModelEngine, ModelStore, NoModel,
};

/// Where the models are and how they run.
#[derive(Debug, Clone, clap::Args)]
pub struct EngineArgs {
    /// The models directory [default: $TESSERA_MODELS_DIR or <user data dir>/tessera/models].
    #[arg(long, value_name = "DIR")]
    pub models_dir: Option<PathBuf>,

    /// A language model to use instead of SmolLM2: a .gguf file or a
    /// Hugging Face directory (config.json, *.safetensors, tokenizer.json).
    #[arg(long, value_name = "PATH")]
    pub model: Option<PathBuf>,

    /// Where the models run: cpu (quantized kernels), wgpu, or auto (wgpu
    /// when built with it and a GPU is present, else cpu) [default: auto].
    #[arg(long, value_name = "cpu|wgpu|auto")]
    pub device: Option<DeviceChoice>,

    /// Threads the language model runs on, on the CPU [default: one per
    /// core].
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,

    /// Quantize an f32/f16/bf16 model's weights to Q8_0 when loading it (a
    /// quarter of f32's memory, faster on the CPU). GGUF weights are kept
    /// as they are.
    #[arg(long, value_name = "q8_0")]
    pub quantize: Option<QuantizeArg>,

    /// Bits the CPU kernels quantize activations to: 16 (the f32 model's
    /// answers) or 8 (llama.cpp's scheme: faster, logits move by ~5%)
    /// [default: 16].
    #[arg(long, value_name = "16|8", value_parser = clap::builder::PossibleValuesParser::new(["16", "8"]).map(|s| s.parse::<u8>().expect("16 or 8")))]
    pub activation_bits: Option<u8>,

    /// How the CPU model's KV cache stores keys and values: f32 (the f32
    /// model's answers) or f16 (half the memory per token, so twice the
    /// tokens in the same --kv-budget-mib; attention moves by rounding
    /// only) [default: f32].
    #[arg(long, value_name = "f32|f16")]
    pub kv_cache: Option<KvCacheArg>,

    /// How the CPU model multiplies batches (prompts of 4 tokens or more,
    /// 4 sequences or more): f32 (the f32 model's answers) or bf16
    /// (AVX-512 BF16 only: activations and weights rounded to bf16, about
    /// twice the multiply-adds per instruction) [default: f32].
    #[arg(long, value_name = "f32|bf16")]
    pub batch_precision: Option<BatchPrecisionArg>,

    /// How wgpu holds the language model's matrices: q8 (8-bit blocks of
    /// 32 with an f32 scale: 1.125 bytes a weight, dequantized inside the
    /// matmul) or f32 (4 bytes a weight) [default: q8].
    #[arg(long, value_name = "q8|f32")]
    pub wgpu_weights: Option<WgpuWeightsArg>,

    /// Memory for KV caches, in MiB [default: 2048].
    #[arg(long, value_name = "MIB")]
    pub kv_budget_mib: Option<usize>,

    /// Most sequences decoded together in one forward pass [default: 32].
    #[arg(long, value_name = "N")]
    pub max_batch: Option<usize>,

    /// Memory for loaded LoRA adapters, in MiB; the least recently used
    /// are evicted past it and loaded again when asked for [default: 1024].
    #[arg(long, value_name = "MIB")]
    pub adapter_budget_mib: Option<usize>,
}

/// What `--quantize` accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
pub enum QuantizeArg {
    /// 8-bit blocks of 32 with an f16 scale.
    #[value(name = "q8_0")]
    #[serde(rename = "q8_0")]
    Q8_0,
}

/// What `--kv-cache` accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
pub enum KvCacheArg {
    /// 32-bit floats.
    #[value(name = "f32")]
    #[serde(rename = "f32")]
    F32,
    /// 16-bit floats.
    #[value(name = "f16")]
    #[serde(rename = "f16")]
    F16,
}

/// What `--batch-precision` accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
pub enum BatchPrecisionArg {
    /// 32-bit floats.
    #[value(name = "f32")]
    #[serde(rename = "f32")]
    F32,
    /// bfloat16 operands, f32 sums.
    #[value(name = "bf16")]
    #[serde(rename = "bf16")]
    Bf16,
}

/// What `--wgpu-weights` accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
pub enum WgpuWeightsArg {
    /// 8-bit blocks of 32 with an f32 scale.
    #[value(name = "q8")]
    #[serde(rename = "q8")]
    Q8,
    /// 32-bit floats.
    #[value(name = "f32")]
    #[serde(rename = "f32")]
    F32,
}

/// Default of `--kv-budget-mib`.
pub const DEFAULT_KV_BUDGET_MIB: usize = 2048;
/// Default of `--max-batch`.
pub const DEFAULT_MAX_BATCH: usize = 32;

impl EngineArgs {
    /// The device asked for.
    pub fn device(&self) -> DeviceChoice {
        self.device.unwrap_or(DeviceChoice::Auto)
    }

    /// The models directory.
    pub fn store(&self) -> ModelStore {
        ModelStore::new(
            self.models_dir
                .clone()
                .unwrap_or_else(ModelStore::default_dir),
        )
    }

    /// The engine options these arguments describe.
    pub fn options(&self) -> EngineOptions {
        EngineOptions {
            device: self.device(),
            max_batch: self.max_batch.unwrap_or(DEFAULT_MAX_BATCH).max(1),
            kv_budget_bytes: self.kv_budget_mib.unwrap_or(DEFAULT_KV_BUDGET_MIB) << 20,
            adapter_budget_bytes: self
                .adapter_budget_mib
                .map_or(tessera_host::inference::DEFAULT_ADAPTER_BUDGET_BYTES, |m| {
                    m << 20
                }),
            cpu: tessera_host::inference::cpu_llama::CpuOptions {
                threads: self.threads.filter(|&t| t > 0),
                quantize: self.quantize == Some(QuantizeArg::Q8_0),
                activations: match self.activation_bits {
                    Some(8) => tessera_host::inference::cpu_llama::Activations::I8,
                    _ => tessera_host::inference::cpu_llama::Activations::I16,
                },
                kv: match self.kv_cache {
                    Some(KvCacheArg::F16) => tessera_host::inference::cpu_llama::KvType::F16,
                    _ => tessera_host::inference::cpu_llama::KvType::F32,
                },
                batch: match self.batch_precision {
                    Some(BatchPrecisionArg::Bf16) => {
                        tessera_host::inference::cpu_llama::BatchPrecision::Bf16
                    }
                    _ => tessera_host::inference::cpu_llama::BatchPrecision::F32,
                },
            },
            wgpu_weights: match self.wgpu_weights {
                Some(WgpuWeightsArg::F32) => BurnWeights::F32,
                _ => BurnWeights::Q8Blocks,
            },
            ..EngineOptions::default()
        }
    }

    /// Load the engine, saying on stderr what is loading and how long it took.
    pub fn load(&self) -> anyhow::Result<Arc<BurnEngine>> {
        let store = self.store();
        let started = Instant::now();
        let engine = match &self.model {
            None => BurnEngine::from_store(&store, self.options()),
            Some(path) => {
                let embedder = store
                    .require(&tessera_host::inference::MINILM, "model.safetensors")
                    .ok()
                    .and_then(|p| p.parent().map(std::path::Path::to_path_buf));
                BurnEngine::load(path, embedder.as_deref(), self.options())
            }
        }
        .context("cannot load the model engine")?;
        tracing::info!(
            model = engine.model_name(),
            device = self.device().resolve().as_str(),
            "engine loaded in {:.1?}",
            started.elapsed()
        );
        Ok(Arc::new(engine))
    }

    /// The engine, or [`NoModel`] when `no_model`.
    pub fn engine(&self, no_model: bool) -> anyhow::Result<Arc<dyn ModelEngine>> {
        if no_model {
            Ok(Arc::new(NoModel))
        } else {
            Ok(self.load()?)
        }
    }
}
