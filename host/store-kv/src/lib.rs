//! The embedded store: one ordered key space on an embedded engine (sled by
//! default, or fjall; `kv.rs`), keys by prefix, every commit atomic: applied in
//! one batch with the commits grouped with it.
//!
//! | key                          | value                           |
//! |------------------------------|---------------------------------|
//! | `g/<id>`                     | grant record (`ebb_core::encoding`: binary; JSON if written before it) |
//! | `b/<id>`                     | the record's tag (HMAC, 32 bytes; see `ebb_core::audit`) |
//! | `t/<due: u64 BE><id>`        | due index entry (empty)         |
//! | `d/<id>`                     | the grant's current due key (u64 BE) |
//! | `l/<id>`                     | a lease's original due (u64 BE) |
//! | `c/<id>`                     | sealed credential, encrypted again under an erasable key: slot (u32 BE) ‖ nonce ‖ ciphertext (`keyring.rs`) |
//! | `a/<seq: u64 BE>`            | audit event (JSON)              |
//! | `i/<grant id>\0<seq: u64 BE>`| audit-by-grant index (empty)    |
//! | `m/head`                     | audit head: seq, hash, record count and their MAC (JSON) |
//! | `m/verified`                 | the head the last good check verified, at start or while serving (JSON) |
//! | `m/index/record-tags`        | present once every record has its tag |
//! | `m/index/keyring`            | present once every `c/` value is under a keyring key |
//! | `m/count/credentials`        | `c/` entries (u64 BE): when the keyring holds as many keys, no key is stray and the open skips the scan |
//! | `m/count/<state>`            | grants in that state (u64 BE)   |
//! | `m/escalated/<connector>`    | grants of that connector ever escalated (u64 BE) |
//! | `m/index/escalated`          | present once `m/escalated/` counts every grant |
//! | `r/<requested by>\0<id>`     | grants by requester (empty)     |
//! | `m/index/requester`          | present once `r/` covers every grant |
//! | `s/<key>`                    | host state (anomaly flags, draining instances) |
//!
//! Beside the engine's files, `keyring` holds the erasable keys, one 32-byte slot each.
//!
//! Big-endian numbers make byte order equal numeric order, so range scans over
//! `t/` yield grants by due time, then id (mini-redis's `(Instant, key)` tiebreak).
//!
//! Key types: [`KvStore`], implementing `ebb_core::Store`, and [`Engine`]. Key and
//! value layout live in `keys.rs`; the engines and their errors in `kv.rs`.
//!
//! **Architecture invariant:** a store knows the vocabulary of `ebb-core` and its
//! storage engine, nothing else: no wasmtime, no axum, no Cedar, no engine. It never
//! decides a transition; it applies the `Commit` it is given atomically.

use ebb_core::audit::{
    AuditEvent, Chain, ChainReport, Head, NewEvent, verify_chain, verify_chain_from,
};
use ebb_core::contract::Timestamp;
use ebb_core::state::GrantState;
use ebb_core::store::{
    AuditQuery, Commit, Error, GrantRecord, ListFilter, Page, Result, Sealed, Store,
};
use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{oneshot, watch};

mod due;
mod keyring;
mod keys;
mod kv;

use keys::*;
pub use kv::Engine;
use kv::{Batch, Bytes, Kv};

/// The store's tests, run on each durable engine.
#[cfg(test)]
mod tests {
    mod sled {
        const ENGINE: crate::Engine = crate::Engine::Sled;
        include!("tests.rs");
    }
    mod fjall {
        const ENGINE: crate::Engine = crate::Engine::Fjall;
        include!("tests.rs");
    }
}

/// The embedded store, on the engine it was opened with.
pub struct KvStore {
    /// Shared with the flusher only weakly, so dropping the store closes the db.
    db: Arc<Kv>,
    chain: Chain,
    /// Serializes commits: the audit chain is a total order.
    state: Mutex<Shared>,
    /// Commits prepared and waiting to be applied in the next group, each with
    /// where its answer goes ([`KvStore::combine`]).
    queue: Mutex<Vec<(Prepared, Answer)>>,
    /// Set while a caller applies the queue's groups.
    combining: AtomicBool,
    group: Arc<GroupCommit>,
    /// False for a temporary store: `sync` has nothing to make durable.
    durable: bool,
    /// The erasable keys of stored credentials.
    keyring: Arc<keyring::Keyring>,
    /// The store itself, for work handed to the blocking pool.
    me: std::sync::Weak<KvStore>,
    /// Whether every grant record passed a check since the store opened (or the
    /// operator accepted the store as it is): until then each record is checked
    /// against its tag as it is read, and an altered one is refused, not acted on.
    records_checked: AtomicBool,
    /// While [`KvStore::verify_records`] runs: the records created since it began,
    /// which it must not count among those the head counted.
    created: Mutex<Option<HashSet<String>>>,
    /// Held by [`KvStore::verify_records`]: one runs at a time (each starts
    /// `created` afresh).
    checking: Mutex<()>,
}

impl std::fmt::Debug for KvStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvStore").finish_non_exhaustive()
    }
}

struct Shared {
    tally: Tally,
    /// The due index's earliest entries (`due.rs`), read by the scheduler's claims
    /// and "when is the next one". Changed only under this lock, after the engine
    /// took the batch.
    due: due::DueWindow,
    /// The audit timestamp source; events never go back in time.
    clock: fn() -> Timestamp,
}

/// The audit chain's head and what the store counts, as every commit advances
/// them (a group's copy in [`Staged`] until the engine took its batch).
#[derive(Clone)]
struct Tally {
    head: Head,
    /// Grant records held: counted in the keyed head.
    records: u64,
    /// Stored credentials (`c/` entries), persisted beside them.
    credentials: u64,
    counts: BTreeMap<GrantState, u64>,
    escalations: BTreeMap<String, u64>,
}

/// Where a queued commit's result goes.
type Answer = oneshot::Sender<Result<(GrantRecord, AuditEvent)>>;

/// Groups one [`KvStore::combine`] call applies before it leaves the rest of the
/// queue to a task of its own.
const COMBINE_ROUNDS: usize = 4;

/// Clears the combining flag when the caller applying groups is done, also if
/// it panicked.
struct Combining<'a>(&'a AtomicBool);

impl Drop for Combining<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// The failure of a group's batch, for each commit of the group after the first
/// (which gets the engine's own error): the same I/O kind and message.
fn group_failed(kind: Option<std::io::ErrorKind>, message: &str) -> Error {
    const WHAT: &str = "applying a group of commits";
    match kind {
        Some(kind) => Error::Io {
            what: WHAT,
            source: std::io::Error::new(kind, message.to_owned()),
        },
        None => Error::Storage {
            what: WHAT,
            source: message.into(),
        },
    }
}

/// A group of commits being applied under the commit lock
/// ([`KvStore::apply_group`]): the store's tally as the group's commits staged
/// so far leave it, and their writes — the store's own only once the engine
/// took the batch. While commits are staged, `tally.head` names the last event
/// linked but is not keyed: the group keys its head once, at the end.
struct Staged {
    tally: Tally,
    clock: fn() -> Timestamp,
    dues: DueChanges,
    batch: Batch,
}

impl Staged {
    fn new(shared: &Shared) -> Self {
        Self {
            tally: shared.tally.clone(),
            clock: shared.clock,
            dues: DueChanges::default(),
            batch: Batch::default(),
        }
    }

    /// Makes the group's tally the store's, once the engine took its batch.
    fn publish(self, shared: &mut Shared) {
        shared.tally = self.tally;
        self.dues.apply(&mut shared.due);
    }
}

/// How [`KvStore::check_records`] holds the records it found against the count
/// the keyed head recorded.
enum Count {
    /// Nothing is being written (the check at start): exactly this many.
    Exactly(u64),
    /// Commits go on (the full check): at least this many; those written
    /// meanwhile may be found too.
    AtLeast(u64),
    /// Commits go on ([`KvStore::verify_records`]): exactly this many besides
    /// those created since the check began, which `KvStore::created` names.
    Before(u64),
}

/// A commit prepared outside the commit lock ([`KvStore::prepare`]).
struct Prepared {
    id: String,
    record: GrantRecord,
    old: (Option<Bytes>, Option<GrantRecord>),
    encoded: (Vec<u8>, [u8; 32]),
    sealed: Sealed,
    /// A new credential's stored value and its key's ticket in the keyring.
    added: Option<(Vec<u8>, u64)>,
    replaced: Option<Bytes>,
    event: NewEvent,
    lease_until: Option<Timestamp>,
    earlier: Vec<NewEvent>,
}

impl Prepared {
    /// The new credential whose key must reach the disk before the commit is
    /// applied: on a durable store, the engine may flush the commit at any moment
    /// after (another caller's sync), and a durable record whose key is not would
    /// read as erased after a power loss.
    fn key_pending(&self, durable: bool) -> Option<(&[u8], u64)> {
        let (value, ticket) = self.added.as_ref().filter(|_| durable)?;
        Some((value, *ticket))
    }
}

/// Group commit: writers bump `written`; one flusher makes everything written so far
/// durable and publishes how far it got.
struct GroupCommit {
    written: AtomicU64,
    flushed: watch::Receiver<u64>,
    kick: Arc<Kick>,
    /// Wakes the key syncer ([`KeySyncer`]).
    kick_keys: Arc<Kick>,
    /// The flusher's failures, while they last.
    failing: Failing,
    /// The key syncer's failures, while they last.
    keys_failing: Failing,
}

/// A background task's writes failing: since when, the latest failure's time and
/// kind, and the first one's message, while they are; each task clears its own
/// once it succeeds again.
#[derive(Default)]
struct Failing(Mutex<Option<FailingSince>>);

struct FailingSince {
    since: std::time::Instant,
    latest: std::time::Instant,
    kind: std::io::ErrorKind,
    message: String,
}

impl Failing {
    fn lock(&self) -> MutexGuard<'_, Option<FailingSince>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn clear(&self) {
        *self.lock() = None;
    }

    fn note(&self, kind: std::io::ErrorKind, message: String) {
        let now = std::time::Instant::now();
        let mut failing = self.lock();
        let f = failing.get_or_insert_with(|| FailingSince {
            since: now,
            latest: now,
            kind,
            message,
        });
        f.latest = now;
        f.kind = kind;
    }

    /// The error, if writes have been failing for at least `for_at_least` and
    /// failed again after `waiting_since` (a waiter that came after the task's
    /// last failure waits for its next attempt, which may succeed).
    fn for_at_least(
        &self,
        for_at_least: std::time::Duration,
        waiting_since: Option<std::time::Instant>,
    ) -> Result<()> {
        match &*self.lock() {
            Some(f)
                if f.since.elapsed() >= for_at_least
                    && waiting_since.is_none_or(|w| f.latest >= w) =>
            {
                Err(Error::Io {
                    what: "flushing the store to disk",
                    source: std::io::Error::new(f.kind, f.message.clone()),
                })
            }
            _ => Ok(()),
        }
    }
}

/// How long flushes may keep failing before `sync` gives up and says why, rather
/// than leaving its caller waiting on a disk that will not take the data.
const FLUSH_GIVE_UP: std::time::Duration = std::time::Duration::from_secs(2);

/// How the store wakes its flusher, and tells it the store is gone.
#[derive(Default)]
struct Kick {
    notify: tokio::sync::Notify,
    closed: std::sync::atomic::AtomicBool,
}

impl Kick {
    fn kick(&self) {
        self.notify.notify_one();
    }

    /// Waits until kicked; false once the store is closed.
    async fn wait(&self) -> bool {
        self.notify.notified().await;
        !self.closed.load(Ordering::Acquire)
    }
}

/// The group-commit flusher: a task that runs each flush on the blocking pool and
/// holds the store only weakly. (A thread of its own made rounds shorter — 0.8 ms
/// instead of ~4 ms, the wait for a turn on two busy async workers — but then
/// groups were half as large and lifecycles/s fell on both engines: with the CPU
/// the limit, fewer, larger groups win. BENCHMARKS.md.)
struct Flusher {
    kick: Arc<Kick>,
    group: std::sync::Weak<GroupCommit>,
    db: std::sync::Weak<Kv>,
    keyring: std::sync::Weak<keyring::Keyring>,
    flushed: watch::Sender<u64>,
}

impl Flusher {
    async fn run(self) {
        while self.kick.wait().await {
            // Hold the db only while flushing, and let go of it before telling
            // anyone: a caller that syncs and then drops the store must find the db
            // closed (its file lock released) right away.
            let flushed = {
                let (Some(group), Some(db), Some(keyring)) = (
                    self.group.upgrade(),
                    self.db.upgrade(),
                    self.keyring.upgrade(),
                ) else {
                    break;
                };
                let target = group.written.load(Ordering::Acquire);
                tokio::task::spawn_blocking(move || Self::flush(&db, &keyring, target))
                    .await
                    .unwrap_or_else(|e| {
                        Err(Error::Io {
                            what: "flushing the store to disk",
                            source: std::io::Error::other(e),
                        })
                    })
            };
            let Some(group) = self.group.upgrade() else {
                break;
            };
            match flushed {
                Ok(target) => {
                    group.failing.clear();
                    self.flushed.send_replace(target);
                }
                Err(e) => {
                    metrics::counter!("ebb_store_flush_errors_total").increment(1);
                    let why = ebb_core::error_chain(&e);
                    tracing::error!(error = %why, "store flush failed; retrying");
                    group
                        .failing
                        .note(e.io_kind().unwrap_or(std::io::ErrorKind::Other), why);
                    drop(group);
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    self.kick.kick();
                }
            }
        }
    }

    /// Makes everything counted up to `target` durable.
    fn flush(db: &Kv, keyring: &keyring::Keyring, target: u64) -> Result<u64> {
        // Keys before the records that use them: a commit with a new key is applied
        // only once a keyring sync covered that key (the key syncer's), so the
        // engine's flush — which takes whatever was applied until it runs — never
        // makes a record durable without its key. Keys of credentials whose removal
        // is now durable are erased after the engine's flush (their zeros synced
        // with the next round's keyring sync): erased before, a crash could bring
        // back a record whose credential is gone.
        keyring.sync().map_err(|source| Error::Io {
            what: "syncing the keyring",
            source,
        })?;
        db.flush()?;
        keyring.erase_due(target).map_err(|source| Error::Io {
            what: "erasing credentials' keys",
            source,
        })?;
        Ok(target)
    }
}

/// Syncs the keyring when a commit with a new credential waits for its key to be
/// on disk ([`Prepared::key_pending`]): one small `fsync`, not a whole flush
/// round (the engine's flush can take far longer, and the commit would wait for
/// the round after the one in progress).
struct KeySyncer {
    kick: Arc<Kick>,
    group: std::sync::Weak<GroupCommit>,
    keyring: std::sync::Weak<keyring::Keyring>,
}

impl KeySyncer {
    async fn run(self) {
        while self.kick.wait().await {
            let Some(keyring) = self.keyring.upgrade() else {
                break;
            };
            let synced = tokio::task::spawn_blocking(move || keyring.sync())
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e)));
            let Some(group) = self.group.upgrade() else {
                break;
            };
            let Err(e) = synced else {
                group.keys_failing.clear();
                continue;
            };
            metrics::counter!("ebb_store_flush_errors_total").increment(1);
            tracing::error!(error = %e, "syncing the keyring failed; retrying");
            group
                .keys_failing
                .note(e.kind(), format!("syncing the keyring: {e}"));
            drop(group);
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            self.kick.kick();
        }
    }
}

/// Adds `record` to `page` if `filter` matches it; false once the page is full
/// (its `next` then names the last grant on it).
fn add_to_page(page: &mut Page, filter: &ListFilter, limit: usize, record: GrantRecord) -> bool {
    if !filter.matches(&record) {
        return true;
    }
    if page.grants.len() == limit {
        page.next = page.grants.last().map(|r| r.grant.id.clone());
        return false;
    }
    page.grants.push(record);
    true
}

/// The due-index entries one batch adds and removes, in order, for the in-memory
/// copy (`Shared::due`) once the engine took the batch.
#[derive(Default)]
struct DueChanges(Vec<(Timestamp, String, bool)>);

impl DueChanges {
    fn insert(&mut self, batch: &mut Batch, due: Timestamp, id: &str) {
        batch.insert(due_key(due, id), &[][..]);
        self.0.push((due, id.to_owned(), true));
    }

    fn remove(&mut self, batch: &mut Batch, due: Timestamp, id: &str) {
        batch.remove(due_key(due, id));
        self.0.push((due, id.to_owned(), false));
    }

    fn apply(self, index: &mut due::DueWindow) {
        for (due, id, added) in self.0 {
            if added {
                index.insert(due, id);
            } else {
                index.remove(due, id);
            }
        }
    }
}

impl KvStore {
    /// Opens (or creates) the store in `dir` on sled, the default engine.
    /// `chain_key` keys the audit chain. Must be called within a tokio runtime (the
    /// group-commit flusher is a task).
    pub fn open(dir: &Path, chain_key: [u8; 32]) -> Result<Arc<Self>> {
        Self::open_with(Engine::Sled, dir, chain_key)
    }

    /// Opens (or creates) the store in `dir` on `engine`. A folder holding a store
    /// of another engine is refused.
    pub fn open_with(engine: Engine, dir: &Path, chain_key: [u8; 32]) -> Result<Arc<Self>> {
        if engine == Engine::Memory {
            return Self::temporary(chain_key);
        }
        let db = Kv::open(engine, dir)?;
        let keyring = dir.join("keyring");
        Self::with_db(db, chain_key, Some(&keyring))
    }

    /// An in-memory store that vanishes on drop, for tests and benchmarks of
    /// everything but durability.
    pub fn temporary(chain_key: [u8; 32]) -> Result<Arc<Self>> {
        Self::with_db(Kv::memory(), chain_key, None)
    }

    /// Opens the store on `db`; `keyring` is where the erasable keys live (a
    /// durable store) or `None` (a temporary one, keys in memory).
    fn with_db(db: Kv, chain_key: [u8; 32], keyring: Option<&Path>) -> Result<Arc<Self>> {
        let durable = keyring.is_some();
        build_index(&db, b"m/index/requester", |r| {
            requester_key(&r.requested_by, &r.grant.id)
        })?;
        build_index(&db, b"m/index/state", |r| {
            by_state_key(r.state, &r.grant.id)
        })?;
        count_escalations(&db)?;
        let (keyring, credentials) = open_keyring(&db, keyring)?;
        let keyring = Arc::new(keyring);
        let chain = Chain::new(chain_key);
        tag_records(&db, &chain)?;
        let head = match db.get(b"m/head")? {
            Some(bytes) => decode(b"m/head", &bytes)?,
            None => Head::genesis(&chain),
        };
        // What the next commit counts from; a head that does not count records is
        // reported by the checks, and counted from zero until then.
        let records = head.records.unwrap_or(0);
        let mut counts = BTreeMap::new();
        for state in GrantState::ALL {
            let n = db.get(count_key(state))?.and_then(|v| be(&v)).unwrap_or(0);
            counts.insert(state, n);
        }
        let mut escalations = BTreeMap::new();
        for entry in db.prefix(ESCALATED) {
            let (k, v) = entry?;
            let connector = String::from_utf8_lossy(&k[ESCALATED.len()..]).into_owned();
            escalations.insert(connector, be(&v).unwrap_or(0));
        }
        let due = due::DueWindow::open(&db)?;
        // A store without records has none to check: every record is this host's.
        let no_records = db.prefix(b"g/").next().is_none();
        let db = Arc::new(db);
        let (flushed_tx, flushed) = watch::channel(0);
        let group = Arc::new(GroupCommit {
            written: AtomicU64::new(0),
            flushed,
            kick: Arc::new(Kick::default()),
            kick_keys: Arc::new(Kick::default()),
            failing: Failing::default(),
            keys_failing: Failing::default(),
        });
        if durable {
            let flusher = Flusher {
                kick: group.kick.clone(),
                group: Arc::downgrade(&group),
                db: Arc::downgrade(&db),
                keyring: Arc::downgrade(&keyring),
                flushed: flushed_tx,
            };
            tokio::spawn(flusher.run());
            let keys = KeySyncer {
                kick: group.kick_keys.clone(),
                group: Arc::downgrade(&group),
                keyring: Arc::downgrade(&keyring),
            };
            tokio::spawn(keys.run());
        }
        Ok(Arc::new_cyclic(|me| Self {
            me: me.clone(),
            db,
            chain,
            state: Mutex::new(Shared {
                tally: Tally {
                    head,
                    records,
                    credentials,
                    counts,
                    escalations,
                },
                due,
                clock: wall_clock,
            }),
            queue: Mutex::default(),
            combining: AtomicBool::new(false),
            group,
            durable,
            keyring,
            records_checked: AtomicBool::new(no_records),
            created: Mutex::new(None),
            checking: Mutex::new(()),
        }))
    }

    /// Runs `check` on the blocking pool: a whole-store scan must not hold up an
    /// async worker.
    async fn blocking<T: Send + 'static>(&self, check: fn(&KvStore) -> Result<T>) -> Result<T> {
        let Some(me) = self.me.upgrade() else {
            return check(self);
        };
        tokio::task::spawn_blocking(move || check(&me))
            .await
            .map_err(|e| Error::Storage {
                what: "checking the store",
                source: e.into(),
            })?
    }

    /// Runs `check` on a thread of its own at the lowest CPU priority (nice 19,
    /// for that thread alone): a check of the whole store run while the host
    /// serves takes only the CPU that expiries and requests leave.
    async fn in_background<T: Send + 'static>(
        &self,
        check: fn(&KvStore) -> Result<T>,
    ) -> Result<T> {
        let Some(me) = self.me.upgrade() else {
            return check(self);
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("ebb-store-check".into())
            .spawn(move || {
                if let Err(e) = rustix::process::setpriority_process(None, 19) {
                    tracing::warn!(error = %e, "could not lower the store check's CPU priority");
                }
                let _ = tx.send(check(&me));
            })
            .map_err(|source| Error::Io {
                what: "starting the store's check",
                source,
            })?;
        rx.await.map_err(|_| Error::Storage {
            what: "checking the store",
            source: "the check's thread ended without an answer".into(),
        })?
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Adds the audit event, linked after the event `seq` with `hash` and stamped
    /// `at`, to `batch` and returns it; the caller keys the new head once for all
    /// it links ([`KvStore::key_head`]).
    fn seal_event(
        &self,
        (seq, hash): (u64, &str),
        at: Timestamp,
        event: NewEvent,
        batch: &mut Batch,
    ) -> AuditEvent {
        let (sealed, stored) = self.chain.seal_encoded(event, at, seq, hash);
        batch.insert(audit_key(sealed.seq), stored);
        if let Some(grant) = &sealed.grant_id {
            batch.insert(audit_index_key(grant, sealed.seq), &[][..]);
        }
        sealed
    }

    /// Adds to `batch` the keyed head after the event `seq` with `hash`, of a store
    /// holding `records` records, and returns it; the caller makes it the store's
    /// head once the batch is applied.
    fn key_head(&self, seq: u64, hash: &str, records: u64, batch: &mut Batch) -> Result<Head> {
        let head = self.chain.head(seq, hash, records);
        batch.insert(&b"m/head"[..], encode(&head)?);
        Ok(head)
    }

    /// Counts `n` writes for group commit; returns the last one's ticket (what
    /// `sync` waits for).
    fn written(&self, n: u64) -> u64 {
        self.group.written.fetch_add(n, Ordering::AcqRel) + n
    }

    /// [`Store::list`] through an index whose keys are `prefix` followed by a grant
    /// id (`r/<requester>\0`, `x/<state>\0`): it reads the grants the index names,
    /// not every grant. Entries are checked against the record (`filter.matches`),
    /// so a stale entry shows nothing it should not.
    fn list_by_index(&self, prefix: &[u8], filter: &ListFilter, limit: usize) -> Result<Page> {
        let start = match &filter.after {
            Some(after) => {
                let mut k = prefix.to_vec();
                k.extend_from_slice(after.as_bytes());
                k.push(0);
                k
            }
            None => prefix.to_vec(),
        };
        let mut page = Page::default();
        for entry in self.db.range(&start, None) {
            let (k, _) = entry?;
            let Some(id) = k.strip_prefix(prefix) else {
                break;
            };
            let id = String::from_utf8_lossy(id);
            let Some(record) = self.get(&id)? else {
                continue;
            };
            if !add_to_page(&mut page, filter, limit, record) {
                break;
            }
        }
        Ok(page)
    }

    /// Erases the key of a stored credential value. A failure leaves the slot to
    /// be zeroed at the next open (no record refers to it any more).
    fn erase_key(&self, value: &[u8]) {
        if let Err(e) = self.keyring.erase(value) {
            metrics::counter!("ebb_store_flush_errors_total").increment(1);
            tracing::error!(error = %e, "erasing a credential's key failed; it is erased at the next start");
        }
    }

    /// The stored audit events after `after` up to `end`, in chain order: those
    /// appended past `end` (the head a check read) are the next check's.
    fn events(&self, after: u64, end: u64) -> impl Iterator<Item = Result<AuditEvent>> + '_ {
        self.db
            .range(&audit_key(after.saturating_add(1)), None)
            .take_while(|entry| entry.as_ref().map_or(true, |(k, _)| k.starts_with(b"a/")))
            .map(|entry| {
                let (k, v) = entry?;
                decode::<AuditEvent>(&k, &v)
            })
            .take_while(move |event| event.as_ref().map_or(true, |e| e.seq <= end))
    }

    /// The head the last good check verified, if this host recorded it.
    fn checkpoint(&self) -> Result<Option<Head>> {
        Ok(match self.db.get(b"m/verified")? {
            Some(bytes) => Some(decode::<Head>(b"m/verified", &bytes)?)
                .filter(|h| self.chain.head_is_genuine(h)),
            None => None,
        })
    }

    /// Checks the events after the last good check up to `head` (the whole chain
    /// without one).
    fn check_new_events(&self, head: Option<&Head>) -> Result<ChainReport> {
        let (from_seq, from_hash) = match (self.checkpoint()?, head) {
            (Some(c), Some(h)) if c.seq <= h.seq => {
                // The event it ended at must still be the one it verified.
                let at = match self.db.get(audit_key(c.seq))? {
                    Some(v) => Some(decode::<AuditEvent>(&audit_key(c.seq), &v)?),
                    None => None,
                };
                if c.seq > 0
                    && at.is_none_or(|e| e.hash != c.hash || !self.chain.event_is_genuine(&e))
                {
                    return Ok(ChainReport {
                        events: 0,
                        records: 0,
                        problem: Some(format!(
                            "event seq {} was verified before and has been altered or removed since",
                            c.seq
                        )),
                    });
                }
                (c.seq, c.hash)
            }
            _ => (0, ebb_core::audit::GENESIS.to_owned()),
        };
        let end = head.map_or(u64::MAX, |h| h.seq);
        Ok(verify_chain_from(
            &self.chain,
            (from_seq, &from_hash),
            self.events(from_seq, end),
            head,
        ))
    }

    fn stored_head(&self) -> Result<Option<Head>> {
        match self.db.get(b"m/head")? {
            Some(bytes) => Ok(Some(decode(b"m/head", &bytes)?)),
            None => Ok(None),
        }
    }

    /// Checks every grant record against its tag and, with `latest_event`, against
    /// its grant's latest event (an older record put back no longer matches it),
    /// and counts them as `count` says. Returns how many records were checked and
    /// the first problem. Run while commits go on (any `count` but
    /// [`Count::Exactly`]), a mismatch is read again under the commit lock before it
    /// counts.
    fn check_records(&self, count: Count, latest_event: bool) -> Result<(u64, Option<String>)> {
        let mut checked = 0;
        let mut older = 0;
        // Tags are read beside the records (both in id order), not looked up one by one.
        let mut tags = self.db.prefix(b"b/");
        let mut next_tag = tags.next().transpose()?;
        for entry in self.db.prefix(b"g/") {
            let (k, v) = entry?;
            let id = &k[2..];
            // Skip tags of ids before this one; take this one's if there is one.
            while next_tag.as_ref().is_some_and(|(tk, _)| &tk[2..] < id) {
                next_tag = tags.next().transpose()?;
            }
            let tag = match &next_tag {
                Some((tk, _)) if &tk[2..] == id => {
                    let tag = next_tag.take().map(|(_, tv)| tv);
                    next_tag = tags.next().transpose()?;
                    tag
                }
                _ => None,
            };
            let id = String::from_utf8_lossy(id).into_owned();
            checked += 1;
            let problem = match self.record_problem(&id, &v, tag.as_deref(), latest_event)? {
                Some(_) if !matches!(count, Count::Exactly(_)) => {
                    self.tagged(&id, v, latest_event)?.err()
                }
                found => found,
            };
            if let Some(problem) = problem {
                return Ok((checked, Some(problem)));
            }
            if let Count::Before(_) = count {
                let created = self.created.lock().unwrap_or_else(|p| p.into_inner());
                older += u64::from(!created.as_ref().is_some_and(|c| c.contains(&id)));
            }
        }
        let (found, n, exact) = match count {
            Count::Exactly(n) => (checked, n, true),
            Count::AtLeast(n) => (checked, n, false),
            Count::Before(n) => (older, n, true),
        };
        let problem = if found < n {
            Some(format!(
                "the store holds {found} grant records but recorded {n}: records were removed"
            ))
        } else if exact && found > n {
            Some(format!(
                "the store holds {found} grant records but recorded {n}: records were added"
            ))
        } else {
            None
        };
        Ok((checked, problem))
    }

    fn record_problem(
        &self,
        id: &str,
        bytes: &[u8],
        stored: Option<&[u8]>,
        latest_event: bool,
    ) -> Result<Option<String>> {
        let tag = self.chain.record_tag(id, bytes);
        if stored != Some(&tag[..]) {
            return Ok(Some(format!(
                "grant record {id} was altered outside the host: its tag does not match"
            )));
        }
        if !latest_event {
            return Ok(None);
        }
        let mut prefix = key("i/", id);
        prefix.push(0);
        let Some(entry) = self.db.prefix(&prefix).next_back() else {
            return Ok(Some(format!("grant record {id} has no audit event")));
        };
        let (k, _) = entry?;
        let seq = be(&k[prefix.len()..]).ok_or_else(|| Error::Corrupt {
            key: String::from_utf8_lossy(&k).into_owned(),
            source: "malformed audit index key".into(),
        })?;
        let Some(v) = self.db.get(audit_key(seq))? else {
            return Ok(Some(format!(
                "the latest audit event of grant {id} (seq {seq}) is missing"
            )));
        };
        let event: AuditEvent = decode(&audit_key(seq), &v)?;
        // Events from before records were bound carry no tag.
        match event.record {
            Some(bound) if bound != hex::encode(tag) => Ok(Some(format!(
                "grant record {id} is not the one its latest audit event (seq {seq}) committed: an older record was put back"
            ))),
            _ => Ok(None),
        }
    }

    fn current_due(&self, id: &str) -> Result<Option<Timestamp>> {
        Ok(self.db.get(key("d/", id))?.and_then(|v| be(&v)))
    }
}

/// Where the next event links: after `last` if the commit already linked one,
/// else after the chain's `head`.
fn link<'a>(head: &'a Head, last: Option<&'a AuditEvent>) -> (u64, &'a str) {
    last.map_or((head.seq, &head.hash), |e| (e.seq, &e.hash))
}

/// Binds the records of a store written before records were tagged (once): tags
/// every record, and keys the head with their count — also a head from before
/// heads were keyed. What the store holds at that moment is trusted, as it was
/// before; from then on an edit outside the host is detected.
fn tag_records(db: &Kv, chain: &Chain) -> Result<()> {
    const DONE: &[u8] = b"m/index/record-tags";
    if db.get(DONE)?.is_some() {
        return Ok(());
    }
    let mut batch = Batch::default();
    let mut records = 0;
    for entry in db.prefix(b"g/") {
        let (k, v) = entry?;
        let id = String::from_utf8_lossy(&k[2..]);
        batch.insert(key("b/", &id), &chain.record_tag(&id, &v)[..]);
        records += 1;
    }
    if let Some(bytes) = db.get(b"m/head")? {
        let head: Head = decode(b"m/head", &bytes)?;
        // A keyed head that is not genuine stays as it is, for the checks to report.
        if head.mac.is_none() || chain.head_is_genuine(&head) {
            batch.insert(
                &b"m/head"[..],
                encode(&chain.head(head.seq, &head.hash, records))?,
            );
        }
    }
    batch.insert(DONE, &[][..]);
    db.apply(batch)
}

/// Opens the keyring at `path` (in memory without one: a temporary store starts
/// empty) and returns it with the number of stored credentials. A store written
/// before the keyring has its credentials put under keyring keys, once;
/// afterwards every slot no credential refers to is zeroed.
fn open_keyring(db: &Kv, path: Option<&Path>) -> Result<(keyring::Keyring, u64)> {
    const DONE: &[u8] = b"m/index/keyring";
    let io = |source| Error::Io {
        what: "opening the keyring",
        source,
    };
    let Some(path) = path else {
        return Ok((keyring::Keyring::memory(), 0));
    };
    if db.get(DONE)?.is_some() {
        // After a clean run the keyring holds exactly as many keys as there are
        // credentials; only after a crash can a key be stray, and then a scan finds it.
        if let Some(n) = db.get(CREDENTIALS)?.and_then(|v| be(&v)) {
            let keyring = keyring::Keyring::open(path, None).map_err(io)?;
            if keyring.in_use() == n {
                return Ok((keyring, n));
            }
        }
        let mut used = std::collections::HashSet::new();
        for entry in db.prefix(b"c/") {
            let (_, v) = entry?;
            used.insert(keyring::slot_of(&v).map_err(io)?);
        }
        let keyring = keyring::Keyring::open(path, Some(&used)).map_err(io)?;
        let n = used.len() as u64;
        db.put(CREDENTIALS, Some(&n.to_be_bytes()[..]))?;
        return Ok((keyring, n));
    }
    let keyring =
        keyring::Keyring::open(path, Some(&std::collections::HashSet::new())).map_err(io)?;
    let mut batch = Batch::default();
    let mut n: u64 = 0;
    for entry in db.prefix(b"c/") {
        let (k, v) = entry?;
        let id = String::from_utf8_lossy(&k[2..]);
        batch.insert(k.to_vec(), keyring.seal(&id, &v).map_err(io)?.0);
        n += 1;
    }
    batch.insert(CREDENTIALS, &n.to_be_bytes()[..]);
    batch.insert(DONE, &[][..]);
    keyring.sync().map_err(io)?;
    db.apply(batch)?;
    db.flush()?;
    Ok((keyring, n))
}

/// Counts the escalated grants written before the count existed (once).
fn count_escalations(db: &Kv) -> Result<()> {
    const DONE: &[u8] = b"m/index/escalated";
    if db.get(DONE)?.is_some() {
        return Ok(());
    }
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for entry in db.prefix(b"g/") {
        let (k, v) = entry?;
        let record = decode_record(&k, &v)?;
        if record.escalated_at.is_some() {
            *counts.entry(record.connector).or_default() += 1;
        }
    }
    let mut batch = Batch::default();
    for (connector, n) in counts {
        batch.insert(escalated_key(&connector), &n.to_be_bytes()[..]);
    }
    batch.insert(DONE, &[][..]);
    db.apply(batch)
}

/// Builds an index over grants written before it existed, once (`done` marks
/// it built): one entry `key(record)` per grant record.
fn build_index(db: &Kv, done: &[u8], key: impl Fn(&GrantRecord) -> Vec<u8>) -> Result<()> {
    if db.get(done)?.is_some() {
        return Ok(());
    }
    let mut batch = Batch::default();
    for entry in db.prefix(b"g/") {
        let (k, v) = entry?;
        let record = decode_record(&k, &v)?;
        batch.insert(key(&record), &[][..]);
    }
    batch.insert(done, &[][..]);
    db.apply(batch)
}

impl Drop for KvStore {
    fn drop(&mut self) {
        // Drop runs before the fields are dropped: mark the store closed first, so a
        // woken flusher ends instead of upgrading its handle and holding the db open.
        for kick in [&self.group.kick, &self.group.kick_keys] {
            kick.closed.store(true, Ordering::Release);
            kick.kick();
        }
    }
}

/// The store's operations, synchronous: the engine answers from memory or local
/// disk. `Store` (below) serves them to the lifecycle.
impl KvStore {
    pub fn get(&self, id: &str) -> Result<Option<GrantRecord>> {
        let k = key("g/", id);
        match self.db.get(&k)? {
            Some(bytes) => {
                let bytes = self.trusted(id, bytes)?;
                decode_record(&k, &bytes).map(Some)
            }
            None => Ok(None),
        }
    }

    /// The record `bytes` of grant `id` as read, once they may be acted on: until
    /// every record has passed a check, only if they match the record's tag. A
    /// record altered outside the host is an error.
    fn trusted(&self, id: &str, bytes: Bytes) -> Result<Bytes> {
        if self.records_checked.load(Ordering::Acquire) {
            return Ok(bytes);
        }
        self.tagged(id, bytes, false)?
            .map_err(|problem| Error::Corrupt {
                key: format!("g/{id}"),
                source: format!(
                    "{problem}; it is not acted on (the store's check of every record reports it)"
                )
                .into(),
            })
    }

    /// Checks the record `bytes` of grant `id` against its tag (and, with
    /// `latest_event`, its grant's latest event). A mismatch is read again under
    /// the commit lock (a commit may have come between the record's read and its
    /// tag's): the bytes returned are then those read there. `Err` is the problem:
    /// the record was altered or removed outside the host.
    fn tagged(
        &self,
        id: &str,
        bytes: Bytes,
        latest_event: bool,
    ) -> Result<std::result::Result<Bytes, String>> {
        let tag = self.db.get(key("b/", id))?;
        if self
            .record_problem(id, &bytes, tag.as_deref(), latest_event)?
            .is_none()
        {
            return Ok(Ok(bytes));
        }
        let _shared = self.lock();
        let tag = self.db.get(key("b/", id))?;
        let Some(now) = self.db.get(key("g/", id))? else {
            return Ok(Err(format!("grant record {id} was removed")));
        };
        Ok(
            match self.record_problem(id, &now, tag.as_deref(), latest_event)? {
                None => Ok(now),
                Some(problem) => Err(problem),
            },
        )
    }

    /// Commits from a thread that may block: a new credential's key is synced
    /// here, by this thread, before the commit is applied — as a group of one.
    /// (The [`Store`] trait's `commit`, [`KvStore::commit_async`], waits for the
    /// key syncer instead, and its commits are applied in groups.)
    pub fn commit(&self, commit: Commit) -> Result<(GrantRecord, AuditEvent)> {
        let prepared = self.prepare(commit)?;
        if let Some((value, _)) = prepared.key_pending(self.durable)
            && let Err(source) = self.keyring.sync()
        {
            self.erase_key(value);
            return Err(Error::Io {
                what: "syncing the keyring",
                source,
            });
        }
        self.apply_group(vec![prepared]).pop().unwrap_or_else(|| {
            Err(Error::Storage {
                what: "committing",
                source: "a group of one gave no result".into(),
            })
        })
    }

    /// [`KvStore::commit`] for async callers: a new credential's key reaches the
    /// disk with the key syncer's next keyring sync, which this waits for. The
    /// prepared commit then joins the queue, and whichever caller finds no group
    /// being applied applies everything queued as one batch ([`KvStore::combine`]);
    /// the others wait for their answer without holding a worker thread.
    pub async fn commit_async(&self, commit: Commit) -> Result<(GrantRecord, AuditEvent)> {
        let prepared = self.prepare(commit)?;
        if let Some((value, ticket)) = prepared.key_pending(self.durable)
            && let Err(e) = self
                .wait_durable(
                    self.keyring.synced(),
                    ticket,
                    (&self.group.kick_keys, &self.group.keys_failing),
                )
                .await
        {
            self.erase_key(value);
            return Err(e);
        }
        let (answer, answered) = oneshot::channel();
        self.queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((prepared, answer));
        self.combine();
        answered.await.unwrap_or_else(|_| {
            Err(Error::Storage {
                what: "committing",
                source: "the commit's group ended without an answer (its thread panicked or the runtime stopped)".into(),
            })
        })
    }

    /// Applies the queued commits as groups, unless another caller is doing so
    /// (flat combining: the group forms while the previous one is applied, with no
    /// thread of its own and no caller blocked on the commit lock but the one
    /// applying). At most [`COMBINE_ROUNDS`] groups a call; commits queued beyond
    /// them are left to a task of their own, so one caller does not apply everyone
    /// else's commits for long. Nothing here awaits: a cancelled caller cannot
    /// leave a group half-applied or the queue without anyone to apply it.
    fn combine(&self) {
        while !self.combining.swap(true, Ordering::SeqCst) {
            let applying = Combining(&self.combining);
            for _ in 0..COMBINE_ROUNDS {
                let queued =
                    std::mem::take(&mut *self.queue.lock().unwrap_or_else(|p| p.into_inner()));
                if queued.is_empty() {
                    break;
                }
                let (group, answers): (Vec<_>, Vec<_>) = queued.into_iter().unzip();
                for (result, answer) in self.apply_group(group).into_iter().zip(answers) {
                    // A caller that stopped waiting gets no answer; its commit stands.
                    let _ = answer.send(result);
                }
            }
            drop(applying);
            // A commit queued after the last round took the queue, while the flag
            // was still set, is this caller's to apply (its own caller saw the flag
            // and went to wait).
            if self
                .queue
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_empty()
            {
                return;
            }
            if let (Some(me), Ok(runtime)) =
                (self.me.upgrade(), tokio::runtime::Handle::try_current())
            {
                runtime.spawn(async move { me.combine() });
                return;
            }
        }
    }

    /// Everything of a commit that depends only on this grant's stored record,
    /// done before the commit lock: decoding the old record, encoding and tagging
    /// the new one, sealing a new credential. Under the lock the record's bytes are
    /// read again and must be the same, or the commit is refused as a conflict, as
    /// if it had come second.
    fn prepare(&self, commit: Commit) -> Result<Prepared> {
        let Commit {
            mut record,
            sealed,
            event,
            lease_until,
            earlier,
        } = commit;
        let id = record.grant.id.clone();
        let g_key = key("g/", &id);
        let old_bytes = match self.db.get(&g_key)? {
            Some(bytes) => Some(self.trusted(&id, bytes)?),
            None => None,
        };
        let old: Option<GrantRecord> = match &old_bytes {
            Some(bytes) => Some(decode_record(&g_key, bytes)?),
            None => None,
        };
        match (&old, record.version) {
            (None, 0) => {}
            (None, _) => return Err(Error::Conflict(id)),
            (Some(_), 0) => return Err(Error::Exists(id)),
            (Some(o), v) if o.version != v => return Err(Error::Conflict(id)),
            _ => {}
        }
        record.version += 1;
        let bytes = encode_record(&record)?;
        let tag = self.chain.record_tag(&id, &bytes);
        // A replaced or shredded credential's key is erased once the batch that
        // drops it is applied; a new one's key is erased if the commit fails.
        let replaced = match &sealed {
            Sealed::Keep => None,
            Sealed::Set(_) | Sealed::Shred => self.db.get(key("c/", &id))?,
        };
        let added = match &sealed {
            Sealed::Set(plain) => {
                Some(self.keyring.seal(&id, plain).map_err(|source| Error::Io {
                    what: "writing the keyring",
                    source,
                })?)
            }
            Sealed::Keep | Sealed::Shred => None,
        };
        Ok(Prepared {
            id,
            record,
            old: (old_bytes, old),
            encoded: (bytes, tag),
            sealed,
            added,
            replaced,
            event,
            lease_until,
            earlier,
        })
    }

    /// Applies prepared commits (their new keys, if any, already on disk) in order,
    /// as one engine batch under the commit lock: each is checked and staged
    /// against the store as the group's earlier commits leave it ([`Staged`]), so a
    /// commit prepared against a version an earlier one replaced is a conflict, as
    /// if applied alone. The group's head is keyed once, after its last event. A
    /// commit refused (a conflict) changes nothing; if the batch cannot be written,
    /// every commit staged in it fails and the store's state stays as it was.
    /// Returns one result per commit, in order.
    fn apply_group(&self, group: Vec<Prepared>) -> Vec<Result<(GrantRecord, AuditEvent)>> {
        let mut results = Vec::with_capacity(group.len());
        let mut keys = Vec::with_capacity(group.len());
        {
            let mut shared = self.lock();
            let mut staged = Staged::new(&shared);
            for p in group {
                let added = p.added.map(|(value, _)| value);
                results.push(self.stage(
                    &mut staged,
                    &p.id,
                    p.record,
                    p.old,
                    p.encoded,
                    (&p.sealed, added.as_deref(), p.replaced.is_some()),
                    p.event,
                    p.lease_until,
                    p.earlier,
                ));
                keys.push((added, p.replaced));
            }
            if !staged.batch.is_empty() {
                let tally = &mut staged.tally;
                let applied = self
                    .key_head(
                        tally.head.seq,
                        &tally.head.hash,
                        tally.records,
                        &mut staged.batch,
                    )
                    .and_then(|head| {
                        tally.head = head;
                        self.db.apply(std::mem::take(&mut staged.batch))
                    });
                match applied {
                    Ok(()) => staged.publish(&mut shared),
                    Err(e) => {
                        // The first staged commit gets the error, the others
                        // the same kind and message.
                        let (kind, message) = (e.io_kind(), ebb_core::error_chain(&e));
                        let mut first = Some(e);
                        for result in results.iter_mut().filter(|r| r.is_ok()) {
                            *result =
                                Err(first.take().unwrap_or_else(|| group_failed(kind, &message)));
                        }
                    }
                }
            }
        }
        // One ticket for the group: what `sync` waits for to make it durable.
        let landed = results.iter().filter(|r| r.is_ok()).count() as u64;
        let ticket = self.written(landed);
        for (result, (added, replaced)) in results.iter().zip(keys) {
            match result {
                Ok(_) => {
                    // A replaced or shredded credential's key is erased once the
                    // batch that drops it is durable.
                    if let Some(value) = replaced {
                        if self.durable {
                            self.keyring.erase_after(ticket, value.to_vec());
                        } else {
                            self.erase_key(&value);
                        }
                    }
                }
                // A new credential's key is erased if its commit failed.
                Err(_) => {
                    if let Some(value) = &added {
                        self.erase_key(value);
                    }
                }
            }
        }
        results
    }

    /// One commit of a group, under the commit lock ([`KvStore::apply_group`]):
    /// checks the record is still the one the commit was prepared against, moves
    /// the due entry, counts, links the audit event into the chain, and adds its
    /// writes to `staged`. Every step that can fail comes before `staged` changes,
    /// so a refused commit leaves the group as it was.
    #[allow(
        clippy::too_many_arguments,
        reason = "one caller, the parts it prepared"
    )]
    fn stage(
        &self,
        staged: &mut Staged,
        id: &str,
        record: GrantRecord,
        (old_bytes, old): (Option<Bytes>, Option<GrantRecord>),
        (bytes, tag): (Vec<u8>, [u8; 32]),
        (sealed, added, had_credential): (&Sealed, Option<&[u8]>, bool),
        mut event: NewEvent,
        lease_until: Option<Timestamp>,
        earlier: Vec<NewEvent>,
    ) -> Result<(GrantRecord, AuditEvent)> {
        let g_key = key("g/", id);
        let unchanged = match staged.batch.get(&g_key) {
            Some(written) => written == old_bytes.as_deref(),
            None => self.db.get(&g_key)?.as_deref() == old_bytes.as_deref(),
        };
        if !unchanged {
            return Err(if old.is_none() {
                Error::Exists(id.to_owned())
            } else {
                Error::Conflict(id.to_owned())
            });
        }
        let current_due = match staged.batch.get(&key("d/", id)) {
            Some(written) => written.and_then(be),
            None => self.current_due(id)?,
        };
        let mut batch = Batch::default();
        batch.insert(g_key, bytes);
        batch.insert(key("b/", id), &tag[..]);
        // The event names its grant, so it is the grant's latest in the index.
        event.grant_id.get_or_insert_with(|| id.to_owned());
        event.record = Some(hex::encode(tag));
        let records = staged.tally.records + u64::from(old.is_none());
        if old.is_none() {
            batch.insert(requester_key(&record.requested_by, id), &[][..]);
        }
        // Move the due entry from wherever it is now (its logical due or a lease).
        let mut dues = DueChanges::default();
        if let Some(current) = current_due {
            dues.remove(&mut batch, current, id);
        }
        match (record.due_at, lease_until) {
            (Some(due), Some(lease)) => {
                dues.insert(&mut batch, lease, id);
                batch.insert(key("d/", id), &lease.to_be_bytes()[..]);
                batch.insert(key("l/", id), &due.to_be_bytes()[..]);
            }
            (Some(due), None) => {
                dues.insert(&mut batch, due, id);
                batch.insert(key("d/", id), &due.to_be_bytes()[..]);
                batch.remove(key("l/", id));
            }
            (None, _) => {
                batch.remove(key("d/", id));
                batch.remove(key("l/", id));
            }
        }
        let credentials = match (sealed, had_credential) {
            (Sealed::Set(_), false) => Some(staged.tally.credentials + 1),
            (Sealed::Shred, true) => Some(staged.tally.credentials.saturating_sub(1)),
            _ => None,
        };
        if let Some(n) = credentials {
            batch.insert(CREDENTIALS, &n.to_be_bytes()[..]);
        }
        match (sealed, added) {
            (Sealed::Set(_), Some(value)) => batch.insert(key("c/", id), value),
            (Sealed::Shred, _) => batch.remove(key("c/", id)),
            _ => {}
        }
        let old_state = old.as_ref().map(|o| o.state);
        let moved = old_state != Some(record.state);
        if moved {
            let count = |s: GrantState| staged.tally.counts.get(&s).copied().unwrap_or(0);
            if let Some(s) = old_state {
                batch.remove(by_state_key(s, id));
                batch.insert(count_key(s), &count(s).saturating_sub(1).to_be_bytes()[..]);
            }
            batch.insert(by_state_key(record.state, id), &[][..]);
            batch.insert(
                count_key(record.state),
                &(count(record.state) + 1).to_be_bytes()[..],
            );
        }
        let escalated =
            old.as_ref().is_none_or(|o| o.escalated_at.is_none()) && record.escalated_at.is_some();
        let escalations = escalated.then(|| {
            let n = staged
                .tally
                .escalations
                .get(&record.connector)
                .copied()
                .unwrap_or(0)
                + 1;
            batch.insert(escalated_key(&record.connector), &n.to_be_bytes()[..]);
            n
        });
        let at = (staged.clock)();
        // Steps passed through on the way to the record: linked first, naming the
        // grant but not bound to a record.
        let head = &staged.tally.head;
        let mut last: Option<AuditEvent> = None;
        for mut step in earlier {
            step.grant_id.get_or_insert_with(|| id.to_owned());
            step.record = None;
            last = Some(self.seal_event(link(head, last.as_ref()), at, step, &mut batch));
        }
        let event = self.seal_event(link(head, last.as_ref()), at, event, &mut batch);
        // Nothing below fails: the commit is part of the group.
        if old.is_none() {
            // Before the batch, so a check of every record that sees the record
            // knows it as new.
            if let Some(created) = self
                .created
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_mut()
            {
                created.insert(id.to_owned());
            }
        }
        staged.batch.extend(batch);
        staged.dues.0.extend(dues.0);
        // The group's head is keyed once, when the group ends.
        staged.tally.head.seq = event.seq;
        staged.tally.head.hash.clone_from(&event.hash);
        staged.tally.records = records;
        if let Some(n) = credentials {
            staged.tally.credentials = n;
        }
        if moved {
            if let Some(s) = old_state {
                let n = staged.tally.counts.entry(s).or_default();
                *n = n.saturating_sub(1);
            }
            *staged.tally.counts.entry(record.state).or_default() += 1;
        }
        if let Some(n) = escalations {
            staged.tally.escalations.insert(record.connector.clone(), n);
        }
        Ok((record, event))
    }

    pub fn append_audit(&self, event: NewEvent) -> Result<AuditEvent> {
        let mut shared = self.lock();
        let mut batch = Batch::default();
        let at = (shared.clock)();
        let head = &shared.tally.head;
        let event = self.seal_event((head.seq, &head.hash), at, event, &mut batch);
        let head = self.key_head(event.seq, &event.hash, shared.tally.records, &mut batch)?;
        self.db.apply(batch)?;
        shared.tally.head = head;
        drop(shared);
        self.written(1);
        Ok(event)
    }

    pub fn claim_due(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        limit: usize,
    ) -> Result<Vec<String>> {
        let mut shared = self.lock();
        let due = shared.due.due_by(&self.db, now, limit)?;
        let mut claimed = Vec::with_capacity(due.len());
        let mut batch = Batch::default();
        let mut dues = DueChanges::default();
        for (at, id) in due {
            dues.remove(&mut batch, at, &id);
            dues.insert(&mut batch, lease_until, &id);
            batch.insert(key("d/", &id), &lease_until.to_be_bytes()[..]);
            // Keep the first lease's original due if an expired lease is re-claimed.
            if self.db.get(key("l/", &id))?.is_none() {
                batch.insert(key("l/", &id), &at.to_be_bytes()[..]);
            }
            claimed.push(id);
        }
        if !claimed.is_empty() {
            self.db.apply(batch)?;
            dues.apply(&mut shared.due);
        }
        Ok(claimed)
    }

    pub fn reschedule(&self, id: &str, due: Option<Timestamp>) -> Result<()> {
        let mut shared = self.lock();
        let mut batch = Batch::default();
        let mut dues = DueChanges::default();
        if let Some(current) = self.current_due(id)? {
            dues.remove(&mut batch, current, id);
        }
        match due {
            Some(due) => {
                dues.insert(&mut batch, due, id);
                batch.insert(key("d/", id), &due.to_be_bytes()[..]);
            }
            None => batch.remove(key("d/", id)),
        }
        batch.remove(key("l/", id));
        self.db.apply(batch)?;
        dues.apply(&mut shared.due);
        Ok(())
    }

    pub fn next_due(&self) -> Result<Option<Timestamp>> {
        self.lock().due.first(&self.db)
    }

    pub fn release_leases(&self) -> Result<usize> {
        let mut shared = self.lock();
        let mut batch = Batch::default();
        let mut dues = DueChanges::default();
        let mut n = 0;
        for entry in self.db.prefix(b"l/") {
            let (k, v) = entry?;
            let id = String::from_utf8_lossy(&k[2..]).into_owned();
            let original = be(&v).ok_or_else(|| Error::Corrupt {
                key: String::from_utf8_lossy(&k).into_owned(),
                source: "malformed lease".into(),
            })?;
            if let Some(current) = self.current_due(&id)? {
                dues.remove(&mut batch, current, &id);
            }
            dues.insert(&mut batch, original, &id);
            batch.insert(key("d/", &id), &original.to_be_bytes()[..]);
            batch.remove(k.to_vec());
            n += 1;
        }
        self.db.apply(batch)?;
        dues.apply(&mut shared.due);
        Ok(n)
    }

    pub fn sealed_credential(&self, id: &str) -> Result<Option<Vec<u8>>> {
        let Some(value) = self.db.get(key("c/", id))? else {
            return Ok(None);
        };
        self.keyring
            .open_value(id, &value)
            .map_err(|source| Error::Io {
                what: "reading a credential's key",
                source,
            })
    }

    pub fn with_work(&self) -> Result<Vec<String>> {
        self.db
            .prefix(b"d/")
            .map(|entry| {
                let (k, _) = entry?;
                Ok(String::from_utf8_lossy(&k[2..]).into_owned())
            })
            .collect()
    }

    pub fn list(&self, filter: &ListFilter) -> Result<Page> {
        let limit = filter.limit.clamp(1, 1000);
        if let Some(requester) = &filter.requested_by {
            return self.list_by_index(&requester_key(requester, ""), filter, limit);
        }
        if let Some(state) = filter.state {
            return self.list_by_index(&by_state_prefix(state), filter, limit);
        }
        let start = match &filter.after {
            Some(after) => {
                let mut k = key("g/", after);
                k.push(0);
                k
            }
            None => b"g/".to_vec(),
        };
        let mut page = Page::default();
        for entry in self.db.range(&start, Some(b"g0")) {
            let (k, v) = entry?;
            let v = self.trusted(&String::from_utf8_lossy(&k[2..]), v)?;
            let record = decode_record(&k, &v)?;
            if !add_to_page(&mut page, filter, limit, record) {
                break;
            }
        }
        Ok(page)
    }

    pub fn audit(&self, query: &AuditQuery) -> Result<Vec<AuditEvent>> {
        let limit = query.limit.clamp(1, 10_000);
        let mut events = Vec::new();
        match &query.grant_id {
            Some(grant) => {
                let prefix = {
                    let mut p = key("i/", grant);
                    p.push(0);
                    p
                };
                for entry in self.db.prefix(&prefix) {
                    let (k, _) = entry?;
                    let seq = be(&k[prefix.len()..]).unwrap_or(0);
                    if seq <= query.after_seq {
                        continue;
                    }
                    if let Some(v) = self.db.get(audit_key(seq))? {
                        events.push(decode(&k, &v)?);
                    }
                    if events.len() == limit {
                        break;
                    }
                }
            }
            None => {
                for entry in self
                    .db
                    .range(&audit_key(query.after_seq.saturating_add(1)), Some(b"a0"))
                {
                    let (k, v) = entry?;
                    events.push(decode(&k, &v)?);
                    if events.len() == limit {
                        break;
                    }
                }
            }
        }
        Ok(events)
    }

    pub fn verify_audit(&self) -> Result<ChainReport> {
        // The head as stored, read under the commit lock so that it matches the
        // events written so far; events appended while the scan runs lie beyond it
        // and are left to the next verification.
        let (head, events_then) = {
            let _shared = self.lock();
            let head = self.stored_head()?;
            // Without a head, whether events existed when it was read (not later).
            let events_then = head.is_some() || self.db.prefix(b"a/").next().is_some();
            (head, events_then)
        };
        // No head and no events: an empty chain. No head but events: reported below.
        let end = match &head {
            Some(h) => h.seq,
            None if events_then => u64::MAX,
            None => 0,
        };
        let mut report = verify_chain(&self.chain, self.events(0, end), head.as_ref());
        if report.is_intact() {
            let at_least = head.as_ref().and_then(|h| h.records).unwrap_or(0);
            let (records, problem) = self.check_records(Count::AtLeast(at_least), true)?;
            report.records = records;
            report.problem = problem;
        }
        Ok(report)
    }

    pub fn verify_at_start(&self) -> Result<ChainReport> {
        let _shared = self.lock();
        let head = self.stored_head()?;
        let mut report = self.check_new_events(head.as_ref())?;
        if !report.is_intact() {
            return Ok(report);
        }
        let expected = match &head {
            Some(h) => match h.records {
                Some(n) => n,
                None => {
                    report.problem =
                        Some("the recorded head does not count the grant records".into());
                    return Ok(report);
                }
            },
            None => 0,
        };
        let (records, problem) = self.check_records(Count::Exactly(expected), false)?;
        report.records = records;
        report.problem = problem;
        if report.is_intact() {
            self.records_checked.store(true, Ordering::Release);
        }
        if let (true, Some(h)) = (report.is_intact(), &head) {
            self.db.put(b"m/verified", Some(&encode(h)?))?;
            self.written(1);
        }
        Ok(report)
    }

    /// Checks every grant record against its tag, and that every record the head
    /// counted when the check began is still there (and none was added beside the
    /// commits), while commits go on. Once it passes, records are read without
    /// checking their tags again: from then on only this host writes them.
    pub fn verify_records(&self) -> Result<ChainReport> {
        let _one = self.checking.lock().unwrap_or_else(|p| p.into_inner());
        let counted = {
            let shared = self.lock();
            *self.created.lock().unwrap_or_else(|p| p.into_inner()) = Some(HashSet::new());
            shared.tally.records
        };
        let scanned = self.check_records(Count::Before(counted), false);
        *self.created.lock().unwrap_or_else(|p| p.into_inner()) = None;
        let (records, problem) = scanned?;
        if problem.is_none() {
            self.records_checked.store(true, Ordering::Release);
        }
        Ok(ChainReport {
            events: 0,
            records,
            problem,
        })
    }

    /// Takes the records as they are, without a passed check (the operator
    /// accepted a store that failed it).
    pub fn trust_records(&self) {
        self.records_checked.store(true, Ordering::Release);
    }

    /// Whether every record has passed a check since the store opened.
    pub fn records_checked(&self) -> bool {
        self.records_checked.load(Ordering::Acquire)
    }

    pub fn verify_new_events(&self) -> Result<ChainReport> {
        // The head as stored, read under the commit lock; the events up to it are
        // checked without holding it.
        let head = {
            let _shared = self.lock();
            self.stored_head()?
        };
        let report = self.check_new_events(head.as_ref())?;
        if let (true, Some(h)) = (report.is_intact(), &head) {
            let _shared = self.lock();
            // Only forward: a check at start may have got further meanwhile.
            if self.checkpoint()?.is_none_or(|c| c.seq < h.seq) {
                self.db.put(b"m/verified", Some(&encode(h)?))?;
                self.written(1);
            }
        }
        Ok(report)
    }

    pub fn counts(&self) -> Result<BTreeMap<GrantState, u64>> {
        Ok(self.lock().tally.counts.clone())
    }

    pub fn escalations(&self) -> Result<BTreeMap<String, u64>> {
        Ok(self.lock().tally.escalations.clone())
    }

    pub async fn sync(&self) -> Result<()> {
        if !self.durable {
            return Ok(());
        }
        let target = self.group.written.load(Ordering::Acquire);
        self.wait_durable(
            self.group.flushed.clone(),
            target,
            (&self.group.kick, &self.group.failing),
        )
        .await
    }

    /// Waits until `progress` (what is durable: writes, or keys) reaches `target`,
    /// first kicking the task that advances it; an error once that task has been
    /// failing for [`FLUSH_GIVE_UP`].
    async fn wait_durable(
        &self,
        mut progress: watch::Receiver<u64>,
        target: u64,
        (kick, failing): (&Kick, &Failing),
    ) -> Result<()> {
        if *progress.borrow() >= target {
            return Ok(());
        }
        let waiting_since = std::time::Instant::now();
        kick.kick();
        loop {
            let waited = tokio::time::timeout(
                std::time::Duration::from_millis(100),
                progress.wait_for(|done| *done >= target),
            )
            .await;
            match waited {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(_)) => return Err(Error::FlusherStopped),
                // Still waiting: fine while the disk takes writes; an error once
                // flushes have failed for FLUSH_GIVE_UP.
                Err(_) => failing.for_at_least(FLUSH_GIVE_UP, Some(waiting_since))?,
            }
        }
    }

    pub fn put_state(&self, key: &str, value: Option<&[u8]>) -> Result<()> {
        let k = state_key(key);
        self.db.put(&k, value)?;
        self.written(1);
        Ok(())
    }

    pub fn states(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        self.db
            .prefix(state_key(prefix))
            .map(|entry| {
                let (k, v) = entry?;
                let key = String::from_utf8_lossy(&k[2..]).into_owned();
                Ok((key, v.to_vec()))
            })
            .collect()
    }

    pub fn health(&self) -> Result<()> {
        // A real read, and the flusher's state: a store that answers reads but
        // cannot make anything durable is not ready.
        self.db.get(b"m/head")?;
        let at_all = std::time::Duration::ZERO;
        self.group.failing.for_at_least(at_all, None)?;
        self.group.keys_failing.for_at_least(at_all, None)
    }
}

/// The lifecycle's view. Reads and commits answer at once (memory or local disk);
/// the whole-store checks run on the blocking pool, so a large store's scan does
/// not hold up an async worker.
#[async_trait::async_trait]
impl Store for KvStore {
    async fn get(&self, id: &str) -> Result<Option<GrantRecord>> {
        KvStore::get(self, id)
    }
    async fn commit(&self, commit: Commit) -> Result<(GrantRecord, AuditEvent)> {
        KvStore::commit_async(self, commit).await
    }
    async fn append_audit(&self, event: NewEvent) -> Result<AuditEvent> {
        KvStore::append_audit(self, event)
    }
    async fn claim_due(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        limit: usize,
    ) -> Result<Vec<String>> {
        KvStore::claim_due(self, now, lease_until, limit)
    }
    async fn reschedule(&self, id: &str, due: Option<Timestamp>) -> Result<()> {
        KvStore::reschedule(self, id, due)
    }
    async fn next_due(&self) -> Result<Option<Timestamp>> {
        KvStore::next_due(self)
    }
    async fn release_leases(&self) -> Result<usize> {
        KvStore::release_leases(self)
    }
    async fn sealed_credential(&self, id: &str) -> Result<Option<Vec<u8>>> {
        KvStore::sealed_credential(self, id)
    }
    async fn list(&self, filter: &ListFilter) -> Result<Page> {
        KvStore::list(self, filter)
    }
    async fn with_work(&self) -> Result<Vec<String>> {
        KvStore::with_work(self)
    }
    async fn audit(&self, query: &AuditQuery) -> Result<Vec<AuditEvent>> {
        KvStore::audit(self, query)
    }
    async fn verify_audit(&self) -> Result<ChainReport> {
        self.blocking(KvStore::verify_audit).await
    }
    async fn verify_at_start(&self) -> Result<ChainReport> {
        self.blocking(KvStore::verify_at_start).await
    }
    async fn verify_new_events(&self) -> Result<ChainReport> {
        self.in_background(KvStore::verify_new_events).await
    }
    fn checks_records_as_read(&self) -> bool {
        true
    }
    async fn verify_records(&self) -> Result<ChainReport> {
        self.in_background(KvStore::verify_records).await
    }
    fn trust_records(&self) {
        KvStore::trust_records(self)
    }
    async fn counts(&self) -> Result<BTreeMap<GrantState, u64>> {
        KvStore::counts(self)
    }
    async fn escalations(&self) -> Result<BTreeMap<String, u64>> {
        KvStore::escalations(self)
    }
    async fn sync(&self) -> Result<()> {
        KvStore::sync(self).await
    }
    async fn health(&self) -> Result<()> {
        KvStore::health(self)
    }
    async fn put_state(&self, key: &str, value: Option<&[u8]>) -> Result<()> {
        KvStore::put_state(self, key, value)
    }
    async fn states(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        KvStore::states(self, prefix)
    }
}
