//! Model-based test: rounds of concurrent appends with random expected versions
//! and retries, checked against a plain in-memory model of a stream store.
//!
//! Within a round the appends race, so the test cannot know their order up
//! front. It recovers the order the store chose from the positions it returned,
//! replays the accepted appends through the model in that order (each must be
//! admissible there and get the versions the model gives), and checks every
//! rejection against some state the stream passed through during the round.

mod support;

use std::collections::HashMap;

use proptest::prelude::*;
use refold::store::{
    AppendResult, Direction, Durability, EventFilter, EventStore, ExpectedVersion, NewEvent,
    StoreError, StreamId,
};
use support::{open, temp_dir};
use uuid::Uuid;

const STREAMS: usize = 3;

#[derive(Clone, Debug)]
enum Expect {
    Any,
    NoStream,
    StreamExists,
    /// The model's current version plus this offset (often 0, so often right).
    Exact(i8),
}

#[derive(Clone, Debug)]
enum Op {
    Append {
        stream: usize,
        expect: Expect,
        events: usize,
    },
    /// Resend an earlier accepted append (picked by index), with its own or another expectation.
    Retry {
        pick: usize,
        same_expectation: bool,
        expect: Expect,
    },
}

fn expect_strategy() -> impl Strategy<Value = Expect> {
    prop_oneof![
        2 => Just(Expect::Any),
        1 => Just(Expect::NoStream),
        1 => Just(Expect::StreamExists),
        4 => (-1i8..=1).prop_map(Expect::Exact),
    ]
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..STREAMS, expect_strategy(), 1usize..=3)
            .prop_map(|(stream, expect, events)| Op::Append { stream, expect, events }),
        1 => (any::<usize>(), any::<bool>(), expect_strategy())
            .prop_map(|(pick, same_expectation, expect)| Op::Retry { pick, same_expectation, expect }),
    ]
}

/// The model: each stream is the list of its event ids; the log is (stream, id).
#[derive(Default)]
struct Model {
    streams: HashMap<usize, Vec<Uuid>>,
    log: Vec<(usize, Uuid)>,
}

impl Model {
    fn version(&self, stream: usize) -> u64 {
        self.streams.get(&stream).map_or(0, |s| s.len() as u64)
    }
}

/// An append as sent, kept so it can be retried.
#[derive(Clone, Debug)]
struct Sent {
    stream: usize,
    expected: ExpectedVersion,
    events: Vec<NewEvent>,
}

/// The model's own reading of EventStoreDB's expected versions: deliberately not
/// the store's `ExpectedVersion::admits`, so a bug there cannot hide here.
fn model_admits(expected: ExpectedVersion, actual: u64) -> bool {
    match expected {
        ExpectedVersion::Any => true,
        ExpectedVersion::NoStream | ExpectedVersion::Exact(0) => actual == 0,
        ExpectedVersion::StreamExists => actual >= 1,
        ExpectedVersion::Exact(v) => actual == v,
    }
}

fn stream_id(i: usize) -> StreamId {
    StreamId::new("model", format!("s{i}")).unwrap()
}

fn resolve(expect: &Expect, current: u64) -> ExpectedVersion {
    match expect {
        Expect::Any => ExpectedVersion::Any,
        Expect::NoStream => ExpectedVersion::NoStream,
        Expect::StreamExists => ExpectedVersion::StreamExists,
        Expect::Exact(d) => ExpectedVersion::Exact(current.saturating_add_signed(*d as i64)),
    }
}

fn run_case(rounds: Vec<Vec<Op>>, backend: Backend) -> Result<(), TestCaseError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        match backend {
            Backend::Sled(durability) => {
                let dir = temp_dir();
                let store = open(&dir, durability);
                model_rounds(std::slice::from_ref(&store), rounds).await?;
                store.close().await;
            }
            Backend::Postgres => {
                // Two hosts on one database: the round's appends alternate between them.
                let url = support::pg::database();
                let a = refold::store::pg::PgStore::open(&url).await.unwrap();
                let b = refold::store::pg::PgStore::open(&url).await.unwrap();
                model_rounds(&[a.clone(), b.clone()], rounds).await?;
                a.close().await;
                b.close().await;
            }
        }
        Ok(())
    })
}

#[derive(Clone, Copy, Debug)]
enum Backend {
    Sled(Durability),
    Postgres,
}

async fn model_rounds<S: EventStore>(
    stores: &[S],
    rounds: Vec<Vec<Op>>,
) -> Result<(), TestCaseError> {
    {
        let store = &stores[0];
        let mut model = Model::default();
        let mut accepted: Vec<(Sent, AppendResult)> = Vec::new();

        for round in rounds {
            // Build this round's requests from the model as it stands before the round.
            let mut requests = Vec::new();
            for op in round {
                match op {
                    Op::Append {
                        stream,
                        expect,
                        events,
                    } => {
                        let expected = resolve(&expect, model.version(stream));
                        let events = (0..events)
                            .map(|n| NewEvent::new("Happened", format!("{{\"n\":{n}}}")))
                            .collect();
                        requests.push((
                            Sent {
                                stream,
                                expected,
                                events,
                            },
                            None,
                        ));
                    }
                    Op::Retry {
                        pick,
                        same_expectation,
                        expect,
                    } if !accepted.is_empty() => {
                        let (sent, original) = accepted[pick % accepted.len()].clone();
                        let expected = if same_expectation {
                            sent.expected
                        } else {
                            resolve(&expect, model.version(sent.stream))
                        };
                        requests.push((Sent { expected, ..sent }, Some(original)));
                    }
                    Op::Retry { .. } => {}
                }
            }
            let tasks: Vec<_> = requests
                .iter()
                .enumerate()
                .map(|(i, (sent, _))| {
                    let (store, sent) = (stores[i % stores.len()].clone(), sent.clone());
                    tokio::spawn(async move {
                        let stream = stream_id(sent.stream);
                        let result = store
                            .append(&stream, sent.expected, sent.events.clone())
                            .await;
                        // Read-your-writes: an acknowledged append is readable at once.
                        if let Ok(r) = &result {
                            let read = store
                                .read_stream(&stream, r.stream_version, Direction::Forward, 1)
                                .await
                                .unwrap();
                            assert_eq!(
                                read[0].event_id,
                                sent.events.last().unwrap().event_id,
                                "read-your-writes"
                            );
                        }
                        result
                    })
                })
                .collect();
            let mut outcomes = Vec::new();
            for t in tasks {
                outcomes.push(t.await.expect("append task"));
            }

            // Versions each stream passes through during the round (for judging rejections).
            let mut seen_versions: HashMap<usize, Vec<u64>> =
                (0..STREAMS).map(|s| (s, vec![model.version(s)])).collect();
            // New writes, in the order the store committed them. A retry is a new
            // write when it does not return its original's result: idempotency is
            // stream-local, so a retry away from its original's place is written.
            // (A retry can also repeat an earlier retry that was written anew: any
            // result below the round's first position is a repeat.)
            let logged_before = model.log.len() as u64;
            let mut fresh: Vec<(&Sent, &AppendResult)> = requests
                .iter()
                .zip(&outcomes)
                .filter_map(|((sent, _), out)| match out {
                    Ok(r) if r.first_position > logged_before => Some((sent, r)),
                    _ => None,
                })
                .collect();
            fresh.sort_by_key(|(_, r)| r.first_position);
            // Two retries of one append in a round: the later one can repeat the
            // earlier one's new write. One write, answered twice.
            fresh.dedup_by(|(later, b), (earlier, a)| {
                a == b
                    && later
                        .events
                        .iter()
                        .map(|e| e.event_id)
                        .eq(earlier.events.iter().map(|e| e.event_id))
            });
            for (sent, result) in fresh {
                let before = model.version(sent.stream);
                prop_assert!(
                    model_admits(sent.expected, before),
                    "store accepted {:?} at version {before}",
                    sent.expected
                );
                let n = sent.events.len() as u64;
                prop_assert_eq!(
                    result.first_position,
                    model.log.len() as u64 + 1,
                    "gapless positions"
                );
                prop_assert_eq!(result.last_position, result.first_position + n - 1);
                prop_assert_eq!(result.stream_version, before + n, "contiguous versions");
                for e in &sent.events {
                    model
                        .streams
                        .entry(sent.stream)
                        .or_default()
                        .push(e.event_id);
                    model.log.push((sent.stream, e.event_id));
                }
                seen_versions
                    .get_mut(&sent.stream)
                    .unwrap()
                    .push(model.version(sent.stream));
                accepted.push((sent.clone(), *result));
            }

            for ((sent, original), outcome) in requests.iter().zip(&outcomes) {
                let seen = &seen_versions[&sent.stream];
                match (original, outcome) {
                    (None, Ok(_)) => {}
                    (None, Err(StoreError::WrongExpectedVersion { actual, .. })) => {
                        prop_assert!(
                            seen.contains(actual),
                            "actual {actual} is a version the stream had: {seen:?}"
                        );
                        prop_assert!(
                            !model_admits(sent.expected, *actual),
                            "{:?} rejected at {actual}",
                            sent.expected
                        );
                    }
                    (Some(original), outcome) => {
                        // The place the retry's expectation names, and the original's.
                        let n = sent.events.len() as u64;
                        let first_version = original.stream_version - n + 1;
                        let exact_place = match sent.expected {
                            ExpectedVersion::Any | ExpectedVersion::StreamExists => None,
                            ExpectedVersion::NoStream => Some(1),
                            ExpectedVersion::Exact(v) => Some(v + 1),
                        };
                        match outcome {
                            Ok(r) if r.first_position <= logged_before => {
                                // A repeat of what is at those positions.
                                let logged: Vec<Uuid> = model.log
                                    [r.first_position as usize - 1..r.last_position as usize]
                                    .iter()
                                    .map(|(_, id)| *id)
                                    .collect();
                                let sent_ids: Vec<Uuid> =
                                    sent.events.iter().map(|e| e.event_id).collect();
                                prop_assert_eq!(
                                    logged,
                                    sent_ids,
                                    "a repeat answers its own events"
                                );
                                // ...at the place its expectation names.
                                let repeated_at = r.stream_version - n + 1;
                                prop_assert!(
                                    match exact_place {
                                        Some(place) => place == repeated_at,
                                        None => seen.contains(&r.stream_version),
                                    },
                                    "a repeat away from its place"
                                );
                            }
                            Ok(_) => {
                                // Written anew (judged with the fresh writes above).
                                prop_assert!(
                                    exact_place != Some(first_version),
                                    "a retry at its original's place was written again"
                                );
                            }
                            Err(StoreError::WrongExpectedVersion { actual, .. }) => {
                                prop_assert!(exact_place != Some(first_version));
                                prop_assert!(seen.contains(actual));
                                prop_assert!(!model_admits(sent.expected, *actual));
                            }
                            Err(other) => prop_assert!(false, "retry failed with {other}"),
                        }
                    }
                    (None, Err(other)) => prop_assert!(false, "unexpected error {other}"),
                }
            }

            // The store's reads equal the model after every round.
            let head = store
                .read_all(1, 0, &EventFilter::all())
                .await
                .unwrap()
                .head;
            prop_assert_eq!(head, model.log.len() as u64);
            for s in 0..STREAMS {
                let read: Vec<Uuid> = store
                    .read_stream(&stream_id(s), 1, Direction::Forward, usize::MAX)
                    .await
                    .unwrap()
                    .iter()
                    .map(|e| e.event_id)
                    .collect();
                let want = model.streams.get(&s).cloned().unwrap_or_default();
                prop_assert_eq!(read, want);
                prop_assert_eq!(
                    store.stream_version(&stream_id(s)).await.unwrap(),
                    model.version(s)
                );
            }
        }
        let log: Vec<(String, Uuid)> = store
            .read_all(1, usize::MAX, &EventFilter::all())
            .await
            .unwrap()
            .events
            .into_iter()
            .map(|e| (e.stream.aggregate_id().to_string(), e.event_id))
            .collect();
        let want: Vec<(String, Uuid)> = model
            .log
            .iter()
            .map(|(s, id)| (format!("s{s}"), *id))
            .collect();
        prop_assert_eq!(log, want, "the global log is the model's log");
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn concurrent_appends_agree_with_the_model(
        rounds in prop::collection::vec(prop::collection::vec(op_strategy(), 1..8), 1..10),
        fsync in any::<bool>(),
    ) {
        run_case(rounds, Backend::Sled(if fsync { Durability::Fsync } else { Durability::None }))?;
    }
}

proptest! {
    // Each case creates a database and two hosts on it: fewer cases.
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// The same model, with two PostgreSQL hosts sharing one database.
    #[test]
    fn concurrent_appends_through_two_postgres_hosts_agree_with_the_model(
        rounds in prop::collection::vec(prop::collection::vec(op_strategy(), 1..8), 1..10),
    ) {
        run_case(rounds, Backend::Postgres)?;
    }
}
