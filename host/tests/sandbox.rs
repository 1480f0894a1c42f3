//! The sandbox: a hostile module gets the right error or a deterministic value,
//! and the host stays up with other aggregates unaffected.

mod support;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use refold::commands::CommandError;
use refold::runtime::{CommandContext, GuestError};
use refold::store::{Direction, StreamId};
use refold_test_guests::{BANK_ACCOUNT, HOSTILE};
use support::host::{Host, runtime_config};
use support::temp_dir;

async fn hostile_host(dir: &std::path::Path) -> Host {
    let host = Host::start(dir).await;
    host.upload("hostile", "1.0.0", HOSTILE).await;
    host.upload("bank-account", "1.0.0", BANK_ACCOUNT).await;
    host
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[tokio::test(flavor = "multi_thread")]
async fn each_kind_of_misbehaviour_gets_its_own_error_and_the_host_carries_on() {
    let dir = temp_dir();
    let host = hostile_host(dir.path()).await;
    host.send("bank-account", "steady", r#"{"type":"Open","owner":"Ada"}"#)
        .await
        .unwrap();

    let started = Instant::now();
    match host.send("hostile", "h", r#"{"type":"Loop"}"#).await {
        Err(CommandError::Guest(GuestError::FuelExhausted { limit })) => {
            assert_eq!(limit, 200_000_000)
        }
        other => panic!("an endless loop should run out of fuel, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "fuel stopped the loop, not the deadline"
    );
    match host.send("hostile", "h", r#"{"type":"Allocate"}"#).await {
        Err(CommandError::Guest(GuestError::MemoryLimit { limit_bytes })) => {
            assert_eq!(limit_bytes, 32 << 20)
        }
        other => panic!("a memory bomb should hit the memory cap, got {other:?}"),
    }
    match host.send("hostile", "h", r#"{"type":"Panic"}"#).await {
        Err(CommandError::Guest(GuestError::Trap(message))) => {
            assert!(
                message.contains("panics on purpose"),
                "the panic message reaches the error: {message}"
            )
        }
        other => panic!("a panic should be a trap, got {other:?}"),
    }
    match host.send("hostile", "h", r#"{"type":"NotJson"}"#).await {
        Err(CommandError::InvalidGuestOutput { module, reason }) => {
            assert_eq!(module, "hostile@1.0.0");
            assert!(reason.contains("not JSON"), "{reason}");
        }
        other => panic!("event data that is not JSON should be refused, got {other:?}"),
    }
    host.send("hostile", "h", r#"{"type":"Shout"}"#)
        .await
        .expect("writing to stdout is allowed (it goes to the log)");

    // Nothing from the failures was written, and other aggregates are unaffected.
    assert_eq!(
        host.store.head(),
        2,
        "only the open and the shout were written"
    );
    let r = host
        .send("bank-account", "steady", r#"{"type":"Deposit","amount":5}"#)
        .await
        .unwrap();
    assert_eq!(r.version, 2);
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_wall_clock_deadline_stops_what_fuel_does_not() {
    let dir = temp_dir();
    let mut config = runtime_config(dir.path());
    config.fuel_per_call = u64::MAX / 4;
    config.deadline = Duration::from_millis(300);
    let host = Host::start_with(dir.path(), config, Default::default()).await;
    host.upload("hostile", "1.0.0", HOSTILE).await;
    let started = Instant::now();
    match host.send("hostile", "h", r#"{"type":"Loop"}"#).await {
        Err(CommandError::Guest(GuestError::Timeout(after))) => {
            assert_eq!(after, Duration::from_millis(300))
        }
        other => panic!("expected the deadline to stop the loop, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_guest_sees_the_received_at_clock_seeded_randomness_and_no_files_env_or_args() {
    let dir = temp_dir();
    let host = hostile_host(dir.path()).await;
    let before = now_ms();
    let observed = host
        .send("hostile", "o", r#"{"type":"Observe"}"#)
        .await
        .unwrap();
    let after = now_ms();
    let seen: serde_json::Value = serde_json::from_str(&observed.events[0].data).unwrap();
    let clock = seen["now_ms"].as_u64().unwrap();
    assert!(
        before <= clock && clock <= after,
        "the guest's clock reads the command's received-at time"
    );
    assert_eq!(
        seen["file"], "error: entity not found",
        "no preopened directories, so no file exists: {seen}"
    );
    assert_eq!(
        (seen["env_vars"].as_u64(), seen["args"].as_u64()),
        (Some(0), Some(0))
    );

    // The same command context gives the same observations, in fresh instances;
    // another command id gives other randomness.
    let module = host
        .modules
        .active("hostile")
        .unwrap()
        .aggregate()
        .unwrap()
        .clone();
    let context = |command_id: &str| CommandContext {
        aggregate_type: "hostile".into(),
        aggregate_id: "o".into(),
        command_id: command_id.into(),
        correlation_id: "c".into(),
        received_at_ms: 1_234_567,
    };
    let observe = |id: &str| {
        let events = module
            .handle(&[], r#"{"type":"Observe"}"#, &context(id))
            .unwrap()
            .unwrap();
        serde_json::from_str::<serde_json::Value>(&events[0].data).unwrap()
    };
    let (a1, a2, b) = (observe("cmd-a"), observe("cmd-a"), observe("cmd-b"));
    assert_eq!(a1, a2, "deterministic for one command id");
    assert_eq!(a1["now_ms"], 1_234_567);
    assert_ne!(
        a1["random"], b["random"],
        "randomness is seeded from the command id"
    );
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_replays_of_a_stream_give_byte_identical_state() {
    let dir = temp_dir();
    let host = hostile_host(dir.path()).await;
    host.send(
        "bank-account",
        "r",
        r#"{"type":"Open","owner":"Ada","overdraft_limit":100}"#,
    )
    .await
    .unwrap();
    for i in 0..40 {
        let command = if i % 3 == 0 {
            r#"{"type":"Withdraw","amount":7}"#
        } else {
            r#"{"type":"Deposit","amount":11}"#
        };
        host.send("bank-account", "r", command).await.unwrap();
    }
    let stream = StreamId::new("bank-account", "r").unwrap();
    let events: Vec<_> = host
        .store
        .read_stream(&stream, 1, Direction::Forward, 100)
        .unwrap()
        .iter()
        .map(refold::commands::to_stream_event)
        .collect();
    let module = host
        .modules
        .active("bank-account")
        .unwrap()
        .aggregate()
        .unwrap()
        .clone();
    let replay = || {
        module
            .apply(
                &module.initial_state().unwrap(),
                &events,
                &vec![1; events.len()],
            )
            .unwrap()
    };
    let (first, second) = (replay(), replay());
    assert_eq!(first, second, "byte-identical state");
    let recorded = &events.last().unwrap();
    let last = host
        .store
        .read_stream(&stream, recorded.version, Direction::Forward, 1)
        .unwrap();
    assert_eq!(
        last[0].metadata.extra["state_digest"],
        refold::commands::state_digest(&first),
        "the recorded digest matches"
    );
    let report = host.commands.verify("bank-account", "r").await.unwrap();
    assert_eq!((report.checked, report.mismatches.len()), (41, 0));
    host.stop().await;
}
