//! What a guest may observe and use. Nothing ambient: no files, network,
//! environment or arguments. A WASI guest sees a virtual WASI whose clocks read
//! the call's pinned time (a command's received-at time) plus only the time the
//! guest itself waited (`virtual_time`), and whose randomness is seeded from the
//! command id, so replaying a command gives the same answer on any host.

use std::sync::Arc;
use std::time::Duration;

use rand::SeedableRng;
use rand::rngs::ChaCha20Rng;
use sha2::{Digest, Sha256};
use wasmtime::component::{ResourceTable, ResourceTableError};
use wasmtime::{Engine, Store, StoreLimits, StoreLimitsBuilder, Trap};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::RuntimeConfig;
use super::error::{GuestError, SandboxLimit, clip_guest_text};
use super::output::{CappedOutput, LogDecision, OutputBudget};
use super::projection::ReadModelSession;
use super::virtual_time::{VirtualClock, VirtualMonotonicClock, VirtualWallClock};

/// Host resources (streams, pollables, ...) a guest may hold at once in one call.
/// Each costs host memory that no linear-memory cap sees.
pub const MAX_HOST_RESOURCES: usize = 1024;
/// The most random bytes one WASI call may ask for.
pub const MAX_RANDOM_BYTES: u64 = 1 << 20;

/// The inputs that decide what a guest observes besides its arguments.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// What WASI's wall clock reads (unix ms).
    pub now_ms: u64,
    /// Seeds WASI's random sources.
    pub seed: String,
    /// The schema version of each event the call is given, in order: what
    /// `refold:domain/event-schema.given-versions` answers.
    pub given_versions: Vec<u32>,
}

/// Everything a guest's store carries.
pub struct HostState {
    /// Present only for components that import WASI.
    wasi: Option<WasiCtx>,
    table: ResourceTable,
    clock: Arc<VirtualClock>,
    pub limits: StoreLimits,
    pub stdout: Option<CappedOutput>,
    pub stderr: Option<CappedOutput>,
    /// Present only for projection calls.
    pub read_model: Option<ReadModelSession>,
    /// The schema versions of the events the call was given.
    given_versions: Vec<u32>,
}

/// `refold:domain/event-schema`: the one thing it tells a guest is already
/// pinned down by the call's arguments.
impl super::bindings::event_schema::Host for HostState {
    fn given_versions(&mut self) -> Vec<u32> {
        self.given_versions.clone()
    }
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
        let clock = VirtualClock::starting_at(Duration::from_millis(observed.now_ms));
        let (wasi, stdout, stderr) = if with_wasi {
            let out = CappedOutput::default();
            let err = CappedOutput::default();
            (
                Some(deterministic_wasi(observed, &clock, &out, &err)),
                Some(out),
                Some(err),
            )
        } else {
            (None, None, None)
        };
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_HOST_RESOURCES);
        HostState {
            wasi,
            table,
            clock,
            limits,
            stdout,
            stderr,
            read_model: None,
            given_versions: observed.given_versions.clone(),
        }
    }

    /// What the guest wrote to stdout and stderr, each capped (head and tail kept).
    pub fn take_output(&self) -> (String, String) {
        let read =
            |p: &Option<CappedOutput>| p.as_ref().map(|p| p.contents().text).unwrap_or_default();
        (read(&self.stdout), read(&self.stderr))
    }

    pub(super) fn clock(&self) -> &Arc<VirtualClock> {
        &self.clock
    }

    pub(super) fn table(&mut self) -> &mut ResourceTable {
        &mut self.table
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

/// How many times its deadline a call that replays accepted history gets.
pub const REPLAY_DEADLINE_FACTOR: u32 = 4;

/// What every call into one module shares: its engine, label and limits.
pub struct CallSettings {
    engine: Engine,
    with_wasi: bool,
    label: String,
    fuel: u64,
    deadline: Duration,
    memory_bytes: usize,
    max_answer_bytes: usize,
    /// How much of this module's guest output reaches the log.
    output_budget: OutputBudget,
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
            max_answer_bytes: config.max_answer_bytes,
            output_budget: OutputBudget::default(),
        }
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn with_wasi(&self) -> bool {
        self.with_wasi
    }

    /// The wall-clock deadline of one call.
    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    /// The largest `render` or query answer served.
    pub fn max_answer_bytes(&self) -> usize {
        self.max_answer_bytes
    }

    /// Runs `f` (which instantiates the guest and calls it) in a fresh store with
    /// this module's fuel, deadline and memory cap; forwards the guest's output
    /// to the log; names whatever stopped it. Returns the store's host state too,
    /// for the read-model writes a projection made.
    ///
    /// `fuel_units` scales the fuel: a call that folds the work of n calls (a
    /// replay of n commands' events, a projection batch of n events) gets what
    /// those n calls would have had, so whatever was accepted one at a time
    /// can be replayed in batches.
    ///
    /// `deadline_factor` scales the wall-clock deadline. Fuel is what bounds a
    /// guest's work deterministically; the deadline is a safety net that load
    /// can trip. A replay of accepted history gets [`REPLAY_DEADLINE_FACTOR`]
    /// times the deadline its commands had when they were accepted, so a busy
    /// host does not make an accepted stream unreadable.
    pub fn run<T>(
        &self,
        observed: &Observed,
        read_model: Option<ReadModelSession>,
        fuel_units: usize,
        deadline_factor: u32,
        f: impl FnOnce(&mut Store<HostState>) -> wasmtime::Result<T>,
    ) -> Result<(T, HostState), GuestError> {
        let fuel = self.fuel.saturating_mul(fuel_units.max(1) as u64);
        let deadline = self.deadline.saturating_mul(deadline_factor.max(1));
        self.run_within(observed, read_model, fuel, deadline, f)
    }

    /// [`CallSettings::run`] with this fuel and deadline, for a call that
    /// should take far less than a module's usual budget (one that runs
    /// where guest code usually does not, such as `schema-versions` at load).
    pub fn run_within<T>(
        &self,
        observed: &Observed,
        read_model: Option<ReadModelSession>,
        fuel: u64,
        deadline: Duration,
        f: impl FnOnce(&mut Store<HostState>) -> wasmtime::Result<T>,
    ) -> Result<(T, HostState), GuestError> {
        let mut state = HostState::new(self.memory_bytes, self.with_wasi, observed);
        state.read_model = read_model;
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
        store.set_max_component_handles(MAX_HOST_RESOURCES);
        store
            .set_fuel(fuel)
            .map_err(|e| GuestError::Trap(format!("setting fuel: {e}")))?;
        let ticks = (deadline.as_millis() / super::EPOCH_TICK.as_millis()).max(1) as u64;
        store.set_epoch_deadline(ticks);
        let result = f(&mut store);
        let (stdout, stderr) = store.data().take_output();
        self.forward_output(&stdout, &stderr);
        let value = result.map_err(|e| classify(&e, fuel, self.memory_bytes, deadline, &stderr))?;
        Ok((value, store.into_data()))
    }
}

impl CallSettings {
    /// Sends a call's output to the log, within the module's rate.
    fn forward_output(&self, stdout: &str, stderr: &str) {
        for (stream, text) in [("stdout", stdout), ("stderr", stderr)] {
            if text.is_empty() {
                continue;
            }
            let LogDecision::Log { withheld } = self.output_budget.admit(text.len()) else {
                continue;
            };
            let text = text.trim_end();
            match (stream, withheld) {
                ("stdout", 0) => tracing::info!(module = %self.label, stream, "{text}"),
                ("stdout", n) => {
                    tracing::info!(module = %self.label, stream, withheld_bytes = n, "[{n} bytes of earlier guest output dropped: over the module's log rate]\n{text}")
                }
                (_, 0) => tracing::warn!(module = %self.label, stream, "{text}"),
                (_, n) => {
                    tracing::warn!(module = %self.label, stream, withheld_bytes = n, "[{n} bytes of earlier guest output dropped: over the module's log rate]\n{text}")
                }
            }
        }
    }
}

fn deterministic_wasi(
    observed: &Observed,
    clock: &Arc<VirtualClock>,
    out: &CappedOutput,
    err: &CappedOutput,
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
        .wall_clock(VirtualWallClock(clock.clone()))
        .monotonic_clock(VirtualMonotonicClock(clock.clone()))
        .secure_random(ChaCha20Rng::from_seed(seed))
        .insecure_random(ChaCha20Rng::from_seed(Sha256::digest(seed).into()))
        .insecure_random_seed(u128::from_le_bytes(insecure_seed))
        // The host fills what a guest asks for before handing it over.
        .max_random_size(MAX_RANDOM_BYTES)
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
    if let Some(limit) = sandbox_limit(err) {
        return GuestError::LimitExceeded(limit);
    }
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
                // The end of stderr is where a panic says why: kept, escaped, bounded.
                GuestError::Trap(format!(
                    "{trap}: {}",
                    clip_guest_text(last_chars(detail, 900))
                ))
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

/// A bound of the sandbox that stopped the call: ours, or one of wasmtime's.
fn sandbox_limit(err: &wasmtime::Error) -> Option<String> {
    if let Some(limit) = err.downcast_ref::<SandboxLimit>() {
        return Some(limit.0.clone());
    }
    if err.downcast_ref::<ResourceTableError>().is_some()
        || format!("{err:#}").contains("store handle limit exceeded")
    {
        return Some(format!(
            "the guest held more than {MAX_HOST_RESOURCES} host resources (streams, pollables, ...) at once"
        ));
    }
    let text = format!("{err:#}");
    if text.contains("requested len") && text.contains("exceeds limit") {
        return Some(format!(
            "the guest asked for more than {MAX_RANDOM_BYTES} random bytes in one call"
        ));
    }
    None
}

fn last_chars(s: &str, n: usize) -> &str {
    let start = s.len().saturating_sub(n);
    let start = (start..s.len())
        .find(|i| s.is_char_boundary(*i))
        .unwrap_or(s.len());
    &s[start..]
}
