//! Reads every clock and randomness source a guest can reach: std's
//! `SystemTime`, `Instant` and `thread::sleep`, `RandomState`, `getrandom`,
//! and the WASI imports behind them called directly (monotonic `now`, a
//! timer pollable's `ready`, insecure randomness and seed).
//!
//! Two kinds of reading, so that a deterministic host makes the folded result
//! independent of how the host batches events into calls:
//! - [`call`]: absolute values (what time is it, what random bytes come
//!   first), read once per guest call, at its start. Every call starts in a
//!   fresh instance, so on a deterministic host each call reads the same.
//! - [`per_event`]: relative measurements (how long a sleep or some work
//!   took, how often a short timer must be polled before it fires), read once
//!   per event. On a deterministic host they do not depend on what ran before
//!   in the call.
//!
//! On a host that leaks real time or entropy, either kind differs from one
//! call (or run, or machine) to the next, and so does whatever it is folded into.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

/// How long `per_event` sleeps.
pub const SLEEP: Duration = Duration::from_millis(1);
/// The timer `per_event` polls, and how often at most.
pub const TIMER_NS: u64 = 100_000;
pub const MAX_POLLS: u32 = 5_000;

/// The absolute readings of this call, taken the first time it is asked for.
pub fn call() -> &'static Value {
    static READINGS: OnceLock<Value> = OnceLock::new();
    READINGS.get_or_init(read_absolute)
}

fn read_absolute() -> Value {
    let wall_ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut random = [0u8; 16];
    let random = match getrandom::fill(&mut random) {
        Ok(()) => hex(&random),
        Err(e) => format!("error: {e}"),
    };
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(7);
    // Iteration order of a std HashMap follows its RandomState's keys.
    let order: Vec<u32> = (0..16u32)
        .map(|k| (k, ()))
        .collect::<HashMap<_, _>>()
        .into_keys()
        .collect();
    let (seed_hi, seed_lo) = wasi::insecure_seed();
    json!({
        "wall_clock_ns": wall_ns,
        "monotonic_ns": wasi::monotonic_now(),
        "getrandom": random,
        "insecure_random": wasi::insecure_random().to_string(),
        "insecure_seed": format!("{seed_hi:016x}{seed_lo:016x}"),
        "random_state_hash": hasher.finish().to_string(),
        "hash_map_order": order,
    })
}

/// Relative measurements, taken afresh for each event.
pub fn per_event() -> Value {
    let start = Instant::now();
    std::thread::sleep(SLEEP);
    let slept_ns = start.elapsed().as_nanos() as u64;

    let start = Instant::now();
    let mut x: u64 = 1;
    for i in 0..20_000u64 {
        x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(i));
    }
    let worked_ns = start.elapsed().as_nanos() as u64;

    json!({
        "slept_ns": slept_ns,
        "worked_ns": worked_ns,
        "work": x.to_string(),
        "timer_polls": wasi::polls_until_ready(TIMER_NS, MAX_POLLS),
    })
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The WASI 0.2 functions behind std's clocks and randomness, imported
/// directly: std itself never polls a timer without blocking, which is how a
/// guest could count real time passing.
#[cfg(target_family = "wasm")]
mod wasi {
    #[link(wasm_import_module = "wasi:clocks/monotonic-clock@0.2.0")]
    unsafe extern "C" {
        #[link_name = "now"]
        fn now() -> i64;
        #[link_name = "subscribe-duration"]
        fn subscribe_duration(ns: i64) -> i32;
    }

    #[link(wasm_import_module = "wasi:io/poll@0.2.0")]
    unsafe extern "C" {
        #[link_name = "[method]pollable.ready"]
        fn pollable_ready(pollable: i32) -> i32;
        #[link_name = "[resource-drop]pollable"]
        fn pollable_drop(pollable: i32);
    }

    #[link(wasm_import_module = "wasi:random/insecure@0.2.0")]
    unsafe extern "C" {
        #[link_name = "get-insecure-random-u64"]
        fn get_insecure_random_u64() -> i64;
    }

    #[link(wasm_import_module = "wasi:random/insecure-seed@0.2.0")]
    unsafe extern "C" {
        #[link_name = "insecure-seed"]
        fn insecure_seed_into(ret: *mut u64);
    }

    pub fn monotonic_now() -> u64 {
        unsafe { now() as u64 }
    }

    pub fn insecure_random() -> u64 {
        unsafe { get_insecure_random_u64() as u64 }
    }

    pub fn insecure_seed() -> (u64, u64) {
        let mut ret = [0u64; 2];
        unsafe { insecure_seed_into(ret.as_mut_ptr()) };
        (ret[0], ret[1])
    }

    /// How many times a fresh `ns` timer is polled before it reports ready
    /// (`max` if it never does).
    pub fn polls_until_ready(ns: u64, max: u32) -> u32 {
        unsafe {
            let pollable = subscribe_duration(ns as i64);
            let mut polls = 0;
            while polls < max && pollable_ready(pollable) == 0 {
                polls += 1;
            }
            pollable_drop(pollable);
            polls
        }
    }
}

/// Natively (the crate's own tests) there is no WASI: fixed stand-ins.
#[cfg(not(target_family = "wasm"))]
mod wasi {
    pub fn monotonic_now() -> u64 {
        0
    }
    pub fn insecure_random() -> u64 {
        0
    }
    pub fn insecure_seed() -> (u64, u64) {
        (0, 0)
    }
    pub fn polls_until_ready(_ns: u64, _max: u32) -> u32 {
        0
    }
}
