//! Approval through the API: workload identity from minted JWTs, Cedar policies
//! deciding (auto, N approvers, deny with reason), break-glass with its alert,
//! anomaly reports, policy reload, and task binding.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly"
)]

use axum::Router;
use axum::http::StatusCode;
use base64::Engine as _;
use ebb::api::{self, AppState, Tokens};
use ebb_core::contract::SubjectKind;
use ebb_core::seal::{HostKey, Sealer};
use ebb_engine::approval::{Alerts, ApprovalGate};
use ebb_engine::config::{
    BreakGlassConfig, ConnectorConfig, IdentityConfig, IssuerConfig, PluginsConfig, PolicyConfig,
    Role, RuntimeConfig, TokenConfig,
};
use ebb_engine::identity::Verifier;
use ebb_engine::lifecycle::{Clock, EngineConfig, Lifecycle};
use ebb_engine::loader::Loader;
use ebb_engine::registry::Registry;
use ebb_runtime::Runtime;
use ebb_store_kv::KvStore;
use ed25519_dalek::pkcs8::EncodePrivateKey as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const ISSUER: &str = "https://ci.idp.test";
const CI: &str = "spiffe://acme.test/ci/billing";

const POLICIES: &str = r#"
@id("ci-auto")
@approval("auto")
@max_ttl("30m")
permit (principal is Ebb::Workload, action == Ebb::Action::"use", resource == Ebb::Connector::"noop")
when {
  principal.issuer == "https://ci.idp.test" &&
  principal.hasTag("repo") && principal.getTag("repo") == "acme/billing"
};

@id("people-two-approvers")
@approvers("2")
permit (principal is Ebb::Person, action == Ebb::Action::"use", resource);

@id("no-anomalous-subjects")
forbid (principal, action, resource) when { context.risk.contains("anomalous-subject") };
"#;

const BREAK_GLASS: &str = r#"
@id("incident-break-glass")
@approval("auto")
permit (principal is Ebb::Person, action, resource) when { context.reason like "INC-*" };
"#;

struct Env {
    app: Router,
    state: AppState,
    dir: ebb_test_support::TempDir,
    key: EncodingKey,
    alerts: Arc<Mutex<Vec<Value>>>,
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

impl Env {
    fn jwt(&self, edit: impl FnOnce(&mut Value)) -> String {
        let mut claims = json!({
            "iss": ISSUER, "sub": CI, "aud": "ebb", "exp": now() + 300, "iat": now(),
            "repo": "acme/billing",
        });
        edit(&mut claims);
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some("ci-1".into());
        jsonwebtoken::encode(&header, &claims, &self.key).unwrap()
    }
}

/// A receiver for alert webhooks.
async fn webhook() -> (String, Arc<Mutex<Vec<Value>>>) {
    let got = Arc::new(Mutex::new(Vec::new()));
    let sink = got.clone();
    let app = Router::new().route(
        "/alerts",
        axum::routing::post(move |axum::Json(v): axum::Json<Value>| {
            let sink = sink.clone();
            async move {
                sink.lock().unwrap().push(v);
                StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/alerts", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, got)
}

fn policy_config(dir: &std::path::Path) -> PolicyConfig {
    PolicyConfig {
        path: dir.join("policies.cedar"),
        watch: false,
        break_glass: Some(BreakGlassConfig {
            path: dir.join("break-glass.cedar"),
            max_ttl: Duration::from_secs(3600),
            min_reason_chars: 10,
        }),
        anomaly_window: Duration::from_secs(3600),
    }
}

async fn env() -> Env {
    let dir = ebb_test_support::TempDir::new("approval").unwrap();
    std::fs::write(dir.join("policies.cedar"), POLICIES).unwrap();
    std::fs::write(dir.join("break-glass.cedar"), BREAK_GLASS).unwrap();
    // The identity provider's key, made here; its public half is the JWKS.
    let mut seed = [0u8; 32];
    rand::fill(&mut seed);
    let signing = ed25519_dalek::SigningKey::from_bytes(&seed);
    let x =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(signing.verifying_key().as_bytes());
    std::fs::write(
        dir.join("jwks.json"),
        json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": x, "kid": "ci-1", "alg": "EdDSA", "use": "sig"}]})
            .to_string(),
    )
    .unwrap();

    let registry = Arc::new(Registry::new(
        Runtime::new(&RuntimeConfig::default()).unwrap(),
    ));
    registry
        .load("noop", &ConnectorConfig::new(ebb_test_plugins::NOOP))
        .await
        .unwrap();
    let lifecycle = Lifecycle::new(
        KvStore::open(&dir.join("data"), [5; 32]).unwrap(),
        Sealer::new(&HostKey::from_hex(&"55".repeat(32)).unwrap()),
        registry.clone(),
        Clock::system(),
        EngineConfig::default(),
    );
    lifecycle.start().await.unwrap();
    let (url, alerts) = webhook().await;
    let approval = ApprovalGate::new(
        Some(&policy_config(&dir)),
        &registry,
        Alerts::new(vec![url]),
    )
    .unwrap();
    approval
        .keep_flags_in(lifecycle.store().clone(), lifecycle.clock().now_ms())
        .await
        .unwrap();
    let identity = Verifier::new(&IdentityConfig {
        issuers: vec![IssuerConfig {
            issuer: ISSUER.into(),
            audiences: vec!["ebb".into()],
            jwks_file: Some(dir.join("jwks.json")),
            jwks_url: None,
            kind: SubjectKind::Workload,
            roles: vec![Role::Requester],
            subject_claim: "sub".into(),
            leeway_seconds: 5,
        }],
    })
    .await
    .unwrap();
    let token = |name: &str, roles: &[Role], kind: SubjectKind| TokenConfig {
        name: name.into(),
        sha256: api::auth::hash_token(&format!("tok-{name}")),
        roles: roles.to_vec(),
        subject: Some(name.into()),
        kind,
    };
    let tokens = Tokens::new(&[
        token("dana", &[Role::Requester], SubjectKind::Person),
        token("alice", &[Role::Approver], SubjectKind::Person),
        token("bob", &[Role::Approver], SubjectKind::Person),
        // A second token of the same person: still one approver.
        TokenConfig {
            subject: Some("alice".into()),
            ..token("alice-phone", &[Role::Approver], SubjectKind::Person)
        },
        token("ops", &[Role::Operator, Role::Auditor], SubjectKind::Person),
        token("siem", &[Role::Reporter], SubjectKind::Workload),
    ])
    .unwrap();
    let loader = Loader::new(lifecycle.clone(), PluginsConfig::default());
    let state = AppState {
        guard: ebb::api::guard::Guard::start(
            lifecycle.audit_log().clone(),
            Duration::from_millis(100),
        ),
        lifecycle,
        loader,
        approval: Arc::new(approval),
        identity: Some(Arc::new(identity)),
        tokens: Arc::new(tokens),
        metrics: None,
        membership: std::sync::Arc::new(ebb::api::cluster::Membership::local("test", 0)),
    };
    Env {
        app: api::router(state.clone()),
        state,
        dir,
        key: EncodingKey::from_ed_der(signing.to_pkcs8_der().unwrap().as_bytes()),
        alerts,
    }
}

/// `who` is a configured token's name, or a JWT.
async fn call(
    app: &Router,
    method: &str,
    uri: &str,
    who: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let bearer = if who.contains('.') {
        who.to_owned()
    } else {
        format!("tok-{who}")
    };
    let body = body.map(|b| b.to_string());
    ebb_test_support::api::send(app, method, uri, Some(&bearer), body.as_deref()).await
}

fn ask(ttl: &str, reason: Option<&str>) -> Value {
    json!({
        "connector": "noop",
        "permissions": [{"action": "use", "resource": "reports"}],
        "ttl": ttl,
        "task": "nightly export",
        "reason": reason,
    })
}

fn message(v: &Value) -> &str {
    v["error"]["message"].as_str().unwrap_or_default()
}

async fn events(app: &Router) -> Vec<Value> {
    let (s, v) = call(app, "GET", "/v1/audit?limit=1000", "ops", None).await;
    assert_eq!(s, StatusCode::OK);
    v.as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workload_tokens_and_policies_decide_requests() {
    let env = env().await;
    let app = &env.app;

    // A verified CI token: approved by policy and issued at once, as its subject.
    let ci = env.jwt(|_| {});
    let (s, v) = call(app, "POST", "/v1/grants", &ci, Some(ask("15m", None))).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let id = v["grant"]["grant"]["id"].as_str().unwrap().to_owned();
    assert_eq!(v["grant"]["grant"]["subject"]["id"], CI);
    assert_eq!(v["grant"]["grant"]["subject"]["kind"], "workload");
    assert!(
        v["grant"]["grant"]["subject"]["claims"]
            .to_string()
            .contains("acme/billing")
    );
    assert_eq!(v["grant"]["approvals"][0]["by"], "policy:ci-auto");
    // The decision is on record with the policy that made it.
    let (_, report) = call(app, "GET", &format!("/v1/grants/{id}/report"), "ops", None).await;
    let requested = &report["events"][0];
    assert_eq!(requested["kind"], "grant.requested");
    assert_eq!(
        requested["detail"]["policy"]["verdict"]["policies"],
        json!(["ci-auto"])
    );

    // Over the policy's max TTL: denied with the reason, and recorded.
    let (s, v) = call(app, "POST", "/v1/grants", &ci, Some(ask("2h", None))).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert!(
        message(&v).contains("over the 30m that policy `ci-auto` allows"),
        "{v}"
    );
    // Claims decide: another repository's token is not permitted.
    let fork = env.jwt(|c| c["repo"] = json!("evil/fork"));
    let (s, v) = call(app, "POST", "/v1/grants", &fork, Some(ask("15m", None))).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert!(message(&v).contains("no policy permits"), "{v}");
    let denied = events(app).await;
    assert!(
        denied
            .iter()
            .any(|e| e["to"] == "denied" && e["actor"] == "policy:ci-auto"),
        "a denial names its policy"
    );

    // Bad tokens are refused (and the reason audited): only the valid one passed.
    for bad in [
        env.jwt(|c| c["exp"] = json!(now() - 120)),
        env.jwt(|c| c["aud"] = json!("other")),
        env.jwt(|c| c["iss"] = json!("https://evil.test")),
    ] {
        let (s, _) = call(app, "POST", "/v1/grants", &bad, Some(ask("15m", None))).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
    }
    // Counted into the next refusal summary, one sample per kind of refusal.
    let mut whys: Vec<String> = Vec::new();
    for _ in 0..100 {
        whys = events(app)
            .await
            .iter()
            .filter(|e| e["kind"] == "auth.refusals")
            .flat_map(|e| {
                e["detail"]["clients"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .filter_map(|c| c["sample"].as_str().map(str::to_owned))
            .collect();
        if whys.len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for needle in [
        "ExpiredSignature",
        "InvalidAudience",
        "no configured issuer",
    ] {
        assert!(
            whys.iter().any(|w| w.contains(needle)),
            "{needle}: {whys:?}"
        );
    }

    // Task binding: a completed task's grant is gone for good; the next call needs
    // a new grant, not a refresh.
    let (s, _) = call(app, "POST", &format!("/v1/grants/{id}/complete"), &ci, None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = call(app, "POST", &format!("/v1/grants/{id}/issue"), &ci, None).await;
    assert_eq!(s, StatusCode::CONFLICT);
    let (s, v) = call(app, "POST", "/v1/grants", &ci, Some(ask("15m", None))).await;
    assert_eq!(s, StatusCode::CREATED);
    assert_ne!(v["grant"]["grant"]["id"], id.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn people_need_two_other_approvers() {
    let env = env().await;
    let app = &env.app;
    let (s, v) = call(app, "POST", "/v1/grants", "dana", Some(ask("20m", None))).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    assert_eq!(v["grant"]["approvals_required"], 2);
    let id = v["grant"]["grant"]["id"].as_str().unwrap().to_owned();
    let approve = format!("/v1/grants/{id}/approve");
    // Not by the requester, not twice by one person.
    let (s, _) = call(app, "POST", &approve, "dana", None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, v) = call(app, "POST", &approve, "alice", None).await;
    assert_eq!(
        (s, v["state"].as_str()),
        (StatusCode::OK, Some("requested")),
        "{v}"
    );
    let (s, v) = call(app, "POST", &approve, "alice", None).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    let (s, _) = call(app, "POST", &format!("/v1/grants/{id}/issue"), "dana", None).await;
    assert_eq!(s, StatusCode::CONFLICT, "not issued on one approval");
    let (s, v) = call(app, "POST", &approve, "bob", None).await;
    assert_eq!(
        (s, v["state"].as_str()),
        (StatusCode::OK, Some("approved")),
        "{v}"
    );
    let (s, v) = call(app, "POST", &format!("/v1/grants/{id}/issue"), "dana", None).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let by: Vec<&str> = v["grant"]["approvals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["by"].as_str().unwrap())
        .collect();
    assert_eq!(by, ["alice", "bob"]);
}

/// Issue 13: N-of-M approval counts people, not tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tokens_of_one_person_are_one_approver() {
    let env = env().await;
    let app = &env.app;
    let (s, v) = call(app, "POST", "/v1/grants", "dana", Some(ask("20m", None))).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    assert_eq!(v["grant"]["approvals_required"], 2);
    let id = v["grant"]["grant"]["id"].as_str().unwrap().to_owned();
    let approve = format!("/v1/grants/{id}/approve");
    let (s, v) = call(app, "POST", &approve, "alice", None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = call(app, "POST", &approve, "alice-phone", None).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    let (_, v) = call(app, "GET", &format!("/v1/grants/{id}"), "ops", None).await;
    assert_eq!(v["state"], "requested", "{v}");
    assert_eq!(v["approvals"].as_array().unwrap().len(), 1);
}

/// Issue 13: a JWT whose `sub` is a configured token's subject owns none of that
/// subject's grants: it cannot see, issue or end them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identities_are_namespaced_by_issuer() {
    let env = env().await;
    let app = &env.app;
    let (s, v) = call(app, "POST", "/v1/grants", "dana", Some(ask("20m", None))).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let id = v["grant"]["grant"]["id"].as_str().unwrap().to_owned();
    for approver in ["alice", "bob"] {
        let (s, v) = call(
            app,
            "POST",
            &format!("/v1/grants/{id}/approve"),
            approver,
            None,
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{v}");
    }
    let impostor = env.jwt(|c| c["sub"] = json!("dana"));
    let (s, v) = call(app, "GET", &format!("/v1/grants/{id}"), &impostor, None).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    let (s, v) = call(app, "GET", "/v1/grants", &impostor, None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(
        v["grants"].as_array().unwrap().is_empty(),
        "another source's grants are listed: {v}"
    );
    for action in ["issue", "complete"] {
        let (s, v) = call(
            app,
            "POST",
            &format!("/v1/grants/{id}/{action}"),
            &impostor,
            None,
        )
        .await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{action}: {v}");
    }
    let (_, v) = call(app, "GET", &format!("/v1/grants/{id}"), "ops", None).await;
    assert_eq!(v["state"], "approved", "untouched by the impostor: {v}");
    // The real requester still can.
    let (s, v) = call(app, "POST", &format!("/v1/grants/{id}/issue"), "dana", None).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn break_glass_has_its_own_rules_and_is_loud() {
    let env = env().await;
    let app = &env.app;
    let bg = "/v1/grants/break-glass";
    for (body, why) in [
        (ask("20m", None), "reason of at least 10"),
        (ask("20m", Some("INC-1")), "reason of at least 10"),
        // Padding that nobody can see does not count.
        (
            ask(
                "20m",
                Some("INC-1 \u{200B}\u{200B}\u{200B}\u{200B}\u{200B}\u{FEFF}"),
            ),
            "reason of at least 10",
        ),
        (ask("2h", Some("INC-4711 orders db down")), "at most 1h"),
    ] {
        let (s, v) = call(app, "POST", bg, "dana", Some(body)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        assert!(message(&v).contains(why), "{v}");
    }
    // Its own policy decides: no incident reference, no access.
    let (s, v) = call(
        app,
        "POST",
        bg,
        "dana",
        Some(ask("20m", Some("I just need it now"))),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    let (s, v) = call(
        app,
        "POST",
        bg,
        "dana",
        Some(ask("20m", Some("INC-4711 orders db down"))),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["grant"]["break_glass"], true);
    assert_eq!(
        v["grant"]["approvals"][0]["by"],
        "policy:incident-break-glass"
    );
    let id = v["grant"]["grant"]["id"].as_str().unwrap().to_owned();
    let secret = v["credential"].to_string();
    // Loud: an audit event and a webhook alert, without the credential.
    let all = events(app).await;
    assert!(
        all.iter()
            .any(|e| e["kind"] == "alert.break-glass" && e["grant_id"] == id.as_str())
    );
    for _ in 0..100 {
        if env
            .alerts
            .lock()
            .unwrap()
            .iter()
            .any(|a| a["grant"] == id.as_str())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let alerts = env.alerts.lock().unwrap().clone();
    let alert = alerts
        .iter()
        .find(|a| a["grant"] == id.as_str())
        .expect("an alert for the grant");
    assert_eq!(alert["kind"], "break-glass");
    assert_eq!(alert["reason"], "INC-4711 orders db down");
    assert!(!alert.to_string().contains(&secret));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anomaly_revokes_a_subjects_grants_at_once() {
    let env = env().await;
    let app = &env.app;
    let ci = env.jwt(|_| {});
    let mut ids = Vec::new();
    for _ in 0..2 {
        let (s, v) = call(app, "POST", "/v1/grants", &ci, Some(ask("15m", None))).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        ids.push(v["grant"]["grant"]["id"].as_str().unwrap().to_owned());
    }
    let report = json!({ "subject": CI, "reason": "exfiltration pattern", "source": "siem" });
    let (s, _) = call(app, "POST", "/v1/anomalies", &ci, Some(report.clone())).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "a requester cannot report");
    let (s, v) = call(app, "POST", "/v1/anomalies", "siem", Some(report)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let mut revoked: Vec<String> = serde_json::from_value(v["revoked"].clone()).unwrap();
    revoked.sort();
    ids.sort();
    assert_eq!(revoked, ids);
    for id in &ids {
        let (_, g) = call(app, "GET", &format!("/v1/grants/{id}"), "ops", None).await;
        assert_eq!(g["trigger"], "anomaly", "{g}");
        assert_ne!(g["state"], "active");
    }
    // Flagged: policy now refuses the subject.
    let (s, v) = call(app, "POST", "/v1/grants", &ci, Some(ask("15m", None))).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert!(message(&v).contains("no-anomalous-subjects"), "{v}");
    // Issue 12: the flag survives a restart: a new gate over the same store has it.
    let lifecycle = &env.state.lifecycle;
    let restarted = ApprovalGate::new(
        Some(&policy_config(&env.dir)),
        lifecycle.registry(),
        Alerts::new(vec![]),
    )
    .unwrap();
    assert!(!restarted.is_flagged(CI));
    restarted
        .keep_flags_in(lifecycle.store().clone(), lifecycle.clock().now_ms())
        .await
        .unwrap();
    assert!(restarted.is_flagged(CI), "the anomaly flag was lost");
    assert!(
        events(app)
            .await
            .iter()
            .any(|e| e["kind"] == "anomaly.reported")
    );
    let (s, _) = call(
        app,
        "POST",
        "/v1/anomalies",
        "siem",
        Some(json!({"reason": "x"})),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = call(
        app,
        "POST",
        "/v1/anomalies",
        "siem",
        Some(json!({"grant": "nope", "reason": "x"})),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_policy_reload_keeps_the_old_policies() {
    let env = env().await;
    let app = &env.app;
    let (_, before) = call(app, "GET", "/v1/policies", "ops", None).await;
    assert_eq!(
        before["ids"],
        json!([
            "ci-auto",
            "people-two-approvers",
            "no-anomalous-subjects",
            "incident-break-glass"
        ])
    );
    std::fs::write(
        env.dir.join("policies.cedar"),
        "permit (principal, action == Ebb::Action::\"uze\", resource);",
    )
    .unwrap();
    let (s, v) = call(app, "POST", "/v1/policies/reload", "ops", None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(message(&v).contains("uze"), "{v}");
    let (_, after) = call(app, "GET", "/v1/policies", "ops", None).await;
    assert_eq!(after, before);
    let ci = env.jwt(|_| {});
    let (s, _) = call(app, "POST", "/v1/grants", &ci, Some(ask("15m", None))).await;
    assert_eq!(s, StatusCode::CREATED, "the old policies still decide");
    assert!(
        events(app)
            .await
            .iter()
            .any(|e| e["kind"] == "policy.reload-failed")
    );
    // A good file takes over.
    std::fs::write(
        env.dir.join("policies.cedar"),
        "@id(\"closed\")\nforbid (principal, action, resource);",
    )
    .unwrap();
    let (s, v) = call(app, "POST", "/v1/policies/reload", "ops", None).await;
    assert_eq!(
        (s, v["ids"].clone()),
        (StatusCode::OK, json!(["closed", "incident-break-glass"]))
    );
    let (s, _) = call(app, "POST", "/v1/grants", &ci, Some(ask("15m", None))).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = call(app, "POST", "/v1/policies/reload", "dana", None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_files_are_watched() {
    let env = env().await;
    let app = &env.app;
    let file = env.dir.join("policies.cedar");
    let watcher = api::policy::watch(env.state.clone(), vec![file.clone()]).unwrap();
    let (_, before) = call(app, "GET", "/v1/policies", "ops", None).await;
    // Broken: reported, and the old policies stay.
    std::fs::write(
        &file,
        "permit (principal, action, resource) when { nonsense };",
    )
    .unwrap();
    let mut reported = false;
    for _ in 0..200 {
        if events(app)
            .await
            .iter()
            .any(|e| e["kind"] == "policy.reload-failed")
        {
            reported = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(reported, "the broken file was not reported");
    let (_, after) = call(app, "GET", "/v1/policies", "ops", None).await;
    assert_eq!(after, before);
    // Fixed: it takes over.
    std::fs::write(
        &file,
        "@id(\"only\")\npermit (principal, action, resource);",
    )
    .unwrap();
    let mut ids = Value::Null;
    for _ in 0..200 {
        ids = call(app, "GET", "/v1/policies", "ops", None).await.1["ids"].clone();
        if ids == json!(["only", "incident-break-glass"]) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(ids, json!(["only", "incident-break-glass"]));
    // The watcher does not feed itself: a log beside the policies, and a rewrite of
    // a policy file with the same content, cause no reload and no audit event.
    let reloads = |events: &[Value]| {
        events
            .iter()
            .filter(|e| e["kind"].as_str().is_some_and(|k| k.starts_with("policy.")))
            .count()
    };
    let before = reloads(&events(app).await);
    let log = env.dir.join("ebb.log");
    for n in 0..20 {
        std::fs::write(&log, format!("line {n}\n")).unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    std::fs::write(
        &file,
        "@id(\"only\")\npermit (principal, action, resource);",
    )
    .unwrap();
    // Then a real change: the watcher handles changes in order, so once it is in
    // force, everything before it has been seen — and only it reloaded.
    std::fs::write(
        &file,
        "@id(\"changed\")\npermit (principal, action, resource);",
    )
    .unwrap();
    for _ in 0..200 {
        ids = call(app, "GET", "/v1/policies", "ops", None).await.1["ids"].clone();
        if ids == json!(["changed", "incident-break-glass"]) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(ids, json!(["changed", "incident-break-glass"]));
    assert_eq!(
        reloads(&events(app).await),
        before + 1,
        "only the real change reloaded the policies"
    );
    drop(watcher);
}
