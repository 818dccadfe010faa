//! Constructors, builders and accessors on the WIT types, so that an expert
//! reads like the problem it solves.

use crate::{
    AdapterInfo, Completion, Error, ExpertInfo, FinishReason, Message, Request, Response, Role,
    RouteChoice, Sampling, Usage,
};

impl Message {
    /// A message from `role`.
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Message {
            role,
            content: content.into(),
        }
    }

    /// A system message: instructions that frame the conversation.
    pub fn system(content: impl Into<String>) -> Self {
        Self::new(Role::System, content)
    }

    /// A user message: the question.
    pub fn user(content: impl Into<String>) -> Self {
        Self::new(Role::User, content)
    }

    /// An assistant message: an earlier answer.
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new(Role::Assistant, content)
    }
}

/// Every field `None`: the host's defaults apply, the same as `tessera
/// generate`'s and the OpenAI API's: temperature 0.7, top-p 1.0, no top-k,
/// no repetition penalty, at most 256 tokens, a fresh random seed. Use
/// [`Sampling::greedy`] (or a fixed `seed`) for answers that repeat.
impl Default for Sampling {
    fn default() -> Self {
        Sampling {
            temperature: None,
            top_p: None,
            top_k: None,
            repetition_penalty: None,
            max_tokens: None,
            seed: None,
            stop: Vec::new(),
        }
    }
}

impl Sampling {
    /// Greedy decoding (temperature 0): the same prompt gives the same text.
    pub fn greedy() -> Self {
        Self::default().temperature(0.0)
    }

    /// Set the temperature (0 is greedy).
    pub fn temperature(mut self, temperature: f32) -> Self {
        self.temperature = Some(temperature);
        self
    }

    /// Set nucleus sampling's `top-p`.
    pub fn top_p(mut self, top_p: f32) -> Self {
        self.top_p = Some(top_p);
        self
    }

    /// Discourage repeating tokens already seen (1.0 is off).
    pub fn repetition_penalty(mut self, penalty: f32) -> Self {
        self.repetition_penalty = Some(penalty);
        self
    }

    /// Keep only the `top_k` most likely tokens.
    pub fn top_k(mut self, top_k: u32) -> Self {
        self.top_k = Some(top_k);
        self
    }

    /// Generate at most `max_tokens` tokens.
    pub fn max_tokens(mut self, max_tokens: u32) -> Self {
        self.max_tokens = Some(max_tokens);
        self
    }

    /// Seed the sampler.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Stop when `stop` appears in the output.
    pub fn stop(mut self, stop: impl Into<String>) -> Self {
        self.stop.push(stop.into());
        self
    }
}

impl Request {
    /// A request with these messages and default sampling.
    pub fn new(messages: Vec<Message>) -> Self {
        Request {
            messages,
            sampling: Sampling::default(),
            metadata: Vec::new(),
        }
    }

    /// A request holding one user message.
    pub fn from_prompt(prompt: impl Into<String>) -> Self {
        Self::new(vec![Message::user(prompt)])
    }

    /// Replace the sampling settings.
    pub fn with_sampling(mut self, sampling: Sampling) -> Self {
        self.sampling = sampling;
        self
    }

    /// Add a metadata entry.
    pub fn with_metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.push((key.into(), value.into()));
        self
    }

    /// The text of the last user message, if there is one.
    pub fn last_user_message(&self) -> Option<&str> {
        self.messages
            .iter()
            .rev()
            .find(|m| m.role == Role::User)
            .map(|m| m.content.as_str())
    }

    /// The last user message, or an `invalid-input` error that says one is
    /// needed.
    pub fn require_user_message(&self) -> Result<&str, Error> {
        self.last_user_message().ok_or_else(|| {
            Error::invalid_input("the request has no user message; add one with role \"user\"")
        })
    }

    /// The system message, if there is one.
    pub fn system_message(&self) -> Option<&str> {
        self.messages
            .iter()
            .find(|m| m.role == Role::System)
            .map(|m| m.content.as_str())
    }

    /// The value of metadata entry `key`, if present.
    pub fn metadata(&self, key: &str) -> Option<&str> {
        self.metadata
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of metadata entry `key`, in order (a key may repeat).
    pub fn metadata_all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.metadata
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The answers of a fan-out (`tessera/auto:moa`) that an aggregator is
    /// asked to combine: `(expert, answer)` pairs, from the metadata
    /// entries `answer-expert` and `answer` the host adds in that order.
    pub fn answers(&self) -> Vec<(&str, &str)> {
        let mut answers = Vec::new();
        let mut expert = "";
        for (k, v) in &self.metadata {
            match k.as_str() {
                "answer-expert" => expert = v,
                "answer" => answers.push((expert, v.as_str())),
                _ => {}
            }
        }
        answers
    }
}

impl Response {
    /// An answer with this text and nothing else.
    pub fn new(content: impl Into<String>) -> Self {
        Response {
            content: content.into(),
            usage: Usage::default(),
            confidence: None,
            metadata: Vec::new(),
        }
    }

    /// The text and usage of a model completion. Confidence is the mean
    /// token probability, when the completion carries logprobs.
    pub fn from_completion(completion: Completion) -> Self {
        let confidence = completion.mean_probability();
        Response {
            content: completion.text,
            usage: completion.usage,
            confidence,
            metadata: Vec::new(),
        }
    }

    /// Set the token usage.
    pub fn with_usage(mut self, usage: Usage) -> Self {
        self.usage = usage;
        self
    }

    /// Set the confidence (clamped to 0..=1).
    pub fn with_confidence(mut self, confidence: f32) -> Self {
        self.confidence = Some(confidence.clamp(0.0, 1.0));
        self
    }

    /// Add a metadata entry.
    pub fn with_metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.push((key.into(), value.into()));
        self
    }
}

impl Completion {
    /// Mean per-token probability (`exp` of the mean logprob), or `None`
    /// when the completion carries no logprobs.
    pub fn mean_probability(&self) -> Option<f32> {
        if self.token_logprobs.is_empty() {
            return None;
        }
        let sum: f32 = self.token_logprobs.iter().map(|t| t.logprob).sum();
        Some((sum / self.token_logprobs.len() as f32).exp())
    }

    /// Whether generation stopped because it hit the token limit.
    pub fn was_truncated(&self) -> bool {
        self.finish_reason == FinishReason::Length
    }
}

/// Zero tokens.
impl Default for Usage {
    fn default() -> Self {
        Usage {
            prompt_tokens: 0,
            completion_tokens: 0,
        }
    }
}

impl std::ops::AddAssign for Usage {
    fn add_assign(&mut self, other: Usage) {
        self.prompt_tokens = self.prompt_tokens.saturating_add(other.prompt_tokens);
        self.completion_tokens = self
            .completion_tokens
            .saturating_add(other.completion_tokens);
    }
}

impl ExpertInfo {
    /// Info with a name and a description; version from the crate.
    ///
    /// The name must be the one in the bundle's `tessera.toml` (the
    /// manifest's name is the expert's name; the host refuses a component
    /// whose `describe()` claims another), or empty for a component served
    /// under several manifests.
    pub fn new(name: impl Into<String>, description: impl Into<String>) -> Self {
        ExpertInfo {
            name: name.into(),
            version: "0.1.0".into(),
            description: description.into(),
            tags: Vec::new(),
            examples: Vec::new(),
        }
    }

    /// Set the version.
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.version = version.into();
        self
    }

    /// Add a topic tag.
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.tags.push(tag.into());
        self
    }

    /// Add an example prompt.
    pub fn example(mut self, example: impl Into<String>) -> Self {
        self.examples.push(example.into());
        self
    }
}

impl RouteChoice {
    /// A choice of expert `name` with `score`.
    pub fn new(name: impl Into<String>, score: f32) -> Self {
        RouteChoice {
            name: name.into(),
            score,
        }
    }
}

impl AdapterInfo {
    /// Info for adapter `name` trained on `base_model`.
    pub fn new(
        name: impl Into<String>,
        base_model: impl Into<String>,
        rank: u32,
        alpha: f32,
    ) -> Self {
        AdapterInfo {
            name: name.into(),
            base_model: base_model.into(),
            rank,
            alpha,
            target_modules: Vec::new(),
        }
    }

    /// Add a target module.
    pub fn target(mut self, module: impl Into<String>) -> Self {
        self.target_modules.push(module.into());
        self
    }
}

impl Error {
    /// The request was malformed.
    pub fn invalid_input(message: impl Into<String>) -> Self {
        Error::InvalidInput(message.into())
    }

    /// Something failed inside the expert.
    pub fn internal(message: impl Into<String>) -> Self {
        Error::Internal(message.into())
    }

    /// The message the error carries.
    pub fn message(&self) -> &str {
        match self {
            Error::InvalidInput(m)
            | Error::Denied(m)
            | Error::LimitExceeded(m)
            | Error::Model(m)
            | Error::Internal(m) => m,
        }
    }
}
