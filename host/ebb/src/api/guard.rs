//! Refused callers cost little and write little.
//!
//! A refused call (no or a bad token, a role it lacks) is not written to the audit
//! log one by one: [`Guard`] counts refusals per client and kind, and once per
//! window writes one `auth.refusals` event with the totals, the clients with the
//! most refusals (at most [`SUMMARY_CLIENTS`]) and one sample of each, cut to
//! [`SAMPLE_BYTES`]. Each client also has a bucket of refusals
//! ([`BUCKET_SIZE`], refilled at [`REFILL_PER_SECOND`]); a client that empties it is
//! answered 429, until the bucket refills, before any JWT it sends is parsed and
//! checked (the costly part). A request with no token or an unknown opaque one
//! costs a hash lookup and a counter, so it is always answered 401.
//!
//! So whatever an anonymous flood sends, the audit log grows by at most one summary
//! event per window, of bounded size (see the README's security model), and the
//! host spends on it only a hash lookup and a counter per request.

use ebb_core::audit::NewEvent;
use ebb_engine::audit_log::AuditLog;
use serde_json::json;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// How often a summary of refusals is written.
pub const WINDOW: Duration = Duration::from_secs(10);
/// Refusals a client may run up before it is answered 429.
pub const BUCKET_SIZE: f64 = 20.0;
/// How fast a client's bucket refills, in refusals per second.
pub const REFILL_PER_SECOND: f64 = 2.0;
/// Clients named in one summary; the rest are counted together.
pub const SUMMARY_CLIENTS: usize = 32;
/// The longest sample of what a refused caller sent, in bytes.
pub const SAMPLE_BYTES: usize = 128;
/// Clients tracked at once (buckets and counts); beyond it they share one entry.
const TRACKED_CLIENTS: usize = 4096;

/// The peer address of a connection, added to each request by the server.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub IpAddr);

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn refill(&mut self, now: Instant) {
        let earned = now.duration_since(self.at).as_secs_f64() * REFILL_PER_SECOND;
        self.tokens = (self.tokens + earned).min(BUCKET_SIZE);
        self.at = now;
    }
}

#[derive(Debug, Default)]
struct Tally {
    count: u64,
    sample: String,
}

#[derive(Debug, Default)]
struct State {
    buckets: HashMap<Option<IpAddr>, Bucket>,
    /// Requests denied by policy, per principal: each is a durable denied grant.
    denials: HashMap<String, Bucket>,
    tallies: HashMap<(Option<IpAddr>, &'static str, String), Tally>,
    limited: u64,
    total: u64,
}

/// Rate limits and aggregates refused calls. Shared by every handler.
#[derive(Debug, Default)]
pub struct Guard {
    state: Mutex<State>,
    window: Duration,
}

/// `s` cut to at most `max` bytes, on a character boundary.
pub fn cut(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

impl Guard {
    /// A guard whose summaries go to `audit` every `window` ([`WINDOW`] in
    /// production), for as long as the guard lives.
    pub fn start(audit: AuditLog, window: Duration) -> Arc<Self> {
        let guard = Arc::new(Self {
            window,
            ..Self::default()
        });
        let weak: Weak<Self> = Arc::downgrade(&guard);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(window);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(guard) = weak.upgrade() else { return };
                if let Some(summary) = guard.drain() {
                    audit
                        .note(NewEvent::new("auth.refusals", "ebb").detail(summary))
                        .await;
                }
            }
        });
        guard
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `client` may be heard now; false when it has used up its refusals
    /// (the caller answers 429, and the refusal is counted as `rate-limited`).
    pub fn admits(&self, client: Option<IpAddr>) -> bool {
        let mut state = self.lock();
        let now = Instant::now();
        let admitted = match state.buckets.get_mut(&client) {
            Some(bucket) => {
                bucket.refill(now);
                bucket.tokens >= 1.0
            }
            None => true,
        };
        if !admitted {
            state.limited += 1;
            state.total += 1;
        }
        admitted
    }

    /// Records a refusal of `client`: one token of its bucket, and a count by kind
    /// and `class` (a few words from a fixed set), with a cut sample of what it
    /// sent, for the next summary.
    pub fn refused(&self, client: Option<IpAddr>, kind: &'static str, class: &str, sample: &str) {
        let mut state = self.lock();
        let now = Instant::now();
        state.total += 1;
        // Too many clients at once: the newcomers share one entry.
        let key = if state.buckets.len() >= TRACKED_CLIENTS && !state.buckets.contains_key(&client)
        {
            state.buckets.retain(|_, b| {
                b.refill(now);
                b.tokens < BUCKET_SIZE
            });
            if state.buckets.len() >= TRACKED_CLIENTS {
                None
            } else {
                client
            }
        } else {
            client
        };
        let bucket = state.buckets.entry(key).or_insert(Bucket {
            tokens: BUCKET_SIZE,
            at: now,
        });
        bucket.refill(now);
        bucket.tokens = (bucket.tokens - 1.0).max(0.0);
        let class = cut(class, 40);
        let tally_key = if state.tallies.len() >= TRACKED_CLIENTS
            && !state.tallies.contains_key(&(key, kind, class.clone()))
        {
            (None, kind, String::new())
        } else {
            (key, kind, class)
        };
        let tally = state.tallies.entry(tally_key).or_default();
        tally.count += 1;
        if tally.sample.is_empty() {
            tally.sample = cut(sample, SAMPLE_BYTES);
        }
    }

    /// Whether `principal` may have one more request denied by policy recorded (a
    /// denied grant and its events); false once it has run up [`BUCKET_SIZE`] of
    /// them, until its bucket refills (the caller answers 429 and records nothing).
    pub fn admits_denial(&self, principal: &str) -> bool {
        let mut state = self.lock();
        let now = Instant::now();
        if state.denials.len() >= TRACKED_CLIENTS && !state.denials.contains_key(principal) {
            state.denials.retain(|_, b| {
                b.refill(now);
                b.tokens < BUCKET_SIZE
            });
        }
        let bucket = state.denials.entry(principal.to_owned()).or_insert(Bucket {
            tokens: BUCKET_SIZE,
            at: now,
        });
        bucket.refill(now);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            state.limited += 1;
            state.total += 1;
            false
        }
    }

    /// The refusals since the last summary, as an audit detail; `None` if none.
    pub fn drain(&self) -> Option<serde_json::Value> {
        let mut state = self.lock();
        if state.total == 0 {
            return None;
        }
        let mut tallies: Vec<_> = state.tallies.drain().collect();
        tallies.sort_by_key(|(_, t)| std::cmp::Reverse(t.count));
        let others: u64 = tallies
            .iter()
            .skip(SUMMARY_CLIENTS)
            .map(|(_, t)| t.count)
            .sum();
        let clients: Vec<_> = tallies
            .iter()
            .take(SUMMARY_CLIENTS)
            .map(|((client, kind, class), t)| {
                json!({
                    "client": client.map_or_else(|| "other".to_owned(), |c| c.to_string()),
                    "kind": kind,
                    "class": class,
                    "count": t.count,
                    "sample": t.sample,
                })
            })
            .collect();
        let summary = json!({
            "window_ms": u64::try_from(self.window.as_millis()).unwrap_or(u64::MAX),
            "total": state.total,
            "rate_limited": state.limited,
            "clients": clients,
            "other_clients": others,
        });
        state.total = 0;
        state.limited = 0;
        Some(summary)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_is_limited_after_its_bucket_and_summaries_are_bounded() {
        let guard = Guard::default();
        let flood: Option<IpAddr> = Some([10, 0, 0, 1].into());
        let huge = "x".repeat(100_000);
        let mut admitted = 0;
        for _ in 0..1_000 {
            if guard.admits(flood) {
                admitted += 1;
                guard.refused(flood, "unauthenticated", "no token", &huge);
            }
        }
        assert!(admitted <= BUCKET_SIZE as usize + 1, "{admitted} admitted");
        // Thousands of distinct clients: one summary, of bounded size.
        for n in 0..10_000u32 {
            let client = Some(IpAddr::from(n.to_be_bytes()));
            guard.refused(client, "unauthenticated", &huge, &huge);
        }
        let summary = guard.drain().unwrap();
        assert_eq!(summary["total"], 11_000);
        assert!(summary["clients"].as_array().unwrap().len() <= SUMMARY_CLIENTS);
        assert!(
            summary.to_string().len() < 16 * 1024,
            "{}",
            summary.to_string().len()
        );
        assert!(guard.drain().is_none(), "drained");
    }

    #[test]
    fn cut_respects_character_boundaries() {
        assert_eq!(cut("héllo", 2), "h");
        assert_eq!(cut("abc", 10), "abc");
    }
}
