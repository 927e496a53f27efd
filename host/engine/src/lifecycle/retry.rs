//! Failure, residue and escalation: retries with jittered backoff, escalation past
//! the attempt budget (alerted, still retried).

use super::*;

impl Lifecycle {
    pub(super) async fn found_residue(
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
        let record = self
            .transition(
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
            )
            .await?;
        if escalate {
            return self
                .escalate(
                    record,
                    "access remains after repeated revocation",
                    Some(version),
                )
                .await;
        }
        Ok(record)
    }

    /// A failed step: retry with backoff, or escalate past the budget (and retry
    /// anyway, at the slowest pace).
    /// `version` is the connector version whose call failed, if one was made.
    pub(super) async fn failed(
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
            return self.escalate(r, error, version).await;
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
        ).await
    }

    pub(super) async fn escalate(
        &self,
        record: GrantRecord,
        why: &str,
        version: Option<&str>,
    ) -> Result<GrantRecord> {
        let now = self.now();
        let first = record.escalated_at.is_none();
        if first {
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
        let record = self
            .transition(
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
            )
            .await?;
        if let (Some(alert), Some(alerts)) = (alert, self.inner.alerts.get()) {
            alerts.send(alert);
        }
        Ok(record)
    }
}
