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
    /// The guest's own `Err` from `apply` or `render`, clipped: build it
    /// with [`GuestError::failed`].
    #[error("the guest reported a failure: {0}")]
    Failed(String),
}

/// The longest guest-supplied text kept in an error (an `apply` or `render`
/// `Err`, a query's complaint), in bytes, before the truncation marker.
pub const MAX_GUEST_ERROR_LEN: usize = 1024;

/// Guest text made fit for an error detail: control characters escaped (they
/// would reach terminals through the CLI), and cut at a character boundary to
/// at most [`MAX_GUEST_ERROR_LEN`] bytes, followed by a marker that says so.
pub fn clip_guest_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(MAX_GUEST_ERROR_LEN));
    for c in text.chars() {
        let mut piece = [0u8; 4];
        let piece = if c.is_control() {
            c.escape_default().to_string()
        } else {
            c.encode_utf8(&mut piece).to_string()
        };
        if out.len() + piece.len() > MAX_GUEST_ERROR_LEN {
            out.push_str(&format!(" [truncated: {} bytes in all]", text.len()));
            return out;
        }
        out.push_str(&piece);
    }
    out
}

/// The default bound on a `render` or query answer, in bytes: twice the
/// default largest state (whose JSON is usually larger than its bytes). The
/// host holds an answer while a reader takes it, however slowly: without a
/// bound, one event could make every read of a stream buffer tens of MiB.
pub const DEFAULT_MAX_ANSWER_BYTES: usize = 16 << 20;

/// `answer`, unless it is larger than `limit` bytes.
pub fn bounded_answer(what: &str, answer: String, limit: usize) -> Result<String, GuestError> {
    if answer.len() > limit {
        return Err(GuestError::LimitExceeded(format!(
            "{what} answered {} bytes; at most {limit} are served (--max-answer-mib)",
            answer.len()
        )));
    }
    Ok(answer)
}

impl GuestError {
    /// A guest's own `Err`, clipped (see [`clip_guest_text`]).
    pub fn failed(message: String) -> GuestError {
        GuestError::Failed(clip_guest_text(&message))
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_text_is_clipped_with_a_marker_and_escaped() {
        assert_eq!(clip_guest_text("short"), "short");
        assert_eq!(clip_guest_text("a\u{1b}[2Jb\n"), "a\\u{1b}[2Jb\\n");
        let long = "é".repeat(1000);
        let clipped = clip_guest_text(&long);
        assert!(
            clipped.ends_with(" [truncated: 2000 bytes in all]"),
            "{clipped}"
        );
        let kept = clipped.trim_end_matches(" [truncated: 2000 bytes in all]");
        assert_eq!(kept, "é".repeat(MAX_GUEST_ERROR_LEN / 2));
    }
}
