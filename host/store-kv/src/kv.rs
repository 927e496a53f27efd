//! The ordered key-value engines the store runs on, behind one small surface: read
//! a key, apply a batch atomically, scan a key range in order (both ways), make
//! everything applied durable. Everything above (`lib.rs`) is engine-independent:
//! the key layout, the audit chain, the keyring, group commit.
//!
//! - **sled**: the default, and the engine of every store written before there was
//!   a choice (its files sit directly in the store's folder).
//! - **fjall**: an LSM tree with a write-ahead journal (files under `fjall/` in the
//!   store's folder). On this machine it takes the store's commit-sized batches
//!   several times faster than sled (BENCHMARKS.md). After a failed `fsync` fjall
//!   refuses every further write until the store is opened again (it cannot know
//!   what reached the disk); sled, too, keeps a flush error until then. The
//!   store syncs fjall's journal itself, outside fjall's journal lock
//!   (`kv/journal.rs`), so commits are applied while the disk syncs.
//! - **memory**: a `BTreeMap`, gone with the process; the ceiling without
//!   durability for benchmarks, and fast tests.

use ebb_core::store::{Error, Result};
use std::collections::BTreeMap;
use std::ops::{Bound, Deref};
use std::path::Path;
use std::sync::{Mutex, RwLock};

mod journal;

/// Which engine a store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Engine {
    #[default]
    Sled,
    Fjall,
    /// In memory only: nothing survives the process.
    Memory,
}

impl Engine {
    pub const ALL: [Self; 3] = [Self::Sled, Self::Fjall, Self::Memory];

    pub fn name(self) -> &'static str {
        match self {
            Self::Sled => "sled",
            Self::Fjall => "fjall",
            Self::Memory => "memory",
        }
    }
}

impl std::str::FromStr for Engine {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|e| e.name() == s)
            .ok_or_else(|| format!("unknown store engine `{s}` (expected sled, fjall or memory)"))
    }
}

impl std::fmt::Display for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Bytes read from an engine, without copying them out of it.
#[derive(Clone)]
pub(crate) enum Bytes {
    Sled(sled::IVec),
    Fjall(fjall::Slice),
    Owned(Vec<u8>),
}

impl Deref for Bytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Self::Sled(b) => b,
            Self::Fjall(b) => b,
            Self::Owned(b) => b,
        }
    }
}

impl AsRef<[u8]> for Bytes {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

/// Writes applied together or not at all. A key written twice keeps the last
/// write (a due entry removed and put back at the same key stays), as in sled.
#[derive(Default)]
pub(crate) struct Batch(BTreeMap<Vec<u8>, Option<Vec<u8>>>);

impl Batch {
    pub(crate) fn insert(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.0.insert(key.into(), Some(value.into()));
    }

    pub(crate) fn remove(&mut self, key: impl Into<Vec<u8>>) {
        self.0.insert(key.into(), None);
    }

    /// What this batch writes at `key`: `None` if it leaves the key alone,
    /// `Some(None)` if it removes it.
    pub(crate) fn get(&self, key: &[u8]) -> Option<Option<&[u8]>> {
        self.0.get(key).map(Option::as_deref)
    }

    /// Adds `later`'s writes; where both write a key, `later`'s stays.
    pub(crate) fn extend(&mut self, later: Batch) {
        self.0.extend(later.0);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

type Entry = Result<(Bytes, Bytes)>;
pub(crate) type Iter<'a> = Box<dyn DoubleEndedIterator<Item = Entry> + Send + 'a>;

/// An open engine.
pub(crate) enum Kv {
    Sled(sled::Db),
    Fjall {
        db: fjall::Database,
        tree: fjall::Keyspace,
        /// The I/O failure that poisoned fjall's journal, if one did: fjall then
        /// refuses every write as `Poisoned` until it is opened again, and the
        /// operator is told the cause, not only that.
        poisoned_by: Mutex<Option<(std::io::ErrorKind, String)>>,
        /// Syncs the journal outside fjall's journal lock (`kv/journal.rs`).
        journal: journal::JournalSync,
        /// Set once a sync of ours failed: fjall does not know, so the store
        /// refuses writes and flushes itself, as fjall would after its own.
        sync_failed: std::sync::atomic::AtomicBool,
    },
    Memory(RwLock<BTreeMap<Vec<u8>, Vec<u8>>>),
}

impl std::fmt::Debug for Kv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Sled(_) => "Kv::Sled",
            Self::Fjall { .. } => "Kv::Fjall",
            Self::Memory(_) => "Kv::Memory",
        })
    }
}

/// Where fjall keeps its files inside a store's folder.
const FJALL_DIR: &str = "fjall";
/// A file sled writes in a store's folder (its configuration).
const SLED_MARK: &str = "conf";

impl Kv {
    /// Opens (or creates) `engine`'s files in `dir`. A folder that holds the other
    /// engine's store is refused: switching engines needs an export, not a guess.
    pub(crate) fn open(engine: Engine, dir: &Path) -> Result<Self> {
        let refuse = |other: Engine| Error::Storage {
            what: "opening the store",
            source: format!(
                "{} holds a {other} store, not a {engine} one: set the store's engine to `{other}`",
                dir.display()
            )
            .into(),
        };
        match engine {
            Engine::Sled => {
                if dir.join(FJALL_DIR).exists() {
                    return Err(refuse(Engine::Fjall));
                }
                open_sled(dir).map(Self::Sled)
            }
            Engine::Fjall => {
                if dir.join(SLED_MARK).exists() {
                    return Err(refuse(Engine::Sled));
                }
                let db = open_fjall(&dir.join(FJALL_DIR))?;
                let tree = db
                    .keyspace("ebb", fjall::KeyspaceCreateOptions::default)
                    .map_err(fjall_error("opening the store"))?;
                Ok(Self::Fjall {
                    db,
                    tree,
                    poisoned_by: Mutex::default(),
                    journal: journal::JournalSync::new(&dir.join(FJALL_DIR)),
                    sync_failed: Default::default(),
                })
            }
            Engine::Memory => Ok(Self::memory()),
        }
    }

    pub(crate) fn memory() -> Self {
        Self::Memory(RwLock::default())
    }

    pub(crate) fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Bytes>> {
        let key = key.as_ref();
        match self {
            Self::Sled(db) => Ok(db.get(key).map_err(sled_error(READ))?.map(Bytes::Sled)),
            Self::Fjall { tree, .. } => {
                Ok(tree.get(key).map_err(fjall_error(READ))?.map(Bytes::Fjall))
            }
            Self::Memory(map) => Ok(read(map).get(key).cloned().map(Bytes::Owned)),
        }
    }

    pub(crate) fn apply(&self, batch: Batch) -> Result<()> {
        match self {
            Self::Sled(db) => {
                let mut b = sled::Batch::default();
                for (k, v) in batch.0 {
                    match v {
                        Some(v) => b.insert(k, v),
                        None => b.remove(k),
                    }
                }
                db.apply_batch(b).map_err(sled_error(WRITE))
            }
            Self::Fjall {
                db,
                tree,
                poisoned_by,
                sync_failed,
                ..
            } => {
                if sync_failed.load(std::sync::atomic::Ordering::Acquire) {
                    return Err(fjall_write_error(
                        poisoned_by,
                        WRITE,
                        fjall::Error::Poisoned,
                    ));
                }
                let mut b = db.batch();
                for (k, v) in batch.0 {
                    match v {
                        Some(v) => b.insert(tree, k, v),
                        None => b.remove(tree, k),
                    }
                }
                b.commit()
                    .map_err(|e| fjall_write_error(poisoned_by, WRITE, e))
            }
            Self::Memory(map) => {
                let mut map = map.write().unwrap_or_else(|p| p.into_inner());
                for (k, v) in batch.0 {
                    match v {
                        Some(v) => map.insert(k, v),
                        None => map.remove(&k),
                    };
                }
                Ok(())
            }
        }
    }

    /// One write, applied alone.
    pub(crate) fn put(&self, key: impl AsRef<[u8]>, value: Option<&[u8]>) -> Result<()> {
        let key = key.as_ref();
        let mut batch = Batch::default();
        match value {
            Some(v) => batch.insert(key, v),
            None => batch.remove(key),
        }
        self.apply(batch)
    }

    /// The entries with keys in `[from, to)` (`to: None`: to the end), in key order.
    pub(crate) fn range(&self, from: &[u8], to: Option<&[u8]>) -> Iter<'_> {
        let upper = to.map_or(Bound::Unbounded, |t| Bound::Excluded(t.to_vec()));
        let bounds = (Bound::Included(from.to_vec()), upper);
        match self {
            Self::Sled(db) => Box::new(db.range(bounds).map(|entry| {
                entry
                    .map(|(k, v)| (Bytes::Sled(k), Bytes::Sled(v)))
                    .map_err(sled_error(READ))
            })),
            Self::Fjall { tree, .. } => Box::new(tree.range(bounds).map(|guard| {
                guard
                    .into_inner()
                    .map(|(k, v)| (Bytes::Fjall(k), Bytes::Fjall(v)))
                    .map_err(fjall_error(READ))
            })),
            Self::Memory(map) => Box::new(MemoryRange {
                map,
                front: bounds.0,
                back: bounds.1,
            }),
        }
    }

    /// The entries whose keys start with `prefix`, in key order.
    pub(crate) fn prefix(&self, prefix: impl AsRef<[u8]>) -> Iter<'_> {
        let prefix = prefix.as_ref();
        match prefix_end(prefix) {
            Some(end) => self.range(prefix, Some(&end)),
            None => self.range(prefix, None),
        }
    }

    /// Makes every applied batch durable (blocking).
    pub(crate) fn flush(&self) -> Result<()> {
        match self {
            Self::Sled(db) => db.flush().map(|_| ()).map_err(sled_error(FLUSH)),
            Self::Fjall {
                db,
                poisoned_by,
                journal,
                sync_failed,
                ..
            } => {
                let fail = |e| fjall_write_error(poisoned_by, FLUSH, e);
                if sync_failed.load(std::sync::atomic::Ordering::Acquire) {
                    return Err(fail(fjall::Error::Poisoned));
                }
                // Hand the journal's buffer to the OS under fjall's lock, then
                // sync outside it, so groups go on being applied meanwhile.
                db.persist(fjall::PersistMode::Buffer).map_err(fail)?;
                match journal.sync() {
                    Ok(true) => Ok(()),
                    Ok(false) => db.persist(fjall::PersistMode::SyncData).map_err(fail),
                    Err(e) => {
                        sync_failed.store(true, std::sync::atomic::Ordering::Release);
                        Err(fail(fjall::Error::Io(e)))
                    }
                }
            }
            Self::Memory(_) => Ok(()),
        }
    }
}

/// Raw writes for tests that play the attacker (edit, delete, put back).
#[cfg(test)]
impl Kv {
    pub(crate) fn insert(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<()> {
        self.put(key, Some(value.as_ref()))
    }

    /// Removes `key`; what it held.
    pub(crate) fn remove(&self, key: impl AsRef<[u8]>) -> Result<Option<Bytes>> {
        let old = self.get(key.as_ref())?;
        self.put(key, None)?;
        Ok(old)
    }
}

const READ: &str = "reading the store";
const WRITE: &str = "writing the store";
const FLUSH: &str = "flushing the store to disk";

fn read(
    map: &RwLock<BTreeMap<Vec<u8>, Vec<u8>>>,
) -> std::sync::RwLockReadGuard<'_, BTreeMap<Vec<u8>, Vec<u8>>> {
    map.read().unwrap_or_else(|p| p.into_inner())
}

/// The first key after every key that starts with `prefix` (none if the prefix is
/// all `0xff`).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// A range over the in-memory map that takes the lock for each step, so a scan
/// never holds writers off (like the other engines, it sees writes made during
/// the scan beyond its position).
struct MemoryRange<'a> {
    map: &'a RwLock<BTreeMap<Vec<u8>, Vec<u8>>>,
    front: Bound<Vec<u8>>,
    back: Bound<Vec<u8>>,
}

impl MemoryRange<'_> {
    fn step(&mut self, forward: bool) -> Option<Entry> {
        let map = read(self.map);
        let bounds = (self.front.clone(), self.back.clone());
        let mut range = map.range::<Vec<u8>, _>(bounds);
        let (k, v) = if forward {
            range.next()?
        } else {
            range.next_back()?
        };
        let entry = (Bytes::Owned(k.clone()), Bytes::Owned(v.clone()));
        if forward {
            self.front = Bound::Excluded(k.clone());
        } else {
            self.back = Bound::Excluded(k.clone());
        }
        Some(Ok(entry))
    }
}

impl Iterator for MemoryRange<'_> {
    type Item = Entry;

    fn next(&mut self) -> Option<Entry> {
        self.step(true)
    }
}

impl DoubleEndedIterator for MemoryRange<'_> {
    fn next_back(&mut self) -> Option<Entry> {
        self.step(false)
    }
}

fn open_sled(dir: &Path) -> Result<sled::Db> {
    let config = sled::Config::new()
        .path(dir)
        .cache_capacity(64 * 1024 * 1024)
        .mode(sled::Mode::HighThroughput)
        .flush_every_ms(Some(1000));
    // sled's background threads can hold a just-closed database for a moment, so a
    // reopen in the same process retries a held lock briefly. Another process
    // holding it still gets the error after two seconds.
    let mut attempts = 0;
    loop {
        match config.open() {
            Ok(db) => return Ok(db),
            Err(sled::Error::Io(e)) if lock_held(&e) && attempts < 100 => {
                attempts += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => return Err(sled_error("opening the store")(e)),
        }
    }
}

/// Whether sled refused to open because its file lock is held. sled reports
/// that as an error of kind `Other` whose message names the lock (the
/// `WouldBlock` is only in the text), so the kind alone never matches.
fn lock_held(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::WouldBlock
        || e.to_string().starts_with("could not acquire lock")
}

fn open_fjall(dir: &Path) -> Result<fjall::Database> {
    // The journal is made durable by the store's group commit alone (one `fsync`
    // per group), not by fjall on each write or on a timer of its own.
    let builder = || {
        fjall::Database::builder(dir)
            .cache_size(64 * 1024 * 1024)
            .manual_journal_persist(true)
    };
    // As for sled: a database closed a moment ago in this process may still be
    // held by fjall's workers.
    let mut attempts = 0;
    loop {
        match builder().open() {
            Ok(db) => return Ok(db),
            Err(fjall::Error::Locked) if attempts < 100 => {
                attempts += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => return Err(fjall_error("opening the store")(e)),
        }
    }
}

/// Keeps an engine's error whole: its I/O errors as [`Error::Io`], so a full disk
/// stays a full disk for the caller.
fn sled_error(what: &'static str) -> impl Fn(sled::Error) -> Error {
    move |e| match e {
        sled::Error::Io(source) => Error::Io { what, source },
        other => Error::Storage {
            what,
            source: Box::new(other),
        },
    }
}

/// [`fjall_error`] for writes and flushes: the first I/O failure is kept, and a
/// later `Poisoned` refusal (fjall refuses every write once its journal failed)
/// is reported as that failure — its kind and message — so a full disk still
/// reads as a full disk after the first refusal.
fn fjall_write_error(
    poisoned_by: &Mutex<Option<(std::io::ErrorKind, String)>>,
    what: &'static str,
    e: fjall::Error,
) -> Error {
    let mut poisoned_by = poisoned_by.lock().unwrap_or_else(|p| p.into_inner());
    match (e, &*poisoned_by) {
        (fjall::Error::Poisoned, Some((kind, message))) => Error::Io {
            what,
            source: std::io::Error::new(
                *kind,
                format!(
                    "the store's journal failed earlier ({message}); it takes no writes until the store is opened again"
                ),
            ),
        },
        (e, _) => {
            let e = fjall_error(what)(e);
            if poisoned_by.is_none()
                && let Some(kind) = e.io_kind()
            {
                *poisoned_by = Some((kind, ebb_core::error_chain(&e)));
            }
            e
        }
    }
}

fn fjall_error(what: &'static str) -> impl Fn(fjall::Error) -> Error {
    move |e| match e {
        fjall::Error::Io(source) => Error::Io { what, source },
        fjall::Error::Locked => Error::Io {
            what,
            source: std::io::Error::new(
                std::io::ErrorKind::WouldBlock,
                "the store is open in another process",
            ),
        },
        other => Error::Storage {
            what,
            source: other.to_string().into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A held sled lock is recognised as such (so a reopen waits for sled's
    /// background threads to let go of a just-closed database): sled reports it
    /// with kind `Other`.
    #[test]
    fn a_held_sled_lock_is_recognised() {
        let dir = std::env::temp_dir().join(format!("ebb-sled-lock-{}", rand::random::<u64>()));
        let held = open_sled(&dir).unwrap();
        let Err(sled::Error::Io(e)) = sled::Config::new().path(&dir).open() else {
            panic!("a second open of a held sled database succeeded");
        };
        assert!(lock_held(&e), "{e:?}");
        assert!(!lock_held(&std::io::Error::from(
            std::io::ErrorKind::NotFound
        )));
        drop(held);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn prefix_end_is_the_first_key_past_the_prefix() {
        assert_eq!(prefix_end(b"g/"), Some(b"g0".to_vec()));
        assert_eq!(prefix_end(&[b'a', 0xff]), Some(vec![b'b']));
        assert_eq!(prefix_end(&[0xff, 0xff]), None);
    }

    #[test]
    fn every_engine_scans_in_order_both_ways_and_keeps_a_batch_last_write() {
        for engine in Engine::ALL {
            let dir = std::env::temp_dir().join(format!(
                "ebb-kv-{}-{}-{}",
                engine,
                std::process::id(),
                rand::random::<u32>()
            ));
            let kv = Kv::open(engine, &dir).unwrap();
            let mut batch = Batch::default();
            for k in ["p/b", "p/a", "p/c", "q/a"] {
                batch.insert(k.as_bytes(), k.as_bytes());
            }
            // Removed and written again in one batch: the write stays.
            batch.remove(&b"p/b"[..]);
            batch.insert(&b"p/b"[..], &b"again"[..]);
            batch.remove(&b"q/a"[..]);
            kv.apply(batch).unwrap();
            let keys = |it: Iter<'_>| {
                it.map(|e| String::from_utf8(e.unwrap().0.to_vec()).unwrap())
                    .collect::<Vec<_>>()
            };
            assert_eq!(keys(kv.prefix(b"p/")), ["p/a", "p/b", "p/c"], "{engine}");
            assert_eq!(
                keys(Box::new(kv.prefix(b"p/").rev())),
                ["p/c", "p/b", "p/a"],
                "{engine}"
            );
            assert_eq!(keys(kv.range(b"p/b", Some(b"p/c"))), ["p/b"], "{engine}");
            assert_eq!(kv.get(b"p/b").unwrap().as_deref(), Some(&b"again"[..]));
            assert!(kv.get(b"q/a").unwrap().is_none(), "{engine}");
            kv.flush().unwrap();
            drop(kv);
            let _ = std::fs::remove_dir_all(&dir);
        }
    }

    #[test]
    fn a_folder_of_one_engine_is_refused_by_the_other() {
        let dir = std::env::temp_dir().join(format!(
            "ebb-kv-mixed-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        drop(Kv::open(Engine::Sled, &dir).unwrap());
        let e = Kv::open(Engine::Fjall, &dir).unwrap_err();
        let why = ebb_core::error_chain(&e);
        assert!(why.contains("holds a sled store"), "{why}");
        let _ = std::fs::remove_dir_all(&dir);
        drop(Kv::open(Engine::Fjall, &dir).unwrap());
        let e = Kv::open(Engine::Sled, &dir).unwrap_err();
        let why = ebb_core::error_chain(&e);
        assert!(why.contains("holds a fjall store"), "{why}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
