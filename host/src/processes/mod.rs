//! `ProcessService`: runs process managers (sagas), the third kind of module.
//!
//! One runner per active process name (`runner.rs`) reads the log, routes
//! events to instances, and has each instance take its inputs one at a time:
//! `react` decides, the instance's stream records input, events and effects
//! in one append (`react.rs`, `records.rs`), then the commands are sent
//! through the command pipeline under ids recorded with them (`dispatch.rs`)
//! and their outcomes are taken in the same way. Exactly-once rests on the
//! streams: an input recorded is never taken again, a command recorded is
//! sent until it has an outcome, and a re-sent command is answered by the
//! command record of its first acceptance.

mod dispatch;
mod react;
mod records;
mod runner;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::sync::watch;

pub use react::{
    COMMAND_ID_PREFIX, MAX_COMMANDS_PER_REACTION, MAX_DEADLINES, MAX_EVENTS_PER_REACTION,
    MAX_KEY_LEN, MAX_PENDING_COMMANDS, MAX_PROCESS_COMMAND_BYTES, command_id,
};
pub use records::{RECORD_PREFIX, stream_type};
pub use runner::{MAX_BUSY, MAX_QUEUED, MAX_STALLED};

use crate::commands::CommandService;
use crate::modules::ModuleRegistry;
use crate::runtime::process_types::ProcessStatus;
use crate::runtime::{GuestError, Runtime};
use crate::store::ModuleKind;
use crate::store::{Backend, Direction, RecordedEvent, StoreError, StreamId};
use dispatch::Outcome;

/// What every part of one process's runner shares.
pub(crate) struct Shared {
    name: String,
    store: Backend,
    commands: Arc<CommandService>,
    modules: Arc<ModuleRegistry>,
    runtime: Arc<Runtime>,
    counters: Arc<Counters>,
}

/// Running totals of one process, for status and `/metrics`.
#[derive(Debug, Default)]
pub struct Counters {
    pub reactions: AtomicU64,
    pub commands_sent: AtomicU64,
    pub accepted: AtomicU64,
    pub rejected: AtomicU64,
    pub retries: AtomicU64,
}

impl Counters {
    fn note_reaction(&self, commands: usize) {
        self.reactions.fetch_add(1, Ordering::Relaxed);
        self.commands_sent
            .fetch_add(commands as u64, Ordering::Relaxed);
    }

    fn note_outcome(&self, outcome: &Outcome) {
        match outcome {
            Outcome::Accepted { .. } => &self.accepted,
            Outcome::Rejected { .. } => &self.rejected,
        }
        .fetch_add(1, Ordering::Relaxed);
    }

    fn note_retry(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }
}

/// Where a process instance stands, as the runner last saw it.
#[derive(Clone, Debug, Serialize)]
pub struct InstanceSummary {
    #[serde(serialize_with = "serialize_status")]
    pub status: ProcessStatus,
    pub version: u64,
    pub pending_commands: usize,
    pub next_deadline_ms: Option<u64>,
    /// Why the instance is stopped at an input, if it is.
    pub stalled: Option<String>,
}

/// The runner's own state.
#[derive(Clone, Debug, Default)]
pub struct RunnerStatus {
    /// Every log event up to here has been taken in (or routed nowhere).
    pub checkpoint: u64,
    pub head: u64,
    pub queued_inputs: usize,
    pub busy_instances: usize,
    pub stalled_instances: usize,
    /// Read up to the head, nothing waiting.
    pub caught_up: bool,
    /// Why the runner does not read on (a failing `route` or subscription).
    pub failure: Option<String>,
    /// Another host holds the process's lease and runs it (PostgreSQL).
    pub standby: bool,
}

pub(crate) struct RunnerHandle {
    status: watch::Sender<RunnerStatus>,
    instances: Mutex<BTreeMap<String, InstanceSummary>>,
    counters: Arc<Counters>,
}

impl RunnerHandle {
    fn set_failure(&self, failure: Option<String>) {
        self.status.send_if_modified(|s| {
            let changed = s.failure != failure;
            s.failure = failure;
            changed
        });
    }

    fn summarise(&self, instance: &records::Instance, stalled: Option<String>) {
        self.instances
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(instance.id.clone(), InstanceSummary::of(instance, stalled));
    }

    fn set_stalled(&self, id: &str, stalled: Option<String>) {
        let mut instances = self.instances.lock().unwrap_or_else(|e| e.into_inner());
        match instances.get_mut(id) {
            Some(summary) => summary.stalled = stalled,
            None => {
                instances.insert(
                    id.to_string(),
                    InstanceSummary {
                        status: ProcessStatus::Running,
                        version: 0,
                        pending_commands: 0,
                        next_deadline_ms: None,
                        stalled,
                    },
                );
            }
        }
    }
}

fn serialize_status<S: serde::Serializer>(status: &ProcessStatus, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(status_name(*status))
}

pub fn status_name(status: ProcessStatus) -> &'static str {
    match status {
        ProcessStatus::Running => "running",
        ProcessStatus::Completed => "completed",
        ProcessStatus::Failed => "failed",
    }
}

pub fn parse_status(text: &str) -> Option<ProcessStatus> {
    match text {
        "running" => Some(ProcessStatus::Running),
        "completed" => Some(ProcessStatus::Completed),
        "failed" => Some(ProcessStatus::Failed),
        _ => None,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("no process named {0:?} is active; upload one under that name")]
    UnknownProcess(String),
    #[error("process {name} has no instance {id:?}")]
    UnknownInstance { name: String, id: String },
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("{0}")]
    Guest(#[from] GuestError),
    #[error(transparent)]
    NotReady(#[from] crate::modules::NotReady),
    #[error("the instance could not be folded: {0}")]
    Fold(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ProcessError {
    pub fn code(&self) -> &'static str {
        match self {
            ProcessError::UnknownProcess(_) => "unknown_process",
            ProcessError::UnknownInstance { .. } => "unknown_instance",
            ProcessError::InvalidRequest(_) => "invalid_request",
            ProcessError::Guest(g) => g.code(),
            ProcessError::NotReady(n) => n.code(),
            ProcessError::Fold(_) => "process_fold_failed",
            ProcessError::Store(s) => s.code(),
        }
    }
}

/// A process, for `GET /v1/processes`.
#[derive(Clone, Debug, Serialize)]
pub struct ProcessView {
    pub name: String,
    /// The active version.
    pub version: Option<String>,
    pub checkpoint: u64,
    pub head: u64,
    /// Log positions not yet taken in.
    pub lag: u64,
    pub caught_up: bool,
    /// Another host runs the process (PostgreSQL: it holds the lease); this
    /// host's counts are what it saw while it last ran it.
    pub standby: bool,
    pub failure: Option<String>,
    pub instances: StatusCounts,
    pub pending_commands: usize,
    pub next_deadline_ms: Option<u64>,
    pub queued_inputs: usize,
    pub busy_instances: usize,
    pub stalled_instances: usize,
    pub reactions: u64,
    pub commands_sent: u64,
    pub commands_accepted: u64,
    pub commands_rejected: u64,
    pub command_retries: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct StatusCounts {
    pub running: usize,
    pub completed: usize,
    pub failed: usize,
}

/// A page of a process's instances.
#[derive(Clone, Debug, Serialize)]
pub struct InstancePage {
    pub instances: Vec<InstanceListed>,
    /// Pass as `after` for the next page; none when this is the last.
    pub next: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct InstanceListed {
    pub id: String,
    #[serde(flatten)]
    pub summary: InstanceSummary,
}

/// One instance, for `GET /v1/processes/{name}/{id}`: folded from its stream
/// by the active version when asked.
#[derive(Clone, Debug)]
pub struct InstanceView {
    pub name: String,
    pub id: String,
    pub stream: StreamId,
    pub version: u64,
    pub status: ProcessStatus,
    pub folded_by: String,
    /// The state as the process renders it (JSON).
    pub state: String,
    pub pending_commands: Vec<PendingCommand>,
    pub deadlines: Vec<PendingDeadline>,
    pub next_deadline_ms: Option<u64>,
    pub last_position: u64,
    pub inputs: u64,
    pub stalled: Option<String>,
    /// The stream, oldest first, from `history_from`.
    pub history: Vec<RecordedEvent>,
}

#[derive(Clone, Debug, Serialize)]
pub struct PendingCommand {
    pub command_id: String,
    pub key: String,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub command: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct PendingDeadline {
    pub key: String,
    pub at_ms: u64,
}

/// The most history records one instance read returns.
pub const MAX_HISTORY: usize = 1000;

pub struct ProcessService {
    store: Backend,
    commands: Arc<CommandService>,
    modules: Arc<ModuleRegistry>,
    runners: Mutex<HashMap<String, Arc<RunnerHandle>>>,
    stop: watch::Sender<bool>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// This service's name as a lease holder (PostgreSQL).
    holder: String,
}

impl ProcessService {
    /// Starts a runner for every active process, and for each process
    /// activated later.
    pub fn start(
        store: Backend,
        commands: Arc<CommandService>,
        modules: Arc<ModuleRegistry>,
    ) -> Arc<ProcessService> {
        let service = Arc::new(ProcessService {
            store,
            commands,
            modules,
            runners: Mutex::new(HashMap::new()),
            stop: watch::Sender::new(false),
            tasks: Mutex::new(Vec::new()),
            holder: crate::projections::tenure::holder_name(),
        });
        service.start_new_runners();
        let watcher = service.clone();
        let mut activations = service.modules.watch_activations();
        let mut stop = service.stop.subscribe();
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    changed = activations.changed() => {
                        if changed.is_err() { break; }
                        watcher.start_new_runners();
                    }
                    _ = stop.wait_for(|s| *s) => break,
                }
            }
        });
        service
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(task);
        service
    }

    fn start_new_runners(&self) {
        if *self.stop.borrow() {
            return;
        }
        let mut runners = self.runners.lock().unwrap_or_else(|e| e.into_inner());
        for name in self.modules.active_processes() {
            if runners.contains_key(&name) {
                continue;
            }
            let counters = Arc::new(Counters::default());
            let handle = Arc::new(RunnerHandle {
                status: watch::Sender::new(RunnerStatus::default()),
                instances: Mutex::new(BTreeMap::new()),
                counters: counters.clone(),
            });
            let shared = Arc::new(Shared {
                name: name.clone(),
                store: self.store.clone(),
                commands: self.commands.clone(),
                modules: self.modules.clone(),
                runtime: self.modules.runtime().clone(),
                counters,
            });
            tracing::info!(process = %name, "starting the process runner");
            let task = tokio::spawn(run_leased(
                shared,
                handle.clone(),
                self.stop.subscribe(),
                self.holder.clone(),
            ));
            self.tasks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(task);
            runners.insert(name, handle);
        }
    }

    /// Stops every runner; what each committed stays, the rest is taken up
    /// after the next start.
    pub async fn shutdown(&self) {
        self.stop.send_replace(true);
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        for task in tasks {
            let _ = task.await;
        }
    }

    fn handle(&self, name: &str) -> Result<Arc<RunnerHandle>, ProcessError> {
        self.runners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
            .ok_or_else(|| ProcessError::UnknownProcess(name.to_string()))
    }

    pub fn list(&self) -> Vec<ProcessView> {
        let mut names: Vec<String> = self
            .runners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect();
        names.sort();
        names.iter().filter_map(|n| self.get(n).ok()).collect()
    }

    pub fn get(&self, name: &str) -> Result<ProcessView, ProcessError> {
        let handle = self.handle(name)?;
        let status = handle.status.borrow().clone();
        let mut counts = StatusCounts::default();
        let (mut pending, mut next_deadline) = (0, None::<u64>);
        for summary in handle
            .instances
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
        {
            match summary.status {
                ProcessStatus::Running => counts.running += 1,
                ProcessStatus::Completed => counts.completed += 1,
                ProcessStatus::Failed => counts.failed += 1,
            }
            pending += summary.pending_commands;
            if let Some(at) = summary.next_deadline_ms {
                next_deadline = Some(next_deadline.map_or(at, |n| n.min(at)));
            }
        }
        let c = &handle.counters;
        let head = self.store.head();
        Ok(ProcessView {
            name: name.to_string(),
            version: self.modules.active_version(name),
            checkpoint: status.checkpoint,
            head,
            lag: head.saturating_sub(status.checkpoint),
            caught_up: status.caught_up && status.checkpoint >= head,
            standby: status.standby,
            failure: status.failure,
            instances: counts,
            pending_commands: pending,
            next_deadline_ms: next_deadline,
            queued_inputs: status.queued_inputs,
            busy_instances: status.busy_instances,
            stalled_instances: status.stalled_instances,
            reactions: c.reactions.load(Ordering::Relaxed),
            commands_sent: c.commands_sent.load(Ordering::Relaxed),
            commands_accepted: c.accepted.load(Ordering::Relaxed),
            commands_rejected: c.rejected.load(Ordering::Relaxed),
            command_retries: c.retries.load(Ordering::Relaxed),
        })
    }

    /// Instances of `name` in id order after `after`, optionally only those in `status`.
    pub fn instances(
        &self,
        name: &str,
        status: Option<ProcessStatus>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<InstancePage, ProcessError> {
        let handle = self.handle(name)?;
        let instances = handle.instances.lock().unwrap_or_else(|e| e.into_inner());
        let range = match after {
            Some(after) => instances
                .range::<str, _>((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded)),
            None => instances.range::<str, _>(..),
        };
        let mut listed: Vec<InstanceListed> = Vec::new();
        let mut next = None;
        for (id, summary) in range {
            if status.is_some_and(|s| s != summary.status) {
                continue;
            }
            if listed.len() == limit {
                next = listed.last().map(|l| l.id.clone());
                break;
            }
            listed.push(InstanceListed {
                id: id.clone(),
                summary: summary.clone(),
            });
        }
        Ok(InstancePage {
            instances: listed,
            next,
        })
    }

    /// One instance, folded from its stream by the active version now.
    pub async fn instance(
        &self,
        name: &str,
        id: &str,
        history_from: u64,
        history_limit: usize,
    ) -> Result<InstanceView, ProcessError> {
        let handle = self.handle(name)?;
        let module = self
            .modules
            .active_ready(name, ModuleKind::Process)
            .await?
            .ok_or_else(|| ProcessError::UnknownProcess(name.to_string()))?;
        let stream = StreamId::new(stream_type(name), id)
            .map_err(|e| ProcessError::InvalidRequest(e.to_string()))?;
        // An instance stopped at its first input has written nothing yet,
        // but the runner knows it: its page says why it is stopped.
        let known = handle
            .instances
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(id);
        if !known && self.store.stream_version(&stream)? == 0 {
            return Err(ProcessError::UnknownInstance {
                name: name.to_string(),
                id: id.to_string(),
            });
        }
        let guest = module.process().expect("a process module").clone();
        let (store, digest, fold_stream) =
            (self.store.clone(), module.record.digest, stream.clone());
        let (instance, rendered) = self
            .modules
            .runtime()
            .pool()
            .run(name, move || {
                let instance = records::fold(&guest, digest, &store, &fold_stream)
                    .map_err(ProcessError::Fold)?;
                let rendered = guest.render(&instance.state)?;
                Ok::<_, ProcessError>((instance, rendered))
            })
            .await?;
        crate::json_text::check(&rendered).map_err(|e| {
            ProcessError::Fold(format!("render returned text that is not JSON: {e}"))
        })?;
        let history = self.store.read_stream(
            &stream,
            history_from.max(1),
            Direction::Forward,
            history_limit.min(MAX_HISTORY),
        )?;
        let stalled = handle
            .instances
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .and_then(|s| s.stalled.clone());
        Ok(InstanceView {
            name: name.to_string(),
            id: id.to_string(),
            stream,
            version: instance.version,
            status: instance.status,
            folded_by: module.label(),
            state: rendered,
            pending_commands: instance
                .pending
                .iter()
                .map(|c| PendingCommand {
                    command_id: c.command_id.clone(),
                    key: c.key.clone(),
                    aggregate_type: c.aggregate_type.clone(),
                    aggregate_id: c.aggregate_id.clone(),
                    command: c.command.clone(),
                })
                .collect(),
            deadlines: instance
                .live_deadlines()
                .map(|(key, at_ms)| PendingDeadline {
                    key: key.clone(),
                    at_ms: *at_ms,
                })
                .collect(),
            next_deadline_ms: instance.next_deadline(),
            last_position: instance.last_position,
            inputs: instance.inputs,
            stalled,
            history,
        })
    }
}

/// Runs a process's runner: on sled at once; on PostgreSQL only while this
/// host holds the process's lease (one runner per process across all hosts:
/// `projections::tenure`). A runner whose lease moves to another host stops
/// where it is (what it committed is in the instances' streams) and this
/// host stands by again.
async fn run_leased(
    shared: Arc<Shared>,
    handle: Arc<RunnerHandle>,
    mut stop: watch::Receiver<bool>,
    holder: String,
) {
    use crate::projections::tenure::{STANDBY_POLL, Tenure};
    let lease = format!("process:{}", shared.name);
    let Some(mut tenure) = Tenure::new(&shared.store, lease, &holder) else {
        runner::Runner::new(shared, handle, stop).run().await;
        return;
    };
    loop {
        handle.status.send_modify(|s| s.standby = true);
        loop {
            if *stop.borrow() {
                return;
            }
            match tenure.try_take().await {
                Ok(Some(_)) => break,
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(process = %shared.name, error = %e, "cannot take the process lease")
                }
            }
            tokio::select! {
                () = stopped(&mut stop) => return,
                _ = tokio::time::sleep(STANDBY_POLL) => {}
            }
        }
        handle.status.send_modify(|s| s.standby = false);
        let (inner_stop, inner_stop_rx) = watch::channel(false);
        let mut task =
            tokio::spawn(runner::Runner::new(shared.clone(), handle.clone(), inner_stop_rx).run());
        tokio::select! {
            () = stopped(&mut stop) => {
                inner_stop.send_replace(true);
                let _ = task.await;
                tenure.release().await;
                return;
            }
            _ = tenure.until_lost() => {
                inner_stop.send_replace(true);
                let _ = task.await;
                tenure.lost();
            }
            _ = &mut task => {
                tenure.release().await;
                return;
            }
        }
    }
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}
