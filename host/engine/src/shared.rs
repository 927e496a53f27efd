//! Folders the hosts of a shared store keep alike: the plugins folder (instance
//! files and their components) and the policies. Each host keeps its own folder
//! and its own watchers; [`FolderSync`] copies what changed on one host into the
//! store and what changed in the store into the folder, and says when the folder
//! changed so the host reloads (the loader's `reconcile`, the policies' reload).
//!
//! Which side changed is told apart by what the host last synced: a file that
//! differs from it here was changed here (it goes to the store; the last writer
//! wins), one that differs from it in the store was changed elsewhere (it comes
//! here). At start the store wins for every file it knows, so a host that was
//! away takes the cluster's files rather than pushing its stale ones; files only
//! this host has go to the store. Content from the store is checked against its
//! sha256 before it is written, and instance files pin their components, so a
//! host serves nothing the store could swap.

use ebb_core::store::{Result, Store};
use sha2::Digest as _;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One folder kept alike through the store.
pub struct FolderSync {
    store: Arc<dyn Store>,
    /// The folder's name in the store (`plugins`, `policies`).
    area: String,
    dir: PathBuf,
    /// Only this file of the folder (a single policy file), or every file.
    only: Option<String>,
    /// Name → sha256 as last synced (both sides agreed); `None` before the first
    /// round.
    synced: Option<BTreeMap<String, String>>,
}

impl std::fmt::Debug for FolderSync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FolderSync")
            .field("area", &self.area)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Writes `bytes` as `name` in `dir`, atomically (a temporary file renamed over it).
async fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{name}.sync-tmp"));
    tokio::fs::write(&tmp, bytes).await?;
    tokio::fs::rename(&tmp, dir.join(name)).await
}

/// A file name the sync takes: plain, not hidden (editors' and our own temporary
/// files start with a dot).
fn syncable(name: &str) -> bool {
    !name.is_empty() && !name.starts_with('.') && !name.contains('/')
}

impl FolderSync {
    pub fn new(store: Arc<dyn Store>, area: &str, dir: PathBuf, only: Option<String>) -> Self {
        Self {
            store,
            area: area.to_owned(),
            dir,
            only,
            synced: None,
        }
    }

    /// The policy path as a folder and, for a single policy file, its name.
    pub fn policy_target(path: &Path) -> (PathBuf, Option<String>) {
        if path.is_dir() {
            return (path.to_owned(), None);
        }
        let dir = path.parent().unwrap_or(Path::new(".")).to_owned();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        (dir, name)
    }

    async fn local(&self) -> std::io::Result<BTreeMap<String, (String, Vec<u8>)>> {
        let mut files = BTreeMap::new();
        let mut entries = tokio::fs::read_dir(&self.dir).await?;
        while let Some(entry) = entries.next_entry().await? {
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if !syncable(&name) || self.only.as_ref().is_some_and(|o| *o != name) {
                continue;
            }
            if !entry.file_type().await?.is_file() {
                continue;
            }
            let bytes = tokio::fs::read(entry.path()).await?;
            files.insert(name, (sha256(&bytes), bytes));
        }
        Ok(files)
    }

    /// One round: pushes what changed here, applies what changed in the store.
    /// Returns whether the folder changed (the host should reload from it).
    pub async fn round(&mut self) -> Result<bool> {
        let io = |what: &'static str| {
            move |source: std::io::Error| ebb_core::store::Error::Io { what, source }
        };
        let local = self.local().await.map_err(io("reading a shared folder"))?;
        let remote: BTreeMap<String, Option<String>> = self
            .store
            .shared_files(&self.area)
            .await?
            .into_iter()
            .filter(|f| syncable(&f.name) && self.only.as_ref().is_none_or(|o| *o == f.name))
            .map(|f| (f.name, f.sha256))
            .collect();
        let synced = self.synced.get_or_insert_with(|| {
            // At start the store wins for the files it knows.
            local
                .iter()
                .filter(|(name, _)| remote.contains_key(*name))
                .map(|(name, (sha, _))| (name.clone(), sha.clone()))
                .collect()
        });
        let names: BTreeSet<&String> = local.keys().chain(remote.keys()).collect();
        // Components before the instance files that pin them.
        let mut names: Vec<&String> = names.into_iter().collect();
        names.sort_by_key(|n| (n.ends_with(".toml"), n.as_str()));
        let mut changed = false;
        for name in names {
            let here = local.get(name).map(|(sha, _)| sha);
            let there = remote.get(name).cloned().flatten();
            let base = synced.get(name);
            if here == there.as_ref() {
                match here {
                    Some(sha) => synced.insert(name.clone(), sha.clone()),
                    None => synced.remove(name),
                };
                continue;
            }
            if here != base {
                // Changed here (or only here): the store takes it.
                let bytes = local.get(name).map(|(_, b)| b.as_slice());
                self.store.share_file(&self.area, name, bytes).await?;
                match here {
                    Some(sha) => synced.insert(name.clone(), sha.clone()),
                    None => synced.remove(name),
                };
                tracing::info!(area = %self.area, file = %name, deleted = bytes.is_none(), "shared with the other hosts");
                continue;
            }
            // Changed in the store: this folder takes it.
            match &there {
                Some(sha) => {
                    let Some(bytes) = self.store.shared_content(sha).await? else {
                        tracing::error!(area = %self.area, file = %name, "a shared file's content is missing from the store");
                        continue;
                    };
                    if sha256(&bytes) != *sha {
                        tracing::error!(area = %self.area, file = %name, "a shared file's content does not match its sha256: not written");
                        continue;
                    }
                    write(&self.dir, name, &bytes)
                        .await
                        .map_err(io("writing a shared file"))?;
                    synced.insert(name.clone(), sha.clone());
                }
                None => {
                    match tokio::fs::remove_file(self.dir.join(name)).await {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => return Err(io("removing a shared file")(e)),
                    }
                    synced.remove(name);
                }
            }
            tracing::info!(area = %self.area, file = %name, "taken from another host");
            changed = true;
        }
        Ok(changed)
    }
}
