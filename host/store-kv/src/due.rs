//! The earliest part of the due index (`t/`), in memory.
//!
//! The scheduler's claims and "when is the next one" read this window instead of
//! scanning the engine, where an LSM engine would walk past every due entry ever
//! removed and not yet compacted away. Only the earliest entries are held: a store
//! of millions of active grants, each due at its expiry, opens without reading them
//! all and keeps a bounded index in memory. The window holds exactly the engine's
//! entries before its horizon; later ones are read from the engine, from the horizon
//! on, when the window runs out of what a claim asks for. Past twice its size (many
//! new entries before the horizon) it gives its later half back to the engine.

use crate::keys::{due_key, parse_due_key};
use crate::kv::Kv;
use ebb_core::contract::Timestamp;
use ebb_core::store::Result;
use std::collections::BTreeSet;

/// Entries read into the window at a time. The store's tests use a tiny window, so
/// that every one of them crosses its horizon.
#[cfg(not(test))]
const WINDOW: usize = 16_384;
#[cfg(test)]
const WINDOW: usize = 4;

pub(crate) struct DueWindow {
    entries: BTreeSet<(Timestamp, String)>,
    /// The first entry not in `entries` (on disk); `None`: every entry is in memory.
    horizon: Option<(Timestamp, String)>,
}

impl DueWindow {
    /// The window over `db`'s earliest due entries.
    pub(crate) fn open(db: &Kv) -> Result<Self> {
        let mut window = Self {
            entries: BTreeSet::new(),
            horizon: Some((0, String::new())),
        };
        window.refill(db)?;
        Ok(window)
    }

    /// Reads the next [`WINDOW`] entries from the horizon on.
    fn refill(&mut self, db: &Kv) -> Result<()> {
        let Some((due, id)) = self.horizon.take() else {
            return Ok(());
        };
        let from = due_key(due, &id);
        for (read, entry) in db.range(&from, Some(b"t0")).enumerate() {
            let (k, _) = entry?;
            let parsed = parse_due_key(&k)?;
            if read == WINDOW {
                self.horizon = Some(parsed);
                break;
            }
            self.entries.insert(parsed);
        }
        Ok(())
    }

    /// Whether an entry belongs in memory (before the horizon).
    fn holds(&self, due: Timestamp, id: &str) -> bool {
        self.horizon
            .as_ref()
            .is_none_or(|(h_due, h_id)| (due, id) < (*h_due, h_id.as_str()))
    }

    /// Records an entry the engine took.
    pub(crate) fn insert(&mut self, due: Timestamp, id: String) {
        if self.holds(due, &id) {
            self.entries.insert((due, id));
            self.trim();
        }
    }

    /// Keeps the window bounded: past twice its size, the later half is left to
    /// the engine and the horizon moves down to it.
    fn trim(&mut self) {
        if self.entries.len() <= 2 * WINDOW {
            return;
        }
        if let Some(first_out) = self.entries.iter().nth(WINDOW).cloned() {
            drop(self.entries.split_off(&first_out));
            self.horizon = Some(first_out);
        }
    }

    /// Records an entry the engine removed.
    pub(crate) fn remove(&mut self, due: Timestamp, id: String) {
        self.entries.remove(&(due, id));
    }

    /// The earliest due time, if any grant has one.
    pub(crate) fn first(&mut self, db: &Kv) -> Result<Option<Timestamp>> {
        while self.entries.is_empty() && self.horizon.is_some() {
            self.refill(db)?;
        }
        Ok(self.entries.first().map(|(at, _)| *at))
    }

    /// Up to `limit` entries due at or before `now`, earliest first.
    pub(crate) fn due_by(
        &mut self,
        db: &Kv,
        now: Timestamp,
        limit: usize,
    ) -> Result<Vec<(Timestamp, String)>> {
        let upto = (now.saturating_add(1), String::new());
        loop {
            let due: Vec<(Timestamp, String)> =
                self.entries.range(..&upto).take(limit).cloned().collect();
            let more_on_disk = self.horizon.as_ref().is_some_and(|(at, _)| *at <= now);
            if due.len() == limit || !more_on_disk {
                self.trim();
                return Ok(due);
            }
            self.refill(db)?;
        }
    }

    #[cfg(test)]
    pub(crate) fn in_memory(&self) -> usize {
        self.entries.len()
    }
}
