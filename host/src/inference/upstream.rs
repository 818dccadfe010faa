//! A model served by an OpenAI-compatible upstream (vLLM, llama.cpp's
//! server, TGI, SGLang, another Tessera host) behind the same
//! [`ModelEngine`] trait as the in-process engine.
//!
//! The upstream is not trusted: every response is parsed with caps (body
//! bytes, streamed text, logprob entries, embedding sizes) and checked
//! before it reaches an expert. Failures are contained: a request is
//! retried with backoff only while nothing of it reached the caller and
//! only for failures that say nothing was done (no connection, 502, 503,
//! 504); after [`UpstreamOptions::breaker_failures`] such failures in a
//! row the circuit opens and calls fail at once with
//! [`ModelError::Unavailable`] naming the upstream, until a probe after
//! [`UpstreamOptions::breaker_open`] succeeds.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_util::StreamExt;
use serde_json::{Value, json};

use super::{
    Deltas, Finish, GenerateRequest, Generation, ModelEngine, ModelError, Prompt, SamplingParams,
    Scored,
};

/// Largest response body read from an upstream, bytes.
pub const MAX_UPSTREAM_BODY_BYTES: usize = 16 << 20;
/// Most bytes of text one generation may bring back per requested token
/// (a token is a few bytes; this bounds a lying upstream).
const MAX_BYTES_PER_TOKEN: usize = 64;
/// Largest embedding accepted from an upstream, dimensions.
const MAX_EMBEDDING_DIMS: usize = 65_536;

/// How to reach and treat one upstream.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamOptions {
    /// The model's name here: what manifests and clients ask for.
    pub name: String,
    /// The OpenAI-compatible base URL, ending in `/v1`.
    pub url: String,
    /// The upstream's id of the model (its `model` field).
    pub model_id: String,
    /// Sent as a bearer token.
    pub api_key: Option<String>,
    /// Connecting.
    pub connect_timeout: Duration,
    /// One whole request, streamed or not.
    pub request_timeout: Duration,
    /// Requests in flight at once; more wait their turn.
    pub max_concurrent: usize,
    /// Retries of a failure that did nothing, before anything streamed.
    pub retries: u32,
    /// Failures in a row that open the circuit.
    pub breaker_failures: u32,
    /// How long an open circuit refuses calls before one probe.
    pub breaker_open: Duration,
}

impl UpstreamOptions {
    /// Defaults for upstream `name` at `url` serving `model_id`.
    pub fn new(name: &str, url: &str, model_id: &str) -> Self {
        UpstreamOptions {
            name: name.to_string(),
            url: url.trim_end_matches('/').to_string(),
            model_id: model_id.to_string(),
            api_key: None,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(300),
            max_concurrent: 64,
            retries: 2,
            breaker_failures: 5,
            breaker_open: Duration::from_secs(10),
        }
    }

    /// Parse `--upstream NAME=URL[#MODEL_ID]` (the model id defaults to
    /// NAME).
    pub fn parse_flag(flag: &str) -> Result<Self, String> {
        let (name, rest) = flag.split_once('=').ok_or_else(|| {
            format!(
                "`{flag}`: expected NAME=URL[#MODEL_ID], for example qwen2.5-7b=http://vllm:8000/v1#Qwen/Qwen2.5-7B-Instruct"
            )
        })?;
        let (url, id) = match rest.split_once('#') {
            Some((url, id)) => (url, id),
            None => (rest, name),
        };
        let options = UpstreamOptions::new(name, url, id);
        options.check()?;
        Ok(options)
    }

    /// Whether the options make sense; the error names what is wrong.
    pub fn check(&self) -> Result<(), String> {
        if !crate::bundle::is_valid_model_name(&self.name) {
            return Err(format!(
                "upstream name {:?}: use 1 to 128 ASCII letters, digits and `.-_/:`",
                self.name
            ));
        }
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return Err(format!(
                "upstream `{}`: URL {:?} must start with http:// or https:// (an OpenAI-compatible base such as http://host:8000/v1)",
                self.name, self.url
            ));
        }
        if reqwest::Url::parse(&self.url).is_err() {
            return Err(format!(
                "upstream `{}`: {:?} is not a URL",
                self.name, self.url
            ));
        }
        if self.model_id.is_empty() {
            return Err(format!(
                "upstream `{}`: the model id after `#` is empty",
                self.name
            ));
        }
        if self.max_concurrent == 0 {
            return Err(format!(
                "upstream `{}`: max-concurrent must be at least 1",
                self.name
            ));
        }
        Ok(())
    }
}

/// The state of an upstream's circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CircuitState {
    /// Calls go through.
    Closed,
    /// Calls fail at once.
    Open,
    /// One probe goes through; its result closes or reopens the circuit.
    HalfOpen,
}

#[derive(Debug)]
struct Breaker {
    failures_in_row: u32,
    opened_at: Option<Instant>,
    probing: bool,
    last_error: Option<String>,
}

/// What an upstream has done, for `/healthz` and `/metrics`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct UpstreamStats {
    /// The model's name here.
    pub name: String,
    /// Its base URL.
    pub url: String,
    /// The circuit.
    pub circuit: CircuitState,
    /// Calls that succeeded.
    pub requests: u64,
    /// Calls that failed (after retries).
    pub errors: u64,
    /// Retries made.
    pub retries: u64,
    /// Times the circuit opened.
    pub circuit_opens: u64,
    /// Prompt tokens the upstream reported.
    pub prompt_tokens: u64,
    /// Generated tokens it reported.
    pub completion_tokens: u64,
    /// Summed seconds of successful calls.
    pub latency_seconds_sum: f64,
    /// The last failure.
    pub last_error: Option<String>,
}

/// A model behind an OpenAI-compatible HTTP API.
pub struct UpstreamEngine {
    options: UpstreamOptions,
    client: reqwest::Client,
    permits: tokio::sync::Semaphore,
    breaker: Mutex<Breaker>,
    requests: AtomicU64,
    errors: AtomicU64,
    retries: AtomicU64,
    opens: AtomicU64,
    prompt_tokens: AtomicU64,
    completion_tokens: AtomicU64,
    latency_micros: AtomicU64,
}

/// Why one attempt failed.
enum Failure {
    /// Nothing was done upstream (no connection, 502/503/504): may be
    /// retried before anything streamed, and counts toward the breaker.
    Unavailable(String),
    /// The upstream answered but badly (a 500, a broken body): counts
    /// toward the breaker, not retried.
    Broken(String),
    /// The request was refused (4xx): the caller's problem.
    Refused(String),
}

impl UpstreamEngine {
    /// An engine for `options` (checked).
    pub fn new(options: UpstreamOptions) -> Result<Self, String> {
        options.check()?;
        let client = reqwest::Client::builder()
            .connect_timeout(options.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| format!("upstream `{}`: {e}", options.name))?;
        Ok(UpstreamEngine {
            permits: tokio::sync::Semaphore::new(options.max_concurrent),
            client,
            options,
            breaker: Mutex::new(Breaker {
                failures_in_row: 0,
                opened_at: None,
                probing: false,
                last_error: None,
            }),
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            opens: AtomicU64::new(0),
            prompt_tokens: AtomicU64::new(0),
            completion_tokens: AtomicU64::new(0),
            latency_micros: AtomicU64::new(0),
        })
    }

    /// Its options.
    pub fn options(&self) -> &UpstreamOptions {
        &self.options
    }

    /// The circuit now.
    pub fn circuit(&self) -> CircuitState {
        let b = self.breaker.lock().unwrap_or_else(|e| e.into_inner());
        match b.opened_at {
            None => CircuitState::Closed,
            Some(at) if at.elapsed() < self.options.breaker_open => CircuitState::Open,
            Some(_) => CircuitState::HalfOpen,
        }
    }

    /// What it has done.
    pub fn upstream_stats(&self) -> UpstreamStats {
        let last_error = self
            .breaker
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last_error
            .clone();
        UpstreamStats {
            name: self.options.name.clone(),
            url: self.options.url.clone(),
            circuit: self.circuit(),
            requests: self.requests.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            circuit_opens: self.opens.load(Ordering::Relaxed),
            prompt_tokens: self.prompt_tokens.load(Ordering::Relaxed),
            completion_tokens: self.completion_tokens.load(Ordering::Relaxed),
            latency_seconds_sum: self.latency_micros.load(Ordering::Relaxed) as f64 / 1e6,
            last_error,
        }
    }

    fn unavailable(&self, why: &str) -> ModelError {
        ModelError::Unavailable(format!(
            "upstream `{}` ({}) is unavailable: {why}",
            self.options.name, self.options.url
        ))
    }

    /// Whether a call may go now: refused while the circuit is open; once
    /// its time is up, one probe goes through.
    fn admit(&self) -> Result<(), ModelError> {
        let mut b = self.breaker.lock().unwrap_or_else(|e| e.into_inner());
        let Some(at) = b.opened_at else {
            return Ok(());
        };
        let left = self.options.breaker_open.saturating_sub(at.elapsed());
        if left.is_zero() && !b.probing {
            b.probing = true;
            return Ok(());
        }
        let last = b.last_error.clone().unwrap_or_default();
        drop(b);
        Err(self.unavailable(&format!(
            "circuit open after {} failures in a row (last: {last}); next try in {:.1} s",
            self.options.breaker_failures,
            left.as_secs_f64()
        )))
    }

    fn succeeded(&self, started: Instant) {
        let mut b = self.breaker.lock().unwrap_or_else(|e| e.into_inner());
        b.failures_in_row = 0;
        b.opened_at = None;
        b.probing = false;
        drop(b);
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.latency_micros
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
    }

    /// Count a failure; return the error the caller sees.
    fn failed(&self, failure: Failure) -> ModelError {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let (message, trips) = match &failure {
            Failure::Unavailable(m) | Failure::Broken(m) => (m.clone(), true),
            Failure::Refused(m) => (m.clone(), false),
        };
        let mut b = self.breaker.lock().unwrap_or_else(|e| e.into_inner());
        if trips {
            b.failures_in_row = b.failures_in_row.saturating_add(1);
            b.last_error = Some(message.clone());
            if b.probing || b.failures_in_row >= self.options.breaker_failures {
                if b.opened_at.is_none() || b.probing {
                    self.opens.fetch_add(1, Ordering::Relaxed);
                }
                b.opened_at = Some(Instant::now());
            }
            b.probing = false;
        } else if b.probing {
            // The upstream answered: it is up.
            b.probing = false;
            b.opened_at = None;
            b.failures_in_row = 0;
        }
        drop(b);
        match failure {
            Failure::Unavailable(m) => self.unavailable(&m),
            Failure::Broken(m) => ModelError::Failed(format!(
                "upstream `{}` ({}) failed: {m}",
                self.options.name, self.options.url
            )),
            Failure::Refused(m) => ModelError::InvalidInput(format!(
                "upstream `{}` refused the request: {m}",
                self.options.name
            )),
        }
    }

    /// POST `body` to `path` (under the base URL); the response once its
    /// status is a success.
    async fn post(&self, path: &str, body: &Value) -> Result<reqwest::Response, Failure> {
        let mut request = self
            .client
            .post(format!("{}{path}", self.options.url))
            .timeout(self.options.request_timeout)
            .json(body);
        if let Some(key) = &self.options.api_key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.map_err(|e| {
            if e.is_timeout() {
                Failure::Unavailable(format!("no answer in {:?}", self.options.request_timeout))
            } else {
                Failure::Unavailable(format!("cannot connect: {}", error_chain(&e)))
            }
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let text = read_capped(response, 4096).await.unwrap_or_default();
        let message = upstream_message(&text).unwrap_or_else(|| {
            String::from_utf8_lossy(&text)
                .chars()
                .take(300)
                .collect::<String>()
        });
        let what = format!("{path}: HTTP {}: {message}", status.as_u16());
        Err(match status.as_u16() {
            502..=504 => Failure::Unavailable(what),
            400..=499 => Failure::Refused(what),
            _ => Failure::Broken(what),
        })
    }

    /// One call: admitted by the breaker, a concurrency permit, retries
    /// of failures that did nothing while `retryable()` holds.
    async fn call<T, F, Fut>(
        &self,
        retryable: impl Fn() -> bool + Send,
        attempt: F,
    ) -> Result<T, ModelError>
    where
        F: Fn() -> Fut + Send,
        Fut: std::future::Future<Output = Result<T, Failure>> + Send,
    {
        self.admit()?;
        // A probe whose caller goes away (a deadline, a client gone) must
        // not leave the circuit waiting for its result forever.
        let _probe = ProbeGuard(&self.breaker);
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| self.unavailable("shutting down"))?;
        let started = Instant::now();
        let mut tries = 0;
        loop {
            match attempt().await {
                Ok(value) => {
                    self.succeeded(started);
                    return Ok(value);
                }
                Err(Failure::Unavailable(_))
                    if tries < self.options.retries
                        && retryable()
                        && self.circuit() == CircuitState::Closed =>
                {
                    tries += 1;
                    self.retries.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(100 << tries.min(6))).await;
                }
                Err(failure) => return Err(self.failed(failure)),
            }
        }
    }

    fn sampling(&self, params: &SamplingParams, seed: u64) -> Value {
        let mut body = json!({
            "model": self.options.model_id,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "max_tokens": params.max_tokens,
            "seed": seed,
        });
        if !params.stop.is_empty() {
            body["stop"] = json!(params.stop);
        }
        // Extensions vLLM, llama.cpp and Tessera read: sent only when set.
        if let Some(k) = params.top_k {
            body["top_k"] = json!(k);
        }
        if params.repetition_penalty != 1.0 {
            body["repetition_penalty"] = json!(params.repetition_penalty);
        }
        body
    }

    async fn generate_once(
        &self,
        chat: bool,
        body: &Value,
        deltas: Option<&Deltas>,
        max_text: usize,
        streamed: &AtomicU64,
    ) -> Result<Reply, Failure> {
        let path = if chat {
            "/chat/completions"
        } else {
            "/completions"
        };
        let response = self.post(path, body).await?;
        let Some(deltas) = deltas else {
            let bytes = read_capped(response, MAX_UPSTREAM_BODY_BYTES)
                .await
                .map_err(Failure::Broken)?;
            let value: Value = serde_json::from_slice(&bytes)
                .map_err(|e| Failure::Broken(format!("{path}: the body is not JSON: {e}")))?;
            let mut reply = Reply::default();
            reply
                .add_chunk(&value, chat, max_text)
                .map_err(Failure::Broken)?;
            return Ok(reply);
        };
        let mut reply = Reply::default();
        let mut stream = response.bytes_stream();
        let mut pending: Vec<u8> = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                Failure::Broken(format!("{path}: the stream broke: {}", error_chain(&e)))
            })?;
            pending.extend_from_slice(&chunk);
            if pending.len() > MAX_UPSTREAM_BODY_BYTES {
                return Err(Failure::Broken(format!(
                    "{path}: a streamed event is over {MAX_UPSTREAM_BODY_BYTES} bytes"
                )));
            }
            while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                let line = String::from_utf8_lossy(&line);
                let Some(data) = line.trim().strip_prefix("data:") else {
                    continue;
                };
                let data = data.trim();
                if data == "[DONE]" {
                    return Ok(reply);
                }
                let value: Value = serde_json::from_str(data).map_err(|e| {
                    Failure::Broken(format!("{path}: a streamed event is not JSON: {e}"))
                })?;
                let before = reply.text.len();
                reply
                    .add_chunk(&value, chat, max_text)
                    .map_err(Failure::Broken)?;
                if reply.text.len() > before {
                    streamed.fetch_add(1, Ordering::Relaxed);
                    // A closed receiver: the client went away; finish
                    // reading so that usage is still counted.
                    let _ = deltas.send(reply.text[before..].to_string());
                }
            }
        }
        Err(Failure::Broken(format!(
            "{path}: the stream ended without [DONE]"
        )))
    }
}

/// Clears the breaker's probe flag when a call ends without a verdict
/// (its future dropped); after a verdict the flag is already clear.
struct ProbeGuard<'a>(&'a Mutex<Breaker>);

impl Drop for ProbeGuard<'_> {
    fn drop(&mut self) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).probing = false;
    }
}

/// What a generation brought back, piece by piece.
#[derive(Debug, Default)]
struct Reply {
    text: String,
    finish: Option<Finish>,
    prompt_tokens: Option<u32>,
    completion_tokens: Option<u32>,
    logprobs: Vec<(String, f32)>,
}

impl Reply {
    /// Add one response (or streamed chunk) of chat or text completions.
    fn add_chunk(&mut self, value: &Value, chat: bool, max_text: usize) -> Result<(), String> {
        if let Some(usage) = value.get("usage").filter(|u| !u.is_null()) {
            let count = |field: &str| {
                usage
                    .get(field)
                    .and_then(Value::as_u64)
                    .map(|n| u32::try_from(n).unwrap_or(u32::MAX))
            };
            self.prompt_tokens = count("prompt_tokens").or(self.prompt_tokens);
            self.completion_tokens = count("completion_tokens").or(self.completion_tokens);
        }
        let Some(choice) = value.get("choices").and_then(|c| c.get(0)) else {
            return Ok(());
        };
        let piece = if chat {
            choice
                .get("delta")
                .or_else(|| choice.get("message"))
                .and_then(|m| m.get("content"))
        } else {
            choice.get("text")
        };
        if let Some(piece) = piece.and_then(Value::as_str) {
            if self.text.len() + piece.len() > max_text {
                return Err(format!(
                    "the answer is over {max_text} bytes for the tokens asked"
                ));
            }
            self.text.push_str(piece);
        }
        match choice.get("finish_reason").and_then(Value::as_str) {
            Some("length") => self.finish = Some(Finish::Length),
            Some(_) => self.finish = Some(Finish::Stop),
            None => {}
        }
        if let Some(logprobs) = choice.get("logprobs").filter(|l| !l.is_null()) {
            let entries = if chat {
                logprobs
                    .get("content")
                    .and_then(Value::as_array)
                    .map(|items| {
                        items
                            .iter()
                            .map(|t| (t.get("token"), t.get("logprob")))
                            .collect::<Vec<_>>()
                    })
            } else {
                let tokens = logprobs.get("tokens").and_then(Value::as_array);
                let values = logprobs.get("token_logprobs").and_then(Value::as_array);
                tokens
                    .zip(values)
                    .map(|(t, v)| t.iter().zip(v).map(|(t, v)| (Some(t), Some(v))).collect())
            };
            for (token, logprob) in entries.unwrap_or_default() {
                if self.logprobs.len() >= max_text {
                    return Err("more logprob entries than bytes of text".into());
                }
                let token = token.and_then(Value::as_str).unwrap_or_default();
                let logprob = logprob.and_then(Value::as_f64).unwrap_or(f64::NAN);
                self.logprobs.push((token.to_string(), logprob as f32));
            }
        }
        Ok(())
    }
}

/// `e` with its sources, for a message.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The `error.message` of an OpenAI-style error body.
fn upstream_message(body: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let message = value
        .get("error")
        .and_then(|e| e.get("message").or(Some(e)))
        .and_then(Value::as_str)
        .or_else(|| value.get("message").and_then(Value::as_str))?;
    Some(message.chars().take(500).collect())
}

/// The body of `response`, refused past `cap` bytes.
async fn read_capped(response: reqwest::Response, cap: usize) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| format!("reading the body: {}", error_chain(&e)))?;
        if body.len() + chunk.len() > cap {
            return Err(format!("the body is over {cap} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A seed for a request that set none, so that the upstream's sampling is
/// recorded and can be asked for again.
fn fresh_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish() >> 11
}

#[async_trait]
impl ModelEngine for UpstreamEngine {
    fn model_name(&self) -> &str {
        &self.options.name
    }

    async fn generate(
        &self,
        request: GenerateRequest,
        deltas: Option<Deltas>,
    ) -> Result<Generation, ModelError> {
        if let Some(adapter) = &request.adapter {
            return Err(ModelError::InvalidInput(format!(
                "adapter `{adapter}`: LoRA adapters run on the host's own model, not on upstream `{}`",
                self.options.name
            )));
        }
        let params = &request.params;
        let seed = params.seed.unwrap_or_else(fresh_seed);
        let mut body = self.sampling(params, seed);
        let chat = match &request.prompt {
            Prompt::Chat(messages) => {
                body["messages"] = messages
                    .iter()
                    .map(|m| json!({"role": m.role.as_str(), "content": m.content}))
                    .collect();
                body["logprobs"] = json!(true);
                true
            }
            Prompt::Text(text) => {
                body["prompt"] = json!(text);
                body["logprobs"] = json!(1);
                false
            }
        };
        if deltas.is_some() {
            body["stream"] = json!(true);
            body["stream_options"] = json!({"include_usage": true});
        }
        let max_text = (params.max_tokens as usize)
            .saturating_mul(MAX_BYTES_PER_TOKEN)
            .max(1024);
        let streamed = AtomicU64::new(0);
        let (body, deltas, streamed) = (&body, deltas.as_ref(), &streamed);
        let reply = self
            .call(
                || streamed.load(Ordering::Relaxed) == 0,
                move || self.generate_once(chat, body, deltas, max_text, streamed),
            )
            .await?;
        let completion_tokens = reply
            .completion_tokens
            .unwrap_or(reply.logprobs.len() as u32);
        // An upstream that generates past what was asked is cut here.
        let completion_tokens = completion_tokens.min(params.max_tokens);
        let prompt_tokens = reply.prompt_tokens.unwrap_or(0);
        self.prompt_tokens
            .fetch_add(u64::from(prompt_tokens), Ordering::Relaxed);
        self.completion_tokens
            .fetch_add(u64::from(completion_tokens), Ordering::Relaxed);
        Ok(Generation {
            text: reply.text,
            finish: reply.finish.unwrap_or(Finish::Stop),
            prompt_tokens,
            completion_tokens,
            token_logprobs: reply.logprobs,
            token_ids: Vec::new(),
            seed,
        })
    }

    async fn tokenize(&self, text: String) -> Result<Vec<u32>, ModelError> {
        // vLLM and llama.cpp serve `/tokenize` beside `/v1`.
        let root = self.options.url.trim_end_matches("/v1").to_string();
        let body = json!({"model": self.options.model_id, "prompt": text, "content": text, "add_special_tokens": false});
        let max = text.len().saturating_add(16);
        let (root, body, text) = (&root, &body, &text);
        self.call(
            || true,
            move || async move {
                let mut request = self
                    .client
                    .post(format!("{root}/tokenize"))
                    .timeout(self.options.request_timeout)
                    .json(body);
                if let Some(key) = &self.options.api_key {
                    request = request.bearer_auth(key);
                }
                let response = request.send().await.map_err(|e| {
                    Failure::Unavailable(format!("cannot connect: {}", error_chain(&e)))
                })?;
                if !response.status().is_success() {
                    return Err(Failure::Refused(format!(
                        "it offers no tokenizer (POST {root}/tokenize: HTTP {})",
                        response.status().as_u16()
                    )));
                }
                let bytes = read_capped(response, MAX_UPSTREAM_BODY_BYTES)
                    .await
                    .map_err(Failure::Broken)?;
                let value: Value = serde_json::from_slice(&bytes)
                    .map_err(|e| Failure::Broken(format!("/tokenize: not JSON: {e}")))?;
                let tokens = value
                    .get("tokens")
                    .and_then(Value::as_array)
                    .ok_or_else(|| Failure::Broken("/tokenize: no `tokens` list".into()))?;
                if tokens.len() > max {
                    return Err(Failure::Broken(format!(
                        "/tokenize: {} tokens for {} bytes",
                        tokens.len(),
                        text.len()
                    )));
                }
                tokens
                    .iter()
                    .map(|t| {
                        t.as_u64()
                            .and_then(|t| u32::try_from(t).ok())
                            .ok_or_else(|| {
                                Failure::Broken("/tokenize: a token is not a u32".into())
                            })
                    })
                    .collect()
            },
        )
        .await
    }

    async fn score(
        &self,
        prompt: String,
        continuation: String,
        adapter: Option<String>,
    ) -> Result<Scored, ModelError> {
        if let Some(adapter) = adapter {
            return Err(ModelError::InvalidInput(format!(
                "adapter `{adapter}`: LoRA adapters run on the host's own model, not on upstream `{}`",
                self.options.name
            )));
        }
        // The prompt's log-probabilities, echoed by /v1/completions: the
        // continuation's tokens are those that start at or after the end
        // of the prompt (`text_offset`, in characters).
        let full = format!("{prompt}{continuation}");
        let prompt_chars = prompt.chars().count() as u64;
        let body = json!({
            "model": self.options.model_id,
            "prompt": full,
            "max_tokens": 1,
            "temperature": 0.0,
            "echo": true,
            "logprobs": 1,
        });
        let cap = full.len().saturating_add(64);
        let full_chars = full.chars().count() as u64;
        let body = &body;
        self.call(
            || true,
            move || async move {
                let response = self.post("/completions", body).await.map_err(|f| match f {
                    Failure::Refused(m) => Failure::Refused(format!(
                        "it cannot score (echo with logprobs on /v1/completions): {m}"
                    )),
                    other => other,
                })?;
                let bytes = read_capped(response, MAX_UPSTREAM_BODY_BYTES)
                    .await
                    .map_err(Failure::Broken)?;
                let value: Value = serde_json::from_slice(&bytes)
                    .map_err(|e| Failure::Broken(format!("/completions: not JSON: {e}")))?;
                score_from_echo(&value, prompt_chars, full_chars, cap).map_err(Failure::Broken)
            },
        )
        .await
    }

    async fn embed(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, ModelError> {
        let body = json!({"model": self.options.model_id, "input": texts});
        let n = texts.len();
        let body = &body;
        self.call(
            || true,
            move || async move {
                let response = self.post("/embeddings", body).await?;
                let bytes = read_capped(response, MAX_UPSTREAM_BODY_BYTES)
                    .await
                    .map_err(Failure::Broken)?;
                let value: Value = serde_json::from_slice(&bytes)
                    .map_err(|e| Failure::Broken(format!("/embeddings: not JSON: {e}")))?;
                embeddings_from(&value, n).map_err(Failure::Broken)
            },
        )
        .await
    }

    fn health(&self) -> super::EngineHealth {
        let stats = self.upstream_stats();
        super::EngineHealth {
            serving: stats.circuit != CircuitState::Open,
            recovered_failures: stats.errors,
            last_failure: stats.last_error,
        }
    }

    fn upstream(&self) -> Option<UpstreamStats> {
        Some(self.upstream_stats())
    }
}

/// The continuation's summed log-probability from an echoed completion.
fn score_from_echo(
    value: &Value,
    prompt_chars: u64,
    full_chars: u64,
    cap: usize,
) -> Result<Scored, String> {
    let logprobs = value
        .get("choices")
        .and_then(|c| c.get(0))
        .and_then(|c| c.get("logprobs"))
        .filter(|l| !l.is_null())
        .ok_or("/completions: no `logprobs` in the echoed answer")?;
    let offsets = logprobs
        .get("text_offset")
        .and_then(Value::as_array)
        .ok_or("/completions: no `text_offset` in the echoed logprobs")?;
    let values = logprobs
        .get("token_logprobs")
        .and_then(Value::as_array)
        .ok_or("/completions: no `token_logprobs` in the echoed logprobs")?;
    if offsets.len() != values.len() || offsets.len() > cap {
        return Err("/completions: the echoed logprobs do not line up".into());
    }
    let mut logprob = 0.0f64;
    let mut tokens = 0u32;
    let mut counted = 0u32;
    for (offset, value) in offsets.iter().zip(values) {
        let offset = offset
            .as_u64()
            .ok_or("/completions: a text offset is not a number")?;
        if offset >= full_chars {
            // The one generated token after the echo.
            break;
        }
        tokens += 1;
        if offset >= prompt_chars {
            let v = value
                .as_f64()
                .filter(|v| v.is_finite() && *v <= 0.0)
                .ok_or("/completions: a continuation token has no log-probability")?;
            logprob += v;
            counted += 1;
        }
    }
    if counted == 0 {
        return Err("/completions: no echoed token starts in the continuation".into());
    }
    Ok(Scored { logprob, tokens })
}

/// `n` embeddings from an `/embeddings` answer, in input order,
/// L2-normalised.
fn embeddings_from(value: &Value, n: usize) -> Result<Vec<Vec<f32>>, String> {
    let data = value
        .get("data")
        .and_then(Value::as_array)
        .ok_or("/embeddings: no `data` list")?;
    if data.len() != n {
        return Err(format!(
            "/embeddings: {} embeddings for {n} texts",
            data.len()
        ));
    }
    let mut out = vec![Vec::new(); n];
    for (i, item) in data.iter().enumerate() {
        let index = item
            .get("index")
            .and_then(Value::as_u64)
            .map_or(i, |x| x as usize);
        let vector = item
            .get("embedding")
            .and_then(Value::as_array)
            .ok_or("/embeddings: an item has no `embedding` list")?;
        if vector.is_empty() || vector.len() > MAX_EMBEDDING_DIMS {
            return Err(format!(
                "/embeddings: an embedding has {} dimensions",
                vector.len()
            ));
        }
        let mut v: Vec<f32> = vector
            .iter()
            .map(|x| x.as_f64().map(|x| x as f32).filter(|x| x.is_finite()))
            .collect::<Option<_>>()
            .ok_or("/embeddings: an embedding holds a value that is not a finite number")?;
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        if norm > 0.0 {
            v.iter_mut().for_each(|x| *x /= norm);
        }
        let slot = out
            .get_mut(index)
            .ok_or("/embeddings: an index is out of range")?;
        if !slot.is_empty() {
            return Err("/embeddings: an index appears twice".into());
        }
        *slot = v;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_names_url_and_model_id() {
        let o =
            UpstreamOptions::parse_flag("qwen2.5-7b=http://vllm:8000/v1/#Qwen/Qwen2.5-7B").unwrap();
        assert_eq!(o.name, "qwen2.5-7b");
        assert_eq!(o.url, "http://vllm:8000/v1");
        assert_eq!(o.model_id, "Qwen/Qwen2.5-7B");
        let o = UpstreamOptions::parse_flag("b=http://127.0.0.1:9/v1").unwrap();
        assert_eq!(o.model_id, "b");
        for bad in [
            "no-equals",
            "b=ftp://x/v1",
            "b=http://x/v1#",
            "B d=http://x/v1",
        ] {
            assert!(UpstreamOptions::parse_flag(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn streamed_chunks_add_up_and_lying_sizes_are_refused() {
        let mut reply = Reply::default();
        for chunk in [
            json!({"choices": [{"delta": {"content": "Par"}, "logprobs": {"content": [{"token": "Par", "logprob": -0.5}]}}]}),
            json!({"choices": [{"delta": {"content": "is"}, "finish_reason": "stop"}]}),
            json!({"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 2}}),
        ] {
            reply.add_chunk(&chunk, true, 100).unwrap();
        }
        assert_eq!(reply.text, "Paris");
        assert_eq!(reply.finish, Some(Finish::Stop));
        assert_eq!(
            (reply.prompt_tokens, reply.completion_tokens),
            (Some(7), Some(2))
        );
        assert_eq!(reply.logprobs, vec![("Par".to_string(), -0.5)]);
        let huge = json!({"choices": [{"text": "x".repeat(101)}]});
        assert!(Reply::default().add_chunk(&huge, false, 100).is_err());
    }

    #[test]
    fn an_echo_scores_the_continuation_only() {
        // "The sky is" + " blue": tokens at offsets 0, 3, 7, 10, then the
        // generated one at 15.
        let value = json!({"choices": [{"logprobs": {
            "text_offset": [0, 3, 7, 10, 15],
            "token_logprobs": [null, -1.0, -2.0, -0.25, -3.0],
        }}]});
        let scored = score_from_echo(&value, 10, 15, 100).unwrap();
        assert_eq!(scored.logprob, -0.25);
        assert_eq!(scored.tokens, 4);
        let none = json!({"choices": [{"logprobs": null}]});
        assert!(score_from_echo(&none, 10, 15, 100).is_err());
    }

    #[test]
    fn embeddings_come_back_in_order_normalised_and_checked() {
        let value = json!({"data": [
            {"index": 1, "embedding": [0.0, 2.0]},
            {"index": 0, "embedding": [3.0, 4.0]},
        ]});
        let e = embeddings_from(&value, 2).unwrap();
        assert_eq!(e[0], vec![0.6, 0.8]);
        assert_eq!(e[1], vec![0.0, 1.0]);
        assert!(embeddings_from(&value, 3).is_err());
        let twice =
            json!({"data": [{"index": 0, "embedding": [1.0]}, {"index": 0, "embedding": [1.0]}]});
        assert!(embeddings_from(&twice, 2).is_err());
    }

    #[tokio::test]
    async fn a_dead_upstream_opens_the_circuit_and_names_itself() {
        // Nothing listens on port 9 (discard) of this host's loopback.
        let mut options = UpstreamOptions::parse_flag("gone=http://127.0.0.1:9/v1").unwrap();
        options.retries = 0;
        options.breaker_failures = 2;
        options.breaker_open = Duration::from_secs(60);
        let engine = UpstreamEngine::new(options).unwrap();
        let ask = || {
            engine.generate(
                GenerateRequest::text("hi".into(), SamplingParams::default()),
                None,
            )
        };
        for _ in 0..2 {
            let e = ask().await.unwrap_err();
            assert!(
                matches!(&e, ModelError::Unavailable(m) if m.contains("upstream `gone`")),
                "{e}"
            );
        }
        assert_eq!(engine.circuit(), CircuitState::Open);
        let e = ask().await.unwrap_err().to_string();
        assert!(e.contains("circuit open after 2 failures"), "{e}");
        let stats = engine.upstream_stats();
        assert_eq!((stats.errors, stats.circuit_opens), (2, 1));
        assert!(!engine.health().serving);
    }

    #[tokio::test]
    async fn a_probe_dropped_midway_leaves_the_next_call_its_turn() {
        // Accepts connections and never answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("silent=http://{}/v1", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        let mut options = UpstreamOptions::parse_flag(&url).unwrap();
        options.breaker_open = Duration::from_millis(10);
        let engine = UpstreamEngine::new(options).unwrap();
        {
            let mut b = engine.breaker.lock().unwrap();
            b.opened_at = Some(Instant::now() - Duration::from_secs(1));
            b.failures_in_row = 5;
        }
        let ask = || {
            engine.generate(
                GenerateRequest::text("hi".into(), SamplingParams::default()),
                None,
            )
        };
        // The probe goes out, and its caller gives up.
        assert!(
            tokio::time::timeout(Duration::from_millis(100), ask())
                .await
                .is_err()
        );
        // The next call is a probe again, not refused as if one were out.
        assert!(
            tokio::time::timeout(Duration::from_millis(100), ask())
                .await
                .is_err()
        );
        assert!(!engine.breaker.lock().unwrap().probing);
    }
}
