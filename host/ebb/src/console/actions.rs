//! The console's state changes. Each checks the session's CSRF token and the
//! request's origin, then calls the admin API's own handler with the signed-in
//! person's principal, and says the outcome on the page it sends the browser back
//! to.

use super::pages::Flash;
use super::session::{CsrfForm, SignedIn, check_post};
use super::{ConsoleState, message};
use crate::api::{ApiError, connectors, grants, policy};
use axum::Json;
use axum::extract::{Form, Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
pub struct NoteForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    note: String,
}

impl NoteForm {
    /// The note as the API's body: `{"reason": …}`, or none.
    fn body(&self) -> Result<Json<serde_json::Value>, axum::extract::rejection::JsonRejection> {
        let note = self.note.trim();
        Ok(Json(if note.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::json!({ "reason": note })
        }))
    }
}

/// Says `done` (or the API's refusal) on the next page and goes `back`.
fn outcome<T>(
    state: &ConsoleState,
    who: &SignedIn,
    result: Result<T, ApiError>,
    done: impl FnOnce(T) -> String,
    back: &str,
) -> Response {
    let flash = match result {
        Ok(value) => Flash {
            ok: true,
            text: done(value),
        },
        Err(e) => Flash {
            ok: false,
            text: message(&e),
        },
    };
    Redirect::to(&who.flash(&state.console, flash, back)).into_response()
}

/// `POST /console/grants/{id}/approve`.
pub async fn approve(
    State(state): State<ConsoleState>,
    who: SignedIn,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<NoteForm>,
) -> Response {
    if let Err(forged) = check_post(&state.console, &headers, &who, &form.csrf) {
        return forged.into_response();
    }
    let result = grants::approve(
        State(state.app.clone()),
        who.principal.clone(),
        Path(id.clone()),
        form.body(),
    )
    .await;
    outcome(
        &state,
        &who,
        result,
        |Json(g)| {
            if g.state == ebb_engine::lifecycle::GrantState::Requested {
                format!(
                    "Your approval of {id} is recorded: {} of {} so far.",
                    g.approvals.len(),
                    g.approvals_required
                )
            } else {
                format!("Approved {id}: it is now {}.", g.state.as_str())
            }
        },
        "/console/requests",
    )
}

/// `POST /console/grants/{id}/deny`.
pub async fn deny(
    State(state): State<ConsoleState>,
    who: SignedIn,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<NoteForm>,
) -> Response {
    if let Err(forged) = check_post(&state.console, &headers, &who, &form.csrf) {
        return forged.into_response();
    }
    let result = grants::deny(
        State(state.app.clone()),
        who.principal.clone(),
        Path(id.clone()),
        form.body(),
    )
    .await;
    outcome(
        &state,
        &who,
        result,
        |_| format!("Denied {id}."),
        "/console/requests",
    )
}

/// `POST /console/grants/{id}/revoke`.
pub async fn revoke(
    State(state): State<ConsoleState>,
    who: SignedIn,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<NoteForm>,
) -> Response {
    if let Err(forged) = check_post(&state.console, &headers, &who, &form.csrf) {
        return forged.into_response();
    }
    let result = grants::revoke(
        State(state.app.clone()),
        who.principal.clone(),
        Path(id.clone()),
        form.body(),
    )
    .await;
    outcome(
        &state,
        &who,
        result,
        |Json(g)| {
            if g.state == ebb_engine::lifecycle::GrantState::Revoking {
                format!("Revocation of {id} started; the page shows when it is verified.")
            } else {
                format!(
                    "{id} is {}: nothing to start; the host goes on with it.",
                    g.state.as_str()
                )
            }
        },
        // Only what a grant id is made of: nothing from the path reaches a header.
        &format!(
            "/console/grants/{}",
            id.chars()
                .filter(char::is_ascii_alphanumeric)
                .collect::<String>()
        ),
    )
}

#[derive(Debug, Deserialize)]
pub struct LoadForm {
    #[serde(default)]
    csrf: String,
    name: String,
    /// The keys of a `[connectors.<name>]` table, as TOML or JSON.
    settings: String,
}

/// `POST /console/connectors/load`.
pub async fn load_connector(
    State(state): State<ConsoleState>,
    who: SignedIn,
    headers: HeaderMap,
    Form(form): Form<LoadForm>,
) -> Response {
    if let Err(forged) = check_post(&state.console, &headers, &who, &form.csrf) {
        return forged.into_response();
    }
    let name = form.name.trim().to_owned();
    let body = serde_json::from_str::<serde_json::Value>(&form.settings).or_else(|_| {
        toml::from_str::<toml::Table>(&form.settings)
            .map_err(|e| {
                ApiError::BadRequest(format!("the settings are neither JSON nor TOML: {e}"))
            })
            .and_then(|t| serde_json::to_value(t).map_err(|e| ApiError::BadRequest(e.to_string())))
    });
    let result = match body {
        Ok(body) => {
            connectors::load(
                State(state.app.clone()),
                who.principal.clone(),
                Path(name.clone()),
                Ok(Json(body)),
            )
            .await
        }
        Err(e) => Err(e),
    };
    outcome(
        &state,
        &who,
        result,
        |(_, Json(view))| {
            format!(
                "Loaded `{name}` ({} {}).",
                view.info.name, view.info.version
            )
        },
        "/console/connectors",
    )
}

/// `POST /console/connectors/{name}/reload`: reads the configured component again.
pub async fn reload_connector(
    State(state): State<ConsoleState>,
    who: SignedIn,
    headers: HeaderMap,
    Path(name): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Response {
    if let Err(forged) = check_post(&state.console, &headers, &who, &form.csrf) {
        return forged.into_response();
    }
    let result = connectors::reload(
        State(state.app.clone()),
        who.principal.clone(),
        Path(name.clone()),
        Ok(Json(serde_json::Value::Null)),
    )
    .await;
    outcome(
        &state,
        &who,
        result,
        |Json(r)| {
            if r.previous_sha256 == r.connector.sha256 {
                format!("Reloaded `{name}`: the component is unchanged.")
            } else {
                format!(
                    "Reloaded `{name}`: now {} (was {}).",
                    &r.connector.sha256[..12.min(r.connector.sha256.len())],
                    &r.previous_sha256[..12.min(r.previous_sha256.len())]
                )
            }
        },
        "/console/connectors",
    )
}

#[derive(Debug, Deserialize)]
pub struct UnloadForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    live: connectors::LiveGrants,
    #[serde(default)]
    to: String,
}

/// `POST /console/connectors/{name}/unload`, with what to do with live grants.
pub async fn unload_connector(
    State(state): State<ConsoleState>,
    who: SignedIn,
    headers: HeaderMap,
    Path(name): Path<String>,
    Form(form): Form<UnloadForm>,
) -> Response {
    if let Err(forged) = check_post(&state.console, &headers, &who, &form.csrf) {
        return forged.into_response();
    }
    let to = Some(form.to.trim().to_owned()).filter(|t| !t.is_empty());
    let result = connectors::unload(
        State(state.app.clone()),
        who.principal.clone(),
        Path(name.clone()),
        Ok(Query(connectors::UnloadParams {
            live: form.live,
            to,
        })),
    )
    .await;
    outcome(
        &state,
        &who,
        result,
        |(_, Json(view))| match view.state {
            "draining" => format!(
                "`{name}` is draining: {} live grant(s) are being revoked; it goes once each is verified.",
                view.live_grants
            ),
            _ => format!("Unloaded `{name}`."),
        },
        "/console/connectors",
    )
}

/// `POST /console/policies/reload`.
pub async fn reload_policies(
    State(state): State<ConsoleState>,
    who: SignedIn,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    if let Err(forged) = check_post(&state.console, &headers, &who, &form.csrf) {
        return forged.into_response();
    }
    let result = policy::reload_policies(State(state.app.clone()), who.principal.clone()).await;
    outcome(
        &state,
        &who,
        result,
        |Json(view)| format!("Policies reloaded: {} in force.", view.ids.len()),
        "/console/policies",
    )
}
