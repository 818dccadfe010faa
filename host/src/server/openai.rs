//! The OpenAI request bodies, as clients send them, and their checks.
//! Unknown fields are ignored (clients add their own); fields we read are
//! checked and a bad one is refused with its name.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::error::ApiError;
use crate::inference::{ChatMessage, ChatRole, SamplingField, SamplingParams};
use crate::types::Sampling;

/// Most choices one request may ask for (`n`).
pub const MAX_N: u32 = 16;
/// Most choices one completions request may ask for (prompts × `n`).
pub const MAX_CHOICES: u32 = 64;
/// Most `metadata` pairs (OpenAI's limit).
pub const MAX_METADATA_PAIRS: usize = 16;
/// Longest `metadata` key, bytes (OpenAI's limit).
pub const MAX_METADATA_KEY_BYTES: usize = 64;
/// Longest `metadata` value (and `user`), bytes (OpenAI's limit).
pub const MAX_METADATA_VALUE_BYTES: usize = 512;
/// `max_tokens` of `/v1/completions` when the request has none (OpenAI's
/// default).
pub const COMPLETIONS_DEFAULT_MAX_TOKENS: u32 = 16;

/// Parse a JSON body into `T`, naming the field at fault.
pub fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            ApiError::invalid(
                None,
                format!("the body is not valid JSON: {inner}; send a JSON object with Content-Type: application/json"),
            )
        } else if path == "." {
            ApiError::invalid(None, format!("invalid request body: {inner}"))
        } else {
            ApiError::invalid(Some(path.clone()), format!("invalid field `{path}`: {inner}"))
        }
    })
}

/// A request with [`CommonParams`]: the body is read twice, once for the
/// endpoint's own fields and once for the common ones.
pub trait WithCommon: serde::de::DeserializeOwned {
    /// Where the common fields go.
    fn common_mut(&mut self) -> &mut CommonParams;
}

impl WithCommon for ChatRequest {
    fn common_mut(&mut self) -> &mut CommonParams {
        &mut self.common
    }
}

impl WithCommon for CompletionRequest {
    fn common_mut(&mut self) -> &mut CommonParams {
        &mut self.common
    }
}

/// Parse a chat or completions body, naming the field at fault.
pub fn parse_request<T: WithCommon>(body: &[u8]) -> Result<T, ApiError> {
    let mut request: T = parse(body)?;
    *request.common_mut() = parse(body)?;
    Ok(request)
}

/// `stop`: one string or a list.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    /// One stop string.
    One(String),
    /// Several.
    Many(Vec<String>),
}

/// A message's content: a string, or a list of parts of which only text
/// parts are understood.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Content {
    /// Plain text.
    Text(String),
    /// Content parts.
    Parts(Vec<ContentPart>),
}

/// One content part.
#[derive(Debug, Clone, Deserialize)]
pub struct ContentPart {
    /// `text` (others are refused).
    #[serde(rename = "type")]
    pub kind: String,
    /// The text of a text part.
    #[serde(default)]
    pub text: Option<String>,
}

/// A chat message as OpenAI clients send it.
#[derive(Debug, Clone, Deserialize)]
pub struct WireMessage {
    /// `system`, `developer`, `user`, `assistant` or `tool`.
    pub role: WireRole,
    /// The text (may be null on assistant tool-call turns).
    #[serde(default)]
    pub content: Option<Content>,
}

/// Roles clients send.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum WireRole {
    /// Instructions.
    System,
    /// Instructions (OpenAI's newer name).
    Developer,
    /// The question.
    User,
    /// An answer.
    Assistant,
    /// Tool output.
    Tool,
}

/// `stream_options`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct StreamOptions {
    /// Send a last chunk with the usage and no choices.
    #[serde(default)]
    pub include_usage: bool,
}

/// Fields shared by both completion endpoints.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct CommonParams {
    /// Softmax temperature, 0 to 2.
    pub temperature: Option<f32>,
    /// Nucleus mass, (0, 1].
    pub top_p: Option<f32>,
    /// Keep the k best tokens (an extension).
    pub top_k: Option<u32>,
    /// Repetition penalty (an extension).
    pub repetition_penalty: Option<f32>,
    /// Most tokens per choice.
    pub max_tokens: Option<u32>,
    /// Newer name of `max_tokens`.
    pub max_completion_tokens: Option<u32>,
    /// Sampler seed.
    pub seed: Option<u64>,
    /// Stop strings.
    pub stop: Option<Stop>,
    /// Choices to generate.
    pub n: Option<u32>,
    /// Stream the answer as server-sent events.
    #[serde(default)]
    pub stream: bool,
    /// Streaming options.
    pub stream_options: Option<StreamOptions>,
    /// Accepted when 0 (not implemented otherwise).
    pub frequency_penalty: Option<f32>,
    /// Accepted when 0 (not implemented otherwise).
    pub presence_penalty: Option<f32>,
    /// Passed to experts as request metadata.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// The end user, passed to experts as metadata.
    pub user: Option<String>,
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatRequest {
    /// An expert, the base model.
    pub model: String,
    /// The conversation.
    pub messages: Vec<WireMessage>,
    /// Return the chosen tokens' log-probabilities.
    #[serde(default)]
    pub logprobs: bool,
    /// Alternatives per token: only 0 is supported.
    pub top_logprobs: Option<u32>,
    /// Tools are not supported; a non-empty list is refused.
    pub tools: Option<Vec<serde_json::Value>>,
    /// Only `{"type": "text"}` is supported.
    pub response_format: Option<serde_json::Value>,
    /// The rest, read by [`parse_request`] from the same body (not with
    /// `#[serde(flatten)]`, which would lose the field names in errors).
    #[serde(skip)]
    pub common: CommonParams,
}

/// `prompt` of `/v1/completions`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    /// One prompt.
    One(String),
    /// Several prompts: one choice (or `n`) each.
    Many(Vec<String>),
}

/// `POST /v1/completions`.
#[derive(Debug, Clone, Deserialize)]
pub struct CompletionRequest {
    /// An expert or the base model.
    pub model: String,
    /// The text to continue.
    pub prompt: Prompt,
    /// Return this many top log-probabilities per token: 0 or 1 give the
    /// chosen token's.
    pub logprobs: Option<u32>,
    /// Echo the prompt with its tokens' log-probabilities (for scoring:
    /// `server::echo`).
    #[serde(default)]
    pub echo: bool,
    /// Text after the insertion point: not supported.
    pub suffix: Option<String>,
    /// The rest, read by [`parse_request`] from the same body (not with
    /// `#[serde(flatten)]`, which would lose the field names in errors).
    #[serde(skip)]
    pub common: CommonParams,
}

/// `input` of `/v1/embeddings`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum EmbeddingInput {
    /// One text.
    One(String),
    /// Several texts.
    Many(Vec<String>),
    /// Token ids: not supported.
    Tokens(serde_json::Value),
}

/// `POST /v1/embeddings`.
#[derive(Debug, Clone, Deserialize)]
pub struct EmbeddingRequest {
    /// The embedding model.
    pub model: String,
    /// What to embed.
    pub input: EmbeddingInput,
    /// `float` (default) or `base64`.
    pub encoding_format: Option<String>,
    /// Not supported unless equal to the model's size.
    pub dimensions: Option<u32>,
}

/// A request's options once checked: sampling for the base model and for
/// experts, choices, streaming, metadata.
#[derive(Debug, Clone)]
pub struct RequestOptions {
    /// Sampling for the base model (owner unset).
    pub params: SamplingParams,
    /// The same, as an expert sees it.
    pub sampling: Sampling,
    /// Choices.
    pub n: u32,
    /// Streamed?
    pub stream: bool,
    /// Send a usage-only last chunk.
    pub include_usage: bool,
    /// Metadata for experts.
    pub metadata: Vec<(String, String)>,
}

impl CommonParams {
    /// Check every field, with `default_max_tokens` when none is given.
    pub fn check(&self, default_max_tokens: u32) -> Result<RequestOptions, ApiError> {
        let bad = |field: &str, message: String| {
            ApiError::invalid(Some(field.to_string()), format!("`{field}` {message}"))
        };
        for (field, value) in [
            ("frequency_penalty", self.frequency_penalty),
            ("presence_penalty", self.presence_penalty),
        ] {
            if let Some(v) = value
                && v != 0.0
            {
                return Err(bad(
                    field,
                    format!(
                        "is not supported (got {v}); use `repetition_penalty` (> 1 discourages repeats) or leave it out"
                    ),
                ));
            }
        }
        let max_tokens = match (self.max_completion_tokens, self.max_tokens) {
            (Some(m), _) => ("max_completion_tokens", m),
            (None, Some(m)) => ("max_tokens", m),
            (None, None) => ("max_tokens", default_max_tokens),
        };
        let n = self.n.unwrap_or(1);
        if !(1..=MAX_N).contains(&n) {
            return Err(bad("n", format!("must be between 1 and {MAX_N}, got {n}")));
        }
        if n > 1 && self.stream {
            return Err(bad(
                "n",
                "greater than 1 is not supported with `stream: true`; ask for one choice per stream".into(),
            ));
        }
        let stop = match &self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
        };
        let sampling = Sampling {
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            repetition_penalty: self.repetition_penalty,
            max_tokens: Some(max_tokens.1),
            seed: self.seed,
            stop,
        };
        // The same check as for experts' model calls, so the two doors
        // agree; only the field's spelling differs.
        let params = sampling.clone().check(u32::MAX).map_err(|e| {
            let field = match e.field {
                SamplingField::MaxTokens => max_tokens.0.to_string(),
                other => other.http_name(),
            };
            bad(&field, e.message)
        })?;
        if self.metadata.len() > MAX_METADATA_PAIRS {
            return Err(bad(
                "metadata",
                format!(
                    "may hold at most {MAX_METADATA_PAIRS} pairs, got {}",
                    self.metadata.len()
                ),
            ));
        }
        if let Some((k, v)) = self
            .metadata
            .iter()
            .find(|(k, v)| k.len() > MAX_METADATA_KEY_BYTES || v.len() > MAX_METADATA_VALUE_BYTES)
        {
            return Err(bad(
                &format!("metadata.{}", k.chars().take(64).collect::<String>()),
                format!(
                    "is too long ({} byte key, {} byte value); keys may be {MAX_METADATA_KEY_BYTES} bytes and values {MAX_METADATA_VALUE_BYTES}",
                    k.len(),
                    v.len()
                ),
            ));
        }
        if self
            .user
            .as_ref()
            .is_some_and(|u| u.len() > MAX_METADATA_VALUE_BYTES)
        {
            return Err(bad(
                "user",
                format!("may be at most {MAX_METADATA_VALUE_BYTES} bytes"),
            ));
        }
        let mut metadata: Vec<(String, String)> = self.metadata.clone().into_iter().collect();
        if let Some(user) = &self.user {
            metadata.push(("user".into(), user.clone()));
        }
        // What experts see (`sampling`): the request's own values, unfilled.
        Ok(RequestOptions {
            params,
            sampling,
            n,
            stream: self.stream,
            include_usage: self
                .stream_options
                .as_ref()
                .is_some_and(|o| o.include_usage),
            metadata,
        })
    }
}

impl ChatRequest {
    /// Check the fields only chat has.
    pub fn check(&self) -> Result<(), ApiError> {
        if self.messages.is_empty() {
            return Err(ApiError::invalid(
                Some("messages".into()),
                "`messages` is empty: send at least one message, e.g. [{\"role\": \"user\", \"content\": \"Hello\"}]",
            ));
        }
        if let Some(k) = self.top_logprobs
            && k > 0
        {
            return Err(ApiError::invalid(
                Some("top_logprobs".into()),
                format!(
                    "`top_logprobs` {k} is not supported: `logprobs: true` returns the chosen tokens' log-probabilities only"
                ),
            ));
        }
        if self.tools.as_ref().is_some_and(|t| !t.is_empty()) {
            return Err(ApiError::invalid(
                Some("tools".into()),
                "tools (function calling) are not supported; leave `tools` out",
            ));
        }
        self.schema()?;
        Ok(())
    }

    /// The JSON schema of `response_format: {"type": "json_schema",
    /// "json_schema": {"schema": {...}}}`, as JSON text; experts read it as
    /// the request metadata `schema`.
    pub fn schema(&self) -> Result<Option<String>, ApiError> {
        let Some(format) = &self.response_format else {
            return Ok(None);
        };
        match format.get("type").and_then(|t| t.as_str()) {
            Some("text") => Ok(None),
            Some("json_schema") => match format.pointer("/json_schema/schema") {
                Some(schema) if schema.is_object() => Ok(Some(schema.to_string())),
                _ => Err(ApiError::invalid(
                    Some("response_format.json_schema.schema".into()),
                    "`response_format` of type json_schema needs `json_schema.schema`, a JSON Schema object",
                )),
            },
            _ => Err(ApiError::invalid(
                Some("response_format".into()),
                "`response_format` may be `{\"type\": \"text\"}` or `{\"type\": \"json_schema\", \"json_schema\": {\"schema\": {...}}}` (answered by experts that honour the request metadata `schema`, such as json-extractor)",
            )),
        }
    }

    /// The conversation, with text content only.
    pub fn messages(&self) -> Result<Vec<ChatMessage>, ApiError> {
        self.messages
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let content = match &m.content {
                    None => String::new(),
                    Some(Content::Text(t)) => t.clone(),
                    Some(Content::Parts(parts)) => {
                        let mut text = String::new();
                        for (j, part) in parts.iter().enumerate() {
                            match (&*part.kind, &part.text) {
                                ("text", Some(t)) => text.push_str(t),
                                (kind, _) => {
                                    return Err(ApiError::invalid(
                                        Some(format!("messages[{i}].content[{j}]")),
                                        format!("content parts of type `{kind}` are not supported: send text"),
                                    ));
                                }
                            }
                        }
                        text
                    }
                };
                let role = match m.role {
                    WireRole::System | WireRole::Developer => ChatRole::System,
                    WireRole::User => ChatRole::User,
                    WireRole::Assistant => ChatRole::Assistant,
                    WireRole::Tool => ChatRole::Tool,
                };
                Ok(ChatMessage { role, content })
            })
            .collect()
    }
}

impl CompletionRequest {
    /// The prompts, after checking the fields only completions have.
    pub fn prompts(&self) -> Result<Vec<String>, ApiError> {
        if self.echo {
            // `/v1/completions` answers echo requests before this.
            return Err(ApiError::invalid(
                Some("echo".into()),
                "`echo` must be `true` or `false`",
            ));
        }
        if self.suffix.is_some() {
            return Err(ApiError::invalid(
                Some("suffix".into()),
                "`suffix` (insertion) is not supported",
            ));
        }
        if let Some(k) = self.logprobs
            && k > 1
        {
            return Err(ApiError::invalid(
                Some("logprobs".into()),
                format!(
                    "`logprobs` {k} is not supported: 0 or 1 return the chosen tokens' log-probabilities"
                ),
            ));
        }
        let prompts = match &self.prompt {
            Prompt::One(p) => vec![p.clone()],
            Prompt::Many(v) => v.clone(),
        };
        if prompts.is_empty() {
            return Err(ApiError::invalid(
                Some("prompt".into()),
                "`prompt` is an empty list",
            ));
        }
        if prompts.len() > 1 && self.common.stream {
            return Err(ApiError::invalid(
                Some("prompt".into()),
                "several prompts are not supported with `stream: true`",
            ));
        }
        Ok(prompts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_field_is_named() {
        let e = parse_request::<ChatRequest>(
            br#"{"model": "m", "messages": [{"role": "robot", "content": "hi"}]}"#,
        )
        .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages[0].role"));
        assert!(e.message.contains("robot"), "{}", e.message);
        let e = parse_request::<ChatRequest>(
            br#"{"model": "m", "messages": [], "temperature": "hot"}"#,
        )
        .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("temperature"));
        let e = parse::<ChatRequest>(b"{\"model\": ").unwrap_err();
        assert!(e.message.contains("not valid JSON"), "{}", e.message);
        assert_eq!(e.param, None);
    }

    #[test]
    fn sampling_ranges_are_checked() {
        let check = |json: &str| {
            parse_request::<ChatRequest>(json.as_bytes())
                .unwrap()
                .common
                .check(256)
        };
        let base = r#"{"model": "m", "messages": [{"role": "user", "content": "hi"}]"#;
        assert!(check(&format!("{base}}}")).is_ok());
        for (field, value) in [
            ("temperature", "3"),
            ("top_p", "0"),
            ("repetition_penalty", "0"),
            ("stop", r#"["a","b","c","d","e"]"#),
            ("n", "0"),
            ("max_tokens", "0"),
            ("presence_penalty", "1"),
        ] {
            let e = check(&format!("{base}, \"{field}\": {value}}}")).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(field), "{}", e.message);
            assert_eq!(e.status.as_u16(), 400);
        }
        let e = check(&format!("{base}, \"n\": 2, \"stream\": true}}")).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("n"));
    }

    #[test]
    fn text_parts_are_joined_and_others_refused() {
        let req: ChatRequest = parse(
            br#"{"model": "m", "messages": [{"role": "developer", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]}"#,
        )
        .unwrap();
        let messages = req.messages().unwrap();
        assert_eq!(messages[0].content, "ab");
        assert_eq!(messages[0].role, ChatRole::System);
        let req: ChatRequest = parse(
            br#"{"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}"#,
        )
        .unwrap();
        let e = req.messages().unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages[0].content[0]"));
    }
}
