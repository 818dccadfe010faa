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
    temperature: f32,
    top_k: Option<usize>,
    top_p: f32,
    repetition_penalty: f32,
    rng: ChaCha8Rng,
}

impl Sampler {
    /// A sampler for `params`; `seed` is used when the params carry none.
    pub fn new(params: &SamplingParams, fallback_seed: u64) -> Sampler {
        Sampler {
            temperature: params.temperature,
            top_k: params.top_k.map(|k| k.max(1) as usize),
            top_p: params.top_p,
            repetition_penalty: params.repetition_penalty,
            rng: ChaCha8Rng::seed_from_u64(params.seed.unwrap_or(fallback_seed)),
        }
    }

    /// Pick the next token from `logits`, given the tokens `seen` so far
    /// (prompt and answer) for the repetition penalty.
    pub fn sample(&mut self, logits: &[f32], seen: &[u32]) -> Sampled {
        let penalized = (self.repetition_penalty != 1.0 && !seen.is_empty())
            .then(|| penalize(logits, seen, self.repetition_penalty));
        let scores = penalized.as_deref().unwrap_or(logits);

        let token = if self.temperature <= 0.0 {
            argmax(scores)
        } else {
            self.draw(scores)
        };
        Sampled {
            token,
            logprob: log_softmax_at(logits, token as usize),
        }
    }

    fn draw(&mut self, scores: &[f32]) -> u32 {
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
                return candidates[i].0;
            }
        }
        candidates[probs.len() - 1].0
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

/// The index of the largest value (the first, on ties).
pub fn argmax(values: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in values.iter().enumerate() {
        if *v > values[best] {
            best = i;
        }
    }
    best as u32
}

/// `log softmax(logits)[index]`.
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
