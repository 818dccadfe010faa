//! Sandbox benchmarks (`cargo bench -p tessera-host --bench sandbox`).
//!
//! - `invoke/echo`: a full invocation of a trivial expert through
//!   [`Ensemble::invoke`]: fresh store with limits, fuel, epoch deadline and
//!   trace, instantiate, `handle`, trace closed.
//! - `invoke/echo-with-receipt` and `echo-with-receipt-and-audit`: the
//!   same, with a signed receipt, and also recorded in the audit store
//!   (issue 12's cost target, side by side in one run).
//! - `invoke/bare-wasmtime`: the same component on a bare wasmtime engine
//!   with the host's pooling allocator settings: fresh `Store<()>`, `InstancePre`
//!   instantiate, `handle`. The reference for the ≤ 1.2× target.
//! - `host-call/log-x0` and `log-x1000`: the expert calling `log` 0 and
//!   1,000 times; the difference over 1,000 is the cost of one guest→host
//!   call, recording included.
//! - `load/100` and `load/1000`: a fresh host loading that many distinct
//!   bundles whose compilations are in the on-disk cache.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use tessera_host::audit::store::{AuditStore, Durability};
use tessera_host::bindings::agent::AgentPre;
use tessera_host::build::{BuildOptions, build_plugin};
use tessera_host::bundle::{Bundle, MANIFEST_FILE, sha256_hex};
use tessera_host::ensemble::Ensemble;
use tessera_host::inference::NoModel;
use tessera_host::sandbox::{HostPolicy, Sandbox};
use tessera_host::types::Request;
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, Store};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn echo_bundle() -> PathBuf {
    let opts = BuildOptions {
        quiet: true,
        ..BuildOptions::default()
    };
    build_plugin(&repo().join("tests/plugins/echo"), &opts)
        .expect("building tests/plugins/echo")
        .bundle_dir
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn invoke(c: &mut Criterion) {
    let rt = runtime();
    let bundle = Bundle::open(&echo_bundle()).unwrap();
    let wasm = bundle.wasm.clone();
    let host = Ensemble::new(
        Sandbox::new(HostPolicy::default(), None).unwrap(),
        Arc::new(NoModel),
    );
    rt.block_on(host.add(bundle)).unwrap();

    // The reference: bare wasmtime, async calls, and the host's pooling
    // allocator settings (same slots, same memory kept resident).
    let mut config = Config::new();
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(
        tessera_host::sandbox::pool_config(&HostPolicy::default()),
    ));
    let engine = Engine::new(&config).unwrap();
    let component = Component::new(&engine, &wasm).unwrap();
    let mut linker = Linker::<()>::new(&engine);
    linker.define_unknown_imports_as_traps(&component).unwrap();
    let bare = AgentPre::new(linker.instantiate_pre(&component).unwrap()).unwrap();

    let mut group = c.benchmark_group("invoke");
    group.bench_function("echo", |b| {
        b.to_async(&rt).iter(|| async {
            let inv = host.invoke("echo", Request::from_prompt("hello")).await;
            assert!(inv.result.is_ok());
        })
    });
    // The same invocation with a signed receipt (issue 12's cost target:
    // ≤ 5% or ≤ 30 µs at p50, side by side in one run).
    let signing = Ensemble::new(
        Sandbox::new(HostPolicy::default(), None).unwrap(),
        Arc::new(NoModel),
    );
    signing.set_host_key(tessera_host::bundle::sign::SigningKey::generate("bench"));
    rt.block_on(signing.add(Bundle::open(&echo_bundle()).unwrap()))
        .unwrap();
    group.bench_function("echo-with-receipt", |b| {
        b.to_async(&rt).iter(|| async {
            let inv = signing.invoke("echo", Request::from_prompt("hello")).await;
            assert!(inv.receipt.is_some());
        })
    });
    // ... and recorded in the audit store before it returns.
    let audit_dir = tempfile::tempdir().unwrap();
    let auditing = Ensemble::new(
        Sandbox::new(HostPolicy::default(), None).unwrap(),
        Arc::new(NoModel),
    );
    auditing.set_host_key(tessera_host::bundle::sign::SigningKey::generate("bench"));
    auditing.set_audit_store(Arc::new(
        AuditStore::open(&audit_dir.path().join("audit.sqlite"), Durability::Process).unwrap(),
    ));
    rt.block_on(auditing.add(Bundle::open(&echo_bundle()).unwrap()))
        .unwrap();
    group.bench_function("echo-with-receipt-and-audit", |b| {
        b.to_async(&rt).iter(|| async {
            let inv = auditing.invoke("echo", Request::from_prompt("hello")).await;
            assert!(inv.audit_id.is_some());
        })
    });
    group.bench_function("bare-wasmtime", |b| {
        b.to_async(&rt).iter(|| async {
            let mut store = Store::new(&engine, ());
            let agent = bare.instantiate_async(&mut store).await.unwrap();
            let out = agent
                .call_handle(&mut store, &Request::from_prompt("hello"))
                .await
                .unwrap();
            assert!(out.is_ok());
        })
    });
    group.finish();

    let mut group = c.benchmark_group("host-call");
    for n in [0, 1000] {
        let prompt = format!("calls:{n}");
        group.bench_function(format!("log-x{n}"), |b| {
            b.to_async(&rt).iter(|| async {
                let inv = host
                    .invoke("echo", Request::from_prompt(prompt.clone()))
                    .await;
                assert!(inv.result.is_ok());
            })
        });
    }
    group.finish();
}

/// Write `n` distinct bundles (the echo component with a unique custom
/// section appended) under `target/bench-bundles`, once.
fn distinct_bundles(n: usize) -> Vec<PathBuf> {
    let src = Bundle::open(&echo_bundle()).unwrap();
    let root = repo().join("target/bench-bundles");
    (0..n)
        .map(|i| {
            let dir = root.join(format!("echo-{i:04}"));
            let mut wasm = src.wasm.clone();
            // A custom section: id 0, size, name "bench", payload.
            let payload = format!("{i:08}");
            let name = b"bench";
            let size = 1 + name.len() + payload.len();
            wasm.extend_from_slice(&[0, size as u8, name.len() as u8]);
            wasm.extend_from_slice(name);
            wasm.extend_from_slice(payload.as_bytes());
            let mut manifest = src.manifest.clone();
            manifest.name = format!("echo-{i:04}");
            manifest.component = Some("echo.wasm".into());
            manifest.sha256 = Some(sha256_hex(&wasm));
            let manifest_path = dir.join(MANIFEST_FILE);
            let fresh =
                std::fs::read_to_string(&manifest_path).is_ok_and(|m| m == manifest.to_toml());
            if !fresh {
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(dir.join("echo.wasm"), &wasm).unwrap();
                std::fs::write(&manifest_path, manifest.to_toml()).unwrap();
            }
            dir
        })
        .collect()
}

fn load(c: &mut Criterion) {
    let rt = runtime();
    let dirs = distinct_bundles(1000);
    let cache = repo().join("target/bench-cache");
    let new_host = || {
        Ensemble::new(
            Sandbox::new(HostPolicy::default(), Some(&cache)).unwrap(),
            Arc::new(NoModel),
        )
    };
    // Fill the cache (compiles only what is missing).
    rt.block_on(async {
        let host = new_host();
        for dir in &dirs {
            host.add(Bundle::open(dir).unwrap()).await.unwrap();
        }
    });

    let mut group = c.benchmark_group("load");
    group.sample_size(10);
    for n in [100, 1000] {
        group.bench_function(format!("{n}"), |b| {
            b.to_async(&rt).iter(|| async {
                let host = new_host();
                for dir in &dirs[..n] {
                    let expert = host.add(Bundle::open(dir).unwrap()).await.unwrap();
                    assert!(expert.component.as_ref().unwrap().from_cache);
                }
                assert_eq!(host.experts().len(), n);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, invoke, load);
criterion_main!(benches);
