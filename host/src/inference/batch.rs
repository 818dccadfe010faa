//! What the scheduler needs of a model, and nothing more.
//!
//! The scheduler (`scheduler.rs`) knows sequences, tokens and budgets, not
//! layers, as vLLM's does: a model is anything that runs a *batch step*
//! over sequences that each own a cache, and tells its shape. The
//! Llama family implements it in `llama.rs`; a new architecture is one
//! more implementation, and the scheduler's behaviour (fair turns, KV
//! admission, chunked prefill, cancellation) is tested on a fake model.

use super::ModelError;

/// The sizes the scheduler plans with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelShape {
    /// Tokens one sequence can attend to (prompt and answer together).
    pub context: usize,
    /// Token ids run from 0 to `vocab - 1`; logits rows are this long.
    pub vocab: usize,
    /// Bytes of KV cache one token of one sequence takes.
    pub kv_bytes_per_token: usize,
}

/// One sequence's part of a batch step.
pub struct StepInput<'a, C> {
    /// New tokens, following the ones `cache` holds. Never empty.
    pub tokens: &'a [u32],
    /// The sequence's cache; the new tokens are appended to it.
    pub cache: &'a mut C,
    /// Return logits for every new token (scoring) instead of the last only.
    pub all_logits: bool,
    /// The LoRA adapter this sequence runs with (`None`: the base model).
    pub adapter: Option<&'a super::lora::LoraAdapter>,
}

/// A model the continuous-batching scheduler can run.
pub trait BatchModel {
    /// A sequence's keys and values so far.
    type Cache;

    /// Context, vocabulary and KV cost per token.
    fn shape(&self) -> ModelShape;

    /// An empty cache for a new sequence.
    fn new_cache(&self) -> Self::Cache;

    /// Forget every token of `cache` past the first `len`, so that the
    /// sequence can go on from there with other tokens (scoring several
    /// continuations of one prompt reads the prompt once).
    fn truncate(&self, cache: &mut Self::Cache, len: usize);

    /// Run one forward pass over every input. Returns, per input, the
    /// logits of its last new token (or of every new token with
    /// `all_logits`), each `shape().vocab` long.
    ///
    /// May panic on input the scheduler promises never to send (no
    /// tokens, an id outside the vocabulary, a sequence past the
    /// context); the scheduler contains a panic to the sequences of that
    /// step.
    fn step(&self, inputs: &mut [StepInput<'_, Self::Cache>]) -> Vec<Vec<Vec<f32>>>;
}

/// Turns generated token ids back into text.
pub trait Detokenize {
    /// The text of `ids`, special tokens left out; bytes that do not form
    /// UTF-8 come out as U+FFFD.
    fn decode(&self, ids: &[u32]) -> String;

    /// The end-of-turn token: generation stops there, and it is not part
    /// of the answer.
    fn eos(&self) -> u32;
}

/// Sentence embeddings, run by the scheduler between generation steps.
pub trait Embed {
    /// One vector per text.
    fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, ModelError>;
}

impl Detokenize for super::TextTokenizer {
    fn decode(&self, ids: &[u32]) -> String {
        super::TextTokenizer::decode(self, ids, false).unwrap_or_default()
    }

    fn eos(&self) -> u32 {
        super::TextTokenizer::eos(self)
    }
}

impl Embed for crate::embed::Embedder {
    fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, ModelError> {
        crate::embed::Embedder::embed(self, texts)
    }
}
