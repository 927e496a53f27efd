//! `ebb:connector/secrets`: secrets the operator lends a connector by name, for
//! protocols that need them inside the connector (SigV4 signing). Every read is
//! counted and logged by name; values never reach logs or errors.

use super::CallState;
use crate::bindings::secrets::Host;

impl Host for CallState {
    fn get(&mut self, name: String) -> wasmtime::Result<Option<String>> {
        let connector = &*self.lent.name;
        let Some(secret) = self.lent.secrets.get(&name) else {
            tracing::warn!(
                connector,
                secret = %name.chars().take(64).collect::<String>(),
                "connector asked for a secret it was not lent"
            );
            return Ok(None);
        };
        tracing::debug!(connector, secret = %name, "secret lent to connector");
        metrics::counter!(
            "ebb_secret_reads_total",
            "connector" => connector.to_owned(),
            "secret" => name,
        )
        .increment(1);
        Ok(Some(secret.expose().to_owned()))
    }
}
