//! Adversarial tests of the PostgreSQL backend (issue 15's attack pass), kept
//! as regression tests. What the pass found, now refused:
//! - put_module storing bytes under a digest the record only claimed (a lying
//!   upload squatting an honest module's bytes);
//! - a read-model commit moving the checkpoint backwards;
//! - refold_head's position or chain, or a stream's version, altered by hand
//!   and silently built upon (a gap in the log, a broken chain, a hole in a
//!   stream): refused as `corrupt_record`, nothing written.
//!
//! The rest pins down what held: differential runs against sled, limits,
//! races between hosts, paging under writers, closed stores, leases, the
//! catalog, migrate, killed connections.

mod support;

use support::pg::module_record as record;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use futures::StreamExt;
use refold::store::pg::PgStore;
use refold::store::{
    Durability, EventFilter, EventStore, ExpectedVersion, ModulePut, NewEvent, StoreError, StreamId,
};
use sha2::Digest;
use support::temp_dir;

/// A command id and its fingerprint, as an append carried them.
type Command = Option<(String, Option<[u8; 32]>)>;

fn ev(n: u64) -> NewEvent {
    NewEvent::new("Happened", format!(r#"{{"n":{n}}}"#))
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn outcome<T: std::fmt::Debug>(r: &Result<T, StoreError>) -> String {
    match r {
        Ok(v) => format!("ok {v:?}"),
        Err(e) => format!("err {}", e.code()),
    }
}

// ---------------------------------------------------------------- differential

/// The same random sequence of appends (with idempotent repeats, command ids
/// with and without fingerprints) against sled and PostgreSQL: same answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn differential_pg_matches_sled() {
    for seed in [0x9e3779b97f4a7c15u64, 42, 0xdeadbeef, 7] {
        differential(seed, 1).await;
    }
}

/// The same, with PostgreSQL's appends spread over three hosts in turn (so
/// each host's cached stream versions and tails are stale most of the time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn differential_three_pg_hosts_match_one_sled() {
    for seed in [3u64, 0x1234567, 99, 0xfeedface] {
        differential(seed, 3).await;
    }
}

async fn differential(seed: u64, hosts: usize) {
    let dir = temp_dir();
    let sled = support::open(&dir, Durability::None);
    let url = support::pg::database();
    let mut pgs = Vec::new();
    for _ in 0..hosts {
        pgs.push(PgStore::open(&url).await.unwrap());
    }
    let pg0 = pgs[0].clone();
    let streams: Vec<StreamId> = ["a", "b", "ü-ß-😀", "a b"]
        .iter()
        .map(|s| StreamId::new("acct", *s).unwrap())
        .collect();
    let mut rng = Rng(seed);
    // History of appended batches per stream, for repeats.
    let mut history: Vec<(usize, Vec<NewEvent>, Command)> = Vec::new();
    let mut mismatches = Vec::new();
    for step in 0..400u64 {
        let s = rng.below(streams.len() as u64) as usize;
        let choice = rng.below(10);
        let (s, events, command) = if choice < 4 && !history.is_empty() {
            // Repeat (possibly partially / to another stream / other fingerprint).
            let (hs, evs, cmd) = history[rng.below(history.len() as u64) as usize].clone();
            let s2 = if rng.below(5) == 0 { s } else { hs };
            let evs = if rng.below(6) == 0 && evs.len() > 1 {
                evs[..evs.len() - 1].to_vec()
            } else {
                evs
            };
            let cmd = match (cmd, rng.below(6)) {
                (Some((id, _)), 0) => Some((id, Some([7u8; 32]))),
                (Some((id, _)), 1) => Some((id, None)),
                (c, _) => c,
            };
            (s2, evs, cmd)
        } else {
            let n = 1 + rng.below(3);
            let evs: Vec<NewEvent> = (0..n).map(|i| ev(step * 10 + i)).collect();
            let cmd = match rng.below(3) {
                0 => None,
                1 => Some((format!("cmd-{step}"), None)),
                _ => Some((format!("cmd-{step}"), Some([(step % 250) as u8; 32]))),
            };
            (s, evs, cmd)
        };
        let pg = &pgs[step as usize % hosts];
        let sv = sled.stream_version(&streams[s]).unwrap_or(0);
        let expected = match rng.below(6) {
            0 => ExpectedVersion::Any,
            1 => ExpectedVersion::StreamExists,
            2 => ExpectedVersion::NoStream,
            3 => ExpectedVersion::Exact(sv.saturating_sub(rng.below(4))),
            _ => ExpectedVersion::Exact(sv),
        };
        let (a, b) = match &command {
            None => (
                outcome(
                    &EventStore::append(&sled, &streams[s], expected, events.clone())
                        .await
                        .map(|r| (r, false)),
                ),
                outcome(
                    &pg.append(&streams[s], expected, events.clone())
                        .await
                        .map(|r| (r, false)),
                ),
            ),
            Some((id, fp)) => (
                outcome(
                    &EventStore::append_command(
                        &sled,
                        &streams[s],
                        expected,
                        events.clone(),
                        id,
                        *fp,
                    )
                    .await
                    .map(|r| (r.result, r.repeated)),
                ),
                outcome(
                    &pg.append_command(&streams[s], expected, events.clone(), id, *fp)
                        .await
                        .map(|r| (r.result, r.repeated)),
                ),
            ),
        };
        if a != b {
            mismatches.push(format!(
                "step {step}: {:?} {expected:?} n={} cmd={:?}: sled {a} / pg {b}",
                streams[s],
                events.len(),
                command.as_ref().map(|c| (&c.0, c.1.is_some()))
            ));
        }
        if a.starts_with("ok") {
            history.push((s, events, command));
        }
    }
    let sled_log = support::read_whole_log(&sled);
    let pg_log = pg0
        .read_all(1, usize::MAX, &EventFilter::all())
        .await
        .unwrap()
        .events;
    for pg in &pgs[1..] {
        pg.close().await;
    }
    let pg = pg0;
    assert!(
        mismatches.is_empty(),
        "{} mismatches:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
    assert_eq!(sled_log.len(), pg_log.len());
    for (x, y) in sled_log.iter().zip(&pg_log) {
        assert_eq!(
            (x.position, x.version, x.event_id),
            (y.position, y.version, y.event_id)
        );
    }
    pg.close().await;
    sled.close().await;
}

// ---------------------------------------------------------------- hostile input

/// Odd Unicode, max-length ids, max metadata, max data and a 1000-event
/// append all round-trip, and a small append racing them in the same group
/// commit succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_and_unicode_round_trip_and_do_not_hurt_neighbours() {
    let url = support::pg::database();
    let pg = PgStore::open(&url).await.unwrap();
    let long_type = "t".repeat(refold::store::MAX_AGGREGATE_TYPE_LEN);
    let long_id: String = "é".repeat(refold::store::MAX_AGGREGATE_ID_LEN / 2);
    let ids = [
        StreamId::new(long_type.clone(), long_id.clone()).unwrap(),
        StreamId::new("acct", "\u{202e}evil\u{200b}")
            .unwrap_or_else(|_| StreamId::new("acct", "rtl").unwrap()),
        StreamId::new("acct", "😀😀😀").unwrap(),
        StreamId::new("acct", "a'; DROP TABLE refold_events; --").unwrap(),
        StreamId::new("acct", "%_\\").unwrap(),
    ];
    let mut big = NewEvent::new(
        "Big",
        format!(
            r#"{{"s":"{}"}}"#,
            "x".repeat(refold::store::MAX_EVENT_DATA_LEN - 10)
        ),
    );
    for k in 0..refold::store::MAX_METADATA_ENTRIES {
        big.metadata.extra.insert(
            format!("{k:0>width$}", width = refold::store::MAX_METADATA_KEY_LEN),
            "v".repeat(refold::store::MAX_METADATA_VALUE_LEN),
        );
    }
    big.metadata.command_id = Some("c".repeat(refold::store::MAX_METADATA_ID_LEN));
    let mut tasks = Vec::new();
    for (i, s) in ids.iter().enumerate() {
        let (pg, s, big) = (pg.clone(), s.clone(), big.clone());
        tasks.push(tokio::spawn(async move {
            let mut events: Vec<NewEvent> = (0..1000).map(ev).collect();
            if i == 0 {
                events[0] = big;
            }
            pg.append(&s, ExpectedVersion::NoStream, events).await
        }));
    }
    let small = {
        let pg = pg.clone();
        tokio::spawn(async move {
            pg.append(
                &StreamId::new("acct", "small").unwrap(),
                ExpectedVersion::NoStream,
                vec![ev(1)],
            )
            .await
        })
    };
    for t in tasks {
        let r = t.await.unwrap();
        assert!(r.is_ok(), "{r:?}");
    }
    small.await.unwrap().unwrap();
    for s in &ids {
        assert_eq!(pg.stream_version(s).await.unwrap(), 1000);
    }
    let got = pg
        .read_stream(&ids[0], 1, refold::store::Direction::Forward, 1)
        .await
        .unwrap();
    assert_eq!(got[0].metadata, big.metadata);
    assert_eq!(got[0].data, big.data);
    pg.close().await;
}

/// Several maximal appends (1000 events x 64 KiB) in flight at once, with a
/// tiny append in the same group commit: the tiny one must not fail because
/// its batch-mates are huge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_batchmates_do_not_fail_a_small_append() {
    let url = support::pg::database();
    let pg = PgStore::open(&url).await.unwrap();
    let data = format!(
        r#"{{"s":"{}"}}"#,
        "y".repeat(refold::store::MAX_EVENT_DATA_LEN - 10)
    );
    let mut tasks = Vec::new();
    for i in 0..5 {
        let (pg, data) = (pg.clone(), data.clone());
        tasks.push(tokio::spawn(async move {
            let events: Vec<NewEvent> = (0..1000)
                .map(|_| NewEvent::new("Big", data.clone()))
                .collect();
            pg.append(
                &StreamId::new("big", format!("s{i}")).unwrap(),
                ExpectedVersion::Any,
                events,
            )
            .await
            .map(|_| ())
        }));
    }
    tokio::time::sleep(Duration::from_millis(5)).await;
    let small = pg
        .append(
            &StreamId::new("acct", "tiny").unwrap(),
            ExpectedVersion::Any,
            vec![ev(1)],
        )
        .await;
    let mut big_results = Vec::new();
    for t in tasks {
        big_results.push(outcome(&t.await.unwrap()));
    }
    assert!(
        small.is_ok(),
        "small append failed: {small:?}; big ones: {big_results:?}"
    );
    pg.close().await;
}

// ---------------------------------------------------------------- many hosts

/// Five hosts race the same command ids on the same streams: each command
/// is written once, every other attempt is a repeat with the same result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_racing_command_ids_write_each_once() {
    let url = support::pg::database();
    let mut hosts = Vec::new();
    for _ in 0..5 {
        hosts.push(PgStore::open(&url).await.unwrap());
    }
    let streams: Vec<StreamId> = (0..3)
        .map(|i| StreamId::new("acct", format!("s{i}")).unwrap())
        .collect();
    // The same events per command for every host (same event ids).
    let commands: Vec<(String, usize, Vec<NewEvent>)> = (0..60)
        .map(|c| {
            (
                format!("cmd-{c}"),
                c % 3,
                (0..1 + c % 3).map(|i| ev(i as u64)).collect(),
            )
        })
        .collect();
    let mut tasks = Vec::new();
    for (h, host) in hosts.iter().enumerate() {
        let (host, commands, streams) = (host.clone(), commands.clone(), streams.clone());
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for k in 0..commands.len() {
                let (id, s, evs) = &commands[(k + h * 7) % commands.len()];
                let r = host
                    .append_command(
                        &streams[*s],
                        ExpectedVersion::Any,
                        evs.clone(),
                        id,
                        Some([1; 32]),
                    )
                    .await
                    .unwrap_or_else(|e| panic!("{id}: {e}"));
                out.push((id.clone(), r));
            }
            out
        }));
    }
    let mut by_id: HashMap<String, Vec<refold::store::CommandAppend>> = HashMap::new();
    for t in tasks {
        for (id, r) in t.await.unwrap() {
            by_id.entry(id).or_default().push(r);
        }
    }
    for (id, rs) in &by_id {
        assert_eq!(rs.iter().filter(|r| !r.repeated).count(), 1, "{id}: {rs:?}");
        assert!(rs.iter().all(|r| r.result == rs[0].result), "{id}: {rs:?}");
    }
    let log = hosts[0]
        .read_all(1, usize::MAX, &EventFilter::all())
        .await
        .unwrap()
        .events;
    let total: usize = commands.iter().map(|c| c.2.len()).sum();
    assert_eq!(log.len(), total);
    let ids: HashSet<_> = log.iter().map(|e| e.event_id).collect();
    assert_eq!(ids.len(), total);
    for h in hosts {
        h.close().await;
    }
}

/// read_all paged with a filter while four hosts write: the pages, joined,
/// are exactly the filtered final log (nothing skipped, nothing repeated).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filtered_paging_under_concurrent_writers_never_skips() {
    let url = support::pg::database();
    let mut hosts = Vec::new();
    for _ in 0..4 {
        hosts.push(PgStore::open(&url).await.unwrap());
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for (h, host) in hosts.iter().enumerate() {
        let (host, stop) = (host.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let ty = if n.is_multiple_of(3) {
                    "wanted"
                } else {
                    "other"
                };
                let s = StreamId::new(ty, format!("h{h}-{}", n % 5)).unwrap();
                let _ = host
                    .append(&s, ExpectedVersion::Any, vec![ev(n), ev(n + 1)])
                    .await;
                n += 1;
            }
        }));
    }
    let filter = EventFilter {
        aggregate_types: vec!["wanted".into()],
        event_types: vec![],
    };
    let reader = hosts[0].clone();
    let mut seen = Vec::new();
    let mut from = 1;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(4);
    while tokio::time::Instant::now() < deadline {
        let page = reader.read_all(from, 7, &filter).await.unwrap();
        seen.extend(page.events.iter().map(|e| e.position));
        assert!(page.next_position >= from);
        from = page.next_position;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    // Drain the rest.
    loop {
        let page = reader.read_all(from, 7, &filter).await.unwrap();
        if page.events.is_empty() && page.next_position > page.head {
            break;
        }
        seen.extend(page.events.iter().map(|e| e.position));
        from = page.next_position;
    }
    let all = reader
        .read_all(1, usize::MAX, &filter)
        .await
        .unwrap()
        .events;
    let want: Vec<u64> = all.iter().map(|e| e.position).collect();
    assert!(!want.is_empty());
    assert_eq!(seen, want);
    for h in hosts {
        h.close().await;
    }
}

// ---------------------------------------------------------------- closed store

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_store_refuses_appends_and_subscriptions_end() {
    let url = support::pg::database();
    let pg = PgStore::open(&url).await.unwrap();
    let s = StreamId::new("acct", "x").unwrap();
    pg.append(&s, ExpectedVersion::Any, vec![ev(1)])
        .await
        .unwrap();
    pg.close().await;
    let r = pg.append(&s, ExpectedVersion::Any, vec![ev(2)]).await;
    assert!(matches!(r, Err(StoreError::Unavailable(_))), "{r:?}");
    let r = pg
        .append_command(&s, ExpectedVersion::Any, vec![ev(3)], "c1", None)
        .await;
    assert!(matches!(r, Err(StoreError::Unavailable(_))), "{r:?}");
    // A subscription on a closed store must end (or error), not hang forever.
    let mut sub = pg.subscribe(1, EventFilter::all());
    let first = tokio::time::timeout(Duration::from_secs(3), sub.next()).await;
    eprintln!("subscribe after close, first item: {first:?}");
    assert!(first.is_ok(), "subscription hangs on a closed store");
    let second = tokio::time::timeout(Duration::from_secs(3), sub.next()).await;
    eprintln!("subscribe after close, second item: {second:?}");
    assert!(
        second.is_ok(),
        "subscription hangs after catching up on a closed store"
    );
    close_twice(&pg).await;
}

async fn close_twice(pg: &PgStore) {
    pg.close().await;
    pg.close().await;
}

// ---------------------------------------------------------------- tampering

/// Someone bumps refold_head by hand: the next append leaves a gap in the
/// global log instead of being refused ("positions are gapless").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_bumped_head_is_refused_not_built_upon() {
    let url = support::pg::database();
    let pg = PgStore::open(&url).await.unwrap();
    let s = StreamId::new("acct", "x").unwrap();
    pg.append(&s, ExpectedVersion::Any, vec![ev(1), ev(2)])
        .await
        .unwrap();
    support::pg::shared().query(
        &url,
        "UPDATE refold_head SET position = position + 5 WHERE id = 1",
    );
    let r = pg.append(&s, ExpectedVersion::Any, vec![ev(3)]).await;
    let log = pg
        .read_all(1, usize::MAX, &EventFilter::all())
        .await
        .unwrap();
    let positions: Vec<u64> = log.events.iter().map(|e| e.position).collect();
    pg.close().await;
    assert!(
        matches!(&r, Err(e) if e.code() == "corrupt_record") && positions == vec![1, 2],
        "append after a tampered head: {r:?}; log positions {positions:?} (head {})",
        log.head
    );
}

/// Someone deletes a stream's row: the host must refuse (not rewrite
/// versions 1.. of the stream, not spin).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_stream_row_is_refused_not_rewritten() {
    let url = support::pg::database();
    let pg = PgStore::open(&url).await.unwrap();
    let s = StreamId::new("acct", "x").unwrap();
    pg.append(&s, ExpectedVersion::Any, vec![ev(1), ev(2)])
        .await
        .unwrap();
    support::pg::shared().query(&url, "DELETE FROM refold_streams");
    let started = std::time::Instant::now();
    let r = pg.append(&s, ExpectedVersion::Any, vec![ev(3)]).await;
    let took = started.elapsed();
    let other = pg
        .append(
            &StreamId::new("acct", "y").unwrap(),
            ExpectedVersion::Any,
            vec![ev(4)],
        )
        .await;
    let events = pg
        .read_stream(&s, 1, refold::store::Direction::Forward, 100)
        .await
        .unwrap();
    pg.close().await;
    assert!(
        matches!(&r, Err(e) if e.code() == "corrupt_record"),
        "{r:?}"
    );
    assert_eq!(events.len(), 2);
    assert!(
        other.is_ok(),
        "an unrelated stream is refused too: {other:?}"
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");
    eprintln!("deleted stream row: {r:?} after {took:?}");
}

/// Someone raises a stream's version by hand: the next append silently
/// writes at version 101 (a hole in the stream) instead of being refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_raised_stream_version_is_refused_not_a_hole() {
    let url = support::pg::database();
    let pg = PgStore::open(&url).await.unwrap();
    let s = StreamId::new("acct", "x").unwrap();
    pg.append(&s, ExpectedVersion::Any, vec![ev(1)])
        .await
        .unwrap();
    support::pg::shared().query(&url, "UPDATE refold_streams SET version = 100");
    let fresh = PgStore::open(&url).await.unwrap();
    let r = fresh.append(&s, ExpectedVersion::Any, vec![ev(2)]).await;
    let versions: Vec<u64> = fresh
        .read_stream(&s, 1, refold::store::Direction::Forward, 100)
        .await
        .unwrap()
        .iter()
        .map(|e| e.version)
        .collect();
    pg.close().await;
    fresh.close().await;
    assert!(
        matches!(&r, Err(e) if e.code() == "corrupt_record") && versions == vec![1],
        "appended into a stream with a hole: {r:?}, versions {versions:?}"
    );
}

// ---------------------------------------------------------------- leases

fn cp(position: u64) -> refold::store::ProjectionCheckpoint {
    refold::store::ProjectionCheckpoint {
        position,
        events_applied: position,
        events_skipped: 0,
    }
}

fn changes(pairs: &[(&str, Option<&str>)]) -> BTreeMap<String, Option<String>> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.map(str::to_string)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_edge_cases() {
    let url = support::pg::database();
    let (a, b) = (
        PgStore::open(&url).await.unwrap(),
        PgStore::open(&url).await.unwrap(),
    );
    let (ra, rb) = (a.leases(), b.leases());
    let (ma, mb) = (
        a.read_model("rm", "1").await.unwrap(),
        b.read_model("rm", "1").await.unwrap(),
    );
    let name = "rm@1";
    // ttl 1 ms: lapses at once; another holder takes over with a new token.
    let l1 = ra
        .acquire(name, "A", Duration::from_millis(1))
        .await
        .unwrap()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let l2 = rb
        .acquire(name, "B", Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    assert!(l2.token > l1.token);
    // The old holder cannot renew or commit.
    assert!(
        ra.renew(&l1, Duration::from_secs(30))
            .await
            .unwrap()
            .is_err()
    );
    assert!(
        ma.commit(&l1, 0, &changes(&[]), &cp(1), None, &[])
            .await
            .unwrap()
            .is_err()
    );
    // Nor can it re-acquire while B holds it.
    assert!(
        ra.acquire(name, "A", Duration::from_secs(30))
            .await
            .unwrap()
            .is_none()
    );
    // Empty change set moves the checkpoint.
    mb.commit(&l2, 0, &changes(&[]), &cp(5), None, &[])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(mb.checkpoint().await.unwrap().position, 5);
    // A huge document and an odd key.
    let doc = "z".repeat(4 << 20);
    mb.commit(
        &l2,
        5,
        &changes(&[("ключ 😀", Some(&doc))]),
        &cp(6),
        None,
        &[],
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(mb.get("ключ 😀").await.unwrap(), Some(doc));
    // Same holder re-acquires after a lapse: a new token; the old one is fenced.
    let l_short = rb
        .acquire(name, "B", Duration::from_millis(1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        l_short.token, l2.token,
        "renewal by the holder keeps the token"
    );
    tokio::time::sleep(Duration::from_millis(5)).await;
    let l3 = rb
        .acquire(name, "B", Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    assert!(l3.token > l2.token);
    assert!(
        mb.commit(&l2, 6, &changes(&[]), &cp(7), None, &[])
            .await
            .unwrap()
            .is_err()
    );
    mb.commit(&l3, 6, &changes(&[]), &cp(7), None, &[])
        .await
        .unwrap()
        .unwrap();
    // Deleting a document that is not there.
    mb.commit(&l3, 7, &changes(&[("nope", None)]), &cp(8), None, &[])
        .await
        .unwrap()
        .unwrap();
    // from == to, and a huge ttl (a clean error, not a panic).
    mb.commit(&l3, 8, &changes(&[]), &cp(8), None, &[])
        .await
        .unwrap()
        .unwrap();
    let huge = rb.renew(&l3, Duration::from_secs(u64::MAX)).await;
    assert!(
        matches!(&huge, Err(e) if e.code() == "storage_failure"),
        "{huge:?}"
    );
    let huge = rb
        .acquire("other", "B", Duration::from_secs(u64::MAX))
        .await;
    assert!(
        matches!(&huge, Err(e) if e.code() == "storage_failure"),
        "{huge:?}"
    );
    // The lease it held is untouched by the failed renewal.
    mb.commit(&l3, 8, &changes(&[]), &cp(9), None, &[])
        .await
        .unwrap()
        .unwrap();
    a.close().await;
    b.close().await;
}

/// A commit whose checkpoint is below where it starts is refused: it would
/// make the read model apply events it already folded in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_never_moves_the_checkpoint_back() {
    let url = support::pg::database();
    let a = PgStore::open(&url).await.unwrap();
    let model = a.read_model("rm", "1").await.unwrap();
    let l = a
        .leases()
        .acquire("rm@1", "A", Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    model
        .commit(&l, 0, &changes(&[]), &cp(10), None, &[])
        .await
        .unwrap()
        .unwrap();
    let r = model
        .commit(&l, 10, &changes(&[("x", Some("1"))]), &cp(3), None, &[])
        .await;
    let checkpoint = model.checkpoint().await.unwrap().position;
    let written = model.get("x").await.unwrap();
    a.close().await;
    assert!(
        matches!(
            r,
            Ok(Err(refold::store::pg::Refused::CheckpointBackwards {
                from: 10,
                to: 3
            }))
        ) && checkpoint == 10
            && written.is_none(),
        "commit(from 10, to 3) answered {r:?}; checkpoint is now {checkpoint}"
    );
}

/// Two hosts using the same holder name both "hold" the lease with the same
/// token, so fencing cannot tell them apart: holder names must be unique per
/// host (documented).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_holder_name_on_two_hosts_shares_a_token() {
    let url = support::pg::database();
    let (a, b) = (
        PgStore::open(&url).await.unwrap(),
        PgStore::open(&url).await.unwrap(),
    );
    let la = a
        .leases()
        .acquire("rm", "same", Duration::from_secs(30))
        .await
        .unwrap();
    let lb = b
        .leases()
        .acquire("rm", "same", Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(la.map(|l| l.token), lb.map(|l| l.token));
    a.close().await;
    b.close().await;
}

// ---------------------------------------------------------------- catalog

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_names_and_racing_uploads() {
    let url = support::pg::database();
    let mut hosts = Vec::new();
    for _ in 0..5 {
        hosts.push(PgStore::open(&url).await.unwrap());
    }
    let n64 = "m".repeat(64);
    let n65 = "m".repeat(65);
    assert!(matches!(
        hosts[0]
            .put_module(&record(&n64, "1", b"x"), b"x")
            .await
            .unwrap(),
        ModulePut::Created
    ));
    assert!(
        hosts[0]
            .put_module(&record(&n65, "1", b"x"), b"x")
            .await
            .is_err()
    );
    // Odd version strings.
    for v in ["1.0.0+build.😀", "../../etc", "1.0'--", ""] {
        let r = hosts[0]
            .put_module(&record("odd", v, v.as_bytes()), v.as_bytes())
            .await;
        eprintln!("version {v:?}: {r:?}");
    }
    let r = hosts[0]
        .put_module(&record("odd", "nul\u{0}", b"q"), b"q")
        .await;
    assert!(r.is_err(), "NUL in a version: {r:?}");
    // Same name+version, different bytes, from 5 hosts at once: one winner.
    let mut tasks = Vec::new();
    for (h, host) in hosts.iter().enumerate() {
        let host = host.clone();
        tasks.push(tokio::spawn(async move {
            let bytes = format!("component from host {h}").into_bytes();
            host.put_module(&record("race", "1.0.0", &bytes), &bytes)
                .await
                .unwrap()
        }));
    }
    let mut created = 0;
    for t in tasks {
        match t.await.unwrap() {
            ModulePut::Created => created += 1,
            ModulePut::Conflict(_) => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(created, 1);
    let winner = hosts[1].module("race", "1.0.0").await.unwrap().unwrap();
    let bytes = hosts[2]
        .module_bytes(&winner.digest)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        <[u8; 32]>::from(sha2::Sha256::digest(&bytes)),
        winner.digest
    );
    // Activations racing from every host: a contiguous history, no errors.
    // (Only a registered version is made active.)
    for h in 0..hosts.len() {
        for k in 0..10 {
            let bytes = format!("race v{h}-{k}").into_bytes();
            let version = format!("v{h}-{k}");
            hosts[0]
                .put_module(&record("race", &version, &bytes), &bytes)
                .await
                .unwrap();
        }
    }
    let mut tasks = Vec::new();
    for (h, host) in hosts.iter().enumerate() {
        let host = host.clone();
        tasks.push(tokio::spawn(async move {
            for k in 0..10 {
                host.set_active_module("race", &format!("v{h}-{k}"))
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let history = hosts[0].activations("race").await.unwrap();
    assert_eq!(history.len(), 50);
    for h in hosts {
        h.close().await;
    }
}

/// put_module stores bytes under the digest the caller claims without
/// checking it: one upload with a lying digest poisons the bytes of every
/// later (honest) module with that digest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_whose_record_lies_about_its_bytes_is_refused() {
    let url = support::pg::database();
    let pg = PgStore::open(&url).await.unwrap();
    let good = b"the honest component".to_vec();
    let mut lying = record("evil", "1", &good);
    lying.size = 4;
    let first = pg.put_module(&lying, b"evil").await;
    let honest = pg.put_module(&record("good", "1", &good), &good).await;
    let bytes = pg.module_bytes(&record("good", "1", &good).digest).await;
    pg.close().await;
    assert!(
        first.is_err() && matches!(bytes, Ok(Some(ref b)) if *b == good),
        "lying upload: {first:?}; honest upload: {honest:?}; honest bytes now: {:?}",
        bytes.map(|b| b.map(|b| String::from_utf8_lossy(&b).to_string()))
    );
}

// ---------------------------------------------------------------- migrate

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_edge_cases() {
    // An empty sled log.
    let dir = temp_dir();
    let sled = support::open(&dir, Durability::None);
    let url = support::pg::database();
    let r = refold::store::pg::import_from_sled(&sled, &url, &mut |_, _, _| {}).await;
    eprintln!("empty log import: {r:?}");
    assert!(r.is_ok(), "{r:?}");
    // Now fill it and import twice concurrently into one database.
    for i in 0..300u64 {
        sled.append_command(
            &StreamId::new("acct", format!("s{}", i % 7)).unwrap(),
            ExpectedVersion::Any,
            vec![ev(i)],
            &format!("c{i}"),
            None,
            None,
        )
        .await
        .unwrap();
    }
    let url2 = support::pg::database();
    let (mut p1, mut p2) = (|_: &str, _: u64, _: u64| {}, |_: &str, _: u64, _: u64| {});
    let (x, y) = tokio::join!(
        refold::store::pg::import_from_sled(&sled, &url2, &mut p1),
        refold::store::pg::import_from_sled(&sled, &url2, &mut p2),
    );
    let ok = [x.is_ok(), y.is_ok()].iter().filter(|o| **o).count();
    assert!(ok <= 1, "both concurrent imports succeeded: {x:?} {y:?}");
    assert_eq!(ok, 1, "{x:?} {y:?}");
    // Again into a database that holds a log: refused.
    let again = refold::store::pg::import_from_sled(&sled, &url2, &mut |_, _, _| {}).await;
    assert!(again.is_err());
    // Into a db where only streams/commands exist but head is 0 (hand-made).
    let url3 = support::pg::database();
    let pg = PgStore::open(&url3).await.unwrap();
    support::pg::shared().query(&url3, "INSERT INTO refold_streams VALUES ('acct','s0',99)");
    let partial = refold::store::pg::import_from_sled(&sled, &url3, &mut |_, _, _| {}).await;
    eprintln!("import over stray stream rows: {partial:?}");
    assert!(
        partial.is_err(),
        "import over a non-empty refold_streams: {partial:?}"
    );
    let pgv = PgStore::open(&url2).await.unwrap();
    assert_eq!(pgv.head(), 300);
    let log = pgv
        .read_all(1, usize::MAX, &EventFilter::all())
        .await
        .unwrap()
        .events;
    let sled_log = support::read_whole_log(&sled);
    assert_eq!(log, sled_log);
    pg.close().await;
    pgv.close().await;
    sled.close().await;
    let _ = BTreeMap::<u8, u8>::new();
}

/// Someone lowers refold_head by hand: appends must be refused (they are:
/// the position is taken), and say why, rather than blame "races".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hand_lowered_head_is_refused() {
    let url = support::pg::database();
    let pg = PgStore::open(&url).await.unwrap();
    let s = StreamId::new("acct", "x").unwrap();
    pg.append(&s, ExpectedVersion::Any, vec![ev(1), ev(2)])
        .await
        .unwrap();
    support::pg::shared().query(&url, "UPDATE refold_head SET position = 1 WHERE id = 1");
    let started = std::time::Instant::now();
    let r = pg
        .append(
            &StreamId::new("acct", "y").unwrap(),
            ExpectedVersion::Any,
            vec![ev(3)],
        )
        .await;
    eprintln!(
        "append after a lowered head: {r:?} after {:?}",
        started.elapsed()
    );
    let log = pg
        .read_all(1, usize::MAX, &EventFilter::all())
        .await
        .unwrap();
    pg.close().await;
    assert!(
        matches!(&r, Err(e) if e.code() == "corrupt_record"),
        "{r:?}"
    );
    assert_eq!(log.events.len(), 2);
}

/// One command id, two streams, two hosts at once: exactly one wins, the
/// other is told the id is in use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_command_id_on_two_streams_from_two_hosts() {
    let url = support::pg::database();
    let (a, b) = (
        PgStore::open(&url).await.unwrap(),
        PgStore::open(&url).await.unwrap(),
    );
    for k in 0..40 {
        let id = format!("c{k}");
        let (sa, sb) = (
            StreamId::new("acct", format!("a{k}")).unwrap(),
            StreamId::new("acct", format!("b{k}")).unwrap(),
        );
        let (x, y) = tokio::join!(
            a.append_command(&sa, ExpectedVersion::Any, vec![ev(1)], &id, None),
            b.append_command(&sb, ExpectedVersion::Any, vec![ev(2)], &id, None),
        );
        let wins = [&x, &y]
            .iter()
            .filter(|r| matches!(r, Ok(c) if !c.repeated))
            .count();
        let in_use = [&x, &y]
            .iter()
            .filter(|r| matches!(r, Err(StoreError::CommandIdInUse { .. })))
            .count();
        assert_eq!((wins, in_use), (1, 1), "{x:?} {y:?}");
    }
    let log = a
        .read_all(1, usize::MAX, &EventFilter::all())
        .await
        .unwrap()
        .events;
    assert_eq!(log.len(), 40);
    a.close().await;
    b.close().await;
}

/// Every backend connection of the database is killed (an operator's
/// pg_terminate_backend, a failover): the hosts must recover on their own —
/// appends and reads work again, and host A sees host B's commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_recover_after_their_connections_are_killed() {
    let url = support::pg::database();
    let (a, b) = (
        PgStore::open(&url).await.unwrap(),
        PgStore::open(&url).await.unwrap(),
    );
    let s = StreamId::new("acct", "x").unwrap();
    a.append(&s, ExpectedVersion::Any, vec![ev(1)])
        .await
        .unwrap();
    b.stream_version(&s).await.unwrap();
    let u = url.clone();
    tokio::task::spawn_blocking(move || {
        support::pg::shared().query(
            &u,
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut first_errors = Vec::new();
    let mut ok = false;
    for i in 0..3 {
        match a.append(&s, ExpectedVersion::Any, vec![ev(10 + i)]).await {
            Ok(_) => {
                ok = true;
                break;
            }
            Err(e) => first_errors.push(format!("{e}")),
        }
    }
    eprintln!("appends after kill: errors before recovery {first_errors:?}");
    assert!(ok, "the writer never recovered: {first_errors:?}");
    let mut read_errors = Vec::new();
    for _ in 0..20 {
        if let Err(e) = a.stream_version(&s).await {
            read_errors.push(format!("{e}"));
        }
    }
    eprintln!(
        "reads after kill: {} errors {:?}",
        read_errors.len(),
        read_errors.first()
    );
    assert!(read_errors.len() <= 16, "{read_errors:?}");
    // B commits; A's head must follow within a couple of seconds.
    let mut r = b.append(&s, ExpectedVersion::Any, vec![ev(99)]).await;
    if r.is_err() {
        r = b.append(&s, ExpectedVersion::Any, vec![ev(98)]).await;
    }
    let target = r.unwrap().last_position;
    let mut head = a.watch_head();
    let waited =
        tokio::time::timeout(Duration::from_secs(3), head.wait_for(|h| *h >= target)).await;
    assert!(
        waited.is_ok(),
        "host A's head stuck at {} (B at {target})",
        a.head()
    );
    a.close().await;
    b.close().await;
}

/// The writer's connection is killed again and again while it commits: an
/// append that was answered with an error may or may not have landed, so a
/// client retries the same request; every retry must settle (a repeat or a
/// first write), and every event must end up in the log exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_after_killed_commits_settle_exactly_once() {
    let url = support::pg::database();
    let pg = PgStore::open(&url).await.unwrap();
    let s = StreamId::new("acct", "x").unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let killer = {
        let (u, stop) = (url.clone(), stop.clone());
        tokio::task::spawn_blocking(move || {
            let mut kills = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                support::pg::shared().query(
                    &u,
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                     WHERE datname = current_database() AND pid <> pg_backend_pid() \
                       AND query LIKE '%refold_append%'",
                );
                kills += 1;
                std::thread::sleep(Duration::from_millis(15));
            }
            kills
        })
    };
    let mut version = 0u64;
    let mut all_ids = Vec::new();
    let mut errors = 0;
    let mut unsettled = Vec::new();
    for i in 0..150u64 {
        let events = vec![ev(i), ev(i + 1000)];
        all_ids.extend(events.iter().map(|e| e.event_id));
        let use_cmd = i % 2 == 0;
        let mut settled = None;
        for _ in 0..20 {
            let r = if use_cmd {
                pg.append_command(
                    &s,
                    ExpectedVersion::Exact(version),
                    events.clone(),
                    &format!("c{i}"),
                    None,
                )
                .await
                .map(|c| c.result)
            } else {
                pg.append(&s, ExpectedVersion::Exact(version), events.clone())
                    .await
            };
            match r {
                Ok(r) => {
                    settled = Some(r);
                    break;
                }
                Err(StoreError::WrongExpectedVersion { .. })
                | Err(StoreError::DuplicateEventId { .. }) => {
                    unsettled.push(format!("{i}: {:?}", r));
                    break;
                }
                Err(_) => {
                    errors += 1;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
        match settled {
            Some(r) => {
                assert_eq!(r.stream_version, version + 2, "{i}: {r:?}");
                version += 2;
            }
            None => {
                version = pg.stream_version(&s).await.unwrap();
            }
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let kills = killer.await.unwrap();
    let log = pg
        .read_all(1, usize::MAX, &EventFilter::all())
        .await
        .unwrap()
        .events;
    pg.close().await;
    eprintln!("{kills} kill rounds, {errors} failed attempts, unsettled {unsettled:?}");
    let mut count: HashMap<uuid::Uuid, usize> = HashMap::new();
    for e in &log {
        *count.entry(e.event_id).or_default() += 1;
    }
    assert!(
        unsettled.is_empty(),
        "a retried request could not settle: {unsettled:?}"
    );
    for id in &all_ids {
        assert_eq!(count.get(id).copied().unwrap_or(0), 1, "event {id}");
    }
}

/// Someone overwrites refold_head.chain: the next append extends a chain
/// that does not follow from the log (the sled writer refuses writes when
/// its chain's tail is unreadable), and nothing notices until a verify.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_altered_head_chain_is_refused_not_extended() {
    use refold::store::canonical_body;
    use refold::store::integrity::chain_next;
    let url = support::pg::database();
    let pg = PgStore::open(&url).await.unwrap();
    let s = StreamId::new("acct", "x").unwrap();
    pg.append(&s, ExpectedVersion::Any, vec![ev(1), ev(2)])
        .await
        .unwrap();
    support::pg::shared().query(
        &url,
        "UPDATE refold_head SET chain = decode(repeat('ab', 32), 'hex') WHERE id = 1",
    );
    let r = pg.append(&s, ExpectedVersion::Any, vec![ev(3)]).await;
    let log = pg
        .read_all(1, usize::MAX, &EventFilter::all())
        .await
        .unwrap()
        .events;
    pg.close().await;
    let links = log.len() < 3
        || chain_next(&log[1].chain, log[2].position, &canonical_body(&log[2])) == log[2].chain;
    assert!(
        matches!(&r, Err(e) if e.code() == "corrupt_record") && links && log.len() == 2,
        "append after a tampered head chain: {r:?}; event 3's chain does not follow event 2's"
    );
}
