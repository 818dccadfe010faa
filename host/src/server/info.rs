//! What the server says about itself: `/v1/models`, `/healthz`,
//! `/v1/status` and `/metrics`.

use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::{ApiError, AppState};
use crate::bundle::BundleKind;
use crate::ensemble::{Expert, Strategy};
use crate::inference::ModelEngine as _;

struct CatalogEntry {
    id: String,
    kind: &'static str,
    detail: serde_json::Value,
    /// The model it is a fine-tune of (vLLM's lineage field).
    parent: Option<String>,
}

impl CatalogEntry {
    fn expert(e: &Expert) -> Self {
        CatalogEntry {
            id: e.name().to_string(),
            kind: "expert",
            detail: json!({
                "version": e.info.version,
                "description": e.info.description,
                "tags": e.info.tags,
                "examples": e.info.examples,
                "sha256": e.sha256,
                "signer": e.signer,
            }),
            parent: None,
        }
    }

    fn model(id: &str, kind: &'static str) -> Self {
        CatalogEntry {
            id: id.to_string(),
            kind,
            detail: json!({}),
            parent: None,
        }
    }

    fn json(&self, created: u64) -> serde_json::Value {
        let mut tessera = json!({ "kind": self.kind });
        if let (Some(t), Some(d)) = (tessera.as_object_mut(), self.detail.as_object()) {
            t.extend(d.clone());
        }
        let mut model = json!({
            "id": self.id,
            "object": "model",
            "created": created,
            "owned_by": "tessera",
            "tessera": tessera,
        });
        if let Some(parent) = &self.parent {
            model["parent"] = parent.as_str().into();
            model["root"] = parent.as_str().into();
        }
        model
    }
}

/// Everything `/v1/models` lists.
fn catalog(state: &AppState) -> Vec<CatalogEntry> {
    let engine = state.ensemble().model();
    let mut entries: Vec<CatalogEntry> = state
        .ensemble()
        .experts()
        .into_iter()
        .filter(|e| e.manifest.kind == BundleKind::Agent)
        .map(|e| CatalogEntry::expert(&e))
        .collect();
    if engine.model_name() != crate::inference::NoModel.model_name() {
        entries.push(CatalogEntry::model(engine.model_name(), "language-model"));
    }
    for model in state.ensemble().other_models() {
        let mut entry = CatalogEntry::model(model.model_name(), "language-model");
        if let Some(up) = model.upstream() {
            // Where it is served is the operator's business: the circuit
            // only.
            entry.detail = json!({"backend": "upstream", "circuit": up.circuit});
        }
        entries.push(entry);
    }
    for adapter in engine.adapters() {
        // An adapter bundle says what its manifest says, too.
        let mut detail = match state.ensemble().expert(&adapter.name) {
            Some(bundle) if bundle.adapter.is_some() => CatalogEntry::expert(&bundle).detail,
            _ => json!({}),
        };
        if let Some(d) = detail.as_object_mut() {
            d.insert("rank".into(), adapter.rank.into());
            d.insert("targets".into(), json!(adapter.targets));
            d.insert("base_model".into(), json!(adapter.base_model));
        }
        entries.push(CatalogEntry {
            id: adapter.name.clone(),
            kind: "adapter",
            detail,
            parent: Some(engine.model_name().to_string()),
        });
    }
    if let Some(name) = engine.embedder_name() {
        entries.push(CatalogEntry::model(name, "embedding-model"));
        let config = state.ensemble().router_config();
        for strategy in Strategy::ALL {
            entries.push(CatalogEntry {
                id: strategy.model_id().to_string(),
                kind: "ensemble",
                detail: json!({
                    "strategy": strategy.as_str(),
                    "router": config.plugin.as_deref().unwrap_or("default"),
                    "routable_experts": state.ensemble().routing_index().len(),
                }),
                parent: None,
            });
        }
    }
    entries
}

pub(super) async fn list_models(State(state): State<AppState>) -> Response {
    let created = state.started_unix();
    let data: Vec<_> = catalog(&state).iter().map(|e| e.json(created)).collect();
    axum::Json(json!({ "object": "list", "data": data })).into_response()
}

pub(super) async fn get_model(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    let created = state.started_unix();
    let catalog = catalog(&state);
    match catalog.iter().find(|e| e.id == id) {
        Some(entry) => axum::Json(entry.json(created)).into_response(),
        None => {
            let known: Vec<String> = catalog.into_iter().map(|e| e.id).collect();
            ApiError::unknown_model(&id, &known).into_response()
        }
    }
}

/// For load balancers and anyone: no authentication, so no paths, URLs
/// or errors. `ok`; `degraded` when bundles failed to load (the rest
/// serve) or an upstream model's circuit is open (the experts on other
/// models serve); `unavailable` with 503 when the model engine has
/// stopped. `models` gives each upstream model's circuit.
pub(super) async fn healthz(State(state): State<AppState>) -> Response {
    let engine = state.ensemble().model().health();
    let bundle_errors = state.bundle_problems().len();
    let upstreams: serde_json::Map<String, serde_json::Value> = state
        .ensemble()
        .other_models()
        .iter()
        .filter_map(|m| m.upstream())
        .map(|u| (u.name, json!(u.circuit)))
        .collect();
    let upstream_down = upstreams.values().any(|c| c == "open");
    let (code, status) = if !engine.serving {
        (axum::http::StatusCode::SERVICE_UNAVAILABLE, "unavailable")
    } else if bundle_errors > 0 || upstream_down {
        (axum::http::StatusCode::OK, "degraded")
    } else {
        (axum::http::StatusCode::OK, "ok")
    };
    (
        code,
        axum::Json(json!({
            "status": status,
            "engine": if engine.serving { "serving" } else { "stopped" },
            "experts": state.ensemble().experts().len(),
            "bundle_errors": bundle_errors,
            "upstreams": upstreams,
        })),
    )
        .into_response()
}

/// Readiness, for load balancers (liveness is `/healthz`): 200 when this
/// host takes requests now; 503 with the reason while it drains for
/// shutdown, when its model engine has stopped, or when its admission
/// queue is full. Like `/healthz`, no authentication and no details.
pub(super) async fn readyz(State(state): State<AppState>) -> Response {
    let reason = if state.is_draining() {
        Some("draining")
    } else if !state.ensemble().model().health().serving {
        Some("engine stopped")
    } else if state.admission().queued() >= state.options().max_queued {
        Some("queue full")
    } else {
        None
    };
    let code = match reason {
        None => axum::http::StatusCode::OK,
        Some(_) => axum::http::StatusCode::SERVICE_UNAVAILABLE,
    };
    (
        code,
        axum::Json(json!({"ready": reason.is_none(), "reason": reason})),
    )
        .into_response()
}

/// The operator's view, behind the API key: bundles that failed and why,
/// the engine's failures and load.
pub(super) async fn status(State(state): State<AppState>) -> Response {
    let model = state.ensemble().model();
    let health = model.health();
    axum::Json(json!({
        "status": if health.serving { "serving" } else { "stopped" },
        "model": model.model_name(),
        "embedder": model.embedder_name(),
        "engine": health,
        "engine_stats": model.stats().map(|s| json!({
            "active": s.active,
            "queued": s.queued,
            "reserved_kv_tokens": s.reserved_kv_tokens,
            "kv_budget_tokens": s.kv_budget_tokens,
            "steps": s.steps,
            "generated_tokens": s.generated_tokens,
            "cancelled": s.cancelled,
        })),
        "upstreams": state
            .ensemble()
            .other_models()
            .iter()
            .filter_map(|m| m.upstream())
            .collect::<Vec<_>>(),
        "experts": state.ensemble().experts().len(),
        "in_flight": state.admission().running(),
        "queued": state.admission().queued(),
        "bundle_errors": state.bundle_problems(),
    }))
    .into_response()
}

pub(super) async fn metrics(State(state): State<AppState>) -> Response {
    let m = state.metrics();
    m.in_flight.set(state.admission().running() as i64);
    m.queue_depth.set(state.admission().queued() as i64);
    m.bundles.set(state.ensemble().experts().len() as i64);
    for model in state.ensemble().other_models() {
        if let Some(stats) = model.upstream() {
            m.upstream.set(&stats);
        }
    }
    if let Some(stats) = state.ensemble().model().stats() {
        m.engine_queued.set(stats.queued as i64);
        m.batch_size.set(stats.active as i64);
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        m.encode(),
    )
        .into_response()
}
