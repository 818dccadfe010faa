//! The middleware every request passes: one log line and one set of
//! metrics per request ([`RequestRecord`], also used by streams when they
//! end), the API key check, and a 500 for a handler that panics.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{ApiError, AppState, metrics, request_id};

/// The model a response was for, and the tokens it used, read by
/// [`track`] for metrics and the log line.
#[derive(Debug, Clone, Default)]
pub(super) struct Served {
    pub model: String,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    /// A stream records itself when it ends.
    pub streaming: bool,
}

impl ApiError {
    /// The error's response, marked as served for `served.model`.
    pub(super) fn with(self, served: Served) -> Response {
        let mut response = self.into_response();
        response.extensions_mut().insert(served);
        response
    }
}

/// What is recorded of one request: its log line and its metrics. Whole
/// answers are recorded by [`track`], streams by their driver when the
/// last event is sent; both through [`RequestRecord::finish`].
pub(super) struct RequestRecord {
    pub endpoint: String,
    pub request_id: String,
    pub started: Instant,
    /// The canonical id of what answered (`-` when none).
    pub model: String,
    pub status: u16,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub stream: bool,
    /// The error message a failure carried.
    pub error: Option<String>,
}

impl RequestRecord {
    pub(super) fn new(endpoint: &str, request_id: &str, started: Instant, model: String) -> Self {
        RequestRecord {
            endpoint: endpoint.to_string(),
            request_id: request_id.to_string(),
            started,
            model: if model.is_empty() { "-".into() } else { model },
            status: 0,
            prompt_tokens: 0,
            completion_tokens: 0,
            stream: false,
            error: None,
        }
    }

    /// Count it in the metrics and write its log line.
    pub(super) fn finish(self, state: &AppState) {
        let seconds = self.started.elapsed().as_secs_f64();
        state.metrics().record(
            metrics::RequestLabels {
                endpoint: self.endpoint.clone(),
                model: self.model.clone(),
                status: self.status,
            },
            seconds,
        );
        if self.prompt_tokens + self.completion_tokens > 0 {
            state
                .metrics()
                .record_tokens(&self.model, self.prompt_tokens, self.completion_tokens);
        }
        tracing::info!(
            request_id = %self.request_id,
            endpoint = self.endpoint,
            model = self.model,
            status = self.status,
            stream = self.stream,
            duration_ms = (seconds * 1000.0).round() as u64,
            prompt_tokens = self.prompt_tokens,
            completion_tokens = self.completion_tokens,
            error = self.error,
            "request"
        );
    }
}

pub(super) async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let endpoint = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| endpoint_name(p.as_str()));
    let id = request_id(request.headers());
    // Hyper drops this future when the client disconnects before the
    // answer: the guard records that, and the dropped handler cancels the
    // invocation and generation it was waiting on.
    let mut gone = ClientGone {
        state: &state,
        record: Some(RequestRecord::new(endpoint, &id, started, String::new())),
    };
    let response = next.run(request).await;
    let mut record = gone.record.take().expect("taken once");
    let served = response
        .extensions()
        .get::<Served>()
        .cloned()
        .unwrap_or_default();
    if served.streaming {
        return response;
    }
    if !served.model.is_empty() {
        record.model = served.model;
    }
    record.status = response.status().as_u16();
    record.prompt_tokens = served.prompt_tokens;
    record.completion_tokens = served.completion_tokens;
    record.error = response
        .extensions()
        .get::<ApiError>()
        .map(|e| e.message.clone());
    record.finish(&state);
    response
}

/// Records a request whose client left before the answer (499).
struct ClientGone<'a> {
    state: &'a AppState,
    record: Option<RequestRecord>,
}

impl Drop for ClientGone<'_> {
    fn drop(&mut self) {
        if let Some(mut record) = self.record.take() {
            record.status = 499;
            record.error =
                Some("client disconnected before the answer; its work was cancelled".into());
            record.finish(self.state);
        }
    }
}

fn endpoint_name(path: &str) -> &'static str {
    match path {
        "/v1/chat/completions" => "chat",
        "/v1/completions" => "completions",
        "/v1/embeddings" => "embeddings",
        "/v1/route" => "route",
        "/v1/models" | "/v1/models/{*id}" => "models",
        "/healthz" => "healthz",
        "/readyz" => "readyz",
        "/v1/status" => "status",
        "/metrics" => "metrics",
        _ => "other",
    }
}

pub(super) async fn authenticate(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let keys = &state.options().api_keys;
    if keys.is_empty() || matches!(request.uri().path(), "/healthz" | "/readyz") {
        return next.run(request).await;
    }
    // The scheme is case-insensitive (RFC 9110 §11.1): `bearer` works too.
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim_start().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, key)| key);
    match given {
        Some(key)
            if keys
                .iter()
                .any(|k| constant_time_eq(k.as_bytes(), key.trim().as_bytes())) =>
        {
            next.run(request).await
        }
        Some(_) => ApiError::unauthorized("the API key is not valid").into_response(),
        None => ApiError::unauthorized(
            "this server needs an API key: send `Authorization: Bearer <key>`",
        )
        .into_response(),
    }
}

/// Compare without leaking, through timing, how much of a key matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A handler bug answers 500 and is logged; the server keeps serving.
pub(super) fn panicked(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let message = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("(no message)");
    tracing::error!("a request handler panicked: {message}");
    ApiError::internal("-").into_response()
}
