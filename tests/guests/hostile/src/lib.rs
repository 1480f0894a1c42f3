//! An aggregate that misbehaves on command, written against the raw bindings
//! (not the SDK's trait) so it can also return what the SDK never would.
//!
//! Commands (`{"type": ...}`): `Count` (a normal event), `Loop` (never ends),
//! `Allocate` (grows memory without end), `Panic`, `NotJson` (event data that
//! is not JSON), `Observe` (reports the clock, randomness, a file read, the
//! environment and arguments it sees), `Shout` (writes to stdout and stderr),
//! `EmitRaw` (events with the types and data texts the command gives),
//! `EmitMany` (`count` events), `RejectWith` (a rejection with the command's
//! `code` and `message`), `MalformedWith` (a `malformed` with its `reason`).
//! `apply` fails, loudly and at length, on an `ApplyFailsLoudly` event.

#[cfg(target_family = "wasm")]
mod component {
    use std::hash::{BuildHasher, Hasher};

    use refold_sdk::bindings::Guest;
    use refold_sdk::bindings::refold::domain::types::{
        CommandContext, CommandError, NewEvent, Rejection, StreamEvent,
    };

    struct Hostile;

    fn event(event_type: &str, data: String) -> NewEvent {
        NewEvent {
            event_type: event_type.to_string(),
            data,
        }
    }

    fn observe() -> String {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(7);
        let random = hasher.finish();
        let file = match std::fs::read("/etc/hostname") {
            Ok(bytes) => format!("read {} bytes", bytes.len()),
            Err(e) => format!("error: {}", e.kind()),
        };
        serde_json::json!({
            "now_ms": now_ms,
            "random": random.to_string(),
            "file": file,
            "env_vars": std::env::vars().count(),
            "args": std::env::args().count(),
        })
        .to_string()
    }

    impl Guest for Hostile {
        fn initial_state() -> Vec<u8> {
            Vec::new()
        }

        fn handle(
            _state: Vec<u8>,
            command: String,
            _context: CommandContext,
        ) -> Result<Vec<NewEvent>, CommandError> {
            let command: serde_json::Value = serde_json::from_str(&command)
                .map_err(|e| CommandError::Malformed(e.to_string()))?;
            match command["type"].as_str().unwrap_or_default() {
                "Count" => Ok(vec![event("Counted", "{}".into())]),
                "Loop" => {
                    let mut i: u64 = 0;
                    loop {
                        i = std::hint::black_box(i.wrapping_add(1));
                    }
                }
                "Allocate" => {
                    let mut hoard: Vec<Vec<u8>> = Vec::new();
                    loop {
                        hoard.push(std::hint::black_box(vec![1u8; 1 << 20]));
                    }
                }
                "Panic" => panic!("the hostile guest panics on purpose"),
                "NotJson" => Ok(vec![event("Garbled", "this is { not json".into())]),
                "Observe" => Ok(vec![event("Observed", observe())]),
                "Shout" => {
                    println!("hostile guest says hello on stdout");
                    eprintln!("hostile guest says hello on stderr");
                    Ok(vec![event("Shouted", "{}".into())])
                }
                // Guest output the host must refuse or keep byte for byte: each
                // event's type and data text exactly as the command spells them.
                "EmitRaw" => Ok(command["events"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|e| {
                        event(
                            e["event_type"].as_str().unwrap_or_default(),
                            e["data"].as_str().unwrap_or_default().to_string(),
                        )
                    })
                    .collect()),
                "EmitMany" => Ok((0..command["count"].as_u64().unwrap_or(0))
                    .map(|n| event("Counted", format!("{{\"n\":{n}}}")))
                    .collect()),
                "RejectWith" => Err(CommandError::Rejected(Rejection {
                    code: command["code"].as_str().unwrap_or_default().to_string(),
                    message: command["message"].as_str().unwrap_or_default().to_string(),
                })),
                "MalformedWith" => Err(CommandError::Malformed(
                    command["reason"].as_str().unwrap_or_default().to_string(),
                )),
                other => Err(CommandError::Malformed(format!(
                    "unknown command type {other:?}"
                ))),
            }
        }

        /// The state is the data of the last event, so `render` shows what `Observe` saw.
        fn apply(state: Vec<u8>, events: Vec<StreamEvent>) -> Result<Vec<u8>, String> {
            if let Some(e) = events.iter().find(|e| e.event_type == "ApplyFailsLoudly") {
                return Err(format!(
                    "\u{1b}[2J{}",
                    "apply refuses ".repeat(e.data.len())
                ));
            }
            Ok(events
                .last()
                .map(|e| e.data.clone().into_bytes())
                .unwrap_or(state))
        }

        fn render(state: Vec<u8>) -> Result<String, String> {
            if state.is_empty() {
                return Ok("{}".into());
            }
            String::from_utf8(state).map_err(|e| e.to_string())
        }
    }

    refold_sdk::bindings::export_aggregate_world!(Hostile with_types_in refold_sdk::bindings);
}
