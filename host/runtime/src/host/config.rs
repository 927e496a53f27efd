//! `ebb:connector/config`: the connector's own non-secret settings.

use super::CallState;
use crate::bindings::config::Host;

impl Host for CallState {
    fn get(&mut self, key: String) -> wasmtime::Result<Option<String>> {
        Ok(self.lent.config.get(&key).cloned())
    }
}
