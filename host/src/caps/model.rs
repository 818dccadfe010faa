//! `tessera:expert/model`: the host's models, behind grants and budgets.

use std::sync::Arc;

use super::View;
use crate::audit::{CallEnd, CallRecord, CallResult, Digest, SamplingUsed, TokenCount};
use crate::bindings::model::Host;
use crate::bindings::types::{
    Completion, Error, FinishReason, Message, Sampling, TokenLogprob, Usage,
};
use crate::bundle::Capabilities;
use crate::inference::{
    ChatMessage, Deltas, Finish, GenerateRequest, Generation, ModelEngine, ModelError, Prompt,
    SamplingParams,
};

const INTERFACE: &str = "tessera:expert/model";

/// Most texts one `model.embed` call may send.
pub const MAX_EMBED_TEXTS: usize = 256;
/// Most continuations one `model.score-choices` call may rate.
pub const MAX_SCORE_CHOICES: usize = 256;

/// What the `model` interface of one invocation holds: the engine, the
/// bundle's grant, and where streamed text goes.
pub(crate) struct ModelCtx {
    engine: Arc<dyn ModelEngine>,
    /// The bundle's `model` capability.
    granted: bool,
    /// Its capabilities, for the adapter grant.
    grants: Capabilities,
    /// `false` while `describe` runs: describing an expert never costs
    /// model time.
    pub(crate) allowed: bool,
    /// Where `model.stream-answer` sends text: set for the outermost
    /// expert of a streaming request only.
    pub(crate) answer_stream: Option<Deltas>,
}

impl ModelCtx {
    pub(crate) fn new(engine: Arc<dyn ModelEngine>, capabilities: &Capabilities) -> ModelCtx {
        ModelCtx {
            engine,
            granted: capabilities.model.is_granted(),
            grants: capabilities.clone(),
            allowed: true,
            answer_stream: None,
        }
    }
}

impl View<'_, ModelCtx> {
    /// The adapter grant, checked before a call that names one.
    fn check_adapter(&self, adapter: Option<&str>) -> Result<(), Error> {
        let Some(name) = adapter else { return Ok(()) };
        if self.ctx.grants.may_use_adapter(name) {
            return Ok(());
        }
        // The name is the guest's: quoted only when it is a plausible one.
        let shown = if crate::bundle::is_valid_name(name) {
            format!("`{name}`")
        } else {
            format!("a {}-byte name", name.len())
        };
        Err(Error::Denied(format!(
            "expert `{}` may not use adapter {shown}: add it to `adapters` under [capabilities] in its tessera.toml",
            self.ledger.expert
        )))
    }

    /// Grants and budgets, checked before every model call.
    fn check_model_access(&mut self, generates: bool) -> Result<(), Error> {
        if !self.ctx.allowed {
            return Err(Error::Denied(
                "the model cannot be called from `describe`".into(),
            ));
        }
        if !self.ctx.granted {
            return Err(Error::Denied(format!(
                "expert `{}` may not use the model: add `model = true` under [capabilities] in its tessera.toml",
                self.ledger.expert
            )));
        }
        if self.ledger.model_calls_left() == 0 {
            return Err(Error::LimitExceeded(format!(
                "model call limit reached: {} calls per request (limits.model-calls)",
                self.ledger.limits.model_calls
            )));
        }
        if generates && self.ledger.tokens_left() == 0 {
            return Err(Error::LimitExceeded(format!(
                "generated token limit reached: {} tokens per request (limits.generated-tokens)",
                self.ledger.limits.generated_tokens
            )));
        }
        self.ledger.model_calls += 1;
        Ok(())
    }

    fn sampling_params(&self, sampling: Sampling) -> Result<SamplingParams, Error> {
        let mut params = sampling
            .check(self.ledger.tokens_left())
            .map_err(|e| Error::InvalidInput(format!("{} {}", e.field.wit_name(), e.message)))?;
        params.owner = Some(self.ledger.expert.clone());
        Ok(params)
    }

    fn finish_generation(&mut self, generation: Generation) -> (Completion, CallResult) {
        let ledger = &mut *self.ledger;
        ledger.generated_tokens = ledger
            .generated_tokens
            .saturating_add(generation.completion_tokens);
        ledger.read_tokens = ledger.read_tokens.saturating_add(generation.prompt_tokens);
        for (_, logprob) in &generation.token_logprobs {
            ledger.logprob_sum += f64::from(*logprob);
            ledger.logprob_tokens += 1;
        }
        let recorded = CallResult::Completion {
            text: generation.text.clone(),
            finish: match generation.finish {
                Finish::Stop => "stop",
                Finish::Length => "length",
            }
            .to_string(),
            prompt_tokens: generation.prompt_tokens,
            completion_tokens: generation.completion_tokens,
            tokens: generation
                .token_logprobs
                .iter()
                .map(|(t, _)| t.clone())
                .collect(),
            token_ids: generation.token_ids,
            logprobs: generation.token_logprobs.iter().map(|(_, l)| *l).collect(),
        };
        let completion = Completion {
            text: generation.text,
            finish_reason: match generation.finish {
                Finish::Stop => FinishReason::Stop,
                Finish::Length => FinishReason::Length,
            },
            usage: Usage {
                prompt_tokens: generation.prompt_tokens,
                completion_tokens: generation.completion_tokens,
            },
            token_logprobs: generation
                .token_logprobs
                .into_iter()
                .map(|(token, logprob)| TokenLogprob { token, logprob })
                .collect(),
        };
        (completion, recorded)
    }
    /// Checks and sampling defaults for a generating call.
    fn prepare_generation(&mut self, sampling: Sampling) -> Result<SamplingParams, Error> {
        self.check_model_access(true)?;
        self.sampling_params(sampling)
    }

    /// Count the tokens, record the call (with the sampling the engine
    /// used, `params` and its seed) and convert the result.
    fn end_generation(
        &mut self,
        record: CallRecord,
        function: &str,
        params: Option<SamplingParams>,
        result: Result<Generation, Error>,
    ) -> Result<Completion, Error> {
        let seed = result.as_ref().map_or(0, |g| g.seed);
        let (result, recorded) = match result.map(|g| self.finish_generation(g)) {
            Ok((c, recorded)) => (Ok(c), Some(recorded)),
            Err(e) => (Err(e), None),
        };
        let end = match &result {
            Ok(c) => CallEnd {
                result: recorded,
                bytes_out: c.text.len() as u64,
                output_sha256: completion_digest(function, c),
                tokens: Some(TokenCount {
                    prompt: c.usage.prompt_tokens,
                    completion: c.usage.completion_tokens,
                }),
                sampling: params.map(|p| SamplingUsed {
                    temperature: p.temperature,
                    top_p: p.top_p,
                    top_k: p.top_k,
                    repetition_penalty: p.repetition_penalty,
                    max_tokens: p.max_tokens,
                    seed,
                    stop: p.stop,
                }),
                ..CallEnd::default()
            },
            Err(e) => CallEnd::failed(e),
        };
        self.ledger.end_call(record, end);
        result
    }
}

/// The digest of a generation's arguments.
fn prompt_digest(
    function: &str,
    prompt: &Prompt,
    sampling: &Sampling,
    adapter: Option<&str>,
) -> String {
    let mut d = Digest::new(&format!("{INTERFACE}.{function}.in"));
    match prompt {
        Prompt::Chat(messages) => {
            for m in messages {
                d = d.text(m.role.as_str()).text(&m.content);
            }
            d = d.num(messages.len() as u64);
        }
        Prompt::Text(text) => d = d.text(text),
    }
    d.sampling(sampling)
        .text(adapter.unwrap_or_default())
        .finish()
}

/// The digest of a generation's result.
fn completion_digest(function: &str, c: &Completion) -> String {
    let mut d = Digest::new(&format!("{INTERFACE}.{function}.out"))
        .text(&c.text)
        .text(match c.finish_reason {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        })
        .num(u64::from(c.usage.prompt_tokens))
        .num(u64::from(c.usage.completion_tokens));
    for t in &c.token_logprobs {
        d = d.text(&t.token).num(u64::from(t.logprob.to_bits()));
    }
    d.finish()
}

fn model_error(e: ModelError) -> Error {
    match e {
        ModelError::InvalidInput(m) => Error::InvalidInput(m),
        ModelError::LimitExceeded(m) => Error::LimitExceeded(m),
        ModelError::UnknownAdapter(a) => Error::InvalidInput(format!("unknown adapter `{a}`")),
        other => Error::Model(other.to_string()),
    }
}

impl View<'_, ModelCtx> {
    /// `chat`, `stream-answer` and `complete`: one recorded, checked and
    /// budgeted generation (streamed to the request's client when
    /// `stream` and this is the outermost expert of a streamed request).
    async fn generation(
        &mut self,
        function: &str,
        prompt: Prompt,
        sampling: Sampling,
        adapter: Option<String>,
        stream: bool,
    ) -> Result<Completion, Error> {
        let bytes_in = match &prompt {
            Prompt::Chat(messages) => super::strings_len(messages.iter().map(|m| &m.content)),
            Prompt::Text(text) => text.len() as u64,
        };
        let input = prompt_digest(function, &prompt, &sampling, adapter.as_deref());
        let record = self.ledger.begin_call(INTERFACE, function, bytes_in, input);
        let mut used = None;
        let prepared = self
            .check_adapter(adapter.as_deref())
            .and_then(|()| self.prepare_generation(sampling));
        let result = match prepared {
            Ok(params) => {
                used = Some(params.clone());
                let request = GenerateRequest {
                    prompt,
                    params,
                    adapter,
                };
                let deltas = if stream {
                    self.ctx.answer_stream.clone()
                } else {
                    None
                };
                let engine = self.ctx.engine.clone();
                engine.generate(request, deltas).await.map_err(model_error)
            }
            Err(e) => Err(e),
        };
        self.end_generation(record, function, used, result)
    }
}

impl Host for View<'_, ModelCtx> {
    async fn chat(
        &mut self,
        messages: Vec<Message>,
        sampling: Sampling,
        adapter: Option<String>,
    ) -> wasmtime::Result<Result<Completion, Error>> {
        let prompt = Prompt::Chat(messages.into_iter().map(ChatMessage::from).collect());
        Ok(self
            .generation("chat", prompt, sampling, adapter, false)
            .await)
    }

    async fn stream_answer(
        &mut self,
        messages: Vec<Message>,
        sampling: Sampling,
        adapter: Option<String>,
    ) -> wasmtime::Result<Result<Completion, Error>> {
        let prompt = Prompt::Chat(messages.into_iter().map(ChatMessage::from).collect());
        Ok(self
            .generation("stream-answer", prompt, sampling, adapter, true)
            .await)
    }

    async fn complete(
        &mut self,
        prompt: String,
        sampling: Sampling,
        adapter: Option<String>,
    ) -> wasmtime::Result<Result<Completion, Error>> {
        Ok(self
            .generation("complete", Prompt::Text(prompt), sampling, adapter, false)
            .await)
    }

    async fn tokenize(&mut self, text: String) -> wasmtime::Result<Result<Vec<u32>, Error>> {
        let input = Digest::new("tessera:expert/model.tokenize.in")
            .text(&text)
            .finish();
        let record = self
            .ledger
            .begin_call(INTERFACE, "tokenize", text.len() as u64, input);
        let result = match self.check_model_access(false) {
            Ok(()) => {
                let engine = self.ctx.engine.clone();
                engine.tokenize(text).await.map_err(model_error)
            }
            Err(e) => Err(e),
        };
        let end = match &result {
            Ok(ids) => CallEnd {
                bytes_out: (ids.len() * 4) as u64,
                output_sha256: ids
                    .iter()
                    .fold(
                        Digest::new("tessera:expert/model.tokenize.out"),
                        |d, &id| d.num(u64::from(id)),
                    )
                    .finish(),
                result: Some(CallResult::Tokens { ids: ids.clone() }),
                ..CallEnd::default()
            },
            Err(e) => CallEnd::failed(e),
        };
        self.ledger.end_call(record, end);
        Ok(result)
    }

    async fn score(
        &mut self,
        prompt: String,
        continuation: String,
        adapter: Option<String>,
    ) -> wasmtime::Result<Result<f64, Error>> {
        let input = Digest::new("tessera:expert/model.score.in")
            .text(&prompt)
            .text(&continuation)
            .text(adapter.as_deref().unwrap_or_default())
            .finish();
        let record = self.ledger.begin_call(
            INTERFACE,
            "score",
            (prompt.len() + continuation.len()) as u64,
            input,
        );
        let access = self
            .check_adapter(adapter.as_deref())
            .and_then(|()| self.check_model_access(false));
        let result = match access {
            Ok(()) => {
                let engine = self.ctx.engine.clone();
                engine
                    .score(prompt, continuation, adapter)
                    .await
                    .map_err(model_error)
            }
            Err(e) => Err(e),
        };
        let end = match &result {
            Ok(scored) => {
                self.ledger.read_tokens = self.ledger.read_tokens.saturating_add(scored.tokens);
                CallEnd {
                    bytes_out: 8,
                    output_sha256: Digest::new("tessera:expert/model.score.out")
                        .num(scored.logprob.to_bits())
                        .finish(),
                    tokens: Some(TokenCount {
                        prompt: scored.tokens,
                        completion: 0,
                    }),
                    result: Some(CallResult::Score {
                        value: scored.logprob,
                        tokens: scored.tokens,
                    }),
                    ..CallEnd::default()
                }
            }
            Err(e) => CallEnd::failed(e),
        };
        self.ledger.end_call(record, end);
        Ok(result.map(|scored| scored.logprob))
    }

    async fn score_choices(
        &mut self,
        prompt: String,
        continuations: Vec<String>,
        adapter: Option<String>,
    ) -> wasmtime::Result<Result<Vec<f64>, Error>> {
        let input = Digest::new("tessera:expert/model.score-choices.in")
            .text(&prompt)
            .texts(continuations.iter().map(String::as_str))
            .text(adapter.as_deref().unwrap_or_default())
            .finish();
        let record = self.ledger.begin_call(
            INTERFACE,
            "score-choices",
            prompt.len() as u64 + super::strings_len(&continuations),
            input,
        );
        let access = self
            .check_adapter(adapter.as_deref())
            .and_then(|()| self.check_model_access(false))
            .and_then(|()| {
                if continuations.len() > MAX_SCORE_CHOICES {
                    Err(Error::LimitExceeded(format!(
                        "model.score-choices rates at most {MAX_SCORE_CHOICES} continuations per call, got {}; send them in batches",
                        continuations.len()
                    )))
                } else {
                    Ok(())
                }
            });
        let result = match access {
            Ok(()) => {
                let engine = self.ctx.engine.clone();
                engine
                    .score_choices(prompt, continuations, adapter)
                    .await
                    .map_err(model_error)
            }
            Err(e) => Err(e),
        };
        let end = match &result {
            Ok(scored) => {
                self.ledger.read_tokens = self.ledger.read_tokens.saturating_add(scored.tokens);
                CallEnd {
                    bytes_out: scored.logprobs.len() as u64 * 8,
                    output_sha256: scored
                        .logprobs
                        .iter()
                        .fold(
                            Digest::new("tessera:expert/model.score-choices.out"),
                            |d, v| d.num(v.to_bits()),
                        )
                        .finish(),
                    tokens: Some(TokenCount {
                        prompt: scored.tokens,
                        completion: 0,
                    }),
                    result: Some(CallResult::Scores {
                        values: scored.logprobs.clone(),
                        tokens: scored.tokens,
                    }),
                    ..CallEnd::default()
                }
            }
            Err(e) => CallEnd::failed(e),
        };
        self.ledger.end_call(record, end);
        Ok(result.map(|scored| scored.logprobs))
    }

    async fn embed(
        &mut self,
        texts: Vec<String>,
    ) -> wasmtime::Result<Result<Vec<Vec<f32>>, Error>> {
        let input = Digest::new("tessera:expert/model.embed.in")
            .texts(texts.iter().map(String::as_str))
            .finish();
        let record = self
            .ledger
            .begin_call(INTERFACE, "embed", super::strings_len(&texts), input);
        let access = self.check_model_access(false).and_then(|()| {
            if texts.len() > MAX_EMBED_TEXTS {
                Err(Error::LimitExceeded(format!(
                    "model.embed takes at most {MAX_EMBED_TEXTS} texts per call, got {}; send them in batches",
                    texts.len()
                )))
            } else {
                Ok(())
            }
        });
        let result = match access {
            Ok(()) => {
                let engine = self.ctx.engine.clone();
                engine.embed(texts).await.map_err(model_error)
            }
            Err(e) => Err(e),
        };
        let end = match &result {
            Ok(vectors) => CallEnd {
                bytes_out: vectors.iter().map(|v| v.len() as u64 * 4).sum(),
                output_sha256: vectors
                    .iter()
                    .fold(Digest::new("tessera:expert/model.embed.out"), |d, v| {
                        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                        d.bytes(&bytes)
                    })
                    .finish(),
                result: Some(CallResult::Embeddings {
                    vectors: vectors.clone(),
                }),
                ..CallEnd::default()
            },
            Err(e) => CallEnd::failed(e),
        };
        self.ledger.end_call(record, end);
        Ok(result)
    }
}
