//! Ebb's engine: everything that decides and drives a grant's life.
//!
//! # Layout
//!
//! - [`lifecycle`]: [`Lifecycle`](lifecycle::Lifecycle), the only code that changes
//!   a grant's state — caller-driven requests, the scheduler's work on due grants,
//!   retry and escalation, crash recovery, admin queries.
//! - [`registry`]: the loaded connector instances ([`Registry`](registry::Registry),
//!   [`Slot`](registry::Slot)) with their lifecycle policy and call pools.
//! - [`loader`]: connectors coming and going at run time
//!   ([`Loader`](loader::Loader)): configured instances, the watched plugins folder,
//!   the admin API's load/reload/unload.
//! - [`approval`] over [`policy`]: who may ask for what, and who must approve
//!   ([`ApprovalGate`](approval::ApprovalGate), Cedar
//!   [`Policies`](policy::Policies)).
//! - [`standing`]: what a subject can already do downstream without a grant
//!   ([`Standing`](standing::Standing)), asked at request time and on a schedule;
//!   new findings are audited and alerted.
//! - [`identity`]: proving who a requester is (JWT against a JWKS).
//! - [`audit_log`]: [`AuditLog`](audit_log::AuditLog), the one way anything but a
//!   transition appends an audit event.
//! - [`alerts`]: webhooks for loud events.
//! - [`shared`]: the plugins folder and the policies kept alike on every host of a
//!   shared store ([`FolderSync`](shared::FolderSync)).
//! - [`config`]: the operator's configuration file; the loader turns each instance's
//!   entry into the runtime's own typed inputs (`ebb_runtime::ConnectorSpec`).
//!
//! **Architecture invariant:** the engine reaches connectors only through
//! `ebb-runtime` and storage only through `ebb_core::Store`; it names no wasmtime
//! type and no storage engine. It knows nothing of HTTP: the API lives in the `ebb`
//! crate.

pub mod alerts;
pub mod approval;
pub mod audit_log;
pub mod config;
pub mod identity;
pub mod lifecycle;
pub mod loader;
pub mod orphans;
pub mod policy;
pub mod registry;
pub mod shared;
pub mod standing;
