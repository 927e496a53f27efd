//! The `ebb` CLI against a running `ebb serve`: the README's lifecycle against the
//! postgres connector and a real PostgreSQL, with separation of duties, in JSON and
//! in tables; and an operator loading, reloading and unloading a connector.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly"
)]

use serde_json::Value;
use std::process::{Command, Stdio};
use std::time::Duration;

const AGENT: &str = "cli-test-agent-token";
const APPROVER: &str = "cli-test-approver-token";
const OPERATOR: &str = "cli-test-operator-token";

fn ebb(api: &str, token: &str, args: &[&str]) -> (bool, String, String) {
    ebb_test_support::cli::run(env!("CARGO_BIN_EXE_ebb"), api, token, args).unwrap()
}

fn json(api: &str, token: &str, args: &[&str]) -> Value {
    ebb_test_support::cli::json(env!("CARGO_BIN_EXE_ebb"), api, token, args).unwrap()
}

#[test]
fn the_readme_lifecycle_and_connector_operations_through_the_cli() {
    ebb_test_support::require!(Postgres);
    let pg = ebb_test_support::Postgres::start().unwrap();
    let dir = std::env::temp_dir().join(format!("ebb-cli-{}", rand::random::<u64>()));
    std::fs::create_dir_all(dir.join("plugins")).unwrap();
    std::fs::copy(ebb_test_plugins::NOOP, dir.join("plugins/noop.wasm")).unwrap();
    let port = ebb_test_support::free_port().unwrap();
    let hash = ebb::api::auth::hash_token;
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
sha256 = "{}"
roles = ["requester"]
[[tokens]]
name = "alice"
sha256 = "{}"
roles = ["approver", "auditor"]
[[tokens]]
name = "ops"
sha256 = "{}"
roles = ["operator", "auditor"]
[plugins]
dir = "plugins"
[connectors.postgres]
component = "{}"
config = {{ allowed-resources = "public.invoices, public.customers" }}
sql.main = {{ dsn-env = "EBB_TEST_PG_DSN", max-connections = 2 }}
"#,
            hash(AGENT),
            hash(APPROVER),
            hash(OPERATOR),
            ebb_test_plugins::POSTGRES
        ),
    )
    .unwrap();
    let mut host =
        ebb_test_support::serve_command(env!("CARGO_BIN_EXE_ebb"), &dir.join("ebb.toml"))
            .env("EBB_TEST_PG_DSN", pg.admin_dsn())
            .spawn()
            .unwrap();
    let api = format!("http://127.0.0.1:{port}");
    ebb_test_support::wait_for_port(port, Duration::from_secs(6));

    let requested = json(
        &api,
        AGENT,
        &[
            "grant",
            "request",
            "--connector",
            "postgres",
            "-p",
            "select:public.invoices",
            "--ttl",
            "15m",
            "--task",
            "reconcile invoices",
        ],
    );
    assert_eq!(requested["grant"]["state"], "requested");
    let id = requested["grant"]["grant"]["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // The requester cannot approve; the approver can.
    let (ok, _, err) = ebb(&api, AGENT, &["grant", "approve", &id]);
    assert!(!ok && err.contains("403"), "{err}");
    let approved = json(
        &api,
        APPROVER,
        &["grant", "approve", &id, "--note", "on call"],
    );
    assert_eq!(approved["state"], "approved");

    // Issue: the human output shows the credential, once.
    let (ok, out, err) = ebb(&api, AGENT, &["grant", "issue", &id]);
    assert!(ok, "{err}");
    assert!(
        out.contains("credential (shown once):") && out.contains("user: ebb_"),
        "{out}"
    );
    let password = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("password: "))
        .unwrap()
        .to_owned();
    let listed = json(&api, AGENT, &["grant", "list"]);
    assert_eq!(listed["grants"][0]["state"], "active");
    assert!(
        !listed.to_string().contains(&password),
        "no credential in listings"
    );

    // Complete and wait for verification, with progress on stderr.
    let (ok, out, err) = ebb(&api, AGENT, &["grant", "complete", &id, "--wait"]);
    assert!(ok, "{err}");
    assert!(out.contains("verified"), "{out}");
    assert!(err.contains(&format!("{id}: verified")), "progress: {err}");

    let (ok, out, _) = ebb(&api, APPROVER, &["grant", "report", &id]);
    assert!(
        ok && out.contains("may still have access: false") && out.contains("grant.requested"),
        "{out}"
    );
    let (ok, out, err) = ebb(&api, APPROVER, &["audit", "verify"]);
    assert!(ok && out.contains("audit chain intact"), "{out}{err}");
    let (ok, _, err) = ebb(&api, "wrong-token", &["grant", "list"]);
    assert!(!ok && err.contains("401"), "{err}");

    // An operator loads a connector from the plugins folder, reloads it, and unloads
    // it with a live grant revoked first.
    let (ok, out, err) = ebb(
        &api,
        OPERATOR,
        &[
            "connectors",
            "load",
            "extra",
            "--component",
            "noop.wasm",
            "--auto-approve",
        ],
    );
    assert!(
        ok && out.contains("loaded extra") && out.contains("source: plugins-dir"),
        "{out}{err}"
    );
    let (ok, out, _) = ebb(&api, OPERATOR, &["connectors"]);
    assert!(
        ok && out.contains("extra") && out.contains("postgres"),
        "{out}"
    );
    let (ok, out, err) = ebb(&api, OPERATOR, &["connectors", "reload", "extra"]);
    assert!(ok && out.contains("reloaded extra"), "{out}{err}");
    let issued = json(
        &api,
        AGENT,
        &[
            "grant",
            "request",
            "--connector",
            "extra",
            "-p",
            "use:x",
            "--ttl",
            "5m",
            "--task",
            "t",
        ],
    );
    assert_eq!(issued["grant"]["state"], "active");
    // An anomaly report revokes a grant at once; policies are listed.
    let flagged = json(
        &api,
        AGENT,
        &[
            "grant",
            "request",
            "--connector",
            "extra",
            "-p",
            "use:y",
            "--ttl",
            "5m",
            "--task",
            "t2",
        ],
    );
    let flagged_id = flagged["grant"]["grant"]["id"].as_str().unwrap();
    let (ok, out, err) = ebb(
        &api,
        OPERATOR,
        &[
            "anomaly",
            "--grant",
            flagged_id,
            "--reason",
            "odd query volume",
        ],
    );
    assert!(ok && out.contains("revoking 1 grant(s)"), "{out}{err}");
    let got = json(&api, AGENT, &["grant", "get", flagged_id]);
    assert_eq!(got["trigger"], "anomaly");
    let (ok, out, _) = ebb(&api, OPERATOR, &["policy", "list"]);
    assert!(ok && out.contains("no policies configured"), "{out}");
    // The requester was seen; its own identity has no standing access in PostgreSQL.
    let (ok, out, err) = ebb(&api, OPERATOR, &["scan", "standing"]);
    assert!(
        ok && out.contains("postgres") && out.contains(": none"),
        "{out}{err}"
    );
    let (ok, _, err) = ebb(&api, OPERATOR, &["connectors", "unload", "extra"]);
    assert!(!ok && err.contains("live grant"), "{err}");
    let (ok, out, err) = ebb(
        &api,
        OPERATOR,
        &["connectors", "unload", "extra", "--revoke", "--wait"],
    );
    assert!(ok && out.contains("unloaded extra"), "{out}{err}");
    let (ok, _, err) = ebb(&api, OPERATOR, &["connectors", "get", "extra"]);
    assert!(!ok && err.contains("404"), "{err}");
    let id = issued["grant"]["grant"]["id"].as_str().unwrap();
    let closed = json(&api, AGENT, &["grant", "get", id]);
    assert_eq!(closed["state"], "verified");

    host.kill().unwrap();
    host.wait().unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

/// Issue 12: a failing CLI command says one clear line, with no backtrace even when
/// RUST_BACKTRACE is set; `--debug` shows the causes and the backtrace.
#[test]
fn cli_errors_are_one_line_unless_debugging() {
    let closed = ebb_test_support::free_port().unwrap();
    let run = |debug: bool| {
        let mut args = vec!["grant", "get", "01JNOSUCHGRANT"];
        if debug {
            args.push("--debug");
        }
        let out = Command::new(env!("CARGO_BIN_EXE_ebb"))
            .args(&args)
            .env("EBB_API", format!("http://127.0.0.1:{closed}"))
            .env("EBB_TOKEN", AGENT)
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let plain = run(false);
    assert_eq!(plain.trim_end().lines().count(), 1, "{plain}");
    assert!(plain.starts_with("error: "), "{plain}");
    assert!(!plain.contains("backtrace"), "{plain}");
    let debug = run(true);
    assert!(debug.lines().count() > 1, "{debug}");
}
