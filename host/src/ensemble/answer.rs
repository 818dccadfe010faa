//! Answering a request: who answers a model name ([`Ensemble::resolve`]),
//! and the answer of one choice ([`Ensemble::answer`]) from the base
//! model, one expert or a routing strategy, with a typed report of who
//! answered, who failed and why.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::strategy::{self, Strategy};
use super::{Decision, Ensemble, Expert, Invocation, InvokeError};
use crate::audit::{Receipt, Record, Trace};
use crate::bindings::types::{Message, Request, Role, Sampling};
use crate::bundle::BundleKind;
use crate::inference::{
    Deltas, Finish, GenerateRequest, ModelEngine as _, ModelError, NoModel, Prompt, SamplingParams,
};

/// Who answers a request.
#[derive(Clone)]
pub enum Target {
    /// The base language model.
    Base,
    /// The embedding model (answers only `/v1/embeddings`).
    Embedder,
    /// One expert.
    Expert(Arc<Expert>),
    /// The router decides, then the strategy runs.
    Auto(Strategy),
    /// The base model with a LoRA adapter registered with the engine.
    Adapter(String),
    /// Another configured model (an upstream), by its name.
    Model(Arc<dyn crate::inference::ModelEngine>),
}

/// A model name nothing on this host answers to.
#[derive(Debug, thiserror::Error)]
#[error("unknown model `{asked}`")]
pub struct UnknownModel {
    /// The name asked for.
    pub asked: String,
    /// Every name that is served.
    pub known: Vec<String>,
}

/// A request as the ensemble answers it.
#[derive(Debug, Clone)]
pub struct Ask {
    /// What was asked (a raw prompt reaches experts as one user turn).
    pub input: Prompt,
    /// Sampling for the base model.
    pub params: SamplingParams,
    /// The same, as an expert sees it.
    pub sampling: Sampling,
    /// Metadata for experts (`request-id` is added).
    pub metadata: Vec<(String, String)>,
    /// The caller's request id (`-` when none).
    pub request_id: String,
    /// How long the base model may take.
    pub model_timeout: Duration,
    /// Whether the answer should carry the answering expert's whole
    /// record (`x-tessera-record`); built only then, since it copies the
    /// trace.
    pub want_record: bool,
}

impl Ask {
    /// The request an expert gets for choice `choice`: the seed, when
    /// given, moves on by the choice's index.
    pub fn expert_request(&self, choice: u32) -> Request {
        let messages = match &self.input {
            Prompt::Chat(m) => m.iter().map(Message::from).collect(),
            Prompt::Text(p) => vec![Message {
                role: Role::User,
                content: p.clone(),
            }],
        };
        let mut req = Request::from_messages(messages);
        req.sampling = self.sampling.clone();
        req.sampling.seed = req.sampling.seed.map(|s| s.wrapping_add(u64::from(choice)));
        req.metadata = self.metadata.clone();
        req.metadata
            .push(("request-id".to_string(), self.request_id.clone()));
        req
    }

    /// The base model's sampling for choice `choice`.
    fn params(&self, choice: u32) -> SamplingParams {
        let mut params = self.params.clone();
        params.seed = params.seed.map(|s| s.wrapping_add(u64::from(choice)));
        params
    }
}

/// One choice's answer.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The text.
    pub text: String,
    /// Why it ended (experts always `Stop`).
    pub finish: Finish,
    /// Prompt tokens read, over every invocation behind the answer.
    pub prompt_tokens: u32,
    /// Tokens generated, over every invocation behind the answer.
    pub completion_tokens: u32,
    /// Log-probability of each generated token (base model only).
    pub logprobs: Vec<(String, f32)>,
    /// How sure the answer is (0..1): the expert's report, else the mean
    /// token probability of its model calls.
    pub confidence: Option<f32>,
    /// Who answered and how.
    pub report: Report,
    /// The host's signed receipt, when an expert answered and the host
    /// signs receipts.
    pub receipt: Option<Receipt>,
    /// The invocation's whole record (request, response, trace, receipt),
    /// for a validator to replay: set for an expert's answer.
    pub record: Option<Box<Record>>,
}

/// Who answered and how: the `tessera` field of an answer. Empty when the
/// base model was asked by name.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// The expert whose answer this is.
    #[serde(flatten)]
    pub expert: Option<ExpertReport>,
    /// For `tessera/auto`: the expert (or base model) that answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answered_by: Option<String>,
    /// For `tessera/auto:moa`.
    #[serde(flatten)]
    pub fan_out: Option<FanOutReport>,
    /// For `tessera/auto:cascade`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cascade: Option<CascadeReport>,
    /// The experts that failed or refused before the one that answered
    /// (or the base model, when every one of them did), with why.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fallbacks: Vec<Stage>,
}

impl Report {
    /// Whether there is nothing to report.
    pub fn is_empty(&self) -> bool {
        self.expert.is_none()
            && self.answered_by.is_none()
            && self.fan_out.is_none()
            && self.cascade.is_none()
            && self.fallbacks.is_empty()
    }
}

/// What an expert reported with its answer.
#[derive(Debug, Clone, Serialize)]
pub struct ExpertReport {
    /// Its name.
    pub expert: String,
    /// Its version.
    pub version: String,
    /// The confidence it reported (none when it reported none).
    pub confidence: Option<f32>,
    /// Its metadata (a later duplicate key wins).
    pub metadata: BTreeMap<String, String>,
    /// How long it ran.
    pub duration_ms: u64,
    /// Fuel it burned.
    pub fuel: u64,
    /// Model calls it made.
    pub model_calls: u32,
    /// Its record's id in the host's audit store.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audit_id: Option<i64>,
}

/// How a mixture of agents went.
#[derive(Debug, Clone, Serialize)]
pub struct FanOutReport {
    /// Each expert asked, in rank order.
    pub fan_out: Vec<Stage>,
    /// The aggregator, when it wrote the answer (`null` when the
    /// best-ranked answer stands).
    pub aggregator: Option<String>,
    /// Why the aggregator's answer was not used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aggregator_error: Option<String>,
    /// Which answer was selected and why (when none was fused).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub selection: Option<Selection>,
}

/// How a mixture of agents chose among its answers.
#[derive(Debug, Clone, Serialize)]
pub struct Selection {
    /// The expert whose answer stands.
    pub expert: String,
    /// `confidence` (its expert was certain), `agreement` (most answers
    /// agree), `likelihood` (the base model's per-token log-likelihood),
    /// `rank` (the router's order) or `only-answer`.
    pub by: &'static str,
    /// The likelihoods, when they decided.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub scores: Vec<(String, f64)>,
}

/// How a cascade went.
#[derive(Debug, Clone, Serialize)]
pub struct CascadeReport {
    /// The confidence that stops it.
    pub threshold: f32,
    /// Each expert asked, in the order asked.
    pub stages: Vec<Stage>,
}

/// One expert asked by a strategy.
#[derive(Debug, Clone, Serialize)]
pub struct Stage {
    /// The expert.
    pub expert: String,
    /// Its declared cost (cascade only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost: Option<u32>,
    /// Whether it answered.
    pub ok: bool,
    /// Its answer's confidence, or its error.
    #[serde(flatten)]
    pub detail: StageDetail,
}

/// What came of one stage.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum StageDetail {
    /// It answered.
    Answered {
        /// How sure it was.
        confidence: Option<f32>,
        /// How often answers like it were right on the development set
        /// (cascade with a calibration only).
        #[serde(skip_serializing_if = "Option::is_none")]
        calibrated: Option<f32>,
        /// What it answered (cascade only: the answer of a stage the
        /// cascade went past is otherwise lost to the auditor).
        #[serde(skip_serializing_if = "Option::is_none")]
        content: Option<String>,
        /// Whether the cascade stopped there (cascade only).
        #[serde(skip_serializing_if = "Option::is_none")]
        accepted: Option<bool>,
    },
    /// It failed.
    Failed {
        /// Why.
        error: String,
    },
}

impl Stage {
    pub(crate) fn answered(expert: &str, answer: &Answer, accepted: Option<bool>) -> Stage {
        Stage {
            expert: expert.to_string(),
            cost: None,
            ok: true,
            detail: StageDetail::Answered {
                confidence: answer.confidence,
                calibrated: None,
                content: None,
                accepted,
            },
        }
    }

    pub(crate) fn failed(expert: &str, error: &AnswerError) -> Stage {
        Stage {
            expert: expert.to_string(),
            cost: None,
            ok: false,
            detail: StageDetail::Failed {
                error: error.message(),
            },
        }
    }

    /// Whether the cascade went on past it although it answered.
    pub fn escalated(&self) -> bool {
        matches!(
            self.detail,
            StageDetail::Answered {
                accepted: Some(false),
                ..
            }
        )
    }
}

/// Why a choice has no answer.
#[derive(Debug, thiserror::Error)]
pub enum AnswerError {
    /// The base model refused or failed.
    #[error("{0}")]
    Model(ModelError),
    /// The base model did not finish in time.
    #[error("the model did not finish within {} s (--request-timeout-secs)", .0.as_secs())]
    ModelTimeout(Duration),
    /// The expert failed.
    #[error("{}", .0.message)]
    Expert(InvokeError),
    /// Every expert a strategy asked failed.
    #[error("every expert of the {strategy} failed; the first: {first}")]
    AllFailed {
        /// `fan-out` or `cascade`.
        strategy: &'static str,
        /// The first failure.
        first: Box<AnswerError>,
    },
}

impl AnswerError {
    /// The message a client reads.
    pub fn message(&self) -> String {
        self.to_string()
    }

    /// The failure behind it (the first of a strategy's).
    pub fn root(&self) -> &AnswerError {
        match self {
            AnswerError::AllFailed { first, .. } => first.root(),
            other => other,
        }
    }
}

/// The answer of one choice (or why there is none) and the traces of every
/// invocation behind it, in the order they ran, failed ones included.
#[derive(Debug)]
pub struct Outcome {
    /// The answer.
    pub result: Result<Answer, AnswerError>,
    /// What each invocation did.
    pub traces: Vec<Trace>,
}

impl Outcome {
    pub(crate) fn of(result: Result<Answer, AnswerError>, traces: Vec<Trace>) -> Outcome {
        Outcome { result, traces }
    }
}

impl Ensemble {
    /// Who answers `model`: a strategy of `tessera/auto`, an expert, the
    /// base model or the embedder (model names ignore case, as hubs spell
    /// them both ways).
    pub fn resolve(&self, model: &str) -> Result<Target, UnknownModel> {
        if let Some(strategy) = Strategy::ALL
            .into_iter()
            .find(|s| model.eq_ignore_ascii_case(s.model_id()))
        {
            // A plain `tessera/auto` takes the configured strategy.
            let strategy = if strategy == Strategy::Route {
                self.router_config().default_strategy
            } else {
                strategy
            };
            return Ok(Target::Auto(strategy));
        }
        if let Some(expert) = self.expert(model)
            && matches!(
                expert.manifest.kind,
                BundleKind::Agent | BundleKind::Adapter
            )
        {
            return Ok(Target::Expert(expert));
        }
        let engine = self.model();
        if model.eq_ignore_ascii_case(engine.model_name())
            && engine.model_name() != NoModel.model_name()
        {
            return Ok(Target::Base);
        }
        if let Some(other) = self.model_named(model) {
            return Ok(Target::Model(other));
        }
        if let Some(adapter) = engine
            .adapters()
            .into_iter()
            .find(|a| a.name.eq_ignore_ascii_case(model))
        {
            return Ok(Target::Adapter(adapter.name));
        }
        if engine
            .embedder_name()
            .is_some_and(|e| e.eq_ignore_ascii_case(model))
        {
            return Ok(Target::Embedder);
        }
        Err(UnknownModel {
            asked: model.to_string(),
            known: self.served_names(),
        })
    }

    /// Every name a request may ask for: agents, the models, and the
    /// strategies when the router can run.
    pub fn served_names(&self) -> Vec<String> {
        let engine = self.model();
        let mut names: Vec<String> = self
            .experts()
            .into_iter()
            .filter(|e| matches!(e.manifest.kind, BundleKind::Agent | BundleKind::Adapter))
            .map(|e| e.name().to_string())
            .collect();
        names.extend(self.model_names());
        // Adapter bundles are registered adapters too: named once.
        names.extend(
            engine
                .adapters()
                .into_iter()
                .map(|a| a.name)
                .filter(|a| self.expert(a).is_none()),
        );
        if let Some(name) = engine.embedder_name() {
            names.push(name.to_string());
            names.extend(Strategy::ALL.iter().map(|s| s.model_id().to_string()));
        }
        names
    }

    /// The canonical id of what answers: the metric label and log field
    /// for a request, whatever spelling the client used.
    pub fn canonical_id(&self, target: &Target) -> String {
        let engine = self.model();
        match target {
            Target::Base => engine.model_name().to_string(),
            Target::Embedder => engine.embedder_name().unwrap_or("-").to_string(),
            Target::Expert(e) => e.name().to_string(),
            Target::Auto(strategy) => strategy.model_id().to_string(),
            Target::Adapter(name) => name.clone(),
            Target::Model(engine) => engine.model_name().to_string(),
        }
    }

    /// The sandbox instances one choice for `target` may hold at once.
    pub fn slots_per_choice(&self, target: &Target, decision: Option<&Decision>) -> u32 {
        match target {
            Target::Base | Target::Embedder | Target::Adapter(_) | Target::Model(_) => 0,
            Target::Expert(e) => self.slots_for(e),
            Target::Auto(_) => decision.map_or(0, |d| strategy::slots(self, d)),
        }
    }

    /// Answer choice `choice` of `ask` for `target`, streaming text to
    /// `deltas` when given. `decision` is the router's, for
    /// [`Target::Auto`].
    pub async fn answer(
        self: &Arc<Self>,
        target: &Target,
        decision: Option<&Decision>,
        ask: &Ask,
        choice: u32,
        deltas: Option<Deltas>,
    ) -> Outcome {
        match target {
            Target::Base => Outcome::of(
                self.answer_base(self.model(), ask, choice, deltas, None)
                    .await,
                Vec::new(),
            ),
            Target::Adapter(name) => Outcome::of(
                self.answer_base(self.model(), ask, choice, deltas, Some(name.clone()))
                    .await,
                Vec::new(),
            ),
            Target::Model(engine) => Outcome::of(
                self.answer_base(engine, ask, choice, deltas, None).await,
                Vec::new(),
            ),
            Target::Expert(expert) => {
                let invocation = self
                    .invoke_with(expert.name(), ask.expert_request(choice), deltas)
                    .await;
                let trace = invocation.trace.clone();
                Outcome::of(expert_answer(invocation, ask.want_record), vec![trace])
            }
            Target::Auto(_) => {
                let decision = decision.expect("tessera/auto is routed before it is answered");
                let job = strategy::Job {
                    ensemble: self,
                    decision,
                    ask,
                    choice,
                };
                strategy::answer(job, deltas).await
            }
            Target::Embedder => Outcome::of(
                Err(AnswerError::Model(ModelError::InvalidInput(
                    "an embedding model does not answer chat or completion requests".into(),
                ))),
                Vec::new(),
            ),
        }
    }

    /// Model `engine`'s answer (with `adapter`, when given).
    pub(crate) async fn answer_base(
        &self,
        engine: &Arc<dyn crate::inference::ModelEngine>,
        ask: &Ask,
        choice: u32,
        deltas: Option<Deltas>,
        adapter: Option<String>,
    ) -> Result<Answer, AnswerError> {
        let params = ask.params(choice);
        let request = GenerateRequest {
            prompt: ask.input.clone(),
            params,
            adapter,
        };
        let call = engine.generate(request, deltas);
        let generation = tokio::time::timeout(ask.model_timeout, call)
            .await
            .map_err(|_| AnswerError::ModelTimeout(ask.model_timeout))?
            .map_err(AnswerError::Model)?;
        let confidence = mean_probability(generation.token_logprobs.iter().map(|(_, l)| *l));
        Ok(Answer {
            text: generation.text,
            finish: generation.finish,
            prompt_tokens: generation.prompt_tokens,
            completion_tokens: generation.completion_tokens,
            logprobs: generation.token_logprobs,
            confidence,
            report: Report::default(),
            receipt: None,
            record: None,
        })
    }

    /// Run expert `name`, streaming to `deltas` when given.
    pub(crate) async fn invoke_with(
        self: &Arc<Self>,
        name: &str,
        req: Request,
        deltas: Option<Deltas>,
    ) -> Invocation {
        match deltas {
            Some(d) => self.invoke_streaming(name, req, d).await,
            None => self.invoke(name, req).await,
        }
    }
}

/// exp(mean log-probability), or `None` for no tokens.
fn mean_probability(logprobs: impl Iterator<Item = f32>) -> Option<f32> {
    let (sum, n) = logprobs.fold((0.0f64, 0u32), |(s, n), l| (s + f64::from(l), n + 1));
    (n > 0).then(|| (sum / f64::from(n)).exp() as f32)
}

/// An expert's invocation as an answer, or its error.
pub(crate) fn expert_answer(
    invocation: Invocation,
    want_record: bool,
) -> Result<Answer, AnswerError> {
    let trace = invocation.trace;
    let receipt = invocation.receipt;
    let response = invocation.result.map_err(AnswerError::Expert)?;
    let record = invocation.request.filter(|_| want_record).map(|request| {
        Box::new(Record {
            request,
            response: Some((&response).into()),
            trace: trace.clone(),
            receipt: receipt.clone(),
        })
    });
    let confidence = response
        .confidence
        .or_else(|| trace.mean_logprob.map(|l| l.exp()));
    // Usage is what the host metered (every model call of the expert and
    // of the experts it called, `score` included), not what the expert
    // says it spent.
    Ok(Answer {
        finish: Finish::Stop,
        prompt_tokens: trace.read_tokens,
        completion_tokens: trace.generated_tokens,
        logprobs: Vec::new(),
        report: Report {
            expert: Some(ExpertReport {
                expert: trace.expert,
                version: trace.version,
                confidence: response.confidence,
                metadata: response.metadata.into_iter().collect(),
                duration_ms: trace.duration_us / 1000,
                fuel: trace.fuel_consumed,
                model_calls: trace.model_calls,
                audit_id: invocation.audit_id,
            }),
            ..Report::default()
        },
        text: response.content,
        confidence,
        receipt,
        record,
    })
}
