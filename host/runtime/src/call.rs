//! A loaded connector and the one way to call it.
//!
//! Every call gets a fresh `wasmtime::Store` and instance (microseconds with the
//! pooling allocator), a memory limit, an epoch deadline for time spent in wasm and a
//! host-side timeout for time spent waiting on host calls. Whatever the connector
//! does — trap, loop, grow without bound, return megabytes — the call fails with a
//! [`CallError`] that names what happened, and the next call starts clean.

use crate::bindings::{PluginPre, v1};
use crate::host::{CallState, Lent};
use crate::limits::{EPOCH_TICK, Limits};
use ebb_core::contract::{
    ActionInfo, Capabilities, ConnectorError, ConnectorInfo, Credential, Grant, InventoryItem,
    Issued, Permission, Residue, ResidueKind, Subject, SubjectKind, Verdict,
};
use sha2::{Digest as _, Sha256};
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use wasmtime::component::{ComponentNamedList, Lift, Lower};

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

/// The version of `ebb:connector` a component exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Contract {
    /// `ebb:connector@0.2.0`, the current contract.
    #[serde(rename = "0.2.0")]
    V0_2,
    /// `ebb:connector@0.1.0`, adapted: the host cannot validate its requests before
    /// approval (they fail at issue instead) nor list what it created downstream.
    #[serde(rename = "0.1.0")]
    V0_1,
}

impl Contract {
    /// The operations the host adapts for this version, for `GET /v1/connectors`.
    pub fn missing(self) -> &'static [&'static str] {
        match self {
            Self::V0_2 => &[],
            Self::V0_1 => &["validate", "inventory"],
        }
    }
}

/// A component prepared for instantiation, with the contract it exports and where
/// each of the contract's functions is among its exports.
///
/// The generated bindings would type-check every export on every instantiation; the
/// check runs once here instead (`PluginPre::new`), and a call looks up and
/// type-checks only the function it calls.
pub(crate) struct Pre {
    pre: wasmtime::component::InstancePre<CallState>,
    contract: Contract,
    exports: Exports,
}

/// The contract's functions in one component's exports. `None`: not in its contract
/// version.
#[derive(Clone, Copy)]
struct Exports {
    describe: ExportIndex,
    validate: Option<ExportIndex>,
    issue: ExportIndex,
    revoke: ExportIndex,
    verify_revoked: ExportIndex,
    verify_issued: ExportIndex,
    standing_access: ExportIndex,
    inventory: Option<ExportIndex>,
}

type ExportIndex = wasmtime::component::ComponentExportIndex;

impl Pre {
    /// Prepares `pre` with the newest contract its exports match.
    /// With neither, the error is the current contract's (what an integrator should
    /// build against).
    pub(crate) fn new(pre: wasmtime::component::InstancePre<CallState>) -> wasmtime::Result<Self> {
        let contract = match PluginPre::new(pre.clone()) {
            Ok(_) => Contract::V0_2,
            Err(current) => match v1::PluginPre::new(pre.clone()) {
                Ok(_) => Contract::V0_1,
                Err(_) => return Err(current),
            },
        };
        let component = pre.component();
        let interface = match contract {
            Contract::V0_2 => "ebb:connector/connector@0.2.0",
            Contract::V0_1 => "ebb:connector/connector@0.1.0",
        };
        let interface = component
            .get_export_index(None, interface)
            .ok_or_else(|| wasmtime::format_err!("no export `{interface}`"))?;
        let find = |name: &str| {
            component
                .get_export_index(Some(&interface), name)
                .ok_or_else(|| wasmtime::format_err!("no export `{name}`"))
        };
        let current = |name: &str| match contract {
            Contract::V0_2 => find(name).map(Some),
            Contract::V0_1 => Ok(None),
        };
        let exports = Exports {
            describe: find("describe")?,
            validate: current("validate")?,
            issue: find("issue")?,
            revoke: find("revoke")?,
            verify_revoked: find("verify-revoked")?,
            verify_issued: find("verify-issued")?,
            standing_access: find("standing-access")?,
            inventory: current("inventory")?,
        };
        Ok(Self {
            pre,
            contract,
            exports,
        })
    }

    async fn instantiate(
        &self,
        store: &mut wasmtime::Store<CallState>,
    ) -> wasmtime::Result<Instance> {
        Ok(Instance {
            instance: self.pre.instantiate_async(store).await?,
            contract: self.contract,
        })
    }
}

/// A fresh instance of a connector, for one call.
struct Instance {
    instance: wasmtime::component::Instance,
    contract: Contract,
}

impl Instance {
    /// Calls the export at `index`: only its type is checked (against `P` and `R`).
    async fn call<P, R>(
        &self,
        store: &mut wasmtime::Store<CallState>,
        index: ExportIndex,
        params: P,
    ) -> wasmtime::Result<R>
    where
        P: ComponentNamedList + Lower + Send + Sync,
        R: ComponentNamedList + Lift + Send + Sync + 'static,
    {
        let func = self.instance.get_typed_func::<P, R>(&mut *store, &index)?;
        func.call_async(&mut *store, params).await
    }
}

/// Runs `$body` with `$conv` naming the conversions and `$wit` the generated types of
/// the instance's contract version.
macro_rules! on_contract {
    ($instance:expr, |$conv:ident, $wit:ident| $body:expr) => {
        match $instance.contract {
            Contract::V0_2 => {
                use crate::bindings::types as $wit;
                use convert as $conv;
                $body
            }
            Contract::V0_1 => {
                use crate::bindings::v1::types as $wit;
                use convert_v1 as $conv;
                $body
            }
        }
    };
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
    pre: Pre,
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
    pre: &Pre,
    lent: &Arc<Lent>,
    limits: &Limits,
    call: impl for<'a> FnOnce(&'a mut wasmtime::Store<CallState>, Instance) -> CallFuture<'a, R> + Send,
) -> Result<R, CallError> {
    let mut store = wasmtime::Store::new(pre.pre.engine(), CallState::new(lent.clone(), limits));
    store.limiter(|state| &mut state.limiter);
    let ticks = limits.timeout.as_millis().div_ceil(EPOCH_TICK.as_millis()) + 1;
    store.set_epoch_deadline(u64::try_from(ticks).unwrap_or(u64::MAX));
    store.epoch_deadline_trap();
    // Time in wasm is bounded by the epoch deadline; time suspended in host calls is
    // bounded here (plus a little grace so the epoch trap wins the race when both fire).
    let outcome = tokio::time::timeout(limits.timeout + Duration::from_millis(50), async {
        let instance = pre.instantiate(&mut store).await?;
        call(&mut store, instance).await
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
        pre: Pre,
        lent: Arc<Lent>,
        limits: Limits,
    ) -> Result<Self, CallError> {
        let info = run(name, &pre, &lent, &limits, describe(pre.exports.describe)).await?;
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

    /// The contract version the component exports.
    pub fn contract(&self) -> Contract {
        self.inner.pre.contract
    }

    /// What `describe` answered at load time.
    pub fn info(&self) -> &ConnectorInfo {
        &self.inner.info
    }

    async fn call<R: Send>(
        &self,
        name: &'static str,
        op: impl for<'a> FnOnce(&'a mut wasmtime::Store<CallState>, Instance) -> CallFuture<'a, R>
        + Send,
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
            .call("describe", describe(self.inner.pre.exports.describe))
            .await?;
        self.check_output(info_size(&info))?;
        Ok(info)
    }

    /// Calls `issue`.
    #[tracing::instrument(name = "ebb_runtime.issue", skip_all, fields(connector = %self.inner.name, grant = %grant.id))]
    pub async fn issue(&self, grant: &Grant) -> Result<Issued, CallError> {
        let grant = grant.clone();
        let index = self.inner.pre.exports.issue;
        let issued = self
            .call("issue", move |store, instance| {
                Box::pin(async move {
                    on_contract!(instance, |conv, wit| {
                        let (issued,): (Result<wit::Issued, wit::Error>,) =
                            instance.call(store, index, (&conv::grant(&grant),)).await?;
                        Ok(issued.map(conv::issued).map_err(conv::error))
                    })
                })
            })
            .await??;
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
        let (grant, credential) = (grant.clone(), credential.cloned());
        let handle = handle.map(str::to_owned);
        let index = self.inner.pre.exports.revoke;
        self.call("revoke", move |store, instance| {
            Box::pin(async move {
                on_contract!(instance, |conv, wit| {
                    let credential = credential.as_ref().map(conv::credential);
                    let params = (&conv::grant(&grant), handle.as_deref(), credential.as_ref());
                    let (done,): (Result<(), wit::Error>,) =
                        instance.call(store, index, params).await?;
                    Ok(done.map_err(conv::error))
                })
            })
        })
        .await?
    }

    /// Calls `verify-revoked`.
    #[tracing::instrument(name = "ebb_runtime.verify_revoked", skip_all, fields(connector = %self.inner.name, grant = %grant.id))]
    pub async fn verify_revoked(
        &self,
        grant: &Grant,
        handle: Option<&str>,
        credential: Option<&Credential>,
    ) -> Result<Verdict, CallError> {
        let (grant, credential) = (grant.clone(), credential.cloned());
        let handle = handle.map(str::to_owned);
        let index = self.inner.pre.exports.verify_revoked;
        let verdict = self
            .call("verify-revoked", move |store, instance| {
                Box::pin(async move {
                    on_contract!(instance, |conv, wit| {
                        let credential = credential.as_ref().map(conv::credential);
                        let params = (&conv::grant(&grant), handle.as_deref(), credential.as_ref());
                        let (verdict,): (Result<wit::Verdict, wit::Error>,) =
                            instance.call(store, index, params).await?;
                        Ok(verdict.map(conv::verdict).map_err(conv::error))
                    })
                })
            })
            .await??;
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
        let (grant, credential) = (grant.clone(), credential.clone());
        let handle = handle.to_owned();
        let index = self.inner.pre.exports.verify_issued;
        self.call("verify-issued", move |store, instance| {
            Box::pin(async move {
                on_contract!(instance, |conv, wit| {
                    let params = (
                        &conv::grant(&grant),
                        handle.as_str(),
                        &conv::credential(&credential),
                    );
                    let (done,): (Result<(), wit::Error>,) =
                        instance.call(store, index, params).await?;
                    Ok(done.map_err(conv::error))
                })
            })
        })
        .await?
    }

    /// Calls `standing-access`.
    #[tracing::instrument(name = "ebb_runtime.standing_access", skip_all, fields(connector = %self.inner.name, subject = %subject.id))]
    pub async fn standing_access(&self, subject: &Subject) -> Result<Vec<Residue>, CallError> {
        let subject = subject.clone();
        let index = self.inner.pre.exports.standing_access;
        let residue = self
            .call("standing-access", move |store, instance| {
                Box::pin(async move {
                    on_contract!(instance, |conv, wit| {
                        let params = (&conv::subject(&subject),);
                        let (residue,): (Result<Vec<wit::Residue>, wit::Error>,) =
                            instance.call(store, index, params).await?;
                        Ok(residue
                            .map(|r| r.into_iter().map(conv::residue).collect::<Vec<_>>())
                            .map_err(conv::error))
                    })
                })
            })
            .await??;
        self.check_output(residue_size(&residue))?;
        Ok(residue)
    }

    /// Calls `validate`. A 0.1.0 component cannot validate: `Unsupported`, without a
    /// call.
    #[tracing::instrument(name = "ebb_runtime.validate", skip_all, fields(connector = %self.inner.name))]
    pub async fn validate(&self, permissions: &[Permission]) -> Result<(), CallError> {
        let index = self.require(|e| e.validate, "validate")?;
        let permissions: Vec<_> = permissions.iter().map(convert::permission).collect();
        self.call("validate", move |store, instance| {
            Box::pin(async move {
                let (done,): (Result<(), crate::bindings::types::Error>,) = instance
                    .call(store, index, (permissions.as_slice(),))
                    .await?;
                Ok(done.map_err(convert::error))
            })
        })
        .await?
    }

    /// Calls `inventory`. A 0.1.0 component has none: `Unsupported`, without a call.
    #[tracing::instrument(name = "ebb_runtime.inventory", skip_all, fields(connector = %self.inner.name))]
    pub async fn inventory(&self) -> Result<Vec<InventoryItem>, CallError> {
        let index = self.require(|e| e.inventory, "inventory")?;
        let items: Vec<InventoryItem> = self
            .call("inventory", move |store, instance| {
                Box::pin(async move {
                    use crate::bindings::types as wit;
                    let (items,): (Result<Vec<wit::InventoryItem>, wit::Error>,) =
                        instance.call(store, index, ()).await?;
                    Ok(items
                        .map(|items| items.into_iter().map(convert::inventory_item).collect())
                        .map_err(convert::error))
                })
            })
            .await??;
        self.check_output(
            items
                .iter()
                .map(|i| {
                    i.grant_id.len() + i.detail.len() + i.location.as_ref().map_or(0, String::len)
                })
                .sum(),
        )?;
        Ok(items)
    }

    /// Where `op` is among the component's exports, or `Unsupported` when its
    /// contract version has no `op`.
    fn require(
        &self,
        export: impl FnOnce(&Exports) -> Option<ExportIndex>,
        op: &str,
    ) -> Result<ExportIndex, CallError> {
        export(&self.inner.pre.exports).ok_or_else(|| {
            CallError::Connector(ConnectorError::Unsupported(format!(
                "{op}: the component implements ebb:connector@0.1.0, which has no `{op}`"
            )))
        })
    }
}

/// Calls `describe` (at `index`) on either contract version.
fn describe(
    index: ExportIndex,
) -> impl for<'a> FnOnce(&'a mut wasmtime::Store<CallState>, Instance) -> CallFuture<'a, ConnectorInfo>
+ Send {
    move |store, instance| {
        Box::pin(async move {
            on_contract!(instance, |conv, wit| {
                let (info,): (wit::ConnectorInfo,) = instance.call(store, index, ()).await?;
                Ok(conv::info(info))
            })
        })
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
    residue
        .iter()
        .map(|r| {
            r.detail.len()
                + r.location.as_ref().map_or(0, String::len)
                + r.remedy.as_ref().map_or(0, String::len)
                + 1
        })
        .sum()
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

/// Conversions between one contract version's generated types and
/// [`ebb_core::contract`]'s; the parts both versions share.
macro_rules! conversions {
    () => {
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

        pub fn permission(p: &Permission) -> wit::Permission {
            wit::Permission {
                action: p.action.clone(),
                resource: p.resource.clone(),
            }
        }

        pub fn grant(g: &Grant) -> wit::Grant {
            wit::Grant {
                id: g.id.clone(),
                subject: subject(&g.subject),
                permissions: g.permissions.iter().map(permission).collect(),
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

        pub fn verdict(v: wit::Verdict) -> Verdict {
            match v {
                wit::Verdict::Revoked => Verdict::Revoked,
                wit::Verdict::Residual(r) => {
                    Verdict::Residual(r.into_iter().map(residue).collect())
                }
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
    };
}

/// `ebb:connector@0.2.0`.
mod convert {
    use super::*;
    use crate::bindings::types as wit;

    conversions!();

    pub fn residue(r: wit::Residue) -> Residue {
        Residue {
            kind: match r.kind {
                wit::ResidueKind::CredentialAccepted => ResidueKind::CredentialAccepted,
                wit::ResidueKind::SessionOpen => ResidueKind::SessionOpen,
                wit::ResidueKind::EntitlementPresent => ResidueKind::EntitlementPresent,
                wit::ResidueKind::TokenActive => ResidueKind::TokenActive,
                wit::ResidueKind::OwnedObject => ResidueKind::OwnedObject,
                wit::ResidueKind::DerivedCredential => ResidueKind::DerivedCredential,
                wit::ResidueKind::Other => ResidueKind::Other,
            },
            detail: r.detail,
            location: r.location,
            remedy: r.remedy,
        }
    }

    pub fn inventory_item(i: wit::InventoryItem) -> InventoryItem {
        InventoryItem {
            grant_id: i.grant_id,
            detail: i.detail,
            location: i.location,
        }
    }
}

/// `ebb:connector@0.1.0`, adapted: residue has no location or remedy.
mod convert_v1 {
    use super::*;
    use crate::bindings::v1::types as wit;

    conversions!();

    pub fn residue(r: wit::Residue) -> Residue {
        Residue::new(
            match r.kind {
                wit::ResidueKind::CredentialAccepted => ResidueKind::CredentialAccepted,
                wit::ResidueKind::SessionOpen => ResidueKind::SessionOpen,
                wit::ResidueKind::EntitlementPresent => ResidueKind::EntitlementPresent,
                wit::ResidueKind::TokenActive => ResidueKind::TokenActive,
                wit::ResidueKind::Other => ResidueKind::Other,
            },
            r.detail,
        )
    }
}
