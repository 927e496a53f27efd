//! [`AuditLog`]: the one way the lifecycle, the loader and the API append audit
//! events that are not grant transitions (transitions are written by
//! `Store::commit`, atomically with the change they explain).
//!
//! Two verbs, and no third habit:
//! - [`AuditLog::record`] appends and makes the event durable before it returns;
//!   for decisions and changes whose acknowledgement promises the record (a policy
//!   reload, an anomaly report, a connector change, a break-glass alert).
//! - [`AuditLog::note`] appends without waiting for the flush (the next group commit
//!   makes it durable); for refusals on paths that answer the caller regardless
//!   (authentication, authorization). A failure to append is never dropped: it is
//!   logged and counted in `ebb_audit_write_errors_total`.

use ebb_core::audit::{AuditEvent, NewEvent};
use ebb_core::store::{self, Store};
use std::sync::Arc;

/// Appends audit events to the store's chain. Cheap to clone.
#[derive(Clone, Debug)]
pub struct AuditLog {
    store: Arc<dyn Store>,
}

impl AuditLog {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }

    /// Appends `event` and waits until it is durable.
    pub async fn record(&self, event: NewEvent) -> Result<AuditEvent, store::Error> {
        let kind = event.kind.clone();
        let appended = self
            .store
            .append_audit(event)
            .await
            .inspect_err(|e| failed(&kind, e))?;
        self.store.sync().await.inspect_err(|e| failed(&kind, e))?;
        Ok(appended)
    }

    /// Appends `event`; the next group commit makes it durable. A failure is logged
    /// and counted, never silently dropped, and never fails the caller's answer.
    pub async fn note(&self, event: NewEvent) {
        let kind = event.kind.clone();
        if let Err(e) = self.store.append_audit(event).await {
            failed(&kind, &e);
        }
    }
}

fn failed(kind: &str, e: &store::Error) {
    tracing::error!(kind, error = %e, "could not write an audit event");
    metrics::counter!("ebb_audit_write_errors_total").increment(1);
}
