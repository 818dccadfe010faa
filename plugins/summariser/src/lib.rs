//! Summariser: one model call with a summarising system prompt, streamed.
//! The length comes from the request metadata `sentences` (default 3).

use tessera_sdk::prelude::*;

/// Sentences when the caller does not say.
const DEFAULT_SENTENCES: u32 = 3;
/// Most sentences a caller may ask for.
const MAX_SENTENCES: u32 = 10;

struct Summariser;

impl Expert for Summariser {
    fn describe() -> ExpertInfo {
        ExpertInfo::new("summariser", "Summarises text in a few sentences.").tag("summary")
    }

    fn handle(req: Request) -> Result<Response, Error> {
        let text = req.require_user_message()?;
        let sentences = match req.metadata("sentences") {
            None => DEFAULT_SENTENCES,
            Some(n) => n
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=MAX_SENTENCES).contains(n))
                .ok_or_else(|| {
                    Error::invalid_input(format!(
                        "metadata `sentences` must be a number from 1 to {MAX_SENTENCES}, not \"{n}\""
                    ))
                })?,
        };
        let messages = [
            Message::system(format!(
                "You summarise text. Write at most {sentences} short sentences that keep the key facts. Do not add anything that is not in the text."
            )),
            Message::user(format!("Summarise this:\n\n{text}")),
        ];
        let sampling = req
            .sampling
            .clone()
            .max_tokens(req.sampling.max_tokens.unwrap_or(60 * sentences).min(256));
        let summary = model::stream_answer(&messages, &sampling)?;
        Ok(Response::from_completion(summary).with_metadata("sentences", sentences.to_string()))
    }
}

export_expert!(Summariser);
