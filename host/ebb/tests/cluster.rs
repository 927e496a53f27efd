//! Several hosts on one PostgreSQL store: three real `ebb serve` processes with the
//! postgres connector, under a request/issue load with short TTLs, one of them
//! killed with SIGKILL at random moments and kept down a while. Every grant the
//! hosts acknowledged must survive and end verified, none may be issued twice, the
//! dead host's expiries must be revoked by the others within the lease plus a
//! second (no allowance for downtime: the survivors do the work), no role may be
//! left in PostgreSQL, and the one audit chain must verify from every host.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly"
)]

use ebb_test_support::{Postgres, served};
use rand::Rng;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const REQUESTER: &str = "cluster-test-requester-token";
const OPERATOR: &str = "cluster-test-operator-token";
/// The cluster's host key, shared by every host through the environment.
const HOST_KEY: &str = "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a";
/// The lease the hosts run with: a dead host's work waits at most this long.
const LEASE_MS: u64 = 2_000;

fn sha(token: &str) -> String {
    ebb::api::auth::hash_token(token)
}

struct Host {
    id: String,
    base: String,
    config: PathBuf,
    log: PathBuf,
    process: Option<Child>,
}

fn write_config(dir: &Path, pg: &Postgres, id: &str, port: u16) -> PathBuf {
    let config = format!(
        r#"
[server]
listen = "127.0.0.1:{port}"

[store]
kind = "postgres"
dsn-env = "EBB_TEST_STORE_DSN"
host-id = "{id}"
key-env = "EBB_TEST_HOST_KEY"
lease-ms = {LEASE_MS}
pool-size = 8

[[tokens]]
name = "agent"
sha256 = "{requester}"
roles = ["requester"]

[[tokens]]
name = "ops"
sha256 = "{operator}"
roles = ["operator"]

[connectors.pg]
component = "{component}"
config = {{ allowed-resources = "public.invoices" }}
sql.main = {{ dsn = "{dsn}", max-connections = 8 }}
lifecycle = {{ approval = "auto", retry-base-ms = 100, retry-max-ms = 1000, max-concurrent-calls = 8 }}
"#,
        requester = sha(REQUESTER),
        operator = sha(OPERATOR),
        component = ebb_test_plugins::POSTGRES,
        dsn = pg.admin_dsn(),
    );
    let path = dir.join(format!("{id}.toml"));
    std::fs::write(&path, config).unwrap();
    path
}

impl Host {
    fn start(&mut self, store_dsn: &str) {
        let child = ebb_test_support::serve_command(env!("CARGO_BIN_EXE_ebb"), &self.config)
            .env("EBB_TEST_STORE_DSN", store_dsn)
            .env("EBB_TEST_HOST_KEY", HOST_KEY)
            .env("EBB_LOG", "warn")
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.log)
                    .unwrap(),
            )
            .spawn()
            .unwrap();
        self.process = Some(child);
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.process.take() {
            // SIGKILL; a process already gone is fine.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A test that fails leaves no host behind.
impl Drop for Host {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn wait_healthy(client: &reqwest::Client, host: &Host) {
    for _ in 0..1000 {
        if let Ok(r) = client.get(format!("{}/readyz", host.base)).send().await
            && r.status().is_success()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let log = std::fs::read_to_string(&host.log).unwrap_or_default();
    panic!("host {} did not come up: {log}", host.id);
}

async fn operator_get(client: &reqwest::Client, url: &str) -> Value {
    served::get_json(client, url, OPERATOR).await
}

async fn all_events(client: &reqwest::Client, base: &str) -> Vec<Value> {
    let mut events = Vec::new();
    let mut after = 0;
    loop {
        let page = operator_get(client, &format!("{base}/v1/audit?after={after}&limit=1000")).await;
        let page = page.as_array().cloned().unwrap_or_default();
        let Some(last) = page.last() else {
            return events;
        };
        after = last["seq"].as_u64().unwrap();
        events.extend(page);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hosts_one_killed_at_random_moments_lose_nothing() {
    ebb_test_support::require!(Postgres);
    let pg = Postgres::start().unwrap();
    let store_dsn = pg.store_dsn().unwrap();
    let dir = std::env::temp_dir().join(format!("ebb-cluster-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut hosts: Vec<Host> = (0..3)
        .map(|i| {
            let id = format!("host-{i}");
            let port = ebb_test_support::free_port().unwrap();
            Host {
                config: write_config(&dir, &pg, &id, port),
                log: dir.join(format!("{id}.log")),
                base: format!("http://127.0.0.1:{port}"),
                id,
                process: None,
            }
        })
        .collect();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    for host in &mut hosts {
        host.start(&store_dsn);
    }
    for host in &hosts {
        wait_healthy(&client, host).await;
    }

    // The bases of the hosts serving now; the load goes round them.
    let live: Arc<Mutex<Vec<String>>> =
        Arc::new(Mutex::new(hosts.iter().map(|h| h.base.clone()).collect()));
    let stop = Arc::new(AtomicBool::new(false));
    let permission = json!({"action": "select", "resource": "public.invoices"});
    let workers = spawn_load(&client, &live, &stop, "pg", permission, Refusals::Forbidden);

    let mut rng = rand::rng();
    // (victim, killed at, serving again at), wall-clock ms.
    let mut kills: Vec<(String, u64, u64)> = Vec::new();
    for _round in 0..3 {
        tokio::time::sleep(Duration::from_millis(rng.random_range(800..2000))).await;
        let victim = rng.random_range(0..hosts.len());
        live.lock().unwrap().retain(|b| *b != hosts[victim].base);
        hosts[victim].kill();
        let killed = ebb_test_support::now_ms();
        // Down long enough for its grants to expire and be taken over.
        tokio::time::sleep(Duration::from_millis(rng.random_range(3000..5000))).await;
        hosts[victim].start(&store_dsn);
        wait_healthy(&client, &hosts[victim]).await;
        kills.push((hosts[victim].id.clone(), killed, ebb_test_support::now_ms()));
        live.lock().unwrap().push(hosts[victim].base.clone());
    }
    stop.store(true, Ordering::Relaxed);
    let mut acknowledged = Vec::new();
    for w in workers {
        acknowledged.extend(w.await.unwrap().0);
    }
    assert!(
        acknowledged.len() >= 30,
        "the test issued too few grants to mean anything: {}",
        acknowledged.len()
    );

    let base = hosts[0].base.clone();
    let grants = served::settled_grants(&client, &base, OPERATOR).await;
    served::assert_all_verified(&grants, &acknowledged);
    // Every expiry was revoked within the lease plus a second, down hosts or not:
    // the survivors took over the dead host's work.
    let mut late = Vec::new();
    let mut slowest = 0;
    for g in &grants {
        let (Some(not_after), Some(revoked_at)) =
            (g["grant"]["not_after"].as_u64(), g["revoked_at"].as_u64())
        else {
            continue;
        };
        if g["trigger"] == "expiry" {
            slowest = slowest.max(revoked_at.saturating_sub(not_after));
        }
        if g["trigger"] == "expiry" && revoked_at > not_after + LEASE_MS + 1_000 {
            late.push((g["grant"]["id"].clone(), revoked_at - not_after));
        }
    }
    assert!(
        late.is_empty(),
        "expiries revoked later than lease + 1 s (id, ms after not-after): {late:?}"
    );
    // None was issued twice: one transition into `active` per grant at most.
    let events = all_events(&client, &base).await;
    let mut issued: HashMap<&str, usize> = HashMap::new();
    for e in &events {
        if e["to"] == "active" {
            *issued.entry(e["grant_id"].as_str().unwrap()).or_default() += 1;
        }
    }
    let twice: Vec<_> = issued.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "grants issued more than once: {twice:?}");
    // Takeovers: a grant issued by a host that was down when it expired, revoked
    // by another. How long after the later of the kill and not-after?
    let host_of = |grant: &str, to: &str| {
        events
            .iter()
            .find(|e| e["grant_id"] == grant && e["to"] == to)
            .map(|e| {
                (
                    e["host"].as_str().unwrap_or("").to_owned(),
                    e["at"].as_u64().unwrap_or(0),
                )
            })
    };
    let mut takeovers = Vec::new();
    for g in grants.iter().filter(|g| g["trigger"] == "expiry") {
        let id = g["grant"]["id"].as_str().unwrap();
        let not_after = g["grant"]["not_after"].as_u64().unwrap();
        let (Some((issuer, _)), Some((revoker, revoking_at))) =
            (host_of(id, "active"), host_of(id, "revoking"))
        else {
            continue;
        };
        assert!(
            !issuer.is_empty(),
            "events on a shared store name their host"
        );
        for (victim, killed, back) in &kills {
            if issuer == *victim && revoker != *victim && not_after < *back && revoking_at > *killed
            {
                takeovers.push(revoking_at - not_after.max(*killed));
            }
        }
    }
    assert!(
        !takeovers.is_empty(),
        "no expiry of a dead host was taken over"
    );
    assert_eq!(
        pg.ebb_roles().unwrap(),
        Vec::<String>::new(),
        "a role outlived its grant"
    );
    // One chain, checked from every host.
    for host in &hosts {
        let verify = operator_get(&client, &format!("{}/v1/audit/verify", host.base)).await;
        assert_eq!(verify["problem"], Value::Null, "{}: {verify}", host.id);
        assert!(verify["events"].as_u64().unwrap() >= events.len() as u64);
    }
    let taken_over = grants
        .iter()
        .filter(|g| g["trigger"] == "compensation")
        .count();
    eprintln!(
        "cluster test: {} grants ({} acknowledged, {taken_over} compensated), {} audit events, slowest expiry revoked {slowest} ms after not-after; {} expiries of a dead host taken over, the slowest {} ms after the later of the kill and not-after",
        grants.len(),
        acknowledged.len(),
        events.len(),
        takeovers.len(),
        takeovers.iter().max().unwrap_or(&0),
    );
    for host in &mut hosts {
        host.kill();
    }
}

const POLICY_V1: &str = r#"
@id("noop-auto")
@approval("auto")
permit (principal, action == Ebb::Action::"use", resource == Ebb::Connector::"noop");
"#;

const POLICY_V2: &str = r#"
@id("noop-auto")
@approval("auto")
permit (principal, action == Ebb::Action::"use", resource == Ebb::Connector::"noop");

@id("noop-second-look")
@approvers("2")
permit (principal, action == Ebb::Action::"use", resource == Ebb::Connector::"noop")
when { context.ttl_seconds > 3600 };
"#;

/// What a load worker makes of a 5xx.
#[derive(Clone, Copy, PartialEq)]
enum Refusals {
    /// A host answers or dies; it never refuses.
    Forbidden,
    /// The store is failing over: refused requests are counted and tried again.
    Counted,
}

/// Four clients requesting grants of `connector` (TTL 1–2.5 s) round the hosts in
/// `live` until `stop`; each returns the grants acknowledged (201) and how many
/// requests were refused or cut off.
fn spawn_load(
    client: &reqwest::Client,
    live: &Arc<Mutex<Vec<String>>>,
    stop: &Arc<AtomicBool>,
    connector: &str,
    permission: Value,
    refusals: Refusals,
) -> Vec<tokio::task::JoinHandle<(Vec<String>, usize)>> {
    (0..4)
        .map(|w| {
            let (client, live, stop) = (client.clone(), live.clone(), stop.clone());
            let (connector, permission) = (connector.to_owned(), permission.clone());
            tokio::spawn(async move {
                let (mut acknowledged, mut refused) = (Vec::new(), 0);
                let mut n = w;
                while !stop.load(Ordering::Relaxed) {
                    let base = {
                        let live = live.lock().unwrap();
                        n += 1;
                        live[n % live.len()].clone()
                    };
                    let body = json!({
                        "connector": connector,
                        "permissions": [permission],
                        "ttl": format!("{}ms", rand::rng().random_range(1000..2500)),
                        "task": "cluster test",
                    });
                    match client
                        .post(format!("{base}/v1/grants"))
                        .bearer_auth(REQUESTER)
                        .json(&body)
                        .send()
                        .await
                    {
                        Ok(r) if r.status().as_u16() == 201 => {
                            if let Ok(v) = r.json::<Value>().await {
                                acknowledged
                                    .push(v["grant"]["grant"]["id"].as_str().unwrap().to_owned());
                            }
                            tokio::time::sleep(Duration::from_millis(40)).await;
                        }
                        Ok(r) if refusals == Refusals::Counted && r.status().is_server_error() => {
                            refused += 1;
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        Ok(r) => panic!(
                            "unexpected status {}: {}",
                            r.status(),
                            r.text().await.unwrap_or_default()
                        ),
                        // The host was killed mid-request, or the store is failing
                        // over: another request follows.
                        Err(_) => {
                            refused += 1;
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }
                (acknowledged, refused)
            })
        })
        .collect()
}

/// Two hosts with a plugins folder and a policy folder each, on one store.
fn write_sync_config(dir: &Path, id: &str, port: u16) -> PathBuf {
    let plugins = dir.join(id).join("plugins");
    let policies = dir.join(id).join("policies");
    std::fs::create_dir_all(&plugins).unwrap();
    std::fs::create_dir_all(&policies).unwrap();
    let config = format!(
        r#"
[server]
listen = "127.0.0.1:{port}"

[store]
kind = "postgres"
dsn-env = "EBB_TEST_STORE_DSN"
host-id = "{id}"
key-env = "EBB_TEST_HOST_KEY"

[[tokens]]
name = "ops"
sha256 = "{operator}"
roles = ["operator"]

[connectors.noop]
component = "{noop}"

[plugins]
dir = "{plugins}"

[policy]
path = "{policies}"
"#,
        operator = sha(OPERATOR),
        noop = ebb_test_plugins::NOOP,
        plugins = plugins.display(),
        policies = policies.display(),
    );
    let path = dir.join(format!("{id}.toml"));
    std::fs::write(&path, config).unwrap();
    path
}

/// Polls `url` as the operator until `check` holds (10 s at most).
async fn eventually(
    client: &reqwest::Client,
    url: &str,
    what: &str,
    check: impl Fn(u16, &Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = client.get(url).bearer_auth(OPERATOR).send().await.unwrap();
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        if check(status, &body) {
            return body;
        }
        assert!(Instant::now() < deadline, "{what}: still {status} {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connectors_and_policies_changed_on_one_host_are_served_by_the_other() {
    ebb_test_support::require!(Postgres);
    let pg = Postgres::start().unwrap();
    let store_dsn = pg.store_dsn().unwrap();
    let dir = std::env::temp_dir().join(format!("ebb-cluster-sync-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let noop = std::fs::read(ebb_test_plugins::NOOP).unwrap();
    let v2 = ebb_test_support::another_version(&noop, "2");
    let mut hosts: Vec<Host> = ["a", "b"]
        .iter()
        .map(|id| {
            let port = ebb_test_support::free_port().unwrap();
            Host {
                config: write_sync_config(&dir, id, port),
                log: dir.join(format!("{id}.log")),
                base: format!("http://127.0.0.1:{port}"),
                id: (*id).to_owned(),
                process: None,
            }
        })
        .collect();
    let (a_plugins, a_policies) = (dir.join("a/plugins"), dir.join("a/policies"));
    std::fs::write(a_policies.join("main.cedar"), POLICY_V1).unwrap();
    std::fs::write(dir.join("b/policies/main.cedar"), POLICY_V1).unwrap();
    let client = reqwest::Client::new();
    for host in &mut hosts {
        host.start(&store_dsn);
    }
    for host in &hosts {
        wait_healthy(&client, host).await;
    }
    let (a, b) = (hosts[0].base.clone(), hosts[1].base.clone());

    // A connector loaded through host a's API is served by host b.
    std::fs::write(a_plugins.join("svc-v1.wasm"), &noop).unwrap();
    std::fs::write(a_plugins.join("svc-v2.wasm"), &v2).unwrap();
    // The component files reach b's folder first (the sync's first rounds).
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let r = client
        .post(format!("{a}/v1/connectors/svc"))
        .bearer_auth(OPERATOR)
        .json(&json!({ "component": "svc-v1.wasm", "lifecycle": { "approval": "auto" } }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201, "{}", r.text().await.unwrap());
    let loaded = eventually(
        &client,
        &format!("{b}/v1/connectors/svc"),
        "svc on host b",
        |s, _| s == 200,
    )
    .await;
    let v1_digest = loaded["sha256"].as_str().unwrap().to_owned();

    // Reloaded on a with another version: b serves that version.
    let r = client
        .post(format!("{a}/v1/connectors/svc/reload"))
        .bearer_auth(OPERATOR)
        .json(&json!({ "component": "svc-v2.wasm" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap());
    let reloaded = eventually(
        &client,
        &format!("{b}/v1/connectors/svc"),
        "svc v2 on host b",
        |s, v| s == 200 && v["sha256"].as_str().is_some_and(|d| d != v1_digest),
    )
    .await;
    // Both hosts now say they serve the same: /v1/cluster agrees.
    let digest = reloaded["sha256"].as_str().unwrap().to_owned();
    let cluster = eventually(
        &client,
        &format!("{a}/v1/cluster"),
        "the hosts agree",
        |_, v| v["agree"] == true && v["hosts"].as_array().is_some_and(|h| h.len() == 2),
    )
    .await;
    for host in cluster["hosts"].as_array().unwrap() {
        assert_eq!(host["alive"], true, "{cluster}");
        assert_eq!(host["connectors"]["svc"], digest.as_str(), "{cluster}");
    }
    assert_eq!(cluster["store"], "shared");

    // A policy changed on a is in force on b.
    std::fs::write(a_policies.join("main.cedar"), POLICY_V2).unwrap();
    eventually(
        &client,
        &format!("{a}/v1/policies"),
        "the new policy on host a",
        |_, v| {
            v["ids"]
                .as_array()
                .is_some_and(|ids| ids.iter().any(|i| i == "noop-second-look"))
        },
    )
    .await;
    eventually(
        &client,
        &format!("{b}/v1/policies"),
        "the new policy on host b",
        |_, v| {
            v["ids"]
                .as_array()
                .is_some_and(|ids| ids.iter().any(|i| i == "noop-second-look"))
        },
    )
    .await;
    assert_eq!(
        std::fs::read_to_string(dir.join("b/policies/main.cedar")).unwrap(),
        POLICY_V2
    );

    // Unloaded on a: gone from b.
    let r = client
        .delete(format!("{a}/v1/connectors/svc"))
        .bearer_auth(OPERATOR)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    eventually(
        &client,
        &format!("{b}/v1/connectors/svc"),
        "svc gone from host b",
        |s, _| s == 404,
    )
    .await;

    // A host that stops heartbeating is reported, and the others no longer
    // count it when they compare.
    hosts[1].kill();
    tokio::time::sleep(Duration::from_millis(6_000)).await;
    let cluster = operator_get(&client, &format!("{a}/v1/cluster")).await;
    let b_status = cluster["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["id"] == "b")
        .cloned()
        .unwrap();
    assert_eq!(b_status["alive"], false, "{cluster}");
    hosts[0].kill();
}

/// Two hosts with the noop connector on a store whose DSN names a primary and its
/// synchronous standby (`target_session_attrs=read-write`).
fn write_failover_config(dir: &Path, id: &str, port: u16) -> PathBuf {
    let config = format!(
        r#"
[server]
listen = "127.0.0.1:{port}"

[store]
kind = "postgres"
dsn-env = "EBB_TEST_STORE_DSN"
host-id = "{id}"
key-env = "EBB_TEST_HOST_KEY"
lease-ms = {LEASE_MS}

[[tokens]]
name = "agent"
sha256 = "{requester}"
roles = ["requester"]

[[tokens]]
name = "ops"
sha256 = "{operator}"
roles = ["operator"]

[connectors.noop]
component = "{noop}"
lifecycle = {{ approval = "auto", retry-base-ms = 100, retry-max-ms = 1000 }}
"#,
        requester = sha(REQUESTER),
        operator = sha(OPERATOR),
        noop = ebb_test_plugins::NOOP,
    );
    let path = dir.join(format!("{id}.toml"));
    std::fs::write(&path, config).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_fails_over_to_its_standby_under_load_and_nothing_is_lost() {
    ebb_test_support::require!(Postgres);
    let primary = Postgres::start().unwrap();
    primary.store_dsn().unwrap();
    let standby = primary.standby().unwrap();
    let store_dsn = format!(
        "host=127.0.0.1,127.0.0.1 port={},{} dbname=ebbstore user=store_owner password=store-pw target_session_attrs=read-write",
        primary.port(),
        standby.port()
    );
    let dir = std::env::temp_dir().join(format!("ebb-failover-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut hosts: Vec<Host> = ["a", "b"]
        .iter()
        .map(|id| {
            let port = ebb_test_support::free_port().unwrap();
            Host {
                config: write_failover_config(&dir, id, port),
                log: dir.join(format!("{id}.log")),
                base: format!("http://127.0.0.1:{port}"),
                id: (*id).to_owned(),
                process: None,
            }
        })
        .collect();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    for host in &mut hosts {
        host.start(&store_dsn);
    }
    for host in &hosts {
        wait_healthy(&client, host).await;
    }
    let bases: Vec<String> = hosts.iter().map(|h| h.base.clone()).collect();
    let live = Arc::new(Mutex::new(bases.clone()));
    let stop = Arc::new(AtomicBool::new(false));
    let permission = json!({"action": "use", "resource": "x"});
    let workers = spawn_load(&client, &live, &stop, "noop", permission, Refusals::Counted);
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    // The primary dies; the standby is promoted.
    let failed_over_at = Instant::now();
    primary.stop().unwrap();
    standby.promote().unwrap();
    // The hosts find the new primary by themselves and take requests again.
    let deadline = Instant::now() + Duration::from_secs(30);
    'serving: loop {
        for base in &bases {
            let ready = client.get(format!("{base}/readyz")).send().await;
            if !ready.is_ok_and(|r| r.status().is_success()) {
                assert!(
                    Instant::now() < deadline,
                    "{base} did not find the new primary"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue 'serving;
            }
        }
        break;
    }
    let recovered_in = failed_over_at.elapsed();
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut acknowledged, mut refused) = (Vec::new(), 0);
    for w in workers {
        let (ok, no) = w.await.unwrap();
        acknowledged.extend(ok);
        refused += no;
    }
    assert!(
        acknowledged.len() >= 30,
        "too few grants to mean anything: {}",
        acknowledged.len()
    );
    // Everything ends on the promoted standby: acknowledged grants verified.
    let grants = served::settled_grants(&client, &bases[0], OPERATOR).await;
    served::assert_all_verified(&grants, &acknowledged);
    for base in &bases {
        let verify = operator_get(&client, &format!("{base}/v1/audit/verify")).await;
        assert_eq!(verify["problem"], Value::Null, "{base}: {verify}");
    }
    eprintln!(
        "failover test: {} acknowledged, {refused} refused during the failover, hosts serving again {:.1} s after the primary died",
        acknowledged.len(),
        recovered_in.as_secs_f64()
    );
    for host in &mut hosts {
        host.kill();
    }
}
