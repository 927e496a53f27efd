//! Persistence of grants, the due (expiry) index, sealed credentials and the audit
//! chain, behind the [`Store`] trait.
//!
//! Every state change is one [`Store::commit`]: the grant record, its entry in the
//! due index, its sealed credential and the audit event that explains it are written
//! atomically, so no transition exists without its audit event and no audit event
//! without its transition. [`Store::sync`] makes everything committed so far durable;
//! concurrent callers share one flush (group commit).
//!
//! The due index orders `(due-at, grant id)`: for an active grant `due-at` is its
//! `not-after`, for a grant mid-revocation it is the next retry, for a grant whose
//! connector call is in flight it is a lease after which the work is redone.
//!
//! Key types: [`Store`], [`GrantRecord`], [`Commit`]. The embedded default is
//! `ebb_store_kv::KvStore`.

use crate::audit::{AuditEvent, ChainReport, NewEvent};
use crate::contract::{Grant, Residue, Timestamp};
use crate::state::{GrantState, Trigger};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The attribute a `Store` implementation carries (`#[ebb_core::store::async_trait]`).
pub use async_trait::async_trait;

/// A store failure. The storage engine's own error is kept as the `source`, so an
/// `io::ErrorKind` such as a full disk reaches the caller ([`Error::io_kind`]).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The record changed since it was read (another writer got there first).
    #[error("grant {0} was changed concurrently")]
    Conflict(String),
    /// A new grant's id is taken.
    #[error("grant {0} already exists")]
    Exists(String),
    /// The storage engine failed while doing `what`.
    #[error("storage failure while {what}")]
    Storage {
        what: &'static str,
        #[source]
        source: BoxError,
    },
    /// The storage engine's I/O failed (disk full, device error…).
    #[error("storage I/O failure while {what}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The background flusher is gone: nothing more can be made durable.
    #[error("the store's flusher stopped")]
    FlusherStopped,
    /// A stored value does not decode.
    #[error("corrupt stored value at {key}")]
    Corrupt {
        key: String,
        #[source]
        source: BoxError,
    },
}

/// Any error of a storage engine, kept whole.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

impl Error {
    /// The I/O error kind behind this failure, if an I/O error caused it.
    pub fn io_kind(&self) -> Option<std::io::ErrorKind> {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(self);
        while let Some(e) = cause {
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                return Some(io.kind());
            }
            cause = e.source();
        }
        None
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An approval of a grant request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Approval {
    pub by: String,
    pub at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

fn one() -> u32 {
    1
}

/// Everything the host knows about one grant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GrantRecord {
    /// What the connector sees. `grant.not_after` is 0 until issuance sets it.
    pub grant: Grant,
    /// The connector instance that serves it.
    pub connector: String,
    pub state: GrantState,
    /// Incremented by every commit; guards against lost updates.
    pub version: u64,
    /// The requested lifetime; `not_after` = issuance time + `ttl_ms`, never more.
    pub ttl_ms: u64,
    pub requested_at: Timestamp,
    pub requested_by: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default)]
    pub approvals: Vec<Approval>,
    /// Approvals needed before it can be issued, each by a different person other
    /// than the requester.
    #[serde(default = "one")]
    pub approvals_required: u32,
    /// Requested through the break-glass path.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub break_glass: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_at: Option<Timestamp>,
    /// What `issue` created (non-secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handle: Option<String>,
    /// The sha256 of the connector version that issued the grant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_by_digest: Option<String>,
    /// When the downstream system itself ends the credential.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downstream_expires_at: Option<Timestamp>,
    /// Why revocation started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<Trigger>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoke_started_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalated_at: Option<Timestamp>,
    /// Re-verify the closed grant until then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reverify_until: Option<Timestamp>,
    /// Failed attempts of the current step.
    #[serde(default)]
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// What the last verification found.
    #[serde(default)]
    pub residue: Vec<Residue>,
    /// When the host next has work to do on this grant; `None` if none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due_at: Option<Timestamp>,
    pub updated_at: Timestamp,
}

impl GrantRecord {
    /// A new request for `grant` (whose `not_after` issuance sets later), with
    /// nothing granted yet.
    pub fn requested(
        grant: Grant,
        connector: String,
        ttl_ms: u64,
        requested_at: Timestamp,
        requested_by: String,
        reason: Option<String>,
    ) -> Self {
        Self {
            grant,
            connector,
            state: GrantState::Requested,
            version: 0,
            ttl_ms,
            requested_at,
            requested_by,
            reason,
            approvals: vec![],
            approvals_required: 1,
            break_glass: false,
            issued_at: None,
            handle: None,
            issued_by_digest: None,
            downstream_expires_at: None,
            trigger: None,
            revoke_started_at: None,
            revoked_at: None,
            verified_at: None,
            escalated_at: None,
            reverify_until: None,
            attempts: 0,
            last_error: None,
            residue: vec![],
            due_at: None,
            updated_at: requested_at,
        }
    }
}

/// What happens to the sealed credential in a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sealed {
    Keep,
    Set(Vec<u8>),
    /// Delete it: revocation is verified, the secret has no further use.
    Shred,
}

/// One atomic state change.
#[derive(Debug, Clone)]
pub struct Commit {
    /// The new record. Its `version` must be the stored one (or 0 for a new grant);
    /// the store increments it.
    pub record: GrantRecord,
    pub sealed: Sealed,
    /// The audit event that explains the change.
    pub event: NewEvent,
    /// Events of steps the grant went through on the way to `record` without being
    /// stored in between (a request decided by policy in the same call, a
    /// revocation verified at once), linked into the chain before `event`, in
    /// order. Only `event` is bound to the
    /// record (it is the grant's latest). Usually empty.
    pub earlier: Vec<NewEvent>,
    /// For an intent (work about to start): hold the due entry until then, as a
    /// lease. A restart voids leases, so work that was in flight when the host
    /// stopped is due at once instead of when the lease would have run out.
    pub lease_until: Option<Timestamp>,
}

/// A page of grants.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct Page {
    pub grants: Vec<GrantRecord>,
    /// Pass as `after` to get the next page.
    pub next: Option<String>,
}

/// Which grants to list.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub state: Option<GrantState>,
    pub connector: Option<String>,
    pub subject: Option<String>,
    /// Only grants requested by this (namespaced) principal.
    pub requested_by: Option<String>,
    /// Start after this grant id (ids sort by creation time).
    pub after: Option<String>,
    pub limit: usize,
}

impl ListFilter {
    pub fn matches(&self, r: &GrantRecord) -> bool {
        self.state.is_none_or(|s| s == r.state)
            && self.connector.as_deref().is_none_or(|c| c == r.connector)
            && self
                .subject
                .as_deref()
                .is_none_or(|s| s == r.grant.subject.id)
            && self
                .requested_by
                .as_deref()
                .is_none_or(|p| p == r.requested_by)
    }
}

/// What a host sharing the store last said about itself (`GET /v1/cluster`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HostStatus {
    /// The host's name in leases (`[store] host-id`).
    pub id: String,
    pub version: String,
    pub started_at: Timestamp,
    pub heartbeat_at: Timestamp,
    /// Connector instance → the sha256 of the version it serves.
    #[serde(default)]
    pub connectors: BTreeMap<String, String>,
    /// The digest of the policies in force (names and contents), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policies: Option<String>,
}

/// A file the hosts of a shared store keep alike in a folder of their own (the
/// plugins folder, the policies).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedFile {
    pub name: String,
    /// The sha256 of its content (hex); `None` once deleted.
    pub sha256: Option<String>,
}

/// Which audit events to read.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    /// Only this grant's events.
    pub grant_id: Option<String>,
    /// Only events with `seq` greater than this.
    pub after_seq: u64,
    pub limit: usize,
}

/// Persistence for the lifecycle. Its methods are async because a network store
/// waits on its database; the embedded store answers at once.
#[async_trait::async_trait]
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// The grant `id`.
    async fn get(&self, id: &str) -> Result<Option<GrantRecord>>;

    /// Applies one state change atomically and returns the appended audit event.
    /// Fails with [`Error::Conflict`] if the record's version moved.
    async fn commit(&self, commit: Commit) -> Result<(GrantRecord, AuditEvent)>;

    /// Appends an audit event that is not a grant transition (e.g. a refused call).
    async fn append_audit(&self, event: NewEvent) -> Result<AuditEvent>;

    /// Claims up to `limit` grants due at or before `now`: their due entries move to
    /// `lease_until`, so they are not handed out twice, and they come back by
    /// themselves if the work is never committed.
    async fn claim_due(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        limit: usize,
    ) -> Result<Vec<String>>;

    /// Puts grant `id`'s due entry back at `due` (or removes it), releasing a claim
    /// without a state change: index upkeep, not a transition, so no audit event.
    async fn reschedule(&self, id: &str, due: Option<Timestamp>) -> Result<()>;

    /// When the earliest due entry is, if any.
    async fn next_due(&self) -> Result<Option<Timestamp>>;

    /// Work on grant `id` is in progress on this host: a shared store renews this
    /// host's lease on it until [`Store::unhold`] (and only then: the lease of work
    /// that stopped runs out, and another host takes it up). Counted: holds nest.
    fn hold(&self, _id: &str) {}

    /// Ends one [`Store::hold`] of grant `id`.
    fn unhold(&self, _id: &str) {}

    /// Gives up this host's claim on grant `id` once its work is done: the due
    /// entry goes back to the grant's own due. Only a shared store keeps claims
    /// past the work's commits (see `is_shared`); others have nothing to release.
    async fn release_claim(&self, _id: &str) -> Result<()> {
        Ok(())
    }

    /// Resolves when another host may have moved the earliest due entry (a store
    /// shared by several hosts), with the earliest due time announced since the
    /// last call: 0 when it cannot say (a host that did not say, notifications
    /// that may have been missed). A store of one host never resolves: the
    /// lifecycle knows its own commits.
    async fn due_changed(&self) -> Timestamp {
        std::future::pending().await
    }

    /// Voids this host's leases (at startup: the previous process's in-flight work
    /// is due at once, not when its lease would have run out); leases other hosts
    /// of a shared store hold are theirs. Returns how many.
    async fn release_leases(&self) -> Result<usize>;

    /// The sealed credential of grant `id`, if still held.
    async fn sealed_credential(&self, id: &str) -> Result<Option<Vec<u8>>>;

    /// The grant `id` and its sealed credential, if it still holds one: what the
    /// scheduler's revoke and verify calls need, read together (one round trip
    /// where the store is a network away).
    async fn get_with_credential(
        &self,
        id: &str,
    ) -> Result<Option<(GrantRecord, Option<Vec<u8>>)>> {
        let Some(record) = self.get(id).await? else {
            return Ok(None);
        };
        Ok(Some((record, self.sealed_credential(id).await?)))
    }

    /// Grants matching `filter`, in id order.
    async fn list(&self, filter: &ListFilter) -> Result<Page>;

    /// The ids of the grants that have scheduled work (a due entry, leased or not),
    /// in id order. A store with a due index reads only those; this default reads
    /// every grant.
    async fn with_work(&self) -> Result<Vec<String>> {
        let mut filter = ListFilter {
            limit: 1000,
            ..ListFilter::default()
        };
        let mut ids = Vec::new();
        loop {
            let page = self.list(&filter).await?;
            ids.extend(
                page.grants
                    .iter()
                    .filter(|g| g.due_at.is_some())
                    .map(|g| g.grant.id.clone()),
            );
            match page.next {
                Some(next) => filter.after = Some(next),
                None => return Ok(ids),
            }
        }
    }

    /// Audit events matching `query`, in chain order.
    async fn audit(&self, query: &AuditQuery) -> Result<Vec<AuditEvent>>;

    /// Checks the whole audit chain, and every grant record against its tag and
    /// its grant's latest event (an edited record, or an older one put back, is a
    /// problem). Consistent while commits go on: what is written during the check
    /// is left to the next one.
    async fn verify_audit(&self) -> Result<ChainReport>;

    /// The check a host runs before serving: the events appended since the last
    /// successful check at start (the whole chain the first time), every grant
    /// record against its tag, and the number of records against the keyed head.
    /// On success the checked head becomes the next check's starting point.
    async fn verify_at_start(&self) -> Result<ChainReport>;

    /// Whether the store checks each grant record against its tag as it reads
    /// it until [`Store::verify_records`] has passed: then a host may serve before
    /// the store is checked, and check it while serving. A store that does not
    /// (the default) is checked before serving ([`Store::verify_at_start`]).
    fn checks_records_as_read(&self) -> bool {
        false
    }

    /// Checks every grant record against its tag, and that every record counted
    /// when the check began is still there and none was added beside the commits,
    /// while commits go on; once it passes, records are read without checking their
    /// tags. The default runs the full check, [`Store::verify_audit`].
    async fn verify_records(&self) -> Result<ChainReport> {
        self.verify_audit().await
    }

    /// Takes the grant records as they are although their check failed (the
    /// operator's override, which the caller records in the audit log).
    fn trust_records(&self) {}

    /// Checks the events appended since the last good check (while serving, on a
    /// schedule) and, if intact, makes the head the next check's starting point —
    /// so tampering is seen while the host runs and a restart re-reads little.
    async fn verify_new_events(&self) -> Result<ChainReport>;

    /// The number of grants in each state.
    async fn counts(&self) -> Result<BTreeMap<GrantState, u64>>;

    /// The number of grants ever escalated (`escalated_at` set by a commit), by
    /// connector: stored state, so it survives a restart.
    async fn escalations(&self) -> Result<BTreeMap<String, u64>>;

    /// Makes everything committed before the call durable. Fails, within a bounded
    /// time, when the storage cannot make it durable (a full or failing disk).
    async fn sync(&self) -> Result<()>;

    /// Whether the store can serve: it answers a read and can make writes durable.
    async fn health(&self) -> Result<()>;

    /// Sets (or, with `None`, removes) a piece of host state that must survive a
    /// restart but is no grant (an anomaly flag, an instance being drained), and
    /// makes it durable with the next `sync`.
    async fn put_state(&self, key: &str, value: Option<&[u8]>) -> Result<()>;

    /// The host state under `prefix`, by key.
    async fn states(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>>;

    /// Records this host's status for the others (a store of one host keeps none).
    async fn heartbeat(&self, _status: &HostStatus) -> Result<()> {
        Ok(())
    }

    /// The hosts sharing this store, as each last said; empty for a store of one
    /// host.
    async fn hosts(&self) -> Result<Vec<HostStatus>> {
        Ok(Vec::new())
    }

    /// Whether other hosts share this store (and so its files).
    fn is_shared(&self) -> bool {
        false
    }

    /// The shared files of `area` (deleted ones included), by name.
    async fn shared_files(&self, _area: &str) -> Result<Vec<SharedFile>> {
        Ok(Vec::new())
    }

    /// The content of the shared file whose sha256 is `sha256`.
    async fn shared_content(&self, _sha256: &str) -> Result<Option<Vec<u8>>> {
        Ok(None)
    }

    /// Sets (or, with `None`, deletes) the shared file `name` of `area`.
    async fn share_file(&self, _area: &str, _name: &str, _content: Option<&[u8]>) -> Result<()> {
        Ok(())
    }
}

/// Due times announced to a scheduler (by its own commits, or by other hosts of a
/// shared store), kept until it takes them: the earliest since it last looked.
/// A scheduler asleep until later re-arms its timer to it instead of asking the
/// store; one due by now is claimed at once.
#[derive(Debug, Default)]
pub struct DueSignal {
    earliest: std::sync::Mutex<Option<Timestamp>>,
    notify: tokio::sync::Notify,
}

impl DueSignal {
    /// Something is due at `at` (0: possibly now).
    pub fn announce(&self, at: Timestamp) {
        let mut earliest = self.earliest.lock().unwrap_or_else(|p| p.into_inner());
        *earliest = Some(earliest.map_or(at, |e| e.min(at)));
        drop(earliest);
        self.notify.notify_one();
    }

    /// The earliest due time announced since the last call, once there is one.
    /// Cancel-safe: an announcement is taken only by the call that returns it.
    pub async fn next(&self) -> Timestamp {
        loop {
            self.notify.notified().await;
            let taken = self
                .earliest
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            if let Some(at) = taken {
                return at;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::DueSignal;
    use std::time::Duration;

    #[tokio::test]
    async fn the_earliest_announcement_is_kept_until_taken() {
        let signal = DueSignal::default();
        signal.announce(900);
        signal.announce(700);
        signal.announce(800);
        assert_eq!(signal.next().await, 700);
        // Taken: nothing is left, and the next wait sees only what comes next.
        let nothing = tokio::time::timeout(Duration::from_millis(50), signal.next()).await;
        assert!(nothing.is_err(), "an announcement was given twice");
        signal.announce(5);
        assert_eq!(signal.next().await, 5);
    }

    #[tokio::test]
    async fn a_waiter_dropped_before_it_is_told_takes_nothing() {
        let signal = DueSignal::default();
        let dropped = tokio::time::timeout(Duration::from_millis(10), signal.next()).await;
        assert!(dropped.is_err());
        signal.announce(42);
        assert_eq!(signal.next().await, 42);
    }
}
