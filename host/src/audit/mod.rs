//! What validators read: a per-invocation trace of every host call (with
//! durations, bytes, fuel, tokens, digests and what each returned), the
//! WASI seed and clock a replay needs, signed receipts, records and the
//! store that keeps them.

mod digest;
mod ledger;
pub mod receipt;
pub mod record;
pub mod replay;
pub mod spotcheck;
pub mod store;
mod trace;
pub mod verdict;

pub use digest::Digest;
pub use ledger::MAX_TRACE_ERROR_BYTES;
pub(crate) use ledger::{CallEnd, CallRecord, Ledger, Ran};
pub use receipt::{Receipt, ReceiptBody, ReceiptError};
pub use record::{CallResult, Record, RecordError, RecordedRequest, RecordedResponse};
pub use store::AuditStore;
pub use trace::{HostCall, LogLine, Outcome, SamplingUsed, TokenCount, Trace};
