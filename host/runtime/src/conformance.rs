//! The connector conformance kit: one suite every connector must pass against its
//! real downstream system.
//!
//! It checks the contract's promises, not a connector's internals: `describe`
//! declares the action under test; `verify-revoked` says `revoked` for a grant never
//! issued and finds the access of a live one; `issue` creates a credential that works
//! for the granted permission and not for another (when a [`Probe`] can tell);
//! `revoke` ends it, `verify-revoked` then says `revoked` and the credential fails;
//! `revoke` is idempotent and works without the handle. `validate` (0.2.0) accepts
//! the case and refuses an unknown action; `inventory` lists a live grant and not a
//! revoked one; what a grantee made with the credential (through the probe's
//! [`Probe::derive`]) is removed by `revoke` or reported as residue, never
//! `revoked` while it remains. A connector that declares
//! its credential irrevocable must instead keep reporting it after `revoke`; one
//! that revokes by value must report what may remain when it holds nothing to
//! revoke by.
//!
//! Run it from the CLI (`ebb connector test`) or from tests, where a probe written
//! against the downstream system's own client judges the credential independently
//! of the connector.

use crate::call::{CallError, Contract, LoadedConnector};
use ebb_core::contract::{
    ConnectorError, Credential, Grant, Permission, ResidueKind, Subject, SubjectKind, Verdict,
};
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// Judges a credential with the downstream system's own client, independently of
/// the connector: does it work for `permission`?
pub trait Probe: Send + Sync {
    fn works<'a>(
        &'a self,
        credential: &'a Credential,
        permission: &'a Permission,
    ) -> Pin<Box<dyn Future<Output = anyhow::Result<bool>> + Send + 'a>>;

    /// Uses the credential as a grantee could to make access of its own that would
    /// outlive the grant unless the connector removes it (a table holding a copy of
    /// the granted data, a key of its own). Says what it made, or `None` when the
    /// system gives this grant no way to.
    fn derive<'a>(
        &'a self,
        credential: &'a Credential,
        permission: &'a Permission,
    ) -> Pin<Box<dyn Future<Output = anyhow::Result<Option<String>>> + Send + 'a>> {
        let _ = (credential, permission);
        Box::pin(async { Ok(None) })
    }

    /// Whether what [`Probe::derive`] made (as it described it) still exists,
    /// judged with the operator's access, not the connector's.
    fn derived_remains<'a>(
        &'a self,
        made: &'a str,
    ) -> Pin<Box<dyn Future<Output = anyhow::Result<bool>> + Send + 'a>> {
        let _ = made;
        Box::pin(async { Ok(false) })
    }
}

/// What to test with.
#[derive(Debug, Clone)]
pub struct Case {
    /// A permission the connector can grant.
    pub granted: Permission,
    /// A permission the grant must not give (checked with a probe).
    pub other: Option<Permission>,
    /// How long revocation may take to show (the connector's propagation delay).
    pub settle: Duration,
}

/// One check's outcome.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Check {
    pub name: &'static str,
    pub passed: bool,
    /// What was seen (never a secret).
    pub detail: String,
}

/// Every check, in order, and those that could not be made.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ConformanceReport {
    pub connector: String,
    pub checks: Vec<Check>,
    /// Checks that need an independent probe and were not made for want of one.
    pub skipped: Vec<&'static str>,
    /// Operations the connector does not offer (`inventory` for OAuth tokens, both
    /// new operations for a 0.1.0 component), with its reason.
    pub not_offered: Vec<NotOffered>,
}

/// One line per check (`ok  ` or `FAIL`, its name, what was seen), then the checks
/// left for want of a probe and the operations not offered.
impl std::fmt::Display for ConformanceReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for c in &self.checks {
            let mark = if c.passed { "ok  " } else { "FAIL" };
            writeln!(f, "{mark} {}  ({})", c.name, c.detail)?;
        }
        for name in &self.skipped {
            writeln!(f, "skip {name}  (no independent probe for this connector)")?;
        }
        for n in &self.not_offered {
            writeln!(f, "n/a  {}  ({})", n.operation, n.why)?;
        }
        Ok(())
    }
}

/// See [`ConformanceReport::not_offered`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct NotOffered {
    pub operation: &'static str,
    pub why: String,
}

/// What a run proved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Every check passed, each judged independently of the connector.
    Passed,
    /// Every check made passed, but some need a probe and were not made: the
    /// connector's own word was not checked against the downstream system.
    Unverified,
    Failed,
}

impl ConformanceReport {
    /// Passed, and nothing left unproven: never true without a probe.
    pub fn passed(&self) -> bool {
        self.outcome() == Outcome::Passed
    }

    pub fn outcome(&self) -> Outcome {
        if !self.checks.iter().all(|c| c.passed) {
            Outcome::Failed
        } else if self.skipped.is_empty() {
            Outcome::Passed
        } else {
            Outcome::Unverified
        }
    }

    /// Records what a probe would have judged.
    fn skip(&mut self, name: &'static str) {
        self.skipped.push(name);
    }

    /// Records an operation the connector does not offer (not a failure).
    fn note(&mut self, operation: &'static str, why: &str) {
        self.not_offered.push(NotOffered {
            operation,
            why: why.to_owned(),
        });
    }

    fn check(&mut self, name: &'static str, passed: bool, detail: impl Into<String>) -> bool {
        self.checks.push(Check {
            name,
            passed,
            detail: detail.into(),
        });
        passed
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn grant(case: &Case, tag: &str) -> Grant {
    let now = now_ms();
    Grant {
        id: format!("conf{tag}{}", ulid::Ulid::new().to_string().to_lowercase()),
        subject: Subject {
            id: "spiffe://ebb.conformance/kit".into(),
            kind: SubjectKind::Workload,
            claims: vec![],
        },
        permissions: vec![case.granted.clone()],
        not_after: now + 10 * 60 * 1000,
        task: "ebb connector conformance".into(),
    }
}

/// Asks `verify-revoked` until it says `revoked`, for up to `settle` (plus a second).
async fn settles(
    connector: &LoadedConnector,
    grant: &Grant,
    handle: Option<&str>,
    credential: Option<&Credential>,
    settle: Duration,
) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + settle + Duration::from_secs(1);
    loop {
        let answer = connector.verify_revoked(grant, handle, credential).await;
        match answer {
            Ok(Verdict::Revoked) => return Ok(()),
            other if tokio::time::Instant::now() >= deadline => {
                return Err(format!("still {other:?}"));
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Runs the suite. Leaves nothing behind downstream when it passes, and revokes
/// what it created when it fails.
pub async fn run(
    connector: &LoadedConnector,
    case: &Case,
    probe: Option<&dyn Probe>,
) -> ConformanceReport {
    let mut r = ConformanceReport {
        connector: connector.info().name.clone(),
        checks: vec![],
        skipped: vec![],
        not_offered: vec![],
    };
    let info = connector.info();
    r.check(
        "describe declares the action",
        info.actions.iter().any(|a| a.name == case.granted.action),
        format!(
            "actions: {}",
            info.actions
                .iter()
                .map(|a| a.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );

    check_validate(&mut r, connector, case).await;

    let by_value = info.capabilities.revokes_by_value;
    let never = grant(case, "n");
    let answer = connector.verify_revoked(&never, None, None).await;
    if by_value {
        // It cannot tell a never-issued grant from one whose `issue` reply was lost,
        // so it must say what may remain, until `not-after` bounds it.
        r.check(
            "verify without handle or credential reports what may remain until not-after",
            matches!(&answer, Ok(Verdict::Residual(residue))
                if !residue.is_empty() && residue.iter().all(|x| x.kind == ResidueKind::TokenActive)),
            format!("{answer:?}"),
        );
        let mut past = grant(case, "p");
        past.not_after = now_ms().saturating_sub(60_000);
        let answer = connector.verify_revoked(&past, None, None).await;
        r.check(
            "verify on a never-issued grant past not-after says revoked",
            matches!(answer, Ok(Verdict::Revoked)),
            format!("{answer:?}"),
        );
    } else {
        r.check(
            "verify on a never-issued grant says revoked",
            matches!(answer, Ok(Verdict::Revoked)),
            format!("{answer:?}"),
        );
    }

    let g = grant(case, "a");
    let issued = match connector.issue(&g).await {
        Ok(issued) => {
            r.check("issue", true, format!("handle {}", issued.handle));
            issued
        }
        Err(e) => {
            r.check("issue", false, e.to_string());
            let _ = connector.revoke(&g, None, None).await;
            return r;
        }
    };
    let cred = &issued.credential;
    let handle = Some(issued.handle.as_str());
    if info.capabilities.can_verify_issued {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let mut answer = connector.verify_issued(&g, &issued.handle, cred).await;
        while answer.as_ref().is_err_and(|e| e.is_retryable())
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(200)).await;
            answer = connector.verify_issued(&g, &issued.handle, cred).await;
        }
        r.check(
            "verify-issued: the credential works",
            answer.is_ok(),
            format!("{answer:?}"),
        );
    }
    if let Some(probe) = probe {
        let works = probe.works(cred, &case.granted).await;
        r.check(
            "the credential works for the granted permission",
            matches!(works, Ok(true)),
            format!("{works:?}"),
        );
        if let Some(other) = &case.other {
            let works = probe.works(cred, other).await;
            r.check(
                "the credential does not work for another permission",
                matches!(works, Ok(false)),
                format!("{works:?}"),
            );
        }
    } else {
        r.skip("the credential works for the granted permission");
    }
    let inventory = match connector.inventory().await {
        Ok(items) => {
            r.check(
                "inventory lists what issue created",
                items.iter().any(|i| i.grant_id.eq_ignore_ascii_case(&g.id)),
                format!("{} item(s)", items.len()),
            );
            true
        }
        Err(CallError::Connector(ConnectorError::Unsupported(why))) => {
            r.note("inventory", &why);
            false
        }
        Err(e) => {
            r.check("inventory lists what issue created", false, e.to_string());
            false
        }
    };
    // What the grantee makes with the grant is part of the grant.
    let derived = match probe {
        Some(probe) => match probe.derive(cred, &case.granted).await {
            Ok(made) => made,
            Err(e) => {
                r.check("the probe makes derived access", false, format!("{e:#}"));
                None
            }
        },
        None => None,
    };
    let answer = connector.verify_revoked(&g, handle, Some(cred)).await;
    r.check(
        "verify finds the access of a live grant",
        matches!(&answer, Ok(Verdict::Residual(residue)) if !residue.is_empty()),
        format!("{answer:?}"),
    );

    let revoked = connector.revoke(&g, handle, Some(cred)).await;
    r.check("revoke", revoked.is_ok(), format!("{revoked:?}"));
    if !info.capabilities.revocable {
        // A credential declared irrevocable (a self-contained JWT) outlives `revoke`:
        // verify must keep saying so, never trust the revoke call.
        let answer = connector.verify_revoked(&g, handle, Some(cred)).await;
        r.check(
            "verify after revoke still reports the irrevocable credential",
            matches!(&answer, Ok(Verdict::Residual(x)) if !x.is_empty()),
            format!("{answer:?}"),
        );
        let again = connector.revoke(&g, handle, Some(cred)).await;
        r.check("revoke twice succeeds", again.is_ok(), format!("{again:?}"));
        return r;
    }
    let verdict = settles(connector, &g, handle, Some(cred), case.settle).await;
    if let (Some(made), Some(probe)) = (&derived, probe) {
        // Removed, or reported: never `revoked` while it is still there.
        let remains = probe.derived_remains(made).await;
        let reported = connector.verify_revoked(&g, handle, Some(cred)).await;
        r.check(
            "what the grantee made is removed or reported as residue",
            match &remains {
                Ok(false) => true,
                Ok(true) => matches!(&reported, Ok(Verdict::Residual(x))
                    if x.iter().any(|r| matches!(r.kind, ResidueKind::OwnedObject | ResidueKind::DerivedCredential))),
                Err(_) => false,
            },
            format!("{made}: remains {remains:?}; verify says {reported:?}"),
        );
    }
    r.check(
        "verify after revoke says revoked",
        verdict.is_ok(),
        verdict.err().unwrap_or_else(|| "revoked".into()),
    );
    if inventory {
        let items = connector.inventory().await;
        r.check(
            "inventory no longer lists a revoked grant",
            matches!(&items, Ok(items) if !items.iter().any(|i| i.grant_id.eq_ignore_ascii_case(&g.id))),
            format!("{:?}", items.map(|i| i.len())),
        );
    }
    if let Some(probe) = probe {
        let works = probe.works(cred, &case.granted).await;
        r.check(
            "the credential fails after revoke",
            matches!(works, Ok(false)),
            format!("{works:?}"),
        );
    } else {
        r.skip("the credential fails after revoke");
    }
    let again = connector.revoke(&g, handle, Some(cred)).await;
    r.check("revoke twice succeeds", again.is_ok(), format!("{again:?}"));

    // Revoke by grant id alone: what compensation does after a lost `issue`.
    let g2 = grant(case, "b");
    match connector.issue(&g2).await {
        Ok(issued) => {
            let revoked = if by_value {
                // Nothing to revoke by: it must succeed and say what may remain.
                let blind = connector.revoke(&g2, None, None).await;
                let answer = connector.verify_revoked(&g2, None, None).await;
                r.check(
                    "revoke without handle or credential leaves the unknown reported",
                    blind.is_ok() && matches!(&answer, Ok(Verdict::Residual(x)) if !x.is_empty()),
                    format!("{blind:?}; {answer:?}"),
                );
                connector.revoke(&g2, None, Some(&issued.credential)).await
            } else {
                connector.revoke(&g2, None, None).await
            };
            let verdict =
                settles(connector, &g2, None, Some(&issued.credential), case.settle).await;
            r.check(
                "revoke without the handle",
                revoked.is_ok() && verdict.is_ok(),
                format!(
                    "{revoked:?}; {}",
                    verdict.err().unwrap_or_else(|| "revoked".into())
                ),
            );
            if let Some(probe) = probe {
                let works = probe.works(&issued.credential, &case.granted).await;
                r.check(
                    "the credential fails after revoke without the handle",
                    matches!(works, Ok(false)),
                    format!("{works:?}"),
                );
            } else {
                r.skip("the credential fails after revoke without the handle");
            }
        }
        Err(e) => {
            r.check("revoke without the handle", false, format!("issue: {e}"));
            let _ = connector.revoke(&g2, None, None).await;
        }
    }
    r
}

/// `validate` accepts the case's permission and refuses an unknown action and an
/// empty request — without calling the downstream system (it is answered before
/// anyone approves). A 0.1.0 component has no `validate`: noted, not failed.
async fn check_validate(r: &mut ConformanceReport, connector: &LoadedConnector, case: &Case) {
    if connector.contract() != Contract::V0_2 {
        r.note(
            "validate",
            "the component implements ebb:connector@0.1.0: requests reach approval unchecked",
        );
        return;
    }
    let ok = connector
        .validate(std::slice::from_ref(&case.granted))
        .await;
    r.check(
        "validate accepts the granted permission",
        ok.is_ok(),
        format!("{ok:?}"),
    );
    let unknown = Permission {
        action: "ebb-conformance-no-such-action".into(),
        resource: case.granted.resource.clone(),
    };
    let refused = connector.validate(&[unknown]).await;
    r.check(
        "validate refuses an unknown action as invalid",
        matches!(
            refused,
            Err(CallError::Connector(ConnectorError::Invalid(_)))
        ),
        format!("{refused:?}"),
    );
    let empty = connector.validate(&[]).await;
    r.check(
        "validate refuses a request with no permission as invalid",
        matches!(empty, Err(CallError::Connector(ConnectorError::Invalid(_)))),
        format!("{empty:?}"),
    );
}

/// The probe the host ships for a bundled connector, built from what the instance
/// is lent: the downstream system's own client library (tokio-postgres, the redis
/// crate) judging the credential, never the connector. `None` where the host has
/// none (the kit then says "unverified", never "passed").
pub fn builtin_probe(
    info: &ebb_core::contract::ConnectorInfo,
    spec: &crate::lend::ConnectorSpec,
) -> anyhow::Result<Option<Box<dyn Probe>>> {
    use anyhow::Context as _;
    let connection = spec.config.get("connection").map_or("main", String::as_str);
    match info.name.as_str() {
        "postgres" => {
            let Some(sql) = spec.sql.get(connection) else {
                return Ok(None);
            };
            let (config, tls) =
                crate::host::sql::client_config(sql).context("the lent connection")?;
            Ok(Some(Box::new(PostgresProbe { config, tls })))
        }
        "redis" => {
            let Some(lent) = spec.redis.get(connection) else {
                return Ok(None);
            };
            let (info, ca) =
                crate::host::redis::client_config(lent).context("the lent connection")?;
            Ok(Some(Box::new(RedisProbe { info, ca })))
        }
        _ => Ok(None),
    }
}

/// Logs in as the credential's user and reads the granted table.
struct PostgresProbe {
    config: tokio_postgres::Config,
    tls: tokio_postgres_rustls::MakeRustlsConnect,
}

impl Probe for PostgresProbe {
    fn works<'a>(
        &'a self,
        credential: &'a Credential,
        permission: &'a Permission,
    ) -> Pin<Box<dyn Future<Output = anyhow::Result<bool>> + Send + 'a>> {
        Box::pin(async move {
            if permission.action != "select" {
                anyhow::bail!("the built-in PostgreSQL probe judges `select` only");
            }
            let client = match self.connect_as(Some(credential)).await {
                Ok(c) => c,
                // The login is refused (28P01, 28000): the credential does not work.
                Err(e) if e.as_db_error().is_some() => return Ok(false),
                Err(e) => return Err(e.into()),
            };
            let table = quoted_table(&permission.resource);
            match client
                .simple_query(&format!("SELECT count(*) FROM {table}"))
                .await
            {
                Ok(_) => Ok(true),
                // 42501: insufficient privilege.
                Err(e) if e.as_db_error().is_some_and(|d| d.code().code() == "42501") => Ok(false),
                Err(e) => Err(e.into()),
            }
        })
    }
    /// A table of the grantee's own holding a copy of the granted one, where PUBLIC
    /// may create (the `public` schema of databases from before PostgreSQL 15).
    fn derive<'a>(
        &'a self,
        credential: &'a Credential,
        permission: &'a Permission,
    ) -> Pin<Box<dyn Future<Output = anyhow::Result<Option<String>>> + Send + 'a>> {
        Box::pin(async move {
            if permission.action != "select" {
                return Ok(None);
            }
            let client = self.connect_as(Some(credential)).await?;
            let made = format!(
                "public.ebb_probe_{}",
                ulid::Ulid::new().to_string().to_lowercase()
            );
            let copy = format!(
                "CREATE TABLE {made} AS SELECT * FROM {}",
                quoted_table(&permission.resource)
            );
            match client.batch_execute(&copy).await {
                Ok(()) => Ok(Some(made)),
                // No schema lets this role create: it can make nothing of its own.
                Err(e) if e.as_db_error().is_some_and(|d| d.code().code() == "42501") => Ok(None),
                Err(e) => Err(e.into()),
            }
        })
    }

    fn derived_remains<'a>(
        &'a self,
        made: &'a str,
    ) -> Pin<Box<dyn Future<Output = anyhow::Result<bool>> + Send + 'a>> {
        Box::pin(async move {
            let client = self.connect_as(None).await?;
            let row = client
                .query_one("SELECT to_regclass($1) IS NOT NULL", &[&made])
                .await?;
            Ok(row.get(0))
        })
    }
}

impl PostgresProbe {
    async fn connect_as(
        &self,
        credential: Option<&Credential>,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let mut config = self.config.clone();
        if let Some(credential) = credential {
            config
                .user(credential.get("user").unwrap_or_default())
                .password(credential.get("password").unwrap_or_default());
        }
        config.connect_timeout(Duration::from_secs(5));
        let (client, conn) = config.connect(self.tls.clone()).await?;
        tokio::spawn(conn);
        Ok(client)
    }
}

fn quoted_table(resource: &str) -> String {
    resource
        .split('.')
        .map(|part| format!("\"{}\"", part.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(".")
}

/// Authenticates as the credential's user and runs the permission's command on a
/// key its pattern names.
struct RedisProbe {
    info: redis::ConnectionInfo,
    ca: Option<Vec<u8>>,
}

impl Probe for RedisProbe {
    fn works<'a>(
        &'a self,
        credential: &'a Credential,
        permission: &'a Permission,
    ) -> Pin<Box<dyn Future<Output = anyhow::Result<bool>> + Send + 'a>> {
        Box::pin(async move {
            let mut info = self.info.clone();
            info.redis.username = credential.get("user").map(str::to_owned);
            info.redis.password = credential.get("password").map(str::to_owned);
            let client = crate::host::redis::open_client(info, self.ca.as_deref())?;
            let mut conn = match client.get_multiplexed_async_connection().await {
                Ok(c) => c,
                Err(e) if e.kind() == redis::ErrorKind::AuthenticationFailed => return Ok(false),
                Err(e) => return Err(e.into()),
            };
            let key = permission.resource.replace('*', "ebb-probe");
            let result = redis::cmd(&permission.action.to_ascii_uppercase())
                .arg(&key)
                .query_async::<redis::Value>(&mut conn)
                .await;
            match result {
                Ok(_) => Ok(true),
                Err(e) if e.code() == Some("NOPERM") => Ok(false),
                // Deleted while connected: the server closed the connection.
                Err(e) if e.is_io_error() || e.is_connection_dropped() => Ok(false),
                Err(e) => Err(e.into()),
            }
        })
    }
}
