//! What the scheduler publishes for metrics, health checks and tests.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::inference::EngineHealth;

/// What the scheduler is doing, for metrics and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EngineStats {
    /// Sequences in the running batch.
    pub active: usize,
    /// Jobs waiting for admission.
    pub queued: usize,
    /// KV cache tokens reserved by running sequences.
    pub reserved_kv_tokens: usize,
    /// KV cache tokens the budget allows.
    pub kv_budget_tokens: usize,
    /// Forward passes run so far.
    pub steps: u64,
    /// Tokens generated so far.
    pub generated_tokens: u64,
    /// Jobs dropped because their caller went away.
    pub cancelled: u64,
    /// Scheduler rounds that panicked and were recovered from: their jobs
    /// failed, the engine went on.
    pub failures: u64,
}

/// The scheduler's figures, shared with the engine's callers.
#[derive(Debug, Default)]
pub(in crate::inference) struct Counters {
    pub(super) active: AtomicUsize,
    pub(super) queued: AtomicUsize,
    pub(super) reserved: AtomicUsize,
    pub(super) budget: AtomicUsize,
    pub(super) steps: AtomicU64,
    pub(super) generated: AtomicU64,
    pub(super) cancelled: AtomicU64,
    pub(super) failures: AtomicU64,
    /// Set when the scheduler thread has ended: nothing is served.
    pub(super) stopped: AtomicBool,
    pub(super) last_failure: Mutex<Option<String>>,
}

impl Counters {
    /// The figures now.
    pub(in crate::inference) fn stats(&self) -> EngineStats {
        EngineStats {
            active: self.active.load(Ordering::Relaxed),
            queued: self.queued.load(Ordering::Relaxed),
            reserved_kv_tokens: self.reserved.load(Ordering::Relaxed),
            kv_budget_tokens: self.budget.load(Ordering::Relaxed),
            steps: self.steps.load(Ordering::Relaxed),
            generated_tokens: self.generated.load(Ordering::Relaxed),
            cancelled: self.cancelled.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
        }
    }

    /// Whether the scheduler serves, and the failures it recovered from.
    pub(in crate::inference) fn health(&self) -> EngineHealth {
        EngineHealth {
            serving: !self.stopped.load(Ordering::SeqCst),
            recovered_failures: self.failures.load(Ordering::Relaxed),
            last_failure: self
                .last_failure
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }
}

/// Marks the engine stopped when the scheduler thread ends, however it
/// ends (its loop returns, or a panic escapes the per-round guard).
pub(super) struct StoppedOnExit(pub(super) Arc<Counters>);

impl Drop for StoppedOnExit {
    fn drop(&mut self) {
        self.0.stopped.store(true, Ordering::SeqCst);
    }
}
