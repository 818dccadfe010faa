//! Answers as OpenAI JSON: typed response bodies and stream chunks.

use serde::Serialize;

use crate::audit::{Receipt, Record, Trace};
use crate::ensemble::{Answer, Decision, Report};
use crate::inference::Finish;

/// Which OpenAI endpoint a response belongs to.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Endpoint {
    Chat,
    Completion,
}

impl Endpoint {
    /// Its label in metrics and logs.
    pub(super) fn label(self) -> &'static str {
        match self {
            Endpoint::Chat => "chat",
            Endpoint::Completion => "completions",
        }
    }

    /// The prefix of its response ids.
    fn id_prefix(self) -> &'static str {
        match self {
            Endpoint::Chat => "chatcmpl",
            Endpoint::Completion => "cmpl",
        }
    }

    fn object(self) -> &'static str {
        match self {
            Endpoint::Chat => "chat.completion",
            Endpoint::Completion => "text_completion",
        }
    }

    fn chunk_object(self) -> &'static str {
        match self {
            Endpoint::Chat => "chat.completion.chunk",
            Endpoint::Completion => "text_completion",
        }
    }

    /// The request field an invalid input is reported on.
    pub(super) fn input_param(self) -> &'static str {
        match self {
            Endpoint::Chat => "messages",
            Endpoint::Completion => "prompt",
        }
    }
}

/// What every body of one response shares.
pub(super) struct Header<'a> {
    pub endpoint: Endpoint,
    pub id: String,
    pub created: u64,
    pub model: &'a str,
    /// Whether the client asked for logprobs.
    pub logprobs: bool,
    /// The router's decision, for `tessera/auto`.
    pub decision: Option<&'a Decision>,
    /// Whether the client asked for the traces (`x-tessera-trace`).
    pub want_trace: bool,
    /// Whether the client asked for the receipt (`x-tessera-receipt`).
    pub want_receipt: bool,
    /// Whether the client asked for the record (`x-tessera-record`).
    pub want_record: bool,
}

impl Header<'_> {
    /// `chatcmpl-<request id>` (a fresh uuid without one).
    pub(super) fn response_id(endpoint: Endpoint, request_id: &str) -> String {
        let id = if request_id == "-" {
            uuid::Uuid::new_v4().to_string()
        } else {
            request_id.to_string()
        };
        format!("{}-{id}", endpoint.id_prefix())
    }
}

#[derive(Serialize)]
pub(super) struct Usage {
    prompt_tokens: u32,
    completion_tokens: u32,
    total_tokens: u32,
}

impl Usage {
    pub(super) fn new(prompt_tokens: u32, completion_tokens: u32) -> Usage {
        Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
        }
    }
}

/// The `tessera` field: who answered, the route, the traces.
#[derive(Serialize)]
struct Tessera<'a> {
    #[serde(flatten)]
    report: &'a Report,
    #[serde(skip_serializing_if = "Option::is_none")]
    route: Option<&'a Decision>,
    #[serde(skip_serializing_if = "Option::is_none")]
    traces: Option<&'a [Trace]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    receipt: Option<&'a Receipt>,
    #[serde(skip_serializing_if = "Option::is_none")]
    record: Option<&'a Record>,
}

fn tessera<'a>(
    header: &Header<'a>,
    answer: &'a Answer,
    traces: &'a [Trace],
) -> Option<Tessera<'a>> {
    let field = Tessera {
        report: &answer.report,
        route: header.decision,
        traces: header.want_trace.then_some(traces),
        receipt: answer.receipt.as_ref().filter(|_| header.want_receipt),
        record: answer.record.as_deref().filter(|_| header.want_record),
    };
    (!field.report.is_empty()
        || field.route.is_some()
        || field.traces.is_some()
        || field.receipt.is_some()
        || field.record.is_some())
    .then_some(field)
}

#[derive(Serialize)]
#[serde(untagged)]
enum Logprobs<'a> {
    Chat {
        content: Vec<TokenLogprob<'a>>,
    },
    Completion {
        tokens: Vec<&'a str>,
        token_logprobs: Vec<f32>,
        top_logprobs: Option<()>,
        text_offset: Vec<usize>,
    },
}

#[derive(Serialize)]
struct TokenLogprob<'a> {
    token: &'a str,
    logprob: f32,
    bytes: &'a [u8],
    top_logprobs: [(); 0],
}

fn logprobs(endpoint: Endpoint, tokens: &[(String, f32)]) -> Logprobs<'_> {
    match endpoint {
        Endpoint::Chat => Logprobs::Chat {
            content: tokens
                .iter()
                .map(|(token, logprob)| TokenLogprob {
                    token,
                    logprob: *logprob,
                    bytes: token.as_bytes(),
                    top_logprobs: [],
                })
                .collect(),
        },
        Endpoint::Completion => Logprobs::Completion {
            tokens: tokens.iter().map(|(t, _)| t.as_str()).collect(),
            token_logprobs: tokens.iter().map(|(_, l)| *l).collect(),
            top_logprobs: None,
            text_offset: tokens
                .iter()
                .scan(0, |offset, (t, _)| {
                    let at = *offset;
                    *offset += t.len();
                    Some(at)
                })
                .collect(),
        },
    }
}

fn finish_reason(finish: Finish) -> &'static str {
    match finish {
        Finish::Stop => "stop",
        Finish::Length => "length",
    }
}

#[derive(Serialize)]
struct AssistantMessage<'a> {
    role: &'static str,
    content: &'a str,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Choice<'a> {
    Chat {
        index: usize,
        message: AssistantMessage<'a>,
        logprobs: Option<Logprobs<'a>>,
        finish_reason: &'static str,
    },
    Completion {
        index: usize,
        text: &'a str,
        logprobs: Option<Logprobs<'a>>,
        finish_reason: &'static str,
    },
}

/// A whole (not streamed) response.
#[derive(Serialize)]
pub(super) struct Completion<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: Vec<Choice<'a>>,
    usage: Usage,
    #[serde(skip_serializing_if = "Option::is_none")]
    tessera: Option<Tessera<'a>>,
}

impl<'a> Completion<'a> {
    /// The response of `answers` (every choice of every input, in order);
    /// the `tessera` field is the first answer's, with `traces` behind it.
    pub(super) fn new(
        header: &'a Header<'a>,
        answers: &'a [Answer],
        traces: &'a [Trace],
        usage: Usage,
    ) -> Self {
        let choices = answers
            .iter()
            .enumerate()
            .map(|(index, a)| {
                let logprobs = header
                    .logprobs
                    .then(|| logprobs(header.endpoint, &a.logprobs));
                let finish_reason = finish_reason(a.finish);
                match header.endpoint {
                    Endpoint::Chat => Choice::Chat {
                        index,
                        message: AssistantMessage {
                            role: "assistant",
                            content: &a.text,
                        },
                        logprobs,
                        finish_reason,
                    },
                    Endpoint::Completion => Choice::Completion {
                        index,
                        text: &a.text,
                        logprobs,
                        finish_reason,
                    },
                }
            })
            .collect();
        Completion {
            id: &header.id,
            object: header.endpoint.object(),
            created: header.created,
            model: header.model,
            choices,
            usage,
            tessera: answers.first().and_then(|a| tessera(header, a, traces)),
        }
    }
}

#[derive(Serialize)]
struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum ChunkChoice<'a> {
    Chat {
        index: u32,
        delta: Delta<'a>,
        logprobs: Option<Logprobs<'a>>,
        finish_reason: Option<&'static str>,
    },
    Completion {
        index: u32,
        text: &'a str,
        logprobs: Option<Logprobs<'a>>,
        finish_reason: Option<&'static str>,
    },
}

/// One event of a stream.
#[derive(Serialize)]
pub(super) struct Chunk<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: Vec<ChunkChoice<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Usage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tessera: Option<Tessera<'a>>,
}

impl<'a> Chunk<'a> {
    fn with(header: &'a Header<'a>, choice: Option<ChunkChoice<'a>>) -> Self {
        Chunk {
            id: &header.id,
            object: header.endpoint.chunk_object(),
            created: header.created,
            model: header.model,
            choices: choice.into_iter().collect(),
            usage: None,
            tessera: None,
        }
    }

    fn choice(
        header: &Header<'a>,
        text: Option<&'a str>,
        first: bool,
        logprobs: Option<Logprobs<'a>>,
        finish: Option<Finish>,
    ) -> ChunkChoice<'a> {
        let finish_reason = finish.map(finish_reason);
        match header.endpoint {
            Endpoint::Chat => ChunkChoice::Chat {
                index: 0,
                delta: Delta {
                    role: first.then_some("assistant"),
                    content: text,
                },
                logprobs,
                finish_reason,
            },
            Endpoint::Completion => ChunkChoice::Completion {
                index: 0,
                text: text.unwrap_or(""),
                logprobs,
                finish_reason,
            },
        }
    }

    /// Text as it is generated (`first`: the chunk that names the role).
    pub(super) fn text(header: &'a Header<'a>, text: &'a str, first: bool) -> Self {
        Self::with(
            header,
            Some(Self::choice(header, Some(text), first, None, None)),
        )
    }

    /// The chunk that ends the answer: finish reason, logprobs when asked
    /// for, usage and the `tessera` field.
    pub(super) fn last(
        header: &'a Header<'a>,
        answer: &'a Answer,
        traces: &'a [Trace],
        first: bool,
    ) -> Self {
        let logprobs = header
            .logprobs
            .then(|| logprobs(header.endpoint, &answer.logprobs));
        let choice = Self::choice(header, None, first, logprobs, Some(answer.finish));
        Chunk {
            usage: Some(Usage::new(answer.prompt_tokens, answer.completion_tokens)),
            tessera: tessera(header, answer, traces),
            ..Self::with(header, Some(choice))
        }
    }

    /// The usage-only chunk (`stream_options.include_usage`).
    pub(super) fn usage(header: &'a Header<'a>, answer: &Answer) -> Self {
        Chunk {
            usage: Some(Usage::new(answer.prompt_tokens, answer.completion_tokens)),
            ..Self::with(header, None)
        }
    }
}
