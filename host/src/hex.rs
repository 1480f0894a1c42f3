//! Lowercase hex for digests in file names, API bodies and event metadata.

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
