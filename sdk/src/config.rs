//! The connector's own settings from the operator's configuration
//! (`ebb:connector/config`).

use crate::Error;
use crate::wit::ebb::connector::config as raw;

/// The value of `key`, if the operator set it.
pub fn get(key: &str) -> Option<String> {
    raw::get(key)
}

/// The value of `key`, or an [`Error::Invalid`] naming the missing setting.
pub fn require(key: &str) -> Result<String, Error> {
    get(key)
        .ok_or_else(|| Error::Invalid(format!("the connector needs the config setting `{key}`")))
}

/// The value of `key`, or `default`.
pub fn get_or(key: &str, default: &str) -> String {
    get(key).unwrap_or_else(|| default.to_owned())
}
