//! Helpers shared by the store tests: a real sled store in a temporary directory.
#![allow(dead_code)]

use refold::store::{Durability, NewEvent, Store, StoreConfig, StreamId};
use tempfile::TempDir;

pub fn temp_dir() -> TempDir {
    // Under the target directory: the same disk a deployment would use, not tmpfs.
    let base = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    tempfile::Builder::new().prefix("store-").tempdir_in(base).expect("a temporary directory")
}

pub fn open(dir: &TempDir, durability: Durability) -> Store {
    Store::open(StoreConfig::new(dir.path().join("events")).durability(durability)).expect("store opens")
}

pub fn stream(id: &str) -> StreamId {
    StreamId::new("account", id).expect("valid stream id")
}

pub fn event(event_type: &str, n: u64) -> NewEvent {
    NewEvent::new(event_type, format!(r#"{{"n":{n}}}"#))
}
