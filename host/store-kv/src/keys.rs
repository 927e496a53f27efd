//! How keys and values are laid out in the engine. See the key table in the
//! crate docs.

use ebb_core::contract::Timestamp;
use ebb_core::state::GrantState;
use ebb_core::store::{Error, GrantRecord, Result};
use serde::{Deserialize, Serialize};

pub(crate) fn decode<T: for<'de> Deserialize<'de>>(key: &[u8], bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| Error::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        source: Box::new(e),
    })
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| Error::Storage {
        what: "encoding a value",
        source: Box::new(e),
    })
}

/// A grant record from its stored bytes (binary, or JSON from before).
pub(crate) fn decode_record(key: &[u8], bytes: &[u8]) -> Result<GrantRecord> {
    ebb_core::encoding::decode_record(bytes).map_err(|e| Error::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        source: Box::new(e),
    })
}

#[cfg(test)]
thread_local! {
    /// Tests only: this thread's commits store records as JSON, as hosts did
    /// before the binary form.
    pub(crate) static WRITE_JSON: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The stored form of a grant record.
pub(crate) fn encode_record(record: &GrantRecord) -> Result<Vec<u8>> {
    #[cfg(test)]
    if WRITE_JSON.get() {
        return encode(record);
    }
    ebb_core::encoding::encode_record(record).map_err(|e| Error::Storage {
        what: "encoding a grant record",
        source: Box::new(e),
    })
}

pub(crate) fn key(prefix: &str, id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + id.len());
    k.extend_from_slice(prefix.as_bytes());
    k.extend_from_slice(id.as_bytes());
    k
}

pub(crate) fn due_key(due: Timestamp, id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(10 + id.len());
    k.extend_from_slice(b"t/");
    k.extend_from_slice(&due.to_be_bytes());
    k.extend_from_slice(id.as_bytes());
    k
}

pub(crate) fn parse_due_key(k: &[u8]) -> Result<(Timestamp, String)> {
    let bad = || Error::Corrupt {
        key: String::from_utf8_lossy(k).into_owned(),
        source: "malformed due index key".into(),
    };
    let ts: [u8; 8] = k
        .get(2..10)
        .and_then(|s| s.try_into().ok())
        .ok_or_else(bad)?;
    let id = std::str::from_utf8(k.get(10..).ok_or_else(bad)?).map_err(|_| bad())?;
    Ok((u64::from_be_bytes(ts), id.to_owned()))
}

pub(crate) fn be(bytes: &[u8]) -> Option<u64> {
    bytes.try_into().ok().map(u64::from_be_bytes)
}

pub(crate) fn audit_key(seq: u64) -> Vec<u8> {
    let mut k = b"a/".to_vec();
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

pub(crate) fn audit_index_key(grant: &str, seq: u64) -> Vec<u8> {
    let mut k = key("i/", grant);
    k.push(0);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

pub(crate) fn count_key(state: GrantState) -> Vec<u8> {
    key("m/count/", state.as_str())
}

/// How many credentials (`c/` entries) the store holds.
pub(crate) const CREDENTIALS: &[u8] = b"m/count/credentials";

/// The prefix of the escalation counts, one key per connector.
pub(crate) const ESCALATED: &[u8] = b"m/escalated/";

pub(crate) fn escalated_key(connector: &str) -> Vec<u8> {
    key("m/escalated/", connector)
}

pub(crate) fn wall_clock() -> Timestamp {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// `r/<requested by>\0<id>`: the requester index. A NUL cannot end a principal id
/// early for the reader: entries are checked against the record.
pub(crate) fn requester_key(requested_by: &str, id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(3 + requested_by.len() + id.len());
    k.extend_from_slice(b"r/");
    k.extend_from_slice(requested_by.as_bytes());
    k.push(0);
    k.extend_from_slice(id.as_bytes());
    k
}

/// `x/<state>\0<id>`: the state index, so listing the grants in one state (the
/// console's queue, live grants) reads those grants, not every grant.
pub(crate) fn by_state_key(state: GrantState, id: &str) -> Vec<u8> {
    let mut k = by_state_prefix(state);
    k.extend_from_slice(id.as_bytes());
    k
}

/// `x/<state>\0`.
pub(crate) fn by_state_prefix(state: GrantState) -> Vec<u8> {
    let mut k = Vec::with_capacity(16);
    k.extend_from_slice(b"x/");
    k.extend_from_slice(state.as_str().as_bytes());
    k.push(0);
    k
}

/// `s/<key>`: host state that is no grant.
pub(crate) fn state_key(key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + key.len());
    k.extend_from_slice(b"s/");
    k.extend_from_slice(key.as_bytes());
    k
}
