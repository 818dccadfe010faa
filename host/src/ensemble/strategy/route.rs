//! `tessera/auto`: the best-ranked expert answers; when it fails or
//! refuses, the next candidate does, then the base model.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::Job;
use crate::ensemble::answer::{AnswerError, Outcome, Stage, expert_answer};
use crate::inference::Deltas;

pub(super) async fn answer(job: &Job<'_>, deltas: Option<Deltas>) -> Outcome {
    let (ensemble, decision) = (job.ensemble, job.decision);
    // The chosen experts, then the other candidates, best first.
    let mut order: Vec<&str> = decision.choices.iter().map(|c| c.expert.as_str()).collect();
    for c in &decision.candidates {
        if !order.contains(&c.expert.as_str()) {
            order.push(&c.expert);
        }
    }
    let mut traces = Vec::new();
    let mut failed: Vec<Stage> = Vec::new();
    let mut first_error: Option<AnswerError> = None;
    for expert in order {
        // A streamed answer cannot be taken back: each attempt streams
        // through a relay that notes whether it sent anything.
        let sent = Arc::new(AtomicBool::new(false));
        let (relay, forward) = match &deltas {
            Some(out) => {
                let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
                let (out, sent) = (out.clone(), sent.clone());
                let forward = tokio::spawn(async move {
                    while let Some(delta) = rx.recv().await {
                        sent.store(true, Ordering::Relaxed);
                        let _ = out.send(delta);
                    }
                });
                (Some(tx), Some(forward))
            }
            None => (None, None),
        };
        let invocation = ensemble
            .invoke_with(expert, job.ask.expert_request(job.choice), relay)
            .await;
        if let Some(forward) = forward {
            let _ = forward.await;
        }
        traces.push(invocation.trace.clone());
        match expert_answer(invocation, job.ask.want_record) {
            Ok(mut answer) => {
                answer.report.fallbacks = failed;
                return Outcome::of(Ok(answer), traces);
            }
            Err(e) => {
                failed.push(Stage::failed(expert, &e));
                let streamed = sent.load(Ordering::Relaxed);
                first_error.get_or_insert(e);
                if streamed {
                    // Part of its answer is with the client already.
                    return Outcome::of(Err(first_error.expect("set")), traces);
                }
            }
        }
    }
    // Every candidate failed: the base model answers, if there is one.
    let error = first_error.unwrap_or_else(|| {
        AnswerError::Model(crate::inference::ModelError::NotLoaded(
            "no expert was chosen and no model is loaded".into(),
        ))
    });
    super::base_fallback(job, deltas, failed, traces, error).await
}
