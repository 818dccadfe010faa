//! Aggregator: the last step of a fan-out (`tessera/auto:moa`). The host
//! passes the experts' answers as request metadata (`answer-expert`,
//! `answer` pairs, read with [`Request::answers`]); the aggregator asks the
//! model for one answer that keeps what they agree on. When every answer
//! says the same, it returns that answer without a model call.

use tessera_sdk::prelude::*;

/// Longest answer passed on to the model, in bytes; longer ones are cut so
/// that several fit the context.
const MAX_ANSWER_BYTES: usize = 1500;

struct Aggregator;

impl Expert for Aggregator {
    fn handle(req: Request) -> Result<Response, Error> {
        let question = req.require_user_message()?;
        let answers = req.answers();
        if answers.is_empty() {
            return Err(Error::invalid_input(
                "no answers to combine: the aggregator expects metadata pairs `answer-expert` and `answer` (tessera/auto:moa sends them)",
            ));
        }
        if let Some(agreed) = unanimous(&answers) {
            return Ok(Response::new(agreed)
                .with_confidence(1.0)
                .with_metadata("aggregation", "unanimous"));
        }
        let messages = [
            Message::system(
                "Several experts answered the same question. Write one final answer for the user: keep what the experts agree on, prefer the most specific correct answer where they differ, and do not mention the experts.",
            ),
            Message::user(prompt(question, &answers)),
        ];
        let sampling = req
            .sampling
            .clone()
            .max_tokens(req.sampling.max_tokens.unwrap_or(256).min(512));
        let answer = model::stream_answer(&messages, &sampling)?;
        Ok(Response::from_completion(answer)
            .with_metadata("aggregation", "model")
            .with_metadata("answers", answers.len().to_string()))
    }
}

/// The one answer every expert gave, ignoring case and surrounding space.
pub fn unanimous<'a>(answers: &[(&str, &'a str)]) -> Option<&'a str> {
    let first = answers.first()?.1.trim();
    answers
        .iter()
        .all(|(_, a)| a.trim().eq_ignore_ascii_case(first))
        .then_some(first)
}

/// The question and the answers, for the model.
pub fn prompt(question: &str, answers: &[(&str, &str)]) -> String {
    let mut text = format!("Question: {question}\n");
    for (i, (expert, answer)) in answers.iter().enumerate() {
        let mut end = answer.len().min(MAX_ANSWER_BYTES);
        while !answer.is_char_boundary(end) {
            end -= 1;
        }
        let name = if expert.is_empty() {
            "an expert"
        } else {
            expert
        };
        text.push_str(&format!(
            "\nAnswer {} (from {name}):\n{}\n",
            i + 1,
            answer[..end].trim()
        ));
    }
    text.push_str("\nFinal answer:");
    text
}

export_expert!(Aggregator);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_pair_with_their_experts() {
        let req = Request::from_prompt("q")
            .with_metadata("answer-expert", "a")
            .with_metadata("answer", "one")
            .with_metadata("other", "x")
            .with_metadata("answer-expert", "b")
            .with_metadata("answer", "two");
        assert_eq!(req.answers(), [("a", "one"), ("b", "two")]);
        let text = prompt("q", &req.answers());
        assert!(text.contains("Answer 2 (from b):\ntwo"), "{text}");
    }

    #[test]
    fn unanimous_answers_need_no_model() {
        assert_eq!(unanimous(&[("a", " 42 "), ("b", "42")]), Some("42"));
        assert_eq!(unanimous(&[("a", "42"), ("b", "41")]), None);
    }
}
