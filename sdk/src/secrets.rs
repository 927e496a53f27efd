//! Secrets the operator lends this connector by name (`ebb:connector/secrets`), for
//! protocols that need them inside the connector, such as [`crate::sigv4`] signing.
//!
//! Prefer what keeps a secret in the host: SQL and Redis connections, and HTTP
//! basic auth the host adds per origin. Never log a secret, return it in an error
//! or put it in a handle.

use crate::Error;
use crate::wit::ebb::connector0_1_0::secrets as raw;

/// The secret lent under `name`, if the operator lent one.
pub fn get(name: &str) -> Option<String> {
    raw::get(name)
}

/// The secret lent under `name`, or an [`Error::Invalid`] naming the missing secret.
pub fn require(name: &str) -> Result<String, Error> {
    get(name).ok_or_else(|| {
        Error::Invalid(format!(
            "the connector needs the secret `{name}`: lend it with [connectors.<name>.secrets] \
             {name} = {{ env = \"...\" }}"
        ))
    })
}
