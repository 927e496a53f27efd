//! The admin API: axum, JSON, versioned under `/v1`, described by an OpenAPI
//! document the host serves itself (`/v1/openapi.json`).
//!
//! [`router`] builds the whole API from an [`AppState`], so tests drive it with
//! `tower::ServiceExt::oneshot` and no socket. Every route but health, metrics and
//! the document authenticates with a bearer token ([`auth`]); every error is an
//! [`ApiError`] with a stable JSON body ([`ErrorBody`]).
//!
//! **Architecture invariant:** handlers call the lifecycle or the loader, never a
//! connector or the store's write path directly.

pub mod auth;
pub mod cluster;
pub(crate) mod connectors;
mod error;
mod extract;
pub(crate) mod grants;
pub mod guard;
pub(crate) mod ops;
pub mod policy;
pub(crate) mod standing;

pub use auth::{Principal, Tokens};
pub use error::{ApiError, ErrorBody};

use axum::Router;
use axum::routing::{get, post};
use ebb_engine::lifecycle::Lifecycle;
use ebb_engine::loader::Loader;
use std::sync::Arc;
use utoipa::OpenApi as _;

/// What every handler can reach.
#[derive(Clone, Debug)]
pub struct AppState {
    pub lifecycle: Lifecycle,
    pub loader: Arc<Loader>,
    /// Policies, break-glass rules, anomaly flags and alerts.
    pub approval: Arc<ebb_engine::approval::ApprovalGate>,
    /// Verifies tokens from identity providers, if any are configured.
    pub identity: Option<Arc<ebb_engine::identity::Verifier>>,
    pub tokens: Arc<Tokens>,
    /// Rate limits and aggregates refused calls ([`guard::Guard::start`]).
    pub guard: Arc<guard::Guard>,
    /// The Prometheus recorder's handle; `/metrics` answers 404 without one.
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// Who this host is among the hosts of its store (`/v1/cluster`).
    pub membership: Arc<cluster::Membership>,
}

/// The whole API.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/grants", post(grants::request).get(grants::list))
        .route("/v1/grants/break-glass", post(grants::break_glass))
        .route("/v1/grants/{id}", get(grants::get))
        .route("/v1/grants/{id}/report", get(grants::report))
        .route("/v1/grants/{id}/approve", post(grants::approve))
        .route("/v1/grants/{id}/deny", post(grants::deny))
        .route("/v1/grants/{id}/issue", post(grants::issue))
        .route("/v1/grants/{id}/complete", post(grants::complete))
        .route("/v1/grants/{id}/fail", post(grants::fail))
        .route("/v1/grants/{id}/revoke", post(grants::revoke))
        .route("/v1/connectors", get(connectors::list))
        .route(
            "/v1/connectors/{name}",
            get(connectors::get)
                .post(connectors::load)
                .delete(connectors::unload),
        )
        .route("/v1/connectors/{name}/reload", post(connectors::reload))
        .route("/v1/anomalies", post(policy::report_anomaly))
        .route("/v1/policies", get(policy::policies))
        .route("/v1/policies/reload", post(policy::reload_policies))
        .route("/v1/standing", get(standing::list))
        .route("/v1/standing/scan", post(standing::scan))
        .route("/v1/orphans", get(standing::orphans))
        .route("/v1/orphans/scan", post(standing::scan_orphans))
        .route("/v1/cluster", get(cluster::cluster))
        .route("/v1/audit", get(ops::audit))
        .route("/v1/audit/verify", get(ops::verify_audit))
        .route("/v1/openapi.json", get(ops::openapi))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .fallback(ops::not_found)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// The largest request body the API reads; larger ones are refused with 413.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Ebb admin API",
        description = "Just-in-time access that proves it is gone: request, approve, issue and end grants; \
                       load, upgrade and unload connectors; read and verify the audit log."
    ),
    paths(
        grants::request, grants::break_glass, grants::list, grants::get, grants::report, grants::approve,
        grants::deny, grants::issue, grants::complete, grants::fail, grants::revoke,
        connectors::list, connectors::get, connectors::load, connectors::reload,
        connectors::unload,
        policy::report_anomaly, policy::policies, policy::reload_policies,
        standing::list, standing::scan, standing::orphans, standing::scan_orphans,
        ops::audit, ops::verify_audit, ops::healthz, ops::readyz, ops::metrics,
        cluster::cluster,
    ),
    components(schemas(ErrorBody, connectors::LiveGrants)),
    modifiers(&BearerAuth),
    tags(
        (name = "grants", description = "The grant lifecycle"),
        (name = "connectors", description = "Connector instances: describe, load, reload, unload"),
        (name = "approval", description = "Policies and anomaly reports"),
        (name = "audit", description = "The tamper-evident audit log"),
        (name = "ops", description = "Health, metrics and the hosts of the store"),
    )
)]
struct ApiDoc;

/// Declares the bearer-token scheme the paths refer to.
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("An API token (see `ebb token new`)"))
                    .build(),
            ),
        );
    }
}

/// The OpenAPI document of the API, as JSON.
///
/// Links from a new grant to what can be done with it are added here, so clients
/// (and fuzzers) can follow a grant through its lifecycle. (utoipa 5.5's `Link`
/// serializes `operation_id` in snake case, which OpenAPI does not read.)
pub fn openapi() -> &'static serde_json::Value {
    static DOC: std::sync::OnceLock<serde_json::Value> = std::sync::OnceLock::new();
    DOC.get_or_init(|| {
        let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
        let links: serde_json::Map<String, serde_json::Value> = [
            "get_grant",
            "grant_report",
            "approve_grant",
            "deny_grant",
            "issue_grant",
            "complete_grant",
            "fail_grant",
            "revoke_grant",
        ]
        .into_iter()
        .map(|op| {
            (
                op.to_owned(),
                serde_json::json!({
                    "operationId": op,
                    "parameters": { "id": "$response.body#/grant/grant/id" },
                }),
            )
        })
        .collect();
        for status in ["201", "202"] {
            if let Some(response) =
                doc.pointer_mut(&format!("/paths/~1v1~1grants/post/responses/{status}"))
                && let Some(response) = response.as_object_mut()
            {
                response.insert("links".into(), links.clone().into());
            }
        }
        // What the server answers on any authenticated route (the guard's 429) and
        // any route with a body (the 64 KiB limit's 413), with the error body.
        if let Some(paths) = doc.get_mut("paths").and_then(|p| p.as_object_mut()) {
            for operation in paths.values_mut().filter_map(|p| p.as_object_mut()).flat_map(|p| p.values_mut()) {
                let has_body = operation.get("requestBody").is_some();
                let Some(responses) = operation.get_mut("responses").and_then(|r| r.as_object_mut()) else {
                    continue;
                };
                let Some(error) = responses.get("401").cloned() else {
                    continue;
                };
                let mut too_many = error.clone();
                too_many["description"] = "Too many refused requests from this client; retry after the Retry-After header".into();
                responses.entry("429").or_insert(too_many);
                if has_body {
                    let mut too_large = error;
                    too_large["description"] = "The request body is larger than the API reads".into();
                    responses.entry("413").or_insert(too_large);
                }
            }
        }
        doc
    })
}

#[cfg(test)]
pub(crate) mod tests;
