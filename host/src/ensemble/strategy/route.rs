//! `tessera/auto`: the best-ranked expert answers.

use std::sync::Arc;

use crate::ensemble::answer::{Ask, Outcome, expert_answer};
use crate::ensemble::{Decision, Ensemble};
use crate::inference::Deltas;

pub(super) async fn answer(
    ensemble: &Arc<Ensemble>,
    decision: &Decision,
    ask: &Ask,
    choice: u32,
    deltas: Option<Deltas>,
) -> Outcome {
    let expert = &decision.choices[0].expert;
    let invocation = ensemble
        .invoke_with(expert, ask.expert_request(choice), deltas)
        .await;
    let trace = invocation.trace.clone();
    Outcome::of(expert_answer(invocation), vec![trace])
}
