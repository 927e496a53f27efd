//! Standing access: what subjects can already do downstream without a grant
//! (see `ebb_engine::standing`). Operators and auditors read it; operators scan.

use super::AppState;
use super::auth::Principal;
use super::error::{ApiError, ErrorBody};
use axum::Json;
use axum::extract::State;
use ebb_engine::config::Role;
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
    principal.require(
        &state,
        &[Role::Operator, Role::Auditor],
        "read standing access",
    )?;
    Ok(Json(standing::entries(state.lifecycle.store().as_ref())?))
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
    principal.require(&state, &[Role::Operator], "scan standing access")?;
    Ok(Json(standing::scan(&state.lifecycle, None).await?))
}
