//! SQL through connections the operator lent this connector (`ebb:connector/sql`).
//! The host holds the DSN and password; the connector names a connection.
//!
//! Statements take `$1`, `$2`… parameters. DDL takes none, so identifiers and
//! literals in DDL must be quoted with [`quote_ident`] and [`quote_literal`].

use crate::Error;
use crate::wit::ebb::connector0_1_0::sql as raw;

pub use raw::{DbError, Error as SqlError, LoginOutcome, Rows, Value};

/// Runs a query and returns its rows.
pub fn query(connection: &str, statement: &str, params: &[Value]) -> Result<Rows, SqlError> {
    raw::query(connection, statement, params)
}

/// Runs a statement and returns how many rows it affected.
pub fn execute(connection: &str, statement: &str, params: &[Value]) -> Result<u64, SqlError> {
    raw::execute(connection, statement, params)
}

/// Runs `;`-separated statements without parameters in one implicit transaction.
pub fn execute_batch(connection: &str, statements: &str) -> Result<(), SqlError> {
    raw::execute_batch(connection, statements)
}

/// Tries to log in as `user` with `password` to the server behind `connection`.
pub fn login_probe(connection: &str, user: &str, password: &str) -> Result<LoginOutcome, SqlError> {
    raw::login_probe(connection, user, password)
}

/// Quotes a PostgreSQL identifier: `a"b` becomes `"a""b"`.
pub fn quote_ident(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// Quotes a PostgreSQL string literal (standard-conforming strings): `it's` becomes
/// `'it''s'`. Rejects NUL, which PostgreSQL cannot store.
pub fn quote_literal(literal: &str) -> Result<String, Error> {
    if literal.contains('\0') {
        return Err(Error::Invalid("a SQL literal cannot contain NUL".into()));
    }
    Ok(format!("'{}'", literal.replace('\'', "''")))
}

impl Rows {
    /// The index of the column `name`.
    pub fn column(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c == name)
    }

    /// Whether the query returned no rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

impl Value {
    /// The text, if this is a text value.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::Text(s) => Some(s),
            _ => None,
        }
    }

    /// The integer, if this is an int value.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Self::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// The boolean, if this is a boolean value.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Self::Boolean(b) => Some(*b),
            _ => None,
        }
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Self::Text(s.into())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Self::Text(s)
    }
}

impl From<i64> for Value {
    fn from(i: i64) -> Self {
        Self::Int(i)
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Self::Boolean(b)
    }
}

/// A one-line description of a SQL error, for connector error messages.
pub fn describe(e: &SqlError) -> String {
    match e {
        SqlError::UnknownConnection(m) => format!("unknown connection: {m}"),
        SqlError::Unavailable(m) => format!("database unavailable: {m}"),
        SqlError::Rejected(db) => format!("database error {}: {}", db.code, db.message),
        SqlError::Invalid(m) => format!("invalid statement: {m}"),
    }
}

impl From<SqlError> for Error {
    /// Classifies SQL failures for the host's retry policy: outages are
    /// `unavailable`, missing privileges `denied`, the rest `invalid` or `internal`.
    fn from(e: SqlError) -> Self {
        let message = describe(&e);
        match e {
            SqlError::Unavailable(_) => Error::Unavailable(message),
            SqlError::UnknownConnection(_) | SqlError::Invalid(_) => Error::Invalid(message),
            // 42501 insufficient_privilege; class 28 invalid authorization.
            SqlError::Rejected(db) if db.code == "42501" || db.code.starts_with("28") => {
                Error::Denied(message)
            }
            // Class 08 connection exception, 53 insufficient resources, 57 operator
            // intervention (e.g. admin shutdown), 40 transaction rollback (deadlock).
            SqlError::Rejected(db)
                if ["08", "53", "57", "40"]
                    .iter()
                    .any(|c| db.code.starts_with(c)) =>
            {
                Error::Unavailable(message)
            }
            SqlError::Rejected(_) => Error::Internal(message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_identifiers_and_literals() {
        assert_eq!(quote_ident("ebb_1"), "\"ebb_1\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's").unwrap(), "'it''s'");
        assert!(quote_literal("a\0b").is_err());
    }

    #[test]
    fn classifies_sql_errors() {
        let rejected = |code: &str| {
            SqlError::Rejected(DbError {
                code: code.into(),
                message: "m".into(),
            })
        };
        assert!(matches!(Error::from(rejected("42501")), Error::Denied(_)));
        assert!(matches!(
            Error::from(rejected("57P01")),
            Error::Unavailable(_)
        ));
        assert!(matches!(Error::from(rejected("42704")), Error::Internal(_)));
        assert!(matches!(
            Error::from(SqlError::Unavailable("x".into())),
            Error::Unavailable(_)
        ));
    }
}
