//! Crash test for the PostgreSQL backend: two host processes append to one
//! database (some streams shared between them, with exact expectations, and
//! command ids); each round one host is SIGKILLed under load and restarted.
//! Afterwards every acknowledged append is in the log at the position it was
//! told, with its own events, the log is gapless, the chain links, and no
//! command was written twice.
//!
//! The hosts are this same test binary, started with `--ignored --exact pg_crash_host`.

mod support;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rand::RngExt;
use refold::store::integrity::{ZERO, chain_next};
use refold::store::pg::PgStore;
use refold::store::{
    EventFilter, EventStore, ExpectedVersion, NewEvent, StoreError, StreamId, canonical_body,
};

const ROUNDS: usize = 8;
const URL_ENV: &str = "REFOLD_PG_CRASH_URL";
const HOST_ENV: &str = "REFOLD_PG_CRASH_HOST";
const WRITERS: usize = 6;

#[test]
#[ignore = "the host half of acknowledged_appends_survive_a_killed_host; started by it"]
fn pg_crash_host() {
    let url = std::env::var(URL_ENV).expect("pg_crash_host runs only under the crash test");
    let host: String = std::env::var(HOST_ENV).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let store = PgStore::open(&url).await.expect("host opens the store");
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let (store, host) = (store.clone(), host.clone());
                tokio::spawn(async move { writer(store, &host, w).await })
            })
            .collect();
        for w in writers {
            w.await.unwrap();
        }
    });
}

async fn writer(store: PgStore, host: &str, w: usize) {
    // Writers 0-1 share their streams with the other host's; the rest are the host's own.
    let stream = if w < 2 {
        StreamId::new("crash", format!("shared{w}")).unwrap()
    } else {
        StreamId::new("crash", format!("{host}-w{w}")).unwrap()
    };
    for n in 0u64.. {
        let of = 1 + (n as usize % 3);
        let tag = uuid::Uuid::new_v4().to_string();
        let events: Vec<NewEvent> = (0..of)
            .map(|i| NewEvent::new("Written", format!(r#"{{"tag":"{tag}","i":{i}}}"#)))
            .collect();
        let ids: Vec<String> = events.iter().map(|e| e.event_id.to_string()).collect();
        let result = if n % 2 == 0 {
            let version = store.stream_version(&stream).await.expect("version");
            store
                .append(&stream, ExpectedVersion::Exact(version), events)
                .await
                .map(|r| (r, false))
        } else {
            store
                .append_command(&stream, ExpectedVersion::Any, events, &tag, None)
                .await
                .map(|r| (r.result, r.repeated))
        };
        match result {
            Ok((r, repeated)) => {
                assert!(!repeated, "a fresh command id is never a repeat");
                println!(
                    "ACK {} {} {} {}",
                    stream.aggregate_id(),
                    r.first_position,
                    r.stream_version,
                    ids.join(",")
                );
            }
            Err(StoreError::WrongExpectedVersion { .. }) => {} // the other host won
            Err(e) => panic!("append failed: {e}"),
        }
    }
}

struct Ack {
    stream: String,
    first_position: u64,
    stream_version: u64,
    ids: Vec<String>,
}

fn parse_ack(line: &str) -> Option<Ack> {
    let mut parts = line.strip_prefix("ACK ")?.split(' ');
    Some(Ack {
        stream: parts.next()?.to_string(),
        first_position: parts.next()?.parse().ok()?,
        stream_version: parts.next()?.parse().ok()?,
        ids: parts.next()?.split(',').map(str::to_string).collect(),
    })
}

fn start(url: &str, host: &str) -> (Child, std::thread::JoinHandle<Vec<String>>) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "pg_crash_host",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(URL_ENV, url)
        .env(HOST_ENV, host)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("host starts");
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        // Only complete lines count: a line cut by the kill is dropped.
        let mut lines = Vec::new();
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        while reader.read_line(&mut line).unwrap_or(0) > 0 {
            if line.ends_with('\n') {
                lines.push(line.trim_end().to_string());
            }
            line.clear();
        }
        lines
    });
    (child, reader)
}

fn stop(child: &mut Child, reader: std::thread::JoinHandle<Vec<String>>) -> Vec<Ack> {
    child.kill().expect("SIGKILL the host");
    child.wait().unwrap();
    reader
        .join()
        .unwrap()
        .iter()
        .filter_map(|l| parse_ack(l))
        .collect()
}

#[test]
fn acknowledged_appends_survive_a_killed_host() {
    let url = support::pg::database();
    let mut rng = rand::rng();
    let mut acks: Vec<Ack> = Vec::new();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // Host b runs throughout; host a is killed and restarted every round.
    let (mut b, b_reader) = start(&url, "b");
    for _ in 0..ROUNDS {
        let (mut a, a_reader) = start(&url, "a");
        std::thread::sleep(Duration::from_millis(rng.random_range(300..900)));
        acks.extend(stop(&mut a, a_reader));
    }
    std::thread::sleep(Duration::from_millis(200));
    acks.extend(stop(&mut b, b_reader));
    assert!(
        acks.len() > ROUNDS * 10,
        "only {} acknowledged appends",
        acks.len()
    );
    runtime.block_on(verify(&url, &acks));
}

async fn verify(url: &str, acks: &[Ack]) {
    let store = PgStore::open(url).await.unwrap();
    let head = store
        .read_all(1, 0, &EventFilter::all())
        .await
        .unwrap()
        .head;
    let mut log = Vec::new();
    let mut next = 1;
    while next <= head {
        let page = store
            .read_all(next, 4096, &EventFilter::all())
            .await
            .unwrap();
        next = page.next_position;
        log.extend(page.events);
    }
    // Gapless, and the chain links every event.
    let mut previous = ZERO;
    for (i, e) in log.iter().enumerate() {
        assert_eq!(e.position, i as u64 + 1, "a gap in the log");
        assert_eq!(
            e.chain,
            chain_next(&previous, e.position, &canonical_body(e))
        );
        previous = e.chain;
    }
    assert_eq!(log.len() as u64, head);
    // Every acknowledged append is where it was told, with its own events.
    for ack in acks {
        for (i, id) in ack.ids.iter().enumerate() {
            let e = &log[(ack.first_position - 1) as usize + i];
            assert_eq!(
                e.event_id.to_string(),
                *id,
                "acknowledged event missing or moved"
            );
            assert_eq!(e.stream.aggregate_id(), ack.stream);
            assert_eq!(
                e.version,
                ack.stream_version - (ack.ids.len() - 1 - i) as u64
            );
        }
    }
    // Streams are contiguous and each event id appears once.
    let mut versions: HashMap<String, u64> = HashMap::new();
    let mut seen = std::collections::HashSet::new();
    for e in &log {
        let v = versions
            .entry(e.stream.aggregate_id().to_string())
            .or_default();
        assert_eq!(e.version, *v + 1, "stream versions are contiguous");
        *v = e.version;
        assert!(seen.insert(e.event_id), "an event was written twice");
    }
    store.close().await;
}

/// PostgreSQL itself crashes (an immediate stop, fsync on) and comes back:
/// what was acknowledged is there, the hosts' writers reconnect by
/// themselves, a retry of an append whose outcome was unknown is answered
/// once, and another host's subscription follows again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_reconnect_after_postgres_restarts_and_lose_nothing() {
    use futures::StreamExt;
    let cluster = support::pg::Cluster::start(support::pg::Durability::Fsync);
    let url = cluster.database();
    let writer = PgStore::open(&url).await.unwrap();
    let follower = PgStore::open(&url).await.unwrap();
    let s = StreamId::new("restart", "s").unwrap();
    let mut acked = Vec::new();
    for i in 0..10 {
        let e = NewEvent::new("Before", format!(r#"{{"i":{i}}}"#));
        acked.push(e.event_id);
        writer
            .append(&s, ExpectedVersion::Exact(i), vec![e])
            .await
            .unwrap();
    }
    let mut sub = follower.subscribe(1, EventFilter::all());
    for _ in 0..10 {
        sub.next().await.unwrap().unwrap();
    }

    let restart = tokio::task::spawn_blocking(move || {
        cluster.restart();
        cluster
    });
    let _cluster = restart.await.unwrap();

    // The same append, retried until the writer is back: written once.
    let e = NewEvent::new("After", r#"{"i":10}"#);
    let mut outcome = None;
    for _ in 0..100 {
        match writer
            .append(&s, ExpectedVersion::Exact(10), vec![e.clone()])
            .await
        {
            Ok(r) => {
                outcome = Some(r);
                break;
            }
            Err(StoreError::Storage { .. } | StoreError::Unavailable(_)) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(other) => panic!("{other}"),
        }
    }
    let r = outcome.expect("the writer reconnected");
    assert_eq!((r.first_position, r.stream_version), (11, 11));
    let events = writer
        .read_all(1, 100, &EventFilter::all())
        .await
        .unwrap()
        .events;
    let ids: Vec<_> = events.iter().map(|e| e.event_id).collect();
    assert_eq!(
        &ids[..10],
        &acked[..],
        "everything acknowledged before the crash"
    );
    assert_eq!(ids.len(), 11, "the retried append is there once");
    // The other host's subscription follows again (its LISTEN reconnects; polling covers the gap).
    let next = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("the follower follows after the restart")
        .unwrap()
        .unwrap();
    assert_eq!(next.position, 11);
    writer.close().await;
    follower.close().await;
}
