//! Load under attack (not in the test command): `bash scripts/load.sh`, or
//! `cargo bench -p tessera-tests --bench hostile_load` with a file limit
//! above 2,048.
//!
//! 1. 1,000 concurrent streaming requests to the base model on loopback:
//!    each is answered (`[DONE]`) or refused with 429, nothing else; RSS
//!    before and after; `/healthz` after.
//! 2. The same storm while hostile experts spin and an embedding bomb
//!    (2,048 texts of 1 KiB) is sent, with the trivial `echo` expert's
//!    latency measured by a steady probe: idle first, then during the
//!    storm. Target: its p99 during the storm ≤ 2× idle.
//!
//! Client and server share the machine (2 cores here).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};
use tessera_host::inference::{BurnEngine, EngineOptions, ModelStore};
use tessera_host::sandbox::HostPolicy;
use tessera_host::server::{self, AppState, ServerOptions};
use tessera_tests::{host_with, load, load_as};

const STREAMS: usize = 1_000;

fn engine() -> Arc<BurnEngine> {
    let store = ModelStore::new(tessera_tests::repo_root().join("target/tmp/models"));
    for spec in tessera_host::inference::MODELS {
        store.pull(spec, false, true, &mut |_| {}).expect("models");
    }
    Arc::new(BurnEngine::from_store(&store, EngineOptions::default()).expect("engine"))
}

fn rss_mib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb / 1024)
}

/// Echo latencies (µs) of the answered requests and the count refused
/// with 429, one request every 5 ms on one connection, until `until`.
async fn probe(url: String, until: Instant) -> (Vec<f64>, usize) {
    let client = reqwest::Client::new();
    let body = json!({"model": "echo", "messages": [{"role": "user", "content": "ping"}]});
    let mut latencies = Vec::new();
    let mut refused = 0;
    while Instant::now() < until {
        let started = Instant::now();
        let response = client.post(&url).json(&body).send().await.unwrap();
        let status = response.status().as_u16();
        response.bytes().await.unwrap();
        match status {
            200 => latencies.push(started.elapsed().as_secs_f64() * 1e6),
            429 => refused += 1,
            other => panic!("the probe got {other}"),
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (latencies, refused)
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

/// 1,000 streams at once; (answered, refused, seconds).
async fn storm(base: &str) -> (usize, usize, f64) {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let url = format!("{base}/v1/chat/completions");
    let started = Instant::now();
    let tasks: Vec<_> = (0..STREAMS)
        .map(|i| {
            let client = client.clone();
            let url = url.clone();
            tokio::spawn(async move {
                let body = json!({"model": "SmolLM2-135M-Instruct", "stream": true,
                    "max_tokens": 2, "temperature": 0,
                    "messages": [{"role": "user", "content": format!("Say {i}.")}]});
                let response = client.post(url).json(&body).send().await.unwrap();
                match response.status().as_u16() {
                    200 => {
                        let mut stream = response.bytes_stream();
                        let mut text = Vec::new();
                        while let Some(chunk) = stream.next().await {
                            text.extend_from_slice(&chunk.unwrap());
                        }
                        assert!(
                            String::from_utf8_lossy(&text).contains("data: [DONE]"),
                            "a stream ended without [DONE]"
                        );
                        true
                    }
                    429 => false,
                    other => panic!("unexpected status {other}"),
                }
            })
        })
        .collect();
    let mut answered = 0;
    for t in tasks {
        answered += usize::from(t.await.unwrap());
    }
    (
        answered,
        STREAMS - answered,
        started.elapsed().as_secs_f64(),
    )
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        // The policy `tessera serve` runs with (512 sandbox instances).
        let ensemble = host_with(HostPolicy::default(), engine());
        load(&ensemble, "tests/plugins/echo").await;
        load_as(&ensemble, "tests/plugins/hostile", |m| {
            m.limits.deadline_ms = Some(2_000);
        })
        .await;
        let state = AppState::new(ensemble, ServerOptions::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(server::serve(listener, state.clone(), std::future::pending()));
        let chat = format!("{base}/v1/chat/completions");

        // Warm up: the first generation pays one-off costs.
        probe(chat.clone(), Instant::now() + Duration::from_millis(200)).await;
        let rss_start = rss_mib();

        // 1. The storm alone.
        let (answered, refused, seconds) = storm(&base).await;
        let rss_storm = rss_mib();
        let health = reqwest::get(format!("{base}/healthz")).await.unwrap();
        let healthy = health.status().is_success();
        println!("| phase | streams answered | refused (429) | other | seconds | RSS MiB before → after | healthy after |");
        println!("|---|---|---|---|---|---|---|");
        println!(
            "| 1,000 streams | {answered} | {refused} | 0 | {seconds:.1} | {rss_start} → {rss_storm} | {healthy} |"
        );

        // 2. Idle probe, then the probe during the storm with hostile load.
        let (mut idle, _) = probe(chat.clone(), Instant::now() + Duration::from_secs(3)).await;
        idle.sort_by(f64::total_cmp);
        let attack_until = Instant::now() + Duration::from_secs(20);
        let spinners: Vec<_> = (0..4)
            .map(|_| {
                let chat = chat.clone();
                tokio::spawn(async move {
                    let client = reqwest::Client::new();
                    let body = json!({"model": "hostile", "messages": [{"role": "user", "content": "spin"}]});
                    let mut outcomes = std::collections::BTreeMap::<String, u32>::new();
                    while Instant::now() < attack_until {
                        let response = client.post(&chat).json(&body).send().await.unwrap();
                        let status = response.status().as_u16();
                        let body: Value = response.json().await.unwrap_or(Value::Null);
                        let code = body["error"]["code"].as_str().unwrap_or("-").to_string();
                        *outcomes.entry(format!("{status} {code}")).or_default() += 1;
                    }
                    outcomes
                })
            })
            .collect();
        let bomb = {
            let url = format!("{base}/v1/embeddings");
            tokio::spawn(async move {
                let texts = vec!["lorem ipsum dolor sit amet ".repeat(38); 2048];
                let started = Instant::now();
                let response = reqwest::Client::new()
                    .post(url)
                    .json(&json!({"model": "all-MiniLM-L6-v2", "input": texts}))
                    .send()
                    .await
                    .unwrap();
                let status = response.status().as_u16();
                let body: Value = response.json().await.unwrap_or(Value::Null);
                (status, body["data"].as_array().map_or(0, Vec::len), started.elapsed().as_secs_f64())
            })
        };
        let probing = tokio::spawn(probe(chat.clone(), attack_until));
        let (answered, refused, seconds) = storm(&base).await;
        let (mut busy, busy_refused) = probing.await.unwrap();
        busy.sort_by(f64::total_cmp);
        let mut outcomes = std::collections::BTreeMap::<String, u32>::new();
        for spinner in futures_util::future::join_all(spinners).await {
            for (outcome, count) in spinner.unwrap() {
                *outcomes.entry(outcome).or_default() += count;
            }
        }
        let spins = outcomes
            .iter()
            .map(|(outcome, count)| format!("{count} × {outcome}"))
            .collect::<Vec<_>>()
            .join(", ");
        let (bomb_status, bomb_vectors, bomb_seconds) = bomb.await.unwrap();
        let rss_end = rss_mib();
        let healthy = reqwest::get(format!("{base}/healthz"))
            .await
            .unwrap()
            .status()
            .is_success();
        println!(
            "| 1,000 streams + 4 spinning experts ({spins}) + embedding bomb ({bomb_status}, {bomb_vectors} vectors in {bomb_seconds:.1} s) | {answered} | {refused} | 0 | {seconds:.1} | {rss_storm} → {rss_end} | {healthy} |"
        );
        println!();
        println!("| echo probe | answered | refused (429) | p50 µs | p99 µs |");
        println!("|---|---|---|---|---|");
        println!(
            "| idle | {} | 0 | {:.0} | {:.0} |",
            idle.len(),
            pct(&idle, 0.5),
            pct(&idle, 0.99)
        );
        println!(
            "| under attack | {} | {busy_refused} | {:.0} | {:.0} |",
            busy.len(),
            pct(&busy, 0.5),
            pct(&busy, 0.99)
        );
        println!(
            "\np99 under attack ÷ idle: {:.2}× (target ≤ 2×)",
            pct(&busy, 0.99) / pct(&idle, 0.99)
        );
    });
}
