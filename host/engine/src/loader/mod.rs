//! Loading, upgrading and unloading connector instances while the host runs.
//!
//! Three sources feed the [`Registry`]: `[connectors.*]` in the configuration file
//! (loaded at start), the plugins folder (`[plugins] dir`, watched), and the admin
//! API, which writes its changes into the plugins folder so they survive a restart.
//! Every change goes through [`Loader`], one at a time:
//!
//! 1. the component's sha256 is checked against the allow-list and the pin;
//! 2. it is compiled, linked against the contract (which type-checks its exports)
//!    and `describe` must answer — all before anything is swapped;
//! 3. the new version is swapped in atomically; calls in flight finish on the
//!    version they started with, and every call records the version that served it.
//!
//! Unloading an instance that still has live grants is refused unless the operator
//! chooses to revoke them first (the instance drains, then goes) or to hand them to
//! another instance of the same connector.

mod files;
mod folder;
mod unload;

use crate::config::{ConnectorConfig, PluginsConfig, is_instance_name};
use crate::lifecycle::{GrantState, Lifecycle, Trigger};
use crate::registry::{Registry, Slot};
use ebb_core::audit::NewEvent;
use ebb_runtime::{Digest, LoadedConnector};
use files::*;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// How long the folder must be quiet before a change is acted on: an editor's save
/// or a copy arrives as a burst of events.
const SETTLE: Duration = Duration::from_millis(300);
/// How often a draining instance checks whether its grants are all closed.
const DRAIN_POLL: Duration = Duration::from_millis(250);

/// Where an instance came from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    /// `[connectors.<name>]` in the configuration file.
    Config,
    /// `<plugins dir>/<name>.toml` (written by hand or by the API). The
    /// fingerprint covers the file and its component, so a change to either is seen.
    Dir { fingerprint: String },
}

/// A refused or failed change.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("no connector named `{0}` is loaded")]
    NotFound(String),
    #[error("a connector named `{0}` is already loaded (reload it instead)")]
    Exists(String),
    /// Bad input, or a component that fails validation.
    #[error("{0}")]
    Invalid(String),
    /// The component's digest is not on the allow-list.
    #[error("{0}")]
    NotAllowed(String),
    /// Not possible in the instance's present state (live grants, its source).
    #[error("{0}")]
    Conflict(String),
    /// The component does not compile, link or answer `describe`.
    #[error("{}", ebb_core::error_chain(.source))]
    Component {
        #[source]
        source: ebb_runtime::LoadError,
    },
    /// The plugins folder could not be read or written.
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The engine (its store) failed.
    #[error(transparent)]
    Engine(#[from] crate::lifecycle::Error),
    #[error("{0}")]
    Internal(String),
}

/// What to do with an instance's live grants when it is unloaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnloadMode {
    /// Refuse to unload while any grant is live.
    Refuse,
    /// Revoke them all; the instance takes no new requests and goes once every
    /// revocation is verified.
    Revoke,
    /// Hand them to another instance of the same connector.
    HandOver(String),
}

/// The outcome of an unload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unloaded {
    Removed,
    /// Revoking its grants; it goes by itself when none is live.
    Draining {
        live: usize,
    },
}

/// A change to an instance's component on reload.
#[derive(Debug, Clone, Default)]
pub struct Reload {
    /// A new component, relative to the plugins folder.
    pub component: Option<String>,
    /// The new version's pin.
    pub sha256: Option<String>,
}

/// Loads, reloads and unloads connector instances; see the module docs.
#[derive(Debug)]
pub struct Loader {
    lifecycle: Lifecycle,
    plugins: PluginsConfig,
    /// One change at a time: API calls, the folder watcher and finishing drains.
    changes: tokio::sync::Mutex<()>,
    origins: RwLock<BTreeMap<String, Source>>,
}

impl Loader {
    pub fn new(lifecycle: Lifecycle, plugins: PluginsConfig) -> Arc<Self> {
        Arc::new(Self {
            lifecycle,
            plugins,
            changes: tokio::sync::Mutex::new(()),
            origins: RwLock::new(BTreeMap::new()),
        })
    }

    fn registry(&self) -> &Registry {
        self.lifecycle.registry()
    }

    /// Where instance `name` came from: `config`, `plugins-dir`, or `None` if it was
    /// loaded some other way (tests, embedding).
    pub fn source(&self, name: &str) -> Option<&'static str> {
        self.origins_read().get(name).map(|o| match o {
            Source::Config => "config",
            Source::Dir { .. } => "plugins-dir",
        })
    }

    fn origins_read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Source>> {
        self.origins.read().unwrap_or_else(|p| p.into_inner())
    }

    fn set_origin(&self, name: &str, origin: Option<Source>) {
        let mut origins = self.origins.write().unwrap_or_else(|p| p.into_inner());
        match origin {
            Some(o) => origins.insert(name.to_owned(), o),
            None => origins.remove(name),
        };
    }

    fn dir(&self) -> Result<&Path, LoadError> {
        self.plugins.dir.as_deref().ok_or_else(|| {
            LoadError::Conflict(
                "no plugins folder is configured ([plugins] dir): connectors loaded through \
                 the API are kept there so that they survive a restart"
                    .into(),
            )
        })
    }

    /// Loads the configuration file's instances at start. A failure is logged and
    /// audited, and the host goes on: the other connectors' grants must still expire.
    pub async fn load_configured(&self, connectors: &BTreeMap<String, ConnectorConfig>) {
        let _change = self.changes.lock().await;
        for (name, config) in connectors {
            match self.prepare(name, config).await {
                Ok(connector) => {
                    self.installed(
                        name,
                        connector,
                        config.clone(),
                        Some(Source::Config),
                        "ebb",
                        "config",
                    )
                    .await;
                }
                Err(e) => self.load_failed(name, "config", &e).await,
            }
        }
    }

    /// Reads and checks a component, then compiles, links and describes it. Nothing
    /// is swapped here.
    async fn prepare(
        &self,
        name: &str,
        config: &ConnectorConfig,
    ) -> Result<LoadedConnector, LoadError> {
        let bytes = read_component(config).await?;
        self.prepare_bytes(name, config, &bytes).await
    }

    /// [`Loader::prepare`] for a component already read.
    async fn prepare_bytes(
        &self,
        name: &str,
        config: &ConnectorConfig,
        bytes: &[u8],
    ) -> Result<LoadedConnector, LoadError> {
        let digest = Digest::of(bytes).to_string();
        let allowed = &self.plugins.allowed_sha256;
        if !allowed.is_empty() && !allowed.iter().any(|d| d.eq_ignore_ascii_case(&digest)) {
            return Err(LoadError::NotAllowed(format!(
                "component {} has sha256 {digest}, which is not in plugins.allowed-sha256",
                config.component.display()
            )));
        }
        self.registry()
            .runtime()
            .load_bytes(name, &config.spec(), bytes)
            .await
            .map_err(|source| LoadError::Component { source })
    }

    /// Swaps `connector` in, records where it came from, and audits it.
    async fn installed(
        &self,
        name: &str,
        connector: LoadedConnector,
        config: ConnectorConfig,
        origin: Option<Source>,
        actor: &str,
        via: &str,
    ) -> Arc<Slot> {
        let digest = connector.digest().to_string();
        let version = connector.info().version.clone();
        let previous = self.registry().get(name).map(|s| s.connector().digest());
        let slot = self.registry().install(name, connector, config);
        if origin.is_some() {
            self.set_origin(name, origin);
        }
        let kind = if previous.is_some() {
            "connector.reloaded"
        } else {
            "connector.loaded"
        };
        tracing::info!(connector = name, sha256 = %digest, %version, via, "{kind}");
        self.audit(NewEvent::new(kind, actor).detail(json!({
            "connector": name,
            "sha256": digest,
            "previous_sha256": previous.map(|d| d.to_string()),
            "version": version,
            "via": via,
        })))
        .await;
        slot
    }

    async fn load_failed(&self, name: &str, via: &str, e: &LoadError) {
        tracing::error!(connector = name, via, error = %e, "connector failed to load");
        self.audit(NewEvent::new("connector.load-failed", "ebb").detail(json!({
            "connector": name,
            "via": via,
            "error": e.to_string(),
        })))
        .await;
    }

    /// Records a connector change (already made) durably; a failure is logged and
    /// counted by the audit log, and the change stands.
    async fn audit(&self, event: NewEvent) {
        let _recorded = self.lifecycle.audit_log().record(event).await;
    }

    /// Loads a new instance from an API request body (the keys of a
    /// `[connectors.<name>]` table, as JSON), and keeps it in the plugins folder.
    pub async fn load(
        &self,
        name: &str,
        body: serde_json::Value,
        actor: &str,
    ) -> Result<Arc<Slot>, LoadError> {
        check_name(name)?;
        let dir = self.dir()?.to_owned();
        let _change = self.changes.lock().await;
        if self.registry().get(name).is_some() {
            return Err(LoadError::Exists(name.to_owned()));
        }
        let table = api_table(body)?;
        let mut config = parse_instance(&table, &dir)?;
        if let Some(var) = config
            .env_names()
            .into_iter()
            .find(|v| !self.plugins.may_lend(v))
        {
            return Err(LoadError::NotAllowed(format!(
                "the environment variable {var} is not in plugins.lendable-env: the host's \
                 operator decides which of its secrets the API may lend"
            )));
        }
        // Whatever the API may load must already be in the plugins folder.
        config.component = inside(&dir, table_str(&table, "component")?)?;
        self.pin_and_install(&dir, name, table, config, actor).await
    }

    /// Validates `config`, pins the validated version's sha256 in the instance's
    /// file (written atomically), and swaps it in.
    async fn pin_and_install(
        &self,
        dir: &Path,
        name: &str,
        mut table: toml::Table,
        mut config: ConnectorConfig,
        actor: &str,
    ) -> Result<Arc<Slot>, LoadError> {
        let connector = self.prepare(name, &config).await?;
        let digest = connector.digest().to_string();
        table.insert("sha256".into(), toml::Value::String(digest.clone()));
        config.sha256 = Some(digest.clone());
        let fingerprint = write_instance(dir, name, &table, &digest).await?;
        Ok(self
            .installed(
                name,
                connector,
                config,
                Some(Source::Dir { fingerprint }),
                actor,
                "api",
            )
            .await)
    }

    /// Loads a new version of instance `name` and swaps it in. Without changes it
    /// re-reads the configured component (the pin still applies); with changes (only
    /// for instances in the plugins folder) it points the instance at another
    /// component and pins it.
    pub async fn reload(
        &self,
        name: &str,
        change: Reload,
        actor: &str,
    ) -> Result<(Arc<Slot>, Digest), LoadError> {
        let _change = self.changes.lock().await;
        let slot = self
            .registry()
            .get(name)
            .ok_or_else(|| LoadError::NotFound(name.to_owned()))?;
        let previous = slot.connector().digest();
        let origin = self.origins_read().get(name).cloned();
        let changes = change.component.is_some() || change.sha256.is_some();
        let (config, connector, origin) = match origin {
            Some(Source::Dir { .. }) if changes => {
                let dir = self.dir()?.to_owned();
                let (_, mut table) = read_instance(&dir, name).await?;
                if let Some(component) = &change.component {
                    inside(&dir, component)?;
                    table.insert("component".into(), toml::Value::String(component.clone()));
                    table.remove("sha256");
                }
                if let Some(pin) = &change.sha256 {
                    table.insert("sha256".into(), toml::Value::String(pin.clone()));
                }
                let config = parse_instance(&table, &dir)?;
                let slot = self
                    .pin_and_install(&dir, name, table, config, actor)
                    .await?;
                return Ok((slot, previous));
            }
            Some(Source::Dir { .. }) => {
                let dir = self.dir()?.to_owned();
                let (text, table) = read_instance(&dir, name).await?;
                let config = parse_instance(&table, &dir)?;
                let connector = self.prepare(name, &config).await?;
                let fingerprint = fingerprint(&text, &connector.digest().to_string());
                (config, connector, Some(Source::Dir { fingerprint }))
            }
            _ if changes => {
                return Err(LoadError::Conflict(format!(
                    "connector `{name}` is defined in the configuration file: change its \
                     component there (a reload without changes re-reads it)"
                )));
            }
            other => {
                let config = slot.config();
                let connector = self.prepare(name, &config).await?;
                (config, connector, other)
            }
        };
        let slot = self
            .installed(name, connector, config, origin, actor, "api")
            .await;
        Ok((slot, previous))
    }
}

fn check_name(name: &str) -> Result<(), LoadError> {
    if is_instance_name(name) {
        Ok(())
    } else {
        Err(LoadError::Invalid(format!(
            "`{name}` cannot name a connector: use 1-63 of a-z, 0-9, - and _, starting \
             with a letter or digit"
        )))
    }
}
