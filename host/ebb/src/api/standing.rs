//! Standing access: what subjects can already do downstream without a grant
//! (see `ebb_engine::standing`), and orphans: what Ebb's naming scheme finds
//! downstream with no live grant (see `ebb_engine::orphans`). Operators and
//! auditors read them; operators scan.

use super::AppState;
use super::auth::Principal;
use super::error::{ApiError, ErrorBody};
use axum::Json;
use axum::extract::State;
use ebb_engine::config::Role;
use ebb_engine::orphans::{self, Orphan, Report};
use ebb_engine::standing::{self, Entry};

/// The standing access found for every subject seen in a request, as last checked.
#[utoipa::path(get, operation_id = "list_standing", path = "/v1/standing", tag = "approval",
    security(("bearer" = [])),
    responses(
        (status = 200, body = Vec<Entry>),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
    ))]
pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<Vec<Entry>>, ApiError> {
    principal
        .require(
            &state,
            &[Role::Operator, Role::Auditor],
            "read standing access",
        )
        .await?;
    Ok(Json(
        standing::entries(state.lifecycle.store().as_ref()).await?,
    ))
}

/// Checks every recorded subject's standing access again now; new findings are
/// audited (`standing.found`) and alerted.
#[utoipa::path(post, operation_id = "scan_standing", path = "/v1/standing/scan", tag = "approval",
    security(("bearer" = [])),
    responses(
        (status = 200, body = Vec<Entry>),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
    ))]
pub async fn scan(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<Vec<Entry>>, ApiError> {
    principal
        .require(&state, &[Role::Operator], "scan standing access")
        .await?;
    Ok(Json(standing::scan(&state.lifecycle, None).await?))
}

/// The orphans found by the last scans: items of a connector's inventory that no
/// live grant accounts for.
#[utoipa::path(get, operation_id = "list_orphans", path = "/v1/orphans", tag = "approval",
    security(("bearer" = [])),
    responses(
        (status = 200, body = Vec<Orphan>),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
    ))]
pub async fn orphans(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<Vec<Orphan>>, ApiError> {
    principal
        .require(&state, &[Role::Operator, Role::Auditor], "read orphans")
        .await?;
    Ok(Json(
        orphans::entries(state.lifecycle.store().as_ref()).await?,
    ))
}

/// Compares every connector's inventory with the grants now; new orphans are
/// audited (`orphan.found`), alerted, and revoked by id where configured.
#[utoipa::path(post, operation_id = "scan_orphans", path = "/v1/orphans/scan", tag = "approval",
    security(("bearer" = [])),
    responses(
        (status = 200, body = Report),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
    ))]
pub async fn scan_orphans(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<Report>, ApiError> {
    principal
        .require(&state, &[Role::Operator], "scan for orphans")
        .await?;
    Ok(Json(orphans::scan(&state.lifecycle).await?))
}
