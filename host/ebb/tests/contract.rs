//! Issue 14, through `ebb serve` and its CLI against a real PostgreSQL: requests
//! are checked by the connector's `validate` before anyone approves them; the
//! orphan scan compares every connector's `inventory` with the grants, reports
//! what no live grant accounts for and revokes it where the connector says so; a
//! component built against `ebb:connector@0.1.0` still loads, is adapted, and says
//! so.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly"
)]

use serde_json::Value;
use std::time::Duration;

const AGENT: &str = "contract-test-agent-token";
const APPROVER: &str = "contract-test-approver-token";
const OPERATOR: &str = "contract-test-operator-token";

fn ebb(api: &str, token: &str, args: &[&str]) -> (bool, String, String) {
    ebb_test_support::cli::run(env!("CARGO_BIN_EXE_ebb"), api, token, args).unwrap()
}

fn json(api: &str, token: &str, args: &[&str]) -> Value {
    ebb_test_support::cli::json(env!("CARGO_BIN_EXE_ebb"), api, token, args).unwrap()
}

fn request(api: &str, connector: &str, permission: &str) -> (bool, String, String) {
    ebb(
        api,
        AGENT,
        &[
            "grant",
            "request",
            "--connector",
            connector,
            "-p",
            permission,
            "--ttl",
            "10m",
            "--task",
            "contract test",
            "--json",
        ],
    )
}

#[test]
fn requests_are_validated_orphans_found_and_old_connectors_adapted() {
    ebb_test_support::require!(Postgres);
    let pg = ebb_test_support::Postgres::start().unwrap();
    let dir = ebb_test_support::TempDir::new("contract").unwrap();
    std::fs::create_dir_all(dir.join("plugins")).unwrap();
    std::fs::copy(
        ebb_test_plugins::LEGACY_V1,
        dir.join("plugins/legacy_v1.wasm"),
    )
    .unwrap();
    let port = ebb_test_support::free_port().unwrap();
    let hash = ebb::api::auth::hash_token;
    // Two instances lent the same database: `postgres` reports orphans, `sweep`
    // also revokes them by id.
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
component = "{pg_wasm}"
config = {{ allowed-resources = "public.invoices" }}
sql.main = {{ dsn-env = "EBB_TEST_PG_DSN", max-connections = 2 }}
[connectors.sweep]
component = "{pg_wasm}"
config = {{ allowed-resources = "public.invoices" }}
sql.main = {{ dsn-env = "EBB_TEST_PG_DSN", max-connections = 2 }}
lifecycle = {{ orphans = "revoke" }}
"#,
            hash(AGENT),
            hash(APPROVER),
            hash(OPERATOR),
            pg_wasm = ebb_test_plugins::POSTGRES
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

    // 1. A resource the connector cannot grant is the requester's 400, before any
    // approver sees it: nothing is recorded.
    let (ok, _, err) = request(&api, "postgres", "select:public.payroll");
    assert!(
        !ok && err.contains("400") && err.contains("allowed-resources"),
        "{err}"
    );
    let (ok, _, err) = request(&api, "postgres", "select:not a table");
    assert!(!ok && err.contains("400"), "{err}");
    let listed = json(&api, OPERATOR, &["grant", "list"]);
    assert_eq!(
        listed["grants"].as_array().map(Vec::len),
        Some(0),
        "{listed}"
    );
    // A valid one waits for approval as before.
    let (ok, out, err) = request(&api, "postgres", "select:public.invoices");
    assert!(ok, "{err}");
    let live: Value = serde_json::from_str(&out).unwrap();
    let live_id = live["grant"]["grant"]["id"].as_str().unwrap().to_owned();
    assert_eq!(live["grant"]["state"], "requested");
    let (ok, _, err) = ebb(&api, APPROVER, &["grant", "approve", &live_id]);
    assert!(ok, "{err}");
    let (ok, _, err) = ebb(&api, AGENT, &["grant", "issue", &live_id]);
    assert!(ok, "{err}");

    // 2. Orphans: a role under Ebb's naming scheme that no grant accounts for, made
    // as Ebb makes them (by the connector's admin role) — a store restored from an
    // older backup forgets grants like this one.
    let orphan_id = "01JORPHANMADEBYHAND0000000";
    let orphan_role = format!("ebb_{}", orphan_id.to_lowercase());
    pg.psql(&format!(
        "set role ebb_admin; \
         create role {orphan_role} login password 'left-behind'; \
         grant select on public.invoices to {orphan_role}"
    ))
    .unwrap();
    let report = json(&api, OPERATOR, &["scan", "orphans"]);
    let orphans: Vec<&Value> = report["orphans"].as_array().unwrap().iter().collect();
    // Both instances see it; neither calls the live grant's role an orphan.
    assert_eq!(orphans.len(), 2, "{report}");
    assert!(
        orphans
            .iter()
            .all(|o| o["grant_id"] == orphan_id
                && o["detail"].as_str().unwrap().contains(&orphan_role)),
        "{report}"
    );
    let swept = orphans.iter().find(|o| o["connector"] == "sweep").unwrap();
    assert_eq!(swept["verdict"], "revoked", "{report}");
    let reported = orphans
        .iter()
        .find(|o| o["connector"] == "postgres")
        .unwrap();
    assert!(reported.get("verdict").is_none(), "{report}");
    // `sweep` revoked it by id: the role is gone; the live grant's role stays.
    let roles = pg.ebb_roles().unwrap();
    assert!(!roles.contains(&orphan_role), "{roles:?}");
    assert_eq!(roles.len(), 1, "{roles:?}");
    // Audited, and readable afterwards.
    let audit = json(&api, OPERATOR, &["audit", "list", "--limit", "200"]);
    let kinds: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    assert!(
        kinds.contains(&"orphan.found") && kinds.contains(&"orphan.revoked"),
        "{kinds:?}"
    );
    // Gone downstream: the next scan forgets it.
    let report = json(&api, OPERATOR, &["scan", "orphans"]);
    assert_eq!(
        report["orphans"].as_array().map(Vec::len),
        Some(0),
        "{report}"
    );
    let (ok, out, err) = ebb(&api, OPERATOR, &["scan", "orphans"]);
    assert!(ok && out.contains("no orphans"), "{out}{err}");

    // 3. A 0.1.0 component loads, is adapted, and says what it lacks.
    let (ok, out, err) = ebb(
        &api,
        OPERATOR,
        &[
            "connectors",
            "load",
            "legacy",
            "--component",
            "legacy_v1.wasm",
            "--auto-approve",
        ],
    );
    assert!(ok && out.contains("loaded legacy"), "{out}{err}");
    let legacy = json(&api, OPERATOR, &["connectors", "get", "legacy"]);
    assert_eq!(legacy["contract"], "0.1.0", "{legacy}");
    assert_eq!(
        legacy["adapted"],
        serde_json::json!(["validate", "inventory"]),
        "{legacy}"
    );
    let current = json(&api, OPERATOR, &["connectors", "get", "postgres"]);
    assert_eq!(current["contract"], "0.2.0", "{current}");
    assert_eq!(current["adapted"], serde_json::json!([]), "{current}");
    // Its lifecycle works as before.
    let (ok, out, err) = request(&api, "legacy", "use:x");
    assert!(ok, "{err}");
    let issued: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(issued["grant"]["state"], "active", "{issued}");
    // Without `validate`, a resource it cannot grant passes the request and fails
    // only at issue (what 0.2.0 prevents).
    let (ok, _, err) = request(&api, "legacy", "use:!bad");
    assert!(!ok && err.contains("issuing failed"), "{err}");
    // The orphan scan says why it skips it.
    let (ok, out, err) = ebb(&api, OPERATOR, &["scan", "orphans"]);
    assert!(
        ok && out.contains("legacy: not scanned") && out.contains("0.1.0"),
        "{out}{err}"
    );

    host.kill().unwrap();
    host.wait().unwrap();
}
