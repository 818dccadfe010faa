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
mod echo;
mod embeddings;
pub mod error;
mod info;
pub mod metrics;
pub mod openai;
pub mod reload;
mod render;
mod stream;
mod track;
mod verify;

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::HeaderMap;
use axum::routing::{get, post};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};

pub use admission::Admission;
pub use error::ApiError;
pub use metrics::Metrics;

use crate::ensemble::Ensemble;
use track::Served;

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
    /// Set once shutdown begins: `/readyz` says 503 so that load
    /// balancers stop sending requests while those in flight finish.
    draining: std::sync::atomic::AtomicBool,
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
                draining: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    /// From now on `/readyz` answers 503 (`draining`): shutdown has begun.
    pub fn start_draining(&self) {
        self.inner
            .draining
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether shutdown has begun.
    pub fn is_draining(&self) -> bool {
        self.inner
            .draining
            .load(std::sync::atomic::Ordering::SeqCst)
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

    /// When the server started (the `created` of every model).
    fn started_unix(&self) -> u64 {
        self.inner.started_unix
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

/// The API as an axum router over `state`.
pub fn app(state: AppState) -> Router {
    let max_body = state.options().max_body_bytes;
    Router::new()
        .route(
            "/v1/chat/completions",
            post(chat::answer::<openai::ChatRequest>),
        )
        .route("/v1/completions", post(echo::completions))
        .route("/v1/embeddings", post(embeddings::embeddings))
        .route("/v1/route", post(chat::route))
        .route("/v1/verify", post(verify::verify))
        .route("/v1/models", get(info::list_models))
        .route("/v1/models/{*id}", get(info::get_model))
        .route("/healthz", get(info::healthz))
        .route("/readyz", get(info::readyz))
        .route("/v1/status", get(info::status))
        .route("/metrics", get(info::metrics))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            track::authenticate,
        ))
        .layer(CatchPanicLayer::custom(track::panicked))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            track::track,
        ))
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

async fn not_found(request: Request) -> ApiError {
    ApiError::not_found(request.uri().path())
}

fn request_id(headers: &HeaderMap) -> String {
    headers
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_string()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
