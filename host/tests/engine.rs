//! The burn engine on the real models: SmolLM2 (GGUF, Q4_1) and MiniLM.
//! Figures from DESIGN.md: " Paris" after "The capital of France is" with
//! p ≈ 0.77; MiniLM cosine of the food pair ≈ 0.755.

mod common;

use std::sync::{Arc, OnceLock};

use tessera_host::embed::cosine;
use tessera_host::inference::sampler::argmax;
use tessera_host::inference::{
    BurnEngine, ChatMessage, ChatRole, EngineOptions, Finish, ModelEngine, ModelError,
    SamplingParams,
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

#[tokio::test]
async fn score_is_the_log_likelihood_of_the_continuation() {
    let engine = engine();
    let paris = engine
        .score("The capital of France is".into(), " Paris".into(), None)
        .await
        .unwrap();
    assert!(
        (paris - 0.77f64.ln()).abs() < 0.07,
        "log p(\" Paris\") = {paris}"
    );
    let berlin = engine
        .score("The capital of France is".into(), " Berlin".into(), None)
        .await
        .unwrap();
    assert!(berlin < paris - 2.0, "{berlin} vs {paris}");
    // Two tokens: the sum of both log-probabilities, so lower still.
    let longer = engine
        .score("The capital of France is".into(), " Paris.".into(), None)
        .await
        .unwrap();
    assert!(longer < paris, "{longer} vs {paris}");
}

#[tokio::test]
async fn chat_answer_names_paris() {
    let engine = engine();
    let g = engine
        .chat(
            vec![ChatMessage {
                role: ChatRole::User,
                content: "What is the capital of France?".into(),
            }],
            greedy(32),
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
                .complete(
                    "Once upon a time".into(),
                    SamplingParams {
                        temperature: 0.9,
                        max_tokens: 16,
                        seed: Some(seed),
                        ..SamplingParams::default()
                    },
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
        .complete("1, 2, 3, 4,".into(), greedy(5), None)
        .await
        .unwrap();
    assert_eq!(g.completion_tokens, 5);
    assert_eq!(g.finish, Finish::Length);

    let mut params = greedy(40);
    params.stop = vec!["8".into()];
    let g = engine
        .complete("1, 2, 3, 4,".into(), params, None)
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
        solo.push(engine.complete(p.into(), greedy(12), None).await.unwrap().text);
    }
    let together = futures_join(
        prompts
            .iter()
            .map(|p| {
                let engine = engine.clone();
                let p = p.to_string();
                tokio::spawn(async move { engine.complete(p, greedy(12), None).await })
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
        .complete(prompt, greedy(4), None)
        .await
        .unwrap_err();
    assert!(matches!(err, ModelError::InvalidInput(_)), "{err}");
    assert!(err.to_string().contains("context holds 8192"), "{err}");
    // The engine still serves.
    assert!(engine.complete("Hi".into(), greedy(2), None).await.is_ok());
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
    let alone = engine.embed(vec!["A man is eating food.".into()]).await.unwrap();
    assert!(cosine(&alone[0], &v[0]) > 0.9999);
}
