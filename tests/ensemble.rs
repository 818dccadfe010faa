//! The super-ensemble through the HTTP API: routing the labelled prompts
//! among the example experts on the real MiniLM, `tessera/auto` and its
//! strategies (route, mixture of agents, cascade), router plugins and
//! their fallback, the embedding cache, and composition limits.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tessera_host::ensemble::strategy::{DEFAULT_CASCADE_WINDOW, ROUTER_TIE};
use tessera_host::ensemble::{Ensemble, RouterConfig};
use tessera_host::inference::ModelEngine;
use tessera_host::server::{self, AppState, ServerOptions};
use tessera_tests::{FakeEngine, host_with, load, load_as, real_engine, test_policy};

/// The example experts that answer requests, and the router plugin.
const EXAMPLES: &[&str] = &[
    "plugins/aggregator",
    "plugins/assistant",
    "plugins/calculator",
    "plugins/chain-of-thought",
    "plugins/code-explainer",
    "plugins/json-extractor",
    "plugins/keyword-router",
    "plugins/self-consistency",
    "plugins/summariser",
    "plugins/unit-converter",
];

/// A host on the real models with every example expert, the router stub,
/// and `config`.
async fn examples(config: RouterConfig) -> Arc<Ensemble> {
    let ensemble = host_with(test_policy(), real_engine());
    for rel in EXAMPLES {
        load(&ensemble, rel).await;
    }
    load(&ensemble, "tests/plugins/router-stub").await;
    ensemble.set_router_config(config);
    ensemble
}

/// A server on a loopback socket; its base URL.
async fn start(ensemble: Arc<Ensemble>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let state = AppState::new(ensemble, ServerOptions::default());
    tokio::spawn(server::serve(listener, state, std::future::pending()));
    base
}

/// POST `body` to `path`; the status, the route header and the JSON body.
async fn post(base: &str, path: &str, body: Value) -> (u16, Option<String>, Value) {
    let response = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .header("x-tessera-trace", "true")
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let header = response
        .headers()
        .get("x-tessera-route")
        .map(|v| v.to_str().unwrap().to_string());
    (status, header, response.json().await.unwrap_or(Value::Null))
}

fn chat(model: &str, prompt: &str, max_tokens: u32) -> Value {
    json!({
        "model": model,
        "messages": [{ "role": "user", "content": prompt }],
        "max_tokens": max_tokens,
        "temperature": 0,
    })
}

fn experts_of(list: &Value) -> Vec<&str> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|c| c["expert"].as_str().unwrap())
        .collect()
}

async fn metrics(base: &str) -> String {
    reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

// ------------------------------------------------------ the real models

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labelled_prompts_route_to_the_right_expert() {
    let base = start(examples(RouterConfig::default()).await).await;
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("data/routing-labelled.json"),
    )
    .unwrap();
    let labelled: Vec<Value> = serde_json::from_str(&text).unwrap();
    assert!(labelled.len() >= 40);
    let mut misses = Vec::new();
    for case in &labelled {
        let (expected, prompt) = (
            case["expert"].as_str().unwrap(),
            case["prompt"].as_str().unwrap(),
        );
        let (status, header, body) =
            post(&base, "/v1/route", chat("tessera/auto", prompt, 16)).await;
        assert_eq!(status, 200, "{body}");
        let decision = &body["decision"];
        let top = decision["choices"][0]["expert"].as_str().unwrap_or("base");
        assert!(header.unwrap().contains(&format!("experts={top}")));
        if top != expected {
            misses.push(format!(
                "{prompt:?}: expected {expected}, routed to {top} ({})",
                decision["candidates"]
            ));
        }
    }
    let accuracy = 1.0 - misses.len() as f64 / labelled.len() as f64;
    eprintln!(
        "top-1 accuracy {:.1}% on {} prompts; misses:\n{}",
        accuracy * 100.0,
        labelled.len(),
        misses.join("\n")
    );
    assert!(
        accuracy >= 0.9,
        "top-1 accuracy {accuracy:.3} < 0.9:\n{}",
        misses.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tessera_auto_answers_through_the_routed_expert() {
    let base = start(examples(RouterConfig::default()).await).await;

    let models: Value = reqwest::get(format!("{base}/v1/models"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    for id in [
        "tessera/auto",
        "tessera/auto:moa",
        "tessera/auto:cascade",
        "unit-converter",
    ] {
        assert!(ids.contains(&id), "{id} missing from {ids:?}");
    }

    let (status, header, body) = post(
        &base,
        "/v1/chat/completions",
        chat("tessera/auto", "Convert 5 kilometres to miles, please", 32),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "5 km = 3.10686 miles"
    );
    let tessera = &body["tessera"];
    assert_eq!(tessera["answered_by"], "unit-converter");
    assert_eq!(tessera["route"]["strategy"], "route");
    assert_eq!(tessera["route"]["router"], "default");
    assert_eq!(tessera["route"]["choices"][0]["expert"], "unit-converter");
    assert!(tessera["route"]["choices"][0]["score"].as_f64().unwrap() > 0.3);
    assert_eq!(tessera["traces"][0]["expert"], "unit-converter");
    assert!(
        header
            .unwrap()
            .starts_with("strategy=route; router=default; experts=unit-converter:")
    );

    // A streamed answer through the routed expert ends like any stream.
    let response = reqwest::Client::new()
        .post(format!("{base}/v1/chat/completions"))
        .json(&json!({
            "model": "tessera/auto",
            "messages": [{ "role": "user", "content": "How many feet are in 2 meters?" }],
            "stream": true,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["x-tessera-route"]
            .to_str()
            .unwrap()
            .contains("unit-converter")
    );
    let body = response.text().await.unwrap();
    assert!(body.contains("6.56168 feet"), "{body}");
    assert!(body.trim_end().ends_with("data: [DONE]"), "{body}");

    let text = metrics(&base).await;
    assert!(
        text.contains(
            "tessera_route_decisions_total{strategy=\"route\",expert=\"unit-converter\",router=\"default\"} 2"
        ),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn below_the_threshold_the_base_model_answers() {
    let base = start(
        examples(RouterConfig {
            threshold: 0.99,
            ..RouterConfig::default()
        })
        .await,
    )
    .await;
    let (status, header, body) = post(
        &base,
        "/v1/chat/completions",
        chat("tessera/auto", "The capital of France is", 4),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(header.unwrap().ends_with("experts=base"));
    let route = &body["tessera"]["route"];
    assert_eq!(route["choices"], json!([]));
    // The candidates are still reported, with their (low) scores.
    assert!(!route["candidates"].as_array().unwrap().is_empty());
    assert_eq!(
        body["tessera"]["answered_by"],
        real_engine().model_name(),
        "{body}"
    );
}

/// MoA selects one of its experts' answers by default (an exact tool's
/// first, then agreement, then the model's likelihood) and rewrites them
/// only with `moa_fuse`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moa_fans_out_to_the_top_k_then_selects_or_fuses() {
    // Three candidates: chain-of-thought, when among them, is chosen only
    // when it leads by its routing margin, so two or three answer.
    let ensemble = examples(RouterConfig {
        top_k: 3,
        threshold: -1.0,
        ..RouterConfig::default()
    })
    .await;
    let base = start(ensemble.clone()).await;
    let traced = |tessera: &Value| -> Vec<String> {
        tessera["traces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["expert"].as_str().unwrap().to_string())
            .collect()
    };

    // The calculator is certain (confidence 1.0): its exact answer stands.
    let (status, header, body) = post(
        &base,
        "/v1/chat/completions",
        chat("tessera/auto:moa", "What is 17 * 23?", 16),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(header.unwrap().starts_with("strategy=moa"));
    let tessera = &body["tessera"];
    let chosen = experts_of(&tessera["route"]["choices"]);
    assert!(chosen.len() >= 2, "{tessera}");
    assert!(chosen.contains(&"calculator"), "{tessera}");
    assert_eq!(experts_of(&tessera["fan_out"]), chosen);
    let answered = tessera["fan_out"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["ok"] == true)
        .count();
    let by = if answered > 1 {
        "confidence"
    } else {
        "only-answer"
    };
    assert_eq!(tessera["selection"]["by"], by, "{tessera}");
    assert_eq!(tessera["answered_by"], "calculator", "{tessera}");
    assert!(
        body["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .contains("391"),
        "{body}"
    );
    assert_eq!(traced(tessera), chosen, "no aggregator ran: {tessera}");

    // No one is certain: agreement, else the router's order, with the
    // model's likelihood breaking only near ties of the router.
    let (status, _, body) = post(
        &base,
        "/v1/chat/completions",
        chat("tessera/auto:moa", "Write a haiku about the ocean.", 16),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let tessera = &body["tessera"];
    let chosen = experts_of(&tessera["route"]["choices"]);
    assert!(chosen.len() >= 2, "{tessera}");
    let scores: Vec<f64> = tessera["route"]["choices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["score"].as_f64().unwrap())
        .collect();
    let near_ties = scores
        .iter()
        .filter(|s| **s >= scores[0] - f64::from(ROUTER_TIE))
        .count();
    let by = tessera["selection"]["by"].as_str().unwrap();
    match by {
        "agreement" => {}
        "likelihood" => {
            assert!(near_ties > 1, "{tessera}");
            let rated = tessera["selection"]["scores"].as_array().unwrap();
            assert_eq!(rated.len(), near_ties, "{tessera}");
        }
        "rank" => {
            assert_eq!(near_ties, 1, "{tessera}");
            assert_eq!(tessera["answered_by"], chosen[0], "{tessera}");
        }
        other => panic!("selected by {other}: {tessera}"),
    }
    assert!(
        chosen.contains(&tessera["answered_by"].as_str().unwrap()),
        "{tessera}"
    );
    // Usage covers every model call behind the answer.
    let completion = body["usage"]["completion_tokens"].as_u64().unwrap();
    let traced_tokens: u64 = tessera["traces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["generated_tokens"].as_u64().unwrap())
        .sum();
    assert_eq!(completion, traced_tokens, "{body}");

    // Fusion, when asked for: the aggregator writes the answer.
    let mut config = ensemble.router_config();
    config.moa_fuse = true;
    ensemble.set_router_config(config);
    let (status, _, body) = post(
        &base,
        "/v1/chat/completions",
        chat("tessera/auto:moa", "Write a haiku about the ocean.", 16),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let tessera = &body["tessera"];
    let chosen = experts_of(&tessera["route"]["choices"]);
    let mut expected = chosen.clone();
    expected.push("aggregator");
    assert_eq!(traced(tessera), expected, "{tessera}");
    assert_eq!(tessera["aggregator"], "aggregator");
    assert_eq!(tessera["answered_by"], "aggregator");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cascade_stops_at_a_confident_answer_and_escalates_below_it() {
    let ensemble = examples(RouterConfig {
        top_k: 2,
        threshold: -1.0,
        cascade_threshold: 0.5,
        ..RouterConfig::default()
    })
    .await;
    let base = start(ensemble.clone()).await;

    // The unit converter leads and is sure of itself.
    let (status, _, body) = post(
        &base,
        "/v1/chat/completions",
        chat("tessera/auto:cascade", "Convert 3 kilograms to pounds", 16),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let stages = &body["tessera"]["cascade"]["stages"];
    assert_eq!(stages.as_array().unwrap().len(), 1, "{body}");
    assert_eq!(stages[0]["expert"], "unit-converter");
    assert_eq!(stages[0]["accepted"], true);
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "3 kg = 6.61387 pounds"
    );

    // No model answer is 99.9% sure: with a window that takes every
    // candidate, every stage runs, in the router's order, and the most
    // confident answer stands.
    let mut config = ensemble.router_config();
    config.cascade_threshold = 0.999;
    config.cascade_window = 2.0;
    ensemble.set_router_config(config.clone());
    let (status, _, body) = post(
        &base,
        "/v1/chat/completions",
        chat("tessera/auto:cascade", "Write a haiku about the ocean.", 12),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let stages = body["tessera"]["cascade"]["stages"].as_array().unwrap();
    let choices = body["tessera"]["route"]["choices"].as_array().unwrap();
    assert_eq!(stages.len(), choices.len(), "{body}");
    for (stage, choice) in stages.iter().zip(choices) {
        assert_eq!(stage["expert"], choice["expert"], "{body}");
    }
    assert!(stages.iter().all(|s| s["accepted"] == false), "{body}");
    let best = stages
        .iter()
        .map(|s| s["confidence"].as_f64().unwrap())
        .fold(0.0, f64::max);
    let answered = body["tessera"]["answered_by"].as_str().unwrap();
    let answered_stage = stages.iter().find(|s| s["expert"] == answered).unwrap();
    assert_eq!(answered_stage["confidence"].as_f64().unwrap(), best);

    // With the default window, a low-confidence answer escalates only to
    // the candidates within 0.03 of the best score.
    config.cascade_window = DEFAULT_CASCADE_WINDOW;
    ensemble.set_router_config(config);
    let (status, _, body) = post(
        &base,
        "/v1/chat/completions",
        chat("tessera/auto:cascade", "Write a haiku about the ocean.", 12),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let stages = body["tessera"]["cascade"]["stages"].as_array().unwrap();
    let scores: Vec<f64> = body["tessera"]["route"]["choices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["score"].as_f64().unwrap())
        .collect();
    let near = scores
        .iter()
        .filter(|&&s| s >= scores[0] - f64::from(DEFAULT_CASCADE_WINDOW))
        .count();
    assert_eq!(stages.len(), near, "{body}");
    assert!(
        metrics(&base)
            .await
            .contains("tessera_cascade_escalations_total")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_plugin_decides_and_the_default_router_covers_its_failures() {
    let ensemble = examples(RouterConfig {
        plugin: Some("keyword-router".into()),
        ..RouterConfig::default()
    })
    .await;
    let base = start(ensemble.clone()).await;
    let route = |prompt: &str| {
        let base = base.clone();
        let body = chat("tessera/auto", prompt, 8);
        async move { post(&base, "/v1/route", body).await.2["decision"].clone() }
    };

    let decision = route("Convert 5 km to miles").await;
    assert_eq!(decision["router"], "keyword-router");
    assert_eq!(decision["choices"][0]["expert"], "unit-converter");
    // No keyword: the plugin chooses nobody, and the base model answers.
    let decision = route("Tell me a story about dragons").await;
    assert_eq!(decision["router"], "keyword-router");
    assert_eq!(decision["choices"], json!([]));

    // The stub panics or spins on request; the default router decides.
    let mut config = ensemble.router_config();
    config.plugin = Some("router-stub".into());
    config.plugin_deadline = Duration::from_millis(300);
    ensemble.set_router_config(config);
    let decision = route("Summarise this").await;
    assert_eq!(decision["router"], "router-stub");
    let decision = route("please panic, then convert 5 km to miles").await;
    assert_eq!(decision["router"], "default", "{decision}");
    let error = decision["plugin_error"].as_str().unwrap();
    assert!(error.contains("panicked"), "{error}");
    assert_eq!(decision["choices"][0]["expert"], "unit-converter");
    let decision = route("spin, then convert 5 km to miles").await;
    assert_eq!(decision["router"], "default", "{decision}");
    let error = decision["plugin_error"].as_str().unwrap();
    assert!(error.contains("300 ms"), "{error}");
    let text = metrics(&base).await;
    assert!(
        text.contains("tessera_router_plugin_failures_total{expert=\"router-stub\"} 2"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_reads_the_routing_index_from_the_embedding_cache() {
    let cache = tempfile::tempdir().unwrap();
    let index = |ensemble: &Arc<Ensemble>| {
        let r = ensemble.routing_index();
        (r.len(), r.stats())
    };
    let first = host_with(test_policy(), real_engine());
    first
        .routing_index()
        .set_cache_dir(Some(cache.path().to_path_buf()));
    for rel in EXAMPLES {
        load(&first, rel).await;
    }
    let (routable, stats) = index(&first);
    // The aggregator and self-consistency are not routable; the router
    // plugin is not an expert.
    assert_eq!(routable, EXAMPLES.len() - 3);
    assert_eq!((stats.embedded as usize, stats.from_cache), (routable, 0));

    let second = host_with(test_policy(), real_engine());
    second
        .routing_index()
        .set_cache_dir(Some(cache.path().to_path_buf()));
    for rel in EXAMPLES {
        load(&second, rel).await;
    }
    let (_, stats) = index(&second);
    assert_eq!((stats.embedded, stats.from_cache as usize), (0, routable));

    // Both indexes route alike.
    let req = tessera_host::bindings::types::Request::from_prompt("What is 6 * 7?");
    let a = first.route(&req, Default::default()).await.unwrap();
    let b = second.route(&req, Default::default()).await.unwrap();
    assert_eq!(a.choices, b.choices);
    assert_eq!(a.top(), Some("calculator"));

    // A changed description is embedded again.
    let third = host_with(test_policy(), real_engine());
    third
        .routing_index()
        .set_cache_dir(Some(cache.path().to_path_buf()));
    load_as(&third, "plugins/calculator", |m| {
        m.description = "Exact arithmetic.".into();
    })
    .await;
    assert_eq!(third.routing_index().stats().embedded, 1);
}

// ----------------------------------------------- composition, fake model

async fn relays(count: usize) -> String {
    let ensemble = host_with(test_policy(), Arc::new(FakeEngine::echo()));
    for i in 1..=count {
        load_as(&ensemble, "tests/plugins/hostile", |m| {
            m.name = format!("relay-{i}");
            m.capabilities.experts = vec!["*".into()];
            m.limits.deadline_ms = Some(5_000);
        })
        .await;
    }
    load(&ensemble, "tests/plugins/hostile").await;
    start(ensemble).await
}

fn relay_request(chain: &str) -> Value {
    json!({
        "model": "relay-1",
        "messages": [{ "role": "user", "content": "relay" }],
        "metadata": { "chain": chain },
    })
}

#[tokio::test]
async fn nested_calls_show_in_the_trace_and_limits_hold_through_the_api() {
    let base = relays(7).await;

    let (status, _, body) = post(
        &base,
        "/v1/chat/completions",
        relay_request("relay-2,relay-3,relay-4"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "relay-2 > relay-3 > relay-4 > end of chain"
    );
    let trace = &body["tessera"]["traces"][0];
    assert_eq!(trace["expert"], "relay-1");
    let level1 = &trace["host_calls"][0];
    assert_eq!(level1["interface"], "tessera:expert/experts");
    assert_eq!(level1["nested"]["expert"], "relay-2");
    assert_eq!(level1["nested"]["depth"], 1);
    assert_eq!(
        level1["nested"]["host_calls"][0]["nested"]["host_calls"][0]["nested"]["expert"],
        "relay-4"
    );

    // Past the host's depth limit (4 nested calls), the deepest caller gets
    // the error and the request fails with it.
    let (status, _, body) = post(
        &base,
        "/v1/chat/completions",
        relay_request("relay-2,relay-3,relay-4,relay-5,relay-6,relay-7"),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("call depth limit of 4"), "{message}");

    // An expert calling itself is a cycle.
    let (status, _, body) = post(
        &base,
        "/v1/chat/completions",
        json!({ "model": "hostile", "messages": [{ "role": "user", "content": "cycle" }] }),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("call cycle refused: hostile -> hostile"),
        "{message}"
    );
}

#[tokio::test]
async fn tessera_auto_without_an_embedder_is_503_and_names_the_fix() {
    let ensemble = host_with(test_policy(), Arc::new(FakeEngine::echo()));
    load(&ensemble, "tests/plugins/echo").await;
    let base = start(ensemble).await;
    let (status, _, body) =
        post(&base, "/v1/chat/completions", chat("tessera/auto", "hi", 4)).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "router_unavailable");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--no-model"),
        "{body}"
    );
    let (status, _, body) = post(&base, "/v1/route", chat("echo", "hi", 4)).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], "model");
}

/// Fallback: a routed expert that refuses does not fail the request. The
/// next candidate answers, or, when every candidate refuses, the base
/// model; the answer names who refused and why (`tessera.fallbacks`,
/// `x-tessera-fallback`) and the metrics count it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_expert_falls_back_to_the_next_candidate_then_the_base_model() {
    let refuser = |m: &mut tessera_host::bundle::Manifest| {
        m.name = "refuser".into();
        m.description = "Counts calls: answers requests written as calls:N.".into();
        m.examples = vec!["calls:x".into(), "calls:y".into()];
    };
    let ask = |base: String| async move {
        let response = reqwest::Client::new()
            .post(format!("{base}/v1/chat/completions"))
            .json(&chat("tessera/auto", "calls:x", 8))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let fallback = response
            .headers()
            .get("x-tessera-fallback")
            .map(|v| v.to_str().unwrap().to_string());
        let body: Value = response.json().await.unwrap();
        (status, fallback, body)
    };

    // The refuser first, the assistant next.
    let ensemble = host_with(test_policy(), real_engine());
    load_as(&ensemble, "tests/plugins/echo", refuser).await;
    load(&ensemble, "plugins/assistant").await;
    let base = start(ensemble).await;
    let (status, fallback, body) = ask(base.clone()).await;
    assert_eq!(status, 200, "{body}");
    let tessera = &body["tessera"];
    assert_eq!(
        tessera["route"]["choices"][0]["expert"], "refuser",
        "{body}"
    );
    assert_eq!(tessera["answered_by"], "assistant", "{body}");
    assert_eq!(tessera["fallbacks"][0]["expert"], "refuser", "{body}");
    assert_eq!(tessera["fallbacks"][0]["ok"], false, "{body}");
    assert!(
        tessera["fallbacks"][0]["error"]
            .as_str()
            .unwrap()
            .contains("calls:N needs a number"),
        "{body}"
    );
    assert_eq!(fallback.as_deref(), Some("refuser"));
    assert!(
        metrics(&base)
            .await
            .contains("tessera_route_fallbacks_total{expert=\"refuser\"} 1")
    );

    // Only the refuser: the base model answers.
    let ensemble = host_with(test_policy(), real_engine());
    load_as(&ensemble, "tests/plugins/echo", refuser).await;
    let model = ensemble.model().model_name().to_string();
    let base = start(ensemble).await;
    let (status, fallback, body) = ask(base).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["tessera"]["answered_by"], model.as_str(), "{body}");
    assert_eq!(fallback.as_deref(), Some("refuser"));
    assert!(
        !body["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .is_empty()
    );
}
