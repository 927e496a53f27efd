//! The scheduler: claims due grants from the store's due index, oldest first, and
//! runs their work with a bounded number of jobs in flight. It sleeps until the
//! earliest due time or until a commit may have moved it earlier.

use super::Lifecycle;

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
            {
                Ok(ids) => ids,
                Err(e) => {
                    tracing::error!(error = %e, "scheduler cannot read the due index; retrying");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    continue;
                }
            };
            let full = claimed.len() == capacity;
            for id in claimed {
                let Ok(permit) = inner.jobs.clone().try_acquire_owned() else {
                    break;
                };
                let engine = self.clone();
                tokio::spawn(async move {
                    if let Err(e) = engine.work(&id).await {
                        tracing::error!(grant = %id, error = %e, "grant work failed; it will be retried when its lease runs out");
                    }
                    drop(permit);
                });
            }
            if full {
                continue;
            }
            let next = inner.store.next_due().ok().flatten();
            let sleep = async {
                match next {
                    Some(at) => tokio::time::sleep_until(inner.clock.instant_at(at)).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = sleep => {}
                () = inner.wake.notified() => {}
                () = inner.shutdown.wait() => break,
            }
        }
    }
}
