//! An aggregate that misbehaves on command, written against the raw bindings
//! (not the SDK's trait) so it can also return what the SDK never would.
//!
//! Commands (`{"type": ...}`): `Count` (a normal event), `Loop` (never ends),
//! `Allocate` (grows memory without end), `Panic`, `NotJson` (event data that
//! is not JSON), `Observe` (reports the clock, randomness, a file read, the
//! environment and arguments it sees), `Shout` (writes to stdout and stderr).
//!
//! Containment (issue 10): `Sleep {secs}` (std's sleep; reports the time it
//! saw pass), `BlockForever` (a timer at the end of time, blocked on),
//! `PollTimers` (three timers polled together), `Measure` (times a busy loop),
//! `Flood {mb, trap}` (floods stdout and stderr, then succeeds or panics),
//! `Zeroes` (asks stdout to write 2^40 zero bytes), `RandomFlood` (asks for
//! 64 MiB of random bytes), `Handles` (holds pollables until the host says no).
//! Heavy but accepted history: `Bulk {kb}` (an event with kb KiB of data),
//! `Burn {n}` (an event whose `apply` loops n times), `Grow {kb}` (an event
//! after which the state is kb KiB), `Emit {event_type, data}` (any event),
//! `Tally` (an event whose `apply` counts calls, not events: not a fold).
//! Guest output (issue 10): `EmitRaw` (events with the types and data texts
//! the command gives), `EmitMany` (`count` events), `RejectWith` (a rejection
//! with the command's `code` and `message`), `MalformedWith` (a `malformed`
//! with its `reason`); `apply` fails, loudly and at length, on an
//! `ApplyFailsLoudly` event. `Amplify {mib}`: a tiny state that `render`
//! turns into an answer of `mib` MiB.

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
        /// Declares no schema versions: every event type at version 1.
        fn schema_versions() -> Vec<(String, u32)> {
            Vec::new()
        }

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
                "Sleep" => {
                    let secs = command["secs"].as_u64().unwrap_or(1);
                    let (wall, mono) = (std::time::SystemTime::now(), std::time::Instant::now());
                    std::thread::sleep(std::time::Duration::from_secs(secs));
                    let data = serde_json::json!({
                        "monotonic_elapsed_ns": mono.elapsed().as_nanos() as u64,
                        "wall_elapsed_ns": wall.elapsed().map(|d| d.as_nanos() as u64).unwrap_or(0),
                    });
                    Ok(vec![event("Slept", data.to_string())])
                }
                "BlockForever" => {
                    wasip2::clocks::monotonic_clock::subscribe_instant(u64::MAX).block();
                    let now = wasip2::clocks::monotonic_clock::now();
                    Ok(vec![event("Woke", format!("{{\"now\":{now}}}"))])
                }
                "PollTimers" => {
                    use wasip2::clocks::monotonic_clock::{now, subscribe_duration};
                    let start = now();
                    let timers =
                        [3_000_000_000, 1_000_000_000, 2_000_000_000].map(subscribe_duration);
                    let ready = wasip2::io::poll::poll(&timers.iter().collect::<Vec<_>>());
                    let data = serde_json::json!({"ready": ready, "elapsed_ns": now() - start});
                    Ok(vec![event("Polled", data.to_string())])
                }
                "Measure" => {
                    let start = std::time::Instant::now();
                    let mut x: u64 = 0;
                    for i in 0..2_000_000u64 {
                        x = std::hint::black_box(x.wrapping_add(i));
                    }
                    let data = serde_json::json!({"elapsed_ns": start.elapsed().as_nanos() as u64, "x": x});
                    Ok(vec![event("Measured", data.to_string())])
                }
                "Flood" => {
                    let line = "x".repeat(1023) + "\n";
                    for _ in 0..command["mb"].as_u64().unwrap_or(1) * 1024 {
                        print!("{line}");
                        eprint!("{line}");
                    }
                    if command["trap"].as_bool().unwrap_or(false) {
                        panic!("flooded, then panicked");
                    }
                    Ok(vec![event("Flooded", "{}".into())])
                }
                "Zeroes" => {
                    let out = wasip2::cli::stdout::get_stdout();
                    out.write_zeroes(1 << 40)
                        .map_err(|e| CommandError::Malformed(format!("{e:?}")))?;
                    Ok(vec![event("Zeroed", "{}".into())])
                }
                "RandomFlood" => {
                    let bytes = wasip2::random::random::get_random_bytes(64 << 20);
                    Ok(vec![event(
                        "Random",
                        format!("{{\"len\":{}}}", bytes.len()),
                    )])
                }
                "Handles" => {
                    let mut held = Vec::new();
                    loop {
                        held.push(wasip2::clocks::monotonic_clock::subscribe_duration(0));
                    }
                }
                "Bulk" => {
                    let kb = command["kb"].as_u64().unwrap_or(1) as usize;
                    let data = serde_json::json!({"pad": "x".repeat(kb * 1024 - 16)});
                    Ok(vec![event("Bulked", data.to_string())])
                }
                "Burn" => {
                    let n = command["n"].as_u64().unwrap_or(0);
                    Ok(vec![event("Burned", format!("{{\"n\":{n}}}"))])
                }
                "Grow" => {
                    let kb = command["kb"].as_u64().unwrap_or(1);
                    Ok(vec![event("Grown", format!("{{\"kb\":{kb}}}"))])
                }
                "Tally" => Ok(vec![event("Tallied", "{}".into())]),
                "Amplify" => Ok(vec![event(
                    "Amplified",
                    format!("{{\"amplify\":{}}}", command["mib"].as_u64().unwrap_or(1)),
                )]),
                "Emit" => Ok(vec![event(
                    command["event_type"].as_str().unwrap_or("Emitted"),
                    command["data"].to_string(),
                )]),
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

        /// The state is the data of the last event, so `render` shows what `Observe` saw;
        /// `Burned` costs fuel to apply and `Grown` makes the state big; `ApplyFailsLoudly` fails.
        fn apply(mut state: Vec<u8>, events: Vec<StreamEvent>) -> Result<Vec<u8>, String> {
            // Not a fold: counts apply calls, so it depends on how events are batched.
            if events.iter().any(|e| e.event_type == "Tallied") {
                let calls: serde_json::Value = serde_json::from_slice(&state).unwrap_or_default();
                let calls = calls["calls"].as_u64().unwrap_or(0) + 1;
                return Ok(format!("{{\"calls\":{calls}}}").into_bytes());
            }
            if let Some(e) = events.iter().find(|e| e.event_type == "ApplyFailsLoudly") {
                return Err(format!(
                    "\u{1b}[2J{}",
                    "apply refuses ".repeat(e.data.len())
                ));
            }
            for e in events {
                let data: serde_json::Value = serde_json::from_str(&e.data).unwrap_or_default();
                state = match e.event_type.as_str() {
                    "Burned" => {
                        let mut x: u64 = 0;
                        for i in 0..data["n"].as_u64().unwrap_or(0) {
                            x = std::hint::black_box(x.wrapping_add(i));
                        }
                        format!("{{\"burned\":{x}}}").into_bytes()
                    }
                    "Grown" => {
                        let kb = data["kb"].as_u64().unwrap_or(0) as usize;
                        format!("{{\"big\":\"{}\"}}", "x".repeat(kb * 1024)).into_bytes()
                    }
                    _ => e.data.into_bytes(),
                };
            }
            Ok(state)
        }

        fn render(state: Vec<u8>) -> Result<String, String> {
            if state.is_empty() {
                return Ok("{}".into());
            }
            let parsed: serde_json::Value = serde_json::from_slice(&state).unwrap_or_default();
            if let Some(mib) = parsed["amplify"].as_u64() {
                return Ok(format!("\"{}\"", "x".repeat((mib as usize) << 20)));
            }
            String::from_utf8(state).map_err(|e| e.to_string())
        }
    }

    refold_sdk::bindings::export_aggregate_world!(Hostile with_types_in refold_sdk::bindings);
}
