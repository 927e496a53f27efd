//! Secrets made inside the connector, from the host's secure random source
//! (`wasi:random`).

use crate::Error;

/// A random password of `len` characters from an alphabet without look-alikes
/// (about 5.8 bits each: 40 characters carry over 230 bits).
pub fn password(len: usize) -> Result<String, Error> {
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    // 256 is not a multiple of the alphabet's size; reject the biased tail.
    let limit = 256 - (256 % ALPHABET.len());
    let mut out = String::with_capacity(len);
    let mut bytes = [0u8; 64];
    while out.len() < len {
        getrandom::fill(&mut bytes).map_err(|e| Error::Internal(format!("no randomness: {e}")))?;
        for b in bytes.iter().map(|b| usize::from(*b)) {
            if b < limit && out.len() < len {
                out.push(char::from(ALPHABET[b % ALPHABET.len()]));
            }
        }
    }
    Ok(out)
}
