//! The grant lifecycle: the only code that changes a grant's state.
//!
//! [`Lifecycle`] takes requests, approvals, issuance and revocation triggers from
//! callers, and runs a scheduler that does everything that happens by itself:
//! revocation at `not-after`, retries with backoff, verification after a
//! propagation delay, re-verification, escalation, and recovery after a crash.
//!
//! Rules it keeps (see ARCHITECTURE.md):
//! - **Intent before effect.** `issuing` and `revoking` are committed and synced
//!   before the connector is called. Crash recovery needs no special code: a grant
//!   mid-call holds a lease in the due index, and on start leases are voided, so the
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
mod scheduler;

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
use tokio::sync::{Notify, Semaphore};

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
    Issue(CallError),
    /// The credential was issued but never worked; it is being revoked.
    #[error("the issued credential did not work in time, and it is being revoked: {0}")]
    VerifyIssued(CallError),
    #[error(transparent)]
    Store(#[from] store::Error),
    #[error("sealing failed: {0}")]
    Seal(String),
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
    /// Wakes the scheduler when a due time may have moved earlier.
    wake: Notify,
    jobs: Arc<Semaphore>,
    shutdown: shutdown::Shutdown,
    /// Where escalations are announced, once set.
    alerts: std::sync::OnceLock<crate::alerts::Alerts>,
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
                wake: Notify::new(),
                jobs: Arc::new(Semaphore::new(config.max_jobs)),
                shutdown: shutdown::Shutdown::default(),
                alerts: std::sync::OnceLock::new(),
            }),
        }
    }

    /// Announces escalations through `alerts` (the first escalation of a grant).
    /// Only the first call takes effect.
    pub fn set_alerts(&self, alerts: crate::alerts::Alerts) {
        let _ = self.inner.alerts.set(alerts);
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
    fn transition(
        &self,
        record: GrantRecord,
        event: Event,
        actor: &str,
        detail: serde_json::Value,
        sealed: Sealed,
        edit: impl FnOnce(&mut GrantRecord),
    ) -> Result<GrantRecord> {
        self.transition_leased(record, event, actor, detail, sealed, None, edit)
    }

    /// [`Lifecycle::transition`] for an intent: the due entry is held until
    /// `lease_until` while the work runs, and a restart makes it due at once.
    #[expect(
        clippy::too_many_arguments,
        reason = "one private helper with named call sites"
    )]
    fn transition_leased(
        &self,
        mut record: GrantRecord,
        event: Event,
        actor: &str,
        detail: serde_json::Value,
        sealed: Sealed,
        lease_until: Option<Timestamp>,
        edit: impl FnOnce(&mut GrantRecord),
    ) -> Result<GrantRecord> {
        let from = record.state;
        let to = state::next(from, event)?;
        let not_after = record.grant.not_after;
        record.state = to;
        record.updated_at = self.now();
        edit(&mut record);
        // No silent extension: nothing after issuance may move `not_after`.
        debug_assert!(
            from == GrantState::Approved || record.grant.not_after == not_after,
            "not_after moved on {event:?}"
        );
        if record.grant.not_after != not_after && from != GrantState::Approved {
            record.grant.not_after = not_after;
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
        let (record, _) = self.inner.store.commit(Commit {
            record,
            sealed,
            event: audit,
            lease_until,
        })?;
        if record.due_at.is_some() {
            self.inner.wake.notify_one();
        }
        tracing::debug!(grant = %record.grant.id, %from, %to, "grant transition");
        Ok(record)
    }

    fn load(&self, id: &str) -> Result<GrantRecord> {
        self.inner
            .store
            .get(id)?
            .ok_or_else(|| Error::NotFound(id.to_owned()))
    }

    /// The grant `id`.
    pub fn get(&self, id: &str) -> Result<GrantRecord> {
        self.load(id)
    }

    /// What was requested, what was granted, what remains, and its audit trail.
    pub fn report(&self, id: &str) -> Result<GrantReport> {
        let grant = self.load(id)?;
        let events = self.inner.store.audit(&AuditQuery {
            grant_id: Some(id.to_owned()),
            after_seq: 0,
            limit: 10_000,
        })?;
        Ok(GrantReport {
            may_have_access: grant.state.may_have_access(),
            grant,
            events,
        })
    }

    /// Records a request and applies `decision`.
    pub async fn request(
        &self,
        new: NewGrant,
        requested_by: &str,
        decision: Decision,
    ) -> Result<GrantRecord> {
        let slot = self.slot(&new.connector)?;
        if slot.is_draining() {
            return Err(Error::Draining(new.connector));
        }
        if new.permissions.is_empty() {
            return Err(Error::Invalid(
                "a grant needs at least one permission".into(),
            ));
        }
        let info = slot.connector().info().clone();
        for p in &new.permissions {
            if !info.actions.iter().any(|a| a.name == p.action) {
                return Err(Error::Invalid(format!(
                    "connector `{}` has no action `{}` (it has: {})",
                    new.connector,
                    p.action,
                    info.actions
                        .iter()
                        .map(|a| a.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
        if new.ttl_ms == 0 {
            return Err(Error::Invalid("ttl must be greater than zero".into()));
        }
        let max_ttl_ms = slot.policy().max_ttl_ms;
        if new.ttl_ms > max_ttl_ms {
            return Err(Error::Invalid(format!(
                "ttl of {} ms is over the maximum of {} ms for connector `{}`",
                new.ttl_ms, max_ttl_ms, new.connector
            )));
        }
        let now = self.now();
        let id = ulid::Ulid::new().to_string();
        let mut record = GrantRecord::requested(
            Grant {
                id: id.clone(),
                subject: new.subject,
                permissions: new.permissions,
                not_after: 0,
                task: new.task,
            },
            new.connector,
            new.ttl_ms,
            now,
            requested_by.to_owned(),
            new.reason,
        );
        record.approvals_required = new.approvals_required.max(1);
        record.break_glass = new.break_glass;
        // An automatic approval that never lands (the host died in between) has no
        // one waiting for it: let it lapse as soon as its issue window would.
        record.due_at = Some(
            now + match &decision {
                Decision::Approve {
                    issue_within_ms: Some(w),
                    ..
                } => *w,
                _ => self.inner.config.approval_window_ms,
            },
        );
        let detail = json!({
            "connector": record.connector,
            "subject": record.grant.subject.id,
            "permissions": record.grant.permissions,
            "ttl_ms": record.ttl_ms,
            "task": record.grant.task,
            "reason": record.reason,
            "approvals_required": record.approvals_required,
            "break_glass": record.break_glass,
            "policy": new.decided_by,
        });
        let mut requested = event("grant.requested", requested_by, &record).detail(detail);
        requested.to = Some(GrantState::Requested);
        let (record, _) = self.inner.store.commit(Commit {
            event: requested,
            record,
            sealed: Sealed::Keep,
            lease_until: None,
        })?;
        let _lock = self.inner.locks.lock(&id).await;
        match decision {
            Decision::Pending => Ok(record),
            Decision::Approve {
                by,
                note,
                issue_within_ms,
            } => self.approve_locked(record, &by, note, issue_within_ms),
            Decision::Deny { by, reason } => self.deny_locked(record, &by, &reason),
        }
    }

    /// Approves a requested grant. The requester can never approve it, nor can one
    /// person approve twice; a grant that needs N approvals is approved by the Nth.
    pub async fn approve(&self, id: &str, by: &str, note: Option<String>) -> Result<GrantRecord> {
        let _lock = self.inner.locks.lock(id).await;
        let record = self.load(id)?;
        if record.requested_by == by || record.grant.subject.id == by {
            return Err(Error::SelfApproval);
        }
        if record.approvals.iter().any(|a| a.by == by) {
            return Err(Error::AlreadyApproved(by.to_owned()));
        }
        let have = u32::try_from(record.approvals.len()).unwrap_or(u32::MAX) + 1;
        if record.state == GrantState::Requested && have < record.approvals_required {
            let now = self.now();
            let required = record.approvals_required;
            return self.transition(
                record,
                Event::RecordApproval,
                by,
                json!({ "note": note, "approvals": have, "approvals_required": required }),
                Sealed::Keep,
                |r| {
                    r.approvals.push(Approval {
                        by: by.to_owned(),
                        at: now,
                        note,
                    });
                },
            );
        }
        self.approve_locked(record, by, note, None)
    }

    fn approve_locked(
        &self,
        record: GrantRecord,
        by: &str,
        note: Option<String>,
        issue_within_ms: Option<u64>,
    ) -> Result<GrantRecord> {
        let now = self.now();
        let window = issue_within_ms.unwrap_or(self.inner.config.issue_window_ms);
        self.transition(
            record,
            Event::Approve,
            by,
            json!({ "note": note }),
            Sealed::Keep,
            |r| {
                r.approvals.push(Approval {
                    by: by.to_owned(),
                    at: now,
                    note,
                });
                r.due_at = Some(now + window);
            },
        )
    }

    /// Denies a requested (or approved, not yet issued) grant.
    pub async fn deny(&self, id: &str, by: &str, reason: &str) -> Result<GrantRecord> {
        let _lock = self.inner.locks.lock(id).await;
        let record = self.load(id)?;
        self.deny_locked(record, by, reason)
    }

    fn deny_locked(&self, record: GrantRecord, by: &str, reason: &str) -> Result<GrantRecord> {
        self.transition(
            record,
            Event::Deny,
            by,
            json!({ "reason": reason }),
            Sealed::Keep,
            |r| {
                r.due_at = None;
                r.last_error = Some(reason.to_owned());
            },
        )
    }

    /// Issues an approved grant and returns the credential — the only time it is
    /// ever returned.
    pub async fn issue(&self, id: &str, actor: &str) -> Result<(GrantRecord, Credential)> {
        let _lock = self.inner.locks.lock(id).await;
        let record = self.load(id)?;
        if record.state != GrantState::Approved {
            return Err(IllegalTransition {
                from: record.state,
                event: Event::BeginIssue,
            }
            .into());
        }
        let slot = self.slot(&record.connector)?;
        // The slot and the version are taken together, before the intent names the
        // version: the call that follows is the one the intent describes.
        let connector = slot.call(Pool::Request).await;
        let now = self.now();
        let not_after = now + record.ttl_ms;
        // Intent: durable before the connector is called. The lease makes the
        // scheduler compensate if this process dies before the outcome is recorded.
        let lease = now + self.inner.config.lease_ms;
        let digest = connector.digest().to_string();
        let record = self.transition_leased(
            record,
            Event::BeginIssue,
            actor,
            json!({ "not_after": not_after, "connector_version": digest }),
            Sealed::Keep,
            Some(lease),
            |r| {
                r.grant.not_after = not_after;
                r.issued_at = Some(now);
                r.issued_by_digest = Some(digest.clone());
                r.due_at = Some(now);
            },
        )?;
        self.inner.store.sync().await?;

        let outcome = connector.issue(&record.grant).await;
        let can_verify_issued = connector.info().capabilities.can_verify_issued;
        drop(connector);
        if let Err(e) = &outcome {
            count_error(&record.connector, "issue", e);
        }
        let issued = match outcome {
            Ok(issued) => issued,
            Err(e) => {
                let record = self.transition(
                    record,
                    Event::IssueFailed,
                    actor,
                    json!({ "error": e.to_string() }),
                    Sealed::Keep,
                    |r| r.last_error = Some(e.to_string()),
                )?;
                self.begin_revoke(record, Trigger::Compensation, "ebb", None)?;
                self.inner.store.sync().await?;
                return Err(Error::Issue(e));
            }
        };
        let sealed = serde_json::to_vec(&issued.credential)
            .map_err(|e| Error::Seal(e.to_string()))
            .and_then(|plain| {
                let plain = zeroize::Zeroizing::new(plain);
                self.inner
                    .sealer
                    .seal(id, &plain)
                    .map_err(|e| Error::Seal(e.to_string()))
            })?;
        let record = self.transition(
            record,
            Event::IssueSucceeded,
            actor,
            json!({ "handle": issued.handle, "downstream_expires_at": issued.expires_at }),
            Sealed::Set(sealed),
            |r| {
                r.handle = Some(issued.handle.clone());
                r.downstream_expires_at = issued.expires_at;
                r.last_error = None;
                r.due_at = Some(not_after);
            },
        )?;
        // No sync here, on purpose: if this commit is lost in a crash, the grant is
        // still `issuing` after restart and is compensated (revoked by grant id), so
        // nothing can exist downstream that the store does not know about. The
        // requester's credential just stops working early. The next group commit
        // (at most a second away) makes it durable.

        let policy = slot.policy();
        if policy.verify_issued
            && can_verify_issued
            && let Err(e) = self.verify_issued(&slot, &record, &issued).await
        {
            let record = self.load(id)?;
            self.begin_revoke(
                record,
                Trigger::TaskFailed,
                "ebb",
                Some("the issued credential did not work"),
            )?;
            self.inner.store.sync().await?;
            return Err(Error::VerifyIssued(e));
        }
        Ok((record, issued.credential))
    }

    /// Retries `verify-issued` while it says "not yet", up to the policy's timeout.
    async fn verify_issued(
        &self,
        slot: &Slot,
        record: &GrantRecord,
        issued: &ebb_core::contract::Issued,
    ) -> Result<(), CallError> {
        let deadline = tokio::time::Instant::now()
            + Duration::from_millis(slot.policy().verify_issued_timeout_ms);
        let mut delay = Duration::from_millis(50);
        loop {
            let result = slot
                .call(Pool::Request)
                .await
                .verify_issued(&record.grant, &issued.handle, &issued.credential)
                .await;
            match result {
                Ok(()) => return Ok(()),
                Err(e) if e.is_retryable() && tokio::time::Instant::now() + delay < deadline => {
                    tracing::debug!(grant = %record.grant.id, error = %e, "issued credential not usable yet");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(1));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Starts revoking grant `id` for `trigger`. Idempotent: a grant already being
    /// revoked, or closed, is returned as it is.
    pub async fn revoke(
        &self,
        id: &str,
        trigger: Trigger,
        actor: &str,
        reason: Option<&str>,
    ) -> Result<GrantRecord> {
        let _lock = self.inner.locks.lock(id).await;
        let record = self.load(id)?;
        let record = match record.state {
            GrantState::Active => self.begin_revoke(record, trigger, actor, reason)?,
            GrantState::Requested | GrantState::Approved => {
                self.deny_locked(record, actor, reason.unwrap_or("withdrawn before issuance"))?
            }
            _ => {
                self.inner
                    .audit
                    .record(event("grant.revoke-requested", actor, &record).detail(
                        json!({ "trigger": trigger, "reason": reason, "state": record.state }),
                    ))
                    .await?;
                record
            }
        };
        self.inner.store.sync().await?;
        Ok(record)
    }

    fn begin_revoke(
        &self,
        record: GrantRecord,
        trigger: Trigger,
        actor: &str,
        reason: Option<&str>,
    ) -> Result<GrantRecord> {
        let now = self.now();
        self.transition(
            record,
            Event::BeginRevoke(trigger),
            actor,
            json!({ "trigger": trigger, "reason": reason }),
            Sealed::Keep,
            |r| {
                if r.trigger.is_none() || r.revoke_started_at.is_none() {
                    r.trigger = Some(trigger);
                    r.revoke_started_at = Some(now);
                }
                r.due_at = Some(now);
            },
        )
    }

    /// Does whatever is due for grant `id`. Called by the scheduler.
    async fn work(&self, id: &str) -> Result<()> {
        // Wait for whoever holds the grant (an API call finishing `issue`, say), then
        // act on its state as it is then. Skipping instead would leave the claimed
        // grant parked until its lease ran out.
        let _lock = self.inner.locks.lock(id).await;
        let mut record = self.load(id)?;
        // Claimed, but is it still due? Another job may have moved it on while this
        // one waited (e.g. a step committed "due now" and the scheduler claimed it
        // again), or a voided lease woke it early. Put the index entry back at the
        // grant's own due time, and do nothing.
        if record.due_at.is_none_or(|due| due > self.now()) {
            self.inner.store.reschedule(id, record.due_at)?;
            return Ok(());
        }
        loop {
            record = match record.state {
                GrantState::Requested => {
                    self.deny_locked(record, "ebb", "not approved within the approval window")?;
                    return Ok(());
                }
                GrantState::Approved => {
                    self.deny_locked(record, "ebb", "not issued within the issue window")?;
                    return Ok(());
                }
                GrantState::Issuing => {
                    // The host stopped (or the call hung) between intent and outcome:
                    // something may exist downstream that no one will ever use.
                    self.transition(
                        record,
                        Event::IssueFailed,
                        "ebb",
                        json!({ "error": "the outcome of issue is unknown (host restarted or call lost)" }),
                        Sealed::Keep,
                        |r| r.last_error = Some("issue outcome unknown".into()),
                    )?
                }
                GrantState::IssueFailed => {
                    self.begin_revoke(record, Trigger::Compensation, "ebb", None)?
                }
                GrantState::Active => self.begin_revoke(record, Trigger::Expiry, "ebb", None)?,
                GrantState::Residual | GrantState::Escalated => {
                    let trigger = record.trigger.unwrap_or(Trigger::Expiry);
                    self.begin_revoke(record, trigger, "ebb", None)?
                }
                GrantState::Revoking => {
                    let record = self.do_revoke(record).await?;
                    if record.state == GrantState::Revoked
                        && record.due_at.is_some_and(|d| d <= self.now())
                    {
                        record
                    } else {
                        return Ok(());
                    }
                }
                GrantState::Revoked | GrantState::Verified => {
                    let record = self.do_verify(record).await?;
                    if record.state == GrantState::Residual
                        && record.due_at.is_some_and(|d| d <= self.now())
                    {
                        record
                    } else {
                        return Ok(());
                    }
                }
                GrantState::Denied => return Ok(()),
            };
        }
    }

    /// The grant's credential, unsealed, while the store still holds it.
    fn credential(&self, id: &str) -> Result<Option<Credential>> {
        let Some(sealed) = self.inner.store.sealed_credential(id)? else {
            return Ok(None);
        };
        let plain = self
            .inner
            .sealer
            .open(id, &sealed)
            .map_err(|e| Error::Seal(e.to_string()))?;
        serde_json::from_slice::<Credential>(&plain)
            .map(Some)
            .map_err(|e| Error::Seal(e.to_string()))
    }

    /// Calls `revoke`; success moves to `revoked`, failure retries or escalates.
    async fn do_revoke(&self, record: GrantRecord) -> Result<GrantRecord> {
        let slot = match self.slot(&record.connector) {
            Ok(slot) => slot,
            Err(e) => return self.failed(record, &e.to_string(), false, None),
        };
        let credential = self.credential(&record.grant.id)?;
        let (outcome, version) = {
            // The version that serves this call, recorded with its outcome.
            let connector = slot.call(Pool::Background).await;
            let started = std::time::Instant::now();
            let outcome = connector
                .revoke(&record.grant, record.handle.as_deref(), credential.as_ref())
                .await;
            metrics::histogram!("ebb_revoke_seconds", "connector" => record.connector.clone())
                .record(started.elapsed().as_secs_f64());
            (outcome, connector.digest().to_string())
        };
        if let Err(e) = &outcome {
            count_error(&record.connector, "revoke", e);
        }
        match outcome {
            Ok(()) => {
                let now = self.now();
                let delay = slot.policy().propagation_delay_ms;
                self.transition(
                    record,
                    Event::RevokeSucceeded,
                    "ebb",
                    json!({ "connector_version": version }),
                    Sealed::Keep,
                    |r| {
                        r.revoked_at = Some(now);
                        r.last_error = None;
                        r.due_at = Some(now + delay);
                    },
                )
            }
            Err(e) => self.failed(record, &e.to_string(), e.is_retryable(), Some(&version)),
        }
    }

    /// Calls `verify-revoked`; `revoked` closes (or re-verifies) the grant, residue
    /// sends it back to revocation, errors retry.
    async fn do_verify(&self, record: GrantRecord) -> Result<GrantRecord> {
        let slot = match self.slot(&record.connector) {
            Ok(slot) => slot,
            Err(e) => return self.failed(record, &e.to_string(), false, None),
        };
        let connector = slot.call(Pool::Verify).await;
        let version = connector.digest().to_string();
        if !connector.info().capabilities.can_verify {
            return self.failed(
                record,
                "the connector cannot verify revocation; an operator must confirm it by hand",
                false,
                Some(&version),
            );
        }
        let credential = self.credential(&record.grant.id)?;
        let outcome = {
            let started = std::time::Instant::now();
            let outcome = connector
                .verify_revoked(&record.grant, record.handle.as_deref(), credential.as_ref())
                .await;
            metrics::histogram!("ebb_verify_seconds", "connector" => record.connector.clone())
                .record(started.elapsed().as_secs_f64());
            outcome
        };
        let revokes_by_value = connector.info().capabilities.revokes_by_value;
        drop(connector);
        if let Err(e) = &outcome {
            count_error(&record.connector, "verify-revoked", e);
        }
        let now = self.now();
        let policy = slot.policy();
        match outcome {
            Ok(Verdict::Revoked) if record.state == GrantState::Verified => {
                let until = record.reverify_until.unwrap_or(now);
                let next = now + policy.reverify_every_ms;
                let last = next >= until;
                self.transition(
                    record,
                    Event::Reverify,
                    "ebb",
                    json!({ "verdict": "revoked", "connector_version": version }),
                    if last { Sealed::Shred } else { Sealed::Keep },
                    |r| {
                        r.due_at = (!last).then_some(next);
                    },
                )
            }
            Ok(Verdict::Revoked) => {
                let window = policy.reverify_window_ms;
                let every = policy.reverify_every_ms;
                // The secret has no further use once removal is proven — except to a
                // connector that can only re-verify by the credential's value, until
                // the re-verification window closes.
                let sealed = if window > 0 && revokes_by_value {
                    Sealed::Keep
                } else {
                    Sealed::Shred
                };
                self.transition(
                    record,
                    Event::VerifiedRevoked,
                    "ebb",
                    json!({ "verdict": "revoked", "connector_version": version }),
                    sealed,
                    |r| {
                        r.verified_at = Some(now);
                        r.residue.clear();
                        r.attempts = 0;
                        r.last_error = None;
                        r.reverify_until = (window > 0).then_some(now + window);
                        r.due_at = (window > 0 && every < window).then_some(now + every);
                    },
                )
            }
            Ok(Verdict::Residual(residue)) => {
                self.found_residue(record, residue, &policy, &version)
            }
            Err(e) => self.failed(record, &e.to_string(), e.is_retryable(), Some(&version)),
        }
    }

    fn found_residue(
        &self,
        record: GrantRecord,
        residue: Vec<Residue>,
        policy: &crate::config::LifecyclePolicy,
        version: &str,
    ) -> Result<GrantRecord> {
        let now = self.now();
        let attempts = record.attempts + 1;
        tracing::warn!(grant = %record.grant.id, residue = residue.len(), attempts, "verification found access that remains; revoking again");
        metrics::counter!("ebb_residue_found_total", "connector" => record.connector.clone())
            .increment(residue.len() as u64);
        let escalate = attempts >= policy.escalate_after;
        let delay = if escalate { policy.retry_max_ms } else { 0 };
        let record = self.transition(
            record,
            Event::FoundResidue,
            "ebb",
            json!({ "residue": residue, "attempts": attempts, "connector_version": version }),
            Sealed::Keep,
            |r| {
                r.residue = residue;
                r.attempts = attempts;
                r.due_at = Some(now + delay);
            },
        )?;
        if escalate {
            return self.escalate(
                record,
                "access remains after repeated revocation",
                Some(version),
            );
        }
        Ok(record)
    }

    /// A failed step: retry with backoff, or escalate past the budget (and retry
    /// anyway, at the slowest pace).
    /// `version` is the connector version whose call failed, if one was made.
    fn failed(
        &self,
        record: GrantRecord,
        error: &str,
        retryable: bool,
        version: Option<&str>,
    ) -> Result<GrantRecord> {
        let slot_policy = self
            .inner
            .registry
            .get(&record.connector)
            .map(|s| s.policy())
            .unwrap_or_default();
        let attempts = record.attempts + 1;
        let now = self.now();
        let escalate = !retryable || attempts >= slot_policy.escalate_after;
        if escalate && record.state != GrantState::Escalated {
            let mut r = record;
            r.attempts = attempts;
            r.last_error = Some(error.to_owned());
            r.due_at = Some(now + slot_policy.retry_max_ms);
            return self.escalate(r, error, version);
        }
        let delay = if escalate {
            slot_policy.retry_max_ms
        } else {
            backoff(&slot_policy, attempts)
        };
        tracing::info!(grant = %record.grant.id, attempts, delay_ms = delay, error, "grant step failed; will retry");
        self.transition(
            record,
            Event::CallFailed,
            "ebb",
            json!({ "error": error, "attempts": attempts, "retry_in_ms": delay, "connector_version": version }),
            Sealed::Keep,
            |r| {
                r.attempts = attempts;
                r.last_error = Some(error.to_owned());
                r.due_at = Some(now + delay);
            },
        )
    }

    fn escalate(
        &self,
        record: GrantRecord,
        why: &str,
        version: Option<&str>,
    ) -> Result<GrantRecord> {
        let now = self.now();
        let first = record.escalated_at.is_none();
        if first {
            metrics::counter!("ebb_escalations_total", "connector" => record.connector.clone())
                .increment(1);
            tracing::error!(grant = %record.grant.id, connector = %record.connector, attempts = record.attempts, why, "ESCALATED: revocation of this grant is not verified; it will keep being retried");
        }
        let due = record.due_at;
        let alert = (first && self.inner.alerts.get().is_some()).then(|| {
            json!({
                "kind": "escalation",
                "grant": record.grant.id,
                "subject": record.grant.subject.id,
                "connector": record.connector,
                "state": record.state,
                "attempts": record.attempts,
                "why": why,
            })
        });
        let record = self.transition(
            record,
            Event::Escalate,
            "ebb",
            json!({ "why": why, "first": first, "connector_version": version }),
            Sealed::Keep,
            |r| {
                if r.escalated_at.is_none() {
                    r.escalated_at = Some(now);
                }
                r.due_at = due.or(Some(now));
            },
        )?;
        if let (Some(alert), Some(alerts)) = (alert, self.inner.alerts.get()) {
            alerts.send(alert);
        }
        Ok(record)
    }

    /// Starts the scheduler: voids the previous process's leases (so its in-flight
    /// work is due now) and runs due work, oldest first.
    pub fn start(&self) -> Result<tokio::task::JoinHandle<()>> {
        let released = self.inner.store.release_leases()?;
        if released > 0 {
            tracing::warn!(
                released,
                "recovering grants whose work was in flight when the host stopped"
            );
        }
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

    /// Grants of connector instance `connector` that still need it: every grant not
    /// closed, and closed grants still being re-verified.
    pub fn live_grants(&self, connector: &str) -> Result<Vec<GrantRecord>> {
        let mut all = self.grants_matching(store::ListFilter {
            connector: Some(connector.to_owned()),
            ..Default::default()
        })?;
        all.retain(|r| {
            r.due_at.is_some() || !matches!(r.state, GrantState::Denied | GrantState::Verified)
        });
        Ok(all)
    }

    /// Every grant `filter` matches (its `after` and `limit` aside), page by page.
    pub fn grants_matching(&self, filter: store::ListFilter) -> Result<Vec<GrantRecord>> {
        let mut filter = store::ListFilter {
            after: None,
            limit: 1000,
            ..filter
        };
        let mut all = Vec::new();
        loop {
            let page = self.inner.store.list(&filter)?;
            all.extend(page.grants);
            match page.next {
                Some(next) => filter.after = Some(next),
                None => return Ok(all),
            }
        }
    }

    /// Hands grant `id` to connector instance `to`: from now on its calls
    /// (revocation, verification) go there. Waits for work in flight on the grant.
    pub async fn hand_over(&self, id: &str, to: &str, actor: &str) -> Result<GrantRecord> {
        let _lock = self.inner.locks.lock(id).await;
        let mut record = self.load(id)?;
        if record.connector == to {
            return Ok(record);
        }
        let from = std::mem::replace(&mut record.connector, to.to_owned());
        record.updated_at = self.now();
        let handed = event("grant.handed-over", actor, &record)
            .detail(json!({ "from": from, "to": to, "state": record.state }));
        let (record, _) = self.inner.store.commit(Commit {
            record,
            sealed: Sealed::Keep,
            event: handed,
            lease_until: None,
        })?;
        if record.due_at.is_some() {
            self.inner.wake.notify_one();
        }
        Ok(record)
    }

    /// Grants whose revocation is still not verified after the attempt budget.
    pub fn escalated(&self) -> Result<Vec<GrantRecord>> {
        Ok(self
            .inner
            .store
            .list(&store::ListFilter {
                state: Some(GrantState::Escalated),
                limit: 1000,
                ..Default::default()
            })?
            .grants)
    }
}

#[cfg(test)]
mod tests;
