//! `/v1/embeddings`.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::{ApiError, AppState, MAX_EMBED_INPUTS, Served, openai};
use crate::ensemble::Target;

pub(super) async fn embeddings(
    State(state): State<AppState>,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let mut served = Served::default();
    let result = embed(&state, body, &mut served).await;
    let mut response = match result {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    response.extensions_mut().insert(served);
    response
}

async fn embed(
    state: &AppState,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
    served: &mut Served,
) -> Result<Response, ApiError> {
    use base64::Engine as _;
    let body = super::chat::body_bytes(body)?;
    let req: openai::EmbeddingRequest = openai::parse(&body)?;
    let target = state
        .ensemble()
        .resolve(&req.model)
        .map_err(|e| ApiError::unknown_model(&e.asked, &e.known))?;
    served.model = state.ensemble().canonical_id(&target);
    let engine = match target {
        Target::Embedder => state.ensemble().model().clone(),
        // An upstream model: its server embeds (or says it cannot).
        Target::Model(engine) => engine,
        _ => {
            return Err(ApiError::invalid(
                Some("model".into()),
                format!(
                    "`{}` is not an embedding model; use {}",
                    req.model,
                    state
                        .ensemble()
                        .model()
                        .embedder_name()
                        .unwrap_or("the embedding model listed in /v1/models")
                ),
            ));
        }
    };
    let texts = match req.input {
        openai::EmbeddingInput::One(t) => vec![t],
        openai::EmbeddingInput::Many(v) => v,
        openai::EmbeddingInput::Tokens(_) => {
            return Err(ApiError::invalid(
                Some("input".into()),
                "`input` must be a string or a list of strings (token ids are not supported)",
            ));
        }
    };
    if texts.is_empty() || texts.len() > MAX_EMBED_INPUTS {
        return Err(ApiError::invalid(
            Some("input".into()),
            format!(
                "`input` must hold 1 to {MAX_EMBED_INPUTS} texts, got {}",
                texts.len()
            ),
        ));
    }
    if let Some(i) = texts.iter().position(|t| t.is_empty()) {
        return Err(ApiError::invalid(
            Some(format!("input[{i}]")),
            "an input text is empty",
        ));
    }
    let base64 = match req.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::invalid(
                Some("encoding_format".into()),
                format!("`encoding_format` must be `float` or `base64`, got `{other}`"),
            ));
        }
    };
    let _admitted = state.admission().admit(&served.model).await?;
    let vectors = engine
        .embed(texts.clone())
        .await
        .map_err(|e| ApiError::from_model(&e))?;
    if let (Some(d), Some(v)) = (req.dimensions, vectors.first())
        && d as usize != v.len()
    {
        return Err(ApiError::invalid(
            Some("dimensions".into()),
            format!(
                "this model's embeddings have {} dimensions, not {d}",
                v.len()
            ),
        ));
    }
    let tokens: u32 = texts
        .iter()
        .map(|t| t.split_whitespace().count() as u32)
        .sum();
    served.prompt_tokens = tokens;
    let data: Vec<_> = vectors
        .iter()
        .enumerate()
        .map(|(index, v)| {
            let embedding = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(v)
            };
            json!({ "object": "embedding", "index": index, "embedding": embedding })
        })
        .collect();
    Ok(axum::Json(json!({
        "object": "list",
        "data": data,
        "model": req.model,
        "usage": { "prompt_tokens": tokens, "total_tokens": tokens },
    }))
    .into_response())
}
