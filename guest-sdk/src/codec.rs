//! How an aggregate's values cross the Wasm boundary. The functions here are
//! what the exported component runs; they are plain Rust, so the host's
//! benchmarks and the native test harness run exactly the same code.

use std::marker::PhantomData;

use serde::Serialize;
use serde_json::Value;

use crate::{Aggregate, Context, Rejection};

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

/// Applies `(event type, data)` pairs in order.
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
    use crate::bindings::refold::domain::types as wit;

    impl<A: Aggregate> Guest for AggregateComponent<A> {
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
            apply::<A>(
                &state,
                events
                    .iter()
                    .map(|e| (e.event_type.as_str(), e.data.as_str())),
            )
        }

        fn render(state: Vec<u8>) -> Result<String, String> {
            render::<A>(&state)
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
