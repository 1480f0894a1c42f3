//! Module names and versions as clients may write them.

use super::ModuleError;

pub const MAX_MODULE_NAME_LEN: usize = 64;

/// Module names double as aggregate types: lowercase letters, digits, `-` and `_`.
pub fn validate_name(name: &str) -> Result<(), ModuleError> {
    let bad = |reason: &str| {
        Err(ModuleError::InvalidName {
            name: name.to_string(),
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

/// Semantic versions: MAJOR.MINOR.PATCH with an optional -prerelease and +build.
pub fn validate_version(version: &str) -> Result<(), ModuleError> {
    semver::Version::parse(version)
        .map(|_| ())
        .map_err(|e| ModuleError::InvalidVersion {
            version: version.to_string(),
            reason: e.to_string(),
        })
}

pub(super) fn semver_key(version: &str) -> Option<semver::Version> {
    semver::Version::parse(version).ok()
}
