//! Makes fjall's journal durable without holding fjall's journal lock.
//!
//! fjall's own `persist(SyncData)` runs `fdatasync` while it holds the journal
//! writer's mutex, and every batch takes that mutex to write the journal and
//! insert into the memtable. So while the flusher waited on the disk, no group
//! could be applied: the store alternated between applying and syncing instead of
//! doing both at once. Here the flush takes the mutex only to hand fjall's
//! buffered journal bytes to the OS (`persist(Buffer)`, a `write`), and then
//! syncs the journal file through a handle of its own, outside the mutex.
//!
//! Why that covers everything the buffer flush wrote: fjall writes one journal
//! file at a time, `<dir>/<n>.jnl`, and moves to `<n+1>.jnl` only after it has
//! `fsync`ed `<n>.jnl` in full (`Writer::rotate`: `persist(SyncAll)`, then
//! `create_new` of the next, then an `fsync` of the folder). Bytes handed to the
//! OS before this sync are in the file that was newest then. If that file is
//! still the newest, syncing it covers them; if a newer file exists, the rotation
//! that created it had already synced them. Journal files are preallocated, so
//! `fdatasync` writes data blocks only.
//!
//! If fjall ever lays out its journal differently (no `<n>.jnl` in the folder),
//! [`JournalSync::sync`] says so and the caller falls back to fjall's own
//! persist: slower, never less durable. A failed sync is final, as in fjall: the
//! pages it could not write may be dropped by the kernel and a later sync would
//! report success, so the store refuses every later write until it is opened
//! again.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// A handle on fjall's newest journal file, kept between syncs.
#[derive(Debug)]
pub(crate) struct JournalSync {
    dir: PathBuf,
    newest: Mutex<Option<(u64, File)>>,
}

impl JournalSync {
    pub(crate) fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
            newest: Mutex::default(),
        }
    }

    fn path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("{id}.jnl"))
    }

    /// `fdatasync`s the journal file that holds everything fjall has handed to
    /// the OS so far. `Ok(false)`: that file could not be found or opened
    /// (nothing was synced; the caller syncs through fjall instead). An error is
    /// a failed `fdatasync`, which is final.
    pub(crate) fn sync(&self) -> std::io::Result<bool> {
        let mut newest = self.newest.lock().unwrap_or_else(|p| p.into_inner());
        let known = newest.as_ref().map(|(id, _)| *id);
        let Some(id) = self.find(known) else {
            return Ok(false);
        };
        let file = match newest.as_ref() {
            Some((known, file)) if *known == id => file,
            _ => match File::options().write(true).open(self.path(id)) {
                Ok(file) => &newest.insert((id, file)).1,
                Err(_) => return Ok(false),
            },
        };
        file.sync_data().map(|()| true)
    }

    /// The newest journal file: `known` or a later one. Each `<n+1>.jnl` exists
    /// only once `<n>.jnl` was synced in full, so the rotations since the last
    /// sync need not be synced again.
    fn find(&self, known: Option<u64>) -> Option<u64> {
        let mut id = match known {
            Some(id) => id,
            None => newest_journal(&self.dir).ok()??,
        };
        while self.path(id + 1).try_exists().ok()? {
            id += 1;
        }
        Some(id)
    }

    /// The journal file the last sync covered.
    #[cfg(test)]
    pub(crate) fn synced_id(&self) -> Option<u64> {
        self.newest
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|(id, _)| *id)
    }
}

/// The highest `<n>` of the `<n>.jnl` files in `dir`.
fn newest_journal(dir: &Path) -> std::io::Result<Option<u64>> {
    let mut newest = None;
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let id = name
            .to_str()
            .and_then(|n| n.strip_suffix(".jnl"))
            .and_then(|n| n.parse::<u64>().ok());
        newest = newest.max(id);
    }
    Ok(newest)
}

#[cfg(test)]
mod tests {
    use super::super::{Batch, Engine, Kv};
    use super::newest_journal;

    /// Whether the journal file `id` holds `needle` (values are written to the
    /// journal as they are: below fjall's compression threshold).
    fn holds(dir: &std::path::Path, id: u64, needle: &[u8]) -> bool {
        let bytes = std::fs::read(dir.join(format!("{id}.jnl"))).unwrap();
        bytes.windows(needle.len()).any(|w| w == needle)
    }

    /// The file a flush syncs is the one fjall wrote the batch to, before and
    /// after fjall moves to a new journal file (it does once a flush of its
    /// memtable finds the journal over 64 MB).
    #[test]
    fn a_flush_syncs_the_journal_file_fjall_writes_across_rotations() {
        let dir = std::env::temp_dir().join(format!("ebb-journal-{}", rand::random::<u64>()));
        let kv = Kv::open(Engine::Fjall, &dir).unwrap();
        let Kv::Fjall { journal, .. } = &kv else {
            panic!("not fjall");
        };
        let fjall_dir = dir.join(super::super::FJALL_DIR);
        let write = |n: u32, value: &[u8]| {
            let mut batch = Batch::default();
            batch.insert(format!("k/{n:08}").into_bytes(), value);
            kv.apply(batch).unwrap();
            kv.flush().unwrap();
        };
        write(0, b"first-marker");
        let first = journal
            .synced_id()
            .expect("the flush synced no journal file");
        assert_eq!(Some(first), newest_journal(&fjall_dir).unwrap());
        assert!(holds(&fjall_dir, first, b"first-marker"));

        // Random 1 MiB values (the journal compresses what it can) until fjall
        // has rotated its journal.
        let big: Vec<u8> = (0..1 << 17)
            .flat_map(|_| rand::random::<u64>().to_le_bytes())
            .collect();
        let mut n = 1;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        while newest_journal(&fjall_dir).unwrap() == Some(first) {
            assert!(
                std::time::Instant::now() < deadline,
                "fjall never rotated its journal"
            );
            write(n, &big);
            n += 1;
            if n > 80 {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
        write(n, b"after-rotation-marker");
        let later = journal.synced_id().unwrap();
        assert!(later > first, "the sync stayed on journal {first}");
        assert_eq!(Some(later), newest_journal(&fjall_dir).unwrap());
        assert!(holds(&fjall_dir, later, b"after-rotation-marker"));
        drop(kv);
        let _ = std::fs::remove_dir_all(dir);
    }
}
