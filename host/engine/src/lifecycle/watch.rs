//! Prompt recovery. When a call finds a connector's downstream system unavailable,
//! the grant joins the instance's waiting list and one watch per instance asks the
//! downstream system every [`WATCH_EVERY`] (a `verify-revoked` of a waiting grant,
//! which needs it). The moment it answers, every waiting grant's next step runs at
//! once, whatever its backoff said — an escalated grant would otherwise wait up to
//! `retry-max-ms` while access it should have removed stays.

use super::*;
use ebb_core::contract::ConnectorError;

/// How often a watched downstream system is asked whether it is back.
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// Whether a call's failure says the downstream system is not answering.
fn downstream_down(e: &CallError) -> bool {
    matches!(
        e,
        CallError::Connector(ConnectorError::Unavailable(_)) | CallError::Timeout { .. }
    )
}

impl Lifecycle {
    /// After a failed call for grant `id`: if the downstream system is down, the
    /// grant waits for it, and the instance is watched.
    pub(super) fn watch_if_down(&self, slot: &Arc<Slot>, id: &str, e: &CallError) {
        if !downstream_down(e) {
            return;
        }
        slot.wait_for_downstream(id);
        if slot.start_watch() {
            let engine = self.clone();
            let slot = slot.clone();
            tokio::spawn(async move { engine.watch_downstream(slot).await });
        }
    }

    async fn watch_downstream(self, slot: Arc<Slot>) {
        loop {
            tokio::select! {
                () = tokio::time::sleep(WATCH_EVERY) => {}
                () = self.inner.shutdown.wait() => return,
            }
            let Some(id) = slot.first_waiting() else {
                slot.stop_watch();
                // A grant may have joined between the look and the stop.
                if slot.first_waiting().is_some() && slot.start_watch() {
                    continue;
                }
                return;
            };
            let record = match self.load(&id).await {
                Ok(r)
                    if matches!(
                        r.state,
                        GrantState::Revoking
                            | GrantState::Revoked
                            | GrantState::Residual
                            | GrantState::Escalated
                    ) =>
                {
                    r
                }
                // Gone, or no longer waiting on anything downstream.
                _ => {
                    slot.done_waiting(&id);
                    continue;
                }
            };
            let credential = self.credential(&id).await.ok().flatten();
            let answer = slot
                .call(Pool::Verify)
                .await
                .verify_revoked(&record.grant, record.handle.as_deref(), credential.as_ref())
                .await;
            if let Err(e) = &answer
                && downstream_down(e)
            {
                continue;
            }
            let waiting = slot.take_waiting();
            slot.stop_watch();
            tracing::info!(
                connector = slot.name(),
                grants = waiting.len(),
                "the downstream system answers again: its pending revocations run now"
            );
            for id in waiting {
                let engine = self.clone();
                tokio::spawn(async move {
                    let outcome = engine.work_step(&id, true, None).await;
                    // Not a claimed job: whatever lease is there is released.
                    engine.work_done(&id, outcome, true).await;
                });
            }
            return;
        }
    }
}
