//! `ebb:connector/redis`: commands sent by the host on connections the operator
//! configured. The connector names a connection; the URL and its password stay
//! here, and only the command names the operator allows are sent. Arguments are
//! never logged: `ACL SETUSER` carries a password.
//!
//! TLS: a `rediss://` URL connects over TLS, verified against the connection's
//! `ca-file` if given (the system's roots otherwise); login probes use the same.

use super::CallState;
use crate::bindings::redis::{AuthOutcome, Error, Host, Reply};
use crate::lend::RedisConnectionConfig;
use std::time::Duration;
use tokio::sync::Mutex;

/// One named connection, opened on first use and again after a failure.
pub(crate) struct RedisConnection {
    client: redis::Client,
    /// The `ca-file`'s PEM, for every client opened to this server.
    ca: Option<Vec<u8>>,
    conn: Mutex<Option<redis::aio::MultiplexedConnection>>,
    allow: Vec<String>,
    timeout: Duration,
}

impl std::fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConnection").finish_non_exhaustive()
    }
}

fn failure(e: &redis::RedisError) -> Error {
    if e.is_io_error() || e.is_timeout() || e.is_connection_refusal() || e.is_connection_dropped() {
        Error::Unavailable(e.to_string())
    } else {
        Error::Rejected(e.to_string())
    }
}

/// Whether the server refused a login (wrong or unknown user or password).
fn refused(e: &redis::RedisError) -> bool {
    e.kind() == redis::ErrorKind::AuthenticationFailed
        || matches!(e.code(), Some("WRONGPASS" | "NOAUTH"))
}

fn reply(value: redis::Value) -> Reply {
    use redis::Value as V;
    match value {
        V::Nil => Reply::Nil,
        V::Okay => Reply::Status("OK".into()),
        V::SimpleString(s) => Reply::Status(s),
        V::Int(n) => Reply::Integer(n),
        V::BulkString(b) => Reply::Text(String::from_utf8_lossy(&b).into_owned()),
        V::VerbatimString { text, .. } => Reply::Text(text),
        V::Array(items) | V::Set(items) => Reply::Array(items.into_iter().map(text).collect()),
        V::Map(pairs) => Reply::Array(
            pairs
                .into_iter()
                .flat_map(|(k, v)| [text(k), text(v)])
                .collect(),
        ),
        other => Reply::Text(text(other)),
    }
}

/// A value as text, arrays flattened with spaces.
fn text(value: redis::Value) -> String {
    match reply(value) {
        Reply::Nil => String::new(),
        Reply::Status(s) | Reply::Text(s) => s,
        Reply::Integer(n) => n.to_string(),
        Reply::Array(items) => items.join(" "),
    }
}

/// The connection info of a lent connection, from its URL, and the PEM of its
/// `ca-file` (which needs a `rediss://` URL).
pub(crate) fn client_config(
    config: &RedisConnectionConfig,
) -> anyhow::Result<(redis::ConnectionInfo, Option<Vec<u8>>)> {
    let url = config.resolve_url()?;
    let info = redis::IntoConnectionInfo::into_connection_info(url.expose())
        .map_err(|_| anyhow::anyhow!("the url is not a valid Redis URL"))?;
    let ca = match &config.ca_file {
        Some(path) => {
            anyhow::ensure!(
                matches!(info.addr, redis::ConnectionAddr::TcpTls { .. }),
                "a ca-file is given but the url does not use TLS (rediss://)"
            );
            let pem = std::fs::read(path)
                .map_err(|e| anyhow::anyhow!("reading the CA file {}: {e}", path.display()))?;
            Some(pem)
        }
        None => None,
    };
    Ok((info, ca))
}

/// A client for `info`; over TLS trusting `ca` (PEM) if given.
pub(crate) fn open_client(
    info: redis::ConnectionInfo,
    ca: Option<&[u8]>,
) -> redis::RedisResult<redis::Client> {
    match ca {
        Some(pem) => redis::Client::build_with_tls(
            info,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem.to_vec()),
            },
        ),
        None => redis::Client::open(info),
    }
}

impl RedisConnection {
    /// Prepares the client; nothing is opened until a connector needs it.
    pub fn new(config: &RedisConnectionConfig) -> anyhow::Result<Self> {
        let (info, ca) = client_config(config)?;
        let client = open_client(info, ca.as_deref())
            .map_err(|e| anyhow::anyhow!("the Redis client: {e}"))?;
        Ok(Self {
            client,
            ca,
            conn: Mutex::new(None),
            allow: config
                .allow_commands
                .iter()
                .map(|c| c.to_ascii_uppercase())
                .collect(),
            timeout: Duration::from_millis(config.timeout_ms),
        })
    }

    async fn command(&self, args: Vec<String>) -> Result<Reply, Error> {
        let Some(name) = args.first() else {
            return Err(Error::Denied("an empty command".into()));
        };
        let name = name.to_ascii_uppercase();
        if !self.allow.contains(&name) {
            return Err(Error::Denied(format!(
                "`{name}` is not an allowed command for this connection (allowed: {})",
                self.allow.join(", ")
            )));
        }
        let mut guard = self.conn.lock().await;
        let mut conn = match guard.as_ref() {
            Some(c) => c.clone(),
            None => {
                let c = tokio::time::timeout(
                    self.timeout,
                    self.client.get_multiplexed_async_connection(),
                )
                .await
                .map_err(|_| Error::Unavailable("connecting to Redis timed out".into()))?
                .map_err(|e| failure(&e))?;
                *guard = Some(c.clone());
                c
            }
        };
        drop(guard);
        let mut cmd = redis::cmd(&name);
        for arg in &args[1..] {
            cmd.arg(arg);
        }
        let result = tokio::time::timeout(self.timeout, cmd.query_async::<redis::Value>(&mut conn))
            .await
            .map_err(|_| Error::Unavailable("the Redis command timed out".into()))?;
        match result {
            Ok(value) => Ok(reply(value)),
            Err(e) => {
                let error = failure(&e);
                if matches!(error, Error::Unavailable(_)) {
                    // Open a fresh connection next time.
                    *self.conn.lock().await = None;
                }
                Err(error)
            }
        }
    }

    async fn auth_probe(&self, user: &str, password: &str) -> Result<AuthOutcome, Error> {
        let mut info = self.client.get_connection_info().clone();
        info.redis.username = Some(user.to_owned());
        info.redis.password = Some(password.to_owned());
        let client =
            open_client(info, self.ca.as_deref()).map_err(|e| Error::Unavailable(e.to_string()))?;
        let connected =
            tokio::time::timeout(self.timeout, client.get_multiplexed_async_connection())
                .await
                .map_err(|_| Error::Unavailable("connecting to Redis timed out".into()))?;
        let mut conn = match connected {
            Ok(c) => c,
            Err(e) if refused(&e) => return Ok(AuthOutcome::Refused(e.to_string())),
            Err(e) => return Err(failure(&e)),
        };
        match redis::cmd("PING")
            .query_async::<redis::Value>(&mut conn)
            .await
        {
            // PING needs no permission beyond a working login... unless the user
            // may not even PING: that is still a login that works.
            Ok(_) => Ok(AuthOutcome::Accepted),
            Err(e) if e.code() == Some("NOPERM") => Ok(AuthOutcome::Accepted),
            Err(e) if refused(&e) => Ok(AuthOutcome::Refused(e.to_string())),
            Err(e) => Err(failure(&e)),
        }
    }
}

impl Host for CallState {
    async fn command(
        &mut self,
        connection: String,
        args: Vec<String>,
    ) -> wasmtime::Result<Result<Reply, Error>> {
        let Some(conn) = self.lent.redis.get(&connection) else {
            return Ok(Err(Error::UnknownConnection(format!(
                "no redis connection named `{connection}` is lent to connector `{}`",
                self.lent.name
            ))));
        };
        Ok(conn.command(args).await)
    }

    async fn auth_probe(
        &mut self,
        connection: String,
        user: String,
        mut password: String,
    ) -> wasmtime::Result<Result<AuthOutcome, Error>> {
        let result = match self.lent.redis.get(&connection) {
            Some(conn) => conn.auth_probe(&user, &password).await,
            None => Err(Error::UnknownConnection(format!(
                "no redis connection named `{connection}` is lent to connector `{}`",
                self.lent.name
            ))),
        };
        zeroize::Zeroize::zeroize(&mut password);
        Ok(result)
    }
}
