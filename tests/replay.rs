//! Validators' checks on real components: a recorded invocation replays
//! exactly (answer, host calls, fuel), a rebuilt component is caught at the
//! call where it departs, and the logprob spot-check tells an honest
//! record from an edited one or one made with another model.

use std::sync::Arc;

use tessera_host::audit::replay::{self, Mode, RerunReport};
use tessera_host::audit::spotcheck::{self, DEFAULT_LOGPROB_TOLERANCE};
use tessera_host::audit::{CallResult, Record};
use tessera_host::ensemble::{Ensemble, Invocation};
use tessera_host::inference::{ModelEngine, NoModel};
use tessera_host::types::Request;
use tessera_tests::{FakeEngine, host_with, load, real_engine, repo_root, test_policy};

const ECHO: &str = "tests/plugins/echo";
const ECHO_REBUILT: &str = "tests/plugins/echo-rebuilt";

/// The record an invocation leaves, through its JSON form (as the audit
/// store and `tessera verify` hold it).
fn record_of(invocation: &Invocation) -> Record {
    let record = Record {
        request: invocation.request.clone().expect("an outermost invocation"),
        response: invocation.result.as_ref().ok().map(Into::into),
        trace: invocation.trace.clone(),
        receipt: invocation.receipt.clone(),
    };
    let json = serde_json::to_string(&record).unwrap();
    serde_json::from_str(&json).unwrap()
}

/// A host with no model at all, holding `plugins`: a replay needs none.
async fn replayer(plugins: &[&str]) -> Arc<Ensemble> {
    let host = host_with(test_policy(), Arc::new(NoModel));
    for p in plugins {
        load(&host, p).await;
    }
    host
}

async fn replay(host: &Arc<Ensemble>, record: &Record) -> RerunReport {
    replay::rerun(host, record, Mode::Replay, None)
        .await
        .expect("the record can be replayed")
}

/// Every example expert (and the WASI-using hostile one), recorded on a
/// model and replayed on a host with none: same answer, same host calls
/// with the same arguments and results, the same fuel to the unit.
#[tokio::test]
async fn replay_reproduces_every_example_expert_exactly() {
    let mut plugins: Vec<String> = std::fs::read_dir(repo_root().join("plugins"))
        .unwrap()
        .filter_map(|e| {
            let path = e.unwrap().path();
            // Adapter bundles run no agent to replay (and hold weights
            // only once trained).
            let manifest = std::fs::read_to_string(path.join("tessera.toml")).ok()?;
            (!manifest.contains("kind = \"adapter\""))
                .then(|| format!("plugins/{}", path.file_name().unwrap().to_string_lossy()))
        })
        .collect();
    plugins.sort();
    plugins.push("tests/plugins/hostile".into());
    assert!(plugins.len() >= 10, "{plugins:?}");
    let plugins: Vec<&str> = plugins.iter().map(String::as_str).collect();

    let recorder = host_with(test_policy(), Arc::new(FakeEngine::echo()));
    for p in &plugins {
        load(&recorder, p).await;
    }
    let replayer = replayer(&plugins).await;
    let mut replayed = 0;
    for expert in recorder.experts() {
        if expert.manifest.kind.world_name() != "agent" {
            continue;
        }
        // The hostile expert's `clock` behaviour reads WASI's clocks and
        // random stream: the replay must give it the same.
        let prompt = if expert.name() == "hostile" {
            "clock".to_string()
        } else {
            expert
                .info
                .examples
                .first()
                .cloned()
                .unwrap_or_else(|| "Hello there".into())
        };
        let invocation = recorder
            .invoke(expert.name(), Request::from_prompt(prompt.clone()))
            .await;
        let record = record_of(&invocation);
        let report = replay(&replayer, &record).await;
        assert!(
            report.matches(),
            "{} on {prompt:?}: {:?}",
            expert.name(),
            report.divergence
        );
        assert!(report.same_answer && report.component_matches);
        assert_eq!(report.rerun_fuel, invocation.trace.fuel_consumed);
        assert_eq!(report.rerun_calls, invocation.trace.host_calls.len());
        replayed += 1;
    }
    assert!(replayed >= 9, "only {replayed} experts replayed");
}

/// The echo expert's `ask:` branch tokenizes, then asks the model; the
/// rebuilt one asks with other text. The replay runs the same calls up to
/// there and names call 1 as where they part.
#[tokio::test]
async fn a_rebuilt_expert_fails_replay_at_the_first_diverging_call() {
    let recorder = host_with(test_policy(), Arc::new(FakeEngine::echo()));
    load(&recorder, ECHO).await;
    let invocation = recorder
        .invoke("echo", Request::from_prompt("ask:The capital of France is"))
        .await;
    assert!(invocation.result.is_ok(), "{:?}", invocation.result);
    let record = record_of(&invocation);
    assert_eq!(record.trace.host_calls.len(), 2);

    let same = replay(&replayer(&[ECHO]).await, &record).await;
    assert!(same.matches(), "{:?}", same.divergence);

    let rebuilt = replay(&replayer(&[ECHO_REBUILT]).await, &record).await;
    assert!(!rebuilt.component_matches);
    let divergence = rebuilt.divergence.expect("the rebuilt expert diverges");
    assert_eq!(divergence.call, Some(1), "{divergence:?}");
    assert!(
        divergence
            .what
            .contains("`model.complete` was called with other arguments"),
        "{divergence:?}"
    );

    // A record whose result was edited no longer gives its own digest.
    let mut edited = record.clone();
    if let Some(CallResult::Completion { text, .. }) = &mut edited.trace.host_calls[1].result {
        text.push_str(" (edited)");
    }
    let report = replay(&replayer(&[ECHO]).await, &edited).await;
    let divergence = report.divergence.expect("an edited record diverges");
    assert_eq!(divergence.call, Some(1));
    assert!(divergence.what.contains("edited"), "{divergence:?}");
}

/// On the real model: the honest record passes the spot-check; the same
/// record with its text edited, with another answer's tokens, or made by
/// another model, fails it.
#[tokio::test]
async fn the_logprob_spot_check_passes_the_honest_record_only() {
    let model = real_engine();
    let honest_host = host_with(test_policy(), model.clone());
    load(&honest_host, ECHO).await;
    let invocation = honest_host
        .invoke("echo", Request::from_prompt("ask:The capital of France is"))
        .await;
    assert!(invocation.result.is_ok(), "{:?}", invocation.result);
    let honest = record_of(&invocation);
    let replayer = replayer(&[ECHO]).await;
    let check = |record: Record| {
        let replayer = replayer.clone();
        let model = model.clone();
        async move {
            let report = replay(&replayer, &record).await;
            spotcheck::spot_check(&report, model.as_ref(), DEFAULT_LOGPROB_TOLERANCE).await
        }
    };

    let verdict = check(honest.clone()).await;
    assert_eq!(verdict.calls.len(), 1);
    assert!(verdict.pass(), "{verdict:?}");
    assert!(verdict.calls[0].tokens > 0);

    // The text edited (the ids kept): the tokens no longer say it.
    let mut edited = honest.clone();
    let Some(CallResult::Completion { text, .. }) = &mut edited.trace.host_calls[1].result else {
        panic!("call 1 is the completion");
    };
    *text = " Lyon, of course.".into();
    let verdict = check(edited).await;
    assert!(!verdict.pass());
    let reason = verdict.calls[0].reason.clone().unwrap();
    assert!(reason.contains("not what its tokens decode to"), "{reason}");

    // Text and ids both changed to another answer, the logprobs kept.
    let mut swapped = honest.clone();
    let lyon = model.tokenize(" Lyon.".into()).await.unwrap();
    let Some(CallResult::Completion {
        text,
        token_ids,
        logprobs,
        ..
    }) = &mut swapped.trace.host_calls[1].result
    else {
        panic!("call 1 is the completion");
    };
    *text = " Lyon.".into();
    logprobs.truncate(lyon.len());
    *token_ids = lyon;
    let verdict = check(swapped).await;
    assert!(!verdict.pass(), "{verdict:?}");
    assert!(verdict.calls[0].max_abs_diff > 1.0, "{verdict:?}");

    // Made with another model (the fake one), checked against SmolLM2.
    let other_host = host_with(test_policy(), Arc::new(FakeEngine::echo()));
    load(&other_host, ECHO).await;
    let other = other_host
        .invoke("echo", Request::from_prompt("ask:The capital of France is"))
        .await;
    let verdict = check(record_of(&other)).await;
    assert!(!verdict.pass(), "{verdict:?}");
}
