//! The event log's contract, run through `EventStore` against both backends:
//! sled (one process) and PostgreSQL (a throwaway cluster, several hosts on
//! one database where it matters). Each scenario is one generic function;
//! `contract!` instantiates it for both.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use refold::store::integrity::{ZERO, chain_next};
use refold::store::pg::PgStore;
use refold::store::{
    Direction, Durability, EventFilter, EventMetadata, EventStore, ExpectedVersion, NewEvent,
    StoreError, StreamId, canonical_body,
};
use support::{event, stream, temp_dir};

/// Backends under test: each scenario gets `hosts` handles on one log (sled:
/// the same store each time, it is one process; PostgreSQL: that many hosts).
trait Backend {
    type S: EventStore;
    async fn open(hosts: usize) -> (Vec<Self::S>, Box<dyn std::any::Any + Send>);
    async fn close(stores: Vec<Self::S>);
}

struct Sled;
impl Backend for Sled {
    type S = refold::store::Store;
    async fn open(hosts: usize) -> (Vec<Self::S>, Box<dyn std::any::Any + Send>) {
        let dir = temp_dir();
        let store = support::open(&dir, Durability::None);
        (vec![store; hosts], Box::new(dir))
    }
    async fn close(stores: Vec<Self::S>) {
        stores[0].close().await;
    }
}

struct Postgres;
impl Backend for Postgres {
    type S = PgStore;
    async fn open(hosts: usize) -> (Vec<Self::S>, Box<dyn std::any::Any + Send>) {
        let url = support::pg::database();
        let mut stores = Vec::new();
        for _ in 0..hosts {
            stores.push(PgStore::open(&url).await.expect("PostgreSQL store opens"));
        }
        (stores, Box::new(()))
    }
    async fn close(stores: Vec<Self::S>) {
        for s in stores {
            s.close().await;
        }
    }
}

macro_rules! contract {
    ($($name:ident($hosts:expr)),* $(,)?) => {
        mod sled_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    use super::Backend as _;
                    let (stores, _keep) = super::Sled::open($hosts).await;
                    super::$name(&stores).await;
                    super::Sled::close(stores).await;
                }
            )*
        }
        mod postgres_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    use super::Backend as _;
                    let (stores, _keep) = super::Postgres::open($hosts).await;
                    super::$name(&stores).await;
                    super::Postgres::close(stores).await;
                }
            )*
        }
    };
}

contract! {
    appends_get_gapless_positions_and_every_field_reads_back(1),
    each_expected_version_kind_is_checked(2),
    repeats_return_the_original_result_and_write_nothing(2),
    concurrent_repeats_through_several_hosts_store_it_once(3),
    command_ids_record_repeat_and_refuse(2),
    invalid_appends_are_refused_and_write_nothing(1),
    global_log_pages_filter_and_say_where_to_go_next(1),
    the_hash_chain_links_every_event(2),
    subscriptions_catch_up_then_follow_other_hosts(2),
    racing_appenders_never_let_a_follower_skip_or_repeat(3),
    the_same_stream_through_several_hosts_loses_no_write(3),
}

async fn head<S: EventStore>(store: &S) -> u64 {
    store
        .read_all(1, 0, &EventFilter::all())
        .await
        .unwrap()
        .head
}

async fn versions<S: EventStore>(store: &S, s: &StreamId) -> Vec<u64> {
    store
        .read_stream(s, 1, Direction::Forward, 1000)
        .await
        .unwrap()
        .iter()
        .map(|e| e.version)
        .collect()
}

async fn appends_get_gapless_positions_and_every_field_reads_back<S: EventStore>(stores: &[S]) {
    let store = &stores[0];
    let (a, b) = (stream("a"), stream("b"));
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
    assert_eq!(
        store.head(),
        4,
        "a host's own appends move its head at once"
    );
    assert_eq!(versions(store, &a).await, vec![1, 2, 3]);
    let backward: Vec<u64> = store
        .read_stream(&a, u64::MAX, Direction::Backward, 2)
        .await
        .unwrap()
        .iter()
        .map(|e| e.version)
        .collect();
    assert_eq!(backward, vec![3, 2]);
    assert!(
        store
            .read_stream(&a, 0, Direction::Backward, 5)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.stream_version(&a).await.unwrap(), 3);
    assert_eq!(store.stream_version(&stream("none")).await.unwrap(), 0);

    // Every field, including metadata and a schema version, comes back as sent.
    let mut rich =
        NewEvent::new("Renamed", r#"{"to":"Zoë \u00e9","n":[1,2.5,null]}"#).at_schema_version(3);
    rich.metadata = EventMetadata {
        correlation_id: Some("corr-1".into()),
        causation_id: Some("cause-1".into()),
        command_id: None,
        producer: Some("bank-account@1.0.0".into()),
        extra: BTreeMap::from([("k".to_string(), "v".to_string())]),
    };
    let r = store
        .append(&b, ExpectedVersion::Exact(1), vec![rich.clone()])
        .await
        .unwrap();
    let got = store
        .read_event(r.first_position)
        .await
        .unwrap()
        .expect("it is there");
    assert_eq!(got.event_id, rich.event_id);
    assert_eq!(got.event_type, rich.event_type);
    assert_eq!(got.data, rich.data, "data is kept byte for byte");
    assert_eq!(got.metadata, rich.metadata);
    assert_eq!(got.schema_version, 3);
    assert_eq!((got.stream.clone(), got.version), (b.clone(), 2));
    let earlier = store.read_event(4).await.unwrap().unwrap();
    assert!(
        got.recorded_at_ms >= earlier.recorded_at_ms,
        "recorded_at never decreases"
    );
    assert!(store.read_event(99).await.unwrap().is_none());
    assert!(store.read_event(0).await.unwrap().is_none());
}

async fn each_expected_version_kind_is_checked<S: EventStore>(stores: &[S]) {
    // Alternate hosts: a host's belief about a stream is never what refuses.
    let host = |i: usize| &stores[i % stores.len()];
    let s = stream("s");
    let wrong = |r: Result<_, StoreError>, want: u64| match r {
        Err(StoreError::WrongExpectedVersion { actual, .. }) => assert_eq!(actual, want),
        other => panic!("expected WrongExpectedVersion with actual {want}, got {other:?}"),
    };
    wrong(
        host(0)
            .append(&s, ExpectedVersion::StreamExists, vec![event("E", 1)])
            .await,
        0,
    );
    wrong(
        host(1)
            .append(&s, ExpectedVersion::Exact(1), vec![event("E", 1)])
            .await,
        0,
    );
    host(0)
        .append(&s, ExpectedVersion::Exact(0), vec![event("E", 1)])
        .await
        .unwrap();
    wrong(
        host(1)
            .append(&s, ExpectedVersion::NoStream, vec![event("E", 2)])
            .await,
        1,
    );
    wrong(
        host(0)
            .append(&s, ExpectedVersion::Exact(0), vec![event("E", 2)])
            .await,
        1,
    );
    wrong(
        host(1)
            .append(&s, ExpectedVersion::Exact(5), vec![event("E", 2)])
            .await,
        1,
    );
    host(1)
        .append(&s, ExpectedVersion::StreamExists, vec![event("E", 2)])
        .await
        .unwrap();
    host(0)
        .append(&s, ExpectedVersion::Any, vec![event("E", 3)])
        .await
        .unwrap();
    // Host 1 last saw version 2; the stream is at 3.
    host(1)
        .append(&s, ExpectedVersion::Exact(3), vec![event("E", 4)])
        .await
        .unwrap();
    wrong(
        host(0)
            .append(&s, ExpectedVersion::Exact(3), vec![event("E", 5)])
            .await,
        4,
    );
    assert_eq!(host(0).stream_version(&s).await.unwrap(), 4);
    assert_eq!(head(host(1)).await, 4, "refused appends wrote nothing");
}

async fn repeats_return_the_original_result_and_write_nothing<S: EventStore>(stores: &[S]) {
    let (one, two) = (&stores[0], &stores[stores.len() - 1]);
    let s = stream("s");
    let batch = vec![event("E", 1), event("E", 2)];
    let original = one
        .append(&s, ExpectedVersion::NoStream, batch.clone())
        .await
        .unwrap();
    for (i, expected) in [
        ExpectedVersion::NoStream,
        ExpectedVersion::Exact(0),
        ExpectedVersion::Any,
        ExpectedVersion::StreamExists,
    ]
    .into_iter()
    .enumerate()
    {
        let host = if i % 2 == 0 { one } else { two };
        assert_eq!(
            host.append(&s, expected, batch.clone()).await.unwrap(),
            original
        );
    }
    assert_eq!(head(one).await, 2, "no repeat wrote anything");
    two.append(&s, ExpectedVersion::Any, vec![event("E", 3)])
        .await
        .unwrap();
    for expected in [ExpectedVersion::NoStream, ExpectedVersion::Exact(0)] {
        assert_eq!(
            one.append(&s, expected, batch.clone()).await.unwrap(),
            original
        );
    }
    match one
        .append(&s, ExpectedVersion::Exact(1), batch.clone())
        .await
    {
        Err(StoreError::WrongExpectedVersion { actual: 3, .. }) => {}
        other => panic!("expected WrongExpectedVersion, got {other:?}"),
    }
    let diverging = vec![batch[0].clone(), event("E", 9)];
    assert!(matches!(
        two.append(&s, ExpectedVersion::NoStream, diverging).await,
        Err(StoreError::DuplicateEventId { version: 1, .. })
    ));
    let tail = one.read_stream(&s, 3, Direction::Forward, 1).await.unwrap();
    let partial = vec![
        NewEvent {
            event_id: tail[0].event_id,
            ..event("E", 3)
        },
        event("E", 9),
    ];
    assert!(matches!(
        one.append(&s, ExpectedVersion::Exact(2), partial).await,
        Err(StoreError::DuplicateEventId { version: 3, .. })
    ));
    assert_eq!(head(one).await, 3);
    let late = two
        .append(&s, ExpectedVersion::Any, batch.clone())
        .await
        .unwrap();
    assert_eq!(
        late.stream_version, 5,
        "with Any, a late retry is a new append"
    );
    // Idempotency is stream-local: an id may be used again in another stream.
    let elsewhere = one
        .append(
            &stream("other"),
            ExpectedVersion::Any,
            vec![batch[0].clone()],
        )
        .await
        .unwrap();
    assert_eq!(elsewhere.stream_version, 1);
    assert_eq!(head(two).await, 6);
}

async fn concurrent_repeats_through_several_hosts_store_it_once<S: EventStore>(stores: &[S]) {
    let s = stream("s");
    let batch = vec![event("E", 1), event("E", 2)];
    let tasks: Vec<_> = (0..24)
        .map(|i| {
            let (store, s, batch) = (stores[i % stores.len()].clone(), s.clone(), batch.clone());
            tokio::spawn(async move { store.append(&s, ExpectedVersion::NoStream, batch).await })
        })
        .collect();
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap().expect("every repeat succeeds"));
    }
    assert!(
        results.windows(2).all(|w| w[0] == w[1]),
        "all answered alike: {results:?}"
    );
    assert_eq!(head(&stores[0]).await, 2);
}

async fn command_ids_record_repeat_and_refuse<S: EventStore>(stores: &[S]) {
    let (one, two) = (&stores[0], &stores[stores.len() - 1]);
    let (a, b) = (stream("a"), stream("b"));
    let fp = Some([7u8; 32]);
    let first = one
        .append_command(&a, ExpectedVersion::Any, vec![event("E", 1)], "cmd-1", fp)
        .await
        .unwrap();
    assert!(!first.repeated);
    let record = two
        .command_record("cmd-1")
        .await
        .unwrap()
        .expect("recorded");
    assert_eq!(
        (record.stream.clone(), record.result, record.fingerprint),
        (a.clone(), first.result, fp)
    );
    // The same request again, on either host and with fresh event ids: the original.
    let again = two
        .append_command(&a, ExpectedVersion::Any, vec![event("E", 2)], "cmd-1", fp)
        .await
        .unwrap();
    assert!(again.repeated);
    assert_eq!(again.result, first.result);
    // Another stream or another fingerprint: refused.
    assert!(matches!(
        two.append_command(&b, ExpectedVersion::Any, vec![event("E", 3)], "cmd-1", fp)
            .await,
        Err(StoreError::CommandIdInUse { .. })
    ));
    assert!(matches!(
        one.append_command(
            &a,
            ExpectedVersion::Any,
            vec![event("E", 3)],
            "cmd-1",
            Some([8; 32])
        )
        .await,
        Err(StoreError::CommandIdInUse { .. })
    ));
    // The same id raced through both hosts at once: one write.
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let store = stores[i % stores.len()].clone();
            let b = b.clone();
            tokio::spawn(async move {
                store
                    .append_command(
                        &b,
                        ExpectedVersion::Any,
                        vec![event("E", i as u64)],
                        "cmd-2",
                        None,
                    )
                    .await
            })
        })
        .collect();
    let mut written = 0;
    let mut result = None;
    for t in tasks {
        let r = t.await.unwrap().unwrap();
        written += usize::from(!r.repeated);
        assert!(result.is_none_or(|x| x == r.result));
        result = Some(r.result);
    }
    assert_eq!(written, 1);
    assert_eq!(head(one).await, 2);
    assert!(one.command_record("nope").await.unwrap().is_none());

    // A retried command whose expectation no longer holds (the stream moved on,
    // through the other host) is still answered with its original append.
    let c = stream("c");
    let original = one
        .append_command(
            &c,
            ExpectedVersion::NoStream,
            vec![event("E", 1)],
            "cmd-3",
            fp,
        )
        .await
        .unwrap();
    two.append(&c, ExpectedVersion::Any, vec![event("E", 2)])
        .await
        .unwrap();
    for host in [one, two] {
        let retry = host
            .append_command(
                &c,
                ExpectedVersion::NoStream,
                vec![event("E", 1)],
                "cmd-3",
                fp,
            )
            .await
            .unwrap();
        assert!(retry.repeated);
        assert_eq!(retry.result, original.result);
        // The same id for another stream, whose expectation also fails: the id is named.
        assert!(matches!(
            host.append_command(
                &a,
                ExpectedVersion::Exact(99),
                vec![event("E", 1)],
                "cmd-3",
                fp
            )
            .await,
            Err(StoreError::CommandIdInUse { .. })
        ));
    }
}

async fn invalid_appends_are_refused_and_write_nothing<S: EventStore>(stores: &[S]) {
    let store = &stores[0];
    let s = stream("s");
    let invalid = |r: Result<_, StoreError>| match r {
        Err(StoreError::InvalidEvent { reason, .. }) => reason,
        other => panic!("expected InvalidEvent, got {other:?}"),
    };
    assert!(invalid(store.append(&s, ExpectedVersion::Any, vec![]).await).contains("at least one"));
    assert!(
        invalid(
            store
                .append(&s, ExpectedVersion::Any, vec![NewEvent::new("E", "{nope")])
                .await
        )
        .contains("JSON")
    );
    assert!(
        invalid(
            store
                .append(
                    &s,
                    ExpectedVersion::Any,
                    vec![NewEvent::new("E", "{}").at_schema_version(0)]
                )
                .await
        )
        .contains("schema version")
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
    let no_id = store
        .append_command(&s, ExpectedVersion::Any, vec![event("E", 1)], "", None)
        .await;
    assert!(invalid(no_id.map(|r| r.result)).contains("command id"));
    assert_eq!(head(store).await, 0);
}

async fn global_log_pages_filter_and_say_where_to_go_next<S: EventStore>(stores: &[S]) {
    let store = &stores[0];
    let orders = StreamId::new("order", "o1").unwrap();
    for i in 0..10u64 {
        let (s, t) = if i % 2 == 0 {
            (stream("a"), "Even")
        } else {
            (orders.clone(), "Odd")
        };
        store
            .append(&s, ExpectedVersion::Any, vec![event(t, i)])
            .await
            .unwrap();
    }
    let page = store.read_all(1, 3, &EventFilter::all()).await.unwrap();
    assert_eq!(
        page.events.iter().map(|e| e.position).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert_eq!((page.next_position, page.head), (4, 10));
    let evens = EventFilter {
        event_types: vec!["Even".into()],
        ..EventFilter::default()
    };
    let page = store.read_all(1, 100, &evens).await.unwrap();
    assert_eq!(
        page.events.iter().map(|e| e.position).collect::<Vec<_>>(),
        vec![1, 3, 5, 7, 9]
    );
    assert_eq!(
        page.next_position, 11,
        "everything up to the head was examined"
    );
    let only_orders = EventFilter {
        aggregate_types: vec!["order".into()],
        ..EventFilter::default()
    };
    let page = store.read_all(5, 2, &only_orders).await.unwrap();
    assert_eq!(
        page.events.iter().map(|e| e.position).collect::<Vec<_>>(),
        vec![6, 8]
    );
    assert_eq!(page.next_position, 9);
    let past = store.read_all(11, 10, &EventFilter::all()).await.unwrap();
    assert!(past.events.is_empty());
    assert_eq!((past.next_position, past.head), (11, 10));
}

async fn the_hash_chain_links_every_event<S: EventStore>(stores: &[S]) {
    for i in 0..40u64 {
        let store = &stores[i as usize % stores.len()];
        let s = stream(&format!("s{}", i % 3));
        let events = (0..=(i % 3)).map(|k| event("E", i * 10 + k)).collect();
        store
            .append(&s, ExpectedVersion::Any, events)
            .await
            .unwrap();
    }
    let page = stores[0]
        .read_all(1, 1000, &EventFilter::all())
        .await
        .unwrap();
    let mut previous = ZERO;
    for e in &page.events {
        let want = chain_next(&previous, e.position, &canonical_body(e));
        assert_eq!(e.chain, want, "the chain at {}", e.position);
        previous = e.chain;
    }
    assert_eq!(page.events.len() as u64, page.head);
}

async fn subscriptions_catch_up_then_follow_other_hosts<S: EventStore + EventStoreClose>(
    stores: &[S],
) {
    let (reader, writer) = (&stores[0], &stores[stores.len() - 1]);
    for i in 0..5 {
        writer
            .append(&stream("s"), ExpectedVersion::Any, vec![event("E", i)])
            .await
            .unwrap();
    }
    let mut sub = reader.subscribe(3, EventFilter::all());
    for want in 3..=5 {
        let e = tokio::time::timeout(Duration::from_secs(5), sub.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(e.position, want);
    }
    // Live: appends through the other host reach this host's subscription.
    for i in 5..8 {
        writer
            .append(&stream("s"), ExpectedVersion::Any, vec![event("E", i)])
            .await
            .unwrap();
    }
    let started = Instant::now();
    for want in 6..=8 {
        let e = tokio::time::timeout(Duration::from_secs(5), sub.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(e.position, want);
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "followed within moments: {:?}",
        started.elapsed()
    );
    // Closing the store ends its subscriptions (a server shutting down waits on them).
    for s in stores {
        EventStoreClose::close(s).await;
    }
    let end = tokio::time::timeout(Duration::from_secs(5), sub.next()).await;
    assert!(matches!(end, Ok(None)), "the subscription ended: {end:?}");
}

/// `close` is not part of the contract (it is each backend's own); the
/// subscription test needs it.
trait EventStoreClose {
    async fn close(&self);
}
impl EventStoreClose for refold::store::Store {
    async fn close(&self) {
        refold::store::Store::close(self).await
    }
}
impl EventStoreClose for PgStore {
    async fn close(&self) {
        PgStore::close(self).await
    }
}

/// In the style of the peers' own race tests: many appenders on several hosts,
/// a follower paging the log as fast as it can. The follower must see every
/// position exactly once, in order, with no gap ever closed behind it.
async fn racing_appenders_never_let_a_follower_skip_or_repeat<S: EventStore>(stores: &[S]) {
    let done = Arc::new(AtomicBool::new(false));
    let follower = {
        let (store, done) = (stores[0].clone(), done.clone());
        tokio::spawn(async move {
            let mut seen: Vec<u64> = Vec::new();
            let mut next = 1;
            loop {
                let finished = done.load(Ordering::Acquire);
                let page = store
                    .read_all(next, 256, &EventFilter::all())
                    .await
                    .unwrap();
                for e in &page.events {
                    assert_eq!(
                        e.position, next,
                        "the follower skipped or repeated a position"
                    );
                    seen.push(e.position);
                    next += 1;
                }
                assert_eq!(page.next_position, next);
                if finished && page.events.is_empty() {
                    return seen;
                }
                tokio::task::yield_now().await;
            }
        })
    };
    let appenders: Vec<_> = (0..24)
        .map(|i| {
            let store = stores[i % stores.len()].clone();
            tokio::spawn(async move {
                let mut acked = Vec::new();
                for k in 0..40u64 {
                    let s = stream(&format!("r{}", (i as u64 * 7 + k) % 10));
                    let events: Vec<NewEvent> = (0..1 + k % 3).map(|j| event("E", j)).collect();
                    let ids: Vec<_> = events.iter().map(|e| e.event_id).collect();
                    let r = store
                        .append(&s, ExpectedVersion::Any, events)
                        .await
                        .unwrap();
                    acked.push((r, ids));
                }
                acked
            })
        })
        .collect();
    let mut acked = Vec::new();
    for t in appenders {
        acked.extend(t.await.unwrap());
    }
    done.store(true, Ordering::Release);
    let seen = follower.await.unwrap();
    let total: u64 = acked
        .iter()
        .map(|(r, _)| r.last_position - r.first_position + 1)
        .sum();
    assert_eq!(
        seen.len() as u64,
        total,
        "every acknowledged event was followed once"
    );
    // Each acknowledged append holds its own events at the positions it was told.
    let log = stores[stores.len() - 1]
        .read_all(1, usize::MAX, &EventFilter::all())
        .await
        .unwrap();
    for (r, ids) in &acked {
        let got: Vec<_> = log.events[r.first_position as usize - 1..r.last_position as usize]
            .iter()
            .map(|e| e.event_id)
            .collect();
        assert_eq!(&got, ids);
    }
}

/// Optimistic concurrency across hosts: every caller reads, decides and
/// appends with `Exact`; the winners' events are the stream, in order, and
/// every loser was told the version that beat it.
async fn the_same_stream_through_several_hosts_loses_no_write<S: EventStore>(stores: &[S]) {
    let s = stream("contended");
    let tasks: Vec<_> = (0..12)
        .map(|i| {
            let (store, s) = (stores[i % stores.len()].clone(), s.clone());
            tokio::spawn(async move {
                let mut wins = Vec::new();
                let mut conflicts = 0;
                while wins.len() < 10 {
                    let v = store.stream_version(&s).await.unwrap();
                    let e = event("E", i as u64);
                    match store
                        .append(&s, ExpectedVersion::Exact(v), vec![e.clone()])
                        .await
                    {
                        Ok(r) => {
                            assert_eq!(r.stream_version, v + 1);
                            wins.push((v + 1, e.event_id));
                        }
                        Err(StoreError::WrongExpectedVersion { actual, .. }) => {
                            assert!(
                                actual > v,
                                "refused by a newer version: read {v}, told {actual}"
                            );
                            conflicts += 1;
                        }
                        Err(other) => panic!("{other}"),
                    }
                }
                (wins, conflicts)
            })
        })
        .collect();
    let mut wins = Vec::new();
    for t in tasks {
        let (w, _) = t.await.unwrap();
        wins.extend(w);
    }
    wins.sort();
    let stored: Vec<_> = stores[0]
        .read_stream(&s, 1, Direction::Forward, 1000)
        .await
        .unwrap()
        .iter()
        .map(|e| (e.version, e.event_id))
        .collect();
    assert_eq!(
        stored, wins,
        "exactly the acknowledged writes, each at its version"
    );
    assert_eq!(stored.len(), 120);
}
