//! The contract's data types (generated from `wit/types.wit`), with
//! constructors for host-side callers.

pub use crate::bindings::types::{
    Completion, Error, ExpertInfo, FinishReason, Message, Request, Response, Role, Sampling,
    TokenLogprob, Usage,
};

/// Every field unset: the host's defaults.
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

impl Request {
    /// A request holding one user message, with default sampling.
    pub fn from_prompt(prompt: impl Into<String>) -> Request {
        Request::from_messages(vec![Message {
            role: Role::User,
            content: prompt.into(),
        }])
    }

    /// A request with these messages and default sampling.
    pub fn from_messages(messages: Vec<Message>) -> Request {
        Request {
            messages,
            sampling: Sampling::default(),
            metadata: Vec::new(),
        }
    }

    /// Add a metadata entry.
    pub fn with_metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Request {
        self.metadata.push((key.into(), value.into()));
        self
    }
}
