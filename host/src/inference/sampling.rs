//! Sampling settings as callers give them, checked once for every door
//! into the engine: the HTTP API (`server::openai`) and experts
//! (`caps::model`) both turn their request into the contract's
//! [`Sampling`] (every field optional) and call [`Sampling::check`], so a
//! value refused at one door is refused at the other with the same words.

use super::{DEFAULT_MAX_TOKENS, DEFAULT_TEMPERATURE, SamplingParams};
use crate::types::Sampling;

/// Highest temperature accepted (OpenAI's range is 0 to 2).
pub const MAX_TEMPERATURE: f32 = 2.0;
/// Highest repetition penalty accepted. Past it every seen token is all but
/// banned; the sampler stays well-defined, but nobody means it.
pub const MAX_REPETITION_PENALTY: f32 = 100.0;
/// Most stop strings per request (OpenAI's limit). They are searched for
/// on every generated token, on the engine thread.
pub const MAX_STOP: usize = 4;
/// Longest stop string, in bytes.
pub const MAX_STOP_BYTES: usize = 256;

/// A sampling field, named the way each door spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SamplingField {
    /// `temperature`.
    Temperature,
    /// `top_p` / `top-p`.
    TopP,
    /// `top_k` / `top-k`.
    TopK,
    /// `repetition_penalty` / `repetition-penalty`.
    RepetitionPenalty,
    /// `max_tokens` / `max-tokens`.
    MaxTokens,
    /// `stop`, or `stop[i]` for one string.
    Stop(Option<usize>),
}

impl SamplingField {
    /// The OpenAI API's name (`top_p`).
    pub fn http_name(self) -> String {
        match self {
            SamplingField::Temperature => "temperature".into(),
            SamplingField::TopP => "top_p".into(),
            SamplingField::TopK => "top_k".into(),
            SamplingField::RepetitionPenalty => "repetition_penalty".into(),
            SamplingField::MaxTokens => "max_tokens".into(),
            SamplingField::Stop(None) => "stop".into(),
            SamplingField::Stop(Some(i)) => format!("stop[{i}]"),
        }
    }

    /// The WIT record's name (`sampling.top-p`).
    pub fn wit_name(self) -> String {
        format!("sampling.{}", self.http_name().replace('_', "-"))
    }
}

/// A sampling value outside what the engine accepts.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct SamplingError {
    /// Which field.
    pub field: SamplingField,
    /// What is wrong, without the field's name (each door adds its own).
    pub message: String,
}

impl Sampling {
    /// Check every field and fill in defaults. `max_tokens` is then
    /// clamped to `token_budget` (what the caller may still generate).
    pub fn check(self, token_budget: u32) -> Result<SamplingParams, SamplingError> {
        let bad = |field, message: String| Err(SamplingError { field, message });
        let temperature = self.temperature.unwrap_or(DEFAULT_TEMPERATURE);
        if !(temperature.is_finite() && (0.0..=MAX_TEMPERATURE).contains(&temperature)) {
            return bad(
                SamplingField::Temperature,
                format!("must be between 0 and {MAX_TEMPERATURE}, got {temperature}"),
            );
        }
        let top_p = self.top_p.unwrap_or(1.0);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return bad(
                SamplingField::TopP,
                format!("must be in (0, 1], got {top_p}"),
            );
        }
        if self.top_k == Some(0) {
            return bad(SamplingField::TopK, "must be at least 1".into());
        }
        let repetition_penalty = self.repetition_penalty.unwrap_or(1.0);
        if !(repetition_penalty.is_finite()
            && repetition_penalty > 0.0
            && repetition_penalty <= MAX_REPETITION_PENALTY)
        {
            return bad(
                SamplingField::RepetitionPenalty,
                format!(
                    "must be greater than 0 and at most {MAX_REPETITION_PENALTY} (1 is off), got {repetition_penalty}"
                ),
            );
        }
        let max_tokens = self.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS);
        if max_tokens == 0 {
            return bad(SamplingField::MaxTokens, "must be at least 1".into());
        }
        if self.stop.len() > MAX_STOP {
            return bad(
                SamplingField::Stop(None),
                format!(
                    "may hold at most {MAX_STOP} strings, got {}",
                    self.stop.len()
                ),
            );
        }
        if let Some(i) = self.stop.iter().position(|s| s.len() > MAX_STOP_BYTES) {
            return bad(
                SamplingField::Stop(Some(i)),
                format!(
                    "is {} bytes; a stop string may be at most {MAX_STOP_BYTES}",
                    self.stop[i].len()
                ),
            );
        }
        Ok(SamplingParams {
            temperature,
            top_p,
            top_k: self.top_k,
            repetition_penalty,
            max_tokens: max_tokens.min(token_budget),
            seed: self.seed,
            stop: self.stop.into_iter().filter(|s| !s.is_empty()).collect(),
            owner: None,
            ignore_eos: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(options: Sampling) -> SamplingField {
        options.check(u32::MAX).unwrap_err().field
    }

    #[test]
    fn defaults_fill_in() {
        let p = Sampling::default().check(u32::MAX).unwrap();
        assert_eq!(p.temperature, DEFAULT_TEMPERATURE);
        assert_eq!(p.max_tokens, DEFAULT_MAX_TOKENS);
        assert_eq!(p.top_p, 1.0);
        assert_eq!(p.repetition_penalty, 1.0);
    }

    #[test]
    fn each_bad_value_names_its_field() {
        let o = Sampling::default;
        let cases = [
            (
                Sampling {
                    temperature: Some(f32::NAN),
                    ..o()
                },
                SamplingField::Temperature,
            ),
            (
                Sampling {
                    temperature: Some(2.5),
                    ..o()
                },
                SamplingField::Temperature,
            ),
            (
                Sampling {
                    temperature: Some(-1e-40),
                    ..o()
                },
                SamplingField::Temperature,
            ),
            (
                Sampling {
                    top_p: Some(0.0),
                    ..o()
                },
                SamplingField::TopP,
            ),
            (
                Sampling {
                    top_k: Some(0),
                    ..o()
                },
                SamplingField::TopK,
            ),
            (
                Sampling {
                    repetition_penalty: Some(0.0),
                    ..o()
                },
                SamplingField::RepetitionPenalty,
            ),
            (
                Sampling {
                    repetition_penalty: Some(f32::INFINITY),
                    ..o()
                },
                SamplingField::RepetitionPenalty,
            ),
            (
                Sampling {
                    max_tokens: Some(0),
                    ..o()
                },
                SamplingField::MaxTokens,
            ),
            (
                Sampling {
                    stop: vec!["a".into(); MAX_STOP + 1],
                    ..o()
                },
                SamplingField::Stop(None),
            ),
            (
                Sampling {
                    stop: vec!["ok".into(), "x".repeat(MAX_STOP_BYTES + 1)],
                    ..o()
                },
                SamplingField::Stop(Some(1)),
            ),
        ];
        for (options, field) in cases {
            assert_eq!(field_of(options.clone()), field, "{options:?}");
        }
        assert_eq!(SamplingField::TopP.wit_name(), "sampling.top-p");
        assert_eq!(SamplingField::Stop(Some(2)).http_name(), "stop[2]");
    }

    #[test]
    fn tiny_values_are_accepted_and_budget_clamps() {
        // The sampler must survive these (see sampler tests); refusing
        // them would only move the problem.
        let p = Sampling {
            temperature: Some(1e-40),
            repetition_penalty: Some(1e-40),
            max_tokens: Some(500),
            stop: vec![String::new(), "END".into()],
            ..Sampling::default()
        }
        .check(100)
        .unwrap();
        assert_eq!(p.max_tokens, 100);
        assert_eq!(p.stop, vec!["END".to_string()]);
    }
}
