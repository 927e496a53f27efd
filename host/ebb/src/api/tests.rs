//! The API through its router: every role, error path and the self-approval rule.

use super::*;
use axum::http::StatusCode;
use ebb_core::seal::{HostKey, Sealer};
use ebb_engine::config::{
    ApprovalMode, ConnectorConfig, LifecyclePolicy, Role, RuntimeConfig, TokenConfig,
};
use ebb_engine::lifecycle::{Clock, EngineConfig};
use ebb_engine::registry::Registry;
use ebb_runtime::Runtime;
use ebb_store_kv::KvStore;
use serde_json::{Value, json};

fn token(name: &str, roles: &[Role]) -> TokenConfig {
    TokenConfig {
        name: name.into(),
        sha256: auth::hash_token(&format!("tok-{name}")),
        roles: roles.to_vec(),
        subject: Some(format!("spiffe://test/{name}")),
        kind: ebb_core::contract::SubjectKind::Workload,
    }
}

/// One process-wide recorder for the test binary.
fn recorder() -> metrics_exporter_prometheus::PrometheusHandle {
    static HANDLE: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
        std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

async fn app() -> Router {
    router(state().await)
}

/// An API over a temporary store with two noop instances (`auto`, `manual`) and
/// tokens `tok-<name>` for agent, other-agent, alice (approver), selfish
/// (requester and approver), ops and audit.
pub(crate) async fn state() -> AppState {
    let registry = Arc::new(Registry::new(
        Runtime::new(&RuntimeConfig::default()).unwrap(),
    ));
    for (name, approval) in [
        ("auto", ApprovalMode::Auto),
        ("manual", ApprovalMode::Required),
    ] {
        let policy = LifecyclePolicy {
            approval,
            max_ttl_ms: 3_600_000,
            ..LifecyclePolicy::default()
        };
        registry
            .load(
                name,
                &ConnectorConfig::new(ebb_test_plugins::NOOP).with_lifecycle(policy),
            )
            .await
            .unwrap();
    }
    let lifecycle = Lifecycle::new(
        KvStore::temporary([9; 32]).unwrap(),
        Sealer::new(&HostKey::from_hex(&"22".repeat(32)).unwrap()),
        registry,
        Clock::system(),
        EngineConfig::default(),
    );
    lifecycle.start().await.unwrap();
    let loader = ebb_engine::loader::Loader::new(lifecycle.clone(), Default::default());
    let tokens = Tokens::new(&[
        token("agent", &[Role::Requester]),
        token("other-agent", &[Role::Requester]),
        token("alice", &[Role::Approver]),
        token("selfish", &[Role::Requester, Role::Approver]),
        token("ops", &[Role::Operator]),
        token("audit", &[Role::Auditor]),
    ])
    .unwrap();
    AppState {
        guard: super::guard::Guard::start(
            lifecycle.audit_log().clone(),
            std::time::Duration::from_millis(100),
        ),
        lifecycle,
        loader,
        approval: Arc::new(ebb_engine::approval::ApprovalGate::connector_modes(
            Default::default(),
        )),
        identity: None,
        tokens: Arc::new(tokens),
        metrics: Some(recorder()),
        membership: std::sync::Arc::new(crate::api::cluster::Membership::local("test", 0)),
    }
}

pub(crate) async fn call(
    app: &Router,
    method: &str,
    uri: &str,
    who: Option<&str>,
    body: Option<&str>,
) -> (StatusCode, Value) {
    let bearer = who.map(|w| format!("tok-{w}"));
    ebb_test_support::api::send(app, method, uri, bearer.as_deref(), body).await
}

pub(crate) fn grant_body(connector: &str, ttl: &str) -> String {
    json!({
        "connector": connector,
        "permissions": [{"action": "use", "resource": "x"}],
        "ttl": ttl,
        "task": "nightly report",
    })
    .to_string()
}

fn error_code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn unauthenticated_and_wrong_role_are_refused_and_audited() {
    let app = app().await;
    let (s, v) = call(&app, "GET", "/v1/grants", None, None).await;
    assert_eq!(
        (s, error_code(&v)),
        (StatusCode::UNAUTHORIZED, "unauthenticated")
    );
    let (s, _) = call(&app, "GET", "/v1/grants", Some("nobody"), None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, v) = call(
        &app,
        "POST",
        "/v1/grants",
        Some("audit"),
        Some(&grant_body("auto", "1m")),
    )
    .await;
    assert_eq!((s, error_code(&v)), (StatusCode::FORBIDDEN, "forbidden"));
    let (s, _) = call(&app, "GET", "/v1/audit", Some("agent"), None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // Refusals of authentication are counted into one summary per window (100 ms
    // here); refusals by role name their principal, one event each.
    let mut events = Value::Null;
    for _ in 0..100 {
        events = call(&app, "GET", "/v1/audit", Some("audit"), None).await.1;
        if events
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "auth.refusals")
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let events = events.as_array().unwrap();
    let unauthenticated: u64 = events
        .iter()
        .filter(|e| e["kind"] == "auth.refusals")
        .flat_map(|e| e["detail"]["clients"].as_array().unwrap().clone())
        .filter(|c| c["kind"] == "unauthenticated")
        .map(|c| c["count"].as_u64().unwrap())
        .sum();
    assert_eq!(unauthenticated, 2, "{events:?}");
    assert!(
        !events.iter().any(|e| e["kind"] == "auth.unauthenticated"),
        "no event per refused request"
    );
    assert_eq!(
        events
            .iter()
            .filter(|e| e["kind"] == "auth.forbidden")
            .count(),
        2,
        "{events:?}"
    );
    let (s, v) = call(&app, "GET", "/v1/audit/verify", Some("audit"), None).await;
    assert_eq!((s, v["problem"].clone()), (StatusCode::OK, Value::Null));
}

#[tokio::test]
async fn auto_approved_grant_returns_credential_once_and_completes() {
    let app = app().await;
    let (s, v) = call(
        &app,
        "POST",
        "/v1/grants",
        Some("agent"),
        Some(&grant_body("auto", "10m")),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["credential"]["token"], "noop");
    assert_eq!(v["grant"]["state"], "active");
    assert_eq!(v["grant"]["grant"]["subject"]["id"], "spiffe://test/agent");
    let id = v["grant"]["grant"]["id"].as_str().unwrap().to_owned();
    // Never again: not in get, report or list.
    for uri in [
        format!("/v1/grants/{id}"),
        format!("/v1/grants/{id}/report"),
        "/v1/grants".into(),
    ] {
        let (s, v) = call(&app, "GET", &uri, Some("agent"), None).await;
        assert_eq!(s, StatusCode::OK);
        assert!(!v.to_string().contains("\"token\":\"noop\""), "{uri}: {v}");
    }
    // Another subject cannot see it.
    let (s, _) = call(
        &app,
        "GET",
        &format!("/v1/grants/{id}"),
        Some("other-agent"),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, v) = call(&app, "GET", "/v1/grants", Some("other-agent"), None).await;
    assert_eq!(
        (s, v["grants"].as_array().unwrap().len()),
        (StatusCode::OK, 0)
    );
    // ...nor end it.
    let (s, _) = call(
        &app,
        "POST",
        &format!("/v1/grants/{id}/complete"),
        Some("other-agent"),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, v) = call(
        &app,
        "POST",
        &format!("/v1/grants/{id}/complete"),
        Some("agent"),
        None,
    )
    .await;
    assert_eq!((s, v["state"].as_str()), (StatusCode::OK, Some("revoking")));
    for _ in 0..400 {
        let (_, v) = call(
            &app,
            "GET",
            &format!("/v1/grants/{id}"),
            Some("agent"),
            None,
        )
        .await;
        if v["state"] == "verified" {
            assert_eq!(v["trigger"], "task-completed");
            let (s, text) = call(&app, "GET", "/metrics", None, None).await;
            let text = text.as_str().unwrap().to_owned();
            assert_eq!(s, StatusCode::OK);
            assert!(text.contains("ebb_grants{state=\"verified\"}"), "{text}");
            assert!(text.contains("ebb_revoke_seconds"), "{text}");
            assert!(text.contains("ebb_verify_seconds"), "{text}");
            assert!(!text.contains(&id), "no grant ids in metrics");
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    panic!("the completed grant was never verified");
}

#[tokio::test]
async fn approval_flow_refuses_self_approval() {
    let app = app().await;
    // A token holding both roles still cannot approve its own request.
    let (s, v) = call(
        &app,
        "POST",
        "/v1/grants",
        Some("selfish"),
        Some(&grant_body("manual", "5m")),
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    assert!(v.get("credential").is_none());
    let id = v["grant"]["grant"]["id"].as_str().unwrap().to_owned();
    let (s, v) = call(
        &app,
        "POST",
        &format!("/v1/grants/{id}/approve"),
        Some("selfish"),
        None,
    )
    .await;
    assert_eq!(
        (s, error_code(&v)),
        (StatusCode::FORBIDDEN, "forbidden"),
        "{v}"
    );
    // A requester cannot approve at all; an approver can.
    let (s, _) = call(
        &app,
        "POST",
        &format!("/v1/grants/{id}/approve"),
        Some("agent"),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // Issuing before approval is a conflict.
    let (s, _) = call(
        &app,
        "POST",
        &format!("/v1/grants/{id}/issue"),
        Some("selfish"),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT);
    let (s, v) = call(
        &app,
        "POST",
        &format!("/v1/grants/{id}/approve"),
        Some("alice"),
        Some(r#"{"reason": "on call"}"#),
    )
    .await;
    assert_eq!(
        (s, v["state"].as_str()),
        (StatusCode::OK, Some("approved")),
        "{v}"
    );
    // Only the requester issues, once.
    let (s, _) = call(
        &app,
        "POST",
        &format!("/v1/grants/{id}/issue"),
        Some("agent"),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, v) = call(
        &app,
        "POST",
        &format!("/v1/grants/{id}/issue"),
        Some("selfish"),
        None,
    )
    .await;
    assert_eq!(
        (s, v["credential"]["token"].as_str()),
        (StatusCode::CREATED, Some("noop"))
    );
    let (s, _) = call(
        &app,
        "POST",
        &format!("/v1/grants/{id}/issue"),
        Some("selfish"),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT);
    let (_, report) = call(
        &app,
        "GET",
        &format!("/v1/grants/{id}/report"),
        Some("audit"),
        None,
    )
    .await;
    let kinds: Vec<&str> = report["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert!(kinds.contains(&"grant.self-approval-refused"), "{kinds:?}");
    // Denying a pending request closes it.
    let (_, v) = call(
        &app,
        "POST",
        "/v1/grants",
        Some("agent"),
        Some(&grant_body("manual", "5m")),
    )
    .await;
    let id = v["grant"]["grant"]["id"].as_str().unwrap().to_owned();
    let (s, v) = call(
        &app,
        "POST",
        &format!("/v1/grants/{id}/deny"),
        Some("alice"),
        Some(r#"{"reason": "not now"}"#),
    )
    .await;
    assert_eq!((s, v["state"].as_str()), (StatusCode::OK, Some("denied")));
    // Operators revoke anyone's grants.
    let (_, v) = call(
        &app,
        "POST",
        "/v1/grants",
        Some("agent"),
        Some(&grant_body("auto", "5m")),
    )
    .await;
    let id = v["grant"]["grant"]["id"].as_str().unwrap().to_owned();
    let (s, v) = call(
        &app,
        "POST",
        &format!("/v1/grants/{id}/revoke"),
        Some("ops"),
        None,
    )
    .await;
    assert_eq!((s, v["state"].as_str()), (StatusCode::OK, Some("revoking")));
}

#[tokio::test]
async fn bad_input_gets_a_clear_4xx_never_a_5xx() {
    let app = app().await;
    let cases: &[(&str, &str, Option<&str>, StatusCode, &str)] = &[
        (
            "POST",
            "/v1/grants",
            Some("{not json"),
            StatusCode::BAD_REQUEST,
            "JSON",
        ),
        (
            "POST",
            "/v1/grants",
            Some(r#"{"connector": "auto"}"#),
            StatusCode::BAD_REQUEST,
            "missing field",
        ),
        (
            "POST",
            "/v1/grants",
            Some(r#"{"connector":"auto","permissions":[],"ttl":"1m","task":"t","extra":1}"#),
            StatusCode::BAD_REQUEST,
            "unknown field",
        ),
        (
            "POST",
            "/v1/grants",
            Some(&grant_body("auto", "soon")),
            StatusCode::BAD_REQUEST,
            "ttl `soon`",
        ),
        (
            "POST",
            "/v1/grants",
            Some(&grant_body("auto", "0s")),
            StatusCode::BAD_REQUEST,
            "at least 1000 ms",
        ),
        (
            "POST",
            "/v1/grants",
            Some(&grant_body("auto", "2h")),
            StatusCode::BAD_REQUEST,
            "over the maximum",
        ),
        (
            "POST",
            "/v1/grants",
            Some(&grant_body("nope", "1m")),
            StatusCode::BAD_REQUEST,
            "no connector named `nope`",
        ),
        (
            "POST",
            "/v1/grants",
            Some(
                r#"{"connector":"auto","permissions":[{"action":"sudo","resource":"x"}],"ttl":"1m","task":"t"}"#,
            ),
            StatusCode::BAD_REQUEST,
            "no action `sudo`",
        ),
        (
            "POST",
            "/v1/grants",
            Some(
                r#"{"connector":"auto","permissions":[{"action":"use","resource":"x"}],"ttl":"1m","task":" "}"#,
            ),
            StatusCode::BAD_REQUEST,
            "task",
        ),
        (
            "GET",
            "/v1/grants?state=bogus",
            None,
            StatusCode::BAD_REQUEST,
            "unknown variant `bogus`",
        ),
        (
            "GET",
            "/v1/grants?limit=many",
            None,
            StatusCode::BAD_REQUEST,
            "limit",
        ),
        (
            "GET",
            "/v1/grants/nope",
            None,
            StatusCode::NOT_FOUND,
            "no grant",
        ),
        (
            "POST",
            "/v1/grants/nope/complete",
            None,
            StatusCode::NOT_FOUND,
            "no grant",
        ),
        (
            "GET",
            "/v2/everything",
            None,
            StatusCode::NOT_FOUND,
            "no such endpoint",
        ),
    ];
    for (method, uri, body, status, needle) in cases {
        let (s, v) = call(&app, method, uri, Some("agent"), *body).await;
        assert_eq!(s, *status, "{method} {uri}: {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .contains(needle),
            "{method} {uri}: {v}"
        );
    }
    let (s, _) = call(&app, "GET", "/v1/connectors/nope", Some("ops"), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, v) = call(&app, "GET", "/v1/connectors", Some("ops"), None).await;
    assert_eq!((s, v.as_array().unwrap().len()), (StatusCode::OK, 2));
    let (s, _) = call(&app, "GET", "/healthz", None, None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = call(&app, "GET", "/readyz", None, None).await;
    assert_eq!(s, StatusCode::OK);
}

/// Issue 13: what one request may write is bounded, and a body over the limit is a
/// 413, not a 400.
#[tokio::test]
async fn request_sizes_and_ttl_are_bounded() {
    let app = app().await;
    let body = |task: &str, permissions: usize, resource: &str, ttl: &str| {
        json!({
            "connector": "auto",
            "permissions": vec![json!({"action": "use", "resource": resource}); permissions],
            "ttl": ttl,
            "task": task,
        })
        .to_string()
    };
    let huge = "x".repeat(super::MAX_BODY_BYTES + 1);
    let cases = [
        (
            body(&huge, 1, "x", "1m"),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload-too-large",
        ),
        (
            body(&"t".repeat(2_000), 1, "x", "1m"),
            StatusCode::BAD_REQUEST,
            "task is longer",
        ),
        (
            body("t", 33, "x", "1m"),
            StatusCode::BAD_REQUEST,
            "1 to 32 permissions",
        ),
        (
            body("t", 0, "x", "1m"),
            StatusCode::BAD_REQUEST,
            "1 to 32 permissions",
        ),
        (
            body("t", 1, &"r".repeat(2_000), "1m"),
            StatusCode::BAD_REQUEST,
            "resource is longer",
        ),
        (
            body("t", 1, "x", "500ms"),
            StatusCode::BAD_REQUEST,
            "at least 1000 ms",
        ),
        (
            body("\u{200B}\u{200B} \u{FEFF}", 1, "x", "1m"),
            StatusCode::BAD_REQUEST,
            "must name its task",
        ),
    ];
    for (body, status, needle) in cases {
        let (s, v) = call(&app, "POST", "/v1/grants", Some("agent"), Some(&body)).await;
        assert_eq!(s, status, "{v}");
        assert!(v.to_string().contains(needle), "{needle}: {v}");
    }
    // Within the limits it is accepted.
    let (s, v) = call(
        &app,
        "POST",
        "/v1/grants",
        Some("agent"),
        Some(&body("t", 32, "x", "1s")),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
}

#[tokio::test]
async fn serves_an_openapi_document_of_every_route() {
    let app = app().await;
    let (s, doc) = call(&app, "GET", "/v1/openapi.json", None, None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{doc}");
    let paths = doc["paths"].as_object().unwrap();
    for (path, method) in [
        ("/v1/grants", "post"),
        ("/v1/grants", "get"),
        ("/v1/grants/break-glass", "post"),
        ("/v1/anomalies", "post"),
        ("/v1/policies", "get"),
        ("/v1/policies/reload", "post"),
        ("/v1/grants/{id}", "get"),
        ("/v1/grants/{id}/report", "get"),
        ("/v1/grants/{id}/approve", "post"),
        ("/v1/grants/{id}/deny", "post"),
        ("/v1/grants/{id}/issue", "post"),
        ("/v1/grants/{id}/complete", "post"),
        ("/v1/grants/{id}/fail", "post"),
        ("/v1/grants/{id}/revoke", "post"),
        ("/v1/connectors", "get"),
        ("/v1/connectors/{name}", "get"),
        ("/v1/connectors/{name}", "post"),
        ("/v1/connectors/{name}", "delete"),
        ("/v1/connectors/{name}/reload", "post"),
        ("/v1/audit", "get"),
        ("/v1/audit/verify", "get"),
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/metrics", "get"),
        ("/v1/standing", "get"),
        ("/v1/standing/scan", "post"),
        ("/v1/orphans", "get"),
        ("/v1/orphans/scan", "post"),
        ("/v1/cluster", "get"),
    ] {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} is not in the document"
        );
    }
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    let link = &doc["paths"]["/v1/grants"]["post"]["responses"]["202"]["links"]["approve_grant"];
    assert_eq!(link["operationId"], "approve_grant", "{link}");
    let ids: Vec<&str> = paths
        .values()
        .flat_map(|p| p.as_object().unwrap().values())
        .filter_map(|op| op["operationId"].as_str())
        .collect();
    let unique: std::collections::BTreeSet<&str> = ids.iter().copied().collect();
    assert_eq!(
        ids.len(),
        unique.len(),
        "operation ids must be unique: {ids:?}"
    );
    assert_eq!(ids.len(), 29);
}

/// Issue 14: every subject seen in a request is recorded with its standing access
/// (here unknown: the noop connector does not report it, and says so); operators
/// and auditors read the record, only operators scan, requesters do neither.
#[tokio::test]
async fn standing_access_is_recorded_per_subject_and_scanned_by_operators() {
    let app = app().await;
    let (s, _) = call(
        &app,
        "POST",
        "/v1/grants",
        Some("agent"),
        Some(&grant_body("auto", "5m")),
    )
    .await;
    // Approved automatically, and issued in the same request.
    assert_eq!(s, StatusCode::CREATED);
    for (who, method, path, expect) in [
        ("agent", "GET", "/v1/standing", StatusCode::FORBIDDEN),
        ("agent", "POST", "/v1/standing/scan", StatusCode::FORBIDDEN),
        ("audit", "POST", "/v1/standing/scan", StatusCode::FORBIDDEN),
        ("audit", "GET", "/v1/standing", StatusCode::OK),
        ("ops", "POST", "/v1/standing/scan", StatusCode::OK),
    ] {
        let (s, v) = call(&app, method, path, Some(who), None).await;
        assert_eq!(s, expect, "{who} {method} {path}: {v}");
        if s == StatusCode::OK {
            let entries = v.as_array().unwrap();
            assert_eq!(entries.len(), 1, "{v}");
            assert_eq!(entries[0]["connector"], "auto");
            assert_eq!(entries[0]["subject"]["id"], "spiffe://test/agent");
            assert!(entries[0]["findings"].is_null(), "{v}");
            assert!(
                entries[0]["unknown_because"]
                    .as_str()
                    .unwrap()
                    .contains("does not report standing access"),
                "{v}"
            );
        }
    }
}
