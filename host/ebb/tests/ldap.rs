//! The ldap connector (issue 18) against a real OpenLDAP directory: a grant makes
//! the subject's account a member of `cn=db-admins`, which lets it bind and read
//! what that group may read; revoke removes the membership; an effective
//! membership through a nested group is residue, never `revoked`; the conformance
//! kit passes with a probe that binds as the account with OpenLDAP's own client
//! (`ldapsearch`), never through the connector.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly"
)]

use ebb_core::contract::{
    Credential, Grant, Permission, ResidueKind, Subject, SubjectKind, Verdict,
};
use ebb_engine::config::{ConnectorConfig, RuntimeConfig};
use ebb_runtime::conformance::{self, Case, Probe};
use ebb_runtime::{LoadedConnector, Runtime};
use ebb_test_support::Ldap;
use ebb_test_support::ldap::{ADMIN, BASE, SERVICE_PASSWORD};
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

const SUBJECT: &str = "spiffe://test/report-job";

fn report() -> String {
    format!("uid=svc-report,ou=services,{BASE}")
}

fn group(cn: &str) -> String {
    format!("cn={cn},ou=groups,{BASE}")
}

fn grant(id: &str, subject: &str) -> Grant {
    Grant {
        id: id.into(),
        subject: Subject {
            id: subject.into(),
            kind: SubjectKind::Workload,
            claims: vec![],
        },
        permissions: vec![Permission {
            action: "member".into(),
            resource: group("db-admins"),
        }],
        not_after: u64::MAX / 2,
        task: "rotate the database password".into(),
    }
}

fn config(server: &Ldap) -> ConnectorConfig {
    ConnectorConfig::new(ebb_test_plugins::LDAP)
        .with_ldap("main", &server.url(), ADMIN.0, ADMIN.1)
        .with_config("groups-base", &format!("ou=groups,{BASE}"))
        .with_config("allowed-groups", &group("db-admins"))
        .with_config(&format!("account:{SUBJECT}"), &report())
        .with_config("account:spiffe://ebb.conformance/kit", &report())
        // The account's own view: bind as it and read what db-admins may read.
        .with_config("probe-entry", &format!("cn=db-password,ou=secrets,{BASE}"))
        .with_secret(&format!("account-password:{SUBJECT}"), SERVICE_PASSWORD)
        .with_secret(
            "account-password:spiffe://ebb.conformance/kit",
            SERVICE_PASSWORD,
        )
}

async fn load(server: &Ldap) -> LoadedConnector {
    Runtime::new(&RuntimeConfig::default())
        .unwrap()
        .load("ldap", &config(server).spec())
        .await
        .unwrap()
}

/// Whether `dn` binds and reads the secret only effective members of `db-admins`
/// may read, with OpenLDAP's own client.
fn reads_the_secret(server: &Ldap, dn: &str) -> anyhow::Result<bool> {
    let out = std::process::Command::new("ldapsearch")
        .args([
            "-x",
            "-LLL",
            "-H",
            &server.url(),
            "-D",
            dn,
            "-w",
            SERVICE_PASSWORD,
        ])
        .args([
            "-b",
            &format!("cn=db-password,ou=secrets,{BASE}"),
            "-s",
            "base",
            "description",
        ])
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    match out.status.code() {
        Some(0) => Ok(stdout.contains("description: the database password")),
        // 32: no such object — what the ACL shows someone who may not read it.
        Some(32) => Ok(false),
        _ => anyhow::bail!("ldapsearch: {}", String::from_utf8_lossy(&out.stderr)),
    }
}

/// Judges a grant by what its account can read, binding with its own password.
struct BindProbe<'a> {
    server: &'a Ldap,
}

impl Probe for BindProbe<'_> {
    fn works<'a>(
        &'a self,
        credential: &'a Credential,
        _permission: &'a Permission,
    ) -> Pin<Box<dyn Future<Output = anyhow::Result<bool>> + Send + 'a>> {
        Box::pin(async move {
            let dn = credential.get("account").unwrap_or_default().to_owned();
            reads_the_secret(self.server, &dn)
        })
    }
}

#[tokio::test]
async fn a_membership_is_granted_and_removed_and_nesting_is_residue() {
    ebb_test_support::require!(Ldap);
    let server = Ldap::start().unwrap();
    let c = load(&server).await;
    assert!(!reads_the_secret(&server, &report()).unwrap());
    let g = grant("01JLDAPMEMBER", SUBJECT);
    let issued = c.issue(&g).await.unwrap();
    c.verify_issued(&g, &issued.handle, &issued.credential)
        .await
        .unwrap();
    assert!(server.members("db-admins").unwrap().contains(&report()));
    assert!(reads_the_secret(&server, &report()).unwrap());

    // While the grant is live, the account is also put in `oncall`, a member of
    // `db-admins`: after revoke it still reads the secret through nesting.
    server
        .modify_as_root(&format!(
            "dn: {}\nchangetype: modify\nadd: member\nmember: {}\n",
            group("oncall"),
            report()
        ))
        .unwrap();
    c.revoke(&g, Some(&issued.handle), None).await.unwrap();
    assert!(!server.members("db-admins").unwrap().contains(&report()));
    assert!(
        reads_the_secret(&server, &report()).unwrap(),
        "nested access"
    );
    let verdict = c
        .verify_revoked(&g, Some(&issued.handle), None)
        .await
        .unwrap();
    let Verdict::Residual(residue) = verdict else {
        panic!("nested membership must be residue, got {verdict:?}");
    };
    // Both views: the nesting path in the directory, and the account itself still
    // binding and reading the protected entry.
    assert_eq!(residue.len(), 2, "{residue:?}");
    assert!(
        residue
            .iter()
            .all(|r| r.kind == ResidueKind::EntitlementPresent)
    );
    let nested = residue
        .iter()
        .find(|r| r.detail.contains("through nested group(s)"))
        .unwrap_or_else(|| panic!("{residue:?}"));
    assert!(
        nested.detail.contains(&group("oncall"))
            && nested
                .remedy
                .as_deref()
                .is_some_and(|r| r.contains(&group("oncall"))),
        "{nested:?}"
    );
    assert!(
        residue
            .iter()
            .any(|r| r.detail.contains("still binds and reads cn=db-password")),
        "{residue:?}"
    );
    // Standing access says the same before any grant.
    let standing = c
        .standing_access(&grant("x", SUBJECT).subject)
        .await
        .unwrap();
    assert_eq!(standing.len(), 1, "{standing:?}");

    // The operator removes the nesting path: verified, and the account reads nothing.
    server
        .modify_as_root(&format!(
            "dn: {}\nchangetype: modify\ndelete: member\nmember: {}\n",
            group("oncall"),
            report()
        ))
        .unwrap();
    assert_eq!(
        c.verify_revoked(&g, Some(&issued.handle), None)
            .await
            .unwrap(),
        Verdict::Revoked
    );
    assert!(!reads_the_secret(&server, &report()).unwrap());
    // Revoking again is fine.
    c.revoke(&g, None, None).await.unwrap();
}

#[tokio::test]
async fn only_allowed_groups_and_mapped_subjects_are_granted() {
    ebb_test_support::require!(Ldap);
    let server = Ldap::start().unwrap();
    let c = load(&server).await;
    let mut other = grant("01JLDAPOTHER", SUBJECT);
    other.permissions[0].resource = group("oncall");
    assert!(c.validate(&other.permissions).await.is_err());
    assert!(c.issue(&other).await.is_err());
    let unmapped = grant("01JLDAPNOBODY", "spiffe://test/nobody");
    assert!(c.issue(&unmapped).await.is_err());
    assert!(!server.members("db-admins").unwrap().contains(&report()));
}

#[tokio::test]
async fn ldap_passes_the_conformance_kit() {
    ebb_test_support::require!(Ldap);
    let server = Ldap::start().unwrap();
    let c = load(&server).await;
    let case = Case {
        granted: Permission {
            action: "member".into(),
            resource: group("db-admins"),
        },
        other: None,
        settle: Duration::from_secs(1),
    };
    let report = conformance::run(&c, &case, Some(&BindProbe { server: &server })).await;
    eprint!("{report}");
    assert!(report.passed(), "{report:#?}");
    // No inventory: memberships carry no grant id.
    assert!(
        report
            .not_offered
            .iter()
            .any(|n| n.operation == "inventory"),
        "{report:#?}"
    );
    assert!(
        !server
            .members("db-admins")
            .unwrap()
            .contains(&self::report())
    );
}
