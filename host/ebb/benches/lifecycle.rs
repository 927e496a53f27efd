//! Lifecycle benchmarks (see BENCHMARKS.md). Without `--bench` (i.e. under
//! `cargo test`) every scenario runs at a tiny size, as a smoke test.
//!
//! - throughput: complete durable lifecycles per second with the noop connector
//!   (request+approve, issue, task completion, revoke, verify), each state change an
//!   atomic commit to an on-disk store, intents synced (group commit) — on sled and
//!   on fjall, in the same run.
//! - postgres: the throughput lifecycles on sled and on PostgreSQL with 1, 2 and
//!   3 hosts (engines with a store each, one database), side by side.
//! - postgres-N: the same on PostgreSQL with N hosts alone (for profiling;
//!   `EBB_PG_OPTIONS` adds server settings, `EBB_BENCH_PG_REPORT` is SQL run as
//!   the superuser after the run, its output printed; `EBB_BENCH_CLIENTS`
//!   sets the number of concurrent clients, 256 by default).
//! - million-postgres: restart to serving (a cold `ebb serve`) with 1M active
//!   grants in PostgreSQL.
//! - million: RSS with N active grants, restart-to-serving with them, and the
//!   expiry-to-revoke-start lag of grants expiring among them (10,000 of them
//!   over 10 s; `million-100k`: 100,000; `ten-million`: the same 10,000 among
//!   10,000,000 active, only when named: loading them takes a quarter of an hour).
//! - sled, fjall, memory: the throughput lifecycles on that engine alone (for
//!   profiling; `memory` is what the engine above the store costs).
//! - limits (run with throughput): the same lifecycles on the in-memory engine
//!   (the ceiling without durability), and what the layers below the engine can do
//!   alone: sled batches of one commit's size with a flush after each, the same
//!   without flushing, and the disk itself (appends of that size, `fdatasync`
//!   after each).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "benchmark"
)]

use ebb_core::audit::NewEvent;
use ebb_core::contract::{Grant, Permission, Subject, SubjectKind};
use ebb_core::seal::{HostKey, Sealer};
use ebb_core::store::{Commit, GrantRecord, Sealed, Store};
use ebb_engine::config::{ConnectorConfig, LifecyclePolicy, RuntimeConfig};
use ebb_engine::lifecycle::{
    Clock, Decision, EngineConfig, GrantState, Lifecycle, NewGrant, Trigger,
};
use ebb_engine::registry::Registry;
use ebb_runtime::Runtime;
use ebb_store_kv::{Engine, KvStore};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The server's allocator, as in `ebb serve`.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn rss_mib() -> f64 {
    memory_mib("self", "VmRSS:")
}

/// A field of `/proc/{pid}/status` in MiB: `VmRSS:` now, `VmHWM:` its peak.
fn memory_mib(pid: &str, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb / 1024.0
}

fn noop_config() -> ConnectorConfig {
    ConnectorConfig::new(ebb_test_plugins::NOOP).with_lifecycle(LifecyclePolicy {
        max_concurrent_calls: 64,
        ..LifecyclePolicy::default()
    })
}

async fn engine(store: Arc<dyn Store>) -> Lifecycle {
    let registry = Arc::new(Registry::new(
        Runtime::new(&RuntimeConfig::default()).unwrap(),
    ));
    registry.load("noop", &noop_config()).await.unwrap();
    Lifecycle::new(
        store,
        Sealer::new(&HostKey::from_hex(&"44".repeat(32)).unwrap()),
        registry,
        Clock::system(),
        EngineConfig {
            max_jobs: 512,
            ..EngineConfig::default()
        },
    )
}

fn new_grant(ttl_ms: u64) -> NewGrant {
    NewGrant {
        connector: "noop".into(),
        subject: Subject {
            id: "spiffe://bench/agent".into(),
            kind: SubjectKind::Workload,
            claims: vec![],
        },
        permissions: vec![Permission {
            action: "use".into(),
            resource: "x".into(),
        }],
        ttl_ms,
        task: "bench".into(),
        reason: None,
        approvals_required: 1,
        break_glass: false,
        decided_by: None,
    }
}

/// Durable lifecycles on a store in `dir` on `engine` (on `Engine::Memory`: the
/// same lifecycles without durability, the ceiling of everything above the store).
async fn throughput(engine: Engine, dir: &Path, total: usize, concurrency: usize) -> f64 {
    let store = KvStore::open_with(engine, dir, [1; 32]).unwrap();
    let label = match engine {
        Engine::Memory => "in-memory".to_owned(),
        durable => format!("durable {durable}"),
    };
    let rate = lifecycles(vec![store], &label, total, concurrency).await;
    let _ = std::fs::remove_dir_all(dir);
    rate
}

/// The same lifecycles on PostgreSQL (Debian's server, on loopback beside the
/// bench), spread over `hosts` engines that share the database as separate hosts
/// do: each its own store (pool, writer, leases), one database.
async fn throughput_postgres(
    pg: &ebb_test_support::Postgres,
    hosts: usize,
    total: usize,
    concurrency: usize,
) -> f64 {
    // A fresh database per run.
    pg.psql("drop database if exists ebbstore").unwrap();
    pg.psql("drop role if exists store_owner").unwrap();
    let dsn = pg.store_dsn().unwrap();
    let mut stores: Vec<Arc<dyn Store>> = Vec::new();
    for i in 0..hosts {
        stores.push(
            ebb_store_postgres::PgStore::open(
                ebb_store_postgres::PgOptions {
                    dsn: dsn.clone(),
                    ca_file: None,
                    host_id: format!("bench-{i}"),
                    pool_size: 16,
                    lease_ms: 4_000,
                },
                [1; 32],
            )
            .await
            .unwrap(),
        );
    }
    lifecycles(
        stores,
        &format!("durable postgres, {hosts} host(s)"),
        total,
        concurrency,
    )
    .await
}

async fn lifecycles(
    stores: Vec<Arc<dyn Store>>,
    label: &str,
    total: usize,
    concurrency: usize,
) -> f64 {
    let store = stores[0].clone();
    let mut engines = Vec::new();
    for store in stores {
        let engine = engine(store).await;
        engine.start().await.unwrap();
        engines.push(engine);
    }
    let started = Instant::now();
    let per_task = total / concurrency;
    let mut tasks = Vec::new();
    for i in 0..concurrency {
        let engine = engines[i % engines.len()].clone();
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::with_capacity(per_task);
            for _ in 0..per_task {
                let decision = Decision::Approve {
                    by: "policy".into(),
                    note: None,
                    issue_within_ms: None,
                };
                let r = engine
                    .request(new_grant(3_600_000), "agent", decision)
                    .await
                    .unwrap();
                let id = r.grant.id.clone();
                engine.issue(&id, "agent").await.unwrap();
                engine
                    .revoke(&id, Trigger::TaskCompleted, "agent", None)
                    .await
                    .unwrap();
                ids.push(id);
            }
            ids
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.extend(t.await.unwrap());
    }
    // Wait for the scheduler to revoke and verify every one.
    loop {
        let verified = store.counts().await.unwrap()[&GrantState::Verified] as usize;
        if verified >= ids.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let elapsed = started.elapsed();
    store.sync().await.unwrap();
    let rate = ids.len() as f64 / elapsed.as_secs_f64();
    println!(
        "throughput: {} {label} lifecycles in {:.2} s = {rate:.0} lifecycles/s (concurrency {concurrency})",
        ids.len(),
        elapsed.as_secs_f64(),
    );
    for engine in engines {
        engine.shutdown().await.unwrap();
    }
    rate
}

/// One commit's worth of writes: a grant record (~1 KiB), its tag, the due
/// entries, the indexes, an audit event (~700 B) and the head — 9 keys.
fn commit_sized(n: u64) -> Vec<(Vec<u8>, Vec<u8>)> {
    let id = format!("{n:026}");
    vec![
        (format!("g/{id}").into_bytes(), vec![b'r'; 1024]),
        (format!("b/{id}").into_bytes(), vec![b't'; 32]),
        (format!("t/{n:016}{id}").into_bytes(), vec![]),
        (format!("d/{id}").into_bytes(), n.to_be_bytes().to_vec()),
        (format!("x/active\0{id}").into_bytes(), vec![]),
        (format!("r/agent\0{id}").into_bytes(), vec![]),
        (format!("a/{n:016}").into_bytes(), vec![b'e'; 700]),
        (format!("i/{id}\0{n:016}").into_bytes(), vec![]),
        (b"m/head".to_vec(), vec![b'h'; 160]),
    ]
}

/// Runs `body` for `secs` seconds; how many times per second it ran.
fn per_second(secs: f64, body: &mut dyn FnMut(u64)) -> f64 {
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed().as_secs_f64() < secs {
        body(n);
        n += 1;
    }
    n as f64 / started.elapsed().as_secs_f64()
}

/// What a storage layer sustains alone, single writer: commits of one commit's
/// size made durable each (`synced`) and not (`unsynced`).
#[derive(Debug, Clone, Copy)]
struct Limit {
    synced: f64,
    unsynced: f64,
}

/// sled (the store's engine today), redb and fjall (maintained embedded engines),
/// and the disk itself (2 KiB appends, `fdatasync` after each), for `secs` seconds
/// each, in the same run.
fn limits(dir: &Path, secs: f64) -> [(&'static str, Limit); 4] {
    use std::io::Write as _;
    std::fs::create_dir_all(dir).unwrap();
    let sled_batch = |n| {
        let mut batch = sled::Batch::default();
        for (k, v) in commit_sized(n) {
            batch.insert(k, v);
        }
        batch
    };
    let db = sled::open(dir.join("sled-synced")).unwrap();
    let synced = per_second(secs, &mut |n| {
        db.apply_batch(sled_batch(n)).unwrap();
        db.flush().unwrap();
    });
    drop(db);
    let db = sled::open(dir.join("sled-unsynced")).unwrap();
    let unsynced = per_second(secs, &mut |n| db.apply_batch(sled_batch(n)).unwrap());
    drop(db);
    let sled = Limit { synced, unsynced };

    const TABLE: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("t");
    let redb_run = |path: std::path::PathBuf, durability: redb::Durability| {
        let db = redb::Database::create(path).unwrap();
        per_second(secs, &mut |n| {
            let mut tx = db.begin_write().unwrap();
            tx.set_durability(durability).unwrap();
            {
                let mut table = tx.open_table(TABLE).unwrap();
                for (k, v) in commit_sized(n) {
                    table.insert(k.as_slice(), v.as_slice()).unwrap();
                }
            }
            tx.commit().unwrap();
        })
    };
    let redb = Limit {
        synced: redb_run(dir.join("redb-synced"), redb::Durability::Immediate),
        unsynced: redb_run(dir.join("redb-unsynced"), redb::Durability::None),
    };

    let fjall_run = |path: std::path::PathBuf, sync: bool| {
        let db = fjall::Database::builder(path).open().unwrap();
        let keyspace = db
            .keyspace("t", fjall::KeyspaceCreateOptions::default)
            .unwrap();
        per_second(secs, &mut |n| {
            let mut batch = db.batch();
            for (k, v) in commit_sized(n) {
                batch.insert(&keyspace, k, v);
            }
            batch.commit().unwrap();
            if sync {
                db.persist(fjall::PersistMode::SyncData).unwrap();
            }
        })
    };
    let fjall = Limit {
        synced: fjall_run(dir.join("fjall-synced"), true),
        unsynced: fjall_run(dir.join("fjall-unsynced"), false),
    };

    let mut file = std::fs::File::create(dir.join("raw")).unwrap();
    let block = vec![0x5au8; 2048];
    let disk = per_second(secs, &mut |_| {
        file.write_all(&block).unwrap();
        file.sync_data().unwrap();
    });
    let mut file = std::fs::File::create(dir.join("raw-unsynced")).unwrap();
    let unsynced_disk = per_second(secs, &mut |_| file.write_all(&block).unwrap());
    let all = [
        ("sled", sled),
        ("redb", redb),
        ("fjall", fjall),
        (
            "disk",
            Limit {
                synced: disk,
                unsynced: unsynced_disk,
            },
        ),
    ];
    for (name, l) in all {
        println!(
            "limits: {name:<5} one commit's writes: {:>8.0}/s synced each, {:>9.0}/s unsynced",
            l.synced, l.unsynced
        );
    }
    all
}

fn active_record(id: String, not_after: u64, now: u64) -> GrantRecord {
    let grant = Grant {
        id,
        subject: Subject {
            id: "spiffe://bench/agent".into(),
            kind: SubjectKind::Workload,
            claims: vec![],
        },
        permissions: vec![Permission {
            action: "use".into(),
            resource: "x".into(),
        }],
        not_after,
        task: "bench".into(),
    };
    let mut r = GrantRecord::requested(
        grant,
        "noop".into(),
        not_after.saturating_sub(now),
        now,
        "agent".into(),
        None,
    );
    r.state = GrantState::Active;
    r.issued_at = Some(now);
    r.handle = Some("h".into());
    r.due_at = Some(not_after);
    r
}

/// The commit that stores an active grant `id`, its credential sealed, as
/// issuance would.
fn active_commit(sealer: &Sealer, id: String, not_after: u64, now: u64) -> Commit {
    let sealed = sealer
        .seal(&id, b"{\"fields\":[[\"token\",\"noop\"]]}")
        .unwrap();
    let mut event = NewEvent::new("grant.transition", "bench").grant(&id);
    event.to = Some(GrantState::Active);
    Commit {
        record: active_record(id, not_after, now),
        sealed: Sealed::Set(sealed),
        event,
        lease_until: None,
        earlier: Vec::new(),
    }
}

/// The host key of the million-grant store, as hex: `ebb serve` reads it from
/// `EBB_BENCH_HOST_KEY` to open the same store.
fn bench_key_hex() -> String {
    "44".repeat(32)
}

fn bench_audit_key() -> [u8; 32] {
    HostKey::from_hex(&bench_key_hex())
        .unwrap()
        .derive("audit-chain")
}

/// Restart to serving as an operator sees it: a cold `ebb serve` process on the
/// embedded store in `dir` on `kind`, the check at start run at `records`
/// (`while-serving` or `before-serving`): [`cold_start_on`]'s times, and with
/// `while-serving` how long until every record has passed its check (the host's
/// `ebb_store_records_checked` gauge is 1).
async fn cold_start(
    kind: Engine,
    dir: &Path,
    id: &str,
    records: &str,
) -> (Duration, Duration, Option<Duration>) {
    let store = format!(
        "path = \"{}\"\nengine = \"{kind}\"\ncheck-at-start = \"{records}\"",
        dir.display()
    );
    let checked = records == "while-serving";
    cold_start_on(dir, &store, &[], id, checked).await
}

/// A cold `ebb serve` on the store `store` (the `[store]` table's lines besides
/// the key), with `env` added: how long until `/readyz` answers 200, and until
/// grant `id` is read; with `checked`, how long until the check of every record
/// that runs while serving has passed.
async fn cold_start_on(
    dir: &Path,
    store: &str,
    env: &[(&str, &str)],
    id: &str,
    checked: bool,
) -> (Duration, Duration, Option<Duration>) {
    const TOKEN: &str = "bench-operator-token";
    let port = ebb_test_support::free_port().unwrap();
    let config = dir.with_extension("toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n\n[store]\n{store}\nkey-env = \"EBB_BENCH_HOST_KEY\"\n\n\
             [[tokens]]\nname = \"ops\"\nsha256 = \"{}\"\nroles = [\"operator\"]\n\n\
             [connectors.noop]\ncomponent = \"{}\"\n",
            ebb::api::auth::hash_token(TOKEN),
            ebb_test_plugins::NOOP,
        ),
    )
    .unwrap();
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    let mut child = ebb_test_support::serve_command(env!("CARGO_BIN_EXE_ebb"), &config)
        .env("EBB_BENCH_HOST_KEY", bench_key_hex())
        .envs(env.iter().copied())
        .spawn()
        .unwrap();
    let deadline = started + Duration::from_secs(900);
    let ready = loop {
        let answered = http.get(format!("{base}/readyz")).send().await;
        if answered.is_ok_and(|r| r.status().is_success()) {
            break started.elapsed();
        }
        assert!(Instant::now() < deadline, "ebb serve never became ready");
        assert!(child.try_wait().unwrap().is_none(), "ebb serve exited");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let read = http
        .get(format!("{base}/v1/grants/{id}"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert!(read.status().is_success(), "grant read: {}", read.status());
    let read = started.elapsed();
    let records = if checked {
        loop {
            let metrics = http
                .get(format!("{base}/metrics"))
                .bearer_auth(TOKEN)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            if metrics.contains("ebb_store_records_checked 1") {
                break Some(started.elapsed());
            }
            assert!(Instant::now() < deadline, "the records' check never passed");
            assert!(child.try_wait().unwrap().is_none(), "ebb serve exited");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    } else {
        None
    };
    let pid = child.id().to_string();
    println!(
        "cold start: `ebb serve` RSS {:.0} MiB (peak {:.0} MiB) once it served{}",
        memory_mib(&pid, "VmRSS:"),
        memory_mib(&pid, "VmHWM:"),
        if checked {
            " and every record passed"
        } else {
            ""
        }
    );
    child.kill().unwrap();
    child.wait().unwrap();
    let _ = std::fs::remove_file(&config);
    (ready, read, records)
}

/// Opens the million-grant store again. A store just dropped may still hold its
/// file lock while its last flush runs (seconds with ten million grants), so a
/// lock refusal is retried for up to a minute.
fn reopen(engine: Engine, dir: &Path) -> std::sync::Arc<KvStore> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match KvStore::open_with(engine, dir, bench_audit_key()) {
            Ok(store) => return store,
            Err(e) if Instant::now() < deadline && format!("{e:?}").contains("WouldBlock") => {
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("opening the store again: {e:?}"),
        }
    }
}

async fn million(kind: Engine, dir: &Path, total: usize, expiring: usize) {
    println!("million: on {kind}");
    let rss_before = rss_mib();
    let some_id = {
        let store = reopen(kind, dir);
        let some_id = load(store.clone(), total, expiring, "million").await;
        store.sync().await.unwrap();
        some_id
    };
    // The first start checks the whole audit chain; later ones only what was
    // appended since the last good check. Every record is checked each time: by
    // default while the host serves, or before it serves.
    for (which, records) in [
        ("first", "while-serving"),
        ("second", "while-serving"),
        ("third", "before-serving"),
    ] {
        let (ready, read, checked) = cold_start(kind, dir, &some_id, records).await;
        println!(
            "million: {which} cold `ebb serve` with {total} active grants, records checked {records}: /readyz 200 after {} ms, a grant read 200 after {} ms{}",
            ready.as_millis(),
            read.as_millis(),
            checked.map_or(String::new(), |c| format!(
                ", every record checked after {} ms",
                c.as_millis()
            )),
        );
    }
    {
        let opened = Instant::now();
        let store = reopen(kind, dir);
        let open_ms = opened.elapsed().as_millis();
        let checked = Instant::now();
        let events = store.verify_new_events().unwrap();
        assert!(events.is_intact(), "{events:?}");
        let events_ms = checked.elapsed().as_millis();
        let checked = Instant::now();
        let records = store.verify_records().unwrap();
        assert!(records.is_intact(), "{records:?}");
        println!(
            "million: of which opening the store {open_ms} ms, the events since the last good check {events_ms} ms ({} events); every record's check {} ms ({} records)",
            events.events,
            checked.elapsed().as_millis(),
            records.records
        );
    }
    // Schedule the expiring ones now that loading is done.
    let start_at = Clock::system().now_ms() + 5_000;
    {
        let store = reopen(kind, dir);
        let mut page = store
            .list(&ebb_core::store::ListFilter {
                limit: 1000,
                ..Default::default()
            })
            .unwrap();
        let mut scheduled = 0;
        'outer: loop {
            for mut r in page.grants.clone() {
                if r.grant.not_after == u64::MAX / 2 {
                    r.grant.not_after =
                        start_at + (scheduled as u64 * 10_000 / expiring.max(1) as u64);
                    r.due_at = Some(r.grant.not_after);
                    let event = NewEvent::new("grant.rescheduled", "bench").grant(&r.grant.id);
                    store
                        .commit(Commit {
                            record: r,
                            sealed: Sealed::Keep,
                            event,
                            lease_until: None,
                            earlier: Vec::new(),
                        })
                        .unwrap();
                    scheduled += 1;
                    if scheduled == expiring {
                        break 'outer;
                    }
                }
            }
            match page.next {
                Some(after) => {
                    page = store
                        .list(&ebb_core::store::ListFilter {
                            limit: 1000,
                            after: Some(after),
                            ..Default::default()
                        })
                        .unwrap()
                }
                None => break,
            }
        }
        store.sync().await.unwrap();
    }
    // Restart in process (the store and engine the lag is measured on): open the
    // store, load the connector, start the scheduler, count the grants.
    let restart = Instant::now();
    let store = reopen(kind, dir);
    let engine = engine(store.clone()).await;
    engine.start().await.unwrap();
    let counts = store.counts().unwrap();
    let serving = restart.elapsed();
    // As `ebb serve` does, every record is checked while the expiries run (at the
    // lowest CPU priority, through the `Store` trait).
    let records = {
        let store = store.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let report = ebb_core::store::Store::verify_records(store.as_ref())
                .await
                .unwrap();
            assert!(report.is_intact(), "{report:?}");
            started.elapsed()
        })
    };
    println!(
        "million: in-process restart with {} active grants: {} ms",
        counts[&GrantState::Active],
        serving.as_millis()
    );
    println!(
        "million: RSS with {total} active grants: {:.0} MiB (before loading: {rss_before:.0} MiB)",
        rss_mib()
    );

    // Expiry lag of the expiring ones.
    // Long enough for the whole burst at a few hundred revocations a second.
    let deadline = Instant::now() + Duration::from_secs(60.max(expiring as u64 / 400));
    loop {
        let verified = store.counts().unwrap()[&GrantState::Verified] as usize;
        if verified >= expiring || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut lags = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .list(&ebb_core::store::ListFilter {
                state: Some(GrantState::Verified),
                limit: 1000,
                after,
                ..Default::default()
            })
            .unwrap();
        for r in &page.grants {
            lags.push(
                r.revoke_started_at
                    .unwrap()
                    .saturating_sub(r.grant.not_after),
            );
        }
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    lags.sort_unstable();
    let pct = |p: f64| {
        lags.get(((lags.len() as f64 * p) as usize).min(lags.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    println!(
        "million: expiry-to-revoke-start lag over {} expiries among {total} active: p50 {} ms, p99 {} ms, max {} ms",
        lags.len(),
        pct(0.50),
        pct(0.99),
        lags.last().copied().unwrap_or(0)
    );
    println!("million: RSS after expiries: {:.0} MiB", rss_mib());
    println!(
        "million: every record checked in the background in {} ms",
        records.await.unwrap().as_millis()
    );
    engine.shutdown().await.unwrap();
}

/// Loads `total` active grants into `store` through 64 concurrent writers, as
/// clients of the API would commit them: far-future grants, plus `expiring` ones
/// whose expiry is placed later (`not_after` marks them). Returns one grant's id.
async fn load(store: Arc<dyn Store>, total: usize, expiring: usize, label: &str) -> String {
    let now = Clock::system().now_ms();
    let started = Instant::now();
    let writers = 64;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let sealer = Sealer::new(&HostKey::from_hex(&bench_key_hex()).unwrap());
            let mut last = String::new();
            for i in (w..total).step_by(writers) {
                let id = ulid::Ulid::new().to_string();
                let not_after = if i < expiring {
                    u64::MAX / 2
                } else {
                    now + 86_400_000 + (i as u64 % 3_600_000)
                };
                store
                    .commit(active_commit(&sealer, id.clone(), not_after, now))
                    .await
                    .unwrap();
                last = id;
            }
            last
        }));
    }
    let mut some_id = String::new();
    for t in tasks {
        some_id = t.await.unwrap();
    }
    let loaded = started.elapsed().as_secs_f64();
    println!(
        "{label}: loaded {total} active grants in {loaded:.1} s ({:.0} commits/s, {writers} writers)",
        total as f64 / loaded
    );
    some_id
}

/// Restart to serving with `total` active grants in PostgreSQL: loaded through
/// the store by 64 concurrent writers, then a cold `ebb serve` on them, twice (the
/// first start checks the whole chain, the second only what came since).
async fn million_postgres(dir: &Path, total: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let pg = ebb_test_support::Postgres::start_durable().unwrap();
    let dsn = pg.store_dsn().unwrap();
    let store = ebb_store_postgres::PgStore::open(
        ebb_store_postgres::PgOptions {
            dsn: dsn.clone(),
            ca_file: None,
            host_id: "load".into(),
            pool_size: 16,
            lease_ms: 4_000,
        },
        bench_audit_key(),
    )
    .await
    .unwrap();
    let some_id = load(store.clone(), total, 0, "million-postgres").await;
    drop(store);
    let store_lines = "kind = \"postgres\"\ndsn-env = \"EBB_BENCH_STORE_DSN\"\nhost-id = \"bench\"";
    for which in ["first", "second"] {
        let (ready, read, _) = cold_start_on(
            dir,
            store_lines,
            &[("EBB_BENCH_STORE_DSN", dsn.as_str())],
            &some_id,
            false,
        )
        .await;
        println!(
            "million-postgres: {which} cold `ebb serve` with {total} active grants in PostgreSQL: /readyz 200 after {} ms, a grant read 200 after {} ms",
            ready.as_millis(),
            read.as_millis()
        );
    }
}

/// Commits of one lifecycle: the request with its approval, issuing, active,
/// revoking, and revoked with verified.
const COMMITS: f64 = 5.0;

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let which = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with("--"))
        .unwrap_or_default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let base = std::env::temp_dir().join(format!("ebb-bench-{}", std::process::id()));
    rt.block_on(async {
        if which.is_empty() || which == "throughput" {
            let dir = base.join("throughput");
            let (total, conc) = if full { (40_000, 256) } else { (200, 16) };
            let durable = throughput(Engine::Sled, &dir, total, conc).await;
            let fjall = throughput(Engine::Fjall, &dir, total, conc).await;
            let memory = throughput(Engine::Memory, &dir, total, conc).await;
            let limits = limits(&base.join("limits"), if full { 5.0 } else { 0.2 });
            let _ = std::fs::remove_dir_all(base.join("limits"));
            // A lifecycle is COMMITS commits; 2 of them (the intents) must be
            // durable before the call they announce, the rest ride the group commit.
            let commits = durable * COMMITS;
            println!(
                "ratios: durable sled lifecycles / in-memory {:.2}; the durable run's {commits:.0} commits/s are {:.2} of sled's unsynced limit",
                durable / memory,
                commits / limits[0].1.unsynced,
            );
            println!(
                "ratios: durable fjall lifecycles / in-memory {:.2}; its {:.0} commits/s are {:.2} of fjall's unsynced limit; fjall / sled {:.2}",
                fjall / memory,
                fjall * COMMITS,
                fjall * COMMITS / limits[2].1.unsynced,
                fjall / durable,
            );
            for (name, l) in limits {
                println!(
                    "ratios: {name:<5} unsynced limit = {:.0} lifecycles/s of {COMMITS} commits (goal 10,000: {:.2} of it)",
                    l.unsynced / COMMITS,
                    l.unsynced / COMMITS / 10_000.0
                );
            }
        }
        if let Ok(engine) = which.parse::<Engine>() {
            // One engine alone, for profiling (`throughput` runs them side by side).
            let (total, conc) = if full { (40_000, 256) } else { (200, 16) };
            throughput(engine, &base.join("one-engine"), total, conc).await;
        }
        if which.is_empty() || which == "postgres" {
            // Side by side in one run: sled, then PostgreSQL with 1, 2 and 3 hosts.
            let (total, conc) = if full { (20_000, 256) } else { (200, 16) };
            match ebb_test_support::require::Need::Postgres.missing() {
                Some(why) => println!("postgres: skipped, {why}"),
                None => {
                    // fsync on: a commit is on disk when it returns, as sled's are.
                    let pg = ebb_test_support::Postgres::start_durable().unwrap();
                    let sled = throughput(Engine::Sled, &base.join("pg-side"), total, conc).await;
                    for hosts in 1..=3 {
                        let rate = throughput_postgres(&pg, hosts, total, conc).await;
                        println!(
                            "ratios: postgres with {hosts} host(s) / sled {:.2} (goal with one host: 5,000/s, {:.2} of it)",
                            rate / sled,
                            rate / 5_000.0
                        );
                    }
                }
            }
        }
        if let Some(hosts) = which
            .strip_prefix("postgres-")
            .and_then(|n| n.parse::<usize>().ok())
        {
            // PostgreSQL with that many hosts alone, for profiling
            // (`EBB_BENCH_CLIENTS`: concurrent clients instead of 256).
            let clients = std::env::var("EBB_BENCH_CLIENTS")
                .ok()
                .and_then(|n| n.parse().ok())
                .unwrap_or(256);
            let (total, conc) = if full { (20_000, clients) } else { (200, 16) };
            let pg = ebb_test_support::Postgres::start_durable().unwrap();
            throughput_postgres(&pg, hosts, total, conc).await;
            if let Ok(sql) = std::env::var("EBB_BENCH_PG_REPORT") {
                println!("{}", pg.psql(&sql).unwrap_or_default());
            }
        }
        if which.is_empty() || which == "million-postgres" {
            match ebb_test_support::require::Need::Postgres.missing() {
                Some(why) => println!("million-postgres: skipped, {why}"),
                None => {
                    let total = if full { 1_000_000 } else { 2_000 };
                    million_postgres(&base.join("million-postgres"), total).await;
                }
            }
        }
        // `million` runs with the others; `million-100k` (ten times as many
        // expiring in the same 10 s), `ten-million` (ten times as many active) and
        // the same on fjall only when named.
        for (name, kind, active, expiring, tiny) in [
            ("million", Engine::Sled, 1_000_000, 10_000, 100),
            ("million-100k", Engine::Sled, 1_000_000, 100_000, 1_000),
            ("ten-million", Engine::Sled, 10_000_000, 10_000, 100),
            ("million-fjall", Engine::Fjall, 1_000_000, 10_000, 100),
            ("ten-million-fjall", Engine::Fjall, 10_000_000, 10_000, 100),
        ] {
            if which == name || (which.is_empty() && name == "million") {
                let dir = base.join(name);
                let (total, expiring) = if full {
                    (active, expiring)
                } else {
                    (2_000, tiny)
                };
                million(kind, &dir, total, expiring).await;
                let _ = std::fs::remove_dir_all(&dir);
            }
        }
    });
    let _ = std::fs::remove_dir_all(&base);
}
