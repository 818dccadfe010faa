//! The ledger of one invocation: what it may spend, what it spent, and
//! the host calls its trace will list.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use super::record::MAX_RECORDED_RESULT_BYTES;
use super::{CallResult, HostCall, LogLine, Outcome, SamplingUsed, TokenCount, Trace};
use crate::sandbox::Limits;

/// What one invocation spent and did, written by every capability: its
/// budgets and the counters checked against them, and the host calls and
/// log lines of its trace. The invocation's [`Trace`] is made from it.
#[derive(Debug)]
pub(crate) struct Ledger {
    /// The expert, for messages.
    pub(crate) expert: String,
    pub(crate) limits: Limits,
    started: Instant,
    /// Host calls the whole request may still record (shared with nested
    /// invocations).
    pub(crate) trace_budget: Arc<AtomicUsize>,
    pub(crate) host_calls: Vec<HostCall>,
    pub(crate) host_calls_dropped: u64,
    pub(crate) logs: Vec<LogLine>,
    pub(crate) log_bytes: usize,
    pub(crate) logs_dropped: u64,
    /// Bytes of host-call results kept so far.
    recorded_bytes: usize,
    pub(crate) model_calls: u32,
    pub(crate) generated_tokens: u32,
    /// Tokens the model read: prompts of generations and scored text.
    pub(crate) read_tokens: u32,
    /// Sum of the log-probabilities of the tokens its model calls
    /// generated, and how many there were: the cascade's confidence when
    /// the expert reports none.
    pub(crate) logprob_sum: f64,
    pub(crate) logprob_tokens: u32,
    pub(crate) panic_message: Option<String>,
    pub(crate) initial_fuel: u64,
    /// Fuel burned when the guest last entered the host.
    pub(crate) fuel_at_host_entry: u64,
    /// Fuel of nested experts, charged when the current host call returns.
    pub(crate) pending_fuel_charge: u64,
    /// The host call whose `fuel_after` is set when it returns.
    pub(crate) open_call: Option<usize>,
    /// How many host entries are open: 1 inside a host function, 2 inside a
    /// libcall (an epoch check, say) of guest code the host called back
    /// into, such as `cabi_realloc` while a result is lowered.
    pub(crate) host_depth: u32,
}

/// How a host call ended, for its trace entry.
#[derive(Debug, Default)]
pub(crate) struct CallEnd {
    pub bytes_out: u64,
    /// Empty for a call that failed.
    pub output_sha256: String,
    pub tokens: Option<TokenCount>,
    /// The error returned to the guest.
    pub error: Option<String>,
    pub nested: Option<Trace>,
    pub sampling: Option<SamplingUsed>,
    /// What the guest got, for replay.
    pub result: Option<CallResult>,
}

impl CallEnd {
    /// A call that returned `error` to the guest.
    pub(crate) fn failed(error: &crate::bindings::types::Error) -> CallEnd {
        CallEnd {
            error: Some(crate::caps::error_line(error)),
            result: Some(CallResult::Error(error.into())),
            ..CallEnd::default()
        }
    }
}

/// A host call being recorded; see [`Ledger::begin_call`].
pub struct CallRecord {
    /// `None` when the trace budget was spent: the call is only counted.
    index: Option<usize>,
    started: Instant,
}

/// Longest error line kept in a trace entry: errors may quote what the
/// guest sent.
pub const MAX_TRACE_ERROR_BYTES: usize = 1024;

impl Ledger {
    /// An empty ledger for `expert` under `limits`, drawing trace entries
    /// from `trace_budget`.
    pub(crate) fn new(expert: &str, limits: Limits, trace_budget: Arc<AtomicUsize>) -> Ledger {
        Ledger {
            expert: expert.to_string(),
            limits,
            started: Instant::now(),
            trace_budget,
            host_calls: Vec::new(),
            host_calls_dropped: 0,
            logs: Vec::new(),
            log_bytes: 0,
            logs_dropped: 0,
            recorded_bytes: 0,
            model_calls: 0,
            generated_tokens: 0,
            read_tokens: 0,
            logprob_sum: 0.0,
            logprob_tokens: 0,
            panic_message: None,
            initial_fuel: limits.fuel,
            fuel_at_host_entry: 0,
            pending_fuel_charge: 0,
            open_call: None,
            host_depth: 0,
        }
    }

    /// Tokens the invocation may still generate.
    pub(crate) fn tokens_left(&self) -> u32 {
        self.limits
            .generated_tokens
            .saturating_sub(self.generated_tokens)
    }

    /// Model calls the invocation may still make.
    pub(crate) fn model_calls_left(&self) -> u32 {
        self.limits.model_calls.saturating_sub(self.model_calls)
    }

    /// Fuel left when the guest last entered the host, less what nested
    /// experts burned since.
    pub(crate) fn fuel_left(&self) -> u64 {
        self.initial_fuel
            .saturating_sub(self.fuel_at_host_entry)
            .saturating_sub(self.pending_fuel_charge)
    }

    pub(crate) fn elapsed_us(&self) -> u64 {
        self.started.elapsed().as_micros() as u64
    }

    /// Start recording a host call.
    pub(crate) fn begin_call(
        &mut self,
        interface: &str,
        function: &str,
        bytes_in: u64,
        input_sha256: String,
    ) -> CallRecord {
        let fuel = self.fuel_at_host_entry;
        let at_us = self.elapsed_us();
        let spent = self
            .trace_budget
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                left.checked_sub(1)
            })
            .is_err();
        if spent {
            self.host_calls_dropped += 1;
            self.open_call = None;
            return CallRecord {
                index: None,
                started: Instant::now(),
            };
        }
        self.host_calls.push(HostCall {
            interface: interface.to_string(),
            function: function.to_string(),
            at_us,
            duration_us: 0,
            bytes_in,
            bytes_out: 0,
            fuel_before: fuel,
            fuel_after: fuel,
            tokens: None,
            error: None,
            nested: None,
            input_sha256,
            output_sha256: String::new(),
            sampling: None,
            result: None,
        });
        let index = self.host_calls.len() - 1;
        self.open_call = Some(index);
        CallRecord {
            index: Some(index),
            started: Instant::now(),
        }
    }

    /// Finish recording a host call.
    pub(crate) fn end_call(&mut self, record: CallRecord, end: CallEnd) {
        let Some(index) = record.index else { return };
        let call = &mut self.host_calls[index];
        call.duration_us = record.started.elapsed().as_micros() as u64;
        call.bytes_out = end.bytes_out;
        call.output_sha256 = end.output_sha256;
        call.tokens = end.tokens;
        call.error = end
            .error
            .map(|e| crate::text::ellipsize(&e, MAX_TRACE_ERROR_BYTES));
        call.nested = end.nested.map(Box::new);
        call.sampling = end.sampling;
        if let Some(result) = end.result {
            let size = result.size();
            if self.recorded_bytes + size <= MAX_RECORDED_RESULT_BYTES {
                self.recorded_bytes += size;
                call.result = Some(result);
            }
        }
    }
}

/// What the sandbox saw of a finished invocation, beside its ledger.
pub(crate) struct Ran {
    pub version: String,
    pub component_sha256: String,
    pub depth: u32,
    pub started_at_unix_ms: u64,
    pub wasi_random_seed: u64,
    pub duration_us: u64,
    pub fuel_left: u64,
    pub peak_memory_bytes: u64,
    pub stdout: String,
    pub stderr: String,
    pub output_dropped_bytes: u64,
    pub outcome: Outcome,
}

impl Trace {
    /// The trace of an invocation that ran: what its ledger recorded and
    /// what the sandbox saw.
    pub(crate) fn finish(ledger: Ledger, ran: Ran) -> Trace {
        Trace {
            expert: ledger.expert,
            version: ran.version,
            component_sha256: ran.component_sha256,
            depth: ran.depth,
            limits: ledger.limits,
            started_at_unix_ms: ran.started_at_unix_ms,
            wasi_random_seed: ran.wasi_random_seed,
            duration_us: ran.duration_us,
            fuel_consumed: ledger.limits.fuel.saturating_sub(ran.fuel_left),
            peak_memory_bytes: ran.peak_memory_bytes,
            model_calls: ledger.model_calls,
            generated_tokens: ledger.generated_tokens,
            read_tokens: ledger.read_tokens,
            mean_logprob: (ledger.logprob_tokens > 0)
                .then(|| (ledger.logprob_sum / f64::from(ledger.logprob_tokens)) as f32),
            host_calls: ledger.host_calls,
            host_calls_dropped: ledger.host_calls_dropped,
            logs: ledger.logs,
            logs_dropped: ledger.logs_dropped,
            stdout: ran.stdout,
            stderr: ran.stderr,
            output_dropped_bytes: ran.output_dropped_bytes,
            outcome: ran.outcome,
        }
    }
}
