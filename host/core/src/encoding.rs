//! How a [`GrantRecord`] is stored: a compact binary form (a format byte, then
//! [postcard]), while the API and the audit log keep JSON.
//!
//! A record is decoded on every read (and, in the embedded store, the old version
//! on every commit) and encoded on every commit, so its form is on the hot path
//! of every store. A typical record on an Intel Xeon: JSON 739 bytes, 0.72 µs to
//! encode, 1.56 µs to decode; the binary form 333 bytes, 0.19 µs and 0.61 µs
//! (BENCHMARKS.md).
//!
//! Records written before the binary form are JSON objects; they start with `{`
//! and are still read. A record is tagged (HMAC) over its stored bytes, whichever
//! form they are in.
//!
//! The binary form stores enums by their position: new variants of
//! [`GrantState`], [`Trigger`], [`SubjectKind`] and [`ResidueKind`] go at the end,
//! and none is ever reordered or removed (a test pins the bytes of a record).
//! A change to the fields of the record is a new format byte.
//!
//! [`SubjectKind`]: crate::contract::SubjectKind
//! [`ResidueKind`]: crate::contract::ResidueKind

use crate::contract::{Grant, Residue, ResidueKind, Timestamp};
use crate::state::{GrantState, Trigger};
use crate::store::{Approval, GrantRecord};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;

/// The first byte of a record in the binary form, version 1.
const BINARY_V1: u8 = 1;

/// Why stored bytes are no record.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("empty record")]
    Empty,
    #[error("unknown record format {0:#04x} (written by a newer host?)")]
    UnknownFormat(u8),
    #[error("malformed binary record: {0}")]
    Binary(#[from] postcard::Error),
    #[error("malformed JSON record: {0}")]
    Json(#[from] serde_json::Error),
}

/// The stored form of `record`. Fails only if postcard cannot represent a value,
/// which no field of a record is.
pub fn encode_record(record: &GrantRecord) -> Result<Vec<u8>, postcard::Error> {
    let mut out = Vec::with_capacity(512);
    out.push(BINARY_V1);
    postcard::to_extend(&RecordV1::from(record), out)
}

/// A record from its stored bytes: the binary form, or JSON from before it.
pub fn decode_record(bytes: &[u8]) -> Result<GrantRecord, DecodeError> {
    match bytes.first() {
        None => Err(DecodeError::Empty),
        Some(&BINARY_V1) => {
            let stored: RecordV1<'_> = postcard::from_bytes(&bytes[1..])?;
            Ok(stored.into())
        }
        Some(b'{') => Ok(serde_json::from_slice(bytes)?),
        Some(&other) => Err(DecodeError::UnknownFormat(other)),
    }
}

/// [`GrantRecord`] with every field always present, in a fixed order: postcard
/// has no field names, so nothing may be skipped.
#[derive(Serialize, Deserialize)]
struct RecordV1<'a> {
    grant: Cow<'a, Grant>,
    connector: Cow<'a, str>,
    state: GrantState,
    version: u64,
    ttl_ms: u64,
    requested_at: Timestamp,
    requested_by: Cow<'a, str>,
    reason: Cow<'a, Option<String>>,
    approvals: Vec<ApprovalV1<'a>>,
    approvals_required: u32,
    break_glass: bool,
    issued_at: Option<Timestamp>,
    handle: Cow<'a, Option<String>>,
    issued_by_digest: Cow<'a, Option<String>>,
    downstream_expires_at: Option<Timestamp>,
    trigger: Option<Trigger>,
    revoke_started_at: Option<Timestamp>,
    revoked_at: Option<Timestamp>,
    verified_at: Option<Timestamp>,
    escalated_at: Option<Timestamp>,
    reverify_until: Option<Timestamp>,
    attempts: u32,
    last_error: Cow<'a, Option<String>>,
    residue: Vec<ResidueV1<'a>>,
    due_at: Option<Timestamp>,
    updated_at: Timestamp,
}

#[derive(Serialize, Deserialize)]
struct ApprovalV1<'a> {
    by: Cow<'a, str>,
    at: Timestamp,
    note: Cow<'a, Option<String>>,
}

#[derive(Serialize, Deserialize)]
struct ResidueV1<'a> {
    kind: ResidueKind,
    detail: Cow<'a, str>,
    location: Cow<'a, Option<String>>,
    remedy: Cow<'a, Option<String>>,
}

impl<'a> From<&'a GrantRecord> for RecordV1<'a> {
    fn from(r: &'a GrantRecord) -> Self {
        Self {
            grant: Cow::Borrowed(&r.grant),
            connector: Cow::Borrowed(&r.connector),
            state: r.state,
            version: r.version,
            ttl_ms: r.ttl_ms,
            requested_at: r.requested_at,
            requested_by: Cow::Borrowed(&r.requested_by),
            reason: Cow::Borrowed(&r.reason),
            approvals: r
                .approvals
                .iter()
                .map(|a| ApprovalV1 {
                    by: Cow::Borrowed(&a.by),
                    at: a.at,
                    note: Cow::Borrowed(&a.note),
                })
                .collect(),
            approvals_required: r.approvals_required,
            break_glass: r.break_glass,
            issued_at: r.issued_at,
            handle: Cow::Borrowed(&r.handle),
            issued_by_digest: Cow::Borrowed(&r.issued_by_digest),
            downstream_expires_at: r.downstream_expires_at,
            trigger: r.trigger,
            revoke_started_at: r.revoke_started_at,
            revoked_at: r.revoked_at,
            verified_at: r.verified_at,
            escalated_at: r.escalated_at,
            reverify_until: r.reverify_until,
            attempts: r.attempts,
            last_error: Cow::Borrowed(&r.last_error),
            residue: r
                .residue
                .iter()
                .map(|x| ResidueV1 {
                    kind: x.kind,
                    detail: Cow::Borrowed(&x.detail),
                    location: Cow::Borrowed(&x.location),
                    remedy: Cow::Borrowed(&x.remedy),
                })
                .collect(),
            due_at: r.due_at,
            updated_at: r.updated_at,
        }
    }
}

impl From<RecordV1<'_>> for GrantRecord {
    fn from(r: RecordV1<'_>) -> Self {
        Self {
            grant: r.grant.into_owned(),
            connector: r.connector.into_owned(),
            state: r.state,
            version: r.version,
            ttl_ms: r.ttl_ms,
            requested_at: r.requested_at,
            requested_by: r.requested_by.into_owned(),
            reason: r.reason.into_owned(),
            approvals: r
                .approvals
                .into_iter()
                .map(|a| Approval {
                    by: a.by.into_owned(),
                    at: a.at,
                    note: a.note.into_owned(),
                })
                .collect(),
            approvals_required: r.approvals_required,
            break_glass: r.break_glass,
            issued_at: r.issued_at,
            handle: r.handle.into_owned(),
            issued_by_digest: r.issued_by_digest.into_owned(),
            downstream_expires_at: r.downstream_expires_at,
            trigger: r.trigger,
            revoke_started_at: r.revoke_started_at,
            revoked_at: r.revoked_at,
            verified_at: r.verified_at,
            escalated_at: r.escalated_at,
            reverify_until: r.reverify_until,
            attempts: r.attempts,
            last_error: r.last_error.into_owned(),
            residue: r
                .residue
                .into_iter()
                .map(|x| Residue {
                    kind: x.kind,
                    detail: x.detail.into_owned(),
                    location: x.location.into_owned(),
                    remedy: x.remedy.into_owned(),
                })
                .collect(),
            due_at: r.due_at,
            updated_at: r.updated_at,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic, reason = "tests fail loudly")]

    use super::*;
    use crate::contract::{Permission, Subject, SubjectKind};

    /// A record with every field set, none at its default.
    fn full() -> GrantRecord {
        let grant = Grant {
            id: "g_full".into(),
            subject: Subject {
                id: "spiffe://prod/agent".into(),
                kind: SubjectKind::Person,
                claims: vec![("team".into(), "billing".into())],
            },
            permissions: vec![Permission {
                action: "select".into(),
                resource: "public.invoices".into(),
            }],
            not_after: 1_700_000_060_000,
            task: "reconcile".into(),
        };
        let mut r = GrantRecord::requested(
            grant,
            "pg".into(),
            60_000,
            1_700_000_000_000,
            "alice".into(),
            Some("ticket 42".into()),
        );
        r.state = GrantState::Escalated;
        r.version = 9;
        r.approvals = vec![
            Approval {
                by: "bob".into(),
                at: 1_700_000_000_100,
                note: Some("ok".into()),
            },
            Approval {
                by: "carol".into(),
                at: 1_700_000_000_200,
                note: None,
            },
        ];
        r.approvals_required = 2;
        r.break_glass = true;
        r.issued_at = Some(1_700_000_000_300);
        r.handle = Some("ebb_g_full".into());
        r.issued_by_digest = Some("ab".repeat(32));
        r.downstream_expires_at = Some(1_700_000_090_000);
        r.trigger = Some(Trigger::Anomaly);
        r.revoke_started_at = Some(1_700_000_000_400);
        r.revoked_at = Some(1_700_000_000_500);
        r.verified_at = Some(1_700_000_000_600);
        r.escalated_at = Some(1_700_000_000_700);
        r.reverify_until = Some(1_700_000_100_000);
        r.attempts = 7;
        r.last_error = Some("downstream unavailable".into());
        r.residue = vec![
            Residue {
                kind: ResidueKind::OwnedObject,
                detail: "table public.t owned by the grant".into(),
                location: Some("db main".into()),
                remedy: Some("DROP TABLE public.t".into()),
            },
            Residue::new(ResidueKind::SessionOpen, "pid 4242"),
        ];
        r.due_at = Some(1_700_000_000_800);
        r.updated_at = 1_700_000_000_900;
        r
    }

    fn minimal() -> GrantRecord {
        let grant = Grant {
            id: "g_min".into(),
            subject: Subject {
                id: "job".into(),
                kind: SubjectKind::Workload,
                claims: vec![],
            },
            permissions: vec![],
            not_after: 0,
            task: String::new(),
        };
        GrantRecord::requested(grant, "noop".into(), 1, 2, "agent".into(), None)
    }

    #[test]
    fn every_field_survives_the_binary_form() {
        for record in [full(), minimal()] {
            let bytes = encode_record(&record).unwrap();
            assert_eq!(bytes[0], BINARY_V1);
            assert_eq!(decode_record(&bytes).unwrap(), record);
        }
    }

    #[test]
    fn the_binary_form_is_smaller_than_json() {
        let record = full();
        let binary = encode_record(&record).unwrap().len();
        let json = serde_json::to_vec(&record).unwrap().len();
        assert!(binary * 2 < json, "binary {binary} B, JSON {json} B");
    }

    #[test]
    fn records_stored_as_json_before_the_binary_form_are_read() {
        for record in [full(), minimal()] {
            let json = serde_json::to_vec(&record).unwrap();
            assert_eq!(decode_record(&json).unwrap(), record);
        }
    }

    /// The bytes of a record in format 1, pinned: a reordered enum or a changed
    /// field would read every stored record wrong, so it must fail here first.
    #[test]
    fn the_binary_form_does_not_drift() {
        assert_eq!(hex::encode(encode_record(&full()).unwrap()), FULL_V1);
        assert_eq!(
            decode_record(&hex::decode(FULL_V1).unwrap()).unwrap(),
            full()
        );
    }

    const FULL_V1: &str = concat!(
        "0106675f66756c6c137370696666653a2f2f70726f642f6167656e7401010474",
        "65616d0762696c6c696e67010673656c6563740f7075626c69632e696e766f69",
        "636573e0a499ffbc31097265636f6e63696c650270670909e0d40380d095ffbc",
        "3105616c69636501097469636b65742034320203626f62e4d095ffbc3101026f",
        "6b056361726f6cc8d195ffbc3100020101acd295ffbc31010a6562625f675f66",
        "756c6c0140616261626162616261626162616261626162616261626162616261",
        "6261626162616261626162616261626162616261626162616261626162616261",
        "626162616201908f9bffbc3101030190d395ffbc3101f4d395ffbc3101d8d495",
        "ffbc3101bcd595ffbc3101a0dd9bffbc31070116646f776e73747265616d2075",
        "6e617661696c61626c650204217461626c65207075626c69632e74206f776e65",
        "6420627920746865206772616e7401076462206d61696e011344524f50205441",
        "424c45207075626c69632e7401087069642034323432000001a0d695ffbc3184",
        "d795ffbc31",
    );

    #[test]
    fn bytes_that_are_no_record_are_refused_with_the_reason() {
        assert!(matches!(decode_record(&[]), Err(DecodeError::Empty)));
        let newer = decode_record(&[0x02, 0, 0]).unwrap_err();
        assert!(matches!(newer, DecodeError::UnknownFormat(2)), "{newer}");
        assert!(newer.to_string().contains("newer host"), "{newer}");
        let mut truncated = encode_record(&full()).unwrap();
        truncated.truncate(truncated.len() / 2);
        assert!(matches!(
            decode_record(&truncated),
            Err(DecodeError::Binary(_))
        ));
        assert!(matches!(
            decode_record(b"{\"grant\": 1}"),
            Err(DecodeError::Json(_))
        ));
    }
}
