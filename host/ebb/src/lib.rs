//! The `ebb` binary's library: the admin API, the CLI client and metrics.
//!
//! # Layout
//!
//! - [`api`] (feature `server`): the axum router over the engine — grants,
//!   connectors, policies, audit, health, metrics, the OpenAPI document.
//! - [`console`] (feature `server`): the web console under `/console` — pages,
//!   OIDC sign-in, sessions, CSRF, live updates — over the API's own handlers.
//! - [`cli`]: `ebb grant|audit|connectors|policy|anomaly`, clients of the API.
//! - [`metrics`] (feature `server`): the Prometheus exporter.
//! - [`serve`] (feature `server`): the HTTP server with its limits (header-read
//!   deadline, connection cap) and graceful shutdown.
//! - [`token`]: bearer-token hashing, shared by the API and `ebb token`.
//!
//! The crates below it, from the bottom up: `ebb-core` (vocabulary, audit chain,
//! sealing, the `Store` trait), `ebb-store-kv` (the embedded store),
//! `ebb-store-postgres` (the store several hosts share),
//! `ebb-runtime` (wasmtime, lent capabilities, the conformance kit) and
//! `ebb-engine` (lifecycle, registry, loader, approval, identity, configuration).
//!
//! **Architecture invariant:** built without the `server` feature, this crate is
//! the CLI alone and links neither wasmtime nor Cedar nor sled: a client needs only
//! `ebb-core`'s types and HTTP.
//!
//! See `ARCHITECTURE.md` at the repository root for the codemap and invariants.

#[cfg(feature = "server")]
pub mod api;
pub mod cli;
#[cfg(feature = "server")]
pub mod console;
#[cfg(feature = "server")]
pub mod metrics;
#[cfg(feature = "server")]
pub mod serve;
pub mod token;
