//! SCRAM-SHA-256 password verifiers (RFC 5802, RFC 7677), as PostgreSQL stores
//! them: `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
//!
//! A connector that creates a database login sends the server this verifier
//! instead of the password (`CREATE ROLE … PASSWORD 'SCRAM-SHA-256$…'`), so the
//! password never crosses the connection, appears in no server log and no
//! statement text, and exists only in the credential handed to the requester.

use crate::Error;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// PostgreSQL's default iteration count.
pub const ITERATIONS: u32 = 4096;

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// PBKDF2-HMAC-SHA256 with one 32-byte block: the SCRAM `SaltedPassword`. In a
/// connector the host computes it natively (`ebb:connector/crypto`): in the sandbox
/// its thousands of rounds cost over ten times as much.
#[cfg(target_family = "wasm")]
fn salted_password(password: &[u8], salt: &[u8], iterations: u32) -> Result<[u8; 32], Error> {
    let derived =
        crate::wit::ebb::connector0_2_0::crypto::pbkdf2_hmac_sha256(password, salt, iterations)
            .map_err(|e| Error::Internal(format!("the host refused key derivation: {e}")))?;
    derived
        .try_into()
        .map_err(|_| Error::Internal("the host's key derivation returned a wrong length".into()))
}

/// The same computed here, for native builds (a connector's unit tests), where
/// there is no host to ask.
#[cfg(not(target_family = "wasm"))]
fn salted_password(password: &[u8], salt: &[u8], iterations: u32) -> Result<[u8; 32], Error> {
    let mut u = hmac(password, &[salt, &1u32.to_be_bytes()]);
    let mut out = u;
    for _ in 1..iterations {
        u = hmac(password, &[&u]);
        for (o, b) in out.iter_mut().zip(u) {
            *o ^= b;
        }
    }
    Ok(out)
}

/// Standard base64 with padding, as PostgreSQL writes verifiers.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The verifier of `password` with `salt` and `iterations`. The password must be
/// what SASLprep leaves unchanged (printable ASCII, as `random::password` makes).
pub fn verifier_with(password: &str, salt: &[u8], iterations: u32) -> Result<String, Error> {
    let salted = salted_password(password.as_bytes(), salt, iterations)?;
    let client_key = hmac(&salted, &[b"Client Key"]);
    let stored_key: [u8; 32] = Sha256::digest(client_key).into();
    let server_key = hmac(&salted, &[b"Server Key"]);
    Ok(format!(
        "SCRAM-SHA-256${iterations}:{}${}:{}",
        base64(salt),
        base64(&stored_key),
        base64(&server_key)
    ))
}

/// The verifier of `password` with a fresh random salt and [`ITERATIONS`].
pub fn verifier(password: &str) -> Result<String, Error> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| Error::Internal(format!("no randomness: {e}")))?;
    verifier_with(password, &salt, ITERATIONS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_a_verifier_computed_independently() {
        // Computed with Python's hashlib.pbkdf2_hmac and hmac.
        let salt: Vec<u8> = (0..16).collect();
        assert_eq!(
            verifier_with("correct horse battery staple", &salt, 4096).unwrap(),
            "SCRAM-SHA-256$4096:AAECAwQFBgcICQoLDA0ODw==$ONYbSJBXtKl6bP6PVqw8pm9e7EiacprLnoUQPFS80Hw=:IPOtHuGJ2HifEQg74W2XXqqCrCyQG55GbPRHa6g6n9w="
        );
    }

    #[test]
    fn base64_pads_like_the_standard() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foob"), "Zm9vYg==");
    }
}
