//! Ebb's vocabulary, shared by every other crate of the host.
//!
//! # Layout
//!
//! - [`contract`]: the connector contract as the host sees it — [`Grant`],
//!   [`Credential`], [`Issued`], [`Verdict`], [`Residue`], [`ConnectorError`],
//!   [`ConnectorInfo`]. `ebb-runtime` converts the WIT bindings to and from these.
//! - [`state`]: the grant state machine — [`GrantState`], [`Event`], [`Trigger`] and
//!   [`state::next`], the one function that decides a transition.
//! - [`store`]: the [`Store`] trait and what it persists — [`GrantRecord`] (with its
//!   [`Approval`]s), [`Commit`] (one atomic state change), the due index contract.
//! - [`encoding`]: how a [`GrantRecord`] is stored (a binary form; JSON from
//!   before it is still read).
//! - [`audit`]: the keyed, hash-chained audit log — [`AuditEvent`], [`NewEvent`],
//!   [`audit::verify_chain`].
//! - [`seal`]: the host key and credential sealing — [`HostKey`], [`Sealer`].
//!
//! **Architecture invariant:** this crate depends on no storage engine (sled,
//! PostgreSQL), no Wasm runtime (wasmtime), no web framework (axum) and no policy
//! engine (Cedar). It is the language the other crates speak, nothing more; the
//! compiler enforces it, since none of those is a dependency here.

pub mod audit;
pub mod contract;
pub mod encoding;
pub mod seal;
pub mod state;
pub mod store;

pub use audit::{AuditEvent, NewEvent};
pub use contract::{
    Capabilities, ConnectorError, ConnectorInfo, Credential, Grant, Issued, Permission, Residue,
    ResidueKind, Subject, SubjectKind, Timestamp, Verdict,
};
pub use seal::{HostKey, Sealer};
pub use state::{Event, GrantState, IllegalTransition, Trigger};
pub use store::{Approval, Commit, GrantRecord, Store};

/// `e` and its causes, outermost first, joined by `: ` — for messages that must keep
/// the whole chain where only one string fits (an API error body, an audit detail).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}
