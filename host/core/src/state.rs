//! The grant state machine: the states, the events that move a grant between them,
//! and [`next`], the only function that decides a transition.
//!
//! ```text
//! requested ─► denied
//!     │
//!     ▼
//! approved ─► issuing ─► active ─► revoking ─► revoked ─► verified   (closed)
//!                │                   ▲   ▲       │   ▲        │
//!                ▼                   │   └ residual ◄┘   └ re-verify ┘
//!           issue-failed ────────────┘
//!  revoking / revoked / residual past the attempt budget ─► escalated (alert; still retried)
//! ```
//!
//! Escalation is an alert, not surrender: an escalated grant keeps being revoked and
//! verified at the slowest retry pace until the downstream system says it is gone.

use serde::{Deserialize, Serialize};
use std::fmt;

// Stored by position in a record's binary form (`crate::encoding`): new
// variants go at the end.
/// Where a grant is in its life.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    PartialOrd,
    Ord,
    utoipa::ToSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum GrantState {
    /// Waiting for approval.
    Requested,
    /// Refused by policy or an approver. Closed; nothing was created.
    Denied,
    /// Approved; issuance not started.
    Approved,
    /// Intent to issue is durable; the connector's `issue` may be running.
    Issuing,
    /// `issue` failed or its outcome is unknown; compensation will revoke by grant id.
    IssueFailed,
    /// The credential exists downstream and was handed to the requester.
    Active,
    /// Intent to revoke is durable; the connector's `revoke` may be running.
    Revoking,
    /// `revoke` succeeded; waiting for the downstream system to confirm.
    Revoked,
    /// Verification found access that remains; it will be revoked again.
    Residual,
    /// Still not verified after the attempt budget: operators are alerted, and the
    /// host keeps trying.
    Escalated,
    /// The downstream system confirmed that nothing remains. Closed.
    Verified,
}

impl GrantState {
    /// All states, in lifecycle order.
    pub const ALL: [GrantState; 11] = [
        Self::Requested,
        Self::Denied,
        Self::Approved,
        Self::Issuing,
        Self::IssueFailed,
        Self::Active,
        Self::Revoking,
        Self::Revoked,
        Self::Residual,
        Self::Escalated,
        Self::Verified,
    ];

    /// The kebab-case name, as in the API and the audit log.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Requested => "requested",
            Self::Denied => "denied",
            Self::Approved => "approved",
            Self::Issuing => "issuing",
            Self::IssueFailed => "issue-failed",
            Self::Active => "active",
            Self::Revoking => "revoking",
            Self::Revoked => "revoked",
            Self::Residual => "residual",
            Self::Escalated => "escalated",
            Self::Verified => "verified",
        }
    }

    /// No more work will happen (short of re-verification of a verified grant).
    pub fn is_closed(self) -> bool {
        matches!(self, Self::Denied | Self::Verified)
    }

    /// Something may exist downstream that the host must still remove or verify.
    pub fn may_have_access(self) -> bool {
        matches!(
            self,
            Self::Issuing
                | Self::IssueFailed
                | Self::Active
                | Self::Revoking
                | Self::Revoked
                | Self::Residual
                | Self::Escalated
        )
    }
}

impl fmt::Display for GrantState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for GrantState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| format!("unknown grant state `{s}`"))
    }
}

// Stored by position in a record's binary form (`crate::encoding`): new
// variants go at the end.
/// Why a revocation started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Trigger {
    /// `not-after` passed.
    Expiry,
    /// The task finished.
    TaskCompleted,
    /// The task failed.
    TaskFailed,
    /// An anomaly was reported for the grant or its subject.
    Anomaly,
    /// An operator or the requester revoked it.
    Manual,
    /// `issue` failed or its outcome was lost: revoke by grant id to be sure.
    Compensation,
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Expiry => "expiry",
            Self::TaskCompleted => "task-completed",
            Self::TaskFailed => "task-failed",
            Self::Anomaly => "anomaly",
            Self::Manual => "manual",
            Self::Compensation => "compensation",
        })
    }
}

/// Something that happened to a grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// One of several required approvals; more are needed.
    RecordApproval,
    Approve,
    Deny,
    /// Issuance starts (the intent is written before the connector is called).
    BeginIssue,
    IssueSucceeded,
    IssueFailed,
    /// Revocation starts for `Trigger` (the intent is written before the call).
    BeginRevoke(Trigger),
    RevokeSucceeded,
    /// `revoke` or `verify-revoked` failed; it will be retried.
    CallFailed,
    VerifiedRevoked,
    FoundResidue,
    /// The attempt budget ran out.
    Escalate,
    /// A closed grant is re-verified (re-expansion through inherited roles).
    Reverify,
}

/// A transition that the state machine does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a grant in state `{from}` cannot take event {event:?}")]
pub struct IllegalTransition {
    pub from: GrantState,
    pub event: Event,
}

/// The state after `event` in `from`, or why not.
pub fn next(from: GrantState, event: Event) -> Result<GrantState, IllegalTransition> {
    use Event as E;
    use GrantState as S;
    let to = match (from, event) {
        (S::Requested, E::RecordApproval) => S::Requested,
        (S::Requested, E::Approve) => S::Approved,
        // Approved but never issued (withdrawn, or the approval lapsed): nothing was
        // created, because `issuing` is written before the connector is called.
        (S::Requested | S::Approved, E::Deny) => S::Denied,
        (S::Approved, E::BeginIssue) => S::Issuing,
        (S::Issuing, E::IssueFailed) => S::IssueFailed,
        (S::Issuing, E::IssueSucceeded) => S::Active,
        (S::Active, E::BeginRevoke(t)) if t != Trigger::Compensation => S::Revoking,
        (S::IssueFailed, E::BeginRevoke(Trigger::Compensation)) => S::Revoking,
        // Revoke again: after residue, a retry, or while escalated.
        (S::Residual | S::Escalated, E::BeginRevoke(_)) => S::Revoking,
        (S::Revoking, E::RevokeSucceeded) => S::Revoked,
        (S::Revoking | S::Revoked, E::CallFailed) => from,
        (S::Revoked | S::Escalated, E::VerifiedRevoked) => S::Verified,
        (S::Revoked | S::Escalated, E::FoundResidue) => S::Residual,
        (S::Verified, E::Reverify) => S::Verified,
        (S::Verified, E::FoundResidue) => S::Residual,
        (S::Revoking | S::Revoked | S::Residual, E::Escalate) => S::Escalated,
        // Escalated revokes that succeed go on to verification.
        (S::Escalated, E::RevokeSucceeded) => S::Revoked,
        (S::Escalated, E::CallFailed) => S::Escalated,
        _ => return Err(IllegalTransition { from, event }),
    };
    Ok(to)
}

#[cfg(test)]
mod tests {
    use super::{Event as E, GrantState as S, Trigger as T, *};

    /// `(from, event, expected)`: `Some(to)` or `None` for an illegal transition.
    fn check(cases: &[(GrantState, Event, Option<GrantState>)]) {
        for &(from, event, expect) in cases {
            assert_eq!(next(from, event).ok(), expect, "{from} + {event:?}");
        }
    }

    #[test]
    fn the_happy_path() {
        check(&[
            (S::Requested, E::RecordApproval, Some(S::Requested)),
            (S::Requested, E::Approve, Some(S::Approved)),
            (S::Approved, E::BeginIssue, Some(S::Issuing)),
            (S::Issuing, E::IssueSucceeded, Some(S::Active)),
            (S::Active, E::BeginRevoke(T::Expiry), Some(S::Revoking)),
            (S::Revoking, E::RevokeSucceeded, Some(S::Revoked)),
            (S::Revoked, E::VerifiedRevoked, Some(S::Verified)),
            (S::Verified, E::Reverify, Some(S::Verified)),
        ]);
    }

    #[test]
    fn every_trigger_revokes_an_active_grant() {
        for t in [
            T::Expiry,
            T::TaskCompleted,
            T::TaskFailed,
            T::Anomaly,
            T::Manual,
        ] {
            check(&[(S::Active, E::BeginRevoke(t), Some(S::Revoking))]);
        }
        // Compensation is only for grants whose issue failed.
        check(&[
            (S::Active, E::BeginRevoke(T::Compensation), None),
            (
                S::IssueFailed,
                E::BeginRevoke(T::Compensation),
                Some(S::Revoking),
            ),
            (S::IssueFailed, E::BeginRevoke(T::Manual), None),
        ]);
    }

    #[test]
    fn failures_and_residue_loop_back_to_revoking() {
        check(&[
            (S::Issuing, E::IssueFailed, Some(S::IssueFailed)),
            (S::Approved, E::Deny, Some(S::Denied)),
            (S::Approved, E::IssueFailed, None),
            (S::Revoking, E::CallFailed, Some(S::Revoking)),
            (S::Revoked, E::CallFailed, Some(S::Revoked)),
            (S::Revoked, E::FoundResidue, Some(S::Residual)),
            (S::Residual, E::BeginRevoke(T::Expiry), Some(S::Revoking)),
            (S::Verified, E::FoundResidue, Some(S::Residual)),
        ]);
    }

    #[test]
    fn escalation_keeps_trying() {
        check(&[
            (S::Revoking, E::Escalate, Some(S::Escalated)),
            (S::Revoked, E::Escalate, Some(S::Escalated)),
            (S::Residual, E::Escalate, Some(S::Escalated)),
            (S::Escalated, E::BeginRevoke(T::Expiry), Some(S::Revoking)),
            (S::Escalated, E::RevokeSucceeded, Some(S::Revoked)),
            (S::Escalated, E::VerifiedRevoked, Some(S::Verified)),
            (S::Escalated, E::FoundResidue, Some(S::Residual)),
            (S::Escalated, E::CallFailed, Some(S::Escalated)),
        ]);
    }

    #[test]
    fn illegal_transitions_are_errors() {
        check(&[
            // Nothing is issued without approval, nor twice.
            (S::Requested, E::BeginIssue, None),
            (S::Denied, E::Approve, None),
            (S::Approved, E::RecordApproval, None),
            (S::Denied, E::RecordApproval, None),
            (S::Active, E::BeginIssue, None),
            (S::Active, E::IssueSucceeded, None),
            // Nothing is marked done without a verdict.
            (S::Revoking, E::VerifiedRevoked, None),
            (S::Active, E::VerifiedRevoked, None),
            (S::Residual, E::VerifiedRevoked, None),
            // A verified grant is not revoked again without residue.
            (S::Verified, E::BeginRevoke(T::Manual), None),
            (S::Denied, E::BeginRevoke(T::Manual), None),
            (S::Verified, E::Escalate, None),
        ]);
    }

    #[test]
    fn closed_states_have_no_access() {
        for s in GrantState::ALL {
            assert!(!(s.is_closed() && s.may_have_access()), "{s}");
            assert_eq!(s.as_str().parse::<GrantState>().unwrap(), s);
        }
    }
}
