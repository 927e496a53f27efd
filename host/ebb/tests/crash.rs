//! Crash test: a real `ebb serve` process with the postgres connector, against a
//! real PostgreSQL, killed with SIGKILL at random moments while clients run
//! lifecycles with short TTLs, then restarted. In the end every grant must be
//! verified (or was never issued), no `ebb_*` role may be left in PostgreSQL, and no
//! grant may have outlived its TTL by more than the time the host was down plus one
//! second.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly"
)]

use ebb_test_support::{KillOnDrop, Postgres, served};
use rand::Rng;
use serde_json::{Value, json};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const REQUESTER: &str = "crash-test-requester-token";
const OPERATOR: &str = "crash-test-operator-token";

fn sha(token: &str) -> String {
    ebb::api::auth::hash_token(token)
}

fn write_config(dir: &Path, pg: &Postgres, port: u16, engine: &str) -> std::path::PathBuf {
    let config = format!(
        r#"
[server]
listen = "127.0.0.1:{port}"

[store]
path = "data"
engine = "{engine}"
key-file = "host.key"

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
sql.main = {{ dsn = "{dsn}", max-connections = 16 }}
lifecycle = {{ approval = "auto", retry-base-ms = 100, retry-max-ms = 1000, max-concurrent-calls = 16 }}
"#,
        requester = sha(REQUESTER),
        operator = sha(OPERATOR),
        component = ebb_test_plugins::POSTGRES,
        dsn = pg.admin_dsn(),
    );
    let path = dir.join("ebb.toml");
    std::fs::write(&path, config).unwrap();
    path
}

fn start(config: &Path, log: &Path) -> KillOnDrop {
    start_with(config, log, &[])
}

/// `ebb serve` with `env` added, its stderr appended to `log`.
fn start_with(config: &Path, log: &Path, env: &[(&str, &str)]) -> KillOnDrop {
    let child = ebb_test_support::serve_command(env!("CARGO_BIN_EXE_ebb"), config)
        .envs(env.iter().copied())
        .env("EBB_LOG", "warn")
        .stderr(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .unwrap(),
        )
        .spawn()
        .unwrap();
    KillOnDrop(child)
}

async fn wait_healthy(client: &reqwest::Client, base: &str) {
    for _ in 0..600 {
        if client.get(format!("{base}/healthz")).send().await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the host did not come up");
}

/// `GET url` as the operator, as JSON.
async fn operator_get(client: &reqwest::Client, url: &str) -> Value {
    served::get_json(client, url, OPERATOR).await
}

/// The kill tests measure how late revocations come, with a host, a database and
/// a load on two cores: they run one at a time, not beside each other.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_moments_loses_nothing() {
    ebb_test_support::require!(Postgres);
    kill_9_at_random_moments("sled").await;
}

/// The same on the fjall engine: its journal, made durable by the store's group
/// commit, must keep every acknowledged grant and the chain through `kill -9`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_moments_loses_nothing_on_fjall() {
    ebb_test_support::require!(Postgres);
    kill_9_at_random_moments("fjall").await;
}

async fn kill_9_at_random_moments(engine: &str) {
    let _alone = ONE_AT_A_TIME.lock().await;
    let pg = Postgres::start().unwrap();
    let dir = std::env::temp_dir().join(format!("ebb-crash-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let port = ebb_test_support::free_port().unwrap();
    let config = write_config(&dir, &pg, port, engine);
    let log = dir.join("host.log");
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut rng = rand::rng();
    // (killed at, serving again at), wall-clock ms.
    let mut downtimes: Vec<(u64, u64)> = Vec::new();
    // Every grant the host acknowledged (answered 201 with its credential).
    let mut acknowledged: Vec<String> = Vec::new();

    for _round in 0..5 {
        let mut host = start(&config, &log);
        wait_healthy(&client, &base).await;
        if let Some(last) = downtimes.last_mut() {
            last.1 = ebb_test_support::now_ms();
        }
        let stop = Arc::new(AtomicBool::new(false));
        let mut workers = Vec::new();
        for _ in 0..4 {
            let (client, base, stop) = (client.clone(), base.clone(), stop.clone());
            workers.push(tokio::spawn(async move {
                let mut ok: Vec<String> = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let ttl = format!("{}ms", rand::rng().random_range(1000..3000));
                    let body = json!({
                        "connector": "pg",
                        "permissions": [{"action": "select", "resource": "public.invoices"}],
                        "ttl": ttl,
                        "task": "crash test",
                    });
                    match client
                        .post(format!("{base}/v1/grants"))
                        .bearer_auth(REQUESTER)
                        .json(&body)
                        .send()
                        .await
                    {
                        Ok(r) if r.status().as_u16() == 201 => {
                            // An answer cut off by the kill was not acknowledged.
                            let Ok(v) = r.json::<Value>().await else {
                                break;
                            };
                            ok.push(v["grant"]["grant"]["id"].as_str().unwrap().to_owned());
                            // A busy but plausible client, not a flood: the host shares
                            // two cores with PostgreSQL and this test.
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        Ok(r) => panic!(
                            "unexpected status {}: {}",
                            r.status(),
                            r.text().await.unwrap_or_default()
                        ),
                        // The host was killed mid-request.
                        Err(_) => break,
                    }
                }
                ok
            }));
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(500..2500))).await;
        host.kill().unwrap(); // SIGKILL
        let killed = ebb_test_support::now_ms();
        host.wait().unwrap();
        stop.store(true, Ordering::Relaxed);
        for w in workers {
            acknowledged.extend(w.await.unwrap());
        }
        downtimes.push((killed, u64::MAX));
        tokio::time::sleep(Duration::from_millis(rng.random_range(200..1500))).await;
    }

    // The last restart: recover and finish everything.
    let mut host = start(&config, &log);
    wait_healthy(&client, &base).await;
    if let Some(last) = downtimes.last_mut() {
        last.1 = ebb_test_support::now_ms();
    }
    let grants = served::settled_grants(&client, &base, OPERATOR).await;
    assert!(
        acknowledged.len() >= 20,
        "the test issued too few grants to mean anything: {}",
        acknowledged.len()
    );
    // Every acknowledged grant survived, by id, and ended verified.
    served::assert_all_verified(&grants, &acknowledged);

    // Nothing is left downstream.
    assert_eq!(
        pg.ebb_roles().unwrap(),
        Vec::<String>::new(),
        "a role outlived its grant"
    );
    let sessions = pg
        .psql("select count(*) from pg_stat_activity where usename like 'ebb\\_%' and usename <> 'ebb_admin'")
        .unwrap();
    assert_eq!(sessions, "0");

    // No grant outlived its TTL by more than the downtime it fell into plus 1 s.
    let mut late = Vec::new();
    let mut worst = 0;
    for g in &grants {
        let (Some(not_after), Some(revoked_at)) =
            (g["grant"]["not_after"].as_u64(), g["revoked_at"].as_u64())
        else {
            continue;
        };
        if revoked_at <= not_after {
            continue;
        }
        // The time the host was down while this grant was overdue does not count.
        let down: u64 = downtimes
            .iter()
            .map(|(killed, back)| {
                let from = not_after.max(*killed);
                let to = revoked_at.min(*back);
                to.saturating_sub(from)
            })
            .sum();
        worst = worst.max((revoked_at - not_after).saturating_sub(down));
        if revoked_at - not_after > down + 1000 {
            let started = g["revoke_started_at"].as_u64().unwrap_or(0);
            late.push((
                g["grant"]["id"].clone(),
                revoked_at - not_after,
                started.saturating_sub(not_after),
                down,
            ));
        }
    }
    println!(
        "slowest revocation, downtime not counted: {worst} ms after not-after (limit 1000 ms)"
    );
    assert!(
        late.is_empty(),
        "grants revoked too late (id, revoked ms after not-after, started ms after not-after, downtime while overdue ms): {late:?}"
    );

    let verify = operator_get(&client, &format!("{base}/v1/audit/verify")).await;
    assert_eq!(verify["problem"], Value::Null, "{verify}");
    let recovered = grants
        .iter()
        .filter(|g| g["trigger"] == "compensation")
        .count();
    eprintln!(
        "crash test on {engine}: {} grants ({} issued to clients, {recovered} compensated after a crash), {} kills",
        grants.len(),
        acknowledged.len(),
        downtimes.len()
    );
    host.kill().unwrap();
    host.wait().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue 12: `kill -9` while OAuth tokens are being handed out (a connector that
/// can revoke a token only by its value). Every token a client got must be
/// revocable after the restart: the client ends its grants, and introspection at
/// the real oidc-provider says every one of those tokens is inactive — long before
/// the tokens' own expiry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_never_leaves_a_handed_out_token_unrevocable() {
    ebb_test_support::require!(Oidc);
    let _alone = ONE_AT_A_TIME.lock().await;
    let server = ebb_test_support::Oidc::start(600).unwrap();
    let dir = std::env::temp_dir().join(format!("ebb-crash-oauth-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let port = ebb_test_support::free_port().unwrap();
    let origin = server.origin();
    std::fs::write(
        dir.join("ebb.toml"),
        format!(
            r#"
[server]
listen = "127.0.0.1:{port}"
[store]
path = "data"
key-file = "host.key"
[[tokens]]
name = "agent"
sha256 = "{requester}"
roles = ["requester"]
[[tokens]]
name = "ops"
sha256 = "{operator}"
roles = ["operator"]
[connectors.oauth]
component = "{component}"
config = {{ token-endpoint = "{origin}/token", revocation-endpoint = "{origin}/token/revocation", introspection-endpoint = "{origin}/token/introspection", allowed-scopes = "invoices:read" }}
http = {{ allow = ["{origin}"], allow-private = ["{origin}"], basic-auth = {{ "{origin}" = {{ user = "ebb", password-env = "EBB_CRASH_OIDC_SECRET" }} }} }}
lifecycle = {{ approval = "auto", retry-base-ms = 100, retry-max-ms = 1000 }}
"#,
            requester = sha(REQUESTER),
            operator = sha(OPERATOR),
            component = ebb_test_plugins::OAUTH2,
        ),
    )
    .unwrap();
    let config = dir.join("ebb.toml");
    let log = dir.join("host.log");
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let start_host = || {
        start_with(
            &config,
            &log,
            &[(
                "EBB_CRASH_OIDC_SECRET",
                ebb_test_support::oidc::CLIENT_SECRET,
            )],
        )
    };
    let mut rng = rand::rng();
    // (grant id, access token) of every grant answered with its credential.
    let mut handed_out: Vec<(String, String)> = Vec::new();
    for _round in 0..4 {
        let mut host = start_host();
        wait_healthy(&client, &base).await;
        let stop = Arc::new(AtomicBool::new(false));
        let mut workers = Vec::new();
        for _ in 0..3 {
            let (client, base, stop) = (client.clone(), base.clone(), stop.clone());
            workers.push(tokio::spawn(async move {
                let mut got = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let body = json!({
                        "connector": "oauth",
                        "permissions": [{"action": "scope", "resource": "invoices:read"}],
                        "ttl": "10m",
                        "task": "crash test",
                    });
                    let Ok(r) = client
                        .post(format!("{base}/v1/grants"))
                        .bearer_auth(REQUESTER)
                        .json(&body)
                        .send()
                        .await
                    else {
                        break;
                    };
                    assert_eq!(r.status().as_u16(), 201, "unexpected answer");
                    let Ok(v) = r.json::<Value>().await else {
                        break;
                    };
                    got.push((
                        v["grant"]["grant"]["id"].as_str().unwrap().to_owned(),
                        v["credential"]["access_token"].as_str().unwrap().to_owned(),
                    ));
                }
                got
            }));
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..1500))).await;
        host.kill().unwrap(); // SIGKILL
        host.wait().unwrap();
        stop.store(true, Ordering::Relaxed);
        for w in workers {
            handed_out.extend(w.await.unwrap());
        }
    }
    assert!(
        handed_out.len() >= 10,
        "too few tokens handed out to mean anything: {}",
        handed_out.len()
    );
    // The last restart: the client ends every grant it got; each must end verified.
    let mut host = start_host();
    wait_healthy(&client, &base).await;
    for (id, _) in &handed_out {
        let r = client
            .post(format!("{base}/v1/grants/{id}/complete"))
            .bearer_auth(REQUESTER)
            .send()
            .await
            .unwrap();
        assert!(
            r.status().is_success(),
            "grant {id} could not be ended: {}",
            r.text().await.unwrap_or_default()
        );
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let grants = served::all_grants(&client, &base, OPERATOR).await;
        let open: Vec<&Value> = grants
            .iter()
            .filter(|g| {
                handed_out
                    .iter()
                    .any(|(id, _)| g["grant"]["id"] == id.as_str())
                    && g["state"] != "verified"
            })
            .collect();
        if open.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "grants still open after 60 s: {open:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Judged at the authorization server, not by Ebb: no handed-out token is active.
    for (id, token) in &handed_out {
        let answer = server.introspect(token).await.unwrap();
        assert_eq!(
            answer["active"], false,
            "the token of grant {id} is still active after its grant ended"
        );
    }
    eprintln!(
        "oauth crash test: {} tokens handed out across 4 kills, all revoked",
        handed_out.len()
    );
    host.kill().unwrap();
    host.wait().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs `ebb serve --config config`, which must refuse to start; what it said.
fn refused_to_start(config: &Path) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ebb"))
        .args(["serve", "--config"])
        .arg(config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{stderr}");
    stderr
}

/// Issue 13: a store edited while the host was stopped — here a grant moved from
/// `active` to `verified`, which would end its revocation unnoticed — is caught.
/// With `check-at-start = "before-serving"` the host refuses to start, with a clear
/// message. By default (issue 16: records checked while serving) it serves, refuses
/// to read or act on that record, and the check of every record, run in the
/// background, records `store.check-failed`. `--accept-unverified-store` serves it
/// anyway and the audit log records the override and what failed.
/// A stopped host's folder `dir`: its key (`host.key`) and its store (`data`)
/// holding one grant, in `state`, for each of `ids`.
async fn store_with_grants(dir: &Path, ids: &[String], state: ebb_core::state::GrantState) {
    use ebb_core::store::{Commit, GrantRecord, Sealed};
    std::fs::create_dir_all(dir).unwrap();
    let key = ebb_core::seal::HostKey::load_or_create(&dir.join("host.key")).unwrap();
    let store = ebb_store_kv::KvStore::open(&dir.join("data"), key.derive("audit-chain")).unwrap();
    for id in ids {
        let grant = ebb_core::contract::Grant {
            id: id.clone(),
            subject: ebb_core::contract::Subject {
                id: "spiffe://test/agent".into(),
                kind: ebb_core::contract::SubjectKind::Workload,
                claims: vec![],
            },
            permissions: vec![],
            not_after: ebb_test_support::now_ms() + 3_600_000,
            task: "t".into(),
        };
        let mut record = GrantRecord::requested(grant, "gone".into(), 1, 1, "agent".into(), None);
        record.state = state;
        store
            .commit(Commit {
                record,
                sealed: Sealed::Keep,
                event: ebb_core::audit::NewEvent::new("grant.transition", "test").grant(id),
                lease_until: None,
                earlier: Vec::new(),
            })
            .unwrap();
    }
    store.sync().await.unwrap();
}

/// Writes `dir/ebb.toml` for the host folder of [`store_with_grants`]: listening
/// on `port`, `store_lines` added to `[store]`, the operator's token.
fn host_config(dir: &Path, port: u16, store_lines: &str) {
    std::fs::write(
        dir.join("ebb.toml"),
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n[store]\npath = \"{}\"\nkey-file = \"{}\"\n{store_lines}\n\
             [[tokens]]\nname = \"ops\"\nsha256 = \"{}\"\nroles = [\"operator\", \"auditor\"]\n",
            dir.join("data").display(),
            dir.join("host.key").display(),
            ebb::api::auth::hash_token(OPERATOR),
        ),
    )
    .unwrap();
}

/// Waits up to 10 s for the host at `base` to write an audit event of `kind`
/// (after event `after`), and returns it.
async fn audit_event(client: &reqwest::Client, base: &str, after: u64, kind: &str) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let url = format!("{base}/v1/audit?after={after}&limit=1000");
        let events = operator_get(client, &url).await;
        if let Some(e) = events
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["kind"] == kind)
        {
            return e.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {kind} event in {events}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The host's Prometheus exposition.
async fn metrics_text(client: &reqwest::Client, base: &str) -> String {
    client
        .get(format!("{base}/metrics"))
        .bearer_auth(OPERATOR)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// `ebb serve --config config` with `args`, listening on `port` within 10 s.
fn serving(config: &Path, port: u16, args: &[&str]) -> KillOnDrop {
    let host = KillOnDrop(
        ebb_test_support::serve_command(env!("CARGO_BIN_EXE_ebb"), config)
            .args(args)
            .spawn()
            .unwrap(),
    );
    assert!(ebb_test_support::wait_for_port(
        port,
        Duration::from_secs(10)
    ));
    host
}

#[tokio::test]
async fn a_store_edited_while_stopped_is_refused_at_start() {
    let dir = std::env::temp_dir().join(format!("ebb-tampered-{}", rand::random::<u64>()));
    store_with_grants(
        &dir,
        &["01JTAMPERED".to_owned()],
        ebb_core::state::GrantState::Active,
    )
    .await;
    // Stopped: edit the record directly in sled.
    {
        // sled's background threads may hold the just-closed store's lock a moment.
        let db = (0..100)
            .find_map(|_| {
                sled::open(dir.join("data"))
                    .inspect_err(|_| std::thread::sleep(Duration::from_millis(20)))
                    .ok()
            })
            .expect("the stopped store's sled lock was never released");
        let mut record =
            ebb_core::encoding::decode_record(&db.get(b"g/01JTAMPERED").unwrap().unwrap()).unwrap();
        record.state = ebb_core::state::GrantState::Verified;
        db.insert(
            b"g/01JTAMPERED",
            ebb_core::encoding::encode_record(&record).unwrap(),
        )
        .unwrap();
        db.flush().unwrap();
    }
    let port = ebb_test_support::free_port().unwrap();
    host_config(&dir, port, "check-at-start = \"before-serving\"");
    let stderr = refused_to_start(&dir.join("ebb.toml"));
    assert!(
        stderr.contains("failed its check at start")
            && stderr.contains("grant record 01JTAMPERED was altered")
            && stderr.contains("--accept-unverified-store"),
        "{stderr}"
    );

    // Records checked while serving (the default): it serves, but not that record.
    host_config(&dir, port, "");
    // No pooled connection outlives the host it went to: two hosts in turn here.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    {
        let mut host = serving(&dir.join("ebb.toml"), port, &[]);
        let read = client
            .get(format!("{base}/v1/grants/01JTAMPERED"))
            .bearer_auth(OPERATOR)
            .send()
            .await
            .unwrap();
        assert_eq!(read.status(), reqwest::StatusCode::INTERNAL_SERVER_ERROR);
        let body: Value = read.json().await.unwrap();
        assert_eq!(body["error"]["code"], "internal", "{body}");
        let failed = audit_event(&client, &base, 0, "store.check-failed").await;
        assert!(
            failed["detail"]["problem"]
                .as_str()
                .unwrap()
                .contains("grant record 01JTAMPERED was altered"),
            "{failed}"
        );
        let metrics = metrics_text(&client, &base).await;
        assert!(metrics.contains("ebb_store_records_checked 0"), "{metrics}");
        host.kill().unwrap();
        host.wait().unwrap();
    }

    let mut host = serving(&dir.join("ebb.toml"), port, &["--accept-unverified-store"]);
    let overridden = audit_event(&client, &base, 0, "store.check-overridden").await;
    assert!(
        overridden["detail"]["problem"]
            .as_str()
            .unwrap()
            .contains("01JTAMPERED"),
        "{overridden}"
    );
    let read = operator_get(&client, &format!("{base}/v1/grants/01JTAMPERED")).await;
    assert_eq!(read["state"], "verified", "taken as it is: {read}");
    host.kill().unwrap();
    host.wait().unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

/// Issue 16: an intact store with grants serves at once and passes its check
/// while serving: its grants are read meanwhile, `ebb_store_records_checked`
/// becomes 1, and nothing is reported.
#[tokio::test]
async fn an_intact_store_passes_its_check_while_serving() {
    let dir = std::env::temp_dir().join(format!("ebb-intact-{}", rand::random::<u64>()));
    let ids: Vec<String> = (0..500).map(|i| format!("01JINTACT{i:05}")).collect();
    store_with_grants(&dir, &ids, ebb_core::state::GrantState::Requested).await;
    let port = ebb_test_support::free_port().unwrap();
    host_config(&dir, port, "");
    let mut host = serving(&dir.join("ebb.toml"), port, &[]);
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let read = operator_get(&client, &format!("{base}/v1/grants/01JINTACT00042")).await;
    assert_eq!(read["state"], "requested", "{read}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = metrics_text(&client, &base).await;
        if metrics.contains("ebb_store_records_checked 1") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the check never passed: {metrics}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The 500 grants' events are 1–500: what the host wrote follows them.
    let events = operator_get(&client, &format!("{base}/v1/audit?after=500&limit=1000")).await;
    assert!(
        !events
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "store.check-failed"),
        "an intact store is not reported"
    );
    host.kill().unwrap();
    host.wait().unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

/// A store folder written on one engine, started with the other named in the
/// configuration: `ebb serve` refuses to start and says which engine holds it —
/// it never opens an empty store beside the real one.
#[tokio::test]
async fn a_store_of_the_other_engine_is_refused_at_start() {
    let dir = std::env::temp_dir().join(format!("ebb-engines-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = ebb_core::seal::HostKey::load_or_create(&dir.join("host.key")).unwrap();
    drop(
        ebb_store_kv::KvStore::open_with(
            ebb_store_kv::Engine::Sled,
            &dir.join("data"),
            key.derive("audit-chain"),
        )
        .unwrap(),
    );
    let port = ebb_test_support::free_port().unwrap();
    std::fs::write(
        dir.join("ebb.toml"),
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n[store]\npath = \"{}\"\nengine = \"fjall\"\nkey-file = \"{}\"\n",
            dir.join("data").display(),
            dir.join("host.key").display(),
        ),
    )
    .unwrap();
    let stderr = refused_to_start(&dir.join("ebb.toml"));
    assert!(
        stderr.contains("holds a sled store, not a fjall one")
            && stderr.contains("set the store's engine to `sled`"),
        "{stderr}"
    );
    assert!(
        !dir.join("data").join("fjall").exists(),
        "nothing of the other engine was created"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
