//! What receipts and the audit store cost, and the store at scale (`cargo
//! bench -p tessera-host --bench audit_store`).
//!
//! First, side by side in one run: a trivial expert's invocation (the echo
//! test expert), the same with a signed receipt, and the same also
//! recorded in the audit store before it returns; p50 and p99 of 20,000
//! each, interleaved. Then the store at scale: appends `AUDIT_RECORDS` (default 1,000,000) records of a
//! trivial expert's answer, each with its signed receipt, one commit per
//! record as the server does, and reports the append time (p50, p99) and
//! the store's size. The record is a real one: the echo test expert run
//! once through the host, so its trace and receipt are what a server
//! stores for each such answer.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use tessera_host::audit::Record;
use tessera_host::audit::store::{AuditStore, Durability};
use tessera_host::build::{BuildOptions, build_plugin};
use tessera_host::bundle::Bundle;
use tessera_host::bundle::sign::SigningKey;
use tessera_host::ensemble::Ensemble;
use tessera_host::inference::NoModel;
use tessera_host::sandbox::{HostPolicy, Sandbox};
use tessera_host::types::Request;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn main() {
    let n: usize = std::env::var("AUDIT_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let opts = BuildOptions {
        quiet: true,
        ..BuildOptions::default()
    };
    let bundle = build_plugin(&repo().join("tests/plugins/echo"), &opts)
        .expect("building tests/plugins/echo")
        .bundle_dir;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let host = Ensemble::new(
        Sandbox::new(HostPolicy::default(), None).unwrap(),
        Arc::new(NoModel),
    );
    host.set_host_key(SigningKey::generate("bench"));
    rt.block_on(host.add(Bundle::open(&bundle).unwrap()))
        .unwrap();
    side_by_side(&rt, &bundle);
    let inv = rt.block_on(host.invoke("echo", Request::from_prompt("What is 12 * (3 + 4)?")));
    let record = Record {
        request: inv.request.clone().unwrap(),
        response: inv.result.as_ref().ok().map(Into::into),
        trace: inv.trace.clone(),
        receipt: inv.receipt.clone(),
    };
    let json_bytes = serde_json::to_string(&record).unwrap().len();

    let dir = tempfile::tempdir_in(repo().join("target")).unwrap();
    let path = dir.path().join("audit.sqlite");
    let store = AuditStore::open(&path, Durability::Process).unwrap();
    let mut times = Vec::with_capacity(n);
    let started = Instant::now();
    for i in 0..n {
        let t = Instant::now();
        store.append(&record).unwrap();
        times.push(t.elapsed().as_nanos() as u64);
        if (i + 1) % 100_000 == 0 {
            eprintln!("{} records, {:.1?}", i + 1, started.elapsed());
        }
    }
    times.sort_unstable();
    let stats = store.stats().unwrap();
    let file = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let wal = std::fs::metadata(path.with_extension("sqlite-wal"))
        .map(|m| m.len())
        .unwrap_or(0);
    println!(
        "audit_store: {n} records of {json_bytes} bytes (JSON) each: append p50 {:.1} µs, mean {:.1} µs, p99 {:.1} µs; {:.0} MB in use ({:.0} bytes per record), file {:.0} MB + WAL {:.0} MB",
        times[n / 2] as f64 / 1000.0,
        times.iter().sum::<u64>() as f64 / n as f64 / 1000.0,
        times[n * 99 / 100] as f64 / 1000.0,
        stats.bytes as f64 / 1e6,
        stats.bytes as f64 / n as f64,
        file as f64 / 1e6,
        wal as f64 / 1e6,
    );
    assert_eq!(stats.records, n as u64);
}

/// p50 and p99 of a plain, a receipted and a receipted-and-recorded
/// invocation, interleaved so that all three see the same machine.
fn side_by_side(rt: &tokio::runtime::Runtime, bundle: &Path) {
    let make = || {
        let host = Ensemble::new(
            Sandbox::new(HostPolicy::default(), None).unwrap(),
            Arc::new(NoModel),
        );
        rt.block_on(host.add(Bundle::open(bundle).unwrap()))
            .unwrap();
        host
    };
    let plain = make();
    let signed = make();
    signed.set_host_key(SigningKey::generate("bench"));
    let recorded = make();
    recorded.set_host_key(SigningKey::generate("bench"));
    let dir = tempfile::tempdir_in(repo().join("target")).unwrap();
    recorded.set_audit_store(Arc::new(
        AuditStore::open(&dir.path().join("audit.sqlite"), Durability::Process).unwrap(),
    ));
    let hosts = [
        ("plain", &plain),
        ("receipt", &signed),
        ("receipt+audit", &recorded),
    ];
    let rounds = 20_000;
    let mut times = vec![Vec::with_capacity(rounds); hosts.len()];
    for round in 0..rounds + 1000 {
        for (i, (_, host)) in hosts.iter().enumerate() {
            let t = Instant::now();
            let inv = rt.block_on(host.invoke("echo", Request::from_prompt("hello")));
            let took = t.elapsed().as_nanos() as u64;
            assert!(inv.result.is_ok());
            // The first thousand rounds warm up.
            if round >= 1000 {
                times[i].push(took);
            }
        }
    }
    let pct = |t: &mut Vec<u64>, p: usize| {
        t.sort_unstable();
        t[t.len() * p / 100] as f64 / 1000.0
    };
    let p50: Vec<f64> = times.iter_mut().map(|t| pct(t, 50)).collect();
    for ((name, _), t) in hosts.iter().zip(&mut times) {
        println!(
            "invoke {name:<14} p50 {:6.1} µs  p99 {:6.1} µs",
            pct(t, 50),
            pct(t, 99)
        );
    }
    println!(
        "receipt adds {:.1} µs at p50; receipt + audit write add {:.1} µs ({:.0}%)",
        p50[1] - p50[0],
        p50[2] - p50[0],
        (p50[2] - p50[0]) / p50[0] * 100.0
    );
}
