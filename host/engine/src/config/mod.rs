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

mod connector;

pub use connector::{ApprovalMode, ConnectorConfig, LifecyclePolicy, OrphanAction};

// The runtime's own inputs, embedded in the file as they are: what a connector is
// lent, its limits and the engine's settings.
pub use ebb_runtime::lend::{
    BasicAuth, ConnectorSpec, HttpConfig, LdapConnectionConfig, LentSecret, LimitsConfig,
    RedisConnectionConfig, RuntimeConfig, Secret, SqlConnectionConfig,
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
    /// The web console for approvers, operators and auditors.
    #[serde(default)]
    pub console: ConsoleConfig,
}

/// The web console, served by the host under `/console`.
///
/// ```toml
/// [console]
/// public-url = "https://ebb.example.com"   # where browsers reach this host
///
/// [console.oidc]                            # people sign in here
/// issuer = "https://idp.example.com"
/// client-id = "ebb-console"
/// client-secret-env = "EBB_CONSOLE_CLIENT_SECRET"
/// roles-claim = "groups"
/// roles = { "sre" = ["operator", "approver"], "audit" = ["auditor"] }
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct ConsoleConfig {
    pub enabled: bool,
    /// The origin browsers use to reach the host (the OIDC redirect URI is built
    /// from it, and state-changing requests must come from it). Default: the
    /// listen address over `http`.
    pub public_url: Option<String>,
    /// How long a signed-in session lasts.
    #[serde(with = "humantime_serde_str")]
    pub session_ttl: std::time::Duration,
    /// Sign-in with API tokens pasted into a form (for the demo and break-glass
    /// operators). On by default; people should sign in through `oidc`.
    pub token_sign_in: bool,
    pub oidc: Option<ConsoleOidcConfig>,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            public_url: None,
            session_ttl: std::time::Duration::from_secs(8 * 3600),
            token_sign_in: true,
            oidc: None,
        }
    }
}

/// Sign-in for people: OpenID Connect, authorization code with PKCE (S256).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ConsoleOidcConfig {
    /// The issuer; its `/.well-known/openid-configuration` is read at sign-in.
    pub issuer: String,
    pub client_id: String,
    /// The environment variable that holds the client secret; without one the
    /// console is a public client (PKCE alone).
    pub client_secret_env: Option<String>,
    /// Scopes asked for (`openid` is always included).
    #[serde(default = "default_console_scopes")]
    pub scopes: Vec<String>,
    /// The ID-token claim that lists the person's groups (a string or an array).
    #[serde(default = "default_roles_claim")]
    pub roles_claim: String,
    /// Console roles by group: a person gets the union of their groups' roles.
    #[serde(default)]
    pub roles: BTreeMap<String, Vec<Role>>,
    /// Roles every signed-in person has, whatever their groups.
    #[serde(default)]
    pub default_roles: Vec<Role>,
    /// The button's text.
    #[serde(default = "default_console_provider_name")]
    pub name: String,
}

fn default_console_scopes() -> Vec<String> {
    vec!["openid".into(), "profile".into()]
}
fn default_roles_claim() -> String {
    "groups".into()
}
fn default_console_provider_name() -> String {
    "single sign-on".into()
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
    /// `embedded` (the default: one host, a folder on its disk) or `postgres` (a
    /// database several hosts share).
    pub kind: StoreKind,
    /// The embedded store's folder.
    pub path: PathBuf,
    /// The embedded engine under the store: `sled` (the default) or `fjall`. A
    /// folder written by one engine is refused by the other.
    pub engine: StoreEngine,
    /// The host key (64 hex digits) file; created with mode 0600 if missing. It
    /// seals credentials and keys the audit chain: back it up, keep it apart.
    pub key_file: PathBuf,
    /// Or: the environment variable that holds the host key. Every host of a
    /// shared store must hold the same key.
    pub key_env: Option<String>,
    /// PostgreSQL: the environment variable holding the DSN (it carries a
    /// password, so it never sits in this file). Several hosts and
    /// `target_session_attrs=read-write` find the primary after a failover;
    /// `sslmode=verify-full` verifies the server against `ca-file`.
    pub dsn_env: String,
    /// PostgreSQL: the CA file that signed the server's certificate (TLS is then
    /// required and verified).
    pub ca_file: Option<PathBuf>,
    /// PostgreSQL: this host's name in leases and in `/v1/cluster`; stable across
    /// restarts (a restarted host takes its own leases back at once) and unique
    /// among the hosts. Default: the machine's host name.
    pub host_id: Option<String>,
    /// PostgreSQL: connections in this host's pool.
    pub pool_size: usize,
    /// PostgreSQL: how long a claim on due work lasts unless its host renews it
    /// (it does, every quarter of this, while it lives): how long a dead host's
    /// work waits before another host takes it over.
    pub lease_ms: u64,
    /// When the store is checked at start (the audit events since the last good
    /// check, every grant record against its tag, the count): `while-serving` (the
    /// default: the host serves at once, and until the records have passed, the
    /// embedded store checks each record as it reads it and refuses an altered
    /// one) or `before-serving` (the host serves once the check passed: a restart
    /// takes ~2–10 µs a record more). A PostgreSQL store is checked before serving
    /// either way.
    pub check_at_start: StartCheck,
}

/// When the store is checked at start ([`StoreConfig::check_at_start`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StartCheck {
    #[default]
    WhileServing,
    BeforeServing,
}

/// Where the store lives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StoreKind {
    #[default]
    Embedded,
    Postgres,
}

/// The embedded engine a store runs on (see `ebb_store_kv::Engine`; the in-memory
/// engine of tests and benchmarks is not offered to a host).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StoreEngine {
    #[default]
    Sled,
    Fjall,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from(".ebb/data"),
            engine: StoreEngine::default(),
            key_file: PathBuf::from(".ebb/host.key"),
            key_env: None,
            kind: StoreKind::default(),
            dsn_env: "EBB_STORE_DSN".into(),
            ca_file: None,
            host_id: None,
            pool_size: 16,
            lease_ms: 4_000,
            check_at_start: StartCheck::default(),
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
        if let Some(ca) = &config.store.ca_file
            && ca.is_relative()
        {
            config.store.ca_file = Some(base.join(ca));
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
    fn a_postgres_store_takes_its_dsn_from_the_environment_only() {
        let default = Config::parse("").unwrap();
        assert_eq!(default.store.kind, StoreKind::Embedded);
        let pg =
            Config::parse("[store]\nkind = \"postgres\"\ndsn-env = \"PG_DSN\"\nhost-id = \"a\"\n")
                .unwrap();
        assert_eq!(pg.store.kind, StoreKind::Postgres);
        assert_eq!(pg.store.dsn_env, "PG_DSN");
        assert_eq!(pg.store.host_id.as_deref(), Some("a"));
        // A DSN written into the file is refused, not silently ignored.
        let err = Config::parse("[store]\nkind = \"postgres\"\ndsn = \"host=db password=x\"\n")
            .unwrap_err();
        assert!(format!("{err:#}").contains("unknown field"), "{err:#}");
    }

    #[test]
    fn the_store_engine_is_sled_unless_fjall_is_named() {
        let default = Config::parse("[store]\npath = \"data\"\n").unwrap();
        assert_eq!(default.store.engine, StoreEngine::Sled);
        let fjall = Config::parse("[store]\nengine = \"fjall\"\n").unwrap();
        assert_eq!(fjall.store.engine, StoreEngine::Fjall);
        // The in-memory engine of tests is not a host's choice; a typo is an error.
        for bad in ["memory", "rocksdb"] {
            let err = Config::parse(&format!("[store]\nengine = \"{bad}\"\n")).unwrap_err();
            assert!(
                format!("{err:#}").contains("unknown variant"),
                "{bad}: {err:#}"
            );
        }
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
