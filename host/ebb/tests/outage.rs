//! Outage test: PostgreSQL stops while grants expire and comes back; every grant
//! ends verified soon after, nothing is lost, and the outage is on record.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly"
)]

use ebb_core::contract::{Permission, Subject, SubjectKind};
use ebb_core::seal::{HostKey, Sealer};
use ebb_engine::config::{ApprovalMode, ConnectorConfig, LifecyclePolicy, RuntimeConfig};
use ebb_engine::lifecycle::{
    Clock, Decision, EngineConfig, GrantState, Lifecycle, NewGrant, Trigger,
};
use ebb_engine::registry::Registry;
use ebb_runtime::Runtime;
use ebb_store_kv::KvStore;
use ebb_test_support::Postgres;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_expiring_during_a_database_outage_end_verified() {
    ebb_test_support::require!(Postgres);
    let pg = Postgres::start().unwrap();
    // Backoff that grows past the outage: by the time the database is back, the
    // next retry is seconds away. Recovery must not wait for it (issue 12).
    let policy = LifecyclePolicy {
        approval: ApprovalMode::Auto,
        retry_base_ms: 1_000,
        retry_max_ms: 60_000,
        // Escalated after three failures: retried only every 60 s from then on.
        escalate_after: 3,
        ..LifecyclePolicy::default()
    };
    let config = ConnectorConfig::new(ebb_test_plugins::POSTGRES)
        .with_config("allowed-resources", "public.invoices")
        .with_sql("main", &pg.admin_dsn())
        .with_lifecycle(policy);
    let registry = Arc::new(Registry::new(
        Runtime::new(&RuntimeConfig::default()).unwrap(),
    ));
    registry.load("pg", &config).await.unwrap();
    let dir = std::env::temp_dir().join(format!("ebb-outage-{}", rand::random::<u64>()));
    let store = KvStore::open(&dir, [6; 32]).unwrap();
    let engine = Lifecycle::new(
        store.clone(),
        Sealer::new(&HostKey::from_hex(&"33".repeat(32)).unwrap()),
        registry,
        Clock::system(),
        EngineConfig::default(),
    );
    engine.start().await.unwrap();

    let mut ids = Vec::new();
    for i in 0..20 {
        let new = NewGrant {
            connector: "pg".into(),
            subject: Subject {
                id: "spiffe://test/agent".into(),
                kind: SubjectKind::Workload,
                claims: vec![],
            },
            permissions: vec![Permission {
                action: "select".into(),
                resource: "public.invoices".into(),
            }],
            // Long enough that issuing all twenty on a slow 2-core CI machine ends
            // before the first one expires (CI once took over a second for it).
            ttl_ms: 3_000 + i * 50,
            task: "outage test".into(),
            reason: None,
            approvals_required: 1,
            break_glass: false,
            decided_by: None,
        };
        let r = engine
            .request(
                new,
                "agent",
                Decision::Approve {
                    by: "policy".into(),
                    note: None,
                    issue_within_ms: None,
                },
            )
            .await
            .unwrap();
        engine.issue(&r.grant.id, "agent").await.unwrap();
        ids.push(r.grant.id);
    }
    // One grant is ended by its task just as the database goes away.
    engine
        .revoke(&ids[0], Trigger::TaskCompleted, "agent", None)
        .await
        .unwrap();
    // Which grants were still live when the database went away: only those are
    // bound to expire during the outage. The test means nothing unless most were.
    // (The first one's revocation was requested before the database went away and
    // may finish while it is still shutting down.)
    let mut live = Vec::new();
    for id in &ids[1..] {
        if engine.get(id).await.unwrap().state == GrantState::Active {
            live.push(id.clone());
        }
    }
    pg.stop().unwrap();
    assert!(
        live.len() >= 15,
        "too few grants still live when the database stopped ({} of 19)",
        live.len()
    );
    // Every live grant expires while PostgreSQL is down, and keeps failing for a
    // while: retries at 1, 2, 4 s… after expiry, so the next one is seconds off at
    // return.
    tokio::time::sleep(Duration::from_millis(8_000)).await;
    let mut during: Vec<GrantState> = Vec::new();
    for id in &live {
        during.push(engine.get(id).await.unwrap().state);
    }
    assert!(
        during
            .iter()
            .all(|s| matches!(s, GrantState::Revoking | GrantState::Escalated)),
        "nothing can be revoked or verified while the database is down: {during:?}"
    );
    let back = Instant::now();
    pg.start_server().unwrap();

    for id in &ids {
        loop {
            let r = engine.get(id).await.unwrap();
            if r.state == GrantState::Verified {
                break;
            }
            assert!(
                back.elapsed() < Duration::from_secs(5),
                "not verified 5 s after the database came back: {r:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let recovered_in = back.elapsed();
    assert!(pg.ebb_roles().unwrap().is_empty(), "{:?}", pg.ebb_roles());
    // The outage is on record: failed attempts with the error, for every grant
    // that was live when it began.
    for id in &live {
        let report = engine.report(id).await.unwrap();
        assert!(
            report.events.iter().any(|e| e.detail["error"]
                .as_str()
                .is_some_and(|m| m.contains("unavailable"))),
            "grant {id} has no record of the outage"
        );
    }
    assert!(store.verify_audit().unwrap().is_intact());
    eprintln!(
        "outage test: 20 grants verified {} ms after the database came back",
        recovered_in.as_millis()
    );
    engine.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}
