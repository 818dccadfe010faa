//! Calibrated confidence for cascades.
//!
//! An expert's confidence (its own report, or the mean token probability
//! of its model calls) is a score, not a probability: a small model is
//! often sure and wrong. A calibration maps it to how often answers with
//! that score were right on a labelled development set: per expert, the
//! isotonic regression (pool-adjacent-violators) of correctness on
//! confidence, a non-decreasing step function. A cascade that accepts a
//! stage when the calibrated value reaches its threshold is then right at
//! least that often on the development set, by construction: every step
//! at or above the threshold holds answers right at least that often.
//!
//! `tessera eval --calibrate FILE` writes one from a run of
//! `tessera/auto:cascade`; `tessera serve --cascade-calibration FILE` uses
//! it.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Fewest samples an expert needs for a curve of its own; with fewer, the
/// pooled curve of all experts applies.
pub const MIN_SAMPLES: usize = 8;
/// Largest calibration file read.
pub const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;
/// Most steps kept per curve.
const MAX_STEPS: usize = 256;

/// One step of a curve: confidences from `from` up (to the next step)
/// were right this share of the time, over `samples` answers.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Step {
    /// Lowest confidence of the step.
    pub from: f32,
    /// Share of its answers that were right.
    pub right: f32,
    /// Answers in it.
    pub samples: u32,
}

/// Confidence → observed accuracy, per expert and pooled.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Calibration {
    /// Format version (1).
    pub version: u32,
    /// What it was fitted on (a file name and its sha256, for the record).
    #[serde(default)]
    pub source: String,
    /// Curves of experts with at least [`MIN_SAMPLES`] samples.
    #[serde(default)]
    pub experts: BTreeMap<String, Vec<Step>>,
    /// The curve of all samples together.
    #[serde(default)]
    pub pooled: Vec<Step>,
}

/// One observed answer: who, how confident, whether it was right.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The expert that answered.
    pub expert: String,
    /// Its confidence (0..1).
    pub confidence: f32,
    /// Whether the answer passed the item's check.
    pub right: bool,
}

impl Calibration {
    /// Fit curves to `samples`.
    pub fn fit(samples: &[Sample], source: &str) -> Calibration {
        let mut by_expert: BTreeMap<&str, Vec<(f32, bool)>> = BTreeMap::new();
        for s in samples.iter().filter(|s| s.confidence.is_finite()) {
            by_expert
                .entry(&s.expert)
                .or_default()
                .push((s.confidence.clamp(0.0, 1.0), s.right));
        }
        let pooled: Vec<(f32, bool)> = by_expert.values().flatten().copied().collect();
        Calibration {
            version: 1,
            source: source.to_string(),
            experts: by_expert
                .into_iter()
                .filter(|(_, v)| v.len() >= MIN_SAMPLES)
                .map(|(k, v)| (k.to_string(), isotonic(v)))
                .collect(),
            pooled: isotonic(pooled),
        }
    }

    /// Read and check a calibration file.
    pub fn load(path: &Path) -> anyhow::Result<Calibration> {
        use anyhow::Context;
        let len = std::fs::metadata(path)
            .with_context(|| format!("cannot read the calibration {}", path.display()))?
            .len();
        if len > MAX_FILE_BYTES {
            anyhow::bail!(
                "{}: {len} bytes; a calibration is at most {MAX_FILE_BYTES}",
                path.display()
            );
        }
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the calibration {}", path.display()))?;
        let c: Calibration = serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is not a calibration (write one with `tessera eval --calibrate`)",
                path.display()
            )
        })?;
        if c.version != 1 {
            anyhow::bail!(
                "{}: calibration version {} (this host reads 1)",
                path.display(),
                c.version
            );
        }
        for (name, curve) in c.experts.iter().chain([(&"pooled".to_string(), &c.pooled)]) {
            let sorted = curve.windows(2).all(|w| w[0].from <= w[1].from);
            let valid = curve
                .iter()
                .all(|s| (0.0..=1.0).contains(&s.from) && (0.0..=1.0).contains(&s.right));
            if !sorted || !valid || curve.len() > MAX_STEPS {
                anyhow::bail!(
                    "{}: the curve of `{name}` is not {MAX_STEPS} or fewer steps sorted by `from`, with values in 0..1",
                    path.display()
                );
            }
        }
        Ok(c)
    }

    /// How often an answer of `expert` with `confidence` was right; the
    /// pooled curve when the expert has none; `confidence` itself when the
    /// calibration has no curves.
    pub fn calibrate(&self, expert: &str, confidence: f32) -> f32 {
        let curve = self.experts.get(expert).unwrap_or(&self.pooled);
        match curve.iter().rev().find(|s| s.from <= confidence) {
            Some(step) => step.right,
            None => curve.first().map_or(confidence, |s| s.right),
        }
    }
}

/// Pool-adjacent-violators: the non-decreasing step function closest (in
/// squared error) to correctness sorted by confidence.
fn isotonic(mut points: Vec<(f32, bool)>) -> Vec<Step> {
    points.sort_by(|a, b| a.0.total_cmp(&b.0));
    // Blocks of (first confidence, right count, samples); equal
    // confidences always share a block.
    let mut blocks: Vec<(f32, f64, u32)> = Vec::new();
    for (confidence, right) in points {
        let r = f64::from(u8::from(right));
        match blocks.last_mut() {
            Some(last) if last.0 == confidence => {
                last.1 += r;
                last.2 += 1;
            }
            _ => blocks.push((confidence, r, 1)),
        }
        while blocks.len() >= 2 {
            let n = blocks.len();
            let (a, b) = (blocks[n - 2], blocks[n - 1]);
            if a.1 / f64::from(a.2) <= b.1 / f64::from(b.2) {
                break;
            }
            blocks[n - 2] = (a.0, a.1 + b.1, a.2 + b.2);
            blocks.pop();
        }
    }
    if blocks.len() > MAX_STEPS {
        // Keep the curve small: merge the lowest steps (they sit below any
        // useful threshold).
        let excess = blocks.len() - MAX_STEPS;
        let merged = blocks[..=excess]
            .iter()
            .fold((blocks[0].0, 0.0, 0), |acc, b| {
                (acc.0, acc.1 + b.1, acc.2 + b.2)
            });
        blocks.splice(..=excess, [merged]);
    }
    blocks
        .into_iter()
        .map(|(from, right, n)| Step {
            from,
            right: (right / f64::from(n)) as f32,
            samples: n,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(expert: &str, confidence: f32, right: bool) -> Sample {
        Sample {
            expert: expert.into(),
            confidence,
            right,
        }
    }

    #[test]
    fn the_curve_is_monotone_and_matches_the_data() {
        // Worked by hand: sorted (0.1 F)(0.2 T)(0.3 F)(0.6 T)(0.7 F)(0.9 T)(0.95 T)(0.99 T);
        // PAV pools (0.2 T, 0.3 F) -> 0.5 and (0.6 T, 0.7 F) -> 0.5, then
        // those two equal blocks stay apart (no violation).
        let data = [
            (0.1, false),
            (0.2, true),
            (0.3, false),
            (0.6, true),
            (0.7, false),
            (0.9, true),
            (0.95, true),
            (0.99, true),
        ];
        let samples: Vec<Sample> = data.iter().map(|(c, r)| sample("x", *c, *r)).collect();
        let c = Calibration::fit(&samples, "test");
        let curve = &c.experts["x"];
        let values: Vec<f32> = curve.iter().map(|s| s.right).collect();
        assert_eq!(values, [0.0, 0.5, 0.5, 1.0, 1.0, 1.0]);
        assert!(curve.windows(2).all(|w| w[0].right <= w[1].right));
        assert_eq!(c.calibrate("x", 0.65), 0.5);
        assert_eq!(c.calibrate("x", 0.92), 1.0);
        assert_eq!(c.calibrate("x", 0.05), 0.0);
        // An expert without enough samples gets the pooled curve.
        assert_eq!(c.calibrate("unknown", 0.92), 1.0);
    }

    #[test]
    fn accepting_at_a_threshold_is_right_at_least_that_often() {
        // A sure-but-often-wrong expert: raw 0.9 is right 40% of the time.
        let mut samples = Vec::new();
        for i in 0..10 {
            samples.push(sample("talker", 0.9, i < 4));
            samples.push(sample("tool", 1.0, true));
        }
        let c = Calibration::fit(&samples, "test");
        assert!((c.calibrate("talker", 0.9) - 0.4).abs() < 1e-6);
        assert_eq!(c.calibrate("tool", 1.0), 1.0);
        for threshold in [0.3_f32, 0.5, 0.8] {
            let accepted: Vec<&Sample> = samples
                .iter()
                .filter(|s| c.calibrate(&s.expert, s.confidence) >= threshold)
                .collect();
            let right = accepted.iter().filter(|s| s.right).count() as f32;
            assert!(right / accepted.len() as f32 >= threshold, "{threshold}");
        }
    }

    #[test]
    fn files_round_trip_and_bad_ones_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let samples: Vec<Sample> = (0..10)
            .map(|i| sample("a", i as f32 / 10.0, i > 4))
            .collect();
        let c = Calibration::fit(&samples, "dev.jsonl");
        let path = dir.path().join("c.json");
        std::fs::write(&path, serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(Calibration::load(&path).unwrap(), c);
        std::fs::write(&path, r#"{"version": 1, "pooled": [{"from": 0.9, "right": 1, "samples": 1}, {"from": 0.1, "right": 0, "samples": 1}]}"#).unwrap();
        let e = Calibration::load(&path).unwrap_err().to_string();
        assert!(e.contains("sorted"), "{e}");
        std::fs::write(&path, "{}").unwrap();
        assert!(Calibration::load(&path).is_err());
    }
}
