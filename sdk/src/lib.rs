//! Write [Ebb](https://example.invalid/ebb) connectors in Rust.
//!
//! A connector is a WebAssembly component that grants, revokes and proves the
//! revocation of one kind of downstream permission. Implement [`Connector`] on a type
//! and export it with [`export_connector!`]; build with
//! `cargo build --target wasm32-wasip2 --release`.
//!
//! ```no_run
//! use ebb_connector_sdk::{
//!     export_connector, Capabilities, Connector, ConnectorInfo, Error, Grant, Issued,
//!     Credential, Verdict,
//! };
//!
//! struct Hello;
//!
//! impl Connector for Hello {
//!     fn describe() -> ConnectorInfo {
//!         ConnectorInfo::new("hello", env!("CARGO_PKG_VERSION"), "nothing")
//!             .with_capabilities(Capabilities::REVOCABLE | Capabilities::CAN_VERIFY)
//!     }
//!     fn issue(grant: Grant) -> Result<Issued, Error> {
//!         Ok(Issued::new(grant.id, Credential::new([("token", "t")])))
//!     }
//!     fn revoke(_: Grant, _: Option<String>, _: Option<Credential>) -> Result<(), Error> {
//!         Ok(())
//!     }
//!     fn verify_revoked(
//!         _grant: Grant,
//!         _handle: Option<String>,
//!         _credential: Option<Credential>,
//!     ) -> Result<Verdict, Error> {
//!         Ok(Verdict::Revoked)
//!     }
//! }
//!
//! export_connector!(Hello);
//! ```
//!
//! What the host lends a connector is reached through [`config`], [`log`], [`sql`],
//! [`mysql`], [`ldap`], [`redis`], [`secrets`] and [`http`]; each works only as far as the operator's
//! configuration allows. [`sigv4`] signs AWS requests.

#![deny(missing_docs)]

pub mod config;
pub mod http;
pub mod ldap;
pub mod log;
pub mod mysql;
pub mod random;
pub mod redis;
pub mod scram;
pub mod secrets;
pub mod sigv4;
pub mod sql;

/// The raw bindings of `wit/`. Not part of the SDK's API; used by
/// [`export_connector!`].
#[doc(hidden)]
#[allow(missing_docs, reason = "bindgen-generated code")]
#[allow(clippy::all, reason = "bindgen-generated code")]
pub mod wit {
    wit_bindgen::generate!({
        path: "../wit",
        world: "ebb:connector/plugin@0.2.0",
        pub_export_macro: true,
        export_macro_name: "__export_plugin",
        default_bindings_module: "ebb_connector_sdk::wit",
        generate_all,
    });
}

pub use wit::ebb::connector0_2_0::types::{
    ActionInfo, Capabilities, Claim, ConnectorInfo, Credential, Error, Grant, InventoryItem,
    Issued, Permission, Residue, ResidueKind, Secret, Subject, SubjectKind, Verdict,
};

/// The wall-clock time in milliseconds since the Unix epoch (WASI's clock), the unit
/// of [`Grant::not_after`].
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// What a connector implements. Every call runs in a fresh instance: keep no state
/// between calls; derive downstream names from [`Grant::id`] instead.
pub trait Connector {
    /// Describes the connector. Must not call the downstream system.
    fn describe() -> ConnectorInfo;

    /// Checks `permissions` without calling the downstream system; the host calls it
    /// when a request arrives, before anyone approves it. The default accepts an
    /// action that [`Connector::describe`] declares on a resource that is not empty;
    /// override it to check the resource's syntax and the connector's configuration.
    fn validate(permissions: Vec<Permission>) -> Result<(), Error> {
        validate_declared(&Self::describe(), &permissions)
    }

    /// Creates the narrowest downstream entitlement for `grant.permissions`, bound to
    /// `grant.not_after`.
    fn issue(grant: Grant) -> Result<Issued, Error>;

    /// Removes everything `issue(grant)` could have created, including live sessions.
    /// Idempotent; with `handle = None` it finds what to remove from `grant.id`.
    /// `credential` is what `issue` returned, when the host still holds it; only a
    /// connector that revokes by value (see [`Capabilities::REVOKES_BY_VALUE`]) needs it.
    fn revoke(
        grant: Grant,
        handle: Option<String>,
        credential: Option<Credential>,
    ) -> Result<(), Error>;

    /// Asks the downstream system whether anything the grant created still grants
    /// access.
    fn verify_revoked(
        grant: Grant,
        handle: Option<String>,
        credential: Option<Credential>,
    ) -> Result<Verdict, Error>;

    /// Proves that a fresh credential works. Defaults to [`Error::Unsupported`].
    fn verify_issued(grant: Grant, handle: String, credential: Credential) -> Result<(), Error> {
        let _ = (grant, handle, credential);
        Err(Error::Unsupported("verify-issued".into()))
    }

    /// What `subject` can do outside any grant. Defaults to [`Error::Unsupported`].
    fn standing_access(subject: Subject) -> Result<Vec<Residue>, Error> {
        let _ = subject;
        Err(Error::Unsupported("standing-access".into()))
    }

    /// Everything downstream that the naming scheme says Ebb created, with the grant
    /// id recovered from each name. Defaults to [`Error::Unsupported`].
    fn inventory() -> Result<Vec<InventoryItem>, Error> {
        Err(Error::Unsupported("inventory".into()))
    }
}

/// The default [`Connector::validate`]: every action is declared by `info`, every
/// resource is non-empty, and there is at least one permission.
pub fn validate_declared(info: &ConnectorInfo, permissions: &[Permission]) -> Result<(), Error> {
    if permissions.is_empty() {
        return Err(Error::Invalid(
            "a grant needs at least one permission".into(),
        ));
    }
    for p in permissions {
        if !info.actions.iter().any(|a| a.name == p.action) {
            let known: Vec<&str> = info.actions.iter().map(|a| a.name.as_str()).collect();
            return Err(Error::Invalid(format!(
                "unknown action `{}` (this connector grants: {})",
                p.action,
                known.join(", ")
            )));
        }
        if p.resource.trim().is_empty() {
            return Err(Error::Invalid(format!(
                "action `{}` needs a resource",
                p.action
            )));
        }
    }
    Ok(())
}

/// Exports a [`Connector`] implementation as the component's `ebb:connector/connector`.
#[macro_export]
macro_rules! export_connector {
    ($ty:ident) => {
        const _: () = {
            impl $crate::wit::exports::ebb::connector0_2_0::connector::Guest for $ty {
                fn describe() -> $crate::ConnectorInfo {
                    <$ty as $crate::Connector>::describe()
                }
                fn validate(permissions: Vec<$crate::Permission>) -> Result<(), $crate::Error> {
                    <$ty as $crate::Connector>::validate(permissions)
                }
                fn inventory() -> Result<Vec<$crate::InventoryItem>, $crate::Error> {
                    <$ty as $crate::Connector>::inventory()
                }
                fn issue(grant: $crate::Grant) -> Result<$crate::Issued, $crate::Error> {
                    <$ty as $crate::Connector>::issue(grant)
                }
                fn revoke(
                    grant: $crate::Grant,
                    handle: Option<String>,
                    credential: Option<$crate::Credential>,
                ) -> Result<(), $crate::Error> {
                    <$ty as $crate::Connector>::revoke(grant, handle, credential)
                }
                fn verify_revoked(
                    grant: $crate::Grant,
                    handle: Option<String>,
                    credential: Option<$crate::Credential>,
                ) -> Result<$crate::Verdict, $crate::Error> {
                    <$ty as $crate::Connector>::verify_revoked(grant, handle, credential)
                }
                fn verify_issued(
                    grant: $crate::Grant,
                    handle: String,
                    credential: $crate::Credential,
                ) -> Result<(), $crate::Error> {
                    <$ty as $crate::Connector>::verify_issued(grant, handle, credential)
                }
                fn standing_access(
                    subject: $crate::Subject,
                ) -> Result<Vec<$crate::Residue>, $crate::Error> {
                    <$ty as $crate::Connector>::standing_access(subject)
                }
            }
    $crate::wit::__export_plugin!($ty with_types_in $crate::wit);
        };
    };
}

impl ConnectorInfo {
    /// A description with no actions and no capabilities; add them with the `with_*`
    /// methods.
    pub fn new(name: &str, version: &str, system: &str) -> Self {
        Self {
            name: name.into(),
            version: version.into(),
            system: system.into(),
            description: String::new(),
            actions: Vec::new(),
            capabilities: Capabilities::empty(),
        }
    }

    /// Sets the description.
    pub fn with_description(mut self, description: &str) -> Self {
        self.description = description.into();
        self
    }

    /// Declares an action, with the syntax of its resources.
    pub fn with_action(mut self, name: &str, description: &str, resource_syntax: &str) -> Self {
        self.actions.push(ActionInfo {
            name: name.into(),
            description: description.into(),
            resource_syntax: resource_syntax.into(),
        });
        self
    }

    /// Declares the connector's capabilities. Be honest: the host's guarantees rest
    /// on them.
    pub fn with_capabilities(mut self, capabilities: Capabilities) -> Self {
        self.capabilities = capabilities;
        self
    }
}

impl Credential {
    /// A credential from `(name, value)` pairs.
    pub fn new<'a>(fields: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Self {
            fields: fields
                .into_iter()
                .map(|(name, value)| Secret {
                    name: name.into(),
                    value: value.into(),
                })
                .collect(),
        }
    }

    /// The value of the field `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|f| f.name == name)
            .map(|f| f.value.as_str())
    }
}

impl Issued {
    /// A credential and the handle that names what was created.
    pub fn new(handle: impl Into<String>, credential: Credential) -> Self {
        Self {
            handle: handle.into(),
            credential,
            expires_at: None,
        }
    }

    /// Records that the downstream system itself ends the credential at `at`.
    pub fn expiring_at(mut self, at: u64) -> Self {
        self.expires_at = Some(at);
        self
    }
}

impl Residue {
    /// Evidence of remaining access. Never put a secret in `detail`.
    pub fn new(kind: ResidueKind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
            location: None,
            remedy: None,
        }
    }

    /// Where it is (a database, an account), when the system has more than one place.
    pub fn at(mut self, location: impl Into<String>) -> Self {
        self.location = Some(location.into());
        self
    }

    /// The exact manual step that removes it, for when the connector cannot.
    pub fn remedy(mut self, step: impl Into<String>) -> Self {
        self.remedy = Some(step.into());
        self
    }
}

impl InventoryItem {
    /// Something Ebb created for grant `grant_id`, described for people.
    pub fn new(grant_id: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            grant_id: grant_id.into(),
            detail: detail.into(),
            location: None,
        }
    }

    /// Where it is, when the system has more than one place.
    pub fn at(mut self, location: impl Into<String>) -> Self {
        self.location = Some(location.into());
        self
    }
}

impl Verdict {
    /// `Revoked` if nothing was found, otherwise `Residual` with what was found.
    pub fn from_residue(residue: Vec<Residue>) -> Self {
        if residue.is_empty() {
            Self::Revoked
        } else {
            Self::Residual(residue)
        }
    }
}

#[allow(
    clippy::derivable_impls,
    reason = "the type is generated; it cannot take a derive"
)]
impl Default for Credential {
    fn default() -> Self {
        Self { fields: Vec::new() }
    }
}
