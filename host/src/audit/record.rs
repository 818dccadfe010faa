//! Records: everything a validator needs to check one expert's answer
//! again — the request, the response, the trace with what every host call
//! returned, and the receipt that vouches for them.
//!
//! The receipt's digests tie a record together: the request and response
//! digests and the trace's sha256 must be the receipt's, so a record whose
//! receipt verifies cannot have been edited (see [`Record::check`]).

use serde::{Deserialize, Serialize};

use super::{Receipt, ReceiptError, Trace, receipt};
use crate::bindings::types::{
    Completion, Error as GuestError, FinishReason, Message, Request, Response, Sampling,
    TokenLogprob, Usage,
};

/// Most bytes of host-call results one invocation's trace keeps; results
/// past it are not kept, and a replay says which call it cannot answer.
pub const MAX_RECORDED_RESULT_BYTES: usize = 1024 * 1024;

/// What a host call returned to the guest, kept so that a replay can
/// answer the guest again without the model or the other experts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum CallResult {
    /// `model.chat`, `model.complete`, `model.stream-answer`.
    Completion {
        /// The text.
        text: String,
        /// `stop` or `length`.
        finish: String,
        /// Tokens read.
        prompt_tokens: u32,
        /// Tokens generated.
        completion_tokens: u32,
        /// Each generated token's text, as the guest saw it.
        tokens: Vec<String>,
        /// Each generated token's id (for the logprob spot-check).
        token_ids: Vec<u32>,
        /// Each generated token's log-probability under the model.
        logprobs: Vec<f32>,
    },
    /// `model.tokenize`.
    Tokens {
        /// The ids.
        ids: Vec<u32>,
    },
    /// `model.score`.
    Score {
        /// The summed log-likelihood.
        value: f64,
        /// Tokens the model read (absent in records written before it was
        /// kept).
        #[serde(default)]
        tokens: u32,
    },
    /// `model.score-choices`.
    Scores {
        /// The summed log-likelihood of each continuation.
        values: Vec<f64>,
        /// Tokens the model read for all of them.
        tokens: u32,
    },
    /// `model.embed`.
    Embeddings {
        /// One vector per text.
        vectors: Vec<Vec<f32>>,
    },
    /// `experts.call`.
    Response(RecordedResponse),
    /// Any call that failed: the error the guest got.
    Error(RecordedError),
}

impl CallResult {
    /// Roughly the bytes it holds, for [`MAX_RECORDED_RESULT_BYTES`].
    pub fn size(&self) -> usize {
        match self {
            CallResult::Completion { text, tokens, .. } => {
                text.len() + tokens.iter().map(|t| t.len() + 8).sum::<usize>()
            }
            CallResult::Tokens { ids } => ids.len() * 4,
            CallResult::Score { .. } => 8,
            CallResult::Scores { values, .. } => values.len() * 8,
            CallResult::Embeddings { vectors } => vectors.iter().map(|v| v.len() * 4).sum(),
            CallResult::Response(r) => r.content.len() + metadata_len(&r.metadata),
            CallResult::Error(e) => e.message.len(),
        }
    }

    /// The completion the guest got.
    pub fn completion(&self) -> Option<Completion> {
        match self {
            CallResult::Completion {
                text,
                finish,
                prompt_tokens,
                completion_tokens,
                tokens,
                logprobs,
                ..
            } => Some(Completion {
                text: text.clone(),
                finish_reason: if finish == "length" {
                    FinishReason::Length
                } else {
                    FinishReason::Stop
                },
                usage: Usage {
                    prompt_tokens: *prompt_tokens,
                    completion_tokens: *completion_tokens,
                },
                token_logprobs: tokens
                    .iter()
                    .zip(logprobs)
                    .map(|(token, logprob)| TokenLogprob {
                        token: token.clone(),
                        logprob: *logprob,
                    })
                    .collect(),
            }),
            _ => None,
        }
    }
}

fn metadata_len(metadata: &[(String, String)]) -> usize {
    metadata.iter().map(|(k, v)| k.len() + v.len()).sum()
}

/// An expert request, as data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordedRequest {
    /// `[role, content]` pairs, roles by their WIT names.
    pub messages: Vec<(String, String)>,
    /// The sampling the request carried.
    pub sampling: RecordedSampling,
    /// Its metadata.
    pub metadata: Vec<(String, String)>,
}

/// A `sampling` record as data: absent fields are `null`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct RecordedSampling {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<u32>,
    pub repetition_penalty: Option<f32>,
    pub max_tokens: Option<u32>,
    pub seed: Option<u64>,
    pub stop: Vec<String>,
}

/// An expert's response, as data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordedResponse {
    /// The answer.
    pub content: String,
    /// Its metadata.
    pub metadata: Vec<(String, String)>,
    /// The expert's confidence.
    pub confidence: Option<f32>,
    /// Tokens read, as the expert reported.
    pub prompt_tokens: u32,
    /// Tokens generated, as the expert reported.
    pub completion_tokens: u32,
}

/// An error a guest got, as data: `kind` is the WIT case name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordedError {
    /// `invalid-input`, `denied`, `limit-exceeded`, `model` or `internal`.
    pub error: String,
    /// The message.
    pub message: String,
}

impl From<&Request> for RecordedRequest {
    fn from(req: &Request) -> Self {
        let s = &req.sampling;
        RecordedRequest {
            messages: req
                .messages
                .iter()
                .map(|m| {
                    let role = crate::inference::ChatRole::from(m.role);
                    (role.as_str().to_string(), m.content.clone())
                })
                .collect(),
            sampling: RecordedSampling {
                temperature: s.temperature,
                top_p: s.top_p,
                top_k: s.top_k,
                repetition_penalty: s.repetition_penalty,
                max_tokens: s.max_tokens,
                seed: s.seed,
                stop: s.stop.clone(),
            },
            metadata: req.metadata.clone(),
        }
    }
}

impl RecordedRequest {
    /// The request it records; an unknown role is an error naming it.
    pub fn to_request(&self) -> Result<Request, String> {
        use crate::bindings::types::Role;
        let messages = self
            .messages
            .iter()
            .enumerate()
            .map(|(i, (role, content))| {
                let role = match role.as_str() {
                    "system" => Role::System,
                    "user" => Role::User,
                    "assistant" => Role::Assistant,
                    "tool" => Role::Tool,
                    other => return Err(format!("messages[{i}]: unknown role `{other}`")),
                };
                Ok(Message {
                    role,
                    content: content.clone(),
                })
            })
            .collect::<Result<_, _>>()?;
        let s = &self.sampling;
        Ok(Request {
            messages,
            sampling: Sampling {
                temperature: s.temperature,
                top_p: s.top_p,
                top_k: s.top_k,
                repetition_penalty: s.repetition_penalty,
                max_tokens: s.max_tokens,
                seed: s.seed,
                stop: s.stop.clone(),
            },
            metadata: self.metadata.clone(),
        })
    }
}

impl From<&Response> for RecordedResponse {
    fn from(r: &Response) -> Self {
        RecordedResponse {
            content: r.content.clone(),
            metadata: r.metadata.clone(),
            confidence: r.confidence,
            prompt_tokens: r.usage.prompt_tokens,
            completion_tokens: r.usage.completion_tokens,
        }
    }
}

impl From<&RecordedResponse> for Response {
    fn from(r: &RecordedResponse) -> Self {
        Response {
            content: r.content.clone(),
            metadata: r.metadata.clone(),
            confidence: r.confidence,
            usage: Usage {
                prompt_tokens: r.prompt_tokens,
                completion_tokens: r.completion_tokens,
            },
        }
    }
}

impl From<&GuestError> for RecordedError {
    fn from(e: &GuestError) -> Self {
        let (error, message) = match e {
            GuestError::InvalidInput(m) => ("invalid-input", m),
            GuestError::Denied(m) => ("denied", m),
            GuestError::LimitExceeded(m) => ("limit-exceeded", m),
            GuestError::Model(m) => ("model", m),
            GuestError::Internal(m) => ("internal", m),
        };
        RecordedError {
            error: error.to_string(),
            message: message.clone(),
        }
    }
}

impl From<&RecordedError> for GuestError {
    fn from(e: &RecordedError) -> Self {
        let m = e.message.clone();
        match e.error.as_str() {
            "invalid-input" => GuestError::InvalidInput(m),
            "denied" => GuestError::Denied(m),
            "limit-exceeded" => GuestError::LimitExceeded(m),
            "model" => GuestError::Model(m),
            _ => GuestError::Internal(m),
        }
    }
}

/// One invocation as the audit store keeps it and `tessera verify` reads
/// it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// The request the expert got.
    pub request: RecordedRequest,
    /// Its answer (`None` when it failed; the trace says why).
    pub response: Option<RecordedResponse>,
    /// What it did, host-call results included.
    pub trace: Trace,
    /// The host's receipt for the answer, when it signs them.
    pub receipt: Option<Receipt>,
}

/// Why a record does not hold together.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// It has no receipt to check it against.
    #[error("the record has no receipt (the host had no key, or the expert failed)")]
    NoReceipt,
    /// Its receipt does not verify.
    #[error("its receipt does not verify: {0}")]
    Receipt(#[from] ReceiptError),
    /// A part differs from what the receipt vouches for.
    #[error(
        "the record's {part} is not the one its receipt vouches for (digest {got}, receipt says {want})"
    )]
    Mismatch {
        /// `request`, `response` or `trace`.
        part: &'static str,
        /// The record's digest.
        got: String,
        /// The receipt's.
        want: String,
    },
}

impl Record {
    /// Check the receipt's signature and that the request, response and
    /// trace are the ones it vouches for; the signer's fingerprint.
    pub fn check(&self) -> Result<String, RecordError> {
        let receipt = self.receipt.as_ref().ok_or(RecordError::NoReceipt)?;
        let signer = receipt.verify()?;
        let body = &receipt.body;
        let request = self
            .request
            .to_request()
            .map_err(|e| ReceiptError::Malformed(format!("request: {e}")))?;
        let parts = [
            (
                "request",
                receipt::request_sha256(&request),
                &body.request_sha256,
            ),
            (
                "response",
                self.response
                    .as_ref()
                    .map(|r| receipt::response_sha256(&Response::from(r)))
                    .unwrap_or_default(),
                &body.response_sha256,
            ),
            (
                "trace",
                receipt::trace_sha256(&self.trace),
                &body.trace_sha256,
            ),
        ];
        for (part, got, want) in parts {
            if &got != want {
                return Err(RecordError::Mismatch {
                    part,
                    got,
                    want: want.clone(),
                });
            }
        }
        Ok(signer)
    }
}
