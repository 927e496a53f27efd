//! Redis through connections the operator lent this connector
//! (`ebb:connector/redis`). The host holds the URL and password, and sends only the
//! command names the operator allows; the connector names a connection.

use crate::wit::ebb::connector0_1_0::redis as raw;
pub use crate::wit::ebb::connector0_1_0::redis::{AuthOutcome, Error as RedisError, Reply};

/// Sends one command, e.g. `command("main", &["ACL", "DELUSER", "ebb_x"])`.
pub fn command(connection: &str, args: &[&str]) -> Result<Reply, RedisError> {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    raw::command(connection, &args)
}

/// Tries `AUTH user password` on a new connection to the server behind `connection`.
pub fn auth_probe(connection: &str, user: &str, password: &str) -> Result<AuthOutcome, RedisError> {
    raw::auth_probe(connection, user, password)
}

/// A one-line description of a Redis error, for connector error messages.
pub fn describe(e: &RedisError) -> String {
    match e {
        RedisError::UnknownConnection(m) => format!("unknown redis connection: {m}"),
        RedisError::Unavailable(m) => format!("redis unavailable: {m}"),
        RedisError::Rejected(m) => format!("redis rejected the command: {m}"),
        RedisError::Denied(m) => format!("the host refused the command: {m}"),
    }
}

impl From<RedisError> for crate::Error {
    /// Unreachable or timed out is retryable; anything else is the connector's bug
    /// or a server that refuses, and is reported as such.
    fn from(e: RedisError) -> Self {
        match e {
            RedisError::Unavailable(_) => crate::Error::Unavailable(describe(&e)),
            RedisError::Rejected(_) => crate::Error::Denied(describe(&e)),
            _ => crate::Error::Internal(describe(&e)),
        }
    }
}
