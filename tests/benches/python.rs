//! Python experts beside Rust ones (not in the test command): `cargo bench
//! -p tessera-tests --bench python`.
//!
//! For the trivial expert in each language (`tests/plugins/echo`,
//! `tests/plugins/py-echo`): component size, the build (cargo is not
//! timed: it depends on what is cached; componentize-py is, from scratch),
//! the first load (Cranelift compile, no cache) and a load from the compile
//! cache, then instantiate + handle latency (p50, p99) for sequential
//! requests and with 4 concurrent requesters, in one host that has both
//! loaded.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tessera_host::build::{BuildOptions, build_plugin};
use tessera_host::ensemble::Ensemble;
use tessera_host::inference::NoModel;
use tessera_host::sandbox::Sandbox;
use tessera_host::types::Request;
use tessera_tests::{bundle, repo_root, test_policy};

const REQUESTS: usize = 400;

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

async fn latencies(host: &Arc<Ensemble>, expert: &str, concurrency: usize) -> Vec<Duration> {
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let host = host.clone();
            let expert = expert.to_string();
            tokio::spawn(async move {
                let mut out = Vec::new();
                for _ in 0..REQUESTS / concurrency {
                    let t = Instant::now();
                    let inv = host.invoke(&expert, Request::from_prompt("ping")).await;
                    assert_eq!(inv.result.expect("echo answers").content, "ping");
                    out.push(t.elapsed());
                }
                out
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort();
    all
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let py_dir = repo_root().join("tests/plugins/py-echo");
    let t = Instant::now();
    let built = build_plugin(
        &py_dir,
        &BuildOptions {
            out_dir: Some(scratch.path().join("py-bundle")),
            quiet: true,
            ..BuildOptions::default()
        },
    )
    .expect("py-echo builds");
    let componentize = t.elapsed();
    println!("## trivial expert, Rust vs Python (this machine, {REQUESTS} requests each)\n");
    println!(
        "componentize-py build from scratch: {:.1} s\n",
        componentize.as_secs_f64()
    );

    let cache = scratch.path().join("compile-cache");
    let mut rows = Vec::new();
    for (rel, name) in [
        ("tests/plugins/echo", "echo"),
        ("tests/plugins/py-echo", "py-echo"),
    ] {
        let b = bundle(rel);
        let size = b.wasm.len();
        let cold = Ensemble::new(
            Sandbox::new(test_policy(), Some(&cache)).unwrap(),
            Arc::new(NoModel),
        );
        let t = Instant::now();
        cold.add(b).await.expect("loads");
        let compile = t.elapsed();
        let warm = Ensemble::new(
            Sandbox::new(test_policy(), Some(&cache)).unwrap(),
            Arc::new(NoModel),
        );
        let t = Instant::now();
        warm.add(bundle(rel)).await.expect("loads from the cache");
        let cached = t.elapsed();
        rows.push((name, size, compile, cached));
    }
    let _ = built;

    // One host with both loaded; warm up, then measure.
    let host = Ensemble::new(
        Sandbox::new(test_policy(), Some(&cache)).unwrap(),
        Arc::new(NoModel),
    );
    host.add(bundle("tests/plugins/echo")).await.unwrap();
    host.add(bundle("tests/plugins/py-echo")).await.unwrap();
    for name in ["echo", "py-echo"] {
        latencies(&host, name, 1).await;
    }
    // `TESSERA_BENCH_LOOP=EXPERT`: only invoke EXPERT for 20 s (to profile).
    if let Ok(name) = std::env::var("TESSERA_BENCH_LOOP") {
        let until = Instant::now() + Duration::from_secs(20);
        while Instant::now() < until {
            latencies(&host, &name, 1).await;
        }
        return;
    }
    println!(
        "| expert | component | first load (compile) | load from cache | p50 / p99, 1 at a time | p50 / p99, 4 concurrent |"
    );
    println!("|---|---|---|---|---|---|");
    for (name, size, compile, cached) in rows {
        let one = latencies(&host, name, 1).await;
        let four = latencies(&host, name, 4).await;
        println!(
            "| {} ({}) | {:.2} MB | {:.2} s | {:.0} ms | {:.3} / {:.3} ms | {:.3} / {:.3} ms |",
            name,
            if name == "echo" { "Rust" } else { "Python" },
            size as f64 / 1e6,
            compile.as_secs_f64(),
            cached.as_secs_f64() * 1e3,
            percentile(&one, 0.5),
            percentile(&one, 0.99),
            percentile(&four, 0.5),
            percentile(&four, 0.99),
        );
    }
}
