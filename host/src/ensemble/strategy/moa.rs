//! `tessera/auto:moa`, mixture of agents: the chosen experts answer in
//! parallel; the aggregator writes the final answer from theirs. With one
//! answer (or an aggregator that fails) the best-ranked answer stands.

use super::Job;
use crate::ensemble::answer::{Answer, AnswerError, FanOutReport, Outcome, Stage, expert_answer};
use crate::inference::Deltas;

pub(super) async fn answer(job: &Job<'_>, deltas: Option<Deltas>) -> Outcome {
    let (ensemble, decision) = (job.ensemble, job.decision);
    let req = job.ask.expert_request(job.choice);
    let invocations = futures_util::future::join_all(
        decision
            .choices
            .iter()
            .map(|c| ensemble.invoke_with(&c.expert, req.clone(), None)),
    )
    .await;
    let mut traces = Vec::new();
    let mut stages = Vec::new();
    let mut answers: Vec<(String, Answer)> = Vec::new();
    let mut first_error = None;
    for (chosen, invocation) in decision.choices.iter().zip(invocations) {
        traces.push(invocation.trace.clone());
        match expert_answer(invocation, job.ask.want_record) {
            Ok(answer) => {
                stages.push(Stage::answered(&chosen.expert, &answer, None));
                answers.push((chosen.expert.clone(), answer));
            }
            Err(e) => {
                stages.push(Stage::failed(&chosen.expert, &e));
                first_error.get_or_insert(e);
            }
        }
    }
    if answers.is_empty() {
        let first = first_error.expect("no answers means an error");
        let error = AnswerError::AllFailed {
            strategy: "fan-out",
            first: Box::new(first),
        };
        return Outcome::of(Err(error), traces);
    }
    let (mut prompt_tokens, mut completion_tokens) =
        answers.iter().fold((0, 0), |(p, c), (_, a)| {
            (p + a.prompt_tokens, c + a.completion_tokens)
        });

    let aggregator = ensemble.router_config().aggregator;
    let mut aggregator_error = None;
    let mut aggregated = None;
    if answers.len() > 1 {
        let mut agg_req = req.clone();
        for (expert, answer) in &answers {
            agg_req
                .metadata
                .push(("answer-expert".into(), expert.clone()));
            agg_req
                .metadata
                .push(("answer".into(), answer.text.clone()));
        }
        let invocation = ensemble.invoke_with(&aggregator, agg_req, deltas).await;
        traces.push(invocation.trace.clone());
        match expert_answer(invocation, job.ask.want_record) {
            Ok(a) => {
                prompt_tokens += a.prompt_tokens;
                completion_tokens += a.completion_tokens;
                aggregated = Some(a);
            }
            Err(e) => {
                tracing::warn!(aggregator = %aggregator, error = %e, "the aggregator failed; the best-ranked answer stands");
                aggregator_error = Some(e.message());
            }
        }
    }
    let written = aggregated.is_some();
    let mut answer = aggregated.unwrap_or_else(|| answers.swap_remove(0).1);
    answer.prompt_tokens = prompt_tokens;
    answer.completion_tokens = completion_tokens;
    answer.report.fan_out = Some(FanOutReport {
        fan_out: stages,
        aggregator: written.then_some(aggregator),
        aggregator_error,
    });
    Outcome::of(Ok(answer), traces)
}
