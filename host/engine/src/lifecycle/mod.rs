//! The grant lifecycle: the only code that changes a grant's state.
//!
//! [`Lifecycle`] takes requests, approvals, issuance and revocation triggers from
//! callers, and runs a scheduler that does everything that happens by itself:
//! revocation at `not-after`, retries with backoff, verification after a
//! propagation delay, re-verification, escalation, and recovery after a crash.
//!
//! Rules it keeps (see ARCHITECTURE.md):
//! - **Intent before effect.** `issuing` is committed and synced before `issue` is
//!   called; `revoking` is committed before `revoke` (and synced on the API path;
//!   on the scheduler's a lost `revoking` only means the idempotent revoke runs
//!   again from `active`). Crash recovery needs no special code: a grant mid-call
//!   holds a lease in the due index, and on start leases are voided, so the
//!   scheduler picks the grant up at once and finishes or compensates it.
//! - **Nothing is done without a verdict.** Only `verify-revoked` answering
//!   `revoked` closes a grant; errors retry, residue revokes again, and past the
//!   attempt budget the grant is escalated and still retried.
//! - **No silent extension.** `not-after` is set once, at issuance, to issuance time
//!   plus the approved TTL, and no code path moves it.
//!
//! Key types: [`Lifecycle`], [`NewGrant`], [`Decision`], [`Error`]; the state
//! machine is in [`state`], the scheduler in `scheduler.rs`, time in [`Clock`].

mod clock;
mod locks;
mod queries;
mod requests;
mod retry;
mod scheduler;
mod watch;
mod work;

pub use clock::Clock;
pub use ebb_core::state::{self, Event, GrantState, IllegalTransition, Trigger};

use crate::audit_log::AuditLog;
use crate::registry::{Pool, Registry, Slot};
use ebb_core::audit::{AuditEvent, NewEvent};
use ebb_core::contract::{Credential, Grant, Permission, Residue, Subject, Timestamp, Verdict};
use ebb_core::seal::Sealer;
use ebb_core::store::{self, Approval, AuditQuery, Commit, GrantRecord, Sealed, Store};
use ebb_runtime::CallError;
use locks::Locks;
use serde::Serialize;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

/// A grant's record and sealed credential as a step just committed them, handed
/// with its work to a job so that the job need not read them back.
pub(super) struct Handed {
    pub(super) record: GrantRecord,
    pub(super) sealed: Option<Vec<u8>>,
}

/// Keeps this host's leases on a grant renewed while it lives (a shared store
/// renews only held leases): work in progress here is not taken over.
pub(crate) struct Held {
    store: Arc<dyn Store>,
    id: String,
}

impl Held {
    pub(crate) fn new(store: &Arc<dyn Store>, id: &str) -> Self {
        store.hold(id);
        Self {
            store: store.clone(),
            id: id.to_owned(),
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.store.unhold(&self.id);
    }
}

tokio::task_local! {
    /// Set while the scheduler's job works on a grant it claimed. On a shared
    /// store every commit of that work keeps the claim (a lease naming this host),
    /// so no other host takes the grant up between two steps; the job releases it
    /// when it ends. The flag says whether the job's last write left a lease: a
    /// commit of a record with no due time, or a reschedule, leaves none, and then
    /// there is nothing to release (a round trip saved per job).
    static CLAIMED: Arc<std::sync::atomic::AtomicBool>;
}

/// Notes, inside a job ([`CLAIMED`]), whether its latest write left its lease.
fn lease_left(left: bool) {
    let _ = CLAIMED.try_with(|flag| flag.store(left, std::sync::atomic::Ordering::Relaxed));
}
use tokio::sync::Semaphore;

/// A lifecycle failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no grant with id `{0}`")]
    NotFound(String),
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("no connector named `{0}` is loaded")]
    UnknownConnector(String),
    #[error(transparent)]
    Illegal(#[from] IllegalTransition),
    #[error("connector `{0}` is being unloaded and takes no new requests")]
    Draining(String),
    #[error("a requester cannot approve their own request")]
    SelfApproval,
    #[error("`{0}` has already approved this grant; another person must")]
    AlreadyApproved(String),
    /// `issue` failed; the grant is being compensated (revoked by id).
    #[error("issuing failed, and the grant is being revoked to be sure: {0}")]
    Issue(#[source] CallError),
    /// The connector could not check a request (a bug in its `validate`: a trap, a
    /// time-out); nothing was recorded.
    #[error("the connector could not check the request: {0}")]
    Validate(#[source] CallError),
    /// The credential was issued but never worked; it is being revoked.
    #[error("the issued credential did not work in time, and it is being revoked: {0}")]
    VerifyIssued(#[source] CallError),
    /// A step tried to move a grant's `not-after` after issuance (a bug, refused).
    #[error("grant {id}: `not-after` may not move after issuance ({event})")]
    Extension { id: String, event: String },
    #[error(transparent)]
    Store(#[from] store::Error),
    /// Every call slot of the connector is taken (a slow or hung downstream): the
    /// scheduler's work on the grant steps aside and comes back shortly, without
    /// holding a job other connectors' grants need.
    #[error("connector `{0}` has no free call slot")]
    ConnectorBusy(String),
    /// Sealing or opening a credential failed (a changed host key, a corrupt value).
    #[error("sealing failed")]
    Seal(#[source] anyhow::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A request for a grant.
#[derive(Debug, Clone)]
pub struct NewGrant {
    pub connector: String,
    pub subject: Subject,
    pub permissions: Vec<Permission>,
    pub ttl_ms: u64,
    pub task: String,
    pub reason: Option<String>,
    /// People who must approve it (when the decision is pending), at least 1.
    pub approvals_required: u32,
    /// Requested through the break-glass path.
    pub break_glass: bool,
    /// What decided it (policy ids, reasons), recorded with the request.
    pub decided_by: Option<serde_json::Value>,
}

/// What approval decided for a new request.
#[derive(Debug, Clone)]
pub enum Decision {
    /// Approved now (by policy or a person). `issue_within_ms` overrides how long
    /// the approval waits for issuance (e.g. short for automatic approvals issued
    /// in the same request, whose requester is gone if the host died in between).
    Approve {
        by: String,
        note: Option<String>,
        issue_within_ms: Option<u64>,
    },
    /// Waits for approvals.
    Pending,
    /// Refused.
    Deny { by: String, reason: String },
}

/// Settings of the engine as a whole.
#[derive(Debug, Clone, Copy)]
pub struct EngineConfig {
    /// Scheduler jobs in flight at once, across connectors.
    pub max_jobs: usize,
    /// How long a claimed job may run before the scheduler hands it out again.
    pub lease_ms: u64,
    /// How long a request may wait for approval.
    pub approval_window_ms: u64,
    /// How long an approved grant may wait to be issued.
    pub issue_window_ms: u64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_jobs: 256,
            lease_ms: 60_000,
            approval_window_ms: 24 * 3600 * 1000,
            issue_window_ms: 3600 * 1000,
        }
    }
}

/// What the host knows about a grant: what was requested, what was granted, what
/// remains, and every event on the way.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct GrantReport {
    pub grant: GrantRecord,
    /// Whether anything of it may still exist downstream.
    pub may_have_access: bool,
    pub events: Vec<AuditEvent>,
}

/// The lifecycle engine. Cheap to clone.
#[derive(Clone)]
pub struct Lifecycle {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Lifecycle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lifecycle").finish_non_exhaustive()
    }
}

struct Inner {
    store: Arc<dyn Store>,
    audit: AuditLog,
    sealer: Sealer,
    registry: Arc<Registry>,
    clock: Clock,
    config: EngineConfig,
    locks: Locks,
    /// Due times earlier than the scheduler sleeps until, announced by commits.
    wake: ebb_core::store::DueSignal,
    /// When the scheduler wakes next by itself (`u64::MAX` while it works, or when
    /// nothing is due): a commit due later needs no wake-up, and under load most
    /// are (an issued grant's expiry, a job's lease).
    sleeping_until: std::sync::atomic::AtomicU64,
    jobs: Arc<Semaphore>,
    /// Set once the scheduler runs ([`Lifecycle::start`]): from then on a caller's
    /// revocation is handed straight to a job of this host.
    started: std::sync::atomic::AtomicBool,
    shutdown: shutdown::Shutdown,
    /// Where escalations are announced, once set.
    alerts: std::sync::OnceLock<crate::alerts::Alerts>,
    /// Grants whose scheduled work failed in the host, and how many times in a row.
    stuck: std::sync::Mutex<std::collections::HashMap<String, u32>>,
    /// Every committed change of a grant, for whoever watches (the console's live
    /// updates). Sent after the commit; a slow watcher misses changes and is told.
    changes: tokio::sync::broadcast::Sender<GrantChange>,
}

/// A grant's record changed (committed): its id and where it is now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantChange {
    pub id: String,
    pub state: GrantState,
    pub connector: String,
    /// Who requested it (the namespaced principal id).
    pub requested_by: String,
}

impl GrantChange {
    fn of(record: &GrantRecord) -> Self {
        Self {
            id: record.grant.id.clone(),
            state: record.state,
            connector: record.connector.clone(),
            requested_by: record.requested_by.clone(),
        }
    }
}

/// The engine's shutdown signal: a flag plus a notify.
mod shutdown {
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::sync::Notify;

    #[derive(Default)]
    pub struct Shutdown {
        flag: AtomicBool,
        notify: Notify,
    }

    impl Shutdown {
        pub fn trigger(&self) {
            self.flag.store(true, Ordering::SeqCst);
            self.notify.notify_waiters();
        }
        pub fn is_triggered(&self) -> bool {
            self.flag.load(Ordering::SeqCst)
        }
        pub async fn wait(&self) {
            let notified = self.notify.notified();
            if self.is_triggered() {
                return;
            }
            notified.await;
        }
    }
}

fn event(kind: &str, actor: &str, record: &GrantRecord) -> NewEvent {
    NewEvent::new(kind, actor).grant(&record.grant.id)
}

/// Counts a failed connector call by connector, operation and kind of failure.
fn count_error(connector: &str, op: &'static str, e: &CallError) {
    metrics::counter!(
        "ebb_connector_call_errors_total",
        "connector" => connector.to_owned(),
        "op" => op,
        "kind" => e.kind()
    )
    .increment(1);
}

/// Exponential backoff with jitter: `base * 2^(attempt-1)`, capped, times [0.5, 1).
fn backoff(slot_policy: &crate::config::LifecyclePolicy, attempt: u32) -> u64 {
    let exp = attempt.saturating_sub(1).min(30);
    let raw = slot_policy
        .retry_base_ms
        .saturating_mul(1u64 << exp)
        .min(slot_policy.retry_max_ms);
    let jitter: f64 = 0.5 + rand::random::<f64>() * 0.5;
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "jittered delays in ms"
    )]
    let delayed = (raw as f64 * jitter) as u64;
    delayed.max(1)
}

impl Lifecycle {
    pub fn new(
        store: Arc<dyn Store>,
        sealer: Sealer,
        registry: Arc<Registry>,
        clock: Clock,
        config: EngineConfig,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                audit: AuditLog::new(store.clone()),
                store,
                sealer,
                registry,
                clock,
                config,
                locks: Locks::default(),
                wake: ebb_core::store::DueSignal::default(),
                sleeping_until: std::sync::atomic::AtomicU64::new(u64::MAX),
                jobs: Arc::new(Semaphore::new(config.max_jobs)),
                started: std::sync::atomic::AtomicBool::new(false),
                shutdown: shutdown::Shutdown::default(),
                alerts: std::sync::OnceLock::new(),
                stuck: std::sync::Mutex::default(),
                changes: tokio::sync::broadcast::channel(1024).0,
            }),
        }
    }

    /// Committed grant changes from now on. A receiver that falls more than 1,024
    /// changes behind gets `Lagged` and should re-read what it shows.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<GrantChange> {
        self.inner.changes.subscribe()
    }

    /// Tells the scheduler that a commit put a grant in the due index at `at`, if
    /// that is earlier than it sleeps until.
    fn due_moved(&self, at: Option<Timestamp>) {
        let sleeping_until = self
            .inner
            .sleeping_until
            .load(std::sync::atomic::Ordering::SeqCst);
        if let Some(at) = at.filter(|at| *at < sleeping_until) {
            self.inner.wake.announce(at);
        }
    }

    /// Moves grant `id`'s due entry to `due` (none: out of the index), and tells
    /// the scheduler if that is sooner than it sleeps until.
    async fn reschedule(&self, id: &str, due: Option<Timestamp>) -> Result<(), store::Error> {
        self.inner.store.reschedule(id, due).await?;
        self.due_moved(due);
        Ok(())
    }

    /// Tells watchers that `record` was committed (nobody listening is fine).
    fn changed(&self, record: &GrantRecord) {
        let _ = self.inner.changes.send(GrantChange::of(record));
    }

    /// Announces escalations through `alerts` (the first escalation of a grant).
    /// Only the first call takes effect.
    pub fn set_alerts(&self, alerts: crate::alerts::Alerts) {
        let _ = self.inner.alerts.set(alerts);
    }

    /// Checks the audit events appended since the last good check every `every`,
    /// while the host serves: tampering is reported (error log,
    /// `ebb_audit_check_failures_total`, an `audit-tampering` alert) within that
    /// time, not at the next restart, and a restart re-reads only what came since.
    pub fn watch_audit_chain(&self, every: std::time::Duration) -> tokio::task::JoinHandle<()> {
        let lifecycle = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                match lifecycle.store().verify_new_events().await {
                    Ok(report) => {
                        if let Some(problem) = &report.problem {
                            metrics::counter!("ebb_audit_check_failures_total").increment(1);
                            tracing::error!(problem, "the audit chain failed its check");
                            lifecycle.alert(serde_json::json!({
                                "kind": "audit-tampering",
                                "problem": problem,
                            }));
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "checking the audit chain failed"),
                }
            }
        })
    }

    /// The check at start, run while the host serves (a store that checks each
    /// record it reads until [`Store::verify_records`] passes): every grant record
    /// against its tag and the count, then the audit events appended since the
    /// last good check. A failure is reported as tampering is (error log,
    /// `ebb_audit_check_failures_total`, an `audit-tampering` alert) and recorded in
    /// the audit log (`store.check-failed`); the store goes on refusing the records
    /// that do not match. With `accept` (the operator's `--accept-unverified-store`)
    /// the records are taken as they are and the override is recorded
    /// (`store.check-overridden`). `ebb_store_records_checked` is 1 once the
    /// records passed.
    pub fn check_store_while_serving(&self, accept: bool) -> tokio::task::JoinHandle<()> {
        let lifecycle = self.clone();
        metrics::gauge!("ebb_store_records_checked").set(0.0);
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let store = lifecycle.store();
            let records = retried(|| store.verify_records()).await;
            if records.is_intact() {
                metrics::gauge!("ebb_store_records_checked").set(1.0);
            }
            let events = retried(|| store.verify_new_events()).await;
            let Some(problem) = records.problem.or(events.problem) else {
                tracing::info!(
                    records = records.records,
                    events = events.events,
                    ms = started.elapsed().as_millis() as u64,
                    "the store passed its check at start, run while serving"
                );
                return;
            };
            metrics::counter!("ebb_audit_check_failures_total").increment(1);
            let kind = if accept {
                tracing::error!(
                    problem,
                    "serving a store that failed its check at start (--accept-unverified-store)"
                );
                store.trust_records();
                "store.check-overridden"
            } else {
                tracing::error!(
                    problem,
                    "the store failed its check at start, run while serving: it was changed \
                     outside this host (or by a host with another key); records that do not \
                     match are refused"
                );
                lifecycle.alert(json!({
                    "kind": "audit-tampering",
                    "problem": problem,
                }));
                "store.check-failed"
            };
            // A failure to record it is logged and counted by the audit log.
            let _ = lifecycle
                .audit_log()
                .record(NewEvent::new(kind, "host").detail(json!({ "problem": problem })))
                .await;
        })
    }

    /// Sends `alert` to the webhooks, if alerts are set.
    pub fn alert(&self, alert: serde_json::Value) {
        if let Some(alerts) = self.inner.alerts.get() {
            alerts.send(alert);
        }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// Where everything but a transition appends its audit events.
    pub fn audit_log(&self) -> &AuditLog {
        &self.inner.audit
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.inner.registry
    }

    pub fn clock(&self) -> Clock {
        self.inner.clock
    }

    fn now(&self) -> Timestamp {
        self.inner.clock.now_ms()
    }

    fn slot(&self, name: &str) -> Result<Arc<Slot>> {
        self.inner
            .registry
            .get(name)
            .ok_or_else(|| Error::UnknownConnector(name.to_owned()))
    }

    /// Applies `event` to `record` (after `edit`), commits it with its audit event,
    /// and wakes the scheduler if the grant now has a due time.
    async fn transition(
        &self,
        record: GrantRecord,
        event: Event,
        actor: &str,
        detail: serde_json::Value,
        sealed: Sealed,
        edit: impl FnOnce(&mut GrantRecord),
    ) -> Result<GrantRecord> {
        self.transition_leased(record, event, actor, detail, sealed, None, Vec::new(), edit)
            .await
    }

    /// The lease a commit keeps while this task works on a claimed grant of a
    /// shared store ([`CLAIMED`]); `None` otherwise.
    fn claim_held(&self) -> Option<Timestamp> {
        (self.inner.store.is_shared() && CLAIMED.try_with(|_| ()).is_ok())
            .then(|| self.now() + self.inner.config.lease_ms)
    }

    /// [`Lifecycle::transition`] with a lease and earlier steps. `lease_until`, for
    /// an intent: the due entry is held until then while the work runs, and a
    /// restart makes it due at once. `earlier`: events of steps committed together
    /// with this one, before it ([`Commit::earlier`]).
    #[expect(
        clippy::too_many_arguments,
        reason = "one private helper with named call sites"
    )]
    async fn transition_leased(
        &self,
        record: GrantRecord,
        event: Event,
        actor: &str,
        detail: serde_json::Value,
        sealed: Sealed,
        lease_until: Option<Timestamp>,
        earlier: Vec<NewEvent>,
        edit: impl FnOnce(&mut GrantRecord),
    ) -> Result<GrantRecord> {
        let (record, audit) = self.step(record, event, actor, detail, edit)?;
        self.commit_step(record, audit, sealed, lease_until, earlier)
            .await
    }

    /// Applies `event` to `record` (after `edit`) in memory and returns it with
    /// the audit event that explains it; nothing is written.
    fn step(
        &self,
        mut record: GrantRecord,
        event: Event,
        actor: &str,
        detail: serde_json::Value,
        edit: impl FnOnce(&mut GrantRecord),
    ) -> Result<(GrantRecord, NewEvent)> {
        let from = record.state;
        let to = state::next(from, event)?;
        let not_after = record.grant.not_after;
        record.state = to;
        record.updated_at = self.now();
        edit(&mut record);
        // No silent extension: nothing after issuance may move `not_after`. A step
        // that tries is refused, in every build, and nothing is written.
        if from != GrantState::Approved && record.grant.not_after != not_after {
            return Err(Error::Extension {
                id: record.grant.id.clone(),
                event: format!("{event:?}"),
            });
        }
        let mut audit = NewEvent::new("grant.transition", actor).grant(&record.grant.id);
        audit.from = Some(from);
        audit.to = Some(to);
        audit.detail = match detail {
            serde_json::Value::Object(mut map) => {
                map.insert("event".into(), json!(format!("{event:?}")));
                serde_json::Value::Object(map)
            }
            _ => json!({ "event": format!("{event:?}") }),
        };
        Ok((record, audit))
    }

    /// Commits `record` as [`Lifecycle::step`] left it, with its `audit` event after
    /// the `earlier` steps' events, and wakes the scheduler if the grant now has a
    /// due time.
    async fn commit_step(
        &self,
        record: GrantRecord,
        audit: NewEvent,
        sealed: Sealed,
        lease_until: Option<Timestamp>,
        earlier: Vec<NewEvent>,
    ) -> Result<GrantRecord> {
        let lease_until = lease_until.or_else(|| self.claim_held());
        let leased = lease_until.is_some();
        let (from, to) = (audit.from, audit.to);
        let (record, _) = self
            .inner
            .store
            .commit(Commit {
                record,
                sealed,
                event: audit,
                lease_until,
                earlier,
            })
            .await?;
        lease_left(leased && record.due_at.is_some());
        self.changed(&record);
        // The due index holds the lease, if there is one, else the due time.
        self.due_moved(record.due_at.map(|due| lease_until.unwrap_or(due)));
        tracing::debug!(grant = %record.grant.id, ?from, ?to, "grant transition");
        Ok(record)
    }

    /// Commits `record` with its `pending` step (taken in memory, not yet written),
    /// if there is one.
    pub(super) async fn commit_pending(
        &self,
        record: GrantRecord,
        pending: Option<NewEvent>,
    ) -> Result<GrantRecord> {
        match pending {
            None => Ok(record),
            Some(audit) => {
                self.commit_step(record, audit, Sealed::Keep, None, Vec::new())
                    .await
            }
        }
    }

    async fn load(&self, id: &str) -> Result<GrantRecord> {
        self.inner
            .store
            .get(id)
            .await?
            .ok_or_else(|| Error::NotFound(id.to_owned()))
    }

    /// Starts the scheduler: voids the previous process's leases (so its in-flight
    /// work is due now) and runs due work, oldest first.
    pub async fn start(&self) -> Result<tokio::task::JoinHandle<()>> {
        let released = self.inner.store.release_leases().await?;
        if released > 0 {
            tracing::warn!(
                released,
                "recovering grants whose work was in flight when the host stopped"
            );
        }
        self.inner
            .started
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let engine = self.clone();
        Ok(tokio::spawn(async move { engine.run_scheduler().await }))
    }

    /// Stops the scheduler, waits for in-flight work and makes everything durable.
    pub async fn shutdown(&self) -> Result<()> {
        self.inner.shutdown.trigger();
        let max = u32::try_from(self.inner.config.max_jobs).unwrap_or(u32::MAX);
        let _all = self.inner.jobs.acquire_many(max).await;
        self.inner.store.sync().await?;
        Ok(())
    }
}

/// Runs a check of the store until the store answers it: a store that cannot be
/// read now is tried again a minute later (and says so).
async fn retried<F, Fut>(check: F) -> ebb_core::audit::ChainReport
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<ebb_core::audit::ChainReport, store::Error>>,
{
    loop {
        match check().await {
            Ok(report) => return report,
            Err(e) => {
                tracing::error!(error = %e, "checking the store failed; trying again in a minute");
                tokio::time::sleep(std::time::Duration::from_secs(60)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests;
