//! The admin API: axum, JSON, versioned under `/v1`.
//!
//! [`router`] builds the whole API from an [`AppState`], so tests drive it with
//! `tower::ServiceExt::oneshot` and no socket. Every route authenticates with a
//! bearer token ([`auth`]); every error is an [`ApiError`] with a stable JSON body.
//!
//! **Architecture invariant:** handlers call the lifecycle, never a connector or the
//! store's write path directly.

pub mod auth;
mod error;
mod grants;
mod ops;

pub use auth::{Principal, Tokens};
pub use error::ApiError;

use crate::lifecycle::Lifecycle;
use axum::Router;
use axum::routing::{get, post};
use std::sync::Arc;

/// What every handler can reach.
#[derive(Clone, Debug)]
pub struct AppState {
    pub lifecycle: Lifecycle,
    pub tokens: Arc<Tokens>,
    /// The Prometheus recorder's handle; `/metrics` answers 404 without one.
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
}

/// The whole API.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/grants", post(grants::request).get(grants::list))
        .route("/v1/grants/{id}", get(grants::get))
        .route("/v1/grants/{id}/report", get(grants::report))
        .route("/v1/grants/{id}/approve", post(grants::approve))
        .route("/v1/grants/{id}/deny", post(grants::deny))
        .route("/v1/grants/{id}/issue", post(grants::issue))
        .route("/v1/grants/{id}/complete", post(grants::complete))
        .route("/v1/grants/{id}/fail", post(grants::fail))
        .route("/v1/grants/{id}/revoke", post(grants::revoke))
        .route("/v1/connectors", get(ops::connectors))
        .route("/v1/connectors/{name}", get(ops::connector))
        .route("/v1/audit", get(ops::audit))
        .route("/v1/audit/verify", get(ops::verify_audit))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .fallback(ops::not_found)
        .with_state(state)
}

#[cfg(test)]
mod tests;
