//! `tessera/auto:moa`, mixture of agents: the chosen experts answer in
//! parallel, then one of their answers is *selected* — never rewritten,
//! since a small model asked to merge answers corrupts exact ones:
//!
//! 1. an answer its expert is certain of (confidence ≥ 0.999: tools that
//!    compute exactly report 1.0), the best-ranked such one;
//! 2. else the answer most candidates agree on (the same text, or the same
//!    first number not copied from the question), if more than one agree
//!    and no other group is as large;
//! 3. else, among the answers whose experts the router scored within
//!    [`ROUTER_TIE`] of the best-scored one that answered, the one the
//!    base model finds most likely after the question, per token
//!    (length-normalised log-likelihood, as LLM-Blender ranks candidates),
//!    when a model is loaded and more than one is that close; else the
//!    best-ranked answer.
//!
//! The router's order is the prior that only evidence overturns: a 135M
//! model's likelihood prefers fluent copies of the question's text to a
//! specialist's exact or short answer (on the development set, ranking all
//! answers by likelihood chose a passage's copy over its summary and prose
//! over the extractor's JSON), so it only breaks near-ties of the router.
//!
//! When every expert fails, the base model answers. With `moa-fuse` the
//! aggregator expert writes the final answer from theirs instead
//! (generative fusion); if it fails, selection decides.

use super::Job;
use crate::ensemble::answer::{
    Answer, AnswerError, FanOutReport, Outcome, Selection, Stage, expert_answer,
};
use crate::inference::{ChatMessage, ChatRole, Deltas, ModelEngine as _, NoModel, Prompt};

/// Confidence at which an expert's answer is taken as exact.
pub const CERTAIN: f32 = 0.999;

/// Router scores closer than this to the best answering expert's count as
/// a tie that the model's likelihood breaks. MiniLM scores of the right
/// expert led the next by 0.04 to 0.5 on the development set's fan-outs.
pub const ROUTER_TIE: f32 = 0.03;

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
        return super::base_fallback(job, deltas, stages, traces, error).await;
    }
    let (mut prompt_tokens, mut completion_tokens) =
        answers.iter().fold((0, 0), |(p, c), (_, a)| {
            (p + a.prompt_tokens, c + a.completion_tokens)
        });

    let config = ensemble.router_config();
    let aggregator = config.aggregator.clone();
    let mut aggregator_error = None;
    let mut aggregated = None;
    if config.moa_fuse && answers.len() > 1 {
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
                tracing::warn!(aggregator = %aggregator, error = %e, "the aggregator failed; selection decides");
                aggregator_error = Some(e.message());
            }
        }
    }
    let written = aggregated.is_some();
    let (mut answer, selection) = match aggregated {
        Some(a) => (a, None),
        None => {
            let question = last_user_text(job);
            let scores: Vec<f32> = answers
                .iter()
                .map(|(e, _)| {
                    decision
                        .choices
                        .iter()
                        .find(|c| c.expert == *e)
                        .map_or(f32::NEG_INFINITY, |c| c.score)
                })
                .collect();
            let selection = select(ensemble, &question, &answers, &scores).await;
            let index = answers
                .iter()
                .position(|(e, _)| *e == selection.expert)
                .unwrap_or(0);
            (answers.swap_remove(index).1, Some(selection))
        }
    };
    answer.prompt_tokens = prompt_tokens;
    answer.completion_tokens = completion_tokens;
    answer.report.fan_out = Some(FanOutReport {
        fan_out: stages,
        aggregator: written.then_some(aggregator),
        aggregator_error,
        selection,
    });
    Outcome::of(Ok(answer), traces)
}

fn last_user_text(job: &Job<'_>) -> String {
    match &job.ask.input {
        Prompt::Chat(messages) => messages
            .iter()
            .rev()
            .find(|m| m.role == ChatRole::User)
            .map(|m| m.content.clone())
            .unwrap_or_default(),
        Prompt::Text(text) => text.clone(),
    }
}

/// Which answer stands, and why. `answers` are in rank order, `route`
/// holds the router's score of each one's expert.
async fn select(
    ensemble: &crate::ensemble::Ensemble,
    question: &str,
    answers: &[(String, Answer)],
    route: &[f32],
) -> Selection {
    let pick = |i: usize, by: &'static str, scores: Vec<(String, f64)>| Selection {
        expert: answers[i].0.clone(),
        by,
        scores,
    };
    if answers.len() == 1 {
        return pick(0, "only-answer", Vec::new());
    }
    if let Some(i) = answers
        .iter()
        .position(|(_, a)| a.confidence.is_some_and(|c| c >= CERTAIN))
    {
        return pick(i, "confidence", Vec::new());
    }
    if let Some(i) = agreement(question, answers) {
        return pick(i, "agreement", Vec::new());
    }
    let close = near_ties(route);
    let engine = ensemble.model();
    if close.len() > 1 && engine.model_name() != NoModel.model_name() {
        let mut scores = Vec::with_capacity(close.len());
        for &i in &close {
            let (expert, answer) = &answers[i];
            scores.push((
                expert.clone(),
                likelihood(engine, question, &answer.text).await,
            ));
        }
        let best = scores
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.1.total_cmp(&b.1.1).then(b.0.cmp(&a.0)))
            .map_or(0, |(i, _)| i);
        if scores[best].1.is_finite() {
            return pick(close[best], "likelihood", scores);
        }
        return pick(0, "rank", scores);
    }
    pick(0, "rank", Vec::new())
}

/// The answers whose router score is within [`ROUTER_TIE`] of the best.
fn near_ties(route: &[f32]) -> Vec<usize> {
    let best = route.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    (0..route.len())
        .filter(|&i| route[i] >= best - ROUTER_TIE)
        .collect()
}

/// The best-ranked member of the largest group of agreeing answers, when
/// it has more than one member and no other group is as large.
fn agreement(question: &str, answers: &[(String, Answer)]) -> Option<usize> {
    let copied = crate::eval::numbers(question);
    let key = |text: &str| -> String {
        let own = crate::eval::numbers(text)
            .into_iter()
            .find(|n| !copied.iter().any(|c| (c - n).abs() < 1e-9));
        match own {
            Some(n) => format!("#{}", (n * 1e6).round() / 1e6),
            None => text
                .to_lowercase()
                .split(|c: char| !c.is_alphanumeric())
                .filter(|w| !w.is_empty())
                .collect::<Vec<_>>()
                .join(" "),
        }
    };
    let keys: Vec<String> = answers.iter().map(|(_, a)| key(&a.text)).collect();
    let count = |k: &String| keys.iter().filter(|x| *x == k).count();
    let (best, size) = keys
        .iter()
        .enumerate()
        .map(|(i, k)| (i, count(k)))
        .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)))?;
    let rivals = keys
        .iter()
        .filter(|k| **k != keys[best] && count(k) == size)
        .count();
    (size > 1 && rivals == 0).then_some(best)
}

/// Mean log-probability per token of `answer` as the assistant's reply to
/// `question`, rendered with the chat template; −∞ when it cannot be rated.
async fn likelihood(
    engine: &std::sync::Arc<dyn crate::inference::ModelEngine>,
    question: &str,
    answer: &str,
) -> f64 {
    let Ok(ids) = engine.tokenize(answer.to_string()).await else {
        return f64::NEG_INFINITY;
    };
    if ids.is_empty() {
        return f64::NEG_INFINITY;
    }
    let prompt = Prompt::Chat(vec![ChatMessage {
        role: ChatRole::User,
        content: question.to_string(),
    }]);
    match engine.rate(prompt, ids, None).await {
        Ok(rated) if !rated.scores.is_empty() => {
            rated
                .scores
                .iter()
                .map(|s| f64::from(s.logprob))
                .sum::<f64>()
                / rated.scores.len() as f64
        }
        _ => f64::NEG_INFINITY,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ensemble::answer::Report;
    use crate::inference::Finish;

    fn answers(texts: &[&str]) -> Vec<(String, Answer)> {
        texts
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let answer = Answer {
                    text: t.to_string(),
                    finish: Finish::Stop,
                    prompt_tokens: 0,
                    completion_tokens: 0,
                    logprobs: Vec::new(),
                    confidence: None,
                    report: Report::default(),
                    receipt: None,
                    record: None,
                };
                (format!("e{i}"), answer)
            })
            .collect()
    }

    #[test]
    fn agreement_needs_a_strict_majority_group() {
        let q = "What is 12 * 12?";
        // Two say 144 (in other words), one says 124: the first of the two.
        let a = answers(&["12 * 12 is 124", "12 * 12 = 144", "The answer is 144."]);
        assert_eq!(agreement(q, &a), Some(1));
        // All differ: no agreement.
        assert_eq!(agreement(q, &answers(&["143", "144", "145"])), None);
        // Two groups of two: a tie, no agreement.
        assert_eq!(agreement(q, &answers(&["1", "1", "2", "2"])), None);
        // Texts without numbers agree ignoring case and punctuation.
        let a = answers(&["Paris.", "paris", "Lyon"]);
        assert_eq!(agreement("Capital of France?", &a), Some(0));
    }

    #[test]
    fn only_near_ties_of_the_router_are_ranked_by_likelihood() {
        assert_eq!(near_ties(&[0.64, 0.32, 0.27]), vec![0]);
        assert_eq!(near_ties(&[0.326, 0.325, 0.287]), vec![0, 1]);
        // The top expert failed: the best of those that answered leads.
        assert_eq!(near_ties(&[0.30, 0.29]), vec![0, 1]);
        assert_eq!(near_ties(&[0.5]), vec![0]);
    }
}
