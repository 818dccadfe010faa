//! `tessera/auto:cascade`: the chosen experts, cheapest first (the
//! router's order among equals), until one answers with a confidence at or
//! above the threshold; if none does, the most confident answer stands.
//! With a calibration (`--cascade-calibration`), the confidence compared
//! is how often answers like that one were right on the development set
//! ([`crate::ensemble::calibration`]), so that an accepted stage is right
//! at least as often as the threshold says.

use super::Job;
use crate::ensemble::answer::{
    Answer, AnswerError, CascadeReport, Outcome, Stage, StageDetail, expert_answer,
};

/// Most bytes of a stage's answer kept in the report.
pub const STAGE_CONTENT_BYTES: usize = 4096;

pub(super) async fn answer(job: &Job<'_>) -> Outcome {
    let (ensemble, decision) = (job.ensemble, job.decision);
    let config = ensemble.router_config();
    let (threshold, calibration) = (config.cascade_threshold, config.cascade_calibration.clone());
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
        return Outcome::of(Err(error), traces);
    };
    answer.prompt_tokens = prompt_tokens;
    answer.completion_tokens = completion_tokens;
    answer.report.cascade = Some(CascadeReport { threshold, stages });
    Outcome::of(Ok(answer), traces)
}
