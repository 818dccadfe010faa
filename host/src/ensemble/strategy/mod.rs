//! The strategies of `tessera/auto`: what runs once the router has chosen
//! its experts. A strategy is one file here plus its line in [`Strategy`],
//! [`answer`] and [`slots`].

mod cascade;
mod moa;

pub use cascade::DEFAULT_CASCADE_WINDOW;
pub use moa::{CERTAIN, ROUTER_TIE};
mod route;

use std::sync::Arc;

use serde::Serialize;

use super::answer::{Ask, Outcome};
use super::{Decision, Ensemble};
use crate::inference::Deltas;

/// The model id of the ensemble's automatic routing.
pub const AUTO_MODEL: &str = "tessera/auto";

/// How a request to `tessera/auto` is answered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// The best expert answers (`tessera/auto`).
    #[default]
    Route,
    /// The top-k experts answer in parallel and an aggregator writes the
    /// final answer from theirs (`tessera/auto:moa`).
    Moa,
    /// The best candidate answers first; below the confidence threshold
    /// the request escalates to the next near tie (`tessera/auto:cascade`).
    Cascade,
}

impl Strategy {
    /// Every strategy.
    pub const ALL: [Strategy; 3] = [Strategy::Route, Strategy::Moa, Strategy::Cascade];

    /// Its name in model ids and configs.
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Route => "route",
            Strategy::Moa => "moa",
            Strategy::Cascade => "cascade",
        }
    }

    /// The model id that selects it: `tessera/auto`, `tessera/auto:moa`,
    /// `tessera/auto:cascade`.
    pub fn model_id(self) -> &'static str {
        match self {
            Strategy::Route => AUTO_MODEL,
            Strategy::Moa => "tessera/auto:moa",
            Strategy::Cascade => "tessera/auto:cascade",
        }
    }
}

impl std::str::FromStr for Strategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Strategy::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown strategy `{s}`: use route, moa or cascade"))
    }
}

/// One choice for a strategy to answer.
pub(super) struct Job<'a> {
    pub ensemble: &'a Arc<Ensemble>,
    /// The router's decision: the experts chosen, best first.
    pub decision: &'a Decision,
    pub ask: &'a Ask,
    /// Which choice (`n`) this is: the seed moves on by it.
    pub choice: u32,
}

/// Answer one choice as `decision` says. With no expert chosen, the base
/// model answers.
pub(super) async fn answer(job: Job<'_>, deltas: Option<Deltas>) -> Outcome {
    let ensemble = job.ensemble;
    let mut outcome = if job.decision.choices.is_empty() {
        let answer = ensemble
            .answer_base(ensemble.model(), job.ask, job.choice, deltas, None)
            .await;
        Outcome::of(answer, Vec::new())
    } else {
        match job.decision.strategy {
            Strategy::Route => route::answer(&job, deltas).await,
            Strategy::Moa => moa::answer(&job, deltas).await,
            Strategy::Cascade => cascade::answer(&job).await,
        }
    };
    if let Ok(answer) = &mut outcome.result {
        let by = answer.report.expert.as_ref().map_or_else(
            || ensemble.model().model_name().to_string(),
            |e| e.expert.clone(),
        );
        answer.report.answered_by = Some(by);
    }
    outcome
}

/// Every expert failed: the base model answers, if there is one, and the
/// answer lists who failed and why; without a model, `error` stands.
pub(super) async fn base_fallback(
    job: &Job<'_>,
    deltas: Option<Deltas>,
    failed: Vec<super::answer::Stage>,
    traces: Vec<crate::audit::Trace>,
    error: super::answer::AnswerError,
) -> Outcome {
    use crate::inference::{ModelEngine as _, NoModel};
    let ensemble = job.ensemble;
    if ensemble.model().model_name() != NoModel.model_name()
        && let Ok(mut answer) = ensemble
            .answer_base(ensemble.model(), job.ask, job.choice, deltas, None)
            .await
    {
        answer.report.fallbacks = failed;
        return Outcome::of(Ok(answer), traces);
    }
    Outcome::of(Err(error), traces)
}

/// The sandbox instances one choice may hold at once: MoA runs its experts
/// together and then the aggregator; the others one expert at a time.
pub(super) fn slots(ensemble: &Ensemble, decision: &Decision) -> u32 {
    let slots = |name: &str| ensemble.expert(name).map_or(0, |e| ensemble.slots_for(&e));
    let each = decision.choices.iter().map(|c| slots(&c.expert));
    match decision.strategy {
        Strategy::Moa => each.sum::<u32>() + slots(&ensemble.router_config().aggregator),
        Strategy::Route | Strategy::Cascade => each.max().unwrap_or(0),
    }
}
