//! Prometheus metrics of the server (`GET /metrics`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of a request.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `chat`, `completions`, `embeddings`, `models`, ...
    pub endpoint: String,
    /// The expert or model asked for (`-` when none was read).
    pub model: String,
    /// The HTTP status.
    pub status: u16,
}

/// Labels of token counts.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    /// The expert or model.
    pub model: String,
    /// `prompt` or `completion`.
    pub direction: &'static str,
}

/// Labels of per-expert figures.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ExpertLabels {
    /// The expert.
    pub expert: String,
}

/// Labels of a routing decision.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// `route`, `moa` or `cascade`.
    pub strategy: String,
    /// The best chosen expert, or `base` when the base model answers.
    pub expert: String,
    /// `default`, or the router plugin's name.
    pub router: String,
}

/// Labels of an upstream model's figures.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    /// The model's name here.
    pub model: String,
}

/// An upstream's figures, read from its engine at each scrape (they count
/// since the host started).
#[derive(Default)]
pub struct UpstreamMetrics {
    requests: Family<UpstreamLabels, Gauge>,
    errors: Family<UpstreamLabels, Gauge>,
    retries: Family<UpstreamLabels, Gauge>,
    circuit_open: Family<UpstreamLabels, Gauge>,
    latency_sum: Family<UpstreamLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    tokens: Family<TokenLabels, Gauge>,
}

impl UpstreamMetrics {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "upstream_requests",
            "Calls to an upstream model that succeeded, since start",
            self.requests.clone(),
        );
        registry.register(
            "upstream_errors",
            "Calls to an upstream model that failed after retries, since start",
            self.errors.clone(),
        );
        registry.register(
            "upstream_retries",
            "Retries of upstream calls that failed before anything was done, since start",
            self.retries.clone(),
        );
        registry.register(
            "upstream_circuit_open",
            "1 while an upstream's circuit is open (calls fail at once), else 0",
            self.circuit_open.clone(),
        );
        registry.register(
            "upstream_latency_seconds_sum",
            "Summed seconds of successful upstream calls, since start (divide by upstream_requests)",
            self.latency_sum.clone(),
        );
        registry.register(
            "upstream_tokens",
            "Tokens an upstream reported reading and generating, since start",
            self.tokens.clone(),
        );
    }

    /// Copy `stats` into the gauges.
    pub fn set(&self, stats: &crate::inference::upstream::UpstreamStats) {
        let labels = UpstreamLabels {
            model: stats.name.clone(),
        };
        let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.requests.get_or_create(&labels).set(n(stats.requests));
        self.errors.get_or_create(&labels).set(n(stats.errors));
        self.retries.get_or_create(&labels).set(n(stats.retries));
        self.circuit_open.get_or_create(&labels).set(i64::from(
            stats.circuit == crate::inference::upstream::CircuitState::Open,
        ));
        self.latency_sum
            .get_or_create(&labels)
            .set(stats.latency_seconds_sum);
        for (direction, v) in [
            ("prompt", stats.prompt_tokens),
            ("completion", stats.completion_tokens),
        ] {
            self.tokens
                .get_or_create(&TokenLabels {
                    model: stats.name.clone(),
                    direction,
                })
                .set(n(v));
        }
    }
}

/// Every metric the server keeps.
pub struct Metrics {
    registry: Registry,
    /// Requests answered.
    pub requests: Family<RequestLabels, Counter>,
    /// Request latency, until the last byte (streams included).
    pub latency: Family<RequestLabels, Histogram>,
    /// Time to the first streamed token.
    pub first_token: Family<ExpertLabels, Histogram>,
    /// Tokens in and out.
    pub tokens: Family<TokenLabels, Counter>,
    /// Fuel burned by each expert (its callees included).
    pub fuel: Family<ExpertLabels, Counter>,
    /// Streams whose client went away before the end.
    pub cancelled: Family<ExpertLabels, Counter>,
    /// Requests running now.
    pub in_flight: Gauge,
    /// Requests waiting for admission now.
    pub queue_depth: Gauge,
    /// Sequences waiting in the engine's queue.
    pub engine_queued: Gauge,
    /// Sequences in the engine's running batch.
    pub batch_size: Gauge,
    /// Bundles loaded.
    pub bundles: Gauge,
    /// Bundles that failed to (re)load.
    pub bundle_errors: Counter,
    /// Routing decisions of `tessera/auto`.
    pub route_decisions: Family<RouteLabels, Counter>,
    /// Time routing decisions took (query embedding included).
    pub route_latency: Histogram,
    /// Router plugin failures (the default router decided instead).
    pub router_failures: Family<ExpertLabels, Counter>,
    /// Cascade escalations: an answer below the confidence threshold.
    pub escalations: Family<ExpertLabels, Counter>,
    /// `tessera/auto` answers that another candidate or the base model
    /// gave after this expert failed or refused.
    pub fallbacks: Family<ExpertLabels, Counter>,
    /// Upstream models' figures.
    pub upstream: UpstreamMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Register every metric under the `tessera_` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("tessera");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<RequestLabels, Histogram>::new_with_constructor(|| {
            // 1 ms to ~65 s.
            Histogram::new(exponential_buckets(0.001, 2.0, 17))
        });
        let first_token = Family::<ExpertLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.005, 2.0, 14))
        });
        let tokens = Family::<TokenLabels, Counter>::default();
        let fuel = Family::<ExpertLabels, Counter>::default();
        let cancelled = Family::<ExpertLabels, Counter>::default();
        let (in_flight, queue_depth, engine_queued, batch_size, bundles): (
            Gauge,
            Gauge,
            Gauge,
            Gauge,
            Gauge,
        ) = Default::default();
        let bundle_errors = Counter::default();
        let route_decisions = Family::<RouteLabels, Counter>::default();
        // 100 µs to ~3 s.
        let route_latency = Histogram::new(exponential_buckets(0.0001, 2.0, 15));
        let router_failures = Family::<ExpertLabels, Counter>::default();
        let escalations = Family::<ExpertLabels, Counter>::default();
        let fallbacks = Family::<ExpertLabels, Counter>::default();
        registry.register(
            "route_fallbacks",
            "tessera/auto answers given by the next candidate or the base model after this expert failed or refused",
            fallbacks.clone(),
        );
        registry.register(
            "route_decisions",
            "Routing decisions of tessera/auto, by strategy and best expert",
            route_decisions.clone(),
        );
        registry.register(
            "route_duration_seconds",
            "Time a routing decision took, the query embedding included",
            route_latency.clone(),
        );
        registry.register(
            "router_plugin_failures",
            "Router plugin failures; the default router decided instead",
            router_failures.clone(),
        );
        registry.register(
            "cascade_escalations",
            "Cascade answers below the confidence threshold, by expert",
            escalations.clone(),
        );
        registry.register("requests", "Requests answered", requests.clone());
        registry.register(
            "request_duration_seconds",
            "Request latency until the last byte",
            latency.clone(),
        );
        registry.register(
            "time_to_first_token_seconds",
            "Time from request to the first streamed text",
            first_token.clone(),
        );
        registry.register("tokens", "Tokens read and generated", tokens.clone());
        registry.register("expert_fuel", "Fuel burned by each expert", fuel.clone());
        registry.register(
            "streams_cancelled",
            "Streams whose client disconnected before the end",
            cancelled.clone(),
        );
        registry.register("requests_in_flight", "Requests running", in_flight.clone());
        registry.register(
            "queue_depth",
            "Requests waiting for admission",
            queue_depth.clone(),
        );
        registry.register(
            "engine_queued_sequences",
            "Sequences waiting in the engine's queue",
            engine_queued.clone(),
        );
        registry.register(
            "engine_batch_size",
            "Sequences in the engine's running batch",
            batch_size.clone(),
        );
        registry.register("bundles_loaded", "Bundles loaded", bundles.clone());
        registry.register(
            "bundle_load_errors",
            "Bundles that failed to load or reload",
            bundle_errors.clone(),
        );
        let upstream = UpstreamMetrics::default();
        upstream.register(&mut registry);
        Metrics {
            registry,
            upstream,
            requests,
            latency,
            first_token,
            tokens,
            fuel,
            cancelled,
            in_flight,
            queue_depth,
            engine_queued,
            batch_size,
            bundles,
            bundle_errors,
            route_decisions,
            route_latency,
            router_failures,
            escalations,
            fallbacks,
        }
    }

    /// Count one answered request.
    pub fn record(&self, labels: RequestLabels, seconds: f64) {
        self.requests.get_or_create(&labels).inc();
        self.latency.get_or_create(&labels).observe(seconds);
    }

    /// Count the tokens of one answer.
    pub fn record_tokens(&self, model: &str, prompt: u32, completion: u32) {
        for (direction, n) in [("prompt", prompt), ("completion", completion)] {
            self.tokens
                .get_or_create(&TokenLabels {
                    model: model.to_string(),
                    direction,
                })
                .inc_by(u64::from(n));
        }
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}
