//! A deterministic model engine for tests: answers come from a closure,
//! token counts from whitespace, logprobs are fixed. Never shipped.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use tessera_host::inference::{
    ChatMessage, ChatRole, Deltas, Finish, GenerateRequest, Generation, ModelEngine, ModelError,
    Prompt, SamplingParams, Scored,
};

type Reply = dyn Fn(&[ChatMessage], &SamplingParams) -> String + Send + Sync;

/// Log-probability the fake engine gives every token.
pub const FAKE_LOGPROB: f32 = -0.1;

/// A model that answers with `reply(messages, params)`, word by word.
pub struct FakeEngine {
    reply: Arc<Reply>,
    delay: Duration,
    calls: AtomicU32,
}

impl FakeEngine {
    /// Answers `fake: <last user message>`.
    pub fn echo() -> Self {
        Self::new(|messages, _| {
            let last = messages
                .iter()
                .rev()
                .find(|m| m.role == ChatRole::User)
                .map_or("", |m| m.content.as_str());
            format!("fake: {last}")
        })
    }

    /// Answers with `reply`.
    pub fn new(
        reply: impl Fn(&[ChatMessage], &SamplingParams) -> String + Send + Sync + 'static,
    ) -> Self {
        FakeEngine {
            reply: Arc::new(reply),
            delay: Duration::ZERO,
            calls: AtomicU32::new(0),
        }
    }

    /// Wait `delay` before each answer, as a real model would.
    pub fn with_delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// How many generating calls were made.
    pub fn calls(&self) -> u32 {
        self.calls.load(Ordering::SeqCst)
    }

    async fn finish(
        &self,
        text: String,
        params: &SamplingParams,
        prompt_tokens: u32,
    ) -> Generation {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        let words: Vec<&str> = text.split_whitespace().collect();
        let max = params.max_tokens as usize;
        let (kept, finish) = if words.len() > max {
            (&words[..max], Finish::Length)
        } else {
            (&words[..], Finish::Stop)
        };
        Generation {
            text: kept.join(" "),
            finish,
            prompt_tokens,
            completion_tokens: kept.len() as u32,
            token_logprobs: kept.iter().map(|w| (w.to_string(), FAKE_LOGPROB)).collect(),
            token_ids: (0..kept.len() as u32).collect(),
            seed: params.seed.unwrap_or(0),
        }
    }
}

fn count_words(texts: impl IntoIterator<Item = impl AsRef<str>>) -> u32 {
    texts
        .into_iter()
        .map(|t| t.as_ref().split_whitespace().count() as u32)
        .sum()
}

#[async_trait]
impl ModelEngine for FakeEngine {
    fn model_name(&self) -> &str {
        "fake"
    }

    async fn generate(
        &self,
        request: GenerateRequest,
        deltas: Option<Deltas>,
    ) -> Result<Generation, ModelError> {
        let messages = match request.prompt {
            Prompt::Chat(messages) => messages,
            Prompt::Text(prompt) => vec![ChatMessage {
                role: ChatRole::User,
                content: prompt,
            }],
        };
        let params = request.params;
        let text = (self.reply)(&messages, &params);
        let prompt_tokens = count_words(messages.iter().map(|m| &m.content));
        let generation = self.finish(text, &params, prompt_tokens).await;
        // The fake cannot stream: the whole text at the end.
        if let Some(deltas) = deltas {
            let _ = deltas.send(generation.text.clone());
        }
        Ok(generation)
    }

    async fn tokenize(&self, text: String) -> Result<Vec<u32>, ModelError> {
        Ok(text.bytes().map(u32::from).collect())
    }

    async fn score(
        &self,
        prompt: String,
        continuation: String,
        _: Option<String>,
    ) -> Result<Scored, ModelError> {
        let words = count_words([&continuation]);
        Ok(Scored {
            logprob: f64::from(words) * f64::from(FAKE_LOGPROB),
            tokens: count_words([prompt]) + words,
        })
    }

    async fn embed(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, ModelError> {
        Ok(texts
            .iter()
            .map(|t| {
                let mut v = [0f32; 8];
                for (i, b) in t.bytes().enumerate() {
                    v[i % 8] += f32::from(b);
                }
                let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-6);
                v.iter().map(|x| x / norm).collect()
            })
            .collect())
    }
}
