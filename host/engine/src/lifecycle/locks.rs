//! One async lock per grant id, so that a grant is worked on by one task at a time
//! (an API call or a scheduler job), and entries disappear when nobody holds them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::OwnedMutexGuard;

type Entry = Arc<tokio::sync::Mutex<()>>;

#[derive(Default)]
pub(super) struct Locks {
    map: Arc<Mutex<HashMap<String, Entry>>>,
}

/// Held while working on one grant.
pub(super) struct GrantLock {
    map: Arc<Mutex<HashMap<String, Entry>>>,
    id: String,
    entry: Entry,
    guard: Option<OwnedMutexGuard<()>>,
}

impl Locks {
    fn entry(&self, id: &str) -> Entry {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(id.to_owned()).or_default().clone()
    }

    /// Waits for the grant's lock.
    pub async fn lock(&self, id: &str) -> GrantLock {
        let entry = self.entry(id);
        let guard = entry.clone().lock_owned().await;
        GrantLock {
            map: self.map.clone(),
            id: id.to_owned(),
            entry,
            guard: Some(guard),
        }
    }
}

impl Drop for GrantLock {
    fn drop(&mut self) {
        self.guard.take();
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        // Ours and the map's: nobody else waits for it.
        if Arc::strong_count(&self.entry) == 2 {
            map.remove(&self.id);
        }
    }
}
