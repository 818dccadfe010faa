//! Per-invocation limits: what a manifest asks for, clamped by host policy.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::bundle::LimitsSpec;

const MIB: u64 = 1024 * 1024;

/// Linear memory an expert gets unless its manifest asks otherwise.
pub const DEFAULT_MEMORY_BYTES: u64 = 64 * MIB;
/// The most linear memory any expert may have.
pub const MAX_MEMORY_BYTES: u64 = 512 * MIB;
/// Deadline of one invocation unless the manifest asks otherwise.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(30);
/// The longest deadline any invocation may have.
pub const MAX_DEADLINE: Duration = Duration::from_secs(300);
/// Fuel of one invocation unless the manifest asks otherwise (about 10 s of
/// guest CPU on these machines).
pub const DEFAULT_FUEL: u64 = 10_000_000_000;
/// The most fuel any invocation may have.
pub const MAX_FUEL: u64 = 100_000_000_000;
/// Model calls per invocation unless the manifest asks otherwise.
pub const DEFAULT_MODEL_CALLS: u32 = 16;
/// The most model calls any invocation may make.
pub const MAX_MODEL_CALLS: u32 = 256;
/// Generated tokens per invocation unless the manifest asks otherwise.
pub const DEFAULT_GENERATED_TOKENS: u32 = 4096;
/// The most tokens any invocation may generate.
pub const MAX_GENERATED_TOKENS: u32 = 65_536;
/// How deep experts may call experts (a request from outside is depth 0).
pub const MAX_CALL_DEPTH: u32 = 4;
/// Log bytes kept per invocation; lines past it are counted, not kept.
pub const MAX_LOG_BYTES: usize = 64 * 1024;
/// WASI stdout + stderr bytes kept per invocation; the rest is dropped.
pub const MAX_STDIO_BYTES: usize = 64 * 1024;
/// Host calls one request may record in its traces, nested ones
/// included; past it they are counted, not kept. A loop of refused calls
/// once grew host memory by gigabytes.
pub const MAX_TRACE_ENTRIES: usize = 4096;
/// The largest answer an expert may return.
pub const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;
/// Instances the pooling allocator keeps slots for: the most invocations
/// that can run at once on one host.
pub const POOL_INSTANCES: u32 = 512;
/// Most core instances one component may create. A Rust expert has a few
/// (its module and wit-component's shims); a componentize-py one links
/// libc, libpython and friends as separate modules, about a dozen.
pub const MAX_CORE_INSTANCES_PER_COMPONENT: u32 = 32;
/// Most linear memories one component may hold (their sizes are summed
/// against `limits.memory-mib` as well).
pub const MAX_MEMORIES_PER_COMPONENT: u32 = 4;
/// Most tables one component may hold.
pub const MAX_TABLES_PER_COMPONENT: u32 = 16;

/// What the host allows, whatever manifests ask for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostPolicy {
    /// Memory per invocation when the manifest is silent, bytes.
    pub default_memory_bytes: u64,
    /// Memory cap per invocation, bytes.
    pub max_memory_bytes: u64,
    /// Deadline when the manifest is silent.
    pub default_deadline: Duration,
    /// Deadline cap.
    pub max_deadline: Duration,
    /// Fuel when the manifest is silent.
    pub default_fuel: u64,
    /// Fuel cap.
    pub max_fuel: u64,
    /// Model calls when the manifest is silent.
    pub default_model_calls: u32,
    /// Model call cap.
    pub max_model_calls: u32,
    /// Generated tokens when the manifest is silent.
    pub default_generated_tokens: u32,
    /// Generated tokens cap.
    pub max_generated_tokens: u32,
    /// How deep `experts.call` may nest.
    pub max_call_depth: u32,
    /// Log bytes kept per invocation.
    pub max_log_bytes: usize,
    /// stdout + stderr bytes kept per invocation.
    pub max_stdio_bytes: usize,
    /// Largest answer.
    pub max_response_bytes: usize,
    /// Host calls recorded per request, nested ones included.
    pub max_trace_entries: usize,
    /// Concurrent instance slots in the pooling allocator.
    pub pool_instances: u32,
    /// Guests that have computed for more than ~20 ms compute this many at
    /// a time, in turn, so they never hold every async worker.
    pub long_running_places: usize,
}

impl Default for HostPolicy {
    fn default() -> Self {
        HostPolicy {
            default_memory_bytes: DEFAULT_MEMORY_BYTES,
            max_memory_bytes: MAX_MEMORY_BYTES,
            default_deadline: DEFAULT_DEADLINE,
            max_deadline: MAX_DEADLINE,
            default_fuel: DEFAULT_FUEL,
            max_fuel: MAX_FUEL,
            default_model_calls: DEFAULT_MODEL_CALLS,
            max_model_calls: MAX_MODEL_CALLS,
            default_generated_tokens: DEFAULT_GENERATED_TOKENS,
            max_generated_tokens: MAX_GENERATED_TOKENS,
            max_call_depth: MAX_CALL_DEPTH,
            max_log_bytes: MAX_LOG_BYTES,
            max_stdio_bytes: MAX_STDIO_BYTES,
            max_response_bytes: MAX_RESPONSE_BYTES,
            max_trace_entries: MAX_TRACE_ENTRIES,
            pool_instances: POOL_INSTANCES,
            long_running_places: default_long_running_places(),
        }
    }
}

/// Half the cores, at least one.
pub fn default_long_running_places() -> usize {
    (std::thread::available_parallelism().map_or(1, usize::from) / 2).max(1)
}

/// The limits one invocation runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Linear memory, bytes.
    pub memory_bytes: u64,
    /// Wall-clock deadline, milliseconds.
    pub deadline_ms: u64,
    /// Fuel.
    pub fuel: u64,
    /// Model calls.
    pub model_calls: u32,
    /// Generated tokens.
    pub generated_tokens: u32,
}

impl Limits {
    /// The deadline as a [`Duration`].
    pub fn deadline(&self) -> Duration {
        Duration::from_millis(self.deadline_ms)
    }
}

impl HostPolicy {
    /// The limits for a manifest's request: its values (or the defaults),
    /// each clamped to the policy's cap.
    pub fn limits_for(&self, spec: &LimitsSpec) -> Limits {
        Limits {
            memory_bytes: spec
                .memory_mib
                .map_or(self.default_memory_bytes, |m| m.saturating_mul(MIB))
                .min(self.max_memory_bytes),
            deadline_ms: spec
                .deadline_ms
                .unwrap_or(self.default_deadline.as_millis() as u64)
                .min(self.max_deadline.as_millis() as u64),
            fuel: spec.fuel.unwrap_or(self.default_fuel).min(self.max_fuel),
            model_calls: spec
                .model_calls
                .unwrap_or(self.default_model_calls)
                .min(self.max_model_calls),
            generated_tokens: spec
                .generated_tokens
                .unwrap_or(self.default_generated_tokens)
                .min(self.max_generated_tokens),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_values_are_clamped_by_policy() {
        let policy = HostPolicy::default();
        let spec = LimitsSpec {
            memory_mib: Some(100_000),
            deadline_ms: Some(5),
            fuel: Some(u64::MAX),
            model_calls: None,
            generated_tokens: Some(10),
        };
        let limits = policy.limits_for(&spec);
        assert_eq!(limits.memory_bytes, MAX_MEMORY_BYTES);
        assert_eq!(limits.deadline_ms, 5);
        assert_eq!(limits.fuel, MAX_FUEL);
        assert_eq!(limits.model_calls, DEFAULT_MODEL_CALLS);
        assert_eq!(limits.generated_tokens, 10);
    }
}
