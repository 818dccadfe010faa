//! The logprob spot-check: does the model the validator runs give the
//! recorded generations the log-probabilities the record claims?
//!
//! A replay (see [`super::replay`]) gives back each generation's prompt
//! exactly as the guest built it; the model then rates the recorded token
//! ids after that prompt in one pass. Each call passes when
//! - the ids decode to the recorded text (a stop string may cut the text
//!   short, never change it),
//! - every token's recomputed log-probability is within the tolerance of
//!   the recorded one, and
//! - for a greedy generation, every token is the model's own first choice
//!   (or within the tolerance of it).
//!
//! An edited text, another model or another adapter fails: their
//! log-probabilities differ by far more than the tolerance, which only
//! has to absorb the float differences between decoding one token at a
//! time and scoring all of them in one pass.

use serde::Serialize;

use super::CallResult;
use super::replay::{AskedGeneration, RerunReport};
use crate::inference::ModelEngine;
use crate::inference::sampler::{MIN_REPETITION_PENALTY, MIN_TEMPERATURE};

/// Largest difference, in nats, allowed between a recorded and a
/// recomputed token log-probability by default. Measured on SmolLM2-135M
/// (CPU, `flex`): decoding token by token and scoring in one pass differ
/// by at most ~1e-3; a swapped model differs by whole nats.
pub const DEFAULT_LOGPROB_TOLERANCE: f32 = 0.02;

/// The verdict on one recorded generation.
#[derive(Debug, Clone, Serialize)]
pub struct CallCheck {
    /// The host call's index.
    pub call: usize,
    /// Tokens compared.
    pub tokens: usize,
    /// Largest |recorded − recomputed| log-probability.
    pub max_abs_diff: f32,
    /// Mean of the same.
    pub mean_abs_diff: f32,
    /// Sum of the recorded log-probabilities.
    pub recorded_logprob: f64,
    /// Sum of the recomputed ones.
    pub recomputed_logprob: f64,
    /// Whether it passes.
    pub pass: bool,
    /// Why not, when it fails.
    pub reason: Option<String>,
}

/// The verdict on every generation of a record.
#[derive(Debug, Clone, Serialize)]
pub struct SpotCheck {
    /// The tolerance used, nats.
    pub tolerance: f32,
    /// One per generation, in call order.
    pub calls: Vec<CallCheck>,
}

impl SpotCheck {
    /// Whether every generation passes.
    pub fn pass(&self) -> bool {
        self.calls.iter().all(|c| c.pass)
    }
}

/// Check every generation a replay gave back against `model`.
pub async fn spot_check(
    replay: &RerunReport,
    model: &dyn ModelEngine,
    tolerance: f32,
) -> SpotCheck {
    let mut calls = Vec::new();
    for asked in &replay.generations {
        calls.push(check_one(asked, model, tolerance).await);
    }
    SpotCheck { tolerance, calls }
}

async fn check_one(asked: &AskedGeneration, model: &dyn ModelEngine, tolerance: f32) -> CallCheck {
    let mut check = CallCheck {
        call: asked.call,
        tokens: 0,
        max_abs_diff: 0.0,
        mean_abs_diff: 0.0,
        recorded_logprob: 0.0,
        recomputed_logprob: 0.0,
        pass: false,
        reason: None,
    };
    let CallResult::Completion {
        text,
        token_ids,
        logprobs,
        ..
    } = &asked.recorded
    else {
        check.reason = Some("the recorded result is not a completion".into());
        return check;
    };
    if token_ids.len() != logprobs.len() {
        check.reason = Some(format!(
            "the record has {} token ids but {} log-probabilities",
            token_ids.len(),
            logprobs.len()
        ));
        return check;
    }
    check.tokens = token_ids.len();
    check.recorded_logprob = logprobs.iter().map(|&l| f64::from(l)).sum();
    let rated = match model
        .rate(
            asked.request.prompt.clone(),
            token_ids.clone(),
            asked.request.adapter.clone(),
        )
        .await
    {
        Ok(r) => r,
        Err(e) => {
            check.reason = Some(format!("the model could not rate the tokens: {e}"));
            return check;
        }
    };
    if !rated.text.starts_with(text.as_str()) {
        check.reason = Some(format!(
            "the recorded text is not what its tokens decode to: recorded «{}», the tokens say «{}»",
            crate::text::ellipsize(text, 120),
            crate::text::ellipsize(&rated.text, 120)
        ));
        return check;
    }
    let params = &asked.request.params;
    // As the sampler decides it (NaN counts as too small).
    let below = |x: f32, min: f32| x.partial_cmp(&min).is_none_or(|o| o.is_lt());
    let greedy = below(params.temperature, MIN_TEMPERATURE)
        || below(params.repetition_penalty, MIN_REPETITION_PENALTY);
    let mut sum = 0.0f64;
    let mut worst: Option<String> = None;
    for (i, (score, &recorded)) in rated.scores.iter().zip(logprobs).enumerate() {
        let diff = (score.logprob - recorded).abs();
        let diff = if diff.is_nan() { f32::INFINITY } else { diff };
        check.recomputed_logprob += f64::from(score.logprob);
        sum += f64::from(diff);
        if diff > check.max_abs_diff {
            check.max_abs_diff = diff;
        }
        if worst.is_none() && diff > tolerance {
            worst = Some(format!(
                "token {i} (id {}): recorded log-probability {recorded:.4}, the model gives {:.4}",
                token_ids[i], score.logprob
            ));
        }
        if worst.is_none()
            && greedy
            && score.best != token_ids[i]
            && score.best_logprob - score.logprob > tolerance
        {
            worst = Some(format!(
                "token {i} (id {}) of a greedy generation is not the model's choice (id {}, {:.4} against {:.4})",
                token_ids[i], score.best, score.best_logprob, score.logprob
            ));
        }
    }
    check.mean_abs_diff = if check.tokens > 0 {
        (sum / check.tokens as f64) as f32
    } else {
        0.0
    };
    check.pass = worst.is_none();
    check.reason = worst;
    check
}
