//! `/v1/completions` with `echo: true`: the prompt's tokens and their
//! log-probabilities, what OpenAI's legacy API returned for scoring text
//! and what another host's upstream `score` reads (`inference::upstream`).
//!
//! Supported for scoring only: one prompt, `n` 1, not streamed, greedy,
//! `max_tokens` 0 or 1 (with 1, the model's next token follows the echo).

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{ApiError, AppState, Served, openai};
use crate::ensemble::Target;
use crate::inference::{Finish, GenerateRequest, Prompt, SamplingParams};

/// `POST /v1/completions`: echo requests here, the rest to the common
/// completion path.
pub(super) async fn completions(
    state: State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let echo = body.as_ref().is_ok_and(|b| {
        serde_json::from_slice::<Value>(b).is_ok_and(|v| v.get("echo") == Some(&Value::Bool(true)))
    });
    if !echo {
        return super::chat::answer::<openai::CompletionRequest>(state, headers, body).await;
    }
    let mut served = Served::default();
    let mut response = match echo_completion(&state, body, &mut served).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    response.extensions_mut().insert(served);
    response
}

fn refuse(param: &str, why: &str) -> ApiError {
    ApiError::invalid(
        Some(param.into()),
        format!(
            "{why}: `echo: true` is for scoring a text (one prompt, n 1, not streamed, temperature 0, max_tokens 0 or 1)"
        ),
    )
}

async fn echo_completion(
    state: &AppState,
    body: Result<Bytes, BytesRejection>,
    served: &mut Served,
) -> Result<Response, ApiError> {
    let body = super::chat::body_bytes(body)?;
    let req: openai::CompletionRequest = openai::parse_request(&body)?;
    let prompt = match &req.prompt {
        openai::Prompt::One(p) => p.clone(),
        openai::Prompt::Many(v) if v.len() == 1 => v[0].clone(),
        openai::Prompt::Many(_) => return Err(refuse("prompt", "several prompts")),
    };
    if prompt.is_empty() {
        return Err(refuse("prompt", "the prompt is empty"));
    }
    if req.suffix.is_some() {
        return Err(refuse("suffix", "`suffix` with echo"));
    }
    if req.logprobs.is_some_and(|k| k > 1) {
        return Err(refuse(
            "logprobs",
            "more than the chosen token's log-probability",
        ));
    }
    let c = &req.common;
    if c.n.is_some_and(|n| n != 1) {
        return Err(refuse("n", "more than one choice"));
    }
    if c.stream {
        return Err(refuse("stream", "streaming"));
    }
    if c.temperature.is_some_and(|t| t != 0.0) {
        return Err(refuse("temperature", "sampling"));
    }
    let max_tokens = c.max_completion_tokens.or(c.max_tokens).unwrap_or(0);
    if max_tokens > 1 {
        return Err(refuse("max_tokens", "generating more than one token"));
    }
    let target = state
        .ensemble()
        .resolve(&req.model)
        .map_err(|e| ApiError::unknown_model(&e.asked, &e.known))?;
    served.model = state.ensemble().canonical_id(&target);
    let (engine, adapter) = match target {
        Target::Base => (state.ensemble().model().clone(), None),
        Target::Adapter(name) => (state.ensemble().model().clone(), Some(name)),
        Target::Model(engine) => (engine, None),
        _ => {
            return Err(refuse(
                "model",
                &format!("`{}` is not a language model", req.model),
            ));
        }
    };
    let _admitted = state.admission().admit(&served.model).await?;
    let echoed = engine
        .echo(prompt.clone(), adapter.clone())
        .await
        .map_err(|e| ApiError::from_model(&e))?;
    let prompt_tokens = echoed.tokens.len() as u32;
    let mut text = prompt.clone();
    let mut tokens = echoed.tokens;
    let mut logprobs = echoed.logprobs;
    let mut offsets = echoed.offsets;
    let mut completion_tokens = 0;
    if max_tokens == 1 {
        let params = SamplingParams {
            temperature: 0.0,
            max_tokens: 1,
            ..SamplingParams::default()
        };
        let request = GenerateRequest {
            prompt: Prompt::Text(prompt.clone()),
            params,
            adapter,
        };
        let generation = engine
            .generate(request, None)
            .await
            .map_err(|e| ApiError::from_model(&e))?;
        for (token, logprob) in &generation.token_logprobs {
            offsets.push(text.chars().count() as u32);
            text.push_str(token);
            tokens.push(token.clone());
            logprobs.push(Some(*logprob));
        }
        completion_tokens = generation.completion_tokens;
    }
    served.prompt_tokens = prompt_tokens;
    served.completion_tokens = completion_tokens;
    let finish = if max_tokens == 0 || completion_tokens == 1 {
        Finish::Length
    } else {
        Finish::Stop
    };
    Ok(axum::Json(json!({
        "id": format!("cmpl-{}", uuid::Uuid::new_v4().simple()),
        "object": "text_completion",
        "created": super::unix_now(),
        "model": req.model,
        "choices": [{
            "index": 0,
            "text": text,
            "logprobs": {
                "tokens": tokens,
                "token_logprobs": logprobs,
                "text_offset": offsets,
                "top_logprobs": null,
            },
            "finish_reason": if finish == Finish::Length { "length" } else { "stop" },
        }],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }))
    .into_response())
}
