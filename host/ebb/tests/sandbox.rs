//! The runtime's guarantees against hostile connectors: each failure names the limit
//! it hit, and the host goes on serving other connectors' calls.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly"
)]

use ebb_core::contract::{ConnectorError, Grant, Subject, SubjectKind};
use ebb_engine::config::{ConnectorConfig, LimitsConfig, RuntimeConfig};
use ebb_runtime::{CallError, LoadedConnector, Runtime};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn grant(id: &str) -> Grant {
    Grant {
        id: id.into(),
        subject: Subject {
            id: "spiffe://test/agent".into(),
            kind: SubjectKind::Workload,
            claims: vec![],
        },
        permissions: vec![],
        not_after: u64::MAX,
        task: "sandbox test".into(),
    }
}

fn tight_limits() -> LimitsConfig {
    LimitsConfig {
        memory_mib: 16,
        timeout_ms: 300,
        max_output_kib: 64,
    }
}

async fn misbehaving(runtime: &Runtime, mode: &str) -> LoadedConnector {
    let config = ConnectorConfig::new(ebb_test_plugins::MISBEHAVE)
        .with_config("mode", mode)
        .with_limits(tight_limits());
    runtime
        .load(&format!("misbehave-{mode}"), &config.spec())
        .await
        .unwrap()
}

async fn noop(runtime: &Runtime) -> LoadedConnector {
    runtime
        .load("noop", &ConnectorConfig::new(ebb_test_plugins::NOOP).spec())
        .await
        .unwrap()
}

/// The noop connector still answers: the host survived.
async fn assert_host_still_serves(noop: &LoadedConnector) {
    let issued = noop.issue(&grant("after")).await.unwrap();
    assert_eq!(issued.handle, "after");
}

#[tokio::test]
async fn trap_fails_only_its_call() {
    let runtime = Runtime::new(&RuntimeConfig::default()).unwrap();
    let bad = misbehaving(&runtime, "trap").await;
    let noop = noop(&runtime).await;
    let err = bad.issue(&grant("g1")).await.unwrap_err();
    assert!(matches!(err, CallError::Trap { .. }), "{err:?}");
    assert!(err.to_string().contains("misbehave-trap` trapped"), "{err}");
    // The same connector serves its next call from a fresh instance.
    bad.revoke(&grant("g1"), None, None).await.unwrap();
    assert_host_still_serves(&noop).await;
}

#[tokio::test]
async fn infinite_loop_hits_time_limit() {
    let runtime = Runtime::new(&RuntimeConfig::default()).unwrap();
    let bad = misbehaving(&runtime, "loop").await;
    let noop = noop(&runtime).await;
    let err = bad.issue(&grant("g1")).await.unwrap_err();
    assert_eq!(
        err,
        CallError::Timeout {
            connector: "misbehave-loop".into(),
            limit: Duration::from_millis(300)
        }
    );
    assert!(err.to_string().contains("time limit of 300 ms"), "{err}");
    assert_host_still_serves(&noop).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loop_does_not_block_other_connectors() {
    let runtime = Runtime::new(&RuntimeConfig::default()).unwrap();
    let bad = misbehaving(&runtime, "loop").await;
    let noop = noop(&runtime).await;
    let spinning = tokio::spawn(async move { bad.issue(&grant("spin")).await });
    // While one worker spins in wasm, the other serves many calls.
    for i in 0..50 {
        let issued = noop.issue(&grant(&format!("n{i}"))).await.unwrap();
        assert_eq!(issued.handle, format!("n{i}"));
    }
    assert!(matches!(
        spinning.await.unwrap(),
        Err(CallError::Timeout { .. })
    ));
}

#[tokio::test]
async fn unbounded_memory_hits_memory_limit() {
    let runtime = Runtime::new(&RuntimeConfig::default()).unwrap();
    let bad = misbehaving(&runtime, "grow").await;
    let noop = noop(&runtime).await;
    let err = bad.issue(&grant("g1")).await.unwrap_err();
    assert_eq!(
        err,
        CallError::MemoryLimit {
            connector: "misbehave-grow".into(),
            limit_bytes: 16 * 1024 * 1024
        }
    );
    assert!(
        err.to_string().contains("memory limit of 16777216 bytes"),
        "{err}"
    );
    assert_host_still_serves(&noop).await;
}

#[tokio::test]
async fn huge_output_hits_output_limit() {
    let runtime = Runtime::new(&RuntimeConfig::default()).unwrap();
    let config = ConnectorConfig::new(ebb_test_plugins::MISBEHAVE)
        .with_config("mode", "huge")
        .with_config("size", &(1024 * 1024).to_string())
        .with_limits(tight_limits());
    let bad = runtime
        .load("misbehave-huge", &config.spec())
        .await
        .unwrap();
    let noop = noop(&runtime).await;
    let err = bad.issue(&grant("g1")).await.unwrap_err();
    assert!(
        matches!(err, CallError::OutputTooLarge { size, limit, .. } if size == 1024 * 1024 && limit == 64 * 1024),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("output limit of 65536 bytes"),
        "{err}"
    );
    assert_host_still_serves(&noop).await;
}

#[tokio::test]
async fn huge_output_beyond_memory_limit_hits_memory_limit() {
    let runtime = Runtime::new(&RuntimeConfig::default()).unwrap();
    let config = ConnectorConfig::new(ebb_test_plugins::MISBEHAVE)
        .with_config("mode", "huge")
        .with_config("size", &(64 * 1024 * 1024).to_string())
        .with_limits(tight_limits());
    let bad = runtime
        .load("misbehave-huge", &config.spec())
        .await
        .unwrap();
    let err = bad.issue(&grant("g1")).await.unwrap_err();
    assert!(matches!(err, CallError::MemoryLimit { .. }), "{err:?}");
}

/// A one-shot HTTP server on loopback that answers 200 to anything: the allowed
/// destination for the egress tests.
async fn http_server() -> (String, tokio::task::JoinHandle<u32>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let mut served = 0;
        while let Ok(Ok((mut socket, _))) =
            tokio::time::timeout(Duration::from_secs(5), listener.accept()).await
        {
            let mut buf = vec![0u8; 4096];
            let _ = socket.read(&mut buf).await;
            let _ = socket
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
                .await;
            served += 1;
        }
        served
    });
    (origin, task)
}

#[tokio::test]
async fn http_to_origin_off_allow_list_is_denied() {
    let runtime = Runtime::new(&RuntimeConfig::default()).unwrap();
    let (origin, server) = http_server().await;
    let config = ConnectorConfig::new(ebb_test_plugins::MISBEHAVE)
        .with_config("mode", "http")
        .with_config("url", &format!("{origin}/steal"))
        .with_http_origin("http://127.0.0.1:1", true)
        .with_limits(tight_limits());
    let bad = runtime
        .load("misbehave-http", &config.spec())
        .await
        .unwrap();
    let err = bad.issue(&grant("g1")).await.unwrap_err();
    match &err {
        CallError::Connector(ConnectorError::Denied(message)) => {
            assert!(
                message.contains("not on this connector's allow-list"),
                "{message}"
            );
            assert!(message.contains(&origin), "{message}");
        }
        other => panic!("expected a denial, got {other:?}"),
    }
    drop(server);
    assert_host_still_serves(&noop(&runtime).await).await;
}

#[tokio::test]
async fn http_to_private_address_needs_allow_private() {
    let runtime = Runtime::new(&RuntimeConfig::default()).unwrap();
    let (origin, server) = http_server().await;
    // Allow-listed, but loopback is private and not explicitly allowed.
    let config = ConnectorConfig::new(ebb_test_plugins::MISBEHAVE)
        .with_config("mode", "http")
        .with_config("url", &format!("{origin}/x"))
        .with_http_origin(&origin, false)
        .with_limits(tight_limits());
    let bad = runtime
        .load("misbehave-http", &config.spec())
        .await
        .unwrap();
    let err = bad.issue(&grant("g1")).await.unwrap_err();
    assert!(
        matches!(&err, CallError::Connector(ConnectorError::Denied(m)) if m.contains("may not reach")),
        "{err:?}"
    );
    // Explicitly allowed: the request goes through.
    let config = ConnectorConfig::new(ebb_test_plugins::MISBEHAVE)
        .with_config("mode", "http")
        .with_config("url", &format!("{origin}/x"))
        .with_http_origin(&origin, true)
        .with_limits(tight_limits());
    let ok = runtime
        .load("misbehave-http-ok", &config.spec())
        .await
        .unwrap();
    let issued = ok.issue(&grant("g2")).await.unwrap();
    assert_eq!(issued.handle, "status 200");
    drop(ok);
    assert_eq!(
        server.await.unwrap(),
        1,
        "exactly the allowed request reached the server"
    );
}

#[tokio::test]
async fn describe_answers_and_capabilities_are_reported() {
    let runtime = Runtime::new(&RuntimeConfig::default()).unwrap();
    let noop = noop(&runtime).await;
    assert_eq!(noop.info().name, "noop");
    assert!(noop.info().capabilities.revocable);
    assert!(!noop.info().capabilities.terminates_sessions);
    assert_eq!(noop.describe().await.unwrap(), *noop.info());
    assert_eq!(noop.digest().to_string().len(), 64);
}

#[tokio::test]
async fn precompiled_cache_is_reused_and_corruption_is_recovered() {
    let dir = std::env::temp_dir().join(format!("ebb-cache-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let config = RuntimeConfig {
        cache_dir: Some(dir.clone()),
        ..RuntimeConfig::default()
    };
    let key = || ebb_runtime::CacheKey::new([7; 32]);
    let runtime = Runtime::with_cache_key(&config, key()).unwrap();
    let first = noop(&runtime).await;
    let artifacts: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(artifacts.len(), 1, "{artifacts:?}");
    assert!(
        artifacts[0]
            .to_string_lossy()
            .contains(&first.digest().to_string())
    );
    // A second runtime loads from the cache.
    let again = noop(&Runtime::with_cache_key(&config, key()).unwrap()).await;
    assert_host_still_serves(&again).await;
    // A corrupt artifact is replaced, not trusted.
    let tmp = dir.join("garbage.tmp");
    std::fs::write(&tmp, b"garbage").unwrap();
    std::fs::rename(&tmp, &artifacts[0]).unwrap();
    let recovered = noop(&Runtime::with_cache_key(&config, key()).unwrap()).await;
    assert_host_still_serves(&recovered).await;
    assert_ne!(std::fs::read(&artifacts[0]).unwrap(), b"garbage");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue 13: whoever can write the cache folder cannot run another component's
/// native code under an allowed digest. A valid artifact of another component,
/// swapped in under noop's name, fails authentication and noop is compiled again.
#[tokio::test]
async fn a_swapped_cache_artifact_is_refused_and_recompiled() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = std::env::temp_dir().join(format!("ebb-cache-swap-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let config = RuntimeConfig {
        cache_dir: Some(dir.clone()),
        ..RuntimeConfig::default()
    };
    let runtime = Runtime::with_cache_key(&config, ebb_runtime::CacheKey::new([9; 32])).unwrap();
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "the cache folder is private");
    let noop_digest = noop(&runtime).await.digest().to_string();
    let misbehave = misbehaving(&runtime, "behave").await;
    assert_eq!(misbehave.info().name, "misbehave");
    let artifact = |digest: &str| {
        std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.to_string_lossy().contains(digest))
            .unwrap()
    };
    let noop_file = artifact(&noop_digest);
    let misbehave_file = artifact(&misbehave.digest().to_string());
    assert_eq!(
        std::fs::metadata(&noop_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // The attacker's swap: the other component's (valid, tagged) artifact in noop's place.
    std::fs::copy(&misbehave_file, &noop_file).unwrap();
    let reloaded =
        noop(&Runtime::with_cache_key(&config, ebb_runtime::CacheKey::new([9; 32])).unwrap()).await;
    assert_eq!(reloaded.info().name, "noop", "the swapped artifact ran");
    assert_ne!(
        std::fs::read(&noop_file).unwrap(),
        std::fs::read(&misbehave_file).unwrap(),
        "the swapped artifact was replaced"
    );
    // An artifact from a host with another key is refused the same way.
    let other =
        noop(&Runtime::with_cache_key(&config, ebb_runtime::CacheKey::new([1; 32])).unwrap()).await;
    assert_eq!(other.info().name, "noop");
    // No key, no cache.
    assert!(Runtime::new(&config).is_err());
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn sql_on_connection_not_lent_is_a_clear_error() {
    // The postgres connector with no `main` connection lent.
    let runtime = Runtime::new(&RuntimeConfig::default()).unwrap();
    let config = ConnectorConfig::new(ebb_test_plugins::POSTGRES)
        .with_config("allowed-resources", "public.*");
    let pg = runtime.load("pg-unlent", &config.spec()).await.unwrap();
    let err = pg.revoke(&grant("g1"), None, None).await.unwrap_err();
    assert!(
        matches!(&err, CallError::Connector(ConnectorError::Invalid(m)) if m.contains("no sql connection named `main`")),
        "{err:?}"
    );
}
