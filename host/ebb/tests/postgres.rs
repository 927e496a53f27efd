//! The postgres connector loaded by the host, against a real PostgreSQL started on
//! loopback (see `ebb_test_support::Postgres`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly"
)]

use ebb_core::contract::{
    ConnectorError, Credential, Grant, Permission, ResidueKind, Subject, SubjectKind, Verdict,
};
use ebb_engine::config::{ConnectorConfig, RuntimeConfig};
use ebb_runtime::{CallError, LoadedConnector, Runtime};
use ebb_test_support::Postgres;

fn grant(id: &str, permissions: &[(&str, &str)]) -> Grant {
    Grant {
        id: id.into(),
        subject: Subject {
            id: "spiffe://test/billing-agent".into(),
            kind: SubjectKind::Workload,
            claims: vec![],
        },
        permissions: permissions
            .iter()
            .map(|(action, resource)| Permission {
                action: (*action).into(),
                resource: (*resource).into(),
            })
            .collect(),
        not_after: ebb_test_support::now_ms() + 60_000,
        task: "reconcile invoices".into(),
    }
}

async fn connector(pg: &Postgres) -> LoadedConnector {
    let config = ConnectorConfig::new(ebb_test_plugins::POSTGRES)
        .with_config("allowed-resources", "public.invoices, public.customers")
        .with_config("standing-role:spiffe://test/billing", "svc_billing")
        .with_sql("main", &pg.admin_dsn());
    Runtime::new(&RuntimeConfig::default())
        .unwrap()
        .load("pg", &config.spec())
        .await
        .unwrap()
}

fn user_and_password(credential: &Credential) -> (String, String) {
    (
        credential.get("user").unwrap().to_owned(),
        credential.get("password").unwrap().to_owned(),
    )
}

/// Revokes with the handle, and checks the connector then finds nothing left.
async fn revoke_and_expect_revoked(
    c: &LoadedConnector,
    g: &Grant,
    issued: &ebb_core::contract::Issued,
) {
    c.revoke(g, Some(&issued.handle), None).await.unwrap();
    assert_eq!(
        c.verify_revoked(g, Some(&issued.handle), Some(&issued.credential))
            .await
            .unwrap(),
        Verdict::Revoked
    );
}

fn sqlstate(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.code().code().to_owned())
        .unwrap_or_default()
}

/// Issue 13: the role's password never reaches PostgreSQL in clear: the connector
/// sends its SCRAM verifier, so even a server logging every statement never sees
/// it — and the issued password still logs in.
#[tokio::test]
async fn the_password_reaches_postgres_only_as_a_scram_verifier() {
    ebb_test_support::require!(Postgres);
    let pg = Postgres::start().unwrap();
    pg.psql("alter system set log_statement = 'all'").unwrap();
    pg.psql("select pg_reload_conf()").unwrap();
    let pg_connector = connector(&pg).await;
    let issued = pg_connector
        .issue(&grant("01JTESTSCRAM", &[("select", "public.invoices")]))
        .await
        .unwrap();
    let (user, password) = user_and_password(&issued.credential);
    pg.connect(&user, &password).await.unwrap();
    let log = std::fs::read_to_string(pg.dir().join("server.log")).unwrap();
    assert!(
        log.contains("SCRAM-SHA-256$4096:"),
        "the role was created with a verifier"
    );
    assert!(
        !log.contains(&password),
        "the password is in the server log"
    );
}

#[tokio::test]
async fn issued_credential_reads_exactly_the_granted_table() {
    ebb_test_support::require!(Postgres);
    let pg = Postgres::start().unwrap();
    let pg_connector = connector(&pg).await;
    let g = grant("01JTESTREAD", &[("select", "public.invoices")]);
    let issued = pg_connector.issue(&g).await.unwrap();
    assert_eq!(issued.expires_at, Some(g.not_after));
    assert!(
        issued.handle.starts_with("role=ebb_01jtestread oid="),
        "{}",
        issued.handle
    );
    let (user, password) = user_and_password(&issued.credential);

    let client = pg.connect(&user, &password).await.unwrap();
    let rows = client
        .query("select id from public.invoices order by id", &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
    // Not another table, not another action.
    let err = client
        .query("select * from public.customers", &[])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), "42501");
    let err = client
        .execute("insert into public.invoices values (3, 1)", &[])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), "42501");
    let err = client
        .query("select * from public.salaries", &[])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), "42501");
    // No membership in any role, and no dangerous attributes.
    let su = pg.superuser().await;
    let row = su
        .query_one(
            "select rolsuper or rolcreaterole or rolcreatedb or rolbypassrls or rolreplication, \
             (select count(*) from pg_auth_members where member = r.oid), rolvaliduntil is not null \
             from pg_roles r where rolname = $1",
            &[&user],
        )
        .await
        .unwrap();
    assert!(!row.get::<_, bool>(0));
    assert_eq!(row.get::<_, i64>(1), 0);
    assert!(row.get::<_, bool>(2), "VALID UNTIL is set");

    // The host can prove the credential works before handing it out.
    pg_connector
        .verify_issued(&g, &issued.handle, &issued.credential)
        .await
        .unwrap();
    pg_connector
        .revoke(&g, Some(&issued.handle), None)
        .await
        .unwrap();
}

#[tokio::test]
async fn revoke_ends_live_session_and_login_then_verifies_revoked() {
    ebb_test_support::require!(Postgres);
    let pg = Postgres::start().unwrap();
    let pg_connector = connector(&pg).await;
    let g = grant(
        "01JTESTREVOKE",
        &[("select", "public.invoices"), ("update", "public.invoices")],
    );
    let issued = pg_connector.issue(&g).await.unwrap();
    let (user, password) = user_and_password(&issued.credential);
    let session = pg.connect(&user, &password).await.unwrap();
    session.query("select 1", &[]).await.unwrap();

    // Before revoking, verification finds everything that still grants access.
    let Verdict::Residual(residue) = pg_connector
        .verify_revoked(&g, Some(&issued.handle), Some(&issued.credential))
        .await
        .unwrap()
    else {
        panic!("an active grant cannot verify as revoked");
    };
    let kinds: Vec<ResidueKind> = residue.iter().map(|r| r.kind).collect();
    assert!(
        kinds.contains(&ResidueKind::EntitlementPresent),
        "{residue:?}"
    );
    assert!(kinds.contains(&ResidueKind::SessionOpen), "{residue:?}");
    assert!(
        kinds.contains(&ResidueKind::CredentialAccepted),
        "{residue:?}"
    );
    assert!(
        residue.iter().all(|r| !r.detail.contains(&password)),
        "no secret in evidence"
    );

    pg_connector
        .revoke(&g, Some(&issued.handle), None)
        .await
        .unwrap();

    // The open session is gone...
    assert!(
        session.query("select 1", &[]).await.is_err(),
        "session survived revoke"
    );
    // ...login fails...
    let err = pg.connect(&user, &password).await.unwrap_err();
    assert!(sqlstate(&err).starts_with("28"), "{err}");
    // ...and the downstream system confirms it.
    assert_eq!(
        pg_connector
            .verify_revoked(&g, Some(&issued.handle), Some(&issued.credential))
            .await
            .unwrap(),
        Verdict::Revoked
    );
    assert!(pg.ebb_roles().unwrap().is_empty());
}

#[tokio::test]
async fn incomplete_revoke_is_reported_as_residual_session() {
    ebb_test_support::require!(Postgres);
    let pg = Postgres::start().unwrap();
    let pg_connector = connector(&pg).await;
    let g = grant("01JTESTINCOMPLETE", &[("select", "public.invoices")]);
    let issued = pg_connector.issue(&g).await.unwrap();
    let (user, password) = user_and_password(&issued.credential);
    let session = pg.connect(&user, &password).await.unwrap();

    // A naive revoke: drop the role but leave its session running. PostgreSQL allows
    // it, and the session goes on with `usename` NULL.
    // (A superuser's DROP OWNED would not revoke ebb_admin's grant: revoke as the grantor.)
    pg.psql(&format!("set role ebb_admin; revoke all on public.invoices from {user}; reset role; drop role {user};"))
        .unwrap();
    session.query("select 1", &[]).await.unwrap();

    let verdict = pg_connector
        .verify_revoked(&g, Some(&issued.handle), Some(&issued.credential))
        .await
        .unwrap();
    let Verdict::Residual(residue) = verdict else {
        panic!("a live session of a dropped role must be residue, got {verdict:?}");
    };
    assert_eq!(residue.len(), 1, "{residue:?}");
    assert_eq!(residue[0].kind, ResidueKind::SessionOpen);
    assert!(residue[0].detail.contains("backend pid"), "{residue:?}");

    // Revoking again (what the host does on residue) finishes the job.
    pg_connector
        .revoke(&g, Some(&issued.handle), None)
        .await
        .unwrap();
    assert!(session.query("select 1", &[]).await.is_err());
    assert_eq!(
        pg_connector
            .verify_revoked(&g, Some(&issued.handle), None)
            .await
            .unwrap(),
        Verdict::Revoked
    );
}

/// Issue 14: what a grantee made with its grant is part of the grant. Any role
/// may create where PUBLIC may (schemas of databases from before PostgreSQL 15), so
/// the grantee copies what it may read into tables of its own, shares one, and
/// leaves another in a database the connector is not lent. Revoke drops what it
/// made wherever a connection reaches (never handing it to the admin role), and
/// where none does the role keeps nothing else and the report says where and
/// what to do; once the operator lends that database, revoke finishes the job.
#[tokio::test]
async fn what_the_grantee_made_is_dropped_or_reported_where_it_is() {
    ebb_test_support::require!(Postgres);
    let pg = Postgres::start().unwrap();
    pg.psql("grant create on schema public to public").unwrap();
    for db in ["ebb_sales", "ebb_unreached"] {
        pg.psql(&format!("create database {db}")).unwrap();
        pg.psql_in(db, "grant create on schema public to public")
            .unwrap();
    }
    let lent = |extra: &[&str]| {
        let mut config = ConnectorConfig::new(ebb_test_plugins::POSTGRES)
            .with_config("allowed-resources", "public.invoices")
            .with_sql("main", &pg.admin_dsn());
        for db in extra {
            config = config.with_sql(&format!("db:{db}"), &pg.admin_dsn_in(db));
        }
        config.spec()
    };
    let runtime = Runtime::new(&RuntimeConfig::default()).unwrap();
    let pg_connector = runtime.load("pg", &lent(&["ebb_sales"])).await.unwrap();
    let g = grant("01JTESTFOOTPRINT", &[("select", "public.invoices")]);
    let issued = pg_connector.issue(&g).await.unwrap();
    let (user, password) = user_and_password(&issued.credential);
    let session = pg.connect(&user, &password).await.unwrap();
    session
        .batch_execute(
            "create table public.stolen as select * from public.invoices; \
             grant select on public.stolen to public",
        )
        .await
        .unwrap();
    for db in ["ebb_sales", "ebb_unreached"] {
        pg.connect_in(db, &user, &password)
            .await
            .unwrap()
            .batch_execute("create table kept (secret text)")
            .await
            .unwrap();
    }
    drop(session);

    pg_connector
        .revoke(&g, Some(&issued.handle), None)
        .await
        .unwrap();
    // Dropped, not handed to the admin role.
    assert_eq!(
        pg.psql("select to_regclass('public.stolen') is null")
            .unwrap(),
        "t"
    );
    assert_eq!(
        pg.psql_in("ebb_sales", "select to_regclass('public.kept') is null")
            .unwrap(),
        "t"
    );
    // Where no connection reaches, it is reported, with where and what to do.
    let verdict = pg_connector
        .verify_revoked(&g, Some(&issued.handle), Some(&issued.credential))
        .await
        .unwrap();
    let Verdict::Residual(residue) = verdict else {
        panic!("a table left in ebb_unreached must be residue, got {verdict:?}");
    };
    let elsewhere = residue
        .iter()
        .find(|r| r.location.as_deref() == Some("ebb_unreached"))
        .unwrap_or_else(|| panic!("no residue names the database: {residue:?}"));
    assert_eq!(elsewhere.kind, ResidueKind::OwnedObject, "{elsewhere:?}");
    assert!(
        elsewhere.detail.contains("owns 1 object(s)")
            && elsewhere
                .remedy
                .as_deref()
                .is_some_and(|step| step.contains(&format!("DROP OWNED BY {user}"))),
        "{elsewhere:?}"
    );
    assert!(
        !residue
            .iter()
            .any(|r| r.kind == ResidueKind::CredentialAccepted),
        "{residue:?}"
    );
    // Everything else is gone already: the role cannot log in and reads nothing.
    assert_eq!(
        pg.psql(&format!(
            "select has_table_privilege('{user}', 'public.invoices', 'select')"
        ))
        .unwrap(),
        "f"
    );

    // The operator lends the database; the next revoke (the host's retry) finishes.
    let reaching = runtime
        .load("pg-all", &lent(&["ebb_sales", "ebb_unreached"]))
        .await
        .unwrap();
    revoke_and_expect_revoked(&reaching, &g, &issued).await;
    assert!(pg.ebb_roles().unwrap().is_empty());
}

/// Issue 13: TLS to PostgreSQL. On a server that takes TCP clients only over TLS,
/// a connection lent with the server's CA file runs the whole lifecycle (pool and
/// login probes alike over verified TLS); without it, or with another CA, the
/// connector gets no connection at all.
#[tokio::test]
async fn lent_connections_use_verified_tls_with_a_ca_file() {
    ebb_test_support::require!(Postgres);
    let pg = Postgres::start().unwrap();
    let ca = pg.require_tls().unwrap();
    let with_ca = |ca: Option<&std::path::Path>| {
        let mut config = ConnectorConfig::new(ebb_test_plugins::POSTGRES)
            .with_config("allowed-resources", "public.invoices")
            .with_sql("main", &pg.admin_dsn());
        config.sql.get_mut("main").unwrap().ca_file = ca.map(std::path::Path::to_path_buf);
        config.spec()
    };
    let runtime = Runtime::new(&RuntimeConfig::default()).unwrap();
    let tls = runtime.load("pg-tls", &with_ca(Some(&ca))).await.unwrap();
    let g = grant("01JTESTTLS", &[("select", "public.invoices")]);
    let issued = tls.issue(&g).await.unwrap();
    tls.verify_issued(&g, &issued.handle, &issued.credential)
        .await
        .unwrap();
    let over_tls = pg
        .psql(
            "select count(*) from pg_stat_ssl s join pg_stat_activity a using (pid) \
             where a.application_name = 'ebb' and s.ssl",
        )
        .unwrap();
    assert_ne!(over_tls, "0", "the pool's connections are not TLS");
    revoke_and_expect_revoked(&tls, &g, &issued).await;

    // Without the CA file: no TLS, and the server refuses the connection.
    let plain = runtime.load("pg-plain", &with_ca(None)).await.unwrap();
    let g2 = grant("01JTESTNOTLS", &[("select", "public.invoices")]);
    assert!(plain.issue(&g2).await.is_err());
    // With another CA: the server's certificate does not verify.
    let other = ebb_test_support::tls::unrelated_ca_file("pg").unwrap();
    let wrong = runtime
        .load("pg-wrong-ca", &with_ca(Some(&other)))
        .await
        .unwrap();
    assert!(wrong.issue(&g2).await.is_err());
    assert!(pg.ebb_roles().unwrap().is_empty());
    let _ = std::fs::remove_file(other);
}

#[tokio::test]
async fn revoke_without_handle_cleans_up_and_revoke_twice_succeeds() {
    ebb_test_support::require!(Postgres);
    let pg = Postgres::start().unwrap();
    let pg_connector = connector(&pg).await;
    let g = grant("01JTESTNOHANDLE", &[("select", "public.customers")]);
    // The host lost `issue`'s reply: it knows only the grant.
    let issued = pg_connector.issue(&g).await.unwrap();
    let (user, password) = user_and_password(&issued.credential);
    let session = pg.connect(&user, &password).await.unwrap();
    assert_eq!(pg.ebb_roles().unwrap(), vec![user.clone()]);

    pg_connector.revoke(&g, None, None).await.unwrap();
    assert!(pg.ebb_roles().unwrap().is_empty());
    assert!(
        session.query("select 1", &[]).await.is_err(),
        "session survived revoke"
    );
    pg_connector.revoke(&g, None, None).await.unwrap();
    pg_connector
        .revoke(&g, Some(&issued.handle), None)
        .await
        .unwrap();
    assert_eq!(
        pg_connector
            .verify_revoked(&g, None, Some(&issued.credential))
            .await
            .unwrap(),
        Verdict::Revoked
    );
    // Revoking a grant that was never issued is fine too.
    pg_connector
        .revoke(
            &grant("01JNEVERISSUED", &[("select", "public.invoices")]),
            None,
            None,
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn retried_issue_replaces_the_lost_password() {
    ebb_test_support::require!(Postgres);
    let pg = Postgres::start().unwrap();
    let pg_connector = connector(&pg).await;
    let g = grant("01JTESTRETRY", &[("select", "public.invoices")]);
    let first = pg_connector.issue(&g).await.unwrap();
    let second = pg_connector.issue(&g).await.unwrap();
    assert_eq!(pg.ebb_roles().unwrap().len(), 1);
    let (user, old) = user_and_password(&first.credential);
    let (_, new) = user_and_password(&second.credential);
    assert_ne!(old, new);
    assert!(
        pg.connect(&user, &old).await.is_err(),
        "the lost password must stop working"
    );
    pg.connect(&user, &new).await.unwrap();
    pg_connector.revoke(&g, None, None).await.unwrap();
}

#[tokio::test]
async fn bad_grants_are_refused_and_leave_nothing_behind() {
    ebb_test_support::require!(Postgres);
    let pg = Postgres::start().unwrap();
    let pg_connector = connector(&pg).await;
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], fn(&CallError) -> bool);
    let cases: &[Case] = &[
        (
            "01JBADACTION",
            &[("drop", "public.invoices")],
            |e| matches!(e, CallError::Connector(ConnectorError::Invalid(m)) if m.contains("unknown action `drop`")),
        ),
        (
            "01JNOTALLOWED",
            &[("select", "public.salaries")],
            |e| matches!(e, CallError::Connector(ConnectorError::Invalid(m)) if m.contains("allowed-resources")),
        ),
        (
            "01JMALFORMED",
            &[("select", "invoices; drop table x")],
            |e| matches!(e, CallError::Connector(ConnectorError::Invalid(m)) if m.contains("schema.table")),
        ),
        ("01JNOPERMS", &[], |e| {
            matches!(e, CallError::Connector(ConnectorError::Invalid(_)))
        }),
        (
            "bad id!",
            &[("select", "public.invoices")],
            |e| matches!(e, CallError::Connector(ConnectorError::Invalid(m)) if m.contains("grant id")),
        ),
    ];
    for (id, permissions, expected) in cases {
        let err = pg_connector
            .issue(&grant(id, permissions))
            .await
            .unwrap_err();
        assert!(expected(&err), "{id}: {err:?}");
        // `validate` refuses the same requests, before anyone approves them.
        if *id != "bad id!" {
            let checked = pg_connector
                .validate(&grant(id, permissions).permissions)
                .await
                .unwrap_err();
            assert!(expected(&checked), "validate {id}: {checked:?}");
        }
    }
    // A table in the allow-list that does not exist: the whole batch rolls back.
    let config = ConnectorConfig::new(ebb_test_plugins::POSTGRES)
        .with_config("allowed-resources", "public.*")
        .with_sql("main", &pg.admin_dsn());
    let permissive = Runtime::new(&RuntimeConfig::default())
        .unwrap()
        .load("pg2", &config.spec())
        .await
        .unwrap();
    let err = permissive
        .issue(&grant(
            "01JNOTABLE",
            &[("select", "public.invoices"), ("select", "public.nope")],
        ))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, CallError::Connector(ConnectorError::Invalid(m)) if m.contains("42P01")),
        "{err:?}"
    );
    // An expired grant is refused.
    let mut expired = grant("01JEXPIRED", &[("select", "public.invoices")]);
    expired.not_after = ebb_test_support::now_ms() - 1;
    assert!(matches!(
        pg_connector.issue(&expired).await.unwrap_err(),
        CallError::Connector(ConnectorError::Invalid(_))
    ));
    assert!(
        pg.ebb_roles().unwrap().is_empty(),
        "a refused grant left a role"
    );
}

#[tokio::test]
async fn standing_access_reports_base_role_privileges() {
    ebb_test_support::require!(Postgres);
    let pg = Postgres::start().unwrap();
    let pg_connector = connector(&pg).await;
    let subject = Subject {
        id: "spiffe://test/billing".into(),
        kind: SubjectKind::Workload,
        claims: vec![],
    };
    let residue = pg_connector.standing_access(&subject).await.unwrap();
    let details: Vec<&str> = residue.iter().map(|r| r.detail.as_str()).collect();
    assert_eq!(
        details,
        vec!["role svc_billing can select on public.customers outside any grant"]
    );
    let unknown = Subject {
        id: "nobody".into(),
        ..subject
    };
    assert!(
        pg_connector
            .standing_access(&unknown)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn database_outage_is_unavailable_and_retryable() {
    ebb_test_support::require!(Postgres);
    let pg = Postgres::start().unwrap();
    let pg_connector = connector(&pg).await;
    let g = grant("01JTESTOUTAGE", &[("select", "public.invoices")]);
    let issued = pg_connector.issue(&g).await.unwrap();
    pg.stop().unwrap();
    let err = pg_connector
        .revoke(&g, Some(&issued.handle), None)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, CallError::Connector(ConnectorError::Unavailable(_))),
        "{err:?}"
    );
    assert!(err.is_retryable());
    pg.start_server().unwrap();
    // The pool reconnects; the retried revoke completes.
    pg_connector
        .revoke(&g, Some(&issued.handle), None)
        .await
        .unwrap();
    assert_eq!(
        pg_connector
            .verify_revoked(&g, Some(&issued.handle), Some(&issued.credential))
            .await
            .unwrap(),
        Verdict::Revoked
    );
}

/// A registry with the postgres connector as `pg`, where the subject
/// `spiffe://test/billing` stands on the base role `svc_billing`.
async fn standing_registry(pg: &Postgres) -> std::sync::Arc<ebb_engine::registry::Registry> {
    let registry = std::sync::Arc::new(ebb_engine::registry::Registry::new(
        Runtime::new(&RuntimeConfig::default()).unwrap(),
    ));
    registry
        .load(
            "pg",
            &ConnectorConfig::new(ebb_test_plugins::POSTGRES)
                .with_config("allowed-resources", "public.invoices")
                .with_config("standing-role:spiffe://test/billing", "svc_billing")
                .with_sql("main", &pg.admin_dsn()),
        )
        .await
        .unwrap();
    registry
}

/// Issue 14: the host asks `standing-access` at request time, and policies see it.
/// A subject whose base role already reads the table gets no JIT grant on top of
/// it (it would reduce nothing); one without standing access is approved, and the
/// decision's evidence says what was found.
#[tokio::test]
async fn standing_access_reaches_the_policies_at_request_time() {
    use ebb_engine::approval::{Alerts, ApprovalGate, Ask, Requester};
    use ebb_engine::standing::Standing;
    ebb_test_support::require!(Postgres);
    let pg = Postgres::start().unwrap();
    let registry = standing_registry(&pg).await;
    let policies = pg.dir().join("policies.cedar");
    std::fs::write(
        &policies,
        r#"
@id("reads") @approval("auto")
permit (principal, action == Ebb::Action::"select", resource);

@id("no-jit-on-standing-access")
forbid (principal, action, resource) when { context.standing_count > 0 };
"#,
    )
    .unwrap();
    let gate = ApprovalGate::new(
        Some(&ebb_engine::config::PolicyConfig {
            path: policies,
            watch: false,
            break_glass: None,
            anomaly_window: std::time::Duration::from_secs(60),
        }),
        &registry,
        Alerts::new(vec![]),
    )
    .unwrap();
    let slot = registry.get("pg").unwrap();
    let permissions = [Permission {
        action: "select".into(),
        resource: "public.invoices".into(),
    }];
    for (subject, denied) in [
        ("spiffe://test/billing", true),
        ("spiffe://test/nobody", false),
    ] {
        let standing = Standing::of(
            &slot,
            &Subject {
                id: subject.into(),
                kind: SubjectKind::Workload,
                claims: vec![],
            },
        )
        .await;
        let decided = gate
            .decide(
                &Requester {
                    subject,
                    kind: SubjectKind::Workload,
                    issuer: None,
                    claims: &[],
                },
                &slot,
                &Ask {
                    permissions: &permissions,
                    ttl_ms: 60_000,
                    task: "reconcile",
                    reason: None,
                    break_glass: false,
                    now_ms: ebb_test_support::now_ms(),
                    standing: &standing,
                },
            )
            .unwrap();
        let evidence = decided.detail.to_string();
        match (&decided.decision, denied) {
            (ebb_engine::lifecycle::Decision::Deny { reason, .. }, true) => {
                assert!(reason.contains("no-jit-on-standing-access"), "{reason}");
                assert!(evidence.contains("svc_billing"), "{evidence}");
            }
            (ebb_engine::lifecycle::Decision::Approve { .. }, false) => {
                assert_eq!(standing.findings.as_deref(), Some(&[][..]), "{evidence}");
            }
            (other, _) => panic!("{subject}: {other:?} ({evidence})"),
        }
    }
}

/// Issue 14: standing access is watched, not only asked once. A subject seen in a
/// request is recorded with what was found (audited as `standing.found`); a scan
/// that finds nothing new writes nothing; when the subject's base role gains a
/// privilege outside any grant, the next scan reports that one finding.
#[tokio::test]
async fn standing_access_scans_report_each_new_finding_once() {
    use ebb_core::seal::{HostKey, Sealer};
    use ebb_engine::lifecycle::{Clock, EngineConfig, Lifecycle};
    use ebb_engine::standing::{self, Standing};
    ebb_test_support::require!(Postgres);
    let pg = Postgres::start().unwrap();
    let registry = standing_registry(&pg).await;
    let lifecycle = Lifecycle::new(
        ebb_store_kv::KvStore::temporary([3; 32]).unwrap(),
        Sealer::new(&HostKey::from_hex(&"33".repeat(32)).unwrap()),
        registry.clone(),
        Clock::system(),
        EngineConfig::default(),
    );
    let subject = Subject {
        id: "spiffe://test/billing".into(),
        kind: SubjectKind::Workload,
        claims: vec![],
    };
    async fn found(lifecycle: &Lifecycle) -> Vec<serde_json::Value> {
        lifecycle
            .store()
            .audit(&ebb_core::store::AuditQuery {
                limit: 1000,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_iter()
            .filter(|e| e.kind == "standing.found")
            .map(|e| e.detail["findings"].clone())
            .collect::<Vec<_>>()
    }
    let standing = Standing::of(&registry.get("pg").unwrap(), &subject).await;
    let first = standing::record(&lifecycle, "pg", &subject, &standing, true)
        .await
        .unwrap();
    assert!(
        !first.is_empty(),
        "svc_billing has standing access: {standing:?}"
    );
    assert_eq!(found(&lifecycle).await.len(), 1);

    let entries = standing::scan(&lifecycle, None).await.unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].standing.findings.as_deref(), Some(&first[..]));
    assert_eq!(
        found(&lifecycle).await.len(),
        1,
        "nothing new, nothing written"
    );

    pg.psql("grant delete on public.invoices to svc_billing")
        .unwrap();
    standing::scan(&lifecycle, None).await.unwrap();
    let events = found(&lifecycle).await;
    assert_eq!(events.len(), 2);
    let new: Vec<String> = serde_json::from_value(events[1].clone()).unwrap();
    assert_eq!(new.len(), 1, "{new:?}");
    assert!(new[0].contains("delete on public.invoices"), "{new:?}");
}
