//! The conformance kit against every bundled connector with a real downstream
//! system, judged by a probe that uses that system's own client (the host's
//! built-in ones for PostgreSQL and Redis, test probes for OAuth and AWS); and the
//! same kit through `ebb connector test`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly"
)]

use ebb_core::contract::{Credential, Permission};
use ebb_engine::config::{ConnectorConfig, RuntimeConfig};
use ebb_runtime::Runtime;
use ebb_runtime::conformance::{self, Case, Probe};
use ebb_test_support::{Moto, Oidc, Postgres, Redis};
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// The host's built-in probe for `config`'s connector (tokio-postgres or the redis
/// crate, over the connection the instance is lent): what `ebb connector test`
/// uses, judging the credential independently of the connector.
async fn builtin(config: &ConnectorConfig) -> Box<dyn Probe> {
    let spec = config.spec();
    let connector = Runtime::new(&RuntimeConfig::default())
        .unwrap()
        .load("probe", &spec)
        .await
        .unwrap();
    conformance::builtin_probe(connector.info(), &spec)
        .unwrap()
        .expect("the host ships a probe for this connector")
}

/// Asks the authorization server, as a resource server would (introspection by the
/// `probe` client), whether the token is active and carries the scope.
struct OAuthProbe<'a> {
    server: &'a Oidc,
}

impl Probe for OAuthProbe<'_> {
    fn works<'a>(
        &'a self,
        credential: &'a Credential,
        permission: &'a Permission,
    ) -> Pin<Box<dyn Future<Output = anyhow::Result<bool>> + Send + 'a>> {
        Box::pin(async move {
            let token = credential.get("access_token").unwrap_or_default();
            self.server.allows(token, &permission.resource).await
        })
    }
}

/// Tries the permission's action with the access key, with boto3.
struct AwsProbe<'a> {
    server: &'a Moto,
}

impl Probe for AwsProbe<'_> {
    fn works<'a>(
        &'a self,
        credential: &'a Credential,
        permission: &'a Permission,
    ) -> Pin<Box<dyn Future<Output = anyhow::Result<bool>> + Send + 'a>> {
        Box::pin(async move {
            self.server
                .allows(
                    credential.get("access_key_id").unwrap_or_default(),
                    credential.get("secret_access_key").unwrap_or_default(),
                    &permission.action,
                )
                .await
        })
    }
}

fn print(report: &conformance::ConformanceReport) {
    eprint!("{report}");
}

fn permission(action: &str, resource: &str) -> Permission {
    Permission {
        action: action.into(),
        resource: resource.into(),
    }
}

/// Loads `config` and runs the kit; every check must run and pass.
async fn passes(name: &str, config: &ConnectorConfig, case: &Case, probe: &dyn Probe) {
    passes_checks(name, config, case, probe, 18).await;
}

/// [`passes`], for a connector whose kit runs `checks` checks.
async fn passes_checks(
    name: &str,
    config: &ConnectorConfig,
    case: &Case,
    probe: &dyn Probe,
    checks: usize,
) -> conformance::ConformanceReport {
    let connector = Runtime::new(&RuntimeConfig::default())
        .unwrap()
        .load(name, &config.spec())
        .await
        .unwrap();
    let report = conformance::run(&connector, case, Some(probe)).await;
    print(&report);
    assert!(report.passed(), "{report:#?}");
    assert_eq!(report.checks.len(), checks, "every check ran");
    report
}

#[tokio::test]
async fn postgres_passes_the_conformance_kit() {
    ebb_test_support::require!(Postgres);
    let pg = Postgres::start().unwrap();
    // Where PUBLIC may create (as before PostgreSQL 15), the kit's probe makes a
    // table of the grantee's own from the granted one: revoke must drop it.
    pg.psql("grant create on schema public to public").unwrap();
    let config = ConnectorConfig::new(ebb_test_plugins::POSTGRES)
        .with_config("allowed-resources", "public.invoices, public.customers")
        .with_sql("main", &pg.admin_dsn());
    let case = Case {
        granted: permission("select", "public.invoices"),
        other: Some(permission("select", "public.salaries")),
        settle: Duration::from_secs(2),
    };
    let report = passes_checks("pg", &config, &case, builtin(&config).await.as_ref(), 19).await;
    assert!(
        report
            .checks
            .iter()
            .any(|c| c.name == "what the grantee made is removed or reported as residue"),
        "{report:#?}"
    );
    assert_eq!(
        pg.psql("select count(*) from pg_tables where tablename like 'ebb_probe_%'")
            .unwrap(),
        "0",
        "the derived table was dropped"
    );
    assert!(pg.ebb_roles().unwrap().is_empty(), "nothing left behind");
}

async fn redis_kit(component: &str) {
    let server = Redis::start().unwrap();
    let config = ConnectorConfig::new(component)
        .with_config("allowed-keys", "cache:*")
        .with_redis("main", &server.admin_url())
        .with_limits(ebb_engine::config::LimitsConfig {
            memory_mib: 128,
            ..Default::default()
        });
    let case = Case {
        granted: permission("get", "cache:*"),
        other: Some(permission("get", "secret:*")),
        settle: Duration::from_secs(1),
    };
    passes("redis", &config, &case, builtin(&config).await.as_ref()).await;
    assert!(
        server.ebb_users().unwrap().is_empty(),
        "nothing left behind"
    );
}

/// A component that `script` (run by `scripts/test.sh` first) builds at `path`,
/// relative to the repository.
fn built(path: &str, script: &str) -> String {
    let path = format!("{}/../../{path}", env!("CARGO_MANIFEST_DIR"));
    assert!(
        std::path::Path::new(&path).exists(),
        "{path} is missing: run {script} (scripts/test.sh does)"
    );
    path
}

#[tokio::test]
async fn redis_passes_the_conformance_kit() {
    ebb_test_support::require!(Redis);
    redis_kit(ebb_test_plugins::REDIS).await;
}

/// The Python connector, `plugins/python-redis`.
#[tokio::test]
async fn the_python_redis_connector_passes_the_conformance_kit() {
    ebb_test_support::require!(Redis, PyConnector);
    let path = built(
        "target/py-plugins/redis_py.wasm",
        "scripts/build-py-connector.sh",
    );
    redis_kit(&path).await;
}

/// The JavaScript connector, `plugins/js-redis`.
#[tokio::test]
async fn the_javascript_redis_connector_passes_the_conformance_kit() {
    ebb_test_support::require!(Redis, JsConnector);
    let path = built(
        "target/js-plugins/redis_js.wasm",
        "scripts/build-js-connector.sh",
    );
    redis_kit(&path).await;
}

/// A connector that says `revoked` while access remains fails the kit.
#[tokio::test]
async fn a_connector_that_lies_fails_the_kit() {
    let config = ConnectorConfig::new(ebb_test_plugins::MISBEHAVE).with_config("mode", "none");
    let connector = Runtime::new(&RuntimeConfig::default())
        .unwrap()
        .load("liar", &config.spec())
        .await
        .unwrap();
    let report = conformance::run(
        &connector,
        &Case {
            granted: Permission {
                action: "use".into(),
                resource: "x".into(),
            },
            other: None,
            settle: Duration::from_millis(100),
        },
        None,
    )
    .await;
    print(&report);
    assert!(!report.passed());
    let failed: Vec<&str> = report
        .checks
        .iter()
        .filter(|c| !c.passed)
        .map(|c| c.name)
        .collect();
    assert!(
        failed.contains(&"verify finds the access of a live grant"),
        "{failed:?}"
    );
}

#[test]
fn ebb_connector_test_runs_the_kit() {
    ebb_test_support::require!(Postgres);
    let pg = Postgres::start().unwrap();
    let dir = std::env::temp_dir().join(format!("ebb-conf-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("pg.toml"),
        "config = { allowed-resources = \"public.invoices\" }\nsql.main = { dsn-env = \"EBB_CONF_DSN\" }\n",
    )
    .unwrap();
    let run = |permission: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_ebb"))
            .args(["connector", "test", ebb_test_plugins::POSTGRES, "--config"])
            .arg(dir.join("pg.toml"))
            .args(["--permission", permission])
            .env("EBB_CONF_DSN", pg.admin_dsn())
            .output()
            .unwrap()
    };
    let out = run("select:public.invoices");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("ok   verify after revoke says revoked"),
        "{stdout}"
    );
    // Judged by the host's own PostgreSQL probe, not only by the connector's word.
    assert!(
        stdout.contains("ok   the credential works for the granted permission"),
        "{stdout}"
    );
    assert!(
        stdout.contains("ok   the credential fails after revoke"),
        "{stdout}"
    );
    assert!(
        stdout.contains("0 failed, 0 unverified: passed"),
        "{stdout}"
    );
    // A permission the connector refuses fails the kit, with exit code 1.
    let out = run("select:public.salaries");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("FAIL issue"));
}

/// Issue 12: without an independent probe the kit never says "passed": for a
/// connector the host has no probe for, the checks a probe would make are listed
/// as skipped and the run does not succeed.
#[test]
fn the_kit_without_a_probe_never_says_passed() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ebb"))
        .args([
            "connector",
            "test",
            ebb_test_plugins::NOOP,
            "--permission",
            "use:x",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(stdout.contains("3 unverified"), "{stdout}");
    assert!(!stdout.contains(": passed"), "{stdout}");
    assert!(
        stdout.contains("skip the credential fails after revoke"),
        "{stdout}"
    );
}

/// The oauth2 connector for `server`'s `client`, which the host authenticates.
fn oauth2_config(server: &Oidc, client: &str, scopes: &str) -> ConnectorConfig {
    ConnectorConfig::new(ebb_test_plugins::OAUTH2)
        .with_config("token-endpoint", &server.url("/token"))
        .with_config("revocation-endpoint", &server.url("/token/revocation"))
        .with_config(
            "introspection-endpoint",
            &server.url("/token/introspection"),
        )
        .with_config("allowed-scopes", scopes)
        .with_http_origin(&server.origin(), true)
        .with_http_basic_auth(
            &server.origin(),
            client,
            ebb_test_support::oidc::CLIENT_SECRET,
        )
}

/// `plugins/oauth2` against oidc-provider: opaque tokens, revoked by value (RFC
/// 7009) and judged by introspection as a resource server.
#[tokio::test]
async fn oauth2_passes_the_conformance_kit() {
    ebb_test_support::require!(Oidc);
    let server = Oidc::start(300).unwrap();
    let config = oauth2_config(&server, "ebb", "invoices:read, reports:read");
    let case = Case {
        granted: permission("scope", "invoices:read"),
        other: Some(permission("scope", "reports:read")),
        settle: Duration::from_secs(1),
    };
    // Two more checks than a connector that finds what it made from the grant id
    // (what may remain without handle or credential is reported, not hidden), and
    // two fewer: tokens cannot be listed, so there is no inventory.
    let report = passes_checks(
        "oauth2",
        &config,
        &case,
        &OAuthProbe { server: &server },
        18,
    )
    .await;
    assert!(
        report
            .not_offered
            .iter()
            .any(|n| n.operation == "inventory"),
        "{report:#?}"
    );
}

/// `plugins/aws-iam` against moto with authentication on, judged with boto3.
#[tokio::test]
async fn aws_iam_passes_the_conformance_kit() {
    ebb_test_support::require!(Moto);
    let server = Moto::start().unwrap();
    let (key_id, secret) = server.admin_key();
    let config = ConnectorConfig::new(ebb_test_plugins::AWS_IAM)
        .with_config("iam-endpoint", &server.endpoint())
        .with_config("sts-endpoint", &server.endpoint())
        .with_config("access-key-id", key_id)
        .with_config("allowed-actions", "s3:ListAllMyBuckets, iam:ListUsers")
        .with_config("allowed-resources", "*")
        .with_secret("secret-access-key", secret)
        .with_http_origin(&server.endpoint(), true);
    let case = Case {
        granted: permission("s3:ListAllMyBuckets", "*"),
        other: Some(permission("iam:ListUsers", "*")),
        settle: Duration::from_secs(1),
    };
    passes("aws", &config, &case, &AwsProbe { server: &server }).await;
    assert!(
        server.ebb_users().await.unwrap().is_empty(),
        "nothing left behind"
    );
}

/// The same connector for self-contained JWTs, which it declares irrevocable: the
/// kit checks that `verify-revoked` keeps reporting the token after `revoke`.
/// (Introspection cannot judge a JWT, so no probe.)
#[tokio::test]
async fn oauth2_with_jwt_tokens_passes_the_conformance_kit_honestly() {
    ebb_test_support::require!(Oidc);
    let server = Oidc::start(300).unwrap();
    let config =
        oauth2_config(&server, "ebb-jwt", "invoices:read").with_config("token-format", "jwt");
    let connector = Runtime::new(&RuntimeConfig::default())
        .unwrap()
        .load("oauth2-jwt", &config.spec())
        .await
        .unwrap();
    let case = Case {
        granted: permission("scope", "invoices:read"),
        other: None,
        settle: Duration::from_secs(1),
    };
    let report = conformance::run(&connector, &case, None).await;
    print(&report);
    // Every check it could make passed; those a probe would make are not claimed.
    assert_eq!(
        report.outcome(),
        conformance::Outcome::Unverified,
        "{report:#?}"
    );
    assert!(report.checks.iter().all(|c| c.passed), "{report:#?}");
    assert!(!report.skipped.is_empty());
    let names: Vec<&str> = report.checks.iter().map(|c| c.name).collect();
    assert!(
        names.contains(&"verify after revoke still reports the irrevocable credential"),
        "{names:?}"
    );
    assert_eq!(report.checks.len(), 11, "every check ran: {names:?}");
}
