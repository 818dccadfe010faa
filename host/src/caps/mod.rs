//! The host interfaces lent to experts, one file each. Every call checks the
//! bundle's grants and budgets and is recorded in the invocation's trace.
//!
//! As in wasmtime's WASI crates, each interface reaches only its own part
//! of a store's data through a view ([`ModelHost`](model::ModelHost),
//! [`ExpertsHost`](experts::ExpertsHost), [`LogHost`](log::LogHost)): its
//! context and the invocation's [`Ledger`](crate::audit::Ledger), never the
//! rest of the host.

mod experts;
mod log;
mod model;

use wasmtime::component::{HasSelf, Linker};

pub(crate) use experts::{ExpertsCtx, Invoker};
pub(crate) use model::ModelCtx;

use crate::bindings::{self, types};
use crate::sandbox::InvocationState;

// `types` declares no functions; its `Host` trait is empty.
impl types::Host for InvocationState {}

/// Link every Tessera interface, each to its own view of the store.
pub(crate) fn add_to_linker(linker: &mut Linker<InvocationState>) -> wasmtime::Result<()> {
    types::add_to_linker::<_, HasSelf<InvocationState>>(linker, |state| state)?;
    bindings::model::add_to_linker::<_, model::ModelCaps>(linker, |state| model::ModelHost {
        ctx: &state.model,
        ledger: &mut state.ledger,
    })?;
    bindings::experts::add_to_linker::<_, experts::ExpertsCaps>(linker, |state| {
        experts::ExpertsHost {
            ctx: &state.experts,
            ledger: &mut state.ledger,
        }
    })?;
    bindings::log::add_to_linker::<_, log::LogCaps>(linker, |state| log::LogHost {
        max_bytes: state.max_log_bytes,
        ledger: &mut state.ledger,
    })
}

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
