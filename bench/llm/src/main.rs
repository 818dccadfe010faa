//! Prefill and decode throughput of Tessera's burn engine, with candle's
//! `quantized_llama` on the same GGUF as the same-run reference.
//!
//! Figures: prefill tok/s (one 128-token prompt), decode tok/s at batch 1,
//! aggregate decode tok/s with 8 and 32 concurrent sequences (burn only:
//! candle's example model has no batching), and peak resident memory.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;
use tessera_host::inference::{
    BurnEngine, DeviceChoice, EngineOptions, GenerateRequest, MINILM, ModelEngine, ModelStore,
    SMOLLM2, SamplingParams,
};

#[derive(Parser)]
struct Args {
    /// Models directory (as for `tessera models pull`).
    #[arg(long)]
    models_dir: Option<PathBuf>,
    /// burn device: cpu or wgpu.
    #[arg(long, default_value = "cpu")]
    device: DeviceChoice,
    /// Tokens decoded per sequence.
    #[arg(long, default_value_t = 64)]
    decode_tokens: u32,
    /// Prompt length for the prefill figure.
    #[arg(long, default_value_t = 128)]
    prompt_tokens: usize,
    /// Skip candle.
    #[arg(long)]
    no_candle: bool,
    /// Batch sizes for the aggregate figures.
    #[arg(long, value_delimiter = ',', default_value = "8,32")]
    batches: Vec<usize>,
    /// Only compare next-token logits on cpu and wgpu (needs `--features wgpu`).
    #[arg(long)]
    compare_devices: bool,
}

async fn compare_devices(store: &ModelStore) -> Result<()> {
    let text = "The capital of France is";
    let mut rows = Vec::new();
    for device in [DeviceChoice::Cpu, DeviceChoice::Wgpu] {
        let started = Instant::now();
        let engine = BurnEngine::from_store(
            store,
            EngineOptions {
                device,
                ..EngineOptions::default()
            },
        )?;
        let loaded = started.elapsed();
        let t = Instant::now();
        let logits = engine.next_token_logits(text).await?;
        let forward = t.elapsed();
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum: f32 = logits.iter().map(|l| (l - max).exp()).sum();
        let top = tessera_host::inference::sampler::argmax(&logits);
        let t = Instant::now();
        let g = engine
            .generate(GenerateRequest::text(text.into(), greedy(8)), None)
            .await?;
        let decode = f64::from(g.completion_tokens) / t.elapsed().as_secs_f64();
        println!(
            "{:4}: load {loaded:.1?}, prefill forward {forward:.1?}, top {:?} p={:.4}, greedy {:?} ({decode:.1} tok/s)",
            device.as_str(),
            engine.tokenizer().token(top).unwrap_or_default(),
            1.0 / sum,
            g.text
        );
        rows.push(logits);
    }
    let diff = rows[0]
        .iter()
        .zip(&rows[1])
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    println!("largest cpu/wgpu logit difference: {diff:.2e}");
    Ok(())
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

fn prompt_ids(engine: &BurnEngine, n: usize) -> Vec<u32> {
    let text = "The history of the city begins with a small settlement on the river. ".repeat(64);
    let mut ids = engine.tokenizer().encode(&text).unwrap();
    ids.truncate(n);
    ids
}

fn greedy(max_tokens: u32) -> SamplingParams {
    SamplingParams {
        temperature: 0.0,
        max_tokens,
        ..SamplingParams::default()
    }
}

async fn burn_figures(args: &Args, store: &ModelStore) -> Result<()> {
    let started = Instant::now();
    let engine = Arc::new(BurnEngine::from_store(
        store,
        EngineOptions {
            device: args.device,
            ..EngineOptions::default()
        },
    )?);
    println!(
        "burn ({}): loaded in {:.1?}",
        args.device.as_str(),
        started.elapsed()
    );
    let prompt = prompt_ids(&engine, args.prompt_tokens);
    // Warm up.
    engine.generate_ids(prompt[..8].to_vec(), greedy(4), None).await?;

    // Prefill: one token generated after the prompt.
    let t = Instant::now();
    engine.generate_ids(prompt.clone(), greedy(1), None).await?;
    let prefill = prompt.len() as f64 / t.elapsed().as_secs_f64();

    // Decode at batch 1: time for n tokens minus a 1-token run.
    let short = &prompt[..16];
    let t = Instant::now();
    engine.generate_ids(short.to_vec(), greedy(1), None).await?;
    let base = t.elapsed();
    let t = Instant::now();
    let g = engine
        .generate_ids(short.to_vec(), greedy(args.decode_tokens), None)
        .await?;
    let decode = (g.completion_tokens - 1) as f64 / (t.elapsed() - base).as_secs_f64();
    println!(
        "burn prefill  {prefill:8.1} tok/s ({} tokens)",
        prompt.len()
    );
    println!("burn decode@1 {decode:8.1} tok/s");

    for &batch in &args.batches {
        let t = Instant::now();
        let handles: Vec<_> = (0..batch)
            .map(|i| {
                let engine = engine.clone();
                // Different prompts so the sequences differ.
                let ids = prompt[i % 8..i % 8 + 16].to_vec();
                let n = args.decode_tokens;
                tokio::spawn(async move { engine.generate_ids(ids, greedy(n), None).await })
            })
            .collect();
        let mut tokens = 0;
        for h in handles {
            tokens += h.await??.completion_tokens;
        }
        let aggregate = f64::from(tokens) / t.elapsed().as_secs_f64();
        println!(
            "burn decode@{batch:<2} {aggregate:8.1} tok/s aggregate ({:.1}x batch 1)",
            aggregate / decode
        );
    }
    let v = engine.embed(vec!["warm".into()]).await?;
    let t = Instant::now();
    let texts: Vec<String> = (0..32)
        .map(|i| format!("sentence number {i} about cats"))
        .collect();
    engine.embed(texts).await?;
    println!(
        "minilm embed  {:8.1} texts/s (batch 32, {} dims)",
        32.0 / t.elapsed().as_secs_f64(),
        v[0].len()
    );
    println!("peak RSS {:.0} MiB", peak_rss_mib());
    Ok(())
}

fn candle_figures(args: &Args, gguf: &Path, prompt: &[u32]) -> Result<()> {
    use candle_core::quantized::gguf_file;
    use candle_core::{Device, Tensor};
    use candle_transformers::models::quantized_llama::ModelWeights;

    let device = Device::Cpu;
    let load = || -> Result<ModelWeights> {
        let mut file = std::fs::File::open(gguf)?;
        let content = gguf_file::Content::read(&mut file)?;
        Ok(ModelWeights::from_gguf(content, &mut file, &device)?)
    };
    let argmax =
        |logits: &Tensor| -> Result<u32> { Ok(logits.squeeze(0)?.argmax(0)?.to_scalar::<u32>()?) };
    let mut model = load()?;
    // Warm up.
    let x = Tensor::new(&prompt[..8], &device)?.unsqueeze(0)?;
    model.forward(&x, 0)?;

    let mut model = load()?;
    let t = Instant::now();
    let x = Tensor::new(prompt, &device)?.unsqueeze(0)?;
    let logits = model.forward(&x, 0)?;
    let mut next = argmax(&logits)?;
    let prefill = prompt.len() as f64 / t.elapsed().as_secs_f64();

    let mut pos = prompt.len();
    let t = Instant::now();
    for _ in 0..args.decode_tokens {
        let x = Tensor::new(&[next], &device)?.unsqueeze(0)?;
        let logits = model.forward(&x, pos)?;
        next = argmax(&logits)?;
        pos += 1;
    }
    let decode = f64::from(args.decode_tokens) / t.elapsed().as_secs_f64();
    println!(
        "candle prefill  {prefill:8.1} tok/s ({} tokens)",
        prompt.len()
    );
    println!("candle decode@1 {decode:8.1} tok/s");
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let store = ModelStore::new(
        args.models_dir
            .clone()
            .unwrap_or_else(ModelStore::default_dir),
    );
    let gguf = store
        .require(&SMOLLM2, SMOLLM2.files[0].name)
        .context("run `tessera models pull` first")?;
    store.require(&MINILM, "model.safetensors")?;
    if args.compare_devices {
        return compare_devices(&store).await;
    }
    println!(
        "machine: {} threads; target-cpu native: {}",
        std::thread::available_parallelism().map_or(0, usize::from),
        cfg!(target_feature = "avx2")
    );
    burn_figures(&args, &store).await?;
    if !args.no_candle {
        let engine = BurnEngine::from_store(&store, EngineOptions::default())?;
        let prompt = prompt_ids(&engine, args.prompt_tokens);
        drop(engine);
        candle_figures(&args, &gguf, &prompt)?;
    }
    Ok(())
}
