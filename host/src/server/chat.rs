//! `/v1/chat/completions`, `/v1/completions` and `/v1/route`: HTTP in,
//! [`Ask`]s to the ensemble, OpenAI JSON out. Who answers and how is the
//! ensemble's business ([`crate::ensemble::Ensemble::answer`]).

use std::time::Instant;

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::error::ApiError;
use super::metrics::ExpertLabels;
use super::openai::{self, RequestOptions};
use super::render::{Completion, Endpoint, Header, Usage};
use super::{AppState, Served, request_id};
use crate::ensemble::answer::Outcome;
use crate::ensemble::{AnswerError, Ask, Decision, Target};
use crate::inference::Prompt;

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

/// One request, parsed and checked.
pub(super) struct Plan {
    pub endpoint: Endpoint,
    /// The model as the client spelled it (echoed in the response).
    pub model: String,
    pub target: Target,
    /// One per input (completions may send several prompts).
    pub asks: Vec<Ask>,
    pub options: RequestOptions,
    pub logprobs: bool,
    pub request_id: String,
    pub started: Instant,
    /// The router's decision, for `tessera/auto`.
    pub decision: Option<Decision>,
    /// Whether the caller asked for the invocation traces
    /// (`x-tessera-trace: true`).
    pub want_trace: bool,
    /// Whether the caller asked for the answering expert's signed receipt
    /// (`x-tessera-receipt: true`).
    pub want_receipt: bool,
    /// Whether the caller asked for the answering expert's whole record,
    /// for replay (`x-tessera-record: true`).
    pub want_record: bool,
}

impl Plan {
    fn new(
        state: &AppState,
        endpoint: Endpoint,
        target: Target,
        parts: Parts,
        headers: &HeaderMap,
    ) -> Plan {
        let Parts {
            model,
            inputs,
            options,
            logprobs,
        } = parts;
        let request_id = request_id(headers);
        let asks = inputs
            .into_iter()
            .map(|input| Ask {
                input,
                params: options.params.clone(),
                sampling: options.sampling.clone(),
                metadata: options.metadata.clone(),
                request_id: request_id.clone(),
                model_timeout: state.options().request_timeout,
                want_record: header_is_true(headers, RECORD_HEADER),
            })
            .collect();
        Plan {
            endpoint,
            model,
            target,
            asks,
            options,
            logprobs,
            request_id,
            started: Instant::now(),
            decision: None,
            want_trace: header_is_true(headers, TRACE_HEADER),
            want_receipt: header_is_true(headers, RECEIPT_HEADER),
            want_record: header_is_true(headers, RECORD_HEADER),
        }
    }

    /// What every body of the response shares.
    pub(super) fn header(&self) -> Header<'_> {
        Header {
            endpoint: self.endpoint,
            id: Header::response_id(self.endpoint, &self.request_id),
            created: super::unix_now(),
            model: &self.model,
            logprobs: self.logprobs,
            decision: self.decision.as_ref(),
            want_trace: self.want_trace,
            want_receipt: self.want_receipt,
            want_record: self.want_record,
        }
    }
}

/// Resolve `model`, naming it as the served label.
fn resolve(state: &AppState, model: &str, served: &mut Served) -> Result<Target, ApiError> {
    let target = state
        .ensemble()
        .resolve(model)
        .map_err(|e| ApiError::unknown_model(&e.asked, &e.known))?;
    // Only served names, in their canonical spelling, become metric
    // labels: anything else would let clients grow the label sets
    // without bound.
    served.model = state.ensemble().canonical_id(&target);
    Ok(target)
}

/// A request that asks for answers, and how it becomes a [`Plan`].
pub(super) trait AnswerRequest: openai::WithCommon {
    /// Which endpoint it is sent to.
    const ENDPOINT: Endpoint;

    /// The model as the client spelled it.
    fn model(&self) -> &str;

    /// Its inputs and options, checked, for `target`.
    fn into_parts(self, target: &Target) -> Result<Parts, ApiError>;
}

/// What a request contributes to its plan.
pub(super) struct Parts {
    model: String,
    inputs: Vec<Prompt>,
    options: RequestOptions,
    logprobs: bool,
}

impl AnswerRequest for openai::ChatRequest {
    const ENDPOINT: Endpoint = Endpoint::Chat;

    fn model(&self) -> &str {
        &self.model
    }

    fn into_parts(self, target: &Target) -> Result<Parts, ApiError> {
        self.check()?;
        let mut options = self.common.check(crate::inference::DEFAULT_MAX_TOKENS)?;
        if let Some(schema) = self.schema()? {
            if matches!(target, Target::Base | Target::Adapter(_) | Target::Model(_)) {
                return Err(ApiError::invalid(
                    Some("response_format".into()),
                    format!(
                        "the base model `{}` cannot honour a JSON schema; send it to an expert that does (json-extractor) or to tessera/auto",
                        self.model
                    ),
                ));
            }
            options.metadata.push(("schema".into(), schema));
        }
        Ok(Parts {
            inputs: vec![Prompt::Chat(self.messages()?)],
            options,
            logprobs: self.logprobs,
            model: self.model,
        })
    }
}

impl AnswerRequest for openai::CompletionRequest {
    const ENDPOINT: Endpoint = Endpoint::Completion;

    fn model(&self) -> &str {
        &self.model
    }

    fn into_parts(self, _: &Target) -> Result<Parts, ApiError> {
        let prompts = self.prompts()?;
        let options = self.common.check(openai::COMPLETIONS_DEFAULT_MAX_TOKENS)?;
        let choices = prompts.len() as u64 * u64::from(options.n);
        if choices > u64::from(openai::MAX_CHOICES) {
            return Err(ApiError::invalid(
                Some("prompt".into()),
                format!(
                    "{} prompts × n = {} asks for {choices} choices; at most {} per request",
                    prompts.len(),
                    options.n,
                    openai::MAX_CHOICES
                ),
            ));
        }
        Ok(Parts {
            inputs: prompts.into_iter().map(Prompt::Text).collect(),
            options,
            logprobs: self.logprobs.is_some(),
            model: self.model,
        })
    }
}

/// Parse, resolve and check a request of kind `R`.
fn plan<R: AnswerRequest>(
    state: &AppState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    served: &mut Served,
) -> Result<Plan, ApiError> {
    let body = body_bytes(body)?;
    let req: R = openai::parse_request(&body)?;
    let target = resolve(state, req.model(), served)?;
    let parts = req.into_parts(&target)?;
    Ok(Plan::new(state, R::ENDPOINT, target, parts, headers))
}

/// `POST /v1/chat/completions` and `POST /v1/completions`.
pub(super) async fn answer<R: AnswerRequest>(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let mut served = Served::default();
    let plan = plan::<R>(&state, &headers, body, &mut served);
    run(state, plan, served).await
}

/// Admit, route, reserve the sandbox instances, then answer whole or as a
/// stream.
async fn run(state: AppState, plan: Result<Plan, ApiError>, mut served: Served) -> Response {
    let mut plan = match plan {
        Ok(plan) if matches!(plan.target, Target::Embedder) => {
            return ApiError::invalid(
                Some("model".into()),
                format!(
                    "`{}` is an embedding model: use POST /v1/embeddings, or pick a language model or expert from GET /v1/models",
                    plan.model
                ),
            )
            .with(served);
        }
        Ok(plan) => plan,
        Err(e) => return e.with(served),
    };
    let mut admitted = match state.admission().admit(&served.model).await {
        Ok(admitted) => admitted,
        Err(e) => return e.with(served),
    };
    if let Err(e) = decide(&state, &mut plan).await {
        return e.with(served);
    }
    let route_header = plan.decision.as_ref().map(decision_header);
    let ensemble = state.ensemble();
    let slots = ensemble
        .slots_per_choice(&plan.target, plan.decision.as_ref())
        .saturating_mul(plan.options.n)
        .saturating_mul(plan.asks.len() as u32);
    match ensemble.reserve_slots(slots) {
        Ok(slots) => admitted.hold(slots),
        Err(e) => return ApiError::from_slots(&e).with(served),
    }
    let mut response = if plan.options.stream {
        super::stream::respond(state, plan, admitted, served).await
    } else {
        let response = answer_all_choices(&state, &plan, &mut served).await;
        drop(admitted);
        let mut response = response.unwrap_or_else(IntoResponse::into_response);
        response.extensions_mut().insert(served);
        response
    };
    if let Some(value) = route_header {
        response.headers_mut().insert(ROUTE_HEADER, value);
    }
    response
}

/// The response header that carries the routing decision.
pub(super) const ROUTE_HEADER: &str = "x-tessera-route";
/// The request header that asks for the invocation traces in the answer.
pub(super) const TRACE_HEADER: &str = "x-tessera-trace";

/// The request header that asks for the answering expert's receipt.
pub(super) const RECEIPT_HEADER: &str = "x-tessera-receipt";
/// The request header that asks for the answering expert's record (the
/// request, response, trace with host-call results, and receipt).
pub(super) const RECORD_HEADER: &str = "x-tessera-record";

/// Whether header `name` says yes (`1`, `true` or `yes`).
fn header_is_true(headers: &HeaderMap, name: &str) -> bool {
    headers
        .get(name)
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
    let req = plan.asks[0].expert_request(0);
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

#[derive(Serialize)]
struct RouteBody<'a> {
    object: &'static str,
    model: &'a str,
    decision: &'a Decision,
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
        let mut plan = plan::<openai::ChatRequest>(&state, &headers, body, &mut served)?;
        if !matches!(plan.target, Target::Auto(_)) {
            return Err(ApiError::invalid(
                Some("model".into()),
                format!(
                    "`{}` is not routed; use tessera/auto, tessera/auto:moa or tessera/auto:cascade",
                    plan.model
                ),
            ));
        }
        let _admitted = state.admission().admit(&served.model).await?;
        decide(&state, &mut plan).await?;
        let decision = plan.decision.as_ref().expect("decided");
        let mut response = axum::Json(RouteBody {
            object: "tessera.route",
            model: &plan.model,
            decision,
        })
        .into_response();
        response
            .headers_mut()
            .insert(ROUTE_HEADER, decision_header(decision));
        Ok::<_, ApiError>(response)
    }
    .await;
    let mut response = result.unwrap_or_else(IntoResponse::into_response);
    response.extensions_mut().insert(served);
    response
}

/// Answer every choice, then reply once.
async fn answer_all_choices(
    state: &AppState,
    plan: &Plan,
    served: &mut Served,
) -> Result<Response, ApiError> {
    let n = plan.options.n;
    let ensemble = state.ensemble();
    let jobs = plan.asks.iter().flat_map(|ask| {
        (0..n).map(move |choice| {
            ensemble.answer(&plan.target, plan.decision.as_ref(), ask, choice, None)
        })
    });
    let outcomes = futures_util::future::join_all(jobs).await;
    let mut answers = Vec::with_capacity(outcomes.len());
    let mut first_traces = None;
    let mut failure = None;
    for outcome in outcomes {
        record_outcome(state, &outcome);
        match outcome.result {
            Ok(answer) => {
                first_traces.get_or_insert(outcome.traces);
                answers.push(answer);
            }
            Err(e) => {
                failure.get_or_insert(e);
            }
        }
    }
    if let Some(e) = failure {
        return Err(answer_error(&e, plan.endpoint));
    }
    // A prompt is read once however many choices it gets.
    let prompt_tokens: u32 = answers
        .iter()
        .step_by(n as usize)
        .map(|a| a.prompt_tokens)
        .sum();
    let completion_tokens: u32 = answers.iter().map(|a| a.completion_tokens).sum();
    served.prompt_tokens = prompt_tokens;
    served.completion_tokens = completion_tokens;
    let header = plan.header();
    let traces = first_traces.unwrap_or_default();
    let body = Completion::new(
        &header,
        &answers,
        &traces,
        Usage::new(prompt_tokens, completion_tokens),
    );
    let mut response = axum::Json(body).into_response();
    // Who failed before the answer (the body's `tessera.fallbacks` says
    // why).
    let failed: Vec<&str> = answers
        .iter()
        .flat_map(|a| a.report.fallbacks.iter().map(|s| s.expert.as_str()))
        .collect();
    if !failed.is_empty()
        && let Ok(value) = HeaderValue::from_str(&failed.join(","))
    {
        response.headers_mut().insert(FALLBACK_HEADER, value);
    }
    Ok(response)
}

/// The response header naming the experts that failed or refused before
/// the one that answered.
pub(super) const FALLBACK_HEADER: &str = "x-tessera-fallback";

/// Count what an outcome's invocations burned and where a cascade
/// escalated.
pub(super) fn record_outcome(state: &AppState, outcome: &Outcome) {
    let metrics = state.metrics();
    for trace in &outcome.traces {
        metrics
            .fuel
            .get_or_create(&ExpertLabels {
                expert: trace.expert.clone(),
            })
            .inc_by(trace.fuel_consumed);
    }
    if let Ok(answer) = &outcome.result {
        for stage in &answer.report.fallbacks {
            metrics
                .fallbacks
                .get_or_create(&ExpertLabels {
                    expert: stage.expert.clone(),
                })
                .inc();
        }
    }
    let stages = outcome
        .result
        .as_ref()
        .ok()
        .and_then(|a| a.report.cascade.as_ref())
        .map_or(&[][..], |c| &c.stages[..]);
    for stage in stages.iter().filter(|s| s.escalated()) {
        metrics
            .escalations
            .get_or_create(&ExpertLabels {
                expert: stage.expert.clone(),
            })
            .inc();
    }
}

/// The HTTP error of an answer's failure.
pub(super) fn answer_error(error: &AnswerError, endpoint: Endpoint) -> ApiError {
    let mut e = match error.root() {
        AnswerError::Model(m) => {
            let mut e = ApiError::from_model(m);
            if e.status == StatusCode::BAD_REQUEST {
                e.param = Some(endpoint.input_param().into());
            }
            e
        }
        AnswerError::ModelTimeout(_) => ApiError::deadline(error.root().message()),
        AnswerError::Expert(invoke) => ApiError::from_invoke(invoke),
        AnswerError::AllFailed { .. } => unreachable!("root() unwraps strategies"),
    };
    e.message = error.message();
    e
}
