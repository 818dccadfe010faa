//! The memory `ResourceLimiter` of one invocation.

/// Most table elements a guest may have (function pointers, resources).
pub const MAX_TABLE_ELEMENTS: usize = 100_000;

/// Caps linear memory and remembers whether the cap was hit, so that the
/// trap that usually follows (an allocation failure aborts the guest) can be
/// reported as a memory limit rather than a crash.
#[derive(Debug)]
pub struct MemoryLimiter {
    max_bytes: usize,
    peak_bytes: usize,
    refused: Option<usize>,
}

impl MemoryLimiter {
    /// A limiter allowing `max_bytes` of linear memory.
    pub fn new(max_bytes: u64) -> Self {
        MemoryLimiter {
            max_bytes: usize::try_from(max_bytes).unwrap_or(usize::MAX),
            peak_bytes: 0,
            refused: None,
        }
    }

    /// The largest memory size granted so far.
    pub fn peak_bytes(&self) -> usize {
        self.peak_bytes
    }

    /// The size of the first refused growth, if any.
    pub fn refused(&self) -> Option<usize> {
        self.refused
    }
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_bytes || maximum.is_some_and(|m| desired > m) {
            self.refused.get_or_insert(desired);
            return Ok(false);
        }
        self.peak_bytes = self.peak_bytes.max(desired);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}
