//! LDAP through connections the operator lent this connector (`ebb:connector/ldap`).
//! The host binds with the lent DN and password; the connector names a connection.
//! Build filters with [`escape`]: a DN or name pasted raw into a filter changes it.

use crate::Error;
use crate::wit::ebb::connector0_2_0::ldap as raw;

pub use raw::{
    Attribute, BindOutcome, Entry, Error as LdapFailure, LdapError, Modification, ModifyOp, Scope,
};

/// Searches under `base` and returns the matching entries with `attributes`
/// (none: only the DNs).
pub fn search(
    connection: &str,
    base: &str,
    scope: Scope,
    filter: &str,
    attributes: &[&str],
) -> Result<Vec<Entry>, LdapFailure> {
    let attributes: Vec<String> = attributes.iter().map(|a| (*a).to_owned()).collect();
    raw::search(connection, base, scope, filter, &attributes)
}

/// Applies `changes` to the entry `dn`.
pub fn modify(connection: &str, dn: &str, changes: &[Modification]) -> Result<(), LdapFailure> {
    raw::modify(connection, dn, changes)
}

/// Binds as `dn` with `password` on a new connection: whether it authenticates
/// and, with `read`, whether it can then read that entry.
pub fn bind_probe(
    connection: &str,
    dn: &str,
    password: &str,
    read: Option<&str>,
) -> Result<BindOutcome, LdapFailure> {
    raw::bind_probe(connection, dn, password, read)
}

/// Escapes a value for a search filter (RFC 4515): `*`, `(`, `)`, `\` and NUL.
pub fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '*' => out.push_str("\\2a"),
            '(' => out.push_str("\\28"),
            ')' => out.push_str("\\29"),
            '\\' => out.push_str("\\5c"),
            '\0' => out.push_str("\\00"),
            c => out.push(c),
        }
    }
    out
}

impl Entry {
    /// The values of the attribute `name` (case-insensitive), or none.
    pub fn values(&self, name: &str) -> &[String] {
        self.attributes
            .iter()
            .find(|a| a.name.eq_ignore_ascii_case(name))
            .map_or(&[], |a| a.values.as_slice())
    }
}

impl From<LdapFailure> for Error {
    /// Outages are `unavailable`, missing rights `denied` (49 invalid credentials,
    /// 50 insufficient access), the rest `internal`.
    fn from(e: LdapFailure) -> Self {
        match e {
            LdapFailure::UnknownConnection(m) => Error::Invalid(m),
            LdapFailure::Unavailable(m) => Error::Unavailable(m),
            LdapFailure::Rejected(r) if matches!(r.code, 49 | 50) => {
                Error::Denied(format!("LDAP {}: {}", r.code, r.message))
            }
            // 51 busy, 52 unavailable.
            LdapFailure::Rejected(r) if matches!(r.code, 51 | 52) => {
                Error::Unavailable(format!("LDAP {}: {}", r.code, r.message))
            }
            LdapFailure::Rejected(r) => Error::Internal(format!("LDAP {}: {}", r.code, r.message)),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn filter_values_are_escaped() {
        assert_eq!(super::escape("cn=a*(b)\\"), "cn=a\\2a\\28b\\29\\5c");
    }
}
