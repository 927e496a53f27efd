//! Time for the lifecycle: wall-clock milliseconds for persisted timestamps, advanced
//! by tokio's monotonic clock. Wall-clock jumps after start do not move deadlines,
//! and tests can pause and advance time with `tokio::time::pause`.

use ebb_core::contract::Timestamp;
use tokio::time::Instant;

/// Milliseconds since the Unix epoch, derived from one reading of the wall clock at
/// creation plus tokio's monotonic time since.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    base_ms: Timestamp,
    base: Instant,
}

impl Clock {
    /// A clock anchored at the current wall-clock time.
    pub fn system() -> Self {
        let base_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        Self::starting_at(base_ms)
    }

    /// A clock that reads `base_ms` now.
    pub fn starting_at(base_ms: Timestamp) -> Self {
        Self {
            base_ms,
            base: Instant::now(),
        }
    }

    pub fn now_ms(&self) -> Timestamp {
        self.base_ms + u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The instant at which this clock reads `ms`.
    pub fn instant_at(&self, ms: Timestamp) -> Instant {
        self.base + std::time::Duration::from_millis(ms.saturating_sub(self.base_ms))
    }
}
