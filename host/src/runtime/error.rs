//! The runtime's errors: why a module was refused, or why a guest call failed.

use std::time::Duration;

/// A guest call that did not produce an answer. Each is deterministic except
/// `Timeout`, the wall-clock backstop behind the fuel limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuestError {
    #[error("the guest ran out of fuel ({limit} units) before finishing")]
    FuelExhausted { limit: u64 },
    #[error("the guest was stopped after {0:?} of wall-clock time")]
    Timeout(Duration),
    #[error("the guest tried to grow its memory beyond {limit_bytes} bytes")]
    MemoryLimit { limit_bytes: usize },
    #[error("the guest trapped: {0}")]
    Trap(String),
    /// The guest went past a bound of the sandbox other than fuel, time and
    /// memory: host resources held, random bytes asked for, read-model writes, a
    /// wait that nothing can end.
    #[error("the guest exceeded a sandbox limit: {0}")]
    LimitExceeded(String),
    /// The guest's own `Err` from `apply` or `render`.
    #[error("the guest reported a failure: {0}")]
    Failed(String),
}

impl GuestError {
    pub fn code(&self) -> &'static str {
        match self {
            GuestError::FuelExhausted { .. } => "fuel_exhausted",
            GuestError::Timeout(_) => "guest_timeout",
            GuestError::MemoryLimit { .. } => "memory_limit",
            GuestError::Trap(_) => "guest_trap",
            GuestError::LimitExceeded(_) => "guest_limit_exceeded",
            GuestError::Failed(_) => "guest_failed",
        }
    }
}

/// What a host function returns when a guest goes past a sandbox bound; a
/// call that ends with it fails as [`GuestError::LimitExceeded`].
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SandboxLimit(pub String);

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The bytes are not a component implementing a world Refold knows.
    #[error("invalid module: {0}")]
    InvalidModule(String),
    #[error(transparent)]
    Guest(#[from] GuestError),
    /// The engine or the artifact cache failed (not the guest's fault).
    #[error("runtime failure: {0}")]
    Host(String),
}
