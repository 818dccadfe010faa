//! `tessera/auto:cascade`: the chosen experts in the router's order until
//! one answers with a confidence at or above the threshold; if none does,
//! the most confident answer stands, and if every expert fails, the base
//! model answers. A low-confidence answer escalates only to candidates the
//! router scored within the window ([`DEFAULT_CASCADE_WINDOW`]) of the
//! best; a failed stage moves on to the next candidate whatever its score,
//! as `tessera/auto` does.
//!
//! Why a window, and why not cheapest first: an expert's confidence says
//! how sure it is of its answer, not whether the question was for it. On
//! the development set, escalating the general assistant's answers (right
//! 46% of the time, so never accepted at 0.5) to lower-ranked specialists
//! had the bookshop fine-tune answer "Who painted the Mona Lisa?" with its
//! founder and the summariser echo a question, both confidently; asking
//! the cheaper of two near-tied experts first had the summariser answer a
//! JSON request. And `[routing] cost` is what a plugin says of itself.
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

/// How far below the best router score a low-confidence answer still
/// escalates: near ties only. MiniLM scores of the right expert led the
/// next by 0.04 to 0.5 on the development set's fan-outs.
pub const DEFAULT_CASCADE_WINDOW: f32 = 0.03;

/// Whether the candidate ranked `rank` is asked: always while no stage has
/// answered, else only within `window` of the best score.
fn asks(scores: &[f32], rank: usize, window: f32, answered: bool) -> bool {
    !answered || scores[rank] >= scores.first().copied().unwrap_or(0.0) - window
}

pub(super) async fn answer(job: &Job<'_>) -> Outcome {
    let (ensemble, decision) = (job.ensemble, job.decision);
    let config = ensemble.router_config();
    let (threshold, calibration) = (config.cascade_threshold, config.cascade_calibration.clone());
    let req = job.ask.expert_request(job.choice);
    let scores: Vec<f32> = decision.choices.iter().map(|c| c.score).collect();
    let mut traces = Vec::new();
    let mut stages = Vec::new();
    let mut best: Option<(Answer, f32)> = None;
    let mut first_error = None;
    let (mut prompt_tokens, mut completion_tokens) = (0, 0);
    for (rank, choice) in decision.choices.iter().enumerate() {
        if !asks(&scores, rank, config.cascade_window, best.is_some()) {
            break;
        }
        let expert = &choice.expert;
        let cost = ensemble
            .expert(expert)
            .map_or(u32::MAX, |e| e.manifest.routing.cost);
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

    #[test]
    fn low_confidence_escalates_only_among_near_ties_and_failures_go_on() {
        let scores = [0.60, 0.58, 0.40];
        // Nothing answered yet: every candidate may be asked.
        assert!((0..3).all(|r| asks(&scores, r, 0.03, false)));
        // An answer below the threshold escalates only to the near tie.
        assert!(asks(&scores, 1, 0.03, true));
        assert!(!asks(&scores, 2, 0.03, true));
        // A wide window asks them all.
        assert!(asks(&scores, 2, 2.0, true));
    }
}
