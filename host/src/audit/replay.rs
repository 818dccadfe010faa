//! Running a recorded invocation again, and saying where it went another
//! way.
//!
//! **Replay** answers every host call from the record: the model's
//! generations, token ids, scores and embeddings, and the answers of the
//! experts it called (their own traces are inside the record). WASI's
//! clock and random stream come from the record too, and the limits are
//! the recorded ones. The guest must then make the same host calls in the
//! same order with the same arguments, burn the same fuel at each, log
//! the same lines and return the same answer; the first difference is
//! reported. No model is needed.
//!
//! **Recompute** runs the model for real instead, each generation with
//! the seed the record says it used: on the same device and weights,
//! seeded sampling gives the same text, and the report names the first
//! call whose output differs.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde::Serialize;

use super::{CallResult, HostCall, Record, Trace};
use crate::bindings::types::Response;
use crate::caps::{Invoker, Nested};
use crate::ensemble::{Ensemble, Inherited, Invocation, InvokeError, Rerun};
use crate::inference::{
    Deltas, Finish, GenerateRequest, Generation, ModelEngine, ModelError, Scored, ScoredChoices,
};

/// How a record is run again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Every host call answered from the record.
    Replay,
    /// The model run for real, with the recorded seeds.
    Recompute,
}

/// What running a record again showed.
#[derive(Debug, Clone, Serialize)]
pub struct RerunReport {
    /// How it was run.
    pub mode: Mode,
    /// The expert.
    pub expert: String,
    /// Whether the component run is the recorded one (else one of the
    /// recorded name, to show where it departs).
    pub component_matches: bool,
    /// Host calls in the record.
    pub recorded_calls: usize,
    /// Host calls the rerun made.
    pub rerun_calls: usize,
    /// Fuel the record says the guest burned.
    pub recorded_fuel: u64,
    /// Fuel it burned now.
    pub rerun_fuel: u64,
    /// Whether the answer is the recorded one (by its digest).
    pub same_answer: bool,
    /// The first difference, if any.
    pub divergence: Option<Divergence>,
    /// The generations the guest asked for, with what the record says
    /// they returned (for the logprob spot-check).
    #[serde(skip)]
    pub generations: Vec<AskedGeneration>,
}

impl RerunReport {
    /// Whether it ran exactly as recorded.
    pub fn matches(&self) -> bool {
        self.divergence.is_none()
    }
}

/// The first place a rerun differs from its record.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Divergence {
    /// The host call (0-based), when the difference is at one.
    pub call: Option<usize>,
    /// What differs.
    pub what: String,
}

/// A generation a replayed guest asked for: its index among the host
/// calls, its request as the engine saw it, and the recorded result.
#[derive(Debug, Clone)]
pub struct AskedGeneration {
    /// Its host call's index.
    pub call: usize,
    /// What the guest asked.
    pub request: GenerateRequest,
    /// What the record says it got.
    pub recorded: CallResult,
}

/// Why a record cannot be run again.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum RerunError {
    /// No loaded expert has the recorded component.
    #[error(
        "no bundle given has the recorded component (sha256 {sha256}, expert `{expert}`); pass the bundle or .tessera pack the miner served with --bundle"
    )]
    NoComponent {
        /// The recorded expert.
        expert: String,
        /// The component's sha256.
        sha256: String,
    },
    /// The record lacks what a rerun needs.
    #[error("this record cannot be run again: {0}")]
    Incomplete(String),
}

/// Which host call is being made: the trace budget of a rerun starts
/// full and every host call takes one entry from it, so the entries taken
/// count the calls begun. (Nested experts are answered from the record,
/// so no other ledger draws from it.)
#[derive(Clone)]
struct Cursor {
    budget: Arc<AtomicUsize>,
    full: usize,
}

impl Cursor {
    fn new(full: usize) -> Cursor {
        Cursor {
            budget: Arc::new(AtomicUsize::new(full)),
            full,
        }
    }

    /// The index of the host call being made.
    fn call(&self) -> usize {
        (self.full - self.budget.load(Ordering::Relaxed)).saturating_sub(1)
    }
}

/// Host calls of the recorded invocation, shared by the engine and the
/// invoker that answer them.
struct Script {
    calls: Vec<HostCall>,
    cursor: Cursor,
    model_name: String,
    /// Generations asked for (replay) or made (recompute).
    asked: Mutex<Vec<AskedGeneration>>,
}

impl Script {
    fn recorded(&self, function: &str) -> Result<(usize, &HostCall), ModelError> {
        let i = self.cursor.call();
        let call = self
            .calls
            .get(i)
            .ok_or_else(|| ModelError::Failed(format!("replay: the record has no call {i}")))?;
        if !call.interface.ends_with("/model") || !same_kind(&call.function, function) {
            return Err(ModelError::Failed(format!(
                "replay: call {i} is `{}.{}` in the record, not a model {function}",
                short(&call.interface),
                call.function
            )));
        }
        Ok((i, call))
    }

    fn result(&self, function: &str) -> Result<(usize, &HostCall, &CallResult), ModelError> {
        let (i, call) = self.recorded(function)?;
        match &call.result {
            Some(CallResult::Error(e)) => Err(model_error(e)),
            Some(r) => Ok((i, call, r)),
            None => Err(ModelError::Failed(format!(
                "replay: the record did not keep call {i}'s result (an invocation keeps {} bytes of results)",
                super::record::MAX_RECORDED_RESULT_BYTES
            ))),
        }
    }
}

fn same_kind(recorded: &str, asked: &str) -> bool {
    let generation = |f: &str| matches!(f, "chat" | "complete" | "stream-answer" | "generate");
    recorded == asked || (generation(recorded) && generation(asked))
}

fn short(interface: &str) -> &str {
    interface.rsplit('/').next().unwrap_or(interface)
}

/// The guest-visible error of a recorded failure, as the engine would
/// have returned it (`caps::model` maps it back to the same WIT error).
fn model_error(e: &super::record::RecordedError) -> ModelError {
    match e.error.as_str() {
        "invalid-input" => ModelError::InvalidInput(e.message.clone()),
        "limit-exceeded" => ModelError::LimitExceeded(e.message.clone()),
        _ => ModelError::Failed(e.message.clone()),
    }
}

/// The generation a recorded completion describes.
fn generation_of(call: &HostCall, result: &CallResult) -> Result<Generation, ModelError> {
    let CallResult::Completion {
        text,
        finish,
        prompt_tokens,
        completion_tokens,
        tokens,
        token_ids,
        logprobs,
    } = result
    else {
        return Err(ModelError::Failed(
            "replay: the recorded result is not a completion".into(),
        ));
    };
    Ok(Generation {
        text: text.clone(),
        finish: if finish == "length" {
            Finish::Length
        } else {
            Finish::Stop
        },
        prompt_tokens: *prompt_tokens,
        completion_tokens: *completion_tokens,
        token_logprobs: tokens
            .iter()
            .cloned()
            .zip(logprobs.iter().copied())
            .collect(),
        token_ids: token_ids.clone(),
        seed: call.sampling.as_ref().map_or(0, |s| s.seed),
    })
}

/// Answers model calls from the record.
struct ReplayEngine(Arc<Script>);

#[async_trait]
impl ModelEngine for ReplayEngine {
    fn model_name(&self) -> &str {
        &self.0.model_name
    }

    async fn generate(
        &self,
        request: GenerateRequest,
        _deltas: Option<Deltas>,
    ) -> Result<Generation, ModelError> {
        let (i, call, result) = self.0.result("generate")?;
        self.0
            .asked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(AskedGeneration {
                call: i,
                request,
                recorded: result.clone(),
            });
        generation_of(call, result)
    }

    async fn tokenize(&self, _text: String) -> Result<Vec<u32>, ModelError> {
        match self.0.result("tokenize")? {
            (_, _, CallResult::Tokens { ids }) => Ok(ids.clone()),
            (i, ..) => Err(ModelError::Failed(format!(
                "replay: call {i}'s recorded result is not token ids"
            ))),
        }
    }

    async fn score(
        &self,
        _prompt: String,
        _continuation: String,
        _adapter: Option<String>,
    ) -> Result<Scored, ModelError> {
        match self.0.result("score")? {
            (_, _, CallResult::Score { value, tokens }) => Ok(Scored {
                logprob: *value,
                tokens: *tokens,
            }),
            (i, ..) => Err(ModelError::Failed(format!(
                "replay: call {i}'s recorded result is not a score"
            ))),
        }
    }

    async fn score_choices(
        &self,
        _prompt: String,
        _continuations: Vec<String>,
        _adapter: Option<String>,
    ) -> Result<ScoredChoices, ModelError> {
        match self.0.result("score-choices")? {
            (_, _, CallResult::Scores { values, tokens }) => Ok(ScoredChoices {
                logprobs: values.clone(),
                tokens: *tokens,
            }),
            (i, ..) => Err(ModelError::Failed(format!(
                "replay: call {i}'s recorded result is not a list of scores"
            ))),
        }
    }

    async fn embed(&self, _texts: Vec<String>) -> Result<Vec<Vec<f32>>, ModelError> {
        match self.0.result("embed")? {
            (_, _, CallResult::Embeddings { vectors }) => Ok(vectors.clone()),
            (i, ..) => Err(ModelError::Failed(format!(
                "replay: call {i}'s recorded result is not embeddings"
            ))),
        }
    }
}

/// Runs the real model, each generation with its recorded seed.
struct RecomputeEngine {
    script: Arc<Script>,
    model: Arc<dyn ModelEngine>,
}

#[async_trait]
impl ModelEngine for RecomputeEngine {
    fn model_name(&self) -> &str {
        self.model.model_name()
    }

    async fn generate(
        &self,
        mut request: GenerateRequest,
        deltas: Option<Deltas>,
    ) -> Result<Generation, ModelError> {
        if let Ok((_, call)) = self.script.recorded("generate")
            && let Some(sampling) = &call.sampling
        {
            request.params.seed = Some(sampling.seed);
        }
        self.model.generate(request, deltas).await
    }

    async fn tokenize(&self, text: String) -> Result<Vec<u32>, ModelError> {
        self.model.tokenize(text).await
    }

    async fn score(
        &self,
        prompt: String,
        continuation: String,
        adapter: Option<String>,
    ) -> Result<Scored, ModelError> {
        self.model.score(prompt, continuation, adapter).await
    }

    async fn score_choices(
        &self,
        prompt: String,
        continuations: Vec<String>,
        adapter: Option<String>,
    ) -> Result<ScoredChoices, ModelError> {
        self.model
            .score_choices(prompt, continuations, adapter)
            .await
    }

    async fn embed(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, ModelError> {
        self.model.embed(texts).await
    }
}

/// Answers `experts.call` from the record: the callee's answer and trace
/// (so its fuel, tokens and model calls are charged as they were).
struct ReplayInvoker(Arc<Script>);

impl Invoker for ReplayInvoker {
    fn call_nested(
        self: Arc<Self>,
        name: String,
        _req: crate::types::Request,
        from: Inherited,
    ) -> Nested {
        Box::pin(async move {
            let i = self.0.cursor.call();
            let depth = from.stack.len() as u32;
            let failed = |message: String| {
                let error =
                    InvokeError::new(crate::ensemble::InvokeErrorKind::ExpertError, message);
                Invocation {
                    trace: Trace::failed(&name, depth, error.kind.as_str(), &error.message),
                    result: Err(error),
                    receipt: None,
                    audit_id: None,
                    request: None,
                }
            };
            let Some(call) = self.0.calls.get(i).filter(|c| c.function == "call") else {
                return failed(format!(
                    "replay: call {i} is not `experts.call` in the record"
                ));
            };
            let result = match &call.result {
                Some(CallResult::Response(r)) => Ok(Response::from(r)),
                Some(CallResult::Error(e)) => Err(InvokeError::from_guest(e.into())),
                _ => return failed(format!("replay: the record did not keep call {i}'s answer")),
            };
            Invocation {
                trace: call
                    .nested
                    .as_deref()
                    .cloned()
                    .unwrap_or_else(|| Trace::failed(&name, depth, "replay", "no nested trace")),
                result,
                receipt: None,
                audit_id: None,
                request: None,
            }
        })
    }
}

/// Run `record` again on `ensemble` (which must hold the recorded
/// component): [`Mode::Replay`] answers every host call from the record;
/// [`Mode::Recompute`] runs `model` with the recorded seeds.
pub async fn rerun(
    ensemble: &Arc<Ensemble>,
    record: &Record,
    mode: Mode,
    model: Option<Arc<dyn ModelEngine>>,
) -> Result<RerunReport, RerunError> {
    let trace = &record.trace;
    if trace.host_calls_dropped > 0 {
        return Err(RerunError::Incomplete(format!(
            "the trace kept {} host calls and dropped {} (the host's trace budget), which a replay cannot answer",
            trace.host_calls.len(),
            trace.host_calls_dropped
        )));
    }
    // The recorded component; else an expert of the recorded name (a
    // rebuild, say), to show where it departs from the record.
    let experts = ensemble.experts();
    let expert = experts
        .iter()
        .find(|e| e.sha256 == trace.component_sha256)
        .or_else(|| experts.iter().find(|e| e.name() == trace.expert))
        .cloned()
        .ok_or_else(|| RerunError::NoComponent {
            expert: trace.expert.clone(),
            sha256: trace.component_sha256.clone(),
        })?;
    let component_matches = expert.sha256 == trace.component_sha256;
    let component_sha256 = expert.sha256.clone();
    let request = record
        .request
        .to_request()
        .map_err(|e| RerunError::Incomplete(format!("request: {e}")))?;
    let cursor = Cursor::new(ensemble.sandbox().policy().max_trace_entries);
    let script = Arc::new(Script {
        calls: trace.host_calls.clone(),
        cursor: cursor.clone(),
        model_name: record
            .receipt
            .as_ref()
            .map_or_else(String::new, |r| r.body.model.name.clone()),
        asked: Mutex::new(Vec::new()),
    });
    let engine: Arc<dyn ModelEngine> = match (mode, model) {
        (Mode::Replay, _) => Arc::new(ReplayEngine(script.clone())),
        (Mode::Recompute, Some(model)) => Arc::new(RecomputeEngine {
            script: script.clone(),
            model,
        }),
        (Mode::Recompute, None) => {
            return Err(RerunError::Incomplete(
                "recomputing needs the model; none is loaded".into(),
            ));
        }
    };
    let setup = Rerun {
        engine,
        invoker: Arc::new(ReplayInvoker(script.clone())),
        limits: trace.limits,
        started_at_unix_ms: trace.started_at_unix_ms,
        wasi_random_seed: trace.wasi_random_seed,
        trace_budget: cursor.budget.clone(),
    };
    let invocation = ensemble.rerun(expert, request, setup).await;
    let answer = invocation
        .result
        .as_ref()
        .ok()
        .map(super::receipt::response_sha256);
    let recorded_answer = record
        .response
        .as_ref()
        .map(|r| super::receipt::response_sha256(&Response::from(r)));
    let same_answer = answer == recorded_answer;
    let mut divergence = compare(trace, &invocation.trace, mode);
    if divergence.is_none() && !component_matches {
        divergence = Some(Divergence {
            call: None,
            what: format!(
                "the component is not the recorded one (sha256 {component_sha256}, the record's is {}), though it behaved the same here",
                trace.component_sha256
            ),
        });
    }
    if divergence.is_none() && !same_answer {
        divergence = Some(Divergence {
            call: None,
            what: match (&invocation.result, &record.response) {
                (Ok(now), Some(then)) => format!(
                    "the answer differs: recorded «{}», now «{}»",
                    crate::text::ellipsize(&then.content, 200),
                    crate::text::ellipsize(&now.content, 200)
                ),
                (Err(e), _) => format!("the rerun failed ({}): {}", e.kind.as_str(), e.message),
                (Ok(_), None) => "the record holds no answer, the rerun answered".into(),
            },
        });
    }
    let generations = std::mem::take(&mut *script.asked.lock().unwrap_or_else(|e| e.into_inner()));
    Ok(RerunReport {
        mode,
        expert: trace.expert.clone(),
        component_matches,
        recorded_calls: trace.host_calls.len(),
        rerun_calls: invocation.trace.host_calls.len(),
        recorded_fuel: trace.fuel_consumed,
        rerun_fuel: invocation.trace.fuel_consumed,
        same_answer,
        divergence,
        generations,
    })
}

/// The first difference between a recorded trace and its rerun.
pub fn compare(recorded: &Trace, rerun: &Trace, mode: Mode) -> Option<Divergence> {
    let at = |call: usize, what: String| {
        Some(Divergence {
            call: Some(call),
            what,
        })
    };
    let name = |c: &HostCall| format!("{}.{}", short(&c.interface), c.function);
    let n = recorded.host_calls.len().max(rerun.host_calls.len());
    for i in 0..n {
        let (a, b) = match (recorded.host_calls.get(i), rerun.host_calls.get(i)) {
            (Some(a), Some(b)) => (a, b),
            (Some(a), None) => {
                return at(
                    i,
                    format!("the rerun made no call {i}; the record has `{}`", name(a)),
                );
            }
            (None, Some(b)) => {
                return at(
                    i,
                    format!("the rerun made an extra call {i}: `{}`", name(b)),
                );
            }
            (None, None) => unreachable!("i < n"),
        };
        if name(a) != name(b) {
            return at(
                i,
                format!("the record has `{}`, the rerun made `{}`", name(a), name(b)),
            );
        }
        if a.input_sha256 != b.input_sha256 {
            return at(
                i,
                format!(
                    "`{}` was called with other arguments (input digest {} in the record, {} now)",
                    name(a),
                    &a.input_sha256[..a.input_sha256.len().min(16)],
                    &b.input_sha256[..b.input_sha256.len().min(16)]
                ),
            );
        }
        if a.output_sha256 != b.output_sha256 || a.error != b.error {
            let what = match (mode, &a.result, &b.result) {
                (Mode::Recompute, Some(ra), Some(rb)) => output_difference(ra, rb),
                (Mode::Recompute, ..) => "the model's output differs".to_string(),
                (Mode::Replay, ..) => {
                    "the recorded result does not give the recorded output digest (the record was edited)"
                        .to_string()
                }
            };
            return at(i, format!("`{}`: {what}", name(a)));
        }
    }
    // Fuel after the calls themselves: a rebuilt component burns other
    // fuel from its first instruction, and the call it makes otherwise is
    // the more useful report.
    for (i, (a, b)) in recorded
        .host_calls
        .iter()
        .zip(&rerun.host_calls)
        .enumerate()
    {
        if a.fuel_before != b.fuel_before {
            return at(
                i,
                format!(
                    "before `{}` the guest had burned {} fuel in the record, {} now",
                    name(a),
                    a.fuel_before,
                    b.fuel_before
                ),
            );
        }
    }
    let general = |what: String| Some(Divergence { call: None, what });
    // Log lines by content: their times are the wall clock's.
    let same = |a: &super::LogLine, b: &super::LogLine| {
        (&a.level, &a.message, &a.fields) == (&b.level, &b.message, &b.fields)
    };
    let first_other = recorded
        .logs
        .iter()
        .zip(&rerun.logs)
        .position(|(a, b)| !same(a, b));
    if first_other.is_some()
        || recorded.logs.len() != rerun.logs.len()
        || recorded.logs_dropped != rerun.logs_dropped
    {
        let at = first_other.unwrap_or(recorded.logs.len().min(rerun.logs.len()));
        return general(format!("the guest logged other lines, from line {at} on"));
    }
    if (&recorded.stdout, &recorded.stderr) != (&rerun.stdout, &rerun.stderr) {
        return general("the guest wrote other output to stdout or stderr".into());
    }
    if recorded.fuel_consumed != rerun.fuel_consumed {
        return general(format!(
            "the guest burned {} fuel in the record, {} now",
            recorded.fuel_consumed, rerun.fuel_consumed
        ));
    }
    if recorded.outcome != rerun.outcome {
        return general(format!(
            "it ended otherwise: {} in the record, {} now",
            serde_json::to_string(&recorded.outcome).unwrap_or_default(),
            serde_json::to_string(&rerun.outcome).unwrap_or_default()
        ));
    }
    None
}

/// Where two completions part.
fn output_difference(a: &CallResult, b: &CallResult) -> String {
    match (a, b) {
        (CallResult::Completion { text: ta, .. }, CallResult::Completion { text: tb, .. }) => {
            let at = ta
                .char_indices()
                .zip(tb.chars())
                .find(|((_, x), y)| x != y)
                .map_or(ta.len().min(tb.len()), |((i, _), _)| i);
            let tail = |t: &str| crate::text::ellipsize(t.get(at..).unwrap_or(""), 80);
            format!(
                "the model's text differs from byte {at}: recorded «…{}», recomputed «…{}»",
                tail(ta),
                tail(tb)
            )
        }
        _ => "the result differs".to_string(),
    }
}
