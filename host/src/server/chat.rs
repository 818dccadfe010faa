//! `/v1/chat/completions` and `/v1/completions`, whole or streamed.

use std::convert::Infallible;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::error::ApiError;
use super::metrics::{ExpertLabels, RequestLabels};
use super::openai::{self, Checked};
use super::{AppState, Served, Target, request_id};
use crate::audit::Trace;
use crate::ensemble::{Decision, Invocation, Strategy};
use crate::inference::{ChatMessage, ChatRole, Finish};

/// Events buffered for a slow streaming client before generation waits.
const STREAM_BUFFER: usize = 64;

/// The body, or 413/400 as the rejection says.
pub(super) fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            let mut e = ApiError::invalid(
                None,
                "the request body is larger than this server accepts (--max-body-bytes)",
            );
            e.status = StatusCode::PAYLOAD_TOO_LARGE;
            e.code = Some("body_too_large".into());
            e
        } else {
            ApiError::invalid(None, format!("cannot read the request body: {rejection}"))
        }
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    Chat,
    Completion,
}

impl Shape {
    fn endpoint(self) -> &'static str {
        match self {
            Shape::Chat => "chat",
            Shape::Completion => "completions",
        }
    }
}

#[derive(Clone)]
enum Input {
    Chat(Vec<ChatMessage>),
    Prompt(String),
}

/// One choice's answer.
struct Answer {
    text: String,
    finish: &'static str,
    prompt_tokens: u32,
    completion_tokens: u32,
    logprobs: Vec<(String, f32)>,
    /// What the expert reported (absent for the base model).
    expert: Option<Value>,
    /// How sure the answer is (0..1): the expert's report, else the mean
    /// token probability of its model calls.
    confidence: Option<f32>,
    /// Traces of the invocations behind the answer.
    traces: Vec<Trace>,
}

/// One request, parsed and checked.
struct Plan {
    shape: Shape,
    model: String,
    target: Target,
    inputs: Vec<Input>,
    checked: Checked,
    logprobs: bool,
    request_id: String,
    started: Instant,
    /// The router's decision, for `tessera/auto`.
    decision: Option<Decision>,
    /// Whether the caller asked for the invocation traces
    /// (`x-tessera-trace: true`).
    want_trace: bool,
}

pub(super) async fn chat_completions(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let mut served = Served::default();
    let plan = (|| {
        let body = body_bytes(body)?;
        let req: openai::ChatRequest = openai::parse_request(&body)?;
        let target = state.resolve(&req.model)?;
        // Only served names, in their canonical spelling, become metric
        // labels: anything else would let clients grow the label sets
        // without bound.
        served.model = state.canonical_id(&target);
        req.check()?;
        let mut checked = req.common.check(crate::inference::DEFAULT_MAX_TOKENS)?;
        if let Some(schema) = req.schema()? {
            if matches!(target, Target::Base) {
                return Err(ApiError::invalid(
                    Some("response_format".into()),
                    format!(
                        "the base model `{}` cannot honour a JSON schema; send it to an expert that does (json-extractor) or to tessera/auto",
                        req.model
                    ),
                ));
            }
            checked.metadata.push(("schema".into(), schema));
        }
        Ok::<_, ApiError>(Plan {
            shape: Shape::Chat,
            target,
            inputs: vec![Input::Chat(req.messages()?)],
            model: req.model,
            checked,
            logprobs: req.logprobs,
            request_id: request_id(&headers),
            started: Instant::now(),
            decision: None,
            want_trace: wants_trace(&headers),
        })
    })();
    run(state, plan, served).await
}

pub(super) async fn completions(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let mut served = Served::default();
    let plan = (|| {
        let body = body_bytes(body)?;
        let req: openai::CompletionRequest = openai::parse_request(&body)?;
        let target = state.resolve(&req.model)?;
        served.model = state.canonical_id(&target);
        let prompts = req.prompts()?;
        let checked = req.common.check(openai::COMPLETIONS_DEFAULT_MAX_TOKENS)?;
        let choices = prompts.len() as u64 * u64::from(checked.n);
        if choices > u64::from(openai::MAX_CHOICES) {
            return Err(ApiError::invalid(
                Some("prompt".into()),
                format!(
                    "{} prompts × n = {} asks for {choices} choices; at most {} per request",
                    prompts.len(),
                    checked.n,
                    openai::MAX_CHOICES
                ),
            ));
        }
        Ok::<_, ApiError>(Plan {
            shape: Shape::Completion,
            target,
            inputs: prompts.into_iter().map(Input::Prompt).collect(),
            model: req.model,
            checked,
            logprobs: req.logprobs.is_some(),
            request_id: request_id(&headers),
            started: Instant::now(),
            decision: None,
            want_trace: wants_trace(&headers),
        })
    })();
    run(state, plan, served).await
}

async fn run(state: AppState, plan: Result<Plan, ApiError>, mut served: Served) -> Response {
    let mut route_header = None;
    let result = match plan {
        Ok(plan) if matches!(plan.target, Target::Embedder) => Err(ApiError::invalid(
            Some("model".into()),
            format!(
                "`{}` is an embedding model: use POST /v1/embeddings, or pick a language model or expert from GET /v1/models",
                plan.model
            ),
        )),
        Ok(mut plan) => match state.admission().admit(&served.model).await {
            Err(e) => Err(e),
            Ok(mut admitted) => match decide(&state, &mut plan).await {
                Err(e) => Err(e),
                Ok(()) => {
                    match state.ensemble().reserve_slots(slots_needed(&state, &plan)) {
                        Ok(slots) => admitted.hold(slots),
                        Err(e) => {
                            let mut response = ApiError::from_slots(&e).into_response();
                            response.extensions_mut().insert(served);
                            return response;
                        }
                    }
                    route_header = plan.decision.as_ref().map(decision_header);
                    if plan.checked.stream {
                        let mut response = stream_response(state, plan, admitted, served).await;
                        if let Some(value) = route_header {
                            response.headers_mut().insert(ROUTE_HEADER, value);
                        }
                        return response;
                    }
                    let _admitted = admitted;
                    whole(&state, &plan, &mut served).await
                }
            },
        },
        Err(e) => Err(e),
    };
    let mut response = match result {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    if let Some(value) = route_header {
        response.headers_mut().insert(ROUTE_HEADER, value);
    }
    response.extensions_mut().insert(served);
    response
}

/// The sandbox instances `plan` may hold at once: each choice of each
/// input runs at the same time; MoA runs its experts and then the
/// aggregator, a cascade one stage at a time.
fn slots_needed(state: &AppState, plan: &Plan) -> u32 {
    let ensemble = state.ensemble();
    let slots = |name: &str| ensemble.expert(name).map_or(0, |e| ensemble.slots_for(&e));
    let per_choice = match &plan.target {
        Target::Base | Target::Embedder => 0,
        Target::Expert(e) => ensemble.slots_for(e),
        Target::Auto(strategy) => {
            let choices = plan.decision.as_ref().map_or(&[][..], |d| &d.choices[..]);
            match strategy {
                Strategy::Moa => {
                    choices.iter().map(|c| slots(&c.expert)).sum::<u32>()
                        + slots(&ensemble.router_config().aggregator)
                }
                _ => choices.iter().map(|c| slots(&c.expert)).max().unwrap_or(0),
            }
        }
    };
    per_choice
        .saturating_mul(plan.checked.n)
        .saturating_mul(plan.inputs.len() as u32)
}

/// The response header that carries the routing decision.
pub(super) const ROUTE_HEADER: &str = "x-tessera-route";
/// The request header that asks for the invocation traces in the answer.
pub(super) const TRACE_HEADER: &str = "x-tessera-trace";

fn wants_trace(headers: &HeaderMap) -> bool {
    headers
        .get(TRACE_HEADER)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| matches!(v.trim(), "1" | "true" | "yes"))
}

/// `strategy=moa; router=default; experts=calculator:0.712,summariser:0.433`
/// (`experts=base` when the base model answers).
fn decision_header(decision: &Decision) -> HeaderValue {
    let experts = if decision.choices.is_empty() {
        "base".to_string()
    } else {
        decision
            .choices
            .iter()
            .map(|c| format!("{}:{:.3}", c.expert, c.score))
            .collect::<Vec<_>>()
            .join(",")
    };
    let text = format!(
        "strategy={}; router={}; experts={experts}",
        decision.strategy.as_str(),
        decision.router
    );
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static("unprintable"))
}

/// For `tessera/auto`: ask the router who answers, before anything runs.
async fn decide(state: &AppState, plan: &mut Plan) -> Result<(), ApiError> {
    let Target::Auto(strategy) = plan.target else {
        return Ok(());
    };
    let req = request_for(plan, &plan.inputs[0], 0);
    let decision = state
        .ensemble()
        .route(&req, strategy)
        .await
        .map_err(|e| ApiError::from_route(&e))?;
    state.record_decision(&decision);
    tracing::debug!(
        request_id = %plan.request_id,
        strategy = decision.strategy.as_str(),
        router = %decision.router,
        experts = ?decision.choices,
        plugin_error = ?decision.plugin_error,
        "routed"
    );
    plan.decision = Some(decision);
    Ok(())
}

/// `POST /v1/route`: the decision `tessera/auto` would make for a chat
/// request, without running any expert.
pub(super) async fn route(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let mut served = Served::default();
    let result = async {
        let body = body_bytes(body)?;
        let req: openai::ChatRequest = openai::parse_request(&body)?;
        let target = state.resolve(&req.model)?;
        if !matches!(target, Target::Auto(_)) {
            return Err(ApiError::invalid(
                Some("model".into()),
                format!(
                    "`{}` is not routed; use tessera/auto, tessera/auto:moa or tessera/auto:cascade",
                    req.model
                ),
            ));
        }
        served.model = state.canonical_id(&target);
        let checked = req.common.check(crate::inference::DEFAULT_MAX_TOKENS)?;
        let mut plan = Plan {
            shape: Shape::Chat,
            target,
            inputs: vec![Input::Chat(req.messages()?)],
            model: req.model,
            checked,
            logprobs: false,
            request_id: request_id(&headers),
            started: Instant::now(),
            decision: None,
            want_trace: false,
        };
        let _admitted = state.admission().admit(&served.model).await?;
        decide(&state, &mut plan).await?;
        let decision = plan.decision.expect("decided");
        let mut response = axum::Json(json!({
            "object": "tessera.route",
            "model": plan.model,
            "decision": decision,
        }))
        .into_response();
        response
            .headers_mut()
            .insert(ROUTE_HEADER, decision_header(&decision));
        Ok::<_, ApiError>(response)
    }
    .await;
    let mut response = result.unwrap_or_else(IntoResponse::into_response);
    response.extensions_mut().insert(served);
    response
}

/// Answer every choice, then reply once.
async fn whole(state: &AppState, plan: &Plan, served: &mut Served) -> Result<Response, ApiError> {
    let n = plan.checked.n;
    let jobs = plan
        .inputs
        .iter()
        .flat_map(|input| (0..n).map(move |i| answer(state, plan, input, i, None)));
    let answers = futures_util::future::join_all(jobs).await;
    let answers = answers.into_iter().collect::<Result<Vec<_>, _>>()?;
    // A prompt is read once however many choices it gets.
    let prompt_tokens: u32 = answers
        .iter()
        .step_by(n as usize)
        .map(|a| a.prompt_tokens)
        .sum();
    let completion_tokens: u32 = answers.iter().map(|a| a.completion_tokens).sum();
    served.prompt_tokens = prompt_tokens;
    served.completion_tokens = completion_tokens;
    let id = response_id(plan);
    let created = super::unix_now();
    let choices: Vec<Value> = answers
        .iter()
        .enumerate()
        .map(|(index, a)| match plan.shape {
            Shape::Chat => json!({
                "index": index,
                "message": { "role": "assistant", "content": a.text },
                "logprobs": plan.logprobs.then(|| chat_logprobs(&a.logprobs)),
                "finish_reason": a.finish,
            }),
            Shape::Completion => json!({
                "index": index,
                "text": a.text,
                "logprobs": plan.logprobs.then(|| completion_logprobs(&a.logprobs)),
                "finish_reason": a.finish,
            }),
        })
        .collect();
    let mut body = json!({
        "id": id,
        "object": match plan.shape { Shape::Chat => "chat.completion", Shape::Completion => "text_completion" },
        "created": created,
        "model": plan.model,
        "choices": choices,
        "usage": usage(prompt_tokens, completion_tokens),
    });
    if let Some(first) = answers.first()
        && let Some(tessera) = tessera_field(plan, first)
    {
        body["tessera"] = tessera;
    }
    Ok(axum::Json(body).into_response())
}

fn usage(prompt: u32, completion: u32) -> Value {
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    })
}

fn response_id(plan: &Plan) -> String {
    let prefix = match plan.shape {
        Shape::Chat => "chatcmpl",
        Shape::Completion => "cmpl",
    };
    let id = if plan.request_id == "-" {
        uuid::Uuid::new_v4().to_string()
    } else {
        plan.request_id.clone()
    };
    format!("{prefix}-{id}")
}

fn chat_logprobs(logprobs: &[(String, f32)]) -> Value {
    let content: Vec<Value> = logprobs
        .iter()
        .map(|(token, logprob)| {
            json!({
                "token": token,
                "logprob": logprob,
                "bytes": token.as_bytes(),
                "top_logprobs": [],
            })
        })
        .collect();
    json!({ "content": content })
}

fn completion_logprobs(logprobs: &[(String, f32)]) -> Value {
    let mut offset = 0;
    let mut offsets = Vec::with_capacity(logprobs.len());
    for (token, _) in logprobs {
        offsets.push(offset);
        offset += token.len();
    }
    json!({
        "tokens": logprobs.iter().map(|(t, _)| t).collect::<Vec<_>>(),
        "token_logprobs": logprobs.iter().map(|(_, l)| l).collect::<Vec<_>>(),
        "top_logprobs": null,
        "text_offset": offsets,
    })
}

/// The `tessera` field of an answer: what the expert reported, the routing
/// decision and, when asked for, the traces.
fn tessera_field(plan: &Plan, answer: &Answer) -> Option<Value> {
    let mut field = answer.expert.clone();
    if let Some(decision) = &plan.decision {
        let field = field.get_or_insert_with(|| json!({}));
        field["route"] = serde_json::to_value(decision).unwrap_or(Value::Null);
    }
    if plan.want_trace {
        let field = field.get_or_insert_with(|| json!({}));
        field["traces"] = serde_json::to_value(&answer.traces).unwrap_or(Value::Null);
    }
    field
}

/// The request an expert gets for choice `choice` of `input`.
fn request_for(plan: &Plan, input: &Input, choice: u32) -> crate::bindings::types::Request {
    let messages = match input {
        Input::Chat(m) => m.clone(),
        Input::Prompt(p) => vec![ChatMessage {
            role: ChatRole::User,
            content: p.clone(),
        }],
    };
    let mut checked = plan.checked.clone();
    checked.sampling.seed = checked
        .sampling
        .seed
        .map(|s| s.wrapping_add(u64::from(choice)));
    openai::expert_request(&messages, &checked, &plan.request_id)
}

/// Answer choice `choice` of `input`, streaming text to `deltas` if given.
async fn answer(
    state: &AppState,
    plan: &Plan,
    input: &Input,
    choice: u32,
    deltas: Option<crate::inference::Deltas>,
) -> Result<Answer, ApiError> {
    match &plan.target {
        Target::Base => answer_base(state, plan, input, choice, deltas).await,
        Target::Expert(expert) => {
            let req = request_for(plan, input, choice);
            let invocation = invoke(state, expert.name(), req, deltas).await;
            expert_answer(invocation)
        }
        Target::Auto(_) => answer_auto(state, plan, input, choice, deltas).await,
        Target::Embedder => unreachable!("refused before admission"),
    }
}

async fn answer_base(
    state: &AppState,
    plan: &Plan,
    input: &Input,
    choice: u32,
    deltas: Option<crate::inference::Deltas>,
) -> Result<Answer, ApiError> {
    let engine = state.ensemble().model().clone();
    let mut params = plan.checked.params.clone();
    params.seed = params.seed.map(|s| s.wrapping_add(u64::from(choice)));
    let call = async {
        match (input.clone(), deltas) {
            (Input::Chat(m), None) => engine.chat(m, params, None).await,
            (Input::Chat(m), Some(d)) => engine.chat_streaming(m, params, None, d).await,
            (Input::Prompt(p), None) => engine.complete(p, params, None).await,
            (Input::Prompt(p), Some(d)) => engine.complete_streaming(p, params, None, d).await,
        }
    };
    let timeout = state.options().request_timeout;
    let generation = tokio::time::timeout(timeout, call)
        .await
        .map_err(|_| {
            ApiError::deadline(format!(
                "the model did not finish within {} s (--request-timeout-secs)",
                timeout.as_secs()
            ))
        })?
        .map_err(|e| {
            let mut e = ApiError::from_model(&e);
            if e.status == StatusCode::BAD_REQUEST {
                e.param = Some(
                    match plan.shape {
                        Shape::Chat => "messages",
                        Shape::Completion => "prompt",
                    }
                    .into(),
                );
            }
            e
        })?;
    let confidence = mean_probability(generation.token_logprobs.iter().map(|(_, l)| *l));
    Ok(Answer {
        text: generation.text,
        finish: match generation.finish {
            Finish::Stop => "stop",
            Finish::Length => "length",
        },
        prompt_tokens: generation.prompt_tokens,
        completion_tokens: generation.completion_tokens,
        logprobs: generation.token_logprobs,
        expert: None,
        confidence,
        traces: Vec::new(),
    })
}

/// exp(mean log-probability), or `None` for no tokens.
fn mean_probability(logprobs: impl Iterator<Item = f32>) -> Option<f32> {
    let (sum, n) = logprobs.fold((0.0f64, 0u32), |(s, n), l| (s + f64::from(l), n + 1));
    (n > 0).then(|| (sum / f64::from(n)).exp() as f32)
}

/// Run expert `name`, counting its fuel.
async fn invoke(
    state: &AppState,
    name: &str,
    req: crate::bindings::types::Request,
    deltas: Option<crate::inference::Deltas>,
) -> Invocation {
    let ensemble = state.ensemble();
    let invocation = match deltas {
        Some(d) => ensemble.invoke_streaming(name, req, d).await,
        None => ensemble.invoke(name, req).await,
    };
    state
        .metrics()
        .fuel
        .get_or_create(&ExpertLabels {
            expert: name.to_string(),
        })
        .inc_by(invocation.trace.fuel_consumed);
    invocation
}

/// An expert's invocation as an answer, or its error.
fn expert_answer(invocation: Invocation) -> Result<Answer, ApiError> {
    let trace = invocation.trace;
    let response = invocation.result.map_err(|e| ApiError::from_invoke(&e))?;
    let metadata: serde_json::Map<String, Value> = response
        .metadata
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    let confidence = response
        .confidence
        .or_else(|| trace.mean_logprob.map(|l| l.exp()));
    Ok(Answer {
        finish: "stop",
        prompt_tokens: response.usage.prompt_tokens,
        completion_tokens: response.usage.completion_tokens,
        logprobs: Vec::new(),
        expert: Some(json!({
            "expert": trace.expert,
            "version": trace.version,
            "confidence": response.confidence,
            "metadata": metadata,
            "duration_ms": trace.duration_us / 1000,
            "fuel": trace.fuel_consumed,
            "model_calls": trace.model_calls,
        })),
        text: response.content,
        confidence,
        traces: vec![trace],
    })
}

/// `tessera/auto`: run the strategy the router decided on.
async fn answer_auto(
    state: &AppState,
    plan: &Plan,
    input: &Input,
    choice: u32,
    deltas: Option<crate::inference::Deltas>,
) -> Result<Answer, ApiError> {
    let decision = plan.decision.as_ref().expect("routed before answering");
    if decision.choices.is_empty() {
        let mut answer = answer_base(state, plan, input, choice, deltas).await?;
        answer.expert = Some(json!({ "answered_by": state.ensemble().model().model_name() }));
        return Ok(answer);
    }
    let req = request_for(plan, input, choice);
    let mut answer = match decision.strategy {
        Strategy::Route => {
            let expert = &decision.choices[0].expert;
            expert_answer(invoke(state, expert, req, deltas).await)?
        }
        Strategy::Moa => fan_out(state, decision, req, deltas).await?,
        Strategy::Cascade => cascade(state, decision, req).await?,
    };
    if let Some(field) = answer.expert.as_mut() {
        let by = field
            .get("expert")
            .cloned()
            .unwrap_or_else(|| json!(state.ensemble().model().model_name()));
        field["answered_by"] = by;
    }
    Ok(answer)
}

/// Mixture of agents: the chosen experts answer in parallel; the
/// aggregator writes the final answer from theirs. With one answer left
/// (or an aggregator that fails) the best-ranked answer stands.
async fn fan_out(
    state: &AppState,
    decision: &Decision,
    req: crate::bindings::types::Request,
    deltas: Option<crate::inference::Deltas>,
) -> Result<Answer, ApiError> {
    let invocations = futures_util::future::join_all(
        decision
            .choices
            .iter()
            .map(|c| invoke(state, &c.expert, req.clone(), None)),
    )
    .await;
    let mut traces = Vec::new();
    let mut report = Vec::new();
    let mut answers = Vec::new();
    let mut first_error = None;
    for (choice, invocation) in decision.choices.iter().zip(invocations) {
        traces.push(invocation.trace.clone());
        match expert_answer(invocation) {
            Ok(answer) => {
                report.push(
                    json!({ "expert": choice.expert, "ok": true, "confidence": answer.confidence }),
                );
                answers.push((choice.expert.clone(), answer));
            }
            Err(e) => {
                report.push(json!({ "expert": choice.expert, "ok": false, "error": e.message }));
                first_error.get_or_insert(e);
            }
        }
    }
    let (mut prompt_tokens, mut completion_tokens) =
        answers.iter().fold((0, 0), |(p, c), (_, a)| {
            (p + a.prompt_tokens, c + a.completion_tokens)
        });
    let Some((_, best)) = answers.first() else {
        let mut e = first_error.expect("no answers means an error");
        e.message = format!(
            "every expert of the fan-out failed; the first: {}",
            e.message
        );
        return Err(e);
    };
    let aggregator = state.ensemble().router_config().aggregator;
    let mut aggregation_error = None;
    let mut final_answer = None;
    if answers.len() > 1 {
        let mut agg_req = req.clone();
        for (expert, answer) in &answers {
            agg_req
                .metadata
                .push(("answer-expert".into(), expert.clone()));
            agg_req
                .metadata
                .push(("answer".into(), answer.text.clone()));
        }
        let invocation = invoke(state, &aggregator, agg_req, deltas).await;
        traces.push(invocation.trace.clone());
        match expert_answer(invocation) {
            Ok(a) => final_answer = Some(a),
            Err(e) => {
                tracing::warn!(aggregator = %aggregator, error = %e, "the aggregator failed; the best-ranked answer stands");
                aggregation_error = Some(e.message);
            }
        }
    }
    let aggregated = final_answer.is_some();
    let mut answer = match final_answer {
        Some(a) => a,
        None => {
            let (_, a) = &answers[0];
            Answer {
                text: a.text.clone(),
                finish: a.finish,
                prompt_tokens: 0,
                completion_tokens: 0,
                logprobs: Vec::new(),
                expert: best.expert.clone(),
                confidence: a.confidence,
                traces: Vec::new(),
            }
        }
    };
    if aggregated {
        prompt_tokens += answer.prompt_tokens;
        completion_tokens += answer.completion_tokens;
    }
    answer.prompt_tokens = prompt_tokens;
    answer.completion_tokens = completion_tokens;
    answer.traces = traces;
    let field = answer.expert.get_or_insert_with(|| json!({}));
    field["fan_out"] = json!(report);
    field["aggregator"] = json!(aggregated.then_some(&aggregator));
    if let Some(error) = aggregation_error {
        field["aggregator_error"] = json!(error);
    }
    Ok(answer)
}

/// Cascade: the chosen experts, cheapest first, until one answers with a
/// confidence at or above the threshold; if none does, the most
/// confident answer stands.
async fn cascade(
    state: &AppState,
    decision: &Decision,
    req: crate::bindings::types::Request,
) -> Result<Answer, ApiError> {
    let ensemble = state.ensemble();
    let threshold = ensemble.router_config().cascade_threshold;
    let mut order: Vec<(u32, usize)> = decision
        .choices
        .iter()
        .enumerate()
        .map(|(rank, c)| {
            let cost = ensemble
                .expert(&c.expert)
                .map_or(u32::MAX, |e| e.manifest.routing.cost);
            (cost, rank)
        })
        .collect();
    order.sort();
    let mut traces = Vec::new();
    let mut stages = Vec::new();
    let mut best: Option<Answer> = None;
    let mut first_error = None;
    let (mut prompt_tokens, mut completion_tokens) = (0, 0);
    for (cost, rank) in order {
        let expert = &decision.choices[rank].expert;
        let invocation = invoke(state, expert, req.clone(), None).await;
        traces.push(invocation.trace.clone());
        let answer = match expert_answer(invocation) {
            Ok(a) => a,
            Err(e) => {
                stages.push(
                    json!({ "expert": expert, "cost": cost, "ok": false, "error": e.message }),
                );
                first_error.get_or_insert(e);
                continue;
            }
        };
        prompt_tokens += answer.prompt_tokens;
        completion_tokens += answer.completion_tokens;
        let confidence = answer.confidence.unwrap_or(0.0);
        let accepted = confidence >= threshold;
        stages.push(json!({
            "expert": expert, "cost": cost, "ok": true,
            "confidence": answer.confidence, "accepted": accepted,
        }));
        if !accepted {
            state
                .metrics()
                .escalations
                .get_or_create(&ExpertLabels {
                    expert: expert.clone(),
                })
                .inc();
        }
        if best
            .as_ref()
            .is_none_or(|b| confidence > b.confidence.unwrap_or(0.0))
        {
            best = Some(answer);
        }
        if accepted {
            break;
        }
    }
    let Some(mut answer) = best else {
        let mut e = first_error.expect("no answers means an error");
        e.message = format!(
            "every expert of the cascade failed; the first: {}",
            e.message
        );
        return Err(e);
    };
    answer.prompt_tokens = prompt_tokens;
    answer.completion_tokens = completion_tokens;
    answer.traces = traces;
    let field = answer.expert.get_or_insert_with(|| json!({}));
    field["cascade"] = json!({ "threshold": threshold, "stages": stages });
    Ok(answer)
}

/// What the generating side of a stream sends to the response.
enum Item {
    Event(Event),
    /// A failure before anything was sent: answered with its status.
    Failed(ApiError),
}

/// Start generating, wait for the first text (or a failure, which gets
/// its own HTTP status), then stream the rest as server-sent events.
async fn stream_response(
    state: AppState,
    plan: Plan,
    admitted: super::admission::Admitted,
    mut served: Served,
) -> Response {
    let (tx, mut rx) = mpsc::channel::<Item>(STREAM_BUFFER);
    let model = state.canonical_id(&plan.target);
    let label = model.clone();
    let endpoint = plan.shape.endpoint();
    let driver_state = state.clone();
    tokio::spawn(async move {
        let _admitted = admitted;
        let started = plan.started;
        let outcome = tokio::select! {
            // The client went away: dropping `produce` drops the
            // invocation and the engine's reply channel, which cancels the
            // generation.
            _ = tx.closed() => None,
            outcome = produce(&driver_state, &plan, &tx) => Some(outcome),
        };
        let metrics = driver_state.metrics();
        let (status, tokens) = match outcome {
            None => {
                metrics
                    .cancelled
                    .get_or_create(&ExpertLabels {
                        expert: label.clone(),
                    })
                    .inc();
                (499, (0, 0))
            }
            Some(Ok(tokens)) => (200, tokens),
            Some(Err(status)) => (status, (0, 0)),
        };
        let seconds = started.elapsed().as_secs_f64();
        metrics.record(
            RequestLabels {
                endpoint: endpoint.to_string(),
                model: label.clone(),
                status,
            },
            seconds,
        );
        metrics.record_tokens(&label, tokens.0, tokens.1);
        tracing::info!(
            request_id = %plan.request_id,
            path = endpoint,
            model = label,
            status,
            stream = true,
            duration_ms = (seconds * 1000.0).round() as u64,
            prompt_tokens = tokens.0,
            completion_tokens = tokens.1,
            "request"
        );
    });

    served.streaming = true;
    served.model = model;
    let first = match rx.recv().await {
        Some(Item::Event(event)) => event,
        Some(Item::Failed(error)) => {
            // Recorded by the driver; not again by `track`.
            let mut response = error.into_response();
            response.extensions_mut().insert(served);
            return response;
        }
        None => {
            let mut response = ApiError::internal("-").into_response();
            response.extensions_mut().insert(served);
            return response;
        }
    };
    let rest = stream::unfold(rx, |mut rx| async move {
        match rx.recv().await {
            Some(Item::Event(event)) => Some((Ok::<_, Infallible>(event), rx)),
            _ => None,
        }
    });
    let events = stream::iter([Ok(first)]).chain(rest);
    let mut response = Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response();
    response.extensions_mut().insert(served);
    response
}

use futures_util::StreamExt as _;

/// Generate and send the events of one stream. Returns the token counts,
/// or the status of a failure.
async fn produce(
    state: &AppState,
    plan: &Plan,
    tx: &mpsc::Sender<Item>,
) -> Result<(u32, u32), u16> {
    let (delta_tx, mut delta_rx) = mpsc::unbounded_channel();
    let work = answer(state, plan, &plan.inputs[0], 0, Some(delta_tx));
    tokio::pin!(work);
    let id = response_id(plan);
    let created = super::unix_now();
    let chunk = |delta: Option<&str>, finish: Option<&str>, first: bool| -> Value {
        match plan.shape {
            Shape::Chat => {
                let mut d = serde_json::Map::new();
                if first {
                    d.insert("role".into(), json!("assistant"));
                }
                if let Some(text) = delta {
                    d.insert("content".into(), json!(text));
                }
                json!({
                    "id": id, "object": "chat.completion.chunk", "created": created,
                    "model": plan.model,
                    "choices": [{ "index": 0, "delta": d, "logprobs": null, "finish_reason": finish }],
                })
            }
            Shape::Completion => json!({
                "id": id, "object": "text_completion", "created": created, "model": plan.model,
                "choices": [{ "index": 0, "text": delta.unwrap_or(""), "logprobs": null, "finish_reason": finish }],
            }),
        }
    };
    let send = |value: Value| async move {
        let event = Event::default().data(value.to_string());
        tx.send(Item::Event(event)).await.is_ok()
    };
    let mut streamed = String::new();
    let mut first = true;
    let result = loop {
        tokio::select! {
            biased;
            Some(delta) = delta_rx.recv() => {
                if delta.is_empty() {
                    continue;
                }
                if first {
                    state.metrics().first_token.get_or_create(&ExpertLabels {
                        expert: plan.model.clone(),
                    }).observe(plan.started.elapsed().as_secs_f64());
                }
                streamed.push_str(&delta);
                send(chunk(Some(&delta), None, first)).await;
                first = false;
            }
            result = &mut work => break result,
        }
    };
    // Text sent after the last poll of the receiver.
    while let Ok(delta) = delta_rx.try_recv() {
        if !delta.is_empty() {
            streamed.push_str(&delta);
            send(chunk(Some(&delta), None, first)).await;
            first = false;
        }
    }
    let answer = match result {
        Ok(answer) => answer,
        Err(error) => {
            let status = error.status.as_u16();
            if first {
                let _ = tx.send(Item::Failed(error)).await;
            } else {
                send(error.body()).await;
                let _ = tx.send(Item::Event(Event::default().data("[DONE]"))).await;
            }
            return Err(status);
        }
    };
    // An expert's answer may go on after (or trim) what `stream-answer`
    // streamed; send what the client has not seen yet.
    match remainder(&streamed, &answer.text) {
        Some(rest) if !rest.is_empty() => {
            send(chunk(Some(rest), None, first)).await;
            first = false;
        }
        Some(_) => {}
        None => {
            let mut error = ApiError::internal(&plan.request_id);
            error.status = StatusCode::UNPROCESSABLE_ENTITY;
            error.kind = "expert_error";
            error.code = Some("stream_mismatch".into());
            error.message = "the expert's answer does not begin with the text it streamed (model.stream-answer); the streamed text is not its answer".into();
            send(error.body()).await;
            let _ = tx.send(Item::Event(Event::default().data("[DONE]"))).await;
            return Err(422);
        }
    }
    let mut last = chunk(None, Some(answer.finish), first);
    if plan.logprobs {
        last["choices"][0]["logprobs"] = match plan.shape {
            Shape::Chat => chat_logprobs(&answer.logprobs),
            Shape::Completion => completion_logprobs(&answer.logprobs),
        };
    }
    last["usage"] = usage(answer.prompt_tokens, answer.completion_tokens);
    if let Some(tessera) = tessera_field(plan, &answer) {
        last["tessera"] = tessera;
    }
    send(last).await;
    if plan.checked.include_usage {
        send(json!({
            "id": id, "object": match plan.shape { Shape::Chat => "chat.completion.chunk", Shape::Completion => "text_completion" },
            "created": created, "model": plan.model, "choices": [],
            "usage": usage(answer.prompt_tokens, answer.completion_tokens),
        }))
        .await;
    }
    let _ = tx.send(Item::Event(Event::default().data("[DONE]"))).await;
    Ok((answer.prompt_tokens, answer.completion_tokens))
}

/// What of `answer` follows the `streamed` text, comparing without the
/// whitespace around both; `None` when the answer does not begin with it.
fn remainder<'a>(streamed: &str, answer: &'a str) -> Option<&'a str> {
    let s = streamed.trim();
    let a = answer.trim();
    let rest = a.strip_prefix(s)?;
    if streamed.is_empty() {
        return Some(answer);
    }
    Some(rest)
}

#[cfg(test)]
mod tests {
    use super::remainder;

    #[test]
    fn the_remainder_follows_the_streamed_text() {
        assert_eq!(remainder("", "whole answer"), Some("whole answer"));
        assert_eq!(remainder("The answer", "The answer is 4."), Some(" is 4."));
        assert_eq!(remainder(" Paris \n", "Paris"), Some(""));
        assert_eq!(remainder("Paris", "London"), None);
    }
}
