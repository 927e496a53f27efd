//! The loaded connector instances, by name, with their lifecycle policy and call
//! limits. The lifecycle asks the registry for a connector at every call, so a
//! reloaded version serves the next call while calls in flight finish on the version
//! they started with.

use crate::config::{ConnectorConfig, LifecyclePolicy};
use crate::runtime::{Connector, Runtime};
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// One connector instance.
#[derive(Debug)]
pub struct Slot {
    name: String,
    current: RwLock<Connector>,
    config: RwLock<ConnectorConfig>,
    pub policy: LifecyclePolicy,
    calls: Arc<Semaphore>,
    background: Arc<Semaphore>,
}

/// Permission to make one call; dropping it frees the slot.
#[derive(Debug)]
pub struct CallPermit {
    _call: OwnedSemaphorePermit,
    _background: Option<OwnedSemaphorePermit>,
}

impl Slot {
    /// The version that serves new calls.
    pub fn connector(&self) -> Connector {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The configuration the current version was loaded with.
    pub fn config(&self) -> ConnectorConfig {
        self.config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Waits for a call slot. Background work first takes one of the background
    /// slots (at most half of all), so requests always find room.
    pub async fn permit(&self, background: bool) -> CallPermit {
        let bg = if background {
            self.background.clone().acquire_owned().await.ok()
        } else {
            None
        };
        let call = match self.calls.clone().acquire_owned().await {
            Ok(p) => p,
            Err(_) => unreachable!("call semaphores are never closed"),
        };
        CallPermit {
            _call: call,
            _background: bg,
        }
    }

    /// Replaces the version that serves new calls.
    pub fn swap(&self, connector: Connector, config: ConnectorConfig) -> Connector {
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = config;
        std::mem::replace(
            &mut *self.current.write().unwrap_or_else(|p| p.into_inner()),
            connector,
        )
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
        let connector = self.runtime.load(name, config).await?;
        if let Some(slot) = self.get(name) {
            slot.swap(connector, config.clone());
            return Ok(slot);
        }
        let calls = config.lifecycle.max_concurrent_calls;
        let slot = Arc::new(Slot {
            name: name.to_owned(),
            current: RwLock::new(connector),
            config: RwLock::new(config.clone()),
            policy: config.lifecycle,
            calls: Arc::new(Semaphore::new(calls)),
            background: Arc::new(Semaphore::new((calls / 2).max(1))),
        });
        self.slots
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_owned(), slot.clone());
        Ok(slot)
    }

    pub fn get(&self, name: &str) -> Option<Arc<Slot>> {
        self.slots
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    /// Removes the instance `name`; calls in flight finish.
    pub fn remove(&self, name: &str) -> Option<Arc<Slot>> {
        self.slots
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name)
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
