//! Precompiled components on disk, keyed by the component's sha256 and the engine's
//! compatibility hash (wasmtime version, target and settings), so a cached artifact
//! is only ever loaded by an engine that could have produced it.
//!
//! Loading a precompiled artifact runs native code without validation, so the cache
//! folder must be writable only by the host's user; it is the operator's to protect,
//! like the host binary itself.

use crate::call::Digest;
use anyhow::Context;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use wasmtime::Engine as WasmtimeEngine;
use wasmtime::component::Component;

/// The cache file for `digest` under this engine's configuration.
fn artifact_path(engine: &WasmtimeEngine, dir: &Path, digest: &Digest) -> PathBuf {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    dir.join(format!("{digest}-{:016x}.cwasm", hasher.finish()))
}

/// Loads the precompiled artifact for `digest`, or compiles `bytes` and stores it.
/// A corrupt or stale artifact is replaced, never trusted.
pub(super) fn load_or_compile(
    engine: &WasmtimeEngine,
    dir: &Path,
    digest: &Digest,
    bytes: &[u8],
) -> anyhow::Result<Component> {
    let path = artifact_path(engine, dir, digest);
    // Read into memory rather than mmap the file: a file truncated under a running
    // host would otherwise crash it with SIGBUS.
    if let Ok(artifact) = std::fs::read(&path) {
        // SAFETY: the file was written by `precompile_component` of an engine with the
        // same compatibility hash (it is in the name), in a folder only the host writes;
        // wasmtime still checks its header and compatibility before using it.
        #[expect(unsafe_code, reason = "loading our own precompiled artifact")]
        let loaded = unsafe { Component::deserialize(engine, &artifact) };
        match loaded {
            Ok(component) => return Ok(component),
            Err(err) => {
                tracing::warn!(path = %path.display(), error = %err, "discarding unusable cached artifact");
            }
        }
    }
    let artifact = engine
        .precompile_component(bytes)
        .map_err(anyhow::Error::from)
        .context("compiling the component")?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, &artifact)
        .and_then(|()| std::fs::rename(&tmp, &path))
        .with_context(|| format!("writing cache artifact {}", path.display()))?;
    // SAFETY: `artifact` was produced just now by this engine.
    #[expect(unsafe_code, reason = "loading an artifact this engine just produced")]
    let component = unsafe { Component::deserialize(engine, &artifact) }
        .map_err(anyhow::Error::from)
        .context("loading the freshly compiled artifact")?;
    Ok(component)
}
