//! Waiting for a projection version on a [`TestServer`](super::http::TestServer).

use std::time::{Duration, Instant};

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
