//! Projection tests: waiting for a version on a [`TestServer`](super::http::TestServer),
//! and a log to replay.

use std::time::{Duration, Instant};

use refold::store::{ExpectedVersion, NewEvent, Store, StreamId};
use serde_json::Value;

use super::http::TestServer;

/// Polls `GET /v1/projections/{name}/versions/{version}` until `done` holds
/// (at most 120 s); returns the last view.
pub async fn wait_for_version(
    s: &TestServer,
    name: &str,
    version: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (status, view) = s
            .get_json(&format!("/v1/projections/{name}/versions/{version}"))
            .await;
        if status == 200 && done(&view) {
            return view;
        }
        assert!(
            Instant::now() < deadline,
            "{name}@{version} never reached the expected state; last: {view}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Following the head of the log with nothing left to replay.
pub fn caught_up(view: &Value) -> bool {
    view["state"] == "caught_up" && view["lag"] == 0
}

/// Appends `n` events of `event_type` to stream `t/i` through the store's own API.
pub async fn append(store: &Store, id: &str, event_type: &str, n: usize) {
    let stream = StreamId::new("t", id).unwrap();
    for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
        let events = chunk
            .iter()
            .map(|_| NewEvent::new(event_type, "{}"))
            .collect();
        store
            .append(&stream, ExpectedVersion::Any, events)
            .await
            .unwrap();
    }
}
