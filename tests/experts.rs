//! The example experts, end to end on a deterministic fake model: answers,
//! budgets, and what their traces record.

use std::sync::Arc;

use tessera_host::bundle::Bundle;
use tessera_host::ensemble::InvokeErrorKind;
use tessera_host::inference::ChatRole;
use tessera_host::types::Request;
use tessera_tests::{FakeEngine, host, host_with, load, load_as, plugin, test_policy};

const CALCULATOR: &str = "plugins/calculator";
const CHAIN_OF_THOUGHT: &str = "plugins/chain-of-thought";
const SELF_CONSISTENCY: &str = "plugins/self-consistency";

fn last_user(messages: &[tessera_host::inference::ChatMessage]) -> String {
    messages
        .iter()
        .rev()
        .find(|m| m.role == ChatRole::User)
        .map(|m| m.content.clone())
        .unwrap_or_default()
}

#[tokio::test]
async fn calculator_is_exact_without_a_model() {
    let host = host();
    load(&host, CALCULATOR).await;
    let cases = [
        ("What is 12 * (3 + 4)?", "12 * (3 + 4) = 84"),
        ("How much is 7 divided by 8?", "7 / 8 = 0.875"),
        ("Compute 2^10 - 1", "2^10 - 1 = 1023"),
        ("1/3 + 1/6", "1/3 + 1/6 = 0.5"),
    ];
    for (question, answer) in cases {
        let inv = host
            .invoke("calculator", Request::from_prompt(question))
            .await;
        assert_eq!(inv.result.unwrap().content, answer, "{question}");
        // The model was asked for wording and said it is not loaded.
        let call = &inv.trace.host_calls[0];
        assert_eq!(
            (call.interface.as_str(), call.function.as_str()),
            ("tessera:expert/model", "chat")
        );
        assert!(
            call.error
                .as_deref()
                .unwrap()
                .starts_with("model: no model is loaded")
        );
    }
    let inv = host
        .invoke("calculator", Request::from_prompt("What is 1/0?"))
        .await;
    let err = inv.result.unwrap_err();
    assert_eq!(err.kind, InvokeErrorKind::InvalidInput);
    assert!(err.message.contains("division by zero"));
    let inv = host
        .invoke("calculator", Request::from_prompt("Tell me a story"))
        .await;
    assert_eq!(inv.result.unwrap_err().kind, InvokeErrorKind::InvalidInput);
}

#[tokio::test]
async fn calculator_uses_the_model_only_for_wording() {
    let engine = Arc::new(FakeEngine::new(|messages, params| {
        assert_eq!(params.temperature, 0.0, "wording is greedy");
        let user = last_user(messages);
        let result = user.rsplit("= ").next().unwrap().to_string();
        format!("The answer is {result}.")
    }));
    let host = host_with(test_policy(), engine.clone());
    load(&host, CALCULATOR).await;
    let inv = host
        .invoke("calculator", Request::from_prompt("What is 6 * 7?"))
        .await;
    let response = inv.result.unwrap();
    assert_eq!(response.content, "The answer is 42.");
    assert_eq!(response.confidence, Some(1.0));
    assert!(response.metadata.contains(&("result".into(), "42".into())));
    assert_eq!(inv.trace.model_calls, 1);
    assert_eq!(inv.trace.generated_tokens, 4);
    let call = &inv.trace.host_calls[0];
    assert_eq!(call.tokens.unwrap().completion, 4);
    assert!(call.bytes_in > 0 && call.bytes_out > 0);
    assert!(call.fuel_before > 0 && call.fuel_after >= call.fuel_before);
    assert!(inv.trace.logs.iter().any(|l| l.message == "evaluated"
        && l.fields.contains(&("result".into(), "42".into()))));

    // A model that gets the number wrong is not believed.
    let liar = Arc::new(FakeEngine::new(|_, _| "The answer is 43.".to_string()));
    let host = host_with(test_policy(), liar);
    load(&host, CALCULATOR).await;
    let inv = host
        .invoke("calculator", Request::from_prompt("What is 6 * 7?"))
        .await;
    assert_eq!(inv.result.unwrap().content, "6 * 7 = 42");
    assert!(inv.trace.logs.iter().any(|l| l.level == "warn"));
}

#[tokio::test]
async fn chain_of_thought_plans_then_answers() {
    let engine = Arc::new(FakeEngine::new(|messages, _| {
        let system = &messages[0].content;
        if system.contains("plan") && !system.contains("following the plan") {
            "1. Read the question. 2. Answer it.".to_string()
        } else {
            assert!(last_user(messages).contains("Plan:\n1. Read the question."));
            "Following the plan.\nParis".to_string()
        }
    }));
    let host = host_with(test_policy(), engine.clone());
    load(&host, CHAIN_OF_THOUGHT).await;
    let inv = host
        .invoke(
            "chain-of-thought",
            Request::from_prompt("What is the capital of France?"),
        )
        .await;
    let response = inv.result.unwrap();
    assert_eq!(response.content, "Following the plan. Paris");
    assert!(
        response
            .metadata
            .iter()
            .any(|(k, v)| k == "plan" && v.starts_with("1."))
    );
    assert_eq!(engine.calls(), 2);
    assert_eq!(inv.trace.model_calls, 2);
    assert!(response.confidence.unwrap() > 0.9);
}

#[tokio::test]
async fn self_consistency_returns_the_majority() {
    // Seeds 0..5: three say 42, two say 41.
    let engine = Arc::new(FakeEngine::new(|_, params| {
        let seed = params.seed.expect("each sample is seeded");
        let answer = if seed % 5 < 3 { 42 } else { 41 };
        format!("Thinking about it.\nThe answer is {answer}")
    }));
    let host = host_with(test_policy(), engine.clone());
    load(&host, SELF_CONSISTENCY).await;
    let inv = host
        .invoke("self-consistency", Request::from_prompt("6 * 7?"))
        .await;
    let response = inv.result.unwrap();
    assert!(response.content.ends_with("42"), "{}", response.content);
    assert_eq!(response.confidence, Some(0.6));
    assert!(response.metadata.contains(&("votes".into(), "3/5".into())));
    assert_eq!(engine.calls(), 5);

    let bad = host
        .invoke(
            "self-consistency",
            Request::from_prompt("6 * 7?").with_metadata("samples", "50"),
        )
        .await;
    let err = bad.result.unwrap_err();
    assert_eq!(err.kind, InvokeErrorKind::InvalidInput);
    assert!(err.message.contains("samples"));
}

#[tokio::test]
async fn model_call_budget_is_enforced() {
    let host = host_with(test_policy(), Arc::new(FakeEngine::echo()));
    load_as(&host, CHAIN_OF_THOUGHT, |m| m.limits.model_calls = Some(1)).await;
    let inv = host
        .invoke("chain-of-thought", Request::from_prompt("hi"))
        .await;
    let err = inv.result.unwrap_err();
    assert_eq!(err.kind, InvokeErrorKind::LimitExceeded);
    assert!(
        err.message.contains("limits.model-calls"),
        "{}",
        err.message
    );
    assert_eq!(inv.trace.host_calls.len(), 2);
    assert!(
        inv.trace.host_calls[1]
            .error
            .as_deref()
            .unwrap()
            .starts_with("limit-exceeded")
    );
}

#[tokio::test]
async fn generated_token_budget_is_enforced() {
    let engine = Arc::new(FakeEngine::new(|_, _| {
        "one two three four five six seven eight".into()
    }));
    let host = host_with(test_policy(), engine);
    load_as(&host, CHAIN_OF_THOUGHT, |m| {
        m.limits.generated_tokens = Some(5)
    })
    .await;
    let inv = host
        .invoke("chain-of-thought", Request::from_prompt("hi"))
        .await;
    // The plan is cut to the 5 tokens left; then nothing is left.
    let plan = &inv.trace.host_calls[0];
    assert_eq!(plan.tokens.unwrap().completion, 5);
    let err = inv.result.unwrap_err();
    assert_eq!(err.kind, InvokeErrorKind::LimitExceeded);
    assert!(err.message.contains("limits.generated-tokens"));
    assert_eq!(inv.trace.generated_tokens, 5);
}

#[tokio::test]
async fn describe_answers_with_the_manifest() {
    // The component alone (a bare .wasm: no manifest beside it, so the host
    // takes what describe() says) describes itself exactly as the crate's
    // tessera.toml does: the SDK reads the manifest at compile time.
    let dir = plugin(CALCULATOR);
    let manifest = Bundle::open(&dir).expect("the built bundle opens").manifest;
    let bare = Bundle::open(&dir.join("calculator.wasm")).expect("the component opens");
    assert!(bare.bare);
    let host = host();
    let expert = host.add(bare).await.expect("the bare component loads");
    assert_eq!(expert.info.name, manifest.name);
    assert_eq!(expert.info.version, manifest.version);
    assert_eq!(expert.info.description, manifest.description);
    assert_eq!(expert.info.tags, manifest.tags);
    assert_eq!(expert.info.examples, manifest.examples);
    assert!(
        expert
            .info
            .examples
            .iter()
            .any(|e| e.contains("12 * (3 + 4)"))
    );
}

#[tokio::test]
async fn unknown_expert_is_named() {
    let inv = host().invoke("nobody", Request::from_prompt("hi")).await;
    let err = inv.result.unwrap_err();
    assert_eq!(err.kind, InvokeErrorKind::UnknownExpert);
    assert!(err.message.contains("`nobody`"));
}
