//! What validators read: a per-invocation trace of every host call, with
//! durations, bytes, fuel and tokens. Receipts and replay build on it.

mod trace;

pub use trace::{HostCall, LogLine, Outcome, TokenCount, Trace};
