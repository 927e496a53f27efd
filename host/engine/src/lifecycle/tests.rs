//! Engine tests with real connector components (noop, misbehave) and the sled store.

use super::*;
use crate::config::{ConnectorConfig, LifecyclePolicy, RuntimeConfig};
use crate::registry::Registry;
use ebb_core::contract::{Permission, Subject, SubjectKind};
use ebb_core::seal::{HostKey, Sealer};
use ebb_runtime::Runtime;
use ebb_store_kv::KvStore;
use std::time::Duration;

fn fast_policy() -> LifecyclePolicy {
    LifecyclePolicy {
        retry_base_ms: 10,
        retry_max_ms: 40,
        escalate_after: 3,
        ..LifecyclePolicy::default()
    }
}

fn misbehave(settings: &[(&str, &str)]) -> ConnectorConfig {
    settings
        .iter()
        .fold(
            ConnectorConfig::new(ebb_test_plugins::MISBEHAVE),
            |c, (k, v)| c.with_config(k, v),
        )
        .with_lifecycle(fast_policy())
}

async fn engine_on(store: Arc<dyn Store>, connectors: &[(&str, ConnectorConfig)]) -> Lifecycle {
    let registry = Arc::new(Registry::new(
        Runtime::new(&RuntimeConfig::default()).unwrap(),
    ));
    for (name, config) in connectors {
        registry.load(name, config).await.unwrap();
    }
    let sealer = Sealer::new(&HostKey::from_hex(&"11".repeat(32)).unwrap());
    Lifecycle::new(
        store,
        sealer,
        registry,
        Clock::system(),
        EngineConfig::default(),
    )
}

async fn engine(connectors: &[(&str, ConnectorConfig)]) -> Lifecycle {
    let engine = engine_on(KvStore::temporary([3; 32]).unwrap(), connectors).await;
    engine.start().await.unwrap();
    engine
}

fn noop() -> (&'static str, ConnectorConfig) {
    (
        "noop",
        ConnectorConfig::new(ebb_test_plugins::NOOP).with_lifecycle(fast_policy()),
    )
}

fn new_grant(connector: &str, ttl_ms: u64) -> NewGrant {
    NewGrant {
        connector: connector.into(),
        subject: Subject {
            id: "spiffe://test/agent".into(),
            kind: SubjectKind::Workload,
            claims: vec![],
        },
        permissions: vec![Permission {
            action: "use".into(),
            resource: "anything".into(),
        }],
        ttl_ms,
        task: "test task".into(),
        reason: Some("testing".into()),
        approvals_required: 1,
        break_glass: false,
        decided_by: None,
    }
}

fn approve() -> Decision {
    Decision::Approve {
        by: "policy".into(),
        note: None,
        issue_within_ms: None,
    }
}

async fn issued(engine: &Lifecycle, connector: &str, ttl_ms: u64) -> GrantRecord {
    let r = engine
        .request(new_grant(connector, ttl_ms), "agent", approve())
        .await
        .unwrap();
    engine.issue(&r.grant.id, "agent").await.unwrap().0
}

/// A local webhook receiving `engine`'s alerts; what it received so far.
async fn alert_receiver(engine: &Lifecycle) -> Arc<std::sync::Mutex<Vec<serde_json::Value>>> {
    let alerts = Arc::new(std::sync::Mutex::new(Vec::<serde_json::Value>::new()));
    let sink = alerts.clone();
    let hook = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |axum::Json(v): axum::Json<serde_json::Value>| {
            let sink = sink.clone();
            async move { sink.lock().unwrap().push(v) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, hook).await.unwrap() });
    engine.set_alerts(crate::alerts::Alerts::new(vec![url]));
    alerts
}

/// Polls until grant `id` is in `state`. Under paused time (the tests whose store and
/// connectors do no real I/O) each poll lets tokio advance the engine's clock to its
/// next timer, so retries, propagation delays and re-verification windows pass
/// without real waiting; the others poll in real time.
async fn wait_for(engine: &Lifecycle, id: &str, state: GrantState) -> GrantRecord {
    for _ in 0..2000 {
        let r = engine.get(id).await.unwrap();
        if r.state == state {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!(
        "grant {id} never reached {state}: {:?}",
        engine.get(id).await.unwrap()
    );
}

/// How many of the grant's audit events are `event`.
fn count(report: &GrantReport, event: &str) -> usize {
    report
        .events
        .iter()
        .filter(|e| e.detail["event"] == event)
        .count()
}

fn states(report: &GrantReport) -> Vec<GrantState> {
    report.events.iter().filter_map(|e| e.to).collect()
}

#[tokio::test(start_paused = true)]
async fn expiry_revokes_and_verifies_with_paused_time() {
    let engine = engine(&[noop()]).await;
    let ttl = 3_600_000;
    let (record, credential) = {
        let r = engine
            .request(new_grant("noop", ttl), "agent", approve())
            .await
            .unwrap();
        engine.issue(&r.grant.id, "agent").await.unwrap()
    };
    let id = record.grant.id.clone();
    assert_eq!(record.state, GrantState::Active);
    assert_eq!(credential.get("token"), Some("noop"));
    assert_eq!(record.grant.not_after, record.issued_at.unwrap() + ttl);
    assert!(
        engine
            .store()
            .sealed_credential(&id)
            .await
            .unwrap()
            .is_some()
    );

    tokio::time::advance(Duration::from_millis(ttl - 1_000)).await;
    assert_eq!(
        engine.get(&id).await.unwrap().state,
        GrantState::Active,
        "revoked before not-after"
    );

    tokio::time::advance(Duration::from_millis(2_000)).await;
    let mut record = engine.get(&id).await.unwrap();
    for _ in 0..10_000 {
        if record.state == GrantState::Verified {
            break;
        }
        tokio::task::yield_now().await;
        record = engine.get(&id).await.unwrap();
    }
    assert_eq!(record.state, GrantState::Verified);
    assert_eq!(record.trigger, Some(Trigger::Expiry));
    let started = record.revoke_started_at.unwrap();
    assert!(
        started >= record.grant.not_after,
        "revocation started before not-after"
    );
    assert!(
        started - record.grant.not_after <= 1_000,
        "revocation started late: {started}"
    );
    // No silent extension: not-after never moved.
    assert_eq!(record.grant.not_after, record.issued_at.unwrap() + ttl);
    // The secret is shredded once removal is proven.
    assert_eq!(engine.store().sealed_credential(&id).await.unwrap(), None);
    let report = engine.report(&id).await.unwrap();
    assert_eq!(
        states(&report),
        vec![
            GrantState::Requested,
            GrantState::Approved,
            GrantState::Issuing,
            GrantState::Active,
            GrantState::Revoking,
            GrantState::Revoked,
            GrantState::Verified
        ]
    );
    assert!(!report.may_have_access);
    assert!(engine.store().verify_audit().await.unwrap().is_intact());
}

#[tokio::test(start_paused = true)]
async fn task_completion_revokes_at_once() {
    let engine = engine(&[noop()]).await;
    let record = issued(&engine, "noop", 3_600_000).await;
    let r = engine
        .revoke(&record.grant.id, Trigger::TaskCompleted, "agent", None)
        .await
        .unwrap();
    assert_eq!(r.state, GrantState::Revoking);
    let r = wait_for(&engine, &record.grant.id, GrantState::Verified).await;
    assert_eq!(r.trigger, Some(Trigger::TaskCompleted));
    // Verified at once (no propagation delay): the revocation's step is committed
    // with the verdict, one commit for both. Five commits in all: request with
    // its approval, issuing, active, revoking, revoked with verified.
    assert_eq!(r.version, 5);
    let report = engine.report(&record.grant.id).await.unwrap();
    let last: Vec<_> = report.events[report.events.len() - 2..]
        .iter()
        .map(|e| (e.to, e.record.is_some()))
        .collect();
    assert_eq!(
        last,
        [
            (Some(GrantState::Revoked), false),
            (Some(GrantState::Verified), true)
        ]
    );
    assert_eq!(
        report.events[report.events.len() - 1].prev,
        report.events[report.events.len() - 2].hash
    );
    // Revoking again is a no-op, recorded in the audit log.
    let again = engine
        .revoke(&record.grant.id, Trigger::Manual, "operator", None)
        .await
        .unwrap();
    assert_eq!(again.state, GrantState::Verified);
    let kinds: Vec<String> = engine
        .report(&record.grant.id)
        .await
        .unwrap()
        .events
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(kinds.last().unwrap(), "grant.revoke-requested");
}

#[tokio::test(start_paused = true)]
async fn issue_failure_compensates_by_grant_id() {
    let engine = engine(&[("bad", misbehave(&[("mode", "fail")]))]).await;
    let r = engine
        .request(new_grant("bad", 60_000), "agent", approve())
        .await
        .unwrap();
    let err = engine.issue(&r.grant.id, "agent").await.unwrap_err();
    assert!(matches!(err, Error::Issue(_)), "{err}");
    let r = wait_for(&engine, &r.grant.id, GrantState::Verified).await;
    assert_eq!(r.trigger, Some(Trigger::Compensation));
    assert_eq!(r.handle, None, "compensation revokes by grant id alone");
    let path = states(&engine.report(&r.grant.id).await.unwrap());
    assert!(
        path.windows(2)
            .any(|w| w == [GrantState::IssueFailed, GrantState::Revoking]),
        "{path:?}"
    );
}

#[tokio::test]
async fn revoke_outage_retries_escalates_and_recovers() {
    let engine = engine(&[("flaky", misbehave(&[("revoke", "fail")]))]).await;
    // Escalations are announced to the operator's webhook.
    let alerts = alert_receiver(&engine).await;
    let record = issued(&engine, "flaky", 60_000).await;
    let id = record.grant.id.clone();
    engine
        .revoke(&id, Trigger::Anomaly, "detector", Some("odd queries"))
        .await
        .unwrap();
    let r = wait_for(&engine, &id, GrantState::Escalated).await;
    assert!(r.attempts >= 3, "{r:?}");
    assert!(
        r.last_error
            .as_deref()
            .unwrap()
            .contains("downstream is down"),
        "{r:?}"
    );
    assert!(r.escalated_at.is_some());
    assert_eq!(engine.escalated().await.unwrap().len(), 1);
    for _ in 0..200 {
        if !alerts.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let got = alerts.lock().unwrap().clone();
    assert_eq!(got.len(), 1, "one alert for the first escalation: {got:?}");
    assert_eq!(got[0]["kind"], "escalation");
    assert_eq!(got[0]["grant"], id.as_str());
    // Escalated grants keep being retried: when the downstream system comes back,
    // revocation completes and is verified.
    engine
        .registry()
        .load("flaky", &misbehave(&[]))
        .await
        .unwrap();
    let r = wait_for(&engine, &id, GrantState::Verified).await;
    assert_eq!(r.trigger, Some(Trigger::Anomaly));
    assert!(r.escalated_at.is_some(), "the escalation stays on record");
    assert!(engine.escalated().await.unwrap().is_empty());
}

/// A revocation whose verification fails is committed on its own first: the
/// grant is `revoked` (the connector is not asked to revoke again), and the
/// failed verification is retried from there until it escalates.
#[tokio::test]
async fn a_revocation_is_recorded_when_its_verification_fails() {
    let engine = engine(&[("blind", misbehave(&[("verify", "fail")]))]).await;
    let record = issued(&engine, "blind", 60_000).await;
    let id = record.grant.id.clone();
    engine
        .revoke(&id, Trigger::TaskCompleted, "agent", None)
        .await
        .unwrap();
    let r = wait_for(&engine, &id, GrantState::Escalated).await;
    assert!(r.revoked_at.is_some(), "{r:?}");
    let events = engine.report(&id).await.unwrap().events;
    let steps: Vec<_> = events
        .iter()
        .filter_map(|e| {
            e.detail["event"]
                .as_str()
                .map(|s| (s, e.to, e.record.is_some()))
        })
        .collect();
    let revoked = steps
        .iter()
        .position(|s| s.0 == "RevokeSucceeded")
        .expect("the revocation is recorded");
    assert_eq!(
        steps[revoked],
        ("RevokeSucceeded", Some(GrantState::Revoked), true),
        "committed on its own, bound to its record"
    );
    assert_eq!(steps[revoked + 1].0, "CallFailed", "{steps:?}");
    assert_eq!(
        steps.iter().filter(|s| s.0 == "RevokeSucceeded").count(),
        1,
        "revoked once: {steps:?}"
    );
    assert!(engine.store().verify_audit().await.unwrap().is_intact());
}

#[tokio::test(start_paused = true)]
async fn residue_is_revoked_again_until_verified() {
    let engine = engine(&[("sticky", misbehave(&[("verify", "residual")]))]).await;
    let record = issued(&engine, "sticky", 60_000).await;
    let id = record.grant.id.clone();
    engine
        .revoke(&id, Trigger::Manual, "operator", None)
        .await
        .unwrap();
    let r = wait_for(&engine, &id, GrantState::Escalated).await;
    assert!(r.residue[0].detail.contains("session"), "{r:?}");
    let events = engine.report(&id).await.unwrap().events;
    let residual_events = events
        .iter()
        .filter(|e| e.to == Some(GrantState::Residual))
        .count();
    assert!(
        residual_events >= 2,
        "found residue, revoked, found it again: {residual_events}"
    );
    assert!(
        events
            .iter()
            .any(|e| e.detail["residue"][0]["kind"] == "session-open"),
        "evidence is audited"
    );
    engine
        .registry()
        .load("sticky", &misbehave(&[]))
        .await
        .unwrap();
    let r = wait_for(&engine, &id, GrantState::Verified).await;
    assert!(r.residue.is_empty());
}

#[tokio::test]
async fn recovery_finishes_grants_left_mid_flight() {
    let dir = std::env::temp_dir().join(format!("ebb-recover-{}", rand::random::<u64>()));
    let store: Arc<dyn Store> = KvStore::open(&dir, [4; 32]).unwrap();
    // A host that is about to die: it never runs its scheduler.
    let dying = engine_on(store.clone(), &[noop()]).await;
    let a = dying
        .request(new_grant("noop", 60_000), "agent", approve())
        .await
        .unwrap();
    // Intent written, then the host died before calling the connector.
    let now = dying.now();
    let lease = now + 60_000;
    let a = dying
        .transition_leased(
            a,
            Event::BeginIssue,
            "agent",
            json!({}),
            Sealed::Keep,
            Some(lease),
            Vec::new(),
            |r| {
                r.grant.not_after = now + 60_000;
                r.due_at = Some(now);
            },
        )
        .await
        .unwrap();
    // Another grant was mid-revocation; its job had claimed a lease.
    let b = issued(&dying, "noop", 60_000).await;
    dying
        .revoke(&b.grant.id, Trigger::TaskCompleted, "agent", None)
        .await
        .unwrap();
    store
        .claim_due(dying.now(), dying.now() + 60_000, 10)
        .await
        .unwrap();
    store.sync().await.unwrap();
    drop(dying);

    let engine = engine_on(store, &[noop()]).await;
    engine.start().await.unwrap();
    let a = wait_for(&engine, &a.grant.id, GrantState::Verified).await;
    assert_eq!(a.trigger, Some(Trigger::Compensation));
    let b = wait_for(&engine, &b.grant.id, GrantState::Verified).await;
    assert_eq!(b.trigger, Some(Trigger::TaskCompleted));
    assert!(engine.store().verify_audit().await.unwrap().is_intact());
    engine.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn bad_requests_are_refused_with_reasons() {
    let engine = engine(&[noop()]).await;
    let over = new_grant("noop", LifecyclePolicy::default().max_ttl_ms + 1);
    let err = engine.request(over, "agent", approve()).await.unwrap_err();
    assert!(err.to_string().contains("over the maximum"), "{err}");
    let mut bad_action = new_grant("noop", 1000);
    bad_action.permissions[0].action = "sudo".into();
    let err = engine
        .request(bad_action, "agent", approve())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no action `sudo`"), "{err}");
    let err = engine
        .request(new_grant("nope", 1000), "agent", approve())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::UnknownConnector(_)));
    let err = engine
        .request(new_grant("noop", 0), "agent", approve())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Invalid(_)));

    // Pending requests: the requester cannot approve, nor issue before approval.
    let r = engine
        .request(new_grant("noop", 1000), "agent", Decision::Pending)
        .await
        .unwrap();
    assert!(matches!(
        engine.approve(&r.grant.id, "agent", None).await,
        Err(Error::SelfApproval)
    ));
    assert!(matches!(
        engine.issue(&r.grant.id, "agent").await,
        Err(Error::Illegal(_))
    ));
    engine.approve(&r.grant.id, "alice", None).await.unwrap();
    engine.issue(&r.grant.id, "agent").await.unwrap();
    // Issued once; never again (a new grant is a new request).
    assert!(matches!(
        engine.issue(&r.grant.id, "agent").await,
        Err(Error::Illegal(_))
    ));
    let denied = engine
        .request(
            new_grant("noop", 1000),
            "agent",
            Decision::Deny {
                by: "policy".into(),
                reason: "no".into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(denied.state, GrantState::Denied);
    assert!(matches!(
        engine.get("missing").await,
        Err(Error::NotFound(_))
    ));
}

#[tokio::test]
async fn restart_revokes_past_due_grants_first() {
    let dir = std::env::temp_dir().join(format!("ebb-pastdue-{}", rand::random::<u64>()));
    let store: Arc<dyn Store> = KvStore::open(&dir, [5; 32]).unwrap();
    let first = engine_on(store.clone(), &[noop()]).await;
    let mut ids = vec![];
    let mut past_due = 0;
    for _ in 0..50 {
        let r = issued(&first, "noop", 50).await;
        past_due = past_due.max(r.grant.not_after);
        ids.push(r.grant.id);
    }
    // Due a little after the restart: it must wait for everything already past due.
    let soon = issued(&first, "noop", 3_000).await;
    let late = issued(&first, "noop", 3_600_000).await;
    store.sync().await.unwrap();
    drop(first);
    // Until every short grant is past due (polling the condition, not a guess).
    while ebb_test_support::now_ms() <= past_due {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Restart: everything past due is revoked first; the long grant stays active.
    let engine = engine_on(store, &[noop()]).await;
    engine.start().await.unwrap();
    let mut started_last = 0;
    for id in &ids {
        let r = wait_for(&engine, id, GrantState::Verified).await;
        assert_eq!(r.trigger, Some(Trigger::Expiry));
        started_last = started_last.max(r.revoke_started_at.unwrap());
    }
    let soon = wait_for(&engine, &soon.grant.id, GrantState::Verified).await;
    assert!(
        soon.revoke_started_at.unwrap() >= started_last,
        "a grant due after the restart was revoked before the ones already past due"
    );
    assert_eq!(
        engine.get(&late.grant.id).await.unwrap().state,
        GrantState::Active
    );
    engine.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(start_paused = true)]
async fn reverification_catches_access_that_comes_back() {
    let policy = LifecyclePolicy {
        propagation_delay_ms: 150,
        reverify_window_ms: 2_000,
        reverify_every_ms: 50,
        ..fast_policy()
    };
    let config = |verify: &str| misbehave(&[("verify", verify)]).with_lifecycle(policy);
    let engine = engine(&[("flaky", config("revoked"))]).await;
    let record = issued(&engine, "flaky", 60_000).await;
    let id = record.grant.id.clone();
    engine
        .revoke(&id, Trigger::TaskCompleted, "agent", None)
        .await
        .unwrap();
    let verified = wait_for(&engine, &id, GrantState::Verified).await;
    assert!(
        verified.verified_at.unwrap() - verified.revoked_at.unwrap() >= 150,
        "verification waited for the propagation delay"
    );
    assert!(verified.reverify_until.is_some() && verified.due_at.is_some());
    // The closed grant is re-verified while access stays gone.
    for _ in 0..2000 {
        if count(&engine.report(&id).await.unwrap(), "Reverify") >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        count(&engine.report(&id).await.unwrap(), "Reverify") >= 1,
        "closed grants are re-verified"
    );
    // Access reappears downstream (say, re-granted through an inherited role).
    engine
        .registry()
        .load("flaky", &config("residual"))
        .await
        .unwrap();
    // Found on re-verification: revoked again, and escalated while it persists.
    let residual = wait_for(&engine, &id, GrantState::Escalated).await;
    assert!(residual.residue[0].detail.contains("session"));
    engine
        .registry()
        .load("flaky", &config("revoked"))
        .await
        .unwrap();
    let again = wait_for(&engine, &id, GrantState::Verified).await;
    assert!(again.verified_at > verified.verified_at);
    // The window ends: no more re-verification is scheduled.
    for _ in 0..600 {
        if engine.get(&id).await.unwrap().due_at.is_none() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "re-verification never stopped: {:?}",
        engine.get(&id).await.unwrap()
    );
}

/// A connector that revokes by value gets the sealed credential back in `revoke` and
/// in every re-verification, and the credential is shredded when the window closes.
#[tokio::test(start_paused = true)]
async fn a_by_value_connector_gets_the_credential_until_the_reverify_window_closes() {
    // A window long enough that a slow machine still sees the grant inside it.
    let policy = LifecyclePolicy {
        reverify_window_ms: 2_000,
        reverify_every_ms: 100,
        ..fast_policy()
    };
    let config = misbehave(&[("by-value", "yes")]).with_lifecycle(policy);
    let engine = engine(&[("token", config)]).await;
    let record = issued(&engine, "token", 60_000).await;
    let id = record.grant.id.clone();
    engine
        .revoke(&id, Trigger::TaskCompleted, "agent", None)
        .await
        .unwrap();
    let verified = wait_for(&engine, &id, GrantState::Verified).await;
    assert!(verified.reverify_until.is_some());
    assert!(
        engine
            .store()
            .sealed_credential(&id)
            .await
            .unwrap()
            .is_some(),
        "kept for re-verification by value"
    );
    for _ in 0..600 {
        let r = engine.get(&id).await.unwrap();
        if r.due_at.is_none() {
            assert_eq!(r.state, GrantState::Verified, "{r:?}");
            assert_eq!(engine.store().sealed_credential(&id).await.unwrap(), None);
            let report = engine.report(&id).await.unwrap();
            let reverified = count(&report, "Reverify");
            assert!(reverified >= 2, "re-verified by value {reverified} times");
            assert_eq!(
                count(&report, "FoundResidue"),
                0,
                "never without the credential"
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "the window never closed: {:?}",
        engine.get(&id).await.unwrap()
    );
}

/// A real (temporary) store with two test hooks, no fake behaviour of its own:
/// it counts commits until the next `sync` (so a test sees whether an answer was
/// given before its commit was durable), and it can fail the commits of one grant
/// as a failing disk would (fault injection a real store does not offer on demand).
#[derive(Debug)]
struct TestStore {
    inner: Arc<dyn Store>,
    unsynced: std::sync::atomic::AtomicU64,
    failing: std::sync::Mutex<Option<String>>,
    /// A problem every chain check reports (tampering, injected).
    tampered: std::sync::Mutex<Option<String>>,
    /// Says it is shared by several hosts, and records each `release_claim`.
    shared: Option<std::sync::Mutex<Vec<String>>>,
    /// Every grant the scheduler claimed, and every commit's state and lease.
    seen: std::sync::Mutex<Seen>,
    /// A grant whose next leased commit is followed at once by a write of
    /// another host (the record committed again, its version moved).
    moved_after_lease: std::sync::Mutex<Option<String>>,
}

#[derive(Debug, Default)]
struct Seen {
    /// Rounds of the scheduler: calls of `claim_due`.
    rounds: usize,
    claimed: Vec<String>,
    commits: Vec<(String, GrantState, Option<u64>)>,
    /// Every read of a record (`get`, `get_with_credential`), by grant.
    reads: Vec<String>,
}

impl TestStore {
    fn new(key: u8) -> Arc<Self> {
        Arc::new(Self {
            inner: KvStore::temporary([key; 32]).unwrap(),
            unsynced: std::sync::atomic::AtomicU64::new(0),
            failing: std::sync::Mutex::new(None),
            tampered: std::sync::Mutex::new(None),
            shared: None,
            seen: std::sync::Mutex::default(),
            moved_after_lease: std::sync::Mutex::new(None),
        })
    }

    /// A store that says other hosts share it: commits keep the claim of a job,
    /// and jobs release it (here: the due entry goes back to the record's due).
    fn shared(key: u8) -> Arc<Self> {
        let mut store = Arc::into_inner(Self::new(key)).unwrap();
        store.shared = Some(std::sync::Mutex::new(Vec::new()));
        Arc::new(store)
    }

    /// How many times a claim on grant `id` was released.
    fn releases(&self, id: &str) -> usize {
        let released = self.shared.as_ref().unwrap().lock().unwrap();
        released.iter().filter(|r| *r == id).count()
    }

    fn unsynced(&self) -> u64 {
        self.unsynced.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Fails every commit of grant `id` (or none) from now on.
    fn fail_commits_of(&self, id: Option<&str>) {
        *self.failing.lock().unwrap() = id.map(str::to_owned);
    }
}

#[store::async_trait]
impl Store for TestStore {
    async fn get(&self, id: &str) -> store::Result<Option<GrantRecord>> {
        self.seen.lock().unwrap().reads.push(id.to_owned());
        self.inner.get(id).await
    }
    async fn get_with_credential(
        &self,
        id: &str,
    ) -> store::Result<Option<(GrantRecord, Option<Vec<u8>>)>> {
        self.seen.lock().unwrap().reads.push(id.to_owned());
        self.inner.get_with_credential(id).await
    }
    async fn commit(&self, commit: Commit) -> store::Result<(GrantRecord, AuditEvent)> {
        if self.failing.lock().unwrap().as_deref() == Some(commit.record.grant.id.as_str()) {
            return Err(store::Error::Io {
                what: "writing (injected)",
                source: std::io::Error::from(std::io::ErrorKind::StorageFull),
            });
        }
        self.unsynced
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.seen.lock().unwrap().commits.push((
            commit.record.grant.id.clone(),
            commit.record.state,
            commit.lease_until,
        ));
        let id = commit.record.grant.id.clone();
        let lease_until = commit.lease_until;
        let committed = self.inner.commit(commit).await?;
        let move_it = lease_until.is_some() && {
            let mut moved = self.moved_after_lease.lock().unwrap();
            moved.take_if(|m| *m == id).is_some()
        };
        if move_it {
            self.inner
                .commit(Commit {
                    record: committed.0.clone(),
                    sealed: Sealed::Keep,
                    event: NewEvent::new("test.touched", "another-host").grant(&id),
                    lease_until,
                    earlier: Vec::new(),
                })
                .await?;
        }
        Ok(committed)
    }
    async fn append_audit(&self, event: NewEvent) -> store::Result<AuditEvent> {
        self.unsynced
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.append_audit(event).await
    }
    async fn claim_due(&self, now: u64, lease: u64, limit: usize) -> store::Result<Vec<String>> {
        let claimed = self.inner.claim_due(now, lease, limit).await?;
        let mut seen = self.seen.lock().unwrap();
        seen.rounds += 1;
        seen.claimed.extend(claimed.iter().cloned());
        Ok(claimed)
    }
    async fn reschedule(&self, id: &str, due: Option<u64>) -> store::Result<()> {
        self.inner.reschedule(id, due).await
    }
    async fn next_due(&self) -> store::Result<Option<u64>> {
        self.inner.next_due().await
    }
    async fn release_leases(&self) -> store::Result<usize> {
        self.inner.release_leases().await
    }
    async fn sealed_credential(&self, id: &str) -> store::Result<Option<Vec<u8>>> {
        self.inner.sealed_credential(id).await
    }
    async fn list(&self, filter: &store::ListFilter) -> store::Result<store::Page> {
        self.inner.list(filter).await
    }
    async fn audit(&self, query: &AuditQuery) -> store::Result<Vec<AuditEvent>> {
        self.inner.audit(query).await
    }
    async fn verify_audit(&self) -> store::Result<ebb_core::audit::ChainReport> {
        self.inner.verify_audit().await
    }
    async fn verify_at_start(&self) -> store::Result<ebb_core::audit::ChainReport> {
        self.inner.verify_at_start().await
    }
    async fn verify_new_events(&self) -> store::Result<ebb_core::audit::ChainReport> {
        let mut report = self.inner.verify_new_events().await?;
        if let Some(problem) = self.tampered.lock().unwrap().clone() {
            report.problem = Some(problem);
        }
        Ok(report)
    }
    async fn counts(&self) -> store::Result<std::collections::BTreeMap<GrantState, u64>> {
        self.inner.counts().await
    }
    async fn escalations(&self) -> store::Result<std::collections::BTreeMap<String, u64>> {
        self.inner.escalations().await
    }
    async fn sync(&self) -> store::Result<()> {
        // Everything committed before this call is made durable by it.
        let pending = self.unsynced.swap(0, std::sync::atomic::Ordering::SeqCst);
        let result = self.inner.sync().await;
        if result.is_err() {
            self.unsynced
                .fetch_add(pending, std::sync::atomic::Ordering::SeqCst);
        }
        result
    }
    async fn health(&self) -> store::Result<()> {
        self.inner.health().await
    }
    async fn put_state(&self, key: &str, value: Option<&[u8]>) -> store::Result<()> {
        self.inner.put_state(key, value).await
    }
    async fn states(&self, prefix: &str) -> store::Result<Vec<(String, Vec<u8>)>> {
        self.inner.states(prefix).await
    }
    fn is_shared(&self) -> bool {
        self.shared.is_some()
    }
    async fn release_claim(&self, id: &str) -> store::Result<()> {
        if let Some(released) = &self.shared {
            released.lock().unwrap().push(id.to_owned());
            let due = self.inner.get(id).await?.and_then(|r| r.due_at);
            self.inner.reschedule(id, due).await?;
        }
        Ok(())
    }
}

/// On a store shared by several hosts a job releases its claim only if its last
/// write left one: a revocation that ends verified (no due time left) makes no
/// release round trip, one that leaves the grant due again (residue found, to be
/// revoked again) releases it, so the next attempt is not held back by the lease.
#[tokio::test(start_paused = true)]
async fn a_job_releases_its_claim_only_when_it_left_one() {
    let store = TestStore::shared(9);
    let engine = engine_on(
        store.clone(),
        &[noop(), ("sticky", misbehave(&[("verify", "residual")]))],
    )
    .await;
    engine.start().await.unwrap();
    let clean = issued(&engine, "noop", 60_000).await.grant.id;
    let sticky = issued(&engine, "sticky", 60_000).await.grant.id;
    for id in [&clean, &sticky] {
        engine
            .revoke(id, Trigger::TaskCompleted, "agent", None)
            .await
            .unwrap();
    }
    let verified = wait_for(&engine, &clean, GrantState::Verified).await;
    assert_eq!(verified.due_at, None);
    wait_for(&engine, &sticky, GrantState::Escalated).await;
    assert_eq!(
        store.releases(&clean),
        0,
        "released a claim that was not there"
    );
    assert!(
        store.releases(&sticky) >= 1,
        "a job that left the grant due kept its lease"
    );
    engine.shutdown().await.unwrap();
}

/// A caller's revocation goes straight to a job of this host: the intent is
/// committed with a lease held by the host, and the scheduler never claims it.
/// Before the scheduler runs, the intent is due now and the scheduler claims it
/// once started.
#[tokio::test(start_paused = true)]
async fn a_callers_revocation_is_handed_to_a_job_without_a_claim() {
    let store = TestStore::new(10);
    let engine = engine_on(store.clone(), &[noop()]).await;
    let waiting = issued(&engine, "noop", 3_600_000).await.grant.id;
    let r = engine
        .revoke(&waiting, Trigger::TaskCompleted, "agent", None)
        .await
        .unwrap();
    assert_eq!(r.state, GrantState::Revoking);
    engine.start().await.unwrap();
    let handed = issued(&engine, "noop", 3_600_000).await.grant.id;
    engine
        .revoke(&handed, Trigger::TaskCompleted, "agent", None)
        .await
        .unwrap();
    for id in [&waiting, &handed] {
        wait_for(&engine, id, GrantState::Verified).await;
    }
    let lease_ms = EngineConfig::default().lease_ms;
    let started = engine
        .get(&handed)
        .await
        .unwrap()
        .revoke_started_at
        .unwrap();
    {
        let seen = store.seen.lock().unwrap();
        let intent = |id: &str| {
            seen.commits
                .iter()
                .find(|(g, state, _)| g == id && *state == GrantState::Revoking)
                .map(|(_, _, lease)| *lease)
                .unwrap()
        };
        assert_eq!(intent(&waiting), None, "no job before the scheduler runs");
        let lease = intent(&handed).expect("the handed-over intent holds a lease");
        assert_eq!(
            lease,
            started + lease_ms,
            "leased for the engine's lease time from the intent"
        );
        assert_eq!(
            seen.claimed,
            std::slice::from_ref(&waiting),
            "only the waiting one was claimed"
        );
    }
    assert!(engine.store().verify_audit().await.unwrap().is_intact());
    engine.shutdown().await.unwrap();
}

/// A revocation handed to a job carries the record its intent committed, and its
/// credential: the job does not read them back. If the grant moved before the
/// job had it (another host wrote it), the job's first commit is refused and the
/// job works from the store: the grant is verified, and no failure is recorded.
#[tokio::test(start_paused = true)]
async fn a_handed_revocation_is_not_read_back_and_one_that_moved_is_read_again() {
    let store = TestStore::new(13);
    let engine = engine_on(store.clone(), &[noop()]).await;
    engine.start().await.unwrap();
    let handed = issued(&engine, "noop", 3_600_000).await.grant.id;
    let moved = issued(&engine, "noop", 3_600_000).await.grant.id;
    store.seen.lock().unwrap().reads.clear();
    *store.moved_after_lease.lock().unwrap() = Some(moved.clone());
    for id in [&handed, &moved] {
        engine
            .revoke(id, Trigger::TaskCompleted, "agent", None)
            .await
            .unwrap();
    }
    let reads = |id: &str| {
        let seen = store.seen.lock().unwrap();
        seen.reads.iter().filter(|r| *r == id).count()
    };
    for id in [&handed, &moved] {
        // Read past the counting hook: only the engine's reads count.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while store.inner.get(id).await.unwrap().unwrap().state != GrantState::Verified {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{id} never verified"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    assert_eq!(
        reads(&handed),
        1,
        "only the revoke call read the handed grant"
    );
    assert_eq!(
        reads(&moved),
        2,
        "the moved grant was read by the revoke call, and again by the job"
    );
    for id in [&handed, &moved] {
        let events = engine.report(id).await.unwrap().events;
        assert!(
            !events.iter().any(|e| e.kind == "grant.work-failed"),
            "{id}: {events:?}"
        );
    }
    let touched = engine.report(&moved).await.unwrap().events;
    assert!(touched.iter().any(|e| e.kind == "test.touched"));
    assert!(engine.store().verify_audit().await.unwrap().is_intact());
    engine.shutdown().await.unwrap();
}

/// A commit wakes the scheduler only when it puts a grant in the due index
/// earlier than the scheduler sleeps until: issuing grants that expire in an hour
/// takes a round or two, not one per commit.
#[tokio::test(start_paused = true)]
async fn commits_due_later_than_the_scheduler_sleeps_do_not_wake_it() {
    let store = TestStore::new(11);
    let engine = engine_on(store.clone(), &[noop()]).await;
    engine.start().await.unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    let before = store.seen.lock().unwrap().rounds;
    let mut ids = Vec::new();
    for _ in 0..20 {
        ids.push(issued(&engine, "noop", 3_600_000).await.grant.id);
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let rounds = store.seen.lock().unwrap().rounds - before;
    assert!(
        rounds <= 3,
        "{rounds} scheduler rounds for 20 grants due in an hour"
    );
    // A commit due sooner than that still wakes it: a revocation before the
    // scheduler runs is due now and claimed at once.
    engine
        .revoke(&ids[0], Trigger::TaskCompleted, "agent", None)
        .await
        .unwrap();
    wait_for(&engine, &ids[0], GrantState::Verified).await;
    for id in &ids[1..] {
        assert_eq!(engine.get(id).await.unwrap().state, GrantState::Active);
    }
    engine.shutdown().await.unwrap();
}

/// A grant whose connector has no free call slot steps aside for 25-100 ms and
/// the scheduler, told of the move, comes back for it then — it does not wait for
/// some other commit to wake it. Here nothing else happens while the connector's
/// one slot hangs, so the waiting grant is claimed again and again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_stepping_aside_for_a_busy_connector_is_claimed_again() {
    let store = TestStore::new(12);
    let hung = misbehave(&[("revoke", "hang")]).with_lifecycle(LifecyclePolicy {
        max_concurrent_calls: 1,
        ..fast_policy()
    });
    let engine = engine_on(store.clone(), &[("hung", hung)]).await;
    engine.start().await.unwrap();
    issued(&engine, "hung", 200).await;
    let waiting = issued(&engine, "hung", 300).await.grant.id;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let claims = store
        .seen
        .lock()
        .unwrap()
        .claimed
        .iter()
        .filter(|id| **id == waiting)
        .count();
    assert!(
        (5..1_000).contains(&claims),
        "claimed {claims} times in 1.2 s while its connector was busy (about 19 expected)"
    );
}

/// A request left waiting for approval is denied when its window closes, on a
/// host where nothing else happens: its commit tells the sleeping scheduler when.
#[tokio::test(start_paused = true)]
async fn a_request_nobody_approves_is_denied_when_its_window_closes() {
    let engine = engine(&[noop()]).await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    let waiting = engine
        .request(new_grant("noop", 60_000), "agent", Decision::Pending)
        .await
        .unwrap();
    let window = EngineConfig::default().approval_window_ms;
    tokio::time::sleep(Duration::from_millis(window + 1_000)).await;
    let denied = wait_for(&engine, &waiting.grant.id, GrantState::Denied).await;
    assert_eq!(
        denied.last_error.as_deref(),
        Some("not approved within the approval window")
    );
    engine.shutdown().await.unwrap();
}

/// Issue 12: request, approve and deny answer only once their commits are durable
/// (a denial lost in a crash would put the grant back before another approver).
#[tokio::test]
async fn decisions_are_durable_before_they_are_answered() {
    let observer = TestStore::new(6);
    let engine = engine_on(observer.clone(), &[noop()]).await;
    let unsynced = || observer.unsynced();
    let pending = engine
        .request(new_grant("noop", 60_000), "agent", Decision::Pending)
        .await
        .unwrap();
    assert_eq!(
        unsynced(),
        0,
        "request answered before its commit was durable"
    );
    let denied = engine
        .deny(&pending.grant.id, "alice", "not for this task")
        .await
        .unwrap();
    assert_eq!(denied.state, GrantState::Denied);
    assert_eq!(unsynced(), 0, "denial answered before it was durable");
    let decided = engine
        .request(
            new_grant("noop", 60_000),
            "agent",
            Decision::Deny {
                by: "policy".into(),
                reason: "no".into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(decided.state, GrantState::Denied);
    assert_eq!(unsynced(), 0, "a request denied by policy answered early");
    let pending = engine
        .request(new_grant("noop", 60_000), "agent", Decision::Pending)
        .await
        .unwrap();
    let approved = engine
        .approve(&pending.grant.id, "alice", None)
        .await
        .unwrap();
    assert_eq!(approved.state, GrantState::Approved);
    assert_eq!(unsynced(), 0, "approval answered before it was durable");
}

/// A decision taken with the request (by policy) is one commit with it: the
/// record's first version is the decided one, and the audit log holds the request
/// and then the decision, linked one after the other.
#[tokio::test]
async fn a_policy_decision_is_committed_with_its_request() {
    let engine = engine(&[noop()]).await;
    let denied = Decision::Deny {
        by: "policy".into(),
        reason: "no".into(),
    };
    for (decision, state, step) in [
        (approve(), GrantState::Approved, "Approve"),
        (denied, GrantState::Denied, "Deny"),
    ] {
        let r = engine
            .request(new_grant("noop", 60_000), "agent", decision)
            .await
            .unwrap();
        assert_eq!((r.state, r.version), (state, 1), "one commit");
        let stored = engine.store().get(&r.grant.id).await.unwrap().unwrap();
        assert_eq!(stored, r);
        let report = engine.report(&r.grant.id).await.unwrap();
        let events: Vec<_> = report
            .events
            .iter()
            .map(|e| (e.kind.as_str(), e.to, e.detail["event"].as_str()))
            .collect();
        assert_eq!(
            events,
            [
                ("grant.requested", Some(GrantState::Requested), None),
                ("grant.transition", Some(state), Some(step)),
            ]
        );
        assert_eq!(report.events[1].seq, report.events[0].seq + 1);
        assert_eq!(report.events[1].prev, report.events[0].hash);
    }
    let report = engine.store().verify_audit().await.unwrap();
    assert!(report.is_intact(), "{report:?}");
    assert!(engine.store().verify_records().await.unwrap().is_intact());
}

/// Issue 12: a credential that cannot be unsealed (the host key changed) does not
/// stall revocation: the grant is revoked and verified by grant id, and the
/// failure is audited.
#[tokio::test]
async fn an_unsealable_credential_is_revoked_by_grant_id_and_audited() {
    let dir = std::env::temp_dir().join(format!("ebb-unseal-{}", rand::random::<u64>()));
    let store: Arc<dyn Store> = KvStore::open(&dir, [7; 32]).unwrap();
    let first = engine_on(store.clone(), &[noop()]).await;
    let record = issued(&first, "noop", 3_600_000).await;
    let id = record.grant.id.clone();
    assert!(store.sealed_credential(&id).await.unwrap().is_some());
    store.sync().await.unwrap();
    drop(first);
    // The same store under another host key: the sealed credential no longer opens.
    let registry = Arc::new(Registry::new(
        Runtime::new(&RuntimeConfig::default()).unwrap(),
    ));
    let (name, config) = noop();
    registry.load(name, &config).await.unwrap();
    let engine = Lifecycle::new(
        store,
        Sealer::new(&HostKey::from_hex(&"99".repeat(32)).unwrap()),
        registry,
        Clock::system(),
        EngineConfig::default(),
    );
    engine.start().await.unwrap();
    engine
        .revoke(&id, Trigger::TaskCompleted, "agent", None)
        .await
        .unwrap();
    let r = wait_for(&engine, &id, GrantState::Verified).await;
    assert_eq!(r.trigger, Some(Trigger::TaskCompleted));
    let kinds: Vec<String> = engine
        .report(&id)
        .await
        .unwrap()
        .events
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert!(
        kinds.iter().any(|k| k == "credential.unseal-failed"),
        "{kinds:?}"
    );
    engine.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

/// Issue 12: when the host itself cannot do a grant's work (its store fails), the
/// failure is audited each time and alerted once it repeats, not only logged; when
/// the store recovers, the work completes.
#[tokio::test]
async fn work_the_host_cannot_do_is_audited_alerted_and_finished_later() {
    let store = TestStore::new(8);
    let registry = Arc::new(Registry::new(
        Runtime::new(&RuntimeConfig::default()).unwrap(),
    ));
    let (name, config) = noop();
    registry.load(name, &config).await.unwrap();
    let engine = Lifecycle::new(
        store.clone(),
        Sealer::new(&HostKey::from_hex(&"11".repeat(32)).unwrap()),
        registry,
        Clock::system(),
        EngineConfig {
            lease_ms: 50,
            ..EngineConfig::default()
        },
    );
    let alerts = alert_receiver(&engine).await;
    engine.start().await.unwrap();
    let record = issued(&engine, "noop", 300).await;
    let id = record.grant.id.clone();
    // The disk fails for this grant before it expires.
    store.fail_commits_of(Some(&id));
    let mut stuck = Vec::new();
    for _ in 0..400 {
        stuck = alerts
            .lock()
            .unwrap()
            .iter()
            .filter(|a| a["kind"] == "stuck" && a["grant"] == id.as_str())
            .cloned()
            .collect();
        if !stuck.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(stuck.len(), 1, "the stuck grant was alerted once");
    assert!(
        stuck[0]["why"].as_str().unwrap().contains("injected"),
        "{stuck:?}"
    );
    let failed = engine
        .report(&id)
        .await
        .unwrap()
        .events
        .iter()
        .filter(|e| e.kind == "grant.work-failed")
        .count();
    assert!(failed >= 3, "every failure is audited: {failed}");
    // The disk comes back: the expiry goes through.
    store.fail_commits_of(None);
    let r = wait_for(&engine, &id, GrantState::Verified).await;
    assert_eq!(r.trigger, Some(Trigger::Expiry));
}

/// Issue 12: a step that would move `not-after` after issuance is refused in every
/// build (not a debug assertion with a silent repair in release), and nothing is
/// written.
#[tokio::test]
async fn not_after_never_moves_after_issuance() {
    let engine = engine_on(KvStore::temporary([4; 32]).unwrap(), &[noop()]).await;
    let record = issued(&engine, "noop", 3_600_000).await;
    let id = record.grant.id.clone();
    // Mid-revocation, a failed call's step tries to push `not-after` out.
    let fresh = engine
        .begin_revoke(record.clone(), Trigger::Manual, "ops", None)
        .await
        .unwrap();
    let moved = engine
        .transition_leased(
            fresh.clone(),
            Event::CallFailed,
            "ebb",
            json!({}),
            Sealed::Keep,
            None,
            Vec::new(),
            |r| r.grant.not_after += 60_000,
        )
        .await;
    assert!(matches!(moved, Err(Error::Extension { .. })), "{moved:?}");
    let after = engine.get(&id).await.unwrap();
    assert_eq!(after.grant.not_after, record.grant.not_after);
    assert_eq!(after.version, fresh.version, "nothing was written");
}

/// Issue 12: a credential that only its value can revoke (an OAuth token) is
/// durable, sealed, before the requester gets it.
#[tokio::test]
async fn a_by_value_credential_is_durable_before_it_is_handed_out() {
    let observer = TestStore::new(9);
    let engine = engine_on(
        observer.clone(),
        &[("token", misbehave(&[("by-value", "yes")]))],
    )
    .await;
    let r = engine
        .request(new_grant("token", 60_000), "agent", approve())
        .await
        .unwrap();
    let (record, _credential) = engine.issue(&r.grant.id, "agent").await.unwrap();
    assert_eq!(record.state, GrantState::Active);
    assert_eq!(
        observer.unsynced(),
        0,
        "the credential was handed out before its sealed copy was durable"
    );
    assert!(
        observer
            .sealed_credential(&r.grant.id)
            .await
            .unwrap()
            .is_some()
    );
}

/// Issue 13: the audit chain is checked while the host serves, not only at start:
/// a problem found (injected here; the store's own tests tamper for real) is alerted
/// within the check interval.
#[tokio::test]
async fn tampering_found_while_serving_is_alerted() {
    let store = TestStore::new(9);
    let engine = engine_on(store.clone(), &[]).await;
    let alerts = alert_receiver(&engine).await;
    *store.tampered.lock().unwrap() = Some("event seq 7 was altered (injected)".into());
    let _watch = engine.watch_audit_chain(Duration::from_millis(20));
    let mut got = Vec::new();
    for _ in 0..400 {
        got = alerts.lock().unwrap().clone();
        if !got.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        got.first().map(|a| a["kind"].clone()),
        Some("audit-tampering".into())
    );
    assert!(
        got[0]["problem"].as_str().unwrap().contains("seq 7"),
        "{got:?}"
    );
}

/// Issue 16: one connector whose downstream hangs cannot starve another's
/// expiries. Many grants of a connector whose revoke never answers expire first;
/// the grants of a healthy connector expiring just after are still revoked and
/// verified while every hung call is still waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_connector_does_not_starve_another_connectors_expiries() {
    let hung = misbehave(&[("revoke", "hang")]).with_lifecycle(LifecyclePolicy {
        max_concurrent_calls: 4,
        ..fast_policy()
    });
    let engine = engine(&[("hung", hung), noop()]).await;
    let mut hung_ids = Vec::new();
    for _ in 0..300 {
        hung_ids.push(issued(&engine, "hung", 500).await.grant.id);
    }
    let mut healthy = Vec::new();
    for _ in 0..20 {
        healthy.push(issued(&engine, "noop", 1_500).await.grant.id);
    }
    let started = std::time::Instant::now();
    let mut verified = 0;
    // The hung calls wait a minute; the healthy grants must not wait for them.
    while started.elapsed() < Duration::from_secs(30) {
        verified = 0;
        for id in &healthy {
            if engine.get(id).await.unwrap().state == GrantState::Verified {
                verified += 1;
            }
        }
        if verified == healthy.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        verified,
        healthy.len(),
        "the healthy connector's expiries were starved"
    );
    let mut still_hung = 0;
    for id in &hung_ids {
        if engine.get(id).await.unwrap().state != GrantState::Verified {
            still_hung += 1;
        }
    }
    assert_eq!(
        still_hung,
        hung_ids.len(),
        "the hung connector's calls are still waiting"
    );
}

/// Issue 16: the grants an instance still has, read through the state and due
/// indexes, are exactly those a full read would find: open grants, and closed ones
/// still being re-verified; not closed ones, nor another instance's.
#[tokio::test]
async fn live_grants_are_open_or_still_reverified_and_read_without_a_full_scan() {
    let watched = LifecyclePolicy {
        reverify_window_ms: 60_000,
        reverify_every_ms: 10_000,
        ..fast_policy()
    };
    let engine = engine(&[
        (
            "noop",
            ConnectorConfig::new(ebb_test_plugins::NOOP).with_lifecycle(watched),
        ),
        noop_named("other"),
    ])
    .await;
    let pending = engine
        .request(new_grant("noop", 60_000), "agent", Decision::Pending)
        .await
        .unwrap();
    let active = issued(&engine, "noop", 60_000).await;
    let done = issued(&engine, "noop", 60_000).await;
    engine
        .revoke(&done.grant.id, Trigger::TaskCompleted, "agent", None)
        .await
        .unwrap();
    let done = wait_for(&engine, &done.grant.id, GrantState::Verified).await;
    assert!(done.due_at.is_some(), "re-verified for a while");
    let denied = engine
        .request(
            new_grant("noop", 60_000),
            "agent",
            Decision::Deny {
                by: "policy".into(),
                reason: "no".into(),
            },
        )
        .await
        .unwrap();
    let elsewhere = issued(&engine, "other", 60_000).await;
    let live: Vec<String> = engine
        .live_grants("noop")
        .await
        .unwrap()
        .into_iter()
        .map(|g| g.grant.id)
        .collect();
    let mut expected = vec![pending.grant.id, active.grant.id, done.grant.id];
    expected.sort();
    assert_eq!(live, expected);
    assert!(!live.contains(&denied.grant.id) && !live.contains(&elsewhere.grant.id));
    // The same as reading everything.
    let all: Vec<String> = engine
        .grants_matching(store::ListFilter {
            connector: Some("noop".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_iter()
        .filter(|r| {
            r.due_at.is_some() || !matches!(r.state, GrantState::Denied | GrantState::Verified)
        })
        .map(|g| g.grant.id)
        .collect();
    assert_eq!(live, all);
}

fn noop_named(name: &'static str) -> (&'static str, ConnectorConfig) {
    (
        name,
        ConnectorConfig::new(ebb_test_plugins::NOOP).with_lifecycle(fast_policy()),
    )
}
