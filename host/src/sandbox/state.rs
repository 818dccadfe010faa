//! The data of one invocation's `Store`: limits, grants, the trace being
//! recorded and the (empty) WASI context.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::limiter::MemoryLimiter;
use super::limits::HostPolicy;
use super::stdio::CappedOutput;
use crate::audit::Ledger;
use crate::caps::{ExpertsCtx, LogCtx, ModelCtx};

/// Store data for one invocation of one expert: one context per
/// capability, the ledger they all write to, and the sandbox's own state.
pub struct InvocationState {
    pub(crate) model: ModelCtx,
    pub(crate) experts: ExpertsCtx,
    pub(crate) log: LogCtx,
    pub(crate) ledger: Ledger,
    pub(crate) deadline: Instant,
    pub(crate) limiter: MemoryLimiter,
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

impl InvocationState {
    /// The state of an invocation whose capabilities are `model` and
    /// `experts`, under `policy`, charged to `ledger`.
    pub(crate) fn new(
        model: ModelCtx,
        experts: ExpertsCtx,
        ledger: Ledger,
        deadline: Instant,
        policy: &HostPolicy,
    ) -> Self {
        let stdio_cap = policy.max_stdio_bytes;
        InvocationState {
            model,
            experts,
            log: LogCtx {
                max_bytes: policy.max_log_bytes,
            },
            limiter: MemoryLimiter::new(ledger.limits.memory_bytes),
            ledger,
            deadline,
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
        }
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
