//! MySQL and MariaDB through connections the operator lent this connector
//! (`ebb:connector/mysql`). The host holds the URL and password; the connector names
//! a connection. Values, results and errors are [`crate::sql`]'s; an error's `code`
//! is the server's error number (`"1396"`).
//!
//! A statement with parameters is prepared (`?` marks each); one without is sent as
//! text, which account statements (`CREATE USER`, `GRANT`, `KILL`) need: quote what
//! goes into them with [`quote_ident`] and [`quote_string`].

use crate::Error;
use crate::sql::{LoginOutcome, Rows, SqlError, Value};
use crate::wit::ebb::connector0_2_0::mysql as raw;

/// Runs a statement and returns its rows.
pub fn query(connection: &str, statement: &str, params: &[Value]) -> Result<Rows, SqlError> {
    raw::query(connection, statement, params)
}

/// Runs a statement and returns how many rows it affected.
pub fn execute(connection: &str, statement: &str, params: &[Value]) -> Result<u64, SqlError> {
    raw::execute(connection, statement, params)
}

/// Tries to log in as `user` with `password` to the server behind `connection`.
pub fn login_probe(connection: &str, user: &str, password: &str) -> Result<LoginOutcome, SqlError> {
    raw::login_probe(connection, user, password)
}

/// Quotes a MySQL identifier: ``a`b`` becomes ```a``b```.
pub fn quote_ident(ident: &str) -> String {
    format!("`{}`", ident.replace('`', "``"))
}

/// Quotes a string literal. Refuses `'`, `\` and NUL instead of escaping them: how
/// a backslash reads depends on the server's `NO_BACKSLASH_ESCAPES`, which the
/// connector cannot know.
pub fn quote_string(s: &str) -> Result<String, Error> {
    if s.contains(['\'', '\\', '\0']) {
        return Err(Error::Invalid(
            "a MySQL string literal here cannot contain `'`, `\\` or NUL".into(),
        ));
    }
    Ok(format!("'{s}'"))
}

/// Classifies a MySQL failure for the host's retry policy (server error numbers,
/// not SQLSTATEs): missing privileges are `denied`, lost or refused connections
/// and lock waits `unavailable`, the rest `internal`.
pub fn classify(e: SqlError) -> Error {
    let message = crate::sql::describe(&e);
    match e {
        SqlError::Unavailable(_) => Error::Unavailable(message),
        SqlError::UnknownConnection(_) | SqlError::Invalid(_) => Error::Invalid(message),
        // 1044/1045 access denied, 1142/1143 command denied, 1227 needs a privilege,
        // 1370 routine denied.
        SqlError::Rejected(db)
            if matches!(
                db.code.as_str(),
                "1044" | "1045" | "1142" | "1143" | "1227" | "1370"
            ) =>
        {
            Error::Denied(message)
        }
        // 1205 lock wait timeout, 1213 deadlock, 1040 too many connections, 1053
        // server shutdown.
        SqlError::Rejected(db) if matches!(db.code.as_str(), "1205" | "1213" | "1040" | "1053") => {
            Error::Unavailable(message)
        }
        SqlError::Rejected(_) => Error::Internal(message),
    }
}
