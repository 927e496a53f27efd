//! The rabbitmq connector (issue 18) against a real RabbitMQ node: a grant reads
//! exactly its queues over AMQP; revoke deletes the user *and* closes the AMQP
//! connection it has open; the conformance kit passes with a probe that speaks
//! AMQP (amqprs), never the management API the connector uses.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly"
)]

use amqprs::channel::BasicGetArguments;
use amqprs::connection::{Connection, OpenConnectionArguments};
use ebb_core::contract::{
    ConnectorError, Credential, Grant, Permission, Subject, SubjectKind, Verdict,
};
use ebb_engine::config::{ConnectorConfig, RuntimeConfig};
use ebb_runtime::conformance::{self, Case, Probe};
use ebb_runtime::{CallError, LoadedConnector, Runtime};
use ebb_test_support::RabbitMq;
use ebb_test_support::rabbitmq::{ADMIN, VHOST};
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

fn permission(action: &str, resource: &str) -> Permission {
    Permission {
        action: action.into(),
        resource: resource.into(),
    }
}

fn grant(id: &str, permissions: &[(&str, &str)]) -> Grant {
    Grant {
        id: id.into(),
        subject: Subject {
            id: "spiffe://test/order-worker".into(),
            kind: SubjectKind::Workload,
            claims: vec![],
        },
        permissions: permissions.iter().map(|(a, r)| permission(a, r)).collect(),
        not_after: u64::MAX / 2,
        task: "drain the order queue".into(),
    }
}

fn config(node: &RabbitMq) -> ConnectorConfig {
    ConnectorConfig::new(ebb_test_plugins::RABBITMQ)
        .with_config("api", &node.api_origin())
        .with_config("allowed-vhosts", VHOST)
        .with_config("allowed-names", "orders.*")
        .with_http_origin(&node.api_origin(), true)
        .with_http_basic_auth(&node.api_origin(), ADMIN.0, ADMIN.1)
}

async fn connector(node: &RabbitMq) -> LoadedConnector {
    Runtime::new(&RuntimeConfig::default())
        .unwrap()
        .load("rabbitmq", &config(node).spec())
        .await
        .unwrap()
}

/// An AMQP connection to the test vhost as `credential`'s user, or `None` when the
/// broker refuses the login.
async fn amqp(node: &RabbitMq, credential: &Credential) -> anyhow::Result<Option<Connection>> {
    let args = OpenConnectionArguments::new(
        "127.0.0.1",
        node.amqp_port(),
        credential.get("user").unwrap_or_default(),
        credential.get("password").unwrap_or_default(),
    )
    .virtual_host(VHOST)
    .finish();
    match tokio::time::timeout(Duration::from_secs(10), Connection::open(&args)).await? {
        Ok(connection) => Ok(Some(connection)),
        // ACCESS_REFUSED during the handshake: the credential does not work.
        Err(
            amqprs::error::Error::ConnectionOpenError(_) | amqprs::error::Error::NetworkError(_),
        ) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Whether `connection` may take a message from `queue` (`basic.get`, which needs
/// `read` on it), on a channel of its own: the broker answers a refusal
/// (ACCESS_REFUSED) by closing that channel, and only that channel.
async fn reads(connection: &Connection, queue: &str) -> anyhow::Result<bool> {
    let channel = connection.open_channel(None).await?;
    let got = tokio::time::timeout(
        Duration::from_secs(5),
        channel.basic_get(BasicGetArguments::new(queue)),
    )
    .await;
    if let Ok(Ok(_)) = got {
        return Ok(true);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while channel.is_open() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if !channel.is_open() && connection.is_open() {
        return Ok(false);
    }
    anyhow::bail!("basic.get on {queue} failed without a refusal: {got:?}")
}

/// Judges a credential over AMQP: it logs in and reads the permission's queue.
struct AmqpProbe<'a> {
    node: &'a RabbitMq,
}

impl Probe for AmqpProbe<'_> {
    fn works<'a>(
        &'a self,
        credential: &'a Credential,
        permission: &'a Permission,
    ) -> Pin<Box<dyn Future<Output = anyhow::Result<bool>> + Send + 'a>> {
        Box::pin(async move {
            if permission.action != "read" {
                anyhow::bail!("the AMQP probe judges `read` only");
            }
            let Some(connection) = amqp(self.node, credential).await? else {
                return Ok(false);
            };
            let queue = permission.resource.rsplit('/').next().unwrap_or_default();
            let works = reads(&connection, queue).await;
            let _ = connection.close().await;
            works
        })
    }
}

#[tokio::test]
async fn a_grant_reads_exactly_its_queues_and_revoke_closes_its_connection() {
    ebb_test_support::require!(RabbitMq);
    let node = RabbitMq::start().await.unwrap();
    let c = connector(&node).await;
    let g = grant("01JRABBITREAD", &[("read", "ebb/orders.in")]);
    let issued = c.issue(&g).await.unwrap();
    c.verify_issued(&g, &issued.handle, &issued.credential)
        .await
        .unwrap();
    let connection = amqp(&node, &issued.credential)
        .await
        .unwrap()
        .expect("the issued credential logs in");
    assert!(reads(&connection, "orders.in").await.unwrap());
    assert!(!reads(&connection, "payroll").await.unwrap());
    // Still connected; the broker lists the session (its management database learns
    // of connections with the statistics interval: up to 5 s by default).
    let user = issued.credential.get("user").unwrap().to_owned();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while node.connections_of(&user).await.unwrap() == 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(node.connections_of(&user).await.unwrap(), 1);
    let live = c
        .verify_revoked(&g, Some(&issued.handle), Some(&issued.credential))
        .await
        .unwrap();
    assert!(
        matches!(live, Verdict::Residual(ref r) if r.len() == 3),
        "{live:?}"
    );

    // A second connection opened just before revoke: the management API does not
    // list it yet, so only the broker's own handling of the deleted user ends it.
    let late = amqp(&node, &issued.credential).await.unwrap().unwrap();
    c.revoke(&g, Some(&issued.handle), Some(&issued.credential))
        .await
        .unwrap();
    // Both open AMQP connections are closed by the broker, not left to run.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while (connection.is_open() || late.is_open()) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !connection.is_open(),
        "the grantee's connection survived revoke"
    );
    assert!(
        !late.is_open(),
        "a connection opened just before revoke survived it"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while node.connections_of(&user).await.unwrap() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(node.connections_of(&user).await.unwrap(), 0);
    assert_eq!(
        c.verify_revoked(&g, Some(&issued.handle), Some(&issued.credential))
            .await
            .unwrap(),
        Verdict::Revoked
    );
    assert!(amqp(&node, &issued.credential).await.unwrap().is_none());
    assert!(node.ebb_users().await.unwrap().is_empty());
}

#[tokio::test]
async fn requests_outside_the_allow_lists_are_invalid_before_approval() {
    ebb_test_support::require!(RabbitMq);
    let node = RabbitMq::start().await.unwrap();
    let c = connector(&node).await;
    for (action, resource, why) in [
        ("read", "ebb/payroll", "allowed-names"),
        ("read", "other/orders.in", "allowed-vhosts"),
        ("read", "orders.in", "<vhost>/<name>"),
        ("read", "ebb/orders.(in|out)", "prefix*"),
        ("read", "ebb/orders*", "allowed-names"),
        ("purge", "ebb/orders.in", "unknown action"),
    ] {
        let err = c
            .validate(&[permission(action, resource)])
            .await
            .unwrap_err();
        assert!(
            matches!(&err, CallError::Connector(ConnectorError::Invalid(m)) if m.contains(why)),
            "{action} {resource}: {err:?}"
        );
        // `issue` refuses the same, and creates nothing.
        assert!(
            c.issue(&grant("01JRABBITBAD", &[(action, resource)]))
                .await
                .is_err()
        );
    }
    assert!(node.ebb_users().await.unwrap().is_empty());
}

#[tokio::test]
async fn rabbitmq_passes_the_conformance_kit() {
    ebb_test_support::require!(RabbitMq);
    let node = RabbitMq::start().await.unwrap();
    let c = connector(&node).await;
    let case = Case {
        granted: permission("read", "ebb/orders.in"),
        other: Some(permission("read", "ebb/payroll")),
        settle: Duration::from_secs(2),
    };
    let report = conformance::run(&c, &case, Some(&AmqpProbe { node: &node })).await;
    eprint!("{report}");
    assert!(report.passed(), "{report:#?}");
    assert_eq!(report.checks.len(), 18, "every check ran");
    assert!(
        node.ebb_users().await.unwrap().is_empty(),
        "nothing left behind"
    );
}
