//! What the host lends a connector, as the runtime takes it: [`ConnectorSpec`] (a
//! component, its pin, its settings, its named SQL and Redis connections, its HTTP
//! policy, its named secrets and its limits) and [`RuntimeConfig`] (the engine).
//!
//! These are the runtime's own typed inputs. They deserialize from the operator's
//! TOML (the engine's configuration embeds them), but the runtime reads no file:
//! the loader builds a [`ConnectorSpec`] for every version it loads. Secrets are
//! [`Secret`]s, redacted in `Debug` and zeroized on drop.

use anyhow::{Context, bail};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use zeroize::Zeroizing;

/// One connector instance as the runtime loads it.
#[derive(Debug, Clone)]
pub struct ConnectorSpec {
    /// Path to the `.wasm` component (for messages; [`crate::Runtime::load`] reads it).
    pub component: PathBuf,
    /// If set, the component's sha256 must match (hex).
    pub sha256: Option<String>,
    /// The connector's own non-secret settings, read through `ebb:connector/config`.
    pub config: BTreeMap<String, String>,
    /// Named SQL connections, used through `ebb:connector/sql`.
    pub sql: BTreeMap<String, SqlConnectionConfig>,
    /// Named Redis connections, used through `ebb:connector/redis`.
    pub redis: BTreeMap<String, RedisConnectionConfig>,
    /// Named MySQL/MariaDB connections (`mysql://user:password@host:port/db` URLs);
    /// the same settings as `sql`.
    pub mysql: BTreeMap<String, SqlConnectionConfig>,
    /// Named LDAP connections, used through `ebb:connector/ldap`.
    pub ldap: BTreeMap<String, LdapConnectionConfig>,
    /// Outbound HTTP allowed through `wasi:http/outgoing-handler`.
    pub http: HttpConfig,
    /// Secrets lent to the connector by name through `ebb:connector/secrets`.
    pub secrets: BTreeMap<String, LentSecret>,
    pub limits: LimitsConfig,
}

impl ConnectorSpec {
    /// A component with nothing lent and default limits.
    pub fn new(component: impl Into<PathBuf>) -> Self {
        Self {
            component: component.into(),
            sha256: None,
            config: BTreeMap::new(),
            sql: BTreeMap::new(),
            redis: BTreeMap::new(),
            mysql: BTreeMap::new(),
            ldap: BTreeMap::new(),
            http: HttpConfig::default(),
            secrets: BTreeMap::new(),
            limits: LimitsConfig::default(),
        }
    }
}

/// Settings of the Wasm runtime shared by all connectors.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct RuntimeConfig {
    /// Where precompiled components are cached. None: compile on every load.
    pub cache_dir: Option<PathBuf>,
    /// How many connector instances may run at once across all connectors.
    pub max_instances: u32,
    /// The largest memory limit any connector may be given, in MiB.
    pub max_memory_mib: u64,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            cache_dir: None,
            max_instances: 256,
            max_memory_mib: 256,
        }
    }
}

/// A named SQL connection. The connector never sees any of it.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct SqlConnectionConfig {
    /// A libpq-style connection string or URL, including the password.
    pub dsn: Option<Secret>,
    /// The name of an environment variable that holds the DSN.
    pub dsn_env: Option<String>,
    /// Pool size.
    pub max_connections: usize,
    /// Per-statement time limit, in milliseconds.
    pub statement_timeout_ms: u64,
    /// PEM certificates of the CA that signed the server's certificate. With it,
    /// TLS is required and the server must prove the DSN's host name
    /// (`verify-full`); without it, `sslmode=require` in the DSN verifies against
    /// the web PKI roots and any other mode connects without TLS.
    pub ca_file: Option<std::path::PathBuf>,
}

impl Default for SqlConnectionConfig {
    fn default() -> Self {
        Self {
            dsn: None,
            dsn_env: None,
            max_connections: 4,
            statement_timeout_ms: 5_000,
            ca_file: None,
        }
    }
}

impl SqlConnectionConfig {
    /// The DSN, read from the environment if configured so.
    pub fn resolve_dsn(&self) -> anyhow::Result<Secret> {
        resolve_secret(self.dsn.as_ref(), self.dsn_env.as_deref(), "dsn")
    }
}

/// A named LDAP connection. The connector never sees its password.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct LdapConnectionConfig {
    /// `ldaps://host:636`, or `ldap://host:389` with `starttls` (plain `ldap://` is
    /// refused except on loopback: it would send the password in clear).
    pub url: String,
    /// The DN the host binds as.
    pub bind_dn: String,
    /// Its password.
    pub password: Option<Secret>,
    /// The name of an environment variable that holds the password.
    pub password_env: Option<String>,
    /// Upgrade `ldap://` with StartTLS.
    pub starttls: bool,
    /// PEM certificates of the CA that signed the server's certificate (the web
    /// PKI roots without it).
    pub ca_file: Option<std::path::PathBuf>,
    /// Time limit of one operation (connect, bind, the operation), in milliseconds.
    pub timeout_ms: u64,
}

impl Default for LdapConnectionConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            bind_dn: String::new(),
            password: None,
            password_env: None,
            starttls: false,
            ca_file: None,
            timeout_ms: 5_000,
        }
    }
}

impl LdapConnectionConfig {
    /// The bind password, read from the environment if configured so.
    pub fn resolve_password(&self) -> anyhow::Result<Secret> {
        resolve_secret(
            self.password.as_ref(),
            self.password_env.as_deref(),
            "password",
        )
    }
}

/// A named Redis connection. The connector never sees its URL.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct RedisConnectionConfig {
    /// `redis://user:password@host:port/db`.
    pub url: Option<Secret>,
    /// The name of an environment variable that holds the URL.
    pub url_env: Option<String>,
    /// The commands the connector may send, by name.
    pub allow_commands: Vec<String>,
    /// Time limit per command, in milliseconds.
    pub timeout_ms: u64,
    /// PEM certificates of the CA that signed the server's certificate, for a
    /// `rediss://` URL (TLS); without it a `rediss://` server is verified against
    /// the system's roots.
    pub ca_file: Option<std::path::PathBuf>,
}

impl Default for RedisConnectionConfig {
    fn default() -> Self {
        Self {
            url: None,
            url_env: None,
            allow_commands: vec!["ACL".into(), "CLIENT".into(), "PING".into()],
            timeout_ms: 5_000,
            ca_file: None,
        }
    }
}

impl RedisConnectionConfig {
    /// The URL, read from the environment if configured so.
    pub fn resolve_url(&self) -> anyhow::Result<Secret> {
        resolve_secret(self.url.as_ref(), self.url_env.as_deref(), "url")
    }
}

/// Outbound HTTP policy of one connector.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct HttpConfig {
    /// Origins (`scheme://host[:port]`) the connector may call.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Origins that may also resolve to loopback, link-local or private addresses.
    /// These are allowed as if listed in `allow`.
    #[serde(default)]
    pub allow_private: Vec<String>,
    /// Basic-auth credentials the host adds to requests for an origin (keyed by
    /// `scheme://host[:port]`, which must be allowed) that carry no `Authorization`
    /// header of their own: an OAuth client authenticates without its secret ever
    /// entering the connector.
    #[serde(default)]
    pub basic_auth: BTreeMap<String, BasicAuth>,
    /// PEM certificates trusted for HTTPS besides the web PKI roots (an internal
    /// identity provider's CA).
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
}

/// A user and a password held by the host for one origin.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct BasicAuth {
    pub user: String,
    /// The password, inline (files only; the admin API refuses it).
    pub password: Option<Secret>,
    /// The environment variable of the host that holds the password.
    pub password_env: Option<String>,
}

impl BasicAuth {
    /// The password, read from the environment if configured so.
    pub fn resolve_password(&self) -> anyhow::Result<Secret> {
        resolve_secret(
            self.password.as_ref(),
            self.password_env.as_deref(),
            "password",
        )
    }
}

/// A secret lent to a connector: inline (files only; the admin API refuses it) or
/// from an environment variable of the host.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct LentSecret {
    pub value: Option<Secret>,
    pub env: Option<String>,
}

impl LentSecret {
    /// The value, read from the environment if configured so.
    pub fn resolve(&self) -> anyhow::Result<Secret> {
        resolve_secret(self.value.as_ref(), self.env.as_deref(), "value")
    }
}

/// A secret given inline or by the name of an environment variable of the host;
/// `validate` makes sure a configuration names exactly one.
fn resolve_secret(
    inline: Option<&Secret>,
    env: Option<&str>,
    what: &str,
) -> anyhow::Result<Secret> {
    match (inline, env) {
        (Some(value), _) => Ok(value.clone()),
        (None, Some(var)) => std::env::var(var)
            .map(Secret::new)
            .with_context(|| format!("environment variable {var} is not set")),
        (None, None) => bail!("no {what} configured"),
    }
}

/// Per-call resource limits of one connector.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct LimitsConfig {
    /// Linear memory limit, in MiB.
    pub memory_mib: u64,
    /// Wall-clock limit for one call, host calls included, in milliseconds.
    pub timeout_ms: u64,
    /// The largest result a call may return, in KiB.
    pub max_output_kib: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            memory_mib: 64,
            timeout_ms: 10_000,
            max_output_kib: 1024,
        }
    }
}

/// A secret string from configuration: redacted in `Debug`, zeroized on drop.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct Secret(Zeroizing<String>);

impl Secret {
    pub fn new(value: String) -> Self {
        Self(Zeroizing::new(value))
    }

    /// The secret value. Do not log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}
