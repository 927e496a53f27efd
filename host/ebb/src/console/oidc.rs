//! Sign-in for people: OpenID Connect authorization code flow with PKCE (S256),
//! `state` bound to the browser by a cookie, and `nonce` checked in the ID token.
//!
//! The issuer's discovery document is read at the first sign-in (so the host
//! starts while the identity provider is down) and kept; the ID token is verified
//! by the same [`Verifier`] the API uses for workload tokens (issuer, audience =
//! the client id, expiry, signature from the issuer's JWKS, asymmetric algorithms
//! only). The person becomes the principal `<issuer>#<sub>` — the same identity a
//! token from that issuer has at the API — with the roles their groups map to.

use super::session::{self, LOGIN_COOKIE, cookie, set_cookie};
use super::{ConsoleState, pages};
use crate::api::Principal;
use anyhow::Context as _;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use base64::Engine as _;
use ebb_core::contract::SubjectKind;
use ebb_engine::config::{ConsoleOidcConfig, IdentityConfig, IssuerConfig, Role};
use ebb_engine::identity::Verifier;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a browser may take at the identity provider.
const SIGN_IN_WINDOW: Duration = Duration::from_secs(600);
/// Sign-ins in progress kept at most (the oldest go first).
const MAX_PENDING: usize = 10_000;

/// The configured identity provider.
#[derive(Debug)]
pub struct Provider {
    config: ConsoleOidcConfig,
    redirect_uri: String,
    http: reqwest::Client,
    discovered: tokio::sync::OnceCell<Arc<Discovered>>,
    pending: Mutex<HashMap<String, Pending>>,
}

#[derive(Debug)]
struct Discovered {
    authorization_endpoint: String,
    token_endpoint: String,
    verifier: Verifier,
}

#[derive(Debug)]
struct Pending {
    code_verifier: String,
    nonce: String,
    started: Instant,
}

#[derive(Debug, Deserialize)]
struct Discovery {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    jwks_uri: String,
}

impl Provider {
    pub fn new(config: &ConsoleOidcConfig, origin: &str) -> anyhow::Result<Self> {
        if let Some(var) = &config.client_secret_env
            && std::env::var(var).is_err()
        {
            anyhow::bail!("console.oidc: the client secret variable {var} is not set");
        }
        Ok(Self {
            config: config.clone(),
            redirect_uri: format!("{origin}/console/callback"),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .redirect(reqwest::redirect::Policy::none())
                .build()?,
            discovered: tokio::sync::OnceCell::new(),
            pending: Mutex::default(),
        })
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    async fn discovered(&self) -> anyhow::Result<Arc<Discovered>> {
        self.discovered
            .get_or_try_init(|| async {
                let url = format!(
                    "{}/.well-known/openid-configuration",
                    self.config.issuer.trim_end_matches('/')
                );
                let doc: Discovery = self
                    .http
                    .get(&url)
                    .send()
                    .await
                    .and_then(reqwest::Response::error_for_status)
                    .with_context(|| format!("reading {url}"))?
                    .json()
                    .await
                    .with_context(|| format!("the discovery document at {url}"))?;
                if doc.issuer != self.config.issuer {
                    anyhow::bail!(
                        "the discovery document names issuer `{}`, not `{}`",
                        doc.issuer,
                        self.config.issuer
                    );
                }
                let verifier = Verifier::new(&IdentityConfig {
                    issuers: vec![IssuerConfig {
                        issuer: doc.issuer,
                        audiences: vec![self.config.client_id.clone()],
                        jwks_file: None,
                        jwks_url: Some(doc.jwks_uri),
                        kind: SubjectKind::Person,
                        roles: vec![],
                        subject_claim: "sub".into(),
                        leeway_seconds: 30,
                    }],
                })
                .await?;
                Ok(Arc::new(Discovered {
                    authorization_endpoint: doc.authorization_endpoint,
                    token_endpoint: doc.token_endpoint,
                    verifier,
                }))
            })
            .await
            .cloned()
    }

    fn remember(&self, state: String, pending: Pending) {
        let mut all = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        all.retain(|_, p| p.started.elapsed() < SIGN_IN_WINDOW);
        if all.len() >= MAX_PENDING
            && let Some(oldest) = all
                .iter()
                .min_by_key(|(_, p)| p.started)
                .map(|(k, _)| k.clone())
        {
            all.remove(&oldest);
        }
        all.insert(state, pending);
    }

    fn take(&self, state: &str) -> Option<Pending> {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(state)
            .filter(|p| p.started.elapsed() < SIGN_IN_WINDOW)
    }

    /// The roles `claims` map to.
    pub(super) fn roles(&self, claims: &[(String, String)]) -> HashSet<Role> {
        let mut roles: HashSet<Role> = self.config.default_roles.iter().copied().collect();
        let groups = claims
            .iter()
            .filter(|(k, _)| *k == self.config.roles_claim)
            .flat_map(|(_, v)| v.split(','));
        for group in groups {
            if let Some(mapped) = self.config.roles.get(group.trim()) {
                roles.extend(mapped.iter().copied());
            }
        }
        roles
    }

    /// Trades `code` for tokens and verifies the ID token.
    async fn finish(&self, code: &str, pending: &Pending) -> anyhow::Result<Principal> {
        let discovered = self.discovered().await?;
        let mut request = self.http.post(&discovered.token_endpoint).form(&[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", &self.redirect_uri),
            ("code_verifier", &pending.code_verifier),
            ("client_id", &self.config.client_id),
        ]);
        if let Some(var) = &self.config.client_secret_env {
            let secret = std::env::var(var)
                .with_context(|| format!("the client secret variable {var} is not set"))?;
            request = request.basic_auth(&self.config.client_id, Some(secret));
        }
        let response = request.send().await.context("the token endpoint")?;
        let status = response.status();
        let body: serde_json::Value = response
            .json()
            .await
            .context("the token endpoint's answer")?;
        if !status.is_success() {
            // The error code only: the body may echo what was sent.
            anyhow::bail!(
                "the token endpoint refused the code ({status}: {})",
                body["error"].as_str().unwrap_or("no error code")
            );
        }
        let id_token = body["id_token"]
            .as_str()
            .context("the token endpoint sent no id_token")?;
        let identity = discovered
            .verifier
            .verify(id_token)
            .await
            .map_err(|e| anyhow::anyhow!("the ID token was refused: {e}"))?;
        let nonce = identity
            .claims
            .iter()
            .find(|(k, _)| k == "nonce")
            .map(|(_, v)| v.as_str());
        if !nonce.is_some_and(|n| session::same(n, &pending.nonce)) {
            anyhow::bail!("the ID token's nonce does not match this sign-in");
        }
        let roles = self.roles(&identity.claims);
        let display = identity
            .claims
            .iter()
            .find(|(k, _)| k == "name")
            .map(|(_, v)| v.clone());
        let namespaced = format!("{}#{}", identity.issuer, identity.subject);
        Ok(Principal {
            name: namespaced.clone(),
            id: namespaced,
            subject: identity.subject,
            kind: identity.kind,
            issuer: Some(identity.issuer),
            claims: identity
                .claims
                .into_iter()
                .filter(|(k, _)| k != "nonce" && k != "at_hash")
                .chain(display.map(|d| ("display_name".to_owned(), d)))
                .collect(),
            roles,
        })
    }
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// `GET /console/login/oidc`: sends the browser to the identity provider.
pub async fn start(State(state): State<ConsoleState>) -> Response {
    let Some(provider) = &state.console.oidc else {
        return (StatusCode::NOT_FOUND, "no identity provider is configured").into_response();
    };
    let discovered = match provider.discovered().await {
        Ok(d) => d,
        Err(e) => {
            tracing::error!(
                error = format!("{e:#}"),
                "the console's identity provider cannot be reached"
            );
            return pages::problem(
                StatusCode::BAD_GATEWAY,
                "The identity provider cannot be reached; try again, or tell an operator.",
            );
        }
    };
    let sign_in = session::random_token();
    let code_verifier = session::random_token();
    let nonce = session::random_token();
    let challenge = b64(&Sha256::digest(code_verifier.as_bytes()));
    let mut url = match reqwest::Url::parse(&discovered.authorization_endpoint) {
        Ok(url) => url,
        Err(_) => {
            return pages::problem(
                StatusCode::BAD_GATEWAY,
                "The identity provider's authorization endpoint is not a URL.",
            );
        }
    };
    let mut scopes: Vec<&str> = vec!["openid"];
    scopes.extend(
        provider
            .config
            .scopes
            .iter()
            .map(String::as_str)
            .filter(|s| *s != "openid"),
    );
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", &provider.config.client_id)
        .append_pair("redirect_uri", &provider.redirect_uri)
        .append_pair("scope", &scopes.join(" "))
        .append_pair("state", &sign_in)
        .append_pair("nonce", &nonce)
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256");
    provider.remember(
        sign_in.clone(),
        Pending {
            code_verifier,
            nonce,
            started: Instant::now(),
        },
    );
    let mut response = Redirect::to(url.as_str()).into_response();
    if let Ok(v) = axum::http::HeaderValue::from_str(&set_cookie(
        &state.console,
        LOGIN_COOKIE,
        &sign_in,
        SIGN_IN_WINDOW,
    )) {
        response.headers_mut().append(header::SET_COOKIE, v);
    }
    response
}

#[derive(Debug, Deserialize)]
pub struct Callback {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

/// A refused sign-in: audited, and a page that says why.
async fn refuse(state: &ConsoleState, why: &str) -> Response {
    state
        .app
        .lifecycle
        .audit_log()
        .note(
            ebb_core::audit::NewEvent::new("console.sign-in-refused", "anonymous")
                .detail(serde_json::json!({ "why": why })),
        )
        .await;
    pages::problem(
        StatusCode::UNAUTHORIZED,
        &format!("Sign-in failed: {why}. Start again from the sign-in page."),
    )
}

/// `GET /console/callback`: the identity provider sends the browser back here.
pub async fn callback(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    query: Result<Query<Callback>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Some(provider) = &state.console.oidc else {
        return (StatusCode::NOT_FOUND, "no identity provider is configured").into_response();
    };
    let Ok(Query(callback)) = query else {
        return refuse(&state, "the identity provider's answer is malformed").await;
    };
    if let Some(error) = &callback.error {
        let error: String = error
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
            .take(40)
            .collect();
        return refuse(&state, &format!("the identity provider said `{error}`")).await;
    }
    let (Some(code), Some(sign_in)) = (&callback.code, &callback.state) else {
        return refuse(&state, "the identity provider's answer has no code").await;
    };
    // The sign-in must be this browser's own: the state is the cookie's.
    if !cookie(&headers, LOGIN_COOKIE).is_some_and(|c| session::same(c, sign_in)) {
        return refuse(&state, "this browser did not start that sign-in").await;
    }
    let Some(pending) = provider.take(sign_in) else {
        return refuse(&state, "the sign-in expired or was already used").await;
    };
    match provider.finish(code, &pending).await {
        Ok(principal) => session::start_session(&state, principal, "oidc").await,
        Err(e) => {
            tracing::warn!(error = format!("{e:#}"), "console sign-in refused");
            refuse(&state, &format!("{e:#}")).await
        }
    }
}
