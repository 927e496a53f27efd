//! The connector's own settings from the operator's configuration
//! (`ebb:connector/config`).

use crate::Error;
use crate::wit::ebb::connector0_1_0::config as raw;

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

/// The comma-separated list in `key` (or in `default`), each item trimmed, empty
/// items dropped.
pub fn list(key: &str, default: &str) -> Vec<String> {
    get_or(key, default)
        .split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

/// Whether `value` falls within the allow-list entry `allowed`: `prefix*` or an
/// exact match (a lone `*` allows anything).
pub fn within(value: &str, allowed: &str) -> bool {
    match allowed.strip_suffix('*') {
        Some(prefix) => value.starts_with(prefix),
        None => value == allowed,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn patterns() {
        assert!(super::within("cache:a", "cache:*"));
        assert!(super::within("anything", "*"));
        assert!(super::within("x", "x"));
        assert!(!super::within("xy", "x"));
        assert!(!super::within("secret:a", "cache:*"));
    }
}
