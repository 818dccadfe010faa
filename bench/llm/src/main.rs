//! One engine's figures on a GGUF, as one JSON line: Tessera's engine or
//! candle's `quantized_llama`, each in a process of its own so that its
//! peak RSS is its own. `bench/llm/run.sh` builds both (and llama.cpp's
//! `llama-bench`) with the same flags and runs them in turn.
//!
//! The work matches `llama-bench -p P -n N` and `llama-batched-bench
//! -npp 16 -ntg N -npl B`:
//!
//! - prefill: one P-token prompt into an empty cache (Tessera's figure
//!   also samples the token after it: one decode step more than the
//!   others do, counted against it);
//! - decode: N tokens, one at a time, from a one-token context, past any
//!   end-of-turn token;
//! - aggregate (Tessera only: candle's model has no batching): B
//!   sequences at once, each a 16-token prompt and N generated tokens;
//!   generated tokens over the whole time, prefills included.
//!
//! Token ids are a fixed pseudo-random sequence (llama-bench feeds random
//! ids too), the same for both engines. Each figure is the median of
//! `--repeat` runs after a warm-up.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};
use tessera_host::inference::{
    BurnEngine, DeviceChoice, EngineOptions, ModelStore, SMOLLM2, SamplingParams,
    cpu_llama::{Activations, BatchPrecision, CpuOptions, KvType},
};

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Which {
    Tessera,
    Candle,
}

#[derive(Parser)]
struct Args {
    /// The engine to measure.
    #[arg(long, value_enum, default_value = "tessera")]
    engine: Which,
    /// The GGUF file (default: SmolLM2's Q4_1 in the models directory).
    #[arg(long)]
    gguf: Option<PathBuf>,
    /// Models directory (as for `tessera models pull`).
    #[arg(long)]
    models_dir: Option<PathBuf>,
    /// Prompt tokens for the prefill figure (llama-bench `-p`).
    #[arg(long, default_value_t = 128)]
    prompt_tokens: usize,
    /// Tokens decoded per sequence (llama-bench `-n`).
    #[arg(long, default_value_t = 128)]
    decode_tokens: usize,
    /// Threads (llama-bench `-t`). Tessera's pool gets this many; candle's
    /// is rayon's global pool: run it with RAYON_NUM_THREADS set.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Concurrent sequences for the aggregate figures (Tessera).
    #[arg(long, value_delimiter = ',', default_value = "8,32")]
    batches: Vec<usize>,
    /// Only prefill and decode (llama-bench's work): the peak RSS is then
    /// that work's alone.
    #[arg(long, conflicts_with = "aggregate_only")]
    no_aggregate: bool,
    /// Only the aggregates (llama-batched-bench's work).
    #[arg(long)]
    aggregate_only: bool,
    /// Runs per figure; the median is reported.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Fetch the model if missing, print the GGUF's path and exit (for
    /// run.sh, which hands the same file to llama.cpp).
    #[arg(long)]
    locate: bool,
    /// Tessera's activations: 16 (the default, the f32 model's answers)
    /// or 8 (llama.cpp's scheme).
    #[arg(long, default_value_t = 16)]
    activation_bits: u8,
    /// Tessera's KV cache: f32 (the default) or f16 (llama.cpp's default,
    /// `-ctk f16 -ctv f16`).
    #[arg(long, default_value = "f32", value_parser = ["f32", "f16"])]
    kv_cache: String,
    /// Tessera's batches (prompts, several sequences): f32 (the default)
    /// or bf16 (AVX-512 BF16).
    #[arg(long, default_value = "f32", value_parser = ["f32", "bf16"])]
    batch_precision: String,
}

/// The fixed pseudo-random token ids of both engines.
fn token_ids(n: usize, salt: u64) -> Vec<u32> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ salt;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Ordinary tokens of SmolLM2's 49,152: past the specials.
            100 + (x % 40_000) as u32
        })
        .collect()
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// The median, or `None` for no runs.
fn median(mut xs: Vec<f64>) -> Option<f64> {
    xs.sort_by(f64::total_cmp);
    xs.get(xs.len() / 2).copied()
}

fn per_second(tokens: usize, took: Duration) -> f64 {
    tokens as f64 / took.as_secs_f64()
}

fn fixed(max_tokens: usize) -> SamplingParams {
    SamplingParams {
        temperature: 0.0,
        max_tokens: max_tokens as u32,
        ignore_eos: true,
        ..SamplingParams::default()
    }
}

async fn tessera(args: &Args, gguf: &std::path::Path) -> Result<serde_json::Value> {
    let activations = match args.activation_bits {
        16 => Activations::I16,
        8 => Activations::I8,
        other => bail!("--activation-bits is 16 or 8, not {other}"),
    };
    let engine = Arc::new(BurnEngine::load(
        gguf,
        None,
        EngineOptions {
            device: DeviceChoice::Cpu,
            cpu: CpuOptions {
                threads: Some(args.threads),
                activations,
                kv: if args.kv_cache == "f16" {
                    KvType::F16
                } else {
                    KvType::F32
                },
                batch: if args.batch_precision == "bf16" {
                    BatchPrecision::Bf16
                } else {
                    BatchPrecision::F32
                },
                ..CpuOptions::default()
            },
            ..EngineOptions::default()
        },
    )?);
    let (p, n) = (args.prompt_tokens, args.decode_tokens);
    // Warm up: the pool's threads, the caches, the allocator.
    engine
        .generate_ids(token_ids(32, 1), fixed(16), None)
        .await?;

    let mut prefill = Vec::new();
    let mut decode = Vec::new();
    let singles = if args.aggregate_only { 0 } else { args.repeat };
    for r in 0..singles {
        let t = Instant::now();
        engine
            .generate_ids(token_ids(p, 2 + r as u64), fixed(1), None)
            .await?;
        prefill.push(per_second(p, t.elapsed()));
        let t = Instant::now();
        let g = engine
            .generate_ids(token_ids(1, 3 + r as u64), fixed(n), None)
            .await?;
        anyhow::ensure!(g.completion_tokens as usize == n, "decode stopped early");
        decode.push(per_second(n, t.elapsed()));
    }
    let mut aggregate = serde_json::Map::new();
    let batches: &[usize] = if args.no_aggregate {
        &[]
    } else {
        &args.batches
    };
    for &batch in batches {
        let mut runs = Vec::new();
        for r in 0..args.repeat {
            let t = Instant::now();
            let handles: Vec<_> = (0..batch)
                .map(|i| {
                    let engine = engine.clone();
                    let ids = token_ids(16, 1000 * (r as u64 + 1) + i as u64);
                    tokio::spawn(async move { engine.generate_ids(ids, fixed(n), None).await })
                })
                .collect();
            let mut tokens = 0;
            for h in handles {
                tokens += h.await??.completion_tokens as usize;
            }
            runs.push(per_second(tokens, t.elapsed()));
        }
        aggregate.insert(batch.to_string(), median(runs).into());
    }
    Ok(serde_json::json!({
        "engine": "tessera",
        "prefill": median(prefill),
        "decode": median(decode),
        "aggregate": aggregate,
        "peak_rss_mib": peak_rss_mib(),
    }))
}

fn candle(args: &Args, gguf: &std::path::Path) -> Result<serde_json::Value> {
    use candle_core::quantized::gguf_file;
    use candle_core::{Device, Tensor};
    use candle_transformers::models::quantized_llama::ModelWeights;

    let threads = candle_core::utils::get_num_threads();
    if threads != args.threads {
        bail!(
            "candle runs on {threads} threads, not --threads {}: set RAYON_NUM_THREADS",
            args.threads
        );
    }
    let device = Device::Cpu;
    let mut file = std::fs::File::open(gguf)?;
    let content = gguf_file::Content::read(&mut file)?;
    let mut model = ModelWeights::from_gguf(content, &mut file, &device)?;
    let argmax =
        |logits: &Tensor| -> Result<u32> { Ok(logits.squeeze(0)?.argmax(0)?.to_scalar::<u32>()?) };
    let (p, n) = (args.prompt_tokens, args.decode_tokens);
    // Warm up. The model's cache starts over at position 0.
    let x = Tensor::new(token_ids(32, 1).as_slice(), &device)?.unsqueeze(0)?;
    model.forward(&x, 0)?;

    let mut prefill = Vec::new();
    let mut decode = Vec::new();
    for r in 0..args.repeat {
        let ids = token_ids(p, 2 + r as u64);
        let t = Instant::now();
        let x = Tensor::new(ids.as_slice(), &device)?.unsqueeze(0)?;
        argmax(&model.forward(&x, 0)?)?;
        prefill.push(per_second(p, t.elapsed()));

        let t = Instant::now();
        let mut next = token_ids(1, 3 + r as u64)[0];
        for pos in 0..n {
            let x = Tensor::new(&[next], &device)?.unsqueeze(0)?;
            next = argmax(&model.forward(&x, pos)?)?;
        }
        decode.push(per_second(n, t.elapsed()));
    }
    Ok(serde_json::json!({
        "engine": "candle",
        "prefill": median(prefill),
        "decode": median(decode),
        "aggregate": {},
        "peak_rss_mib": peak_rss_mib(),
    }))
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.repeat > 0, "--repeat must be at least 1");
    let gguf = match &args.gguf {
        Some(path) => path.clone(),
        None => {
            // As `tessera models pull` does: fetched once, checked by sha256.
            let store = ModelStore::new(
                args.models_dir
                    .clone()
                    .unwrap_or_else(ModelStore::default_dir),
            );
            store
                .pull(&SMOLLM2, false, true, &mut |_| {})
                .context("fetching SmolLM2 (or pass --gguf)")?;
            store.require(&SMOLLM2, SMOLLM2.files[0].name)?
        }
    };
    if args.locate {
        println!("{}", gguf.display());
        return Ok(());
    }
    let figures = match args.engine {
        Which::Tessera => tessera(&args, &gguf).await?,
        Which::Candle => candle(&args, &gguf)?,
    };
    println!("{figures}");
    Ok(())
}
