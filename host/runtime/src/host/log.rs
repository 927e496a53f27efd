//! `ebb:connector/log`: connector messages into the host's tracing, tagged with the
//! connector's name, truncated and capped per call so a connector cannot flood logs.

use super::CallState;
use crate::bindings::log::{Host, Level};

/// The most messages one call may log; later ones are dropped with one notice.
pub(crate) const MAX_LOGS_PER_CALL: u32 = 64;
/// The longest message kept, in bytes.
const MAX_MESSAGE_BYTES: usize = 4096;

impl Host for CallState {
    fn log(&mut self, level: Level, message: String) -> wasmtime::Result<()> {
        if self.logs_left == 0 {
            return Ok(());
        }
        self.logs_left -= 1;
        let connector = &*self.lent.name;
        if self.logs_left == 0 {
            tracing::warn!(
                connector,
                "connector log limit reached; dropping further messages of this call"
            );
            return Ok(());
        }
        let message = truncate(&message, MAX_MESSAGE_BYTES);
        match level {
            Level::Trace => tracing::trace!(target: "ebb::connector", connector, "{message}"),
            Level::Debug => tracing::debug!(target: "ebb::connector", connector, "{message}"),
            Level::Info => tracing::info!(target: "ebb::connector", connector, "{message}"),
            Level::Warn => tracing::warn!(target: "ebb::connector", connector, "{message}"),
            Level::Error => tracing::error!(target: "ebb::connector", connector, "{message}"),
        }
        Ok(())
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(super::truncate("héllo", 2), "h");
        assert_eq!(super::truncate("héllo", 3), "hé");
        assert_eq!(super::truncate("abc", 10), "abc");
    }
}
