//! Helpers shared by the store tests: a real sled store in a temporary directory.
#![allow(dead_code)]

use refold::store::{Durability, NewEvent, Store, StoreConfig, StreamId};
use tempfile::TempDir;

pub mod components;
pub mod host;
pub mod hosts;
pub mod http;
pub mod pg;
pub mod process;
pub mod projection;

pub fn temp_dir() -> TempDir {
    // Under the target directory: the same disk a deployment would use, not tmpfs.
    let base = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    tempfile::Builder::new()
        .prefix("store-")
        .tempdir_in(base)
        .expect("a temporary directory")
}

pub fn open(dir: &TempDir, durability: Durability) -> Store {
    Store::open(StoreConfig::new(dir.path().join("events")).durability(durability))
        .expect("store opens")
}

pub fn stream(id: &str) -> StreamId {
    StreamId::new("account", id).expect("valid stream id")
}

pub fn event(event_type: &str, n: u64) -> NewEvent {
    NewEvent::new(event_type, format!(r#"{{"n":{n}}}"#))
}

/// The whole durable log, read page by page.
pub fn read_whole_log(store: &Store) -> Vec<refold::store::RecordedEvent> {
    let mut events = Vec::new();
    let mut from = 1;
    loop {
        let page = store
            .read_all(from, 10_000, &refold::store::EventFilter::all())
            .expect("log reads");
        events.extend(page.events);
        if page.next_position > page.head {
            return events;
        }
        from = page.next_position;
    }
}

/// Positions must be exactly 1..=head; reports the first break instead of dumping the list.
pub fn assert_gapless(events: &[refold::store::RecordedEvent], head: u64) {
    for (i, e) in events.iter().enumerate() {
        assert_eq!(
            e.position,
            i as u64 + 1,
            "position at index {i} breaks the 1..=head sequence"
        );
    }
    assert_eq!(
        events.len() as u64,
        head,
        "the log holds exactly head ({head}) events"
    );
}
