//! The Wasm runtime: compiles components, checks which world they implement,
//! and runs guest calls sandboxed, metered and deterministic.
//!
//! Architecture Invariant: this module is the only one that knows about wasmtime.
//!
//! - `bindings`: the one `bindgen!` over `wit/domain.wit`.
//! - `engine`: the one wasmtime `Config`, shared by the server and the compile worker.
//! - `sandbox`: what a guest observes (virtual WASI, limits) and how failures are named.
//! - `virtual_time`: the guest's clocks and timers, which never block and never read real time.
//! - `output`: a guest's stdout and stderr, capped per call, rate-limited to the log per module.
//! - `aggregate`: calls into an aggregate component, each in a fresh instance.
//! - `projection`: calls into a projection component, and its read-model import.
//! - `process`: calls into a process component (a saga).
//! - `compile`: compiling under a time and memory budget, in worker processes.
//! - `worker`: the worker's side (`refold __compile`).
//! - `cache`: compiled artifacts on disk, keyed by digest and engine compatibility.
//! - `pool`: the threads guest code runs on.

mod aggregate;
mod bindings;
mod cache;
mod compile;
mod engine;
mod error;
mod output;
mod pool;
mod process;
mod projection;
mod sandbox;
mod schema;
mod virtual_time;
mod worker;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use wasmtime::Engine;
use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Component, Linker};

pub use aggregate::AggregateModule;
pub use bindings::process_types;
pub use bindings::{
    CommandContext, CommandError, NewEvent as GuestEvent, RecordedEvent as GuestRecordedEvent,
    Rejection, StreamEvent,
};
pub use compile::{CompileConfig, DEFAULT_COMPILE_MEMORY, DEFAULT_COMPILE_TIMEOUT, this_binary};
pub use error::{
    DEFAULT_MAX_ANSWER_BYTES, GuestError, MAX_GUEST_ERROR_LEN, RuntimeError, clip_guest_text,
};
pub use pool::{DEMOTE_BY, GuestPool, PoolStats};
pub use process::ProcessModule;
pub use projection::{
    DocumentChanges, DocumentSource, MAX_BATCH_WRITE_BYTES, MAX_BATCH_WRITES, MAX_DOC_KEY_LEN,
    MAX_DOC_LEN, MAX_SCAN_LIMIT, ProjectionModule, QueryFailure, Selector,
};
pub use sandbox::Observed;
pub use schema::{MAX_VERSION as MAX_SCHEMA_VERSION, SchemaVersions};
pub use worker::{WorkerArgs, run_compile_worker};

use compile::Compiler;
use engine::{Allocation, engine_config};
use sandbox::HostState;

/// How much a guest may use. Fuel is the deterministic limit; the deadline is a
/// wall-clock backstop for anything fuel does not meter.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// Fuel for one guest call (roughly, Wasm instructions).
    pub fuel_per_call: u64,
    /// Wall-clock limit for one guest call.
    pub deadline: Duration,
    /// Linear memory one instance may grow to.
    pub memory_bytes: usize,
    /// The largest answer a `render` or a query may give, in bytes
    /// ([`DEFAULT_MAX_ANSWER_BYTES`] by default). Keep it above the JSON size
    /// of the largest state a module may keep, or such states cannot be read.
    pub max_answer_bytes: usize,
    /// Instances that may exist at once (pooling allocator slots).
    pub max_instances: u32,
    /// Threads that run guest code.
    pub guest_threads: usize,
    /// Where compiled artifacts are cached; `None` compiles every time.
    pub cache_dir: Option<PathBuf>,
    /// The budget of a compilation, and its worker processes.
    pub compile: CompileConfig,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            fuel_per_call: 1_000_000_000,
            deadline: Duration::from_secs(5),
            memory_bytes: 64 << 20,
            max_answer_bytes: DEFAULT_MAX_ANSWER_BYTES,
            max_instances: 128,
            guest_threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            cache_dir: None,
            compile: CompileConfig::default(),
        }
    }
}

/// What a component implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum World {
    Aggregate,
    Projection,
    Process,
}

/// A loaded component, ready to call.
#[derive(Clone)]
pub enum Guest {
    Aggregate(AggregateModule),
    Projection(ProjectionModule),
    Process(ProcessModule),
}

impl Guest {
    pub fn world(&self) -> World {
        match self {
            Guest::Aggregate(_) => World::Aggregate,
            Guest::Projection(_) => World::Projection,
            Guest::Process(_) => World::Process,
        }
    }

    pub fn imports_wasi(&self) -> bool {
        match self {
            Guest::Aggregate(m) => m.imports_wasi(),
            Guest::Projection(m) => m.imports_wasi(),
            Guest::Process(m) => m.imports_wasi(),
        }
    }
}

const EPOCH_TICK: Duration = Duration::from_millis(10);

pub struct Runtime {
    engine: Engine,
    wasi_linker: Linker<HostState>,
    plain_linker: Linker<HostState>,
    config: RuntimeConfig,
    pool: GuestPool,
    ticker_stop: Arc<AtomicBool>,
    compiler: Compiler,
    /// `<cache>/<engine hash>`, where artifacts live; `None` without a cache.
    artifacts: Option<PathBuf>,
    compiled: AtomicU64,
    from_cache: AtomicU64,
}

impl Runtime {
    pub fn new(mut config: RuntimeConfig) -> Result<Runtime, RuntimeError> {
        // Every thread the guest pool may run holds an instance: never fewer
        // slots than that (with room for calls that overlap a thread's next).
        let most_threads = (pool::HARD_MAX_FACTOR * config.guest_threads.max(1)) as u32;
        config.max_instances = config.max_instances.max(2 * most_threads);
        let engine = Engine::new(&engine_config(Allocation::Pooling(&config)))
            .map_err(|e| RuntimeError::Host(format!("creating the Wasm engine: {e:#}")))?;
        let artifacts = config
            .cache_dir
            .as_ref()
            .map(|root| cache::engine_dir(&engine, root));
        if let Some(dir) = &artifacts {
            std::fs::create_dir_all(dir).map_err(|e| {
                RuntimeError::Host(format!(
                    "creating the artifact cache {}: {e}",
                    dir.display()
                ))
            })?;
            cache::remove_stale_staging(dir);
        }
        let mut wasi_linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut wasi_linker)
            .and_then(|()| virtual_time::shadow_wasi(&mut wasi_linker))
            .map_err(|e| RuntimeError::Host(format!("linking WASI: {e:#}")))?;
        let mut plain_linker = Linker::new(&engine);
        // The read model and event-schema are the host interfaces Refold offers;
        // a component that does not import one is unaffected by its being linked.
        for linker in [&mut wasi_linker, &mut plain_linker] {
            bindings::read_model::add_to_linker::<HostState, wasmtime::component::HasSelf<HostState>>(
                linker,
                |state| state,
            )
            .map_err(|e| RuntimeError::Host(format!("linking the read model: {e:#}")))?;
            bindings::event_schema::add_to_linker::<
                HostState,
                wasmtime::component::HasSelf<HostState>,
            >(linker, |state| state)
            .map_err(|e| RuntimeError::Host(format!("linking event-schema: {e:#}")))?;
        }

        let ticker_stop = Arc::new(AtomicBool::new(false));
        {
            let (engine, stop) = (engine.clone(), ticker_stop.clone());
            std::thread::Builder::new()
                .name("refold-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(EPOCH_TICK);
                        engine.increment_epoch();
                    }
                })
                .map_err(|e| RuntimeError::Host(format!("starting the epoch thread: {e}")))?;
        }
        let pool = GuestPool::new(config.guest_threads);
        let compiler = Compiler::new(config.compile.clone());
        Ok(Runtime {
            engine,
            wasi_linker,
            plain_linker,
            config,
            pool,
            ticker_stop,
            compiler,
            artifacts,
            compiled: AtomicU64::new(0),
            from_cache: AtomicU64::new(0),
        })
    }

    pub fn config(&self) -> &RuntimeConfig {
        &self.config
    }

    /// The threads guest calls run on.
    pub fn pool(&self) -> &GuestPool {
        &self.pool
    }

    /// Loads a component from the artifact cache, if it is there. `label`
    /// (name@version) tags the guest's log lines.
    pub fn load_cached(
        &self,
        digest: &[u8; 32],
        label: &str,
    ) -> Result<Option<Guest>, RuntimeError> {
        let Some(dir) = &self.artifacts else {
            return Ok(None);
        };
        let Some(component) = cache::load(&self.engine, &cache::artifact_path(dir, digest)) else {
            return Ok(None);
        };
        self.from_cache.fetch_add(1, Ordering::Relaxed);
        self.guest_of(&component, label).map(Some)
    }

    /// Loads a component from the artifact cache, or compiles it in a worker
    /// process under the compile budget; then checks the world it implements.
    pub async fn load(
        &self,
        bytes: Arc<[u8]>,
        digest: &[u8; 32],
        label: &str,
    ) -> Result<Guest, RuntimeError> {
        check_component_header(&bytes)?;
        if let Some(guest) = self.load_cached(digest, label)? {
            return Ok(guest);
        }
        let staging = cache::Staging {
            path: cache::staging_path(
                self.artifacts.as_deref().unwrap_or(&std::env::temp_dir()),
                digest,
            ),
        };
        self.compiler.compile(bytes, &staging.path, label).await?;
        // SAFETY: the worker wrote this file with `Component::serialize` of an engine
        // built from the same configuration (`engine::engine_config`), at a path only
        // this compilation uses; wasmtime checks the header and compatibility again.
        let component = unsafe { Component::deserialize_file(&self.engine, &staging.path) }
            .map_err(|e| RuntimeError::Host(format!("loading the compiled artifact: {e:#}")))?;
        self.compiled.fetch_add(1, Ordering::Relaxed);
        let guest = self.guest_of(&component, label)?;
        if let Some(dir) = &self.artifacts {
            cache::publish(&staging.path, &cache::artifact_path(dir, digest));
        }
        Ok(guest)
    }

    /// The compile budget and workers.
    pub fn compile_config(&self) -> &CompileConfig {
        self.compiler.config()
    }

    /// Checks what `component` implements and prepares it for calls.
    fn guest_of(&self, component: &Component, label: &str) -> Result<Guest, RuntimeError> {
        let world = self.world_of(component)?;
        let with_wasi = self.check_imports(component, world)?;
        let linker = if with_wasi {
            &self.wasi_linker
        } else {
            &self.plain_linker
        };
        Ok(match world {
            World::Aggregate => Guest::Aggregate(AggregateModule::new(
                &self.engine,
                linker,
                component,
                with_wasi,
                label,
                &self.config,
            )?),
            World::Projection => Guest::Projection(ProjectionModule::new(
                &self.engine,
                linker,
                component,
                with_wasi,
                label,
                &self.config,
            )?),
            World::Process => Guest::Process(ProcessModule::new(
                &self.engine,
                linker,
                component,
                with_wasi,
                label,
                &self.config,
            )?),
        })
    }

    /// How many components this runtime compiled, and how many it loaded from
    /// the artifact cache instead.
    pub fn compile_counts(&self) -> (u64, u64) {
        (
            self.compiled.load(Ordering::Relaxed),
            self.from_cache.load(Ordering::Relaxed),
        )
    }

    /// Names the world by a function only it exports (`handle` for aggregates,
    /// `react` for processes, and of the others `subscription` for
    /// projections), then checks the rest is there.
    fn world_of(&self, component: &Component) -> Result<World, RuntimeError> {
        let ty = component.component_type();
        let func = |name: &str| matches!(ty.get_export(&self.engine, name), Some(e) if matches!(e.ty, ComponentItem::ComponentFunc(_)));
        let (world, needs): (World, &[&str]) = if func("handle") {
            (
                World::Aggregate,
                &["initial-state", "handle", "apply", "render"],
            )
        } else if func("react") {
            (
                World::Process,
                &[
                    "subscription",
                    "route",
                    "initial-state",
                    "react",
                    "apply",
                    "status",
                    "render",
                ],
            )
        } else if func("subscription") {
            (World::Projection, &["subscription", "apply", "query"])
        } else {
            let exports: Vec<String> = ty
                .exports(&self.engine)
                .map(|(name, _)| name.to_string())
                .collect();
            return Err(RuntimeError::InvalidModule(format!(
                "implements no world Refold knows (refold:domain/aggregate exports initial-state, handle, apply, render; refold:domain/projection exports subscription, apply, query; refold:domain/process exports subscription, route, initial-state, react, apply, status, render); it exports [{}]",
                exports.join(", ")
            )));
        };
        let missing: Vec<&str> = needs.iter().copied().filter(|f| !func(f)).collect();
        if !missing.is_empty() {
            let name = match world {
                World::Aggregate => "an aggregate",
                World::Projection => "a projection",
                World::Process => "a process",
            };
            return Err(RuntimeError::InvalidModule(format!(
                "looks like {name} but does not export {}",
                missing.join(", ")
            )));
        }
        Ok(world)
    }

    /// A component may import the parts of WASI a program needs to run (which it
    /// gets, locked down: `ALLOWED_WASI`), Refold's own types interfaces
    /// (`types` and `process-types`, which carry only types and so give
    /// nothing), and, for projections, the read model. Nothing else:
    /// not sockets, not HTTP, not any interface a later WASI adds.
    fn check_imports(&self, component: &Component, world: World) -> Result<bool, RuntimeError> {
        let mut with_wasi = false;
        for (name, _) in component.component_type().imports(&self.engine) {
            // Types only. Every component built with the SDK imports
            // `process-types` too, aggregates and projections included: the
            // SDK links the bindings of all three worlds, and wit-component
            // drops the interfaces whose functions go unused, but keeps
            // types-only ones.
            if name.starts_with("refold:domain/types@")
                || name.starts_with("refold:domain/process-types@")
            {
                continue;
            }
            if name.starts_with("refold:domain/read-model@") && world == World::Projection {
                continue;
            }
            // Answers only what the call's arguments already pin down.
            if name.starts_with("refold:domain/event-schema@") {
                continue;
            }
            if ALLOWED_WASI.iter().any(|prefix| name.starts_with(prefix)) {
                with_wasi = true;
            } else {
                return Err(RuntimeError::InvalidModule(format!(
                    "imports {name}, which Refold does not provide to {} (offered: {}{}, locked down: virtual clocks, seeded randomness, no files, network or environment)",
                    match world {
                        World::Aggregate => "aggregates",
                        World::Projection => "projections",
                        World::Process => "processes",
                    },
                    ALLOWED_WASI.join(", "),
                    match world {
                        World::Projection => ", refold:domain/read-model",
                        World::Aggregate | World::Process => "",
                    }
                )));
            }
        }
        Ok(with_wasi)
    }
}

/// The WASI packages a guest may import: what Rust's standard library links.
/// (Sockets are refused even though wasmtime-wasi could serve them disabled.)
const ALLOWED_WASI: &[&str] = &[
    "wasi:cli/",
    "wasi:clocks/",
    "wasi:filesystem/",
    "wasi:io/",
    "wasi:random/",
];

impl Drop for Runtime {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

/// A clear error for bytes that are not a component at all.
fn check_component_header(bytes: &[u8]) -> Result<(), RuntimeError> {
    match bytes.get(..8) {
        Some([0, b'a', b's', b'm', 0x0d, 0x00, 0x01, 0x00]) => Ok(()),
        Some([0, b'a', b's', b'm', 0x01, 0x00, 0x00, 0x00]) => Err(RuntimeError::InvalidModule(
            "this is a core Wasm module, not a component; build for wasm32-wasip2, or wrap the module with wit-component".into(),
        )),
        Some([0, b'a', b's', b'm', ..]) => Err(RuntimeError::InvalidModule("unsupported Wasm binary version".into())),
        _ => Err(RuntimeError::InvalidModule(format!(
            "not WebAssembly: a component starts with \\0asm, these {} bytes do not",
            bytes.len()
        ))),
    }
}
