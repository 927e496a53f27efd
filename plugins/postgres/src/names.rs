//! Pure helpers: role names from grant ids, table references, handles, timestamps.

use ebb_connector_sdk::Error;
use ebb_connector_sdk::sql::quote_ident;
use std::fmt;

/// The role for a grant: `ebb_` and the grant id, lower-cased, `-` as `_`. Grant ids
/// are ULIDs or UUIDs (case-insensitive), so lower-casing loses nothing.
pub fn role_name(grant_id: &str) -> Result<String, Error> {
    let ok = !grant_id.is_empty()
        && grant_id.len() <= 58
        && grant_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !ok {
        return Err(Error::Invalid(format!(
            "grant id `{grant_id}` must be 1-58 characters of [A-Za-z0-9_-]"
        )));
    }
    Ok(format!(
        "ebb_{}",
        grant_id.to_ascii_lowercase().replace('-', "_")
    ))
}

/// The grant id a role was named for: the inverse of [`role_name`] for ULIDs (which
/// have no `-`), upper-cased as ULIDs are written.
pub fn grant_id(role: &str) -> String {
    role.strip_prefix("ebb_")
        .unwrap_or(role)
        .to_ascii_uppercase()
}

/// `schema.table`, each part an unquoted identifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableRef {
    pub schema: String,
    pub table: String,
}

fn is_identifier(s: &str) -> bool {
    let mut bytes = s.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'$')
        && s.len() <= 63
}

impl TableRef {
    pub fn parse(resource: &str) -> Result<Self, Error> {
        match resource.split_once('.') {
            Some((schema, table)) if is_identifier(schema) && is_identifier(table) => Ok(Self {
                schema: schema.to_ascii_lowercase(),
                table: table.to_ascii_lowercase(),
            }),
            _ => Err(Error::Invalid(format!(
                "resource `{resource}` must be `schema.table` (letters, digits, _)"
            ))),
        }
    }

    pub fn quoted(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.table))
    }

    /// Whether a comma-separated list of `schema.table` / `schema.*` patterns allows it.
    pub fn allowed_by(&self, patterns: &str) -> bool {
        patterns
            .split(',')
            .map(str::trim)
            .any(|p| match p.split_once('.') {
                Some((schema, "*")) => schema.eq_ignore_ascii_case(&self.schema),
                Some((schema, table)) => {
                    schema.eq_ignore_ascii_case(&self.schema)
                        && table.eq_ignore_ascii_case(&self.table)
                }
                None => false,
            })
    }
}

/// What `issue` created: the role and its oid. The oid outlives the role: a dropped
/// role's sessions are found by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handle<'a> {
    pub role: &'a str,
    pub oid: i64,
}

/// An owned handle, for formatting.
impl fmt::Display for Handle<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "role={} oid={}", self.role, self.oid)
    }
}

impl<'a> Handle<'a> {
    pub fn parse(s: &'a str) -> Result<Self, Error> {
        let bad = || Error::Invalid(format!("malformed handle `{s}`"));
        let mut role = None;
        let mut oid = None;
        for part in s.split_whitespace() {
            match part.split_once('=') {
                Some(("role", r)) => role = Some(r),
                Some(("oid", o)) => oid = Some(o.parse().map_err(|_| bad())?),
                _ => return Err(bad()),
            }
        }
        Ok(Self {
            role: role.ok_or_else(bad)?,
            oid: oid.ok_or_else(bad)?,
        })
    }
}

/// Milliseconds since the epoch as a PostgreSQL timestamptz literal in UTC.
pub fn timestamp_literal(ms: u64) -> String {
    let secs = ms / 1000;
    let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX);
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{:03}+00",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = u32::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let m = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    (if m <= 2 { y + 1 } else { y }, m, d)
}
