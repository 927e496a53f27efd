//! Standing access: what a subject can already do downstream without any grant.
//! A JIT grant on top of a powerful base identity reduces nothing, so the host
//! asks the connector (`standing-access`) at request time — the findings are
//! policy context and decision evidence — and keeps asking: every subject seen in
//! a request within [`SEEN_WITHIN`] is checked again every [`SCAN_EVERY`]
//! ([`spawn`]), or when an operator asks ([`scan`]). A finding not recorded
//! before for that subject and connector is audited (`standing.found`) and
//! alerted (`standing-access`); `ebb_standing_findings{connector}` counts them.
//!
//! What was found is host state (`standing/<connector>\0<subject>` in the store),
//! so it survives a restart and a finding is announced once, not on every scan.

use crate::lifecycle::Lifecycle;
use crate::registry::{Pool, Slot};
use ebb_core::audit::NewEvent;
use ebb_core::contract::{Subject, Timestamp};
use ebb_core::store;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Duration;

/// How often the subjects seen recently are checked again.
pub const SCAN_EVERY: Duration = Duration::from_secs(3600);
/// Subjects whose last request is older than this are no longer checked.
pub const SEEN_WITHIN: Duration = Duration::from_secs(7 * 24 * 3600);

const PREFIX: &str = "standing/";

/// What the connector said about a subject's standing access.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Standing {
    /// The findings; `None` when not known.
    pub findings: Option<Vec<String>>,
    /// Why not known: the connector does not report standing access, or failed to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unknown_because: Option<String>,
}

impl Standing {
    /// Asks `slot`'s connector about `subject`, on the request pool.
    pub async fn of(slot: &Slot, subject: &Subject) -> Self {
        if !slot.connector().info().capabilities.reports_standing_access {
            return Self::unknown("the connector does not report standing access");
        }
        match slot
            .call(Pool::Request)
            .await
            .standing_access(subject)
            .await
        {
            Ok(found) => Self {
                findings: Some(found.into_iter().map(|r| r.detail).collect()),
                unknown_because: None,
            },
            Err(e) => Self::unknown(&format!("standing-access failed: {e}")),
        }
    }

    pub fn unknown(why: &str) -> Self {
        Self {
            findings: None,
            unknown_because: Some(why.to_owned()),
        }
    }
}

/// One subject's standing access at one connector, as last checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Entry {
    pub connector: String,
    pub subject: Subject,
    /// When the subject last asked for a grant here (ms since the Unix epoch).
    pub seen_at: Timestamp,
    /// When its standing access was last checked.
    pub checked_at: Timestamp,
    #[serde(flatten)]
    pub standing: Standing,
}

fn key(connector: &str, subject: &str) -> String {
    format!("{PREFIX}{connector}\0{subject}")
}

/// Every recorded entry, by connector then subject.
pub async fn entries(store: &dyn store::Store) -> store::Result<Vec<Entry>> {
    let mut out = Vec::new();
    for (key, value) in store.states(PREFIX).await? {
        match serde_json::from_slice::<Entry>(&value) {
            Ok(entry) => out.push(entry),
            Err(e) => tracing::error!(key, error = %e, "unreadable standing-access entry"),
        }
    }
    Ok(out)
}

/// Records what a check found for `subject` at `connector` (a request, when
/// `seen` is true); a finding not recorded before is audited and alerted. Returns
/// the new findings.
pub async fn record(
    lifecycle: &Lifecycle,
    connector: &str,
    subject: &Subject,
    standing: &Standing,
    seen: bool,
) -> store::Result<Vec<String>> {
    let store = lifecycle.store();
    let now = lifecycle.clock().now_ms();
    let k = key(connector, &subject.id);
    let before: Option<Entry> = store
        .states(&k)
        .await?
        .into_iter()
        .find(|(key, _)| *key == k)
        .and_then(|(_, v)| serde_json::from_slice(&v).ok());
    let known: Vec<String> = before
        .as_ref()
        .and_then(|e| e.standing.findings.clone())
        .unwrap_or_default();
    // An unknown answer keeps what was known: a connector outage is no finding.
    let standing = match (&standing.findings, &before) {
        (None, Some(before)) if before.standing.findings.is_some() => Standing {
            findings: before.standing.findings.clone(),
            unknown_because: standing.unknown_because.clone(),
        },
        _ => standing.clone(),
    };
    let new: Vec<String> = standing
        .findings
        .iter()
        .flatten()
        .filter(|f| !known.contains(f))
        .cloned()
        .collect();
    let entry = Entry {
        connector: connector.to_owned(),
        subject: subject.clone(),
        seen_at: if seen {
            now
        } else {
            before.as_ref().map_or(now, |e| e.seen_at)
        },
        checked_at: now,
        standing,
    };
    let bytes = serde_json::to_vec(&entry).map_err(|e| store::Error::Storage {
        what: "encoding a standing-access entry",
        source: Box::new(e),
    })?;
    store.put_state(&k, Some(&bytes)).await?;
    if !new.is_empty() {
        lifecycle
            .audit_log()
            .note(NewEvent::new("standing.found", "ebb").detail(json!({
                "connector": connector,
                "subject": subject.id,
                "findings": new,
            })))
            .await;
        lifecycle.alert(json!({
            "kind": "standing-access",
            "connector": connector,
            "subject": subject.id,
            "findings": new,
        }));
        tracing::warn!(connector, subject = %subject.id, new = new.len(), "new standing access found");
    }
    Ok(new)
}

/// Checks every recorded subject seen within `within` again (all of them with
/// `None`), records what was found, and makes it durable. Subjects of connectors
/// no longer loaded are skipped.
pub async fn scan(lifecycle: &Lifecycle, within: Option<Duration>) -> store::Result<Vec<Entry>> {
    let now = lifecycle.clock().now_ms();
    let since = within.map_or(0, |w| {
        now.saturating_sub(u64::try_from(w.as_millis()).unwrap_or(u64::MAX))
    });
    for entry in entries(lifecycle.store().as_ref()).await? {
        if entry.seen_at < since {
            continue;
        }
        let Some(slot) = lifecycle.registry().get(&entry.connector) else {
            continue;
        };
        let standing = Standing::of(&slot, &entry.subject).await;
        record(
            lifecycle,
            &entry.connector,
            &entry.subject,
            &standing,
            false,
        )
        .await?;
    }
    lifecycle.store().sync().await?;
    let all = entries(lifecycle.store().as_ref()).await?;
    let mut per_connector: BTreeMap<&str, usize> = BTreeMap::new();
    for entry in &all {
        *per_connector.entry(&entry.connector).or_default() +=
            entry.standing.findings.as_ref().map_or(0, Vec::len);
    }
    for (connector, n) in per_connector {
        #[expect(clippy::cast_precision_loss, reason = "a gauge of finding counts")]
        metrics::gauge!("ebb_standing_findings", "connector" => connector.to_owned()).set(n as f64);
    }
    Ok(all)
}

/// Scans the subjects seen within [`SEEN_WITHIN`] every [`SCAN_EVERY`].
pub fn spawn(lifecycle: Lifecycle) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(SCAN_EVERY).await;
            if let Err(e) = scan(&lifecycle, Some(SEEN_WITHIN)).await {
                tracing::error!(error = %e, "the standing-access scan failed");
            }
        }
    })
}
