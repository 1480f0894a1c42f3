//! What a guest may observe and use. Nothing ambient: no files, network,
//! environment or arguments. A WASI guest sees a virtual WASI whose clocks read
//! the command's received-at time and whose randomness is seeded from the
//! command id, so replaying a command gives the same answer on any host.

use std::time::Duration;

use rand::SeedableRng;
use rand::rngs::ChaCha20Rng;
use sha2::{Digest, Sha256};
use wasmtime::component::ResourceTable;
use wasmtime::{Engine, Store, StoreLimits, StoreLimitsBuilder, Trap};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxView, WasiView};

use super::RuntimeConfig;
use super::error::GuestError;
use super::projection::ReadModelSession;

/// Bytes of stdout and of stderr a guest may write per call; they are forwarded
/// to the host's log. Past this, the guest's writes fail (Rust's `print!` then panics).
pub const OUTPUT_CAPTURE: usize = 1 << 20;

/// The inputs that decide what a guest observes besides its arguments.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// What WASI's wall clock reads (unix ms).
    pub now_ms: u64,
    /// Seeds WASI's random sources.
    pub seed: String,
}

/// Everything a guest's store carries.
pub struct HostState {
    /// Present only for components that import WASI.
    wasi: Option<WasiCtx>,
    table: ResourceTable,
    pub limits: StoreLimits,
    pub stdout: Option<MemoryOutputPipe>,
    pub stderr: Option<MemoryOutputPipe>,
    /// Present only for projection calls.
    pub read_model: Option<ReadModelSession>,
}

impl HostState {
    pub fn new(memory_bytes: usize, with_wasi: bool, observed: &Observed) -> HostState {
        let limits = StoreLimitsBuilder::new()
            .memory_size(memory_bytes)
            .instances(64)
            .tables(64)
            .memories(8)
            .trap_on_grow_failure(true)
            .build();
        let (wasi, stdout, stderr) = if with_wasi {
            let out = MemoryOutputPipe::new(OUTPUT_CAPTURE);
            let err = MemoryOutputPipe::new(OUTPUT_CAPTURE);
            (
                Some(deterministic_wasi(observed, &out, &err)),
                Some(out),
                Some(err),
            )
        } else {
            (None, None, None)
        };
        HostState {
            wasi,
            table: ResourceTable::new(),
            limits,
            stdout,
            stderr,
            read_model: None,
        }
    }

    pub fn take_output(&self) -> (String, String) {
        let read = |p: &Option<MemoryOutputPipe>| {
            p.as_ref()
                .map(|p| String::from_utf8_lossy(&p.contents()).into_owned())
                .unwrap_or_default()
        };
        (read(&self.stdout), read(&self.stderr))
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        // Invariant: WASI is linked only for components that import it, and those
        // get a context in `HostState::new`.
        let ctx = self
            .wasi
            .as_mut()
            .expect("WASI is linked only for guests that have a WASI context");
        WasiCtxView {
            ctx,
            table: &mut self.table,
        }
    }
}

/// What every call into one module shares: its engine, label and limits.
pub struct CallSettings {
    engine: Engine,
    with_wasi: bool,
    label: String,
    fuel: u64,
    deadline: Duration,
    memory_bytes: usize,
}

impl CallSettings {
    pub fn new(engine: &Engine, with_wasi: bool, label: &str, config: &RuntimeConfig) -> Self {
        CallSettings {
            engine: engine.clone(),
            with_wasi,
            label: label.to_string(),
            fuel: config.fuel_per_call,
            deadline: config.deadline,
            memory_bytes: config.memory_bytes,
        }
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn with_wasi(&self) -> bool {
        self.with_wasi
    }

    /// Runs `f` (which instantiates the guest and calls it) in a fresh store with
    /// this module's fuel, deadline and memory cap; forwards the guest's output
    /// to the log; names whatever stopped it. Returns the store's host state too,
    /// for the read-model writes a projection made.
    pub fn run<T>(
        &self,
        observed: &Observed,
        read_model: Option<ReadModelSession>,
        f: impl FnOnce(&mut Store<HostState>) -> wasmtime::Result<T>,
    ) -> Result<(T, HostState), GuestError> {
        let mut state = HostState::new(self.memory_bytes, self.with_wasi, observed);
        state.read_model = read_model;
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
        store
            .set_fuel(self.fuel)
            .map_err(|e| GuestError::Trap(format!("setting fuel: {e}")))?;
        let ticks = (self.deadline.as_millis() / super::EPOCH_TICK.as_millis()).max(1) as u64;
        store.set_epoch_deadline(ticks);
        let result = f(&mut store);
        let (stdout, stderr) = store.data().take_output();
        if !stdout.is_empty() {
            tracing::info!(module = %self.label, stream = "stdout", "{}", stdout.trim_end());
        }
        if !stderr.is_empty() {
            tracing::warn!(module = %self.label, stream = "stderr", "{}", stderr.trim_end());
        }
        let value = result
            .map_err(|e| classify(&e, self.fuel, self.memory_bytes, self.deadline, &stderr))?;
        Ok((value, store.into_data()))
    }
}

struct FixedWallClock(Duration);

impl HostWallClock for FixedWallClock {
    fn resolution(&self) -> Duration {
        Duration::from_millis(1)
    }
    fn now(&self) -> Duration {
        self.0
    }
}

/// Monotonic time stands still: a guest cannot measure how long it runs.
struct FrozenMonotonicClock;

impl HostMonotonicClock for FrozenMonotonicClock {
    fn resolution(&self) -> u64 {
        1_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

fn deterministic_wasi(
    observed: &Observed,
    out: &MemoryOutputPipe,
    err: &MemoryOutputPipe,
) -> WasiCtx {
    let seed: [u8; 32] = Sha256::digest(observed.seed.as_bytes()).into();
    let mut insecure_seed = [0u8; 16];
    insecure_seed.copy_from_slice(&seed[..16]);
    // No preopened directories, environment, arguments or sockets: the builder
    // starts with none, and nothing here inherits from the host.
    WasiCtx::builder()
        .stdout(out.clone())
        .stderr(err.clone())
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .wall_clock(FixedWallClock(Duration::from_millis(observed.now_ms)))
        .monotonic_clock(FrozenMonotonicClock)
        .secure_random(ChaCha20Rng::from_seed(seed))
        .insecure_random(ChaCha20Rng::from_seed(Sha256::digest(seed).into()))
        .insecure_random_seed(u128::from_le_bytes(insecure_seed))
        .build()
}

/// Names what stopped a guest call.
pub fn classify(
    err: &wasmtime::Error,
    fuel_limit: u64,
    memory_bytes: usize,
    deadline: Duration,
    stderr: &str,
) -> GuestError {
    match err.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => GuestError::FuelExhausted { limit: fuel_limit },
        Some(Trap::Interrupt) => GuestError::Timeout(deadline),
        // Rust's allocator aborts (an `unreachable`) when memory.grow fails; it says so on stderr.
        Some(Trap::UnreachableCodeReached) if stderr.contains("memory allocation of") => {
            GuestError::MemoryLimit {
                limit_bytes: memory_bytes,
            }
        }
        Some(trap) => {
            let detail = stderr.trim();
            if detail.is_empty() {
                GuestError::Trap(trap.to_string())
            } else {
                GuestError::Trap(format!("{trap}: {}", last_chars(detail, 2000)))
            }
        }
        // StoreLimits with trap_on_grow_failure reports a plain error, not a Trap.
        None if format!("{err:?}").contains("forcing trap when growing memory") => {
            GuestError::MemoryLimit {
                limit_bytes: memory_bytes,
            }
        }
        None => GuestError::Trap(format!("{err:#}")),
    }
}

fn last_chars(s: &str, n: usize) -> &str {
    let start = s.len().saturating_sub(n);
    let start = (start..s.len())
        .find(|i| s.is_char_boundary(*i))
        .unwrap_or(s.len());
    &s[start..]
}
