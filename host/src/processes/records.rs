//! What the runner writes into an instance's stream besides the process's own
//! events, and how an instance is folded back from that stream.
//!
//! An instance's stream (`process:<name>/<id>`) interleaves two kinds of
//! events. The process's own, which `apply` folds, and the runner's records,
//! whose types start with [`RECORD_PREFIX`] and which `apply` never sees:
//!
//! - an input, first in every append: [`RECEIVED`] (a log event, by
//!   position), [`ACCEPTED`] / [`REJECTED`] (a command's outcome) or
//!   [`FIRED`] (a deadline);
//! - then the process's events for that input;
//! - then [`COMMAND`] (one per command to send, with the id it is sent
//!   under) and [`WAKE_UP`] (one per deadline asked for).
//!
//! One append per input, so an input, what the process made of it and the
//! effects it asked for are durable together or not at all. Folding the
//! records gives the runner's bookkeeping: the last log position taken in (a
//! log event at or before it is a repeat), the commands without an outcome
//! yet (sent again after a restart, under the same ids), the pending
//! deadlines.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::runtime::process_types::ProcessStatus;
use crate::runtime::{ProcessModule, StreamEvent};
use crate::store::{Direction, RecordedEvent, StreamId};

/// Every runner record's type starts with this; a process's own event types may not.
pub const RECORD_PREFIX: &str = "refold.";
pub const RECEIVED: &str = "refold.received";
pub const ACCEPTED: &str = "refold.accepted";
pub const REJECTED: &str = "refold.rejected";
pub const FIRED: &str = "refold.fired";
pub const COMMAND: &str = "refold.command";
pub const WAKE_UP: &str = "refold.wake-up";

/// The aggregate type of process `name`'s instance streams.
pub fn stream_type(name: &str) -> String {
    format!("process:{name}")
}

/// A log event an instance took in.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Received {
    pub position: u64,
    pub event_id: String,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub event_type: String,
    pub now_ms: u64,
}

/// A command the instance asked for, with the id the runner sends it under.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    pub command_id: String,
    pub key: String,
    pub aggregate_type: String,
    pub aggregate_id: String,
    /// JSON text, as the process gave it.
    pub command: String,
}

/// The target accepted a command.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Accepted {
    pub command_id: String,
    pub key: String,
    pub now_ms: u64,
    /// The target's version after the command.
    pub version: u64,
    /// Where its events are in the log (none: it accepted without a change).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_position: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_position: Option<u64>,
}

/// The target refused a command (`code`), or did not understand it (`malformed`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Rejected {
    pub command_id: String,
    pub key: String,
    pub now_ms: u64,
    pub code: String,
    pub message: String,
    pub malformed: bool,
}

/// A deadline the instance asked for fired.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Fired {
    pub key: String,
    pub at_ms: u64,
    pub now_ms: u64,
}

/// A deadline asked for (a pending one with the same key moves).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WakeUp {
    pub key: String,
    pub at_ms: u64,
}

/// An instance as the runner holds it: the process's state and the runner's
/// bookkeeping, both folded from the instance's stream.
#[derive(Clone, Debug)]
pub struct Instance {
    pub id: String,
    pub stream: StreamId,
    /// The stream's version: the next append expects exactly this.
    pub version: u64,
    pub state: Arc<Vec<u8>>,
    /// The digest of the module version that folded `state`.
    pub folded_by: [u8; 32],
    pub status: ProcessStatus,
    /// The last log position taken in.
    pub last_position: u64,
    /// Commands recorded without an outcome yet, in the order they are sent.
    pub pending: VecDeque<Command>,
    /// Pending deadlines by key.
    pub deadlines: BTreeMap<String, u64>,
    /// How many inputs the instance has taken in.
    pub inputs: u64,
}

impl Instance {
    /// The deadlines that will fire: those of a running instance. A
    /// finished one (completed or failed) is woken by nothing; the wake-ups
    /// it asked for stay on record.
    pub fn live_deadlines(&self) -> impl Iterator<Item = (&String, &u64)> {
        let running = self.status == ProcessStatus::Running;
        self.deadlines.iter().filter(move |_| running)
    }

    pub fn next_deadline(&self) -> Option<u64> {
        self.live_deadlines().map(|(_, at)| *at).min()
    }

    /// Folds a runner record into the bookkeeping. A record that does not
    /// decode is damage, not something to skip.
    pub fn note(&mut self, event: &RecordedEvent) -> Result<(), String> {
        fn decode<T: serde::de::DeserializeOwned>(event: &RecordedEvent) -> Result<T, String> {
            serde_json::from_str(&event.data).map_err(|e| {
                format!(
                    "the runner record {} at version {} of {} does not decode: {e}",
                    event.event_type, event.version, event.stream
                )
            })
        }
        match event.event_type.as_str() {
            RECEIVED => {
                let r: Received = decode(event)?;
                self.last_position = self.last_position.max(r.position);
                self.inputs += 1;
            }
            ACCEPTED => {
                let r: Accepted = decode(event)?;
                self.pending.retain(|c| c.command_id != r.command_id);
                self.inputs += 1;
            }
            REJECTED => {
                let r: Rejected = decode(event)?;
                self.pending.retain(|c| c.command_id != r.command_id);
                self.inputs += 1;
            }
            FIRED => {
                let r: Fired = decode(event)?;
                if self.deadlines.get(&r.key) == Some(&r.at_ms) {
                    self.deadlines.remove(&r.key);
                }
                self.inputs += 1;
            }
            COMMAND => self.pending.push_back(decode(event)?),
            WAKE_UP => {
                let r: WakeUp = decode(event)?;
                self.deadlines.insert(r.key, r.at_ms);
            }
            other => return Err(format!("{other} is no runner record this host knows")),
        }
        Ok(())
    }
}

/// The most events of an instance's own folded in one `apply` call.
const FOLD_BATCH: usize = 256;
/// The most event bytes handed to one `apply` call.
const FOLD_BYTES: usize = 1 << 20;

/// Reads `stream` from the start and folds it under `module`: the state
/// through `apply`, the bookkeeping through [`Instance::note`]. Runs on a
/// guest thread (it calls the guest, and reads the store synchronously).
pub fn fold(
    module: &ProcessModule,
    digest: [u8; 32],
    store: &crate::store::Backend,
    stream: &StreamId,
) -> Result<Instance, String> {
    let mut instance = Instance {
        id: stream.aggregate_id().to_string(),
        stream: stream.clone(),
        version: 0,
        state: Arc::new(module.initial_state().map_err(|e| e.to_string())?),
        folded_by: digest,
        status: ProcessStatus::Running,
        last_position: 0,
        pending: VecDeque::new(),
        deadlines: BTreeMap::new(),
        inputs: 0,
    };
    let mut batch: Vec<StreamEvent> = Vec::new();
    let mut versions: Vec<u32> = Vec::new();
    let (mut bytes, mut reactions) = (0usize, 0usize);
    let flush = |instance: &mut Instance,
                 batch: &mut Vec<StreamEvent>,
                 versions: &mut Vec<u32>,
                 bytes: &mut usize,
                 reactions: &mut usize|
     -> Result<(), String> {
        if !batch.is_empty() {
            let state = module
                .apply(&instance.state, batch, versions, *reactions)
                .map_err(|e| format!("apply failed folding {}: {e}", instance.stream))?;
            instance.state = Arc::new(state);
        }
        batch.clear();
        versions.clear();
        *bytes = 0;
        *reactions = 0;
        Ok(())
    };
    loop {
        let events = store
            .read_stream(stream, instance.version + 1, Direction::Forward, 512)
            .map_err(|e| e.to_string())?;
        if events.is_empty() {
            break;
        }
        for event in &events {
            instance.version = event.version;
            if event.event_type.starts_with(RECORD_PREFIX) {
                if event.event_type != COMMAND && event.event_type != WAKE_UP {
                    reactions += 1;
                }
                instance.note(event)?;
                continue;
            }
            bytes += event.data.len();
            batch.push(crate::commands::to_stream_event(event));
            versions.push(event.schema_version);
            if batch.len() >= FOLD_BATCH || bytes >= FOLD_BYTES {
                flush(
                    &mut instance,
                    &mut batch,
                    &mut versions,
                    &mut bytes,
                    &mut reactions,
                )?;
            }
        }
    }
    flush(
        &mut instance,
        &mut batch,
        &mut versions,
        &mut bytes,
        &mut reactions,
    )?;
    instance.status = module.status(&instance.state).map_err(|e| e.to_string())?;
    Ok(instance)
}
