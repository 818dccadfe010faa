//! Experts on a model served by an OpenAI-compatible upstream, over
//! loopback: host B (a Tessera host on the real model, standing in for
//! vLLM) serves the model; host A has no model of its own and serves
//! experts whose manifest names B's model. What A answers through B must
//! be what B answers alone; B going down must be contained (503 naming B,
//! the circuit opens, `/healthz` says so) and B coming back must be
//! noticed without restarting A.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};
use tessera_host::bundle::ModelGrant;
use tessera_host::ensemble::Ensemble;
use tessera_host::inference::upstream::{UpstreamEngine, UpstreamOptions};
use tessera_host::inference::{ModelEngine, NoModel};
use tessera_host::server::{self, AppState, ServerOptions};
use tessera_tests::{host_with, load, load_as, real_engine, test_policy};

/// A server on `address` (port 0: any) until `stop` is sent.
struct Running {
    base: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Running {
    async fn start(state: AppState, address: &str) -> Running {
        let listener = tokio::net::TcpListener::bind(address).await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server::serve(listener, state, async move {
            let _ = stopped.await;
        }));
        Running {
            base,
            stop: Some(stop),
            task,
        }
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }
}

/// Host B: the real model, with `assistant` and `json-extractor`.
async fn host_b() -> AppState {
    let ensemble = host_with(test_policy(), real_engine());
    load(&ensemble, "plugins/assistant").await;
    load(&ensemble, "plugins/json-extractor").await;
    AppState::new(ensemble, ServerOptions::default())
}

/// Host A: no model of its own; `b` is B's language model and `b-embed`
/// its embedder, and `assistant` and `json-extractor` run on `b`. The circuit opens after two
/// failures and probes again after half a second.
async fn host_a(b: &str) -> (AppState, Arc<Ensemble>) {
    let ensemble = host_with(test_policy(), Arc::new(NoModel));
    let engine = real_engine();
    for (name, id) in [
        ("b", engine.model_name()),
        ("b-embed", engine.embedder_name().unwrap()),
    ] {
        let mut options = UpstreamOptions::parse_flag(&format!("{name}={b}/v1#{id}")).unwrap();
        options.retries = 0;
        options.breaker_failures = 2;
        options.breaker_open = Duration::from_millis(500);
        ensemble
            .add_model(Arc::new(UpstreamEngine::new(options).unwrap()))
            .unwrap();
    }
    load_as(&ensemble, "plugins/assistant", |m| {
        m.capabilities.model = ModelGrant::Named("b".into());
    })
    .await;
    load_as(&ensemble, "plugins/json-extractor", |m| {
        m.capabilities.model = ModelGrant::Named("b".into());
    })
    .await;
    (
        AppState::new(ensemble.clone(), ServerOptions::default()),
        ensemble,
    )
}

async fn get_json(client: &reqwest::Client, url: &str) -> Value {
    client.get(url).send().await.unwrap().json().await.unwrap()
}

async fn post(client: &reqwest::Client, url: &str, body: &Value) -> (u16, Value) {
    let response = client.post(url).json(body).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn seeded(model: &str, question: &str) -> Value {
    json!({
        "model": model,
        "messages": [{"role": "user", "content": question}],
        "temperature": 0.8,
        "seed": 1234,
        "max_tokens": 24,
    })
}

/// The content and usage of a chat answer.
fn answer(body: &Value) -> (String, Value) {
    (
        body["choices"][0]["message"]["content"]
            .as_str()
            .unwrap_or_else(|| panic!("{body}"))
            .to_string(),
        body["usage"].clone(),
    )
}

/// The text of a streamed chat answer.
async fn streamed(client: &reqwest::Client, url: &str, body: &Value) -> String {
    let mut body = body.clone();
    body["stream"] = json!(true);
    let response = client.post(url).json(&body).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let mut text = String::new();
    let mut raw = String::new();
    let mut chunks = response.bytes_stream();
    while let Some(chunk) = chunks.next().await {
        raw.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
    }
    for line in raw.lines() {
        if let Some(data) = line.strip_prefix("data: ")
            && data != "[DONE]"
        {
            let chunk: Value = serde_json::from_str(data).unwrap();
            if let Some(piece) = chunk["choices"][0]["delta"]["content"].as_str() {
                text.push_str(piece);
            }
        }
    }
    assert!(raw.trim_end().ends_with("data: [DONE]"), "{raw}");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn experts_on_an_upstream_model_answer_as_the_upstream_does() {
    let b = Running::start(host_b().await, "127.0.0.1:0").await;
    let (a_state, a) = host_a(&b.base).await;
    let a_server = Running::start(a_state, "127.0.0.1:0").await;
    let client = reqwest::Client::new();
    let chat = |base: &str| format!("{base}/v1/chat/completions");
    let base_model = real_engine().model_name().to_string();

    // /v1/models lists the upstream models.
    let models = get_json(&client, &format!("{}/v1/models", a_server.base)).await;
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert!(ids.contains(&"b") && ids.contains(&"b-embed"), "{models}");

    // The model itself, through A, is B's answer: same text, same usage.
    let (status, through_a) = post(
        &client,
        &chat(&a_server.base),
        &seeded("b", "Name a colour."),
    )
    .await;
    assert_eq!(status, 200, "{through_a}");
    let (status, at_b) = post(
        &client,
        &chat(&b.base),
        &seeded(&base_model, "Name a colour."),
    )
    .await;
    assert_eq!(status, 200, "{at_b}");
    assert_eq!(answer(&through_a), answer(&at_b));

    // An expert on A whose model is `b` answers as the same expert on B.
    let question = seeded("assistant", "What is the capital of France?");
    let (status, expert_a) = post(&client, &chat(&a_server.base), &question).await;
    assert_eq!(status, 200, "{expert_a}");
    let (status, expert_b) = post(&client, &chat(&b.base), &question).await;
    assert_eq!(status, 200, "{expert_b}");
    assert_eq!(answer(&expert_a), answer(&expert_b));
    assert!(!answer(&expert_a).0.is_empty());

    // Streaming through the expert: the same text, token by token.
    assert_eq!(
        streamed(&client, &chat(&a_server.base), &question).await,
        answer(&expert_b).0
    );

    // Embeddings: B's vectors.
    let embed = |model: &str| json!({"model": model, "input": ["a cat", "a dog"]});
    let (status, e_a) = post(
        &client,
        &format!("{}/v1/embeddings", a_server.base),
        &embed("b-embed"),
    )
    .await;
    assert_eq!(status, 200, "{e_a}");
    let embedder = real_engine().embedder_name().unwrap().to_string();
    let (_, e_b) = post(
        &client,
        &format!("{}/v1/embeddings", b.base),
        &embed(&embedder),
    )
    .await;
    for i in 0..2 {
        let (x, y) = (&e_a["data"][i]["embedding"], &e_b["data"][i]["embedding"]);
        let x: Vec<f64> = serde_json::from_value(x.clone()).unwrap();
        let y: Vec<f64> = serde_json::from_value(y.clone()).unwrap();
        assert_eq!(x.len(), y.len());
        assert!(x.iter().zip(&y).all(|(p, q)| (p - q).abs() < 1e-5));
    }

    // `score`: an upstream's echoed prompt log-probabilities. B's echo
    // agrees with B's own `score` of the same continuation...
    let echoed: Value = client
        .post(format!("{}/v1/completions", b.base))
        .json(
            &json!({"model": base_model, "prompt": "The capital of France is Paris",
                      "echo": true, "logprobs": 1, "max_tokens": 0, "temperature": 0}),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let lp = &echoed["choices"][0]["logprobs"];
    let offsets = lp["text_offset"]
        .as_array()
        .unwrap_or_else(|| panic!("{echoed}"));
    let values = lp["token_logprobs"].as_array().unwrap();
    let paris: f64 = offsets
        .iter()
        .zip(values)
        .filter(|(o, _)| o.as_u64().unwrap() >= "The capital of France is".len() as u64)
        .map(|(_, v)| v.as_f64().unwrap())
        .sum();
    let direct = real_engine()
        .score("The capital of France is".into(), " Paris".into(), None)
        .await
        .unwrap();
    assert!(
        (paris - direct.logprob).abs() < 1e-4,
        "{paris} vs {}",
        direct.logprob
    );
    assert_eq!(
        echoed["choices"][0]["text"],
        "The capital of France is Paris"
    );
    // ... and an expert that chooses by `score-choices` answers through A
    // as it does on B.
    let extract = json!({
        "model": "json-extractor",
        "messages": [{"role": "user", "content":
            "Extract the name, age and city from this text as JSON: John Smith, 42, lives in Boston."}],
        "temperature": 0.0,
        "seed": 3,
    });
    let (status, extracted_a) = post(&client, &chat(&a_server.base), &extract).await;
    assert_eq!(status, 200, "{extracted_a}");
    let (status, extracted_b) = post(&client, &chat(&b.base), &extract).await;
    assert_eq!(status, 200, "{extracted_b}");
    // The same answer. Not the same usage: B reads the prompt once for
    // all the continuations of a `score-choices`; through an upstream each
    // continuation is sent with its prompt, and the usage counts what the
    // upstream read.
    assert_eq!(answer(&extracted_a).0, answer(&extracted_b).0);
    assert!(answer(&extracted_a).0.contains("Boston"), "{extracted_a}");

    // A validator replays an answer given through the upstream from the
    // record (every host call answered from it); the receipt names the
    // model, and rating the tokens needs the token ids, which an OpenAI
    // upstream does not give: the spot-check fails and says why.
    a.set_host_key(tessera_host::bundle::sign::SigningKey::generate("a"));
    let response = client
        .post(chat(&a_server.base))
        .header("x-tessera-record", "true")
        .json(&question)
        .send()
        .await
        .unwrap();
    let recorded: Value = response.json().await.unwrap();
    assert_eq!(
        recorded["tessera"]["record"]["receipt"]["body"]["model"]["name"], "b",
        "{recorded}"
    );
    let verify = format!("{}/v1/verify", a_server.base);
    let replay_only = json!({"record": recorded, "checks": {"replay": true, "logprobs": false}});
    let (status, verdict) = post(&client, &verify, &replay_only).await;
    assert_eq!(status, 200, "{verdict}");
    assert_eq!(verdict["pass"], true, "{verdict}");
    let (_, verdict) = post(&client, &verify, &json!({"record": recorded})).await;
    assert_eq!(verdict["pass"], false, "{verdict}");
    assert!(verdict.to_string().contains("0 token ids"), "{verdict}");

    // A second A, sharing nothing with the first, answers alike.
    let (a2_state, _) = host_a(&b.base).await;
    let a2 = Running::start(a2_state, "127.0.0.1:0").await;
    let (_, expert_a2) = post(&client, &chat(&a2.base), &question).await;
    assert_eq!(answer(&expert_a2), answer(&expert_a));
    a2.stop().await;

    // B goes down: 503 naming it, the circuit opens, /healthz says so.
    let b_address = b.base.trim_start_matches("http://").to_string();
    b.stop().await;
    for _ in 0..2 {
        let (status, body) = post(&client, &chat(&a_server.base), &question).await;
        assert_eq!(status, 503, "{body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("upstream `b`"), "{body}");
    }
    let (status, body) = post(&client, &chat(&a_server.base), &seeded("b", "hi")).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("circuit open"),
        "{body}"
    );
    let health = get_json(&client, &format!("{}/healthz", a_server.base)).await;
    assert_eq!(health["upstreams"]["b"], "open", "{health}");
    assert_eq!(health["status"], "degraded", "{health}");
    let metrics = client
        .get(format!("{}/metrics", a_server.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("tessera_upstream_circuit_open{model=\"b\"} 1"),
        "{metrics}"
    );

    // B comes back on the same address: A recovers by itself.
    let b = Running::start(host_b().await, &b_address).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (status, again) = post(&client, &chat(&a_server.base), &question).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(answer(&again), answer(&expert_b));
    let stats = a.model_named("b").unwrap().upstream().unwrap();
    assert_eq!(
        stats.circuit,
        tessera_host::inference::upstream::CircuitState::Closed
    );
    a_server.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn an_expert_asking_for_a_model_the_host_lacks_is_refused_by_name() {
    let ensemble = host_with(test_policy(), Arc::new(NoModel));
    let mut bundle = tessera_tests::bundle("plugins/assistant");
    bundle.manifest.capabilities.model = ModelGrant::Named("qwen2.5-7b".into());
    let Err(error) = ensemble.add(bundle).await else {
        panic!("an expert on a model the host lacks was loaded");
    };
    let error = error.to_string();
    assert!(
        error.contains("asks for model `qwen2.5-7b`, which this host does not serve")
            && error.contains("--upstream qwen2.5-7b=URL"),
        "{error}"
    );
}
