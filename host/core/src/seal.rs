//! Sealing secrets at rest: credentials are stored only encrypted with the host key
//! (XChaCha20-Poly1305, a random 192-bit nonce per seal, the grant id as associated
//! data so a sealed blob cannot be moved to another grant).
//!
//! The host key also derives the audit chain's key, so one secret protects both.

use anyhow::{Context, bail};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::path::Path;
use zeroize::Zeroizing;

/// The 32-byte host key.
#[derive(Clone)]
pub struct HostKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for HostKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HostKey(<redacted>)")
    }
}

impl HostKey {
    /// Parses 64 hex digits.
    pub fn from_hex(hex_key: &str) -> anyhow::Result<Self> {
        let mut key = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(hex_key.trim(), key.as_mut_slice())
            .map_err(|_| anyhow::anyhow!("the host key must be 64 hex digits"))?;
        Ok(Self(key))
    }

    /// Reads the key file, or creates it (mode 0600) with a fresh random key.
    pub fn load_or_create(path: &Path) -> anyhow::Result<Self> {
        if path.exists() {
            let text = Zeroizing::new(
                std::fs::read_to_string(path)
                    .with_context(|| format!("reading host key {}", path.display()))?,
            );
            return Self::from_hex(&text).with_context(|| format!("host key {}", path.display()));
        }
        let mut key = Zeroizing::new([0u8; 32]);
        rand::fill(key.as_mut_slice());
        let text = Zeroizing::new(hex::encode(key.as_slice()));
        write_private(path, text.as_bytes())?;
        tracing::warn!(path = %path.display(), "created a new host key; back it up: sealed credentials and the audit chain depend on it");
        Ok(Self(key))
    }

    /// A subkey for `purpose`, so each use of the host key has its own key.
    pub fn derive(&self, purpose: &str) -> [u8; 32] {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.0.as_slice())
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(b"ebb/");
        mac.update(purpose.as_bytes());
        mac.finalize().into_bytes().into()
    }
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating host key {}", path.display()))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    Ok(())
}

/// Seals and opens secrets bound to a grant id.
#[derive(Clone)]
pub struct Sealer {
    cipher: XChaCha20Poly1305,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(<key>)")
    }
}

const NONCE: usize = 24;

impl Sealer {
    pub fn new(key: &HostKey) -> Self {
        let subkey = Zeroizing::new(key.derive("credential-seal"));
        Self {
            cipher: XChaCha20Poly1305::new(subkey.as_slice().into()),
        }
    }

    /// Encrypts `plaintext` for `grant_id`: nonce ‖ ciphertext ‖ tag.
    pub fn seal(&self, grant_id: &str, plaintext: &[u8]) -> anyhow::Result<Vec<u8>> {
        let mut nonce = [0u8; NONCE];
        rand::fill(&mut nonce);
        let ciphertext = self
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: grant_id.as_bytes(),
                },
            )
            .map_err(|_| anyhow::anyhow!("sealing failed"))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ciphertext);
        Ok(out)
    }

    /// Decrypts what [`Sealer::seal`] produced for the same grant id.
    pub fn open(&self, grant_id: &str, sealed: &[u8]) -> anyhow::Result<Zeroizing<Vec<u8>>> {
        if sealed.len() < NONCE {
            bail!("sealed credential is truncated");
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE);
        let plaintext = self
            .cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: grant_id.as_bytes(),
                },
            )
            .map_err(|_| {
                anyhow::anyhow!("sealed credential does not open with this host key and grant")
            })?;
        Ok(Zeroizing::new(plaintext))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_and_opens_only_for_the_same_grant_and_key() {
        let key = HostKey::from_hex(&"ab".repeat(32)).unwrap();
        let sealer = Sealer::new(&key);
        let sealed = sealer.seal("g1", b"password=hunter2").unwrap();
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(
            sealer.open("g1", &sealed).unwrap().as_slice(),
            b"password=hunter2"
        );
        assert!(sealer.open("g2", &sealed).is_err(), "bound to the grant id");
        let other = Sealer::new(&HostKey::from_hex(&"cd".repeat(32)).unwrap());
        assert!(other.open("g1", &sealed).is_err(), "bound to the key");
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(sealer.open("g1", &tampered).is_err());
    }

    #[test]
    fn creates_a_private_key_file_once() {
        let dir = std::env::temp_dir().join(format!("ebb-key-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("host.key");
        let first = HostKey::load_or_create(&path).unwrap();
        let again = HostKey::load_or_create(&path).unwrap();
        assert_eq!(first.derive("x"), again.derive("x"));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(!format!("{first:?}").contains(&hex::encode(first.0.as_slice())));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
