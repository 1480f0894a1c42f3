//! The sled store's own behaviour: validation, durability across reopen, the
//! directory lock, closing. What every backend must do (expected versions,
//! idempotency, reads, the chain, subscriptions) is `store_contract.rs`, which
//! runs against sled and PostgreSQL alike.

mod support;

use refold::store::{Direction, Durability, ExpectedVersion, NewEvent, StoreError, StreamId};
use support::{event, open, stream, temp_dir};

#[tokio::test]
async fn invalid_input_is_refused_with_a_reason_and_writes_nothing() {
    let dir = temp_dir();
    let store = open(&dir, Durability::None);
    let s = stream("s");
    let invalid = |r: Result<_, StoreError>| match r {
        Err(StoreError::InvalidEvent { reason, .. }) => reason,
        other => panic!("expected InvalidEvent, got {other:?}"),
    };
    assert!(invalid(store.append(&s, ExpectedVersion::Any, vec![]).await).contains("at least one"));
    assert!(
        invalid(
            store
                .append(
                    &s,
                    ExpectedVersion::Any,
                    vec![NewEvent::new("E", "{not json")]
                )
                .await
        )
        .contains("JSON")
    );
    assert!(
        invalid(
            store
                .append(&s, ExpectedVersion::Any, vec![NewEvent::new("", "{}")])
                .await
        )
        .contains("empty")
    );
    let e = event("E", 1);
    assert!(
        invalid(
            store
                .append(&s, ExpectedVersion::Any, vec![e.clone(), e])
                .await
        )
        .contains("twice")
    );
    let huge = NewEvent::new("E", format!("\"{}\"", "x".repeat(70_000)));
    assert!(invalid(store.append(&s, ExpectedVersion::Any, vec![huge]).await).contains("limit"));
    assert_eq!(store.head(), 0);

    assert!(matches!(
        StreamId::new("", "x"),
        Err(StoreError::InvalidStream(_))
    ));
    assert!(matches!(
        StreamId::new("t", "a\nb"),
        Err(StoreError::InvalidStream(_))
    ));
    assert!(matches!(
        StreamId::new("t", "x".repeat(300)),
        Err(StoreError::InvalidStream(_))
    ));
}

#[tokio::test]
async fn every_appender_is_held_to_the_event_type_charset_and_the_json_rules() {
    let dir = temp_dir();
    let store = open(&dir, Durability::None);
    let s = stream("s");
    let refused = |event_type: &str, data: &str| {
        let (store, s) = (store.clone(), s.clone());
        let e = NewEvent::new(event_type, data);
        let what = format!("{event_type:?} {data:?}");
        async move {
            match store.append(&s, ExpectedVersion::Any, vec![e]).await {
                Err(StoreError::InvalidEvent { reason, .. }) => reason,
                other => panic!("{what} should be refused, got {other:?}"),
            }
        }
    };
    for bad_type in ["a,b", "a b", "a\u{202E}b", "a\u{200B}b", "é"] {
        let reason = refused(bad_type, "{}").await;
        assert!(reason.contains("ASCII letters"), "{reason}");
    }
    let deep = format!("{}{}", "[".repeat(65), "]".repeat(65));
    for bad_data in [
        "1e400",
        "\"\\ud800\"",
        "{\"a\":1,\"a\":2}",
        deep.as_str(),
        " {}",
        "{\r}",
    ] {
        let reason = refused("T", bad_data).await;
        assert!(reason.contains("not valid JSON"), "{reason}");
    }
    assert_eq!(store.head(), 0);
    let exact = "{\"n\":123456789012345678901234567890,\"x\":[1E2,-0,1.0]}";
    store
        .append(
            &s,
            ExpectedVersion::Any,
            vec![NewEvent::new("ns.v2:Thing_done/ok-1", exact)],
        )
        .await
        .expect("the charset's separators and big numbers are fine");
    let events = store.read_stream(&s, 1, Direction::Forward, 10).unwrap();
    assert_eq!(events[0].data, exact);
}

#[tokio::test]
async fn events_keep_every_field_across_a_reopen() {
    let dir = temp_dir();
    let s = stream("s");
    let mut e = event("Deposited", 7);
    e.metadata.correlation_id = Some("corr-1".into());
    e.metadata.causation_id = Some("cause-1".into());
    e.metadata.command_id = Some("cmd-1".into());
    e.metadata.producer = Some("bank-account@1.0.0".into());
    e.metadata.extra.insert("ip".into(), "127.0.0.1".into());
    {
        let store = open(&dir, Durability::Fsync);
        store
            .append(&s, ExpectedVersion::NoStream, vec![e.clone()])
            .await
            .unwrap();
        store.close().await;
    }
    let store = open(&dir, Durability::Fsync);
    assert_eq!(store.head(), 1);
    let got = store.read_event(1).unwrap().expect("event 1 is there");
    assert_eq!(
        (got.stream.clone(), got.version, got.event_id),
        (s.clone(), 1, e.event_id)
    );
    assert_eq!(
        (got.event_type.as_str(), got.data.as_str()),
        ("Deposited", r#"{"n":7}"#)
    );
    assert_eq!(got.metadata, e.metadata);
    assert!(
        got.recorded_at_ms > 1_700_000_000_000,
        "recorded-at is unix ms"
    );
    // Appends continue after the reopened head, with versions continuing too.
    let r = store
        .append(&s, ExpectedVersion::Exact(1), vec![event("Deposited", 8)])
        .await
        .unwrap();
    assert_eq!((r.first_position, r.stream_version), (2, 2));
    assert!(store.read_event(2).unwrap().unwrap().recorded_at_ms >= got.recorded_at_ms);
}

#[tokio::test]
async fn a_second_open_of_the_same_directory_fails_clearly() {
    let dir = temp_dir();
    let _first = open(&dir, Durability::None);
    let second =
        refold::store::Store::open(refold::store::StoreConfig::new(dir.path().join("events")));
    match second {
        Err(err @ StoreError::Locked { .. }) => {
            let msg = err.to_string();
            assert!(
                msg.contains("in use by another process") && msg.contains("pid"),
                "message: {msg}"
            );
        }
        Err(other) => panic!("expected Locked, got {other}"),
        Ok(_) => panic!("expected Locked, but the second open succeeded"),
    }
}

#[tokio::test]
async fn appends_after_close_are_refused() {
    let dir = temp_dir();
    let store = open(&dir, Durability::None);
    store.close().await;
    assert!(matches!(
        store
            .append(&stream("s"), ExpectedVersion::Any, vec![event("E", 1)])
            .await,
        Err(StoreError::Unavailable(_))
    ));
}

/// sled releases its own file lock on its background threads, a moment after
/// a store is dropped (seen under load: a restart in the same process failed
/// with "could not acquire lock"); an open just then waits for it instead of
/// failing. sled itself, holding its lock a while, stands in for the
/// lingering release.
#[tokio::test]
async fn an_open_waits_for_sled_to_let_go_of_its_lock() {
    let dir = temp_dir();
    let store = open(&dir, Durability::None);
    store.close().await;
    drop(store);
    let sled_dir = dir.path().join("events").join("sled");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let held = loop {
        match sled::open(&sled_dir) {
            Ok(db) => break db,
            Err(e) => assert!(std::time::Instant::now() < deadline, "{e}"),
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    let release = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(300));
        drop(held);
    });
    let store = open(&dir, Durability::None);
    release.join().unwrap();
    assert_eq!(store.head(), 0);
    store.close().await;
}

/// A lock this very process holds is one it is letting go of (a store closing,
/// or a compile worker forked before it closed and not yet exec'd): an open
/// waits for it, briefly, instead of failing at once.
#[tokio::test(flavor = "multi_thread")]
async fn a_reopen_waits_for_a_lock_this_process_is_letting_go_of() {
    let dir = temp_dir();
    let first = open(&dir, Durability::None);
    let path = dir.path().join("events");
    let release = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        first.close().await;
        drop(first);
    });
    let second = tokio::task::spawn_blocking(move || {
        refold::store::Store::open(refold::store::StoreConfig::new(path))
    })
    .await
    .unwrap();
    release.await.unwrap();
    let second = second.expect("the reopen waited for the lock");
    second.close().await;
}

/// A schema version is kept with its event, across a reopen and through the
/// chain's re-walk; version 1 is the default and versions are bounded.
#[tokio::test]
async fn schema_versions_are_recorded_bounded_and_chained() {
    let dir = temp_dir();
    let s = stream("versioned");
    {
        let store = open(&dir, Durability::Fsync);
        store
            .append(
                &s,
                ExpectedVersion::NoStream,
                vec![
                    event("Opened", 1),
                    event("Opened", 2).at_schema_version(2),
                    event("Deposited", 3).at_schema_version(65_535),
                ],
            )
            .await
            .unwrap();
        for bad in [0, 65_536] {
            let refused = store
                .append(
                    &s,
                    ExpectedVersion::Any,
                    vec![event("Opened", 4).at_schema_version(bad)],
                )
                .await;
            assert!(
                matches!(&refused, Err(StoreError::InvalidEvent { reason, .. }) if reason.contains("schema version")),
                "{bad}: {refused:?}"
            );
        }
        store.close().await;
    }
    let store = open(&dir, Durability::Fsync);
    let events = store.read_stream(&s, 1, Direction::Forward, 10).unwrap();
    let versions: Vec<u32> = events.iter().map(|e| e.schema_version).collect();
    assert_eq!(versions, [1, 2, 65_535]);
    let report = store.verify_log(1, None, None, &mut |_, _| true).unwrap();
    assert!(report.failure.is_none(), "{report:?}");
    assert_eq!(report.events, 3);
}

/// The registry's two rules, as PostgreSQL's catalog keeps them across hosts:
/// only a registered version is made active, and the active version is not
/// removed. On sled the store checks them; the registry's activation lock
/// serializes the check with the write (one host).
#[tokio::test]
async fn only_registered_versions_are_activated_and_the_active_one_is_kept() {
    let dir = temp_dir();
    let store = open(&dir, Durability::None);
    let err = store.set_active_module("m", "1").unwrap_err();
    assert_eq!(err.code(), "not_found", "{err}");
    let err = store
        .set_routing("m", Some("1"), &refold::store::Routing::default())
        .unwrap_err();
    assert_eq!(err.code(), "not_found", "{err}");
    assert_eq!(store.active_module("m").unwrap(), None, "nothing written");
    for v in ["1", "2"] {
        store
            .put_module(&support::pg::module_record("m", v, v.as_bytes()))
            .unwrap();
    }
    store.set_active_module("m", "1").unwrap();
    let err = store.delete_module("m", "1").unwrap_err();
    assert_eq!(err.code(), "module_active", "{err}");
    assert!(
        store.module("m", "1").unwrap().is_some(),
        "still registered"
    );
    store.delete_module("m", "2").unwrap();
    assert_eq!(store.module("m", "2").unwrap(), None);
}
