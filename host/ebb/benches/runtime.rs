//! Runtime benchmarks (see BENCHMARKS.md; run with `scripts/bench.sh`).
//!
//! - `call/noop_fresh_instance`: one `revoke` on the noop connector: a fresh
//!   `wasmtime::Store`, instantiation and the call, as every production call does.
//! - `postgres_lifecycle/paired`: issue → revoke → verify-revoked of one grant
//!   against a real PostgreSQL, through the postgres connector and through the same
//!   statements issued natively from Rust over the same kind of pool (the same
//!   SCRAM verifier, computed natively). Each measured round runs one of each, in
//!   alternating order, so noise hits both alike; criterion reports the wasm side
//!   and the bench prints both medians and their ratio (a `paired:` line on stderr).
//! - `connector_lifecycle/{mariadb,rabbitmq,ldap}`: one whole lifecycle of a grant
//!   through each connector against its real server: issue → verify-issued →
//!   revoke → verify-revoked with the credential.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly"
)]

use criterion::{Criterion, criterion_group, criterion_main};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use ebb_core::contract::{Grant, Permission, Subject, SubjectKind, Verdict};
use ebb_engine::config::{ConnectorConfig, RuntimeConfig};
use ebb_runtime::Runtime;
use ebb_test_support::Postgres;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The server's allocator, as in `ebb serve`.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn grant(id: String) -> Grant {
    Grant {
        id,
        subject: Subject {
            id: "spiffe://bench/agent".into(),
            kind: SubjectKind::Workload,
            claims: vec![],
        },
        permissions: vec![Permission {
            action: "select".into(),
            resource: "public.invoices".into(),
        }],
        not_after: 4_102_444_800_000,
        task: "bench".into(),
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn noop_call(c: &mut Criterion) {
    let rt = rt();
    let connector = rt.block_on(async {
        Runtime::new(&RuntimeConfig::default())
            .unwrap()
            .load("noop", &ConnectorConfig::new(ebb_test_plugins::NOOP).spec())
            .await
            .unwrap()
    });
    let g = grant("01JBENCH".into());
    c.bench_function("call/noop_fresh_instance", |b| {
        b.to_async(&rt)
            .iter(|| async { connector.revoke(&g, None, None).await.unwrap() })
    });
}

/// The postgres connector's lifecycle, written natively: the same statements in the
/// same order over a deadpool-postgres pool.
mod native {
    use super::*;

    async fn oid(pool: &Pool, role: &str) -> Option<u32> {
        let c = pool.get().await.unwrap();
        let s = c
            .prepare_cached("select oid from pg_roles where rolname = $1")
            .await
            .unwrap();
        c.query(&s, &[&role])
            .await
            .unwrap()
            .first()
            .map(|r| r.get(0))
    }

    async fn terminate(pool: &Pool, role: &str, oid: i64) {
        let c = pool.get().await.unwrap();
        let s = c
            .prepare_cached(
                "select pg_terminate_backend(pid, 5000) from pg_stat_activity \
                 where (usename = $1 or usesysid = $2) and pid <> pg_backend_pid()",
            )
            .await
            .unwrap();
        c.query(&s, &[&role, &u32::try_from(oid).unwrap_or(0)])
            .await
            .unwrap();
    }

    pub async fn lifecycle(pool: &Pool, id: &str) {
        let role = format!("ebb_{}", id.to_ascii_lowercase());
        // issue
        assert!(oid(pool, &role).await.is_none());
        // The connector's work: a random password, sent as its SCRAM verifier.
        let password = ebb_connector_sdk::random::password(40).unwrap();
        let verifier = ebb_connector_sdk::scram::verifier(&password).unwrap();
        let ddl = format!(
            "select pg_advisory_xact_lock(111550735239500);\ncreate role \"{role}\" login noinherit nosuperuser nocreatedb nocreaterole noreplication nobypassrls \
             connection limit 4 password '{verifier}' valid until '2100-01-01 00:00:00.000+00';\n\
             grant usage on schema \"public\" to \"{role}\";\n\
             grant select on table \"public\".\"invoices\" to \"{role}\";\n\
             comment on role \"{role}\" is 'ebb grant {id} for task: bench';"
        );
        pool.get().await.unwrap().batch_execute(&ddl).await.unwrap();
        let created = i64::from(oid(pool, &role).await.unwrap());
        // revoke
        let current = oid(pool, &role).await.map(i64::from).unwrap_or(created);
        pool.get()
            .await
            .unwrap()
            .batch_execute(&format!("alter role \"{role}\" nologin password null"))
            .await
            .unwrap();
        terminate(pool, &role, current).await;
        assert!(oid(pool, &role).await.is_some());
        pool.get()
            .await
            .unwrap()
            .batch_execute(&format!(
                "select pg_advisory_xact_lock(111550735239500);\ngrant \"{role}\" to current_user;\nreassign owned by \"{role}\" to current_user;\n\
                 drop owned by \"{role}\";\ndrop role \"{role}\";"
            ))
            .await
            .unwrap();
        terminate(pool, &role, current).await;
        // verify-revoked
        assert!(oid(pool, &role).await.is_none());
        let c = pool.get().await.unwrap();
        let s = c
            .prepare_cached("select pid from pg_stat_activity where usename = $1 or usesysid = $2")
            .await
            .unwrap();
        assert!(
            c.query(&s, &[&role, &u32::try_from(current).unwrap_or(0)])
                .await
                .unwrap()
                .is_empty()
        );
    }
}

/// How long `f` takes.
async fn timed(f: impl Future<Output = ()>) -> Duration {
    let started = std::time::Instant::now();
    f.await;
    started.elapsed()
}

fn postgres_lifecycle(c: &mut Criterion) {
    ebb_test_support::require!(Postgres);
    let rt = rt();
    let pg = Postgres::start().unwrap();
    let connector = rt.block_on(async {
        let config = ConnectorConfig::new(ebb_test_plugins::POSTGRES)
            .with_config("allowed-resources", "public.invoices")
            .with_sql("main", &pg.admin_dsn());
        Runtime::new(&RuntimeConfig::default())
            .unwrap()
            .load("pg", &config.spec())
            .await
            .unwrap()
    });
    let mut pg_config: tokio_postgres::Config = pg.admin_dsn().parse().unwrap();
    pg_config
        .application_name("ebb")
        .options("-c statement_timeout=5000");
    let pool = Pool::builder(Manager::from_config(
        pg_config,
        tokio_postgres::NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    ))
    .max_size(4)
    .build()
    .unwrap();
    let counter = AtomicU64::new(0);
    let wasm = || async {
        let g = grant(format!("w{}", counter.fetch_add(1, Ordering::Relaxed)));
        let issued = connector.issue(&g).await.unwrap();
        connector
            .revoke(&g, Some(&issued.handle), None)
            .await
            .unwrap();
        let verdict = connector
            .verify_revoked(&g, Some(&issued.handle), None)
            .await
            .unwrap();
        assert_eq!(verdict, Verdict::Revoked);
    };
    let native = || async {
        let id = format!("n{}", counter.fetch_add(1, Ordering::Relaxed));
        native::lifecycle(&pool, &id).await;
    };
    // Every round runs both, in alternating order; criterion times the wasm side and
    // the pairs give the ratio.
    let pairs = std::sync::Mutex::new(Vec::<(Duration, Duration)>::new());
    let mut group = c.benchmark_group("postgres_lifecycle");
    group
        .sample_size(30)
        .measurement_time(Duration::from_secs(20));
    group.bench_function("paired", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let (wasm, native, pairs) = (&wasm, &native, &pairs);
            async move {
                let mut total = Duration::ZERO;
                for i in 0..iters {
                    let (w, n) = if i % 2 == 0 {
                        let w = timed(wasm()).await;
                        (w, timed(native()).await)
                    } else {
                        let n = timed(native()).await;
                        (timed(wasm()).await, n)
                    };
                    total += w;
                    pairs.lock().unwrap().push((w, n));
                }
                total
            }
        })
    });
    group.finish();
    let pairs = pairs.into_inner().unwrap();
    if pairs.is_empty() {
        return; // filtered out
    }
    let median = |mut xs: Vec<f64>| {
        xs.sort_by(f64::total_cmp);
        xs[xs.len() / 2]
    };
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let w = median(pairs.iter().map(|p| ms(p.0)).collect());
    let n = median(pairs.iter().map(|p| ms(p.1)).collect());
    let r = median(pairs.iter().map(|p| ms(p.0) / ms(p.1)).collect());
    eprintln!(
        "paired: postgres_lifecycle over {} rounds: wasm {w:.3} ms, native {n:.3} ms (medians), \
         ratio of medians {:.3}, median of per-round ratios {r:.3}",
        pairs.len(),
        w / n
    );
}

/// Per-call overhead by language: the same Redis connector in Rust, Python and
/// JavaScript (all precompiled by the runtime at load), timing `describe` (a fresh
/// instance and a call, no downstream work) and `revoke` (one `ACL DELUSER`
/// through the host's Redis capability against a real server).
fn languages(c: &mut Criterion) {
    ebb_test_support::require!(Redis, PyConnector, JsConnector);
    let rt = rt();
    let server = ebb_test_support::Redis::start().unwrap();
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let components = [
        ("rust", ebb_test_plugins::REDIS.to_owned()),
        ("python", format!("{root}/target/py-plugins/redis_py.wasm")),
        (
            "javascript",
            format!("{root}/target/js-plugins/redis_js.wasm"),
        ),
    ];
    let mut group = c.benchmark_group("call/redis_connector");
    for (language, path) in components {
        assert!(
            std::path::Path::new(&path).exists(),
            "{path} is missing: scripts/bench.sh builds it"
        );
        let connector = rt.block_on(async {
            Runtime::new(&RuntimeConfig::default())
                .unwrap()
                .load(
                    language,
                    &ConnectorConfig::new(&path)
                        .with_config("allowed-keys", "cache:*")
                        .with_redis("main", &server.admin_url())
                        .with_limits(ebb_engine::config::LimitsConfig {
                            memory_mib: 128,
                            ..Default::default()
                        })
                        .spec(),
                )
                .await
                .unwrap()
        });
        let g = grant("01JBENCHLANG".into());
        group.bench_function(format!("{language}/describe"), |b| {
            b.to_async(&rt)
                .iter(|| async { connector.describe().await.unwrap() })
        });
        group.bench_function(format!("{language}/revoke"), |b| {
            b.to_async(&rt)
                .iter(|| async { connector.revoke(&g, None, None).await.unwrap() })
        });
    }
    group.finish();
}

/// One lifecycle per connector, each against its real server (started here).
fn connector_lifecycles(c: &mut Criterion) {
    ebb_test_support::require!(MariaDb, RabbitMq, Ldap);
    let rt = rt();
    let mariadb = ebb_test_support::MariaDb::start().unwrap();
    let rabbit = rt.block_on(ebb_test_support::RabbitMq::start()).unwrap();
    let directory = ebb_test_support::Ldap::start().unwrap();
    let base = ebb_test_support::ldap::BASE;
    let db_admins = format!("cn=db-admins,ou=groups,{base}");
    let runtime = Runtime::new(&RuntimeConfig::default()).unwrap();
    let connectors = [
        (
            "mariadb",
            ConnectorConfig::new(ebb_test_plugins::MARIADB)
                .with_config("allowed-resources", "shop.orders")
                .with_mysql("main", &mariadb.admin_url()),
            Permission {
                action: "select".into(),
                resource: "shop.orders".into(),
            },
        ),
        (
            "rabbitmq",
            ConnectorConfig::new(ebb_test_plugins::RABBITMQ)
                .with_config("api", &rabbit.api_origin())
                .with_config("allowed-vhosts", ebb_test_support::rabbitmq::VHOST)
                .with_config("allowed-names", "orders.*")
                .with_http_origin(&rabbit.api_origin(), true)
                .with_http_basic_auth(
                    &rabbit.api_origin(),
                    ebb_test_support::rabbitmq::ADMIN.0,
                    ebb_test_support::rabbitmq::ADMIN.1,
                ),
            Permission {
                action: "read".into(),
                resource: "ebb/orders.in".into(),
            },
        ),
        (
            "ldap",
            ConnectorConfig::new(ebb_test_plugins::LDAP)
                .with_ldap(
                    "main",
                    &directory.url(),
                    ebb_test_support::ldap::ADMIN.0,
                    ebb_test_support::ldap::ADMIN.1,
                )
                .with_config("groups-base", &format!("ou=groups,{base}"))
                .with_config("allowed-groups", &db_admins)
                .with_config(
                    "account:spiffe://bench/agent",
                    &format!("uid=svc-report,ou=services,{base}"),
                ),
            Permission {
                action: "member".into(),
                resource: db_admins.clone(),
            },
        ),
    ];
    let mut group = c.benchmark_group("connector_lifecycle");
    group.sample_size(20);
    for (name, config, permission) in connectors {
        let connector = rt.block_on(runtime.load(name, &config.spec())).unwrap();
        let n = AtomicU64::new(0);
        group.bench_function(name, |b| {
            b.to_async(&rt).iter(|| async {
                let mut g = grant(format!("01JBENCH{}", n.fetch_add(1, Ordering::Relaxed)));
                g.permissions = vec![permission.clone()];
                let issued = connector.issue(&g).await.unwrap();
                connector
                    .verify_issued(&g, &issued.handle, &issued.credential)
                    .await
                    .unwrap();
                connector
                    .revoke(&g, Some(&issued.handle), Some(&issued.credential))
                    .await
                    .unwrap();
                let verdict = connector
                    .verify_revoked(&g, Some(&issued.handle), Some(&issued.credential))
                    .await
                    .unwrap();
                assert_eq!(verdict, Verdict::Revoked);
            })
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    noop_call,
    postgres_lifecycle,
    languages,
    connector_lifecycles
);
criterion_main!(benches);
