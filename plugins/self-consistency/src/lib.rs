//! Self-consistency: sample several answers with different seeds, reduce
//! each to its final answer, and return the answer most samples agree on.
//! The share of votes it got is the response's confidence.
//!
//! The number of samples comes from the request's `samples` metadata
//! (default 5, at most 9: the manifest allows 9 model calls).

use tessera_sdk::prelude::*;

const DEFAULT_SAMPLES: u32 = 5;
const MAX_SAMPLES: u32 = 9;
const SAMPLE_TOKENS: u32 = 256;
const TEMPERATURE: f32 = 0.8;

struct SelfConsistency;

impl Expert for SelfConsistency {
    fn handle(req: Request) -> Result<Response, Error> {
        let question = req.require_user_message()?;
        let samples = match req.metadata("samples") {
            Some(s) => s
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=MAX_SAMPLES).contains(n))
                .ok_or_else(|| {
                    Error::invalid_input(format!(
                        "metadata `samples` must be a whole number from 1 to {MAX_SAMPLES}, got {s:?}"
                    ))
                })?,
            None => DEFAULT_SAMPLES,
        };
        let base_seed = req.sampling.seed.unwrap_or(0);
        let messages = [
            Message::system(
                "Answer the question. Reason briefly, then write the final answer alone on the last line.",
            ),
            Message::user(question),
        ];

        let mut usage = Usage::default();
        let mut answers: Vec<(String, String)> = Vec::new();
        for i in 0..samples {
            let sampling = req
                .sampling
                .clone()
                .temperature(req.sampling.temperature.unwrap_or(TEMPERATURE))
                .seed(base_seed.wrapping_add(u64::from(i)))
                .max_tokens(req.sampling.max_tokens.unwrap_or(SAMPLE_TOKENS));
            let completion = model::chat(&messages, &sampling)?;
            usage += completion.usage;
            let key = final_answer(&completion.text);
            answers.push((key, completion.text.trim().to_string()));
        }

        let (winner, votes) = majority(&answers).ok_or_else(|| Error::internal("no samples"))?;
        let full = answers
            .iter()
            .find(|(k, _)| *k == winner)
            .map(|(_, text)| text.clone())
            .unwrap_or_default();
        log::with_fields(
            log::Level::Info,
            "vote",
            &[
                ("winner", &winner),
                ("votes", &format!("{votes}/{samples}")),
            ],
        );
        Ok(Response::new(full)
            .with_usage(usage)
            .with_confidence(votes as f32 / samples as f32)
            .with_metadata("votes", format!("{votes}/{samples}"))
            .with_metadata("answer", winner))
    }
}

export_expert!(SelfConsistency);

/// The part of a sample that votes: the last number if the last line has
/// one, else the last line, lowercased, without punctuation.
fn final_answer(text: &str) -> String {
    let last = text
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    let numbers: Vec<&str> = last
        .split(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-'))
        .map(|s| s.trim_matches(['.', '-']))
        .filter(|s| s.chars().any(|c| c.is_ascii_digit()))
        .collect();
    if let Some(n) = numbers.last() {
        return n.to_string();
    }
    last.chars()
        .filter(|c| c.is_alphanumeric() || c.is_whitespace())
        .collect::<String>()
        .to_lowercase()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// The most common key and its count; ties go to the earliest sample.
fn majority(answers: &[(String, String)]) -> Option<(String, usize)> {
    let mut best: Option<(String, usize)> = None;
    for (key, _) in answers {
        let count = answers.iter().filter(|(k, _)| k == key).count();
        if best.as_ref().is_none_or(|(_, c)| count > *c) {
            best = Some((key.clone(), count));
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn votes_on_final_numbers() {
        assert_eq!(
            final_answer("3 spiders have 24 legs.\nSo the total is 36."),
            "36"
        );
        assert_eq!(
            final_answer("Thinking...\n\nYes, it is PRIME!"),
            "yes it is prime"
        );
        let answers: Vec<(String, String)> = ["36", "34", "36"]
            .iter()
            .map(|k| (k.to_string(), String::new()))
            .collect();
        assert_eq!(majority(&answers), Some(("36".to_string(), 2)));
    }
}
