//! The console's pages: what each role sees, read through the API's own handlers
//! (so a page shows a person exactly what the API would answer them).

use super::session::SignedIn;
use super::{ConsoleState, message};
use crate::api::{ApiError, connectors, grants, ops, policy};
use askama::Template;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};
use ebb_core::store::GrantRecord;
use ebb_engine::lifecycle::GrantState;
use serde::Deserialize;

/// What the signed-in person may do.
#[derive(Debug, Clone, Copy, Default)]
pub struct Roles {
    pub requester: bool,
    pub approver: bool,
    pub operator: bool,
    pub auditor: bool,
}

impl Roles {
    /// Sees every grant (not only their own).
    pub fn sees_all(self) -> bool {
        self.approver || self.operator || self.auditor
    }
}

/// What the last action did, said once.
#[derive(Debug, Clone)]
pub struct Flash {
    pub ok: bool,
    pub text: String,
}

/// The chrome around every signed-in page.
#[derive(Debug, Clone)]
pub struct Nav {
    pub page: &'static str,
    pub who: String,
    /// The person's name from their identity provider, if it gave one.
    pub display: Option<String>,
    pub roles: Roles,
    pub csrf: String,
    pub flash: Option<Flash>,
}

/// Renders `page`, or a plain 500 if the template fails (it cannot, short of a bug).
pub fn render<T: Template>(page: &T) -> Response {
    match page.render() {
        Ok(html) => Html(html).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "rendering a console page failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the page could not be rendered",
            )
                .into_response()
        }
    }
}

#[derive(Template)]
#[template(path = "problem.html")]
struct Problem<'a> {
    title: &'a str,
    text: &'a str,
}

/// A page that says what went wrong, for people who are not signed in yet.
pub fn problem(status: StatusCode, text: &str) -> Response {
    let mut response = render(&Problem {
        title: "Something went wrong",
        text,
    });
    *response.status_mut() = status;
    response
}

#[derive(Template)]
#[template(path = "login.html")]
pub struct LoginPage {
    pub title: &'static str,
    pub oidc_name: Option<String>,
    pub token_sign_in: bool,
    pub pre: String,
    pub error: Option<String>,
}

/// A grant as the pages show it.
#[derive(Debug)]
pub struct GrantView {
    pub id: String,
    pub state: &'static str,
    pub connector: String,
    pub subject: String,
    pub subject_kind: &'static str,
    pub requested_by: String,
    pub permissions: Vec<(String, String)>,
    pub task: String,
    pub reason: Option<String>,
    pub ttl: String,
    pub requested_at: String,
    pub break_glass: bool,
    /// Milliseconds since the epoch, for the countdown; `None` before issuance.
    pub not_after_ms: Option<u64>,
    pub not_after: String,
    pub residue: Vec<ResidueView>,
    pub last_error: Option<String>,
    pub approvals: Vec<String>,
    pub approvals_required: u32,
    /// Still may have access downstream.
    pub live: bool,
}

#[derive(Debug)]
pub struct ResidueView {
    pub kind: String,
    pub detail: String,
    pub location: Option<String>,
    pub remedy: Option<String>,
}

/// `2026-11-30 10:39:07 UTC`.
pub fn when(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(t)
        .to_string()
        .replace('T', " ")
        .replace('Z', " UTC")
}

fn duration(ms: u64) -> String {
    humantime::format_duration(std::time::Duration::from_secs(ms / 1000)).to_string()
}

impl From<&GrantRecord> for GrantView {
    fn from(g: &GrantRecord) -> Self {
        let issued = g.grant.not_after > 0;
        Self {
            id: g.grant.id.clone(),
            state: g.state.as_str(),
            connector: g.connector.clone(),
            subject: g.grant.subject.id.clone(),
            subject_kind: match g.grant.subject.kind {
                ebb_core::contract::SubjectKind::Person => "person",
                ebb_core::contract::SubjectKind::Workload => "workload",
            },
            requested_by: g.requested_by.clone(),
            permissions: g
                .grant
                .permissions
                .iter()
                .map(|p| (p.action.clone(), p.resource.clone()))
                .collect(),
            task: g.grant.task.clone(),
            reason: g.reason.clone(),
            ttl: duration(g.ttl_ms),
            requested_at: when(g.requested_at),
            break_glass: g.break_glass,
            not_after_ms: issued.then_some(g.grant.not_after),
            not_after: if issued {
                when(g.grant.not_after)
            } else {
                "not issued".into()
            },
            residue: g
                .residue
                .iter()
                .map(|r| ResidueView {
                    kind: serde_json::to_value(r.kind)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default(),
                    detail: r.detail.clone(),
                    location: r.location.clone(),
                    remedy: r.remedy.clone(),
                })
                .collect(),
            last_error: g.last_error.clone(),
            approvals: g.approvals.iter().map(|a| a.by.clone()).collect(),
            approvals_required: g.approvals_required,
            live: g.state.may_have_access(),
        }
    }
}

/// Grants in `state` the person may see (at most 1,000).
async fn listed(
    state: &ConsoleState,
    who: &SignedIn,
    grant_state: GrantState,
) -> Result<Vec<GrantRecord>, ApiError> {
    let Json(page) = grants::list(
        State(state.app.clone()),
        who.principal.clone(),
        Ok(Query(grants::ListQuery {
            state: Some(grant_state),
            connector: None,
            subject: None,
            after: None,
            limit: Some(1000),
        })),
    )
    .await?;
    Ok(page.grants)
}

/// An error page for a signed-in person.
fn failed(who: &SignedIn, page: &'static str, e: &ApiError) -> Response {
    let status = e.status();
    let mut response = render(&Failed {
        title: "Not possible",
        nav: who.nav(page),
        text: message(e),
    });
    *response.status_mut() = status;
    response
}

#[derive(Template)]
#[template(path = "failed.html")]
struct Failed {
    title: &'static str,
    nav: Nav,
    text: String,
}

pub async fn redirect_home() -> Redirect {
    Redirect::permanent("/console/")
}

#[derive(Template)]
#[template(path = "home.html")]
struct Home {
    title: &'static str,
    nav: Nav,
    pending: u64,
    live: u64,
    troubled: u64,
    mine: Vec<GrantView>,
}

/// `GET /console/`: what needs the person's attention, by role. The counts are the
/// store's own (kept with every commit), so the page costs the same with a million
/// grants as with ten.
pub async fn home(State(state): State<ConsoleState>, who: SignedIn) -> Response {
    let roles = super::roles_of(&who.principal);
    let store = state.app.lifecycle.store();
    let (mut pending, mut live, mut troubled) = (0, 0, 0);
    if roles.sees_all() {
        let counts = match store.counts().await {
            Ok(counts) => counts,
            Err(e) => return failed(&who, "home", &e.into()),
        };
        for (s, n) in counts {
            match s {
                GrantState::Requested => pending = n,
                GrantState::Residual | GrantState::Escalated | GrantState::IssueFailed => {
                    troubled += n;
                }
                _ if s.may_have_access() => live += n,
                _ => {}
            }
        }
    }
    let mut mine = Vec::new();
    if roles.requester {
        // Through the requester index: the person's own grants only.
        let own = store
            .list(&ebb_core::store::ListFilter {
                requested_by: Some(who.principal.id.clone()),
                limit: 1000,
                ..ebb_core::store::ListFilter::default()
            })
            .await;
        match own {
            Ok(page) => mine.extend(
                page.grants
                    .iter()
                    .filter(|g| !g.state.is_closed())
                    .map(GrantView::from),
            ),
            Err(e) => return failed(&who, "home", &e.into()),
        }
    }
    render(&Home {
        title: "Overview",
        nav: who.nav("home"),
        pending,
        live,
        troubled,
        mine,
    })
}

/// How a request was decided, from its `grant.requested` event.
#[derive(Debug, Default)]
pub struct Decided {
    pub by: String,
    pub outcome: String,
    pub policies: Vec<String>,
    pub reasons: Vec<String>,
    pub risk: Vec<String>,
    pub standing: Option<Vec<String>>,
    pub standing_unknown: Option<String>,
}

impl Decided {
    fn from_detail(policy: &serde_json::Value) -> Self {
        let strings = |v: &serde_json::Value| -> Vec<String> {
            v.as_array()
                .map(|a| {
                    a.iter()
                        .map(|x| {
                            x.as_str()
                                .map(str::to_owned)
                                .unwrap_or_else(|| x.to_string())
                        })
                        .collect()
                })
                .unwrap_or_default()
        };
        let verdict = &policy["verdict"];
        let by = policy["decided_by"]
            .as_str()
            .unwrap_or("unknown")
            .to_owned();
        let outcome = if by == "connector" {
            match policy["approval"].as_str() {
                Some("required") => {
                    "approval required (the connector's lifecycle.approval)".to_owned()
                }
                Some(other) => format!("connector: {other}"),
                None => String::new(),
            }
        } else {
            let outcome = &verdict["outcome"];
            match (outcome["decision"].as_str(), outcome["approvers"].as_u64()) {
                (Some("needs-approval"), Some(1)) => "needs one approver".to_owned(),
                (Some("needs-approval"), Some(n)) => format!("needs {n} different approvers"),
                (Some("auto-approve"), _) => "approved without a person".to_owned(),
                (Some("deny"), _) => "denied".to_owned(),
                _ => outcome.to_string(),
            }
        };
        let risk = match &policy["risk"] {
            serde_json::Value::Array(_) => strings(&policy["risk"]),
            serde_json::Value::Object(o) => o
                .iter()
                .filter(|(_, v)| v.as_bool() == Some(true) || v.is_string())
                .map(|(k, v)| {
                    v.as_str()
                        .map(|s| format!("{k}: {s}"))
                        .unwrap_or_else(|| k.clone())
                })
                .collect(),
            _ => vec![],
        };
        Self {
            by,
            outcome,
            policies: strings(&verdict["policies"]),
            reasons: strings(&verdict["reasons"]),
            risk,
            standing: policy["standing"]["findings"]
                .as_array()
                .map(|_| strings(&policy["standing"]["findings"])),
            standing_unknown: policy["standing"]["unknown_because"]
                .as_str()
                .map(str::to_owned),
        }
    }
}

#[derive(Debug)]
pub struct Request {
    pub grant: GrantView,
    pub decided: Decided,
    /// The person requested it: no approve button, ever.
    pub own: bool,
    /// The person approved it already (N-of-M).
    pub approved_by_me: bool,
}

#[derive(Template)]
#[template(path = "requests.html")]
struct Requests {
    title: &'static str,
    nav: Nav,
    requests: Vec<Request>,
}

/// `GET /console/requests`: the approval queue.
pub async fn requests(State(state): State<ConsoleState>, who: SignedIn) -> Response {
    if let Err(e) = who
        .principal
        .require(
            &state.app,
            &[ebb_engine::config::Role::Approver],
            "open the approval queue",
        )
        .await
    {
        return failed(&who, "requests", &e);
    }
    let found = match listed(&state, &who, GrantState::Requested).await {
        Ok(found) => found,
        Err(e) => return failed(&who, "requests", &e),
    };
    let mut requests = Vec::new();
    for g in &found {
        let policy = state
            .app
            .lifecycle
            .store()
            .audit(&ebb_core::store::AuditQuery {
                grant_id: Some(g.grant.id.clone()),
                after_seq: 0,
                limit: 1,
            })
            .await
            .ok()
            .and_then(|events| events.into_iter().find(|e| e.kind == "grant.requested"))
            .map(|e| Decided::from_detail(&e.detail["policy"]))
            .unwrap_or_default();
        requests.push(Request {
            grant: GrantView::from(g),
            decided: policy,
            own: g.requested_by == who.principal.id || g.grant.subject.id == who.principal.id,
            approved_by_me: g.approvals.iter().any(|a| a.by == who.principal.id),
        });
    }
    render(&Requests {
        title: "Requests",
        nav: who.nav("requests"),
        requests,
    })
}

#[derive(Template)]
#[template(path = "grants.html")]
struct Grants {
    title: &'static str,
    nav: Nav,
    troubled: Vec<GrantView>,
    live: Vec<GrantView>,
}

/// `GET /console/grants`: escalated and residual grants first, then live ones.
pub async fn grants(State(state): State<ConsoleState>, who: SignedIn) -> Response {
    let mut troubled = Vec::new();
    let mut live = Vec::new();
    for s in [
        GrantState::Escalated,
        GrantState::Residual,
        GrantState::IssueFailed,
        GrantState::Active,
        GrantState::Issuing,
        GrantState::Revoking,
        GrantState::Revoked,
        GrantState::Approved,
    ] {
        let found = match listed(&state, &who, s).await {
            Ok(found) => found,
            Err(e) => return failed(&who, "grants", &e),
        };
        let target = if matches!(
            s,
            GrantState::Escalated | GrantState::Residual | GrantState::IssueFailed
        ) {
            &mut troubled
        } else {
            &mut live
        };
        target.extend(found.iter().map(GrantView::from));
    }
    live.sort_by_key(|g| g.not_after_ms.unwrap_or(u64::MAX));
    render(&Grants {
        title: "Grants",
        nav: who.nav("grants"),
        troubled,
        live,
    })
}

/// One audit event on a grant's timeline.
#[derive(Debug)]
pub struct EventView {
    pub seq: u64,
    pub at: String,
    pub kind: String,
    pub actor: String,
    pub change: Option<String>,
    /// The evidence (verification verdicts, residue, errors), as indented JSON.
    pub detail: Option<String>,
    /// The detail carries a verification's verdict: shown open.
    pub proof: bool,
    pub hash: String,
    pub grant: Option<String>,
}

impl From<&ebb_core::audit::AuditEvent> for EventView {
    fn from(e: &ebb_core::audit::AuditEvent) -> Self {
        Self {
            seq: e.seq,
            at: when(e.at),
            kind: e.kind.clone(),
            actor: e.actor.clone(),
            change: match (e.from, e.to) {
                (Some(f), Some(t)) => Some(format!("{} → {}", f.as_str(), t.as_str())),
                (None, Some(t)) => Some(format!("→ {}", t.as_str())),
                _ => None,
            },
            proof: e.detail.get("verdict").is_some() || e.detail.get("residue").is_some(),
            detail: (!e.detail.is_null())
                .then(|| serde_json::to_string_pretty(&e.detail).unwrap_or_default()),
            hash: e.hash.chars().take(16).collect(),
            grant: e.grant_id.clone(),
        }
    }
}

#[derive(Template)]
#[template(path = "grant.html")]
struct GrantPage {
    title: &'static str,
    nav: Nav,
    grant: GrantView,
    may_have_access: bool,
    issued_by_digest: Option<String>,
    verified_at: Option<String>,
    events: Vec<EventView>,
}

/// `GET /console/grants/{id}`: the grant's report and its timeline.
pub async fn grant(
    State(state): State<ConsoleState>,
    who: SignedIn,
    Path(id): Path<String>,
) -> Response {
    let report =
        match grants::report(State(state.app.clone()), who.principal.clone(), Path(id)).await {
            Ok(Json(report)) => report,
            Err(e) => return failed(&who, "grants", &e),
        };
    render(&GrantPage {
        title: "Grant report",
        nav: who.nav("grants"),
        grant: GrantView::from(&report.grant),
        may_have_access: report.may_have_access,
        issued_by_digest: report.grant.issued_by_digest.clone(),
        verified_at: report.grant.verified_at.map(when),
        events: report.events.iter().map(EventView::from).collect(),
    })
}

#[derive(Debug)]
pub struct ConnectorRow {
    pub name: String,
    pub kind: String,
    pub version: String,
    pub system: String,
    pub sha256: String,
    pub contract: String,
    pub capabilities: Vec<&'static str>,
    pub health: String,
    pub healthy: bool,
    pub source: &'static str,
}

#[derive(Template)]
#[template(path = "connectors.html")]
struct Connectors {
    title: &'static str,
    nav: Nav,
    connectors: Vec<ConnectorRow>,
}

/// `GET /console/connectors`.
pub async fn connectors(State(state): State<ConsoleState>, who: SignedIn) -> Response {
    let Json(views) = connectors::list(State(state.app.clone()), who.principal.clone()).await;
    let escalations = state
        .app
        .lifecycle
        .store()
        .escalations()
        .await
        .unwrap_or_default();
    let rows = views
        .into_iter()
        .map(|v| {
            let caps = &v.info.capabilities;
            let capabilities = [
                (caps.revocable, "revocable"),
                (caps.downstream_expiry, "downstream expiry"),
                (caps.terminates_sessions, "ends sessions"),
                (caps.can_verify, "verifies"),
                (caps.can_verify_issued, "verifies issuance"),
                (caps.reports_standing_access, "standing access"),
                (caps.revokes_by_value, "revokes by value"),
            ]
            .into_iter()
            .filter_map(|(has, name)| has.then_some(name))
            .collect();
            let waiting = state
                .app
                .lifecycle
                .registry()
                .get(&v.name)
                .and_then(|s| s.first_waiting());
            let escalated = escalations.get(&v.name).copied().unwrap_or(0);
            let (health, healthy) = if v.draining {
                ("draining: takes no new requests".to_owned(), false)
            } else if waiting.is_some() {
                ("its downstream system does not answer".to_owned(), false)
            } else if escalated > 0 {
                (format!("{escalated} escalated grant(s)"), false)
            } else {
                ("healthy".to_owned(), true)
            };
            ConnectorRow {
                name: v.name,
                kind: v.info.name,
                version: v.info.version,
                system: v.info.system,
                sha256: v.sha256,
                contract: serde_json::to_value(v.contract)
                    .ok()
                    .and_then(|c| c.as_str().map(str::to_owned))
                    .unwrap_or_default(),
                capabilities,
                health,
                healthy,
                source: v.source.unwrap_or("other"),
            }
        })
        .collect();
    render(&Connectors {
        title: "Connectors",
        nav: who.nav("connectors"),
        connectors: rows,
    })
}

#[derive(Template)]
#[template(path = "policies.html")]
struct Policies {
    title: &'static str,
    nav: Nav,
    configured: bool,
    ids: Vec<String>,
}

/// `GET /console/policies`.
pub async fn policies(State(state): State<ConsoleState>, who: SignedIn) -> Response {
    match policy::policies(State(state.app.clone()), who.principal.clone()).await {
        Ok(Json(view)) => render(&Policies {
            title: "Policies",
            nav: who.nav("policies"),
            configured: view.configured,
            ids: view.ids,
        }),
        Err(e) => failed(&who, "policies", &e),
    }
}

#[derive(Debug, Deserialize)]
pub struct AuditQuery {
    #[serde(default)]
    after: Option<i64>,
    #[serde(default)]
    check: Option<String>,
}

#[derive(Template)]
#[template(path = "audit.html")]
struct Audit {
    title: &'static str,
    nav: Nav,
    events: Vec<EventView>,
    next: Option<u64>,
    /// The chain check's outcome, when asked for.
    check: Option<(bool, String)>,
}

/// `GET /console/audit`: the chain check and the log, 100 events a page.
pub async fn audit(
    State(state): State<ConsoleState>,
    who: SignedIn,
    query: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let q = query.map(|Query(q)| q).unwrap_or(AuditQuery {
        after: None,
        check: None,
    });
    let check = if q.check.is_some() {
        match ops::verify_audit(State(state.app.clone()), who.principal.clone()).await {
            Ok(Json(report)) => Some(match &report.problem {
                None => (
                    true,
                    format!(
                        "The chain is intact: {} events and {} grant records checked.",
                        report.events, report.records
                    ),
                ),
                Some(problem) => (false, format!("The chain is broken: {problem}")),
            }),
            Err(e) => return failed(&who, "audit", &e),
        }
    } else {
        None
    };
    let events = match ops::audit(
        State(state.app.clone()),
        who.principal.clone(),
        Ok(Query(ops::AuditParams {
            grant: None,
            after: q.after,
            limit: Some(100),
        })),
    )
    .await
    {
        Ok(Json(events)) => events,
        Err(e) => return failed(&who, "audit", &e),
    };
    let next = (events.len() == 100)
        .then(|| events.last().map(|e| e.seq))
        .flatten();
    render(&Audit {
        title: "Audit log",
        nav: who.nav("audit"),
        events: events.iter().map(EventView::from).collect(),
        next,
        check,
    })
}

#[derive(Debug, Deserialize)]
pub struct Find {
    #[serde(default)]
    id: String,
}

/// `GET /console/find?id=…`: the grant's report.
pub async fn find(_who: SignedIn, Query(q): Query<Find>) -> Response {
    let id: String =
        q.id.trim()
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(64)
            .collect();
    Redirect::to(&format!("/console/grants/{id}")).into_response()
}
