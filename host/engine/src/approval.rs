//! The decision at request time: the Cedar policies (when configured) or each
//! connector's `lifecycle.approval`, the break-glass path's extra rules, subjects
//! flagged as anomalous, and alerts for loud events.

pub use crate::alerts::Alerts;
use crate::config::{ApprovalMode, BreakGlassConfig, PolicyConfig};
use crate::lifecycle::Decision;
use crate::policy::{Outcome, Policies, PolicyError, PolicyFiles, Query};
use crate::registry::{Registry, Slot};
use crate::standing::Standing;
use ebb_core::contract::{Permission, SubjectKind};
use ebb_core::store::{self, Store};
use serde_json::{Value, json};
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Who asks, as proven by their token.
#[derive(Debug, Clone)]
pub struct Requester<'a> {
    pub subject: &'a str,
    pub kind: SubjectKind,
    pub issuer: Option<&'a str>,
    pub claims: &'a [(String, String)],
}

/// What is asked.
#[derive(Debug, Clone)]
pub struct Ask<'a> {
    pub permissions: &'a [Permission],
    pub ttl_ms: u64,
    pub task: &'a str,
    pub reason: Option<&'a str>,
    pub break_glass: bool,
    pub now_ms: u64,
    /// What the subject can already do downstream without a grant.
    pub standing: &'a Standing,
}

/// What was decided, and the evidence for the audit log.
#[derive(Debug, Clone)]
pub struct Decided {
    pub decision: Decision,
    pub approvals_required: u32,
    pub detail: Value,
}

/// A request refused before any policy is asked (a break-glass rule).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// See the module docs.
#[derive(Debug)]
pub struct ApprovalGate {
    policies: Option<Policies>,
    break_glass: Option<BreakGlassConfig>,
    anomaly_window: Duration,
    flagged: Mutex<HashMap<String, Instant>>,
    /// Where flags are kept across restarts, once set.
    store: std::sync::OnceLock<Arc<dyn Store>>,
    pub alerts: Alerts,
}

/// The host-state prefix of anomaly flags: `anomaly/<subject>` = until (ms, BE).
const FLAG_PREFIX: &str = "anomaly/";

/// The action names every loaded connector describes: the policy schema's actions.
pub fn connector_actions(registry: &Registry) -> BTreeSet<String> {
    registry
        .all()
        .iter()
        .flat_map(|s| {
            s.connector()
                .info()
                .actions
                .iter()
                .map(|a| a.name.clone())
                .collect::<Vec<_>>()
        })
        .collect()
}

impl ApprovalGate {
    /// Loads the policies (validated against the loaded connectors' actions).
    pub fn new(
        config: Option<&PolicyConfig>,
        registry: &Registry,
        alerts: Alerts,
    ) -> Result<Self, PolicyError> {
        let Some(c) = config else {
            return Ok(Self::connector_modes(alerts));
        };
        let files = PolicyFiles {
            normal: c.path.clone(),
            break_glass: c.break_glass.as_ref().map(|b| b.path.clone()),
        };
        Ok(Self {
            policies: Some(Policies::load(files, &connector_actions(registry))?),
            break_glass: c.break_glass.clone(),
            anomaly_window: c.anomaly_window,
            flagged: Mutex::new(HashMap::new()),
            store: std::sync::OnceLock::new(),
            alerts,
        })
    }

    /// No policies: each connector's `lifecycle.approval` decides (and anomaly flags,
    /// which only policies read, lapse at once).
    pub fn connector_modes(alerts: Alerts) -> Self {
        Self {
            policies: None,
            break_glass: None,
            anomaly_window: Duration::ZERO,
            flagged: Mutex::new(HashMap::new()),
            store: std::sync::OnceLock::new(),
            alerts,
        }
    }

    pub fn policies(&self) -> Option<&Policies> {
        self.policies.as_ref()
    }

    /// Loads the policy files again; on error the policies in force stay.
    pub fn reload(&self, registry: &Registry) -> Result<Vec<String>, PolicyError> {
        match &self.policies {
            Some(p) => p.reload(&connector_actions(registry)),
            None => Err(PolicyError(
                "no policies are configured ([policy] path)".into(),
            )),
        }
    }

    /// Keeps anomaly flags in `store` from now on, and takes back the ones it holds
    /// that have not lapsed (flags survive a restart).
    pub async fn keep_flags_in(
        &self,
        store: Arc<dyn Store>,
        now_ms: u64,
    ) -> Result<(), store::Error> {
        let kept = store.states(FLAG_PREFIX).await?;
        let mut stale = Vec::new();
        {
            let mut flagged = self.flagged.lock().unwrap_or_else(|p| p.into_inner());
            for (key, value) in kept {
                let Some(subject) = key.strip_prefix(FLAG_PREFIX) else {
                    continue;
                };
                let until_ms = value
                    .get(..8)
                    .and_then(|b| <[u8; 8]>::try_from(b).ok())
                    .map_or(0, u64::from_be_bytes);
                if until_ms > now_ms {
                    flagged.insert(
                        subject.to_owned(),
                        Instant::now() + Duration::from_millis(until_ms - now_ms),
                    );
                } else {
                    stale.push(key);
                }
            }
        }
        for key in stale {
            store.put_state(&key, None).await?;
        }
        let _ = self.store.set(store);
        Ok(())
    }

    /// Marks `subject` anomalous for the anomaly window: its requests carry the
    /// `anomalous-subject` risk flag. Kept in the store (if one is set) so that a
    /// restart does not clear it; the caller syncs.
    pub async fn flag(&self, subject: &str, now_ms: u64) -> Result<(), store::Error> {
        {
            let mut flagged = self.flagged.lock().unwrap_or_else(|p| p.into_inner());
            flagged.retain(|_, until| *until > Instant::now());
            flagged.insert(subject.to_owned(), Instant::now() + self.anomaly_window);
        }
        if let Some(store) = self.store.get() {
            let window = u64::try_from(self.anomaly_window.as_millis()).unwrap_or(u64::MAX);
            let until = now_ms.saturating_add(window);
            store
                .put_state(
                    &format!("{FLAG_PREFIX}{subject}"),
                    Some(&until.to_be_bytes()),
                )
                .await?;
        }
        Ok(())
    }

    /// Whether `subject` carries the anomaly flag now.
    pub fn is_flagged(&self, subject: &str) -> bool {
        !self.risk(subject).is_empty()
    }

    fn risk(&self, subject: &str) -> Vec<String> {
        let flagged = self.flagged.lock().unwrap_or_else(|p| p.into_inner());
        match flagged.get(subject) {
            Some(until) if *until > Instant::now() => vec!["anomalous-subject".into()],
            _ => vec![],
        }
    }

    /// Decides a request for `slot`.
    pub fn decide(
        &self,
        who: &Requester<'_>,
        slot: &Slot,
        ask: &Ask<'_>,
    ) -> Result<Decided, Refused> {
        if ask.break_glass {
            let Some(bg) = &self.break_glass else {
                return Err(Refused(
                    "break-glass is not configured on this host ([policy.break-glass])".into(),
                ));
            };
            let reason = ask.reason.unwrap_or("").trim();
            if visible_chars(reason) < bg.min_reason_chars {
                return Err(Refused(format!(
                    "break-glass needs a reason of at least {} characters",
                    bg.min_reason_chars
                )));
            }
            let max = u64::try_from(bg.max_ttl.as_millis()).unwrap_or(u64::MAX);
            if ask.ttl_ms > max {
                return Err(Refused(format!(
                    "break-glass grants last at most {}",
                    humantime::format_duration(bg.max_ttl)
                )));
            }
        }
        let Some(policies) = &self.policies else {
            return Ok(match slot.policy().approval {
                ApprovalMode::Auto => Decided {
                    decision: Decision::Approve {
                        by: "connector:auto".into(),
                        note: None,
                        issue_within_ms: None,
                    },
                    approvals_required: 1,
                    detail: json!({ "decided_by": "connector", "approval": "auto", "standing": ask.standing }),
                },
                ApprovalMode::Required => Decided {
                    decision: Decision::Pending,
                    approvals_required: 1,
                    detail: json!({ "decided_by": "connector", "approval": "required", "standing": ask.standing }),
                },
            });
        };
        let connector = slot.connector();
        let info = connector.info();
        let risk = self.risk(who.subject);
        let verdict = policies.decide(&Query {
            subject: who.subject,
            kind: who.kind,
            issuer: who.issuer,
            claims: who.claims,
            connector: slot.name(),
            connector_kind: &info.name,
            system: &info.system,
            permissions: ask.permissions,
            ttl_ms: ask.ttl_ms,
            task: ask.task,
            reason: ask.reason.unwrap_or(""),
            source: if ask.break_glass {
                "break-glass"
            } else {
                "api"
            },
            risk: &risk,
            break_glass: ask.break_glass,
            now_ms: ask.now_ms,
            standing: ask.standing.findings.as_deref(),
        });
        let by = if verdict.policies.is_empty() {
            "policy:default-deny".to_owned()
        } else {
            format!("policy:{}", verdict.policies.join(","))
        };
        let detail = json!({
            "decided_by": "policy",
            "verdict": verdict,
            "risk": risk,
            "standing": ask.standing,
        });
        Ok(match verdict.outcome {
            Outcome::Deny => Decided {
                decision: Decision::Deny {
                    by,
                    reason: verdict.reasons.join("; "),
                },
                approvals_required: 1,
                detail,
            },
            Outcome::AutoApprove => Decided {
                decision: Decision::Approve {
                    by,
                    note: None,
                    issue_within_ms: None,
                },
                approvals_required: 1,
                detail,
            },
            Outcome::NeedsApproval(n) => Decided {
                decision: Decision::Pending,
                approvals_required: n,
                detail,
            },
        })
    }
}

/// Characters a person can see: not whitespace, control or format characters
/// (zero-width spaces and joiners, the soft hyphen, the byte-order mark), so a
/// reason cannot be padded to a minimum length with nothing.
pub fn visible_chars(text: &str) -> usize {
    text.chars()
        .filter(|c| {
            !c.is_whitespace()
                && !c.is_control()
                && !matches!(c, '\u{00AD}' | '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}' | '\u{2060}'..='\u{2064}' | '\u{FEFF}')
        })
        .count()
}
