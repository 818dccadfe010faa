//! Errors in OpenAI's JSON shape, each with one HTTP status.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::ensemble::{InvokeError, InvokeErrorKind, RouteError};
use crate::inference::ModelError;

/// An error answered to an API client as
/// `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// What went wrong and how to fix it.
    pub message: String,
    /// OpenAI's error type (`invalid_request_error`, ...).
    pub kind: &'static str,
    /// The request field at fault, if one is.
    pub param: Option<String>,
    /// A stable machine-readable code.
    pub code: Option<String>,
    /// Seconds to wait before retrying (429).
    pub retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
            retry_after: None,
        }
    }

    /// 400: the request is malformed; `param` names the field.
    pub fn invalid(param: impl Into<Option<String>>, message: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message);
        e.param = param.into();
        e
    }

    /// 404: no model of that name.
    pub fn unknown_model(model: &str, known: &[String]) -> Self {
        let mut e = Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!(
                "the model `{model}` does not exist; GET /v1/models lists the {} served here{}",
                known.len(),
                match known {
                    [] => String::new(),
                    [..] if known.len() <= 8 => format!(" ({})", known.join(", ")),
                    _ => String::new(),
                }
            ),
        );
        e.param = Some("model".into());
        e.code = Some("model_not_found".into());
        e
    }

    /// 404 for an unknown path.
    pub fn not_found(path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!("no route for {path}; the API is under /v1 (see GET /v1/models)"),
        )
    }

    /// 401: a missing or wrong API key.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::UNAUTHORIZED, "authentication_error", message);
        e.code = Some("invalid_api_key".into());
        e
    }

    /// 429: the admission queue is full.
    pub fn overloaded(in_flight: usize, queued: usize, retry_after: u64) -> Self {
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            format!(
                "the server is at capacity ({in_flight} requests running, {queued} queued); retry after {retry_after} s"
            ),
        );
        e.code = Some("overloaded".into());
        e.retry_after = Some(retry_after);
        e
    }

    /// 429: one model holds its whole share of the admission queue; others
    /// may still be served.
    pub fn overloaded_model(model: &str, running: usize, queued: usize, retry_after: u64) -> Self {
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            format!(
                "`{model}` is at its share of the server ({running} of its requests running, {queued} queued); retry after {retry_after} s"
            ),
        );
        e.code = Some("overloaded".into());
        e.retry_after = Some(retry_after);
        e
    }

    /// 429 (or 400 when it can never fit): the sandbox instances a request
    /// may need are not free.
    pub fn from_slots(e: &crate::ensemble::SlotError) -> Self {
        match e {
            crate::ensemble::SlotError::NeverFits { .. } => {
                let mut error = Self::invalid(Some("n".into()), e.to_string());
                error.code = Some("too_many_instances".into());
                error
            }
            _ => {
                let mut error = Self::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limit_error",
                    e.to_string(),
                );
                error.code = Some("sandbox_busy".into());
                error.retry_after = Some(1);
                error
            }
        }
    }

    /// 504: the request took longer than allowed.
    pub fn deadline(message: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::GATEWAY_TIMEOUT, "timeout_error", message);
        e.code = Some("deadline_exceeded".into());
        e
    }

    /// 500: something that is our fault. The details go to the log, not
    /// to the client.
    pub fn internal(request_id: &str) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            format!("internal server error (request id {request_id}); the server log has details"),
        )
    }

    /// The status and body of an expert's failure. Failures of the expert
    /// itself are 422 with its message; a deadline is 504.
    pub fn from_invoke(error: &InvokeError) -> Self {
        let status = match error.kind {
            InvokeErrorKind::UnknownExpert => StatusCode::NOT_FOUND,
            InvokeErrorKind::Deadline => StatusCode::GATEWAY_TIMEOUT,
            InvokeErrorKind::Model | InvokeErrorKind::Unrecorded => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::UNPROCESSABLE_ENTITY,
        };
        let kind = match status {
            StatusCode::GATEWAY_TIMEOUT => "timeout_error",
            StatusCode::SERVICE_UNAVAILABLE => "server_error",
            StatusCode::NOT_FOUND => "invalid_request_error",
            _ => "expert_error",
        };
        let mut e = Self::new(status, kind, error.message.clone());
        e.code = Some(error.kind.as_str().to_string());
        e
    }

    /// A request to `tessera/auto` that could not be routed.
    pub fn from_route(error: &RouteError) -> Self {
        match error {
            RouteError::NoUserMessage => Self::invalid(
                Some("messages".into()),
                "tessera/auto routes on the last user message; send at least one message with role `user`",
            ),
            RouteError::Embedder(_) => {
                let mut e = Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "server_error",
                    format!(
                        "{error}; start the server with the embedding model (without --no-model) or name an expert in `model`"
                    ),
                );
                e.code = Some("router_unavailable".into());
                e
            }
        }
    }

    /// The status and body of a failed call to the base model.
    pub fn from_model(error: &ModelError) -> Self {
        let (status, kind, code) = match error {
            ModelError::InvalidInput(_) | ModelError::UnknownAdapter(_) => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "invalid_input",
            ),
            ModelError::LimitExceeded(_) => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "limit_exceeded",
            ),
            ModelError::NotLoaded(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "model_not_loaded",
            ),
            ModelError::Unavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "upstream_unavailable",
            ),
            _ => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "model_failed",
            ),
        };
        let mut e = Self::new(status, kind, error.to_string());
        e.code = Some(code.into());
        e
    }

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        })
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status.as_u16(), self.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response.extensions_mut().insert(self);
        response
    }
}
