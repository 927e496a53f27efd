//! `ebb:connector/crypto`: key derivation computed natively for a connector, so that
//! a password verifier's thousands of hash rounds do not run in the sandbox. Nothing
//! is lent and nothing is logged: the inputs are passwords.

use super::CallState;
use crate::bindings::crypto::Host;
use sha2::Sha256;
use zeroize::Zeroize;

/// The most rounds one call may ask for (about 22 ms of a core on an AMD EPYC). Host
/// code cannot be interrupted (the epoch deadline stops only wasm code), so the
/// host bounds the work it accepts.
const MAX_ITERATIONS: u32 = 100_000;
/// The longest password or salt accepted.
const MAX_INPUT: usize = 1024;

/// PBKDF2-HMAC-SHA256 with one 32-byte block, within the bounds above.
fn pbkdf2_hmac_sha256(password: &[u8], salt: &[u8], iterations: u32) -> Result<[u8; 32], String> {
    if !(1..=MAX_ITERATIONS).contains(&iterations) {
        return Err(format!(
            "iterations must be 1 to {MAX_ITERATIONS}, not {iterations}"
        ));
    }
    if password.len() > MAX_INPUT || salt.len() > MAX_INPUT {
        return Err(format!(
            "password and salt must be at most {MAX_INPUT} bytes each"
        ));
    }
    let mut out = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut out);
    Ok(out)
}

impl Host for CallState {
    fn pbkdf2_hmac_sha256(
        &mut self,
        mut password: Vec<u8>,
        salt: Vec<u8>,
        iterations: u32,
    ) -> wasmtime::Result<Result<Vec<u8>, String>> {
        let derived = pbkdf2_hmac_sha256(&password, &salt, iterations).map(Vec::from);
        password.zeroize();
        Ok(derived)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derives_the_published_vectors() {
        // RFC 7914, section 11 (the first 32 bytes of its 64).
        assert_eq!(
            hex::encode(pbkdf2_hmac_sha256(b"passwd", b"salt", 1).unwrap()),
            "55ac046e56e3089fec1691c22544b605f94185216dde0465e68b9d57c20dacbc"
        );
        assert_eq!(
            hex::encode(pbkdf2_hmac_sha256(b"Password", b"NaCl", 80_000).unwrap()),
            "4ddcd8f60b98be21830cee5ef22701f9641a4418d04c0414aeff08876b34ab56"
        );
    }

    #[test]
    fn refuses_work_beyond_its_bounds() {
        for iterations in [0, MAX_ITERATIONS + 1, u32::MAX] {
            let err = pbkdf2_hmac_sha256(b"p", b"s", iterations).unwrap_err();
            assert!(err.contains("iterations must be 1 to 100000"), "{err}");
        }
        let long = vec![b'x'; MAX_INPUT + 1];
        assert!(pbkdf2_hmac_sha256(&long, b"s", 1).is_err());
        assert!(pbkdf2_hmac_sha256(b"p", &long, 1).is_err());
        assert!(pbkdf2_hmac_sha256(&long[..MAX_INPUT], &long[..MAX_INPUT], 1).is_ok());
    }
}
