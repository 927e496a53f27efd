//! Precompiled components on disk, keyed by the component's sha256 and the engine's
//! compatibility hash (wasmtime version, target and settings), so a cached artifact
//! is only ever loaded by an engine that could have produced it.
//!
//! Loading a precompiled artifact runs native code without validation, so nothing
//! from the cache is trusted on the strength of its file name: each artifact is
//! stored with an HMAC-SHA256 tag, under a key derived from the host key, over the
//! component digest, the engine's compatibility hash and the artifact itself. The
//! tag is checked before `Component::deserialize`; an artifact that fails it (a
//! swapped `.cwasm` of another component, a forged one) is discarded, counted in
//! `ebb_cache_rejected_total`, and the component is compiled again. The folder is
//! kept private to the host's user (0700, files 0600).

use crate::call::Digest;
use anyhow::Context;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::hash::{Hash, Hasher};
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use wasmtime::Engine as WasmtimeEngine;
use wasmtime::component::Component;

/// The first bytes of an authenticated artifact file.
const MAGIC: &[u8; 8] = b"ebbcwsm1";
const TAG_LEN: usize = 32;

/// The key that authenticates cached artifacts (derived from the host key).
#[derive(Clone)]
pub struct CacheKey([u8; 32]);

impl CacheKey {
    pub fn new(key: [u8; 32]) -> Self {
        Self(key)
    }

    fn mac(&self, engine: &WasmtimeEngine, digest: &Digest) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(MAGIC);
        mac.update(digest.to_string().as_bytes());
        mac.update(&compatibility(engine).to_be_bytes());
        mac
    }
}

impl std::fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CacheKey(<redacted>)")
    }
}

fn compatibility(engine: &WasmtimeEngine) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    hasher.finish()
}

/// Creates the cache folder, or narrows an existing one, to the host's user alone.
pub(crate) fn prepare_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating cache dir {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).with_context(|| {
        format!(
            "making cache dir {} private to the host's user",
            dir.display()
        )
    })
}

/// The cache file for `digest` under this engine's configuration.
fn artifact_path(engine: &WasmtimeEngine, dir: &Path, digest: &Digest) -> PathBuf {
    dir.join(format!("{digest}-{:016x}.cwasm", compatibility(engine)))
}

/// The artifact in `file` if its tag proves this host stored it for `digest`.
fn authenticated<'a>(
    key: &CacheKey,
    engine: &WasmtimeEngine,
    digest: &Digest,
    file: &'a [u8],
) -> Option<&'a [u8]> {
    let rest = file.strip_prefix(MAGIC.as_slice())?;
    let (tag, artifact) = rest.split_at_checked(TAG_LEN)?;
    let mut mac = key.mac(engine, digest);
    mac.update(artifact);
    mac.verify_slice(tag).ok()?;
    Some(artifact)
}

/// Loads the precompiled artifact for `digest`, or compiles `bytes` and stores it.
/// A corrupt, stale or unauthenticated artifact is replaced, never trusted.
pub(super) fn load_or_compile(
    engine: &WasmtimeEngine,
    key: &CacheKey,
    dir: &Path,
    digest: &Digest,
    bytes: &[u8],
) -> anyhow::Result<Component> {
    let path = artifact_path(engine, dir, digest);
    // Read into memory rather than mmap the file: a file truncated under a running
    // host would otherwise crash it with SIGBUS.
    if let Ok(file) = std::fs::read(&path) {
        match authenticated(key, engine, digest, &file) {
            Some(artifact) => {
                // SAFETY: the tag proves this host's key stored the artifact for this
                // component digest and this engine's compatibility hash, and wasmtime
                // still checks its header before using it.
                #[expect(unsafe_code, reason = "loading our own authenticated artifact")]
                let loaded = unsafe { Component::deserialize(engine, artifact) };
                match loaded {
                    Ok(component) => return Ok(component),
                    Err(err) => {
                        tracing::warn!(path = %path.display(), error = %err, "discarding unusable cached artifact");
                    }
                }
            }
            None => {
                metrics::counter!("ebb_cache_rejected_total").increment(1);
                tracing::warn!(path = %path.display(), %digest, "cached artifact failed authentication: discarded, compiling again");
            }
        }
    }
    let artifact = engine
        .precompile_component(bytes)
        .map_err(anyhow::Error::from)
        .context("compiling the component")?;
    let mut mac = key.mac(engine, digest);
    mac.update(&artifact);
    let tag = mac.finalize().into_bytes();
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(MAGIC)?;
        f.write_all(&tag)?;
        f.write_all(&artifact)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)
    };
    write().with_context(|| format!("writing cache artifact {}", path.display()))?;
    // SAFETY: `artifact` was produced just now by this engine.
    #[expect(unsafe_code, reason = "loading an artifact this engine just produced")]
    let component = unsafe { Component::deserialize(engine, &artifact) }
        .map_err(anyhow::Error::from)
        .context("loading the freshly compiled artifact")?;
    Ok(component)
}
