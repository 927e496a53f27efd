//! Ebb's host: it grants narrowly scoped, short-lived permissions in downstream
//! systems through sandboxed WebAssembly connectors, takes them away, and proves
//! they are gone.
//!
//! # Layout
//!
//! - [`connector`]: the vocabulary of the connector contract (grants, credentials,
//!   verdicts) as the host sees it.
//! - [`runtime`]: loads connector components and calls them, sandboxed.
//! - [`config`]: the operator's configuration file.
//!
//! See `ARCHITECTURE.md` at the repository root for the codemap and invariants.

pub mod config;
pub mod connector;
pub mod runtime;
