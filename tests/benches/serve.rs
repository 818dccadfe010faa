//! Server benchmarks (not in the test command): `cargo bench -p
//! tessera-tests --bench serve`.
//!
//! 1. Requests per second and p50/p99 latency for the trivial `echo` expert
//!    (no model call) through `POST /v1/chat/completions`, at 1 and 64
//!    connections, beside bare hyper measured in the same run with the same
//!    client, request and response bytes (it reads the body and answers
//!    with the bytes tessera answered). `--variants` instead runs the same
//!    client against cheaper routes (`TESSERA_BENCH_ONLY` picks one by
//!    name, `TESSERA_BENCH_CONNECTIONS` the connections; default 1).
//! 2. Time to first token and tokens per second per stream, with 1, 8 and
//!    32 concurrent streaming clients on the real model.
//!
//! Client and server share the machine; both sides of each comparison pay
//! the same client cost.

use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::json;
use tessera_host::inference::{BurnEngine, EngineOptions, ModelStore};
use tessera_host::server::{self, AppState, ServerOptions};
use tessera_tests::{host_with, load, test_policy};

/// How long each throughput point runs.
const RUN: Duration = Duration::from_secs(4);

struct Figures {
    rps: f64,
    p50_us: f64,
    p99_us: f64,
}

/// `connections` clients, each sending requests back to back for `RUN`.
async fn load_test(url: &str, body: Option<String>, connections: usize) -> Figures {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(connections)
        .build()
        .unwrap();
    let deadline = Instant::now() + RUN;
    let tasks: Vec<_> = (0..connections)
        .map(|_| {
            let client = client.clone();
            let url = url.to_string();
            let body = body.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while Instant::now() < deadline {
                    let started = Instant::now();
                    let request = match &body {
                        Some(b) => client
                            .post(&url)
                            .header("content-type", "application/json")
                            .body(b.clone()),
                        None => client.get(&url),
                    };
                    let response = request.send().await.unwrap();
                    assert!(response.status().is_success(), "{}", response.status());
                    response.bytes().await.unwrap();
                    latencies.push(started.elapsed().as_secs_f64() * 1e6);
                }
                latencies
            })
        })
        .collect();
    let started = Instant::now();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_by(f64::total_cmp);
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
    Figures {
        rps: all.len() as f64 / elapsed,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
    }
}

/// A bare hyper server that reads each request's body and answers `answer`
/// (with the content type tessera uses).
async fn bare_hyper(answer: hyper::body::Bytes) -> String {
    use hyper::server::conn::http1;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            // As the tessera server does.
            let _ = stream.set_nodelay(true);
            let answer = answer.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let answer = answer.clone();
                    async move {
                        use http_body_util::BodyExt;
                        let _ = req.into_body().collect().await;
                        let mut response = hyper::Response::new(http_body_util::Full::new(answer));
                        response.headers_mut().insert(
                            hyper::header::CONTENT_TYPE,
                            hyper::header::HeaderValue::from_static("application/json"),
                        );
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    format!("http://{address}/")
}

async fn start(state: AppState) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(server::serve(listener, state, std::future::pending()));
    base
}

fn engine() -> Arc<BurnEngine> {
    let store = ModelStore::new(Path::new(env!("CARGO_TARGET_TMPDIR")).join("models"));
    for spec in tessera_host::inference::MODELS {
        store.pull(spec, false, true, &mut |_| {}).unwrap();
    }
    Arc::new(BurnEngine::from_store(&store, EngineOptions::default()).unwrap())
}

async fn streams(base: &str, clients: usize) -> (f64, f64, f64) {
    let client = reqwest::Client::new();
    let tasks: Vec<_> = (0..clients)
        .map(|i| {
            let client = client.clone();
            let url = format!("{base}/v1/chat/completions");
            tokio::spawn(async move {
                let body = json!({
                    "model": "SmolLM2-135M-Instruct",
                    "messages": [{"role": "user", "content": "Write a long story about a dragon who learns to cook."}],
                    "max_tokens": 64, "temperature": 0.8, "seed": i, "stream": true,
                });
                let started = Instant::now();
                let response = client.post(url).json(&body).send().await.unwrap();
                let mut events = response.bytes_stream();
                let mut first = None;
                let mut usage = 0u64;
                while let Some(chunk) = events.next().await {
                    let chunk = chunk.unwrap();
                    let text = String::from_utf8_lossy(&chunk);
                    if first.is_none() && text.contains("\"content\"") {
                        first = Some(started.elapsed());
                    }
                    if let Some(i) = text.find("\"completion_tokens\":") {
                        let rest = &text[i + 20..];
                        let end = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
                        usage = rest[..end].parse().unwrap_or(0);
                    }
                }
                let total = started.elapsed();
                let first = first.unwrap_or(total);
                let decode = (total - first).as_secs_f64().max(1e-9);
                (first.as_secs_f64(), usage.saturating_sub(1) as f64 / decode)
            })
        })
        .collect();
    let mut ttft = Vec::new();
    let mut rates = Vec::new();
    for t in tasks {
        let (f, r) = t.await.unwrap();
        ttft.push(f);
        rates.push(r);
    }
    ttft.sort_by(f64::total_cmp);
    let mean_rate = rates.iter().sum::<f64>() / rates.len() as f64;
    (ttft[ttft.len() / 2], ttft[ttft.len() - 1], mean_rate)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    // `--trivial-only`: the first table alone, without the model (for
    // profiling the request path).
    let trivial_only = std::env::args().any(|a| a == "--trivial-only");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let model: Arc<dyn tessera_host::inference::ModelEngine> = if trivial_only {
            Arc::new(tessera_host::inference::NoModel)
        } else {
            engine()
        };
        let ensemble = host_with(test_policy(), model);
        load(&ensemble, "tests/plugins/echo").await;
        let options = ServerOptions {
            max_running: 256,
            max_queued: 1024,
            ..ServerOptions::default()
        };
        let state = AppState::new(ensemble.clone(), options);
        let base = start(state.clone()).await;
        // `--breakdown`: where the time of one trivial request goes, without
        // the network (for profiling).
        if std::env::args().any(|a| a == "--breakdown") {
            use tower::ServiceExt;
            let n = 5000;
            let t = Instant::now();
            for _ in 0..n {
                let inv = ensemble
                    .invoke("echo", tessera_host::types::Request::from_prompt("ping"))
                    .await;
                inv.result.unwrap();
            }
            println!("invoke: {:.1} µs", t.elapsed().as_secs_f64() * 1e6 / n as f64);
            let e2 = ensemble.clone();
            let per = tokio::spawn(async move {
                let t = Instant::now();
                for _ in 0..n {
                    let inv = e2
                        .invoke("echo", tessera_host::types::Request::from_prompt("ping"))
                        .await;
                    inv.result.unwrap();
                }
                t.elapsed().as_secs_f64() * 1e6 / n as f64
            })
            .await
            .unwrap();
            println!("invoke on a worker: {per:.1} µs");
            let body = json!({"model": "echo", "messages": [{"role": "user", "content": "ping"}]}).to_string();
            let app = server::app(state.clone());
            let t = Instant::now();
            for _ in 0..n {
                let req = axum::http::Request::post("/v1/chat/completions")
                    .header("content-type", "application/json")
                    .body(axum::body::Body::from(body.clone()))
                    .unwrap();
                let r = app.clone().oneshot(req).await.unwrap();
                axum::body::to_bytes(r.into_body(), usize::MAX).await.unwrap();
            }
            println!("oneshot: {:.1} µs", t.elapsed().as_secs_f64() * 1e6 / n as f64);
            let t = Instant::now();
            for _ in 0..n {
                let req = axum::http::Request::get("/healthz").body(axum::body::Body::empty()).unwrap();
                let r = app.clone().oneshot(req).await.unwrap();
                axum::body::to_bytes(r.into_body(), usize::MAX).await.unwrap();
            }
            println!("oneshot healthz: {:.1} µs", t.elapsed().as_secs_f64() * 1e6 / n as f64);
            let bad = json!({"model": "nope", "messages": [{"role": "user", "content": "ping"}]}).to_string();
            let t = Instant::now();
            for _ in 0..n {
                let req = axum::http::Request::post("/v1/chat/completions")
                    .header("content-type", "application/json")
                    .body(axum::body::Body::from(bad.clone()))
                    .unwrap();
                let r = app.clone().oneshot(req).await.unwrap();
                axum::body::to_bytes(r.into_body(), usize::MAX).await.unwrap();
            }
            println!("oneshot unknown model: {:.1} µs", t.elapsed().as_secs_f64() * 1e6 / n as f64);
            let t = Instant::now();
            for _ in 0..n {
                let mut req = tessera_host::types::Request::from_prompt("ping");
                req.metadata.push(("request-id".into(), uuid::Uuid::new_v4().to_string()));
                let inv = ensemble.invoke("echo", req).await;
                inv.result.unwrap();
            }
            println!("invoke with metadata: {:.1} µs", t.elapsed().as_secs_f64() * 1e6 / n as f64);
            return;
        }
        let echo = json!({"model": "echo", "messages": [{"role": "user", "content": "ping"}]}).to_string();
        let answer = reqwest::Client::new()
            .post(format!("{base}/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(echo.clone())
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let reference = bare_hyper(answer.clone()).await;

        // `--variants`: the same client against cheaper tessera routes and
        // bare hyper, to see where the network path's time goes.
        if std::env::args().any(|a| a == "--variants") {
            let hello_world = bare_hyper(hyper::body::Bytes::from_static(b"Hello, World!")).await;
            let only = std::env::var("TESSERA_BENCH_ONLY").ok();
            let connections = std::env::var("TESSERA_BENCH_CONNECTIONS")
                .ok()
                .and_then(|c| c.parse().ok())
                .unwrap_or(1);
            for (name, url, body) in [
                ("hyper POST", reference.clone(), Some(echo.clone())),
                ("hyper GET hello-world", hello_world, None),
                ("tessera GET /healthz", format!("{base}/healthz"), None),
                ("tessera POST echo", format!("{base}/v1/chat/completions"), Some(echo.clone())),
            ] {
                if only.as_deref().is_some_and(|o| !name.contains(o)) {
                    continue;
                }
                let f = load_test(&url, body, connections).await;
                println!(
                    "{name} ({connections} connections): {:.0} req/s p50 {:.0} µs p99 {:.0} µs",
                    f.rps, f.p50_us, f.p99_us
                );
            }
            return;
        }

        println!(
            "## trivial expert (echo, no model call) vs bare hyper, same run, same request and {}-byte answer",
            answer.len()
        );
        println!("| connections | tessera req/s | p50 µs | p99 µs | hyper req/s | p50 µs | p99 µs | ratio |");
        println!("|---|---|---|---|---|---|---|---|");
        for connections in [1, 64] {
            let ours = load_test(&format!("{base}/v1/chat/completions"), Some(echo.clone()), connections).await;
            let bare = load_test(&reference, Some(echo.clone()), connections).await;
            println!(
                "| {connections} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2}× |",
                ours.rps, ours.p50_us, ours.p99_us, bare.rps, bare.p50_us, bare.p99_us, ours.rps / bare.rps
            );
        }

        if trivial_only {
            return;
        }
        println!();
        println!("## streaming on SmolLM2-135M (64 tokens per stream)");
        println!("| streams | TTFT p50 s | TTFT max s | tok/s per stream | aggregate tok/s |");
        println!("|---|---|---|---|---|");
        streams(&base, 1).await; // warm-up
        for clients in [1, 8, 32] {
            let (p50, max, rate) = streams(&base, clients).await;
            println!(
                "| {clients} | {p50:.3} | {max:.3} | {rate:.1} | {:.1} |",
                rate * clients as f64
            );
        }
    });
}
