//! The web console: server-rendered pages for approvers, operators and auditors,
//! under `/console`, served by the host itself.
//!
//! - Pages are [askama] templates (`host/ebb/templates/`), checked at compile time;
//!   the stylesheet and one small script of ours (`host/ebb/assets/`) are embedded
//!   in the binary. Everything works without the script; with it, pages update
//!   themselves when a grant changes ([`events`], server-sent events) and live
//!   grants count down to `not-after`.
//! - People sign in with OpenID Connect (authorization code + PKCE, [`oidc`]) or,
//!   for the demo, with an API token ([`session`]). A session is a random cookie
//!   (HttpOnly, SameSite=Lax, Secure over https) naming server-side state; every
//!   state change is a POST that must carry the session's CSRF token and come from
//!   the console's own origin.
//! - Every action calls the admin API's own handler with the signed-in person's
//!   [`Principal`]: the console can do nothing the API would not let that person
//!   do, and the audit log records the same identity either way.
//! - Every response carries a Content-Security-Policy without inline script.
//!
//! **Invariant:** no page or event ever contains a credential: the console reads
//! grant records and reports, which never hold one.

mod actions;
mod events;
mod oidc;
mod pages;
mod session;
#[cfg(test)]
mod tests;

use crate::api::{AppState, Principal};
use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use ebb_engine::config::ConsoleConfig;
use std::sync::Arc;

pub use session::Sessions;

/// The console's own state beside the API's.
#[derive(Debug)]
pub struct Console {
    config: ConsoleConfig,
    /// `scheme://host[:port]` browsers use, without a trailing slash.
    origin: String,
    /// Cookies get `Secure` (the console is reached over https).
    secure: bool,
    sessions: Sessions,
    oidc: Option<oidc::Provider>,
    /// Set when the host stops serving: live-update streams end.
    closing: tokio::sync::watch::Sender<bool>,
}

impl Console {
    /// The console for `config`, reached at `public_url` or, without one, at
    /// `http://<listen>`.
    pub fn new(config: &ConsoleConfig, listen: std::net::SocketAddr) -> anyhow::Result<Self> {
        let origin = match &config.public_url {
            Some(url) => {
                let parsed = reqwest::Url::parse(url)
                    .map_err(|e| anyhow::anyhow!("console.public-url `{url}`: {e}"))?;
                if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
                    anyhow::bail!("console.public-url `{url}` must be an http(s) URL with a host");
                }
                parsed.origin().ascii_serialization()
            }
            None => format!("http://{listen}"),
        };
        let secure = origin.starts_with("https://");
        let oidc = config
            .oidc
            .as_ref()
            .map(|c| oidc::Provider::new(c, &origin))
            .transpose()?;
        Ok(Self {
            config: config.clone(),
            secure,
            sessions: Sessions::new(config.session_ttl),
            oidc,
            origin,
            closing: tokio::sync::watch::Sender::new(false),
        })
    }

    /// Ends the live-update streams (the host is stopping): a graceful shutdown
    /// waits for open requests, and a stream would never end by itself.
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// Where the console is, for the log and `scripts/run.sh`.
    pub fn url(&self) -> String {
        format!("{}/console/", self.origin)
    }
}

/// What console handlers reach.
#[derive(Clone, Debug)]
pub struct ConsoleState {
    pub app: AppState,
    pub console: Arc<Console>,
}

/// The console's routes, to merge into the API's router.
pub fn router(app: AppState, console: Arc<Console>) -> Router {
    Router::new()
        .route("/console", get(pages::redirect_home))
        .route("/console/", get(pages::home))
        .route("/console/requests", get(pages::requests))
        .route("/console/grants", get(pages::grants))
        .route("/console/grants/{id}", get(pages::grant))
        .route("/console/find", get(pages::find))
        .route("/console/connectors", get(pages::connectors))
        .route("/console/policies", get(pages::policies))
        .route("/console/audit", get(pages::audit))
        .route("/console/login", get(session::login_page))
        .route("/console/login/token", post(session::token_sign_in))
        .route("/console/login/oidc", get(oidc::start))
        .route("/console/callback", get(oidc::callback))
        .route("/console/logout", post(session::sign_out))
        .route("/console/events", get(events::stream))
        .route("/console/grants/{id}/approve", post(actions::approve))
        .route("/console/grants/{id}/deny", post(actions::deny))
        .route("/console/grants/{id}/revoke", post(actions::revoke))
        .route("/console/connectors/load", post(actions::load_connector))
        .route(
            "/console/connectors/{name}/reload",
            post(actions::reload_connector),
        )
        .route(
            "/console/connectors/{name}/unload",
            post(actions::unload_connector),
        )
        .route("/console/policies/reload", post(actions::reload_policies))
        .route("/console/assets/{file}", get(asset))
        .layer(axum::middleware::map_response(security_headers))
        .layer(axum::extract::DefaultBodyLimit::max(
            crate::api::MAX_BODY_BYTES,
        ))
        .with_state(ConsoleState { app, console })
}

/// No inline script or style, nothing from elsewhere, no framing.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; \
     frame-ancestors 'none'; base-uri 'none'";

async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

/// The embedded stylesheet and script.
const CSS: &str = include_str!("../../assets/console.css");
const JS: &str = include_str!("../../assets/console.js");

async fn asset(axum::extract::Path(file): axum::extract::Path<String>) -> Response {
    let (body, kind) = match file.as_str() {
        "console.css" => (CSS, "text/css; charset=utf-8"),
        "console.js" => (JS, "text/javascript; charset=utf-8"),
        _ => return (axum::http::StatusCode::NOT_FOUND, "no such asset").into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// What a person sees of an API error: the API's own message, except for internal
/// failures, whose details stay in the host's log.
fn message(e: &crate::api::ApiError) -> String {
    match e {
        crate::api::ApiError::Internal(_) => {
            "the host failed to do this; its log says why".to_owned()
        }
        other => other.to_string(),
    }
}

/// Who is signed in, as the pages need it.
fn roles_of(p: &Principal) -> pages::Roles {
    use ebb_engine::config::Role;
    pages::Roles {
        requester: p.has(Role::Requester),
        approver: p.has(Role::Approver),
        operator: p.has(Role::Operator),
        auditor: p.has(Role::Auditor),
    }
}
