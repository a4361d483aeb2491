//! SHA-256 as lowercase hex: what reports, manifests and resume checks name files and settings by.

use sha2::{Digest, Sha256};

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of a value's canonical (compact) JSON: how settings and rule specs are compared by hash.
pub fn json_sha256<T: serde::Serialize>(value: &T) -> String {
    sha256_hex(serde_json::to_string(value).unwrap_or_default().as_bytes())
}
