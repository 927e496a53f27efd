//! Sessions, cookies and CSRF.
//!
//! A session cookie holds 32 random bytes; the host keeps only their sha256, with
//! the person's [`Principal`], a CSRF token and an expiry. Sessions live in the
//! host's memory: a restart signs everyone out, which is the safe direction.
//!
//! A state change is accepted only from a signed-in session, with the session's
//! CSRF token in the form, and — when the browser says where the request comes
//! from (`Origin`, `Sec-Fetch-Site`) — from the console's own origin.

use super::pages::{self, LoginPage};
use super::{ConsoleState, roles_of};
use crate::api::Principal;
use axum::extract::{Form, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use base64::Engine as _;
use ebb_core::audit::NewEvent;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const SESSION_COOKIE: &str = "ebb_console";
/// Binds a sign-in in progress to the browser that started it.
pub const LOGIN_COOKIE: &str = "ebb_login";
/// The double-submitted token of the sign-in form (no session exists yet).
pub const PRE_COOKIE: &str = "ebb_pre";
/// More sessions than this and the oldest are dropped.
const MAX_SESSIONS: usize = 10_000;

/// A random token: 32 bytes, base64url.
pub fn random_token() -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Equal, in time that does not depend on where they differ.
pub fn same(a: &str, b: &str) -> bool {
    let (a, b) = (hash(a), hash(b));
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

#[derive(Debug, Clone)]
struct Session {
    principal: Principal,
    csrf: String,
    expires: Instant,
    /// What recent actions did, each said once on the page the action sent the
    /// browser to (`?flash=<key>`): keyed, so a live update's concurrent read of
    /// another page cannot take it.
    flashes: Vec<(String, pages::Flash)>,
}

/// Flashes kept per session at most (the oldest go first).
const MAX_FLASHES: usize = 8;

/// The signed-in sessions, by the hash of their cookie.
#[derive(Debug)]
pub struct Sessions {
    ttl: Duration,
    by_hash: Mutex<HashMap<[u8; 32], Session>>,
}

impl Sessions {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            by_hash: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Session>> {
        self.by_hash.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a session for `principal`; returns the cookie's value.
    fn create(&self, principal: Principal) -> String {
        let token = random_token();
        let now = Instant::now();
        let mut sessions = self.lock();
        sessions.retain(|_, s| s.expires > now);
        if sessions.len() >= MAX_SESSIONS
            && let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(k, _)| *k)
        {
            sessions.remove(&oldest);
        }
        sessions.insert(
            hash(&token),
            Session {
                principal,
                csrf: random_token(),
                expires: now + self.ttl,
                flashes: Vec::new(),
            },
        );
        token
    }

    /// The session, and the flash `flash` names (taken: said once).
    fn get(&self, token: &str, flash: Option<&str>) -> Option<(Session, Option<pages::Flash>)> {
        let mut sessions = self.lock();
        let key = hash(token);
        let session = sessions.get_mut(&key)?;
        if session.expires <= Instant::now() {
            sessions.remove(&key);
            return None;
        }
        let said = flash.and_then(|f| {
            let at = session.flashes.iter().position(|(k, _)| k == f)?;
            Some(session.flashes.remove(at).1)
        });
        Some((session.clone(), said))
    }

    /// Keeps `flash` for the page the browser goes to next; returns its key.
    fn add_flash(&self, token: &str, flash: pages::Flash) -> Option<String> {
        let mut sessions = self.lock();
        let session = sessions.get_mut(&hash(token))?;
        if session.flashes.len() >= MAX_FLASHES {
            session.flashes.remove(0);
        }
        let key: String = random_token().chars().take(16).collect();
        session.flashes.push((key.clone(), flash));
        Some(key)
    }

    fn remove(&self, token: &str) -> Option<Principal> {
        self.lock().remove(&hash(token)).map(|s| s.principal)
    }
}

/// The value of cookie `name` in `headers`.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// A `Set-Cookie` value scoped to the console.
pub fn set_cookie(console: &super::Console, name: &str, value: &str, max_age: Duration) -> String {
    format!(
        "{name}={value}; Path=/console; Max-Age={}; HttpOnly; SameSite=Lax{}",
        max_age.as_secs(),
        if console.secure { "; Secure" } else { "" }
    )
}

/// A signed-in person.
#[derive(Debug, Clone)]
pub struct SignedIn {
    pub principal: Principal,
    pub csrf: String,
    token: String,
    pub flash: Option<pages::Flash>,
}

impl SignedIn {
    /// The page chrome: who is signed in, what they may open, the CSRF token.
    pub fn nav(&self, page: &'static str) -> pages::Nav {
        pages::Nav {
            page,
            who: self.principal.name.clone(),
            display: self
                .principal
                .claims
                .iter()
                .find(|(k, _)| k == "display_name")
                .map(|(_, v)| v.clone()),
            roles: roles_of(&self.principal),
            csrf: self.csrf.clone(),
            flash: self.flash.clone(),
        }
    }

    /// Says `flash` on the page at `back` (a console path): returns where to send
    /// the browser.
    pub fn flash(&self, console: &super::Console, flash: pages::Flash, back: &str) -> String {
        match console.sessions.add_flash(&self.token, flash) {
            Some(key) => format!("{back}?flash={key}"),
            None => back.to_owned(),
        }
    }
}

/// Not signed in: pages send the browser to sign in; anything else is refused.
#[derive(Debug)]
pub struct NotSignedIn {
    page: bool,
}

impl IntoResponse for NotSignedIn {
    fn into_response(self) -> Response {
        if self.page {
            Redirect::to("/console/login").into_response()
        } else {
            (StatusCode::UNAUTHORIZED, "not signed in").into_response()
        }
    }
}

impl FromRequestParts<ConsoleState> for SignedIn {
    type Rejection = NotSignedIn;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &ConsoleState,
    ) -> Result<Self, NotSignedIn> {
        let page = parts.method == axum::http::Method::GET && parts.uri.path() != "/console/events";
        let token = cookie(&parts.headers, SESSION_COOKIE).ok_or(NotSignedIn { page })?;
        let flash = parts
            .uri
            .query()
            .into_iter()
            .flat_map(|q| q.split('&'))
            .find_map(|pair| pair.strip_prefix("flash="));
        let (session, flash) = state
            .console
            .sessions
            .get(token, flash)
            .ok_or(NotSignedIn { page })?;
        Ok(Self {
            principal: session.principal,
            csrf: session.csrf,
            token: token.to_owned(),
            flash,
        })
    }
}

/// Why a state change was refused as cross-site.
#[derive(Debug)]
pub struct Forged(&'static str);

impl IntoResponse for Forged {
    fn into_response(self) -> Response {
        (
            StatusCode::FORBIDDEN,
            format!("refused: {} (cross-site request protection)", self.0),
        )
            .into_response()
    }
}

/// Whether the browser says this request comes from another site.
pub fn cross_site(console: &super::Console, headers: &HeaderMap) -> Option<Forged> {
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok())
        && origin != console.origin
    {
        return Some(Forged("the request comes from another origin"));
    }
    match headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        Some("same-origin" | "none") | None => None,
        Some(_) => Some(Forged("the request comes from another site")),
    }
}

/// A state change's checks: same origin and the session's CSRF token.
pub fn check_post(
    console: &super::Console,
    headers: &HeaderMap,
    who: &SignedIn,
    csrf: &str,
) -> Result<(), Forged> {
    if let Some(forged) = cross_site(console, headers) {
        return Err(forged);
    }
    if !same(csrf, &who.csrf) {
        return Err(Forged("the form's CSRF token is missing or wrong"));
    }
    Ok(())
}

/// `GET /console/login`.
pub async fn login_page(State(state): State<ConsoleState>, headers: HeaderMap) -> Response {
    let pre = cookie(&headers, PRE_COOKIE)
        .filter(|v| v.len() == 43)
        .map(str::to_owned)
        .unwrap_or_else(random_token);
    let page = LoginPage {
        title: "Sign in",
        oidc_name: state.console.oidc.as_ref().map(|o| o.name().to_owned()),
        token_sign_in: state.console.config.token_sign_in,
        pre: pre.clone(),
        error: None,
    };
    with_cookie(
        pages::render(&page),
        &set_cookie(&state.console, PRE_COOKIE, &pre, Duration::from_secs(3600)),
    )
}

fn with_cookie(mut response: Response, cookie: &str) -> Response {
    if let Ok(v) = axum::http::HeaderValue::from_str(cookie) {
        response.headers_mut().append(header::SET_COOKIE, v);
    }
    response
}

/// Starts a session for `principal` and sends the browser to the console.
pub async fn start_session(state: &ConsoleState, principal: Principal, method: &str) -> Response {
    state
        .app
        .lifecycle
        .audit_log()
        .note(
            NewEvent::new("console.signed-in", &principal.name)
                .detail(serde_json::json!({ "method": method })),
        )
        .await;
    tracing::info!(who = %principal.name, method, "signed in to the console");
    let token = state.console.sessions.create(principal);
    let mut response = Redirect::to("/console/").into_response();
    for cookie in [
        set_cookie(
            &state.console,
            SESSION_COOKIE,
            &token,
            state.console.sessions.ttl,
        ),
        set_cookie(&state.console, LOGIN_COOKIE, "", Duration::ZERO),
    ] {
        response = with_cookie(response, &cookie);
    }
    response
}

#[derive(Debug, Deserialize)]
pub struct TokenForm {
    token: String,
    pre: String,
}

/// `POST /console/login/token`: signs in with an API token.
pub async fn token_sign_in(
    State(state): State<ConsoleState>,
    client: Option<axum::Extension<crate::api::guard::ClientAddr>>,
    headers: HeaderMap,
    Form(form): Form<TokenForm>,
) -> Response {
    if !state.console.config.token_sign_in {
        return (StatusCode::NOT_FOUND, "token sign-in is turned off").into_response();
    }
    if let Some(forged) = cross_site(&state.console, &headers) {
        return forged.into_response();
    }
    if !cookie(&headers, PRE_COOKIE).is_some_and(|c| same(c, &form.pre)) {
        return Forged("the sign-in form's token is missing or wrong").into_response();
    }
    let client = client.map(|c| c.0.0);
    if !state.app.guard.admits(client) {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            "too many refused sign-ins; try later",
        )
            .into_response();
    }
    let Some(principal) = state.app.tokens.find(form.token.trim()).cloned() else {
        state.app.guard.refused(
            client,
            "unauthenticated",
            "unknown token",
            "POST /console/login/token: unknown token",
        );
        let page = LoginPage {
            title: "Sign in",
            oidc_name: state.console.oidc.as_ref().map(|o| o.name().to_owned()),
            token_sign_in: true,
            pre: form.pre,
            error: Some("That token is not valid.".into()),
        };
        let mut response = pages::render(&page);
        *response.status_mut() = StatusCode::UNAUTHORIZED;
        return response;
    };
    start_session(&state, principal, "token").await
}

/// A form that carries only the session's CSRF token.
#[derive(Debug, Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    pub csrf: String,
}

/// `POST /console/logout`.
pub async fn sign_out(
    State(state): State<ConsoleState>,
    who: SignedIn,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    if let Err(forged) = check_post(&state.console, &headers, &who, &form.csrf) {
        return forged.into_response();
    }
    if let Some(p) = state.console.sessions.remove(&who.token) {
        state
            .app
            .lifecycle
            .audit_log()
            .note(NewEvent::new("console.signed-out", &p.name))
            .await;
    }
    with_cookie(
        Redirect::to("/console/login").into_response(),
        &set_cookie(&state.console, SESSION_COOKIE, "", Duration::ZERO),
    )
}
