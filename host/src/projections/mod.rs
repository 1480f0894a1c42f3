//! Projections: the query side. Each uploaded projection version runs as its
//! own task ([`runner`]) that replays the global log into that version's read
//! model and then follows live appends. Versions of one projection run side
//! by side; readers see the live one unless they ask for another. A new
//! version goes live by itself when its projection has none yet; otherwise an
//! operator promotes it, after comparing the two ([`compare`]).
//!
//! Architecture Invariant: only a version's runner writes its read model, and
//! every write lands in one sled batch with the checkpoint that covers it.

mod compare;
mod runner;
mod scratch;
pub(crate) mod tenure;
mod verify;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};

pub use compare::{
    ChangedDocument, Comparison, Diff, DiffSample, DocumentsDigest, FirstDivergence,
    ReadModelDigest, SampleDocument,
};
pub use runner::{BatchLimits, Documents, to_guest};
pub use verify::{VerifyEnd, VerifyOutcome, VerifyPhase, VerifyProgress, VerifyReport};

use crate::modules::{LoadedModule, ModuleError, ModuleRegistry};
use crate::runtime::{GuestError, QueryFailure, Runtime, clip_guest_text};
use crate::store::{
    Backend, BackendReadModel as ReadModel, Position, RecordedEvent, SkipRecord, StoreError,
};
use runner::{Control, Runner};

#[derive(Clone, Debug)]
pub struct ProjectionConfig {
    pub batch: BatchLimits,
    /// How long a read with `min_position` waits when the caller does not say.
    pub default_wait: Duration,
    /// The longest wait a caller may ask for.
    pub max_wait: Duration,
}

impl Default for ProjectionConfig {
    fn default() -> Self {
        ProjectionConfig {
            batch: BatchLimits {
                events: 1000,
                bytes: 4 << 20,
            },
            default_wait: Duration::from_secs(5),
            max_wait: Duration::from_secs(60),
        }
    }
}

/// What a version's runner is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Asking the guest which events it wants.
    Starting,
    /// Another host holds the version's lease and runs it (PostgreSQL); this
    /// host shows the checkpoint it commits and takes over if it stops.
    Standby,
    /// Behind the head of the log, replaying.
    CatchingUp,
    /// At the head of the log, following appends. (Whether readers see this
    /// version is another matter: that is the projection's live version.)
    CaughtUp,
    /// Stopped at a failing event until an operator retries or skips it.
    Failed,
}

impl RunState {
    pub const ALL: [RunState; 5] = [
        RunState::Starting,
        RunState::Standby,
        RunState::CatchingUp,
        RunState::CaughtUp,
        RunState::Failed,
    ];

    /// The name in JSON and in metrics' labels.
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Starting => "starting",
            RunState::Standby => "standby",
            RunState::CatchingUp => "catching_up",
            RunState::CaughtUp => "caught_up",
            RunState::Failed => "failed",
        }
    }
}

/// Why a version stopped.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Failure {
    /// The position of the event that failed; everything before it is applied.
    pub position: Position,
    pub event_id: Option<String>,
    pub event_type: Option<String>,
    pub stream: Option<String>,
    /// A stable code (`guest_failed`, `guest_trap`, `fuel_exhausted`, ...).
    pub code: &'static str,
    pub message: String,
    /// How many times this event has failed in a row (retries add to it).
    pub attempts: u32,
    pub failed_at_ms: u64,
}

impl Failure {
    fn from_guest(position: Position, event: Option<&RecordedEvent>, err: &GuestError) -> Self {
        Failure {
            position,
            event_id: event.map(|e| e.event_id.to_string()),
            event_type: event.map(|e| e.event_type.clone()),
            stream: event.map(|e| e.stream.to_string()),
            code: err.code(),
            message: err.to_string(),
            attempts: 1,
            failed_at_ms: runner::now_ms(),
        }
    }

    fn from_store(position: Position, err: &StoreError) -> Self {
        Failure {
            position,
            event_id: None,
            event_type: None,
            stream: None,
            code: err.code(),
            message: err.to_string(),
            attempts: 1,
            failed_at_ms: runner::now_ms(),
        }
    }
}

/// A version's progress, published by its runner.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct VersionStatus {
    pub state: RunState,
    /// The last log position processed: everything up to here is in the read model.
    pub position: Position,
    pub events_applied: u64,
    pub events_skipped: u64,
    /// While catching up, log positions processed per second over the last few
    /// seconds; 0 while caught up and waiting for appends.
    pub events_per_second: f64,
    pub failure: Option<Failure>,
    /// The last catch-up of this runner (since the server started, or since a
    /// rebuild or a retry restarted it), kept after it caught up.
    pub last_replay: Option<ReplayStats>,
    /// The failure being retried, until the retry's outcome is known.
    #[serde(skip)]
    retrying: Option<Failure>,
}

/// How long a catch-up took, from the position it started after to the head
/// it caught up with.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ReplayStats {
    /// The position the replay started after.
    pub from_position: Position,
    /// The position it caught up at.
    pub to_position: Position,
    pub seconds: f64,
    /// Log positions processed per second over the whole replay.
    pub events_per_second: f64,
    /// When it caught up (ms since the Unix epoch).
    pub caught_up_at_ms: u64,
}

/// A projection version and its runner.
pub struct VersionHandle {
    pub module: Arc<LoadedModule>,
    read_model: RwLock<ReadModel>,
    pub status: watch::Sender<VersionStatus>,
    /// Held while committing, and while taking a digest, so a digest sees one checkpoint.
    commit_lock: Mutex<()>,
    runner: Mutex<Option<RunnerSlot>>,
    /// Go live as soon as caught up (an upload with `activate`): Some(the
    /// version that was live when asked). A later change of the live version
    /// (an explicit promotion, perhaps on another host) supersedes the ask.
    promote_when_caught_up: Mutex<Option<Option<String>>>,
    /// Operator actions that stop and restart the runner (rebuild, drop) run one
    /// at a time per version.
    ops: tokio::sync::Mutex<()>,
    /// Set under the `live` lock while a rebuild empties the version, and for
    /// good once it is dropped: such a version must not become live.
    held: AtomicBool,
    /// What a running verify of this version is doing, and how the last one ended.
    verify: Mutex<verify::VerifyState>,
}

struct RunnerSlot {
    stop: watch::Sender<bool>,
    control: mpsc::Sender<Control>,
    task: tokio::task::JoinHandle<()>,
}

impl VersionHandle {
    pub fn name(&self) -> &str {
        &self.module.record.name
    }

    pub fn version(&self) -> &str {
        &self.module.record.version
    }

    /// `name@version`.
    pub fn label(&self) -> String {
        self.module.label()
    }

    /// Asks for this version to go live once caught up, over `live` (the
    /// live version now).
    fn ask_promotion(&self, live: Option<String>) {
        *self
            .promote_when_caught_up
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(live);
    }

    fn promotion_asked(&self) -> bool {
        self.promote_when_caught_up
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    fn take_promotion_ask(&self) {
        self.promote_when_caught_up
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
    }

    fn read_model(&self) -> ReadModel {
        self.read_model
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn control(&self) -> Option<mpsc::Sender<Control>> {
        self.runner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|r| r.control.clone())
    }
}

/// One version as readers and operators see it.
#[derive(Clone, Debug, Serialize)]
pub struct VersionView {
    pub version: String,
    pub digest: String,
    pub live: bool,
    #[serde(flatten)]
    pub status: VersionStatus,
    pub head: Position,
    pub lag: u64,
    /// Seconds until caught up at the current rate (absent when unknown).
    pub eta_seconds: Option<f64>,
    pub promote_when_caught_up: bool,
    pub uploaded_at_ms: u64,
    /// A verify of this version in progress (null when none runs).
    pub verify: Option<VerifyProgress>,
    /// How the last verify since the server started ended (null: none yet).
    pub last_verify: Option<VerifyOutcome>,
    /// The schema versions of the events its read model was built from, by
    /// event type (`{"Opened": [1, 2]}`).
    pub schema_versions: crate::store::SchemaVersionsSeen,
}

#[derive(Clone, Debug, Serialize)]
pub struct ProjectionView {
    pub name: String,
    pub live_version: Option<String>,
    pub versions: Vec<VersionView>,
}

/// Documents read from one version, with the position they reflect.
#[derive(Clone, Debug)]
pub struct DocsPage {
    pub version: String,
    /// Every event up to this position is in the documents.
    pub position: Position,
    pub documents: Vec<(String, String)>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    #[error("{0}")]
    NotFound(String),
    #[error("{name} has no live version yet{detail}")]
    NotLive { name: String, detail: String },
    #[error(
        "{label} is at position {position}, {lag} behind the head ({head}); wait until it catches up, or force"
    )]
    Lagging {
        label: String,
        position: Position,
        head: Position,
        lag: u64,
    },
    #[error("{0} is the live version; promote another version first{1}")]
    IsLive(String, &'static str),
    #[error("{0}")]
    NotFailed(String),
    #[error("{label} stopped at position {} ({}): {}", .failure.position, .failure.code, .failure.message)]
    Failed {
        label: String,
        failure: Box<Failure>,
    },
    #[error("{label} reached position {reached}, not {wanted}, within {waited:?}; the log's head is {head}{}", if wanted > head { " (the position asked for was never written to this server's log)" } else { " (the version is still catching up)" })]
    Timeout {
        label: String,
        wanted: Position,
        reached: Position,
        /// The log's head when the wait ended: a `wanted` past it was never
        /// written here, one within it is still to be processed.
        head: Position,
        waited: Duration,
    },
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("{0} has no query named {1:?}")]
    UnknownQuery(String, String),
    #[error("bad arguments for query {0:?}: {1}")]
    BadQueryArguments(String, String),
    #[error("the module {module} returned invalid output: {reason}")]
    InvalidGuestOutput { module: String, reason: String },
    #[error("the projection service is shutting down")]
    Closed,
    /// A task of the service panicked or was cancelled: the host's fault.
    #[error("internal failure: {0}")]
    Internal(String),
    #[error(
        "a verify of {label} is running (at position {position} of {target}); wait for its report"
    )]
    VerifyInProgress {
        label: String,
        position: Position,
        target: Position,
    },
    #[error("{0} is being verified, rebuilt or dropped; try again when that has finished")]
    Busy(String),
    #[error("the verify of {0} was cancelled")]
    VerifyCancelled(String),
    #[error(transparent)]
    Guest(#[from] GuestError),
    #[error(transparent)]
    Module(#[from] ModuleError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub struct ProjectionService {
    store: Backend,
    modules: Arc<ModuleRegistry>,
    runtime: Arc<Runtime>,
    config: ProjectionConfig,
    versions: Mutex<HashMap<(String, String), Arc<VersionHandle>>>,
    /// Versions being dropped: an upload of one waits for the drop to finish.
    dropping: Mutex<std::collections::HashSet<(String, String)>>,
    /// Serializes every change of which version is live.
    live: Arc<Mutex<()>>,
    closed: AtomicBool,
    /// This service's name as a lease holder (PostgreSQL).
    holder: String,
}

impl ProjectionService {
    /// Starts a runner for every projection version in the registry, and for
    /// every one uploaded later.
    pub fn start(
        store: Backend,
        modules: Arc<ModuleRegistry>,
        config: ProjectionConfig,
    ) -> Arc<ProjectionService> {
        let service = Arc::new(ProjectionService {
            store,
            runtime: modules.runtime().clone(),
            modules: modules.clone(),
            config,
            versions: Mutex::new(HashMap::new()),
            dropping: Mutex::new(std::collections::HashSet::new()),
            live: Arc::new(Mutex::new(())),
            closed: AtomicBool::new(false),
            holder: tenure::holder_name(),
        });
        let weak = Arc::downgrade(&service);
        modules.set_projection_listener(Box::new(move |module, promote| {
            if let Some(service) = weak.upgrade()
                && let Err(err) = service.on_version(module.clone(), promote)
            {
                tracing::error!(projection = %module.label(), "cannot start the projection: {err}");
            }
        }));
        let weak = Arc::downgrade(&service);
        modules.set_removal_listener(Box::new(move |name, version| {
            if let Some(service) = weak.upgrade() {
                service.on_removed(name, version);
            }
        }));
        service
    }

    /// A version was dropped on another host: this host forgets it and stops
    /// its runner (which gives up the lease if it held it).
    fn on_removed(&self, name: &str, version: &str) {
        let handle = self
            .versions()
            .remove(&(name.to_string(), version.to_string()));
        if let Some(handle) = handle {
            handle.held.store(true, Ordering::Release);
            tokio::spawn(async move { Self::stop_runner(&handle).await });
        }
    }

    /// A projection version was uploaded (or found at startup): run it.
    fn on_version(&self, module: Arc<LoadedModule>, promote: bool) -> Result<(), ProjectionError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(ProjectionError::Closed);
        }
        let key = (module.record.name.clone(), module.record.version.clone());
        if self.dropping().contains(&key) {
            return Err(ProjectionError::InvalidRequest(format!(
                "{}@{} is being dropped; upload it again once the drop has finished",
                key.0, key.1
            )));
        }
        // Look up and insert under one lock: two callers announcing the same
        // version at once (an upload's listener, a boot compile finishing, a
        // read that waited for it) must get one handle and one runner.
        // The read model is opened before the lock is taken (on PostgreSQL it
        // is a query, and requests take this lock): of two callers at once,
        // the second's is simply not used.
        let opened = if self.versions().contains_key(&key) {
            None
        } else {
            let model = self.store.read_model(&key.0, &key.1)?;
            let checkpoint = model.checkpoint()?;
            Some((model, checkpoint))
        };
        let (handle, created) = {
            let mut versions = self.versions();
            // Again under the lock: a drop marks the version before it takes
            // it out of `versions`, so no new handle slips in behind it.
            if self.dropping().contains(&key) {
                return Err(ProjectionError::InvalidRequest(format!(
                    "{}@{} is being dropped; upload it again once the drop has finished",
                    key.0, key.1
                )));
            }
            match (versions.get(&key), opened) {
                (Some(handle), _) => (handle.clone(), false),
                (None, None) => {
                    return Err(ProjectionError::Internal(format!(
                        "{}@{} went away while it was being opened",
                        key.0, key.1
                    )));
                }
                (None, Some((model, checkpoint))) => {
                    let handle = Arc::new(VersionHandle {
                        module,
                        read_model: RwLock::new(model),
                        status: watch::Sender::new(initial_status(
                            checkpoint.position,
                            checkpoint.events_applied,
                            checkpoint.events_skipped,
                        )),
                        commit_lock: Mutex::new(()),
                        runner: Mutex::new(None),
                        promote_when_caught_up: Mutex::new(None),
                        ops: tokio::sync::Mutex::new(()),
                        held: AtomicBool::new(false),
                        verify: Mutex::default(),
                    });
                    versions.insert(key, handle.clone());
                    (handle, true)
                }
            }
        };
        if created {
            self.start_runner(&handle);
        }
        if promote {
            handle.ask_promotion(self.modules.stored_active_version(handle.name())?);
            // Caught up already (the runner may have looked at the flag just
            // before it was set): go live now rather than at the next append.
            let status = handle.status.borrow().clone();
            if status.failure.is_none() && status.position >= self.store.head() {
                go_live_if_due(&self.modules, &self.live, &handle);
            }
        }
        Ok(())
    }

    /// Starts the version's runner unless one is running: a version never has two.
    fn start_runner(&self, handle: &Arc<VersionHandle>) {
        let mut slot = handle.runner.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_some() {
            return;
        }
        let (stop_tx, stop_rx) = watch::channel(false);
        let (control_tx, control_rx) = mpsc::channel(16);
        let (modules, live) = (self.modules.clone(), self.live.clone());
        let runner = Runner {
            handle: handle.clone(),
            store: self.store.clone(),
            pool: self.runtime.clone(),
            limits: self.config.batch,
            stop: stop_rx,
            control: control_rx,
            on_caught_up: Box::new(move |handle| go_live_if_due(&modules, &live, handle)),
            tenure: tenure::Tenure::new(
                &self.store,
                format!("projection:{}", handle.label()),
                &self.holder,
            ),
        };
        let label = handle.label();
        let task = tokio::spawn(async move {
            tracing::info!(projection = %label, "projection runner started");
            runner.run().await;
            tracing::info!(projection = %label, "projection runner stopped");
        });
        *slot = Some(RunnerSlot {
            stop: stop_tx,
            control: control_tx,
            task,
        });
    }

    async fn stop_runner(handle: &VersionHandle) {
        let slot = handle
            .runner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(slot) = slot {
            slot.stop.send_replace(true);
            let _ = slot.task.await;
        }
    }

    /// Stops every runner (each finishes the batch it is committing).
    pub async fn shutdown(&self) {
        self.closed.store(true, Ordering::Release);
        let handles: Vec<_> = self.versions().values().cloned().collect();
        // Signal every runner first, then wait: they finish their batches in parallel.
        for handle in &handles {
            if let Some(slot) = &*handle.runner.lock().unwrap_or_else(|e| e.into_inner()) {
                slot.stop.send_replace(true);
            }
        }
        for handle in &handles {
            Self::stop_runner(handle).await;
        }
        // A verify, rebuild or drop in progress sees `closed` and ends; one that
        // started a runner again just before it was set is stopped here.
        for handle in &handles {
            let _done = handle.ops.lock().await;
            Self::stop_runner(handle).await;
        }
    }

    fn dropping(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<(String, String)>> {
        self.dropping.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn versions(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Arc<VersionHandle>>> {
        self.versions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The live version, compiled or not (one still compiling after a start
    /// without its artifact stays live; reads of it wait, then hear so).
    fn live_version(&self, name: &str) -> Option<String> {
        self.modules.active_version(name)
    }

    /// The longest a read may wait for `min_position` (`wait_ms`).
    pub fn max_wait(&self) -> Duration {
        self.config.max_wait
    }

    /// Every projection with its versions.
    pub fn list(&self) -> Vec<ProjectionView> {
        let mut names: Vec<String> = self.versions().keys().map(|(n, _)| n.clone()).collect();
        names.sort();
        names.dedup();
        names.iter().filter_map(|n| self.view(n).ok()).collect()
    }

    pub fn view(&self, name: &str) -> Result<ProjectionView, ProjectionError> {
        let mut handles: Vec<Arc<VersionHandle>> = self
            .versions()
            .iter()
            .filter(|((n, _), _)| n == name)
            .map(|(_, h)| h.clone())
            .collect();
        if handles.is_empty() {
            return Err(ProjectionError::NotFound(format!("no projection {name}")));
        }
        handles.sort_by_key(|h| semver::Version::parse(h.version()).ok());
        let live = self.live_version(name);
        Ok(ProjectionView {
            name: name.to_string(),
            versions: handles
                .iter()
                .map(|h| self.version_view(h, live.as_deref()))
                .collect(),
            live_version: live,
        })
    }

    fn version_view(&self, handle: &VersionHandle, live: Option<&str>) -> VersionView {
        let status = handle.status.borrow().clone();
        let head = self.store.head();
        let lag = head.saturating_sub(status.position);
        let eta_seconds = match lag {
            0 => Some(0.0),
            _ if status.events_per_second > 0.0 && status.failure.is_none() => {
                Some(lag as f64 / status.events_per_second)
            }
            _ => None,
        };
        VersionView {
            version: handle.version().to_string(),
            digest: crate::hex::hex(&handle.module.record.digest),
            live: live == Some(handle.version()),
            status,
            head,
            lag,
            eta_seconds,
            promote_when_caught_up: handle.promotion_asked(),
            uploaded_at_ms: handle.module.record.uploaded_at_ms,
            verify: handle.verify_progress(),
            last_verify: handle.last_verify(),
            // For people: an unreadable record shows as none rather than
            // failing the whole status.
            schema_versions: handle.read_model().schema_versions().unwrap_or_default(),
        }
    }

    pub fn version_status(
        &self,
        name: &str,
        version: &str,
    ) -> Result<VersionView, ProjectionError> {
        let handle = self.handle(name, version)?;
        Ok(self.version_view(&handle, self.live_version(name).as_deref()))
    }

    /// A version's handle. A registered version that is not compiled yet has
    /// none: that is said, rather than "not found".
    fn handle(&self, name: &str, version: &str) -> Result<Arc<VersionHandle>, ProjectionError> {
        if let Some(handle) = self
            .versions()
            .get(&(name.to_string(), version.to_string()))
        {
            return Ok(handle.clone());
        }
        if let Some(not_ready) = self.modules.not_ready(name, version) {
            return Err(ModuleError::NotReady(not_ready).into());
        }
        Err(ProjectionError::NotFound(format!(
            "no projection version {name}@{version}"
        )))
    }

    /// A version's handle for a read: one still compiling after a start
    /// without its artifact is waited for a little (the registry's request wait).
    async fn handle_for_read(
        &self,
        name: &str,
        version: &str,
    ) -> Result<Arc<VersionHandle>, ProjectionError> {
        if let Some(handle) = self
            .versions()
            .get(&(name.to_string(), version.to_string()))
        {
            return Ok(handle.clone());
        }
        if let Some(module) = self
            .modules
            .ready(name, version)
            .await
            .map_err(ModuleError::NotReady)?
            && module.projection().is_some()
        {
            // Compiled meanwhile: the registry tells this service, but this read
            // need not wait for that (starting the same version twice is a no-op).
            self.on_version(module, false)?;
        }
        self.handle(name, version)
    }

    /// The version reads go to: `version` if given, else the live one.
    pub async fn read_target(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> Result<Arc<VersionHandle>, ProjectionError> {
        if let Some(version) = version {
            return self.handle_for_read(name, version).await;
        }
        match self.live_version(name) {
            Some(live) => self.handle_for_read(name, &live).await,
            None => {
                let view = self.view(name)?;
                let detail = view
                    .versions
                    .iter()
                    .map(|v| {
                        format!(
                            "{} is {:?} at position {} of {}",
                            v.version, v.status.state, v.status.position, v.head
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("; ");
                Err(ProjectionError::NotLive {
                    name: name.to_string(),
                    detail: format!(": {detail}; read one with ?version="),
                })
            }
        }
    }

    /// Makes `version` live. Refuses while it lags or has failed, unless forced.
    pub fn promote(
        &self,
        name: &str,
        version: &str,
        force: bool,
    ) -> Result<VersionView, ProjectionError> {
        let handle = self.handle(name, version)?;
        {
            let _one_at_a_time = self.live.lock().unwrap_or_else(|e| e.into_inner());
            if handle.held.load(Ordering::Acquire) {
                return Err(ProjectionError::NotFound(format!(
                    "{} is being rebuilt or dropped",
                    handle.label()
                )));
            }
            let status = handle.status.borrow().clone();
            if !force {
                // A failed version lags too: its checkpoint is before the failing event.
                let head = self.store.head();
                if status.position < head {
                    return Err(ProjectionError::Lagging {
                        label: handle.label(),
                        position: status.position,
                        head,
                        lag: head - status.position,
                    });
                }
            }
            self.modules.set_live(name, version)?;
            // An explicit promotion overrides earlier "promote when caught up" wishes.
            for other in self.versions().values() {
                if other.name() == name {
                    other.take_promotion_ask();
                }
            }
        }
        self.version_status(name, version)
    }

    /// Retries the failing event of a stopped version.
    pub async fn retry(&self, name: &str, version: &str) -> Result<VersionView, ProjectionError> {
        let handle = self.handle(name, version)?;
        if handle.status.borrow().failure.is_none() {
            return Err(ProjectionError::NotFailed(format!(
                "{} has not failed; there is nothing to retry",
                handle.label()
            )));
        }
        let control = handle.control().ok_or(ProjectionError::Closed)?;
        control
            .send(Control::Retry)
            .await
            .map_err(|_| ProjectionError::Closed)?;
        self.version_status(name, version)
    }

    /// Skips the failing event at `position`, which is recorded with its failure.
    pub async fn skip(
        &self,
        name: &str,
        version: &str,
        position: Position,
    ) -> Result<VersionView, ProjectionError> {
        let handle = self.handle(name, version)?;
        if handle.status.borrow().failure.is_none() {
            return Err(ProjectionError::NotFailed(format!(
                "{} has not failed; only a failing event can be skipped",
                handle.label()
            )));
        }
        let control = handle.control().ok_or(ProjectionError::Closed)?;
        let (reply, answer) = oneshot::channel();
        control
            .send(Control::Skip { position, reply })
            .await
            .map_err(|_| ProjectionError::Closed)?;
        answer
            .await
            .map_err(|_| ProjectionError::Closed)?
            .map_err(ProjectionError::NotFailed)?;
        self.version_status(name, version)
    }

    pub fn skips(&self, name: &str, version: &str) -> Result<Vec<SkipRecord>, ProjectionError> {
        Ok(self.handle(name, version)?.read_model().skips()?)
    }

    /// Empties a version's read model and replays it from the start of the log.
    /// The live version is rebuilt only when forced: its readers would see it empty.
    pub async fn rebuild(
        self: &Arc<Self>,
        name: &str,
        version: &str,
        force: bool,
    ) -> Result<VersionView, ProjectionError> {
        let handle = self.handle(name, version)?;
        // In a task of its own: a client that goes away must not leave the
        // version half reset, without a runner.
        let service = self.clone();
        let task_handle = handle.clone();
        tokio::spawn(async move { service.rebuild_now(&task_handle, force).await })
            .await
            .map_err(|e| ProjectionError::Internal(format!("the rebuild task failed: {e}")))??;
        self.version_status(name, version)
    }

    async fn rebuild_now(
        &self,
        handle: &Arc<VersionHandle>,
        force: bool,
    ) -> Result<(), ProjectionError> {
        let _one_action = handle.ops.lock().await;
        {
            let _one_at_a_time = self.live.lock().unwrap_or_else(|e| e.into_inner());
            if !force && self.live_version(handle.name()).as_deref() == Some(handle.version()) {
                return Err(ProjectionError::IsLive(
                    handle.label(),
                    "; or force the rebuild, and its readers see it empty until it catches up",
                ));
            }
            handle.held.store(true, Ordering::Release);
        }
        Self::stop_runner(handle).await;
        let (store, name, version) = (
            self.store.clone(),
            handle.name().to_string(),
            handle.version().to_string(),
        );
        let reset = tokio::task::spawn_blocking(move || store.reset_read_model(&name, &version))
            .await
            .map_err(|e| ProjectionError::Internal(format!("the rebuild task failed: {e}")));
        let outcome = match reset {
            Ok(Ok(model)) => {
                let _no_commits = handle.commit_lock.lock().unwrap_or_else(|e| e.into_inner());
                *handle.read_model.write().unwrap_or_else(|e| e.into_inner()) = model;
                handle.status.send_replace(initial_status(0, 0, 0));
                tracing::info!(projection = %handle.label(), "rebuilding from the start of the log");
                Ok(())
            }
            Ok(Err(err)) => Err(err.into()),
            Err(err) => Err(err),
        };
        handle.held.store(false, Ordering::Release);
        // Whatever happened, the version keeps a runner (it resumes from its checkpoint).
        if !self.closed.load(Ordering::Acquire) {
            self.start_runner(handle);
        }
        outcome
    }

    /// Deletes a version and its read model. The live version cannot be dropped.
    pub async fn drop_version(
        self: &Arc<Self>,
        name: &str,
        version: &str,
    ) -> Result<(), ProjectionError> {
        let handle = self.handle(name, version)?;
        let service = self.clone();
        tokio::spawn(async move { service.drop_now(&handle).await })
            .await
            .map_err(|e| ProjectionError::Internal(format!("the drop task failed: {e}")))?
    }

    async fn drop_now(&self, handle: &Arc<VersionHandle>) -> Result<(), ProjectionError> {
        let _one_action = handle.ops.lock().await;
        let key = (handle.name().to_string(), handle.version().to_string());
        {
            let _one_at_a_time = self.live.lock().unwrap_or_else(|e| e.into_inner());
            if self.live_version(&key.0).as_deref() == Some(&key.1) {
                return Err(ProjectionError::IsLive(handle.label(), ""));
            }
            // From here on it never goes live, no reader finds it, and no upload
            // of the same version starts until the drop is done.
            handle.held.store(true, Ordering::Release);
            self.dropping().insert(key.clone());
            self.versions().remove(&key);
        }
        Self::stop_runner(handle).await;
        // The version leaves the registry first: another host's standby runner
        // (PostgreSQL) checks it is registered before it takes the read model
        // over, so it cannot bring back what is deleted next.
        let (store, name, version) = (self.store.clone(), key.0.clone(), key.1.clone());
        let deleted = match self.modules.remove(&key.0, &key.1) {
            Ok(()) => Ok(()),
            // Not removed (made live on another host a moment ago, which the
            // store refuses to remove; or the store failed): the version is
            // still registered, so it goes on here as it was.
            Err(e) => {
                {
                    let _one_at_a_time = self.live.lock().unwrap_or_else(|e| e.into_inner());
                    handle.held.store(false, Ordering::Release);
                    self.versions().insert(key.clone(), handle.clone());
                }
                if !self.closed.load(Ordering::Acquire) {
                    self.start_runner(handle);
                }
                self.dropping().remove(&key);
                return Err(match e {
                    ModuleError::Store(StoreError::ModuleActive { .. }) => {
                        ProjectionError::IsLive(handle.label(), "")
                    }
                    e => ProjectionError::from(e),
                });
            }
        };
        let deleted = match deleted {
            Ok(()) => tokio::task::spawn_blocking(move || store.delete_read_model(&name, &version))
                .await
                .map_err(|e| ProjectionError::Internal(format!("the drop task failed: {e}")))
                .and_then(|r| r.map_err(ProjectionError::from)),
            Err(e) => Err(e),
        };
        self.dropping().remove(&key);
        deleted?;
        tracing::info!(projection = %handle.label(), "dropped");
        Ok(())
    }

    /// Waits, at most `wait`, until `handle` has processed `position`.
    pub async fn wait_for(
        &self,
        handle: &VersionHandle,
        position: Position,
        wait: Option<Duration>,
    ) -> Result<(), ProjectionError> {
        let wait = wait.unwrap_or(self.config.default_wait);
        if wait > self.config.max_wait {
            return Err(ProjectionError::InvalidRequest(format!(
                "a read waits at most {} ms",
                self.config.max_wait.as_millis()
            )));
        }
        let mut status = handle.status.subscribe();
        let reached = tokio::time::timeout(
            wait,
            status.wait_for(|s| s.position >= position || s.failure.is_some()),
        )
        .await;
        let current = handle.status.borrow().clone();
        match reached {
            Ok(Ok(_)) if current.position >= position => Ok(()),
            Ok(Ok(_)) => Err(ProjectionError::Failed {
                label: handle.label(),
                failure: Box::new(current.failure.expect("woken by a failure")),
            }),
            Ok(Err(_)) => Err(ProjectionError::Closed),
            Err(_) => Err(ProjectionError::Timeout {
                label: handle.label(),
                wanted: position,
                reached: current.position,
                head: self.store.head(),
                waited: wait,
            }),
        }
    }

    /// One document, or `None`; with the position the read reflects.
    pub fn get_document(
        &self,
        handle: &VersionHandle,
        key: &str,
    ) -> Result<(Position, Option<String>), ProjectionError> {
        let position = handle.status.borrow().position;
        Ok((position, handle.read_model().get(key)?))
    }

    pub fn scan_documents(
        &self,
        handle: &VersionHandle,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<DocsPage, ProjectionError> {
        let position = handle.status.borrow().position;
        Ok(DocsPage {
            version: handle.version().to_string(),
            position,
            documents: handle.read_model().scan(prefix, after, limit)?,
        })
    }

    /// Calls the guest's `query` export over the version's documents.
    pub async fn query(
        &self,
        handle: &VersionHandle,
        query: &str,
        args: &str,
    ) -> Result<(Position, String), ProjectionError> {
        let module = handle
            .module
            .projection()
            .expect("projection handles hold projection modules")
            .clone();
        let position = handle.status.borrow().position;
        let source = Arc::new(Documents(handle.read_model()));
        let (q, a) = (query.to_string(), args.to_string());
        let answer = self
            .runtime
            .pool()
            .run(&handle.module.record.name, move || {
                module.query(source, &q, &a)
            })
            .await?;
        match answer {
            Ok(json) => {
                // Served as the body, as is: it must be JSON every reader can take.
                crate::json_text::check(&json).map_err(|e| {
                    ProjectionError::InvalidGuestOutput {
                        module: handle.label(),
                        reason: format!("query {query:?} answered with invalid JSON: {e}"),
                    }
                })?;
                Ok((position, json))
            }
            Err(QueryFailure::UnknownQuery(_)) => Err(ProjectionError::UnknownQuery(
                handle.label(),
                query.to_string(),
            )),
            Err(QueryFailure::BadArguments(why)) => Err(ProjectionError::BadQueryArguments(
                query.to_string(),
                clip_guest_text(&why),
            )),
        }
    }

    /// What promoting `to` over `from` would change in the documents readers see.
    pub async fn diff(
        &self,
        name: &str,
        from: &str,
        to: &str,
        samples: usize,
    ) -> Result<Diff, ProjectionError> {
        let (a, b) = (self.handle(name, from)?, self.handle(name, to)?);
        tokio::task::spawn_blocking(move || compare::diff(&a, &b, samples))
            .await
            .map_err(|e| ProjectionError::Internal(format!("the diff task failed: {e}")))?
    }

    /// A digest of a version's documents at one checkpoint.
    pub async fn digest(
        &self,
        name: &str,
        version: &str,
    ) -> Result<ReadModelDigest, ProjectionError> {
        let handle = self.handle(name, version)?;
        tokio::task::spawn_blocking(move || compare::digest(&handle))
            .await
            .map_err(|e| ProjectionError::Internal(format!("the digest task failed: {e}")))?
    }
}

fn initial_status(position: Position, applied: u64, skipped: u64) -> VersionStatus {
    VersionStatus {
        state: RunState::Starting,
        position,
        events_applied: applied,
        events_skipped: skipped,
        events_per_second: 0.0,
        failure: None,
        last_replay: None,
        retrying: None,
    }
}

/// A caught-up version goes live when its projection has no live version, or
/// when its uploader asked for it. The caller knows it has caught up.
fn go_live_if_due(modules: &ModuleRegistry, live: &Mutex<()>, handle: &VersionHandle) {
    if handle.status.borrow().failure.is_some() {
        return;
    }
    let _one_at_a_time = live.lock().unwrap_or_else(|e| e.into_inner());
    if handle.held.load(Ordering::Acquire) {
        return;
    }
    // The live version counts even while it compiles after a start without its
    // artifact: another version must not take its place for that. Read from
    // the store, not this host's memory: on a shared database another host
    // may have promoted a version a moment ago.
    let ask = handle
        .promote_when_caught_up
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    if ask.is_none() && modules.active_version(handle.name()).is_some() {
        return; // nothing asked, and a version is live: the common case, no query
    }
    let current = match modules.stored_active_version(handle.name()) {
        Ok(current) => current,
        Err(err) => {
            tracing::warn!(projection = %handle.label(), "cannot read the live version: {err}");
            return;
        }
    };
    // An ask stands while the live version is still the one it was made over
    // (an ask made while none was live stands until a promotion clears it:
    // the first version going live by itself does not).
    let wanted = ask
        .as_ref()
        .is_some_and(|over| over.is_none() || *over == current);
    if current.is_none() || (wanted && current.as_deref() != Some(handle.version())) {
        match modules.set_live(handle.name(), handle.version()) {
            Ok(_) => handle.take_promotion_ask(),
            // Removed on another host: there is nothing to make live.
            Err(ModuleError::Store(StoreError::ModuleNotRegistered { .. })) => {
                handle.take_promotion_ask()
            }
            Err(err) => tracing::error!(projection = %handle.label(), "cannot go live: {err}"),
        }
    } else if ask.is_some() {
        if !wanted && current.as_deref() != Some(handle.version()) {
            tracing::info!(projection = %handle.label(), live = ?current,
                "not going live as asked: the live version changed since the ask");
        }
        handle.take_promotion_ask();
    }
}
