//! A validator's checks on one record, together: the receipt's signature
//! and digests, then replay, recompute and the logprob spot-check as
//! asked. `tessera verify` and `POST /v1/verify` both give this verdict.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::Record;
use super::replay::{self, Mode, RerunReport};
use super::spotcheck::{self, DEFAULT_LOGPROB_TOLERANCE, SpotCheck};
use crate::ensemble::Ensemble;
use crate::inference::ModelEngine;

/// Which checks to run beyond the signature.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Checks {
    /// Replay with every host call answered from the record.
    pub replay: bool,
    /// Re-run with the model and the recorded seeds.
    pub recompute: bool,
    /// Recompute the recorded generations' log-probabilities.
    pub logprobs: bool,
    /// Largest difference allowed per token, nats.
    pub tolerance: f32,
}

impl Default for Checks {
    fn default() -> Self {
        Checks {
            replay: true,
            recompute: false,
            logprobs: true,
            tolerance: DEFAULT_LOGPROB_TOLERANCE,
        }
    }
}

/// What the checks found.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    /// Every check asked for passed.
    pub pass: bool,
    /// The host key's fingerprint, when the receipt verifies.
    pub signer: Option<String>,
    /// Why the receipt or record does not hold together.
    pub signature_error: Option<String>,
    /// The replay.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replay: Option<RerunReport>,
    /// The recompute.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recompute: Option<RerunReport>,
    /// The logprob spot-check.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<SpotCheck>,
    /// Checks that could not run, and why.
    pub errors: Vec<String>,
}

/// Check `record`: its receipt first; then, on `ensemble` (which holds the
/// recorded component) and `model`, the checks asked for.
pub async fn verify_record(
    ensemble: &Arc<Ensemble>,
    record: &Record,
    model: Option<Arc<dyn ModelEngine>>,
    checks: Checks,
) -> Verdict {
    let mut verdict = Verdict {
        pass: false,
        signer: None,
        signature_error: None,
        replay: None,
        recompute: None,
        logprobs: None,
        errors: Vec::new(),
    };
    match record.check() {
        Ok(signer) => verdict.signer = Some(signer),
        Err(e) => {
            verdict.signature_error = Some(e.to_string());
            return verdict;
        }
    }
    let mut pass = true;
    // Rating or re-running tokens means something only on the model that
    // generated them (an expert on an upstream model names that model).
    let recorded_model = record.receipt.as_ref().map(|r| r.body.model.name.as_str());
    let mut checks = checks;
    if let (Some(recorded), Some(m)) = (recorded_model, &model)
        && (checks.logprobs || checks.recompute)
        && !recorded.eq_ignore_ascii_case(m.model_name())
    {
        pass = false;
        verdict.errors.push(format!(
            "the record's generations came from model `{recorded}`, not `{}`, the model loaded here: --logprobs and --recompute need the same model",
            m.model_name()
        ));
        checks.logprobs = false;
        checks.recompute = false;
    }
    if checks.replay || checks.logprobs {
        match replay::rerun(ensemble, record, Mode::Replay, None).await {
            Ok(report) => {
                pass &= report.matches();
                if checks.logprobs {
                    match &model {
                        Some(m) => {
                            let check =
                                spotcheck::spot_check(&report, m.as_ref(), checks.tolerance).await;
                            pass &= check.pass();
                            verdict.logprobs = Some(check);
                        }
                        None => {
                            pass = false;
                            verdict
                                .errors
                                .push("logprobs: no model is loaded to rate the tokens".into());
                        }
                    }
                }
                verdict.replay = Some(report);
            }
            Err(e) => {
                pass = false;
                verdict.errors.push(format!("replay: {e}"));
            }
        }
    }
    if checks.recompute {
        match replay::rerun(ensemble, record, Mode::Recompute, model).await {
            Ok(report) => {
                pass &= report.matches();
                verdict.recompute = Some(report);
            }
            Err(e) => {
                pass = false;
                verdict.errors.push(format!("recompute: {e}"));
            }
        }
    }
    verdict.pass = pass;
    verdict
}
