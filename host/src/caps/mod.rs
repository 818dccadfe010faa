//! The host interfaces lent to experts, one file each. Every call checks the
//! bundle's grants and budgets and is recorded in the invocation's trace.
//!
//! As in wasmtime's WASI crates, each interface reaches only its own part
//! of a store's data through a [`View`]: its context ([`ModelCtx`],
//! [`ExpertsCtx`], [`LogCtx`]) and the invocation's
//! [`Ledger`](crate::audit::Ledger), never the rest of the host.

mod experts;
mod log;
mod model;

use std::marker::PhantomData;

use wasmtime::component::{HasData, HasSelf, Linker};

pub(crate) use experts::{ExpertsCtx, Invoker, Nested};
pub(crate) use log::LogCtx;
pub(crate) use model::ModelCtx;

use crate::audit::Ledger;
use crate::bindings::{self, types};
use crate::sandbox::InvocationState;

/// One interface's view of a store: its own context and the ledger its
/// calls are recorded and charged in.
pub(crate) struct View<'a, C> {
    pub(crate) ctx: &'a C,
    pub(crate) ledger: &'a mut Ledger,
}

/// Marks, for `add_to_linker`, the interface whose context is `C`.
struct Caps<C>(PhantomData<C>);

impl<C: 'static> HasData for Caps<C> {
    type Data<'a> = View<'a, C>;
}

// `types` declares no functions; its `Host` trait is empty.
impl types::Host for InvocationState {}

/// Link every Tessera interface, each to its own view of the store.
pub(crate) fn add_to_linker(linker: &mut Linker<InvocationState>) -> wasmtime::Result<()> {
    types::add_to_linker::<_, HasSelf<InvocationState>>(linker, |state| state)?;
    bindings::model::add_to_linker::<_, Caps<ModelCtx>>(linker, |state| View {
        ctx: &state.model,
        ledger: &mut state.ledger,
    })?;
    bindings::experts::add_to_linker::<_, Caps<ExpertsCtx>>(linker, |state| View {
        ctx: &state.experts,
        ledger: &mut state.ledger,
    })?;
    bindings::log::add_to_linker::<_, Caps<LogCtx>>(linker, |state| View {
        ctx: &state.log,
        ledger: &mut state.ledger,
    })
}

/// A guest error as a trace line: `kind: message`.
pub(crate) fn error_line(e: &types::Error) -> String {
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

/// The digest of an expert request, under `label`; more parts may follow.
pub(crate) fn request_digest(label: &str, req: &types::Request) -> crate::audit::Digest {
    let mut d = crate::audit::Digest::new(label);
    for m in &req.messages {
        d = d
            .text(crate::inference::ChatRole::from(m.role).as_str())
            .text(&m.content);
    }
    d = d.num(req.messages.len() as u64).sampling(&req.sampling);
    for (k, v) in &req.metadata {
        d = d.text(k).text(v);
    }
    d.num(req.metadata.len() as u64)
}

/// The digest of an expert's response, under `label`.
pub(crate) fn response_digest(label: &str, resp: &types::Response) -> String {
    let mut d = crate::audit::Digest::new(label).text(&resp.content);
    for (k, v) in &resp.metadata {
        d = d.text(k).text(v);
    }
    d.num(resp.metadata.len() as u64)
        .opt(resp.confidence.map(|c| u64::from(c.to_bits())))
        .num(u64::from(resp.usage.prompt_tokens))
        .num(u64::from(resp.usage.completion_tokens))
        .finish()
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
