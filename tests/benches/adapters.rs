//! LoRA adapters in the engine (not in the test command): `cargo bench -p
//! tessera-tests --bench adapters`.
//!
//! 1. Aggregate decode tokens/s of 32 concurrent greedy generations (the
//!    same prompt, 64 new tokens each) on the base model, then with 32
//!    distinct rank-8 adapters (q, k, v, o, gate, up, down), one per
//!    sequence, side by side in one run: the target is ≥ 0.8× the base.
//! 2. The same with 100 adapters registered (32 of them in the batch).
//! 3. Adapter load time (read, check, upload) and memory per adapter.
//! 4. `tessera adapt`'s training throughput: tokens/s of forward and
//!    backward passes over the example fine-tune's data (rank 8 on q and
//!    v, 4 examples per step, as `plugins/harbor-lane-books/train.sh`).
//!
//! Adapters are random (`write_random_peft`): their values do not change
//! the work, only their shapes do.

use std::sync::Arc;
use std::time::Instant;

use tessera_host::inference::llama::Llama;
use tessera_host::inference::lora::{Target, write_random_peft};
use tessera_host::inference::train::{AdaptOptions, Dataset, Example, Trainer};
use tessera_host::inference::{
    BurnEngine, EngineOptions, GenerateRequest, ModelEngine, Prompt, SMOLLM2, SamplingParams,
    open_weights,
};

const SEQUENCES: usize = 32;
const NEW_TOKENS: u32 = 64;
const RANK: usize = 8;

async fn decode_rate(engine: &Arc<BurnEngine>, adapters: &[Option<String>]) -> f64 {
    let started = Instant::now();
    let handles: Vec<_> = adapters
        .iter()
        .map(|adapter| {
            let engine = engine.clone();
            let request = GenerateRequest {
                prompt: Prompt::Text("Once upon a time, in a small village by the sea,".into()),
                params: SamplingParams {
                    temperature: 0.0,
                    max_tokens: NEW_TOKENS,
                    // Every sequence runs its whole length.
                    stop: Vec::new(),
                    ..SamplingParams::default()
                },
                adapter: adapter.clone(),
            };
            tokio::spawn(async move { engine.generate(request, None).await.unwrap() })
        })
        .collect();
    let mut tokens = 0u64;
    for h in handles {
        tokens += u64::from(h.await.unwrap().completion_tokens);
    }
    tokens as f64 / started.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    let store = tessera_tests::model_store();
    let gguf = store.require(&SMOLLM2, SMOLLM2.files[0].name).unwrap();
    let (weights, _) = open_weights(&gguf).unwrap();
    let cfg = weights.config().clone();
    drop(weights);
    let options = EngineOptions {
        max_batch: SEQUENCES,
        ..EngineOptions::default()
    };
    let engine = Arc::new(BurnEngine::load(&gguf, None, options).unwrap());
    let dir = tempfile::tempdir().unwrap();

    // Load time and memory per adapter.
    let mut load_ms = Vec::new();
    let mut bytes = 0;
    for i in 0..100 {
        let path = dir.path().join(format!("a{i}"));
        write_random_peft(
            &path,
            &cfg,
            "SmolLM2-135M-Instruct",
            RANK,
            &Target::ALL,
            i as u64,
        )
        .unwrap();
        let t = Instant::now();
        let info = engine.register_adapter(&format!("a{i}"), &path).unwrap();
        load_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        bytes = info.bytes;
    }
    load_ms.sort_by(f64::total_cmp);
    println!(
        "adapter load (rank {RANK}, all 7 projections, 30 layers): p50 {:.1} ms, {:.2} MiB each in memory",
        load_ms[load_ms.len() / 2],
        bytes as f64 / (1 << 20) as f64
    );

    // Warm up, then base and adapters side by side, twice each.
    decode_rate(&engine, &vec![None; SEQUENCES]).await;
    let base_batch = vec![None; SEQUENCES];
    let adapter_batch: Vec<Option<String>> =
        (0..SEQUENCES).map(|i| Some(format!("a{i}"))).collect();
    let spread_batch: Vec<Option<String>> = (0..SEQUENCES)
        .map(|i| Some(format!("a{}", i * 3 % 100)))
        .collect();
    let mut base = 0.0f64;
    let mut tuned = 0.0f64;
    let mut spread = 0.0f64;
    for _ in 0..2 {
        base = base.max(decode_rate(&engine, &base_batch).await);
        tuned = tuned.max(decode_rate(&engine, &adapter_batch).await);
        spread = spread.max(decode_rate(&engine, &spread_batch).await);
    }
    println!(
        "{SEQUENCES} sequences x {NEW_TOKENS} tokens: base {base:.1} tok/s; 32 distinct adapters {tuned:.1} tok/s ({:.2}x); 32 of 100 registered adapters {spread:.1} tok/s ({:.2}x)",
        tuned / base,
        spread / base
    );
    drop(engine);
    adapt_rate(&gguf);
}

/// Training tokens/s of `tessera adapt` on the example fine-tune's data.
fn adapt_rate(gguf: &std::path::Path) {
    let (weights, tokenizer) = open_weights(gguf).unwrap();
    let device = tessera_host::inference::DeviceChoice::Cpu.device().unwrap();
    let model = Llama::load(weights.as_ref(), &device).unwrap();
    let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../plugins/harbor-lane-books/data/train.jsonl");
    let examples = Dataset::read(&data, &tokenizer, 512).unwrap().examples;
    let mut trainer = Trainer::new(&model, AdaptOptions::default()).unwrap();
    let batches: Vec<Vec<&Example>> = examples.chunks(4).map(|c| c.iter().collect()).collect();
    // One step to warm up, then the rest timed.
    trainer.step(&batches[0]);
    let started = Instant::now();
    let mut tokens = 0;
    for batch in &batches[1..] {
        tokens += trainer.step(batch).tokens;
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "tessera adapt (rank 8 on q, v; 4 examples of ~{} tokens per step): {:.0} tokens/s, {:.2} s per step",
        tokens / ((batches.len() - 1) * 4),
        tokens as f64 / seconds,
        seconds / (batches.len() - 1) as f64
    );
}
