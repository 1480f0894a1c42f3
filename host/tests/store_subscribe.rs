//! Subscriptions: catch up from disk, then follow live appends, with no gap and
//! no duplicate at the hand-over, while writers keep appending.

mod support;

use std::time::Duration;

use futures::StreamExt;
use refold::store::{Durability, EventFilter, ExpectedVersion, RecordedEvent, Store, StreamId};
use support::{event, open, stream, temp_dir};

const WRITERS: u64 = 8;
const PER_WRITER: u64 = 250;

async fn append_concurrently(
    store: &Store,
    aggregate_type: &'static str,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..WRITERS)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                let s = StreamId::new(aggregate_type, format!("w{w}")).unwrap();
                for n in 0..PER_WRITER {
                    store
                        .append(&s, ExpectedVersion::Any, vec![event("Tick", n)])
                        .await
                        .unwrap();
                    if n % 50 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
            })
        })
        .collect()
}

async fn take(
    stream: impl futures::Stream<Item = Result<RecordedEvent, refold::store::StoreError>> + Unpin,
    n: usize,
) -> Vec<RecordedEvent> {
    let collect = stream
        .take(n)
        .map(|r| r.expect("subscription yields events, not errors"))
        .collect::<Vec<_>>();
    tokio::time::timeout(Duration::from_secs(60), collect)
        .await
        .expect("subscription delivered everything within 60 s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_subscription_started_mid_stream_sees_every_event_once_in_order() {
    let dir = temp_dir();
    let store = open(&dir, Durability::Fsync);
    let s = stream("history");
    for n in 0..300 {
        store
            .append(&s, ExpectedVersion::Any, vec![event("Old", n)])
            .await
            .unwrap();
    }
    let total = 300 + WRITERS * PER_WRITER;
    // Subscribe while history exists and writers are starting: the hand-over from
    // catch-up to live happens while appends land.
    let sub = Box::pin(store.subscribe(1, EventFilter::all()));
    let writers = append_concurrently(&store, "account").await;
    let got = take(sub, total as usize).await;
    for w in writers {
        w.await.unwrap();
    }
    support::assert_gapless(&got, total);
    assert_eq!(store.head(), total);
    // What the subscription delivered is exactly what the log holds.
    assert!(
        got == support::read_whole_log(&store),
        "subscription and log differ"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_filtered_subscription_from_a_position_gets_only_matching_events() {
    let dir = temp_dir();
    let store = open(&dir, Durability::None);
    for n in 0..100 {
        store
            .append(&stream("a"), ExpectedVersion::Any, vec![event("Old", n)])
            .await
            .unwrap();
    }
    let filter = EventFilter {
        event_types: vec![],
        aggregate_types: vec!["order".into()],
    };
    let sub = Box::pin(store.subscribe(50, filter.clone()));
    let order_writers = append_concurrently(&store, "order").await;
    let noise = append_concurrently(&store, "noise").await;
    let got = take(sub, (WRITERS * PER_WRITER) as usize).await;
    for w in order_writers.into_iter().chain(noise) {
        w.await.unwrap();
    }
    assert!(got.iter().all(|e| e.stream.aggregate_type() == "order"));
    assert!(
        got.windows(2).all(|w| w[0].position < w[1].position),
        "strictly increasing positions"
    );
    let mut expected = Vec::new();
    let mut from = 1;
    loop {
        let page = store.read_all(from, 10_000, &filter).unwrap();
        expected.extend(page.events);
        if page.next_position > page.head {
            break;
        }
        from = page.next_position;
    }
    assert_eq!(got.len(), expected.len());
    assert!(
        got == expected,
        "the subscription delivered exactly the filtered log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_subscriber_still_gets_everything_and_does_not_hold_up_writers() {
    let dir = temp_dir();
    let store = open(&dir, Durability::None);
    let mut sub = Box::pin(store.subscribe(1, EventFilter::all()));
    let writers = append_concurrently(&store, "account").await;
    for w in writers {
        w.await.unwrap(); // writers finish although nobody has read a single event yet
    }
    let total = WRITERS * PER_WRITER;
    let mut next = 1;
    while next <= total {
        let e = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(e.position, next);
        next += 1;
        if next % 500 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

#[tokio::test]
async fn a_subscription_ends_when_the_store_closes() {
    let dir = temp_dir();
    let store = open(&dir, Durability::None);
    store
        .append(&stream("a"), ExpectedVersion::Any, vec![event("E", 1)])
        .await
        .unwrap();
    let mut sub = Box::pin(store.subscribe(1, EventFilter::all()));
    assert_eq!(sub.next().await.unwrap().unwrap().position, 1);
    store.close().await;
    let end = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("ends promptly");
    assert!(end.is_none());
}
