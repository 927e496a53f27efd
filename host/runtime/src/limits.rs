//! Per-call resource limits: memory (a [`wasmtime::ResourceLimiter`] that names the
//! limit it enforced), time (epoch deadline plus a host-side timeout) and output size.

use crate::lend::LimitsConfig;
use std::time::Duration;

/// How often the epoch advances; deadlines are counted in these ticks.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(5);

/// The limits of one connector instance.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub memory_bytes: usize,
    pub timeout: Duration,
    pub max_output_bytes: usize,
}

impl From<&LimitsConfig> for Limits {
    fn from(c: &LimitsConfig) -> Self {
        Self {
            memory_bytes: usize::try_from(c.memory_mib * 1024 * 1024).unwrap_or(usize::MAX),
            timeout: Duration::from_millis(c.timeout_ms),
            max_output_bytes: usize::try_from(c.max_output_kib * 1024).unwrap_or(usize::MAX),
        }
    }
}

/// Enforces the memory limit and remembers that it did, so the call's error can say
/// which limit was hit rather than "unreachable executed".
#[derive(Debug)]
pub(crate) struct MemoryLimiter {
    limit: usize,
    pub exceeded: bool,
}

impl MemoryLimiter {
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            exceeded: false,
        }
    }
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.limit {
            self.exceeded = true;
            // Trap rather than fail the grow: a guest allocator would turn a failed
            // grow into an abort that hides the cause.
            wasmtime::bail!(
                "memory limit exceeded: wanted {desired} bytes, limit is {} bytes",
                self.limit
            );
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}
