//! Every accepted history replays: heavy but accepted events stay readable
//! after a restart, a state too big is refused when it is produced, the state
//! cache stays within its byte budget, and a projection batch cannot write
//! without bound.

mod support;

use refold::commands::{CommandConfig, CommandError};
use refold::runtime::GuestError;
use refold_test_guests::HOSTILE;
use support::host::{Host, runtime_config};
use support::temp_dir;

async fn hostile(dir: &std::path::Path, commands: CommandConfig) -> Host {
    let host = Host::start_with(dir, runtime_config(dir), commands).await;
    if host.modules.get("hostile", "1.0.0").is_none() {
        host.upload("hostile", "1.0.0", HOSTILE).await;
    }
    host
}

#[tokio::test(flavor = "multi_thread")]
async fn commands_whose_apply_burns_most_of_a_calls_fuel_replay_after_a_restart() {
    let dir = temp_dir();
    let host = hostile(dir.path(), CommandConfig::default()).await;
    // Find the heaviest burn one call's fuel affords: double until refused.
    let mut n = 1_000_000u64;
    let heaviest = loop {
        match host
            .send(
                "hostile",
                "burner",
                &format!(r#"{{"type":"Burn","n":{n}}}"#),
            )
            .await
        {
            Ok(_) => n *= 2,
            Err(CommandError::Guest(GuestError::FuelExhausted { .. })) => break n / 2,
            Err(other) => panic!("unexpected {other:?}"),
        }
    };
    for _ in 0..6 {
        host.send(
            "hostile",
            "burner",
            &format!(r#"{{"type":"Burn","n":{heaviest}}}"#),
        )
        .await
        .expect("each burn fits one call's fuel");
    }
    let version = host
        .store
        .stream_version(&refold::store::StreamId::new("hostile", "burner").unwrap())
        .unwrap();
    host.stop().await;

    // A fresh host has no cached state: it must replay all of them at once.
    let host = hostile(dir.path(), CommandConfig::default()).await;
    let state = host
        .commands
        .read_state("hostile", "burner", None)
        .await
        .expect("the accepted history replays");
    assert_eq!(state.version, version);
    let at = host
        .commands
        .read_state("hostile", "burner", Some(version - 1))
        .await
        .expect("a temporal read replays too");
    assert_eq!(at.version, version - 1);
    host.send("hostile", "burner", r#"{"type":"Count"}"#)
        .await
        .expect("commands still work");
    let report = host.commands.verify("hostile", "burner").await.unwrap();
    assert!(report.mismatches.is_empty(), "{report:?}");
    host.stop().await;
}

/// Only wall-clock time can still stop a replay of one accepted command, and
/// that says how busy the host is, not what the history holds: a transient
/// `replay_timeout` (503 with `Retry-After` over HTTP), never a guest failure,
/// and the same stream reads again once the host has the time. (A host whose
/// deadline was cut after the fact stands in for one too loaded to finish.)
#[tokio::test(flavor = "multi_thread")]
async fn a_replay_past_its_deadline_is_transient_and_blames_the_host_not_the_history() {
    let dir = temp_dir();
    let mut runtime = runtime_config(dir.path());
    runtime.fuel_per_call = 1 << 40;
    let host = Host::start_with(dir.path(), runtime.clone(), CommandConfig::default()).await;
    host.upload("hostile", "1.0.0", HOSTILE).await;
    // Some hundreds of milliseconds of `apply`, well within the 10 s deadline.
    host.send("hostile", "slow", r#"{"type":"Burn","n":500000000}"#)
        .await
        .expect("accepted");
    host.stop().await;

    let mut tight = runtime.clone();
    tight.deadline = std::time::Duration::from_millis(10);
    let host = Host::start_with(dir.path(), tight, CommandConfig::default()).await;
    match host.commands.read_state("hostile", "slow", None).await {
        Err(CommandError::ReplayTimedOut { limit, .. }) => {
            assert_eq!(
                limit,
                std::time::Duration::from_millis(40),
                "4x the deadline"
            )
        }
        other => panic!("expected replay_timeout, got {other:?}"),
    }
    let err = host
        .send("hostile", "slow", r#"{"type":"Count"}"#)
        .await
        .expect_err("a command needs the state too");
    assert_eq!(err.code(), "replay_timeout");
    host.stop().await;

    let host = Host::start_with(dir.path(), runtime, CommandConfig::default()).await;
    let state = host
        .commands
        .read_state("hostile", "slow", None)
        .await
        .expect("the history is intact");
    assert_eq!(state.version, 1, "the refused command wrote nothing");
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn events_too_big_to_replay_in_one_call_replay_in_batches_after_a_restart() {
    let dir = temp_dir();
    let commands = CommandConfig {
        snapshot_every: 0,
        ..CommandConfig::default()
    };
    let host = hostile(dir.path(), commands.clone()).await;
    // 600 events of 60 KiB: 36 MB, more than a guest's 32 MiB memory in one call.
    for _ in 0..600 {
        host.send("hostile", "bulky", r#"{"type":"Bulk","kb":60}"#)
            .await
            .expect("each event fits");
    }
    host.stop().await;
    let host = hostile(dir.path(), commands).await;
    let state = host
        .commands
        .read_state("hostile", "bulky", None)
        .await
        .expect("the accepted history replays");
    assert_eq!(state.version, 600);
    host.send("hostile", "bulky", r#"{"type":"Count"}"#)
        .await
        .expect("commands still work");
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_state_too_big_is_refused_when_it_is_produced() {
    let dir = temp_dir();
    let commands = CommandConfig {
        max_state_bytes: 2 << 20,
        ..CommandConfig::default()
    };
    let host = hostile(dir.path(), commands).await;
    host.send("hostile", "g", r#"{"type":"Grow","kb":1024}"#)
        .await
        .expect("1 MiB is within the limit");
    let head = host.store.head();
    match host
        .send("hostile", "g", r#"{"type":"Grow","kb":3072}"#)
        .await
    {
        Err(e @ CommandError::StateTooLarge { .. }) => {
            assert_eq!(e.code(), "state_too_large");
            assert!(e.to_string().contains("2097152"), "{e}");
        }
        other => panic!("a 3 MiB state over a 2 MiB limit must be refused, got {other:?}"),
    }
    assert_eq!(host.store.head(), head, "nothing was written");
    host.send("hostile", "g", r#"{"type":"Count"}"#)
        .await
        .expect("the aggregate still takes commands");
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_state_cache_stays_within_its_byte_budget() {
    let dir = temp_dir();
    let commands = CommandConfig {
        cache_bytes: 10 << 20,
        ..CommandConfig::default()
    };
    let host = hostile(dir.path(), commands).await;
    for i in 0..12 {
        host.send(
            "hostile",
            &format!("big-{i}"),
            r#"{"type":"Grow","kb":2048}"#,
        )
        .await
        .unwrap();
        let stats = host.commands.cache_stats();
        assert!(stats.bytes <= 10 << 20, "after {i}: {stats:?}");
    }
    let stats = host.commands.cache_stats();
    assert!(stats.entries >= 3 && stats.entries <= 5, "{stats:?}");
    // Evicted states are replayed on demand.
    let state = host
        .commands
        .read_state("hostile", "big-0", None)
        .await
        .unwrap();
    assert_eq!(state.version, 1);
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_state_over_64_kib_is_snapshotted_in_pieces_and_loads_after_a_restart() {
    let dir = temp_dir();
    let commands = CommandConfig {
        snapshot_every: 2,
        ..CommandConfig::default()
    };
    let host = hostile(dir.path(), commands.clone()).await;
    host.send("hostile", "big", r#"{"type":"Grow","kb":1500}"#)
        .await
        .unwrap();
    host.send("hostile", "big", r#"{"type":"Grow","kb":1000}"#)
        .await
        .unwrap();
    let digest = host.modules.get("hostile", "1.0.0").unwrap().record.digest;
    let stream = refold::store::StreamId::new("hostile", "big").unwrap();
    let (version, state) = host
        .store
        .load_snapshot(&stream, &digest)
        .unwrap()
        .expect("a 1 MB state is snapshotted");
    assert_eq!(version, 2);
    assert_eq!(
        state.len(),
        1000 * 1024 + 10,
        "{{\"big\":\"...\"}} around 1000 KiB"
    );
    // Smaller again: the snapshot shrinks back to one inline value.
    for _ in 0..2 {
        host.send("hostile", "big", r#"{"type":"Grow","kb":1}"#)
            .await
            .unwrap();
    }
    let (version, state) = host.store.load_snapshot(&stream, &digest).unwrap().unwrap();
    assert_eq!((version, state.len()), (4, 1024 + 10));
    host.stop().await;
    let host = hostile(dir.path(), commands).await;
    let view = host
        .commands
        .read_state("hostile", "big", None)
        .await
        .unwrap();
    assert_eq!(view.version, 4);
    host.stop().await;
}
