//! The mariadb connector (issue 18) against a real MariaDB server: `DROP USER`
//! alone leaves a live session connected and running (shown here), so revoke also
//! kills it; a
//! grant reads exactly its tables; the event-based lock ends logins at `not-after`
//! with no help from the host; the conformance kit passes with a probe that logs
//! in with its own client (mysql_async), never through the connector.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly"
)]

use ebb_core::contract::{Credential, Grant, Permission, Subject, SubjectKind, Verdict};
use ebb_engine::config::{ConnectorConfig, RuntimeConfig};
use ebb_runtime::conformance::{self, Case, Probe};
use ebb_runtime::{LoadedConnector, Runtime};
use ebb_test_support::MariaDb;
use mysql_async::prelude::Queryable as _;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

fn permission(action: &str, resource: &str) -> Permission {
    Permission {
        action: action.into(),
        resource: resource.into(),
    }
}

fn grant(id: &str, permissions: &[(&str, &str)], ttl_ms: u64) -> Grant {
    Grant {
        id: id.into(),
        subject: Subject {
            id: "spiffe://test/billing".into(),
            kind: SubjectKind::Workload,
            claims: vec![],
        },
        permissions: permissions.iter().map(|(a, r)| permission(a, r)).collect(),
        not_after: ebb_test_support::now_ms() + ttl_ms,
        task: "reconcile orders".into(),
    }
}

fn config(server: &MariaDb) -> ConnectorConfig {
    ConnectorConfig::new(ebb_test_plugins::MARIADB)
        .with_config("allowed-resources", "shop.orders")
        .with_mysql("main", &server.admin_url())
}

async fn load(config: &ConnectorConfig) -> LoadedConnector {
    Runtime::new(&RuntimeConfig::default())
        .unwrap()
        .load("mariadb", &config.spec())
        .await
        .unwrap()
}

/// A session of the credential's account, or `None` when the login is refused.
async fn session(
    server: &MariaDb,
    credential: &Credential,
) -> anyhow::Result<Option<mysql_async::Conn>> {
    let url = server.url_as(
        credential.get("user").unwrap_or_default(),
        credential.get("password").unwrap_or_default(),
    );
    match mysql_async::Conn::new(mysql_async::Opts::from_url(&url)?).await {
        Ok(conn) => Ok(Some(conn)),
        // Access denied, account locked, password expired.
        Err(mysql_async::Error::Server(e)) if matches!(e.code, 1045 | 4151 | 1862 | 1820) => {
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// Whether `conn` may read `table`.
async fn reads(conn: &mut mysql_async::Conn, table: &str) -> anyhow::Result<bool> {
    match conn
        .query_drop(format!("SELECT count(*) FROM {table}"))
        .await
    {
        Ok(()) => Ok(true),
        // 1142: command denied on the table.
        Err(mysql_async::Error::Server(e)) if e.code == 1142 => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Judges a credential with its own MySQL client: it logs in and reads the table.
struct MysqlProbe<'a> {
    server: &'a MariaDb,
}

impl Probe for MysqlProbe<'_> {
    fn works<'a>(
        &'a self,
        credential: &'a Credential,
        permission: &'a Permission,
    ) -> Pin<Box<dyn Future<Output = anyhow::Result<bool>> + Send + 'a>> {
        Box::pin(async move {
            if permission.action != "select" {
                anyhow::bail!("the MySQL probe judges `select` only");
            }
            let Some(mut conn) = session(self.server, credential).await? else {
                return Ok(false);
            };
            let works = reads(&mut conn, &permission.resource).await;
            let _ = conn.disconnect().await;
            works
        })
    }
}

/// What revoke has to deal with: the server keeps a dropped account's session.
#[tokio::test]
async fn drop_user_alone_leaves_the_session_running() {
    ebb_test_support::require!(MariaDb);
    let server = MariaDb::start().unwrap();
    server
        .sql(
            "CREATE USER 'plain'@'%' IDENTIFIED BY 'plain-pass'; \
             GRANT SELECT ON shop.orders TO 'plain'@'%'",
        )
        .unwrap();
    let credential = Credential {
        fields: vec![
            ("user".into(), "plain".into()),
            ("password".into(), "plain-pass".into()),
        ],
    };
    let mut conn = session(&server, &credential).await.unwrap().unwrap();
    server.sql("DROP USER 'plain'@'%'").unwrap();
    // No new login, but the session stays connected and keeps running statements
    // (MariaDB rechecks table privileges per statement; what it already had open,
    // a long query or a transaction, goes on).
    assert!(session(&server, &credential).await.unwrap().is_none());
    conn.query_drop("SELECT 1")
        .await
        .expect("the dropped account's session still runs statements");
    assert_eq!(
        server
            .sql("SELECT count(*) FROM information_schema.processlist WHERE user = 'plain'")
            .unwrap(),
        "1"
    );
}

#[tokio::test]
async fn a_grant_reads_exactly_its_table_and_revoke_ends_its_session() {
    ebb_test_support::require!(MariaDb);
    let server = MariaDb::start().unwrap();
    let c = load(&config(&server)).await;
    let g = grant("01JMARIAREAD", &[("select", "shop.orders")], 600_000);
    let issued = c.issue(&g).await.unwrap();
    c.verify_issued(&g, &issued.handle, &issued.credential)
        .await
        .unwrap();
    let mut conn = session(&server, &issued.credential)
        .await
        .unwrap()
        .expect("the issued credential logs in");
    assert!(reads(&mut conn, "shop.orders").await.unwrap());
    assert!(!reads(&mut conn, "shop.payroll").await.unwrap());
    let live = c
        .verify_revoked(&g, Some(&issued.handle), Some(&issued.credential))
        .await
        .unwrap();
    assert!(
        matches!(&live, Verdict::Residual(r) if r.len() == 3),
        "{live:?}"
    );

    c.revoke(&g, Some(&issued.handle), Some(&issued.credential))
        .await
        .unwrap();
    // The session that was open is gone, not left running.
    assert!(
        conn.query_drop("SELECT count(*) FROM shop.orders")
            .await
            .is_err(),
        "the grantee's session survived revoke"
    );
    assert_eq!(
        c.verify_revoked(&g, Some(&issued.handle), Some(&issued.credential))
            .await
            .unwrap(),
        Verdict::Revoked
    );
    assert!(
        session(&server, &issued.credential)
            .await
            .unwrap()
            .is_none()
    );
    assert!(server.ebb_accounts().unwrap().is_empty());
}

/// With `lock-with-event-in`, the server itself locks the account at `not-after`:
/// nothing here calls revoke, and the login stops working on time.
#[tokio::test]
async fn the_server_locks_the_account_at_not_after_by_itself() {
    ebb_test_support::require!(MariaDb);
    let server = MariaDb::start().unwrap();
    let c = load(&config(&server).with_config("lock-with-event-in", "ebb_events")).await;
    assert!(c.info().capabilities.downstream_expiry);
    let g = grant("01JMARIALOCK", &[("select", "shop.orders")], 3_000);
    let issued = c.issue(&g).await.unwrap();
    assert!(
        session(&server, &issued.credential)
            .await
            .unwrap()
            .is_some()
    );
    tokio::time::sleep(Duration::from_millis(
        g.not_after.saturating_sub(ebb_test_support::now_ms()) + 2_000,
    ))
    .await;
    assert!(
        session(&server, &issued.credential)
            .await
            .unwrap()
            .is_none(),
        "the account still logs in after not-after"
    );
    c.revoke(&g, Some(&issued.handle), None).await.unwrap();
    assert!(server.ebb_accounts().unwrap().is_empty());
    assert_eq!(
        server
            .sql("SELECT count(*) FROM information_schema.events")
            .unwrap(),
        "0"
    );
}

#[tokio::test]
async fn mariadb_passes_the_conformance_kit() {
    ebb_test_support::require!(MariaDb);
    let server = MariaDb::start().unwrap();
    let c =
        load(&config(&server).with_config("allowed-resources", "shop.orders, shop.payroll")).await;
    let case = Case {
        granted: permission("select", "shop.orders"),
        other: Some(permission("select", "shop.payroll")),
        settle: Duration::from_secs(1),
    };
    let report = conformance::run(&c, &case, Some(&MysqlProbe { server: &server })).await;
    eprint!("{report}");
    assert!(report.passed(), "{report:#?}");
    assert_eq!(report.checks.len(), 18, "every check ran");
    assert!(
        server.ebb_accounts().unwrap().is_empty(),
        "nothing left behind"
    );
}
