//! `/v1/connectors`: list, describe, load, reload, unload.

use super::error::{ErrorBody, rejection};
use super::{ApiError, AppState, Principal};
use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use ebb_core::contract::ConnectorInfo;
use ebb_engine::config::Role;
use ebb_engine::loader::{LoadError, Reload, UnloadMode, Unloaded};
use ebb_engine::registry::Slot;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// A loaded connector instance.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConnectorView {
    pub name: String,
    /// The sha256 of the component serving new calls.
    pub sha256: String,
    pub info: ConnectorInfo,
    /// The `ebb:connector` version the component implements: `0.2.0`, or `0.1.0`
    /// (loaded and adapted).
    #[schema(value_type = String, example = "0.2.0")]
    pub contract: ebb_runtime::Contract,
    /// What the host adapts because the component's contract lacks it: for 0.1.0,
    /// `validate` (requests are checked against the declared actions only, so a bad
    /// resource fails at issue) and `inventory` (no orphan scan). Empty for 0.2.0.
    pub adapted: Vec<&'static str>,
    /// `config` (the configuration file), `plugins-dir` (the plugins folder, which
    /// the API writes to), or absent if loaded otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<&'static str>,
    /// Being unloaded: takes no new requests.
    pub draining: bool,
    /// Grants that still need this instance (only when asked for one instance).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub live_grants: Option<usize>,
}

fn view(state: &AppState, slot: &Slot, live_grants: Option<usize>) -> ConnectorView {
    let c = slot.connector();
    ConnectorView {
        name: slot.name().to_owned(),
        sha256: c.digest().to_string(),
        info: c.info().clone(),
        contract: c.contract(),
        adapted: c.contract().missing().to_vec(),
        source: state.loader.source(slot.name()),
        draining: slot.is_draining(),
        live_grants,
    }
}

impl From<LoadError> for ApiError {
    fn from(e: LoadError) -> Self {
        match e {
            LoadError::NotFound(_) => Self::NotFound(e.to_string()),
            LoadError::Exists(_) | LoadError::Conflict(_) => Self::Conflict(e.to_string()),
            LoadError::Invalid(_) | LoadError::Component { .. } => Self::BadRequest(e.to_string()),
            LoadError::Engine(e) => e.into(),
            LoadError::Io { .. } => Self::Internal(e.to_string()),
            LoadError::NotAllowed(_) => Self::Forbidden(e.to_string()),
            LoadError::Internal(_) => Self::Internal(e.to_string()),
        }
    }
}

/// Lists the loaded connector instances.
#[utoipa::path(get, operation_id = "list_connectors", path = "/v1/connectors", tag = "connectors",
    security(("bearer" = [])),
    responses(
        (status = 200, body = Vec<ConnectorView>),
        (status = 401, body = ErrorBody),
    ))]
pub async fn list(State(state): State<AppState>, _p: Principal) -> Json<Vec<ConnectorView>> {
    Json(
        state
            .lifecycle
            .registry()
            .all()
            .iter()
            .map(|s| view(&state, s, None))
            .collect(),
    )
}

/// Describes one instance: what `describe` answered, its version, and how many
/// grants still need it.
#[utoipa::path(get, operation_id = "get_connector", path = "/v1/connectors/{name}", tag = "connectors",
    security(("bearer" = [])),
    params(("name" = String, Path, description = "The instance name")),
    responses(
        (status = 200, body = ConnectorView),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
    ))]
pub async fn get(
    State(state): State<AppState>,
    _p: Principal,
    Path(name): Path<String>,
) -> Result<Json<ConnectorView>, ApiError> {
    let slot = state
        .lifecycle
        .registry()
        .get(&name)
        .ok_or_else(|| ApiError::NotFound(format!("no connector named `{name}`")))?;
    let live = state.loader.live(&name).await?;
    Ok(Json(view(&state, &slot, Some(live.len()))))
}

/// Loads a new instance. The body has the keys of a `[connectors.<name>]` table
/// (`component` relative to the plugins folder; secrets only as the names of host
/// environment variables that `plugins.lendable-env` lists: `dsn-env`, `url-env`,
/// `password-env`, a secret's `env`).
/// The component is validated before it serves anything, its sha256 is pinned, and
/// the instance is written to the plugins folder so that it survives a restart.
#[utoipa::path(post, operation_id = "load_connector", path = "/v1/connectors/{name}", tag = "connectors",
    security(("bearer" = [])),
    params(("name" = String, Path, description = "The new instance's name")),
    request_body(content = Object, description = "The keys of a [connectors.<name>] table, e.g. {\"component\": \"postgres.wasm\", \"config\": {...}, \"sql\": {\"main\": {\"dsn-env\": \"PG_DSN\"}}}"),
    responses(
        (status = 201, body = ConnectorView),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 409, body = ErrorBody),
    ))]
pub async fn load(
    State(state): State<AppState>,
    principal: Principal,
    Path(name): Path<String>,
    body: Result<Json<serde_json::Value>, JsonRejection>,
) -> Result<(StatusCode, Json<ConnectorView>), ApiError> {
    principal
        .require(&state, &[Role::Operator], "load connectors")
        .await?;
    let Json(body) = body.map_err(super::error::json_rejection)?;
    let slot = state.loader.load(&name, body, &principal.name).await?;
    Ok((StatusCode::CREATED, Json(view(&state, &slot, None))))
}

/// `POST /v1/connectors/{name}/reload`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReloadBody {
    /// A new component, relative to the plugins folder (plugins-folder instances only).
    #[serde(default)]
    pub component: Option<String>,
    /// The new version's sha256; the load fails if the component does not match.
    #[serde(default)]
    #[schema(pattern = "^[0-9a-fA-F]{64}$")]
    pub sha256: Option<String>,
}

/// The outcome of a reload.
#[derive(Debug, Serialize, ToSchema)]
pub struct Reloaded {
    pub connector: ConnectorView,
    /// The version that served calls before.
    pub previous_sha256: String,
}

/// Loads a new version of an instance and swaps it in: calls in flight finish on
/// the old version. Without a body the configured component is read again.
#[utoipa::path(post, operation_id = "reload_connector", path = "/v1/connectors/{name}/reload", tag = "connectors",
    security(("bearer" = [])),
    params(("name" = String, Path, description = "The instance name")),
    request_body(content = Option<ReloadBody>),
    responses(
        (status = 200, body = Reloaded),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody),
    ))]
pub async fn reload(
    State(state): State<AppState>,
    principal: Principal,
    Path(name): Path<String>,
    body: super::extract::Body,
) -> Result<Json<Reloaded>, ApiError> {
    principal
        .require(&state, &[Role::Operator], "reload connectors")
        .await?;
    let body: ReloadBody = super::extract::optional_object(body)?;
    if let Some(pin) = &body.sha256
        && !ebb_engine::config::is_sha256_hex(pin)
    {
        return Err(ApiError::BadRequest(format!(
            "sha256 must be 64 hex digits, got `{pin}`"
        )));
    }
    let (slot, previous) = state
        .loader
        .reload(
            &name,
            Reload {
                component: body.component,
                sha256: body.sha256,
            },
            &principal.name,
        )
        .await?;
    Ok(Json(Reloaded {
        connector: view(&state, &slot, None),
        previous_sha256: previous.to_string(),
    }))
}

/// What happens to live grants on unload.
#[derive(Debug, Clone, Copy, Default, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum LiveGrants {
    /// Refuse while any grant is live (the default).
    #[default]
    Refuse,
    /// Revoke them; the instance goes once every revocation is verified.
    Revoke,
    /// Hand them to the instance named by `to`.
    HandOver,
}

/// `DELETE /v1/connectors/{name}` parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UnloadParams {
    /// What to do with live grants.
    #[serde(default)]
    pub live: LiveGrants,
    /// With `live=hand-over`: the instance (of the same connector) to hand them to.
    pub to: Option<String>,
}

/// The outcome of an unload.
#[derive(Debug, Serialize, ToSchema)]
pub struct UnloadView {
    /// `unloaded`, or `draining` while its grants' revocations are verified.
    pub state: &'static str,
    /// Grants still live (draining only).
    pub live_grants: usize,
}

/// Unloads an instance. Refused while it has live grants, unless `live=revoke`
/// (answers 202 and unloads once every revocation is verified) or
/// `live=hand-over&to=<instance>`.
#[utoipa::path(delete, operation_id = "unload_connector", path = "/v1/connectors/{name}", tag = "connectors",
    security(("bearer" = [])),
    params(("name" = String, Path, description = "The instance name"), UnloadParams),
    responses(
        (status = 200, body = UnloadView),
        (status = 202, body = UnloadView),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody),
    ))]
pub async fn unload(
    State(state): State<AppState>,
    principal: Principal,
    Path(name): Path<String>,
    query: Result<Query<UnloadParams>, QueryRejection>,
) -> Result<(StatusCode, Json<UnloadView>), ApiError> {
    principal
        .require(&state, &[Role::Operator], "unload connectors")
        .await?;
    let Query(q) = query.map_err(rejection)?;
    let mode = match (q.live, q.to) {
        (LiveGrants::Refuse, None) => UnloadMode::Refuse,
        (LiveGrants::Revoke, None) => UnloadMode::Revoke,
        (LiveGrants::HandOver, Some(to)) => UnloadMode::HandOver(to),
        (LiveGrants::HandOver, None) => {
            return Err(ApiError::BadRequest(
                "live=hand-over needs to=<instance>".into(),
            ));
        }
        (_, Some(_)) => {
            return Err(ApiError::BadRequest(
                "`to` goes only with live=hand-over".into(),
            ));
        }
    };
    Ok(
        match state.loader.unload(&name, mode, &principal.name).await? {
            Unloaded::Removed => (
                StatusCode::OK,
                Json(UnloadView {
                    state: "unloaded",
                    live_grants: 0,
                }),
            ),
            Unloaded::Draining { live } => (
                StatusCode::ACCEPTED,
                Json(UnloadView {
                    state: "draining",
                    live_grants: live,
                }),
            ),
        },
    )
}
