//! `ebb:connector/mysql`: statements run by the host on MySQL/MariaDB connections
//! the operator configured (mysql_async). The connector names a connection; the URL
//! and its password stay here.
//!
//! A statement without parameters goes over the text protocol (account management
//! statements — `CREATE USER`, `GRANT`, `KILL` — are not all preparable); with
//! parameters it is prepared. Every operation is bounded by the connection's
//! `statement-timeout-ms`. Statement text is never logged and is zeroed after use:
//! `CREATE USER … IDENTIFIED BY` carries a password.
//!
//! TLS: with the connection's `ca-file`, every connection (pool and login probes)
//! requires TLS and verifies the server's certificate and host name against it;
//! otherwise the URL's own settings apply (`require_ssl=true` verifies against the
//! web PKI roots).

use super::CallState;
use crate::bindings::mysql::Host;
use crate::bindings::sql::{DbError, Error, LoginOutcome, Rows, Value};
use crate::lend::SqlConnectionConfig;
use anyhow::Context;
use mysql_async::prelude::Queryable as _;
use mysql_async::{Opts, OptsBuilder, Params, Pool, PoolConstraints, PoolOpts, Row, SslOpts};
use std::time::Duration;
use zeroize::Zeroize;

/// The most rows one query may return to a connector.
const MAX_ROWS: usize = 10_000;

/// One named, pooled connection.
pub(crate) struct MysqlConnection {
    pool: Pool,
    /// For login probes: the pool's server and options, with other credentials.
    opts: Opts,
    timeout: Duration,
}

impl std::fmt::Debug for MysqlConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MysqlConnection").finish_non_exhaustive()
    }
}

impl MysqlConnection {
    /// Prepares the pool; no connection is opened until a connector needs one.
    pub fn new(config: &SqlConnectionConfig) -> anyhow::Result<Self> {
        let url = config.resolve_dsn()?;
        let opts = Opts::from_url(url.expose())
            .map_err(|_| anyhow::anyhow!("the dsn is not a valid mysql:// URL"))?;
        let mut builder = OptsBuilder::from_opts(opts);
        if let Some(ca) = &config.ca_file {
            anyhow::ensure!(ca.exists(), "ca-file {} does not exist", ca.display());
            builder = builder.ssl_opts(SslOpts::default().with_root_certs(vec![ca.clone().into()]));
        }
        let constraints = PoolConstraints::new(0, config.max_connections)
            .context("max-connections must be at least 1")?;
        let opts: Opts = builder
            .pool_opts(PoolOpts::default().with_constraints(constraints))
            .into();
        Ok(Self {
            pool: Pool::new(opts.clone()),
            opts,
            timeout: Duration::from_millis(config.statement_timeout_ms),
        })
    }

    async fn bounded<T>(
        &self,
        what: &str,
        op: impl Future<Output = Result<T, mysql_async::Error>>,
    ) -> Result<T, Error> {
        match tokio::time::timeout(self.timeout, op).await {
            Ok(result) => result.map_err(mysql_error),
            Err(_) => Err(Error::Unavailable(format!(
                "{what} took longer than {} ms",
                self.timeout.as_millis()
            ))),
        }
    }

    async fn conn(&self) -> Result<mysql_async::Conn, Error> {
        self.bounded("getting a database connection", self.pool.get_conn())
            .await
            .map_err(|e| match e {
                Error::Rejected(db) => Error::Rejected(db),
                other => Error::Unavailable(format!("cannot get a database connection: {other:?}")),
            })
    }

    async fn query(&self, statement: &str, params: Vec<Value>) -> Result<Rows, Error> {
        let mut conn = self.conn().await?;
        let rows: Vec<Row> = if params.is_empty() {
            self.bounded("the query", conn.query(statement)).await?
        } else {
            let params = Params::Positional(params.into_iter().map(to_mysql).collect());
            self.bounded("the query", conn.exec(statement, params))
                .await?
        };
        if rows.len() > MAX_ROWS {
            return Err(Error::Invalid(format!(
                "query returned {} rows, more than the limit of {MAX_ROWS}",
                rows.len()
            )));
        }
        let columns = rows
            .first()
            .map(|r| {
                r.columns_ref()
                    .iter()
                    .map(|c| c.name_str().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        let rows = rows
            .into_iter()
            .map(|row| row.unwrap().into_iter().map(from_mysql).collect())
            .collect();
        Ok(Rows { columns, rows })
    }

    async fn execute(&self, statement: &str, params: Vec<Value>) -> Result<u64, Error> {
        let mut conn = self.conn().await?;
        if params.is_empty() {
            self.bounded("the statement", conn.query_drop(statement))
                .await?;
        } else {
            let params = Params::Positional(params.into_iter().map(to_mysql).collect());
            self.bounded("the statement", conn.exec_drop(statement, params))
                .await?;
        }
        Ok(conn.affected_rows())
    }

    async fn login_probe(&self, user: &str, password: &str) -> Result<LoginOutcome, Error> {
        let opts = OptsBuilder::from_opts(self.opts.clone())
            .user(Some(user))
            .pass(Some(password))
            .pool_opts(None::<PoolOpts>);
        let attempt = async {
            let mut conn = mysql_async::Conn::new(opts).await?;
            let outcome = conn.query_drop("SELECT 1").await;
            let _ = conn.disconnect().await;
            outcome
        };
        match tokio::time::timeout(self.timeout, attempt).await {
            Ok(Ok(())) => Ok(LoginOutcome::Accepted),
            // Access denied (1045), the account locked (MariaDB 4151, MySQL 3118),
            // an expired password (1862, or 1820 for the sandbox it allows).
            Ok(Err(mysql_async::Error::Server(e)))
                if matches!(e.code, 1045 | 4151 | 3118 | 1862 | 1820) =>
            {
                Ok(LoginOutcome::Refused(e.message))
            }
            Ok(Err(e)) => Err(mysql_error(e)),
            Err(_) => Err(Error::Unavailable(format!(
                "the login probe took longer than {} ms",
                self.timeout.as_millis()
            ))),
        }
    }
}

/// Server errors keep their number (as the `code`) and message; the rest (I/O, a
/// closed connection, TLS) are transient.
fn mysql_error(e: mysql_async::Error) -> Error {
    match e {
        mysql_async::Error::Server(e) => Error::Rejected(DbError {
            code: e.code.to_string(),
            message: e.message,
        }),
        other => Error::Unavailable(other.to_string()),
    }
}

fn to_mysql(v: Value) -> mysql_async::Value {
    match v {
        Value::Null => mysql_async::Value::NULL,
        Value::Boolean(b) => mysql_async::Value::Int(i64::from(b)),
        Value::Int(i) => mysql_async::Value::Int(i),
        Value::Float(f) => mysql_async::Value::Double(f),
        Value::Text(s) => mysql_async::Value::Bytes(s.into_bytes()),
        Value::Bytes(b) => mysql_async::Value::Bytes(b),
    }
}

fn from_mysql(v: mysql_async::Value) -> Value {
    match v {
        mysql_async::Value::NULL => Value::Null,
        // The text protocol returns every value as bytes: text when it is UTF-8.
        mysql_async::Value::Bytes(b) => match String::from_utf8(b) {
            Ok(s) => Value::Text(s),
            Err(e) => Value::Bytes(e.into_bytes()),
        },
        mysql_async::Value::Int(i) => Value::Int(i),
        mysql_async::Value::UInt(u) => match i64::try_from(u) {
            Ok(i) => Value::Int(i),
            Err(_) => Value::Text(u.to_string()),
        },
        mysql_async::Value::Float(f) => Value::Float(f.into()),
        mysql_async::Value::Double(f) => Value::Float(f),
        other => Value::Text(other.as_sql(true).trim_matches('\'').to_owned()),
    }
}

impl CallState {
    fn mysql(&self, name: &str) -> Result<&MysqlConnection, Error> {
        self.lent.mysql.get(name).ok_or_else(|| {
            Error::UnknownConnection(format!(
                "no mysql connection named `{name}` is lent to connector `{}`",
                self.lent.name
            ))
        })
    }
}

impl Host for CallState {
    async fn query(
        &mut self,
        connection: String,
        mut statement: String,
        params: Vec<Value>,
    ) -> wasmtime::Result<Result<Rows, Error>> {
        let result = match self.mysql(&connection) {
            Ok(c) => c.query(&statement, params).await,
            Err(e) => Err(e),
        };
        statement.zeroize();
        Ok(result)
    }

    async fn execute(
        &mut self,
        connection: String,
        mut statement: String,
        params: Vec<Value>,
    ) -> wasmtime::Result<Result<u64, Error>> {
        let result = match self.mysql(&connection) {
            Ok(c) => c.execute(&statement, params).await,
            Err(e) => Err(e),
        };
        statement.zeroize();
        Ok(result)
    }

    async fn login_probe(
        &mut self,
        connection: String,
        user: String,
        mut password: String,
    ) -> wasmtime::Result<Result<LoginOutcome, Error>> {
        let result = match self.mysql(&connection) {
            Ok(c) => c.login_probe(&user, &password).await,
            Err(e) => Err(e),
        };
        password.zeroize();
        Ok(result)
    }
}
