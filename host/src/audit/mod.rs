//! What validators read: a per-invocation trace of every host call, with
//! durations, bytes, fuel and tokens, and the WASI seed and clock a replay
//! would need. There are no signed receipts or replay yet (issue 12).

mod ledger;
mod trace;

pub use ledger::MAX_TRACE_ERROR_BYTES;
pub(crate) use ledger::{CallRecord, Ledger, Ran};
pub use trace::{HostCall, LogLine, Outcome, TokenCount, Trace};
