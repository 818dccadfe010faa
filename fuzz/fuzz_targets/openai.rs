//! OpenAI request bodies: parsed and checked exactly as the server does.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_host::server::openai::{
    ChatRequest, CompletionRequest, EmbeddingRequest, parse, parse_request,
};

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = parse_request::<ChatRequest>(data) {
        let _ = req.check();
        let _ = req.messages();
        let _ = req.common.check(256);
    }
    if let Ok(req) = parse_request::<CompletionRequest>(data) {
        let _ = req.prompts();
        let _ = req.common.check(16);
    }
    let _ = parse::<EmbeddingRequest>(data);
});
