//! How an aggregate's, a projection's and a process's values cross the Wasm boundary. The
//! functions here are what the exported components run; they are plain Rust,
//! so the host's benchmarks and the native test harness run exactly the same
//! code ([`apply`], [`apply_projection_native`], [`query_projection_native`]).

use std::collections::BTreeMap;
use std::marker::PhantomData;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::{
    Aggregate, Context, Docs, Envelope, Process, ProcessContext, ProcessInput, ProcessStatus,
    Projection, QueryError, Reaction, Rejection, Schema,
};

/// An event as it crosses the boundary: its type and its JSON data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventParts {
    pub event_type: String,
    pub data: String,
}

/// Why a command produced no events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommandFailure {
    Malformed(String),
    Rejected(Rejection),
}

pub fn encode_state<A: Aggregate>(state: &A) -> Vec<u8> {
    postcard::to_allocvec(state).expect("postcard encoding of an in-memory value cannot fail")
}

pub fn decode_state<A: Aggregate>(bytes: &[u8]) -> Result<A, String> {
    postcard::from_bytes(bytes).map_err(|e| format!("the state bytes do not decode: {e}"))
}

/// Splits a serialized event into its type (the serde tag `type`) and its data (the other fields).
pub fn encode_event<E: Serialize>(event: &E) -> Result<EventParts, String> {
    let value =
        serde_json::to_value(event).map_err(|e| format!("event does not serialize: {e}"))?;
    let Value::Object(mut fields) = value else {
        return Err(
            "an event must serialize to a JSON object; tag the enum with #[serde(tag = \"type\")]"
                .into(),
        );
    };
    let Some(Value::String(event_type)) = fields.remove("type") else {
        return Err(
            "an event needs a string field \"type\"; tag the enum with #[serde(tag = \"type\")]"
                .into(),
        );
    };
    let data = serde_json::to_string(&Value::Object(fields)).expect("a JSON value serializes");
    Ok(EventParts { event_type, data })
}

/// The inverse of [`encode_event`]. Splices the tag into the data's JSON text
/// and parses once, rather than building a map and converting it: replay runs
/// this for every event, so it is the hot path of every state load.
pub fn decode_event<E: serde::de::DeserializeOwned>(
    event_type: &str,
    data: &str,
) -> Result<E, String> {
    let fields = data
        .trim()
        .strip_prefix('{')
        .and_then(|rest| rest.strip_suffix('}'))
        .ok_or_else(|| format!("event {event_type} has data that is not a JSON object"))?;
    let tag = serde_json::to_string(event_type).expect("a string serializes");
    let mut text = String::with_capacity(data.len() + tag.len() + 10);
    text.push_str("{\"type\":");
    text.push_str(&tag);
    if !fields.trim().is_empty() {
        text.push(',');
        text.push_str(fields);
    }
    text.push('}');
    serde_json::from_str(&text).map_err(|e| format!("event {event_type} does not decode: {e}"))
}

pub fn handle<A: Aggregate>(
    state: &[u8],
    command: &str,
    context: &Context,
) -> Result<Vec<EventParts>, CommandFailure> {
    let state: A = decode_state(state).map_err(CommandFailure::Malformed)?;
    let command: A::Command = serde_json::from_str(command)
        .map_err(|e| CommandFailure::Malformed(format!("the command does not decode: {e}")))?;
    let events = state
        .handle(command, context)
        .map_err(CommandFailure::Rejected)?;
    events
        .iter()
        .map(encode_event)
        .collect::<Result<_, _>>()
        .map_err(CommandFailure::Malformed)
}

/// Applies `(event type, data)` pairs, each in the shape the aggregate
/// emits now, in order.
pub fn apply<'a, A: Aggregate>(
    state: &[u8],
    events: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<Vec<u8>, String> {
    let mut state: A = decode_state(state)?;
    for (event_type, data) in events {
        let event: A::Event = decode_event(event_type, data)?;
        state = state.apply(&event);
    }
    Ok(encode_state(&state))
}

/// Applies recorded `(event type, data)` pairs with their schema versions
/// (`versions[i]` is the `i`th event's), upcasting older ones through the
/// aggregate's [`Schema`] first: what the component's `apply` runs.
pub fn apply_versioned<'a, A: Aggregate>(
    state: &[u8],
    events: impl IntoIterator<Item = (&'a str, &'a str)>,
    versions: &[u32],
) -> Result<Vec<u8>, String> {
    let mut state: A = decode_state(state)?;
    A::schema().for_each_current(events, versions, |event_type, data| {
        let event: A::Event = decode_event(event_type, data)?;
        state = std::mem::take(&mut state).apply(&event);
        Ok(())
    })?;
    Ok(encode_state(&state))
}

pub fn render<A: Aggregate>(state: &[u8]) -> Result<String, String> {
    let state: A = decode_state(state)?;
    serde_json::to_string(&state).map_err(|e| format!("the state does not render as JSON: {e}"))
}

/// The component that [`crate::export_aggregate!`] exports for an aggregate `A`.
pub struct AggregateComponent<A>(PhantomData<A>);

#[cfg(target_family = "wasm")]
mod component {
    use super::*;
    use crate::bindings::Guest;
    use crate::bindings::refold::domain::event_schema;
    use crate::bindings::refold::domain::types as wit;

    impl<A: Aggregate> Guest for AggregateComponent<A> {
        fn schema_versions() -> Vec<(String, u32)> {
            A::schema().declared()
        }

        fn initial_state() -> Vec<u8> {
            encode_state(&A::default())
        }

        fn handle(
            state: Vec<u8>,
            command: String,
            context: wit::CommandContext,
        ) -> Result<Vec<wit::NewEvent>, wit::CommandError> {
            let context = Context {
                aggregate_type: context.aggregate_type,
                aggregate_id: context.aggregate_id,
                command_id: context.command_id,
                correlation_id: context.correlation_id,
                received_at_ms: context.received_at_ms,
            };
            match handle::<A>(&state, &command, &context) {
                Ok(events) => Ok(events
                    .into_iter()
                    .map(|e| wit::NewEvent {
                        event_type: e.event_type,
                        data: e.data,
                    })
                    .collect()),
                Err(CommandFailure::Malformed(reason)) => Err(wit::CommandError::Malformed(reason)),
                Err(CommandFailure::Rejected(r)) => {
                    Err(wit::CommandError::Rejected(wit::Rejection {
                        code: r.code,
                        message: r.message,
                    }))
                }
            }
        }

        fn apply(state: Vec<u8>, events: Vec<wit::StreamEvent>) -> Result<Vec<u8>, String> {
            let pairs = events
                .iter()
                .map(|e| (e.event_type.as_str(), e.data.as_str()));
            if !A::schema().has_upcasters() {
                return apply::<A>(&state, pairs);
            }
            apply_versioned::<A>(&state, pairs, &event_schema::given_versions())
        }

        fn render(state: Vec<u8>) -> Result<String, String> {
            render::<A>(&state)
        }
    }
}

/// An event of the global log as a projection's `apply` receives it (the
/// contract's `recorded-event`), with its data as JSON text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawEvent {
    pub position: u64,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub version: u64,
    pub event_id: String,
    pub event_type: String,
    /// JSON text: the event's fields without its `type` tag (see [`encode_event`]).
    pub data: String,
    pub recorded_at_ms: u64,
    /// The schema version its producer declared for its type (1 if none).
    pub schema_version: u32,
}

impl RawEvent {
    /// The events this one stands for in the shapes `schema` knows: itself
    /// when it needs no upcasting, else one copy per event its upcasters made.
    pub fn upcast(self, schema: &Schema) -> Result<Vec<RawEvent>, String> {
        if !schema.needs_upcast(&self.event_type, self.schema_version) {
            return Ok(vec![self]);
        }
        let current = schema
            .upcast_event(&self.event_type, self.schema_version, &self.data)
            .map_err(|e| format!("{e} (at position {})", self.position))?;
        Ok(current
            .into_iter()
            .map(|c| RawEvent {
                schema_version: schema.version_of(&c.event_type),
                event_type: c.event_type,
                data: c.data,
                ..self.clone()
            })
            .collect())
    }
}

impl RawEvent {
    /// Decodes the data with [`decode_event`], moving the other fields into the envelope.
    /// The error names the event's type and position.
    pub fn into_envelope<E: DeserializeOwned>(self) -> Result<Envelope<E>, String> {
        let event = decode_payload(self.position, &self.event_type, &self.data)?;
        Ok(Envelope {
            position: self.position,
            aggregate_type: self.aggregate_type,
            aggregate_id: self.aggregate_id,
            version: self.version,
            event_id: self.event_id,
            event_type: self.event_type,
            recorded_at_ms: self.recorded_at_ms,
            event,
        })
    }

    /// Like [`RawEvent::into_envelope`], copying the fields.
    pub fn to_envelope<E: DeserializeOwned>(&self) -> Result<Envelope<E>, String> {
        let event = decode_payload(self.position, &self.event_type, &self.data)?;
        Ok(Envelope {
            position: self.position,
            aggregate_type: self.aggregate_type.clone(),
            aggregate_id: self.aggregate_id.clone(),
            version: self.version,
            event_id: self.event_id.clone(),
            event_type: self.event_type.clone(),
            recorded_at_ms: self.recorded_at_ms,
            event,
        })
    }
}

fn decode_payload<E: DeserializeOwned>(
    position: u64,
    event_type: &str,
    data: &str,
) -> Result<E, String> {
    decode_event_reusing(event_type, data).map_err(|e| format!("{e} (at position {position})"))
}

thread_local! {
    /// The text [`decode_event_reusing`] splices, kept from event to event.
    static SPLICED: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// [`decode_event`], for a projection's every event: the same text is parsed
/// (so the same result and errors), but spliced into a buffer reused from
/// event to event, and the tag is quoted without a JSON serializer when it
/// has nothing to escape (event types never do).
fn decode_event_reusing<E: DeserializeOwned>(event_type: &str, data: &str) -> Result<E, String> {
    let plain = event_type
        .bytes()
        .all(|b| b >= 0x20 && b != b'"' && b != b'\\');
    if !plain {
        return decode_event(event_type, data);
    }
    SPLICED.with(|buffer| {
        // Only a Deserialize impl that decodes events itself would find it taken.
        let Ok(mut text) = buffer.try_borrow_mut() else {
            return decode_event(event_type, data);
        };
        let fields = data
            .trim()
            .strip_prefix('{')
            .and_then(|rest| rest.strip_suffix('}'))
            .ok_or_else(|| format!("event {event_type} has data that is not a JSON object"))?;
        text.clear();
        text.push_str("{\"type\":\"");
        text.push_str(event_type);
        text.push('"');
        if !fields.trim().is_empty() {
            text.push(',');
            text.push_str(fields);
        }
        text.push('}');
        let decoded = serde_json::from_str(&text)
            .map_err(|e| format!("event {event_type} does not decode: {e}"));
        if text.capacity() > 64 * 1024 {
            *text = String::new(); // one huge event does not pin its memory
        }
        decoded
    })
}

/// Runs the projection's `apply` on one decoded event, naming the event in its error.
pub fn apply_envelope<P: Projection>(
    docs: &mut Docs<'_>,
    envelope: &Envelope<P::Event>,
) -> Result<(), String> {
    P::apply(docs, envelope).map_err(|e| {
        format!(
            "event {} at position {}: {e}",
            envelope.event_type, envelope.position
        )
    })
}

/// Applies a batch to an in-memory read model of JSON texts exactly as the
/// component does to the host's: each event decoded with [`decode_event`],
/// the projection's `apply` over a write-back cache, and the changed documents
/// written to `store` only if the whole batch succeeds (an error leaves `store`
/// as it was).
///
/// Like the component's `apply`, it does not filter: pass only the events the
/// projection's [`Selector`](crate::Selector) matches, as the host does.
pub fn apply_projection_native<P: Projection>(
    store: &mut BTreeMap<String, String>,
    events: &[RawEvent],
) -> Result<(), String> {
    let writes: Vec<_> = {
        let mut docs = Docs::in_memory(store);
        let schema = P::schema();
        for raw in events {
            if schema.needs_upcast(&raw.event_type, raw.schema_version) {
                for current in raw.clone().upcast(&schema)? {
                    apply_envelope::<P>(&mut docs, &current.into_envelope()?)?;
                }
            } else {
                apply_envelope::<P>(&mut docs, &raw.to_envelope()?)?;
            }
        }
        docs.into_writes()?
    };
    for (key, doc) in writes {
        match doc {
            Some(doc) => {
                store.insert(key, doc);
            }
            None => {
                store.remove(&key);
            }
        }
    }
    Ok(())
}

/// Answers a query from an in-memory read model exactly as the component does:
/// `args` is JSON text (empty counts as `{}`), the answer is JSON text.
pub fn query_projection_native<P: Projection>(
    store: &BTreeMap<String, String>,
    name: &str,
    args: &str,
) -> Result<String, QueryError> {
    run_query::<P>(&Docs::in_memory(store), name, args)
}

fn run_query<P: Projection>(docs: &Docs<'_>, name: &str, args: &str) -> Result<String, QueryError> {
    let args: Value = if args.trim().is_empty() {
        Value::Object(Default::default())
    } else {
        serde_json::from_str(args)
            .map_err(|e| QueryError::BadArguments(format!("the arguments are not JSON: {e}")))?
    };
    let answer = P::query(docs, name, &args)?;
    Ok(serde_json::to_string(&answer).expect("a JSON value serializes"))
}

/// The component that [`crate::export_projection!`] exports for a projection `P`.
pub struct ProjectionComponent<P>(PhantomData<P>);

#[cfg(target_family = "wasm")]
mod projection_component {
    use super::*;
    use crate::projection_bindings::Guest;
    use crate::projection_bindings::refold::domain::event_schema;
    use crate::projection_bindings::refold::domain::read_model;
    use crate::projection_bindings::refold::domain::types as wit;

    impl<P: Projection> Guest for ProjectionComponent<P> {
        fn subscription() -> wit::EventSelector {
            let selector = P::subscription();
            wit::EventSelector {
                event_types: selector.event_types,
                aggregate_types: selector.aggregate_types,
            }
        }

        fn apply(events: Vec<wit::RecordedEvent>) -> Result<(), String> {
            let mut docs = Docs::host();
            let schema = P::schema();
            let versions = if schema.has_upcasters() {
                event_schema::given_versions()
            } else {
                Vec::new()
            };
            for (i, e) in events.into_iter().enumerate() {
                let raw = RawEvent {
                    position: e.position,
                    aggregate_type: e.aggregate_type,
                    aggregate_id: e.aggregate_id,
                    version: e.version,
                    event_id: e.event_id,
                    event_type: e.event_type,
                    data: e.data,
                    recorded_at_ms: e.recorded_at_ms,
                    schema_version: if schema.has_upcasters() {
                        crate::schema::version_at(&versions, i)?
                    } else {
                        1
                    },
                };
                if schema.needs_upcast(&raw.event_type, raw.schema_version) {
                    for current in raw.upcast(&schema)? {
                        apply_envelope::<P>(&mut docs, &current.into_envelope()?)?;
                    }
                } else {
                    apply_envelope::<P>(&mut docs, &raw.into_envelope()?)?;
                }
            }
            // One host call per changed document, in key order, and only now
            // that the whole batch succeeded.
            for (key, doc) in docs.into_writes()? {
                match doc {
                    Some(doc) => read_model::put(&key, &doc),
                    None => read_model::delete(&key),
                }
            }
            Ok(())
        }

        fn query(name: String, args: String) -> Result<String, wit::QueryError> {
            run_query::<P>(&Docs::host(), &name, &args).map_err(|e| match e {
                QueryError::UnknownQuery => wit::QueryError::UnknownQuery(format!(
                    "this projection has no query named {name:?}"
                )),
                QueryError::BadArguments(reason) => wit::QueryError::BadArguments(reason),
            })
        }
    }
}

/// A process's input at the boundary: the log event still as JSON text.
pub type RawInput = ProcessInput<RawEvent>;

/// A process's reaction at the boundary: its events split into type and data.
pub type RawReaction = Reaction<EventParts>;

pub fn encode_process_state<P: Process>(state: &P) -> Vec<u8> {
    postcard::to_allocvec(state).expect("postcard encoding of an in-memory value cannot fail")
}

pub fn decode_process_state<P: Process>(bytes: &[u8]) -> Result<P, String> {
    postcard::from_bytes(bytes).map_err(|e| format!("the process state bytes do not decode: {e}"))
}

/// Which instance a log event belongs to. Like the component's `route`, it
/// does not filter: pass only events the process's subscription admits.
///
/// An event the process's [`Schema`] upcasts into several is routed by the
/// first of them that `route` gives an instance.
pub fn route_process<P: Process>(event: &RawEvent) -> Result<Option<String>, String> {
    let schema = P::schema();
    let mut id = None;
    for current in event.clone().upcast(&schema)? {
        id = P::route(&current.into_envelope::<P::LogEvent>()?);
        if id.is_some() {
            break;
        }
    }
    if let Some(id) = &id
        && (id.is_empty() || id.len() > MAX_PROCESS_ID_BYTES)
    {
        return Err(format!(
            "route gave the event at position {} an instance id of {} bytes; ids are 1 to {MAX_PROCESS_ID_BYTES} bytes",
            event.position,
            id.len()
        ));
    }
    Ok(id)
}

/// The longest instance id a process's `route` may give, in bytes.
pub const MAX_PROCESS_ID_BYTES: usize = 256;

/// Decides one input against the state bytes, as the component's `react`.
pub fn react_process<P: Process>(
    state: &[u8],
    context: &ProcessContext,
    input: RawInput,
) -> Result<RawReaction, String> {
    let mut state: P = decode_process_state(state)?;
    let inputs = match input {
        // Of an event upcast into several, the parts `route` gives this
        // instance (`route` gives one instance per recorded event: the first
        // part that routes decides which; parts for other instances are not
        // delivered to them).
        ProcessInput::Event(raw) => {
            let mut parts = Vec::new();
            for part in raw.upcast(&P::schema())? {
                let envelope = part.into_envelope::<P::LogEvent>()?;
                if P::route(&envelope).as_deref() == Some(context.process_id.as_str()) {
                    parts.push(ProcessInput::Event(envelope));
                }
            }
            parts
        }
        ProcessInput::Accepted(a) => vec![ProcessInput::Accepted(a)],
        ProcessInput::Rejected(r) => vec![ProcessInput::Rejected(r)],
        ProcessInput::Deadline(d) => vec![ProcessInput::Deadline(d)],
    };
    // The parts of an event upcast into several are reacted to one by one,
    // each against the state the reactions before it left.
    let mut combined = Reaction::<EventParts>::default();
    let count = inputs.len();
    for (i, input) in inputs.into_iter().enumerate() {
        let reaction = state.react(context, input)?;
        if i + 1 < count {
            for event in &reaction.events {
                state = state.apply(event);
            }
        }
        for event in &reaction.events {
            combined.events.push(encode_event(event)?);
        }
        combined.commands.extend(reaction.commands);
        combined.wake_ups.extend(reaction.wake_ups);
    }
    Ok(combined)
}

/// Applies an instance's `(event type, data)` pairs in order.
pub fn apply_process<'a, P: Process>(
    state: &[u8],
    events: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<Vec<u8>, String> {
    let mut state: P = decode_process_state(state)?;
    for (event_type, data) in events {
        let event: P::Event = decode_event(event_type, data)?;
        state = state.apply(&event);
    }
    Ok(encode_process_state(&state))
}

/// [`apply_process`] for recorded events with their schema versions,
/// upcasting older ones through the process's [`Schema`] first.
pub fn apply_process_versioned<'a, P: Process>(
    state: &[u8],
    events: impl IntoIterator<Item = (&'a str, &'a str)>,
    versions: &[u32],
) -> Result<Vec<u8>, String> {
    let mut state: P = decode_process_state(state)?;
    P::schema().for_each_current(events, versions, |event_type, data| {
        let event: P::Event = decode_event(event_type, data)?;
        state = std::mem::take(&mut state).apply(&event);
        Ok(())
    })?;
    Ok(encode_process_state(&state))
}

pub fn process_status<P: Process>(state: &[u8]) -> Result<ProcessStatus, String> {
    Ok(decode_process_state::<P>(state)?.status())
}

pub fn render_process<P: Process>(state: &[u8]) -> Result<String, String> {
    let state: P = decode_process_state(state)?;
    serde_json::to_string(&state).map_err(|e| format!("the state does not render as JSON: {e}"))
}

/// The component that [`crate::export_process!`] exports for a process `P`.
pub struct ProcessComponent<P>(PhantomData<P>);

#[cfg(target_family = "wasm")]
mod process_component {
    use super::*;
    use crate::process::{Accepted, Deadline, OutcomeEvent, ProcessCommand, Rejected};
    use crate::process_bindings::Guest;
    use crate::process_bindings::refold::domain::event_schema;
    use crate::process_bindings::refold::domain::process_types as pwit;
    use crate::process_bindings::refold::domain::types as wit;

    fn command_from(c: pwit::ProcessCommand) -> ProcessCommand {
        ProcessCommand {
            key: c.key,
            aggregate_type: c.aggregate_type,
            aggregate_id: c.aggregate_id,
            command: c.command,
        }
    }

    fn command_to(c: ProcessCommand) -> pwit::ProcessCommand {
        pwit::ProcessCommand {
            key: c.key,
            aggregate_type: c.aggregate_type,
            aggregate_id: c.aggregate_id,
            command: c.command,
        }
    }

    /// The log event of a `route` or `react` call, with its schema version
    /// when the process has upcasters (the only case that reads it).
    fn raw_event(e: wit::RecordedEvent, upcasting: bool) -> Result<RawEvent, String> {
        let schema_version = if upcasting {
            crate::schema::version_at(&event_schema::given_versions(), 0)?
        } else {
            1
        };
        Ok(RawEvent {
            position: e.position,
            aggregate_type: e.aggregate_type,
            aggregate_id: e.aggregate_id,
            version: e.version,
            event_id: e.event_id,
            event_type: e.event_type,
            data: e.data,
            recorded_at_ms: e.recorded_at_ms,
            schema_version,
        })
    }

    impl<P: Process> Guest for ProcessComponent<P> {
        fn schema_versions() -> Vec<(String, u32)> {
            P::schema().declared()
        }

        fn subscription() -> wit::EventSelector {
            let selector = P::subscription();
            wit::EventSelector {
                event_types: selector.event_types,
                aggregate_types: selector.aggregate_types,
            }
        }

        fn route(event: wit::RecordedEvent) -> Result<Option<String>, String> {
            route_process::<P>(&raw_event(event, P::schema().has_upcasters())?)
        }

        fn initial_state() -> Vec<u8> {
            encode_process_state(&P::default())
        }

        fn react(
            state: Vec<u8>,
            context: pwit::ProcessContext,
            input: pwit::ProcessInput,
        ) -> Result<pwit::Reaction, String> {
            let context = ProcessContext {
                process_id: context.process_id,
                now_ms: context.now_ms,
            };
            let input = match input {
                pwit::ProcessInput::Event(e) => {
                    ProcessInput::Event(raw_event(e, P::schema().has_upcasters())?)
                }
                pwit::ProcessInput::CommandAccepted(a) => ProcessInput::Accepted(Accepted {
                    command: command_from(a.command),
                    command_id: a.command_id,
                    events: a
                        .events
                        .into_iter()
                        .map(|e| OutcomeEvent {
                            version: e.version,
                            event_id: e.event_id,
                            event_type: e.event_type,
                            data: e.data,
                        })
                        .collect(),
                }),
                pwit::ProcessInput::CommandRejected(r) => ProcessInput::Rejected(Rejected {
                    command: command_from(r.command),
                    command_id: r.command_id,
                    failure: match r.error {
                        wit::CommandError::Malformed(reason) => CommandFailure::Malformed(reason),
                        wit::CommandError::Rejected(r) => {
                            CommandFailure::Rejected(Rejection::new(r.code, r.message))
                        }
                    },
                }),
                pwit::ProcessInput::DeadlineFired(d) => {
                    ProcessInput::Deadline(Deadline::new(d.at_ms, d.key))
                }
            };
            let reaction = react_process::<P>(&state, &context, input)?;
            Ok(pwit::Reaction {
                events: reaction
                    .events
                    .into_iter()
                    .map(|e| wit::NewEvent {
                        event_type: e.event_type,
                        data: e.data,
                    })
                    .collect(),
                commands: reaction.commands.into_iter().map(command_to).collect(),
                wake_ups: reaction
                    .wake_ups
                    .into_iter()
                    .map(|d| pwit::Deadline {
                        at_ms: d.at_ms,
                        key: d.key,
                    })
                    .collect(),
            })
        }

        fn apply(state: Vec<u8>, events: Vec<wit::StreamEvent>) -> Result<Vec<u8>, String> {
            let pairs = events
                .iter()
                .map(|e| (e.event_type.as_str(), e.data.as_str()));
            if !P::schema().has_upcasters() {
                return apply_process::<P>(&state, pairs);
            }
            apply_process_versioned::<P>(&state, pairs, &event_schema::given_versions())
        }

        fn status(state: Vec<u8>) -> Result<pwit::ProcessStatus, String> {
            Ok(match process_status::<P>(&state)? {
                ProcessStatus::Running => pwit::ProcessStatus::Running,
                ProcessStatus::Completed => pwit::ProcessStatus::Completed,
                ProcessStatus::Failed => pwit::ProcessStatus::Failed,
            })
        }

        fn render(state: Vec<u8>) -> Result<String, String> {
            render_process::<P>(&state)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    #[serde(tag = "type")]
    enum Event {
        Moved { x: i64, label: String },
        Stopped,
    }

    #[test]
    fn events_split_into_type_and_data_and_back() {
        for event in [
            Event::Moved {
                x: -3,
                label: "a \"quoted\" } brace".into(),
            },
            Event::Stopped,
        ] {
            let parts = encode_event(&event).unwrap();
            assert!(
                !parts.data.contains("\"type\""),
                "the tag is not repeated in the data: {}",
                parts.data
            );
            assert_eq!(
                decode_event::<Event>(&parts.event_type, &parts.data).unwrap(),
                event
            );
        }
        assert_eq!(
            decode_event::<Event>("Stopped", " { } ").unwrap(),
            Event::Stopped
        );
    }

    #[test]
    fn a_projections_decoding_is_decode_events() {
        let cases = [
            ("Moved", r#"{"x":-3,"label":"a \"quoted\" } brace"}"#),
            ("Stopped", " { } "),
            ("Stopped", "{}"),
            ("Moved", "[1,2]"),
            ("Moved", r#"{"x":1}"#),
            ("Teleported", "{}"),
            ("Mo\"ved", r#"{"x":1,"label":""}"#),
            ("Stopped", r#"{"type":"Moved"}"#),
        ];
        for (event_type, data) in cases {
            for _ in 0..2 {
                assert_eq!(
                    decode_event_reusing::<Event>(event_type, data),
                    decode_event::<Event>(event_type, data),
                    "{event_type} {data}"
                );
                assert_eq!(
                    decode_event_reusing::<Value>(event_type, data),
                    decode_event::<Value>(event_type, data),
                    "{event_type} {data}"
                );
            }
        }
    }

    #[test]
    fn data_that_is_not_an_object_or_an_unknown_type_is_an_error() {
        assert!(
            decode_event::<Event>("Moved", "[1,2]")
                .unwrap_err()
                .contains("not a JSON object")
        );
        assert!(
            decode_event::<Event>("Teleported", "{}")
                .unwrap_err()
                .contains("does not decode")
        );
        assert!(
            decode_event::<Event>("Moved", r#"{"x":1}"#)
                .unwrap_err()
                .contains("does not decode")
        );
    }
}
