//! Whether the store still accepts writes, and why not.
//!
//! After a failed write, what reached the disk is unknown, so the writer
//! refuses every later write until the process restarts and reopens the store
//! (which recovers from what is on disk). That state is not a secret: health
//! checks and metrics read it here, so a supervisor sees a store that no longer
//! writes and restarts it.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Default)]
pub(crate) struct WriteHealth {
    /// The first failure, set once; never cleared while the store is open.
    failure: OnceLock<String>,
    /// Fault injection for tests: the next write fails as a disk would.
    fail_next_write: AtomicBool,
}

impl WriteHealth {
    pub fn failed(&self) -> bool {
        self.failure.get().is_some()
    }

    pub fn failure(&self) -> Option<&str> {
        self.failure.get().map(String::as_str)
    }

    pub fn record_failure(&self, reason: String) {
        let _ = self.failure.set(reason);
    }

    pub fn inject_write_fault(&self) {
        self.fail_next_write.store(true, Ordering::Release);
    }

    /// True once per injected fault.
    pub fn take_injected_fault(&self) -> bool {
        self.fail_next_write.swap(false, Ordering::AcqRel)
    }
}
