//! The engine on the real models: SmolLM2 (GGUF, Q4_1) and MiniLM.
//! Figures from DESIGN.md: " Paris" after "The capital of France is" with
//! p ≈ 0.77; MiniLM cosine of the food pair ≈ 0.755. The quantized CPU
//! model is checked against burn's f32 model of the same weights.

mod common;

use std::sync::{Arc, OnceLock};

use tessera_host::embed::cosine;
use tessera_host::inference::sampler::argmax;
use tessera_host::inference::{
    BurnEngine, ChatMessage, ChatRole, EngineOptions, Finish, GenerateRequest, ModelEngine,
    ModelError, SamplingParams,
};

fn engine() -> Arc<BurnEngine> {
    static ENGINE: OnceLock<Arc<BurnEngine>> = OnceLock::new();
    ENGINE
        .get_or_init(|| {
            let store = common::models();
            Arc::new(BurnEngine::from_store(&store, EngineOptions::default()).unwrap())
        })
        .clone()
}

/// burn's f32 model (the GGUF's weights dequantized) on its CPU backend:
/// the reference the quantized CPU model is checked against.
fn reference() -> Arc<BurnEngine> {
    use tessera_host::inference::TextTokenizer;
    use tessera_host::inference::llama::Llama;
    use tessera_host::inference::weights::GgufWeights;

    static ENGINE: OnceLock<Arc<BurnEngine>> = OnceLock::new();
    ENGINE
        .get_or_init(|| {
            let path = common::models()
                .require(
                    &tessera_host::inference::SMOLLM2,
                    "SmolLM2-135M-Instruct.Q4_1.gguf",
                )
                .unwrap();
            let gguf = GgufWeights::open(&path).unwrap();
            let tokenizer = TextTokenizer::from_gguf(gguf.file()).unwrap();
            let llama = Llama::load(&gguf, &burn::tensor::Device::flex()).unwrap();
            let engine = BurnEngine::start(
                "SmolLM2-135M-Instruct".into(),
                llama,
                tokenizer,
                None,
                &EngineOptions::default(),
            )
            .unwrap();
            Arc::new(engine)
        })
        .clone()
}

fn greedy(max_tokens: u32) -> SamplingParams {
    SamplingParams {
        temperature: 0.0,
        max_tokens,
        ..SamplingParams::default()
    }
}

fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
    let sum: f32 = exp.iter().sum();
    exp.into_iter().map(|e| e / sum).collect()
}

#[tokio::test]
async fn paris_is_the_likely_next_token() {
    let engine = engine();
    let logits = engine
        .next_token_logits("The capital of France is")
        .await
        .unwrap();
    assert_eq!(logits.len(), 49_152);
    let probs = softmax(&logits);
    let top = argmax(&logits);
    assert_eq!(engine.tokenizer().token(top).as_deref(), Some("ĠParis"));
    let p = probs[top as usize];
    assert!((p - 0.77).abs() <= 0.05, "p(\" Paris\") = {p}");
}

/// Largest absolute difference of two logit rows, and the largest logit.
fn logit_gap(a: &[f32], b: &[f32]) -> (f32, f32) {
    let gap = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    (gap, a.iter().copied().fold(f32::NEG_INFINITY, f32::max))
}

/// The quantized CPU model (Q4_1/Q8_0 weights, int8 activations) against
/// burn's f32 model of the same weights: the same top token, logits
/// within 2% of the largest logit, and the same greedy text.
#[tokio::test]
async fn quantized_model_agrees_with_the_f32_reference() {
    agrees_with_the_reference(&engine(), &["The capital of France is", "1, 2, 3, 4,"]).await;
}

/// `engine` against burn's f32 model: on `prompts` and a long one, the
/// same top token and logits within 2% of the largest; the same greedy
/// text on two prompts.
async fn agrees_with_the_reference(engine: &BurnEngine, prompts: &[&str]) {
    let slow = reference();
    let long = "Tessera hosts many small experts. ".repeat(12);
    for prompt in prompts.iter().copied().chain([long.as_str()]) {
        let a = engine.next_token_logits(prompt).await.unwrap();
        let b = slow.next_token_logits(prompt).await.unwrap();
        let (gap, top) = logit_gap(&a, &b);
        println!("{prompt:?}: logits differ by {gap} (largest logit {top})");
        assert!(
            gap <= 0.02 * top,
            "{prompt:?}: logits differ by {gap} (largest logit {top})"
        );
        assert_eq!(argmax(&a), argmax(&b), "{prompt:?}");
    }
    for prompt in ["The capital of France is", "def fibonacci(n):"] {
        let request = || GenerateRequest::text(prompt.into(), greedy(32));
        let a = engine.generate(request(), None).await.unwrap();
        let b = slow.generate(request(), None).await.unwrap();
        assert_eq!(a.text, b.text, "{prompt:?}");
    }
}

/// `--kv-cache f16` against burn's f32 model: keys and values rounded to
/// 16 bits move the logits by rounding only (within 2% of the largest,
/// as the f32 cache) and keep the greedy text.
#[tokio::test]
async fn f16_kv_cache_agrees_with_the_f32_reference() {
    use tessera_host::inference::cpu_llama::{CpuOptions, KvType};
    let options = EngineOptions {
        cpu: CpuOptions {
            kv: KvType::F16,
            ..CpuOptions::default()
        },
        ..EngineOptions::default()
    };
    let half = BurnEngine::from_store(&common::models(), options).unwrap();
    agrees_with_the_reference(&half, &["The capital of France is"]).await;
}

/// `--batch-precision bf16` against burn's f32 model, where the CPU has
/// AVX-512 BF16: prompts of four tokens or more run through bf16 tiles,
/// which move the logits by rounding only (within 2% of the largest, as
/// the f32 tiles) and keep the top token and the greedy text. A CPU
/// without it refuses the option by name.
#[tokio::test]
async fn bf16_batches_agree_with_the_f32_reference() {
    use tessera_host::inference::cpu_llama::{BatchPrecision, CpuOptions};
    let options = EngineOptions {
        cpu: CpuOptions {
            batch: BatchPrecision::Bf16,
            ..CpuOptions::default()
        },
        ..EngineOptions::default()
    };
    if !tessera_kernels::bf16_available() {
        let Err(e) = BurnEngine::from_store(&common::models(), options) else {
            panic!("bf16 batches were accepted without AVX-512 BF16");
        };
        assert!(e.to_string().contains("AVX-512 BF16"), "{e}");
        println!("this CPU has no AVX-512 BF16: only the refusal is checked");
        return;
    }
    let bf16 = BurnEngine::from_store(&common::models(), options).unwrap();
    agrees_with_the_reference(&bf16, &["The capital of France is", "1, 2, 3, 4,"]).await;
}

#[tokio::test]
async fn score_is_the_log_likelihood_of_the_continuation() {
    let engine = engine();
    let paris = engine
        .score("The capital of France is".into(), " Paris".into(), None)
        .await
        .unwrap();
    // What the model read: "The", " capital", " of", " France", " is",
    // " Paris" (SmolLM2's tokenizer adds no BOS to a raw prompt).
    assert_eq!(paris.tokens, 6);
    let paris = paris.logprob;
    assert!(
        (paris - 0.77f64.ln()).abs() < 0.07,
        "log p(\" Paris\") = {paris}"
    );
    let berlin = engine
        .score("The capital of France is".into(), " Berlin".into(), None)
        .await
        .unwrap()
        .logprob;
    assert!(berlin < paris - 2.0, "{berlin} vs {paris}");
    // Two tokens: the sum of both log-probabilities, so lower still.
    let longer = engine
        .score("The capital of France is".into(), " Paris.".into(), None)
        .await
        .unwrap()
        .logprob;
    assert!(longer < paris, "{longer} vs {paris}");
}

#[tokio::test]
async fn score_choices_read_the_prompt_once_and_agree_with_score() {
    let engine = engine();
    let prompt = "Question: Which city is the capital of France?\nAnswer:";
    let choices = [" Paris", " Berlin", " Paris, of course.", " Lyon"];
    let together = engine
        .score_choices(
            prompt.into(),
            choices.iter().map(|c| c.to_string()).collect(),
            None,
        )
        .await
        .unwrap();
    let mut alone_tokens = 0;
    let prompt_tokens = engine.tokenize(prompt.into()).await.unwrap().len() as u32;
    let mut continuation_tokens = 0;
    for (choice, together) in choices.iter().zip(&together.logprobs) {
        let alone = engine
            .score(prompt.into(), choice.to_string(), None)
            .await
            .unwrap();
        alone_tokens += alone.tokens;
        continuation_tokens += alone.tokens - prompt_tokens;
        assert!(
            (alone.logprob - together).abs() < 1e-3 * alone.logprob.abs().max(1.0),
            "{choice:?}: {together} together, {} alone",
            alone.logprob
        );
    }
    assert!(together.logprobs[0] > together.logprobs[1] + 2.0);
    // The prompt once, the continuations, and the prompt's last token
    // again before each continuation after the first.
    assert_eq!(together.tokens, prompt_tokens + continuation_tokens + 3);
    assert!(together.tokens * 2 < alone_tokens);

    // Bad input is refused by name.
    for (continuations, expected) in [
        (vec![], "no continuations"),
        (
            vec![" Paris".to_string(), String::new()],
            "continuation 1 is empty",
        ),
    ] {
        let err = engine
            .score_choices(prompt.into(), continuations, None)
            .await
            .unwrap_err();
        assert!(err.to_string().contains(expected), "{err}");
    }
}

#[tokio::test]
async fn chat_answer_names_paris() {
    let engine = engine();
    let g = engine
        .generate(
            GenerateRequest::chat(
                vec![ChatMessage {
                    role: ChatRole::User,
                    content: "What is the capital of France?".into(),
                }],
                greedy(32),
            ),
            None,
        )
        .await
        .unwrap();
    assert!(g.text.contains("Paris"), "{:?}", g.text);
    assert!(g.prompt_tokens > 10);
    assert_eq!(g.token_logprobs.len() as u32, g.completion_tokens);
    assert!(g.token_logprobs.iter().all(|(_, lp)| *lp <= 0.0));
}

#[tokio::test]
async fn same_seed_same_text() {
    let engine = engine();
    let sample = |seed| {
        let engine = engine.clone();
        async move {
            engine
                .generate(
                    GenerateRequest::text(
                        "Once upon a time".into(),
                        SamplingParams {
                            temperature: 0.9,
                            max_tokens: 16,
                            seed: Some(seed),
                            ..SamplingParams::default()
                        },
                    ),
                    None,
                )
                .await
                .unwrap()
                .text
        }
    };
    let a = sample(7).await;
    assert_eq!(a, sample(7).await);
    let others = [sample(8).await, sample(9).await, sample(10).await];
    assert!(others.iter().any(|o| *o != a), "every seed gave {a:?}");
}

#[tokio::test]
async fn max_tokens_and_stop_strings_end_generation() {
    let engine = engine();
    let g = engine
        .generate(GenerateRequest::text("1, 2, 3, 4,".into(), greedy(5)), None)
        .await
        .unwrap();
    assert_eq!(g.completion_tokens, 5);
    assert_eq!(g.finish, Finish::Length);

    let mut params = greedy(40);
    params.stop = vec!["8".into()];
    let g = engine
        .generate(GenerateRequest::text("1, 2, 3, 4,".into(), params), None)
        .await
        .unwrap();
    assert_eq!(g.finish, Finish::Stop);
    assert!(!g.text.contains('8'), "{:?}", g.text);
    assert!(g.text.contains('7'), "{:?}", g.text);
}

#[tokio::test]
async fn concurrent_generations_match_solo_ones() {
    let engine = engine();
    let prompts = [
        "The capital of France is",
        "def fibonacci(n):",
        "My favourite colour is",
        "Water boils at",
    ];
    let mut solo = Vec::new();
    for p in prompts {
        solo.push(
            engine
                .generate(GenerateRequest::text(p.into(), greedy(12)), None)
                .await
                .unwrap()
                .text,
        );
    }
    let together = futures_join(
        prompts
            .iter()
            .map(|p| {
                let engine = engine.clone();
                let p = p.to_string();
                tokio::spawn(async move {
                    engine
                        .generate(GenerateRequest::text(p, greedy(12)), None)
                        .await
                })
            })
            .collect(),
    )
    .await;
    for (i, g) in together.into_iter().enumerate() {
        assert_eq!(g.unwrap().text, solo[i], "prompt {:?}", prompts[i]);
    }
}

async fn futures_join<T>(handles: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test]
async fn too_long_for_the_context_is_refused() {
    let engine = engine();
    let prompt = "word ".repeat(9000);
    let err = engine
        .generate(GenerateRequest::text(prompt, greedy(4)), None)
        .await
        .unwrap_err();
    assert!(matches!(err, ModelError::InvalidInput(_)), "{err}");
    assert!(err.to_string().contains("context holds 8192"), "{err}");
    // The engine still serves.
    assert!(
        engine
            .generate(GenerateRequest::text("Hi".into(), greedy(2)), None)
            .await
            .is_ok()
    );
    // Far too long to fit whatever it tokenizes to: refused by its size,
    // before any tokenizing (once 19.5 s for two 4 MiB requests).
    let huge = "x".repeat(4 << 20);
    let err = engine
        .generate(
            GenerateRequest::chat(
                vec![ChatMessage {
                    role: ChatRole::User,
                    content: huge,
                }],
                greedy(1),
            ),
            None,
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("4194304 bytes"), "{err}");
}

/// Regression: `temperature: 1e-40` (or a repetition penalty of 1e-40)
/// made the sampler index an empty list on the engine thread, which died
/// and took every later request with it.
#[tokio::test]
async fn degenerate_sampling_does_not_stop_the_engine() {
    let engine = engine();
    for (temperature, repetition_penalty) in [(1e-40, 1.0), (1.0, 1e-40), (1e-40, 1e-40)] {
        let params = SamplingParams {
            temperature,
            repetition_penalty,
            top_p: 0.9,
            max_tokens: 4,
            ..SamplingParams::default()
        };
        let g = engine
            .generate(
                GenerateRequest::text("The capital of France is".into(), params),
                None,
            )
            .await
            .unwrap();
        assert!(g.completion_tokens >= 1, "{g:?}");
    }
    // A token id the model does not have is refused, not fed to the step.
    let err = engine
        .generate_ids(vec![1, 49_152 + 5], greedy(2), None)
        .await
        .unwrap_err();
    assert!(matches!(err, ModelError::InvalidInput(_)), "{err}");
    assert!(err.to_string().contains("vocabulary of 49152"), "{err}");
    let g = engine
        .generate(
            GenerateRequest::text("The capital of France is".into(), greedy(3)),
            None,
        )
        .await
        .unwrap();
    assert!(g.text.contains("Paris"), "{g:?}");
    assert!(engine.health().serving);
}

#[tokio::test]
async fn embeddings_match_sentence_transformers() {
    let engine = engine();
    let v = engine
        .embed(vec![
            "A man is eating food.".into(),
            "A man is eating a piece of bread.".into(),
            "The stock market fell sharply today.".into(),
        ])
        .await
        .unwrap();
    assert_eq!(v.len(), 3);
    assert!(v.iter().all(|e| e.len() == 384));
    let norm: f32 = v[0].iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-4);
    let food = cosine(&v[0], &v[1]);
    assert!((food - 0.755).abs() <= 0.01, "cosine = {food}");
    assert!(cosine(&v[0], &v[2]) < food - 0.3);
    // Batching does not change an embedding.
    let alone = engine
        .embed(vec!["A man is eating food.".into()])
        .await
        .unwrap();
    assert!(cosine(&alone[0], &v[0]) > 0.9999);
}

/// SmolLM2 rewritten as a Hugging Face directory (f32 safetensors, NeoX
/// RoPE layout, tokenizer.json) loads through the other path and gives the
/// same logits and token ids as the GGUF.
#[tokio::test]
async fn hugging_face_directory_matches_gguf() {
    use tessera_host::inference::llama::interleaved_to_neox_rows;
    use tessera_host::inference::weights::{GgufWeights, WeightSource};

    let store = common::models();
    let gguf_path = store
        .require(
            &tessera_host::inference::SMOLLM2,
            "SmolLM2-135M-Instruct.Q4_1.gguf",
        )
        .unwrap();
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("smollm2-hf");
    std::fs::create_dir_all(&dir).unwrap();
    let gguf = GgufWeights::open(&gguf_path).unwrap();
    let c = gguf.config().clone();
    let hd = c.hidden / c.heads;
    let kv = c.kv_heads * hd;

    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut add = |hf: String, shape: Vec<usize>, values: Vec<f32>| {
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        tensors.push((hf, shape, bytes));
    };
    add(
        "model.embed_tokens.weight".into(),
        vec![c.vocab, c.hidden],
        gguf.matrix("token_embd.weight", c.vocab, c.hidden).unwrap(),
    );
    add(
        "model.norm.weight".into(),
        vec![c.hidden],
        gguf.vector("output_norm.weight", c.hidden).unwrap(),
    );
    for i in 0..c.layers {
        let g = |part: &str| format!("blk.{i}.{part}");
        let hf = |part: &str| format!("model.layers.{i}.{part}");
        let q = gguf
            .matrix(&g("attn_q.weight"), c.hidden, c.hidden)
            .unwrap();
        let k = gguf.matrix(&g("attn_k.weight"), kv, c.hidden).unwrap();
        add(
            hf("self_attn.q_proj.weight"),
            vec![c.hidden, c.hidden],
            interleaved_to_neox_rows(&q, c.heads, hd, c.hidden),
        );
        add(
            hf("self_attn.k_proj.weight"),
            vec![kv, c.hidden],
            interleaved_to_neox_rows(&k, c.kv_heads, hd, c.hidden),
        );
        for (gg, h, rows, cols) in [
            ("attn_v.weight", "self_attn.v_proj.weight", kv, c.hidden),
            (
                "attn_output.weight",
                "self_attn.o_proj.weight",
                c.hidden,
                c.hidden,
            ),
            ("ffn_gate.weight", "mlp.gate_proj.weight", c.ffn, c.hidden),
            ("ffn_up.weight", "mlp.up_proj.weight", c.ffn, c.hidden),
            ("ffn_down.weight", "mlp.down_proj.weight", c.hidden, c.ffn),
        ] {
            add(
                hf(h),
                vec![rows, cols],
                gguf.matrix(&g(gg), rows, cols).unwrap(),
            );
        }
        for (gg, h) in [
            ("attn_norm.weight", "input_layernorm.weight"),
            ("ffn_norm.weight", "post_attention_layernorm.weight"),
        ] {
            add(
                hf(h),
                vec![c.hidden],
                gguf.vector(&g(gg), c.hidden).unwrap(),
            );
        }
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(name, shape, bytes)| {
            let view =
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                    .unwrap();
            (name.clone(), view)
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
    let config = serde_json::json!({
        "model_type": "llama",
        "hidden_size": c.hidden,
        "intermediate_size": c.ffn,
        "num_hidden_layers": c.layers,
        "num_attention_heads": c.heads,
        "num_key_value_heads": c.kv_heads,
        "vocab_size": c.vocab,
        "rope_theta": c.rope_base,
        "rms_norm_eps": c.rms_eps,
        "max_position_embeddings": c.context,
        "tie_word_embeddings": true,
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let base = engine();
    base.tokenizer().save_hf_dir(&dir).unwrap();
    drop(tensors);

    let hf = BurnEngine::load(&dir, None, EngineOptions::default()).unwrap();
    let text = "The capital of France is";
    assert_eq!(
        hf.tokenizer().encode(text).unwrap(),
        base.tokenizer().encode(text).unwrap()
    );
    // The f32 directory runs dense on the CPU: it matches burn's f32 model
    // of the same (dequantized) weights.
    let a = reference().next_token_logits(text).await.unwrap();
    let b = hf.next_token_logits(text).await.unwrap();
    let max_diff = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(max_diff < 1e-3, "largest logit difference {max_diff}");
    // The chat template came along in tokenizer_config.json.
    let g = hf
        .generate(
            GenerateRequest::chat(
                vec![ChatMessage {
                    role: ChatRole::User,
                    content: "What is the capital of France?".into(),
                }],
                greedy(16),
            ),
            None,
        )
        .await
        .unwrap();
    assert!(g.text.contains("Paris"), "{:?}", g.text);
    // No embedding model was loaded with it: a clear error.
    let err = hf.embed(vec!["x".into()]).await.unwrap_err();
    assert!(err.to_string().contains("no embedding model"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

/// Ids of the `n` largest logits, largest first.
#[cfg(feature = "wgpu")]
fn top(logits: &[f32], n: usize) -> Vec<usize> {
    let mut ids: Vec<usize> = (0..logits.len()).collect();
    ids.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    ids.truncate(n);
    ids
}

/// wgpu with f32 matrices (lavapipe where there is no GPU) against the
/// quantized CPU engine: the same logits to f32 rounding and the same
/// greedy text.
#[cfg(feature = "wgpu")]
#[tokio::test]
async fn cpu_and_wgpu_f32_logits_agree() {
    use tessera_host::inference::{BurnWeights, DeviceChoice};

    let gpu = BurnEngine::from_store(
        &common::models(),
        EngineOptions {
            device: DeviceChoice::Wgpu,
            wgpu_weights: BurnWeights::F32,
            ..EngineOptions::default()
        },
    )
    .unwrap();
    let text = "The capital of France is";
    let a = engine().next_token_logits(text).await.unwrap();
    let b = gpu.next_token_logits(text).await.unwrap();
    let (diff, _) = logit_gap(&a, &b);
    assert!(diff < 1e-2, "largest logit difference {diff}");
    assert_eq!(argmax(&a), argmax(&b));
    let g = gpu
        .generate(GenerateRequest::text(text.into(), greedy(4)), None)
        .await
        .unwrap();
    assert!(g.text.starts_with(" Paris"), "{:?}", g.text);
}

/// wgpu's default: the matrices stay on the device in 8-bit blocks (read
/// back from burn's tensors), in under a third of f32's bytes, and the
/// answers are the CPU engine's within the stated tolerance: the same top
/// three tokens, p(" Paris") ≈ 0.77, the same greedy start.
#[cfg(feature = "wgpu")]
#[tokio::test]
async fn wgpu_keeps_the_weights_quantized_and_agrees_with_the_cpu() {
    use tessera_host::inference::llama::{Llama, Q8_LOGIT_TOLERANCE};
    use tessera_host::inference::{BurnWeights, DeviceChoice, open_weights};

    let path = common::models()
        .require(
            &tessera_host::inference::SMOLLM2,
            "SmolLM2-135M-Instruct.Q4_1.gguf",
        )
        .unwrap();
    let (weights, tokenizer) = open_weights(&path).unwrap();
    let device = DeviceChoice::Wgpu.device().unwrap();
    let in_use = || {
        device
            .memory_pool_usage()
            .expect("wgpu reports its memory")
            .bytes_in_use
    };
    // What each way of holding the weights leaves in use on the device,
    // read from wgpu's allocator: both sides measured the same way.
    let load = |weights_kind| {
        device.memory_cleanup();
        let before = in_use();
        let model = Llama::load_with(weights.as_ref(), &device, weights_kind).unwrap();
        (in_use() - before, model)
    };
    let (used_f32, f32_model) = load(BurnWeights::F32);
    drop(f32_model);
    let (used, model) = load(BurnWeights::Q8Blocks);
    assert_eq!(model.quantized_matrices(), (211, 211));
    // SmolLM2-135M: 134,515,008 parameters outside the embedding table
    // (the head is tied to it and counted once), 4 bytes each in f32.
    let f32_bytes = 4 * 134_515_008;
    eprintln!(
        "on wgpu: q8 {used} bytes in use on the device (counted at load: {}), f32 {used_f32} \
         (4 bytes a parameter: {f32_bytes})",
        model.device_bytes()
    );
    assert!(used * 3 < f32_bytes, "{used} bytes on the device");
    assert!(
        used * 3 < used_f32,
        "q8 {used} against f32 {used_f32} bytes"
    );
    let gpu = BurnEngine::start(
        "SmolLM2-135M-Instruct".into(),
        model,
        tokenizer,
        None,
        &EngineOptions::default(),
    )
    .unwrap();

    let text = "The capital of France is";
    let a = engine().next_token_logits(text).await.unwrap();
    let b = gpu.next_token_logits(text).await.unwrap();
    let (diff, largest) = logit_gap(&a, &b);
    eprintln!("q8 on wgpu: largest logit difference {diff} (largest logit {largest})");
    assert!(
        diff < Q8_LOGIT_TOLERANCE * largest,
        "largest logit difference {diff}, largest logit {largest}"
    );
    assert_eq!(top(&a, 3), top(&b, 3));
    let p_paris = softmax(&b)[top(&a, 1)[0]];
    assert!((p_paris - 0.77).abs() < 0.05, "p(\" Paris\") = {p_paris}");
    let g = gpu
        .generate(GenerateRequest::text(text.into(), greedy(4)), None)
        .await
        .unwrap();
    assert!(g.text.starts_with(" Paris"), "{:?}", g.text);
}

fn small_budget_engine(kv_budget_bytes: usize) -> BurnEngine {
    let store = common::models();
    BurnEngine::from_store(
        &store,
        EngineOptions {
            kv_budget_bytes,
            ..EngineOptions::default()
        },
    )
    .unwrap()
}

/// A job bigger than the whole KV budget is refused with the numbers and
/// the flag that raises it; jobs that fit wait their turn and all finish.
#[tokio::test]
async fn kv_budget_refuses_what_cannot_fit_and_queues_the_rest() {
    // 46,080 bytes a token: 30 tokens of KV cache.
    let engine = Arc::new(small_budget_engine(30 * 46_080));
    assert_eq!(engine.stats().kv_budget_tokens, 30);
    let err = engine
        .generate(
            GenerateRequest::text("Hello there".into(), greedy(100)),
            None,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, ModelError::LimitExceeded(_)), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("KV budget") && msg.contains("--kv-budget-mib"),
        "{msg}"
    );

    // Each needs ~12 tokens: two fit at once, the third waits.
    let handles: Vec<_> = (0..3)
        .map(|i| {
            let engine = engine.clone();
            tokio::spawn(async move {
                engine
                    .generate(
                        GenerateRequest::text(format!("Count: {i}"), greedy(8)),
                        None,
                    )
                    .await
            })
        })
        .collect();
    for h in handles {
        assert!(h.await.unwrap().is_ok());
    }
    assert_eq!(engine.stats().reserved_kv_tokens, 0);
}

/// A caller that stops waiting (an expert past its deadline) cancels its
/// sequence: the engine drops it and frees its cache.
#[tokio::test]
async fn abandoned_generations_are_cancelled() {
    let engine = Arc::new(small_budget_engine(1 << 30));
    let long = {
        let engine = engine.clone();
        tokio::spawn(async move {
            engine
                // Greedy counting goes on and on.
                .generate(
                    GenerateRequest::text("1, 2, 3, 4, 5, 6,".into(), greedy(4000)),
                    None,
                )
                .await
        })
    };
    // Wait until it is decoding, then abandon it.
    let decoding = async {
        while engine.stats().generated_tokens < 2 {
            assert!(!long.is_finished(), "the long generation ended early");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(120), decoding)
        .await
        .expect("the engine never started decoding");
    long.abort();
    let _ = long.await;
    // The next job runs; by then the engine has dropped the abandoned one.
    engine
        .generate(GenerateRequest::text("Hi".into(), greedy(2)), None)
        .await
        .unwrap();
    let stats = engine.stats();
    assert_eq!(stats.cancelled, 1, "{stats:?}");
    assert_eq!(stats.active, 0, "{stats:?}");
    assert!(stats.generated_tokens < 500, "{stats:?}");
}

/// With room for one sequence at a time, a second owner's job does not wait
/// behind all of the first owner's queue: owners take turns.
#[tokio::test]
async fn owners_take_turns_for_admission() {
    let store = common::models();
    let engine = Arc::new(
        BurnEngine::from_store(
            &store,
            EngineOptions {
                max_batch: 1,
                ..EngineOptions::default()
            },
        )
        .unwrap(),
    );
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut handles = Vec::new();
    for (owner, job) in [("a", 1), ("a", 2), ("a", 3), ("b", 1)] {
        let engine = engine.clone();
        let done = done_tx.clone();
        handles.push(tokio::spawn(async move {
            let params = SamplingParams {
                owner: Some(owner.into()),
                ..greedy(6)
            };
            // Token ids, so that jobs reach the scheduler in submission
            // order (text is tokenized on blocking threads, in any order).
            let prompt = engine
                .tokenizer()
                .encode_prompt(&format!("Job {job}:"))
                .unwrap();
            engine.generate_ids(prompt, params, None).await.unwrap();
            done.send(format!("{owner}{job}")).unwrap();
        }));
        // Submit in this order.
        tokio::task::yield_now().await;
    }
    for h in handles {
        h.await.unwrap();
    }
    drop(done_tx);
    let mut order = Vec::new();
    while let Some(job) = done_rx.recv().await {
        order.push(job);
    }
    assert_eq!(order, ["a1", "b1", "a2", "a3"]);
}

/// Streamed deltas add up to the final text, stop strings included (the
/// held-back tail that turned out to be a stop string is never sent).
#[tokio::test]
async fn streamed_deltas_add_up_to_the_answer() {
    let engine = engine();
    let prompt = engine
        .chat_prompt(&[ChatMessage {
            role: ChatRole::User,
            content: "What is the capital of France?".into(),
        }])
        .unwrap();
    for stop in [vec![], vec!["France".to_string()], vec![String::new()]] {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut params = greedy(24);
        params.stop = stop.clone();
        let g = engine
            .generate_ids(prompt.clone(), params, Some(tx))
            .await
            .unwrap();
        let mut streamed = String::new();
        let mut pieces = 0;
        while let Some(delta) = rx.recv().await {
            assert!(!delta.is_empty());
            streamed += &delta;
            pieces += 1;
        }
        assert_eq!(streamed, g.text, "stop {stop:?}");
        assert!(
            pieces > 1 || g.completion_tokens <= 1,
            "stop {stop:?}: one piece"
        );
        if stop == ["France"] {
            assert!(!g.text.contains("France"), "{:?}", g.text);
        }
    }
}
