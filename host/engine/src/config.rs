//! The operator's configuration file (TOML).
//!
//! Everything a connector may touch is lent here, per connector instance and nothing
//! else: its settings (`config`), its named SQL connections (`sql`), the origins it
//! may reach over HTTP (`http`) and its resource limits (`limits`).
//!
//! ```toml
//! [runtime]
//! cache-dir = "/var/lib/ebb/cache"
//!
//! [connectors.pg]
//! component = "plugins/postgres.wasm"
//! sha256 = "9f2c…"                 # optional pin
//! limits = { memory-mib = 64, timeout-ms = 10000 }
//! config = { allowed-tables = "public.*" }
//! sql.main = { dsn-env = "EBB_PG_DSN", max-connections = 4 }
//! http = { allow = ["https://idp.example.com"], allow-private = [] }
//! ```

use anyhow::{Context, bail};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

// The runtime's own inputs, embedded in the file as they are: what a connector is
// lent, its limits and the engine's settings.
pub use ebb_runtime::lend::{
    BasicAuth, ConnectorSpec, HttpConfig, LentSecret, LimitsConfig, RedisConnectionConfig,
    RuntimeConfig, Secret, SqlConnectionConfig,
};

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Config {
    #[serde(default)]
    pub runtime: RuntimeConfig,
    #[serde(default)]
    pub store: StoreConfig,
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub plugins: PluginsConfig,
    /// Requesters proving who they are with tokens from an identity provider.
    #[serde(default)]
    pub identity: IdentityConfig,
    /// Cedar policies that decide requests; without them, each connector's
    /// `lifecycle.approval` decides.
    pub policy: Option<PolicyConfig>,
    /// Where loud events (break-glass, anomalies, escalations) are sent.
    #[serde(default)]
    pub alerts: AlertsConfig,
    /// API bearer tokens, stored as sha256 hashes.
    #[serde(default)]
    pub tokens: Vec<TokenConfig>,
    /// Connector instances by name.
    #[serde(default)]
    pub connectors: BTreeMap<String, ConnectorConfig>,
}

/// Connectors loaded while the host runs: a watched folder, written to by the admin
/// API, and an allow-list of component digests.
///
/// The folder holds `<instance>.toml` files, each with the keys of a
/// `[connectors.<instance>]` table, and their components (relative `component`
/// paths resolve against the folder). Adding a file loads the instance, changing it
/// or its component reloads it, removing it unloads it (refused while it has live
/// grants).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct PluginsConfig {
    pub dir: Option<PathBuf>,
    /// Watch `dir` for changes (otherwise only the admin API changes it).
    pub watch: bool,
    /// If not empty, only components whose sha256 is listed load, from any source.
    pub allowed_sha256: Vec<String>,
    /// Environment variables of the host that an instance loaded through the admin
    /// API may name (`dsn-env`, `url-env`, `password-env`, a secret's `env`): exact
    /// names, or prefixes ending in `*`. Empty (the default): none. Without this, an
    /// API caller could lend any of the host's secrets to a connector that sends them
    /// to an origin it allows.
    pub lendable_env: Vec<String>,
}

impl Default for PluginsConfig {
    fn default() -> Self {
        Self {
            dir: None,
            watch: true,
            allowed_sha256: Vec::new(),
            lendable_env: Vec::new(),
        }
    }
}

impl PluginsConfig {
    /// Whether an API-loaded instance may name the environment variable `var`.
    pub fn may_lend(&self, var: &str) -> bool {
        self.lendable_env.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => var.starts_with(prefix),
            None => var == p,
        })
    }
}

impl ConnectorConfig {
    /// The environment variables this instance reads secrets from.
    pub fn env_names(&self) -> Vec<&str> {
        let sql = self.sql.values().filter_map(|c| c.dsn_env.as_deref());
        let redis = self.redis.values().filter_map(|c| c.url_env.as_deref());
        let auth = self
            .http
            .basic_auth
            .values()
            .filter_map(|a| a.password_env.as_deref());
        let secrets = self.secrets.values().filter_map(|s| s.env.as_deref());
        sql.chain(redis).chain(auth).chain(secrets).collect()
    }
}

/// Identity providers whose tokens the API accepts.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct IdentityConfig {
    pub issuers: Vec<IssuerConfig>,
}

/// One identity provider (an OIDC issuer or a SPIFFE trust domain's JWT issuer).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct IssuerConfig {
    /// The exact `iss` of its tokens.
    pub issuer: String,
    /// Accepted `aud` values; a token must name one of them.
    pub audiences: Vec<String>,
    /// Its JWKS, from a file…
    pub jwks_file: Option<PathBuf>,
    /// …or a URL (fetched at start, refreshed every 5 minutes and on unknown keys).
    pub jwks_url: Option<String>,
    /// Whether its subjects are workloads or people.
    #[serde(default = "default_kind")]
    pub kind: ebb_core::contract::SubjectKind,
    /// What its token holders may do (default: request grants).
    #[serde(default = "default_roles")]
    pub roles: Vec<Role>,
    /// The claim that names the subject.
    #[serde(default = "default_subject_claim")]
    pub subject_claim: String,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    #[serde(default = "default_leeway")]
    pub leeway_seconds: u64,
}

fn default_kind() -> ebb_core::contract::SubjectKind {
    ebb_core::contract::SubjectKind::Workload
}
fn default_roles() -> Vec<Role> {
    vec![Role::Requester]
}
fn default_subject_claim() -> String {
    "sub".into()
}
fn default_leeway() -> u64 {
    30
}

/// Cedar policy files.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PolicyConfig {
    /// A `.cedar` file or a folder of them, for normal requests.
    pub path: PathBuf,
    /// Reload when the files change (a broken file keeps the old policies).
    #[serde(default = "yes")]
    pub watch: bool,
    #[serde(default)]
    pub break_glass: Option<BreakGlassConfig>,
    /// How long a subject reported anomalous carries the `anomalous-subject` risk
    /// flag in policy context.
    #[serde(default = "default_anomaly_window", with = "humantime_serde_str")]
    pub anomaly_window: std::time::Duration,
}

fn yes() -> bool {
    true
}
fn default_anomaly_window() -> std::time::Duration {
    std::time::Duration::from_secs(3600)
}

/// The break-glass path: its own policies, a mandatory reason, a shorter TTL.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct BreakGlassConfig {
    /// A `.cedar` file or folder, deciding break-glass requests only.
    pub path: PathBuf,
    /// The longest a break-glass grant may last.
    #[serde(default = "default_break_glass_ttl", with = "humantime_serde_str")]
    pub max_ttl: std::time::Duration,
    /// The shortest reason accepted.
    #[serde(default = "default_reason_len")]
    pub min_reason_chars: usize,
}

fn default_break_glass_ttl() -> std::time::Duration {
    std::time::Duration::from_secs(3600)
}
fn default_reason_len() -> usize {
    10
}

/// Durations written like `15m` or `1h 30m`.
mod humantime_serde_str {
    use serde::Deserialize;
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<std::time::Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

/// Where alerts go.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct AlertsConfig {
    /// URLs that receive each alert as a JSON POST.
    pub webhooks: Vec<String>,
}

/// The admin API's listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct ServerConfig {
    pub listen: std::net::SocketAddr,
    /// How long a client may take to send a request's headers before it is
    /// disconnected.
    #[serde(with = "humantime_serde_str")]
    pub header_read_timeout: std::time::Duration,
    /// Connections served at once; more wait to be accepted.
    pub max_connections: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 8700)),
            header_read_timeout: std::time::Duration::from_secs(10),
            max_connections: 512,
        }
    }
}

/// What a token's holder may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Requests grants for its own subject, issues and ends its own grants.
    Requester,
    /// Approves or denies other subjects' requests.
    Approver,
    /// Manages connectors and revokes any grant.
    Operator,
    /// Reads grants, reports and the audit log.
    Auditor,
    /// Reports anomalies (a SIEM's webhook, say): revokes the grants concerned.
    Reporter,
}

/// One API token. The token itself is never stored: only its sha256.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TokenConfig {
    /// Who holds it, for the audit log.
    pub name: String,
    /// sha256 of the token, hex (`printf %s "$TOKEN" | sha256sum`).
    pub sha256: String,
    pub roles: Vec<Role>,
    /// The subject a requester acts as (default: `name`).
    pub subject: Option<String>,
    /// Whether that subject is a workload (default) or a person.
    #[serde(default = "default_kind")]
    pub kind: ebb_core::contract::SubjectKind,
}

/// Where grants, sealed credentials and the audit log live.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct StoreConfig {
    /// The embedded store's folder.
    pub path: PathBuf,
    /// The host key (64 hex digits) file; created with mode 0600 if missing. It
    /// seals credentials and keys the audit chain: back it up, keep it apart.
    pub key_file: PathBuf,
    /// Or: the environment variable that holds the host key.
    pub key_env: Option<String>,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from(".ebb/data"),
            key_file: PathBuf::from(".ebb/host.key"),
            key_env: None,
        }
    }
}

impl Config {
    /// Reads and validates a configuration file. Relative component paths are
    /// resolved against the file's folder.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config file {}", path.display()))?;
        let mut config =
            Self::parse(&text).with_context(|| format!("in config file {}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        if config.store.path.is_relative() {
            config.store.path = base.join(&config.store.path);
        }
        if config.store.key_file.is_relative() {
            config.store.key_file = base.join(&config.store.key_file);
        }
        for connector in config.connectors.values_mut() {
            if connector.component.is_relative() {
                connector.component = base.join(&connector.component);
            }
        }
        if let Some(dir) = &config.plugins.dir
            && dir.is_relative()
        {
            config.plugins.dir = Some(base.join(dir));
        }
        for issuer in &mut config.identity.issuers {
            if let Some(file) = &issuer.jwks_file
                && file.is_relative()
            {
                issuer.jwks_file = Some(base.join(file));
            }
        }
        if let Some(policy) = &mut config.policy {
            if policy.path.is_relative() {
                policy.path = base.join(&policy.path);
            }
            if let Some(bg) = &mut policy.break_glass
                && bg.path.is_relative()
            {
                bg.path = base.join(&bg.path);
            }
        }
        Ok(config)
    }

    /// Parses and validates configuration text.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let config: Self = toml::from_str(text)?;
        for (name, connector) in &config.connectors {
            connector
                .validate()
                .with_context(|| format!("connector `{name}`"))?;
        }
        for token in &config.tokens {
            if !is_sha256_hex(&token.sha256) {
                bail!("token `{}`: sha256 must be 64 hex digits", token.name);
            }
        }
        for issuer in &config.identity.issuers {
            if issuer.jwks_file.is_some() == issuer.jwks_url.is_some() {
                bail!(
                    "identity issuer `{}` needs exactly one of jwks-file or jwks-url",
                    issuer.issuer
                );
            }
            if issuer.audiences.is_empty() {
                bail!(
                    "identity issuer `{}` needs at least one audience",
                    issuer.issuer
                );
            }
        }
        for digest in &config.plugins.allowed_sha256 {
            if !is_sha256_hex(digest) {
                bail!("plugins.allowed-sha256: `{digest}` is not 64 hex digits");
            }
        }
        Ok(config)
    }
}

/// Whether `s` is a sha256 digest in hex.
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Whether `name` can name a connector instance (and its file in the plugins
/// folder): 1–63 of `a-z 0-9 - _`, starting with a letter or digit.
pub fn is_instance_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_'))
        && name.as_bytes()[0].is_ascii_alphanumeric()
}

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
        for (name, sql) in &self.sql {
            match (&sql.dsn, &sql.dsn_env) {
                (Some(_), None) | (None, Some(_)) => {}
                _ => bail!("sql connection `{name}` needs exactly one of `dsn` or `dsn-env`"),
            }
            if sql.max_connections == 0 {
                bail!("sql connection `{name}`: max-connections must be at least 1");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_connector() {
        let config = Config::parse(
            r#"
            [connectors.pg]
            component = "postgres.wasm"
            limits = { memory-mib = 32, timeout-ms = 500, max-output-kib = 64 }
            config = { allowed-tables = "public.*" }
            sql.main = { dsn = "host=127.0.0.1 user=ebb password=pw", max-connections = 2 }
            http = { allow = ["https://idp.example.com"], allow-private = ["http://127.0.0.1:9000"] }
            "#,
        )
        .unwrap();
        let pg = &config.connectors["pg"];
        assert_eq!(pg.limits.memory_mib, 32);
        assert_eq!(pg.sql["main"].max_connections, 2);
        assert_eq!(pg.config["allowed-tables"], "public.*");
        assert!(!format!("{config:?}").contains("password=pw"));
    }

    #[test]
    fn partial_tables_take_defaults() {
        let config = Config::parse("[runtime]\ncache-dir = \"/tmp/x\"\n[connectors.a]\ncomponent = \"a.wasm\"\nlimits = { memory-mib = 8 }\n").unwrap();
        assert_eq!(config.runtime.max_instances, 256);
        assert_eq!(config.connectors["a"].limits.timeout_ms, 10_000);
    }

    #[test]
    fn errors_when_sql_connection_has_no_dsn() {
        let err =
            Config::parse("[connectors.pg]\ncomponent = \"x.wasm\"\nsql.main = {}\n").unwrap_err();
        assert!(
            format!("{err:#}").contains("exactly one of `dsn` or `dsn-env`"),
            "{err:#}"
        );
    }

    #[test]
    fn errors_on_unknown_keys_and_bad_pins() {
        let err = Config::parse("[connectors.pg]\ncomponent = \"x.wasm\"\nsha256 = \"abc\"\n")
            .unwrap_err();
        assert!(format!("{err:#}").contains("64 hex digits"), "{err:#}");
        let err =
            Config::parse("[connectors.pg]\ncomponent = \"x.wasm\"\ncomponnet = 1\n").unwrap_err();
        assert!(format!("{err:#}").contains("unknown field"), "{err:#}");
    }

    #[test]
    fn errors_on_malformed_origin() {
        let err = Config::parse(
            "[connectors.x]\ncomponent = \"x.wasm\"\nhttp = { allow = [\"ftp://a\"] }\n",
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("ftp://a"), "{err:#}");
    }
}
