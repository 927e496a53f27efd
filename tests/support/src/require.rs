//! Tests that need a downstream server skip where it is not installed, and say so.
//!
//! `cargo test --workspace` on a machine with only Rust runs every hermetic test and
//! skips the ones that need PostgreSQL, Redis, MariaDB, OpenLDAP, RabbitMQ, Node.js
//! (oidc-provider), Chromium (the console's browser tests) or Python (moto, the componentize-py connector), each with one
//! line on stderr naming the test, what it needs and how to get it. The README's test command
//! (`scripts/test.sh`) installs everything and sets `EBB_REQUIRE_ALL=1`, under which
//! a missing server fails the test instead: nothing is skipped there.

use std::io::Write as _;
use std::path::{Path, PathBuf};

/// Set to `1` to make a missing server a failure rather than a skip.
pub const REQUIRE_ALL: &str = "EBB_REQUIRE_ALL";

/// Something a test needs that a machine with only Rust may lack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// A PostgreSQL server (`initdb`, `pg_ctl`).
    Postgres,
    /// `redis-server`.
    Redis,
    /// `rabbitmq-server` (with its management plugin).
    RabbitMq,
    /// `mariadbd` and `mariadb-install-db`.
    MariaDb,
    /// OpenLDAP's `slapd` and the `ldap-utils` clients.
    Ldap,
    /// oidc-provider under Node.js.
    Oidc,
    /// moto's server under Python.
    Moto,
    /// Chromium, chromedriver and axe-core, for the console's browser tests.
    Browser,
    /// The Python redis connector built by `scripts/build-py-connector.sh`.
    PyConnector,
    /// The JavaScript redis connector built by `scripts/build-js-connector.sh`.
    JsConnector,
}

pub(crate) fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub(crate) fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

fn file(path: &Path, what: &str, fix: &str) -> Option<String> {
    (!path.exists()).then(|| format!("{what} ({} is missing; {fix})", path.display()))
}

impl Need {
    /// Why this cannot be had on this machine, or `None` if it can.
    pub fn missing(self) -> Option<String> {
        match self {
            Self::Postgres => crate::postgres::find_bin()
                .err()
                .map(|e| format!("PostgreSQL ({e})")),
            Self::Redis => (!on_path("redis-server"))
                .then(|| "Redis (redis-server is not on PATH; run scripts/setup.sh)".to_owned()),
            Self::RabbitMq => (!crate::rabbitmq::installed()).then(|| {
                "RabbitMQ (rabbitmq-server is not installed; run scripts/setup.sh)".to_owned()
            }),
            Self::MariaDb => (!crate::mariadb::installed()).then(|| {
                "MariaDB (mariadb-server is not installed; run scripts/setup.sh)".to_owned()
            }),
            Self::Ldap => (!crate::ldap::installed()).then(|| {
                "OpenLDAP (slapd or ldap-utils is not installed; run scripts/setup.sh)".to_owned()
            }),
            Self::Oidc => {
                if !on_path("node") {
                    return Some("Node.js (node is not on PATH; run scripts/setup.sh)".into());
                }
                file(
                    &crate::oidc::server_dir().join("node_modules/oidc-provider"),
                    "oidc-provider",
                    "run scripts/test-servers.sh",
                )
            }
            Self::Browser => {
                if !on_path("chromium") || !on_path("chromedriver") {
                    return Some(
                        "Chromium (chromium or chromedriver is not on PATH; run scripts/setup.sh)"
                            .into(),
                    );
                }
                file(
                    &crate::browser::axe_path(),
                    "axe-core",
                    "run scripts/test-servers.sh",
                )
            }
            Self::Moto => file(
                &repo().join(".ebb/moto/bin/moto_server"),
                "moto",
                "run scripts/test-servers.sh",
            ),
            Self::PyConnector => file(
                &repo().join("target/py-plugins/redis_py.wasm"),
                "the Python connector",
                "run scripts/build-py-connector.sh",
            ),
            Self::JsConnector => file(
                &repo().join("target/js-plugins/redis_js.wasm"),
                "the JavaScript connector",
                "run scripts/build-js-connector.sh",
            ),
        }
    }
}

/// True if the calling test must be skipped because something in `needs` is
/// missing; then one line on stderr (not captured by the test harness) says which
/// test and why. Under `EBB_REQUIRE_ALL=1` it panics instead.
pub fn skipped(needs: &[Need]) -> bool {
    let missing: Vec<String> = needs.iter().filter_map(|n| n.missing()).collect();
    if missing.is_empty() {
        return false;
    }
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("a test");
    let why = missing.join("; ");
    if std::env::var(REQUIRE_ALL).is_ok_and(|v| v == "1") {
        fail(&format!(
            "{test} needs {why}, and {REQUIRE_ALL}=1 forbids skipping it"
        ));
    }
    // Straight to the process's stderr: the harness captures only `eprintln!`.
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: needs {why}");
    true
}

#[expect(clippy::panic, reason = "failing the test is the point here")]
fn fail(message: &str) {
    panic!("{message}");
}

/// Returns from the calling test (or bench group) when a server it needs is not
/// installed: `ebb_test_support::require!(Postgres, Redis);`.
#[macro_export]
macro_rules! require {
    ($($need:ident),+ $(,)?) => {
        if $crate::require::skipped(&[$($crate::require::Need::$need),+]) {
            return;
        }
    };
}
