//! `ebb:connector/sql`: statements run by the host on connections the operator
//! configured. The connector names a connection; the DSN and its password stay here.
//!
//! Parameters are converted to the types the server inferred for the prepared
//! statement, so a connector can pass `int(5)` for an `int4` or `text` for a `name`.
//! Statement text is never logged: DDL such as `CREATE ROLE … PASSWORD` carries
//! secrets.
//!
//! TLS: with the connection's `ca-file`, every connection (pool and login probes)
//! requires TLS and verifies the server's certificate and host name; with
//! `sslmode=require` and no CA file, against the web PKI roots. An unverified
//! "prefer" is not offered: it protects against nothing an attacker on the path
//! cannot undo.

use super::CallState;
use crate::bindings::sql::{DbError, Error, Host, LoginOutcome, Rows, Value};
use crate::lend::SqlConnectionConfig;
use anyhow::Context;
use bytes::BytesMut;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use std::time::Duration;
use tokio_postgres::Row;
use tokio_postgres::config::SslMode;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};
use tokio_postgres_rustls::MakeRustlsConnect;
use zeroize::Zeroize;

/// The most rows one query may return to a connector.
const MAX_ROWS: usize = 10_000;

/// One named, pooled connection.
pub(crate) struct SqlConnection {
    pool: Pool,
    /// For login probes: host, port and database of the pool, no credentials used.
    probe_config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
}

impl std::fmt::Debug for SqlConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlConnection").finish_non_exhaustive()
    }
}

impl SqlConnection {
    /// Prepares the pool; no connection is opened until a connector needs one, so a
    /// connector loads even while its database is down.
    pub fn new(config: &SqlConnectionConfig) -> anyhow::Result<Self> {
        let (mut pg, tls) = client_config(config)?;
        pg.application_name("ebb")
            .options(format!(
                "-c statement_timeout={}",
                config.statement_timeout_ms
            ))
            .connect_timeout(Duration::from_millis(config.statement_timeout_ms));
        let mut probe_config = pg.clone();
        probe_config.application_name("ebb-login-probe");
        let manager = Manager::from_config(
            pg,
            tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        // No pool-level timeouts: each registers a tokio timer per checkout, and a
        // timer earlier than a parked worker's wake-up costs a cross-thread unpark on
        // every statement (measured in BENCHMARKS.md). Time is bounded instead by the
        // server's statement_timeout, the connect timeout and the call's deadline.
        let pool = Pool::builder(manager)
            .max_size(config.max_connections)
            .build()
            .context("building the connection pool")?;
        Ok(Self {
            pool,
            probe_config,
            tls,
        })
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, Error> {
        self.pool
            .get()
            .await
            .map_err(|e| Error::Unavailable(format!("cannot get a database connection: {e}")))
    }

    async fn query(&self, statement: &str, params: Vec<Value>) -> Result<Rows, Error> {
        let client = self.client().await?;
        let prepared = client.prepare_cached(statement).await.map_err(pg_error)?;
        let params: Vec<Param> = params.into_iter().map(Param).collect();
        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as _).collect();
        let rows = client.query(&prepared, &refs).await.map_err(pg_error)?;
        if rows.len() > MAX_ROWS {
            return Err(Error::Invalid(format!(
                "query returned {} rows, more than the limit of {MAX_ROWS}",
                rows.len()
            )));
        }
        let columns = prepared
            .columns()
            .iter()
            .map(|c| c.name().to_owned())
            .collect();
        let rows = rows.iter().map(decode_row).collect::<Result<_, _>>()?;
        Ok(Rows { columns, rows })
    }

    async fn execute(&self, statement: &str, params: Vec<Value>) -> Result<u64, Error> {
        let client = self.client().await?;
        let prepared = client.prepare_cached(statement).await.map_err(pg_error)?;
        let params: Vec<Param> = params.into_iter().map(Param).collect();
        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as _).collect();
        client.execute(&prepared, &refs).await.map_err(pg_error)
    }

    async fn execute_batch(&self, statements: &str) -> Result<(), Error> {
        let client = self.client().await?;
        client.batch_execute(statements).await.map_err(pg_error)
    }

    async fn login_probe(&self, user: &str, password: &str) -> Result<LoginOutcome, Error> {
        let mut config = self.probe_config.clone();
        config.user(user).password(password);
        match config.connect(self.tls.clone()).await {
            Ok((client, connection)) => {
                let driver = tokio::spawn(connection);
                let outcome = match client.simple_query("select 1").await {
                    Ok(_) => LoginOutcome::Accepted,
                    Err(e) => match e.as_db_error() {
                        Some(db) => LoginOutcome::Refused(db.message().to_owned()),
                        None => return Err(Error::Unavailable(e.to_string())),
                    },
                };
                drop(client);
                driver.abort();
                Ok(outcome)
            }
            Err(e) => match e.as_db_error() {
                // 28000 invalid_authorization_specification (e.g. NOLOGIN, no such
                // role in pg_hba), 28P01 invalid_password (wrong, expired or unknown).
                Some(db) if db.code().code().starts_with("28") => {
                    Ok(LoginOutcome::Refused(db.message().to_owned()))
                }
                Some(db) => Err(Error::Rejected(DbError {
                    code: db.code().code().to_owned(),
                    message: db.message().to_owned(),
                })),
                None => Err(Error::Unavailable(format!(
                    "login probe could not connect: {e}"
                ))),
            },
        }
    }
}

/// The driver's configuration for a lent connection, from its DSN, and the TLS
/// connector its `ca-file` and `sslmode` call for (see the module docs).
pub(crate) fn client_config(
    config: &SqlConnectionConfig,
) -> anyhow::Result<(tokio_postgres::Config, MakeRustlsConnect)> {
    let dsn = config.resolve_dsn()?;
    let mut pg: tokio_postgres::Config = dsn
        .expose()
        .parse()
        .map_err(|_| anyhow::anyhow!("the dsn is not a valid PostgreSQL connection string"))?;
    let roots = match (&config.ca_file, pg.get_ssl_mode()) {
        (Some(ca), _) => {
            pg.ssl_mode(SslMode::Require);
            super::egress::tls_roots(Some(ca), false)?
        }
        (None, SslMode::Require) => super::egress::tls_roots(None, true)?,
        (None, _) => {
            pg.ssl_mode(SslMode::Disable);
            rustls::RootCertStore::empty()
        }
    };
    Ok((
        pg,
        MakeRustlsConnect::new(super::egress::client_config(roots)?),
    ))
}

impl CallState {
    fn connection(&self, name: &str) -> Result<&SqlConnection, Error> {
        self.lent.sql.get(name).ok_or_else(|| {
            Error::UnknownConnection(format!(
                "no sql connection named `{name}` is lent to connector `{}`",
                self.lent.name
            ))
        })
    }

    /// Runs `op` on the named connection. Time is bounded by the server-side
    /// `statement_timeout` and by the call's own deadline (see `runtime::call`).
    async fn with_connection<T>(
        &mut self,
        name: &str,
        op: impl AsyncFnOnce(&SqlConnection) -> Result<T, Error>,
    ) -> wasmtime::Result<Result<T, Error>> {
        let conn = match self.connection(name) {
            Ok(conn) => conn,
            Err(e) => return Ok(Err(e)),
        };
        Ok(op(conn).await)
    }
}

impl Host for CallState {
    async fn query(
        &mut self,
        connection: String,
        statement: String,
        params: Vec<Value>,
    ) -> wasmtime::Result<Result<Rows, Error>> {
        self.with_connection(&connection, async |c| c.query(&statement, params).await)
            .await
    }

    async fn execute(
        &mut self,
        connection: String,
        statement: String,
        params: Vec<Value>,
    ) -> wasmtime::Result<Result<u64, Error>> {
        self.with_connection(&connection, async |c| c.execute(&statement, params).await)
            .await
    }

    async fn execute_batch(
        &mut self,
        connection: String,
        mut statements: String,
    ) -> wasmtime::Result<Result<(), Error>> {
        let result = self
            .with_connection(&connection, async |c| c.execute_batch(&statements).await)
            .await;
        // DDL batches carry passwords.
        statements.zeroize();
        result
    }

    async fn login_probe(
        &mut self,
        connection: String,
        user: String,
        mut password: String,
    ) -> wasmtime::Result<Result<LoginOutcome, Error>> {
        let result = self
            .with_connection(&connection, async |c| c.login_probe(&user, &password).await)
            .await;
        password.zeroize();
        result
    }
}

/// Maps a driver error to the contract: server errors carry their SQLSTATE, the rest
/// (I/O, closed connection, timeouts) are transient.
fn pg_error(e: tokio_postgres::Error) -> Error {
    if let Some(db) = e.as_db_error() {
        return Error::Rejected(DbError {
            code: db.code().code().to_owned(),
            message: server_message(db),
        });
    }
    // A parameter that did not convert is the connector's mistake, not an outage.
    let text = e.to_string();
    if text.contains("error serializing parameter") {
        let source = std::error::Error::source(&e).map(ToString::to_string);
        return Error::Invalid(source.unwrap_or(text));
    }
    Error::Unavailable(text)
}

/// The server's message with its DETAIL and HINT, which say what blocked a statement
/// (e.g. "2 objects in database sales" when a role cannot be dropped): an operator
/// reading a residue or an escalation needs them, and the connector cannot ask again.
fn server_message(db: &tokio_postgres::error::DbError) -> String {
    let mut message = db.message().to_owned();
    if let Some(detail) = db.detail() {
        message.push_str(" (detail: ");
        message.push_str(&detail.replace('\n', "; "));
        message.push(')');
    }
    if let Some(hint) = db.hint() {
        message.push_str(" (hint: ");
        message.push_str(hint);
        message.push(')');
    }
    message
}

/// A parameter, converted to whatever type the server inferred for its placeholder.
#[derive(Debug)]
struct Param(Value);

impl ToSql for Param {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match (&self.0, ty) {
            (Value::Null, _) => Ok(IsNull::Yes),
            (Value::Boolean(b), &Type::BOOL) => b.to_sql(ty, out),
            (Value::Int(i), &Type::INT2) => i16::try_from(*i)?.to_sql(ty, out),
            (Value::Int(i), &Type::INT4) => i32::try_from(*i)?.to_sql(ty, out),
            (Value::Int(i), &Type::INT8) => i.to_sql(ty, out),
            (Value::Int(i), &Type::OID) => u32::try_from(*i)?.to_sql(ty, out),
            #[expect(
                clippy::cast_precision_loss,
                reason = "an int sent as float is the caller's choice"
            )]
            (Value::Int(i), &Type::FLOAT8) => (*i as f64).to_sql(ty, out),
            (Value::Float(f), &Type::FLOAT8) => f.to_sql(ty, out),
            #[expect(clippy::cast_possible_truncation, reason = "float4 parameters are f32")]
            (Value::Float(f), &Type::FLOAT4) => (*f as f32).to_sql(ty, out),
            (Value::Text(s), ty) if <&str as ToSql>::accepts(ty) => s.as_str().to_sql(ty, out),
            (Value::Bytes(b), &Type::BYTEA) => b.as_slice().to_sql(ty, out),
            (value, ty) => Err(format!(
                "a {} value cannot be sent as a parameter of type {ty}",
                value_kind(value)
            )
            .into()),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

fn value_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Boolean(_) => "boolean",
        Value::Int(_) => "int",
        Value::Float(_) => "float",
        Value::Text(_) => "text",
        Value::Bytes(_) => "bytes",
    }
}

fn decode_row(row: &Row) -> Result<Vec<Value>, Error> {
    row.columns()
        .iter()
        .enumerate()
        .map(|(i, col)| {
            decode(row, i, col.type_())
                .map_err(|e| Error::Invalid(format!("column `{}`: {e}", col.name())))
        })
        .collect()
}

fn decode(row: &Row, i: usize, ty: &Type) -> Result<Value, String> {
    fn get<'a, T: tokio_postgres::types::FromSql<'a>>(
        row: &'a Row,
        i: usize,
    ) -> Result<Option<T>, String> {
        row.try_get::<_, Option<T>>(i).map_err(|e| e.to_string())
    }
    let value = match *ty {
        Type::BOOL => get::<bool>(row, i)?.map(Value::Boolean),
        Type::INT2 => get::<i16>(row, i)?.map(|v| Value::Int(v.into())),
        Type::INT4 => get::<i32>(row, i)?.map(|v| Value::Int(v.into())),
        Type::INT8 => get::<i64>(row, i)?.map(Value::Int),
        Type::OID => get::<u32>(row, i)?.map(|v| Value::Int(v.into())),
        Type::CHAR => get::<i8>(row, i)?.map(|v| Value::Int(v.into())),
        Type::FLOAT4 => get::<f32>(row, i)?.map(|v| Value::Float(v.into())),
        Type::FLOAT8 => get::<f64>(row, i)?.map(Value::Float),
        Type::BYTEA => get::<Vec<u8>>(row, i)?.map(Value::Bytes),
        ref t if <String as tokio_postgres::types::FromSql>::accepts(t) => {
            get::<String>(row, i)?.map(Value::Text)
        }
        ref t => {
            return Err(format!(
                "type {t} is not supported; cast it to text in the query"
            ));
        }
    };
    Ok(value.unwrap_or(Value::Null))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 12: a server error keeps PostgreSQL's DETAIL (what blocks a DROP ROLE,
    /// and where), so an escalation tells the operator where to look.
    #[tokio::test]
    async fn server_errors_keep_their_detail() {
        ebb_test_support::require!(Postgres);
        let pg = ebb_test_support::Postgres::start().unwrap();
        pg.psql(
            "create role ebb_detail; create table owned_by_it (x int); \
             alter table owned_by_it owner to ebb_detail",
        )
        .unwrap();
        let conn = SqlConnection::new(&SqlConnectionConfig {
            dsn: Some(crate::lend::Secret::new(pg.admin_dsn())),
            ..SqlConnectionConfig::default()
        })
        .unwrap();
        match conn.execute_batch("drop role ebb_detail").await {
            Err(Error::Rejected(db)) => {
                assert_eq!(db.code, "2BP01");
                assert!(
                    db.message.contains("(detail: owner of table owned_by_it)"),
                    "{}",
                    db.message
                );
            }
            other => panic!("expected the server to refuse: {other:?}"),
        }
    }
}
