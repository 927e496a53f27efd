//! What the host lends a connector, and the per-call state (`wasmtime::Store` data).
//!
//! [`Lent`] is built once per connector instance from its configuration; every call
//! gets a fresh [`CallState`] pointing at it. WASI is linked with an empty context
//! (no files, environment, arguments, sockets or name lookups); `wasi:http` goes
//! through [`http::HttpPolicy`], which also adds the basic auth the operator holds
//! for an origin; `secrets` lends named secrets explicitly.

pub(crate) mod config;
mod crypto;
mod egress;
pub(crate) mod http;
pub(crate) mod ldap;
pub(crate) mod log;
pub(crate) mod mysql;
pub(crate) mod redis;
pub(crate) mod secrets;
pub(crate) mod sql;

use super::bindings;
use super::limits::{Limits, MemoryLimiter};
use crate::lend::ConnectorSpec;
use anyhow::Context;
use std::collections::BTreeMap;
use std::sync::Arc;
use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

/// Everything one connector instance is lent, shared by all its calls.
#[derive(Debug)]
pub(crate) struct Lent {
    pub name: Arc<str>,
    pub config: BTreeMap<String, String>,
    pub sql: BTreeMap<String, sql::SqlConnection>,
    pub redis: BTreeMap<String, redis::RedisConnection>,
    pub mysql: BTreeMap<String, mysql::MysqlConnection>,
    pub ldap: BTreeMap<String, ldap::LdapConnection>,
    pub http: Arc<http::HttpPolicy>,
    pub secrets: BTreeMap<String, crate::lend::Secret>,
}

impl Lent {
    pub fn new(name: &str, spec: &ConnectorSpec) -> anyhow::Result<Arc<Self>> {
        let name: Arc<str> = Arc::from(name);
        let mut connections = BTreeMap::new();
        for (conn_name, conn) in &spec.sql {
            let connection = sql::SqlConnection::new(conn)
                .with_context(|| format!("sql connection `{conn_name}`"))?;
            connections.insert(conn_name.clone(), connection);
        }
        let mut redis_connections = BTreeMap::new();
        for (conn_name, conn) in &spec.redis {
            let connection = redis::RedisConnection::new(conn)
                .with_context(|| format!("redis connection `{conn_name}`"))?;
            redis_connections.insert(conn_name.clone(), connection);
        }
        let mut mysql_connections = BTreeMap::new();
        for (conn_name, conn) in &spec.mysql {
            let connection = mysql::MysqlConnection::new(conn)
                .with_context(|| format!("mysql connection `{conn_name}`"))?;
            mysql_connections.insert(conn_name.clone(), connection);
        }
        let mut ldap_connections = BTreeMap::new();
        for (conn_name, conn) in &spec.ldap {
            let connection = ldap::LdapConnection::new(conn)
                .with_context(|| format!("ldap connection `{conn_name}`"))?;
            ldap_connections.insert(conn_name.clone(), connection);
        }
        let mut secrets = BTreeMap::new();
        for (secret_name, source) in &spec.secrets {
            let value = source
                .resolve()
                .with_context(|| format!("secret `{secret_name}`"))?;
            secrets.insert(secret_name.clone(), value);
        }
        Ok(Arc::new(Self {
            http: Arc::new(http::HttpPolicy::new(name.clone(), &spec.http)?),
            secrets,
            name,
            config: spec.config.clone(),
            sql: connections,
            redis: redis_connections,
            mysql: mysql_connections,
            ldap: ldap_connections,
        }))
    }
}

/// The data of one call's `wasmtime::Store`.
pub(crate) struct CallState {
    table: ResourceTable,
    wasi: WasiCtx,
    http_ctx: WasiHttpCtx,
    http_hooks: http::HttpHooks,
    pub lent: Arc<Lent>,
    pub limiter: MemoryLimiter,
    logs_left: u32,
}

impl CallState {
    pub fn new(lent: Arc<Lent>, limits: &Limits) -> Self {
        Self {
            table: ResourceTable::new(),
            // Empty on purpose: connectors get no ambient authority.
            wasi: WasiCtx::builder().build(),
            http_ctx: WasiHttpCtx::new(),
            http_hooks: http::HttpHooks::new(lent.http.clone()),
            lent,
            limiter: MemoryLimiter::new(limits.memory_bytes),
            logs_left: log::MAX_LOGS_PER_CALL,
        }
    }
}

impl WasiView for CallState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for CallState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http_ctx,
            table: &mut self.table,
            hooks: &mut self.http_hooks,
        }
    }
}

impl bindings::types::Host for CallState {}

/// Links WASI (empty context), `wasi:http` (policed) and the `ebb:connector` imports.
pub(crate) fn add_to_linker(linker: &mut Linker<CallState>) -> anyhow::Result<()> {
    wasmtime_wasi::p2::add_to_linker_async(linker)
        .map_err(anyhow::Error::from)
        .context("linking WASI")?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(linker)
        .map_err(anyhow::Error::from)
        .context("linking wasi:http")?;
    bindings::types::add_to_linker::<_, HasSelf<CallState>>(linker, |s| s)?;
    bindings::log::add_to_linker::<_, HasSelf<CallState>>(linker, |s| s)?;
    bindings::config::add_to_linker::<_, HasSelf<CallState>>(linker, |s| s)?;
    bindings::sql::add_to_linker::<_, HasSelf<CallState>>(linker, |s| s)?;
    bindings::redis::add_to_linker::<_, HasSelf<CallState>>(linker, |s| s)?;
    bindings::mysql::add_to_linker::<_, HasSelf<CallState>>(linker, |s| s)?;
    bindings::ldap::add_to_linker::<_, HasSelf<CallState>>(linker, |s| s)?;
    bindings::secrets::add_to_linker::<_, HasSelf<CallState>>(linker, |s| s)?;
    bindings::crypto::add_to_linker::<_, HasSelf<CallState>>(linker, |s| s)?;
    Ok(())
}
