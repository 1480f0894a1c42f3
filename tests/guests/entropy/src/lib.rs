//! An aggregate that feeds every clock and randomness source it can reach
//! ([`probe`]) into its events and its state, for the host's determinism
//! tests: on a deterministic host, its state at a version is the same bytes
//! however it is computed (from the cache, a snapshot, a temporal read, after
//! a restart, in `verify`).
//!
//! Commands (`{"type": ...}`): `Sample` (one event), `Burst` with `count`
//! (1 to 20 events). Each event's data holds what `handle` read: the probe's
//! call and per-event readings, the command's context, and the chain of the
//! state it decided on.
//!
//! State (JSON): `events` (how many), `chain` (sha256 over each event and the
//! readings `apply` took while folding it), `apply` (the call readings of the
//! last `apply`; the same on every call of a deterministic host).

pub mod probe;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// The most events one `Burst` decides.
pub const MAX_BURST: u64 = 20;

/// Folds one event into `state` with the readings `apply` takes for it.
pub fn fold(state: &mut Value, version: u64, event_type: &str, data: &str) {
    let mut chain = Sha256::new();
    chain.update(state["chain"].as_str().unwrap_or_default());
    chain.update(version.to_be_bytes());
    chain.update(event_type);
    chain.update(data);
    chain.update(probe::call().to_string());
    chain.update(probe::per_event().to_string());
    state["chain"] = Value::String(probe::hex(&chain.finalize()));
    state["events"] = json!(state["events"].as_u64().unwrap_or(0) + 1);
    state["apply"] = probe::call().clone();
}

pub fn initial_state() -> Value {
    json!({"events": 0, "chain": "", "apply": null})
}

#[cfg(all(target_family = "wasm", feature = "component"))]
mod component {
    use refold_sdk::bindings::Guest;
    use refold_sdk::bindings::refold::domain::types::{
        CommandContext, CommandError, NewEvent, StreamEvent,
    };
    use serde_json::{Value, json};

    use super::{MAX_BURST, fold, initial_state, probe};

    struct Entropy;

    fn decode(state: &[u8]) -> Result<Value, String> {
        serde_json::from_slice(state).map_err(|e| format!("state is not JSON: {e}"))
    }

    fn sampled(state: &Value, context: &CommandContext, index: u64) -> NewEvent {
        NewEvent {
            event_type: "Sampled".to_string(),
            data: json!({
                "index": index,
                "decided_on": state["chain"],
                "received_at_ms": context.received_at_ms,
                "command_id": context.command_id,
                "call": probe::call(),
                "event": probe::per_event(),
            })
            .to_string(),
        }
    }

    impl Guest for Entropy {
        /// Declares no schema versions: every event type at version 1.
        fn schema_versions() -> Vec<(String, u32)> {
            Vec::new()
        }

        fn initial_state() -> Vec<u8> {
            initial_state().to_string().into_bytes()
        }

        fn handle(
            state: Vec<u8>,
            command: String,
            context: CommandContext,
        ) -> Result<Vec<NewEvent>, CommandError> {
            let state = decode(&state).map_err(CommandError::Malformed)?;
            let command: Value = serde_json::from_str(&command)
                .map_err(|e| CommandError::Malformed(e.to_string()))?;
            let count = match command["type"].as_str().unwrap_or_default() {
                "Sample" => 1,
                "Burst" => match command["count"].as_u64() {
                    Some(n @ 1..=MAX_BURST) => n,
                    _ => {
                        return Err(CommandError::Malformed(format!(
                            "Burst needs a count from 1 to {MAX_BURST}"
                        )));
                    }
                },
                other => {
                    return Err(CommandError::Malformed(format!(
                        "unknown command type {other:?}"
                    )));
                }
            };
            Ok((0..count).map(|i| sampled(&state, &context, i)).collect())
        }

        fn apply(state: Vec<u8>, events: Vec<StreamEvent>) -> Result<Vec<u8>, String> {
            let mut state = decode(&state)?;
            for event in &events {
                fold(&mut state, event.version, &event.event_type, &event.data);
            }
            Ok(state.to_string().into_bytes())
        }

        fn render(state: Vec<u8>) -> Result<String, String> {
            String::from_utf8(state).map_err(|e| e.to_string())
        }
    }

    refold_sdk::bindings::export_aggregate_world!(Entropy with_types_in refold_sdk::bindings);
}
