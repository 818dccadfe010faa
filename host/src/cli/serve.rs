//! `tessera serve`: the OpenAI-compatible server over a directory of
//! bundles, with hot reload and graceful shutdown.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Deserialize;
use tessera_host::build::{BuildOptions, build_plugin, is_plugin_source};
use tessera_host::bundle::remote::{PinnedUrl, fetch_pinned};
use tessera_host::bundle::sign::TrustedKeys;
use tessera_host::ensemble::router::MAX_TOP_K;
use tessera_host::ensemble::watch::BundleWatcher;
use tessera_host::ensemble::{Ensemble, RouterConfig, RoutingIndex};
use tessera_host::inference::upstream::{UpstreamEngine, UpstreamOptions};
use tessera_host::inference::{DeviceChoice, MODELS, ModelStatus};
use tessera_host::sandbox::{HostPolicy, Sandbox};
use tessera_host::server::{self, AppState, ServerOptions, reload};

/// Default address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default interval between bundle directory scans.
pub const DEFAULT_RELOAD_INTERVAL_MS: u64 = 1000;

/// Arguments of `tessera serve`. Every option can also come from the
/// `--config` file (same names, kebab-case); flags win.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Bundle directories, `.tessera` packs, or directories of them; a
    /// plugin crate is served from what `tessera build` made of it
    /// [default: ./plugins, the example experts].
    #[arg(value_name = "DIR")]
    bundles: Vec<PathBuf>,

    /// A `.tessera` pack to fetch from URL and serve, pinned by its sha256
    /// (repeatable): `URL#sha256=HEX`. Fetched once into the cache and
    /// checked against the pin at every start; a mismatch stops the host.
    #[arg(long = "bundle-url", value_name = "URL#sha256=HEX")]
    bundle_urls: Vec<String>,

    /// A TOML file with these options (flags override it).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,

    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,

    /// An API key clients must send as `Authorization: Bearer KEY`
    /// (repeat for several) [env: TESSERA_API_KEY].
    #[arg(
        long = "api-key",
        value_name = "KEY",
        env = "TESSERA_API_KEY",
        hide_env_values = true
    )]
    api_keys: Vec<String>,

    /// A file of API keys, one per line (`#` starts a comment).
    #[arg(long, value_name = "FILE")]
    api_keys_file: Option<PathBuf>,

    /// Largest request body, in bytes [default: 4 MiB].
    #[arg(long, value_name = "BYTES")]
    max_body_bytes: Option<usize>,

    /// Requests that run at once; one model, expert or strategy may hold
    /// three quarters of them [default: 64].
    #[arg(long, value_name = "N")]
    max_running: Option<usize>,

    /// Requests that may wait for a place, three quarters of them for one
    /// model; more get 429 [default: 256].
    #[arg(long, value_name = "N")]
    max_queued: Option<usize>,

    /// Time limit of a base-model request, in seconds [default: 300].
    #[arg(long, value_name = "SECS")]
    request_timeout_secs: Option<u64>,

    /// Most open client connections; more wait to be accepted
    /// [default: 1024].
    #[arg(long, value_name = "N")]
    max_connections: Option<usize>,

    /// Seconds a client has to send a request's headers [default: 10].
    #[arg(long, value_name = "SECS")]
    header_read_timeout_secs: Option<u64>,

    /// How often the bundle directories are rescanned, in milliseconds; 0
    /// turns hot reload off [default: 1000].
    #[arg(long, value_name = "MS")]
    reload_interval_ms: Option<u64>,

    /// Build the plugin crates among the bundle directories before serving.
    /// Building runs cargo, and with it each crate's build scripts and
    /// proc-macros, natively on this machine: use it only for your own
    /// sources, never for bundles from strangers.
    #[arg(long)]
    build: bool,

    /// Serving never builds unless `--build` is given; kept so that older
    /// command lines still work.
    #[arg(long, hide = true)]
    no_build: bool,

    /// Load no model: only experts that need none can answer.
    #[arg(long)]
    no_model: bool,

    /// Serve only `.tessera` packs signed by one of the OpenSSH public keys
    /// in this file (one per line, as `tessera keys new` writes them);
    /// unsigned bundles and unknown signers are refused.
    #[arg(long, value_name = "FILE")]
    trusted_keys: Option<PathBuf>,

    /// The key that signs receipts (`x-tessera-receipt: true`) [default:
    /// the user data dir's tessera/keys/host_ed25519, made on first start].
    #[arg(long, value_name = "FILE")]
    host_key: Option<PathBuf>,

    /// A router plugin (bundle of kind `router`) that decides for
    /// `tessera/auto` instead of the default embedding router; when it
    /// fails, the default router decides.
    #[arg(long, value_name = "NAME")]
    router: Option<String>,

    /// Experts a routing decision keeps: the fan-out of `moa`, the length
    /// of a cascade [default: 3].
    #[arg(long, value_name = "K")]
    route_top_k: Option<usize>,

    /// Lowest similarity (-1..1) at which the router picks an expert;
    /// below it the base model answers [default: 0.2].
    #[arg(long, value_name = "SCORE")]
    route_threshold: Option<f32>,

    /// Strategy of a plain `tessera/auto`: route, moa or cascade
    /// [default: route].
    #[arg(long, value_name = "STRATEGY")]
    strategy: Option<tessera_host::ensemble::Strategy>,

    /// The expert that writes the final answer of `moa` when --moa-fuse
    /// [default: aggregator].
    #[arg(long, value_name = "NAME")]
    aggregator: Option<String>,

    /// `moa` fuses: the aggregator rewrites the experts' answers into one,
    /// instead of the default, selecting one of them (by certainty,
    /// agreement, then the model's likelihood).
    #[arg(long)]
    moa_fuse: bool,

    /// Confidence (0..1) at which a cascade stops escalating [default: 0.5].
    #[arg(long, value_name = "P")]
    cascade_threshold: Option<f32>,

    /// How far (in router score) below the best candidate a cascade still
    /// escalates a low-confidence answer [default: 0.03]; a failed stage
    /// moves on to the next candidate whatever its score.
    #[arg(long, value_name = "SCORE")]
    cascade_window: Option<f32>,

    /// Compare the cascade threshold with calibrated confidence: how often
    /// answers like a stage's were right on a development set (a file from
    /// `tessera eval --calibrate`).
    #[arg(long, value_name = "FILE")]
    cascade_calibration: Option<PathBuf>,

    /// Serve the Hugging Face PEFT LoRA adapter in DIR as model NAME, a
    /// fine-tune of the base model (repeatable).
    #[arg(long = "adapter", value_name = "NAME=DIR")]
    adapters: Vec<String>,

    /// Serve model NAME from an OpenAI-compatible server (vLLM, llama.cpp,
    /// TGI, SGLang, another Tessera) at URL (its `/v1` base), asking it for
    /// MODEL_ID [default: NAME] (repeatable). Experts use it with
    /// `model = "NAME"` under [capabilities]; clients with `"model":
    /// "NAME"`. `[[models]]` in the config file sets timeouts, the API key,
    /// concurrency and the circuit breaker.
    #[arg(long = "upstream", value_name = "NAME=URL[#MODEL_ID]")]
    upstreams: Vec<String>,

    /// Seconds between the shutdown signal and the host refusing new
    /// connections, during which `/readyz` answers 503 so that a load
    /// balancer stops sending requests here first [default: 0].
    #[arg(long, value_name = "SECS")]
    drain_secs: Option<u64>,

    /// `[[models]]` of the config file.
    #[arg(skip)]
    upstream_models: Vec<UpstreamModel>,

    #[command(flatten)]
    audit: super::records::StoreArgs,

    #[command(flatten)]
    engine: super::engine::EngineArgs,
}

/// The `--config` file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct ConfigFile {
    bundles: Option<Vec<PathBuf>>,
    bundle_urls: Option<Vec<String>>,
    listen: Option<SocketAddr>,
    api_keys: Option<Vec<String>>,
    api_keys_file: Option<PathBuf>,
    max_body_bytes: Option<usize>,
    max_running: Option<usize>,
    max_queued: Option<usize>,
    request_timeout_secs: Option<u64>,
    max_connections: Option<usize>,
    header_read_timeout_secs: Option<u64>,
    reload_interval_ms: Option<u64>,
    build: Option<bool>,
    no_build: Option<bool>,
    no_model: Option<bool>,
    trusted_keys: Option<PathBuf>,
    host_key: Option<PathBuf>,
    audit_db: Option<PathBuf>,
    no_audit: Option<bool>,
    audit_retention: Option<String>,
    audit_sync: Option<super::records::SyncArg>,
    router: Option<String>,
    route_top_k: Option<usize>,
    route_threshold: Option<f32>,
    strategy: Option<tessera_host::ensemble::Strategy>,
    aggregator: Option<String>,
    #[serde(default)]
    moa_fuse: bool,
    cascade_threshold: Option<f32>,
    cascade_window: Option<f32>,
    cascade_calibration: Option<PathBuf>,
    models_dir: Option<PathBuf>,
    model: Option<PathBuf>,
    device: Option<String>,
    kv_budget_mib: Option<usize>,
    max_batch: Option<usize>,
    adapter_budget_mib: Option<usize>,
    threads: Option<usize>,
    quantize: Option<super::engine::QuantizeArg>,
    activation_bits: Option<u8>,
    kv_cache: Option<super::engine::KvCacheArg>,
    batch_precision: Option<super::engine::BatchPrecisionArg>,
    wgpu_weights: Option<super::engine::WgpuWeightsArg>,
    /// Adapter name → PEFT directory.
    adapters: Option<std::collections::BTreeMap<String, PathBuf>>,
    drain_secs: Option<u64>,
    /// Models served by upstreams.
    #[serde(default)]
    models: Vec<UpstreamModel>,
}

/// A `[[models]]` entry of the config file: a model served by an
/// OpenAI-compatible upstream.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct UpstreamModel {
    /// The name experts and clients use.
    name: String,
    /// The upstream's `/v1` base URL.
    upstream: String,
    /// The upstream's id of the model [default: name].
    model_id: Option<String>,
    /// The environment variable holding the upstream's API key.
    api_key_env: Option<String>,
    /// Seconds to connect [default: 5].
    connect_timeout_secs: Option<f64>,
    /// Seconds for one whole request [default: 300].
    timeout_secs: Option<f64>,
    /// Requests in flight at once [default: 64].
    max_concurrent: Option<usize>,
    /// Retries of a failure that did nothing [default: 2].
    retries: Option<u32>,
    /// Failures in a row that open the circuit [default: 5].
    breaker_failures: Option<u32>,
    /// Seconds an open circuit refuses calls before a probe [default: 10].
    breaker_open_secs: Option<f64>,
}

impl UpstreamModel {
    fn options(&self) -> anyhow::Result<UpstreamOptions> {
        let id = self.model_id.as_deref().unwrap_or(&self.name);
        let mut o = UpstreamOptions::new(&self.name, &self.upstream, id);
        if let Some(var) = &self.api_key_env {
            o.api_key = Some(std::env::var(var).map_err(|_| {
                anyhow::anyhow!(
                    "model `{}`: api-key-env names {var}, which is not set",
                    self.name
                )
            })?);
        }
        let secs = |what: &str, v: f64| {
            if v.is_finite() && v > 0.0 && v <= 86_400.0 {
                Ok(Duration::from_secs_f64(v))
            } else {
                Err(anyhow::anyhow!(
                    "model `{}`: {what} must be between 0 and 86400 seconds, not {v}",
                    self.name
                ))
            }
        };
        if let Some(v) = self.connect_timeout_secs {
            o.connect_timeout = secs("connect-timeout-secs", v)?;
        }
        if let Some(v) = self.timeout_secs {
            o.request_timeout = secs("timeout-secs", v)?;
        }
        if let Some(v) = self.breaker_open_secs {
            o.breaker_open = secs("breaker-open-secs", v)?;
        }
        if let Some(v) = self.max_concurrent {
            o.max_concurrent = v;
        }
        if let Some(v) = self.retries {
            o.retries = v.min(10);
        }
        if let Some(v) = self.breaker_failures {
            o.breaker_failures = v.max(1);
        }
        o.check().map_err(|m| anyhow::anyhow!("{m}"))?;
        Ok(o)
    }
}

impl ConfigFile {
    fn read(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the config file {}", path.display()))?;
        let mut config: ConfigFile =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        // Paths in the file are relative to the file.
        let base = path.parent().unwrap_or(Path::new("."));
        let rebase = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        config.bundles.iter_mut().flatten().for_each(rebase);
        config.api_keys_file.iter_mut().for_each(rebase);
        config.cascade_calibration.iter_mut().for_each(rebase);
        config.models_dir.iter_mut().for_each(rebase);
        config.model.iter_mut().for_each(rebase);
        config.trusted_keys.iter_mut().for_each(rebase);
        config.host_key.iter_mut().for_each(rebase);
        config.audit_db.iter_mut().for_each(rebase);
        config
            .adapters
            .iter_mut()
            .flatten()
            .for_each(|(_, p)| rebase(p));
        Ok(config)
    }
}

impl ServeArgs {
    /// Fill what the flags left out from the config file.
    fn merge(mut self) -> anyhow::Result<Self> {
        let Some(path) = &self.config else {
            return Ok(self);
        };
        let c = ConfigFile::read(path)?;
        if self.bundles.is_empty() {
            self.bundles = c.bundles.unwrap_or_default();
        }
        if self.api_keys.is_empty() {
            self.api_keys = c.api_keys.unwrap_or_default();
        }
        if self.bundle_urls.is_empty() {
            self.bundle_urls = c.bundle_urls.unwrap_or_default();
        }
        self.listen = self.listen.or(c.listen);
        self.api_keys_file = self.api_keys_file.or(c.api_keys_file);
        self.max_body_bytes = self.max_body_bytes.or(c.max_body_bytes);
        self.max_running = self.max_running.or(c.max_running);
        self.max_queued = self.max_queued.or(c.max_queued);
        self.request_timeout_secs = self.request_timeout_secs.or(c.request_timeout_secs);
        self.max_connections = self.max_connections.or(c.max_connections);
        self.header_read_timeout_secs =
            self.header_read_timeout_secs.or(c.header_read_timeout_secs);
        self.reload_interval_ms = self.reload_interval_ms.or(c.reload_interval_ms);
        self.build |= c.build.unwrap_or(false);
        self.no_build |= c.no_build.unwrap_or(false);
        self.no_model |= c.no_model.unwrap_or(false);
        self.trusted_keys = self.trusted_keys.take().or(c.trusted_keys);
        self.host_key = self.host_key.take().or(c.host_key);
        let a = &mut self.audit;
        a.audit_db = a.audit_db.take().or(c.audit_db);
        a.no_audit |= c.no_audit.unwrap_or(false);
        a.audit_sync = a.audit_sync.or(c.audit_sync);
        if a.audit_retention.is_none()
            && let Some(r) = c.audit_retention
        {
            a.audit_retention = Some(
                r.parse()
                    .map_err(|m| anyhow::anyhow!("{}: audit-retention: {m}", path.display()))?,
            );
        }
        self.router = self.router.take().or(c.router);
        self.route_top_k = self.route_top_k.or(c.route_top_k);
        self.route_threshold = self.route_threshold.or(c.route_threshold);
        self.strategy = self.strategy.or(c.strategy);
        self.aggregator = self.aggregator.take().or(c.aggregator);
        self.moa_fuse |= c.moa_fuse;
        self.cascade_threshold = self.cascade_threshold.or(c.cascade_threshold);
        self.cascade_window = self.cascade_window.or(c.cascade_window);
        self.cascade_calibration = self.cascade_calibration.take().or(c.cascade_calibration);
        let e = &mut self.engine;
        e.models_dir = e.models_dir.take().or(c.models_dir);
        e.model = e.model.take().or(c.model);
        if e.device.is_none()
            && let Some(d) = c.device
        {
            e.device = Some(
                d.parse::<DeviceChoice>()
                    .map_err(|m| anyhow::anyhow!("{}: device: {m}", path.display()))?,
            );
        }
        e.kv_budget_mib = e.kv_budget_mib.or(c.kv_budget_mib);
        e.max_batch = e.max_batch.or(c.max_batch);
        e.adapter_budget_mib = e.adapter_budget_mib.or(c.adapter_budget_mib);
        e.threads = e.threads.or(c.threads);
        e.quantize = e.quantize.or(c.quantize);
        e.kv_cache = e.kv_cache.or(c.kv_cache);
        e.batch_precision = e.batch_precision.or(c.batch_precision);
        e.wgpu_weights = e.wgpu_weights.or(c.wgpu_weights);
        if let Some(bits) = c.activation_bits
            && bits != 16
            && bits != 8
        {
            anyhow::bail!("{}: activation-bits: {bits} is not 16 or 8", path.display());
        }
        e.activation_bits = e.activation_bits.or(c.activation_bits);
        if self.adapters.is_empty() {
            self.adapters = c
                .adapters
                .unwrap_or_default()
                .into_iter()
                .map(|(name, dir)| format!("{name}={}", dir.display()))
                .collect();
        }
        self.upstream_models = c.models;
        self.drain_secs = self.drain_secs.or(c.drain_secs);
        Ok(self)
    }

    /// The upstream models of the flags and the config file.
    fn upstreams(&self) -> anyhow::Result<Vec<UpstreamOptions>> {
        let mut out = Vec::new();
        for flag in &self.upstreams {
            out.push(
                UpstreamOptions::parse_flag(flag).map_err(|m| anyhow::anyhow!("--upstream {m}"))?,
            );
        }
        for model in &self.upstream_models {
            if !out.iter().any(|o| o.name.eq_ignore_ascii_case(&model.name)) {
                out.push(model.options()?);
            }
        }
        Ok(out)
    }

    fn api_keys(&self) -> anyhow::Result<Vec<String>> {
        let mut keys = self.api_keys.clone();
        if let Some(path) = &self.api_keys_file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the API keys file {}", path.display()))?;
            keys.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(String::from),
            );
            if keys.is_empty() {
                anyhow::bail!(
                    "{}: no API keys in the file (one per line); remove --api-keys-file to serve without keys",
                    path.display()
                );
            }
        }
        keys.retain(|k| !k.is_empty());
        Ok(keys)
    }

    fn router_config(&self) -> anyhow::Result<RouterConfig> {
        let d = RouterConfig::default();
        let top_k = self.route_top_k.unwrap_or(d.top_k);
        if !(1..=MAX_TOP_K).contains(&top_k) {
            anyhow::bail!("--route-top-k must be between 1 and {MAX_TOP_K}, not {top_k}");
        }
        let threshold = self.route_threshold.unwrap_or(d.threshold);
        if !(-1.0..=1.0).contains(&threshold) {
            anyhow::bail!(
                "--route-threshold is a cosine similarity between -1 and 1, not {threshold}"
            );
        }
        let cascade_threshold = self.cascade_threshold.unwrap_or(d.cascade_threshold);
        if !(0.0..=1.0).contains(&cascade_threshold) {
            anyhow::bail!(
                "--cascade-threshold is a confidence between 0 and 1, not {cascade_threshold}"
            );
        }
        let cascade_window = self.cascade_window.unwrap_or(d.cascade_window);
        if !(0.0..=2.0).contains(&cascade_window) {
            anyhow::bail!(
                "--cascade-window is a difference of cosine similarities between 0 and 2, not {cascade_window}"
            );
        }
        Ok(RouterConfig {
            top_k,
            threshold,
            plugin: self.router.clone(),
            default_strategy: self.strategy.unwrap_or_default(),
            aggregator: self.aggregator.clone().unwrap_or(d.aggregator.clone()),
            cascade_threshold,
            cascade_window,
            moa_fuse: self.moa_fuse,
            cascade_calibration: match &self.cascade_calibration {
                Some(path) => Some(std::sync::Arc::new(
                    tessera_host::ensemble::calibration::Calibration::load(path)?,
                )),
                None => None,
            },
            ..d
        })
    }

    fn options(&self) -> anyhow::Result<ServerOptions> {
        let d = ServerOptions::default();
        Ok(ServerOptions {
            api_keys: self.api_keys()?,
            max_body_bytes: self.max_body_bytes.unwrap_or(d.max_body_bytes),
            max_running: self.max_running.unwrap_or(d.max_running),
            max_queued: self.max_queued.unwrap_or(d.max_queued),
            request_timeout: self
                .request_timeout_secs
                .map_or(d.request_timeout, Duration::from_secs),
            max_connections: match self.max_connections {
                Some(0) => anyhow::bail!("--max-connections must be at least 1"),
                other => other.unwrap_or(d.max_connections),
            },
            header_read_timeout: match self.header_read_timeout_secs {
                Some(0) => anyhow::bail!("--header-read-timeout-secs must be at least 1"),
                other => other.map_or(d.header_read_timeout, Duration::from_secs),
            },
        })
    }
}

pub async fn run(args: ServeArgs, cache_dir: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let args = args.merge()?;
    let options = args.options()?;
    let router_config = args.router_config()?;
    let upstreams = args.upstreams()?;
    let pins = args
        .bundle_urls
        .iter()
        .map(|u| u.parse::<PinnedUrl>())
        .collect::<Result<Vec<_>, _>>()?;
    let fetched = fetch_pinned_packs(&pins, cache_dir.as_deref()).await?;
    let roots = if args.bundles.is_empty() && !fetched.is_empty() {
        fetched
    } else if args.bundles.is_empty() {
        let examples = PathBuf::from("plugins");
        if !examples.is_dir() {
            anyhow::bail!(
                "no bundle directories given, and no ./plugins directory (the example experts) here: pass one, e.g. `tessera serve path/to/bundles`"
            );
        }
        vec![examples]
    } else {
        args.bundles.iter().cloned().chain(fetched).collect()
    };
    for root in &roots {
        let pack = root.is_file()
            && root
                .extension()
                .is_some_and(|e| e == tessera_host::bundle::pack::PACK_EXTENSION);
        if !root.is_dir() && !pack {
            anyhow::bail!(
                "{}: neither a directory nor a .tessera pack; pass bundle directories, packs, or directories of them",
                root.display()
            );
        }
    }
    let trusted_keys = args
        .trusted_keys
        .as_deref()
        .map(TrustedKeys::read)
        .transpose()?;
    let host_key = super::keys::host_key(args.host_key.as_deref())?;
    let audit_store = args.audit.open()?;
    let listen = args
        .listen
        .unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("valid default address"));
    // Bind first: a taken port is reported before minutes of loading.
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen} (--listen)"))?;

    let mut watcher = BundleWatcher::new(roots);
    if args.build && !args.no_build {
        build_crates(&watcher.discover());
    }
    let engine = if args.no_model {
        args.engine.engine(true)?
    } else {
        if args.engine.model.is_none() {
            let store = args.engine.store();
            if MODELS
                .iter()
                .any(|spec| !matches!(store.status(spec), ModelStatus::Present))
            {
                eprintln!(
                    "fetching the default models into {} (once) ...",
                    store.dir().display()
                );
                super::models::pull_all(&store, false)?;
            }
        }
        args.engine.load()?
    };
    for spec in &args.adapters {
        let Some((name, dir)) = spec.split_once('=') else {
            anyhow::bail!(
                "--adapter {spec}: write NAME=DIR, for example --adapter support-bot=adapters/support-bot"
            );
        };
        if !tessera_host::bundle::is_valid_name(name) {
            anyhow::bail!(
                "--adapter {spec}: `{name}` is not a model name (1 to 64 lowercase letters, digits and dashes)"
            );
        }
        let info = engine
            .register_adapter(name, Path::new(dir))
            .map_err(|e| anyhow::anyhow!("--adapter {spec}: {e}"))?;
        eprintln!(
            "serving adapter `{name}` (rank {}, {}) from {dir}",
            info.rank,
            info.targets.join(", ")
        );
    }
    let sandbox = Sandbox::new(HostPolicy::default(), cache_dir.as_deref())?;
    let ensemble = Ensemble::new(sandbox, engine);
    for options in upstreams {
        let (name, url, id) = (
            options.name.clone(),
            options.url.clone(),
            options.model_id.clone(),
        );
        let engine = UpstreamEngine::new(options).map_err(|m| anyhow::anyhow!("{m}"))?;
        ensemble
            .add_model(std::sync::Arc::new(engine))
            .map_err(|m| anyhow::anyhow!("--upstream {name}: {m}"))?;
        eprintln!("serving model `{name}` from {url} (upstream model `{id}`)");
    }
    ensemble.set_router_config(router_config.clone());
    if let Some(keys) = trusted_keys {
        eprintln!(
            "serving only bundles signed by the {} keys in {}",
            keys.len(),
            keys.path.display()
        );
        ensemble.require_signatures(keys);
    }
    eprintln!(
        "receipts are signed by {} (ask with `x-tessera-receipt: true`)",
        host_key.signer().fingerprint
    );
    ensemble.set_host_key(host_key);
    let pruner = match audit_store {
        Some(store) => {
            let stats = store.stats()?;
            eprintln!(
                "recording every answer in {} ({} records; `tessera audit list`)",
                store.path().display(),
                stats.records
            );
            ensemble.set_audit_store(store.clone());
            Some(args.audit.spawn_pruner(store))
        }
        None => {
            eprintln!("not recording answers (--no-audit)");
            None
        }
    };
    if cache_dir.is_some() {
        ensemble
            .routing_index()
            .set_cache_dir(RoutingIndex::default_cache_dir());
    }
    let state = AppState::new(ensemble.clone(), options);

    let started = Instant::now();
    let report = watcher.scan(&ensemble).await;
    reload::publish(&state, &watcher, &report);
    let index = ensemble.routing_index().stats();
    eprintln!(
        "loaded {} experts in {:.1?} ({} routable: {} embedded, {} from the embedding cache){}",
        ensemble.experts().len(),
        started.elapsed(),
        ensemble.routing_index().len(),
        index.embedded,
        index.from_cache,
        if report.failed.is_empty() {
            String::new()
        } else {
            format!(
                "; {} bundles failed (see above and GET /v1/status)",
                report.failed.len()
            )
        }
    );

    if let Some(router) = &router_config.plugin {
        match ensemble.expert(router) {
            Some(r) if r.manifest.kind == tessera_host::bundle::BundleKind::Router => {
                eprintln!("routing with the router plugin `{router}`")
            }
            _ => eprintln!(
                "warning: --router {router}: no router bundle of that name is loaded; the default router decides until one is"
            ),
        }
    }

    let interval = args
        .reload_interval_ms
        .unwrap_or(DEFAULT_RELOAD_INTERVAL_MS);
    let reloader = (interval > 0)
        .then(|| reload::spawn_reloader(state.clone(), watcher, Duration::from_millis(interval)));

    let address = listener.local_addr()?;
    let engine = state.ensemble().model().clone();
    eprintln!(
        "serving {} experts, {} and {} on http://{address}/v1 (Ctrl-C stops)",
        state.ensemble().experts().len(),
        engine.model_name(),
        engine.embedder_name().unwrap_or("no embedder"),
    );
    tracing::info!(%address, "listening");
    let drain = Duration::from_secs(args.drain_secs.unwrap_or(0));
    server::serve(listener, state.clone(), shutdown_signal(state, drain)).await?;
    if let Some(reloader) = reloader {
        reloader.abort();
    }
    if let Some(pruner) = pruner {
        pruner.abort();
    }
    eprintln!("stopped: every request in flight was answered");
    Ok(ExitCode::SUCCESS)
}

/// Fetch (or find in the cache) every pinned pack; the paths of the
/// checked files. Without a cache directory they go to a temporary one
/// that lives as long as the process.
async fn fetch_pinned_packs(
    pins: &[PinnedUrl],
    cache_dir: Option<&Path>,
) -> anyhow::Result<Vec<PathBuf>> {
    if pins.is_empty() {
        return Ok(Vec::new());
    }
    let cache = match cache_dir {
        Some(dir) => dir.to_path_buf(),
        None => tempfile::tempdir()?.keep(),
    };
    let mut paths = Vec::new();
    for pin in pins {
        eprintln!("fetching {} (sha256 {}) ...", pin.url, &pin.sha256[..12]);
        paths.push(fetch_pinned(pin, &cache).await?);
    }
    Ok(paths)
}

/// Build the plugin sources among `dirs` (unchanged ones are quick).
/// A crate that fails to build is reported; its last build, if any, is
/// served.
fn build_crates(dirs: &[PathBuf]) {
    for dir in dirs {
        if !is_plugin_source(dir) {
            continue;
        }
        eprintln!("building {} ...", dir.display());
        let options = BuildOptions {
            quiet: true,
            ..BuildOptions::default()
        };
        if let Err(e) = build_plugin(dir, &options) {
            eprintln!("error: cannot build {}: {e:#}", dir.display());
        }
    }
}

/// Resolves on the first SIGINT or SIGTERM, after `drain` during which
/// `/readyz` says `draining` and requests are still taken (so that a load
/// balancer stops sending before the host stops accepting); a second
/// signal exits at once.
async fn shutdown_signal(state: AppState, drain: Duration) {
    wait_for_signal().await;
    state.start_draining();
    if !drain.is_zero() {
        eprintln!(
            "draining: /readyz answers 503; still serving for {} s (--drain-secs)",
            drain.as_secs()
        );
        tokio::select! {
            _ = tokio::time::sleep(drain) => {}
            _ = wait_for_signal() => {
                eprintln!("exiting now");
                std::process::exit(130);
            }
        }
    }
    eprintln!(
        "shutting down: no new connections; finishing the requests in flight (signal again to exit now)"
    );
    tokio::spawn(async {
        wait_for_signal().await;
        eprintln!("exiting now");
        std::process::exit(130);
    });
}

async fn wait_for_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fleet config in `deploy/` is one this `serve` reads: every key
    /// known, its upstream valid, its paths absolute (they are the
    /// image's).
    #[test]
    fn the_deploy_config_is_a_valid_serve_config() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/tessera.toml");
        let config = ConfigFile::read(&path).unwrap();
        assert_eq!(
            config.bundles,
            Some(vec![PathBuf::from("/opt/tessera/bundles")])
        );
        assert_eq!(config.drain_secs, Some(5));
        let [model] = &config.models[..] else {
            panic!("{:?}", config.models)
        };
        // The key comes from the environment in the pod; here, none.
        let keyless = UpstreamModel {
            api_key_env: None,
            ..model.clone()
        };
        let options = keyless.options().unwrap();
        assert_eq!(options.name, "qwen2.5-7b");
        assert_eq!(options.url, "http://vllm:8000/v1");
        assert_eq!(options.model_id, "Qwen/Qwen2.5-7B-Instruct");
        assert_eq!(options.max_concurrent, 256);
        let e = model.options().unwrap_err().to_string();
        assert!(e.contains("VLLM_API_KEY, which is not set"), "{e}");
    }

    /// The engine options that `args` (the engine's flags) give.
    fn engine_options(
        args: &[&str],
    ) -> Result<tessera_host::inference::EngineOptions, clap::Error> {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            engine: super::super::engine::EngineArgs,
        }
        <Cli as clap::Parser>::try_parse_from([&["tessera"], args].concat())
            .map(|c| c.engine.options())
    }

    #[test]
    fn wgpu_weights_come_from_the_flag_or_the_config_file() {
        use super::super::engine::WgpuWeightsArg;
        use tessera_host::inference::BurnWeights;

        let parse = |args: &[&str]| engine_options(args).map(|o| o.wgpu_weights);
        assert_eq!(parse(&[]).unwrap(), BurnWeights::Q8Blocks);
        assert_eq!(parse(&["--wgpu-weights", "f32"]).unwrap(), BurnWeights::F32);
        assert!(parse(&["--wgpu-weights", "q4"]).is_err());

        let config: ConfigFile = toml::from_str("wgpu-weights = \"f32\"\n").unwrap();
        assert_eq!(config.wgpu_weights, Some(WgpuWeightsArg::F32));
        let e = toml::from_str::<ConfigFile>("wgpu-weights = \"q4\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("q8") && e.contains("f32"), "{e}");
    }

    #[test]
    fn batch_precision_comes_from_the_flag_or_the_config_file() {
        use super::super::engine::BatchPrecisionArg;
        use tessera_host::inference::cpu_llama::BatchPrecision;

        let parse = |args: &[&str]| engine_options(args).map(|o| o.cpu.batch);
        assert_eq!(parse(&[]).unwrap(), BatchPrecision::F32);
        assert_eq!(
            parse(&["--batch-precision", "bf16"]).unwrap(),
            BatchPrecision::Bf16
        );
        assert!(parse(&["--batch-precision", "f16"]).is_err());

        let config: ConfigFile = toml::from_str("batch-precision = \"bf16\"\n").unwrap();
        assert_eq!(config.batch_precision, Some(BatchPrecisionArg::Bf16));
        let e = toml::from_str::<ConfigFile>("batch-precision = \"f16\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("f32") && e.contains("bf16"), "{e}");
    }

    #[test]
    fn upstream_entries_are_checked() {
        let entry = |extra: &str| {
            let text =
                format!("[[models]]\nname = \"b\"\nupstream = \"http://b:8000/v1\"\n{extra}");
            toml::from_str::<ConfigFile>(&text).map(|c| c.models[0].options())
        };
        assert!(entry("").unwrap().is_ok());
        let e = entry("timeout-secs = -1\n")
            .unwrap()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("timeout-secs must be between 0 and 86400"),
            "{e}"
        );
        assert!(entry("colour = 1\n").is_err());
    }
}
