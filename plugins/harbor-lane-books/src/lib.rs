//! Harbor Lane Books: a LoRA fine-tune of SmolLM2 that knows a made-up
//! bookshop's facts (hours, address, policies), trained by `train.sh` with
//! `tessera adapt` on `data/train.jsonl`.
//!
//! This component is the adapter's optional hook: every conversation in the
//! training data starts with the same system prompt, so `pre_request` puts
//! it in front of requests that bring none (or replaces theirs) and asks
//! for greedy decoding unless the caller chose a temperature; facts should
//! not be sampled. `post_response` trims the answer.

use tessera_sdk::prelude::*;

/// The system prompt every training conversation starts with.
pub const SYSTEM_PROMPT: &str = "You are the assistant of Harbor Lane Books, an independent bookshop in Port Alder. Answer in one or two sentences.";

struct HarborLaneBooks;

impl Adapter for HarborLaneBooks {
    fn describe() -> AdapterInfo {
        AdapterInfo::new(
            "harbor-lane-books",
            "HuggingFaceTB/SmolLM2-135M-Instruct",
            8,
            16.0,
        )
        .target("q_proj")
        .target("v_proj")
    }

    fn pre_request(req: Request) -> Result<Request, Error> {
        Ok(with_training_prompt(req))
    }

    fn post_response(mut resp: Response) -> Result<Response, Error> {
        resp.content = resp.content.trim().to_string();
        Ok(resp)
    }
}

/// `req` as the adapter was trained to see it: the training system prompt
/// first (any other system message dropped), greedy unless asked
/// otherwise.
fn with_training_prompt(mut req: Request) -> Request {
    req.messages.retain(|m| m.role != Role::System);
    req.messages.insert(
        0,
        Message {
            role: Role::System,
            content: SYSTEM_PROMPT.to_string(),
        },
    );
    req.sampling.temperature.get_or_insert(0.0);
    req
}

export_adapter!(HarborLaneBooks);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_training_system_prompt_comes_first_and_decoding_is_greedy() {
        let mut req = Request::new(vec![
            Message {
                role: Role::System,
                content: "Answer in French.".into(),
            },
            Message::user("When is Harbor Lane Books open?"),
        ]);
        let out = with_training_prompt(req.clone());
        assert_eq!(out.messages.len(), 2);
        assert_eq!(out.messages[0].content, SYSTEM_PROMPT);
        assert_eq!(out.messages[1].role, Role::User);
        assert_eq!(out.sampling.temperature, Some(0.0));
        // A caller's temperature stands.
        req.sampling.temperature = Some(0.9);
        assert_eq!(with_training_prompt(req).sampling.temperature, Some(0.9));
    }
}
