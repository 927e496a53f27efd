//! Operators loading, upgrading and unloading connectors on a running host, through
//! the admin API's router and the watched plugins folder.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly"
)]

use axum::Router;
use axum::http::StatusCode;
use ebb::api::{self, AppState, Tokens};
use ebb_core::seal::{HostKey, Sealer};
use ebb_core::store::{AuditQuery, Store};
use ebb_engine::config::{ConnectorConfig, PluginsConfig, Role, RuntimeConfig, TokenConfig};
use ebb_engine::lifecycle::{Clock, EngineConfig, Lifecycle};
use ebb_engine::loader::Loader;
use ebb_engine::registry::Registry;
use ebb_runtime::{Digest, Runtime};
use ebb_store_kv::KvStore;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Host {
    app: Router,
    store: Arc<dyn Store>,
    dir: PathBuf,
    v1: String,
    v2: String,
    /// The folder of it all, deleted when the host is dropped (after the store).
    _root: ebb_test_support::TempDir,
}

fn temp_dir(tag: &str) -> ebb_test_support::TempDir {
    ebb_test_support::TempDir::new(&format!("hotload-{tag}")).unwrap()
}

/// A host with a plugins folder holding two versions of the noop connector
/// (`noop-v1.wasm`, `noop-v2.wasm`), and the configured instance `fixed`.
async fn start_host(tag: &str, watch: bool, allowed: &[&str]) -> Host {
    let dir = temp_dir(tag);
    let plugins = dir.join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    let noop = std::fs::read(ebb_test_plugins::NOOP).unwrap();
    let v2 = ebb_test_support::another_version(&noop, "2");
    std::fs::write(plugins.join("noop-v1.wasm"), &noop).unwrap();
    std::fs::write(plugins.join("noop-v2.wasm"), &v2).unwrap();
    let registry = Arc::new(Registry::new(
        Runtime::new(&RuntimeConfig::default()).unwrap(),
    ));
    let store = KvStore::open(&dir.join("data"), [4; 32]).unwrap();
    let lifecycle = Lifecycle::new(
        store.clone(),
        Sealer::new(&HostKey::from_hex(&"44".repeat(32)).unwrap()),
        registry,
        Clock::system(),
        EngineConfig::default(),
    );
    let loader = Loader::new(
        lifecycle.clone(),
        PluginsConfig {
            dir: Some(plugins.clone()),
            watch,
            allowed_sha256: allowed.iter().map(|s| (*s).to_owned()).collect(),
            lendable_env: vec!["EBB_TEST_LEND_*".into()],
        },
    );
    let mut configured = BTreeMap::new();
    configured.insert(
        "fixed".to_owned(),
        ConnectorConfig::new(ebb_test_plugins::NOOP),
    );
    loader.load_configured(&configured).await;
    loader.reconcile().await;
    // The watcher lives as long as the test process; tests end before it matters.
    if let Some(watcher) = loader.watch().unwrap() {
        std::mem::forget(watcher);
    }
    lifecycle.start().await.unwrap();
    let token = |name: &str, roles: &[Role]| TokenConfig {
        name: name.into(),
        sha256: api::auth::hash_token(&format!("tok-{name}")),
        roles: roles.to_vec(),
        subject: Some(format!("spiffe://test/{name}")),
        kind: ebb_core::contract::SubjectKind::Workload,
    };
    let tokens = Tokens::new(&[
        token("ops", &[Role::Operator, Role::Auditor]),
        token("agent", &[Role::Requester]),
    ])
    .unwrap();
    let app = api::router(AppState {
        guard: ebb::api::guard::Guard::start(
            lifecycle.audit_log().clone(),
            ebb::api::guard::WINDOW,
        ),
        lifecycle,
        loader,
        approval: Arc::new(ebb_engine::approval::ApprovalGate::connector_modes(
            Default::default(),
        )),
        identity: None,
        tokens: Arc::new(tokens),
        metrics: None,
        membership: std::sync::Arc::new(ebb::api::cluster::Membership::local("test", 0)),
    });
    Host {
        app,
        store,
        dir: plugins,
        v1: Digest::of(&noop).to_string(),
        v2: Digest::of(&v2).to_string(),
        _root: dir,
    }
}

async fn call(
    app: &Router,
    method: &str,
    uri: &str,
    who: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let body = body.map(|b| b.to_string());
    ebb_test_support::api::send(
        app,
        method,
        uri,
        Some(&format!("tok-{who}")),
        body.as_deref(),
    )
    .await
}

fn grant_request(connector: &str) -> Value {
    json!({
        "connector": connector,
        "permissions": [{"action": "use", "resource": "x"}],
        "ttl": "10m",
        "task": "hot reload",
    })
}

/// Polls `GET uri` until `done` holds, for at most `limit`.
async fn wait_for(
    app: &Router,
    uri: &str,
    limit: Duration,
    done: impl Fn(StatusCode, &Value) -> bool,
) -> Value {
    let start = Instant::now();
    loop {
        let (s, v) = call(app, "GET", uri, "ops", None).await;
        if done(s, &v) {
            return v;
        }
        assert!(start.elapsed() < limit, "{uri} never got there: {s} {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One whole lifecycle through the API: request (approved by policy and issued),
/// complete, and wait until the revocation is verified. Returns the grant id.
async fn lifecycle(app: &Router, connector: &str) -> Result<String, String> {
    let (s, v) = call(
        app,
        "POST",
        "/v1/grants",
        "agent",
        Some(grant_request(connector)),
    )
    .await;
    if s != StatusCode::CREATED {
        return Err(format!("request: {s} {v}"));
    }
    let id = v["grant"]["grant"]["id"].as_str().unwrap().to_owned();
    let (s, v) = call(
        app,
        "POST",
        &format!("/v1/grants/{id}/complete"),
        "agent",
        None,
    )
    .await;
    if s != StatusCode::OK {
        return Err(format!("complete: {s} {v}"));
    }
    let start = Instant::now();
    loop {
        let (_, v) = call(app, "GET", &format!("/v1/grants/{id}"), "agent", None).await;
        match v["state"].as_str() {
            Some("verified") => return Ok(id),
            Some("escalated" | "residual") => return Err(format!("{id}: {v}")),
            _ if start.elapsed() > Duration::from_secs(30) => {
                return Err(format!("{id} not verified in 30 s: {v}"));
            }
            _ => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upgrades_and_rollbacks_under_load_fail_no_call_and_record_every_version() {
    let host = start_host("load", false, &[]).await;
    let app = host.app.clone();
    let (s, v) = call(
        &app,
        "POST",
        "/v1/connectors/svc",
        "ops",
        Some(json!({ "component": "noop-v1.wasm", "lifecycle": { "approval": "auto" } })),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["sha256"], host.v1.as_str());

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..6 {
        let app = app.clone();
        let stop = stop.clone();
        clients.push(tokio::spawn(async move {
            let mut done = Vec::new();
            let mut failed = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match lifecycle(&app, "svc").await {
                    Ok(id) => done.push(id),
                    Err(e) => failed.push(e),
                }
            }
            (done, failed)
        }));
    }
    // Upgrade to v2 and roll back to v1, three times each, while the clients run.
    for round in 0..6 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let (component, digest) = if round % 2 == 0 {
            ("noop-v2.wasm", &host.v2)
        } else {
            ("noop-v1.wasm", &host.v1)
        };
        let (s, v) = call(
            &app,
            "POST",
            "/v1/connectors/svc/reload",
            "ops",
            Some(json!({ "component": component, "sha256": digest })),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["connector"]["sha256"], digest.as_str());
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut ids = Vec::new();
    for client in clients {
        let (done, failed) = client.await.unwrap();
        assert!(failed.is_empty(), "failed lifecycles: {failed:?}");
        ids.extend(done);
    }
    assert!(ids.len() >= 12, "too few lifecycles ran: {}", ids.len());
    eprintln!("{} lifecycles ran across 6 version swaps", ids.len());

    // Every connector call names the version that served it, and both served.
    let mut seen = BTreeSet::new();
    for id in &ids {
        let events = host
            .store
            .audit(&AuditQuery {
                grant_id: Some(id.clone()),
                after_seq: 0,
                limit: 1000,
            })
            .await
            .unwrap();
        let calls: Vec<&Value> = events
            .iter()
            .filter(|e| {
                let event = e.detail["event"].as_str().unwrap_or_default();
                event == "BeginIssue" || event == "RevokeSucceeded" || event == "VerifiedRevoked"
            })
            .map(|e| &e.detail["connector_version"])
            .collect();
        assert_eq!(calls.len(), 3, "{id}: {events:?}");
        for version in calls {
            let version = version
                .as_str()
                .unwrap_or_else(|| panic!("{id}: no version"));
            assert!(version == host.v1 || version == host.v2, "{id}: {version}");
            seen.insert(version.to_owned());
        }
    }
    assert_eq!(seen.len(), 2, "both versions served calls: {seen:?}");
    let all = host
        .store
        .audit(&AuditQuery {
            grant_id: None,
            after_seq: 0,
            limit: 10_000,
        })
        .await
        .unwrap();
    let reloads = all
        .iter()
        .filter(|e| e.kind == "connector.reloaded")
        .count();
    assert_eq!(reloads, 6);
    // The instance's file pins the version serving now.
    let file = std::fs::read_to_string(host.dir.join("svc.toml")).unwrap();
    assert!(file.contains(&host.v1), "{file}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unload_refuses_live_grants_unless_they_are_revoked_or_handed_over() {
    let host = start_host("unload", false, &[]).await;
    let app = &host.app;
    for name in ["a", "b"] {
        let (s, v) = call(
            app,
            "POST",
            &format!("/v1/connectors/{name}"),
            "ops",
            Some(json!({ "component": "noop-v1.wasm", "lifecycle": { "approval": "auto" } })),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
    }
    let (s, v) = call(app, "POST", "/v1/grants", "agent", Some(grant_request("a"))).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let id = v["grant"]["grant"]["id"].as_str().unwrap().to_owned();

    // Refused while the grant is live; the connector still serves.
    let (s, v) = call(app, "DELETE", "/v1/connectors/a", "ops", None).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("1 live grant"),
        "{v}"
    );
    let (s, v) = call(app, "GET", "/v1/connectors/a", "ops", None).await;
    assert_eq!((s, v["live_grants"].as_u64()), (StatusCode::OK, Some(1)));
    // Only an operator may unload.
    let (s, _) = call(app, "DELETE", "/v1/connectors/a?live=revoke", "agent", None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // Handing over needs a target of the same connector that is not itself.
    for query in [
        "live=hand-over",
        "live=hand-over&to=a",
        "live=hand-over&to=zz",
    ] {
        let uri = format!("/v1/connectors/a?{query}");
        let (s, _) = call(app, "DELETE", &uri, "ops", None).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{query}");
    }

    // Hand-over: the grant moves to `b`, on record, and `a` goes.
    let (s, v) = call(
        app,
        "DELETE",
        "/v1/connectors/a?live=hand-over&to=b",
        "ops",
        None,
    )
    .await;
    assert_eq!(
        (s, v["state"].as_str()),
        (StatusCode::OK, Some("unloaded")),
        "{v}"
    );
    let (s, _) = call(app, "GET", "/v1/connectors/a", "ops", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(!host.dir.join("a.toml").exists());
    let (_, v) = call(app, "GET", &format!("/v1/grants/{id}/report"), "ops", None).await;
    assert_eq!(v["grant"]["connector"], "b");
    assert!(
        v["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "grant.handed-over"),
        "{v}"
    );

    // Revoke first: `b` drains (no new requests) and goes once the grant is verified.
    let (s, v) = call(app, "DELETE", "/v1/connectors/b?live=revoke", "ops", None).await;
    assert!(
        (s == StatusCode::ACCEPTED && v["state"] == "draining")
            || (s == StatusCode::OK && v["state"] == "unloaded"),
        "{s} {v}"
    );
    if s == StatusCode::ACCEPTED {
        let (s, v) = call(app, "POST", "/v1/grants", "agent", Some(grant_request("b"))).await;
        assert!(
            s == StatusCode::CONFLICT || s == StatusCode::BAD_REQUEST,
            "{s} {v}"
        );
    }
    wait_for(app, "/v1/connectors/b", Duration::from_secs(20), |s, _| {
        s == StatusCode::NOT_FOUND
    })
    .await;
    let (_, v) = call(app, "GET", &format!("/v1/grants/{id}"), "ops", None).await;
    assert_eq!(v["state"], "verified", "{v}");
    assert!(!host.dir.join("b.toml").exists());

    // The configured instance cannot be unloaded or repointed through the API.
    let (s, _) = call(app, "DELETE", "/v1/connectors/fixed", "ops", None).await;
    assert_eq!(s, StatusCode::CONFLICT);
    let (s, _) = call(
        app,
        "POST",
        "/v1/connectors/fixed/reload",
        "ops",
        Some(json!({ "component": "noop-v2.wasm" })),
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT);
    let (s, v) = call(app, "POST", "/v1/connectors/fixed/reload", "ops", None).await;
    assert_eq!(
        (s, v["connector"]["source"].as_str()),
        (StatusCode::OK, Some("config")),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_versions_are_refused_before_anything_is_swapped() {
    let host = start_host("refuse", false, &[]).await;
    let app = &host.app;
    std::fs::write(host.dir.join("garbage.wasm"), b"\0asm not really").unwrap();
    let (s, v) = call(
        app,
        "POST",
        "/v1/connectors/svc",
        "ops",
        Some(json!({ "component": "noop-v1.wasm" })),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let cases: Vec<(&str, &str, Value, StatusCode, &str)> = vec![
        (
            "POST",
            "/v1/connectors/svc",
            json!({ "component": "noop-v1.wasm" }),
            StatusCode::CONFLICT,
            "already loaded",
        ),
        (
            "POST",
            "/v1/connectors/Bad%20Name",
            json!({ "component": "noop-v1.wasm" }),
            StatusCode::BAD_REQUEST,
            "cannot name a connector",
        ),
        (
            "POST",
            "/v1/connectors/out",
            json!({ "component": "../../etc/passwd" }),
            StatusCode::BAD_REQUEST,
            "inside the plugins folder",
        ),
        (
            "POST",
            "/v1/connectors/abs",
            json!({ "component": "/etc/passwd" }),
            StatusCode::BAD_REQUEST,
            "inside the plugins folder",
        ),
        (
            "POST",
            "/v1/connectors/junk",
            json!({ "component": "garbage.wasm" }),
            StatusCode::BAD_REQUEST,
            "compiling",
        ),
        (
            "POST",
            "/v1/connectors/missing",
            json!({ "component": "nope.wasm" }),
            StatusCode::BAD_REQUEST,
            "reading component",
        ),
        (
            "POST",
            "/v1/connectors/typo",
            json!({ "component": "noop-v1.wasm", "limitz": {} }),
            StatusCode::BAD_REQUEST,
            "unknown field",
        ),
        (
            "POST",
            "/v1/connectors/secret",
            json!({ "component": "noop-v1.wasm", "sql": { "main": { "dsn": "postgres://u:hunter2@h/db" } } }),
            StatusCode::BAD_REQUEST,
            "dsn-env",
        ),
        (
            "POST",
            "/v1/connectors/secret",
            json!({ "component": "noop-v1.wasm", "http": { "allow": ["https://idp.example"], "basic-auth": { "https://idp.example": { "user": "ebb", "password": "hunter2" } } } }),
            StatusCode::BAD_REQUEST,
            "password-env",
        ),
        (
            "POST",
            "/v1/connectors/secret",
            json!({ "component": "noop-v1.wasm", "secrets": { "secret-access-key": { "value": "hunter2" } } }),
            StatusCode::BAD_REQUEST,
            "`env`",
        ),
        (
            "POST",
            "/v1/connectors/secret",
            json!({ "component": "noop-v1.wasm", "secrets": { "secret-access-key": { "env": "EBB_TEST_LEND_UNSET" } } }),
            StatusCode::BAD_REQUEST,
            "EBB_TEST_LEND_UNSET is not set",
        ),
        // The host's other secrets are not the API caller's to lend.
        (
            "POST",
            "/v1/connectors/secret",
            json!({ "component": "noop-v1.wasm", "secrets": { "key": { "env": "HOME" } } }),
            StatusCode::FORBIDDEN,
            "plugins.lendable-env",
        ),
        (
            "POST",
            "/v1/connectors/secret",
            json!({ "component": "noop-v1.wasm", "sql": { "main": { "dsn-env": "EBB_PG_DSN" } } }),
            StatusCode::FORBIDDEN,
            "EBB_PG_DSN is not in plugins.lendable-env",
        ),
        (
            "POST",
            "/v1/connectors/secret",
            json!({ "component": "noop-v1.wasm", "http": { "allow": ["https://idp.example"], "basic-auth": { "https://idp.example": { "user": "ebb", "password-env": "PATH" } } } }),
            StatusCode::FORBIDDEN,
            "PATH is not in plugins.lendable-env",
        ),
        (
            "POST",
            "/v1/connectors/svc/reload",
            json!({ "component": "garbage.wasm" }),
            StatusCode::BAD_REQUEST,
            "compiling",
        ),
        (
            "POST",
            "/v1/connectors/svc/reload",
            json!({ "component": "noop-v2.wasm", "sha256": host.v1 }),
            StatusCode::BAD_REQUEST,
            "pins",
        ),
        (
            "POST",
            "/v1/connectors/svc/reload",
            json!({ "sha256": "xyz" }),
            StatusCode::BAD_REQUEST,
            "64 hex digits",
        ),
        (
            "POST",
            "/v1/connectors/nope/reload",
            Value::Null,
            StatusCode::NOT_FOUND,
            "no connector",
        ),
    ];
    for (method, uri, body, status, needle) in cases {
        let (s, v) = call(app, method, uri, "ops", Some(body)).await;
        assert_eq!(s, status, "{uri}: {v}");
        let message = v["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(needle), "{uri}: {v}");
        assert!(!message.contains("hunter2"), "{uri}: {v}");
    }
    // Still v1, still serving, nothing half-written.
    let (_, v) = call(app, "GET", "/v1/connectors/svc", "ops", None).await;
    assert_eq!(v["sha256"], host.v1.as_str());
    let (s, v) = call(app, "POST", "/v1/grants", "agent", Some(json!({
        "connector": "svc", "permissions": [{"action": "use", "resource": "x"}], "ttl": "1m", "task": "t"
    }))).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    for name in ["junk", "missing", "typo", "secret", "out", "abs"] {
        assert!(!host.dir.join(format!("{name}.toml")).exists(), "{name}");
    }
    let (_, v) = call(app, "GET", "/v1/audit?limit=1000", "ops", None).await;
    assert!(!v.to_string().contains("hunter2"));

    // An allow-list refuses any other digest, from any source.
    let strict = start_host("strict", false, &[&host.v1]).await;
    let (s, v) = call(
        &strict.app,
        "POST",
        "/v1/connectors/svc",
        "ops",
        Some(json!({ "component": "noop-v2.wasm" })),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("allowed-sha256"),
        "{v}"
    );
    let (s, v) = call(
        &strict.app,
        "POST",
        "/v1/connectors/svc",
        "ops",
        Some(json!({ "component": "noop-v1.wasm" })),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
}

fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plugins_folder_is_watched() {
    let host = start_host("watch", true, &[]).await;
    let app = &host.app;
    let limit = Duration::from_secs(20);
    // A new file loads an instance.
    write_atomically(
        &host.dir.join("w.toml"),
        "component = \"w.wasm\"\nlifecycle = { approval = \"auto\" }\n",
    );
    std::fs::copy(host.dir.join("noop-v1.wasm"), host.dir.join("w.wasm")).unwrap();
    let v = wait_for(app, "/v1/connectors/w", limit, |s, _| s == StatusCode::OK).await;
    assert_eq!(
        (v["sha256"].as_str(), v["source"].as_str()),
        (Some(host.v1.as_str()), Some("plugins-dir"))
    );
    // A changed component (no pin in the file) reloads it.
    let tmp = host.dir.join("w.wasm.part");
    std::fs::copy(host.dir.join("noop-v2.wasm"), &tmp).unwrap();
    std::fs::rename(&tmp, host.dir.join("w.wasm")).unwrap();
    wait_for(app, "/v1/connectors/w", limit, |_, v| {
        v["sha256"] == host.v2.as_str()
    })
    .await;
    // A broken file is refused and the version serving stays.
    write_atomically(
        &host.dir.join("w.toml"),
        "component = \"w.wasm\"\nbogus = 1\n",
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (_, v) = call(app, "GET", "/v1/connectors/w", "ops", None).await;
    assert_eq!(v["sha256"], host.v2.as_str());
    let (_, events) = call(app, "GET", "/v1/audit?limit=1000", "ops", None).await;
    assert!(
        events
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "connector.load-failed"),
        "{events}"
    );
    // A removed file unloads it (no live grants).
    std::fs::remove_file(host.dir.join("w.toml")).unwrap();
    wait_for(app, "/v1/connectors/w", limit, |s, _| {
        s == StatusCode::NOT_FOUND
    })
    .await;
}

/// Issue 12: an unload that is draining when the host stops goes on draining after
/// a restart: the instance comes back from the plugins folder taking no new
/// requests, and does not serve anew.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_unload_survives_a_restart() {
    let host = start_host("drain-restart", false, &[]).await;
    let app = &host.app;
    // A connector whose revocations keep failing, so that it drains for long.
    std::fs::copy(ebb_test_plugins::MISBEHAVE, host.dir.join("stuck.wasm")).unwrap();
    let (s, v) = call(
        app,
        "POST",
        "/v1/connectors/stuck",
        "ops",
        Some(json!({
            "component": "stuck.wasm",
            "config": { "revoke": "fail" },
            "lifecycle": { "approval": "auto" },
        })),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = call(
        app,
        "POST",
        "/v1/grants",
        "agent",
        Some(grant_request("stuck")),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = call(
        app,
        "DELETE",
        "/v1/connectors/stuck?live=revoke",
        "ops",
        None,
    )
    .await;
    assert_eq!(
        (s, v["state"].as_str()),
        (StatusCode::ACCEPTED, Some("draining")),
        "{v}"
    );

    // The host restarts: a new registry, engine and loader over the same store and
    // plugins folder, as `ebb serve` builds them.
    let registry = Arc::new(Registry::new(
        Runtime::new(&RuntimeConfig::default()).unwrap(),
    ));
    let lifecycle = Lifecycle::new(
        host.store.clone(),
        Sealer::new(&HostKey::from_hex(&"44".repeat(32)).unwrap()),
        registry.clone(),
        Clock::system(),
        EngineConfig::default(),
    );
    let loader = Loader::new(
        lifecycle,
        PluginsConfig {
            dir: Some(host.dir.clone()),
            watch: false,
            allowed_sha256: vec![],
            lendable_env: vec![],
        },
    );
    loader.reconcile().await;
    let slot = registry
        .get("stuck")
        .expect("reloaded from the plugins folder");
    assert!(
        !slot.is_draining(),
        "a fresh load serves until told otherwise"
    );
    assert_eq!(loader.resume_drains().await.unwrap(), 1);
    assert!(
        slot.is_draining(),
        "the unload is draining again after the restart"
    );
}
