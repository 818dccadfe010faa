//! Picking the next token from a row of logits.
//!
//! The order is the usual one: repetition penalty on the raw logits, then
//! greedy (temperature 0) or temperature, top-k, top-p and a draw from a
//! seeded ChaCha8 stream, so the same seed on the same device gives the
//! same tokens. The reported log-probability is the model's own (raw
//! logits, no sampling transforms), as OpenAI reports it.

use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};

use super::SamplingParams;

/// Scaled logits this far below the best are dropped before top-p: their
/// probability is below e^-30 (1e-13) each.
const NEGLIGIBLE: f32 = 30.0;
/// Temperatures below this sample greedily: `1 / t` would overflow the
/// scaled logits to infinity (a client's `temperature: 1e-40` once emptied
/// the candidate list and killed the engine thread).
pub const MIN_TEMPERATURE: f32 = 1e-4;
/// Repetition penalties below this sample greedily, for the same reason:
/// dividing by them overflows the penalised logits.
pub const MIN_REPETITION_PENALTY: f32 = 1e-3;

/// The token chosen and its log-probability under the model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampled {
    /// The token id.
    pub token: u32,
    /// `log p(token)` from the unmodified logits.
    pub logprob: f32,
}

/// A per-sequence sampler.
pub struct Sampler {
    greedy: bool,
    temperature: f32,
    top_k: Option<usize>,
    top_p: f32,
    repetition_penalty: f32,
    rng: ChaCha8Rng,
}

impl Sampler {
    /// A sampler for `params`; `seed` is used when the params carry none.
    pub fn new(params: &SamplingParams, fallback_seed: u64) -> Sampler {
        // NaN counts as too small: it is not `>=` anything.
        let usable = |x: f32, min: f32| x.partial_cmp(&min).is_some_and(|o| o.is_ge());
        let greedy = !usable(params.temperature, MIN_TEMPERATURE)
            || !usable(params.repetition_penalty, MIN_REPETITION_PENALTY);
        Sampler {
            greedy,
            temperature: params.temperature,
            top_k: params.top_k.map(|k| k.max(1) as usize),
            top_p: if params.top_p > 0.0 {
                params.top_p
            } else {
                1.0
            },
            repetition_penalty: params.repetition_penalty.max(MIN_REPETITION_PENALTY),
            rng: ChaCha8Rng::seed_from_u64(params.seed.unwrap_or(fallback_seed)),
        }
    }

    /// Pick the next token from `logits`, given the tokens `seen` so far
    /// (prompt and answer) for the repetition penalty.
    ///
    /// Total: whatever the settings and the logits (infinities and NaN
    /// included), it returns a token of the row; an empty row gives token 0.
    pub fn sample(&mut self, logits: &[f32], seen: &[u32]) -> Sampled {
        let needs_copy = (self.repetition_penalty != 1.0 && !seen.is_empty())
            || logits.iter().any(|l| !l.is_finite());
        let scores = needs_copy.then(|| {
            let mut scores = if self.repetition_penalty != 1.0 {
                penalize(logits, seen, self.repetition_penalty)
            } else {
                logits.to_vec()
            };
            sanitize(&mut scores);
            scores
        });
        let scores = scores.as_deref().unwrap_or(logits);

        let token = if self.greedy {
            argmax(scores)
        } else {
            self.draw(scores).unwrap_or_else(|| argmax(scores))
        };
        Sampled {
            token,
            logprob: if logits.is_empty() {
                f32::NEG_INFINITY
            } else {
                log_softmax_at(logits, token as usize)
            },
        }
    }

    /// A draw from the tempered, truncated distribution of finite
    /// `scores`; `None` when no candidate has a usable probability.
    fn draw(&mut self, scores: &[f32]) -> Option<u32> {
        let inv_t = 1.0 / self.temperature;
        let best = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut candidates: Vec<(u32, f32)> = scores
            .iter()
            .enumerate()
            .filter(|(_, s)| (best - **s) * inv_t <= NEGLIGIBLE)
            .map(|(i, s)| (i as u32, (s - best) * inv_t))
            .collect();
        candidates.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if let Some(k) = self.top_k {
            candidates.truncate(k);
        }
        let mut probs: Vec<f32> = candidates.iter().map(|(_, s)| s.exp()).collect();
        let total: f32 = probs.iter().sum();
        // The best candidate has exp(0) = 1, so an empty or non-finite
        // total means there is no distribution to draw from.
        if probs.is_empty() || !(total.is_finite() && total > 0.0) {
            return None;
        }
        probs.iter_mut().for_each(|p| *p /= total);
        if self.top_p < 1.0 {
            let mut mass = 0.0;
            let keep = probs
                .iter()
                .position(|p| {
                    mass += p;
                    mass >= self.top_p
                })
                .map_or(probs.len(), |i| i + 1);
            probs.truncate(keep);
            let total: f32 = probs.iter().sum();
            probs.iter_mut().for_each(|p| *p /= total);
        }
        // A uniform draw in [0, 1) from the top 24 bits.
        let u = (self.rng.next_u32() >> 8) as f32 / (1u32 << 24) as f32;
        let mut acc = 0.0;
        for (i, p) in probs.iter().enumerate() {
            acc += p;
            if u < acc {
                return Some(candidates[i].0);
            }
        }
        // Rounding left `acc` just under `u`: the last kept candidate.
        probs.len().checked_sub(1).map(|i| candidates[i].0)
    }
}

/// Make every score finite or -inf: NaN (a broken model row) can never be
/// chosen, +inf (an overflowed penalty) becomes the largest finite value.
fn sanitize(scores: &mut [f32]) {
    for s in scores {
        if s.is_nan() {
            *s = f32::NEG_INFINITY;
        } else if *s == f32::INFINITY {
            *s = f32::MAX;
        }
    }
}

/// `logits` with the CTRL repetition penalty applied to each token in
/// `seen` once.
fn penalize(logits: &[f32], seen: &[u32], penalty: f32) -> Vec<f32> {
    let mut out = logits.to_vec();
    let mut done = vec![false; out.len()];
    for &t in seen {
        let t = t as usize;
        if t < out.len() && !done[t] {
            done[t] = true;
            out[t] = if out[t] > 0.0 {
                out[t] / penalty
            } else {
                out[t] * penalty
            };
        }
    }
    out
}

/// The index of the largest value (the first, on ties; NaN never wins
/// unless every value is NaN; 0 for an empty slice).
pub fn argmax(values: &[f32]) -> u32 {
    let mut best: Option<usize> = None;
    for (i, v) in values.iter().enumerate() {
        if !v.is_nan() && best.is_none_or(|b| *v > values[b]) {
            best = Some(i);
        }
    }
    best.unwrap_or(0) as u32
}

/// `log softmax(logits)[index]`; `index` must be in range.
pub fn log_softmax_at(logits: &[f32], index: usize) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|l| f64::from(l - max).exp()).sum();
    (f64::from(logits[index] - max) - sum.ln()) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f32) -> SamplingParams {
        SamplingParams {
            temperature,
            ..SamplingParams::default()
        }
    }

    #[test]
    fn greedy_takes_the_best_and_reports_its_logprob() {
        let mut s = Sampler::new(&params(0.0), 1);
        let out = s.sample(&[0.0, 2.0, 1.0], &[]);
        assert_eq!(out.token, 1);
        let expected = 2.0 - (1f32.exp() + 2f32.exp() + 1.0).ln();
        assert!((out.logprob - expected).abs() < 1e-5);
    }

    #[test]
    fn same_seed_same_tokens() {
        let logits: Vec<f32> = (0..100).map(|i| (i % 7) as f32 * 0.3).collect();
        let run = |seed| {
            let mut s = Sampler::new(
                &SamplingParams {
                    seed: Some(seed),
                    temperature: 1.0,
                    ..SamplingParams::default()
                },
                0,
            );
            (0..20)
                .map(|_| s.sample(&logits, &[]).token)
                .collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn top_k_one_is_greedy() {
        let mut s = Sampler::new(
            &SamplingParams {
                temperature: 5.0,
                top_k: Some(1),
                ..SamplingParams::default()
            },
            3,
        );
        for _ in 0..20 {
            assert_eq!(s.sample(&[0.0, 1.0, 0.9], &[]).token, 1);
        }
    }

    #[test]
    fn top_p_keeps_the_nucleus() {
        // p = [0.5, 0.3, 0.2] at temperature 1: top-p 0.6 keeps two tokens.
        let logits = [0.5f32.ln(), 0.3f32.ln(), 0.2f32.ln()];
        let mut s = Sampler::new(
            &SamplingParams {
                temperature: 1.0,
                top_p: 0.6,
                ..SamplingParams::default()
            },
            9,
        );
        let drawn: Vec<u32> = (0..200).map(|_| s.sample(&logits, &[]).token).collect();
        assert!(!drawn.contains(&2));
        assert!(drawn.contains(&0) && drawn.contains(&1));
    }

    /// Regression: `temperature: 1e-40` made `1 / t` infinite, every
    /// candidate was filtered out and `probs.len() - 1` underflowed on the
    /// engine thread, killing the model for every client.
    #[test]
    fn degenerate_settings_never_panic() {
        let rows: [&[f32]; 6] = [
            &[0.5, 2.0, -1.0, 2.0],
            &[f32::NAN, 1.0, f32::NAN],
            &[f32::NEG_INFINITY; 3],
            &[f32::INFINITY, 1.0, f32::INFINITY],
            &[f32::NAN; 3],
            &[-f32::MAX, f32::MAX, 0.0],
        ];
        let tiny = [0.0, 1e-40, f32::MIN_POSITIVE, 1e-5, 1.0, 2.0, 1e30];
        for &temperature in &tiny {
            for &repetition_penalty in &[1e-40, 1e-5, 0.5, 1.0, 100.0, 1e30] {
                for &top_p in &[1e-40, 0.5, 1.0] {
                    let params = SamplingParams {
                        temperature,
                        repetition_penalty,
                        top_p,
                        top_k: Some(2),
                        ..SamplingParams::default()
                    };
                    let mut s = Sampler::new(&params, 4);
                    for row in rows {
                        let out = s.sample(row, &[0, 1, 2]);
                        assert!((out.token as usize) < row.len(), "{params:?} {row:?}");
                    }
                }
            }
        }
        assert_eq!(Sampler::new(&params(1.0), 0).sample(&[], &[]).token, 0);
    }

    #[test]
    fn tiny_temperature_and_penalty_are_greedy() {
        let logits = [0.1f32, 3.0, 2.9];
        for params in [
            params(1e-40),
            SamplingParams {
                temperature: 1.0,
                repetition_penalty: 1e-40,
                ..SamplingParams::default()
            },
        ] {
            let mut s = Sampler::new(&params, 11);
            for _ in 0..50 {
                assert_eq!(s.sample(&logits, &[]).token, 1, "{params:?}");
            }
        }
    }

    #[test]
    fn nan_never_wins_argmax() {
        assert_eq!(argmax(&[f32::NAN, 1.0, 3.0, f32::NAN]), 2);
        assert_eq!(argmax(&[]), 0);
    }

    #[test]
    fn repetition_penalty_steers_away_from_seen_tokens() {
        let mut s = Sampler::new(
            &SamplingParams {
                temperature: 0.0,
                repetition_penalty: 2.0,
                ..SamplingParams::default()
            },
            0,
        );
        assert_eq!(s.sample(&[3.0, 2.0], &[0]).token, 1);
        assert_eq!(s.sample(&[3.0, 2.0], &[]).token, 0);
    }
}
