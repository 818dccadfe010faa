//! Containment: real hostile components, built from source, against the
//! sandbox. Each test names the misbehaviour it pins.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tessera_host::bundle::{Bundle, ComponentError};
use tessera_host::ensemble::{AddError, InvokeErrorKind};
use tessera_host::inference::NoModel;
use tessera_host::sandbox::{HostPolicy, LoadError};
use tessera_host::types::Request;
use tessera_tests::{bundle, host, host_with, load, load_as, plugin, repo_root, test_policy};

const HOSTILE: &str = "tests/plugins/hostile";
const ECHO: &str = "tests/plugins/echo";
const IMPOSTOR: &str = "tests/plugins/impostor";
const BRAGGART: &str = "tests/plugins/braggart";
const PY_HOSTILE: &str = "tests/plugins/py-hostile";
/// The hostile manifest's `limits.deadline-ms`.
const HOSTILE_DEADLINE_MS: u64 = 500;

async fn run_hostile(behaviour: &str) -> tessera_host::ensemble::Invocation {
    let host = host();
    load(&host, HOSTILE).await;
    host.invoke("hostile", Request::from_prompt(behaviour))
        .await
}

fn error_kind(inv: &tessera_host::ensemble::Invocation) -> InvokeErrorKind {
    match &inv.result {
        Ok(r) => panic!("expected an error, got answer {:?}", r.content),
        Err(e) => e.kind,
    }
}

#[tokio::test]
async fn infinite_loop_ends_at_its_deadline() {
    let started = Instant::now();
    let inv = run_hostile("spin").await;
    let elapsed = started.elapsed();
    assert_eq!(
        error_kind(&inv),
        InvokeErrorKind::Deadline,
        "{:?}",
        inv.result
    );
    assert!(inv.result.unwrap_err().message.contains("500 ms"));
    // The contract: stopped within the deadline + 20%.
    let limit = Duration::from_millis(HOSTILE_DEADLINE_MS * 12 / 10);
    assert!(
        Duration::from_micros(inv.trace.duration_us) <= limit,
        "ran {} µs, limit {limit:?}",
        inv.trace.duration_us
    );
    assert!(elapsed >= Duration::from_millis(HOSTILE_DEADLINE_MS));
    assert!(
        inv.trace.fuel_consumed > 0,
        "fuel is counted even when trapped"
    );
}

/// A Python component (CPython inside) is contained the same way: an
/// endless loop ends at its deadline, memory stops at its limit, and the
/// host answers the next request.
#[tokio::test]
async fn a_python_component_is_contained_too() {
    let host = host();
    load(&host, PY_HOSTILE).await;
    let inv = host
        .invoke("py-hostile", Request::from_prompt("spin"))
        .await;
    assert_eq!(
        error_kind(&inv),
        InvokeErrorKind::Deadline,
        "{:?}",
        inv.result
    );
    assert!(
        Duration::from_micros(inv.trace.duration_us) <= Duration::from_millis(360),
        "ran {} µs, limit 300 ms + 20%",
        inv.trace.duration_us
    );
    let inv = host.invoke("py-hostile", Request::from_prompt("hog")).await;
    // Growth is refused at the limit; CPython raises MemoryError, which
    // the SDK returns as the expert's error, naming the limit.
    let err = inv.result.as_ref().expect_err("hog fails");
    assert_eq!(err.kind, InvokeErrorKind::ExpertError, "{err:?}");
    assert!(err.message.contains("limits.memory-mib"), "{err:?}");
    assert!(inv.trace.peak_memory_bytes <= 64 * 1024 * 1024);
    let inv = host
        .invoke("py-hostile", Request::from_prompt("still there?"))
        .await;
    assert_eq!(
        inv.result.expect("answers after both").content,
        "still there?"
    );
}

#[tokio::test]
async fn fuel_exhaustion_is_reported() {
    let policy = HostPolicy {
        max_fuel: 20_000_000,
        ..test_policy()
    };
    let host = host_with(policy, Arc::new(NoModel));
    load(&host, HOSTILE).await;
    let inv = host.invoke("hostile", Request::from_prompt("spin")).await;
    assert_eq!(
        error_kind(&inv),
        InvokeErrorKind::OutOfFuel,
        "{:?}",
        inv.result
    );
    assert_eq!(inv.trace.fuel_consumed, 20_000_000);
}

#[tokio::test]
async fn memory_growth_past_the_limit_is_a_limit_error() {
    let inv = run_hostile("hog").await;
    assert_eq!(
        error_kind(&inv),
        InvokeErrorKind::MemoryLimit,
        "{:?}",
        inv.result
    );
    let message = inv.result.unwrap_err().message;
    assert!(message.contains("32 MiB"), "{message}");
    assert!(inv.trace.peak_memory_bytes <= 32 * 1024 * 1024);
}

#[tokio::test]
async fn unbounded_recursion_traps_and_is_reported() {
    let inv = run_hostile("recurse").await;
    assert_eq!(
        error_kind(&inv),
        InvokeErrorKind::StackOverflow,
        "{:?}",
        inv.result
    );
    assert!(inv.result.unwrap_err().message.contains("stack"));
}

#[tokio::test]
async fn wasi_grants_nothing() {
    let inv = run_hostile("snoop").await;
    let answer = inv
        .result
        .expect("snoop answers with what it found")
        .content;
    assert!(answer.contains("preopens=0"), "files: {answer}");
    assert!(answer.contains("env=0"), "environment: {answer}");
    assert!(answer.contains("args=0"), "arguments: {answer}");
    assert!(answer.contains("tcp=access-denied"), "tcp: {answer}");
    assert!(answer.contains("udp=access-denied"), "udp: {answer}");
    assert!(!answer.contains("dns=resolving"), "dns: {answer}");
}

#[tokio::test]
async fn giant_output_is_capped() {
    let inv = run_hostile("spew").await;
    assert_eq!(inv.result.expect("spew finishes").content, "spewed");
    let policy = test_policy();
    let t = &inv.trace;
    assert!(t.stdout.len() + t.stderr.len() <= policy.max_stdio_bytes * 2);
    assert!(!t.stdout.is_empty());
    // 1 MiB each to stdout and stderr, minus what was kept.
    assert!(t.output_dropped_bytes >= 2 * 1024 * 1024 - 2 * policy.max_stdio_bytes as u64);
    let log_bytes: usize = t.logs.iter().map(|l| l.message.len()).sum();
    assert!(log_bytes <= policy.max_log_bytes);
    assert!(t.logs_dropped > 9_000, "dropped {}", t.logs_dropped);
}

#[tokio::test]
async fn oversized_answer_is_refused() {
    let inv = run_hostile("huge").await;
    assert_eq!(error_kind(&inv), InvokeErrorKind::ResponseTooLarge);
}

#[tokio::test]
async fn panic_becomes_an_error_with_its_message() {
    let inv = run_hostile("panic").await;
    assert_eq!(error_kind(&inv), InvokeErrorKind::Panic);
    let message = inv.result.unwrap_err().message;
    assert!(message.contains("boom: the expert gave up"), "{message}");
    assert!(inv.trace.logs.iter().any(|l| l.level == "error"));
}

#[tokio::test]
async fn calling_itself_is_a_cycle_error() {
    let inv = run_hostile("cycle").await;
    assert_eq!(error_kind(&inv), InvokeErrorKind::Denied);
    let message = inv.result.unwrap_err().message;
    assert!(
        message.contains("call cycle refused: hostile -> hostile"),
        "{message}"
    );
    let call = &inv.trace.host_calls[0];
    assert_eq!(call.interface, "tessera:expert/experts");
    assert!(call.error.as_deref().unwrap().starts_with("denied"));
}

#[tokio::test]
async fn model_use_without_grant_is_denied() {
    let inv = run_hostile("model").await;
    assert_eq!(error_kind(&inv), InvokeErrorKind::Denied);
    assert!(inv.result.unwrap_err().message.contains("model = true"));
}

/// An adapter is the operator's fine-tune: an expert runs the model with
/// one only when its manifest grants that adapter.
#[tokio::test]
async fn adapter_use_without_grant_is_denied() {
    let host = model_host(tessera_tests::FakeEngine::echo()).await;
    load(&host, ECHO).await;
    load_as(&host, ECHO, |m| {
        m.name = "tuned-echo".into();
        m.capabilities.adapters = vec!["tuned".into()];
    })
    .await;
    let ask = |expert: &'static str, prompt: &'static str| {
        let host = host.clone();
        async move { host.invoke(expert, Request::from_prompt(prompt)).await }
    };
    let denied = ask("echo", "adapter:tuned:hello").await;
    assert_eq!(error_kind(&denied), InvokeErrorKind::Denied);
    let message = denied.result.unwrap_err().message;
    assert!(
        message.contains("adapter `tuned`") && message.contains("`adapters` under [capabilities]"),
        "{message}"
    );
    let granted = ask("tuned-echo", "adapter:tuned:hello").await;
    assert!(granted.result.is_ok(), "{:?}", granted.result);
    let other = ask("tuned-echo", "adapter:other:hello").await;
    assert_eq!(error_kind(&other), InvokeErrorKind::Denied);
}

#[tokio::test]
async fn call_depth_is_limited() {
    let host = host();
    for i in 1..=6 {
        load_as(&host, HOSTILE, |m| {
            m.name = format!("relay-{i}");
            m.capabilities.experts = vec!["*".into()];
        })
        .await;
    }
    let chain = "relay-2,relay-3,relay-4";
    let ok = host
        .invoke(
            "relay-1",
            Request::from_prompt("relay").with_metadata("chain", chain),
        )
        .await;
    assert_eq!(
        ok.result.unwrap().content,
        "relay-2 > relay-3 > relay-4 > end of chain"
    );
    // Nested calls show in the trace, one level per call.
    let level2 = ok.trace.host_calls[0].nested.as_ref().unwrap();
    assert_eq!(level2.expert, "relay-2");
    assert_eq!(level2.depth, 1);
    assert_eq!(level2.host_calls[0].nested.as_ref().unwrap().depth, 2);
    // The caller pays for its callees' fuel.
    assert!(
        ok.trace.fuel_consumed > level2.fuel_consumed,
        "caller {} vs callee {}: {:#?}",
        ok.trace.fuel_consumed,
        level2.fuel_consumed,
        ok.trace.host_calls[0]
    );
    assert!(ok.trace.host_calls[0].fuel_after > ok.trace.host_calls[0].fuel_before);

    let too_deep = "relay-2,relay-3,relay-4,relay-5,relay-6";
    let inv = host
        .invoke(
            "relay-1",
            Request::from_prompt("relay").with_metadata("chain", too_deep),
        )
        .await;
    assert_eq!(error_kind(&inv), InvokeErrorKind::LimitExceeded);
    assert!(
        inv.result
            .unwrap_err()
            .message
            .contains("call depth limit of 4")
    );
}

#[tokio::test]
async fn ungranted_expert_call_is_denied() {
    let host = host();
    load(&host, ECHO).await;
    load_as(&host, HOSTILE, |m| {
        m.name = "relay".into();
        m.capabilities.experts = vec!["other".into()];
    })
    .await;
    let inv = host
        .invoke(
            "relay",
            Request::from_prompt("relay").with_metadata("chain", "echo"),
        )
        .await;
    assert_eq!(error_kind(&inv), InvokeErrorKind::Denied);
    assert!(
        inv.result
            .unwrap_err()
            .message
            .contains("may not call `echo`")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn others_finish_while_a_hostile_expert_spins() {
    let host = host();
    load(&host, HOSTILE).await;
    load(&host, ECHO).await;
    let spinning = {
        let host = host.clone();
        tokio::spawn(async move { host.invoke("hostile", Request::from_prompt("spin")).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    for i in 0..20 {
        let inv = host
            .invoke("echo", Request::from_prompt(format!("ping {i}")))
            .await;
        assert_eq!(inv.result.unwrap().content, format!("ping {i}"));
    }
    assert!(
        !spinning.is_finished(),
        "the echoes finished while the spinner still ran"
    );
    let spun = spinning.await.unwrap();
    assert_eq!(error_kind(&spun), InvokeErrorKind::Deadline);
}

/// With one executor thread, only the epoch yields let the echo run: it
/// must finish while the spinner still spins. (An earlier version only
/// checked that both finished, which they did even without yields.)
#[tokio::test(flavor = "current_thread")]
async fn a_spinning_expert_yields_on_a_single_thread() {
    let host = host();
    load(&host, HOSTILE).await;
    load(&host, ECHO).await;
    let spin = async {
        let inv = host.invoke("hostile", Request::from_prompt("spin")).await;
        (inv, Instant::now())
    };
    let echo = async {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let inv = host
            .invoke("echo", Request::from_prompt("still here"))
            .await;
        (inv, Instant::now())
    };
    let ((spun, spin_done), (echoed, echo_done)) = tokio::join!(spin, echo);
    assert_eq!(echoed.result.unwrap().content, "still here");
    assert_eq!(error_kind(&spun), InvokeErrorKind::Deadline);
    assert!(
        echo_done + Duration::from_millis(200) < spin_done,
        "the echo finished only {:?} before the spinner's deadline",
        spin_done.saturating_duration_since(echo_done)
    );
}

/// Spinning guests compute in the long-running lane, one at a time here,
/// in turn: while three spin on two workers, one worker stays free, echoes
/// answer, and the lane is whole again once they end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spinning_experts_take_turns_in_the_long_running_lane() {
    let host = host_with(
        HostPolicy {
            long_running_places: 1,
            ..test_policy()
        },
        Arc::new(NoModel),
    );
    load(&host, HOSTILE).await;
    load(&host, ECHO).await;
    assert_eq!(host.sandbox().long_running_places_free(), 1);
    let spinners: Vec<_> = (0..3)
        .map(|_| {
            let host = host.clone();
            tokio::spawn(async move { host.invoke("hostile", Request::from_prompt("spin")).await })
        })
        .collect();
    let waiting = Instant::now();
    while host.sandbox().long_running_places_free() != 0 {
        assert!(
            waiting.elapsed() < Duration::from_secs(5),
            "no spinner entered the long-running lane"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    for i in 0..20 {
        let inv = host
            .invoke("echo", Request::from_prompt(format!("ping {i}")))
            .await;
        assert_eq!(inv.result.unwrap().content, format!("ping {i}"));
    }
    assert!(
        spinners.iter().all(|s| !s.is_finished()),
        "a spinner ended before the echoes did"
    );
    for spinner in spinners {
        let spun = spinner.await.unwrap();
        assert_eq!(error_kind(&spun), InvokeErrorKind::Deadline);
        // Each spinner computed: its fuel went down while it held a place.
        assert!(spun.trace.fuel_consumed > 0);
    }
    assert_eq!(host.sandbox().long_running_places_free(), 1);
}

/// After a hostile run, the next invocation (a fresh instance, in a reused
/// pool slot) sees fresh memory.
#[tokio::test]
async fn the_next_instance_sees_fresh_memory() {
    let host = host_with(
        HostPolicy {
            pool_instances: 2,
            ..test_policy()
        },
        Arc::new(NoModel),
    );
    load(&host, HOSTILE).await;
    let marked = host.invoke("hostile", Request::from_prompt("mark")).await;
    assert_eq!(marked.result.unwrap().content, "marked");
    let hogged = host.invoke("hostile", Request::from_prompt("hog")).await;
    assert_eq!(error_kind(&hogged), InvokeErrorKind::MemoryLimit);
    let peeked = host.invoke("hostile", Request::from_prompt("peek")).await;
    assert_eq!(peeked.result.unwrap().content, "0");
}

fn load_error(result: Result<Arc<tessera_host::ensemble::Expert>, AddError>) -> String {
    match result {
        Ok(e) => panic!("{} loaded, but should have been refused", e.name()),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn malformed_wasm_is_refused() {
    let dir = tempdir();
    let path = dir.join("garbage.wasm");
    std::fs::write(&path, b"definitely not wasm").unwrap();
    let err = load_error(host().add(Bundle::open(&path).unwrap()).await);
    assert!(err.contains("not a valid WebAssembly binary"), "{err}");

    // A truncated component: the right header, then nothing useful.
    let mut wasm = std::fs::read(plugin(ECHO).join("echo.wasm")).unwrap();
    wasm.truncate(wasm.len() / 2);
    std::fs::write(&path, &wasm).unwrap();
    let err = load_error(host().add(Bundle::open(&path).unwrap()).await);
    assert!(err.contains("not a valid WebAssembly binary"), "{err}");
}

#[tokio::test]
async fn core_module_is_refused() {
    plugin(ECHO);
    let core = repo_root().join("tests/plugins/target/wasm32-unknown-unknown/release/echo.wasm");
    let err = load_error(host().add(Bundle::open(&core).unwrap()).await);
    assert!(
        err.contains("core WebAssembly module, not a component"),
        "{err}"
    );
}

#[tokio::test]
async fn component_of_the_wrong_world_is_refused() {
    // A router's component given as a bare .wasm, which runs as an agent.
    let router = plugin("tests/plugins/router-stub").join("router-stub.wasm");
    let err = load_error(host().add(Bundle::open(&router).unwrap()).await);
    assert!(err.contains("kind = \"agent\""), "{err}");
    assert!(err.contains("router world"), "{err}");

    // With its own manifest it loads, but it is not an expert.
    let host = host();
    host.add(bundle("tests/plugins/router-stub")).await.unwrap();
    let inv = host.invoke("router-stub", Request::from_prompt("hi")).await;
    assert_eq!(error_kind(&inv), InvokeErrorKind::NotAnExpert);
}

#[test]
fn component_errors_name_the_problem() {
    let err = ComponentError::CoreModule.to_string();
    assert!(err.contains("tessera build"));
    assert!(matches!(
        LoadError::from(ComponentError::CoreModule),
        LoadError::Component(_)
    ));
}

#[tokio::test]
async fn compiled_components_are_cached_on_disk() {
    let dir = tempdir();
    let make = || {
        tessera_host::ensemble::Ensemble::new(
            tessera_host::sandbox::Sandbox::new(test_policy(), Some(&dir)).unwrap(),
            Arc::new(NoModel),
        )
    };
    let first = make().add(bundle(ECHO)).await.unwrap();
    assert!(!first.component.as_ref().unwrap().from_cache);
    let second_host = make();
    let second = second_host.add(bundle(ECHO)).await.unwrap();
    assert!(second.component.as_ref().unwrap().from_cache);
    let inv = second_host
        .invoke("echo", Request::from_prompt("cached"))
        .await;
    assert_eq!(inv.result.unwrap().content, "cached");

    // A corrupt cache entry is dropped and the component recompiled.
    let entries = || {
        std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "cwasm"))
            .collect::<Vec<_>>()
    };
    for entry in entries() {
        std::fs::write(entry, b"corrupt").unwrap();
    }
    let third = make().add(bundle(ECHO)).await.unwrap();
    assert!(!third.component.as_ref().unwrap().from_cache);

    // A well-formed entry made by another host (another key), planted in
    // this cache, is never deserialised: its tag does not verify.
    let other = tempdir();
    tessera_host::ensemble::Ensemble::new(
        tessera_host::sandbox::Sandbox::new(test_policy(), Some(&other)).unwrap(),
        Arc::new(NoModel),
    )
    .add(bundle(ECHO))
    .await
    .unwrap();
    for planted in std::fs::read_dir(&other).unwrap() {
        let planted = planted.unwrap().path();
        if planted.extension().is_some_and(|x| x == "cwasm") {
            std::fs::copy(&planted, dir.join(planted.file_name().unwrap())).unwrap();
        }
    }
    let fourth = make().add(bundle(ECHO)).await.unwrap();
    assert!(
        !fourth.component.as_ref().unwrap().from_cache,
        "a foreign entry was loaded"
    );
    // A cache directory the host creates is private to this user, and
    // its key readable by nobody else.
    use std::os::unix::fs::PermissionsExt;
    let fresh = tempdir().join("cache");
    tessera_host::sandbox::Sandbox::new(test_policy(), Some(&fresh)).unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&fresh), 0o700);
    assert_eq!(mode(&fresh.join("cache.key")), 0o600);
}

#[tokio::test]
async fn tampered_component_fails_its_digest() {
    let dir = tempdir();
    let src = plugin(ECHO);
    for entry in std::fs::read_dir(&src).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
    }
    let mut wasm = std::fs::read(dir.join("echo.wasm")).unwrap();
    let last = wasm.len() - 1;
    wasm[last] ^= 1;
    std::fs::write(dir.join("echo.wasm"), wasm).unwrap();
    let err = Bundle::open(&dir).unwrap_err().to_string();
    assert!(err.contains("sha256"), "{err}");
}

/// Regression: a bundle that looked synthesised (`version = "0.0.0"`, no
/// description) took the name its `describe()` returned, after the
/// duplicate check, and so could take over `calculator`. The manifest's
/// name is the expert's name; another name from `describe()` is refused
/// with both named.
#[tokio::test]
async fn a_component_cannot_take_another_experts_name() {
    let host = host();
    load(&host, "plugins/calculator").await;
    let mut impostor = bundle(IMPOSTOR);
    impostor.manifest.version = "0.0.0".into();
    impostor.manifest.description.clear();
    let err = host.add(impostor).await.err().expect("refused");
    assert!(matches!(err, AddError::NameMismatch { .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("`impostor`") && message.contains("`calculator`"),
        "{message}"
    );
    // The same component as a bare .wasm (its describe() names it) cannot
    // take a loaded expert's name either.
    let dir = plugin(IMPOSTOR);
    let wasm = dir.join(bundle(IMPOSTOR).manifest.component.unwrap());
    let err = host
        .add(Bundle::open(&wasm).unwrap())
        .await
        .err()
        .expect("refused");
    assert!(
        err.to_string().contains("another loaded expert has it"),
        "{err}"
    );
    let answer = host
        .invoke("calculator", Request::from_prompt("6 * 7"))
        .await;
    assert!(answer.result.unwrap().content.contains("42"));
    assert_eq!(host.experts().len(), 1);
}

/// Regression: an expert named like the base model or the embedder
/// shadowed it for every client.
#[tokio::test]
async fn model_names_and_the_tessera_prefix_are_reserved() {
    let host = host_with(test_policy(), Arc::new(tessera_tests::FakeEngine::echo()));
    for name in ["fake", "tessera-auto"] {
        let mut b = bundle(ECHO);
        b.manifest.name = name.into();
        let err = host.add(b).await.err().expect("refused");
        assert!(matches!(err, AddError::ReservedName { .. }), "{err}");
        assert!(err.to_string().contains(name), "{err}");
    }
    assert!(host.experts().is_empty());
}

/// WASI clocks and random are functions of the trace: the wall clock is
/// the invocation's start, the monotonic clock steps 1 µs per reading, and
/// the random bytes are ChaCha8's from the recorded seed, so a replay can
/// give the guest exactly what it saw.
#[tokio::test]
async fn wasi_clocks_and_random_come_from_the_trace() {
    use rand_wasi::rngs::ChaCha8Rng;
    use rand_wasi::{RngExt, SeedableRng};

    let inv = run_hostile("clock").await;
    let answer = inv.result.unwrap().content;
    let t = &inv.trace;
    let wall = format!(
        "wall={}.{:09}",
        t.started_at_unix_ms / 1000,
        (t.started_at_unix_ms % 1000) * 1_000_000
    );
    assert!(answer.contains(&wall), "{answer} vs {wall}");
    assert!(answer.contains("mono=0,1000"), "{answer}");
    // The recipe the trace documents: ChaCha8 from the seed, a byte per
    // draw.
    let expected: Vec<u8> = ChaCha8Rng::seed_from_u64(t.wasi_random_seed)
        .random_iter::<u8>()
        .take(8)
        .collect();
    let hex: String = expected.iter().map(|b| format!("{b:02x}")).collect();
    assert!(
        answer.contains(&format!("random={hex}")),
        "{answer} vs {hex}"
    );
    // Another invocation draws from another seed.
    let again = run_hostile("clock").await;
    assert_ne!(again.trace.wasi_random_seed, t.wasi_random_seed);
}

/// Regression: every refused `experts.call` appended a trace entry that
/// quoted the guest's name twice; a loop of them grew host memory by
/// gigabytes. The trace keeps a bounded number of entries, counts the
/// rest, and never quotes an invalid name.
#[tokio::test]
async fn refused_calls_cannot_grow_the_trace() {
    let host = host();
    load_as(&host, HOSTILE, |m| {
        m.limits.deadline_ms = Some(20_000);
        m.capabilities.experts = vec!["*".into()];
    })
    .await;
    let inv = host
        .invoke("hostile", Request::from_prompt("refused-loop"))
        .await;
    assert_eq!(inv.result.unwrap().content, "20000");
    let max = test_policy().max_trace_entries;
    assert_eq!(inv.trace.host_calls.len(), max);
    assert_eq!(inv.trace.host_calls_dropped, (20_000 - max) as u64);
    let error = inv.trace.host_calls[0].error.as_deref().unwrap();
    assert!(error.contains("65536 bytes that are not one"), "{error}");
    assert!(
        inv.trace
            .host_calls
            .iter()
            .all(|c| c.error.as_ref().is_some_and(|e| e.len() <= 1100))
    );
}

async fn model_host(engine: tessera_tests::FakeEngine) -> Arc<tessera_host::ensemble::Ensemble> {
    let host = host_with(test_policy(), Arc::new(engine));
    load_as(&host, HOSTILE, |m| {
        m.capabilities.model = true.into();
    })
    .await;
    host
}

/// A guest's `model.embed` of ten thousand texts is refused with the cap,
/// not queued on the engine.
#[tokio::test]
async fn embed_bomb_is_refused() {
    let engine = tessera_tests::FakeEngine::echo();
    let host = model_host(engine).await;
    let inv = host
        .invoke("hostile", Request::from_prompt("embed-bomb"))
        .await;
    let message = inv.result.unwrap_err().message;
    assert!(message.contains("at most 256 texts"), "{message}");
}

/// Ten thousand continuations in one `model.score-choices` are refused
/// with the cap, not queued on the engine.
#[tokio::test]
async fn score_choices_bomb_is_refused() {
    let host = model_host(tessera_tests::FakeEngine::echo()).await;
    let inv = host
        .invoke("hostile", Request::from_prompt("choices-bomb"))
        .await;
    let message = inv.result.unwrap_err().message;
    assert!(message.contains("at most 256 continuations"), "{message}");
}

/// A thousand stop strings (each searched for on every token, on the
/// engine thread) are refused by the shared sampling check.
#[tokio::test]
async fn stop_string_bomb_is_refused() {
    let host = model_host(tessera_tests::FakeEngine::echo()).await;
    let inv = host
        .invoke("hostile", Request::from_prompt("stop-bomb"))
        .await;
    let message = inv.result.unwrap_err().message;
    assert!(
        message.contains("sampling.stop") && message.contains("at most 4"),
        "{message}"
    );
}

/// An answer with ten thousand metadata pairs is refused with the cap.
#[tokio::test]
async fn metadata_bomb_is_refused() {
    let inv = run_hostile("metadata-bomb").await;
    assert_eq!(error_kind(&inv), InvokeErrorKind::ResponseTooLarge);
    let message = inv.result.unwrap_err().message;
    assert!(message.contains("at most 64 pairs"), "{message}");
}

/// Regression: a callee ran under its own budgets, so an expert allowed 2
/// generated tokens could have a callee generate thousands for it. The
/// callee now runs inside what is left of the caller's budget, and what
/// it spends is charged to the caller.
#[tokio::test]
async fn a_callee_cannot_spend_past_the_callers_budget() {
    let engine = tessera_tests::FakeEngine::new(|_, _| "one two three four five six".into());
    let host = host_with(test_policy(), Arc::new(engine));
    load_as(&host, HOSTILE, |m| {
        m.name = "thief".into();
        m.limits.generated_tokens = Some(2);
        m.limits.model_calls = Some(3);
        m.capabilities.experts = vec!["spender".into()];
    })
    .await;
    load_as(&host, HOSTILE, |m| {
        m.name = "spender".into();
        m.capabilities.model = true.into();
    })
    .await;
    let inv = host
        .invoke(
            "thief",
            Request::from_prompt("theft").with_metadata("callee", "spender"),
        )
        .await;
    assert_eq!(inv.result.unwrap().content, "one two");
    assert_eq!(inv.trace.generated_tokens, 2);
    assert_eq!(inv.trace.model_calls, 1);
    let nested = inv.trace.host_calls[0].nested.as_ref().unwrap();
    assert_eq!(nested.limits.generated_tokens, 2);
    assert_eq!(nested.limits.model_calls, 3);
}

/// `describe()` output is capped where it enters the host: a megabyte of
/// description (and ten thousand examples to embed) is refused by name.
#[tokio::test]
async fn a_giant_describe_is_refused() {
    let host = host();
    let err = host.add(bundle(BRAGGART)).await.err().expect("refused");
    assert!(matches!(err, AddError::DescribeTooLarge { .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("description") && message.contains("at most 4096"),
        "{message}"
    );
}

fn tempdir() -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "tessera-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
