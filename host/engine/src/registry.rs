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
}

/// Permission to make one call; dropping it frees the slot.
#[derive(Debug)]
pub struct CallPermit {
    _permit: OwnedSemaphorePermit,
    _share: Option<OwnedSemaphorePermit>,
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

    /// Waits for a call slot. Requests and background work (expiry, retries,
    /// verification) have disjoint pools: a revocation storm never starves requests,
    /// and a burst of requests never delays an expiry.
    pub async fn permit(&self, background: bool) -> CallPermit {
        let pool = if background {
            &self.background
        } else {
            &self.calls
        };
        CallPermit {
            _permit: acquire(pool).await,
            _share: None,
        }
    }

    /// A background slot for verification, within verification's share.
    pub async fn permit_verify(&self) -> CallPermit {
        let share = acquire(&self.verify).await;
        CallPermit {
            _permit: acquire(&self.background).await,
            _share: Some(share),
        }
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
