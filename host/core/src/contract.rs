//! The vocabulary of the connector contract as the rest of the host sees it.
//!
//! These mirror the records of `wit/connector.wit` (`ebb:connector/types`), but they
//! are the host's own: `runtime/` converts generated bindings to and from them, so no
//! other module names generated types, and a future `ebb:connector@0.2.0` maps onto
//! the same types. Secret-bearing types ([`Credential`]) redact themselves in `Debug`
//! and zeroize their memory on drop.

use serde::{Deserialize, Serialize};
use std::fmt;
use zeroize::Zeroize;

/// Milliseconds since the Unix epoch, UTC.
pub type Timestamp = u64;

// Stored by position in a record's binary form (`crate::encoding`): new
// variants go at the end.
/// Whether a subject is a workload or a person.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum SubjectKind {
    Workload,
    Person,
}

/// A verified identity and its claims.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Subject {
    pub id: String,
    pub kind: SubjectKind,
    /// `[name, value]` pairs.
    #[serde(default)]
    #[schema(value_type = Vec<Vec<String>>)]
    pub claims: Vec<(String, String)>,
}

/// One action on one resource, in the connector's own syntax.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Permission {
    pub action: String,
    pub resource: String,
}

impl Permission {
    /// Parses the CLI's `action:resource`, or `action=resource` for actions that
    /// contain a colon themselves (`s3:GetObject=arn:aws:s3:::reports/*`).
    pub fn parse(s: &str) -> Result<Self, String> {
        let split = if s.contains('=') {
            s.split_once('=')
        } else {
            s.split_once(':')
        };
        match split {
            Some((action, resource)) if !action.is_empty() && !resource.is_empty() => Ok(Self {
                action: action.to_owned(),
                resource: resource.to_owned(),
            }),
            _ => Err(format!(
                "permission `{s}` must be action:resource (or action=resource)"
            )),
        }
    }
}

/// An approved grant, as a connector sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Grant {
    pub id: String,
    pub subject: Subject,
    pub permissions: Vec<Permission>,
    pub not_after: Timestamp,
    pub task: String,
}

/// A secret credential: named fields such as `user` and `password`.
///
/// `Debug` prints only the field names, and the values are zeroized on drop. It
/// serializes (so the lifecycle can seal it and return it once to the requester);
/// never serialize it into a log.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Credential {
    pub fields: Vec<(String, String)>,
}

impl Credential {
    /// The value of the field `name`, if present.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.fields.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("Credential")
            .field("fields", &names)
            .field("values", &"<redacted>")
            .finish()
    }
}

impl Drop for Credential {
    fn drop(&mut self) {
        for (_, value) in &mut self.fields {
            value.zeroize();
        }
    }
}

/// What `issue` created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Issued {
    /// Non-secret description of what was created downstream.
    pub handle: String,
    pub credential: Credential,
    /// When the downstream system itself stops honouring the credential.
    pub expires_at: Option<Timestamp>,
}

// Stored by position in a record's binary form (`crate::encoding`): new
// variants go at the end.
/// What kind of access remains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ResidueKind {
    CredentialAccepted,
    SessionOpen,
    EntitlementPresent,
    TokenActive,
    /// Something the grantee created with the grant (a table, a privilege granted on).
    OwnedObject,
    /// A credential or identity minted with the grant (an access key, a user).
    DerivedCredential,
    Other,
}

/// Evidence that access remains.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Residue {
    pub kind: ResidueKind,
    pub detail: String,
    /// Where it is (a database, an account), when the system has more than one place.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// The manual step that removes it, when the connector cannot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remedy: Option<String>,
}

impl Residue {
    pub fn new(kind: ResidueKind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
            location: None,
            remedy: None,
        }
    }
}

/// Something downstream that a connector's naming scheme says Ebb created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InventoryItem {
    /// The grant it was created for, recovered from its name.
    pub grant_id: String,
    pub detail: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
}

/// The downstream system's answer to "is it gone?".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "verdict", content = "residue")]
pub enum Verdict {
    Revoked,
    Residual(Vec<Residue>),
}

/// A connector's own error, as declared in the contract.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind", content = "message")]
pub enum ConnectorError {
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("denied downstream: {0}")]
    Denied(String),
    #[error("downstream unavailable: {0}")]
    Unavailable(String),
    #[error("connector internal error: {0}")]
    Internal(String),
    #[error("not supported by the connector: {0}")]
    Unsupported(String),
}

impl ConnectorError {
    /// Whether trying the same call again later can succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable(_) | Self::Internal(_))
    }
}

/// A connector's honest statement of what it can do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Capabilities {
    pub revocable: bool,
    pub downstream_expiry: bool,
    pub terminates_sessions: bool,
    pub can_verify: bool,
    pub can_verify_issued: bool,
    pub reports_standing_access: bool,
    /// What `issue` created is found and revoked only through the credential's value
    /// (an OAuth token); see the WIT contract.
    #[serde(default)]
    pub revokes_by_value: bool,
}

/// One action a connector understands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ActionInfo {
    pub name: String,
    pub description: String,
    pub resource_syntax: String,
}

/// What `describe` returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ConnectorInfo {
    pub name: String,
    pub version: String,
    pub system: String,
    pub description: String,
    pub actions: Vec<ActionInfo>,
    pub capabilities: Capabilities,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_permissions() {
        let p = |s: &str| Permission::parse(s).map(|p| (p.action, p.resource));
        assert_eq!(
            p("select:public.invoices"),
            Ok(("select".into(), "public.invoices".into()))
        );
        assert_eq!(
            p("scope:invoices:read"),
            Ok(("scope".into(), "invoices:read".into()))
        );
        assert_eq!(
            p("s3:GetObject=arn:aws:s3:::reports/*"),
            Ok(("s3:GetObject".into(), "arn:aws:s3:::reports/*".into()))
        );
        for bad in ["select", ":x", "x:", "=x", "x="] {
            assert!(p(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn credential_debug_never_shows_values() {
        let c = Credential {
            fields: vec![("password".into(), "hunter2-very-secret".into())],
        };
        let shown = format!("{c:?}");
        assert!(shown.contains("password"));
        assert!(!shown.contains("hunter2"), "{shown}");
        let issued = Issued {
            handle: "role".into(),
            credential: c,
            expires_at: None,
        };
        assert!(!format!("{issued:?}").contains("hunter2"));
    }

    #[test]
    fn only_transient_errors_are_retryable() {
        assert!(ConnectorError::Unavailable("x".into()).is_retryable());
        assert!(!ConnectorError::Invalid("x".into()).is_retryable());
        assert!(!ConnectorError::Denied("x".into()).is_retryable());
        assert!(!ConnectorError::Unsupported("x".into()).is_retryable());
    }
}
