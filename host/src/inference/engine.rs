//! The real engine: SmolLM2 (or any Llama-family checkpoint) and MiniLM in
//! burn, behind the continuous-batching scheduler.
//!
//! One OS thread owns the models and runs the [scheduler](super::scheduler).
//! Callers (experts, the HTTP server) tokenize on blocking threads, send
//! jobs over a channel and `await` a oneshot reply, so a waiting expert
//! holds no thread.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};

use async_trait::async_trait;
use tokio::sync::oneshot;

use super::adapters::{AdapterInfo, AdapterSet};
use super::batch::{BatchModel, Embed};
use super::cpu_llama::CpuLlama;
use super::device::DeviceChoice;
use super::llama::Llama;
use super::lora::LoraAdapter;
use super::scheduler::{Counters, EngineStats, Job, JobKind, Limits, Output, Scheduler};
use super::weights::{GgufWeights, HfWeights, LoadError, WeightSource};
use super::{
    ChatMessage, Deltas, EngineHealth, Generation, MINILM, ModelEngine, ModelError, ModelStore,
    SMOLLM2, SamplingParams, TextTokenizer,
};
use crate::embed::Embedder;

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
    /// Memory for loaded LoRA adapters, in bytes; least recently used ones
    /// are evicted past it (and loaded again when asked for).
    pub adapter_budget_bytes: usize,
    /// Threads and weight quantization of the CPU model.
    pub cpu: super::cpu_llama::CpuOptions,
    /// How the language model's matrices are held on wgpu (default: in
    /// 8-bit blocks; the CPU engine keeps the checkpoint's own blocks).
    pub wgpu_weights: super::BurnWeights,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            device: DeviceChoice::Cpu,
            max_batch: 32,
            prefill_chunk: 256,
            kv_budget_bytes: 2 << 30,
            adapter_budget_bytes: super::DEFAULT_ADAPTER_BUDGET_BYTES,
            cpu: super::cpu_llama::CpuOptions::default(),
            wgpu_weights: super::BurnWeights::Q8Blocks,
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
    /// sha256 of the weights, when loaded from files.
    weights_sha256: Option<String>,
    stats: Arc<Counters>,
    adapters: AdapterSet,
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
        // On the CPU the quantized model runs; burn's runs on wgpu.
        enum Loaded {
            Cpu(Box<CpuLlama>),
            Burn(Box<Llama>),
        }
        let llama = match options.device.resolve() {
            DeviceChoice::Wgpu => {
                let model = Llama::load_with(weights.as_ref(), &device, options.wgpu_weights)
                    .map_err(failed)?;
                tracing::info!(
                    weights_mib = model.device_bytes() >> 20,
                    "language model on wgpu, its matrices in {}",
                    model.weights().as_str()
                );
                Loaded::Burn(Box::new(model))
            }
            _ => {
                let model = CpuLlama::load(weights.as_ref(), &options.cpu).map_err(failed)?;
                tracing::info!(
                    weights_mib = model.weight_bytes() >> 20,
                    "language model on the CPU: {}",
                    model.describe()
                );
                Loaded::Cpu(Box::new(model))
            }
        };
        drop(weights);
        let config = match &llama {
            Loaded::Cpu(m) => m.config().clone(),
            Loaded::Burn(m) => m.config().clone(),
        };
        let adapters = AdapterSet::for_llama(
            config,
            device.clone(),
            name.clone(),
            options.adapter_budget_bytes,
        );
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
        let embedder = embedder_name.zip(embedder);
        let mut engine = match llama {
            Loaded::Cpu(m) => Self::start(name, *m, tokenizer, embedder, &options)?,
            Loaded::Burn(m) => Self::start(name, *m, tokenizer, embedder, &options)?,
        };
        engine.adapters = adapters;
        engine.weights_sha256 =
            Some(weights_digest(model).map_err(|e| {
                ModelError::NotLoaded(format!("cannot read {}: {e}", model.display()))
            })?);
        Ok(engine)
    }

    /// Serve `model`, any [`BatchModel`], with `tokenizer` and, if given,
    /// a named embedder, on a scheduler thread of its own. A new
    /// architecture implements [`BatchModel`] and is served through this.
    pub fn start<M>(
        name: String,
        model: M,
        tokenizer: TextTokenizer,
        embedder: Option<(String, Embedder)>,
        options: &EngineOptions,
    ) -> Result<BurnEngine, ModelError>
    where
        M: BatchModel + Send + 'static,
        M::Cache: Send,
    {
        let tokenizer = Arc::new(tokenizer);
        let context = model.shape().context;
        let (jobs, rx) = mpsc::channel();
        let stats = Arc::new(Counters::default());
        let limits = Limits {
            max_batch: options.max_batch,
            prefill_chunk: options.prefill_chunk,
            kv_budget_bytes: options.kv_budget_bytes,
        };
        let (embedder_name, embedder) = embedder.unzip();
        let embedder = embedder.map(|e| Box::new(e) as Box<dyn Embed + Send>);
        let scheduler = Scheduler::new(model, embedder, tokenizer.clone(), limits, stats.clone());
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
            weights_sha256: None,
            stats,
            adapters: AdapterSet::none(),
        })
    }

    /// What the scheduler is doing now.
    pub fn stats(&self) -> EngineStats {
        self.stats.stats()
    }

    /// Whether the engine serves, and the failures it recovered from.
    pub fn health(&self) -> EngineHealth {
        self.stats.health()
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &TextTokenizer {
        &self.tokenizer
    }

    /// Tokens the model can attend to.
    pub fn context_length(&self) -> usize {
        self.context
    }

    /// Adapters read from disk so far, and bytes of them in memory now.
    pub fn adapter_memory(&self) -> (u64, usize) {
        (self.adapters.loads(), self.adapters.loaded_bytes())
    }

    /// The adapter a call names, loaded.
    async fn adapter(&self, name: Option<String>) -> Result<Option<Arc<LoraAdapter>>, ModelError> {
        match name {
            Some(name) => Ok(Some(self.adapters.get(&name).await?)),
            None => Ok(None),
        }
    }

    /// Send a job to the scheduler and wait for its answer, which `take`
    /// unwraps.
    async fn submit<T>(
        &self,
        owner: Option<String>,
        kind: JobKind,
        take: impl FnOnce(Output) -> Option<T>,
    ) -> Result<T, ModelError> {
        self.submit_with(owner, kind, None, take).await
    }

    /// [`submit`](Self::submit), running with `adapter`.
    async fn submit_with<T>(
        &self,
        owner: Option<String>,
        kind: JobKind,
        adapter: Option<Arc<LoraAdapter>>,
        take: impl FnOnce(Output) -> Option<T>,
    ) -> Result<T, ModelError> {
        let (reply, rx) = oneshot::channel();
        self.jobs
            .send(Job {
                owner: owner.unwrap_or_default(),
                kind,
                reply,
                adapter,
            })
            .map_err(|_| ModelError::Failed("the engine thread has stopped".into()))?;
        let output = rx.await.map_err(|_| {
            ModelError::Failed(
                "the engine failed while running this request and dropped it; the engine goes on, retry the request".into(),
            )
        })??;
        take(output).ok_or_else(|| ModelError::Failed("the engine answered the wrong job".into()))
    }

    /// Generate from prompt token ids; with `deltas`, the answer's text is
    /// sent there as it grows. The deltas add up to the final text: text
    /// that might still become part of a stop string, or an incomplete
    /// UTF-8 character, is held back until it is settled.
    pub async fn generate_ids(
        &self,
        prompt: Vec<u32>,
        params: SamplingParams,
        deltas: Option<Deltas>,
    ) -> Result<Generation, ModelError> {
        self.generate_ids_with(prompt, params, deltas, None).await
    }

    /// [`generate_ids`](Self::generate_ids) with `adapter`.
    async fn generate_ids_with(
        &self,
        prompt: Vec<u32>,
        params: SamplingParams,
        deltas: Option<Deltas>,
        adapter: Option<Arc<LoraAdapter>>,
    ) -> Result<Generation, ModelError> {
        let owner = params.owner.clone();
        let job = JobKind::Generate {
            prompt,
            params,
            stream: deltas,
        };
        self.submit_with(owner, job, adapter, |output| match output {
            Output::Generation(g) => Some(g),
            _ => None,
        })
        .await
    }

    /// How the model rates `tokens[from..]` after `tokens[..from]`, with
    /// `adapter`.
    async fn score_ids(
        &self,
        tokens: Vec<u32>,
        from: usize,
        adapter: Option<Arc<LoraAdapter>>,
    ) -> Result<Vec<super::TokenScore>, ModelError> {
        let job = JobKind::Score { tokens, from };
        self.submit_with(None, job, adapter, |output| match output {
            Output::Score(s) => Some(s),
            _ => None,
        })
        .await
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

    /// Logits of the next token after `prompt` (raw text, BOS added when
    /// the model wants it).
    pub async fn next_token_logits(&self, prompt: &str) -> Result<Vec<f32>, ModelError> {
        let tokens = self.raw_prompt(prompt.to_string()).await?.to_vec();
        self.submit(None, JobKind::Logits { tokens }, |output| match output {
            Output::Logits(l) => Some(l),
            _ => None,
        })
        .await
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

/// sha256 of a weights file; for a Hugging Face directory, of the list of
/// its files' `sha256  name` lines (config, tokenizer and safetensors).
fn weights_digest(path: &Path) -> std::io::Result<String> {
    use sha2::Digest;
    let file_digest = |p: &Path| -> std::io::Result<String> {
        let mut hasher = sha2::Sha256::new();
        std::io::copy(&mut std::fs::File::open(p)?, &mut hasher)?;
        Ok(hex::encode(hasher.finalize()))
    };
    if !path.is_dir() {
        return file_digest(path);
    }
    let mut names: Vec<PathBuf> = std::fs::read_dir(path)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .is_some_and(|e| e == "safetensors" || e == "json")
        })
        .collect();
    names.sort();
    let mut list = String::new();
    for p in names {
        let name = p.file_name().unwrap_or_default().to_string_lossy();
        list.push_str(&format!("{}  {name}\n", file_digest(&p)?));
    }
    Ok(hex::encode(sha2::Sha256::digest(list.as_bytes())))
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
        let adapter = self.adapter(request.adapter).await?;
        let prompt = match request.prompt {
            super::Prompt::Chat(messages) => self.chat_ids(messages).await?,
            super::Prompt::Text(text) => self.raw_prompt(text).await?,
        };
        self.generate_ids_with(prompt.to_vec(), request.params, deltas, adapter)
            .await
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
    ) -> Result<super::Scored, ModelError> {
        let adapter = self.adapter(adapter).await?;
        self.check_prompt_bytes(prompt.len() + continuation.len())?;
        let mut tokens = self.raw_prompt(prompt).await?.to_vec();
        let from = tokens.len();
        let rest = self.tokenize(continuation).await?;
        if rest.is_empty() {
            return Err(ModelError::InvalidInput("the continuation is empty".into()));
        }
        tokens.extend(rest);
        let read = u32::try_from(tokens.len()).unwrap_or(u32::MAX);
        let scored = self.score_ids(tokens, from, adapter).await?;
        Ok(super::Scored {
            logprob: scored.iter().map(|t| f64::from(t.logprob)).sum(),
            tokens: read,
        })
    }

    async fn score_choices(
        &self,
        prompt: String,
        continuations: Vec<String>,
        adapter: Option<String>,
    ) -> Result<super::ScoredChoices, ModelError> {
        let adapter = self.adapter(adapter).await?;
        self.check_prompt_bytes(
            prompt.len() + continuations.iter().map(String::len).sum::<usize>(),
        )?;
        let prompt = self.raw_prompt(prompt).await?.to_vec();
        let mut ids = Vec::with_capacity(continuations.len());
        for (i, continuation) in continuations.into_iter().enumerate() {
            let rest = self.tokenize(continuation).await?;
            if rest.is_empty() {
                return Err(ModelError::InvalidInput(format!(
                    "continuation {i} is empty"
                )));
            }
            ids.push(rest);
        }
        if ids.is_empty() {
            return Err(ModelError::InvalidInput(
                "there are no continuations to score".into(),
            ));
        }
        // The prompt once, each continuation, and the prompt's last token
        // again before every continuation but the first.
        let again = if prompt.is_empty() { 0 } else { ids.len() - 1 };
        let read = prompt.len() + ids.iter().map(Vec::len).sum::<usize>() + again;
        let job = JobKind::Choices {
            prompt,
            continuations: ids,
        };
        let scored = self
            .submit_with(None, job, adapter, |output| match output {
                Output::Choices(c) => Some(c),
                _ => None,
            })
            .await?;
        Ok(super::ScoredChoices {
            logprobs: scored
                .iter()
                .map(|c| c.iter().map(|t| f64::from(t.logprob)).sum())
                .collect(),
            tokens: u32::try_from(read).unwrap_or(u32::MAX),
        })
    }

    async fn echo(
        &self,
        text: String,
        adapter: Option<String>,
    ) -> Result<super::Echoed, ModelError> {
        let adapter = self.adapter(adapter).await?;
        self.check_prompt_bytes(text.len())?;
        let ids = self.tokenize(text).await?;
        if ids.is_empty() {
            return Err(ModelError::InvalidInput("the prompt is empty".into()));
        }
        // BOS, when the model starts with one.
        let mut tokens = self
            .tokenizer
            .encode_prompt("")
            .map_err(|e| ModelError::InvalidInput(e.to_string()))?;
        let from = tokens.len();
        tokens.extend(&ids);
        // Without BOS the first token has no context: it is not rated.
        let rated_from = from.max(1);
        let scores = self.score_ids(tokens, rated_from, adapter).await?;
        let tokenizer = self.tokenizer.clone();
        tokio::task::spawn_blocking(move || {
            // Decoded as a stream is: each token's piece settles once its
            // characters are whole (linear in the tokens, not quadratic).
            let mut out = super::Echoed::default();
            let mut window = super::decode::Window::default();
            let mut chars = 0u32;
            for i in 0..ids.len() {
                let piece = window.next(&ids[..=i], &*tokenizer).unwrap_or_default();
                out.offsets.push(chars);
                chars += piece.chars().count() as u32;
                out.tokens.push(piece);
            }
            if let Some(last) = out.tokens.last_mut() {
                last.push_str(&window.rest(&ids, &*tokenizer));
            }
            let unrated = ids.len() - scores.len();
            out.logprobs = std::iter::repeat_n(None, unrated)
                .chain(scores.iter().map(|s| Some(s.logprob)))
                .collect();
            Ok(out)
        })
        .await
        .map_err(|e| ModelError::Failed(format!("echo: {e}")))?
    }

    async fn rate(
        &self,
        prompt: super::Prompt,
        continuation: Vec<u32>,
        adapter: Option<String>,
    ) -> Result<super::Rated, ModelError> {
        let adapter = self.adapter(adapter).await?;
        let vocab = self.tokenizer.vocab_size();
        if let Some(bad) = continuation.iter().find(|&&id| id as usize >= vocab) {
            return Err(ModelError::InvalidInput(format!(
                "token id {bad} is outside the model's vocabulary of {vocab}"
            )));
        }
        if continuation.is_empty() {
            return Ok(super::Rated::default());
        }
        let mut tokens = match prompt {
            super::Prompt::Chat(messages) => self.chat_ids(messages).await?,
            super::Prompt::Text(text) => self.raw_prompt(text).await?,
        }
        .to_vec();
        let from = tokens.len();
        tokens.extend(&continuation);
        let scores = self.score_ids(tokens, from, adapter).await?;
        let text = self
            .tokenizer
            .decode(&continuation, false)
            .map_err(|e| ModelError::InvalidInput(e.to_string()))?;
        Ok(super::Rated { scores, text })
    }

    fn embedder_name(&self) -> Option<&str> {
        self.embedder_name.as_deref()
    }

    fn adapters(&self) -> Vec<AdapterInfo> {
        self.adapters.list()
    }

    fn register_adapter(&self, name: &str, dir: &Path) -> Result<AdapterInfo, ModelError> {
        self.adapters.register(name, dir)
    }

    fn unregister_adapter(&self, name: &str) -> bool {
        self.adapters.unregister(name)
    }

    fn weights_sha256(&self) -> Option<&str> {
        self.weights_sha256.as_deref()
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
        self.submit(None, JobKind::Embed { texts }, |output| match output {
            Output::Embeddings(e) => Some(e),
            _ => None,
        })
        .await
    }
}
