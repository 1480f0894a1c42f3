//! What a process author implements ([`Process`]) and sees ([`ProcessInput`],
//! [`Reaction`]).
//!
//! A process (a saga, a process manager) coordinates aggregates: it reacts to
//! events of the log, to the outcomes of the commands it sent and to deadlines
//! it set, by sending more commands. It never calls an aggregate itself: it
//! only says what it wants sent, and the runner sends it after the decision
//! is committed, under a command id derived from the decision, so a crash
//! between deciding and sending neither loses the command nor sends it twice.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::codec::{self, CommandFailure};
use crate::{Envelope, Schema, Selector};

/// A process manager. Each instance (a transfer, an order) keeps its state
/// like an aggregate does: folded by [`apply`](Process::apply) from the
/// instance's own events, which [`react`](Process::react) decides on.
///
/// - The state (`Self`) is kept as postcard bytes and rendered as JSON, as for
///   aggregates.
/// - `LogEvent` and `Event` are JSON at the boundary: tag both enums with
///   `#[serde(tag = "type")]`.
/// - Everything is pure: no clock but [`ProcessContext::now_ms`], no I/O. What
///   `react` decides is recorded, so only `apply` ever runs again on replay,
///   and a new version of the module must fold the old versions' events.
pub trait Process: Default + Serialize + DeserializeOwned {
    /// The log events it subscribes to. Every event the
    /// [`subscription`](Process::subscription) admits must decode: a failure
    /// stops the runner at that event.
    type LogEvent: DeserializeOwned;
    /// The instance's own events.
    type Event: Serialize + DeserializeOwned;

    /// The log events it wants; [`route`](Process::route) sees no others.
    fn subscription() -> Selector;

    /// Which instance a log event belongs to, or `None` to let it pass. Most
    /// processes take the id from the event (a transfer id); it must be 1 to
    /// 256 bytes.
    fn route(event: &Envelope<Self::LogEvent>) -> Option<String>;

    /// Decides what one input means for this instance. An `Err` is a bug (an
    /// input the process cannot make sense of), not a business outcome: the
    /// runner stops the instance there. A business failure is an event.
    fn react(
        &self,
        context: &ProcessContext,
        input: ProcessInput<Envelope<Self::LogEvent>>,
    ) -> Result<Reaction<Self::Event>, String>;

    /// The state after one of the instance's events. Must accept every event
    /// `react` ever produced, in every version of the module.
    fn apply(self, event: &Self::Event) -> Self;

    /// Where the instance stands; readers filter on it.
    fn status(&self) -> ProcessStatus;

    /// The schema versions of its own events and the upcasters for older
    /// events, its own and the log's it routes and reacts to ([`Schema`],
    /// keyed by event type). The events of an accepted command's outcome
    /// are given as the target just wrote them, not upcast.
    fn schema() -> Schema {
        Schema::new()
    }
}

/// What the runner tells a process about the input it reacts to.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ProcessContext {
    /// The instance the input belongs to.
    pub process_id: String,
    /// Unix milliseconds when the runner took the input in: the only "now"
    /// there is, and the base for deadlines.
    pub now_ms: u64,
}

/// One input of an instance. `T` is the log event: an [`Envelope`] of the
/// process's `LogEvent` for the process, a [`RawEvent`](codec::RawEvent) at
/// the boundary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProcessInput<T> {
    /// An event of the log routed to this instance.
    Event(T),
    /// A command this instance sent was accepted.
    Accepted(Accepted),
    /// A command this instance sent was refused, or not understood.
    Rejected(Rejected),
    /// A deadline this instance asked for has passed.
    Deadline(Deadline),
}

/// A command a process wants sent to an aggregate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessCommand {
    /// What the command is for, in the process's words; it comes back with
    /// the outcome ([`Accepted::command`], [`Rejected::command`]).
    pub key: String,
    pub aggregate_type: String,
    pub aggregate_id: String,
    /// JSON text, as a client would send it.
    pub command: String,
}

impl ProcessCommand {
    /// A command given as the target aggregate's own command type, so a typo
    /// in a field is a compile error rather than a rejection at run time.
    ///
    /// # Panics
    /// If `command` does not serialize to JSON, which a derived `Serialize`
    /// of plain data never does.
    pub fn new<C: Serialize>(
        key: impl Into<String>,
        aggregate_type: impl Into<String>,
        aggregate_id: impl Into<String>,
        command: &C,
    ) -> Self {
        ProcessCommand {
            key: key.into(),
            aggregate_type: aggregate_type.into(),
            aggregate_id: aggregate_id.into(),
            command: serde_json::to_string(command).expect("a command serializes to JSON"),
        }
    }
}

/// An event the target aggregate appended when it accepted a command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutcomeEvent {
    /// Its version in the target's stream.
    pub version: u64,
    pub event_id: String,
    pub event_type: String,
    /// JSON text: the fields without the `type` tag.
    pub data: String,
}

impl OutcomeEvent {
    /// Decodes it as the target aggregate's event type.
    pub fn decode<E: DeserializeOwned>(&self) -> Result<E, String> {
        codec::decode_event(&self.event_type, &self.data)
    }
}

/// The outcome of a command that the target accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accepted {
    /// The command as the process asked for it.
    pub command: ProcessCommand,
    /// The id the runner sent it under.
    pub command_id: String,
    /// What it appended to the target's stream.
    pub events: Vec<OutcomeEvent>,
}

impl Accepted {
    /// The appended events, decoded as the target aggregate's event type.
    pub fn decode_events<E: DeserializeOwned>(&self) -> Result<Vec<E>, String> {
        self.events.iter().map(OutcomeEvent::decode).collect()
    }
}

/// The outcome of a command that the target refused or did not understand.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejected {
    pub command: ProcessCommand,
    pub command_id: String,
    pub failure: CommandFailure,
}

impl Rejected {
    /// The rejection's code, or `malformed` for a command the target did not
    /// understand (which is the process's bug, or a target that is not there).
    pub fn code(&self) -> &str {
        match &self.failure {
            CommandFailure::Rejected(r) => &r.code,
            CommandFailure::Malformed(_) => "malformed",
        }
    }
}

/// A time to be woken at, and its name within the instance.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Deadline {
    /// Unix milliseconds.
    pub at_ms: u64,
    /// Asking again with the key of a pending deadline moves it.
    pub key: String,
}

impl Deadline {
    pub fn new(at_ms: u64, key: impl Into<String>) -> Self {
        Deadline {
            at_ms,
            key: key.into(),
        }
    }
}

/// What a process decides in answer to one input: its own events, the
/// commands to send and the times to be woken at. The runner commits all
/// three at once, then sends the commands in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reaction<E> {
    pub events: Vec<E>,
    pub commands: Vec<ProcessCommand>,
    pub wake_ups: Vec<Deadline>,
}

// Not derived: a derive would ask `E: Default` for an empty list.
impl<E> Default for Reaction<E> {
    fn default() -> Self {
        Reaction {
            events: Vec::new(),
            commands: Vec::new(),
            wake_ups: Vec::new(),
        }
    }
}

impl<E> Reaction<E> {
    /// Nothing to do: the input changes nothing for this instance.
    pub fn none() -> Self {
        Self::default()
    }

    /// Records one of the instance's events.
    pub fn emit(mut self, event: E) -> Self {
        self.events.push(event);
        self
    }

    /// Asks for a command to be sent.
    pub fn send(mut self, command: ProcessCommand) -> Self {
        self.commands.push(command);
        self
    }

    /// Asks to be woken at `at_ms` (Unix milliseconds) with this key.
    pub fn wake_at(mut self, at_ms: u64, key: impl Into<String>) -> Self {
        self.wake_ups.push(Deadline::new(at_ms, key));
        self
    }
}

/// Where an instance stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProcessStatus {
    /// Waiting for an outcome, an event or a deadline.
    #[default]
    Running,
    /// Finished as intended.
    Completed,
    /// Finished otherwise: refused, compensated, expired.
    Failed,
}
