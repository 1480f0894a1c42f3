//! Aggregates end to end: real components, real store, real runtime.

mod support;

use std::collections::HashSet;

use refold::commands::{CommandConfig, CommandError, CommandRequest, Precondition};
use refold::modules::ModuleError;
use refold::store::{Direction, EventFilter, ExpectedVersion, NewEvent, StreamId};
use refold_test_guests::{BANK_ACCOUNT, BANK_ACCOUNT_NO_WASI};
use support::host::Host;
use support::temp_dir;

#[tokio::test(flavor = "multi_thread")]
async fn a_bank_account_lives_through_commands_rejections_and_reads() {
    let dir = temp_dir();
    let host = Host::start(dir.path()).await;
    host.upload("bank-account", "1.0.0", BANK_ACCOUNT).await;

    let opened = host
        .send("bank-account", "acc-1", r#"{"type":"Open","owner":"Ada"}"#)
        .await
        .unwrap();
    assert_eq!(
        (opened.version, opened.position, opened.module.as_str()),
        (1, Some(1), "bank-account@1.0.0")
    );
    assert_eq!(opened.events[0].event_type, "Opened");
    host.send(
        "bank-account",
        "acc-1",
        r#"{"type":"Deposit","amount":1000}"#,
    )
    .await
    .unwrap();
    let withdrawn = host
        .send(
            "bank-account",
            "acc-1",
            r#"{"type":"Withdraw","amount":300}"#,
        )
        .await
        .unwrap();
    assert_eq!(withdrawn.events[0].data, r#"{"amount":300,"balance":700}"#);

    match host
        .send(
            "bank-account",
            "acc-1",
            r#"{"type":"Withdraw","amount":701}"#,
        )
        .await
    {
        Err(CommandError::Rejected { code, message }) => {
            assert_eq!(code, "insufficient-funds");
            assert!(message.contains("overdraft"), "a clear reason: {message}");
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    assert!(matches!(
        host.send("bank-account", "acc-1", r#"{"type":"Deposit"}"#)
            .await,
        Err(CommandError::InvalidCommand(_))
    ));
    assert!(matches!(
        host.send("bank-account", "acc-1", "{oops").await,
        Err(CommandError::InvalidCommand(_))
    ));
    assert!(matches!(
        host.send("no-such-type", "x", r#"{"type":"Open"}"#).await,
        Err(CommandError::UnknownAggregateType(_))
    ));
    assert_eq!(host.store.head(), 3, "failed commands wrote nothing");

    let now = host
        .commands
        .read_state("bank-account", "acc-1", None)
        .await
        .unwrap();
    let state: serde_json::Value = serde_json::from_str(&now.state).unwrap();
    assert_eq!(
        (
            now.version,
            state["balance"].as_i64(),
            state["status"].as_str()
        ),
        (3, Some(700), Some("open"))
    );
    let then = host
        .commands
        .read_state("bank-account", "acc-1", Some(2))
        .await
        .unwrap();
    let state: serde_json::Value = serde_json::from_str(&then.state).unwrap();
    assert_eq!(
        (then.version, state["balance"].as_i64()),
        (2, Some(1000)),
        "state as of version 2"
    );
    assert!(matches!(
        host.commands
            .read_state("bank-account", "acc-1", Some(9))
            .await,
        Err(CommandError::NotFound(_))
    ));
    assert!(matches!(
        host.commands
            .read_state("bank-account", "nobody", None)
            .await,
        Err(CommandError::NotFound(_))
    ));

    // Every event names its producer; each command's last event carries the state digest.
    let events = host
        .store
        .read_stream(
            &StreamId::new("bank-account", "acc-1").unwrap(),
            1,
            Direction::Forward,
            10,
        )
        .unwrap();
    assert!(
        events
            .iter()
            .all(|e| e.metadata.producer.as_deref() == Some("bank-account@1.0.0"))
    );
    assert!(
        events
            .iter()
            .all(|e| e.metadata.extra.contains_key("state_digest"))
    );
    let report = host.commands.verify("bank-account", "acc-1").await.unwrap();
    assert_eq!(
        (report.events, report.checked, report.mismatches.len()),
        (3, 3, 0)
    );
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_component_without_wasi_imports_runs_too() {
    let dir = temp_dir();
    let host = Host::start(dir.path()).await;
    host.upload("bank-account", "1.0.0", BANK_ACCOUNT_NO_WASI)
        .await;
    let module = host.modules.active("bank-account").unwrap();
    assert!(
        !module.aggregate().unwrap().imports_wasi(),
        "the wrapped unknown-unknown build imports no WASI"
    );
    host.send("bank-account", "a", r#"{"type":"Open","owner":"Bo"}"#)
        .await
        .unwrap();
    let r = host
        .send("bank-account", "a", r#"{"type":"Deposit","amount":5}"#)
        .await
        .unwrap();
    assert_eq!(r.version, 2);
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_command_id_returns_the_original_result_and_writes_nothing() {
    let dir = temp_dir();
    let host = Host::start(dir.path()).await;
    host.upload("bank-account", "1.0.0", BANK_ACCOUNT).await;
    host.send("bank-account", "a", r#"{"type":"Open","owner":"Ada"}"#)
        .await
        .unwrap();
    let deposit = |key: &str| CommandRequest {
        aggregate_type: "bank-account".into(),
        aggregate_id: "a".into(),
        command: r#"{"type":"Deposit","amount":10}"#.into(),
        command_id: Some(key.into()),
        ..CommandRequest::default()
    };
    let first = host.commands.execute(deposit("dep-1")).await.unwrap();
    let again = host.commands.execute(deposit("dep-1")).await.unwrap();
    assert!(!first.repeated && again.repeated);
    assert_eq!(
        (again.version, again.position),
        (first.version, first.position)
    );
    assert_eq!(again.events, first.events);

    // Many concurrent retries of one new command: exactly one deposit lands.
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let req = deposit("dep-2");
            let commands = &host.commands;
            async move { commands.execute(req).await }
        })
        .collect();
    let results = futures::future::join_all(tasks).await;
    let positions: HashSet<_> = results
        .iter()
        .map(|r| r.as_ref().unwrap().position)
        .collect();
    assert_eq!(positions.len(), 1, "every retry got the same result");
    assert_eq!(host.store.head(), 3, "open + two deposits");
    let state = host
        .commands
        .read_state("bank-account", "a", None)
        .await
        .unwrap();
    assert!(state.state.contains(r#""balance":20"#), "{}", state.state);

    // The same id for another aggregate is refused.
    let mut other = deposit("dep-1");
    other.aggregate_id = "b".into();
    assert!(matches!(
        host.commands.execute(other).await,
        Err(CommandError::CommandIdReused { .. })
    ));
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_command_id_recorded_without_a_fingerprint_is_matched_by_its_stream_alone() {
    let dir = temp_dir();
    let host = Host::start(dir.path()).await;
    host.upload("bank-account", "1.0.0", BANK_ACCOUNT).await;
    let open = r#"{"type":"Open","owner":"Ada"}"#;
    let opened = host.send("bank-account", "a", open).await.unwrap();
    // A command record as releases before fingerprints wrote it: no fingerprint.
    let legacy = StreamId::new("bank-account", "old").unwrap();
    let mut event = NewEvent::new("Opened", opened.events[0].data.clone());
    event.metadata.command_id = Some("legacy-1".into());
    host.store
        .append_command(
            &legacy,
            ExpectedVersion::NoStream,
            vec![event],
            "legacy-1",
            None,
            None,
        )
        .await
        .unwrap();
    let request = |id: &str, key: &str, command: &str| CommandRequest {
        aggregate_type: "bank-account".into(),
        aggregate_id: id.into(),
        command: command.into(),
        command_id: Some(key.into()),
        ..CommandRequest::default()
    };
    // Unknown request: any retry on its stream gets the first result, as before.
    let retried = host
        .commands
        .execute(request(
            "old",
            "legacy-1",
            r#"{"type":"Deposit","amount":3}"#,
        ))
        .await
        .unwrap();
    assert!(retried.repeated);
    assert_eq!((retried.version, retried.position), (1, Some(2)));
    assert!(matches!(
        host.commands
            .execute(request("new", "legacy-1", open))
            .await,
        Err(CommandError::CommandIdReused { .. })
    ));
    // A record with a fingerprint tells another body apart.
    host.commands
        .execute(request("a", "dep-1", r#"{"type":"Deposit","amount":3}"#))
        .await
        .unwrap();
    match host
        .commands
        .execute(request("a", "dep-1", r#"{"type":"Deposit","amount":4}"#))
        .await
    {
        Err(CommandError::CommandIdReused { command_id, stream }) => {
            assert_eq!((command_id.as_str(), stream.aggregate_id()), ("dep-1", "a"));
        }
        other => panic!("expected CommandIdReused, got {other:?}"),
    }
    assert_eq!(host.store.head(), 3, "open, the legacy open, one deposit");
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expected_version_is_checked_and_concurrent_commands_all_land() {
    let dir = temp_dir();
    let host = Host::start(dir.path()).await;
    host.upload("bank-account", "1.0.0", BANK_ACCOUNT).await;
    host.send("bank-account", "a", r#"{"type":"Open","owner":"Ada"}"#)
        .await
        .unwrap();
    let with_expected = |v: u64| CommandRequest {
        aggregate_type: "bank-account".into(),
        aggregate_id: "a".into(),
        command: r#"{"type":"Deposit","amount":1}"#.into(),
        precondition: Precondition::at_versions([v]),
        ..CommandRequest::default()
    };
    match host.commands.execute(with_expected(5)).await {
        Err(CommandError::WrongExpectedVersion {
            expected,
            actual: 1,
        }) if expected == Precondition::AtVersion(vec![5]) => {}
        other => panic!("expected WrongExpectedVersion(5, actual 1), got {other:?}"),
    }
    host.commands.execute(with_expected(1)).await.unwrap();

    let sends: Vec<_> = (0..50)
        .map(|_| host.send("bank-account", "a", r#"{"type":"Deposit","amount":2}"#))
        .collect();
    for r in futures::future::join_all(sends).await {
        r.unwrap();
    }
    let state = host
        .commands
        .read_state("bank-account", "a", None)
        .await
        .unwrap();
    assert_eq!(state.version, 52);
    assert_eq!(
        host.commands.busy_aggregates(),
        0,
        "per-aggregate locks are released and forgotten"
    );
    assert!(state.state.contains(r#""balance":101"#), "{}", state.state);
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hot_swap_under_concurrent_commands_loses_nothing_and_stamps_each_event() {
    let dir = temp_dir();
    let host = Host::start(dir.path()).await;
    host.upload("bank-account", "1.0.0", BANK_ACCOUNT).await;
    let accounts: Vec<String> = (0..8).map(|i| format!("acc-{i}")).collect();
    for a in &accounts {
        host.send("bank-account", a, r#"{"type":"Open","owner":"Ada"}"#)
            .await
            .unwrap();
    }
    // Version 1.1.0 is the same logic built without WASI: other bytes, same behaviour.
    let v2 = std::fs::read(BANK_ACCOUNT_NO_WASI).unwrap();
    host.modules
        .upload("bank-account", "1.1.0", v2, false, false)
        .await
        .unwrap();
    assert_eq!(
        host.modules.active("bank-account").unwrap().record.version,
        "1.0.0",
        "upload alone does not activate"
    );

    let send_all = |round: usize| {
        let sends: Vec<_> = (0..64)
            .map(|i| {
                host.send(
                    "bank-account",
                    &accounts[(i + round) % accounts.len()],
                    r#"{"type":"Deposit","amount":1}"#,
                )
            })
            .collect();
        futures::future::join_all(sends)
    };
    let (before, swap) = tokio::join!(send_all(0), async {
        tokio::task::yield_now().await;
        host.modules
            .activate("bank-account", "1.1.0", true)
            .unwrap()
    });
    assert_eq!(swap.record.version, "1.1.0");
    let after: Vec<_> = send_all(1)
        .await
        .into_iter()
        .map(|r| r.expect("no command is lost after the swap"))
        .collect();
    let before: Vec<_> = before
        .into_iter()
        .map(|r| r.expect("no command is lost across the swap"))
        .collect();
    for o in before.iter().chain(&after) {
        assert_eq!(
            o.events[0].metadata.producer.as_deref(),
            Some(o.module.as_str()),
            "event stamped with its decider"
        );
    }
    assert!(
        after.iter().all(|o| o.module == "bank-account@1.1.0"),
        "commands after the swap use 1.1.0"
    );
    assert_eq!(host.store.head(), 8 + 128);
    let mut total = 0;
    for a in &accounts {
        let state: serde_json::Value = serde_json::from_str(
            &host
                .commands
                .read_state("bank-account", a, None)
                .await
                .unwrap()
                .state,
        )
        .unwrap();
        total += state["balance"].as_i64().unwrap();
        let report = host.commands.verify("bank-account", a).await.unwrap();
        assert!(report.mismatches.is_empty(), "{report:?}");
    }
    assert_eq!(total, 128, "every deposit counted once");
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn snapshots_are_kept_per_module_version_and_used_after_a_restart() {
    let dir = temp_dir();
    let config = CommandConfig {
        snapshot_every: 5,
        ..CommandConfig::default()
    };
    let host = Host::start_with(
        dir.path(),
        support::host::runtime_config(dir.path()),
        config.clone(),
    )
    .await;
    host.upload("bank-account", "1.0.0", BANK_ACCOUNT).await;
    host.send("bank-account", "a", r#"{"type":"Open","owner":"Ada"}"#)
        .await
        .unwrap();
    for _ in 0..11 {
        host.send("bank-account", "a", r#"{"type":"Deposit","amount":3}"#)
            .await
            .unwrap();
    }
    let stream = StreamId::new("bank-account", "a").unwrap();
    let digest = host.modules.active("bank-account").unwrap().record.digest;
    let (version, _) = host
        .store
        .load_snapshot(&stream, &digest)
        .unwrap()
        .expect("a snapshot was kept");
    assert_eq!(version, 10);
    assert!(
        host.store
            .load_snapshot(&stream, &[0u8; 32])
            .unwrap()
            .is_none(),
        "keyed by module digest"
    );
    let expected = host
        .commands
        .read_state("bank-account", "a", None)
        .await
        .unwrap()
        .state;
    host.stop().await;

    let host = Host::start_with(
        dir.path(),
        support::host::runtime_config(dir.path()),
        config,
    )
    .await;
    assert_eq!(
        host.runtime.compile_counts(),
        (0, 1),
        "the restart loaded the compiled artifact from the cache"
    );
    let state = host
        .commands
        .read_state("bank-account", "a", None)
        .await
        .unwrap();
    assert_eq!((state.version, state.state), (12, expected));
    host.send("bank-account", "a", r#"{"type":"Withdraw","amount":33}"#)
        .await
        .unwrap();
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn uploads_are_checked_immutable_and_idempotent() {
    let dir = temp_dir();
    let host = Host::start(dir.path()).await;
    let bytes = std::fs::read(BANK_ACCOUNT).unwrap();
    let invalid = |r: Result<_, ModuleError>| match r {
        Err(ModuleError::InvalidModule(reason)) => reason,
        Err(other) => panic!("expected InvalidModule, got {other}"),
        Ok(_) => panic!("expected InvalidModule, got success"),
    };
    assert!(
        invalid(
            host.modules
                .upload("x", "1.0.0", b"hello".to_vec(), false, false)
                .await
        )
        .contains("not WebAssembly")
    );
    assert!(
        invalid(
            host.modules
                .upload(
                    "x",
                    "1.0.0",
                    bytes[..bytes.len() / 2].to_vec(),
                    false,
                    false
                )
                .await
        )
        .len()
            > 5
    );
    let core_module = b"\0asm\x01\0\0\0".to_vec();
    assert!(
        invalid(
            host.modules
                .upload("x", "1.0.0", core_module, false, false)
                .await
        )
        .contains("core Wasm module")
    );
    assert!(matches!(
        host.modules
            .upload("Bad Name", "1.0.0", bytes.clone(), false, false)
            .await,
        Err(ModuleError::InvalidName { .. })
    ));
    assert!(matches!(
        host.modules
            .upload("x", "one", bytes.clone(), false, false)
            .await,
        Err(ModuleError::InvalidVersion { .. })
    ));
    assert!(
        host.store.modules().unwrap().is_empty(),
        "refused uploads leave no trace"
    );

    let (first, _) = host
        .modules
        .upload("bank-account", "1.0.0", bytes.clone(), false, false)
        .await
        .unwrap();
    let (again, _) = host
        .modules
        .upload("bank-account", "1.0.0", bytes.clone(), false, false)
        .await
        .unwrap();
    assert_eq!(
        (first, again),
        (
            refold::modules::Uploaded::Created,
            refold::modules::Uploaded::Unchanged
        )
    );
    let other = std::fs::read(BANK_ACCOUNT_NO_WASI).unwrap();
    assert!(matches!(
        host.modules
            .upload("bank-account", "1.0.0", other, false, false)
            .await,
        Err(ModuleError::Conflict { .. })
    ));
    assert_eq!(
        host.modules.active("bank-account").unwrap().record.version,
        "1.0.0",
        "the first version became active"
    );
    assert_eq!(
        host.store
            .read_all(1, 10, &EventFilter::all())
            .unwrap()
            .head,
        0
    );
    host.stop().await;
}
