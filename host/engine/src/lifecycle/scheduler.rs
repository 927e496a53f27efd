//! The scheduler: claims due grants from the store's due index, oldest first, and
//! runs their work with a bounded number of jobs in flight. It sleeps until the
//! earliest due time or until a commit may have moved it earlier.

use super::{Error, Lifecycle};
use ebb_core::audit::NewEvent;
use ebb_core::contract::Timestamp;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::OwnedSemaphorePermit;

/// Due grants claimed per round.
const BATCH: usize = 256;

impl Lifecycle {
    pub(super) async fn run_scheduler(&self) {
        let inner = &self.inner;
        loop {
            if inner.shutdown.is_triggered() {
                break;
            }
            let capacity = inner.jobs.available_permits().min(BATCH);
            if capacity == 0 {
                // Wait for a job to finish before claiming more.
                tokio::select! {
                    permit = inner.jobs.clone().acquire_owned() => drop(permit),
                    () = inner.shutdown.wait() => break,
                }
                continue;
            }
            let now = self.now();
            let claimed = match inner
                .store
                .claim_due(now, now + inner.config.lease_ms, capacity)
                .await
            {
                Ok(ids) => ids,
                Err(e) => {
                    tracing::error!(error = %e, "scheduler cannot read the due index; retrying");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    continue;
                }
            };
            let full = claimed.len() == capacity;
            let mut claimed = claimed.into_iter();
            for id in claimed.by_ref() {
                let Ok(permit) = inner.jobs.clone().try_acquire_owned() else {
                    // No job free after all: hand it back (a shared store's host
                    // renews its leases, so a claim left lying would never lapse).
                    if let Err(e) = self.reschedule(&id, Some(now)).await {
                        tracing::error!(grant = %id, error = %e, "releasing a claim failed; its lease brings it back");
                    }
                    continue;
                };
                self.run_job(id, permit, None);
            }
            // More may be due at once (a full batch), or something came due while
            // this round claimed (a commit of this host or another's): claim again
            // now, without asking the store for the earliest due time it would not
            // sleep on. On a shared store that question is a query.
            let now = self.now();
            let announced = [
                ready_now(inner.wake.next()),
                ready_now(inner.store.due_changed()),
            ];
            if full || announced.iter().flatten().any(|at| *at <= now) {
                continue;
            }
            // Announced later than now: the store's answer includes it.
            let next = inner.store.next_due().await.ok().flatten();
            if self.sleep_until(next).await {
                break;
            }
        }
    }

    /// Sleeps until something is due: until `next` (forever if `None`), moved
    /// sooner by what commits and other hosts announce, without a question to the
    /// store; true at shutdown.
    async fn sleep_until(&self, mut next: Option<Timestamp>) -> bool {
        let inner = &self.inner;
        let woken = loop {
            // A commit due before `next` announces itself from here on; one made
            // since the round began is in `next` or announced already.
            inner
                .sleeping_until
                .store(next.unwrap_or(u64::MAX), Ordering::SeqCst);
            let sleep = async {
                match next {
                    Some(at) => tokio::time::sleep_until(inner.clock.instant_at(at)).await,
                    None => std::future::pending().await,
                }
            };
            let at = tokio::select! {
                () = sleep => break false,
                at = inner.wake.next() => at,
                // Another host of a shared store committed or moved due work.
                at = inner.store.due_changed() => at,
                () = inner.shutdown.wait() => break true,
            };
            if at <= self.now() {
                break false;
            }
            next = Some(next.map_or(at, |next| next.min(at)));
        };
        inner.sleeping_until.store(u64::MAX, Ordering::SeqCst);
        woken
    }
}

impl Lifecycle {
    /// Runs the work of grant `id`, which this host holds a lease on (claimed from
    /// the due index, or handed over by the caller's step that committed it), in a
    /// job that holds `permit`.
    pub(super) fn run_job(
        &self,
        id: String,
        permit: OwnedSemaphorePermit,
        handed: Option<super::Handed>,
    ) {
        let engine = self.clone();
        tokio::spawn(async move {
            let held = super::Held::new(&engine.inner.store, &id);
            let leased = Arc::new(AtomicBool::new(true));
            let work = async {
                match handed {
                    None => engine.work(&id).await,
                    Some(handed) => engine.work_handed(&id, handed).await,
                }
            };
            let outcome = super::CLAIMED.scope(leased.clone(), work).await;
            engine
                .work_done(&id, outcome, leased.load(Ordering::Relaxed))
                .await;
            drop(held);
            drop(permit);
        });
    }

    /// A job slot for work a caller's step hands over, if the scheduler runs and
    /// has one free; without one the work waits in the due index for the scheduler.
    pub(super) fn free_job(&self) -> Option<OwnedSemaphorePermit> {
        let inner = &self.inner;
        if !inner.started.load(Ordering::SeqCst) || inner.shutdown.is_triggered() {
            return None;
        }
        inner.jobs.clone().try_acquire_owned().ok()
    }
}

/// What `wake` yields at its first poll, if it is ready then (a waiting
/// notification, which the poll takes); if not, dropping it leaves nothing
/// registered.
fn ready_now<T>(wake: impl std::future::Future<Output = T>) -> Option<T> {
    let wake = std::pin::pin!(wake);
    match wake.poll(&mut std::task::Context::from_waker(std::task::Waker::noop())) {
        std::task::Poll::Ready(value) => Some(value),
        std::task::Poll::Pending => None,
    }
}

/// How long background work that found its connector busy steps aside (plus up
/// to three times that in jitter).
const BUSY_RETRY_MS: u64 = 25;

/// On a shared store, how soon work that failed in the host is tried again.
const SHARED_RETRY_MS: u64 = 1_000;

/// A grant whose work failed this many times in a row (the host's own failure: the
/// store, not the connector — those go through retry and escalation) is announced
/// to the alert webhooks.
const STUCK_AFTER: u32 = 3;

impl Lifecycle {
    /// After the scheduler's work on grant `id`: nothing stuck is silent. A failure
    /// inside the host (a store that cannot read or write) is counted
    /// (`ebb_scheduler_errors_total`), audited when the store still takes it, and
    /// after [`STUCK_AFTER`] failures in a row alerted; the grant's lease brings
    /// the work back by itself.
    /// `leased`: whether the work left a lease of this host on the grant (a
    /// shared store's claim, see [`super::CLAIMED`]).
    pub(super) async fn work_done(&self, id: &str, outcome: Result<(), Error>, leased: bool) {
        if let Err(Error::ConnectorBusy(_)) = &outcome {
            // Not a failure: the connector's calls are all taken. Back shortly, with
            // jitter so a crowd of waiting grants does not come back at once.
            let later = self.now() + BUSY_RETRY_MS + rand::random_range(0..BUSY_RETRY_MS * 3);
            if let Err(e) = self.reschedule(id, Some(later)).await {
                tracing::error!(grant = %id, error = %e, "rescheduling a grant failed; its lease brings it back");
            }
            return;
        }
        if self.inner.store.is_shared() {
            // This host renews its leases while it lives: the claim is given up
            // here, not left to run out. Work that failed comes back in a second.
            let released = match &outcome {
                Ok(()) if !leased => Ok(()),
                Ok(()) => self.inner.store.release_claim(id).await,
                Err(_) => {
                    let later = self.now() + SHARED_RETRY_MS;
                    self.reschedule(id, Some(later)).await
                }
            };
            if let Err(e) = released {
                tracing::error!(grant = %id, error = %e, "releasing a claim failed; it is released when this host stops");
            }
        }
        let failures = {
            let mut stuck = self.inner.stuck.lock().unwrap_or_else(|p| p.into_inner());
            match &outcome {
                Ok(()) => {
                    stuck.remove(id);
                    return;
                }
                Err(_) => {
                    let n = stuck.entry(id.to_owned()).or_insert(0);
                    *n += 1;
                    *n
                }
            }
        };
        let Err(e) = outcome else { return };
        let why = ebb_core::error_chain(&e);
        metrics::counter!("ebb_scheduler_errors_total").increment(1);
        tracing::error!(grant = %id, error = %why, failures, "work on a grant failed in the host; retried when its lease runs out");
        let _recorded = self
            .inner
            .audit
            .record(
                NewEvent::new("grant.work-failed", "ebb")
                    .grant(id)
                    .detail(json!({ "error": why, "failures": failures })),
            )
            .await;
        if failures == STUCK_AFTER
            && let Some(alerts) = self.inner.alerts.get()
        {
            alerts.send(json!({
                "kind": "stuck",
                "grant": id,
                "failures": failures,
                "why": why,
            }));
        }
    }
}
