//! Streamed answers as server-sent events.

use std::convert::Infallible;

use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::{StreamExt as _, stream};
use serde::Serialize;
use tokio::sync::mpsc;

use super::AppState;
use super::admission::Admitted;
use super::chat::{Plan, answer_error, record_outcome};
use super::error::ApiError;
use super::metrics::ExpertLabels;
use super::render::Chunk;
use super::track::{RequestRecord, Served};

/// Events buffered for a slow streaming client before generation waits.
const STREAM_BUFFER: usize = 64;

/// What the generating side of a stream sends to the response.
enum Message {
    Event(Event),
    /// A failure before anything was sent: answered with its status.
    Failed(ApiError),
}

/// Start generating, wait for the first text (or a failure, which gets
/// its own HTTP status), then stream the rest as server-sent events. The
/// stream records its own request line and metrics when it ends.
pub(super) async fn respond(
    state: AppState,
    plan: Plan,
    admitted: Admitted,
    mut served: Served,
) -> Response {
    let (tx, mut rx) = mpsc::channel::<Message>(STREAM_BUFFER);
    let mut record = RequestRecord::new(
        plan.endpoint.label(),
        &plan.request_id,
        plan.started,
        served.model.clone(),
    );
    record.stream = true;
    let driver_state = state.clone();
    tokio::spawn(async move {
        let _admitted = admitted;
        let outcome = tokio::select! {
            // The client went away: dropping `produce` drops the
            // invocation and the engine's reply channel, which cancels the
            // generation.
            _ = tx.closed() => None,
            outcome = produce(&driver_state, &plan, &tx) => Some(outcome),
        };
        match outcome {
            None => {
                driver_state
                    .metrics()
                    .cancelled
                    .get_or_create(&ExpertLabels {
                        expert: record.model.clone(),
                    })
                    .inc();
                record.status = 499;
            }
            Some(Ok((prompt, completion))) => {
                record.status = 200;
                record.prompt_tokens = prompt;
                record.completion_tokens = completion;
            }
            Some(Err(status)) => record.status = status,
        }
        record.finish(&driver_state);
    });

    served.streaming = true;
    let first = match rx.recv().await {
        Some(Message::Event(event)) => event,
        // Recorded by the driver; not again by `track`.
        Some(Message::Failed(error)) => return error.with(served),
        None => return ApiError::internal("-").with(served),
    };
    let rest = stream::unfold(rx, |mut rx| async move {
        match rx.recv().await {
            Some(Message::Event(event)) => Some((Ok::<_, Infallible>(event), rx)),
            _ => None,
        }
    });
    let events = stream::iter([Ok(first)]).chain(rest);
    let mut response = Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response();
    response.extensions_mut().insert(served);
    response
}

fn event(value: &impl Serialize) -> Event {
    Event::default().data(serde_json::to_string(value).unwrap_or_default())
}

fn done() -> Message {
    Message::Event(Event::default().data("[DONE]"))
}

/// Generate and send the events of one stream. Returns the token counts,
/// or the status of a failure.
async fn produce(
    state: &AppState,
    plan: &Plan,
    tx: &mpsc::Sender<Message>,
) -> Result<(u32, u32), u16> {
    let (delta_tx, mut delta_rx) = mpsc::unbounded_channel();
    let work = state.ensemble().answer(
        &plan.target,
        plan.decision.as_ref(),
        &plan.asks[0],
        0,
        Some(delta_tx),
    );
    tokio::pin!(work);
    let header = plan.header();
    let send = |event: Event| async move { tx.send(Message::Event(event)).await.is_ok() };
    let mut streamed = String::new();
    let mut first = true;
    let mut send_text = async |text: &str, streamed: &mut String| {
        if first {
            state
                .metrics()
                .first_token
                .get_or_create(&ExpertLabels {
                    expert: plan.model.clone(),
                })
                .observe(plan.started.elapsed().as_secs_f64());
        }
        streamed.push_str(text);
        send(event(&Chunk::text(&header, text, first))).await;
        first = false;
    };
    let outcome = loop {
        tokio::select! {
            biased;
            Some(delta) = delta_rx.recv() => {
                if !delta.is_empty() {
                    send_text(&delta, &mut streamed).await;
                }
            }
            outcome = &mut work => break outcome,
        }
    };
    // Text sent after the last poll of the receiver.
    while let Ok(delta) = delta_rx.try_recv() {
        if !delta.is_empty() {
            send_text(&delta, &mut streamed).await;
        }
    }
    record_outcome(state, &outcome);
    let answer = match outcome.result {
        Ok(answer) => answer,
        Err(error) => {
            let error = answer_error(&error, plan.endpoint);
            let status = error.status.as_u16();
            if first {
                let _ = tx.send(Message::Failed(error)).await;
            } else {
                send(Event::default().data(error.body().to_string())).await;
                let _ = tx.send(done()).await;
            }
            return Err(status);
        }
    };
    // An expert's answer may go on after (or trim) what `stream-answer`
    // streamed; send what the client has not seen yet.
    match remainder(&streamed, &answer.text) {
        Some(rest) if !rest.is_empty() => send_text(rest, &mut streamed).await,
        Some(_) => {}
        None => {
            let mut error = ApiError::internal(&plan.request_id);
            error.status = StatusCode::UNPROCESSABLE_ENTITY;
            error.kind = "expert_error";
            error.code = Some("stream_mismatch".into());
            error.message = "the expert's answer does not begin with the text it streamed (model.stream-answer); the streamed text is not its answer".into();
            send(Event::default().data(error.body().to_string())).await;
            let _ = tx.send(done()).await;
            return Err(422);
        }
    }
    send(event(&Chunk::last(
        &header,
        &answer,
        &outcome.traces,
        first,
    )))
    .await;
    if plan.options.include_usage {
        send(event(&Chunk::usage(&header, &answer))).await;
    }
    let _ = tx.send(done()).await;
    Ok((answer.prompt_tokens, answer.completion_tokens))
}

/// What of `answer` follows the `streamed` text, comparing without the
/// whitespace around both; `None` when the answer does not begin with it.
fn remainder<'a>(streamed: &str, answer: &'a str) -> Option<&'a str> {
    let s = streamed.trim();
    let a = answer.trim();
    let rest = a.strip_prefix(s)?;
    if streamed.is_empty() {
        return Some(answer);
    }
    Some(rest)
}

#[cfg(test)]
mod tests {
    use super::remainder;

    #[test]
    fn the_remainder_follows_the_streamed_text() {
        assert_eq!(remainder("", "whole answer"), Some("whole answer"));
        assert_eq!(remainder("The answer", "The answer is 4."), Some(" is 4."));
        assert_eq!(remainder(" Paris \n", "Paris"), Some(""));
        assert_eq!(remainder("Paris", "London"), None);
    }
}
