//! The host's wall clock, as the unix milliseconds it records (never seen by guests,
//! whose clocks are virtual: `runtime::virtual_time`).

use std::time::{SystemTime, UNIX_EPOCH};

/// Unix milliseconds now (0 for a clock set before 1970).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
