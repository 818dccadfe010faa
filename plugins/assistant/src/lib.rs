//! Assistant: the base model with a short system prompt. Its answer comes
//! from one `model::stream_answer` call, so a streaming client sees the
//! tokens as they are generated.

use tessera_sdk::prelude::*;

/// Put first unless the caller sent its own system message.
const SYSTEM: &str =
    "You are a helpful, concise assistant. Answer accurately; say so when you do not know.";

struct Assistant;

impl Expert for Assistant {
    fn handle(req: Request) -> Result<Response, Error> {
        req.require_user_message()?;
        let mut messages = req.messages.clone();
        if !messages.iter().any(|m| m.role == Role::System) {
            messages.insert(0, Message::system(SYSTEM));
        }
        // The confidence is the mean token probability, for cascades.
        let answer = model::stream_answer(&messages, &req.sampling)?;
        Ok(Response::from_completion(answer))
    }
}

export_expert!(Assistant);
