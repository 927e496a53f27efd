//! Audit, health, metrics.

use super::error::{ErrorBody, rejection};
use super::{ApiError, AppState, Principal};
use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use ebb_core::audit::{AuditEvent, ChainReport};
use ebb_core::store::AuditQuery;
use ebb_engine::config::Role;
use serde::Deserialize;

/// `GET /v1/audit` filters.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditParams {
    /// Only this grant's events.
    pub grant: Option<String>,
    /// Only events after this sequence number.
    #[param(minimum = 0)]
    pub after: Option<i64>,
    /// Events per page (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u16>,
}

/// Reads the audit log, oldest first.
#[utoipa::path(get, operation_id = "read_audit", path = "/v1/audit", tag = "audit",
    security(("bearer" = [])),
    params(AuditParams),
    responses(
        (status = 200, body = Vec<AuditEvent>),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
    ))]
pub async fn audit(
    State(state): State<AppState>,
    principal: Principal,
    query: Result<Query<AuditParams>, QueryRejection>,
) -> Result<Json<Vec<AuditEvent>>, ApiError> {
    principal
        .require(
            &state,
            &[Role::Auditor, Role::Operator],
            "read the audit log",
        )
        .await?;
    let Query(q) = query.map_err(rejection)?;
    let events = state
        .lifecycle
        .store()
        .audit(&AuditQuery {
            grant_id: q.grant,
            after_seq: u64::try_from(q.after.unwrap_or(0))
                .map_err(|_| ApiError::BadRequest("after must not be negative".into()))?,
            limit: super::grants::page_size(q.limit)?,
        })
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(Json(events))
}

/// Verifies the whole audit chain: keyed hashes, order, gaps and the recorded head.
#[utoipa::path(get, operation_id = "verify_audit", path = "/v1/audit/verify", tag = "audit",
    security(("bearer" = [])),
    responses(
        (status = 200, body = ChainReport),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
    ))]
pub async fn verify_audit(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<ChainReport>, ApiError> {
    principal
        .require(
            &state,
            &[Role::Auditor, Role::Operator],
            "verify the audit log",
        )
        .await?;
    let report = state
        .lifecycle
        .store()
        .verify_audit()
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(Json(report))
}

/// Alive.
#[utoipa::path(get, operation_id = "healthz", path = "/healthz", tag = "ops",
    responses((status = 200, content_type = "text/plain", body = String)))]
pub async fn healthz() -> &'static str {
    "ok"
}

/// Ready when the store answers a read and its flushes to disk succeed.
#[utoipa::path(get, operation_id = "readyz", path = "/readyz", tag = "ops",
    responses(
        (status = 200, content_type = "text/plain", body = String),
        (status = 503, body = ErrorBody),
    ))]
pub async fn readyz(State(state): State<AppState>) -> Result<&'static str, ApiError> {
    state.lifecycle.store().health().await.map_err(|e| {
        let why = ebb_core::error_chain(&e);
        tracing::error!(error = %why, "not ready: the store cannot serve");
        ApiError::Unavailable(format!("the store cannot serve: {why}"))
    })?;
    Ok("ready")
}

/// Prometheus exposition. Counts only: no grant ids, subjects or secrets.
#[utoipa::path(get, operation_id = "metrics", path = "/metrics", tag = "ops",
    responses(
        (status = 200, content_type = "text/plain", body = String),
        (status = 404, body = ErrorBody),
    ))]
pub async fn metrics(State(state): State<AppState>) -> Result<String, ApiError> {
    let handle = state
        .metrics
        .as_ref()
        .ok_or_else(|| ApiError::NotFound("metrics are not enabled on this host".into()))?;
    let store = state.lifecycle.store();
    let counts = store
        .counts()
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let escalations = store
        .escalations()
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(crate::metrics::render(handle, &counts, &escalations))
}

pub async fn not_found() -> (StatusCode, Json<ErrorBody>) {
    (
        StatusCode::NOT_FOUND,
        Json(ErrorBody::new("not-found", "no such endpoint".into())),
    )
}

/// The OpenAPI document of this API.
pub async fn openapi() -> Json<&'static serde_json::Value> {
    Json(super::openapi())
}
