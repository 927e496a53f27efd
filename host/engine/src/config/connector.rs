//! One connector instance in the configuration: the component, what it is lent
//! (the runtime's own `lend` types) and how the lifecycle treats its grants
//! ([`LifecyclePolicy`]); [`ConnectorConfig::spec`] is what the runtime loads.

use super::is_sha256_hex;
use anyhow::{Context, bail};
use ebb_runtime::lend::{
    BasicAuth, ConnectorSpec, HttpConfig, LdapConnectionConfig, LentSecret, LimitsConfig,
    RedisConnectionConfig, Secret, SqlConnectionConfig,
};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One connector instance: a component plus what it is lent.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ConnectorConfig {
    /// Path to the `.wasm` component.
    pub component: PathBuf,
    /// If set, the component's sha256 must match (hex).
    pub sha256: Option<String>,
    /// The connector's own non-secret settings, read through `ebb:connector/config`.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    /// Named SQL connections, used through `ebb:connector/sql`.
    #[serde(default)]
    pub sql: BTreeMap<String, SqlConnectionConfig>,
    /// Named Redis connections, used through `ebb:connector/redis`.
    #[serde(default)]
    pub redis: BTreeMap<String, RedisConnectionConfig>,
    /// Named MySQL/MariaDB connections, used through `ebb:connector/mysql`: the same
    /// settings as `sql`, with a `mysql://` URL.
    #[serde(default)]
    pub mysql: BTreeMap<String, SqlConnectionConfig>,
    /// Named LDAP connections, used through `ebb:connector/ldap`.
    #[serde(default)]
    pub ldap: BTreeMap<String, LdapConnectionConfig>,
    /// Outbound HTTP allowed through `wasi:http/outgoing-handler`.
    #[serde(default)]
    pub http: HttpConfig,
    /// Secrets lent to the connector by name through `ebb:connector/secrets`.
    #[serde(default)]
    pub secrets: BTreeMap<String, LentSecret>,
    #[serde(default)]
    pub limits: LimitsConfig,
    /// How the lifecycle treats this connector's grants.
    #[serde(default)]
    pub lifecycle: LifecyclePolicy,
}

/// Per-connector lifecycle policy: limits on grants, retries, verification.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct LifecyclePolicy {
    /// The longest TTL a grant may have; longer requests are refused.
    pub max_ttl_ms: u64,
    /// First retry delay after a failed revoke or verify; doubles per attempt.
    pub retry_base_ms: u64,
    /// The longest retry delay (also the pace of retries once escalated).
    pub retry_max_ms: u64,
    /// Failed attempts (errors or residue found) before the grant is escalated.
    pub escalate_after: u32,
    /// How long to wait after `revoke` before asking `verify-revoked`, for
    /// downstream systems that are eventually consistent.
    pub propagation_delay_ms: u64,
    /// After verification, keep re-verifying for this long (0: never). Catches
    /// access that comes back, e.g. through inherited roles.
    pub reverify_window_ms: u64,
    /// How often to re-verify within the window.
    pub reverify_every_ms: u64,
    /// Prove a fresh credential works (`verify-issued`) before handing it out, if
    /// the connector can.
    pub verify_issued: bool,
    /// How long `verify-issued` may keep saying "not yet".
    pub verify_issued_timeout_ms: u64,
    /// Calls to this connector at once: half for background work (expiry, retries,
    /// verification), half for requests, so neither can starve the other.
    pub max_concurrent_calls: usize,
    /// Whether requests need a person's approval (`required`) or are approved as
    /// they come (`auto`). Policy-based approval replaces this.
    pub approval: ApprovalMode,
    /// What the hourly orphan scan does with something downstream under Ebb's
    /// naming scheme that no live grant accounts for: `report` it (audit, alert,
    /// metric), or also `revoke` it by id and verify.
    pub orphans: OrphanAction,
}

/// See [`LifecyclePolicy::orphans`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OrphanAction {
    Report,
    Revoke,
}

/// See [`LifecyclePolicy::approval`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ApprovalMode {
    Auto,
    Required,
}

impl Default for LifecyclePolicy {
    fn default() -> Self {
        Self {
            max_ttl_ms: 8 * 3600 * 1000,
            retry_base_ms: 500,
            retry_max_ms: 5 * 60 * 1000,
            escalate_after: 6,
            propagation_delay_ms: 0,
            reverify_window_ms: 0,
            reverify_every_ms: 60_000,
            verify_issued: true,
            verify_issued_timeout_ms: 10_000,
            max_concurrent_calls: 16,
            approval: ApprovalMode::Required,
            orphans: OrphanAction::Report,
        }
    }
}

impl ConnectorConfig {
    /// A connector instance with nothing lent and default limits.
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
            lifecycle: LifecyclePolicy::default(),
        }
    }

    /// What the runtime needs to load this instance (everything but the lifecycle
    /// policy, which is the engine's).
    pub fn spec(&self) -> ConnectorSpec {
        ConnectorSpec {
            component: self.component.clone(),
            sha256: self.sha256.clone(),
            config: self.config.clone(),
            sql: self.sql.clone(),
            redis: self.redis.clone(),
            mysql: self.mysql.clone(),
            ldap: self.ldap.clone(),
            http: self.http.clone(),
            secrets: self.secrets.clone(),
            limits: self.limits,
        }
    }

    /// Replaces the lifecycle policy.
    pub fn with_lifecycle(mut self, lifecycle: LifecyclePolicy) -> Self {
        self.lifecycle = lifecycle;
        self
    }

    /// Sets one `config` value.
    pub fn with_config(mut self, key: &str, value: &str) -> Self {
        self.config.insert(key.to_owned(), value.to_owned());
        self
    }

    /// Lends a SQL connection under `name`.
    pub fn with_sql(mut self, name: &str, dsn: &str) -> Self {
        self.sql.insert(
            name.to_owned(),
            SqlConnectionConfig {
                dsn: Some(Secret::new(dsn.to_owned())),
                ..SqlConnectionConfig::default()
            },
        );
        self
    }

    /// Lends a MySQL/MariaDB connection under `name`.
    pub fn with_mysql(mut self, name: &str, url: &str) -> Self {
        self.mysql.insert(
            name.to_owned(),
            SqlConnectionConfig {
                dsn: Some(Secret::new(url.to_owned())),
                ..SqlConnectionConfig::default()
            },
        );
        self
    }

    /// Lends an LDAP connection under `name`, bound as `bind_dn`.
    pub fn with_ldap(mut self, name: &str, url: &str, bind_dn: &str, password: &str) -> Self {
        self.ldap.insert(
            name.to_owned(),
            LdapConnectionConfig {
                url: url.to_owned(),
                bind_dn: bind_dn.to_owned(),
                password: Some(Secret::new(password.to_owned())),
                ..LdapConnectionConfig::default()
            },
        );
        self
    }

    /// Lends a Redis connection under `name` (default allowed commands).
    pub fn with_redis(mut self, name: &str, url: &str) -> Self {
        self.redis.insert(
            name.to_owned(),
            RedisConnectionConfig {
                url: Some(Secret::new(url.to_owned())),
                ..RedisConnectionConfig::default()
            },
        );
        self
    }

    /// Allows outbound HTTP to `origin` (`scheme://host[:port]`); `private` also
    /// allows it to resolve to loopback, link-local or private addresses.
    pub fn with_http_origin(mut self, origin: &str, private: bool) -> Self {
        self.http.allow.push(origin.to_owned());
        if private {
            self.http.allow_private.push(origin.to_owned());
        }
        self
    }

    /// Has the host add basic auth to requests for `origin` without their own.
    pub fn with_http_basic_auth(mut self, origin: &str, user: &str, password: &str) -> Self {
        self.http.basic_auth.insert(
            origin.to_owned(),
            BasicAuth {
                user: user.to_owned(),
                password: Some(Secret::new(password.to_owned())),
                password_env: None,
            },
        );
        self
    }

    /// Lends `value` to the connector as the secret `name`.
    pub fn with_secret(mut self, name: &str, value: &str) -> Self {
        self.secrets.insert(
            name.to_owned(),
            LentSecret {
                value: Some(Secret::new(value.to_owned())),
                env: None,
            },
        );
        self
    }

    /// Replaces the limits.
    pub fn with_limits(mut self, limits: LimitsConfig) -> Self {
        self.limits = limits;
        self
    }

    /// Parses one instance's TOML (a plugins-folder file), resolving a relative
    /// `component` against `base`.
    pub fn parse_toml(text: &str, base: &Path) -> anyhow::Result<Self> {
        let mut config: Self = toml::from_str(text)?;
        config.validate()?;
        if config.component.is_relative() {
            config.component = base.join(&config.component);
        }
        Ok(config)
    }

    /// Checks what deserializing cannot.
    pub fn validate(&self) -> anyhow::Result<()> {
        if let Some(pin) = &self.sha256
            && !is_sha256_hex(pin)
        {
            bail!("sha256 must be 64 hex digits, got `{pin}`");
        }
        for (kind, connections) in [("sql", &self.sql), ("mysql", &self.mysql)] {
            for (name, sql) in connections {
                match (&sql.dsn, &sql.dsn_env) {
                    (Some(_), None) | (None, Some(_)) => {}
                    _ => {
                        bail!("{kind} connection `{name}` needs exactly one of `dsn` or `dsn-env`")
                    }
                }
                if sql.max_connections == 0 {
                    bail!("{kind} connection `{name}`: max-connections must be at least 1");
                }
            }
        }
        for (name, ldap) in &self.ldap {
            if ldap.password.is_some() == ldap.password_env.is_some() {
                bail!("ldap connection `{name}` needs exactly one of `password` or `password-env`");
            }
            if ldap.url.is_empty() || ldap.bind_dn.is_empty() || ldap.timeout_ms == 0 {
                bail!("ldap connection `{name}` needs a url, a bind-dn and a timeout-ms above 0");
            }
        }
        for (name, redis) in &self.redis {
            if redis.url.is_some() == redis.url_env.is_some() {
                bail!("redis connection `{name}` needs exactly one of `url` or `url-env`");
            }
            if redis.allow_commands.is_empty() || redis.timeout_ms == 0 {
                bail!(
                    "redis connection `{name}`: allow-commands and timeout-ms must not be empty or 0"
                );
            }
        }
        for origin in self.http.allow.iter().chain(&self.http.allow_private) {
            ebb_runtime::Origin::parse(origin)
                .with_context(|| format!("http origin `{origin}`"))?;
        }
        for (origin, auth) in &self.http.basic_auth {
            if auth.password.is_some() == auth.password_env.is_some() {
                bail!(
                    "basic-auth for `{origin}` needs exactly one of `password` or `password-env`"
                );
            }
        }
        for (name, secret) in &self.secrets {
            if secret.value.is_some() == secret.env.is_some() {
                bail!("secret `{name}` needs exactly one of `value` or `env`");
            }
        }
        if self.limits.memory_mib == 0 || self.limits.timeout_ms == 0 {
            bail!("limits must be greater than zero");
        }
        let l = &self.lifecycle;
        if l.max_ttl_ms == 0 || l.escalate_after == 0 || l.max_concurrent_calls == 0 {
            bail!(
                "lifecycle: max-ttl-ms, escalate-after and max-concurrent-calls must be at least 1"
            );
        }
        if l.retry_base_ms == 0 || l.retry_base_ms > l.retry_max_ms {
            bail!("lifecycle: retry-base-ms must be at least 1 and at most retry-max-ms");
        }
        Ok(())
    }
}

impl ConnectorConfig {
    /// The environment variables this instance reads secrets from.
    pub fn env_names(&self) -> Vec<&str> {
        let sql = self
            .sql
            .values()
            .chain(self.mysql.values())
            .filter_map(|c| c.dsn_env.as_deref());
        let redis = self.redis.values().filter_map(|c| c.url_env.as_deref());
        let auth = self
            .http
            .basic_auth
            .values()
            .filter_map(|a| a.password_env.as_deref());
        let secrets = self.secrets.values().filter_map(|s| s.env.as_deref());
        let ldap = self.ldap.values().filter_map(|l| l.password_env.as_deref());
        sql.chain(redis)
            .chain(auth)
            .chain(secrets)
            .chain(ldap)
            .collect()
    }
}
