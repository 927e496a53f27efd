//! The WebAssembly runtime: loads connector components and calls them, sandboxed.
//!
//! One wasmtime [`Engine`](WasmtimeEngine) (pooling allocator, epoch interruption
//! driven by a ticker thread) serves every connector. Loading a component
//! ([`Runtime::load`]) checks its sha256 pin, compiles it or reuses a precompiled
//! artifact from the cache, links it against WASI with an empty context plus exactly
//! the capabilities its configuration lends, and calls `describe`. Every call then
//! gets a fresh `wasmtime::Store` with a memory limit and a deadline, so a connector
//! that traps, loops, exhausts memory or returns too much fails only that call.
//!
//! Key types: [`Runtime`], [`LoadedConnector`] (a loaded, callable component),
//! [`CallError`], and its inputs [`ConnectorSpec`] and [`RuntimeConfig`] (in
//! [`lend`]). [`conformance`] is the kit that checks a connector keeps the contract.
//!
//! **Architecture invariant:** this crate knows nothing about grant states, the
//! store or the operator's configuration file: it depends on `ebb-core`'s contract
//! types only, never on `ebb-engine`, a storage engine, axum or Cedar. It answers
//! "call this connector with this grant" and nothing more. It is the only crate
//! that names wasmtime or the generated bindings.

mod bindings;
mod cache;
mod call;
pub mod conformance;
mod host;
pub mod lend;
mod limits;

pub use cache::CacheKey;
pub use call::{CallError, Contract, Digest, LoadedConnector};
pub use host::http::Origin;
pub use lend::{ConnectorSpec, RuntimeConfig};

use anyhow::{Context, bail};
use host::CallState;
use limits::EPOCH_TICK;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use wasmtime::Engine as WasmtimeEngine;
use wasmtime::component::{Component, Linker};

/// Bytes of each freed linear memory reset with memset instead of madvise.
const KEEP_RESIDENT_MEMORY: usize = 1 << 20;
/// Bytes of each freed table reset with memset instead of madvise.
const KEEP_RESIDENT_TABLE: usize = 64 << 10;
/// How many freed slots to decommit in one batch.
const DECOMMIT_BATCH: usize = 16;

/// Why a component did not load. Every cause is kept as the `source`.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("reading component {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("component {} has sha256 {digest}, but the configuration pins {pin}", path.display())]
    PinMismatch {
        path: PathBuf,
        digest: Digest,
        pin: String,
    },
    #[error("memory limit of {0} MiB is above the runtime's max-memory-mib")]
    MemoryLimit(u64),
    /// Not a component, or not one this engine compiles.
    #[error("compiling the component")]
    Compile(#[source] anyhow::Error),
    #[error("linking the component: it imports something the host does not lend")]
    Link(#[source] anyhow::Error),
    #[error("the component does not export ebb:connector/connector@0.1.0")]
    Export(#[source] anyhow::Error),
    /// A lent capability could not be prepared (a DSN, a secret, an origin).
    #[error("preparing what the connector is lent")]
    Lend(#[source] anyhow::Error),
    #[error("`describe` failed")]
    Describe(#[source] CallError),
}

/// The shared engine, linker and compilation cache.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<RuntimeInner>,
}

struct RuntimeInner {
    engine: WasmtimeEngine,
    linker: Linker<CallState>,
    cache: Option<(PathBuf, CacheKey)>,
    max_memory_bytes: u64,
    ticker_stop: Arc<AtomicBool>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("cache_dir", &self.inner.cache.as_ref().map(|(dir, _)| dir))
            .finish_non_exhaustive()
    }
}

impl Drop for RuntimeInner {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

impl Runtime {
    /// Builds the engine and linker and starts the epoch ticker. Without a cache
    /// key there is no precompiled cache: a configured `cache-dir` is refused.
    pub fn new(config: &RuntimeConfig) -> anyhow::Result<Self> {
        Self::build(config, None)
    }

    /// [`Runtime::new`] with the key that authenticates the precompiled cache
    /// (derive it from the host key; every artifact is checked against it).
    pub fn with_cache_key(config: &RuntimeConfig, key: CacheKey) -> anyhow::Result<Self> {
        Self::build(config, Some(key))
    }

    fn build(config: &RuntimeConfig, key: Option<CacheKey>) -> anyhow::Result<Self> {
        let cache = match (&config.cache_dir, key) {
            (None, _) => None,
            (Some(dir), Some(key)) => {
                cache::prepare_dir(dir)?;
                Some((dir.clone(), key))
            }
            (Some(dir), None) => bail!(
                "the precompiled cache {} needs the host's cache key (Runtime::with_cache_key)",
                dir.display()
            ),
        };
        let max_memory_bytes = config.max_memory_mib * 1024 * 1024;
        let mut pool = wasmtime::PoolingAllocationConfig::new();
        // A component may hold several core instances and memories (WASI adapters,
        // language runtimes), so the core pools are a multiple of the component pool.
        pool.total_component_instances(config.max_instances)
            .total_core_instances(config.max_instances * 8)
            .total_memories(config.max_instances * 4)
            .total_tables(config.max_instances * 8)
            .total_stacks(config.max_instances)
            .max_memory_size(usize::try_from(max_memory_bytes).context("max-memory-mib")?)
            // Reset a freed slot with memset rather than madvise up to these sizes, so
            // the next call's instance does not page-fault its memory back in. Slots
            // are still zeroed between instances: nothing leaks from call to call.
            .linear_memory_keep_resident(KEEP_RESIDENT_MEMORY)
            .table_keep_resident(KEEP_RESIDENT_TABLE)
            .decommit_batch_size(DECOMMIT_BATCH)
            .pagemap_scan(wasmtime::Enabled::Auto);
        let mut wasm = wasmtime::Config::new();
        wasm.epoch_interruption(true)
            .allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool))
            .max_wasm_stack(512 * 1024);
        let engine = WasmtimeEngine::new(&wasm)
            .map_err(anyhow::Error::from)
            .context("creating the wasmtime engine")?;

        let mut linker = Linker::new(&engine);
        host::add_to_linker(&mut linker)?;

        let ticker_stop = Arc::new(AtomicBool::new(false));
        let ticker_engine = engine.weak();
        let stop = ticker_stop.clone();
        std::thread::Builder::new()
            .name("ebb-epoch".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    match ticker_engine.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => break,
                    }
                }
            })
            .context("starting the epoch ticker")?;

        Ok(Self {
            inner: Arc::new(RuntimeInner {
                engine,
                linker,
                cache,
                max_memory_bytes,
                ticker_stop,
            }),
        })
    }

    /// Loads a connector instance named `name`: verifies the pin, compiles (or loads
    /// from cache), links, prepares its capabilities and checks that `describe`
    /// answers.
    pub async fn load(
        &self,
        name: &str,
        spec: &ConnectorSpec,
    ) -> Result<LoadedConnector, LoadError> {
        let bytes = tokio::fs::read(&spec.component)
            .await
            .map_err(|source| LoadError::Read {
                path: spec.component.clone(),
                source,
            })?;
        self.load_bytes(name, spec, &bytes).await
    }

    /// [`Runtime::load`] for a component already read (so a caller can check its
    /// digest against an allow-list first, without reading the file twice).
    pub async fn load_bytes(
        &self,
        name: &str,
        spec: &ConnectorSpec,
        bytes: &[u8],
    ) -> Result<LoadedConnector, LoadError> {
        let digest = Digest::of(bytes);
        if let Some(pin) = &spec.sha256
            && !pin.eq_ignore_ascii_case(&digest.to_string())
        {
            return Err(LoadError::PinMismatch {
                path: spec.component.clone(),
                digest,
                pin: pin.clone(),
            });
        }
        let memory_bytes = spec.limits.memory_mib * 1024 * 1024;
        if memory_bytes > self.inner.max_memory_bytes {
            return Err(LoadError::MemoryLimit(spec.limits.memory_mib));
        }
        let component = self
            .compile(bytes, &digest)
            .await
            .map_err(LoadError::Compile)?;
        let pre = self
            .inner
            .linker
            .instantiate_pre(&component)
            .map_err(|e| LoadError::Link(e.into()))?;
        let pre = call::Pre::new(pre).map_err(|e| LoadError::Export(e.into()))?;
        let lent = host::Lent::new(name, spec).map_err(LoadError::Lend)?;
        LoadedConnector::new(name, digest, pre, lent, limits::Limits::from(&spec.limits))
            .await
            .map_err(LoadError::Describe)
    }

    async fn compile(&self, bytes: &[u8], digest: &Digest) -> anyhow::Result<Component> {
        let engine = self.inner.engine.clone();
        let bytes = bytes.to_vec();
        let cache = self.inner.cache.clone();
        let digest = *digest;
        // Compilation takes tens of milliseconds to seconds: keep it off the async workers.
        tokio::task::spawn_blocking(move || match cache {
            Some((dir, key)) => cache::load_or_compile(&engine, &key, &dir, &digest, &bytes),
            None => Component::new(&engine, &bytes)
                .map_err(anyhow::Error::from)
                .context("compiling the component"),
        })
        .await
        .context("compilation task failed")?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn errors_when_component_is_not_wasm() {
        let dir = std::env::temp_dir().join(format!("ebb-rt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("garbage.wasm");
        std::fs::write(&path, b"not a component").unwrap();
        let runtime = Runtime::new(&RuntimeConfig::default()).unwrap();
        let err = runtime
            .load("garbage", &ConnectorSpec::new(&path))
            .await
            .unwrap_err();
        assert!(
            format!("{err:#}").contains("compiling the component"),
            "{err:#}"
        );
    }

    #[tokio::test]
    async fn errors_when_pin_does_not_match() {
        let dir = std::env::temp_dir().join(format!("ebb-rt-pin-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.wasm");
        std::fs::write(&path, b"bytes").unwrap();
        let mut spec = ConnectorSpec::new(&path);
        spec.sha256 = Some("0".repeat(64));
        let runtime = Runtime::new(&RuntimeConfig::default()).unwrap();
        let err = runtime.load("c", &spec).await.unwrap_err();
        assert!(format!("{err:#}").contains("pins 0000"), "{err:#}");
    }
}
