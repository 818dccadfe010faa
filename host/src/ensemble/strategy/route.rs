//! `tessera/auto`: the best-ranked expert answers.

use super::Job;
use crate::ensemble::answer::{Outcome, expert_answer};
use crate::inference::Deltas;

pub(super) async fn answer(job: &Job<'_>, deltas: Option<Deltas>) -> Outcome {
    let (ensemble, decision) = (job.ensemble, job.decision);
    let expert = &decision.choices[0].expert;
    let invocation = ensemble
        .invoke_with(expert, job.ask.expert_request(job.choice), deltas)
        .await;
    let trace = invocation.trace.clone();
    Outcome::of(expert_answer(invocation, job.ask.want_record), vec![trace])
}
