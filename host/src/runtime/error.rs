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
            GuestError::Failed(_) => "guest_failed",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The bytes are not a component implementing a world Refold knows.
    #[error("invalid module: {0}")]
    InvalidModule(String),
    /// Compiling took longer than the compile budget allows.
    #[error(
        "compiling took longer than the compile time budget of {} s (refold serve --compile-timeout); the component was refused",
        .limit.as_secs_f64()
    )]
    CompileTimeout { limit: Duration },
    /// Compiling needed more memory than the compile budget allows.
    #[error(
        "compiling needed more than the compile memory budget of {} MiB (refold serve --compile-memory-mib); the component was refused",
        .limit_bytes >> 20
    )]
    CompileMemory { limit_bytes: u64 },
    /// The compiler died on this component (a crash, not a budget).
    #[error("compiling failed: {0}")]
    CompileCrashed(String),
    #[error(transparent)]
    Guest(#[from] GuestError),
    /// The engine or the artifact cache failed (not the guest's fault).
    #[error("runtime failure: {0}")]
    Host(String),
}
