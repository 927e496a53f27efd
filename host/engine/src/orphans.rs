//! Orphans: what a connector's naming scheme says Ebb created downstream (its
//! `inventory`) with no live grant behind it — a role left by a grant that was
//! verified and came back, one made by hand under Ebb's name, one a lost store no
//! longer knows. A grant is live while something of it may exist downstream
//! ([`GrantState::may_have_access`]); anything else with an inventory item is an
//! orphan.
//!
//! [`scan`] asks every loaded connector that has `inventory` (0.2.0 connectors; a
//! 0.1.0 one is skipped and says so), records what it found as host state
//! (`orphans/<connector>\0<grant id>`), audits (`orphan.found`) and alerts
//! (`orphan`) each orphan once, and sets `ebb_orphans{connector}`. Where the
//! connector's lifecycle says `orphans = "revoke"`, each orphan is revoked by id and
//! verified (`orphan.revoked`, with the verdict). [`spawn`] scans every
//! [`SCAN_EVERY`].

use crate::config::OrphanAction;
use crate::lifecycle::Lifecycle;
use crate::registry::{Pool, Slot};
use ebb_core::audit::NewEvent;
use ebb_core::contract::{Grant, InventoryItem, Subject, SubjectKind, Timestamp, Verdict};
use ebb_core::store;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::time::Duration;

/// How often every connector's inventory is compared with the grants.
pub const SCAN_EVERY: Duration = Duration::from_secs(3600);

const PREFIX: &str = "orphans/";

/// Something downstream under Ebb's naming scheme with no live grant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Orphan {
    pub connector: String,
    #[serde(flatten)]
    pub item: InventoryItem,
    /// The state of the grant it was made for, if the store knows it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grant_state: Option<String>,
    /// When a scan first found it (ms since the Unix epoch).
    pub found_at: Timestamp,
    /// When Ebb last revoked it by id (connectors with `orphans = "revoke"`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<Timestamp>,
    /// What verification said after that revoke: `revoked`, or the residue.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verdict: Option<String>,
}

/// What one scan did at one connector.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Scanned {
    pub connector: String,
    /// Items the inventory listed, orphans or not.
    pub listed: usize,
    /// Why this connector was not scanned (no `inventory`, or it failed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped_because: Option<String>,
}

/// The result of [`scan`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Report {
    pub connectors: Vec<Scanned>,
    /// Every orphan known after the scan.
    pub orphans: Vec<Orphan>,
}

fn key(connector: &str, grant_id: &str) -> String {
    format!("{PREFIX}{connector}\0{grant_id}")
}

/// Every recorded orphan, by connector then grant id.
pub async fn entries(store: &dyn store::Store) -> store::Result<Vec<Orphan>> {
    let mut out = Vec::new();
    for (key, value) in store.states(PREFIX).await? {
        match serde_json::from_slice::<Orphan>(&value) {
            Ok(orphan) => out.push(orphan),
            Err(e) => tracing::error!(key, error = %e, "unreadable orphan entry"),
        }
    }
    Ok(out)
}

async fn put(store: &dyn store::Store, orphan: &Orphan) -> store::Result<()> {
    let bytes = serde_json::to_vec(orphan).map_err(|e| store::Error::Storage {
        what: "encoding an orphan entry",
        source: Box::new(e),
    })?;
    store
        .put_state(&key(&orphan.connector, &orphan.item.grant_id), Some(&bytes))
        .await
}

/// Compares every loaded connector's inventory with the grants, records and
/// announces new orphans, revokes them where configured, and forgets the ones that
/// are gone. Connectors whose inventory fails keep what was known about them.
pub async fn scan(lifecycle: &Lifecycle) -> store::Result<Report> {
    let store = lifecycle.store();
    let mut scanned = Vec::new();
    // What earlier scans found, read once; each connector's entries are its own.
    let recorded = entries(store.as_ref()).await?;
    for slot in lifecycle.registry().all() {
        let connector = slot.name().to_owned();
        let items = match slot.call(Pool::Background).await.inventory().await {
            Ok(items) => items,
            Err(e) => {
                scanned.push(Scanned {
                    connector,
                    listed: 0,
                    skipped_because: Some(e.to_string()),
                });
                continue;
            }
        };
        let known: Vec<Orphan> = recorded
            .iter()
            .filter(|o| o.connector == connector)
            .cloned()
            .collect();
        let mut orphans = Vec::new();
        for item in &items {
            if let Some(orphan) = check(lifecycle, &connector, item, &known).await? {
                orphans.push(orphan);
            }
        }
        // Gone downstream (or live again): forgotten.
        for old in &known {
            if !orphans.iter().any(|o| o.item.grant_id == old.item.grant_id) {
                store
                    .put_state(&key(&connector, &old.item.grant_id), None)
                    .await?;
            }
        }
        if slot.policy().orphans == OrphanAction::Revoke {
            for orphan in &mut orphans {
                revoke(lifecycle, &slot, orphan).await;
                put(store.as_ref(), orphan).await?;
            }
        }
        #[expect(clippy::cast_precision_loss, reason = "a gauge of orphan counts")]
        metrics::gauge!("ebb_orphans", "connector" => connector.clone()).set(orphans.len() as f64);
        scanned.push(Scanned {
            connector,
            listed: items.len(),
            skipped_because: None,
        });
    }
    store.sync().await?;
    Ok(Report {
        connectors: scanned,
        orphans: entries(store.as_ref()).await?,
    })
}

/// The orphan `item` is, if it is one; a new one is recorded, audited and alerted.
async fn check(
    lifecycle: &Lifecycle,
    connector: &str,
    item: &InventoryItem,
    known: &[Orphan],
) -> store::Result<Option<Orphan>> {
    let store = lifecycle.store();
    // Names are case-folded downstream; grant ids are ULIDs, case-insensitive.
    let record = match store.get(&item.grant_id).await? {
        Some(r) => Some(r),
        None => store.get(&item.grant_id.to_ascii_uppercase()).await?,
    };
    // Grant ids are unique across connectors: two instances lent the same
    // database both list a live grant's role, and neither may call it an orphan.
    if let Some(r) = &record
        && r.state.may_have_access()
    {
        return Ok(None);
    }
    if let Some(old) = known.iter().find(|o| o.item.grant_id == item.grant_id) {
        return Ok(Some(old.clone()));
    }
    let orphan = Orphan {
        connector: connector.to_owned(),
        item: item.clone(),
        grant_state: record.as_ref().map(|r| r.state.to_string()),
        found_at: lifecycle.clock().now_ms(),
        revoked_at: None,
        verdict: None,
    };
    put(store.as_ref(), &orphan).await?;
    let detail = json!({
        "connector": connector,
        "grant": item.grant_id,
        "what": item.detail,
        "location": item.location,
        "grant_state": orphan.grant_state,
    });
    lifecycle
        .audit_log()
        .note(NewEvent::new("orphan.found", "ebb").detail(detail.clone()))
        .await;
    let mut alert = detail;
    alert["kind"] = json!("orphan");
    lifecycle.alert(alert);
    tracing::warn!(connector, grant = %item.grant_id, "orphan found downstream");
    Ok(Some(orphan))
}

/// Revokes `orphan` by its grant id (the stored grant when there is one) and asks
/// for the verdict; both go into the orphan's entry and the audit log.
async fn revoke(lifecycle: &Lifecycle, slot: &Slot, orphan: &mut Orphan) {
    let now = lifecycle.clock().now_ms();
    let grant = lifecycle
        .store()
        .get(&orphan.item.grant_id)
        .await
        .ok()
        .flatten()
        .map_or_else(
            || Grant {
                id: orphan.item.grant_id.clone(),
                subject: Subject {
                    id: "unknown".into(),
                    kind: SubjectKind::Workload,
                    claims: Vec::new(),
                },
                permissions: Vec::new(),
                not_after: now,
                task: "orphan found by Ebb's inventory scan".into(),
            },
            |r| r.grant,
        );
    let connector = slot.call(Pool::Background).await;
    let verdict = match connector.revoke(&grant, None, None).await {
        Err(e) => format!("revoke failed: {e}"),
        Ok(()) => match connector.verify_revoked(&grant, None, None).await {
            Ok(Verdict::Revoked) => "revoked".to_owned(),
            Ok(Verdict::Residual(residue)) => format!(
                "residual: {}",
                residue
                    .iter()
                    .map(|r| r.detail.as_str())
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
            Err(e) => format!("verify-revoked failed: {e}"),
        },
    };
    lifecycle
        .audit_log()
        .note(NewEvent::new("orphan.revoked", "ebb").detail(json!({
            "connector": orphan.connector,
            "grant": orphan.item.grant_id,
            "what": orphan.item.detail,
            "verdict": verdict,
        })))
        .await;
    tracing::info!(connector = %orphan.connector, grant = %orphan.item.grant_id, %verdict, "orphan revoked by id");
    orphan.revoked_at = Some(now);
    orphan.verdict = Some(verdict);
}

/// Scans every [`SCAN_EVERY`].
pub fn spawn(lifecycle: Lifecycle) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(SCAN_EVERY).await;
            if let Err(e) = scan(&lifecycle).await {
                tracing::error!(error = %e, "the orphan scan failed");
            }
        }
    })
}
