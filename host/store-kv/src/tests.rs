use crate::kv::Bytes;
use crate::*;
use ebb_core::contract::{Grant, Subject, SubjectKind};

fn record(id: &str, state: GrantState, due: Option<Timestamp>) -> GrantRecord {
    let grant = Grant {
        id: id.into(),
        subject: Subject {
            id: "s".into(),
            kind: SubjectKind::Workload,
            claims: vec![],
        },
        permissions: vec![],
        not_after: due.unwrap_or(0),
        task: "t".into(),
    };
    let mut r = GrantRecord::requested(grant, "noop".into(), 1000, 1, "s".into(), None);
    r.state = state;
    r.due_at = due;
    r
}

/// Opens the store in `dir` on the engine these tests run on.
fn open(dir: &std::path::Path, chain_key: [u8; 32]) -> Result<Arc<KvStore>> {
    KvStore::open_with(ENGINE, dir, chain_key)
}

fn temp_store() -> (Arc<KvStore>, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!(
        "ebb-store-{}-{}",
        std::process::id(),
        rand::random::<u64>()
    ));
    (open(&dir, [1; 32]).unwrap(), dir)
}

/// Makes everything durable, closes the store and opens it again (a restart).
async fn reopen(store: Arc<KvStore>, dir: &std::path::Path) -> Arc<KvStore> {
    store.sync().await.unwrap();
    drop(store);
    open_again(dir).await
}

/// Opens the store in `dir` that was just dropped. A flush round that started
/// before the drop (a kick left over, or a flush that was failing) may still hold
/// the engine, and sled's file lock, for a moment on the blocking pool: wait for
/// it, 5 s at most.
async fn open_again(dir: &std::path::Path) -> Arc<KvStore> {
    let by = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match open(dir, [1; 32]) {
            Ok(store) => return store,
            Err(e) if std::time::Instant::now() < by => {
                eprintln!("reopening: {e}; trying again");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(e) => panic!("the store does not reopen: {e:?}"),
        }
    }
}

fn event(id: &str) -> NewEvent {
    NewEvent::new("grant.transition", "test").grant(id)
}

/// Commits every `(n, record)` at once through the `Store` trait (so they are
/// applied in groups); returns how many landed for each `n`. Every refusal must
/// be one `refused` accepts.
async fn commit_all(
    store: &Arc<KvStore>,
    commits: Vec<(u64, GrantRecord)>,
    refused: fn(&Error) -> bool,
) -> BTreeMap<u64, usize> {
    let mut tasks = tokio::task::JoinSet::new();
    for (n, record) in commits {
        let store: Arc<dyn Store> = store.clone();
        tasks.spawn(async move {
            let id = record.grant.id.clone();
            let committed = store
                .commit(Commit {
                    record,
                    sealed: Sealed::Keep,
                    event: event(&id),
                    lease_until: None,
                    earlier: Vec::new(),
                })
                .await;
            (n, committed)
        });
    }
    let mut landed = BTreeMap::new();
    while let Some(done) = tasks.join_next().await {
        match done.unwrap() {
            (n, Ok(_)) => *landed.entry(n).or_insert(0) += 1,
            (_, Err(e)) => assert!(refused(&e), "{e:?}"),
        }
    }
    landed
}

/// Commits through the `Store` trait are applied in groups (one engine batch for
/// all the commits queued while the previous group was applied). Racing commits
/// from one version inside a group behave as when applied alone: exactly one
/// lands. Many grants committed at once all land, each once, with their due
/// entries, counts and one chained event each — also after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grouped_commits_land_once_each_and_survive_a_restart() {
    let (store, dir) = temp_store();
    let grants = 64u64;
    // Every grant created at once, most of them twice: one of each pair lands.
    let created = (0..grants)
        .flat_map(|n| {
            let r = record(&format!("g{n}"), GrantState::Requested, Some(10_000 + n));
            vec![(n, r); 1 + (n % 2) as usize]
        })
        .collect();
    let landed = commit_all(&store, created, |e| matches!(e, Error::Exists(_))).await;
    assert_eq!(landed.len() as u64, grants);
    assert!(landed.values().all(|n| *n == 1), "each grant created once");
    // Then rounds of four racing updates per grant, every grant at once.
    for round in 0..5u64 {
        let mut updates = Vec::new();
        for n in 0..grants {
            let mut next = store.get(&format!("g{n}")).unwrap().unwrap();
            next.state = GrantState::Approved;
            next.due_at = Some(20_000 + round * 1_000 + n);
            updates.extend(std::iter::repeat_n((n, next), 4));
        }
        let landed = commit_all(&store, updates, |e| matches!(e, Error::Conflict(_))).await;
        assert_eq!(landed.len() as u64, grants, "round {round}");
        assert!(landed.values().all(|n| *n == 1), "round {round}: one update each");
    }
    let check = |store: &KvStore| {
        for n in 0..grants {
            let r = store.get(&format!("g{n}")).unwrap().unwrap();
            assert_eq!(r.version, 6);
            assert_eq!(r.due_at, Some(24_000 + n));
        }
        let counts = store.counts().unwrap();
        assert_eq!(counts[&GrantState::Approved], grants);
        assert_eq!(counts[&GrantState::Requested], 0);
        // Only the latest due entry of each grant is left.
        assert_eq!(store.next_due().unwrap(), Some(24_000));
        let claimed = store.claim_due(30_000, 40_000, 1_000).unwrap();
        assert_eq!(claimed.len() as u64, grants);
        let report = store.verify_audit().unwrap();
        assert!(report.is_intact(), "{report:?}");
        assert_eq!(report.events, grants * 6);
    };
    check(&store);
    let store = reopen(store, &dir).await;
    assert!(store.verify_at_start().unwrap().is_intact());
    // The claims above were made before the restart; release them to check again.
    store.release_leases().unwrap();
    check(&store);
    let _ = std::fs::remove_dir_all(dir);
}

/// Commits are prepared outside the commit lock and checked again under it:
/// of many racing commits made from the same version of a record, exactly one
/// lands, the others are conflicts, and the chain holds one event per landed
/// commit. A new grant raced the same way exists once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_commits_from_one_version_land_once() {
    let (store, dir) = temp_store();
    let first = |n: usize| {
        std::thread::scope(|scope| {
            let tries: Vec<_> = (0..n)
                .map(|_| {
                    scope.spawn(|| {
                        store.commit(Commit {
                            record: record("race", GrantState::Requested, Some(500)),
                            sealed: Sealed::Set(b"secret".to_vec()),
                            event: event("race"),
                            lease_until: None,
                            earlier: Vec::new(),
                        })
                    })
                })
                .collect();
            tries
                .into_iter()
                .map(|t| t.join().unwrap())
                .collect::<Vec<_>>()
        })
    };
    let created = first(8);
    assert_eq!(created.iter().filter(|r| r.is_ok()).count(), 1);
    assert!(
        created
            .iter()
            .filter_map(|r| r.as_ref().err())
            .all(|e| matches!(e, Error::Exists(_)))
    );
    for round in 0..20 {
        let current = store.get("race").unwrap().unwrap();
        let results: Vec<_> = std::thread::scope(|scope| {
            let tries: Vec<_> = (0..4)
                .map(|_| {
                    let mut next = current.clone();
                    next.due_at = Some(1_000 + round);
                    scope.spawn(|| {
                        store.commit(Commit {
                            record: next,
                            sealed: Sealed::Keep,
                            event: event("race"),
                            lease_until: None,
                            earlier: Vec::new(),
                        })
                    })
                })
                .collect();
            tries.into_iter().map(|t| t.join().unwrap()).collect()
        });
        assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1, "round {round}");
        assert!(
            results
                .iter()
                .filter_map(|r| r.as_ref().err())
                .all(|e| matches!(e, Error::Conflict(_)))
        );
        assert_eq!(store.get("race").unwrap().unwrap().version, current.version + 1);
    }
    let events = store
        .audit(&AuditQuery {
            grant_id: Some("race".into()),
            after_seq: 0,
            limit: 1_000,
        })
        .unwrap();
    assert_eq!(events.len(), 21);
    assert!(store.verify_audit().unwrap().is_intact());
    assert_eq!(store.sealed_credential("race").unwrap().unwrap(), b"secret");
    assert_eq!(store.next_due().unwrap(), Some(1_019));
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn commits_are_versioned_and_indexed() {
    let (store, dir) = temp_store();
    let (r, e) = store
        .commit(Commit {
            record: record("g1", GrantState::Active, Some(500)),
            sealed: Sealed::Set(b"secret".to_vec()),
            event: event("g1"),
            lease_until: None,
            earlier: Vec::new(),
        })
        .unwrap();
    assert_eq!((r.version, e.seq), (1, 1));
    assert_eq!(store.sealed_credential("g1").unwrap().unwrap(), b"secret");
    assert_eq!(store.next_due().unwrap(), Some(500));
    // A stale version is refused; a new grant with a taken id too.
    let mut stale = r.clone();
    stale.version = 0;
    assert!(matches!(
        store.commit(Commit {
            record: stale,
            sealed: Sealed::Keep,
            event: event("g1"),
            lease_until: None,
            earlier: Vec::new(),
        }),
        Err(Error::Exists(_))
    ));
    let mut next = r.clone();
    next.state = GrantState::Verified;
    next.due_at = None;
    let (r2, _) = store
        .commit(Commit {
            record: next,
            sealed: Sealed::Shred,
            event: event("g1"),
            lease_until: None,
            earlier: Vec::new(),
        })
        .unwrap();
    assert_eq!(r2.version, 2);
    assert!(matches!(
        store.commit(Commit {
            record: r.clone(),
            sealed: Sealed::Keep,
            event: event("g1"),
            lease_until: None,
            earlier: Vec::new(),
        }),
        Err(Error::Conflict(_))
    ));
    // An intent's lease is voided by a restart: due at once.
    let mut leased = store.get("g1").unwrap().unwrap();
    leased.due_at = Some(700);
    store
        .commit(Commit {
            record: leased,
            sealed: Sealed::Keep,
            event: event("g1"),
            lease_until: Some(90_000),
            earlier: Vec::new(),
        })
        .unwrap();
    assert_eq!(store.next_due().unwrap(), Some(90_000));
    assert_eq!(store.release_leases().unwrap(), 1);
    assert_eq!(store.next_due().unwrap(), Some(700));
    let mut done = store.get("g1").unwrap().unwrap();
    done.due_at = None;
    store
        .commit(Commit {
            record: done,
            sealed: Sealed::Keep,
            event: event("g1"),
            lease_until: None,
            earlier: Vec::new(),
        })
        .unwrap();
    assert_eq!(store.sealed_credential("g1").unwrap(), None);
    assert_eq!(store.next_due().unwrap(), None);
    let counts = store.counts().unwrap();
    assert_eq!(
        (counts[&GrantState::Active], counts[&GrantState::Verified]),
        (0, 1)
    );
    assert_eq!(
        store
            .audit(&AuditQuery {
                grant_id: Some("g1".into()),
                limit: 10,
                ..Default::default()
            })
            .unwrap()
            .len(),
        4
    );
    assert!(store.verify_audit().unwrap().is_intact());
    store.sync().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn due_index_orders_by_time_then_id_and_leases_come_back() {
    let (store, dir) = temp_store();
    for (id, due) in [("b", 300), ("a", 300), ("c", 100), ("d", 900)] {
        store
            .commit(Commit {
                record: record(id, GrantState::Active, Some(due)),
                sealed: Sealed::Keep,
                event: event(id),
                lease_until: None,
                earlier: Vec::new(),
            })
            .unwrap();
    }
    assert_eq!(store.claim_due(300, 5000, 10).unwrap(), vec!["c", "a", "b"]);
    // Claimed entries are not handed out again...
    assert!(store.claim_due(300, 5000, 10).unwrap().is_empty());
    assert_eq!(store.next_due().unwrap(), Some(900));
    // ...unless the lease runs out, or a restart voids it.
    assert_eq!(store.release_leases().unwrap(), 3);
    assert_eq!(store.next_due().unwrap(), Some(100));
    assert_eq!(store.claim_due(100, 5000, 10).unwrap(), vec!["c"]);
    // Committing the work moves the entry to the record's new due.
    let mut c = store.get("c").unwrap().unwrap();
    c.due_at = Some(2000);
    store
        .commit(Commit {
            record: c,
            sealed: Sealed::Keep,
            event: event("c"),
            lease_until: None,
            earlier: Vec::new(),
        })
        .unwrap();
    assert_eq!(store.release_leases().unwrap(), 0);
    assert_eq!(
        store.claim_due(2000, 9000, 10).unwrap(),
        vec!["a", "b", "d", "c"]
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn survives_reopen_with_chain_and_counts() {
    let (store, dir) = temp_store();
    for id in ["x", "y"] {
        store
            .commit(Commit {
                record: record(id, GrantState::Active, Some(10)),
                sealed: Sealed::Keep,
                event: event(id),
                lease_until: None,
                earlier: Vec::new(),
            })
            .unwrap();
    }
    store
        .append_audit(NewEvent::new("auth.denied", "anonymous"))
        .unwrap();
    let store = reopen(store, &dir).await;
    assert_eq!(store.counts().unwrap()[&GrantState::Active], 2);
    let (_, e) = store
        .commit(Commit {
            record: record("z", GrantState::Active, None),
            sealed: Sealed::Keep,
            event: event("z"),
            lease_until: None,
            earlier: Vec::new(),
        })
        .unwrap();
    assert_eq!(e.seq, 4);
    assert!(store.verify_audit().unwrap().is_intact());
    // A different chain key does not verify: the chain is keyed.
    drop(store);
    let wrong = open(&dir, [2; 32]).unwrap();
    assert!(!wrong.verify_audit().unwrap().is_intact());
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_commit_links_the_steps_it_passed_through_before_its_event() {
    let (store, dir) = temp_store();
    let mut requested = NewEvent::new("grant.requested", "agent");
    requested.to = Some(GrantState::Requested);
    let (r, approved) = store
        .commit(Commit {
            record: record("g", GrantState::Approved, Some(10)),
            sealed: Sealed::Keep,
            event: event("g"),
            lease_until: None,
            earlier: vec![requested],
        })
        .unwrap();
    assert_eq!((r.version, approved.seq), (1, 2));
    let events = store
        .audit(&AuditQuery {
            grant_id: Some("g".into()),
            limit: 10,
            ..Default::default()
        })
        .unwrap();
    let kinds: Vec<_> = events.iter().map(|e| (e.seq, e.kind.as_str())).collect();
    assert_eq!(kinds, [(1, "grant.requested"), (2, "grant.transition")]);
    // The step names its grant and links to the event before it; only the last
    // event is bound to the record the commit stored.
    assert_eq!(events[0].grant_id.as_deref(), Some("g"));
    assert_eq!(events[0].record, None);
    assert_eq!(events[1].prev, events[0].hash);
    assert!(events[1].record.is_some());
    assert_eq!(store.counts().unwrap()[&GrantState::Approved], 1);
    // The chain and every record (against its grant's latest event) check out,
    // now and after a restart.
    assert!(store.verify_audit().unwrap().is_intact());
    let store = reopen(store, &dir).await;
    assert!(store.verify_at_start().unwrap().is_intact());
    assert!(store.verify_records().unwrap().is_intact());
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn tampering_with_any_stored_audit_record_is_detected() {
    let (store, dir) = temp_store();
    for id in ["a", "b", "c", "d"] {
        store
            .commit(Commit {
                record: record(id, GrantState::Active, None),
                sealed: Sealed::Keep,
                event: event(id),
                lease_until: None,
                earlier: Vec::new(),
            })
            .unwrap();
    }
    assert!(store.verify_audit().unwrap().is_intact());
    let original: Vec<(Bytes, Bytes)> =
        store.db.prefix(b"a/").map(|e| e.unwrap()).collect();
    let restore = |store: &KvStore| {
        for (k, v) in &original {
            store.db.insert(k, v.clone()).unwrap();
        }
    };
    // Edit each record in turn.
    for (k, v) in &original {
        let mut e: AuditEvent = serde_json::from_slice(v).unwrap();
        e.actor = "mallory".into();
        store.db.insert(k, serde_json::to_vec(&e).unwrap()).unwrap();
        let report = store.verify_audit().unwrap();
        assert!(
            report.problem.as_deref().unwrap().contains("altered"),
            "{report:?}"
        );
        restore(&store);
    }
    // Delete each record in turn.
    for (k, _) in &original {
        store.db.remove(k).unwrap();
        assert!(!store.verify_audit().unwrap().is_intact());
        restore(&store);
    }
    // Swap two records' positions.
    store
        .db
        .insert(&original[1].0, original[2].1.clone())
        .unwrap();
    store
        .db
        .insert(&original[2].0, original[1].1.clone())
        .unwrap();
    assert!(!store.verify_audit().unwrap().is_intact());
    restore(&store);
    assert!(store.verify_audit().unwrap().is_intact());
    // Issue 13: delete the newest events and move the head back to what is left —
    // unkeyed, or keyed by someone else — and verification says so.
    let last: AuditEvent = serde_json::from_slice(&original[2].1).unwrap();
    store.db.remove(&original[3].0).unwrap();
    for head in [
        ebb_core::audit::Head {
            seq: last.seq,
            hash: last.hash.clone(),
            records: Some(4),
            mac: None,
        },
        Chain::new([2; 32]).head(last.seq, &last.hash, 4),
    ] {
        store.db.insert(b"m/head", encode(&head).unwrap()).unwrap();
        let report = store.verify_audit().unwrap();
        assert!(
            report
                .problem
                .as_deref()
                .unwrap()
                .contains("not keyed by this host"),
            "{report:?}"
        );
    }
    // Removing the head altogether does not hide the events either.
    store.db.remove(b"m/head").unwrap();
    let report = store.verify_audit().unwrap();
    assert!(
        report.problem.as_deref().unwrap().contains("no head"),
        "{report:?}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// Issue 13: verification reads a consistent chain while events are being written
/// (it never reports an untouched log as tampered under load).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verification_is_consistent_while_events_are_written() {
    let (store, dir) = temp_store();
    let writer = {
        let store = store.clone();
        std::thread::spawn(move || {
            for n in 0..3_000 {
                store
                    .append_audit(
                        NewEvent::new("test.load", "writer").detail(serde_json::json!({ "n": n })),
                    )
                    .unwrap();
            }
        })
    };
    // And grant records being created and changed while they are checked.
    let committer = {
        let store = store.clone();
        std::thread::spawn(move || {
            for n in 0..1_000 {
                let id = format!("load{}", n % 50);
                let mut r = store
                    .get(&id)
                    .unwrap()
                    .unwrap_or_else(|| record(&id, GrantState::Active, None));
                r.attempts = n;
                store
                    .commit(Commit {
                        record: r,
                        sealed: Sealed::Keep,
                        event: event(&id),
                        lease_until: None,
                        earlier: Vec::new(),
                    })
                    .unwrap();
            }
        })
    };
    let mut checks = 0;
    while !writer.is_finished() || !committer.is_finished() {
        let report = store.verify_audit().unwrap();
        assert!(report.is_intact(), "under load: {report:?}");
        checks += 1;
    }
    writer.join().unwrap();
    committer.join().unwrap();
    let report = store.verify_audit().unwrap();
    assert!(report.is_intact(), "{report:?}");
    assert_eq!(report.records, 50);
    assert!(checks > 0);
    drop(store);
    let _ = std::fs::remove_dir_all(dir);
}

/// Issue 13: a requester's listing reads its own grants through the `r/` index, and
/// a store written before the index existed gets it at open.
#[tokio::test]
async fn requester_listings_use_an_index_built_for_old_stores_too() {
    let (store, dir) = temp_store();
    for (n, who) in ["a", "b", "a", "c", "a"].iter().enumerate() {
        let mut r = record(&format!("g{n}"), GrantState::Requested, None);
        r.requested_by = (*who).to_owned();
        store
            .commit(Commit {
                record: r,
                sealed: Sealed::Keep,
                event: event(&format!("g{n}")),
                lease_until: None,
                earlier: Vec::new(),
            })
            .unwrap();
    }
    let list = |store: &KvStore, after: Option<&str>| {
        let page = store
            .list(&ListFilter {
                requested_by: Some("a".into()),
                after: after.map(str::to_owned),
                limit: 2,
                ..ListFilter::default()
            })
            .unwrap();
        let ids: Vec<String> = page.grants.iter().map(|r| r.grant.id.clone()).collect();
        (ids, page.next)
    };
    assert_eq!(
        list(&store, None),
        (vec!["g0".into(), "g2".into()], Some("g2".into()))
    );
    assert_eq!(list(&store, Some("g2")), (vec!["g4".into()], None));
    // Only the index is read: an index entry without its record is skipped, and a
    // record without an index entry is not found (so nothing scans `g/`).
    store.db.remove(requester_key("a", "g4")).unwrap();
    assert_eq!(list(&store, Some("g2")), (vec![], None));
    // A store from before the index: no `r/` keys, no marker.
    let old: Vec<_> = store.db.prefix(b"r/").map(|e| e.unwrap().0).collect();
    for k in old {
        store.db.remove(k).unwrap();
    }
    store.db.remove(b"m/index/requester").unwrap();
    store.db.flush().unwrap();
    drop(store);
    let store = open_again(&dir).await;
    assert_eq!(
        list(&store, None),
        (vec!["g0".into(), "g2".into()], Some("g2".into()))
    );
    assert_eq!(list(&store, Some("g2")), (vec!["g4".into()], None));
    drop(store);
    let _ = std::fs::remove_dir_all(dir);
}

/// Listing by state reads the `x/` index (the console's queue and live grants on
/// a store of mostly closed grants), follows transitions, and is built for stores
/// written before it existed.
#[tokio::test]
async fn state_listings_use_an_index_that_follows_transitions() {
    let (store, dir) = temp_store();
    let states = [
        GrantState::Verified,
        GrantState::Requested,
        GrantState::Verified,
        GrantState::Active,
        GrantState::Requested,
        GrantState::Requested,
    ];
    for (n, state) in states.iter().enumerate() {
        commit_state(&store, record(&format!("g{n}"), *state, None));
    }
    let list = |store: &KvStore, state: GrantState, after: Option<&str>| {
        let page = store
            .list(&ListFilter {
                state: Some(state),
                after: after.map(str::to_owned),
                limit: 2,
                ..ListFilter::default()
            })
            .unwrap();
        let ids: Vec<String> = page.grants.iter().map(|r| r.grant.id.clone()).collect();
        (ids, page.next)
    };
    assert_eq!(
        list(&store, GrantState::Requested, None),
        (vec!["g1".into(), "g4".into()], Some("g4".into()))
    );
    assert_eq!(
        list(&store, GrantState::Requested, Some("g4")),
        (vec!["g5".into()], None)
    );
    // A transition moves the entry.
    let mut g4 = store.get("g4").unwrap().unwrap();
    g4.state = GrantState::Approved;
    commit_state(&store, g4);
    assert_eq!(
        list(&store, GrantState::Requested, None),
        (vec!["g1".into(), "g5".into()], None)
    );
    assert_eq!(
        list(&store, GrantState::Approved, None),
        (vec!["g4".into()], None)
    );
    // Only the index is read: a record without its entry is not found.
    store
        .db
        .remove(by_state_key(GrantState::Requested, "g5"))
        .unwrap();
    assert_eq!(
        list(&store, GrantState::Requested, None),
        (vec!["g1".into()], None)
    );
    // A store from before the index: no `x/` keys, no marker.
    let old: Vec<_> = store.db.prefix(b"x/").map(|e| e.unwrap().0).collect();
    for k in old {
        store.db.remove(k).unwrap();
    }
    store.db.remove(b"m/index/state").unwrap();
    store.db.flush().unwrap();
    drop(store);
    let store = open_again(&dir).await;
    assert_eq!(
        list(&store, GrantState::Requested, None),
        (vec!["g1".into(), "g5".into()], None)
    );
    assert_eq!(
        list(&store, GrantState::Verified, None),
        (vec!["g0".into(), "g2".into()], None)
    );
    drop(store);
    let _ = std::fs::remove_dir_all(dir);
}

/// `with_work` reads the due index: grants with a due entry, leased or not, and
/// nothing else (the same answer as the trait's default, which reads every grant).
#[tokio::test]
async fn grants_with_work_come_from_the_due_index() {
    let (store, dir) = temp_store();
    commit_state(&store, record("a", GrantState::Active, Some(50)));
    commit_state(&store, record("b", GrantState::Verified, None));
    commit_state(&store, record("c", GrantState::Verified, Some(90)));
    commit_state(&store, record("d", GrantState::Requested, Some(10)));
    assert_eq!(store.claim_due(60, 1_000, 10).unwrap(), ["d", "a"]);
    assert_eq!(store.with_work().unwrap(), ["a", "c", "d"]);
    let mut c = store.get("c").unwrap().unwrap();
    c.due_at = None;
    commit_state(&store, c);
    assert_eq!(store.with_work().unwrap(), ["a", "d"]);
    drop(store);
    let _ = std::fs::remove_dir_all(dir);
}

/// Issue 12: on a full disk the store says so: `sync` fails within a bounded time
/// with the disk's own error kind (not a hang), and `health` reports it; what was
/// durable before is intact when the store is opened again. Needs a small tmpfs, so root; skipped (with a line
/// saying so) elsewhere, never under `EBB_REQUIRE_ALL=1`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_an_error_within_a_bounded_time_not_a_hang() {
    use std::io::Write as _;
    let mount = std::env::temp_dir().join(format!("ebb-full-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&mount).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=16m", "tmpfs"])
        .arg(&mount)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        let why = "a tmpfs mount (needs root)";
        assert!(
            std::env::var("EBB_REQUIRE_ALL").as_deref() != Ok("1"),
            "needs {why}, and EBB_REQUIRE_ALL=1 forbids skipping it"
        );
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED a_full_disk_is_an_error_within_a_bounded_time_not_a_hang: needs {why}"
        );
        return;
    }
    let unmount = |dir: &std::path::Path| {
        let _ = std::process::Command::new("umount").arg(dir).status();
        let _ = std::fs::remove_dir_all(dir);
    };
    let store = open(&mount.join("store"), [1; 32]).unwrap();
    store
        .commit(Commit {
            record: record("before", GrantState::Active, Some(10)),
            sealed: Sealed::Keep,
            event: event("before"),
            lease_until: None,
            earlier: Vec::new(),
        })
        .unwrap();
    store.sync().await.unwrap();
    store.health().unwrap();
    // Fill the rest of the disk.
    let filler = mount.join("filler");
    {
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 64 * 1024];
        while f.write_all(&block).is_ok() {}
        let _ = f.sync_all();
    }
    // Commits keep landing in memory; making them durable must fail, and say why,
    // within a bounded time.
    let started = std::time::Instant::now();
    let mut failure = None;
    for n in 0..200 {
        let mut r = record(&format!("full{n}"), GrantState::Active, Some(10));
        r.reason = Some("x".repeat(16 * 1024));
        let committed = store.commit(Commit {
            record: r,
            sealed: Sealed::Keep,
            event: event(&format!("full{n}")),
            lease_until: None,
            earlier: Vec::new(),
        });
        let outcome = match committed {
            Ok(_) => store.sync().await,
            Err(e) => Err(e),
        };
        if let Err(e) = outcome {
            failure = Some(e);
            break;
        }
    }
    let waited = started.elapsed();
    let failure = failure.expect("a full disk never failed a sync");
    assert!(
        failure.io_kind().is_some(),
        "the disk's error is kept: {failure:?}"
    );
    assert!(
        waited < std::time::Duration::from_secs(20),
        "took {waited:?}"
    );
    assert!(
        store.health().is_err(),
        "a store that cannot flush is not healthy"
    );
    // Commits through the trait, applied in groups: each either lands or fails
    // with the disk's error kind (every commit of a group the engine refused gets
    // it, not only the first), and none is acknowledged as durable.
    let mut burst = tokio::task::JoinSet::new();
    for n in 0..32 {
        let store: Arc<dyn Store> = store.clone();
        burst.spawn(async move {
            let id = format!("burst{n}");
            let mut r = record(&id, GrantState::Active, Some(10));
            r.reason = Some("x".repeat(16 * 1024));
            match store
                .commit(Commit {
                    record: r,
                    sealed: Sealed::Keep,
                    event: event(&id),
                    lease_until: None,
                    earlier: Vec::new(),
                })
                .await
            {
                Ok(_) => store.sync().await,
                Err(e) => Err(e),
            }
        });
    }
    while let Some(done) = burst.join_next().await {
        let e = done.unwrap().expect_err("made durable on a full disk");
        assert!(e.io_kind().is_some(), "the disk's error is kept: {e:?}");
    }
    // sled keeps a flush error until the store is opened again (the host's
    // /readyz stays 503 until an operator frees space and restarts it). Nothing
    // acknowledged before the disk filled is lost: reopened with space, it is there.
    drop(store);
    std::fs::remove_file(&filler).unwrap();
    let store = open_again(&mount.join("store")).await;
    assert!(store.get("before").unwrap().is_some());
    assert!(store.verify_audit().unwrap().is_intact());
    store.health().unwrap();
    drop(store);
    unmount(&mount);
}

/// Issue 12: `ebb_escalations_total` is stored state: a grant counts once, when a
/// commit first sets its `escalated_at`, and the count survives a restart — also
/// for a store written before the count existed.
#[tokio::test]
async fn escalation_counts_survive_reopen() {
    let (store, dir) = temp_store();
    let (mut r, _) = store
        .commit(Commit {
            record: record("e1", GrantState::Revoking, Some(10)),
            sealed: Sealed::Keep,
            event: event("e1"),
            lease_until: None,
            earlier: Vec::new(),
        })
        .unwrap();
    assert!(store.escalations().unwrap().is_empty());
    for _ in 0..2 {
        // Escalated, then retried while escalated: one escalation.
        r.escalated_at.get_or_insert(20);
        (r, _) = store
            .commit(Commit {
                record: r,
                sealed: Sealed::Keep,
                event: event("e1"),
                lease_until: None,
                earlier: Vec::new(),
            })
            .unwrap();
    }
    assert_eq!(store.escalations().unwrap()["noop"], 1);
    let store = reopen(store, &dir).await;
    assert_eq!(store.escalations().unwrap()["noop"], 1);

    // A store from before the count: the count is rebuilt from the records, once.
    store.db.remove(escalated_key("noop")).unwrap();
    store.db.remove(b"m/index/escalated").unwrap();
    let store = reopen(store, &dir).await;
    assert_eq!(store.escalations().unwrap()["noop"], 1);
    drop(store);
    let _ = std::fs::remove_dir_all(dir);
}

fn commit_state(store: &KvStore, r: GrantRecord) -> GrantRecord {
    let id = r.grant.id.clone();
    store
        .commit(Commit {
            record: r,
            sealed: Sealed::Keep,
            event: event(&id),
            lease_until: None,
            earlier: Vec::new(),
        })
        .unwrap()
        .0
}

/// Both the check at start and the full check report a problem containing `needle`.
fn both_checks_report(store: &KvStore, needle: &str) {
    for report in [
        store.verify_at_start().unwrap(),
        store.verify_audit().unwrap(),
    ] {
        assert!(
            report
                .problem
                .as_deref()
                .is_some_and(|p| p.contains(needle)),
            "{report:?}"
        );
    }
}

/// Issue 13: grant records are bound to the chain. Edited while the host is
/// stopped (`active` → `verified`, which would end its revocation), removed, or
/// replaced by an older copy of themselves, the store's checks say so; an untouched
/// store passes them, and the check at start reads only the events since the last
/// one.
#[tokio::test]
async fn grant_records_edited_outside_the_host_are_detected() {
    let (store, dir) = temp_store();
    for id in ["r1", "r2", "r3"] {
        commit_state(&store, record(id, GrantState::Active, Some(10)));
    }
    let first = store.verify_at_start().unwrap();
    assert!(first.is_intact(), "{first:?}");
    assert_eq!((first.events, first.records), (3, 3));
    // The next check at start reads only what was appended since.
    store
        .append_audit(NewEvent::new("test.note", "test"))
        .unwrap();
    let again = store.verify_at_start().unwrap();
    assert!(again.is_intact(), "{again:?}");
    assert_eq!((again.events, again.records), (1, 3));

    let older = store.db.get(b"g/r2").unwrap().unwrap();
    let older_tag = store.db.get(b"b/r2").unwrap().unwrap();
    let mut r2 = store.get("r2").unwrap().unwrap();
    r2.state = GrantState::Revoking;
    commit_state(&store, r2);
    store.sync().await.unwrap();

    // 1. Edited: active → verified.
    let original = store.db.get(b"g/r1").unwrap().unwrap();
    let mut edited = ebb_core::encoding::decode_record(&original).unwrap();
    edited.state = GrantState::Verified;
    edited.due_at = None;
    store
        .db
        .insert(b"g/r1", ebb_core::encoding::encode_record(&edited).unwrap())
        .unwrap();
    both_checks_report(&store, "grant record r1 was altered");
    store.db.insert(b"g/r1", original.clone()).unwrap();
    assert!(store.verify_at_start().unwrap().is_intact());

    // 2. Removed, tag and all.
    let tag = store.db.get(b"b/r3").unwrap().unwrap();
    let r3 = store.db.remove(b"g/r3").unwrap().unwrap();
    store.db.remove(b"b/r3").unwrap();
    both_checks_report(&store, "records were removed");
    store.db.insert(b"g/r3", r3).unwrap();
    store.db.insert(b"b/r3", tag).unwrap();

    // 3. An older copy put back (it was `active`, now it is `revoking`): its tag is
    // genuine, but it is not what the grant's latest event committed.
    store.db.insert(b"g/r2", older).unwrap();
    store.db.insert(b"b/r2", older_tag).unwrap();
    let report = store.verify_audit().unwrap();
    assert!(
        report
            .problem
            .as_deref()
            .unwrap()
            .contains("older record was put back"),
        "{report:?}"
    );
    drop(store);
    let _ = std::fs::remove_dir_all(dir);
}

/// Issue 16: a store checked while the host serves. A record altered while the
/// host was stopped is refused when read (by `get`, a listing, a commit built on
/// it) until the check of every record has passed; that check reports it, and a
/// removed record; an intact store passes it and its records are then read as they
/// are.
#[tokio::test]
async fn records_checked_while_serving_are_refused_until_they_pass() {
    let (store, dir) = temp_store();
    for id in ["w1", "w2", "w3"] {
        commit_state(&store, record(id, GrantState::Active, Some(10)));
    }
    let store = reopen(store, &dir).await;
    assert!(!store.records_checked());
    assert!(store.get("w1").unwrap().is_some(), "an intact record is read");
    let report = store.verify_records().unwrap();
    assert!(report.is_intact(), "{report:?}");
    assert_eq!(report.records, 3);
    assert!(store.records_checked());

    // Edited while stopped: active → verified, which would end its revocation.
    let store = reopen(store, &dir).await;
    let original = store.db.get(b"g/w1").unwrap().unwrap();
    let mut edited = ebb_core::encoding::decode_record(&original).unwrap();
    edited.state = GrantState::Verified;
    edited.due_at = None;
    store
        .db
        .insert(b"g/w1", ebb_core::encoding::encode_record(&edited).unwrap())
        .unwrap();
    assert!(store.verify_new_events().unwrap().is_intact());
    let refused = |e: Error| {
        let text = format!("{e:?}");
        assert!(
            text.contains("grant record w1 was altered") && text.contains("not acted on"),
            "{text}"
        );
    };
    refused(store.get("w1").unwrap_err());
    refused(store.list(&ListFilter::default()).unwrap_err());
    refused(
        store
            .commit(Commit {
                record: edited.clone(),
                sealed: Sealed::Keep,
                event: event("w1"),
                lease_until: None,
                earlier: Vec::new(),
            })
            .unwrap_err(),
    );
    assert!(store.get("w2").unwrap().is_some(), "the others are read");
    let report = store.verify_records().unwrap();
    assert!(
        report
            .problem
            .as_deref()
            .is_some_and(|p| p.contains("grant record w1 was altered")),
        "{report:?}"
    );
    assert!(!store.records_checked());
    refused(store.get("w1").unwrap_err());
    // The operator's override takes the records as they are.
    store.trust_records();
    assert_eq!(
        store.get("w1").unwrap().unwrap().state,
        GrantState::Verified
    );
    store.db.insert(b"g/w1", original).unwrap();

    // Removed, tag and all.
    let store = reopen(store, &dir).await;
    store.db.remove(b"g/w3").unwrap();
    store.db.remove(b"b/w3").unwrap();
    assert!(store.verify_new_events().unwrap().is_intact());
    let report = store.verify_records().unwrap();
    assert!(
        report
            .problem
            .as_deref()
            .is_some_and(|p| p.contains("holds 2 grant records but recorded 3")),
        "{report:?}"
    );
    drop(store);
    let _ = std::fs::remove_dir_all(dir);
}

/// Issue 16: the check of every record runs while commits go on. Records created
/// and records changed meanwhile are neither reported as altered nor counted as
/// added or missing.
#[tokio::test]
async fn the_records_check_passes_under_concurrent_commits() {
    let (store, dir) = temp_store();
    let ids: Vec<String> = (0..2_000).map(|i| format!("c{i:05}")).collect();
    for id in &ids {
        commit_state(&store, record(id, GrantState::Active, Some(10)));
    }
    let store = reopen(store, &dir).await;
    assert!(store.verify_new_events().unwrap().is_intact());
    let report = std::thread::scope(|s| {
        let writer = s.spawn(|| {
            for (i, id) in ids.iter().enumerate().step_by(7) {
                // A change to an old record, and a new record on either side of it.
                let mut r = store.get(id).unwrap().unwrap();
                r.state = GrantState::Revoking;
                commit_state(&store, r);
                for new in [format!("b{i:05}"), format!("d{i:05}")] {
                    commit_state(&store, record(&new, GrantState::Active, Some(10)));
                }
            }
        });
        let report = store.verify_records().unwrap();
        writer.join().unwrap();
        report
    });
    assert!(report.is_intact(), "{report:?}");
    assert!(report.records >= 2_000, "{report:?}");
    assert!(store.records_checked());
    // And the store as it is now passes the strict check.
    let store = reopen(store, &dir).await;
    let strict = store.verify_at_start().unwrap();
    assert!(strict.is_intact(), "{strict:?}");
    assert_eq!(strict.records, 2_000 + 2 * 2_000usize.div_ceil(7) as u64);
    drop(store);
    let _ = std::fs::remove_dir_all(dir);
}

/// Issue 13: a store written before records were bound gets its tags, and a
/// counted head, once at open; one whose head lost its key after that is not keyed
/// again, and fails the check.
#[tokio::test]
async fn old_stores_get_record_tags_once() {
    let (store, dir) = temp_store();
    for id in ["o1", "o2"] {
        commit_state(&store, record(id, GrantState::Active, Some(10)));
    }
    // Make it look like a store from before record tags and keyed heads.
    let head: ebb_core::audit::Head =
        serde_json::from_slice(&store.db.get(b"m/head").unwrap().unwrap()).unwrap();
    let unkeyed = ebb_core::audit::Head {
        records: None,
        mac: None,
        ..head.clone()
    };
    for id in ["o1", "o2"] {
        store.db.remove(key("b/", id)).unwrap();
    }
    store.db.remove(b"m/index/record-tags").unwrap();
    store
        .db
        .insert(b"m/head", encode(&unkeyed).unwrap())
        .unwrap();
    let store = reopen(store, &dir).await;
    let report = store.verify_at_start().unwrap();
    assert!(report.is_intact(), "{report:?}");
    assert_eq!(report.records, 2);
    assert!(store.verify_audit().unwrap().is_intact());

    // Someone strips the head's key afterwards: it stays unkeyed, and is refused.
    store
        .db
        .insert(b"m/head", encode(&unkeyed).unwrap())
        .unwrap();
    let store = reopen(store, &dir).await;
    let report = store.verify_at_start().unwrap();
    assert!(!report.is_intact(), "{report:?}");
    drop(store);
    let _ = std::fs::remove_dir_all(dir);
}

/// A store whose records a host wrote as JSON, before the binary form: it opens
/// and passes its checks, its records read, and each is stored in the binary form
/// from its next commit on.
#[tokio::test]
async fn records_stored_as_json_by_an_older_host_are_read_and_rewritten_binary() {
    let (store, dir) = temp_store();
    WRITE_JSON.set(true);
    for id in ["j1", "j2"] {
        commit_state(&store, record(id, GrantState::Active, Some(10)));
    }
    WRITE_JSON.set(false);
    let store = reopen(store, &dir).await;
    let report = store.verify_at_start().unwrap();
    assert!(report.is_intact(), "{report:?}");
    assert_eq!(report.records, 2);
    let stored = |store: &KvStore, id: &str| store.db.get(key("g/", id)).unwrap().unwrap()[0];
    assert_eq!(stored(&store, "j1"), b'{');
    let mut j1 = store.get("j1").unwrap().unwrap();
    assert_eq!(j1.state, GrantState::Active);
    j1.state = GrantState::Revoking;
    let j1 = commit_state(&store, j1);
    assert_eq!(stored(&store, "j1"), 1, "binary from its next commit on");
    assert_eq!(stored(&store, "j2"), b'{', "the others stay as they were");
    let store = reopen(store, &dir).await;
    assert!(store.verify_at_start().unwrap().is_intact());
    assert!(store.verify_audit().unwrap().is_intact());
    assert_eq!(store.get("j1").unwrap().unwrap(), j1);
    assert_eq!(
        store.get("j2").unwrap().unwrap().state,
        GrantState::Active
    );
    drop(store);
    let _ = std::fs::remove_dir_all(dir);
}

/// Every file under `dir` that contains `needle`.
fn files_containing(dir: &std::path::Path, needle: &[u8]) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(files_containing(&path, needle));
        } else if std::fs::read(&path)
            .unwrap()
            .windows(needle.len())
            .any(|w| w == needle)
        {
            found.push(path);
        }
    }
    found
}

/// Issue 13: a shredded credential is erased, not only unlinked: its key is
/// overwritten, so the bytes sled may keep in its log no longer decrypt. Before the
/// shred the credential reads back (also after a restart) and its key is in the
/// keyring; after it the key is in no file of the store, and neither is the
/// credential in clear at any time.
#[tokio::test]
async fn a_shredded_credential_is_erased() {
    let (store, dir) = temp_store();
    let secret = b"s3cr3t-credential-bytes-0123456789".to_vec();
    let (r, _) = store
        .commit(Commit {
            record: record("k1", GrantState::Active, None),
            sealed: Sealed::Set(secret.clone()),
            event: event("k1"),
            lease_until: None,
            earlier: Vec::new(),
        })
        .unwrap();
    let store = reopen(store, &dir).await;
    assert_eq!(store.sealed_credential("k1").unwrap().unwrap(), secret);
    let value = store.db.get(b"c/k1").unwrap().unwrap();
    let slot = keyring::slot_of(&value).unwrap() as usize;
    let keyring = std::fs::read(dir.join("keyring")).unwrap();
    let key = keyring[slot * 32..slot * 32 + 32].to_vec();
    assert_ne!(key, [0; 32]);
    assert_eq!(files_containing(&dir, &key), vec![dir.join("keyring")]);
    assert!(
        files_containing(&dir, &secret).is_empty(),
        "stored in clear"
    );

    store
        .commit(Commit {
            record: r,
            sealed: Sealed::Shred,
            event: event("k1"),
            lease_until: None,
            earlier: Vec::new(),
        })
        .unwrap();
    store.sync().await.unwrap();
    assert_eq!(store.sealed_credential("k1").unwrap(), None);
    assert!(
        files_containing(&dir, &key).is_empty(),
        "the shredded credential's key is still on disk"
    );
    // Its stored value, wherever it is left, does not open with anything on disk.
    assert_eq!(store.keyring.open_value("k1", &value).unwrap(), None);
    drop(store);
    let _ = std::fs::remove_dir_all(dir);
}

/// Issue 13: a key left behind by a crash (written for a batch that was lost, or
/// not yet zeroed after a shred) is zeroed at the next open; the keys in use stay.
#[tokio::test]
async fn keys_no_credential_uses_are_zeroed_at_open() {
    use std::os::unix::fs::FileExt;
    let (store, dir) = temp_store();
    store
        .commit(Commit {
            record: record("k2", GrantState::Active, None),
            sealed: Sealed::Set(b"kept".to_vec()),
            event: event("k2"),
            lease_until: None,
            earlier: Vec::new(),
        })
        .unwrap();
    store.sync().await.unwrap();
    drop(store);
    let stray = [7u8; 32];
    std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("keyring"))
        .unwrap()
        .write_all_at(&stray, 5 * 32)
        .unwrap();
    let store = open(&dir, [1; 32]).unwrap();
    assert!(files_containing(&dir, &stray).is_empty());
    assert_eq!(store.sealed_credential("k2").unwrap().unwrap(), b"kept");
    drop(store);
    let _ = std::fs::remove_dir_all(dir);
}

/// Issue 13: the chain is checked while serving from the last good check on; each
/// check reads only what came since, an altered new event is reported, and so is
/// an event that was verified before and changed afterwards.
#[tokio::test]
async fn the_chain_is_checked_incrementally_while_serving() {
    let (store, dir) = temp_store();
    for n in 0..3 {
        store
            .append_audit(NewEvent::new("test.note", "test").detail(serde_json::json!({ "n": n })))
            .unwrap();
    }
    let first = store.verify_new_events().unwrap();
    assert!(first.is_intact(), "{first:?}");
    assert_eq!(first.events, 3);
    for n in 3..5 {
        store
            .append_audit(NewEvent::new("test.note", "test").detail(serde_json::json!({ "n": n })))
            .unwrap();
    }
    let second = store.verify_new_events().unwrap();
    assert_eq!((second.events, second.problem.clone()), (2, None));
    // A start after that reads no event again.
    assert_eq!(store.verify_at_start().unwrap().events, 0);

    // A new event altered before it was checked.
    let (e, _) = (
        store
            .append_audit(NewEvent::new("test.note", "test"))
            .unwrap(),
        (),
    );
    let mut altered = e.clone();
    altered.actor = "mallory".into();
    store
        .db
        .insert(audit_key(e.seq), serde_json::to_vec(&altered).unwrap())
        .unwrap();
    let report = store.verify_new_events().unwrap();
    assert!(
        report.problem.as_deref().unwrap().contains("altered"),
        "{report:?}"
    );
    store
        .db
        .insert(audit_key(e.seq), serde_json::to_vec(&e).unwrap())
        .unwrap();
    assert!(store.verify_new_events().unwrap().is_intact());
    // The last verified event altered afterwards.
    store
        .db
        .insert(audit_key(e.seq), serde_json::to_vec(&altered).unwrap())
        .unwrap();
    let report = store.verify_new_events().unwrap();
    assert!(
        report
            .problem
            .as_deref()
            .unwrap()
            .contains("verified before and has been altered"),
        "{report:?}"
    );
    drop(store);
    let _ = std::fs::remove_dir_all(dir);
}

/// A new credential's key is on disk before its record can be: the commit is
/// applied only once a keyring sync covered the key, so no flush of the engine (for
/// another caller's `sync`, at any moment) makes the record durable without it —
/// after a power loss such a credential would read as erased. Fault injection: the
/// keyring's sync is stalled, as on a slow disk. Commits without a new credential
/// do not wait for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_credential_is_applied_only_after_its_key_is_on_disk() {
    let (store, dir) = temp_store();
    let commit = |id: &str, sealed: Sealed| Commit {
        record: record(id, GrantState::Active, None),
        sealed,
        event: event(id),
        lease_until: None,
        earlier: Vec::new(),
    };
    store.keyring.stall_sync.store(true, Ordering::Release);
    let through_trait = tokio::spawn({
        let store = store.clone();
        let c = commit("k3", Sealed::Set(b"three".to_vec()));
        async move { Store::commit(&*store, c).await }
    });
    let blocking = std::thread::spawn({
        let store = store.clone();
        let c = commit("k4", Sealed::Set(b"four".to_vec()));
        move || store.commit(c)
    });
    Store::commit(&*store, commit("k5", Sealed::Keep))
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!through_trait.is_finished() && !blocking.is_finished());
    for id in ["k3", "k4"] {
        assert!(
            store.get(id).unwrap().is_none(),
            "{id} was applied before its key was synced"
        );
    }
    store.keyring.stall_sync.store(false, Ordering::Release);
    through_trait.await.unwrap().unwrap();
    blocking.join().unwrap().unwrap();
    assert!(*store.keyring.synced().borrow() >= 2);
    let store = reopen(store, &dir).await;
    assert_eq!(store.sealed_credential("k3").unwrap().unwrap(), b"three");
    assert_eq!(store.sealed_credential("k4").unwrap().unwrap(), b"four");
    drop(store);
    let _ = std::fs::remove_dir_all(dir);
}

/// The due index in memory is a window over the earliest entries (4 in tests):
/// claims and the next due time are the same as over the whole index, through
/// random commits, claims and reschedules before and beyond the window's horizon,
/// and after a reopen, which reads only the window.
#[tokio::test]
async fn the_due_window_answers_as_the_whole_index_would() {
    use rand::Rng;
    let (store, dir) = temp_store();
    let mut rng = rand::rng();
    // The model: each grant's due time, and its version.
    let mut model: BTreeMap<String, (Option<Timestamp>, u64)> = BTreeMap::new();
    for i in 0..60 {
        let id = format!("g{i:02}");
        let due = rng.random_range(0..1_000);
        let (r, _) = store
            .commit(Commit {
                record: record(&id, GrantState::Active, Some(due)),
                sealed: Sealed::Keep,
                event: event(&id),
                lease_until: None,
                earlier: Vec::new(),
            })
            .unwrap();
        model.insert(id, (Some(due), r.version));
    }
    let expected = |model: &BTreeMap<String, (Option<Timestamp>, u64)>, now, limit| {
        let mut due: Vec<(Timestamp, String)> = model
            .iter()
            .filter_map(|(id, (due, _))| due.filter(|d| *d <= now).map(|d| (d, id.clone())))
            .collect();
        due.sort();
        due.into_iter()
            .take(limit)
            .map(|(_, id)| id)
            .collect::<Vec<_>>()
    };
    let next = |model: &BTreeMap<String, (Option<Timestamp>, u64)>| {
        model.values().filter_map(|(due, _)| *due).min()
    };
    let mut store = store;
    for round in 0..200 {
        let id = format!("g{:02}", rng.random_range(0..60));
        match rng.random_range(0..4) {
            0 => {
                let due = rng.random_range(0..2_000);
                store.reschedule(&id, Some(due)).unwrap();
                model.get_mut(&id).unwrap().0 = Some(due);
            }
            1 => {
                let mut r = store.get(&id).unwrap().unwrap();
                let due = (rng.random_range(0..3) > 0).then(|| rng.random_range(0..2_000));
                r.due_at = due;
                let (r, _) = store
                    .commit(Commit {
                        record: r,
                        sealed: Sealed::Keep,
                        event: event(&id),
                        lease_until: None,
                        earlier: Vec::new(),
                    })
                    .unwrap();
                model.insert(id, (due, r.version));
            }
            2 => {
                let now = rng.random_range(0..2_000);
                let limit = rng.random_range(1..12);
                let want = expected(&model, now, limit);
                let lease = 5_000 + round;
                assert_eq!(store.claim_due(now, lease, limit).unwrap(), want, "round {round}");
                for id in want {
                    model.get_mut(&id).unwrap().0 = Some(lease);
                }
            }
            _ => store = reopen(store, &dir).await,
        }
        assert_eq!(store.next_due().unwrap(), next(&model), "round {round}");
        assert!(store.lock().due.in_memory() <= 2 * 4, "the window grew");
    }
    let everything = expected(&model, u64::MAX - 1, usize::MAX);
    assert_eq!(
        store.claim_due(u64::MAX - 1, u64::MAX, usize::MAX).unwrap(),
        everything
    );
    drop(store);
    let _ = std::fs::remove_dir_all(dir);
}

/// A keyring that cannot be synced fails a commit carrying a new credential with a
/// clear error within the give-up time, instead of leaving it waiting; nothing of
/// it is stored, the store reports itself unhealthy, and once the keyring syncs
/// again commits go through and the store is healthy. Fault injection: the
/// keyring's sync fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyring_that_cannot_sync_fails_credential_commits_clearly() {
    let (store, dir) = temp_store();
    let commit = |id: &str| Commit {
        record: record(id, GrantState::Active, None),
        sealed: Sealed::Set(b"secret".to_vec()),
        event: event(id),
        lease_until: None,
        earlier: Vec::new(),
    };
    store.keyring.fail_sync.store(true, Ordering::Release);
    let started = std::time::Instant::now();
    let err = Store::commit(&*store, commit("k6")).await.unwrap_err();
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    assert_eq!(err.io_kind(), Some(std::io::ErrorKind::StorageFull), "{err}");
    assert!(store.get("k6").unwrap().is_none());
    assert!(store.health().is_err());
    // The key syncer keeps trying; once an attempt succeeds the store is healthy.
    store.keyring.fail_sync.store(false, Ordering::Release);
    let by = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while store.health().is_err() {
        assert!(std::time::Instant::now() < by, "the keyring did not recover");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    Store::commit(&*store, commit("k7")).await.unwrap();
    assert_eq!(store.sealed_credential("k7").unwrap().unwrap(), b"secret");
    drop(store);
    let _ = std::fs::remove_dir_all(dir);
}
