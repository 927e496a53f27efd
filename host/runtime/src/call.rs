//! A loaded connector and the one way to call it.
//!
//! Every call gets a fresh `wasmtime::Store` and instance (microseconds with the
//! pooling allocator), a memory limit, an epoch deadline for time spent in wasm and a
//! host-side timeout for time spent waiting on host calls. Whatever the connector
//! does — trap, loop, grow without bound, return megabytes — the call fails with a
//! [`CallError`] that names what happened, and the next call starts clean.

use crate::bindings::{Plugin, PluginPre, types as wit};
use crate::host::{CallState, Lent};
use crate::limits::{EPOCH_TICK, Limits};
use ebb_core::contract::{
    ActionInfo, Capabilities, ConnectorError, ConnectorInfo, Credential, Grant, Issued, Residue,
    ResidueKind, Subject, SubjectKind, Verdict,
};
use sha2::{Digest as _, Sha256};
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// The sha256 of a component's bytes: the identity of one connector version.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; 32]);

impl Digest {
    pub fn of(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({self})")
    }
}

/// Why a call did not produce the connector's answer — or the connector's own error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// The connector answered with an error from the contract.
    #[error(transparent)]
    Connector(#[from] ConnectorError),
    /// The call ran past its time limit (in wasm or waiting on the host).
    #[error("connector `{connector}` exceeded its time limit of {} ms", limit.as_millis())]
    Timeout { connector: String, limit: Duration },
    /// The connector tried to grow its memory past its limit.
    #[error("connector `{connector}` exceeded its memory limit of {limit_bytes} bytes")]
    MemoryLimit {
        connector: String,
        limit_bytes: usize,
    },
    /// The connector returned more data than the host accepts.
    #[error(
        "connector `{connector}` returned {size} bytes, more than the output limit of {limit} bytes"
    )]
    OutputTooLarge {
        connector: String,
        size: usize,
        limit: usize,
    },
    /// The connector trapped (a bug in it: a panic, an unreachable, a bad access).
    #[error("connector `{connector}` trapped: {message}")]
    Trap { connector: String, message: String },
    /// The host failed around the call (instantiation, a host import).
    #[error("host failure calling connector `{connector}`: {message}")]
    Host { connector: String, message: String },
}

impl CallError {
    /// A short, stable name of the failure, for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Connector(ConnectorError::Invalid(_)) => "invalid",
            Self::Connector(ConnectorError::Denied(_)) => "denied",
            Self::Connector(ConnectorError::Unavailable(_)) => "unavailable",
            Self::Connector(ConnectorError::Internal(_)) => "internal",
            Self::Connector(ConnectorError::Unsupported(_)) => "unsupported",
            Self::Timeout { .. } => "timeout",
            Self::MemoryLimit { .. } => "memory-limit",
            Self::OutputTooLarge { .. } => "output-too-large",
            Self::Trap { .. } => "trap",
            Self::Host { .. } => "host",
        }
    }

    /// Whether the same call may succeed later. Traps and limits are retried too: a
    /// revocation must not be abandoned because a connector had a bad moment; the
    /// lifecycle's attempt budget bounds the retries.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Connector(e) => e.is_retryable(),
            _ => true,
        }
    }
}

/// A loaded connector instance: a compiled component with its lent capabilities.
/// Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct LoadedConnector {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    digest: Digest,
    info: ConnectorInfo,
    pre: PluginPre<CallState>,
    lent: Arc<Lent>,
    limits: Limits,
}

impl fmt::Debug for LoadedConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadedConnector")
            .field("name", &self.inner.name)
            .field("digest", &self.inner.digest)
            .field("version", &self.inner.info.version)
            .finish_non_exhaustive()
    }
}

/// Calls slower than this are logged.
const SLOW_CALL: Duration = Duration::from_secs(1);

type CallFuture<'a, R> = Pin<Box<dyn Future<Output = wasmtime::Result<R>> + Send + 'a>>;

/// Runs one call in a fresh store: instantiate, call, classify the failure.
async fn run<R: Send>(
    name: &str,
    pre: &PluginPre<CallState>,
    lent: &Arc<Lent>,
    limits: &Limits,
    call: impl for<'a> FnOnce(&'a mut wasmtime::Store<CallState>, Plugin) -> CallFuture<'a, R> + Send,
) -> Result<R, CallError> {
    let mut store = wasmtime::Store::new(pre.engine(), CallState::new(lent.clone(), limits));
    store.limiter(|state| &mut state.limiter);
    let ticks = limits.timeout.as_millis().div_ceil(EPOCH_TICK.as_millis()) + 1;
    store.set_epoch_deadline(u64::try_from(ticks).unwrap_or(u64::MAX));
    store.epoch_deadline_trap();
    // Time in wasm is bounded by the epoch deadline; time suspended in host calls is
    // bounded here (plus a little grace so the epoch trap wins the race when both fire).
    let outcome = tokio::time::timeout(limits.timeout + Duration::from_millis(50), async {
        let plugin = pre.instantiate_async(&mut store).await?;
        call(&mut store, plugin).await
    })
    .await;
    let err = match outcome {
        Ok(Ok(value)) => return Ok(value),
        Ok(Err(err)) => err,
        Err(_elapsed) => {
            return Err(CallError::Timeout {
                connector: name.to_owned(),
                limit: limits.timeout,
            });
        }
    };
    let connector = name.to_owned();
    if store.data().limiter.exceeded {
        return Err(CallError::MemoryLimit {
            connector,
            limit_bytes: limits.memory_bytes,
        });
    }
    match err.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::Interrupt) => Err(CallError::Timeout {
            connector,
            limit: limits.timeout,
        }),
        Some(trap) => Err(CallError::Trap {
            connector,
            message: trap.to_string(),
        }),
        None => Err(CallError::Host {
            connector,
            message: format!("{err:#}"),
        }),
    }
}

impl LoadedConnector {
    pub(super) async fn new(
        name: &str,
        digest: Digest,
        pre: PluginPre<CallState>,
        lent: Arc<Lent>,
        limits: Limits,
    ) -> Result<Self, CallError> {
        let info = run(name, &pre, &lent, &limits, |store, plugin| {
            Box::pin(async move { plugin.ebb_connector_connector().call_describe(store).await })
        })
        .await?;
        let info = convert::info(info);
        check_output(name, &limits, info_size(&info))?;
        Ok(Self {
            inner: Arc::new(Inner {
                name: name.to_owned(),
                digest,
                info,
                pre,
                lent,
                limits,
            }),
        })
    }

    /// The instance name from the configuration.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The sha256 of the component that serves this instance's calls.
    pub fn digest(&self) -> Digest {
        self.inner.digest
    }

    /// What `describe` answered at load time.
    pub fn info(&self) -> &ConnectorInfo {
        &self.inner.info
    }

    async fn call<R: Send>(
        &self,
        name: &'static str,
        op: impl for<'a> FnOnce(&'a mut wasmtime::Store<CallState>, Plugin) -> CallFuture<'a, R> + Send,
    ) -> Result<R, CallError> {
        let i = &*self.inner;
        let started = std::time::Instant::now();
        let result = run(&i.name, &i.pre, &i.lent, &i.limits, op).await;
        let took = started.elapsed();
        if took > SLOW_CALL {
            tracing::warn!(connector = %i.name, op = name, took_ms = took.as_millis(), "slow connector call");
        }
        result
    }

    fn check_output(&self, size: usize) -> Result<(), CallError> {
        check_output(&self.inner.name, &self.inner.limits, size)
    }

    /// Calls `describe`.
    #[tracing::instrument(name = "ebb_runtime.describe", skip_all, fields(connector = %self.inner.name))]
    pub async fn describe(&self) -> Result<ConnectorInfo, CallError> {
        let info = self
            .call("describe", |store, plugin| {
                Box::pin(async move { plugin.ebb_connector_connector().call_describe(store).await })
            })
            .await?;
        let info = convert::info(info);
        self.check_output(info_size(&info))?;
        Ok(info)
    }

    /// Calls `issue`.
    #[tracing::instrument(name = "ebb_runtime.issue", skip_all, fields(connector = %self.inner.name, grant = %grant.id))]
    pub async fn issue(&self, grant: &Grant) -> Result<Issued, CallError> {
        let grant = convert::grant(grant);
        let issued = self
            .call("issue", move |store, plugin| {
                Box::pin(async move {
                    plugin
                        .ebb_connector_connector()
                        .call_issue(store, &grant)
                        .await
                })
            })
            .await?
            .map_err(convert::error)?;
        let issued = convert::issued(issued);
        self.check_output(
            issued.handle.len()
                + issued
                    .credential
                    .fields
                    .iter()
                    .map(|(n, v)| n.len() + v.len())
                    .sum::<usize>(),
        )?;
        Ok(issued)
    }

    /// Calls `revoke`.
    #[tracing::instrument(name = "ebb_runtime.revoke", skip_all, fields(connector = %self.inner.name, grant = %grant.id))]
    pub async fn revoke(
        &self,
        grant: &Grant,
        handle: Option<&str>,
        credential: Option<&Credential>,
    ) -> Result<(), CallError> {
        let grant = convert::grant(grant);
        let handle = handle.map(str::to_owned);
        let credential = credential.map(convert::credential);
        self.call("revoke", move |store, plugin| {
            Box::pin(async move {
                plugin
                    .ebb_connector_connector()
                    .call_revoke(store, &grant, handle.as_ref(), credential.as_ref())
                    .await
            })
        })
        .await?
        .map_err(convert::error)?;
        Ok(())
    }

    /// Calls `verify-revoked`.
    #[tracing::instrument(name = "ebb_runtime.verify_revoked", skip_all, fields(connector = %self.inner.name, grant = %grant.id))]
    pub async fn verify_revoked(
        &self,
        grant: &Grant,
        handle: Option<&str>,
        credential: Option<&Credential>,
    ) -> Result<Verdict, CallError> {
        let grant = convert::grant(grant);
        let handle = handle.map(str::to_owned);
        let credential = credential.map(convert::credential);
        let verdict = self
            .call("verify-revoked", move |store, plugin| {
                Box::pin(async move {
                    plugin
                        .ebb_connector_connector()
                        .call_verify_revoked(store, &grant, handle.as_ref(), credential.as_ref())
                        .await
                })
            })
            .await?
            .map_err(convert::error)?;
        let verdict = convert::verdict(verdict);
        if let Verdict::Residual(residue) = &verdict {
            self.check_output(residue_size(residue))?;
        }
        Ok(verdict)
    }

    /// Calls `verify-issued`.
    #[tracing::instrument(name = "ebb_runtime.verify_issued", skip_all, fields(connector = %self.inner.name, grant = %grant.id))]
    pub async fn verify_issued(
        &self,
        grant: &Grant,
        handle: &str,
        credential: &Credential,
    ) -> Result<(), CallError> {
        let grant = convert::grant(grant);
        let handle = handle.to_owned();
        let credential = convert::credential(credential);
        self.call("verify-issued", move |store, plugin| {
            Box::pin(async move {
                plugin
                    .ebb_connector_connector()
                    .call_verify_issued(store, &grant, &handle, &credential)
                    .await
            })
        })
        .await?
        .map_err(convert::error)?;
        Ok(())
    }

    /// Calls `standing-access`.
    #[tracing::instrument(name = "ebb_runtime.standing_access", skip_all, fields(connector = %self.inner.name, subject = %subject.id))]
    pub async fn standing_access(&self, subject: &Subject) -> Result<Vec<Residue>, CallError> {
        let subject = convert::subject(subject);
        let residue = self
            .call("standing-access", move |store, plugin| {
                Box::pin(async move {
                    plugin
                        .ebb_connector_connector()
                        .call_standing_access(store, &subject)
                        .await
                })
            })
            .await?
            .map_err(convert::error)?;
        let residue: Vec<Residue> = residue.into_iter().map(convert::residue).collect();
        self.check_output(residue_size(&residue))?;
        Ok(residue)
    }
}

fn check_output(name: &str, limits: &Limits, size: usize) -> Result<(), CallError> {
    if size > limits.max_output_bytes {
        return Err(CallError::OutputTooLarge {
            connector: name.to_owned(),
            size,
            limit: limits.max_output_bytes,
        });
    }
    Ok(())
}

fn residue_size(residue: &[Residue]) -> usize {
    residue.iter().map(|r| r.detail.len() + 1).sum()
}

fn info_size(info: &ConnectorInfo) -> usize {
    info.name.len()
        + info.version.len()
        + info.system.len()
        + info.description.len()
        + info
            .actions
            .iter()
            .map(|a| a.name.len() + a.description.len() + a.resource_syntax.len())
            .sum::<usize>()
}

/// Conversions between generated WIT types and [`ebb_core::contract`] types.
mod convert {
    use super::*;

    pub fn subject(s: &Subject) -> wit::Subject {
        wit::Subject {
            id: s.id.clone(),
            kind: match s.kind {
                SubjectKind::Workload => wit::SubjectKind::Workload,
                SubjectKind::Person => wit::SubjectKind::Person,
            },
            claims: s
                .claims
                .iter()
                .map(|(name, value)| wit::Claim {
                    name: name.clone(),
                    value: value.clone(),
                })
                .collect(),
        }
    }

    pub fn grant(g: &Grant) -> wit::Grant {
        wit::Grant {
            id: g.id.clone(),
            subject: subject(&g.subject),
            permissions: g
                .permissions
                .iter()
                .map(|p| wit::Permission {
                    action: p.action.clone(),
                    resource: p.resource.clone(),
                })
                .collect(),
            not_after: g.not_after,
            task: g.task.clone(),
        }
    }

    pub fn credential(c: &Credential) -> wit::Credential {
        wit::Credential {
            fields: c
                .fields
                .iter()
                .map(|(name, value)| wit::Secret {
                    name: name.clone(),
                    value: value.clone(),
                })
                .collect(),
        }
    }

    pub fn issued(i: wit::Issued) -> Issued {
        Issued {
            handle: i.handle,
            credential: Credential {
                fields: i
                    .credential
                    .fields
                    .into_iter()
                    .map(|s| (s.name, s.value))
                    .collect(),
            },
            expires_at: i.expires_at,
        }
    }

    pub fn residue(r: wit::Residue) -> Residue {
        Residue {
            kind: match r.kind {
                wit::ResidueKind::CredentialAccepted => ResidueKind::CredentialAccepted,
                wit::ResidueKind::SessionOpen => ResidueKind::SessionOpen,
                wit::ResidueKind::EntitlementPresent => ResidueKind::EntitlementPresent,
                wit::ResidueKind::TokenActive => ResidueKind::TokenActive,
                wit::ResidueKind::Other => ResidueKind::Other,
            },
            detail: r.detail,
        }
    }

    pub fn verdict(v: wit::Verdict) -> Verdict {
        match v {
            wit::Verdict::Revoked => Verdict::Revoked,
            wit::Verdict::Residual(r) => Verdict::Residual(r.into_iter().map(residue).collect()),
        }
    }

    pub fn error(e: wit::Error) -> CallError {
        CallError::Connector(match e {
            wit::Error::Invalid(m) => ConnectorError::Invalid(m),
            wit::Error::Denied(m) => ConnectorError::Denied(m),
            wit::Error::Unavailable(m) => ConnectorError::Unavailable(m),
            wit::Error::Internal(m) => ConnectorError::Internal(m),
            wit::Error::Unsupported(m) => ConnectorError::Unsupported(m),
        })
    }

    pub fn info(i: wit::ConnectorInfo) -> ConnectorInfo {
        let c = i.capabilities;
        ConnectorInfo {
            name: i.name,
            version: i.version,
            system: i.system,
            description: i.description,
            actions: i
                .actions
                .into_iter()
                .map(|a| ActionInfo {
                    name: a.name,
                    description: a.description,
                    resource_syntax: a.resource_syntax,
                })
                .collect(),
            capabilities: Capabilities {
                revocable: c.contains(wit::Capabilities::REVOCABLE),
                downstream_expiry: c.contains(wit::Capabilities::DOWNSTREAM_EXPIRY),
                terminates_sessions: c.contains(wit::Capabilities::TERMINATES_SESSIONS),
                can_verify: c.contains(wit::Capabilities::CAN_VERIFY),
                can_verify_issued: c.contains(wit::Capabilities::CAN_VERIFY_ISSUED),
                reports_standing_access: c.contains(wit::Capabilities::REPORTS_STANDING_ACCESS),
                revokes_by_value: c.contains(wit::Capabilities::REVOKES_BY_VALUE),
            },
        }
    }
}
