//! API bearer tokens as the configuration holds them: only their sha256.

use sha2::{Digest, Sha256};

/// The hex sha256 of a token, as configured in `[[tokens]] sha256`.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}
