//! What validators read: a per-invocation trace of every host call, with
//! durations, bytes, fuel and tokens, and the WASI seed and clock a replay
//! would need. There are no signed receipts or replay yet (issue 12).

mod digest;
mod ledger;
pub mod receipt;
mod trace;

pub use digest::Digest;
pub use ledger::MAX_TRACE_ERROR_BYTES;
pub(crate) use ledger::{CallEnd, CallRecord, Ledger, Ran};
pub use receipt::{Receipt, ReceiptBody, ReceiptError};
pub use trace::{HostCall, LogLine, Outcome, SamplingUsed, TokenCount, Trace};
