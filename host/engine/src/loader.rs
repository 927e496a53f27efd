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

use crate::config::{ConnectorConfig, PluginsConfig, is_instance_name};
use crate::lifecycle::{GrantState, Lifecycle, Trigger};
use crate::registry::{Registry, Slot};
use ebb_core::audit::NewEvent;
use ebb_runtime::{Digest, LoadedConnector};
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
    #[error("{source:#}")]
    Component {
        #[source]
        source: anyhow::Error,
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

    /// Unloads instance `name`; see [`UnloadMode`].
    pub async fn unload(
        self: &Arc<Self>,
        name: &str,
        mode: UnloadMode,
        actor: &str,
    ) -> Result<Unloaded, LoadError> {
        let _change = self.changes.lock().await;
        let slot = self
            .registry()
            .get(name)
            .ok_or_else(|| LoadError::NotFound(name.to_owned()))?;
        if self.origins_read().get(name) == Some(&Source::Config) {
            return Err(LoadError::Conflict(format!(
                "connector `{name}` is defined in the configuration file: remove it there \
                 and restart (it would come back on the next start)"
            )));
        }
        match mode {
            UnloadMode::Refuse => {
                let live = self.live(name).await?;
                if !live.is_empty() {
                    return Err(LoadError::Conflict(format!(
                        "connector `{name}` has {} live grant(s): unload with live=revoke to \
                         revoke them first, or live=hand-over&to=<instance> to hand them to \
                         another version",
                        live.len()
                    )));
                }
                self.remove(name, actor).await?;
                Ok(Unloaded::Removed)
            }
            UnloadMode::HandOver(to) => {
                let target = self.hand_over_target(&slot, &to)?;
                slot.set_draining(true);
                let result = self.hand_over_all(name, &target, actor).await;
                if let Err(e) = result {
                    slot.set_draining(false);
                    return Err(e);
                }
                self.remove(name, actor).await?;
                Ok(Unloaded::Removed)
            }
            UnloadMode::Revoke => {
                slot.set_draining(true);
                let live = self.revoke_live(name, actor).await?;
                if live == 0 {
                    self.remove(name, actor).await?;
                    return Ok(Unloaded::Removed);
                }
                self.audit(NewEvent::new("connector.draining", actor).detail(json!({
                    "connector": name,
                    "live_grants": live,
                })))
                .await;
                let loader = self.clone();
                let name = name.to_owned();
                let actor = actor.to_owned();
                tokio::spawn(async move { loader.finish_drain(&name, &actor).await });
                Ok(Unloaded::Draining { live })
            }
        }
    }

    fn hand_over_target(&self, slot: &Slot, to: &str) -> Result<Arc<Slot>, LoadError> {
        if to == slot.name() {
            return Err(LoadError::Invalid(
                "a connector cannot hand its grants to itself".into(),
            ));
        }
        let target = self
            .registry()
            .get(to)
            .ok_or_else(|| LoadError::Invalid(format!("no connector named `{to}` is loaded")))?;
        if target.is_draining() {
            return Err(LoadError::Conflict(format!(
                "connector `{to}` is being unloaded itself"
            )));
        }
        let (from_kind, to_kind) = (
            slot.connector().info().name.clone(),
            target.connector().info().name.clone(),
        );
        if from_kind != to_kind {
            return Err(LoadError::Invalid(format!(
                "connector `{to}` is a `{to_kind}` connector, but `{}` is `{from_kind}`: \
                 grants can only be handed to another version of the same connector",
                slot.name()
            )));
        }
        Ok(target)
    }

    /// Hands every live grant to `target`, scanning until none is left (a request
    /// admitted just before draining began may land after the first scan).
    async fn hand_over_all(&self, name: &str, target: &Slot, actor: &str) -> Result<(), LoadError> {
        loop {
            let live = self.live(name).await?;
            if live.is_empty() {
                return Ok(());
            }
            for grant in live {
                self.lifecycle
                    .hand_over(&grant.grant.id, target.name(), actor)
                    .await?;
            }
        }
    }

    /// The grants that still need instance `name`. A scan of the store: it runs off
    /// the async workers.
    pub async fn live(&self, name: &str) -> Result<Vec<ebb_core::store::GrantRecord>, LoadError> {
        let lifecycle = self.lifecycle.clone();
        let name = name.to_owned();
        tokio::task::spawn_blocking(move || lifecycle.live_grants(&name))
            .await
            .map_err(|e| LoadError::Internal(e.to_string()))?
            .map_err(LoadError::from)
    }

    /// Starts revoking every live grant not already on its way out; returns how many
    /// are live.
    async fn revoke_live(&self, name: &str, actor: &str) -> Result<usize, LoadError> {
        let live = self.live(name).await?;
        for grant in &live {
            if matches!(
                grant.state,
                GrantState::Requested | GrantState::Approved | GrantState::Active
            ) {
                self.lifecycle
                    .revoke(
                        &grant.grant.id,
                        Trigger::Manual,
                        actor,
                        Some("connector unloaded"),
                    )
                    .await?;
            }
        }
        Ok(self.live(name).await?.len())
    }

    /// Waits until a draining instance has no live grant, then removes it. The scans
    /// run without holding `changes`; only the removal takes it, and checks again.
    async fn finish_drain(&self, name: &str, actor: &str) {
        let draining = || self.registry().get(name).is_some_and(|s| s.is_draining());
        loop {
            tokio::time::sleep(DRAIN_POLL).await;
            // Reloaded, unloaded or cancelled meanwhile: nothing left to do here.
            if !draining() {
                return;
            }
            match self.revoke_live(name, actor).await {
                Ok(0) => {}
                Ok(_) => continue,
                Err(e) => {
                    tracing::warn!(connector = name, error = %e, "draining: will try again");
                    continue;
                }
            }
            let _change = self.changes.lock().await;
            if !draining() {
                return;
            }
            if self.live(name).await.is_ok_and(|live| live.is_empty()) {
                if let Err(e) = self.remove(name, actor).await {
                    tracing::error!(connector = name, error = %e, "could not finish unloading");
                }
                return;
            }
        }
    }

    /// Removes instance `name` and its plugins-folder file. Caller holds `changes`.
    async fn remove(&self, name: &str, actor: &str) -> Result<(), LoadError> {
        let from_dir = matches!(self.origins_read().get(name), Some(Source::Dir { .. }));
        if let (true, Some(dir)) = (from_dir, &self.plugins.dir) {
            let file = dir.join(format!("{name}.toml"));
            match tokio::fs::remove_file(&file).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(LoadError::Io {
                        what: "removing",
                        path: file,
                        source,
                    });
                }
            }
        }
        let removed = self.registry().remove(name);
        self.set_origin(name, None);
        let digest = removed.map(|s| s.connector().digest().to_string());
        tracing::info!(connector = name, "connector unloaded");
        self.audit(
            NewEvent::new("connector.unloaded", actor)
                .detail(json!({ "connector": name, "sha256": digest })),
        )
        .await;
        Ok(())
    }

    /// Brings the loaded instances in line with the plugins folder: loads new files,
    /// reloads changed ones, unloads removed ones (unless they have live grants).
    pub async fn reconcile(&self) {
        let Some(dir) = self.plugins.dir.clone() else {
            return;
        };
        let _change = self.changes.lock().await;
        let files = match instance_files(&dir).await {
            Ok(files) => files,
            Err(e) => {
                tracing::error!(dir = %dir.display(), error = %e, "cannot read the plugins folder");
                return;
            }
        };
        for (name, file) in &files {
            let origin = { self.origins_read().get(name).cloned() };
            if origin == Some(Source::Config) {
                tracing::error!(
                    connector = %name,
                    file = %file.display(),
                    "ignored: an instance of this name is defined in the configuration file"
                );
                continue;
            }
            // Each file and its component are read once; nothing is compiled unless
            // one of them changed.
            let prepared = async {
                let (text, table) = read_instance(&dir, name).await?;
                let config = parse_instance(&table, &dir)?;
                let bytes = read_component(&config).await?;
                let fingerprint = fingerprint(&text, &Digest::of(&bytes).to_string());
                if matches!(&origin, Some(Source::Dir { fingerprint: f }) if *f == fingerprint) {
                    return Ok(None);
                }
                let connector = self.prepare_bytes(name, &config, &bytes).await?;
                Ok::<_, LoadError>(Some((config, connector, fingerprint)))
            };
            match prepared.await {
                Ok(None) => {}
                Ok(Some((config, connector, fingerprint))) => {
                    self.installed(
                        name,
                        connector,
                        config,
                        Some(Source::Dir { fingerprint }),
                        "plugins-dir",
                        "plugins-dir",
                    )
                    .await;
                }
                Err(e) => self.load_failed(name, "plugins-dir", &e).await,
            }
        }
        let gone: Vec<String> = self
            .origins_read()
            .iter()
            .filter(|(name, o)| matches!(o, Source::Dir { .. }) && !files.contains_key(*name))
            .map(|(name, _)| name.clone())
            .collect();
        for name in gone {
            match self.live(&name).await {
                Ok(live) if live.is_empty() => {
                    if let Err(e) = self.remove(&name, "plugins-dir").await {
                        tracing::error!(connector = %name, error = %e, "could not unload");
                    }
                }
                Ok(live) => tracing::error!(
                    connector = %name,
                    live = live.len(),
                    "its file was removed from the plugins folder, but it has live grants: \
                     it stays loaded until they are closed (or unload it through the API)"
                ),
                Err(e) => {
                    tracing::error!(connector = %name, error = %e, "could not count live grants")
                }
            }
        }
    }

    /// Watches the plugins folder and reconciles after each burst of changes. The
    /// watch lasts as long as the returned watcher is kept.
    pub fn watch(self: &Arc<Self>) -> anyhow::Result<Option<notify::RecommendedWatcher>> {
        use notify::Watcher as _;
        let Some(dir) = self.plugins.dir.clone() else {
            return Ok(None);
        };
        if !self.plugins.watch {
            return Ok(None);
        }
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if event.is_ok_and(|e| !e.kind.is_access()) {
                    let _ = tx.send(());
                }
            })?;
        watcher.watch(&dir, notify::RecursiveMode::NonRecursive)?;
        let loader = self.clone();
        tokio::spawn(async move {
            while rx.recv().await.is_some() {
                tokio::time::sleep(SETTLE).await;
                while rx.try_recv().is_ok() {}
                loader.reconcile().await;
            }
        });
        tracing::info!(dir = %dir.display(), "watching the plugins folder");
        Ok(Some(watcher))
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

/// The `*.toml` files of the plugins folder, by instance name.
async fn instance_files(dir: &Path) -> std::io::Result<BTreeMap<String, PathBuf>> {
    let mut files = BTreeMap::new();
    let mut entries = tokio::fs::read_dir(dir).await?;
    while let Some(entry) = entries.next_entry().await? {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        if is_instance_name(stem) {
            files.insert(stem.to_owned(), path);
        } else if !stem.starts_with('.') {
            tracing::warn!(file = %path.display(), "ignored: not a valid instance name");
        }
    }
    Ok(files)
}

/// `component` as a path inside `dir`: relative, without `..`.
fn inside(dir: &Path, component: &str) -> Result<PathBuf, LoadError> {
    let path = Path::new(component);
    if component.is_empty()
        || !path
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(LoadError::Invalid(format!(
            "component `{component}` must be a path inside the plugins folder (relative, \
             without `..`)"
        )));
    }
    Ok(dir.join(path))
}

/// An API request body as the TOML table it will be stored as.
fn api_table(body: serde_json::Value) -> Result<toml::Table, LoadError> {
    let body = strip_nulls(body);
    if !body.is_object() {
        return Err(LoadError::Invalid(
            "the body must be a JSON object with the keys of a [connectors.<name>] table".into(),
        ));
    }
    // Secrets never go through the API (nor into the folder): name a variable instead.
    for (table, field, what, env) in [
        ("/sql", "dsn", "sql connection", "dsn-env"),
        ("/redis", "url", "redis connection", "url-env"),
        (
            "/http/basic-auth",
            "password",
            "basic-auth for",
            "password-env",
        ),
        ("/secrets", "value", "secret", "env"),
    ] {
        if let Some(entries) = body.pointer(table).and_then(|t| t.as_object())
            && let Some((key, _)) = entries.iter().find(|(_, e)| e.get(field).is_some())
        {
            return Err(LoadError::Invalid(format!(
                "{what} `{key}`: the API does not take a `{field}` (it holds a secret); \
                 use `{env}` with the name of an environment variable of the host"
            )));
        }
    }
    let table: toml::Table = serde_json::from_value(body)
        .map_err(|e| LoadError::Invalid(format!("the body is not a connector table: {e}")))?;
    Ok(table)
}

fn strip_nulls(value: serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Object(map) => serde_json::Value::Object(
            map.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, strip_nulls(v)))
                .collect(),
        ),
        serde_json::Value::Array(items) => {
            serde_json::Value::Array(items.into_iter().map(strip_nulls).collect())
        }
        other => other,
    }
}

fn table_str<'a>(table: &'a toml::Table, key: &str) -> Result<&'a str, LoadError> {
    table
        .get(key)
        .and_then(|v| v.as_str())
        .ok_or_else(|| LoadError::Invalid(format!("`{key}` must be a string")))
}

fn parse_instance(table: &toml::Table, dir: &Path) -> Result<ConnectorConfig, LoadError> {
    let text = toml::to_string(table).map_err(|e| LoadError::Invalid(e.to_string()))?;
    ConnectorConfig::parse_toml(&text, dir).map_err(|e| LoadError::Invalid(format!("{e:#}")))
}

/// `<dir>/<name>.toml` as read: its bytes (for the fingerprint) and its table.
async fn read_instance(dir: &Path, name: &str) -> Result<(Vec<u8>, toml::Table), LoadError> {
    let file = dir.join(format!("{name}.toml"));
    let bytes = tokio::fs::read(&file)
        .await
        .map_err(|e| LoadError::Invalid(format!("reading {}: {e}", file.display())))?;
    let table = std::str::from_utf8(&bytes)
        .map_err(|e| LoadError::Invalid(format!("{}: {e}", file.display())))
        .and_then(|text| {
            toml::from_str(text).map_err(|e| LoadError::Invalid(format!("{}: {e}", file.display())))
        })?;
    Ok((bytes, table))
}

async fn read_component(config: &ConnectorConfig) -> Result<Vec<u8>, LoadError> {
    tokio::fs::read(&config.component).await.map_err(|e| {
        LoadError::Invalid(format!(
            "reading component {}: {e}",
            config.component.display()
        ))
    })
}

/// Writes `<dir>/<name>.toml` atomically (temporary file, fsync, rename) and
/// returns its fingerprint.
async fn write_instance(
    dir: &Path,
    name: &str,
    table: &toml::Table,
    digest: &str,
) -> Result<String, LoadError> {
    let text = format!(
        "# Written by ebb (admin API). Edits here are picked up while it runs.\n{}",
        toml::to_string(table).map_err(|e| LoadError::Internal(e.to_string()))?
    );
    let file = dir.join(format!("{name}.toml"));
    let tmp = dir.join(format!(".{name}.toml.tmp"));
    let io = |source| LoadError::Io {
        what: "writing",
        path: file.clone(),
        source,
    };
    {
        use tokio::io::AsyncWriteExt as _;
        let mut f = tokio::fs::File::create(&tmp).await.map_err(io)?;
        f.write_all(text.as_bytes()).await.map_err(io)?;
        f.sync_all().await.map_err(io)?;
    }
    tokio::fs::rename(&tmp, &file).await.map_err(io)?;
    Ok(fingerprint(text.as_bytes(), digest))
}

fn fingerprint(file: &[u8], component_digest: &str) -> String {
    format!("{}:{component_digest}", Digest::of(file))
}
