//! Connectors, audit, health.

use super::error::rejection;
use super::{ApiError, AppState, Principal};
use crate::audit::{AuditEvent, ChainReport};
use crate::config::Role;
use crate::connector::ConnectorInfo;
use crate::store::AuditQuery;
use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

/// A loaded connector instance.
#[derive(Debug, Serialize)]
pub struct ConnectorView {
    pub name: String,
    /// The sha256 of the component serving calls now.
    pub sha256: String,
    pub info: ConnectorInfo,
}

fn view(slot: &crate::registry::Slot) -> ConnectorView {
    let c = slot.connector();
    ConnectorView {
        name: slot.name().to_owned(),
        sha256: c.digest().to_string(),
        info: c.info().clone(),
    }
}

pub async fn connectors(State(state): State<AppState>, _p: Principal) -> Json<Vec<ConnectorView>> {
    Json(
        state
            .lifecycle
            .registry()
            .all()
            .iter()
            .map(|s| view(s))
            .collect(),
    )
}

pub async fn connector(
    State(state): State<AppState>,
    _p: Principal,
    Path(name): Path<String>,
) -> Result<Json<ConnectorView>, ApiError> {
    let slot = state
        .lifecycle
        .registry()
        .get(&name)
        .ok_or_else(|| ApiError::NotFound(format!("no connector named `{name}`")))?;
    Ok(Json(view(&slot)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditParams {
    pub grant: Option<String>,
    pub after: Option<u64>,
    pub limit: Option<usize>,
}

pub async fn audit(
    State(state): State<AppState>,
    principal: Principal,
    query: Result<Query<AuditParams>, QueryRejection>,
) -> Result<Json<Vec<AuditEvent>>, ApiError> {
    principal.require(
        &state,
        &[Role::Auditor, Role::Operator],
        "read the audit log",
    )?;
    let Query(q) = query.map_err(rejection)?;
    let events = state
        .lifecycle
        .store()
        .audit(&AuditQuery {
            grant_id: q.grant,
            after_seq: q.after.unwrap_or(0),
            limit: q.limit.unwrap_or(100).clamp(1, 1000),
        })
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(Json(events))
}

pub async fn verify_audit(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<ChainReport>, ApiError> {
    principal.require(
        &state,
        &[Role::Auditor, Role::Operator],
        "verify the audit log",
    )?;
    let store = state.lifecycle.store().clone();
    let report = tokio::task::spawn_blocking(move || store.verify_audit())
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(Json(report))
}

pub async fn healthz() -> &'static str {
    "ok"
}

/// Ready when the store answers.
pub async fn readyz(State(state): State<AppState>) -> Result<&'static str, ApiError> {
    state
        .lifecycle
        .store()
        .counts()
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok("ready")
}

/// Prometheus exposition. Counts only: no grant ids, subjects or secrets.
pub async fn metrics(State(state): State<AppState>) -> Result<String, ApiError> {
    let handle = state
        .metrics
        .as_ref()
        .ok_or_else(|| ApiError::NotFound("metrics are not enabled on this host".into()))?;
    let counts = state
        .lifecycle
        .store()
        .counts()
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(crate::metrics::render(handle, &counts))
}

pub async fn not_found() -> (StatusCode, Json<serde_json::Value>) {
    (
        StatusCode::NOT_FOUND,
        Json(
            serde_json::json!({ "error": { "code": "not-found", "message": "no such endpoint" } }),
        ),
    )
}
