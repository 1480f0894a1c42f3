//! Module names and versions as clients may write them.

use super::ModuleError;
use crate::store::MAX_METADATA_ID_LEN;

pub const MAX_MODULE_NAME_LEN: usize = 64;
/// Longest version, in bytes: `name@version` tags every event a module
/// produces, so it must always fit the store's limit for such ids.
pub const MAX_MODULE_VERSION_LEN: usize = MAX_METADATA_ID_LEN - MAX_MODULE_NAME_LEN - 1;

/// At most the first 64 characters of a rejected name or version, for its error.
fn shown(text: &str) -> String {
    match text.char_indices().nth(64) {
        Some((at, _)) => format!("{}...", &text[..at]),
        None => text.to_string(),
    }
}

/// Module names double as aggregate types: lowercase letters, digits, `-` and `_`.
pub fn validate_name(name: &str) -> Result<(), ModuleError> {
    let bad = |reason: &str| {
        Err(ModuleError::InvalidName {
            name: shown(name),
            reason: reason.to_string(),
        })
    };
    if name.is_empty() || name.len() > MAX_MODULE_NAME_LEN {
        return bad("must be 1 to 64 characters");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
    {
        return bad("may hold only lowercase letters, digits, '-' and '_'");
    }
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        return bad("must start with a letter");
    }
    Ok(())
}

/// Semantic versions: MAJOR.MINOR.PATCH with an optional -prerelease and
/// +build, at most [`MAX_MODULE_VERSION_LEN`] bytes.
pub fn validate_version(version: &str) -> Result<(), ModuleError> {
    if version.len() > MAX_MODULE_VERSION_LEN {
        return Err(ModuleError::InvalidVersion {
            version: shown(version),
            reason: format!(
                "is {} bytes; the limit is {MAX_MODULE_VERSION_LEN}, so that name@version fits the {MAX_METADATA_ID_LEN} bytes events carry",
                version.len()
            ),
        });
    }
    semver::Version::parse(version)
        .map(|_| ())
        .map_err(|e| ModuleError::InvalidVersion {
            version: shown(version),
            reason: e.to_string(),
        })
}

pub(super) fn semver_key(version: &str) -> Option<semver::Version> {
    semver::Version::parse(version).ok()
}
