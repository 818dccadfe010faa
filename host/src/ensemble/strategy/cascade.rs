//! `tessera/auto:cascade`: the chosen experts, cheapest first, until one
//! answers with a confidence at or above the threshold; if none does, the
//! most confident answer stands.

use super::Job;
use crate::ensemble::answer::{Answer, AnswerError, CascadeReport, Outcome, Stage, expert_answer};

pub(super) async fn answer(job: &Job<'_>) -> Outcome {
    let (ensemble, decision) = (job.ensemble, job.decision);
    let threshold = ensemble.router_config().cascade_threshold;
    let req = job.ask.expert_request(job.choice);
    let mut order: Vec<(u32, usize)> = decision
        .choices
        .iter()
        .enumerate()
        .map(|(rank, c)| {
            let cost = ensemble
                .expert(&c.expert)
                .map_or(u32::MAX, |e| e.manifest.routing.cost);
            (cost, rank)
        })
        .collect();
    order.sort();
    let mut traces = Vec::new();
    let mut stages = Vec::new();
    let mut best: Option<Answer> = None;
    let mut first_error = None;
    let (mut prompt_tokens, mut completion_tokens) = (0, 0);
    for (cost, rank) in order {
        let expert = &decision.choices[rank].expert;
        let invocation = ensemble.invoke_with(expert, req.clone(), None).await;
        traces.push(invocation.trace.clone());
        let answer = match expert_answer(invocation, job.ask.want_record) {
            Ok(a) => a,
            Err(e) => {
                stages.push(Stage {
                    cost: Some(cost),
                    ..Stage::failed(expert, &e)
                });
                first_error.get_or_insert(e);
                continue;
            }
        };
        prompt_tokens += answer.prompt_tokens;
        completion_tokens += answer.completion_tokens;
        let confidence = answer.confidence.unwrap_or(0.0);
        let accepted = confidence >= threshold;
        stages.push(Stage {
            cost: Some(cost),
            ..Stage::answered(expert, &answer, Some(accepted))
        });
        if best
            .as_ref()
            .is_none_or(|b| confidence > b.confidence.unwrap_or(0.0))
        {
            best = Some(answer);
        }
        if accepted {
            break;
        }
    }
    let Some(mut answer) = best else {
        let first = first_error.expect("no answers means an error");
        let error = AnswerError::AllFailed {
            strategy: "cascade",
            first: Box::new(first),
        };
        return Outcome::of(Err(error), traces);
    };
    answer.prompt_tokens = prompt_tokens;
    answer.completion_tokens = completion_tokens;
    answer.report.cascade = Some(CascadeReport { threshold, stages });
    Outcome::of(Ok(answer), traces)
}
