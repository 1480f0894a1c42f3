//! Crash test: a child process appends concurrently and prints each
//! acknowledged append; we SIGKILL it at random moments, reopen the store and
//! check that every acknowledged event is there with identical content, that no
//! append is visible in part, and that positions and versions have no gaps.
//!
//! The child is this same test binary, started with `--ignored --exact crash_child`.

mod support;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use rand::RngExt;
use refold::store::{
    Direction, Durability, ExpectedVersion, NewEvent, Store, StoreConfig, StreamId,
};

const KILLS: usize = 24;
const CHILD_WRITERS: usize = 8;
const DIR_ENV: &str = "REFOLD_CRASH_CHILD_DIR";

/// The data of event `i` of `of` in an append: a pure function of the append,
/// so the parent can check the exact bytes.
fn event_data(append: &str, i: usize, of: usize) -> String {
    format!(
        r#"{{"append":"{append}","i":{i},"of":{of},"pad":"{}"}}"#,
        "p".repeat(40 + i * 7)
    )
}

#[test]
#[ignore = "the child half of acknowledged_appends_survive_sigkill; started by it"]
fn crash_child() {
    let dir = std::env::var(DIR_ENV).expect("crash_child runs only under the crash test");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let store = Store::open(StoreConfig::new(dir)).expect("child opens the store");
        let writers: Vec<_> = (0..CHILD_WRITERS)
            .map(|w| {
                let store = store.clone();
                tokio::spawn(async move { child_writer(store, w).await })
            })
            .collect();
        for w in writers {
            w.await.unwrap();
        }
    });
}

async fn child_writer(store: Store, writer: usize) {
    let stream = StreamId::new("crash", format!("w{writer}")).unwrap();
    let mut version = store.stream_version(&stream).unwrap();
    for n in 0u64.. {
        let of = 1 + (n as usize % 3);
        let append = uuid::Uuid::new_v4().to_string();
        let events: Vec<NewEvent> = (0..of)
            .map(|i| NewEvent::new("Written", event_data(&append, i, of)))
            .collect();
        let ids: Vec<String> = events.iter().map(|e| e.event_id.to_string()).collect();
        // Alternate exact and "any" expectations: both must survive a crash the same way.
        let expected = if n % 2 == 0 {
            ExpectedVersion::Exact(version)
        } else {
            ExpectedVersion::Any
        };
        let r = store
            .append(&stream, expected, events)
            .await
            .expect("child append");
        version = r.stream_version;
        // One line per acknowledged append; println! holds stdout's lock for the whole line.
        println!(
            "ACK {} {} {} {append} {of} {}",
            stream.aggregate_id(),
            r.first_position,
            r.stream_version,
            ids.join(",")
        );
    }
}

struct Ack {
    stream: String,
    first_position: u64,
    stream_version: u64,
    append: String,
    of: usize,
    ids: Vec<String>,
}

fn parse_ack(line: &str) -> Option<Ack> {
    let mut parts = line.strip_prefix("ACK ")?.split(' ');
    let ack = Ack {
        stream: parts.next()?.to_string(),
        first_position: parts.next()?.parse().ok()?,
        stream_version: parts.next()?.parse().ok()?,
        append: parts.next()?.to_string(),
        of: parts.next()?.parse().ok()?,
        ids: parts.next()?.split(',').map(str::to_string).collect(),
    };
    (ack.ids.len() == ack.of).then_some(ack)
}

#[test]
fn acknowledged_appends_survive_sigkill() {
    let dir = support::temp_dir();
    let store_dir = dir.path().join("events");
    let exe = std::env::current_exe().unwrap();
    let mut rng = rand::rng();
    let mut acks: Vec<Ack> = Vec::new();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    for round in 0..KILLS {
        let mut child = Command::new(&exe)
            .args([
                "--ignored",
                "--exact",
                "crash_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(DIR_ENV, &store_dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("child starts");
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            // Only complete lines count: a line cut by the kill has no newline and is dropped.
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
        std::thread::sleep(Duration::from_millis(rng.random_range(150..600)));
        child.kill().expect("SIGKILL the child");
        child.wait().unwrap();
        let new: Vec<Ack> = reader
            .join()
            .unwrap()
            .iter()
            .filter_map(|l| parse_ack(l))
            .collect();
        assert!(
            round > 0 || !new.is_empty(),
            "the child acknowledged appends before it was killed"
        );
        acks.extend(new);
        runtime.block_on(verify(&store_dir, &acks));
    }
    assert!(
        acks.len() > KILLS * 10,
        "only {} acknowledged appends over {KILLS} kills",
        acks.len()
    );
}

async fn verify(store_dir: &std::path::Path, acks: &[Ack]) {
    let store = Store::open(StoreConfig::new(store_dir).durability(Durability::Fsync))
        .expect("reopens after SIGKILL");
    let head = store.head();
    let log = support::read_whole_log(&store);
    support::assert_gapless(&log, head);

    // The hash chain and every seal verify end to end after the crash.
    let walk = store
        .verify_log(1, None, None, &mut |_, _| true)
        .expect("the log can be walked");
    assert!(
        walk.failure.is_none(),
        "the chain is broken after a crash: {walk:?}"
    );
    assert_eq!(walk.events, head, "the walk covers the whole log: {walk:?}");
    let integrity = store.integrity().expect("integrity status");
    assert_eq!(
        integrity.chain,
        log.last().map_or([0; 32], |e| e.chain),
        "the chain at the head"
    );

    // Every acknowledged event is present with identical content.
    for ack in acks {
        for (i, id) in ack.ids.iter().enumerate() {
            let pos = ack.first_position + i as u64;
            let e = log
                .get(pos as usize - 1)
                .unwrap_or_else(|| panic!("acknowledged position {pos} lost (head {head})"));
            assert_eq!(e.event_id.to_string(), *id, "event at {pos}");
            assert_eq!(e.stream.aggregate_id(), ack.stream);
            assert_eq!(e.version, ack.stream_version - (ack.of - 1 - i) as u64);
            assert_eq!(e.data, event_data(&ack.append, i, ack.of));
        }
    }

    // No append is visible in part, acknowledged or not; stream versions are contiguous.
    let mut groups: HashMap<String, (usize, usize)> = HashMap::new();
    let mut versions: HashMap<String, u64> = HashMap::new();
    for e in &log {
        let data: serde_json::Value = serde_json::from_str(&e.data).unwrap();
        let g = groups
            .entry(data["append"].as_str().unwrap().to_string())
            .or_insert((0, data["of"].as_u64().unwrap() as usize));
        g.0 += 1;
        let v = versions
            .entry(e.stream.aggregate_id().to_string())
            .or_insert(0);
        *v += 1;
        assert_eq!(e.version, *v, "contiguous versions in {}", e.stream);
    }
    for (append, (seen, of)) in groups {
        assert_eq!(seen, of, "append {append} is visible in part");
    }
    for (id, v) in versions {
        let stream = StreamId::new("crash", id).unwrap();
        assert_eq!(store.stream_version(&stream).unwrap(), v);
        assert_eq!(
            store
                .read_stream(&stream, u64::MAX, Direction::Backward, 1)
                .unwrap()[0]
                .version,
            v
        );
    }
    store.close().await;
}
