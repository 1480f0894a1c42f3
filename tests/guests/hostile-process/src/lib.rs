//! A process that misbehaves on command, for the host's tests of the process
//! runner's bounds (`host/tests/processes_hostile.rs`). Written against the
//! raw bindings, not the SDK's `Process` trait, so it can answer what the
//! trait never would (reserved event types, data or commands that are not
//! JSON).
//!
//! It subscribes to the `TransferRequested { transfer_id, from, to, amount }`
//! events of the `transfer-orders` aggregate and routes each to the instance
//! named by its `transfer_id`. The `from` field names a behaviour:
//!
//! - anything not listed below: behave. Record `Started`, send `Deposit
//!   { amount }` to the `bank-account` `to` (key [`DEPOSIT`]), and on its
//!   outcome record `Completed { outcome }` (`accepted`, or the rejection's
//!   code) and complete;
//! - [`GHOST`]: the same, but the deposit goes to an aggregate type that does
//!   not exist ([`NO_SUCH_AGGREGATE`]); the outcome is a `malformed`
//!   rejection, which the instance records and completes on;
//! - [`ROUTE_FAILS`]: `route` returns `Err` for the event, which stops the
//!   runner's reading of the log there;
//! - a misbehaviour of `react`, at the log event: `err` (returns `Err`),
//!   `panic` (traps), `loop` (never returns: fuel or the deadline stops it),
//!   `events` (101 events), `reserved` (an event typed `refold.received`),
//!   `bad-json` (event data that is not JSON), `commands` (129 commands),
//!   `bad-command` (a command that is not JSON), `big-command` (a command of
//!   25 KiB), `wake-ups` (17 wake-ups);
//! - [`AFTER`] followed by one of those misbehaviours: behave at the log
//!   event, and misbehave at the deposit's outcome instead.
//!
//! Built with the `fixed` feature it is the next version: `route` takes
//! every event and `react` always behaves.
//!
//! The state is JSON bytes: `{"phase", "behaviour", "to", "amount", "outcome"}`.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The event type it subscribes to, and the aggregate type it comes from.
pub const REQUESTED: &str = "TransferRequested";
pub const ORDERS: &str = "transfer-orders";
/// The aggregate its deposits go to.
pub const ACCOUNT: &str = "bank-account";
/// The key of its one command.
pub const DEPOSIT: &str = "deposit";
/// `from` words with a meaning of their own.
pub const ROUTE_FAILS: &str = "route-fails";
pub const GHOST: &str = "ghost";
pub const AFTER: &str = "after-";
/// Where a [`GHOST`] sends its deposit.
pub const NO_SUCH_AGGREGATE: &str = "no-such-aggregate";
/// Every misbehaviour of `react` it knows.
pub const MISBEHAVIOURS: [&str; 10] = [
    "err",
    "panic",
    "loop",
    "events",
    "reserved",
    "bad-json",
    "commands",
    "bad-command",
    "big-command",
    "wake-ups",
];

/// One of its own events: a type and JSON data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub event_type: String,
    pub data: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Command {
    pub key: String,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub command: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WakeUp {
    pub at_ms: u64,
    pub key: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reaction {
    pub events: Vec<Event>,
    pub commands: Vec<Command>,
    pub wake_ups: Vec<WakeUp>,
}

/// An input, as much of it as this process looks at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// A log event: its type and data.
    Log {
        event_type: String,
        data: String,
    },
    /// The outcome of a command: its key, and `accepted` or the rejection's
    /// code (`malformed` for a command the target did not understand).
    Outcome {
        key: String,
        outcome: String,
    },
    Deadline,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    #[default]
    New,
    Waiting,
    Completed,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub phase: Phase,
    pub behaviour: String,
    pub to: String,
    pub amount: i64,
    pub outcome: Option<String>,
}

impl State {
    pub fn decode(bytes: &[u8]) -> Result<State, String> {
        serde_json::from_slice(bytes).map_err(|e| format!("the state does not decode: {e}"))
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("the state serializes")
    }

    pub fn completed(&self) -> bool {
        self.phase == Phase::Completed
    }
}

/// The `TransferRequested` fields it reads.
#[derive(Deserialize)]
struct Requested {
    transfer_id: String,
    from: String,
    to: String,
    amount: i64,
}

fn requested(data: &str) -> Result<Requested, String> {
    serde_json::from_str(data).map_err(|e| format!("not a {REQUESTED}: {e}"))
}

/// Whether this build is the next version, which never misbehaves.
const FIXED: bool = cfg!(feature = "fixed");

pub fn route(event_type: &str, data: &str) -> Result<Option<String>, String> {
    if event_type != REQUESTED {
        return Ok(None);
    }
    let request = requested(data)?;
    if request.from == ROUTE_FAILS && !FIXED {
        return Err(format!(
            "the hostile process refuses to route transfer {} ({ROUTE_FAILS})",
            request.transfer_id
        ));
    }
    Ok(Some(request.transfer_id))
}

fn event(event_type: &str, data: Value) -> Event {
    Event {
        event_type: event_type.into(),
        data: data.to_string(),
    }
}

fn deposit(key: String, aggregate_type: &str, to: &str, amount: i64) -> Command {
    Command {
        key,
        aggregate_type: aggregate_type.into(),
        aggregate_id: to.into(),
        command: json!({"type": "Deposit", "amount": amount}).to_string(),
    }
}

/// The bad answer `word` asks for, if it names one (and this is not the
/// fixed version).
fn misbehave(word: &str, state: &State, now_ms: u64) -> Option<Result<Reaction, String>> {
    if FIXED {
        return None;
    }
    let mut reaction = Reaction::default();
    match word {
        "err" => {
            return Some(Err(
                "the hostile process refuses this input on purpose".into()
            ));
        }
        "panic" => panic!("the hostile process panics on purpose"),
        "loop" => {
            let mut i: u64 = 0;
            loop {
                i = std::hint::black_box(i.wrapping_add(1));
            }
        }
        "events" => {
            reaction.events = (0..101)
                .map(|i| event("Noise", json!({ "i": i })))
                .collect();
        }
        "reserved" => reaction.events = vec![event("refold.received", json!({"position": 1}))],
        "bad-json" => {
            reaction.events = vec![Event {
                event_type: "Noise".into(),
                data: "this is { not json".into(),
            }];
        }
        "commands" => {
            reaction.commands = (0..129)
                .map(|i| deposit(format!("{DEPOSIT}-{i}"), ACCOUNT, &state.to, 1))
                .collect();
        }
        "bad-command" => {
            let mut command = deposit(DEPOSIT.into(), ACCOUNT, &state.to, 1);
            command.command = "this is { not json".into();
            reaction.commands = vec![command];
        }
        "big-command" => {
            let mut command = deposit(DEPOSIT.into(), ACCOUNT, &state.to, 1);
            command.command =
                json!({"type": "Deposit", "amount": 1, "pad": "x".repeat(25 * 1024)}).to_string();
            reaction.commands = vec![command];
        }
        "wake-ups" => {
            reaction.wake_ups = (0..17)
                .map(|i| WakeUp {
                    at_ms: now_ms + 3_600_000,
                    key: format!("w{i}"),
                })
                .collect();
        }
        _ => return None,
    }
    Some(Ok(reaction))
}

pub fn react(state: &State, now_ms: u64, input: Input) -> Result<Reaction, String> {
    match (state.phase, input) {
        (Phase::New, Input::Log { data, .. }) => {
            let request = requested(&data)?;
            let started = State {
                phase: Phase::Waiting,
                behaviour: request.from.clone(),
                to: request.to.clone(),
                amount: request.amount,
                outcome: None,
            };
            if let Some(bad) = misbehave(&request.from, &started, now_ms) {
                return bad;
            }
            let target = if request.from == GHOST {
                NO_SUCH_AGGREGATE
            } else {
                ACCOUNT
            };
            Ok(Reaction {
                events: vec![event(
                    "Started",
                    json!({"behaviour": request.from, "to": request.to, "amount": request.amount}),
                )],
                commands: vec![deposit(DEPOSIT.into(), target, &request.to, request.amount)],
                wake_ups: Vec::new(),
            })
        }
        // A repeated request changes nothing.
        (_, Input::Log { .. }) => Ok(Reaction::default()),
        (Phase::Waiting, Input::Outcome { key, outcome }) if key == DEPOSIT => {
            if let Some(word) = state.behaviour.strip_prefix(AFTER)
                && let Some(bad) = misbehave(word, state, now_ms)
            {
                return bad;
            }
            Ok(Reaction {
                events: vec![event("Completed", json!({ "outcome": outcome }))],
                ..Reaction::default()
            })
        }
        (_, Input::Deadline) => Ok(Reaction::default()),
        (phase, Input::Outcome { key, .. }) => {
            Err(format!("the outcome of {key:?} while {phase:?}"))
        }
    }
}

/// Folds one of its own events; unknown types (`Noise`) change nothing.
pub fn apply(mut state: State, event_type: &str, data: &str) -> Result<State, String> {
    let data: Value = serde_json::from_str(data).map_err(|e| format!("{event_type}: {e}"))?;
    match event_type {
        "Started" => {
            state.phase = Phase::Waiting;
            state.behaviour = data["behaviour"].as_str().unwrap_or_default().into();
            state.to = data["to"].as_str().unwrap_or_default().into();
            state.amount = data["amount"].as_i64().unwrap_or_default();
        }
        "Completed" => {
            state.phase = Phase::Completed;
            state.outcome = data["outcome"].as_str().map(String::from);
        }
        _ => {}
    }
    Ok(state)
}

#[cfg(target_family = "wasm")]
mod component {
    use refold_sdk::process_bindings::Guest;
    use refold_sdk::process_bindings::refold::domain::process_types as p;
    use refold_sdk::process_bindings::refold::domain::types as t;

    use super::{Input, State};

    struct HostileProcess;

    impl Guest for HostileProcess {
        /// Declares no schema versions: every event type at version 1.
        fn schema_versions() -> Vec<(String, u32)> {
            Vec::new()
        }

        fn subscription() -> t::EventSelector {
            t::EventSelector {
                event_types: vec![super::REQUESTED.into()],
                aggregate_types: vec![super::ORDERS.into()],
            }
        }

        fn route(event: t::RecordedEvent) -> Result<Option<String>, String> {
            super::route(&event.event_type, &event.data)
        }

        fn initial_state() -> Vec<u8> {
            State::default().encode()
        }

        fn react(
            state: Vec<u8>,
            context: p::ProcessContext,
            input: p::ProcessInput,
        ) -> Result<p::Reaction, String> {
            let state = State::decode(&state)?;
            let input = match input {
                p::ProcessInput::Event(e) => Input::Log {
                    event_type: e.event_type,
                    data: e.data,
                },
                p::ProcessInput::CommandAccepted(a) => Input::Outcome {
                    key: a.command.key,
                    outcome: "accepted".into(),
                },
                p::ProcessInput::CommandRejected(r) => Input::Outcome {
                    key: r.command.key,
                    outcome: match r.error {
                        t::CommandError::Malformed(_) => "malformed".into(),
                        t::CommandError::Rejected(r) => r.code,
                    },
                },
                p::ProcessInput::DeadlineFired(_) => Input::Deadline,
            };
            let reaction = super::react(&state, context.now_ms, input)?;
            Ok(p::Reaction {
                events: reaction
                    .events
                    .into_iter()
                    .map(|e| t::NewEvent {
                        event_type: e.event_type,
                        data: e.data,
                    })
                    .collect(),
                commands: reaction
                    .commands
                    .into_iter()
                    .map(|c| p::ProcessCommand {
                        key: c.key,
                        aggregate_type: c.aggregate_type,
                        aggregate_id: c.aggregate_id,
                        command: c.command,
                    })
                    .collect(),
                wake_ups: reaction
                    .wake_ups
                    .into_iter()
                    .map(|w| p::Deadline {
                        at_ms: w.at_ms,
                        key: w.key,
                    })
                    .collect(),
            })
        }

        fn apply(state: Vec<u8>, events: Vec<t::StreamEvent>) -> Result<Vec<u8>, String> {
            let mut state = State::decode(&state)?;
            for e in &events {
                state = super::apply(state, &e.event_type, &e.data)?;
            }
            Ok(state.encode())
        }

        fn status(state: Vec<u8>) -> Result<p::ProcessStatus, String> {
            Ok(if State::decode(&state)?.completed() {
                p::ProcessStatus::Completed
            } else {
                p::ProcessStatus::Running
            })
        }

        fn render(state: Vec<u8>) -> Result<String, String> {
            let state = State::decode(&state)?;
            serde_json::to_string(&state).map_err(|e| e.to_string())
        }
    }

    refold_sdk::process_bindings::export_process_world!(HostileProcess with_types_in refold_sdk::process_bindings);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(from: &str) -> Input {
        Input::Log {
            event_type: REQUESTED.into(),
            data: json!({"transfer_id": "t", "from": from, "to": "bob", "amount": 5}).to_string(),
        }
    }

    fn started(from: &str) -> State {
        let reaction = react(&State::default(), 0, log(from)).unwrap();
        let mut state = State::default();
        for e in &reaction.events {
            state = apply(state, &e.event_type, &e.data).unwrap();
        }
        state
    }

    #[test]
    fn it_behaves_unless_asked_not_to() {
        let reaction = react(&State::default(), 0, log("alice")).unwrap();
        assert_eq!(reaction.commands.len(), 1);
        assert_eq!(reaction.commands[0].aggregate_type, ACCOUNT);
        let state = started("alice");
        assert_eq!(state.phase, Phase::Waiting);
        let outcome = Input::Outcome {
            key: DEPOSIT.into(),
            outcome: "accepted".into(),
        };
        let done = react(&state, 0, outcome).unwrap();
        assert_eq!(done.events[0].event_type, "Completed");
        let ghost = react(&State::default(), 0, log(GHOST)).unwrap();
        assert_eq!(ghost.commands[0].aggregate_type, NO_SUCH_AGGREGATE);
    }

    #[test]
    fn misbehaviours_answer_past_the_bounds() {
        let count = |word: &str| {
            let r = react(&State::default(), 0, log(word)).unwrap();
            (r.events.len(), r.commands.len(), r.wake_ups.len())
        };
        if FIXED {
            assert_eq!(count("events"), (1, 1, 0));
            return;
        }
        assert_eq!(count("events"), (101, 0, 0));
        assert_eq!(count("commands"), (0, 129, 0));
        assert_eq!(count("wake-ups"), (0, 0, 17));
        assert!(react(&State::default(), 0, log("err")).is_err());
        let big = react(&State::default(), 0, log("big-command")).unwrap();
        assert!(big.commands[0].command.len() > 24 * 1024);
        // After: the event is taken normally, the outcome is not.
        let state = started("after-err");
        let outcome = Input::Outcome {
            key: DEPOSIT.into(),
            outcome: "accepted".into(),
        };
        assert!(react(&state, 0, outcome).is_err());
        let poison = json!({"transfer_id": "t", "from": ROUTE_FAILS, "to": "b", "amount": 1});
        assert!(route(REQUESTED, &poison.to_string()).is_err());
    }
}
