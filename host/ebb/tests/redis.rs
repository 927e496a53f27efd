//! The redis connector against a real Redis server: live connections end on revoke,
//! and nothing but plain key patterns and allowed commands can be granted.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly"
)]

use ebb_core::contract::{
    ConnectorError, Grant, Permission, ResidueKind, Subject, SubjectKind, Verdict,
};
use ebb_engine::config::{ConnectorConfig, RuntimeConfig};
use ebb_runtime::{CallError, LoadedConnector, Runtime};
use ebb_test_support::Redis;

fn grant(id: &str, action: &str, resource: &str) -> Grant {
    Grant {
        id: id.into(),
        subject: Subject {
            id: "spiffe://test/cache-reader".into(),
            kind: SubjectKind::Workload,
            claims: vec![],
        },
        permissions: vec![Permission {
            action: action.into(),
            resource: resource.into(),
        }],
        not_after: u64::MAX / 2,
        task: "warm the cache".into(),
    }
}

async fn connector(server: &Redis) -> LoadedConnector {
    Runtime::new(&RuntimeConfig::default())
        .unwrap()
        .load(
            "redis",
            &ConnectorConfig::new(ebb_test_plugins::REDIS)
                .with_config("allowed-keys", "cache:*, config:feature-flags")
                .with_redis("main", &server.admin_url())
                .spec(),
        )
        .await
        .unwrap()
}

#[tokio::test]
async fn revoke_ends_a_live_connection() {
    ebb_test_support::require!(Redis);
    let server = Redis::start().unwrap();
    let c = connector(&server).await;
    let g = grant("01LIVE", "get", "cache:*");
    let issued = c.issue(&g).await.unwrap();
    let url = format!(
        "redis://{}:{}@127.0.0.1:{}",
        issued.credential.get("user").unwrap(),
        issued.credential.get("password").unwrap(),
        server.port()
    );
    let mut live = redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let value: String = redis::cmd("GET")
        .arg("cache:a")
        .query_async(&mut live)
        .await
        .unwrap();
    assert_eq!(value, "1");
    // While it is open, verification sees the session.
    match c
        .verify_revoked(&g, Some(&issued.handle), None)
        .await
        .unwrap()
    {
        Verdict::Residual(r) => assert!(
            r.iter().any(|r| r.detail.contains("connection(s)")),
            "{r:?}"
        ),
        Verdict::Revoked => panic!("a live grant verified as revoked"),
    }
    c.revoke(&g, Some(&issued.handle), None).await.unwrap();
    let after = redis::cmd("GET")
        .arg("cache:a")
        .query_async::<String>(&mut live)
        .await;
    assert!(
        after.is_err(),
        "the open connection still works after revoke: {after:?}"
    );
    assert_eq!(
        c.verify_revoked(&g, None, Some(&issued.credential))
            .await
            .unwrap(),
        Verdict::Revoked
    );
}

#[tokio::test]
async fn only_plain_patterns_and_allowed_commands_are_granted() {
    ebb_test_support::require!(Redis);
    let server = Redis::start().unwrap();
    let c = connector(&server).await;
    // Outside the allow-list is a request that can never succeed as given: invalid,
    // and `validate` says so before anyone approves it.
    for (action, resource, want) in [
        ("get", "secret:*", "invalid"),
        ("get", "config:*", "invalid"),
        ("get", "cache:* +@all", "invalid"),
        ("get", "cache:*:x", "invalid"),
        ("get", "%RW~*", "invalid"),
        ("flushall", "cache:*", "invalid"),
        ("set", "cache:*", "invalid"),
    ] {
        let err = c
            .issue(&grant("01BAD", action, resource))
            .await
            .unwrap_err();
        let kind = match &err {
            CallError::Connector(ConnectorError::Denied(_)) => "denied",
            CallError::Connector(ConnectorError::Invalid(_)) => "invalid",
            other => panic!("{action} {resource}: {other}"),
        };
        assert_eq!(kind, want, "{action} {resource}: {err}");
        let checked = c
            .validate(&grant("01BAD", action, resource).permissions)
            .await;
        assert!(
            matches!(
                checked,
                Err(CallError::Connector(ConnectorError::Invalid(_)))
            ),
            "validate {action} {resource}: {checked:?}"
        );
    }
    // An exact key is allowed as itself.
    let g = grant("01EXACT", "get", "config:feature-flags");
    c.issue(&g).await.unwrap();
    c.revoke(&g, None, None).await.unwrap();
    assert!(server.ebb_users().unwrap().is_empty());
}

/// Issue 13: TLS to Redis. Lent a `rediss://` URL and the server's CA file, the
/// connector runs the whole lifecycle over verified TLS (commands and login
/// probes); trusting another CA, it gets no connection at all.
#[tokio::test]
async fn a_rediss_url_with_a_ca_file_runs_over_verified_tls() {
    ebb_test_support::require!(Redis);
    let server = Redis::start_tls().unwrap();
    let load = |name: &'static str, ca: std::path::PathBuf| {
        let mut config = ConnectorConfig::new(ebb_test_plugins::REDIS)
            .with_config("allowed-keys", "cache:*")
            .with_redis("main", &server.tls_url().unwrap());
        config.redis.get_mut("main").unwrap().ca_file = Some(ca);
        async move {
            Runtime::new(&RuntimeConfig::default())
                .unwrap()
                .load(name, &config.spec())
                .await
                .unwrap()
        }
    };
    let tls = load("redis-tls", server.ca_file().unwrap().to_path_buf()).await;
    let g = grant("01TLS", "get", "cache:*");
    let issued = tls.issue(&g).await.unwrap();
    tls.verify_issued(&g, &issued.handle, &issued.credential)
        .await
        .unwrap();
    tls.revoke(&g, Some(&issued.handle), None).await.unwrap();
    assert_eq!(
        tls.verify_revoked(&g, Some(&issued.handle), Some(&issued.credential))
            .await
            .unwrap(),
        Verdict::Revoked
    );

    let other = ebb_test_support::tls::unrelated_ca_file("redis").unwrap();
    let wrong = load("redis-wrong-ca", other.clone()).await;
    let err = wrong
        .issue(&grant("01TLS2", "get", "cache:*"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, CallError::Connector(ConnectorError::Unavailable(_))),
        "{err:?}"
    );
    assert!(server.ebb_users().unwrap().is_empty());
    let _ = std::fs::remove_file(other);
}

/// Issue 14: a Redis grant cannot mint access that outlives it. `ACL` (new users
/// and passwords) and the other commands with lasting effect are not offered even
/// when the operator lists them, so the host refuses such a request before anyone
/// approves it, and the connector refuses to issue one.
#[tokio::test]
async fn commands_that_mint_access_are_not_granted_by_default() {
    ebb_test_support::require!(Redis);
    let server = Redis::start().unwrap();
    let c = Runtime::new(&RuntimeConfig::default())
        .unwrap()
        .load(
            "redis-minting",
            &ConnectorConfig::new(ebb_test_plugins::REDIS)
                .with_config("allowed-keys", "cache:*")
                .with_config("allowed-commands", "get, acl, config")
                .with_redis("main", &server.admin_url())
                .spec(),
        )
        .await
        .unwrap();
    let offered: Vec<&str> = c.info().actions.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(offered, vec!["get"]);
    for command in ["acl", "config"] {
        match c.issue(&grant("01MINTING", command, "cache:*")).await {
            Err(CallError::Connector(ConnectorError::Invalid(m))) => {
                assert!(m.contains("allow-minting"), "{m}");
            }
            other => panic!("`{command}` must be refused: {other:?}"),
        }
    }
    assert!(server.ebb_users().unwrap().is_empty());
}

/// Issue 14: where the operator allows minting, an ACL user a grant made with its
/// own credential outlives the grant's user: it is residue (derived-credential,
/// with the `ACL DELUSER` step), never `verified`, until it is gone. Users that
/// existed before the grant are not blamed on it.
#[tokio::test]
async fn acl_users_a_minting_grant_made_are_residue() {
    ebb_test_support::require!(Redis);
    let server = Redis::start().unwrap();
    let c = Runtime::new(&RuntimeConfig::default())
        .unwrap()
        .load(
            "redis-minting-allowed",
            &ConnectorConfig::new(ebb_test_plugins::REDIS)
                .with_config("allowed-keys", "cache:*")
                .with_config("allowed-commands", "get, acl")
                .with_config("allow-minting", "true")
                .with_redis("main", &server.admin_url())
                .spec(),
        )
        .await
        .unwrap();
    let mut g = grant("01MINTEDACL", "acl", "cache:*");
    g.permissions.push(Permission {
        action: "get".into(),
        resource: "cache:*".into(),
    });
    let issued = c.issue(&g).await.unwrap();
    let user = issued.credential.get("user").unwrap().to_owned();
    let password = issued.credential.get("password").unwrap().to_owned();
    let mut grantee = redis::Client::open(format!(
        "redis://{user}:{password}@127.0.0.1:{}",
        server.port()
    ))
    .unwrap()
    .get_connection()
    .unwrap();
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("mallory")
        .arg("on")
        .arg(">minted-password")
        .arg("~*")
        .arg("+@all")
        .query(&mut grantee)
        .unwrap();
    drop(grantee);
    c.revoke(&g, Some(&issued.handle), Some(&issued.credential))
        .await
        .unwrap();
    let verdict = c
        .verify_revoked(&g, Some(&issued.handle), Some(&issued.credential))
        .await
        .unwrap();
    let Verdict::Residual(residue) = verdict else {
        panic!("the minted ACL user must be residue, got {verdict:?}");
    };
    assert_eq!(residue.len(), 1, "{residue:?}");
    assert_eq!(residue[0].kind, ResidueKind::DerivedCredential);
    assert!(
        residue[0].detail.contains("ACL user mallory"),
        "{residue:?}"
    );
    assert_eq!(
        residue[0].remedy.as_deref(),
        Some("if it is not yours: ACL DELUSER mallory")
    );
    // The operator removes it: verified.
    server.run(&["ACL", "DELUSER", "mallory"]).unwrap();
    assert_eq!(
        c.verify_revoked(&g, Some(&issued.handle), Some(&issued.credential))
            .await
            .unwrap(),
        Verdict::Revoked
    );
}
