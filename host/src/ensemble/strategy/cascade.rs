//! `tessera/auto:cascade`: the chosen experts in the router's order, the
//! cheapest first among those the router cannot tell apart (scores within
//! [`ROUTER_TIE`] of the best), until one answers with a confidence at or
//! above the threshold; if none does, the most confident answer stands,
//! and if every expert fails, the base model answers. Asking a cheap
//! expert the router ranks clearly lower first only spends time: on the
//! development set it answered, was not accepted, and the request went on
//! to the expert routing would have picked anyway.
//! With a calibration (`--cascade-calibration`), the confidence compared
//! is how often answers like that one were right on the development set
//! ([`crate::ensemble::calibration`]), so that an accepted stage is right
//! at least as often as the threshold says.

use super::Job;
use super::moa::ROUTER_TIE;
use crate::ensemble::answer::{
    Answer, AnswerError, CascadeReport, Outcome, Stage, StageDetail, expert_answer,
};
use crate::ensemble::router::Choice;

/// Most bytes of a stage's answer kept in the report.
pub const STAGE_CONTENT_BYTES: usize = 4096;

/// The order in which the cascade asks `choices` (best first): the near
/// ties of the best by cost, then the rest by rank.
fn stage_order(choices: &[Choice], cost: impl Fn(usize) -> u32) -> Vec<usize> {
    let best = choices.first().map_or(0.0, |c| c.score);
    let (mut tied, rest): (Vec<usize>, Vec<usize>) =
        (0..choices.len()).partition(|&i| choices[i].score >= best - ROUTER_TIE);
    tied.sort_by_key(|&i| (cost(i), i));
    tied.extend(rest);
    tied
}

pub(super) async fn answer(job: &Job<'_>) -> Outcome {
    let (ensemble, decision) = (job.ensemble, job.decision);
    let config = ensemble.router_config();
    let (threshold, calibration) = (config.cascade_threshold, config.cascade_calibration.clone());
    let req = job.ask.expert_request(job.choice);
    let cost = |rank: usize| {
        ensemble
            .expert(&decision.choices[rank].expert)
            .map_or(u32::MAX, |e| e.manifest.routing.cost)
    };
    let order: Vec<(u32, usize)> = stage_order(&decision.choices, cost)
        .into_iter()
        .map(|rank| (cost(rank), rank))
        .collect();
    let mut traces = Vec::new();
    let mut stages = Vec::new();
    let mut best: Option<(Answer, f32)> = None;
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
        let raw = answer.confidence.unwrap_or(0.0);
        let calibrated = calibration.as_ref().map(|c| c.calibrate(expert, raw));
        let confidence = calibrated.unwrap_or(raw);
        let accepted = confidence >= threshold;
        stages.push(Stage {
            cost: Some(cost),
            detail: StageDetail::Answered {
                confidence: answer.confidence,
                calibrated,
                content: Some(crate::text::cut(&answer.text, STAGE_CONTENT_BYTES).to_string()),
                accepted: Some(accepted),
            },
            ..Stage::answered(expert, &answer, Some(accepted))
        });
        if best.as_ref().is_none_or(|(_, b)| confidence > *b) {
            best = Some((answer, confidence));
        }
        if accepted {
            break;
        }
    }
    let Some((mut answer, _)) = best else {
        let first = first_error.expect("no answers means an error");
        let error = AnswerError::AllFailed {
            strategy: "cascade",
            first: Box::new(first),
        };
        return super::base_fallback(job, None, stages, traces, error).await;
    };
    answer.prompt_tokens = prompt_tokens;
    answer.completion_tokens = completion_tokens;
    answer.report.cascade = Some(CascadeReport { threshold, stages });
    Outcome::of(Ok(answer), traces)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn choices(scores: &[f32]) -> Vec<Choice> {
        scores
            .iter()
            .enumerate()
            .map(|(i, &score)| Choice {
                expert: format!("e{i}"),
                score,
            })
            .collect()
    }

    #[test]
    fn cheaper_experts_go_first_only_among_near_ties() {
        let costs = [2, 1, 0];
        // A clear leader goes first whatever it costs.
        let order = stage_order(&choices(&[0.6, 0.4, 0.3]), |i| costs[i]);
        assert_eq!(order, vec![0, 1, 2]);
        // Near ties: the cheapest of them first, the rest after.
        let order = stage_order(&choices(&[0.40, 0.39, 0.2]), |i| costs[i]);
        assert_eq!(order, vec![1, 0, 2]);
        let order = stage_order(&choices(&[0.40, 0.39, 0.38]), |i| costs[i]);
        assert_eq!(order, vec![2, 1, 0]);
    }
}
