//! The store's contract, one behaviour per test: expected versions, idempotency,
//! validation, reads, durability across reopen, the directory lock.

mod support;

use refold::store::{
    Direction, Durability, EventFilter, ExpectedVersion, NewEvent, StoreError, StreamId,
};
use support::{event, open, stream, temp_dir};

#[tokio::test]
async fn appends_get_gapless_positions_and_contiguous_versions() {
    let dir = temp_dir();
    let store = open(&dir, Durability::Fsync);
    let a = stream("a");
    let b = stream("b");
    let r1 = store
        .append(
            &a,
            ExpectedVersion::NoStream,
            vec![event("Opened", 1), event("Deposited", 2)],
        )
        .await
        .unwrap();
    let r2 = store
        .append(&b, ExpectedVersion::Any, vec![event("Opened", 3)])
        .await
        .unwrap();
    let r3 = store
        .append(&a, ExpectedVersion::Exact(2), vec![event("Deposited", 4)])
        .await
        .unwrap();
    assert_eq!(
        (r1.first_position, r1.last_position, r1.stream_version),
        (1, 2, 2)
    );
    assert_eq!(
        (r2.first_position, r2.last_position, r2.stream_version),
        (3, 3, 1)
    );
    assert_eq!(
        (r3.first_position, r3.last_position, r3.stream_version),
        (4, 4, 3)
    );
    assert_eq!(store.head(), 4);
    let versions: Vec<u64> = store
        .read_stream(&a, 1, Direction::Forward, 100)
        .unwrap()
        .iter()
        .map(|e| e.version)
        .collect();
    assert_eq!(versions, vec![1, 2, 3]);
}

#[tokio::test]
async fn each_expected_version_kind_is_checked_against_the_actual_version() {
    let dir = temp_dir();
    let store = open(&dir, Durability::None);
    let s = stream("s");
    let wrong = |r: Result<_, StoreError>, want_actual: u64| match r {
        Err(StoreError::WrongExpectedVersion { actual, .. }) => assert_eq!(actual, want_actual),
        other => panic!("expected WrongExpectedVersion with actual {want_actual}, got {other:?}"),
    };
    wrong(
        store
            .append(&s, ExpectedVersion::StreamExists, vec![event("E", 1)])
            .await,
        0,
    );
    wrong(
        store
            .append(&s, ExpectedVersion::Exact(1), vec![event("E", 1)])
            .await,
        0,
    );
    store
        .append(&s, ExpectedVersion::Exact(0), vec![event("E", 1)])
        .await
        .expect("Exact(0) means no stream");
    wrong(
        store
            .append(&s, ExpectedVersion::NoStream, vec![event("E", 2)])
            .await,
        1,
    );
    wrong(
        store
            .append(&s, ExpectedVersion::Exact(0), vec![event("E", 2)])
            .await,
        1,
    );
    wrong(
        store
            .append(&s, ExpectedVersion::Exact(5), vec![event("E", 2)])
            .await,
        1,
    );
    store
        .append(&s, ExpectedVersion::StreamExists, vec![event("E", 2)])
        .await
        .unwrap();
    store
        .append(&s, ExpectedVersion::Any, vec![event("E", 3)])
        .await
        .unwrap();
    store
        .append(&s, ExpectedVersion::Exact(3), vec![event("E", 4)])
        .await
        .unwrap();
    assert_eq!(store.stream_version(&s).unwrap(), 4);
    assert_eq!(store.head(), 4, "rejected appends wrote nothing");
}

#[tokio::test]
async fn repeating_an_append_returns_the_original_result_and_writes_nothing() {
    let dir = temp_dir();
    let store = open(&dir, Durability::None);
    let s = stream("s");
    let batch = vec![event("E", 1), event("E", 2)];
    let original = store
        .append(&s, ExpectedVersion::NoStream, batch.clone())
        .await
        .unwrap();
    // A retry right after the original, with any expectation that names its place.
    for expected in [
        ExpectedVersion::NoStream,
        ExpectedVersion::Exact(0),
        ExpectedVersion::Any,
        ExpectedVersion::StreamExists,
    ] {
        let again = store.append(&s, expected, batch.clone()).await;
        assert_eq!(again.unwrap(), original, "repeat with {expected:?}");
    }
    assert_eq!(store.head(), 2, "no repeat wrote anything");
    store
        .append(&s, ExpectedVersion::Any, vec![event("E", 3)])
        .await
        .unwrap();

    // Once the stream moved on, exact expectations still find the original...
    for expected in [ExpectedVersion::NoStream, ExpectedVersion::Exact(0)] {
        let again = store.append(&s, expected, batch.clone()).await;
        assert_eq!(again.unwrap(), original, "late repeat with {expected:?}");
    }
    // ...the same ids at another place are not a repeat (and, as a new
    // append, are held to their expectation)...
    match store
        .append(&s, ExpectedVersion::Exact(1), batch.clone())
        .await
    {
        Err(StoreError::WrongExpectedVersion { actual: 3, .. }) => {}
        other => panic!("expected WrongExpectedVersion, got {other:?}"),
    }
    // ...and a first id at its place with different ids after it is refused,
    // not half-applied.
    let diverging = vec![batch[0].clone(), event("E", 9)];
    assert!(matches!(
        store.append(&s, ExpectedVersion::NoStream, diverging).await,
        Err(StoreError::DuplicateEventId { version: 1, .. })
    ));
    let tail = store.read_stream(&s, 3, Direction::Forward, 1).unwrap();
    let partial = vec![
        NewEvent {
            event_id: tail[0].event_id,
            ..event("E", 3)
        },
        event("E", 9),
    ];
    assert!(matches!(
        store.append(&s, ExpectedVersion::Exact(2), partial).await,
        Err(StoreError::DuplicateEventId { version: 3, .. })
    ));
    assert_eq!(store.head(), 3);

    // Idempotency is stream-local (there is no global event-id index): with
    // `Any`, only the stream's end is a place, so a late retry is a new append,
    // and an id may be used again in another stream.
    let late = store
        .append(&s, ExpectedVersion::Any, batch.clone())
        .await
        .unwrap();
    assert_eq!(late.stream_version, 5, "written again at the end");
    let elsewhere = store
        .append(
            &stream("other"),
            ExpectedVersion::Any,
            vec![batch[0].clone()],
        )
        .await
        .unwrap();
    assert_eq!(elsewhere.stream_version, 1);
    assert_eq!(store.head(), 6);
}

#[tokio::test]
async fn concurrent_repeats_of_one_append_store_it_once() {
    let dir = temp_dir();
    let store = open(&dir, Durability::Fsync);
    let s = stream("s");
    let batch = vec![event("E", 1)];
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let (store, s, batch) = (store.clone(), s.clone(), batch.clone());
            tokio::spawn(async move { store.append(&s, ExpectedVersion::Any, batch).await })
        })
        .collect();
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap().unwrap());
    }
    assert!(
        results.iter().all(|r| *r == results[0]),
        "every repeat got the original result"
    );
    assert_eq!(store.head(), 1);
}

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
async fn reads_go_forward_backward_and_through_a_filtered_global_log() {
    let dir = temp_dir();
    let store = open(&dir, Durability::None);
    let a = stream("a");
    let orders = StreamId::new("order", "o1").unwrap();
    for n in 1..=5 {
        store
            .append(
                &a,
                ExpectedVersion::Any,
                vec![event(if n % 2 == 0 { "Even" } else { "Odd" }, n)],
            )
            .await
            .unwrap();
        store
            .append(&orders, ExpectedVersion::Any, vec![event("Placed", n)])
            .await
            .unwrap();
    }
    let versions = |events: Vec<refold::store::RecordedEvent>| {
        events.iter().map(|e| e.version).collect::<Vec<_>>()
    };
    assert_eq!(
        versions(store.read_stream(&a, 2, Direction::Forward, 2).unwrap()),
        vec![2, 3]
    );
    assert_eq!(
        versions(
            store
                .read_stream(&a, u64::MAX, Direction::Backward, 2)
                .unwrap()
        ),
        vec![5, 4]
    );
    assert_eq!(
        versions(store.read_stream(&a, 3, Direction::Backward, 10).unwrap()),
        vec![3, 2, 1]
    );
    assert!(
        store
            .read_stream(&stream("missing"), 1, Direction::Forward, 10)
            .unwrap()
            .is_empty()
    );

    let page = store.read_all(1, 3, &EventFilter::all()).unwrap();
    assert_eq!(
        page.events.iter().map(|e| e.position).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert_eq!((page.next_position, page.head), (4, 10));

    let evens = EventFilter {
        event_types: vec!["Even".into()],
        aggregate_types: vec![],
    };
    let page = store.read_all(1, 100, &evens).unwrap();
    assert_eq!(
        page.events
            .iter()
            .map(|e| e.data.as_str())
            .collect::<Vec<_>>(),
        vec![r#"{"n":2}"#, r#"{"n":4}"#]
    );
    assert_eq!(page.next_position, 11);

    let only_orders = EventFilter {
        event_types: vec![],
        aggregate_types: vec!["order".into()],
    };
    let page = store.read_all(1, 100, &only_orders).unwrap();
    assert_eq!(page.events.len(), 5);
    assert!(page.events.iter().all(|e| e.stream == orders));

    let past_head = store.read_all(11, 10, &EventFilter::all()).unwrap();
    assert!(past_head.events.is_empty());
    assert_eq!(past_head.next_position, 11);
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
