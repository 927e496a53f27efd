//! Erasable keys for sealed credentials (crypto-shredding).
//!
//! Both engines are log-structured (sled's segments, fjall's journal and sorted
//! tables): a removed value stays on disk until its space is reused or compacted, so deleting `c/<id>` does not erase a credential. Instead each stored
//! credential is encrypted (XChaCha20-Poly1305, the grant id as associated data)
//! under its own random key, and that key lives in one 32-byte slot of a plain file
//! beside the engine's, `keyring`, written in place. Shredding overwrites the slot with
//! zeros; once that is synced the credential's bytes, wherever the engine left them, can
//! no longer be decrypted by anyone, the host key's holder included.
//!
//! Durability: a slot is written, and synced, before the batch that refers to it is
//! applied to the engine (each key has a ticket; the commit waits until
//! [`Keyring::synced`] reaches it). Whatever the engine makes durable, and whenever,
//! a durable reference never points at a key that is not — after a power loss too.
//! A crash can leave slots no record refers to (written for a batch that was lost,
//! or not yet zeroed after a shred); [`Keyring::open`] zeroes every slot that `used`
//! does not name.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use std::collections::HashSet;
use std::fs::File;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Mutex;
use tokio::sync::watch;
use zeroize::Zeroizing;

const SLOT: usize = 32;
const NONCE: usize = 24;
const ZERO: [u8; SLOT] = [0; SLOT];

/// Where the slots live: a file, or memory for a temporary store.
enum Slots {
    File(File),
    Memory(Vec<[u8; SLOT]>),
}

struct State {
    slots: Slots,
    /// Values whose keys are erased once the write with that ticket is flushed.
    pending: Vec<(u64, Vec<u8>)>,
    /// Zeroed slots below `len`, to reuse.
    free: Vec<u32>,
    len: u32,
    /// Keys written so far: the ticket of the last one.
    written: u64,
}

pub(crate) struct Keyring {
    state: Mutex<State>,
    /// The ticket of the last key known to be on disk.
    synced: watch::Sender<u64>,
    /// Fault injection for tests: while set, [`Keyring::sync`] waits, as on a
    /// disk that is slow to flush.
    #[cfg(test)]
    pub(crate) stall_sync: std::sync::atomic::AtomicBool,
    /// Fault injection for tests: while set, [`Keyring::sync`] fails, as on a disk
    /// that refuses writes.
    #[cfg(test)]
    pub(crate) fail_sync: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keyring(<keys>)")
    }
}

impl Keyring {
    /// Opens (or creates, `0600`) `path`, zeroing every slot not in `used` (with
    /// `None`, every key in the file is taken to be in use).
    pub(crate) fn open(path: &Path, used: Option<&HashSet<u32>>) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)?;
        let bytes = std::fs::read(path)?;
        let len = u32::try_from(bytes.len() / SLOT).unwrap_or(u32::MAX);
        let mut free = Vec::new();
        let mut erased = false;
        for (i, slot) in bytes.chunks_exact(SLOT).enumerate() {
            let i = u32::try_from(i).unwrap_or(u32::MAX);
            if slot != ZERO && used.is_none_or(|u| u.contains(&i)) {
                continue;
            }
            if slot != ZERO {
                file.write_all_at(&ZERO, u64::from(i) * SLOT as u64)?;
                erased = true;
            }
            free.push(i);
        }
        if erased {
            file.sync_data()?;
        }
        drop(Zeroizing::new(bytes));
        free.reverse();
        Ok(Self::new(State {
            slots: Slots::File(file),
            pending: Vec::new(),
            free,
            len,
            written: 0,
        }))
    }

    /// How many slots hold a key.
    pub(crate) fn in_use(&self) -> u64 {
        let state = self.lock();
        u64::from(state.len).saturating_sub(state.free.len() as u64)
    }

    pub(crate) fn memory() -> Self {
        Self::new(State {
            slots: Slots::Memory(Vec::new()),
            pending: Vec::new(),
            free: Vec::new(),
            len: 0,
            written: 0,
        })
    }

    fn new(state: State) -> Self {
        Self {
            state: Mutex::new(state),
            synced: watch::channel(0).0,
            #[cfg(test)]
            stall_sync: std::sync::atomic::AtomicBool::new(false),
            #[cfg(test)]
            fail_sync: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The ticket of the last key on disk, as [`Keyring::sync`] advances it.
    pub(crate) fn synced(&self) -> watch::Receiver<u64> {
        self.synced.subscribe()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Encrypts `plain` for grant `id` under a new key in a new slot; returns the
    /// value to store: slot (u32 BE) ‖ nonce ‖ ciphertext, and the key's ticket: the
    /// value may be written to the engine once [`Keyring::synced`] reaches it.
    pub(crate) fn seal(&self, id: &str, plain: &[u8]) -> std::io::Result<(Vec<u8>, u64)> {
        let mut key = Zeroizing::new([0u8; SLOT]);
        while *key == ZERO {
            rand::fill(key.as_mut_slice());
        }
        let mut nonce = [0u8; NONCE];
        rand::fill(&mut nonce);
        let ciphertext = XChaCha20Poly1305::new(key.as_ref().into())
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plain,
                    aad: id.as_bytes(),
                },
            )
            .map_err(|_| std::io::Error::other("encrypting a credential"))?;
        let (slot, ticket) = self.put(&key)?;
        let mut value = Vec::with_capacity(4 + NONCE + ciphertext.len());
        value.extend_from_slice(&slot.to_be_bytes());
        value.extend_from_slice(&nonce);
        value.extend_from_slice(&ciphertext);
        Ok((value, ticket))
    }

    /// Decrypts a value [`Keyring::seal`] made; `None` if its key was erased.
    pub(crate) fn open_value(&self, id: &str, value: &[u8]) -> std::io::Result<Option<Vec<u8>>> {
        let slot = slot_of(value)?;
        let key = self.get(slot)?;
        if *key == ZERO {
            return Ok(None);
        }
        let (nonce, ciphertext) = value[4..].split_at(NONCE);
        let plain = XChaCha20Poly1305::new(key.as_ref().into())
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: id.as_bytes(),
                },
            )
            .map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "a stored credential does not decrypt with its key",
                )
            })?;
        Ok(Some(plain))
    }

    /// Erases the key of a value [`Keyring::seal`] made.
    pub(crate) fn erase(&self, value: &[u8]) -> std::io::Result<()> {
        let slot = slot_of(value)?;
        let mut state = self.lock();
        match &mut state.slots {
            Slots::File(file) => file.write_all_at(&ZERO, u64::from(slot) * SLOT as u64)?,
            Slots::Memory(slots) => {
                if let Some(s) = slots.get_mut(slot as usize) {
                    *s = ZERO;
                }
            }
        }
        state.free.push(slot);
        Ok(())
    }

    /// Erases `value`'s key once the store's write `ticket` is durable (see
    /// [`Keyring::erase_due`]).
    pub(crate) fn erase_after(&self, ticket: u64, value: Vec<u8>) {
        self.lock().pending.push((ticket, value));
    }

    /// Erases the keys waiting for writes up to `flushed`. The zeros reach the disk
    /// with the next [`Keyring::sync`] (the next group commit's, a moment later), not
    /// in a sync of their own: that would put a second `fsync` on every group
    /// commit's path. A crash before then loses nothing either way: no record
    /// refers to those slots any more, so [`Keyring::open`] zeroes them.
    pub(crate) fn erase_due(&self, flushed: u64) -> std::io::Result<()> {
        let due: Vec<Vec<u8>> = {
            let mut state = self.lock();
            let (due, later) = std::mem::take(&mut state.pending)
                .into_iter()
                .partition(|(ticket, _)| *ticket <= flushed);
            state.pending = later;
            due.into_iter().map(|(_, value)| value).collect()
        };
        if due.is_empty() {
            return Ok(());
        }
        for value in &due {
            self.erase(value)?;
        }
        Ok(())
    }

    /// Makes every slot written so far durable, and says so through
    /// [`Keyring::synced`].
    pub(crate) fn sync(&self) -> std::io::Result<()> {
        #[cfg(test)]
        while self.stall_sync.load(std::sync::atomic::Ordering::Acquire) {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        #[cfg(test)]
        if self.fail_sync.load(std::sync::atomic::Ordering::Acquire) {
            return Err(std::io::ErrorKind::StorageFull.into());
        }
        // A clone of the descriptor, so the sync does not hold the lock.
        let (file, written) = {
            let state = self.lock();
            let file = match &state.slots {
                Slots::File(file) => Some(file.try_clone()?),
                Slots::Memory(_) => None,
            };
            (file, state.written)
        };
        if let Some(file) = file {
            file.sync_data()?;
        }
        self.synced.send_if_modified(|synced| {
            let advanced = written > *synced;
            *synced = (*synced).max(written);
            advanced
        });
        Ok(())
    }

    /// Writes `key` into a free slot; returns the slot and the key's ticket.
    fn put(&self, key: &[u8; SLOT]) -> std::io::Result<(u32, u64)> {
        let mut state = self.lock();
        let slot = match state.free.pop() {
            Some(slot) => slot,
            None => {
                let slot = state.len;
                state.len = state
                    .len
                    .checked_add(1)
                    .ok_or_else(|| std::io::Error::other("the keyring is full"))?;
                slot
            }
        };
        match &mut state.slots {
            Slots::File(file) => {
                if let Err(e) = file.write_all_at(key, u64::from(slot) * SLOT as u64) {
                    state.free.push(slot);
                    return Err(e);
                }
            }
            Slots::Memory(slots) => {
                if slots.len() <= slot as usize {
                    slots.resize(slot as usize + 1, ZERO);
                }
                slots[slot as usize] = *key;
            }
        }
        state.written += 1;
        Ok((slot, state.written))
    }

    fn get(&self, slot: u32) -> std::io::Result<Zeroizing<[u8; SLOT]>> {
        let mut key = Zeroizing::new(ZERO);
        let state = self.lock();
        match &state.slots {
            Slots::File(file) => {
                if slot < state.len {
                    file.read_exact_at(key.as_mut_slice(), u64::from(slot) * SLOT as u64)?;
                }
            }
            Slots::Memory(slots) => {
                if let Some(s) = slots.get(slot as usize) {
                    key.copy_from_slice(s);
                }
            }
        }
        Ok(key)
    }
}

/// The slot a stored value's key is in.
pub(crate) fn slot_of(value: &[u8]) -> std::io::Result<u32> {
    value
        .get(..4)
        .filter(|_| value.len() >= 4 + NONCE)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_be_bytes)
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "a stored credential is malformed",
            )
        })
}
