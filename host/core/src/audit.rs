//! The audit log: every grant transition and security-relevant decision as an event
//! in an append-only chain.
//!
//! Each event carries `prev`, the previous event's `hash`, and its own
//! `hash = HMAC-SHA256(key, prev ‖ canonical JSON of the event without its hash)`.
//! [`verify_chain`] recomputes every link: an edited event fails its hash, a deleted
//! or reordered one breaks the `seq`/`prev` links, and a truncated tail no longer
//! matches the head the store keeps beside the chain. Keying the chain with a secret
//! derived from the host key means someone who can write to the store still cannot
//! forge a consistent chain.
//!
//! Grant records are bound to the chain: the store tags each record it writes
//! ([`Chain::record_tag`], keyed like the chain) and the event committed with it
//! carries that tag in `record`, so a record edited outside the host fails its tag,
//! and an older record put back no longer matches its grant's latest event. The
//! keyed [`Head`] also counts the records, so a deleted record is missed.
//!
//! Events never contain a secret: credentials are not audit data.

use crate::state::GrantState;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// The `prev` of the first event.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One audit event, as stored and served.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditEvent {
    /// Position in the chain, from 1, without gaps.
    pub seq: u64,
    /// Milliseconds since the Unix epoch.
    pub at: u64,
    /// What happened, e.g. `grant.transition`, `grant.requested`, `auth.denied`.
    pub kind: String,
    /// Who caused it (a subject, an operator token's name, or `ebb` for the host).
    pub actor: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<GrantState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<GrantState>,
    /// Why, and the evidence: trigger, reason, residue found, errors, policy ids.
    #[serde(default)]
    pub detail: serde_json::Value,
    /// The host that wrote it, on a store several hosts share (`[store] host-id`);
    /// absent on a host's own store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The tag of the grant record this event committed (hex), binding the record
    /// to the chain; absent on events that wrote no record, and on events written
    /// before records were bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<String>,
    /// The previous event's hash (hex).
    pub prev: String,
    /// This event's keyed hash (hex).
    pub hash: String,
}

/// An event before it is placed in the chain.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NewEvent {
    pub kind: String,
    pub actor: String,
    pub grant_id: Option<String>,
    pub from: Option<GrantState>,
    pub to: Option<GrantState>,
    pub detail: serde_json::Value,
    /// Set by a shared store: the host that writes it.
    pub host: Option<String>,
    /// Set by the store, from the record it commits with the event.
    pub record: Option<String>,
}

impl NewEvent {
    pub fn new(kind: &str, actor: &str) -> Self {
        Self {
            kind: kind.to_owned(),
            actor: actor.to_owned(),
            detail: serde_json::Value::Null,
            ..Self::default()
        }
    }

    pub fn grant(mut self, id: &str) -> Self {
        self.grant_id = Some(id.to_owned());
        self
    }

    pub fn detail(mut self, detail: serde_json::Value) -> Self {
        self.detail = detail;
        self
    }
}

/// Where the chain ends, as the store records it beside the events: the last
/// event's `seq` and `hash`, and a MAC over both under the chain key. The MAC is
/// what makes truncation visible: without the key nobody can record an earlier
/// event as the end of the chain. (Restoring a whole older copy of the store, head
/// and all, is a rollback no store can see alone; the host's operators keep backups
/// and an external record of the head for that.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    pub seq: u64,
    pub hash: String,
    /// How many grant records the store holds; covered by the MAC, so a deleted
    /// record is missed. `None` in stores written before records were bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub records: Option<u64>,
    /// `None` only in stores written before heads were keyed; stores add it at open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

impl Head {
    /// The head of an empty chain.
    pub fn genesis(chain: &Chain) -> Self {
        chain.head(0, GENESIS, 0)
    }
}

/// Computes event hashes with the chain key.
#[derive(Clone)]
pub struct Chain {
    /// HMAC-SHA256 already keyed with the chain key: cloned for each MAC, so the
    /// key's pads are hashed once, not per event or record.
    keyed: Hmac<Sha256>,
}

impl std::fmt::Debug for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Chain(<key>)")
    }
}

impl Chain {
    pub fn new(key: [u8; 32]) -> Self {
        Self {
            keyed: <Hmac<Sha256> as Mac>::new_from_slice(&key)
                .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length")),
        }
    }

    /// Places `event` after `(prev_seq, prev_hash)`.
    pub fn seal(&self, event: NewEvent, at: u64, prev_seq: u64, prev_hash: &str) -> AuditEvent {
        self.seal_encoded(event, at, prev_seq, prev_hash).0
    }

    /// [`Chain::seal`], also returning the sealed event's JSON encoding (what a
    /// store keeps), made from the one encoding the hash is computed over: the
    /// event is serialized once, not once for the hash and again for storage.
    pub fn seal_encoded(
        &self,
        event: NewEvent,
        at: u64,
        prev_seq: u64,
        prev_hash: &str,
    ) -> (AuditEvent, Vec<u8>) {
        let mut sealed = AuditEvent {
            seq: prev_seq + 1,
            at,
            kind: event.kind,
            actor: event.actor,
            grant_id: event.grant_id,
            from: event.from,
            to: event.to,
            detail: event.detail,
            host: event.host,
            record: event.record,
            prev: prev_hash.to_owned(),
            hash: String::new(),
        };
        let body = serde_json::to_vec(&sealed).unwrap_or_default();
        sealed.hash = self.hash_body(&sealed.prev, &body);
        // `hash` is the last field, so the stored encoding is the hashed one with
        // the empty hash filled in; anything else is encoded afresh.
        let stored = match body.strip_suffix(br#""hash":""}"#) {
            Some(start) => {
                let mut stored = Vec::with_capacity(body.len() + sealed.hash.len());
                stored.extend_from_slice(start);
                stored.extend_from_slice(br#""hash":""#);
                stored.extend_from_slice(sealed.hash.as_bytes());
                stored.extend_from_slice(br#""}"#);
                stored
            }
            None => serde_json::to_vec(&sealed).unwrap_or_default(),
        };
        debug_assert_eq!(
            Some(&stored),
            serde_json::to_vec(&sealed).ok().as_ref(),
            "the spliced encoding is the event's encoding"
        );
        (sealed, stored)
    }

    /// The keyed head for a chain ending at `(seq, hash)` beside `records` grant
    /// records.
    pub fn head(&self, seq: u64, hash: &str, records: u64) -> Head {
        Head {
            seq,
            hash: hash.to_owned(),
            records: Some(records),
            mac: Some(hex::encode(
                self.head_mac(seq, hash, Some(records))
                    .finalize()
                    .into_bytes(),
            )),
        }
    }

    fn head_mac(&self, seq: u64, hash: &str, records: Option<u64>) -> Hmac<Sha256> {
        let mut mac = self.mac();
        match records {
            Some(n) => {
                mac.update(b"ebb/audit-head/2");
                mac.update(&seq.to_be_bytes());
                mac.update(&n.to_be_bytes());
            }
            // Heads keyed before records were counted.
            None => {
                mac.update(b"ebb/audit-head");
                mac.update(&seq.to_be_bytes());
            }
        }
        mac.update(hash.as_bytes());
        mac
    }

    fn mac(&self) -> Hmac<Sha256> {
        self.keyed.clone()
    }

    /// Whether `head` was recorded by a holder of the chain key.
    pub fn head_is_genuine(&self, head: &Head) -> bool {
        let Some(tag) = head.mac.as_deref().and_then(|m| hex::decode(m).ok()) else {
            return false;
        };
        self.head_mac(head.seq, &head.hash, head.records)
            .verify_slice(&tag)
            .is_ok()
    }

    /// Whether `event` is as this host sealed it (its hash matches its content).
    pub fn event_is_genuine(&self, event: &AuditEvent) -> bool {
        self.hash(event) == event.hash
    }

    /// The tag binding grant record `id`, stored as `bytes`, to this host: stored
    /// beside the record and carried by the event that committed it.
    pub fn record_tag(&self, id: &str, bytes: &[u8]) -> [u8; 32] {
        let mut mac = self.mac();
        mac.update(b"ebb/grant-record");
        mac.update(id.as_bytes());
        mac.update(&[0]);
        mac.update(bytes);
        mac.finalize().into_bytes().into()
    }

    fn hash(&self, event: &AuditEvent) -> String {
        let mut unhashed = event.clone();
        unhashed.hash = String::new();
        // Struct fields serialize in declaration order and `detail` maps are sorted
        // (serde_json's default `Map` is a BTreeMap), so this encoding is canonical.
        let body = serde_json::to_vec(&unhashed).unwrap_or_default();
        self.hash_body(&event.prev, &body)
    }

    /// The hash of an event whose encoding with an empty `hash` is `body`.
    fn hash_body(&self, prev: &str, body: &[u8]) -> String {
        let mut mac = self.mac();
        mac.update(prev.as_bytes());
        mac.update(body);
        hex::encode(mac.finalize().into_bytes())
    }
}

/// What [`verify_chain`] found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ChainReport {
    /// Events checked.
    pub events: u64,
    /// Grant records checked against their tags (and, in a full check, against
    /// their grant's latest event).
    #[serde(default)]
    pub records: u64,
    /// The first problem found, if any.
    pub problem: Option<String>,
}

impl ChainReport {
    pub fn is_intact(&self) -> bool {
        self.problem.is_none()
    }
}

/// Checks a whole chain, in stored order, against the keyed head the store
/// recorded. Events after the head (appended while the caller read it) are not
/// the caller's to judge: pass only those up to `head.seq`.
pub fn verify_chain<E: std::fmt::Display>(
    chain: &Chain,
    events: impl IntoIterator<Item = Result<AuditEvent, E>>,
    head: Option<&Head>,
) -> ChainReport {
    verify_chain_from(chain, (0, GENESIS), events, head)
}

/// Checks the part of a chain after `(seq, hash)`, an event already verified
/// (e.g. at the last start): `events` are those after it, in stored order.
pub fn verify_chain_from<E: std::fmt::Display>(
    chain: &Chain,
    (from_seq, from_hash): (u64, &str),
    events: impl IntoIterator<Item = Result<AuditEvent, E>>,
    head: Option<&Head>,
) -> ChainReport {
    let mut count = 0;
    let mut prev_seq = from_seq;
    let mut prev_hash = from_hash.to_owned();
    let fail = |count, problem: String| ChainReport {
        events: count,
        records: 0,
        problem: Some(problem),
    };
    for event in events {
        let event = match event {
            Ok(e) => e,
            Err(e) => {
                return fail(
                    count,
                    format!("unreadable event after seq {prev_seq}: {e:#}"),
                );
            }
        };
        count += 1;
        if event.seq != prev_seq + 1 {
            return fail(
                count,
                format!(
                    "event seq {} follows seq {prev_seq}: missing or reordered events",
                    event.seq
                ),
            );
        }
        if event.prev != prev_hash {
            return fail(
                count,
                format!(
                    "event seq {} does not link to the event before it",
                    event.seq
                ),
            );
        }
        if chain.hash(&event) != event.hash {
            return fail(
                count,
                format!(
                    "event seq {} was altered: its hash does not match",
                    event.seq
                ),
            );
        }
        prev_seq = event.seq;
        prev_hash = event.hash;
    }
    match head {
        Some(head) if !chain.head_is_genuine(head) => fail(
            count,
            format!(
                "the recorded head (seq {}) is not keyed by this host: it was written or moved by someone else",
                head.seq
            ),
        ),
        Some(head) if head.seq != prev_seq || head.hash != prev_hash => fail(
            count,
            format!(
                "the chain ends at seq {prev_seq} but the recorded head is seq {}: events were removed from the end",
                head.seq
            ),
        ),
        None if prev_seq != 0 => fail(count, "events exist but no head was recorded".into()),
        _ => ChainReport {
            events: count,
            records: 0,
            problem: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain_of(n: u64) -> (Chain, Vec<AuditEvent>) {
        let chain = Chain::new([7; 32]);
        let mut events: Vec<AuditEvent> = Vec::new();
        for i in 0..n {
            let (seq, prev) = events
                .last()
                .map(|e| (e.seq, e.hash.clone()))
                .unwrap_or((0, GENESIS.into()));
            let event = NewEvent::new("grant.transition", "ebb")
                .grant(&format!("g{i}"))
                .detail(serde_json::json!({"trigger": "expiry", "n": i}));
            events.push(chain.seal(event, 1000 + i, seq, &prev));
        }
        (chain, events)
    }

    fn verify(chain: &Chain, events: &[AuditEvent]) -> ChainReport {
        let head = events.last().map(|e| chain.head(e.seq, &e.hash, 0));
        verify_chain(
            chain,
            events
                .iter()
                .cloned()
                .map(Ok::<_, std::convert::Infallible>),
            head.as_ref(),
        )
    }

    #[test]
    fn intact_chain_verifies() {
        let (chain, events) = chain_of(5);
        assert_eq!(
            verify(&chain, &events),
            ChainReport {
                events: 5,
                records: 0,
                problem: None
            }
        );
    }

    #[test]
    fn detects_edit_deletion_reordering_and_truncation() {
        let (chain, events) = chain_of(5);
        let head = events.last().map(|e| chain.head(e.seq, &e.hash, 0));

        let mut edited = events.clone();
        edited[2].actor = "mallory".into();
        let report = verify_chain(
            &chain,
            edited.into_iter().map(Ok::<_, std::convert::Infallible>),
            head.as_ref(),
        );
        assert!(report.problem.unwrap().contains("seq 3 was altered"));

        let mut deleted = events.clone();
        deleted.remove(1);
        let report = verify_chain(
            &chain,
            deleted.into_iter().map(Ok::<_, std::convert::Infallible>),
            head.as_ref(),
        );
        assert!(report.problem.unwrap().contains("missing or reordered"));

        let mut reordered = events.clone();
        reordered.swap(1, 2);
        assert!(
            !verify_chain(
                &chain,
                reordered.into_iter().map(Ok::<_, std::convert::Infallible>),
                head.as_ref()
            )
            .is_intact()
        );

        let truncated = events[..4].to_vec();
        let report = verify_chain(
            &chain,
            truncated.into_iter().map(Ok::<_, std::convert::Infallible>),
            head.as_ref(),
        );
        assert!(report.problem.unwrap().contains("removed from the end"));

        // Truncation with the head moved back to the new last event: an unkeyed
        // head (or one keyed by someone else) is refused.
        let moved = Head {
            seq: events[3].seq,
            hash: events[3].hash.clone(),
            records: None,
            mac: None,
        };
        let report = verify_chain(
            &chain,
            events[..4]
                .iter()
                .cloned()
                .map(Ok::<_, std::convert::Infallible>),
            Some(&moved),
        );
        assert!(report.problem.unwrap().contains("not keyed by this host"));
        let forged_mac = Chain::new([8; 32]).head(events[3].seq, &events[3].hash, 0);
        assert!(
            !verify_chain(
                &chain,
                events[..4]
                    .iter()
                    .cloned()
                    .map(Ok::<_, std::convert::Infallible>),
                Some(&forged_mac),
            )
            .is_intact()
        );

        // Re-sealing an edited event without the key does not help: a forger with a
        // different key produces hashes the real chain key rejects.
        let forger = Chain::new([8; 32]);
        let mut forged = events.clone();
        forged[4].actor = "mallory".into();
        forged[4] = forger.seal(
            NewEvent::new(&forged[4].kind, "mallory").grant("g4"),
            forged[4].at,
            forged[3].seq,
            &forged[3].hash,
        );
        let forged_head = forger.head(forged[4].seq, &forged[4].hash, 0);
        assert!(
            !verify_chain(
                &chain,
                forged.into_iter().map(Ok::<_, std::convert::Infallible>),
                Some(&forged_head)
            )
            .is_intact()
        );
    }
}
