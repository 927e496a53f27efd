//! `/v1/anomalies` and `/v1/policies`: reporting anomalies, and the policies in force.

use super::error::ErrorBody;
use super::{ApiError, AppState, Principal, extract};
use axum::Json;
use axum::extract::State;
use ebb_core::audit::NewEvent;
use ebb_core::store::ListFilter;
use ebb_engine::config::Role;
use ebb_engine::lifecycle::{GrantState, Trigger};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

/// `POST /v1/anomalies`: a grant or a subject (or both) behaving oddly.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AnomalyReport {
    /// A grant to revoke now.
    #[serde(default)]
    pub grant: Option<String>,
    /// A subject whose grants are all revoked now, and whose requests carry the
    /// `anomalous-subject` risk flag for a while.
    #[serde(default)]
    pub subject: Option<String>,
    /// What was seen.
    #[schema(min_length = 1)]
    pub reason: String,
    /// Who saw it (a SIEM, a detector), for the audit log.
    #[serde(default)]
    pub source: Option<String>,
}

/// What a report did.
#[derive(Debug, Serialize, ToSchema)]
pub struct AnomalyOutcome {
    /// Grants whose revocation started (or that were withdrawn before issuance).
    pub revoked: Vec<String>,
    /// The subject now flagged, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flagged_subject: Option<String>,
}

/// Reports an anomaly: revokes the grant, or every live grant of the subject, at
/// once (trigger `anomaly`), and flags the subject for policy. Also the input for
/// detectors' webhooks (role `reporter`).
#[utoipa::path(post, operation_id = "report_anomaly", path = "/v1/anomalies", tag = "approval",
    security(("bearer" = [])),
    request_body = AnomalyReport,
    responses(
        (status = 200, body = AnomalyOutcome),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
    ))]
pub async fn report_anomaly(
    State(state): State<AppState>,
    principal: Principal,
    body: extract::Body,
) -> Result<Json<AnomalyOutcome>, ApiError> {
    principal
        .require(
            &state,
            &[Role::Operator, Role::Reporter],
            "report anomalies",
        )
        .await?;
    let report: AnomalyReport = extract::object(body)?;
    if report.reason.trim().is_empty() {
        return Err(ApiError::BadRequest("say what was seen: `reason`".into()));
    }
    if report.grant.is_none() && report.subject.is_none() {
        return Err(ApiError::BadRequest(
            "name a `grant`, a `subject`, or both".into(),
        ));
    }
    let lifecycle = &state.lifecycle;
    let mut targets = Vec::new();
    let mut subject = report.subject.clone();
    if let Some(id) = &report.grant {
        let grant = lifecycle.get(id).await?;
        subject.get_or_insert(grant.grant.subject.id.clone());
        targets.push(grant);
    }
    if let Some(s) = &report.subject {
        targets.extend(
            lifecycle
                .grants_matching(ListFilter {
                    subject: Some(s.clone()),
                    ..Default::default()
                })
                .await?,
        );
    }
    if let Some(s) = &subject {
        // Kept in the store; the audit record below makes it durable.
        state.approval.flag(s, lifecycle.clock().now_ms()).await?;
    }
    let actor = format!("{} (anomaly)", principal.name);
    lifecycle
        .audit_log()
        .record(
            NewEvent::new("anomaly.reported", &principal.name).detail(json!({
                "grant": report.grant,
                "subject": subject,
                "reason": report.reason,
                "source": report.source,
            })),
        )
        .await?;
    let mut revoked = Vec::new();
    for grant in targets {
        if matches!(
            grant.state,
            GrantState::Requested | GrantState::Approved | GrantState::Active
        ) {
            lifecycle
                .revoke(
                    &grant.grant.id,
                    Trigger::Anomaly,
                    &actor,
                    Some(&report.reason),
                )
                .await?;
            revoked.push(grant.grant.id);
        }
    }
    tracing::warn!(subject = ?subject, revoked = revoked.len(), "ANOMALY reported; grants revoked");
    state.approval.alerts.send(json!({
        "kind": "anomaly",
        "subject": subject,
        "grant": report.grant,
        "reason": report.reason,
        "source": report.source,
        "revoked": revoked,
    }));
    Ok(Json(AnomalyOutcome {
        revoked,
        flagged_subject: subject,
    }))
}

/// The policies in force.
#[derive(Debug, Serialize, ToSchema)]
pub struct PolicyView {
    /// Whether Cedar policies decide requests (otherwise each connector's
    /// `lifecycle.approval` does).
    pub configured: bool,
    /// Their ids (`@id`, or `<file>#<n>`).
    pub ids: Vec<String>,
}

/// Lists the policies in force.
#[utoipa::path(get, operation_id = "list_policies", path = "/v1/policies", tag = "approval",
    security(("bearer" = [])),
    responses(
        (status = 200, body = PolicyView),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
    ))]
pub async fn policies(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<PolicyView>, ApiError> {
    principal
        .require(&state, &[Role::Operator, Role::Auditor], "read policies")
        .await?;
    Ok(Json(view(&state)))
}

fn view(state: &AppState) -> PolicyView {
    let policies = state.approval.policies();
    PolicyView {
        configured: policies.is_some(),
        ids: policies.map(|p| p.ids()).unwrap_or_default(),
    }
}

/// Loads the policy files again. A file that does not parse or validate is refused
/// with the error, and the policies in force stay.
#[utoipa::path(post, operation_id = "reload_policies", path = "/v1/policies/reload", tag = "approval",
    security(("bearer" = [])),
    responses(
        (status = 200, body = PolicyView),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 409, body = ErrorBody),
    ))]
pub async fn reload_policies(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<PolicyView>, ApiError> {
    principal
        .require(&state, &[Role::Operator], "reload policies")
        .await?;
    if state.approval.policies().is_none() {
        return Err(ApiError::Conflict(
            "no policies are configured ([policy] path)".into(),
        ));
    }
    reload(&state, &principal.name)
        .await
        .map_err(ApiError::BadRequest)?;
    Ok(Json(view(&state)))
}

/// Reloads the policies and audits the outcome; shared with the file watcher.
pub async fn reload(state: &AppState, actor: &str) -> Result<Vec<String>, String> {
    let result = state.approval.reload(state.lifecycle.registry());
    let event = match &result {
        Ok(ids) => NewEvent::new("policy.reloaded", actor).detail(json!({ "ids": ids })),
        Err(e) => {
            tracing::error!(error = %e, "policies not reloaded; the old ones stay in force");
            NewEvent::new("policy.reload-failed", actor).detail(json!({ "error": e.to_string() }))
        }
    };
    // A failure to record is logged and counted by the audit log; the reload's own
    // outcome is what the caller learns.
    let _recorded = state.lifecycle.audit_log().record(event).await;
    result.map_err(|e| e.to_string())
}

/// Reloads the policies when a policy file's content changes (a broken file is
/// reported once and the old policies stay). Changes to anything else in the same
/// folders — the host's own log, say — and writes that leave a policy file as it
/// was are ignored, so the watcher never feeds the audit log by itself. The watch
/// lasts as long as the returned watcher is kept.
pub fn watch(
    state: AppState,
    paths: Vec<std::path::PathBuf>,
) -> anyhow::Result<notify::RecommendedWatcher> {
    use notify::Watcher as _;
    let Some(policies) = state.approval.policies() else {
        anyhow::bail!("no policies are configured to watch");
    };
    // The content last loaded or tried: a change is one that differs from it.
    let mut last = policies.fingerprint_on_disk().ok();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event
            && !event.kind.is_access()
        {
            let _ = tx.send(event.paths);
        }
    })?;
    for path in &paths {
        // Editors replace files: watch the folder a file is in.
        let target = if path.is_dir() {
            path.clone()
        } else {
            path.parent()
                .map(std::path::Path::to_path_buf)
                .unwrap_or_else(|| ".".into())
        };
        watcher.watch(&target, notify::RecursiveMode::NonRecursive)?;
    }
    tokio::spawn(async move {
        while let Some(changed) = rx.recv().await {
            let concerns = |paths: &[std::path::PathBuf]| {
                state
                    .approval
                    .policies()
                    .is_some_and(|p| paths.iter().any(|path| p.concerns(path)))
            };
            let mut relevant = concerns(&changed);
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            while let Ok(more) = rx.try_recv() {
                relevant |= concerns(&more);
            }
            if !relevant {
                continue;
            }
            let now = state
                .approval
                .policies()
                .and_then(|p| p.fingerprint_on_disk().ok());
            if now.is_some() && now == last {
                continue;
            }
            last = now;
            if let Ok(ids) = reload(&state, "policy-watch").await {
                tracing::info!(policies = ids.len(), "policies reloaded");
            }
        }
    });
    Ok(watcher)
}
