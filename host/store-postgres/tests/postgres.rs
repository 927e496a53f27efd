//! The PostgreSQL store against a real server (Debian's, started per test): commits
//! and their refusals, several hosts on one database (claims, leases, one chain,
//! notifications), tampering, the key and schema checks.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly"
)]

use ebb_core::audit::NewEvent;
use ebb_core::contract::{Grant, Subject, SubjectKind};
use ebb_core::state::GrantState;
use ebb_core::store::{AuditQuery, Commit, Error, GrantRecord, ListFilter, Sealed, Store};
use ebb_store_postgres::{PgOptions, PgStore};
use ebb_test_support::postgres::Postgres;
use ebb_test_support::require;
use std::sync::Arc;
use std::time::Duration;

const KEY: [u8; 32] = [7; 32];

async fn open(pg: &Postgres, host: &str, key: [u8; 32]) -> anyhow::Result<Arc<PgStore>> {
    open_leasing(pg, host, key, 60_000).await
}

async fn open_leasing(
    pg: &Postgres,
    host: &str,
    key: [u8; 32],
    lease_ms: u64,
) -> anyhow::Result<Arc<PgStore>> {
    PgStore::open(
        PgOptions {
            dsn: pg.store_dsn()?,
            ca_file: None,
            host_id: host.into(),
            pool_size: 4,
            lease_ms,
        },
        key,
    )
    .await
}

/// Edits stored bytes behind the host's back, as an attacker with database access
/// would: the first `from` becomes `to` in `column` of the `table` rows matching
/// `filter` (records are binary, events JSON: the edit is on bytes).
fn edit(pg: &Postgres, table: &str, column: &str, filter: &str, (from, to): (&str, &str)) {
    let out = pg
        .psql_in(
            "ebbstore",
            &format!(
                "with edited as (update {table} set {column} = overlay({column} \
                 placing convert_to('{to}', 'UTF8') \
                 from position(convert_to('{from}', 'UTF8') in {column}) \
                 for octet_length(convert_to('{from}', 'UTF8'))) \
                 where {filter} and position(convert_to('{from}', 'UTF8') in {column}) > 0 \
                 returning 1) select count(*) from edited"
            ),
        )
        .unwrap();
    assert_ne!(
        out.trim(),
        "0",
        "nothing to edit in {table}.{column} where {filter}"
    );
}

fn record(id: &str, due: Option<u64>) -> GrantRecord {
    let grant = Grant {
        id: id.into(),
        subject: Subject {
            id: "spiffe://test/job".into(),
            kind: SubjectKind::Workload,
            claims: vec![],
        },
        permissions: vec![],
        not_after: 0,
        task: "test".into(),
    };
    let mut r = GrantRecord::requested(grant, "noop".into(), 60_000, 1, "alice".into(), None);
    r.due_at = due;
    r
}

fn commit(record: GrantRecord) -> Commit {
    Commit {
        record,
        sealed: Sealed::Keep,
        event: NewEvent::new("grant.requested", "alice"),
        lease_until: None,
        earlier: Vec::new(),
    }
}

#[tokio::test]
async fn commits_are_versioned_and_audited_in_one_chain() {
    require!(Postgres);
    let pg = Postgres::start().unwrap();
    let store = open(&pg, "a", KEY).await.unwrap();
    let (first, event) = store.commit(commit(record("g1", None))).await.unwrap();
    assert_eq!(first.version, 1);
    assert_eq!(event.seq, 1);
    assert!(event.record.is_some(), "the event binds the record");
    assert_eq!(event.host.as_deref(), Some("a"), "the event names its host");
    // A stale version and a taken id are refused, and write nothing.
    let stale = store.commit(commit(record("g1", None))).await;
    assert!(matches!(stale, Err(Error::Exists(_))), "{stale:?}");
    let mut moved = first.clone();
    moved.version = 7;
    let conflict = store.commit(commit(moved)).await;
    assert!(matches!(conflict, Err(Error::Conflict(_))), "{conflict:?}");
    let mut next = first.clone();
    next.state = GrantState::Approved;
    let (second, _) = store
        .commit(Commit {
            sealed: Sealed::Set(b"sealed bytes".to_vec()),
            ..commit(next)
        })
        .await
        .unwrap();
    assert_eq!(second.version, 2);
    assert_eq!(store.get("g1").await.unwrap(), Some(second.clone()));
    assert_eq!(
        store.sealed_credential("g1").await.unwrap().as_deref(),
        Some(&b"sealed bytes"[..])
    );
    // The scheduler's read: the record and its credential in one query.
    assert_eq!(
        store.get_with_credential("g1").await.unwrap(),
        Some((second.clone(), Some(b"sealed bytes".to_vec())))
    );
    assert_eq!(store.get_with_credential("nope").await.unwrap(), None);
    let mut shredded = second.clone();
    shredded.state = GrantState::Denied;
    store
        .commit(Commit {
            sealed: Sealed::Shred,
            ..commit(shredded)
        })
        .await
        .unwrap();
    assert_eq!(store.sealed_credential("g1").await.unwrap(), None);
    let (now, none) = store.get_with_credential("g1").await.unwrap().unwrap();
    assert_eq!((now.state, none), (GrantState::Denied, None));
    let events = store
        .audit(&AuditQuery {
            grant_id: Some("g1".into()),
            limit: 100,
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2, 3]);
    let counts = store.counts().await.unwrap();
    assert_eq!(counts[&GrantState::Denied], 1);
    assert_eq!(counts[&GrantState::Requested], 0);
    let page = store
        .list(&ListFilter {
            state: Some(GrantState::Denied),
            limit: 10,
            ..ListFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(page.grants.len(), 1);
    // A commit of several steps (a request approved by policy): the steps'
    // events come first, linked and naming the grant; only the last event is
    // bound to the record.
    let (_, approved) = store
        .commit(Commit {
            earlier: vec![NewEvent::new("grant.requested", "alice")],
            event: NewEvent::new("grant.transition", "policy"),
            ..commit(record("g2", None))
        })
        .await
        .unwrap();
    assert_eq!(approved.seq, 5);
    let steps = store
        .audit(&AuditQuery {
            grant_id: Some("g2".into()),
            limit: 10,
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(
        steps
            .iter()
            .map(|e| (e.seq, e.kind.as_str(), e.record.is_some()))
            .collect::<Vec<_>>(),
        [(4, "grant.requested", false), (5, "grant.transition", true)]
    );
    assert_eq!(steps[1].prev, steps[0].hash);
    assert_eq!(steps[0].host.as_deref(), Some("a"));
    let report = store.verify_audit().await.unwrap();
    assert!(report.is_intact(), "{report:?}");
    assert_eq!((report.events, report.records), (5, 2));
    // Host state, by prefix.
    store.put_state("flags/alice", Some(b"1")).await.unwrap();
    // Keys may hold a NUL between their parts (the standing-access findings do).
    store
        .put_state("found/pg\0alice", Some(b"4"))
        .await
        .unwrap();
    assert_eq!(
        store.states("found/").await.unwrap(),
        [("found/pg\0alice".to_owned(), b"4".to_vec())]
    );
    store.put_state("flags/bob", Some(b"2")).await.unwrap();
    store.put_state("other", Some(b"3")).await.unwrap();
    store.put_state("flags/bob", None).await.unwrap();
    assert_eq!(
        store.states("flags/").await.unwrap(),
        [("flags/alice".to_owned(), b"1".to_vec())]
    );
}

#[tokio::test]
async fn two_hosts_write_one_chain_and_claim_each_due_grant_once() {
    require!(Postgres);
    let pg = Postgres::start().unwrap();
    let a = open(&pg, "a", KEY).await.unwrap();
    let b = open(&pg, "b", KEY).await.unwrap();
    // Both hosts commit at once: one chain, no gap, no grant lost.
    let mut tasks = Vec::new();
    for (host, store) in [("a", a.clone()), ("b", b.clone())] {
        tasks.push(tokio::spawn(async move {
            for i in 0..150 {
                store
                    .commit(commit(record(&format!("{host}-{i:03}"), Some(1_000))))
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let report = a.verify_audit().await.unwrap();
    assert!(report.is_intact(), "{report:?}");
    assert_eq!((report.events, report.records), (300, 300));
    assert!(b.verify_audit().await.unwrap().is_intact());
    // Both claim at once: every due grant goes to exactly one of them.
    let (mine, theirs) = tokio::join!(
        a.claim_due(2_000, 60_000, 200),
        b.claim_due(2_000, 60_000, 200)
    );
    let (mine, theirs) = (mine.unwrap(), theirs.unwrap());
    assert_eq!(mine.len() + theirs.len(), 300, "every due grant is claimed");
    let mut all: Vec<&String> = mine.iter().chain(&theirs).collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 300, "no grant is claimed twice");
    // Claimed work is leased: not due again until the lease runs out.
    assert!(a.claim_due(2_000, 60_000, 500).await.unwrap().is_empty());
    assert_eq!(a.next_due().await.unwrap(), Some(60_000));
    // A restart of host a voids a's leases only; b's stay b's.
    assert_eq!(a.release_leases().await.unwrap(), mine.len());
    let again = b.claim_due(2_000, 70_000, 500).await.unwrap();
    assert_eq!(
        again.len(),
        mine.len(),
        "a's work is due again, b's is still leased"
    );
    // When b dies, its leases run out and a takes the work.
    let taken = a.claim_due(60_000, 120_000, 500).await.unwrap();
    assert_eq!(taken.len(), theirs.len());
}

#[tokio::test]
async fn a_live_host_keeps_its_leases_and_a_dead_one_loses_them() {
    require!(Postgres);
    let pg = Postgres::start().unwrap();
    let a = open_leasing(&pg, "a", KEY, 400).await.unwrap();
    let b = open_leasing(&pg, "b", KEY, 400).await.unwrap();
    let now = ebb_test_support::now_ms();
    a.commit(commit(record("work", Some(now)))).await.unwrap();
    let claimed = a.claim_due(now, now + 400, 10).await.unwrap();
    assert_eq!(claimed, ["work"]);
    a.hold("work");
    // Long past the first lease: a renews it while its work goes on.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let later = ebb_test_support::now_ms();
    assert!(
        b.claim_due(later, later + 400, 10)
            .await
            .unwrap()
            .is_empty(),
        "a live host's lease was taken"
    );
    // Work that stopped (no hold) is not renewed, even on a live host: b takes it.
    a.unhold("work");
    let taken = eventually_claimed(&b, "work").await;
    assert!(taken, "a lease nobody holds never ran out");
    // b dies while holding it: nobody renews, and a takes the work.
    b.hold("work");
    drop(b);
    assert!(
        eventually_claimed(&a, "work").await,
        "a dead host's lease never ran out"
    );
}

/// Whether `store` claims grant `id` within five seconds.
async fn eventually_claimed(store: &PgStore, id: &str) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < deadline {
        let now = ebb_test_support::now_ms();
        if store.claim_due(now, now + 400, 10).await.unwrap() == [id] {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test]
async fn a_commit_on_one_host_wakes_the_others() {
    require!(Postgres);
    let pg = Postgres::start().unwrap();
    let a = open(&pg, "a", KEY).await.unwrap();
    let b = open(&pg, "b", KEY).await.unwrap();
    // The listener's first wake-up (at connect) out of the way.
    tokio::time::timeout(Duration::from_secs(5), b.due_changed())
        .await
        .unwrap();
    let woken = tokio::spawn({
        let b = b.clone();
        async move { tokio::time::timeout(Duration::from_secs(5), b.due_changed()).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    a.commit(commit(record("due-soon", Some(5)))).await.unwrap();
    let announced = woken
        .await
        .unwrap()
        .expect("host b is woken by host a's commit of due work");
    // With the due time, so a scheduler asleep until sooner stays asleep.
    assert_eq!(announced, 5);
    // What came while nobody asked is kept, and the earliest of it is given:
    // in one group or two, the sooner of the two commits.
    let (later, sooner) = tokio::join!(
        a.commit(commit(record("due-later", Some(900)))),
        a.commit(commit(record("due-sooner", Some(700)))),
    );
    later.unwrap();
    sooner.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let announced = tokio::time::timeout(Duration::from_secs(5), b.due_changed())
        .await
        .unwrap();
    assert_eq!(announced, 700);
}

#[tokio::test]
async fn tampering_in_the_database_is_detected() {
    require!(Postgres);
    let pg = Postgres::start().unwrap();
    let store = open(&pg, "a", KEY).await.unwrap();
    for i in 0..5 {
        store
            .commit(commit(record(&format!("g{i}"), None)))
            .await
            .unwrap();
    }
    assert!(store.verify_audit().await.unwrap().is_intact());
    // A record edited in place fails its tag.
    edit(
        &pg,
        "ebb_grants",
        "record",
        "id = 'g2'",
        ("alice", "mallory"),
    );
    let report = store.verify_audit().await.unwrap();
    assert!(
        report.problem.as_deref().is_some_and(|p| p.contains("g2")),
        "{report:?}"
    );
    edit(
        &pg,
        "ebb_grants",
        "record",
        "id = 'g2'",
        ("mallory", "alice"),
    );
    assert!(store.verify_audit().await.unwrap().is_intact());
    // A deleted event breaks the chain.
    pg.psql_in("ebbstore", "delete from ebb_audit where seq = 3")
        .unwrap();
    let report = store.verify_audit().await.unwrap();
    assert!(!report.is_intact(), "{report:?}");
    // A deleted grant is missed by the keyed count.
    let pg2 = Postgres::start().unwrap();
    let store = open(&pg2, "a", KEY).await.unwrap();
    for i in 0..3 {
        store
            .commit(commit(record(&format!("g{i}"), None)))
            .await
            .unwrap();
    }
    pg2.psql_in("ebbstore", "delete from ebb_grants where id = 'g1'")
        .unwrap();
    let report = store.verify_audit().await.unwrap();
    assert!(
        report
            .problem
            .as_deref()
            .is_some_and(|p| p.contains("removed")),
        "{report:?}"
    );
}

/// The checks read the chain and the records a page (10,000) at a time: across
/// page boundaries a store verifies, and tampering past the first page is seen.
#[tokio::test]
async fn the_checks_page_through_a_large_store() {
    require!(Postgres);
    let pg = Postgres::start().unwrap();
    let store = open(&pg, "a", KEY).await.unwrap();
    let mut tasks = Vec::new();
    for w in 0..32 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in (w..10_050).step_by(32) {
                store
                    .commit(commit(record(&format!("g{i:05}"), None)))
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let report = store.verify_audit().await.unwrap();
    assert!(report.is_intact(), "{report:?}");
    assert_eq!((report.events, report.records), (10_050, 10_050));
    let report = store.verify_at_start().await.unwrap();
    assert!(report.is_intact(), "{report:?}");
    // An event on the second page altered, then a record there.
    edit(
        &pg,
        "ebb_audit",
        "event",
        "seq = 10040",
        ("alice", "mallory"),
    );
    let report = store.verify_audit().await.unwrap();
    assert!(
        report
            .problem
            .as_deref()
            .is_some_and(|p| p.contains("10040")),
        "{report:?}"
    );
    edit(
        &pg,
        "ebb_audit",
        "event",
        "seq = 10040",
        ("mallory", "alice"),
    );
    edit(
        &pg,
        "ebb_grants",
        "record",
        "id = 'g10049'",
        ("alice", "mallory"),
    );
    let report = store.verify_audit().await.unwrap();
    assert!(
        report
            .problem
            .as_deref()
            .is_some_and(|p| p.contains("g10049")),
        "{report:?}"
    );
}

#[tokio::test]
async fn a_host_with_another_key_or_an_older_schema_is_refused() {
    require!(Postgres);
    let pg = Postgres::start().unwrap();
    let store = open(&pg, "a", KEY).await.unwrap();
    store.commit(commit(record("g1", None))).await.unwrap();
    let other = open(&pg, "b", [8; 32]).await.unwrap_err();
    assert!(format!("{other:#}").contains("same host key"), "{other:#}");
    // A schema newer than this host knows.
    pg.psql_in(
        "ebbstore",
        "insert into refinery_schema_history (version, name, applied_on, checksum) values (999, 'future', 'now', '0')",
    )
    .unwrap();
    let newer = open(&pg, "c", KEY).await.unwrap_err();
    assert!(
        format!("{newer:#}").contains("newer than this host knows"),
        "{newer:#}"
    );
}

#[tokio::test]
async fn tls_verify_full_against_the_ca_file_and_nothing_less() {
    require!(Postgres);
    let pg = Postgres::start().unwrap();
    let dsn = pg.store_dsn().unwrap();
    let ca = pg.require_tls().unwrap();
    let options = |dsn: String, ca_file: Option<std::path::PathBuf>| PgOptions {
        dsn,
        ca_file,
        host_id: "tls".into(),
        pool_size: 2,
        lease_ms: 4_000,
    };
    // verify-full with the CA that signed the server's certificate: served.
    let store = PgStore::open(
        options(format!("{dsn} sslmode=verify-full"), Some(ca.clone())),
        KEY,
    )
    .await
    .unwrap();
    store.commit(commit(record("g1", None))).await.unwrap();
    assert!(store.health().await.is_ok());
    // Without the CA the certificate does not verify (the web PKI does not know
    // it): refused, not connected unverified.
    let err = PgStore::open(options(format!("{dsn} sslmode=verify-full"), None), KEY)
        .await
        .unwrap_err();
    assert!(
        format!("{err:#}").to_lowercase().contains("certificate"),
        "{err:#}"
    );
    // Plain TCP is refused by a server that takes TLS only.
    let err = PgStore::open(options(dsn, None), KEY).await.unwrap_err();
    assert!(!format!("{err:#}").is_empty());
}

#[tokio::test]
async fn the_dsn_never_shows_in_debug_output() {
    let options = PgOptions {
        dsn: "host=db user=ebb password=hunter2".into(),
        ca_file: None,
        host_id: "a".into(),
        pool_size: 2,
        lease_ms: 5_000,
    };
    let shown = format!("{options:?}");
    assert!(!shown.contains("hunter2"), "{shown}");
}
