//! Ensemble benchmarks at scale (not in the test command):
//! `cargo bench -p tessera-tests --bench ensemble [-- --bundles N]`.
//!
//! With a generated fixture of N distinct bundles (default 1,000):
//! 1. start-up: loading every bundle with empty caches (compile + embed),
//!    then again from the compile and embedding caches, as a restart does;
//! 2. memory per idle expert: resident memory added by the cached load,
//!    divided by N;
//! 3. routing cost: one `tessera/auto` decision among the N experts
//!    (query embedding + similarity search) against one query embedding
//!    alone, measured in the same run; target ≤ 1.1×.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tessera_host::bindings::types::Request;
use tessera_host::ensemble::Ensemble;
use tessera_host::ensemble::watch::BundleWatcher;
use tessera_host::inference::ModelEngine;
use tessera_host::sandbox::{HostPolicy, Sandbox};
use tessera_tests::{fixture_bundles, real_engine};

/// Routing decisions (and embeddings) timed for the median.
const ROUNDS: usize = 60;

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

async fn load_all(
    dir: &std::path::Path,
    compile_cache: &std::path::Path,
    embedding_cache: &std::path::Path,
    count: usize,
) -> (Arc<Ensemble>, Duration) {
    let policy = HostPolicy {
        pool_instances: 64,
        ..HostPolicy::default()
    };
    let sandbox = Sandbox::new(policy, Some(compile_cache)).expect("sandbox");
    let ensemble = Ensemble::new(sandbox, real_engine());
    ensemble
        .routing_index()
        .set_cache_dir(Some(embedding_cache.to_path_buf()));
    let started = Instant::now();
    let report = BundleWatcher::new(vec![dir.to_path_buf()])
        .scan(&ensemble)
        .await;
    let took = started.elapsed();
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert_eq!(ensemble.experts().len(), count);
    (ensemble, took)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let count = args
        .iter()
        .position(|a| a == "--bundles")
        .and_then(|i| args.get(i + 1))
        .map_or(1000, |n| n.parse().expect("--bundles N"));
    let work = tempfile::tempdir().expect("temp dir");
    let fixture = work.path().join("bundles");
    let compile_cache = work.path().join("components");
    let embedding_cache = work.path().join("embeddings");
    fixture_bundles(&fixture, count);
    let engine = real_engine();
    // Warm the engine (first forward passes allocate).
    engine.embed(vec!["warm up".into()]).await.expect("embed");

    let (cold, cold_took) = load_all(&fixture, &compile_cache, &embedding_cache, count).await;
    let embedded = cold.routing_index().stats().embedded;
    drop(cold);

    let rss_before = rss_bytes();
    let (ensemble, warm_took) = load_all(&fixture, &compile_cache, &embedding_cache, count).await;
    let rss_after = rss_bytes();
    let stats = ensemble.routing_index().stats();
    assert_eq!(stats.embedded, 0, "a restart must not re-embed");

    let query = "Where do I start with sourdough baking?";
    let req = Request::from_prompt(query);
    let mut route_times = Vec::new();
    let mut embed_times = Vec::new();
    let mut search_times = Vec::new();
    let mut top = String::new();
    for _ in 0..ROUNDS {
        let started = Instant::now();
        engine.embed(vec![query.to_string()]).await.expect("embed");
        embed_times.push(started.elapsed());

        let started = Instant::now();
        let decision = ensemble
            .route(&req, Default::default())
            .await
            .expect("route");
        route_times.push(started.elapsed());
        top = decision.top().unwrap_or("base").to_string();
    }
    let vector = engine.embed(vec![query.to_string()]).await.expect("embed");
    for _ in 0..ROUNDS {
        let started = Instant::now();
        std::hint::black_box(ensemble.routing_index().rank(&vector, 3));
        search_times.push(started.elapsed());
    }
    let (route, embed, search) = (
        median(route_times),
        median(embed_times),
        median(search_times),
    );

    println!("ensemble benchmark, {count} bundles (one component, distinct manifests)");
    println!(
        "start-up, empty caches: {:.2} s ({embedded} experts embedded)",
        cold_took.as_secs_f64()
    );
    println!(
        "start-up, from the compile and embedding caches: {:.2} s ({} from cache, 0 embedded)",
        warm_took.as_secs_f64(),
        stats.from_cache
    );
    println!(
        "memory per idle expert: {:.1} KiB (RSS +{:.1} MiB for {count})",
        rss_after.saturating_sub(rss_before) as f64 / count as f64 / 1024.0,
        rss_after.saturating_sub(rss_before) as f64 / (1024.0 * 1024.0)
    );
    println!(
        "routing decision among {count}: {:.2} ms (median of {ROUNDS}; top: {top})",
        route.as_secs_f64() * 1e3
    );
    println!(
        "one query embedding:          {:.2} ms",
        embed.as_secs_f64() * 1e3
    );
    println!(
        "similarity search alone:      {:.3} ms",
        search.as_secs_f64() * 1e3
    );
    println!(
        "routing / embedding: {:.3}× (target ≤ 1.1×)",
        route.as_secs_f64() / embed.as_secs_f64()
    );
}
