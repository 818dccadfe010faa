//! What a Tessera host in front of an upstream model costs (not in the
//! test command): `cargo bench -p tessera-tests --bench upstream`.
//!
//! Host B serves the real model (it stands in for vLLM: an
//! OpenAI-compatible server on loopback); host A serves the same model as
//! the upstream `b`. The same seeded, greedy requests go to B directly and
//! through A, alternating (who goes first alternates too), and to the `assistant` expert on each host (on
//! A its model is `b`). Printed: p50 latency per request (non-streamed)
//! and, for streamed requests, p50 time to the first token and p50 time
//! per token after it; the overhead is A's figure over B's, minus one.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};
use tessera_host::bundle::ModelGrant;
use tessera_host::inference::upstream::{UpstreamEngine, UpstreamOptions};
use tessera_host::inference::{ModelEngine, NoModel};
use tessera_host::server::{self, AppState, ServerOptions};
use tessera_tests::{host_with, load, load_as, real_engine, test_policy};

const ROUNDS: usize = 40;
const MAX_TOKENS: u32 = 32;

async fn start(state: AppState) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(server::serve(listener, state, std::future::pending()));
    base
}

fn request(model: &str, i: usize, stream: bool) -> Value {
    json!({
        "model": model,
        "messages": [{"role": "user", "content": format!("Write one sentence about the number {i}.")}],
        "temperature": 0.0,
        "seed": 7,
        "max_tokens": MAX_TOKENS,
        "stream": stream,
    })
}

/// Seconds of one non-streamed request, and its completion tokens.
async fn once(client: &reqwest::Client, url: &str, body: &Value) -> (f64, u64) {
    let t = Instant::now();
    let r: Value = client
        .post(url)
        .json(body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let secs = t.elapsed().as_secs_f64();
    let tokens = r["usage"]["completion_tokens"]
        .as_u64()
        .unwrap_or_else(|| panic!("{r}"));
    (secs, tokens)
}

/// Time to the first streamed text, and seconds per streamed piece after it.
async fn streamed(client: &reqwest::Client, url: &str, body: &Value) -> (f64, f64) {
    let t = Instant::now();
    let response = client.post(url).json(body).send().await.unwrap();
    let mut chunks = response.bytes_stream();
    let (mut first, mut pieces, mut last) = (None, 0u32, Duration::ZERO);
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.unwrap();
        let n = std::str::from_utf8(&chunk)
            .unwrap()
            .matches("\"content\":\"")
            .count() as u32;
        if n > 0 {
            first.get_or_insert(t.elapsed());
            pieces += n;
            last = t.elapsed();
        }
    }
    let first = first.expect("streamed text");
    let per = (last - first).as_secs_f64() / f64::from(pieces.saturating_sub(1).max(1));
    (first.as_secs_f64(), per)
}

fn p50(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let engine = real_engine();
    let b_host = host_with(test_policy(), engine.clone());
    load(&b_host, "plugins/assistant").await;
    let b = start(AppState::new(b_host, ServerOptions::default())).await;
    let a_host = host_with(test_policy(), Arc::new(NoModel));
    let flag = format!("b={b}/v1#{}", engine.model_name());
    a_host
        .add_model(Arc::new(
            UpstreamEngine::new(UpstreamOptions::parse_flag(&flag).unwrap()).unwrap(),
        ))
        .unwrap();
    load_as(&a_host, "plugins/assistant", |m| {
        m.capabilities.model = ModelGrant::Named("b".into());
    })
    .await;
    let a = start(AppState::new(a_host, ServerOptions::default())).await;
    let client = reqwest::Client::new();
    let base_model = engine.model_name().to_string();

    println!(
        "upstream overhead: {ROUNDS} rounds, {MAX_TOKENS} tokens max, greedy, A and B alternating"
    );
    println!(
        "{:<22} {:>12} {:>12} {:>10}",
        "what (p50)", "B direct", "through A", "overhead"
    );
    for (what, a_model, b_model) in [
        ("model, request", "b", base_model.as_str()),
        ("expert, request", "assistant", "assistant"),
    ] {
        // Warm up both paths (connections, the sandbox's first instance).
        once(
            &client,
            &format!("{a}/v1/chat/completions"),
            &request(a_model, 0, false),
        )
        .await;
        once(
            &client,
            &format!("{b}/v1/chat/completions"),
            &request(b_model, 0, false),
        )
        .await;
        let (mut at_a, mut at_b) = (Vec::new(), Vec::new());
        let (mut ttft_a, mut ttft_b, mut tok_a, mut tok_b) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for i in 1..=ROUNDS {
            // Who goes first alternates, so that neither side always runs
            // on a warmer (or busier) machine.
            for a_first in [i % 2 == 0, i % 2 == 1] {
                if a_first {
                    let (s, _) = once(
                        &client,
                        &format!("{a}/v1/chat/completions"),
                        &request(a_model, i, false),
                    )
                    .await;
                    at_a.push(s);
                    let (f, t) = streamed(
                        &client,
                        &format!("{a}/v1/chat/completions"),
                        &request(a_model, i, true),
                    )
                    .await;
                    ttft_a.push(f);
                    tok_a.push(t);
                } else {
                    let (s, _) = once(
                        &client,
                        &format!("{b}/v1/chat/completions"),
                        &request(b_model, i, false),
                    )
                    .await;
                    at_b.push(s);
                    let (f, t) = streamed(
                        &client,
                        &format!("{b}/v1/chat/completions"),
                        &request(b_model, i, true),
                    )
                    .await;
                    ttft_b.push(f);
                    tok_b.push(t);
                }
            }
        }
        let row = |name: &str, b: Vec<f64>, a: Vec<f64>| {
            let (b, a) = (p50(b), p50(a));
            println!(
                "{name:<22} {:>10.2}ms {:>10.2}ms {:>9.1}%",
                b * 1e3,
                a * 1e3,
                (a / b - 1.0) * 100.0
            );
        };
        row(what, at_b, at_a);
        let stream_name = what.replace("request", "first token");
        row(&stream_name, ttft_b, ttft_a);
        let per_token = what.replace("request", "per token");
        row(&per_token, tok_b, tok_a);
    }
}
