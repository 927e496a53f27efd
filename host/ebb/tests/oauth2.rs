//! The oauth2 connector against a real authorization server (oidc-provider): a
//! grant's token is revoked by value through the host's lifecycle and proven
//! inactive; tokens that are broader or longer-lived than the grant are refused;
//! self-contained JWTs are declared irrevocable and reported until they expire; the
//! client secret stays in the host.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly"
)]

use ebb_core::contract::{
    ConnectorError, Grant, Permission, ResidueKind, Subject, SubjectKind, Verdict,
};
use ebb_core::seal::{HostKey, Sealer};
use ebb_engine::config::{ApprovalMode, ConnectorConfig, LifecyclePolicy, RuntimeConfig};
use ebb_engine::lifecycle::{
    Clock, Decision, EngineConfig, GrantState, Lifecycle, NewGrant, Trigger,
};
use ebb_engine::registry::Registry;
use ebb_runtime::{CallError, LoadedConnector, Runtime};
use ebb_store_kv::KvStore;
use ebb_test_support::Oidc;
use ebb_test_support::oidc::CLIENT_SECRET;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn config(server: &Oidc, client: &str, secret: &str) -> ConnectorConfig {
    ConnectorConfig::new(ebb_test_plugins::OAUTH2)
        .with_config("token-endpoint", &server.url("/token"))
        .with_config("revocation-endpoint", &server.url("/token/revocation"))
        .with_config(
            "introspection-endpoint",
            &server.url("/token/introspection"),
        )
        .with_config("allowed-scopes", "invoices:read, reports:read, admin")
        .with_http_origin(&server.origin(), true)
        .with_http_basic_auth(&server.origin(), client, secret)
}

async fn load(config: &ConnectorConfig) -> LoadedConnector {
    Runtime::new(&RuntimeConfig::default())
        .unwrap()
        .load("oauth2", &config.spec())
        .await
        .unwrap()
}

fn grant(id: &str, scopes: &[&str], ttl_ms: u64) -> Grant {
    Grant {
        id: id.into(),
        subject: Subject {
            id: "spiffe://test/reporting-job".into(),
            kind: SubjectKind::Workload,
            claims: vec![],
        },
        permissions: scopes
            .iter()
            .map(|s| Permission {
                action: "scope".into(),
                resource: (*s).into(),
            })
            .collect(),
        not_after: ebb_test_support::now_ms() + ttl_ms,
        task: "monthly report".into(),
    }
}

fn invalid(result: Result<impl std::fmt::Debug, CallError>) -> String {
    match result {
        Err(CallError::Connector(ConnectorError::Invalid(m))) => m,
        other => panic!("expected an invalid request, got {other:?}"),
    }
}

/// The whole lifecycle through the host: the sealed token comes back to `revoke`,
/// and the grant closes only once introspection says the token is inactive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_ends_with_its_token_revoked_and_proven_inactive() {
    ebb_test_support::require!(Oidc);
    let server = Oidc::start(300).unwrap();
    let policy = LifecyclePolicy {
        approval: ApprovalMode::Auto,
        retry_base_ms: 100,
        ..LifecyclePolicy::default()
    };
    let registry = Arc::new(Registry::new(
        Runtime::new(&RuntimeConfig::default()).unwrap(),
    ));
    registry
        .load(
            "oauth2",
            &config(&server, "ebb", CLIENT_SECRET).with_lifecycle(policy),
        )
        .await
        .unwrap();
    let dir = std::env::temp_dir().join(format!("ebb-oauth2-{}", rand::random::<u64>()));
    let store = KvStore::open(&dir, [7; 32]).unwrap();
    let engine = Lifecycle::new(
        store.clone(),
        Sealer::new(&HostKey::from_hex(&"44".repeat(32)).unwrap()),
        registry,
        Clock::system(),
        EngineConfig::default(),
    );
    engine.start().await.unwrap();
    let new = NewGrant {
        connector: "oauth2".into(),
        subject: Subject {
            id: "spiffe://test/reporting-job".into(),
            kind: SubjectKind::Workload,
            claims: vec![],
        },
        permissions: vec![Permission {
            action: "scope".into(),
            resource: "invoices:read".into(),
        }],
        ttl_ms: 600_000,
        task: "monthly report".into(),
        reason: None,
        approvals_required: 1,
        break_glass: false,
        decided_by: None,
    };
    let decision = Decision::Approve {
        by: "policy".into(),
        note: None,
        issue_within_ms: None,
    };
    let r = engine.request(new, "job", decision).await.unwrap();
    let (_, credential) = engine.issue(&r.grant.id, "job").await.unwrap();
    let token = credential.get("access_token").unwrap().to_owned();
    assert!(server.allows(&token, "invoices:read").await.unwrap());
    assert!(!server.allows(&token, "reports:read").await.unwrap());

    engine
        .revoke(&r.grant.id, Trigger::TaskCompleted, "job", None)
        .await
        .unwrap();
    let started = Instant::now();
    while engine.get(&r.grant.id).await.unwrap().state != GrantState::Verified {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "not verified: {:?}",
            engine.get(&r.grant.id).await.unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(server.introspect(&token).await.unwrap()["active"], false);
    assert!(store.verify_audit().unwrap().is_intact());
    engine.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn tokens_broader_or_longer_lived_than_the_grant_are_refused() {
    ebb_test_support::require!(Oidc);
    let server = Oidc::start(300).unwrap();
    let c = load(&config(&server, "ebb", CLIENT_SECRET)).await;
    // The server's tokens live 300 s; this grant ends in 60.
    let m = invalid(c.issue(&grant("01SHORT", &["invoices:read"], 60_000)).await);
    assert!(m.contains("beyond the grant"), "{m}");
    // The server silently drops a scope it does not know: the token would carry
    // less than asked for, and a different set is refused either way.
    let m = invalid(
        c.issue(&grant("01ADMIN", &["admin", "reports:read"], 600_000))
            .await,
    );
    assert!(m.contains("granted scopes"), "{m}");
    // Scopes outside the operator's list never reach the server.
    let m = invalid(
        c.issue(&grant("01OTHER", &["invoices:write"], 600_000))
            .await,
    );
    assert!(m.contains("allowed-scopes"), "{m}");
}

/// With only the host holding the client secret, a wrong one (or none) means the
/// connector cannot authenticate at all.
#[tokio::test]
async fn the_client_secret_is_the_hosts() {
    ebb_test_support::require!(Oidc);
    let server = Oidc::start(300).unwrap();
    let g = grant("01SECRET", &["invoices:read"], 600_000);
    let wrong = load(&config(&server, "ebb", "not-the-secret")).await;
    let err = wrong.issue(&g).await.unwrap_err();
    assert!(
        matches!(err, CallError::Connector(ConnectorError::Denied(_))),
        "{err:?}"
    );
    let mut none = config(&server, "ebb", CLIENT_SECRET);
    none.http.basic_auth.clear();
    // The server answers 400 invalid_request: a configuration to fix, never retried.
    let err = load(&none).await.issue(&g).await.unwrap_err();
    assert!(
        matches!(&err, CallError::Connector(ConnectorError::Invalid(m)) if m.contains("client authentication")),
        "{err:?}"
    );
    let ok = load(&config(&server, "ebb", CLIENT_SECRET)).await;
    let issued = ok.issue(&g).await.unwrap();
    ok.revoke(&g, Some(&issued.handle), Some(&issued.credential))
        .await
        .unwrap();
}

/// A self-contained JWT cannot be revoked: the connector says so, and verify reports
/// it as active until its own expiry rather than trusting the revoke call.
#[tokio::test]
async fn jwt_tokens_are_declared_irrevocable_and_reported_until_they_expire() {
    ebb_test_support::require!(Oidc);
    let server = Oidc::start(3).unwrap();
    let c =
        load(&config(&server, "ebb-jwt", CLIENT_SECRET).with_config("token-format", "jwt")).await;
    let caps = c.info().capabilities;
    assert!(
        !caps.revocable && caps.can_verify && caps.revokes_by_value,
        "{caps:?}"
    );
    let g = grant("01JWT", &["invoices:read"], 60_000);
    let issued = c.issue(&g).await.unwrap();
    assert_eq!(
        issued
            .credential
            .get("access_token")
            .unwrap()
            .split('.')
            .count(),
        3
    );
    c.revoke(&g, Some(&issued.handle), Some(&issued.credential))
        .await
        .unwrap();
    match c
        .verify_revoked(&g, Some(&issued.handle), Some(&issued.credential))
        .await
        .unwrap()
    {
        Verdict::Residual(r) => assert!(
            r.len() == 1
                && r[0].kind == ResidueKind::TokenActive
                && r[0].detail.contains("cannot be revoked"),
            "{r:?}"
        ),
        Verdict::Revoked => panic!("a live JWT reported revoked"),
    }
    let expires = issued.expires_at.unwrap();
    tokio::time::sleep(Duration::from_millis(
        expires.saturating_sub(ebb_test_support::now_ms()) + 200,
    ))
    .await;
    assert_eq!(
        c.verify_revoked(&g, Some(&issued.handle), Some(&issued.credential))
            .await
            .unwrap(),
        Verdict::Revoked
    );
    // Configured for opaque tokens, a JWT from the server is refused.
    let opaque = load(&config(&server, "ebb-jwt", CLIENT_SECRET)).await;
    let m = invalid(
        opaque
            .issue(&grant("01MIX", &["invoices:read"], 60_000))
            .await,
    );
    assert!(m.contains("JWT"), "{m}");
}
