//! `tessera serve`: an OpenAI-compatible HTTP API over the ensemble.
//!
//! [`app`] builds the axum [`Router`]; tests drive it with `oneshot`, and
//! [`serve`] runs it on a socket with graceful shutdown. `model` in a
//! request names an expert (its answer comes from the sandbox), the base
//! model or the embedding model.
//!
//! Every request passes, in order: a request id (`x-request-id`, echoed),
//! metrics and a log line, the API key check, the body limit, then the
//! bounded [admission](admission::Admission) queue (429 when full).

pub mod admission;
mod chat;
pub mod error;
pub mod metrics;
pub mod openai;
pub mod reload;

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};

pub use admission::Admission;
pub use error::ApiError;
pub use metrics::Metrics;

use crate::bundle::BundleKind;
use crate::ensemble::{Ensemble, Expert, Strategy};

/// Default most bytes of a request body.
pub const DEFAULT_MAX_BODY_BYTES: usize = 4 << 20;
/// Default requests running at once.
pub const DEFAULT_MAX_RUNNING: usize = 64;
/// Default requests waiting for a place before 429s.
pub const DEFAULT_MAX_QUEUED: usize = 256;
/// Default time limit of a base-model request.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(300);
/// Most texts in one embeddings request.
pub const MAX_EMBED_INPUTS: usize = 2048;
/// Default most open connections; past it new connections wait in the
/// kernel's accept queue until one closes.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Default time a client has to send a request's headers, from the
/// connection's first byte (or the previous response, on keep-alive).
/// Slowloris clients holding connections open are cut off after it.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

const REQUEST_ID: &str = "x-request-id";

/// Settings of the HTTP server.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Bearer keys; empty means no authentication.
    pub api_keys: Vec<String>,
    /// Most bytes of a request body (413 past it).
    pub max_body_bytes: usize,
    /// Requests running at once.
    pub max_running: usize,
    /// Requests waiting for a place (429 past it).
    pub max_queued: usize,
    /// Time limit of a base-model request (504 past it); experts run
    /// under their own deadline.
    pub request_timeout: Duration,
    /// Most open connections.
    pub max_connections: usize,
    /// Time to send a request's headers.
    pub header_read_timeout: Duration,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            api_keys: Vec::new(),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_running: DEFAULT_MAX_RUNNING,
            max_queued: DEFAULT_MAX_QUEUED,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
        }
    }
}

/// A bundle that failed to load, as `/healthz` reports it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct BundleProblem {
    /// The bundle's directory.
    pub path: String,
    /// What went wrong.
    pub error: String,
}

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    ensemble: Arc<Ensemble>,
    options: ServerOptions,
    admission: Admission,
    metrics: Metrics,
    problems: RwLock<Vec<BundleProblem>>,
    started_unix: u64,
}

impl AppState {
    /// State over `ensemble` with `options`.
    pub fn new(ensemble: Arc<Ensemble>, options: ServerOptions) -> Self {
        AppState {
            inner: Arc::new(Inner {
                admission: Admission::new(options.max_running, options.max_queued),
                ensemble,
                options,
                metrics: Metrics::new(),
                problems: RwLock::new(Vec::new()),
                started_unix: unix_now(),
            }),
        }
    }

    /// The ensemble served.
    pub fn ensemble(&self) -> &Arc<Ensemble> {
        &self.inner.ensemble
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// The admission queue.
    pub fn admission(&self) -> &Admission {
        &self.inner.admission
    }

    /// Replace the list of bundles that failed to load.
    pub fn set_bundle_problems(&self, problems: Vec<BundleProblem>) {
        *self
            .inner
            .problems
            .write()
            .unwrap_or_else(|e| e.into_inner()) = problems;
    }

    /// Bundles that failed to load.
    pub fn bundle_problems(&self) -> Vec<BundleProblem> {
        self.inner
            .problems
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn options(&self) -> &ServerOptions {
        &self.inner.options
    }

    /// Who answers `model`, or 404.
    fn resolve(&self, model: &str) -> Result<Target, ApiError> {
        if let Some(strategy) = Strategy::ALL
            .into_iter()
            .find(|s| model.eq_ignore_ascii_case(s.model_id()))
        {
            // A plain `tessera/auto` takes the configured strategy.
            let strategy = if strategy == Strategy::Route {
                self.inner.ensemble.router_config().default_strategy
            } else {
                strategy
            };
            return Ok(Target::Auto(strategy));
        }
        if let Some(expert) = self.inner.ensemble.expert(model)
            && expert.manifest.kind == BundleKind::Agent
        {
            return Ok(Target::Expert(expert));
        }
        let engine = self.inner.ensemble.model();
        // Model names are matched ignoring case, as hubs spell them both ways.
        if model.eq_ignore_ascii_case(engine.model_name())
            && engine.model_name() != crate::inference::NoModel.model_name()
        {
            return Ok(Target::Base);
        }
        if engine
            .embedder_name()
            .is_some_and(|e| e.eq_ignore_ascii_case(model))
        {
            return Ok(Target::Embedder);
        }
        let known: Vec<String> = self.catalog().into_iter().map(|e| e.id).collect();
        Err(ApiError::unknown_model(model, &known))
    }

    /// The canonical id of what answers: the metric label and log field
    /// for a request, whatever spelling the client used (names match
    /// ignoring case, and 300 spellings once made 300 label sets).
    fn canonical_id(&self, target: &Target) -> String {
        let engine = self.inner.ensemble.model();
        match target {
            Target::Base => engine.model_name().to_string(),
            Target::Embedder => engine.embedder_name().unwrap_or("-").to_string(),
            Target::Expert(e) => e.name().to_string(),
            Target::Auto(strategy) => strategy.model_id().to_string(),
        }
    }

    fn catalog(&self) -> Vec<CatalogEntry> {
        let engine = self.inner.ensemble.model();
        let mut entries: Vec<CatalogEntry> = self
            .inner
            .ensemble
            .experts()
            .into_iter()
            .filter(|e| e.manifest.kind == BundleKind::Agent)
            .map(|e| CatalogEntry::expert(&e))
            .collect();
        if engine.model_name() != crate::inference::NoModel.model_name() {
            entries.push(CatalogEntry::model(engine.model_name(), "language-model"));
        }
        if let Some(name) = engine.embedder_name() {
            entries.push(CatalogEntry::model(name, "embedding-model"));
            let config = self.inner.ensemble.router_config();
            for strategy in Strategy::ALL {
                entries.push(CatalogEntry {
                    id: strategy.model_id().to_string(),
                    kind: "ensemble",
                    detail: json!({
                        "strategy": strategy.as_str(),
                        "router": config.plugin.as_deref().unwrap_or("default"),
                        "routable_experts": self.inner.ensemble.registry().len(),
                    }),
                });
            }
        }
        entries
    }

    /// Count a routing decision.
    fn record_decision(&self, decision: &crate::ensemble::Decision) {
        let metrics = self.metrics();
        metrics
            .route_decisions
            .get_or_create(&metrics::RouteLabels {
                strategy: decision.strategy.as_str().to_string(),
                expert: decision.top().unwrap_or("base").to_string(),
                router: decision.router.clone(),
            })
            .inc();
        metrics
            .route_latency
            .observe(decision.duration_us as f64 / 1e6);
        if decision.plugin_error.is_some() {
            let router = self
                .inner
                .ensemble
                .router_config()
                .plugin
                .unwrap_or_default();
            metrics
                .router_failures
                .get_or_create(&metrics::ExpertLabels { expert: router })
                .inc();
        }
    }
}

use crate::inference::ModelEngine as _;

/// Who answers a request.
#[derive(Clone)]
enum Target {
    Base,
    Embedder,
    Expert(Arc<Expert>),
    /// The router decides, then the strategy runs.
    Auto(Strategy),
}

struct CatalogEntry {
    id: String,
    kind: &'static str,
    detail: serde_json::Value,
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
                "sha256": e.component.sha256,
            }),
        }
    }

    fn model(id: &str, kind: &'static str) -> Self {
        CatalogEntry {
            id: id.to_string(),
            kind,
            detail: json!({}),
        }
    }

    fn json(&self, created: u64) -> serde_json::Value {
        let mut tessera = json!({ "kind": self.kind });
        if let (Some(t), Some(d)) = (tessera.as_object_mut(), self.detail.as_object()) {
            t.extend(d.clone());
        }
        json!({
            "id": self.id,
            "object": "model",
            "created": created,
            "owned_by": "tessera",
            "tessera": tessera,
        })
    }
}

/// The API as an axum router over `state`.
pub fn app(state: AppState) -> Router {
    let max_body = state.options().max_body_bytes;
    Router::new()
        .route("/v1/chat/completions", post(chat::chat_completions))
        .route("/v1/completions", post(chat::completions))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/route", post(chat::route))
        .route("/v1/models", get(list_models))
        .route("/v1/models/{*id}", get(get_model))
        .route("/healthz", get(healthz))
        .route("/v1/status", get(status))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authenticate,
        ))
        .layer(CatchPanicLayer::custom(panicked))
        .layer(axum::middleware::from_fn_with_state(state.clone(), track))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .with_state(state)
}

/// Serve `app(state)` on `listener` until `shutdown` resolves, then stop
/// accepting and wait for the requests in flight (streams included).
///
/// Each connection must send its headers within
/// [`ServerOptions::header_read_timeout`], and at most
/// [`ServerOptions::max_connections`] are open at once: past that, new
/// ones wait in the kernel's accept queue, so half-sent requests cannot
/// pile up without bound.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::server::graceful::GracefulShutdown;
    use hyper_util::service::TowerToHyperService;

    let options = state.options().clone();
    let slots = Arc::new(tokio::sync::Semaphore::new(options.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let app = app(state);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // Out of file descriptors, or a connection reset while
                    // queued: wait a little rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Answers are small and written once: send them without waiting
        // for the client's ACK of the previous segment (Nagle).
        let _ = tcp.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(options.header_read_timeout)
            .serve_connection(TokioIo::new(tcp), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            let _ = connection.await;
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// The model a response was for, and the tokens it used, read by
/// [`track`] for metrics and the log line.
#[derive(Debug, Clone, Default)]
struct Served {
    model: String,
    prompt_tokens: u32,
    completion_tokens: u32,
    /// A stream records itself when it ends.
    streaming: bool,
}

fn request_id(headers: &HeaderMap) -> String {
    headers
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_string()
}

async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let endpoint = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| endpoint_name(p.as_str()))
        .to_string();
    let id = request_id(request.headers());
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    // Hyper drops this future when the client disconnects before the
    // answer: the guard records that, and the dropped handler cancels the
    // invocation and generation it was waiting on.
    let mut gone = ClientGone {
        state: &state,
        endpoint: &endpoint,
        id: &id,
        started,
        armed: true,
    };
    let response = next.run(request).await;
    gone.armed = false;
    let served = response
        .extensions()
        .get::<Served>()
        .cloned()
        .unwrap_or_default();
    if served.streaming {
        return response;
    }
    let status = response.status().as_u16();
    let model = if served.model.is_empty() {
        "-".to_string()
    } else {
        served.model
    };
    let seconds = started.elapsed().as_secs_f64();
    state.metrics().record(
        metrics::RequestLabels {
            endpoint: endpoint.clone(),
            model: model.clone(),
            status,
        },
        seconds,
    );
    if served.prompt_tokens + served.completion_tokens > 0 {
        state
            .metrics()
            .record_tokens(&model, served.prompt_tokens, served.completion_tokens);
    }
    let error = response
        .extensions()
        .get::<ApiError>()
        .map(|e| e.message.clone());
    tracing::info!(
        request_id = %id,
        %method,
        path,
        model,
        status,
        duration_ms = (seconds * 1000.0).round() as u64,
        prompt_tokens = served.prompt_tokens,
        completion_tokens = served.completion_tokens,
        error,
        "request"
    );
    response
}

struct ClientGone<'a> {
    state: &'a AppState,
    endpoint: &'a str,
    id: &'a str,
    started: Instant,
    armed: bool,
}

impl Drop for ClientGone<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let seconds = self.started.elapsed().as_secs_f64();
        self.state.metrics().record(
            metrics::RequestLabels {
                endpoint: self.endpoint.to_string(),
                model: "-".into(),
                status: 499,
            },
            seconds,
        );
        tracing::info!(
            request_id = %self.id,
            path = self.endpoint,
            status = 499,
            duration_ms = (seconds * 1000.0).round() as u64,
            "client disconnected before the answer; its work was cancelled"
        );
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
        "/v1/status" => "status",
        "/metrics" => "metrics",
        _ => "other",
    }
}

async fn authenticate(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let keys = &state.options().api_keys;
    if keys.is_empty() || request.uri().path() == "/healthz" {
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
fn panicked(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let message = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("(no message)");
    tracing::error!("a request handler panicked: {message}");
    ApiError::internal("-").into_response()
}

async fn not_found(request: Request) -> ApiError {
    ApiError::not_found(request.uri().path())
}

async fn list_models(State(state): State<AppState>) -> Response {
    let created = state.inner.started_unix;
    let data: Vec<_> = state.catalog().iter().map(|e| e.json(created)).collect();
    axum::Json(json!({ "object": "list", "data": data })).into_response()
}

async fn get_model(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    let created = state.inner.started_unix;
    let catalog = state.catalog();
    match catalog.iter().find(|e| e.id == id) {
        Some(entry) => axum::Json(entry.json(created)).into_response(),
        None => {
            let known: Vec<String> = catalog.into_iter().map(|e| e.id).collect();
            ApiError::unknown_model(&id, &known).into_response()
        }
    }
}

/// For load balancers and anyone: no authentication, so no paths, names
/// or errors. `ok`; `degraded` when bundles failed to load (the rest
/// serve); `unavailable` with 503 when the model engine has stopped.
async fn healthz(State(state): State<AppState>) -> Response {
    let engine = state.ensemble().model().health();
    let bundle_errors = state.bundle_problems().len();
    let (code, status) = if !engine.serving {
        (axum::http::StatusCode::SERVICE_UNAVAILABLE, "unavailable")
    } else if bundle_errors > 0 {
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
        })),
    )
        .into_response()
}

/// The operator's view, behind the API key: bundles that failed and why,
/// the engine's failures and load.
async fn status(State(state): State<AppState>) -> Response {
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
        "experts": state.ensemble().experts().len(),
        "in_flight": state.admission().running(),
        "queued": state.admission().queued(),
        "bundle_errors": state.bundle_problems(),
    }))
    .into_response()
}

async fn metrics(State(state): State<AppState>) -> Response {
    let m = state.metrics();
    m.in_flight.set(state.admission().running() as i64);
    m.queue_depth.set(state.admission().queued() as i64);
    m.bundles.set(state.ensemble().experts().len() as i64);
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

async fn embeddings(
    State(state): State<AppState>,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let mut served = Served::default();
    let result = embed(&state, body, &mut served).await;
    let mut response = match result {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    response.extensions_mut().insert(served);
    response
}

async fn embed(
    state: &AppState,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
    served: &mut Served,
) -> Result<Response, ApiError> {
    use base64::Engine as _;
    let body = chat::body_bytes(body)?;
    let req: openai::EmbeddingRequest = openai::parse(&body)?;
    let target = state.resolve(&req.model)?;
    served.model = state.canonical_id(&target);
    match target {
        Target::Embedder => {}
        _ => {
            return Err(ApiError::invalid(
                Some("model".into()),
                format!(
                    "`{}` is not an embedding model; use {}",
                    req.model,
                    state
                        .ensemble()
                        .model()
                        .embedder_name()
                        .unwrap_or("the embedding model listed in /v1/models")
                ),
            ));
        }
    }
    let texts = match req.input {
        openai::EmbeddingInput::One(t) => vec![t],
        openai::EmbeddingInput::Many(v) => v,
        openai::EmbeddingInput::Tokens(_) => {
            return Err(ApiError::invalid(
                Some("input".into()),
                "`input` must be a string or a list of strings (token ids are not supported)",
            ));
        }
    };
    if texts.is_empty() || texts.len() > MAX_EMBED_INPUTS {
        return Err(ApiError::invalid(
            Some("input".into()),
            format!(
                "`input` must hold 1 to {MAX_EMBED_INPUTS} texts, got {}",
                texts.len()
            ),
        ));
    }
    if let Some(i) = texts.iter().position(|t| t.is_empty()) {
        return Err(ApiError::invalid(
            Some(format!("input[{i}]")),
            "an input text is empty",
        ));
    }
    let base64 = match req.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::invalid(
                Some("encoding_format".into()),
                format!("`encoding_format` must be `float` or `base64`, got `{other}`"),
            ));
        }
    };
    let _admitted = state.admission().admit(&served.model).await?;
    let engine = state.ensemble().model().clone();
    let vectors = engine
        .embed(texts.clone())
        .await
        .map_err(|e| ApiError::from_model(&e))?;
    if let (Some(d), Some(v)) = (req.dimensions, vectors.first())
        && d as usize != v.len()
    {
        return Err(ApiError::invalid(
            Some("dimensions".into()),
            format!(
                "this model's embeddings have {} dimensions, not {d}",
                v.len()
            ),
        ));
    }
    let tokens: u32 = texts
        .iter()
        .map(|t| t.split_whitespace().count() as u32)
        .sum();
    served.prompt_tokens = tokens;
    let data: Vec<_> = vectors
        .iter()
        .enumerate()
        .map(|(index, v)| {
            let embedding = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(v)
            };
            json!({ "object": "embedding", "index": index, "embedding": embedding })
        })
        .collect();
    Ok(axum::Json(json!({
        "object": "list",
        "data": data,
        "model": req.model,
        "usage": { "prompt_tokens": tokens, "total_tokens": tokens },
    }))
    .into_response())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
