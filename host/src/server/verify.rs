//! `POST /v1/verify`: a validator's own host checks a record another host
//! signed (replay on the experts loaded here, logprobs on the model here)
//! and answers the verdict with the per-call figures.

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::{ApiError, AppState, Served, openai};
use crate::audit::Record;
use crate::audit::verdict::{Checks, verify_record};

/// The body: a record (or the whole answer that carried it as
/// `tessera.record`), and which checks to run.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VerifyRequest {
    record: serde_json::Value,
    #[serde(default)]
    checks: Checks,
}

pub(super) async fn verify(
    State(state): State<AppState>,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let served = Served {
        model: "tessera/verify".into(),
        ..Served::default()
    };
    match check(&state, body).await {
        Ok(mut r) => {
            r.extensions_mut().insert(served);
            r
        }
        Err(e) => e.with(served),
    }
}

async fn check(
    state: &AppState,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    let body = super::chat::body_bytes(body)?;
    let req: VerifyRequest = openai::parse(&body)?;
    let value = match req.record.pointer("/tessera/record") {
        Some(record) => record.clone(),
        None => req.record,
    };
    let record: Record = serde_json::from_value(value).map_err(|e| {
        ApiError::invalid(
            Some("record".into()),
            format!(
                "not a Tessera record ({e}); send what an answer asked with `x-tessera-record: true` carries, or `tessera audit show ID --json`"
            ),
        )
    })?;
    if req.checks.tolerance.is_nan() || req.checks.tolerance < 0.0 {
        return Err(ApiError::invalid(
            Some("checks.tolerance".into()),
            "the tolerance is a non-negative number of nats",
        ));
    }
    // A replay runs a guest: it takes a sandbox slot like any request.
    let ensemble = state.ensemble();
    let _slots = ensemble
        .reserve_slots(1)
        .map_err(|e| ApiError::from_slots(&e))?;
    // The model the record's receipt names, when this host serves it.
    let model = record
        .receipt
        .as_ref()
        .and_then(|r| ensemble.model_named(&r.body.model.name))
        .or_else(|| Some(ensemble.model().clone()));
    let verdict = verify_record(ensemble, &record, model, req.checks).await;
    Ok(Json(verdict).into_response())
}
