//! The data of one invocation's `Store`: limits, grants, the trace being
//! recorded and the (empty) WASI context.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::limiter::MemoryLimiter;
use super::limits::Limits;
use super::stdio::CappedOutput;
use crate::audit::{HostCall, LogLine, TokenCount, Trace};
use crate::bundle::Capabilities;
use crate::ensemble::Ensemble;

/// Store data for one invocation of one expert.
pub struct InvocationState {
    pub(crate) ensemble: Arc<Ensemble>,
    /// Expert names from the outermost caller to this expert (inclusive).
    pub(crate) call_stack: Vec<String>,
    pub(crate) capabilities: Capabilities,
    pub(crate) limits: Limits,
    pub(crate) started: Instant,
    pub(crate) deadline: Instant,
    /// `describe` runs with the model switched off.
    pub(crate) model_allowed: bool,
    /// Where `model.stream-answer` sends text: set for the outermost
    /// expert of a streaming request only.
    pub(crate) answer_stream: Option<crate::inference::Deltas>,
    pub(crate) limiter: MemoryLimiter,
    pub(crate) recorder: Recorder,
    /// Host calls the whole request may still record (shared with nested
    /// invocations).
    pub(crate) trace_budget: Arc<AtomicUsize>,
    stdout: CappedOutput,
    stderr: CappedOutput,
    table: ResourceTable,
    wasi: Option<WasiCtx>,
    /// Seeds `wasi:random` for this invocation (kept in the trace).
    pub(crate) wasi_seed: u64,
    /// What `wasi:clocks/wall-clock` says for the whole invocation:
    /// its start, in milliseconds since the Unix epoch (in the trace).
    pub(crate) wall_clock_unix_ms: u64,
    /// Epoch ticks this invocation has computed through.
    pub(crate) ticks: u32,
    /// Its place in the long-running lane, while it computes there.
    pub(crate) lane_place: LanePlace,
}

/// A long-running guest's place in the sandbox's long-running lane: filled
/// by the future its epoch callback yields to, emptied at the next tick or
/// host call, and when the invocation ends.
#[derive(Clone, Default)]
pub(crate) struct LanePlace(Arc<std::sync::Mutex<Option<tokio::sync::OwnedSemaphorePermit>>>);

impl LanePlace {
    pub(crate) fn hold(&self, permit: tokio::sync::OwnedSemaphorePermit) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(permit);
    }

    pub(crate) fn release(&self) {
        drop(self.0.lock().unwrap_or_else(|e| e.into_inner()).take());
    }
}

/// What the host calls of an invocation add to its trace.
#[derive(Debug, Default)]
pub(crate) struct Recorder {
    pub(crate) host_calls: Vec<HostCall>,
    pub(crate) host_calls_dropped: u64,
    pub(crate) logs: Vec<LogLine>,
    pub(crate) log_bytes: usize,
    pub(crate) logs_dropped: u64,
    pub(crate) model_calls: u32,
    pub(crate) generated_tokens: u32,
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

/// A host call being recorded; see [`InvocationState::begin_call`].
pub struct CallRecord {
    /// `None` when the trace budget was spent: the call is only counted.
    index: Option<usize>,
    started: Instant,
}

/// Longest error line kept in a trace entry: errors may quote what the
/// guest sent.
pub const MAX_TRACE_ERROR_BYTES: usize = 1024;

impl InvocationState {
    pub(crate) fn new(
        ensemble: Arc<Ensemble>,
        call_stack: Vec<String>,
        capabilities: Capabilities,
        limits: Limits,
        deadline: Instant,
    ) -> Self {
        let policy = ensemble.sandbox().policy();
        let stdio_cap = policy.max_stdio_bytes;
        InvocationState {
            call_stack,
            capabilities,
            limits,
            started: Instant::now(),
            deadline,
            model_allowed: true,
            answer_stream: None,
            limiter: MemoryLimiter::new(limits.memory_bytes),
            recorder: Recorder {
                initial_fuel: limits.fuel,
                ..Recorder::default()
            },
            trace_budget: Arc::new(AtomicUsize::new(policy.max_trace_entries)),
            stdout: CappedOutput::new(stdio_cap),
            stderr: CappedOutput::new(stdio_cap),
            table: ResourceTable::new(),
            wasi: None,
            wasi_seed: fresh_seed(),
            wall_clock_unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            ticks: 0,
            lane_place: LanePlace::default(),
            ensemble,
        }
    }

    /// The expert this state belongs to.
    pub(crate) fn expert_name(&self) -> &str {
        self.call_stack.last().map_or("", String::as_str)
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
    ) -> CallRecord {
        let fuel = self.recorder.fuel_at_host_entry;
        let at_us = self.elapsed_us();
        let spent = self
            .trace_budget
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                left.checked_sub(1)
            })
            .is_err();
        if spent {
            self.recorder.host_calls_dropped += 1;
            self.recorder.open_call = None;
            return CallRecord {
                index: None,
                started: Instant::now(),
            };
        }
        self.recorder.host_calls.push(HostCall {
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
        });
        let index = self.recorder.host_calls.len() - 1;
        self.recorder.open_call = Some(index);
        CallRecord {
            index: Some(index),
            started: Instant::now(),
        }
    }

    /// Finish recording a host call.
    pub(crate) fn end_call(
        &mut self,
        record: CallRecord,
        bytes_out: u64,
        tokens: Option<TokenCount>,
        error: Option<String>,
        nested: Option<Trace>,
    ) {
        let Some(index) = record.index else { return };
        let call = &mut self.recorder.host_calls[index];
        call.duration_us = record.started.elapsed().as_micros() as u64;
        call.bytes_out = bytes_out;
        call.tokens = tokens;
        call.error = error.map(|e| crate::text::ellipsize(&e, MAX_TRACE_ERROR_BYTES));
        call.nested = nested.map(Box::new);
    }

    /// What the guest wrote to stdout and stderr, and the bytes dropped.
    pub(crate) fn take_stdio(&self) -> (String, String, u64) {
        let (out, out_dropped) = self.stdout.take();
        let (err, err_dropped) = self.stderr.take();
        (out, err, out_dropped + err_dropped)
    }
}

/// Most bytes one `wasi:random` call may ask for (wasmtime's default is
/// 64 MiB, allocated by the host).
pub const MAX_WASI_RANDOM_BYTES: u64 = 64 * 1024;

/// Which ChaCha stream `wasi:random/insecure` draws from, apart from the
/// secure one.
const INSECURE_STREAM: u64 = 0x5DEE_CE66_D1CE_F00D;

/// A new per-invocation seed: not predictable by guests, recorded in the
/// trace.
fn fresh_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    // RandomState is keyed from the OS's random source once per process.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.finish()
}

/// `wasi:clocks/wall-clock` for one invocation: it stands still at the
/// invocation's start.
struct FrozenWallClock(std::time::Duration);

impl wasmtime_wasi::HostWallClock for FrozenWallClock {
    fn resolution(&self) -> std::time::Duration {
        std::time::Duration::from_millis(1)
    }

    fn now(&self) -> std::time::Duration {
        self.0
    }
}

/// `wasi:clocks/monotonic-clock` for one invocation: starts at 0 and
/// advances [`MONOTONIC_STEP_NS`] per reading, so elapsed times a guest
/// measures depend only on what it does.
#[derive(Default)]
struct SteppingClock(std::cell::Cell<u64>);

/// How far the monotonic clock advances per reading, nanoseconds.
pub const MONOTONIC_STEP_NS: u64 = 1_000;

impl wasmtime_wasi::HostMonotonicClock for SteppingClock {
    fn resolution(&self) -> u64 {
        MONOTONIC_STEP_NS
    }

    fn now(&self) -> u64 {
        let now = self.0.get();
        self.0.set(now + MONOTONIC_STEP_NS);
        now
    }
}

impl WasiView for InvocationState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        // Built on first use: most experts never touch WASI, and this keeps
        // their invocations free of its set-up cost.
        let (stdout, stderr) = (self.stdout.clone(), self.stderr.clone());
        let (seed, wall_ms) = (self.wasi_seed, self.wall_clock_unix_ms);
        let ctx = self.wasi.get_or_insert_with(|| {
            // Deny by default: no args, env, preopened directories or
            // network; stdin is empty; stdout and stderr are captured.
            // Clocks and randomness are functions of the trace (its start
            // time and seed), so a replay sees what the original run saw.
            use rand_wasi::SeedableRng;
            use rand_wasi::rngs::ChaCha8Rng;
            WasiCtx::builder()
                .stdout(stdout)
                .stderr(stderr)
                .allow_tcp(false)
                .allow_udp(false)
                .allow_ip_name_lookup(false)
                .wall_clock(FrozenWallClock(std::time::Duration::from_millis(wall_ms)))
                .monotonic_clock(SteppingClock::default())
                .secure_random(ChaCha8Rng::seed_from_u64(seed))
                .insecure_random(ChaCha8Rng::seed_from_u64(seed ^ INSECURE_STREAM))
                .insecure_random_seed(u128::from(seed))
                .max_random_size(MAX_WASI_RANDOM_BYTES)
                .build()
        });
        WasiCtxView {
            ctx,
            table: &mut self.table,
        }
    }
}
