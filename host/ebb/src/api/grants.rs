//! `/v1/grants`: request, approve, deny, issue, complete, fail, revoke, get, list,
//! report.

use super::error::{ErrorBody, rejection};
use super::extract;
use super::{ApiError, AppState, Principal};
use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use ebb_core::contract::{Credential, Permission, Subject};
use ebb_core::store::{GrantRecord, ListFilter, Page};
use ebb_engine::approval::{Ask, Requester};
use ebb_engine::config::Role;
use ebb_engine::lifecycle::{Decision, GrantReport, GrantState, NewGrant, Trigger};
use serde::{Deserialize, Serialize};

/// How long an automatically approved grant may wait to be issued.
const AUTO_ISSUE_WINDOW_MS: u64 = 30_000;

/// `POST /v1/grants`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[schema(example = json!({
    "connector": "noop",
    "permissions": [{"action": "use", "resource": "reports"}],
    "ttl": "15m",
    "task": "nightly invoice export",
    "reason": "ticket OPS-1234"
}))]
#[serde(deny_unknown_fields)]
pub struct GrantRequest {
    /// The connector instance, e.g. `postgres`.
    #[schema(min_length = 1, example = "postgres")]
    pub connector: String,
    /// Exactly what to grant.
    #[schema(min_items = 1)]
    pub permissions: Vec<Permission>,
    /// How long, e.g. `15m`, `90s`, `1h 30m`; at most the connector's `max-ttl-ms`.
    #[schema(pattern = "^[0-9]+ ?[a-z]+( ?[0-9]+ ?[a-z]+)*$", example = "15m")]
    pub ttl: String,
    /// The task the grant is for; completing or failing it revokes the grant.
    #[schema(min_length = 1, example = "nightly invoice export")]
    pub task: String,
    #[serde(default)]
    pub reason: Option<String>,
}

/// A grant and, in the one response that issues it, its credential.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct GrantResponse {
    pub grant: GrantRecord,
    /// Shown once, here, and never again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<CredentialView>,
}

/// The credential as JSON fields: `{"user": "...", "password": "..."}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(transparent)]
#[schema(value_type = std::collections::BTreeMap<String, String>)]
pub struct CredentialView(std::collections::BTreeMap<String, String>);

impl From<Credential> for CredentialView {
    fn from(c: Credential) -> Self {
        Self(c.fields.iter().cloned().collect())
    }
}

/// A reason for deny, fail or revoke.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReasonBody {
    #[serde(default)]
    pub reason: Option<String>,
}

/// A page size from a query: 1-1000, default 100.
pub(super) fn page_size(limit: Option<u16>) -> Result<usize, ApiError> {
    match limit.unwrap_or(100) {
        n @ 1..=1000 => Ok(usize::from(n)),
        n => Err(ApiError::BadRequest(format!(
            "limit must be 1-1000, got {n}"
        ))),
    }
}

/// The shortest grant: shorter ones would be revoked before anyone could use them,
/// and only load the scheduler.
pub const MIN_TTL_MS: u64 = 1_000;
/// Limits on what one request may carry (what a caller writes into the store and
/// the audit log).
pub const MAX_TASK_BYTES: usize = 1_024;
pub const MAX_REASON_BYTES: usize = 4_096;
pub const MAX_PERMISSIONS: usize = 32;
pub const MAX_ACTION_BYTES: usize = 128;
pub const MAX_RESOURCE_BYTES: usize = 1_024;

fn parse_ttl(ttl: &str) -> Result<u64, ApiError> {
    if ttl.len() > 64 {
        return Err(ApiError::BadRequest("ttl is too long".into()));
    }
    let d = humantime::parse_duration(ttl.trim())
        .map_err(|e| ApiError::BadRequest(format!("ttl `{ttl}`: {e} (use e.g. 90s, 15m, 1h)")))?;
    u64::try_from(d.as_millis())
        .ok()
        .filter(|ms| *ms >= MIN_TTL_MS)
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "ttl `{ttl}` must be at least {MIN_TTL_MS} ms and not absurdly long"
            ))
        })
}

/// Refuses a request whose parts are longer or more numerous than the limits.
fn check_sizes(req: &GrantRequest) -> Result<(), ApiError> {
    let too = |what: &str, limit: usize| {
        Err(ApiError::BadRequest(format!(
            "{what} is longer than {limit} bytes"
        )))
    };
    if req.task.len() > MAX_TASK_BYTES {
        return too("task", MAX_TASK_BYTES);
    }
    if req
        .reason
        .as_ref()
        .is_some_and(|r| r.len() > MAX_REASON_BYTES)
    {
        return too("reason", MAX_REASON_BYTES);
    }
    if req.permissions.is_empty() || req.permissions.len() > MAX_PERMISSIONS {
        return Err(ApiError::BadRequest(format!(
            "a grant needs 1 to {MAX_PERMISSIONS} permissions"
        )));
    }
    for p in &req.permissions {
        if p.action.len() > MAX_ACTION_BYTES {
            return too("a permission's action", MAX_ACTION_BYTES);
        }
        if p.resource.len() > MAX_RESOURCE_BYTES {
            return too("a permission's resource", MAX_RESOURCE_BYTES);
        }
    }
    Ok(())
}

/// Whether `p` requested `g`. By namespaced identity only: a subject of the same
/// name from another source (a JWT whose `sub` is a configured token's subject) owns
/// nothing of it.
fn owns(p: &Principal, g: &GrantRecord) -> bool {
    p.id == g.requested_by
}

async fn load_visible(state: &AppState, p: &Principal, id: &str) -> Result<GrantRecord, ApiError> {
    let grant = state.lifecycle.get(id).await?;
    if owns(p, &grant) || p.has(Role::Operator) || p.has(Role::Auditor) || p.has(Role::Approver) {
        Ok(grant)
    } else {
        // Same answer as a missing grant: do not reveal other subjects' grant ids.
        Err(ApiError::NotFound(format!("no grant with id `{id}`")))
    }
}

/// Requests a grant. Approved by policy at once, it is issued in the same call.
#[utoipa::path(post, operation_id = "request_grant", path = "/v1/grants", tag = "grants",
    security(("bearer" = [])),
    request_body = GrantRequest,
    responses(
        (status = 201, description = "Approved by policy and issued: the credential is in this response and never again", body = GrantResponse),
        (status = 202, description = "Recorded; waiting for approval", body = GrantResponse),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 409, body = ErrorBody),
        (status = 502, body = ErrorBody),
    ))]
pub async fn request(
    State(state): State<AppState>,
    principal: Principal,
    req: extract::Body,
) -> Result<(StatusCode, Json<GrantResponse>), ApiError> {
    principal
        .require(&state, &[Role::Requester], "request grants")
        .await?;
    create(state, principal, req, false).await
}

/// Requests a grant through the break-glass path: its own policies, a mandatory
/// reason, a shorter maximum TTL, and an alert to the configured webhooks.
#[utoipa::path(post, operation_id = "request_break_glass_grant", path = "/v1/grants/break-glass", tag = "grants",
    security(("bearer" = [])),
    request_body = GrantRequest,
    responses(
        (status = 201, description = "Approved by the break-glass policies and issued: the credential is in this response and never again", body = GrantResponse),
        (status = 202, description = "Recorded; waiting for approval", body = GrantResponse),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 409, body = ErrorBody),
        (status = 502, body = ErrorBody),
    ))]
pub async fn break_glass(
    State(state): State<AppState>,
    principal: Principal,
    req: extract::Body,
) -> Result<(StatusCode, Json<GrantResponse>), ApiError> {
    principal
        .require(&state, &[Role::Requester], "request break-glass grants")
        .await?;
    create(state, principal, req, true).await
}

/// Decides a request and records it; issues it at once if it was approved.
async fn create(
    state: AppState,
    principal: Principal,
    req: extract::Body,
    break_glass: bool,
) -> Result<(StatusCode, Json<GrantResponse>), ApiError> {
    let req: GrantRequest = extract::object(req)?;
    check_sizes(&req)?;
    let ttl_ms = parse_ttl(&req.ttl)?;
    if ebb_engine::approval::visible_chars(&req.task) == 0 {
        return Err(ApiError::BadRequest("a grant must name its task".into()));
    }
    let slot = state
        .lifecycle
        .registry()
        .get(&req.connector)
        .ok_or_else(|| {
            ApiError::BadRequest(format!("no connector named `{}` is loaded", req.connector))
        })?;
    let subject = Subject {
        id: principal.subject.clone(),
        kind: principal.kind,
        claims: principal.claims.clone(),
    };
    // A request the connector cannot grant is the requester's 400 now, not an
    // approver's time and a failed issue later.
    state
        .lifecycle
        .validate(&req.connector, &req.permissions)
        .await?;
    // Policies see what the subject can already do without a grant; the report keeps it.
    let standing = ebb_engine::standing::Standing::of(&slot, &subject).await;
    let decided = state
        .approval
        .decide(
            &Requester {
                subject: &principal.subject,
                kind: principal.kind,
                issuer: principal.issuer.as_deref(),
                claims: &principal.claims,
            },
            &slot,
            &Ask {
                permissions: &req.permissions,
                ttl_ms,
                task: &req.task,
                reason: req.reason.as_deref(),
                break_glass,
                now_ms: state.lifecycle.clock().now_ms(),
                standing: &standing,
            },
        )
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let decision = match decided.decision {
        // Issued in this same request: if the host dies before issuing, nobody will
        // come back for it, so the approval lapses soon (nothing exists downstream).
        Decision::Approve { by, note, .. } => Decision::Approve {
            by,
            note,
            issue_within_ms: Some(AUTO_ISSUE_WINDOW_MS),
        },
        other => other,
    };
    let denied = matches!(decision, Decision::Deny { .. });
    // Each denial is a durable grant and its events: a requester that keeps asking
    // for what policy refuses is slowed down, not recorded without end.
    if denied && !state.guard.admits_denial(&principal.id) {
        return Err(ApiError::TooManyRequests);
    }
    let new = NewGrant {
        connector: req.connector,
        subject,
        permissions: req.permissions,
        ttl_ms,
        task: req.task,
        reason: req.reason,
        approvals_required: decided.approvals_required,
        break_glass,
        decided_by: Some(decided.detail),
    };
    let connector = new.connector.clone();
    let subject = new.subject.clone();
    let grant = state
        .lifecycle
        .request(new, &principal.id, decision)
        .await?;
    // Seen now: its standing access is checked again on the schedule, and a new
    // finding is audited and alerted. The request stands even if this fails.
    if let Err(e) =
        ebb_engine::standing::record(&state.lifecycle, &connector, &subject, &standing, true).await
    {
        tracing::error!(error = %e, "recording standing access failed");
    }
    if break_glass {
        let alert = serde_json::json!({
            "kind": "break-glass",
            "grant": grant.grant.id,
            "state": grant.state,
            "subject": grant.grant.subject.id,
            "requested_by": principal.id,
            "connector": grant.connector,
            "permissions": grant.grant.permissions,
            "ttl_ms": grant.ttl_ms,
            "reason": grant.reason,
        });
        tracing::warn!(grant = %grant.grant.id, subject = %grant.grant.subject.id, state = %grant.state, "BREAK-GLASS request");
        state
            .lifecycle
            .audit_log()
            .record(
                ebb_core::audit::NewEvent::new("alert.break-glass", &principal.name)
                    .grant(&grant.grant.id)
                    .detail(alert.clone()),
            )
            .await?;
        state.approval.alerts.send(alert);
    }
    if denied {
        return Err(ApiError::Forbidden(format!(
            "denied by policy: {} (grant {})",
            grant.last_error.as_deref().unwrap_or("no reason given"),
            grant.grant.id
        )));
    }
    if grant.state != GrantState::Approved {
        return Ok((
            StatusCode::ACCEPTED,
            Json(GrantResponse {
                grant,
                credential: None,
            }),
        ));
    }
    let (grant, credential) = state
        .lifecycle
        .issue(&grant.grant.id, &principal.name)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(GrantResponse {
            grant,
            credential: Some(credential.into()),
        }),
    ))
}

/// Issues an approved grant; only its requester may.
#[utoipa::path(post, operation_id = "issue_grant", path = "/v1/grants/{id}/issue", tag = "grants",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The grant id")),
    responses(
        (status = 201, description = "Issued: the credential is in this response and never again", body = GrantResponse),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody),
        (status = 502, body = ErrorBody),
    ))]
pub async fn issue(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<GrantResponse>), ApiError> {
    principal
        .require(&state, &[Role::Requester], "issue grants")
        .await?;
    let grant = load_visible(&state, &principal, &id).await?;
    if !owns(&principal, &grant) {
        return Err(ApiError::Forbidden(
            "only the requester can issue its grant".into(),
        ));
    }
    let (grant, credential) = state.lifecycle.issue(&id, &principal.name).await?;
    Ok((
        StatusCode::CREATED,
        Json(GrantResponse {
            grant,
            credential: Some(credential.into()),
        }),
    ))
}

/// Approves a request. A requester can never approve its own.
#[utoipa::path(post, operation_id = "approve_grant", path = "/v1/grants/{id}/approve", tag = "grants",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The grant id")),
    request_body(content = Option<ReasonBody>),
    responses(
        (status = 200, body = GrantRecord),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody),
    ))]
pub async fn approve(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    note: extract::Body,
) -> Result<Json<GrantRecord>, ApiError> {
    principal
        .require(&state, &[Role::Approver], "approve grants")
        .await?;
    let note: ReasonBody = extract::optional_object(note)?;
    let grant = state.lifecycle.get(&id).await?;
    if owns(&principal, &grant) {
        state
            .lifecycle
            .audit_log()
            .note(
                ebb_core::audit::NewEvent::new("grant.self-approval-refused", &principal.name)
                    .grant(&id),
            )
            .await;
        return Err(ApiError::Forbidden(
            "a requester can never approve its own request".into(),
        ));
    }
    Ok(Json(
        state
            .lifecycle
            .approve(&id, &principal.id, note.reason)
            .await?,
    ))
}

/// Denies a request.
#[utoipa::path(post, operation_id = "deny_grant", path = "/v1/grants/{id}/deny", tag = "grants",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The grant id")),
    request_body(content = Option<ReasonBody>),
    responses(
        (status = 200, body = GrantRecord),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody),
    ))]
pub async fn deny(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    reason: extract::Body,
) -> Result<Json<GrantRecord>, ApiError> {
    principal
        .require(&state, &[Role::Approver], "deny grants")
        .await?;
    let reason: ReasonBody = extract::optional_object(reason)?;
    let reason = reason.reason.unwrap_or_else(|| "denied".into());
    Ok(Json(
        state.lifecycle.deny(&id, &principal.name, &reason).await?,
    ))
}

async fn end(
    state: AppState,
    principal: Principal,
    id: String,
    trigger: Trigger,
    reason: Option<String>,
) -> Result<Json<GrantRecord>, ApiError> {
    let grant = load_visible(&state, &principal, &id).await?;
    let allowed = (owns(&principal, &grant) && principal.has(Role::Requester))
        || principal.has(Role::Operator);
    if !allowed {
        principal
            .require(&state, &[Role::Operator], &format!("end grant {id}"))
            .await?;
    }
    Ok(Json(
        state
            .lifecycle
            .revoke(&id, trigger, &principal.name, reason.as_deref())
            .await?,
    ))
}

/// The task is done: revokes the grant and verifies it.
#[utoipa::path(post, operation_id = "complete_grant", path = "/v1/grants/{id}/complete", tag = "grants",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The grant id")),
    request_body(content = Option<ReasonBody>),
    responses(
        (status = 200, description = "Revocation started (or the grant was already ending)", body = GrantRecord),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody),
    ))]
pub async fn complete(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    reason: extract::Body,
) -> Result<Json<GrantRecord>, ApiError> {
    let reason: ReasonBody = extract::optional_object(reason)?;
    end(state, principal, id, Trigger::TaskCompleted, reason.reason).await
}

/// The task failed: revokes the grant and verifies it.
#[utoipa::path(post, operation_id = "fail_grant", path = "/v1/grants/{id}/fail", tag = "grants",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The grant id")),
    request_body(content = Option<ReasonBody>),
    responses(
        (status = 200, description = "Revocation started (or the grant was already ending)", body = GrantRecord),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody),
    ))]
pub async fn fail(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    reason: extract::Body,
) -> Result<Json<GrantRecord>, ApiError> {
    let reason: ReasonBody = extract::optional_object(reason)?;
    end(state, principal, id, Trigger::TaskFailed, reason.reason).await
}

/// Revokes a grant now (its requester, or an operator for any grant).
#[utoipa::path(post, operation_id = "revoke_grant", path = "/v1/grants/{id}/revoke", tag = "grants",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The grant id")),
    request_body(content = Option<ReasonBody>),
    responses(
        (status = 200, description = "Revocation started (or the grant was already ending)", body = GrantRecord),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody),
    ))]
pub async fn revoke(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    reason: extract::Body,
) -> Result<Json<GrantRecord>, ApiError> {
    let reason: ReasonBody = extract::optional_object(reason)?;
    end(state, principal, id, Trigger::Manual, reason.reason).await
}

/// One grant. Never its credential.
#[utoipa::path(get, operation_id = "get_grant", path = "/v1/grants/{id}", tag = "grants",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The grant id")),
    responses(
        (status = 200, body = GrantRecord),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
    ))]
pub async fn get(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<GrantRecord>, ApiError> {
    Ok(Json(load_visible(&state, &principal, &id).await?))
}

/// What was requested, granted and remains, with the grant's audit trail.
#[utoipa::path(get, operation_id = "grant_report", path = "/v1/grants/{id}/report", tag = "grants",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The grant id")),
    responses(
        (status = 200, body = GrantReport),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
    ))]
pub async fn report(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<GrantReport>, ApiError> {
    load_visible(&state, &principal, &id).await?;
    Ok(Json(state.lifecycle.report(&id).await?))
}

/// `GET /v1/grants` filters.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only grants in this state.
    pub state: Option<GrantState>,
    /// Only grants of this connector instance.
    pub connector: Option<String>,
    /// Only grants of this subject (ignored for requesters: always their own).
    pub subject: Option<String>,
    /// The `next` of the previous page.
    pub after: Option<String>,
    /// Grants per page (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u16>,
}

/// Lists grants, oldest first. Requesters see only their own subject's.
#[utoipa::path(get, operation_id = "list_grants", path = "/v1/grants", tag = "grants",
    security(("bearer" = [])),
    params(ListQuery),
    responses(
        (status = 200, body = Page),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
    ))]
pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Page>, ApiError> {
    let Query(q) = query.map_err(rejection)?;
    let grant_state = q.state;
    let sees_all = principal.has(Role::Operator)
        || principal.has(Role::Auditor)
        || principal.has(Role::Approver);
    if !sees_all {
        principal
            .require(&state, &[Role::Requester], "list grants")
            .await?;
    }
    let (subject, requested_by) = if sees_all {
        (q.subject, None)
    } else {
        (None, Some(principal.id.clone()))
    };
    let filter = ListFilter {
        state: grant_state,
        connector: q.connector,
        subject,
        requested_by,
        after: q.after,
        limit: page_size(q.limit)?,
    };
    Ok(Json(
        state
            .lifecycle
            .store()
            .list(&filter)
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?,
    ))
}
