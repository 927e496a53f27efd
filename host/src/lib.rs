//! Ebb's host: it grants narrowly scoped, short-lived permissions in downstream
//! systems through sandboxed WebAssembly connectors, takes them away, and proves
//! they are gone.
//!
//! # Layout
//!
//! - [`connector`]: the vocabulary of the connector contract (grants, credentials,
//!   verdicts) as the host sees it.
//! - [`runtime`]: loads connector components and calls them, sandboxed.
//! - [`lifecycle`]: the grant state machine, scheduler and crash recovery.
//! - [`store`]: grants, the due index, sealed credentials and the audit chain.
//! - [`audit`]: the hash-chained audit log and its verifier.
//! - [`registry`]: loaded connectors with their policy and call limits.
//! - [`seal`]: the host key, credential sealing.
//! - [`config`]: the operator's configuration file.
//!
//! See `ARCHITECTURE.md` at the repository root for the codemap and invariants.

pub mod alerts;
pub mod api;
pub mod approval;
pub mod audit;
pub mod config;
pub mod conformance;
pub mod connector;
pub mod identity;
pub mod lifecycle;
pub mod loader;
pub mod metrics;
pub mod policy;
pub mod registry;
pub mod runtime;
pub mod seal;
pub mod store;
