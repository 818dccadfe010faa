//! `/v1/chat/completions` and `/v1/completions`, whole or streamed.

use std::convert::Infallible;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::error::ApiError;
use super::metrics::{ExpertLabels, RequestLabels};
use super::openai::{self, Checked};
use super::{AppState, Served, Target, request_id};
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
        // Only served names become metric labels: unknown ones would let
        // clients grow the label sets without bound.
        served.model = req.model.clone();
        req.check()?;
        let checked = req.common.check(crate::inference::DEFAULT_MAX_TOKENS)?;
        Ok::<_, ApiError>(Plan {
            shape: Shape::Chat,
            target,
            inputs: vec![Input::Chat(req.messages()?)],
            model: req.model,
            checked,
            logprobs: req.logprobs,
            request_id: request_id(&headers),
            started: Instant::now(),
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
        served.model = req.model.clone();
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
        })
    })();
    run(state, plan, served).await
}

async fn run(state: AppState, plan: Result<Plan, ApiError>, mut served: Served) -> Response {
    let result = match plan {
        Ok(plan) if matches!(plan.target, Target::Embedder) => Err(ApiError::invalid(
            Some("model".into()),
            format!(
                "`{}` is an embedding model: use POST /v1/embeddings, or pick a language model or expert from GET /v1/models",
                plan.model
            ),
        )),
        Ok(plan) => match state.admission().admit().await {
            Err(e) => Err(e),
            Ok(admitted) if plan.checked.stream => {
                return stream_response(state, plan, admitted, served).await;
            }
            Ok(_admitted) => whole(&state, &plan, &mut served).await,
        },
        Err(e) => Err(e),
    };
    let mut response = match result {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
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
    if let Some(expert) = answers.first().and_then(|a| a.expert.clone()) {
        body["tessera"] = expert;
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

/// Answer choice `choice` of `input`, streaming text to `deltas` if given.
async fn answer(
    state: &AppState,
    plan: &Plan,
    input: &Input,
    choice: u32,
    deltas: Option<crate::inference::Deltas>,
) -> Result<Answer, ApiError> {
    let checked = &plan.checked;
    match &plan.target {
        Target::Base => {
            let engine = state.ensemble().model().clone();
            let mut params = checked.params.clone();
            params.seed = params.seed.map(|s| s.wrapping_add(u64::from(choice)));
            let call = async {
                match (input.clone(), deltas) {
                    (Input::Chat(m), None) => engine.chat(m, params, None).await,
                    (Input::Chat(m), Some(d)) => engine.chat_streaming(m, params, None, d).await,
                    (Input::Prompt(p), None) => engine.complete(p, params, None).await,
                    (Input::Prompt(p), Some(d)) => {
                        engine.complete_streaming(p, params, None, d).await
                    }
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
            })
        }
        Target::Expert(expert) => {
            let messages = match input {
                Input::Chat(m) => m.clone(),
                Input::Prompt(p) => vec![ChatMessage {
                    role: ChatRole::User,
                    content: p.clone(),
                }],
            };
            let mut checked = checked.clone();
            checked.sampling.seed = checked
                .sampling
                .seed
                .map(|s| s.wrapping_add(u64::from(choice)));
            let req = openai::expert_request(&messages, &checked, &plan.request_id);
            let ensemble = state.ensemble();
            let invocation = match deltas {
                Some(d) => ensemble.invoke_streaming(expert.name(), req, d).await,
                None => ensemble.invoke(expert.name(), req).await,
            };
            let trace = &invocation.trace;
            state
                .metrics()
                .fuel
                .get_or_create(&ExpertLabels {
                    expert: expert.name().to_string(),
                })
                .inc_by(trace.fuel_consumed);
            let response = invocation.result.map_err(|e| ApiError::from_invoke(&e))?;
            let metadata: serde_json::Map<String, Value> = response
                .metadata
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect();
            Ok(Answer {
                finish: "stop",
                prompt_tokens: response.usage.prompt_tokens,
                completion_tokens: response.usage.completion_tokens,
                logprobs: Vec::new(),
                expert: Some(json!({
                    "expert": expert.name(),
                    "version": expert.manifest.version,
                    "confidence": response.confidence,
                    "metadata": metadata,
                    "duration_ms": trace.duration_us / 1000,
                    "fuel": trace.fuel_consumed,
                    "model_calls": trace.model_calls,
                })),
                text: response.content,
            })
        }
        Target::Embedder => unreachable!("refused before admission"),
    }
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
    let model = plan.model.clone();
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
                        expert: plan.model.clone(),
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
                model: plan.model.clone(),
                status,
            },
            seconds,
        );
        metrics.record_tokens(&plan.model, tokens.0, tokens.1);
        tracing::info!(
            request_id = %plan.request_id,
            path = endpoint,
            model = plan.model,
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
    if let Some(expert) = &answer.expert {
        last["tessera"] = expert.clone();
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
