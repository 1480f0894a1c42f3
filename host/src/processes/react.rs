//! One input of one instance: ask the process what it means, check the
//! answer, fold it, and commit input, events and effects in one append.

use std::sync::Arc;

use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::Shared;
use super::dispatch::Outcome;
use super::records::{self, Command, Instance, RECORD_PREFIX};
use crate::modules::LoadedModule;
use crate::runtime::process_types::{
    CommandAccepted, CommandRejected, Deadline, ProcessCommand, ProcessContext, ProcessInput,
    ProcessStatus, Reaction,
};
use crate::runtime::{CommandError as GuestCommandError, Rejection, StreamEvent};
use crate::store::ModuleKind;
use crate::store::{
    EventMetadata, ExpectedVersion, NewEvent, RecordedEvent, StoreError, StreamId,
    check_event_type, check_name,
};

/// The most events of its own a process may record for one input.
pub const MAX_EVENTS_PER_REACTION: usize = 100;
/// The most commands one reaction may ask for (an order of 100 lines
/// reserves each in one reaction).
pub const MAX_COMMANDS_PER_REACTION: usize = 128;
/// The most wake-ups one reaction may ask for, and pending per instance.
pub const MAX_DEADLINES: usize = 16;
/// The longest command text a process may send: its record quotes it, and
/// must stay within an event's data limit.
pub const MAX_PROCESS_COMMAND_BYTES: usize = 24 * 1024;
/// The longest command key or deadline key.
pub const MAX_KEY_LEN: usize = 64;
/// The most commands an instance may have recorded without an outcome.
pub const MAX_PENDING_COMMANDS: usize = 256;

/// What an instance takes in.
#[derive(Clone, Debug)]
pub enum Input {
    Event(RecordedEvent),
    Outcome(Outcome),
    Deadline {
        key: String,
        at_ms: u64,
    },
    /// Nothing new: an instance taken up again to send the commands it has
    /// recorded without an outcome (after a start, or a failure to fold).
    Resume,
}

impl Input {
    pub fn describe(&self) -> String {
        match self {
            Input::Event(e) => format!("the log event at position {}", e.position),
            Input::Outcome(o) => format!("the outcome of command {}", o.command().command_id),
            Input::Deadline { key, at_ms } => format!("the deadline {key:?} at {at_ms}"),
            Input::Resume => "its recorded commands".to_string(),
        }
    }
}

/// Why an instance stopped at an input: the process failed or misbehaved, or
/// the store refused the append. The input is kept and tried again.
#[derive(Clone, Debug)]
pub struct Stall {
    pub reason: String,
}

impl<E: std::fmt::Display> From<E> for Stall {
    fn from(e: E) -> Self {
        Stall {
            reason: e.to_string(),
        }
    }
}

/// Every command id a process sends under starts with this, and no client
/// may use such an id (the HTTP API refuses it): a client that could guess a
/// process's next command id could otherwise take it first, with another
/// command.
pub const COMMAND_ID_PREFIX: &str = "process:";

/// The command id of the `index`-th record of an append at `version`: unique
/// per (process, instance, input), stable across re-sends because it is
/// recorded before the command is sent.
pub fn command_id(name: &str, instance: &str, version: u64) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"refold process command v1\0");
    for part in [name.as_bytes(), instance.as_bytes()] {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part);
    }
    hasher.update(version.to_be_bytes());
    let digest = hasher.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    format!("{COMMAND_ID_PREFIX}{name}:{}", Uuid::new_v8(bytes))
}

/// The correlation id of everything an instance causes: its stream's name,
/// or, for an instance id too long to fit a metadata id, the name with the
/// id's SHA-256 in its place.
pub fn correlation_id(stream: &StreamId) -> String {
    let name = stream.to_string();
    if name.len() <= crate::store::MAX_METADATA_ID_LEN {
        return name;
    }
    let digest = Sha256::digest(stream.aggregate_id().as_bytes());
    format!(
        "{}/sha256:{}",
        stream.aggregate_type(),
        crate::hex::hex(&digest[..16])
    )
}

impl Shared {
    /// The active version of this process, compiled.
    pub(super) async fn module(&self) -> Result<Arc<LoadedModule>, Stall> {
        self.modules
            .active_ready(&self.name, ModuleKind::Process)
            .await
            .map_err(Stall::from)?
            .ok_or_else(|| Stall {
                reason: format!("{} has no active process version", self.name),
            })
    }

    /// Loads an instance from its stream under the active version.
    pub(super) async fn load(&self, id: &str) -> Result<Instance, Stall> {
        let module = self.module().await?;
        self.load_with(&module, id).await
    }

    pub(super) async fn load_with(
        &self,
        module: &Arc<LoadedModule>,
        id: &str,
    ) -> Result<Instance, Stall> {
        let stream = StreamId::new(records::stream_type(&self.name), id)?;
        let guest = module.process().expect("a process module").clone();
        let digest = module.record.digest;
        let store = self.store.clone();
        self.runtime
            .pool()
            .run(&self.name, move || {
                records::fold(&guest, digest, &store, &stream)
            })
            .await
            .map_err(|reason| Stall { reason })
    }

    /// Takes one input in. A repeat (a log event at or before the last one
    /// taken in, a deadline no longer pending, an outcome of a command not
    /// pending) changes nothing.
    pub(super) async fn take(&self, instance: &mut Instance, input: Input) -> Result<(), Stall> {
        match &input {
            Input::Resume => return Ok(()),
            Input::Event(e) if e.position <= instance.last_position => return Ok(()),
            Input::Deadline { key, at_ms }
                if instance.status != ProcessStatus::Running
                    || instance.deadlines.get(key) != Some(at_ms) =>
            {
                return Ok(());
            }
            Input::Outcome(o)
                if !instance
                    .pending
                    .iter()
                    .any(|c| c.command_id == o.command().command_id) =>
            {
                return Ok(());
            }
            _ => {}
        }
        let module = self.module().await?;
        if module.record.digest != instance.folded_by {
            // A new version: it folds the instance's stream with its own apply.
            *instance = self.load_with(&module, &instance.id.clone()).await?;
            return Box::pin(self.take(instance, input)).await;
        }
        let now_ms = crate::clock::now_ms();
        let context = ProcessContext {
            process_id: instance.id.clone(),
            now_ms,
        };
        let (record, guest_input) = input_record(&input, now_ms)?;
        let versions = input_versions(&input);
        let guest = module.process().expect("a process module").clone();
        let state = instance.state.clone();
        let reaction = self
            .runtime
            .pool()
            .run(&self.name, move || {
                guest.react(&state, &context, &guest_input, &versions)
            })
            .await?;
        let label = module.label();
        let schema = module.process().expect("a process module").schema();
        let own: Vec<NewEvent> = check_reaction(&reaction, instance)?
            .into_iter()
            .map(|e| {
                let version = schema.of(&e.event_type);
                e.at_schema_version(version)
            })
            .collect();

        // The append: the input, the process's events, the effects.
        let first = instance.version + 1;
        let mut events = Vec::with_capacity(1 + own.len() + reaction.commands.len());
        events.push(record);
        events.extend(own);
        let own_events = events.len() - 1;
        let mut commands = Vec::with_capacity(reaction.commands.len());
        for c in &reaction.commands {
            let version = first + events.len() as u64;
            let command = Command {
                command_id: command_id(&self.name, &instance.id, version),
                key: c.key.clone(),
                aggregate_type: clip_target(&c.aggregate_type),
                aggregate_id: clip_target(&c.aggregate_id),
                command: c.command.clone(),
            };
            events.push(NewEvent::new(
                records::COMMAND,
                serde_json::to_string(&command).expect("a record serializes"),
            ));
            commands.push(command);
        }
        for w in &reaction.wake_ups {
            events.push(NewEvent::new(
                records::WAKE_UP,
                serde_json::to_string(&records::WakeUp {
                    key: w.key.clone(),
                    at_ms: w.at_ms,
                })
                .expect("a record serializes"),
            ));
        }
        let correlation = correlation_id(&instance.stream);
        for (i, event) in events.iter_mut().enumerate() {
            event.event_id = event_id(&instance.stream, first + i as u64);
            event.metadata = EventMetadata {
                correlation_id: Some(correlation.clone()),
                producer: Some(label.clone()),
                ..EventMetadata::default()
            };
        }

        // Fold the process's events before committing them: an apply that
        // fails stops the instance here, with nothing written.
        let new_state = if own_events == 0 {
            instance.state.clone()
        } else {
            let guest = module.process().expect("a process module").clone();
            let state = instance.state.clone();
            let versions: Vec<u32> = events[1..=own_events]
                .iter()
                .map(|e| e.schema_version)
                .collect();
            let stream_events: Vec<StreamEvent> = events[1..=own_events]
                .iter()
                .enumerate()
                .map(|(i, e)| StreamEvent {
                    version: first + 1 + i as u64,
                    event_id: e.event_id.to_string(),
                    event_type: e.event_type.clone(),
                    data: e.data.clone(),
                })
                .collect();
            Arc::new(
                self.runtime
                    .pool()
                    .run(&self.name, move || {
                        guest.apply(&state, &stream_events, &versions, 1)
                    })
                    .await?,
            )
        };
        let status = {
            let guest = module.process().expect("a process module").clone();
            let state = new_state.clone();
            self.runtime
                .pool()
                .run(&self.name, move || guest.status(&state))
                .await?
        };

        let appended = match self
            .store
            .append(
                &instance.stream,
                ExpectedVersion::Exact(instance.version),
                events.clone(),
            )
            .await
        {
            Ok(appended) => appended,
            Err(StoreError::WrongExpectedVersion { .. }) => {
                // Only this runner writes the stream; a version that moved is
                // an earlier runner of this process (a restart racing its
                // predecessor's last append). Fold again and take the input anew.
                *instance = self.load_with(&module, &instance.id.clone()).await?;
                return Box::pin(self.take(instance, input)).await;
            }
            Err(e) => return Err(e.into()),
        };
        instance.version = appended.stream_version;
        instance.state = new_state;
        instance.status = status;
        for event in events
            .iter()
            .filter(|e| e.event_type.starts_with(RECORD_PREFIX))
        {
            let recorded = RecordedEvent {
                position: 0,
                stream: instance.stream.clone(),
                version: 0,
                event_id: event.event_id,
                event_type: event.event_type.clone(),
                data: event.data.clone(),
                recorded_at_ms: 0,
                metadata: EventMetadata::default(),
                schema_version: 1,
                chain: [0; 32],
            };
            instance.note(&recorded)?;
        }
        self.counters.note_reaction(commands.len());
        Ok(())
    }
}

/// The runner record that goes first in the append, and the input as the
/// guest sees it.
/// The schema versions of the events an input gives the process.
fn input_versions(input: &Input) -> Vec<u32> {
    match input {
        Input::Event(e) => vec![e.schema_version],
        Input::Outcome(Outcome::Accepted { events, .. }) => {
            events.iter().map(|e| e.schema_version).collect()
        }
        _ => Vec::new(),
    }
}

fn input_record(input: &Input, now_ms: u64) -> Result<(NewEvent, ProcessInput), Stall> {
    Ok(match input {
        Input::Event(e) => (
            NewEvent::new(
                records::RECEIVED,
                json(&records::Received {
                    position: e.position,
                    event_id: e.event_id.to_string(),
                    aggregate_type: e.stream.aggregate_type().to_string(),
                    aggregate_id: e.stream.aggregate_id().to_string(),
                    event_type: e.event_type.clone(),
                    now_ms,
                }),
            ),
            ProcessInput::Event(crate::projections::to_guest(e)),
        ),
        Input::Outcome(Outcome::Accepted {
            command,
            version,
            events,
        }) => (
            NewEvent::new(
                records::ACCEPTED,
                json(&records::Accepted {
                    command_id: command.command_id.clone(),
                    key: command.key.clone(),
                    now_ms,
                    version: *version,
                    first_position: events.first().map(|e| e.position),
                    last_position: events.last().map(|e| e.position),
                }),
            ),
            ProcessInput::CommandAccepted(CommandAccepted {
                command: guest_command(command),
                command_id: command.command_id.clone(),
                events: events
                    .iter()
                    .map(crate::commands::to_stream_event)
                    .collect::<Vec<StreamEvent>>(),
            }),
        ),
        Input::Outcome(Outcome::Rejected {
            command,
            code,
            message,
            malformed,
        }) => (
            NewEvent::new(
                records::REJECTED,
                json(&records::Rejected {
                    command_id: command.command_id.clone(),
                    key: command.key.clone(),
                    now_ms,
                    code: code.clone(),
                    message: clip(message),
                    malformed: *malformed,
                }),
            ),
            ProcessInput::CommandRejected(CommandRejected {
                command: guest_command(command),
                command_id: command.command_id.clone(),
                error: if *malformed {
                    GuestCommandError::Malformed(clip(message))
                } else {
                    GuestCommandError::Rejected(Rejection {
                        code: code.clone(),
                        message: clip(message),
                    })
                },
            }),
        ),
        Input::Resume => unreachable!("a resume is taken in without reacting"),
        Input::Deadline { key, at_ms } => (
            NewEvent::new(
                records::FIRED,
                json(&records::Fired {
                    key: key.clone(),
                    at_ms: *at_ms,
                    now_ms,
                }),
            ),
            ProcessInput::DeadlineFired(Deadline {
                at_ms: *at_ms,
                key: key.clone(),
            }),
        ),
    })
}

/// Error texts quoted in records stay well inside an event's data limit.
fn clip(message: &str) -> String {
    crate::runtime::clip_guest_text(message)
}

/// A command's target as its record keeps it: at most 512 bytes (cut at a
/// character boundary). A longer one is no stream's, so the command is
/// answered `malformed` whatever the cut leaves.
fn clip_target(text: &str) -> String {
    const MAX: usize = 512;
    if text.len() <= MAX {
        return text.to_string();
    }
    let mut end = MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}\u{2026}", &text[..end])
}

fn guest_command(command: &Command) -> ProcessCommand {
    ProcessCommand {
        key: command.key.clone(),
        aggregate_type: command.aggregate_type.clone(),
        aggregate_id: command.aggregate_id.clone(),
        command: command.command.clone(),
    }
}

fn json<T: serde::Serialize>(record: &T) -> String {
    serde_json::to_string(record).expect("a runner record serializes")
}

/// Event ids of an instance's stream are derived from its name and version,
/// so an append that is repeated carries the same ids.
fn event_id(stream: &StreamId, version: u64) -> Uuid {
    let mut hasher = Sha256::new();
    hasher.update(b"refold process event v1\0");
    hasher.update(stream.to_string().as_bytes());
    hasher.update(version.to_be_bytes());
    let digest = hasher.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    Uuid::new_v8(bytes)
}

/// Every bound on what `react` may answer; a reaction past one stops the
/// instance (it is the module's bug) and writes nothing.
fn check_reaction(reaction: &Reaction, instance: &Instance) -> Result<Vec<NewEvent>, Stall> {
    let bad = |reason: String| Stall {
        reason: format!("react returned an invalid reaction: {reason}"),
    };
    if reaction.events.len() > MAX_EVENTS_PER_REACTION {
        return Err(bad(format!(
            "{} events; the limit is {MAX_EVENTS_PER_REACTION}",
            reaction.events.len()
        )));
    }
    if reaction.commands.len() > MAX_COMMANDS_PER_REACTION {
        return Err(bad(format!(
            "{} commands; the limit is {MAX_COMMANDS_PER_REACTION}",
            reaction.commands.len()
        )));
    }
    if reaction.wake_ups.len() > MAX_DEADLINES {
        return Err(bad(format!(
            "{} wake-ups; the limit is {MAX_DEADLINES}",
            reaction.wake_ups.len()
        )));
    }
    let mut events = Vec::with_capacity(reaction.events.len());
    for (i, e) in reaction.events.iter().enumerate() {
        check_event_type(&e.event_type).map_err(|r| bad(format!("event {i}: {r}")))?;
        if e.event_type.starts_with(RECORD_PREFIX) {
            return Err(bad(format!(
                "event {i} has type {:?}: types starting with {RECORD_PREFIX:?} are the runner's",
                e.event_type
            )));
        }
        if e.data.len() > crate::store::MAX_EVENT_DATA_LEN {
            return Err(bad(format!(
                "event {i} has {} bytes of data; the limit is {}",
                e.data.len(),
                crate::store::MAX_EVENT_DATA_LEN
            )));
        }
        crate::json_text::check_stored(&e.data)
            .map_err(|r| bad(format!("event {i}'s data is not JSON: {r}")))?;
        events.push(NewEvent::new(e.event_type.clone(), e.data.clone()));
    }
    for (i, c) in reaction.commands.iter().enumerate() {
        check_name("command key", &c.key, MAX_KEY_LEN)
            .map_err(|r| bad(format!("command {i}: {r}")))?;
        // A target no stream can have is not the process's bug: it often
        // comes from the data it reacts to (an account id a client typed).
        // It is recorded (clipped) and answered `malformed`, never sent.
        if c.command.len() > MAX_PROCESS_COMMAND_BYTES {
            return Err(bad(format!(
                "command {i} is {} bytes; the limit is {MAX_PROCESS_COMMAND_BYTES}",
                c.command.len()
            )));
        }
        crate::json_text::check(&c.command)
            .map_err(|r| bad(format!("command {i} is not JSON: {r}")))?;
    }
    if instance.pending.len() + reaction.commands.len() > MAX_PENDING_COMMANDS {
        return Err(bad(format!(
            "{} commands would be waiting for an outcome; the limit is {MAX_PENDING_COMMANDS}",
            instance.pending.len() + reaction.commands.len()
        )));
    }
    let mut keys: Vec<&str> = instance.deadlines.keys().map(String::as_str).collect();
    for (i, w) in reaction.wake_ups.iter().enumerate() {
        check_name("deadline key", &w.key, MAX_KEY_LEN)
            .map_err(|r| bad(format!("wake-up {i}: {r}")))?;
        if !keys.contains(&w.key.as_str()) {
            keys.push(&w.key);
        }
    }
    if keys.len() > MAX_DEADLINES {
        return Err(bad(format!(
            "{} deadlines would be pending; the limit is {MAX_DEADLINES}",
            keys.len()
        )));
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::GuestEvent;

    fn instance() -> Instance {
        Instance {
            id: "i".into(),
            stream: StreamId::new("process:p", "i").unwrap(),
            version: 0,
            state: Arc::new(Vec::new()),
            folded_by: [0; 32],
            status: crate::runtime::process_types::ProcessStatus::Running,
            last_position: 0,
            pending: Default::default(),
            deadlines: Default::default(),
            inputs: 0,
        }
    }

    fn reaction() -> Reaction {
        Reaction {
            events: vec![GuestEvent {
                event_type: "Started".into(),
                data: "{}".into(),
            }],
            commands: vec![ProcessCommand {
                key: "debit".into(),
                aggregate_type: "bank-account".into(),
                aggregate_id: "a".into(),
                command: r#"{"type":"Withdraw","amount":1}"#.into(),
            }],
            wake_ups: vec![Deadline {
                at_ms: 1,
                key: "k".into(),
            }],
        }
    }

    fn refused(edit: impl FnOnce(&mut Reaction), wanted: &str) {
        let mut r = reaction();
        edit(&mut r);
        let stall = check_reaction(&r, &instance()).expect_err(wanted);
        assert!(
            stall.reason.contains(wanted),
            "{} lacks {wanted}",
            stall.reason
        );
    }

    #[test]
    fn a_reaction_within_every_bound_passes() {
        assert_eq!(check_reaction(&reaction(), &instance()).unwrap().len(), 1);
    }

    #[test]
    fn every_bound_on_a_reaction_is_enforced() {
        refused(
            |r| r.events = vec![r.events[0].clone(); MAX_EVENTS_PER_REACTION + 1],
            "101 events",
        );
        refused(
            |r| r.commands = vec![r.commands[0].clone(); MAX_COMMANDS_PER_REACTION + 1],
            "129 commands",
        );
        refused(
            |r| r.wake_ups = vec![r.wake_ups[0].clone(); MAX_DEADLINES + 1],
            "17 wake-ups",
        );
        refused(
            |r| r.events[0].event_type = "refold.received".into(),
            "the runner's",
        );
        refused(|r| r.events[0].event_type = "a b".into(), "event 0");
        refused(|r| r.events[0].data = "{".into(), "not JSON");
        refused(|r| r.events[0].data = " {}".into(), "not JSON");
        refused(
            |r| r.events[0].data = format!("\"{}\"", "x".repeat(70_000)),
            "bytes of data",
        );
        refused(
            |r| r.commands[0].key = String::new(),
            "command key is empty",
        );
        refused(|r| r.commands[0].key = "k".repeat(65), "command key");
        refused(|r| r.commands[0].command = "nope".into(), "not JSON");
        refused(
            |r| r.commands[0].command = format!("\"{}\"", "x".repeat(MAX_PROCESS_COMMAND_BYTES)),
            "bytes; the limit",
        );
        refused(|r| r.wake_ups[0].key = "\u{7}".into(), "control character");
        // Deadlines pending plus asked for count together.
        let mut full = instance();
        for i in 0..MAX_DEADLINES {
            full.deadlines.insert(format!("d{i}"), 1);
        }
        let stall = check_reaction(&reaction(), &full).unwrap_err();
        assert!(stall.reason.contains("17 deadlines"), "{}", stall.reason);
        // Moving a pending deadline is no new one.
        let mut moved = reaction();
        moved.wake_ups[0].key = "d0".into();
        assert!(check_reaction(&moved, &full).is_ok());
    }

    #[test]
    fn a_long_instance_id_still_gives_a_correlation_id_that_fits() {
        let long = StreamId::new("process:a-long-process-name", "x".repeat(256)).unwrap();
        let id = correlation_id(&long);
        assert!(id.len() <= crate::store::MAX_METADATA_ID_LEN, "{id}");
        assert!(
            id.starts_with("process:a-long-process-name/sha256:"),
            "{id}"
        );
        let short = StreamId::new("process:p", "t-1").unwrap();
        assert_eq!(correlation_id(&short), "process:p/t-1");
    }

    #[test]
    fn pending_commands_per_instance_are_bounded() {
        let mut busy = instance();
        for i in 0..MAX_PENDING_COMMANDS {
            busy.pending.push_back(Command {
                command_id: format!("c{i}"),
                key: "k".into(),
                aggregate_type: "a".into(),
                aggregate_id: "b".into(),
                command: "{}".into(),
            });
        }
        let stall = check_reaction(&reaction(), &busy).unwrap_err();
        assert!(
            stall.reason.contains("waiting for an outcome"),
            "{}",
            stall.reason
        );
    }

    #[test]
    fn command_ids_differ_by_process_instance_and_version_and_are_stable() {
        let a = command_id("p", "i", 3);
        assert_eq!(a, command_id("p", "i", 3));
        assert!(a.starts_with("process:p:"), "{a}");
        assert_ne!(a, command_id("p", "i", 4));
        assert_ne!(a, command_id("p", "j", 3));
        assert_ne!(a, command_id("q", "i", 3));
        // Length-prefixed parts: moving a character between them is another id.
        assert_ne!(command_id("p", "ab", 1), command_id("pa", "b", 1));
        assert!(a.len() <= crate::store::MAX_METADATA_ID_LEN);
    }
}
