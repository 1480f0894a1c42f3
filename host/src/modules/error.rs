//! Why the registry refused something, each with a stable `code()`.

use std::time::Duration;

use super::version::NotReady;
use crate::runtime::RuntimeError;
use crate::store::StoreError;

/// Which compile budget a component exceeded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompileBudget {
    Time { limit: Duration },
    Memory { limit_bytes: u64 },
}

#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    #[error("invalid module name {name:?}: {reason}")]
    InvalidName { name: String, reason: String },
    #[error("invalid module version {version:?}: {reason}")]
    InvalidVersion { version: String, reason: String },
    #[error("invalid module: {0}")]
    InvalidModule(String),
    /// Compiling the component would take more time or memory than allowed.
    #[error("{detail}")]
    CompileBudgetExceeded {
        budget: CompileBudget,
        detail: String,
    },
    /// The compiler died on this component.
    #[error("{0}")]
    CompileCrashed(String),
    #[error(transparent)]
    NotReady(#[from] NotReady),
    #[error(
        "{name}@{version} already holds other bytes (digest {existing_digest}); versions are immutable, upload a new version"
    )]
    Conflict {
        name: String,
        version: String,
        existing_digest: String,
    },
    #[error("no module {0}")]
    NotFound(String),
    #[error(
        "{0} is a projection: a version goes live with POST /v1/projections/{0}/promote once it has caught up"
    )]
    PromoteProjection(String),
    #[error("{name} already names {existing} modules; this upload is {uploaded}. Use another name")]
    KindMismatch {
        name: String,
        existing: &'static str,
        uploaded: &'static str,
    },
    #[error("invalid canary: {0}")]
    InvalidCanary(String),
    #[error(
        "{0} is a process: a process has one active version (a canary would split its instances' inputs); activate a version in full"
    )]
    CanaryNotSupported(String),
    #[error("{0} has no active version to split against; activate a first version in full")]
    NoActiveVersion(String),
    #[error("{0} is the stable version already; a canary tries a newer one")]
    CanaryIsStable(String),
    #[error(
        "{name}@{version} is not newer than the stable version {stable}; a canary tries a newer version (to go back, use POST /v1/modules/{name}/rollback)"
    )]
    CanaryNotNewer {
        name: String,
        version: String,
        stable: String,
    },
    #[error(
        "{name}@{canary} is a canary at {percent}% already; promote it (activate {canary} without a canary), change its share (activate {canary} with another canary), or roll it back (POST /v1/modules/{name}/rollback) first"
    )]
    CanaryInProgress {
        name: String,
        canary: String,
        percent: u8,
    },
    #[error(
        "{label} has never passed a full replay check of its bytes (a sample does not count); run `refold module check {name} {version}` (POST /v1/modules/{name}/{version}/check), or activate with force"
    )]
    CheckRequired {
        label: String,
        name: String,
        version: String,
    },
    #[error(
        "{label}'s latest replay check failed: {failed} of {streams} streams did not fold; see GET /v1/modules/{name}/{version}/check, or activate with force"
    )]
    CheckFailed {
        label: String,
        name: String,
        version: String,
        failed: u64,
        streams: u64,
    },
    #[error(
        "{label}'s replay check passed, but the history moved since: {reason}; check it again, or activate with force"
    )]
    CheckStale {
        label: String,
        name: String,
        version: String,
        reason: String,
    },
    #[error("nothing to roll back to: {0}")]
    NothingToRollBack(String),
    #[error(
        "a rollback of {name} from {expected} was asked for, but a rollback now would go back from {actual} (an earlier rollback, or another activation, came first); nothing changed"
    )]
    RollbackFromMismatch {
        name: String,
        expected: String,
        actual: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("module host failure: {0}")]
    Host(String),
}

impl ModuleError {
    pub fn code(&self) -> &'static str {
        match self {
            ModuleError::InvalidName { .. } | ModuleError::InvalidVersion { .. } => {
                "invalid_request"
            }
            ModuleError::InvalidModule(_) => "invalid_module",
            ModuleError::CompileBudgetExceeded { .. } => "compile_budget_exceeded",
            ModuleError::CompileCrashed(_) => "compile_crashed",
            ModuleError::NotReady(not_ready) => not_ready.code(),
            ModuleError::Conflict { .. } => "module_conflict",
            ModuleError::NotFound(_) => "not_found",
            ModuleError::PromoteProjection(_) => "use_promote",
            ModuleError::KindMismatch { .. } => "module_kind_mismatch",
            ModuleError::InvalidCanary(_) => "invalid_canary",
            ModuleError::CanaryNotSupported(_) => "canary_not_supported",
            ModuleError::NoActiveVersion(_) => "no_active_version",
            ModuleError::CanaryIsStable(_) => "canary_is_stable",
            ModuleError::CanaryNotNewer { .. } => "canary_not_newer",
            ModuleError::CanaryInProgress { .. } => "canary_in_progress",
            ModuleError::CheckRequired { .. } => "check_required",
            ModuleError::CheckFailed { .. } => "check_failed",
            ModuleError::CheckStale { .. } => "check_stale",
            ModuleError::NothingToRollBack(_) => "nothing_to_roll_back",
            ModuleError::RollbackFromMismatch { .. } => "rollback_from_mismatch",
            ModuleError::Store(store) => store.code(),
            ModuleError::Host(_) => "internal",
        }
    }
}

impl From<RuntimeError> for ModuleError {
    fn from(err: RuntimeError) -> Self {
        let detail = err.to_string();
        match err {
            RuntimeError::InvalidModule(reason) => ModuleError::InvalidModule(reason),
            RuntimeError::CompileTimeout { limit } => ModuleError::CompileBudgetExceeded {
                budget: CompileBudget::Time { limit },
                detail,
            },
            RuntimeError::CompileMemory { limit_bytes } => ModuleError::CompileBudgetExceeded {
                budget: CompileBudget::Memory { limit_bytes },
                detail,
            },
            RuntimeError::CompileCrashed(_) => ModuleError::CompileCrashed(detail),
            other => ModuleError::Host(other.to_string()),
        }
    }
}
