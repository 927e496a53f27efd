//! Graceful shutdown: SIGTERM while requests are in flight. The host stops taking
//! connections, finishes what it started, syncs, and exits 0; every grant a caller
//! was told about is there after a restart, and the audit chain is intact.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly"
)]

use serde_json::{Value, json};
use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

const TOKEN: &str = "shutdown-test-token";

fn start(config: &Path, port: u16) -> Child {
    #[allow(clippy::zombie_processes, reason = "callers wait for it")]
    let child = ebb_test_support::serve_command(env!("CARGO_BIN_EXE_ebb"), config)
        .spawn()
        .unwrap();
    assert!(
        ebb_test_support::wait_for_port(port, Duration::from_secs(10)),
        "the host did not start"
    );
    child
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_and_loses_nothing() {
    let dir = std::env::temp_dir().join(format!("ebb-shutdown-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let port = ebb_test_support::free_port().unwrap();
    let config = dir.join("ebb.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[server]
listen = "127.0.0.1:{port}"
[store]
path = "data"
key-file = "host.key"
[[tokens]]
name = "agent"
sha256 = "{}"
roles = ["requester", "auditor"]
[connectors.noop]
component = "{}"
lifecycle = {{ approval = "auto" }}
"#,
            ebb::api::auth::hash_token(TOKEN),
            ebb_test_plugins::NOOP
        ),
    )
    .unwrap();
    let mut host = start(&config, port);
    let api = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();

    // Eight clients issue grants as fast as they can; SIGTERM lands among them.
    let mut clients = Vec::new();
    for _ in 0..8 {
        let (http, api) = (http.clone(), api.clone());
        clients.push(tokio::spawn(async move {
            let mut told = Vec::new();
            loop {
                let response = http
                    .post(format!("{api}/v1/grants"))
                    .bearer_auth(TOKEN)
                    .json(&json!({
                        "connector": "noop",
                        "permissions": [{"action": "use", "resource": "x"}],
                        "ttl": "1h",
                        "task": "shutdown",
                    }))
                    .send()
                    .await;
                match response {
                    Ok(r) => {
                        let status = r.status();
                        // A response that started must arrive whole.
                        let v: Value = r.json().await.expect("a response cut short");
                        assert_eq!(status, 201, "{v}");
                        told.push(v["grant"]["grant"]["id"].as_str().unwrap().to_owned());
                    }
                    // The listener is closed: the host stopped taking requests.
                    Err(_) => return told,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    let pid = host.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let mut told = Vec::new();
    for c in clients {
        told.extend(c.await.unwrap());
    }
    let status = tokio::task::spawn_blocking(move || host.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "the host exited with {status}");
    assert!(
        told.len() >= 10,
        "only {} grants before the signal",
        told.len()
    );

    // After a restart, every grant a caller was told about is there, active.
    let mut host = start(&config, port);
    let get = |path: String| {
        let request = http.get(format!("{api}{path}")).bearer_auth(TOKEN);
        async move { request.send().await.unwrap().json::<Value>().await.unwrap() }
    };
    for id in &told {
        let v = get(format!("/v1/grants/{id}")).await;
        assert_eq!(v["state"], "active", "{id}: {v}");
    }
    let chain = get("/v1/audit/verify".into()).await;
    assert_eq!(chain["problem"], Value::Null, "{chain}");
    host.kill().unwrap();
    host.wait().unwrap();
    let _ = std::fs::remove_dir_all(dir);
}
