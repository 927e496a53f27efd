//! The hosts that serve one store: each records what it serves (its heartbeat),
//! and `GET /v1/cluster` lists them and says where they disagree.

use super::error::ErrorBody;
use super::{ApiError, AppState, Principal};
use axum::Json;
use axum::extract::State;
use ebb_core::store::HostStatus;
use ebb_engine::config::Role;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// How often a host records its status.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// A host silent for this long is reported as not alive.
const SILENT_MS: u64 = 5_000;

/// Who this host is among the hosts of its store.
#[derive(Debug, Clone)]
pub struct Membership {
    /// Its name in leases (`[store] host-id`).
    pub host_id: String,
    pub started_at: u64,
    /// Whether the store is shared (PostgreSQL) or this host's own.
    pub shared: bool,
}

impl Membership {
    /// A host with a store of its own.
    pub fn local(host_id: &str, started_at: u64) -> Self {
        Self {
            host_id: host_id.to_owned(),
            started_at,
            shared: false,
        }
    }
}

/// One host, as it last said, and whether it still speaks.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ClusterHost {
    #[serde(flatten)]
    pub status: HostStatus,
    /// Heard from within the last five seconds.
    pub alive: bool,
}

/// `GET /v1/cluster`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Cluster {
    /// `shared` (PostgreSQL) or `local` (the embedded store: this host alone).
    pub store: String,
    /// The host that answered.
    pub this_host: String,
    pub hosts: Vec<ClusterHost>,
    /// Whether every live host runs the same version, serves the same connector
    /// versions and holds the same policies.
    pub agree: bool,
    /// What the live hosts disagree on, one line each.
    pub disagreements: Vec<String>,
}

/// What this host serves now.
pub fn status(state: &AppState, now: u64) -> HostStatus {
    let connectors = state
        .lifecycle
        .registry()
        .all()
        .iter()
        .map(|slot| {
            (
                slot.name().to_owned(),
                slot.connector().digest().to_string(),
            )
        })
        .collect();
    HostStatus {
        id: state.membership.host_id.clone(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        started_at: state.membership.started_at,
        heartbeat_at: now,
        connectors,
        policies: state.approval.policies().map(|p| p.digest()),
    }
}

/// Records this host's status every [`HEARTBEAT`] while the host serves.
pub fn spawn_heartbeat(state: AppState) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(HEARTBEAT);
        loop {
            tick.tick().await;
            let now = state.lifecycle.clock().now_ms();
            if let Err(e) = state
                .lifecycle
                .store()
                .heartbeat(&status(&state, now))
                .await
            {
                tracing::warn!(error = %ebb_core::error_chain(&e), "recording this host's heartbeat failed");
            }
        }
    })
}

/// Keeps the plugins folder and the policy files alike on every host of a shared
/// store (`ebb_engine::shared`): what changes here goes to the others within a
/// second or two; what comes from them is loaded (`reconcile`) or reloaded.
pub fn spawn_sync(
    state: AppState,
    plugins: Option<std::path::PathBuf>,
    policies: Vec<std::path::PathBuf>,
) -> tokio::task::JoinHandle<()> {
    use ebb_engine::shared::FolderSync;
    let store = state.lifecycle.store().clone();
    let mut plugins = plugins.map(|dir| FolderSync::new(store.clone(), "plugins", dir, None));
    let mut policies: Vec<FolderSync> = policies
        .iter()
        .enumerate()
        .map(|(i, path)| {
            let (dir, only) = FolderSync::policy_target(path);
            let area = if i == 0 {
                "policies"
            } else {
                "policies-break-glass"
            };
            FolderSync::new(store.clone(), area, dir, only)
        })
        .collect();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(HEARTBEAT);
        loop {
            tick.tick().await;
            if let Some(sync) = &mut plugins {
                match sync.round().await {
                    Ok(true) => state.loader.reconcile().await,
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(error = %ebb_core::error_chain(&e), "syncing the plugins folder failed")
                    }
                }
            }
            let mut reload = false;
            for sync in &mut policies {
                match sync.round().await {
                    Ok(changed) => reload |= changed,
                    Err(e) => {
                        tracing::warn!(error = %ebb_core::error_chain(&e), "syncing the policies failed")
                    }
                }
            }
            if reload && let Ok(ids) = super::policy::reload(&state, "cluster-sync").await {
                tracing::info!(
                    policies = ids.len(),
                    "policies reloaded from another host's change"
                );
            }
        }
    })
}

/// What the live hosts disagree on.
fn disagreements(hosts: &[ClusterHost]) -> Vec<String> {
    let live: Vec<&HostStatus> = hosts
        .iter()
        .filter(|h| h.alive)
        .map(|h| &h.status)
        .collect();
    let mut found = Vec::new();
    let mut differ = |what: String, by_host: BTreeMap<&str, String>| {
        let mut values: Vec<&String> = by_host.values().collect();
        values.sort();
        values.dedup();
        if values.len() > 1 {
            let each: Vec<String> = by_host.iter().map(|(h, v)| format!("{h}: {v}")).collect();
            found.push(format!("{what} differs: {}", each.join(", ")));
        }
    };
    differ(
        "version".into(),
        live.iter()
            .map(|h| (h.id.as_str(), h.version.clone()))
            .collect(),
    );
    differ(
        "policies".into(),
        live.iter()
            .map(|h| {
                (
                    h.id.as_str(),
                    h.policies.clone().unwrap_or_else(|| "none".into()),
                )
            })
            .collect(),
    );
    let names: std::collections::BTreeSet<&String> =
        live.iter().flat_map(|h| h.connectors.keys()).collect();
    for name in names {
        differ(
            format!("connector {name}"),
            live.iter()
                .map(|h| {
                    let digest = h.connectors.get(name).cloned();
                    (h.id.as_str(), digest.unwrap_or_else(|| "not loaded".into()))
                })
                .collect(),
        );
    }
    found
}

/// The hosts serving this store: version, connector versions, policies, last
/// heartbeat, and where the live ones disagree.
#[utoipa::path(get, operation_id = "cluster", path = "/v1/cluster", tag = "ops",
    security(("bearer" = [])),
    responses(
        (status = 200, body = Cluster),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
    ))]
pub async fn cluster(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<Cluster>, ApiError> {
    principal
        .require(
            &state,
            &[Role::Auditor, Role::Operator],
            "read the cluster's status",
        )
        .await?;
    let now = state.lifecycle.clock().now_ms();
    let mine = status(&state, now);
    let mut statuses = state
        .lifecycle
        .store()
        .hosts()
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    // This host as it is now, not as its last heartbeat said.
    statuses.retain(|h| h.id != mine.id);
    statuses.push(mine);
    statuses.sort_by(|a, b| a.id.cmp(&b.id));
    let hosts: Vec<ClusterHost> = statuses
        .into_iter()
        .map(|status| ClusterHost {
            alive: now.saturating_sub(status.heartbeat_at) <= SILENT_MS,
            status,
        })
        .collect();
    let disagreements = disagreements(&hosts);
    Ok(Json(Cluster {
        store: if state.membership.shared {
            "shared"
        } else {
            "local"
        }
        .into(),
        this_host: state.membership.host_id.clone(),
        agree: disagreements.is_empty(),
        disagreements,
        hosts,
    }))
}
