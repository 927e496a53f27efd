//! The loaded connector instances, by name, with their lifecycle policy and call
//! limits. The lifecycle asks the registry for a connector at every call, so a
//! reloaded version serves the next call while calls in flight finish on the version
//! they started with.

use crate::config::{ConnectorConfig, LifecyclePolicy};
use ebb_runtime::{LoadedConnector, Runtime};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// One connector instance.
#[derive(Debug)]
pub struct Slot {
    name: String,
    current: RwLock<LoadedConnector>,
    config: RwLock<ConnectorConfig>,
    /// Set while the instance is being unloaded: new requests are refused, work on
    /// existing grants goes on.
    draining: AtomicBool,
    calls: Arc<Semaphore>,
    background: Arc<Semaphore>,
    /// Verification's share of the background pool: at most half of it, so
    /// revocations (removing access) never queue behind verifications (proving it).
    verify: Arc<Semaphore>,
    /// Grants whose last call found the downstream system unavailable, retried the
    /// moment it answers again; and whether a watch for that is running.
    waiting: std::sync::Mutex<std::collections::BTreeSet<String>>,
    watching: AtomicBool,
}

/// Which of an instance's call pools a call draws from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pool {
    /// Caller-driven work: issue, verify-issued, standing access.
    Request,
    /// Removing access: expiry, revocation, retries, compensation.
    Background,
    /// Proving removal: background work within verification's share (at most half).
    Verify,
}

/// One call in progress: the connector version that serves it and the pool slot it
/// holds, together. Dropping it frees the slot; the version cannot change under it,
/// so whatever is recorded about the call (its digest) is the version that ran it.
#[derive(Debug)]
pub struct Call {
    connector: LoadedConnector,
    _permit: OwnedSemaphorePermit,
    _share: Option<OwnedSemaphorePermit>,
}

impl std::ops::Deref for Call {
    type Target = LoadedConnector;

    fn deref(&self) -> &LoadedConnector {
        &self.connector
    }
}

impl Slot {
    /// The version that serves new calls.
    pub fn connector(&self) -> LoadedConnector {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The lifecycle policy of the current configuration.
    pub fn policy(&self) -> LifecyclePolicy {
        self.config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .lifecycle
    }

    /// Whether the instance is being unloaded (and takes no new requests).
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    pub fn set_draining(&self, draining: bool) {
        self.draining.store(draining, Ordering::SeqCst);
    }

    /// The configuration the current version was loaded with.
    pub fn config(&self) -> ConnectorConfig {
        self.config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The semaphores a call from `pool` takes: its own, and the share it must also
    /// hold (verification's at most half of background work).
    fn semaphores(&self, pool: Pool) -> (&Arc<Semaphore>, Option<&Arc<Semaphore>>) {
        match pool {
            Pool::Request => (&self.calls, None),
            Pool::Background => (&self.background, None),
            Pool::Verify => (&self.background, Some(&self.verify)),
        }
    }

    /// Waits for a slot in `pool` and takes the version that serves new calls: one
    /// operation, so a caller never holds a permit apart from the connector it
    /// permits. Requests and background work have disjoint pools: a revocation storm
    /// never starves requests, and a burst of requests never delays an expiry.
    pub async fn call(&self, pool: Pool) -> Call {
        let (main, share) = self.semaphores(pool);
        let share = match share {
            Some(share) => Some(acquire(share).await),
            None => None,
        };
        let permit = acquire(main).await;
        // The version serving once the permit is held: a swap while waiting counts.
        Call {
            connector: self.connector(),
            _permit: permit,
            _share: share,
        }
    }

    /// A call permit from `pool` if one is free now, without waiting: background
    /// work that finds its connector busy steps aside instead of holding a job slot
    /// every other connector's expiries may need.
    pub fn try_call(&self, pool: Pool) -> Option<Call> {
        let (main, share) = self.semaphores(pool);
        let share = match share {
            Some(share) => Some(share.clone().try_acquire_owned().ok()?),
            None => None,
        };
        let permit = main.clone().try_acquire_owned().ok()?;
        Some(Call {
            connector: self.connector(),
            _permit: permit,
            _share: share,
        })
    }

    /// Notes that grant `id` waits for this instance's downstream system to answer.
    pub fn wait_for_downstream(&self, id: &str) {
        self.waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_owned());
    }

    /// A grant that waits for the downstream system, if any.
    pub fn first_waiting(&self) -> Option<String> {
        self.waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .first()
            .cloned()
    }

    /// `id` waits no more.
    pub fn done_waiting(&self, id: &str) {
        self.waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }

    /// Every grant that waits, and none from now on.
    pub fn take_waiting(&self) -> Vec<String> {
        std::mem::take(&mut *self.waiting.lock().unwrap_or_else(|p| p.into_inner()))
            .into_iter()
            .collect()
    }

    /// Claims the watch of the downstream system; false if one is running.
    pub fn start_watch(&self) -> bool {
        self.watching
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    }

    pub fn stop_watch(&self) {
        self.watching.store(false, Ordering::SeqCst);
    }

    /// Replaces the version that serves new calls. Calls in flight keep the version
    /// they started with. The call pools keep the sizes they were created with.
    pub fn swap(&self, connector: LoadedConnector, config: ConnectorConfig) -> LoadedConnector {
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = config;
        std::mem::replace(
            &mut *self.current.write().unwrap_or_else(|p| p.into_inner()),
            connector,
        )
    }
}

async fn acquire(pool: &Arc<Semaphore>) -> OwnedSemaphorePermit {
    match pool.clone().acquire_owned().await {
        Ok(permit) => permit,
        Err(_) => unreachable!("call semaphores are never closed"),
    }
}

/// All connector instances.
#[derive(Debug)]
pub struct Registry {
    runtime: Runtime,
    slots: RwLock<BTreeMap<String, Arc<Slot>>>,
}

impl Registry {
    pub fn new(runtime: Runtime) -> Self {
        Self {
            runtime,
            slots: RwLock::new(BTreeMap::new()),
        }
    }

    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// Loads (or reloads) the instance `name`.
    pub async fn load(&self, name: &str, config: &ConnectorConfig) -> anyhow::Result<Arc<Slot>> {
        let connector = self.runtime.load(name, &config.spec()).await?;
        Ok(self.install(name, connector, config.clone()))
    }

    /// Makes `connector` serve instance `name`: swaps it in atomically if the
    /// instance exists, adds the instance otherwise.
    pub fn install(
        &self,
        name: &str,
        connector: LoadedConnector,
        config: ConnectorConfig,
    ) -> Arc<Slot> {
        let mut slots = self.slots.write().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = slots.get(name) {
            slot.swap(connector, config);
            return slot.clone();
        }
        // Half for background work (at least one), the rest (at least one) for requests.
        let total = config.lifecycle.max_concurrent_calls.max(2);
        let background = (total / 2).max(1);
        let slot = Arc::new(Slot {
            name: name.to_owned(),
            current: RwLock::new(connector),
            config: RwLock::new(config),
            draining: AtomicBool::new(false),
            calls: Arc::new(Semaphore::new(total - background)),
            background: Arc::new(Semaphore::new(background)),
            verify: Arc::new(Semaphore::new((background / 2).max(1))),
            waiting: std::sync::Mutex::default(),
            watching: AtomicBool::new(false),
        });
        slots.insert(name.to_owned(), slot.clone());
        slot
    }

    /// Removes instance `name`. Calls in flight finish on the version they hold.
    pub fn remove(&self, name: &str) -> Option<Arc<Slot>> {
        self.slots
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name)
    }

    pub fn get(&self, name: &str) -> Option<Arc<Slot>> {
        self.slots
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    pub fn all(&self) -> Vec<Arc<Slot>> {
        self.slots
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }
}
