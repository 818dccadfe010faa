//! The memory `ResourceLimiter` of one invocation.

/// Most table elements a guest may have, summed over all its tables
/// (function pointers, resources).
pub const MAX_TABLE_ELEMENTS: usize = 100_000;

/// Caps the linear memory of one invocation — every memory of every core
/// instance in the component, summed — and remembers whether the cap was
/// hit, so that the trap that usually follows (an allocation failure aborts
/// the guest) can be reported as a memory limit rather than a crash.
///
/// Summing matters: a component may hold several core modules, each with
/// its own memory. Checked one memory at a time, K memories got K times
/// `limits.memory-mib`.
#[derive(Debug)]
pub struct MemoryLimiter {
    max_bytes: usize,
    total_bytes: usize,
    peak_bytes: usize,
    refused: Option<usize>,
    table_elements: usize,
}

impl MemoryLimiter {
    /// A limiter allowing `max_bytes` of linear memory in all.
    pub fn new(max_bytes: u64) -> Self {
        MemoryLimiter {
            max_bytes: usize::try_from(max_bytes).unwrap_or(usize::MAX),
            total_bytes: 0,
            peak_bytes: 0,
            refused: None,
            table_elements: 0,
        }
    }

    /// The largest total memory granted so far.
    pub fn peak_bytes(&self) -> usize {
        self.peak_bytes
    }

    /// The total the first refused growth asked for, if any.
    pub fn refused(&self) -> Option<usize> {
        self.refused
    }
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    // wasmtime calls this for a memory's creation too (`current` 0), so the
    // total covers every memory from the start.
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self
            .total_bytes
            .saturating_sub(current)
            .saturating_add(desired);
        if total > self.max_bytes || maximum.is_some_and(|m| desired > m) {
            self.refused.get_or_insert(total);
            return Ok(false);
        }
        self.total_bytes = total;
        self.peak_bytes = self.peak_bytes.max(total);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self
            .table_elements
            .saturating_sub(current)
            .saturating_add(desired);
        if total > MAX_TABLE_ELEMENTS {
            return Ok(false);
        }
        self.table_elements = total;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::ResourceLimiter;

    const MIB: usize = 1 << 20;

    /// Regression: each memory was checked on its own, so a component
    /// with K memories got K × `memory-mib`.
    #[test]
    fn memories_are_summed_per_invocation() {
        let mut limiter = MemoryLimiter::new(64 * MIB as u64);
        assert!(limiter.memory_growing(0, 40 * MIB, None).unwrap());
        assert!(!limiter.memory_growing(0, 40 * MIB, None).unwrap());
        assert_eq!(limiter.refused(), Some(80 * MIB));
        assert!(limiter.memory_growing(0, 20 * MIB, None).unwrap());
        // Growing the first memory counts only the difference.
        assert!(limiter.memory_growing(40 * MIB, 44 * MIB, None).unwrap());
        assert!(!limiter.memory_growing(44 * MIB, 45 * MIB, None).unwrap());
        assert_eq!(limiter.peak_bytes(), 64 * MIB);
    }

    #[test]
    fn table_elements_are_summed() {
        let mut limiter = MemoryLimiter::new(0);
        assert!(
            limiter
                .table_growing(0, MAX_TABLE_ELEMENTS / 2, None)
                .unwrap()
        );
        assert!(
            limiter
                .table_growing(0, MAX_TABLE_ELEMENTS / 2, None)
                .unwrap()
        );
        assert!(!limiter.table_growing(0, 1, None).unwrap());
    }
}
