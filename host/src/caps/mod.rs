//! The host interfaces lent to experts, one file each. Every call checks the
//! bundle's grants and budgets and is recorded in the invocation's trace.

mod experts;
mod log;
mod model;

use crate::bindings::types;
use crate::sandbox::InvocationState;

// `types` declares no functions; its `Host` trait is empty.
impl types::Host for InvocationState {}

/// A guest error as a trace line: `kind: message`.
fn error_line(e: &types::Error) -> String {
    let (kind, message) = match e {
        types::Error::InvalidInput(m) => ("invalid-input", m),
        types::Error::Denied(m) => ("denied", m),
        types::Error::LimitExceeded(m) => ("limit-exceeded", m),
        types::Error::Model(m) => ("model", m),
        types::Error::Internal(m) => ("internal", m),
    };
    format!("{kind}: {message}")
}

/// Bytes a list of strings occupies, for the trace.
fn strings_len<'a>(strings: impl IntoIterator<Item = &'a String>) -> u64 {
    strings.into_iter().map(|s| s.len() as u64).sum()
}

/// Bytes of a request's content, for the trace.
fn request_len(req: &types::Request) -> u64 {
    strings_len(req.messages.iter().map(|m| &m.content))
        + req
            .metadata
            .iter()
            .map(|(k, v)| (k.len() + v.len()) as u64)
            .sum::<u64>()
}
