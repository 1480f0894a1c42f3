//! Live behaviour over HTTP: SSE resume with Last-Event-ID while commands keep
//! arriving, and graceful shutdown under load losing no acknowledged command.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use refold::store::{Store, StoreConfig};
use reqwest::Method;
use serde_json::Value;
use support::http::TestServer;
use support::temp_dir;

/// Reads SSE messages (id, data) until `n` have arrived, then drops the connection.
async fn read_sse(s: &TestServer, last_event_id: Option<u64>, n: usize) -> Vec<(u64, Value)> {
    let mut request = s.request(Method::GET, "/v1/events/subscribe?from=1");
    if let Some(id) = last_event_id {
        request = request.header("last-event-id", id.to_string());
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut bytes = response.bytes_stream();
    let mut buffer = String::new();
    let mut messages = Vec::new();
    while messages.len() < n {
        let chunk = tokio::time::timeout(Duration::from_secs(30), bytes.next())
            .await
            .expect("events keep coming")
            .expect("the stream stays open")
            .unwrap();
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let message: String = buffer.drain(..end + 2).collect();
            let mut id = None;
            let mut data = None;
            for line in message.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    id = v.trim().parse().ok();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data = serde_json::from_str(v.trim()).ok();
                }
            }
            if let (Some(id), Some(data)) = (id, data) {
                messages.push((id, data));
            }
        }
    }
    messages.truncate(n);
    messages
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sse_resumes_after_last_event_id_across_a_reconnect_while_commands_arrive() {
    let dir = temp_dir();
    let s = Arc::new(TestServer::start(dir.path()).await);
    s.upload("bank-account", "1.0.0", refold_test_guests::BANK_ACCOUNT)
        .await;
    for i in 0..4 {
        s.send(
            "bank-account",
            &format!("acc-{i}"),
            r#"{"type":"Open","owner":"Ada"}"#,
        )
        .await;
    }
    let writer = {
        let s = s.clone();
        tokio::spawn(async move {
            for n in 0..160 {
                let r = s
                    .send(
                        "bank-account",
                        &format!("acc-{}", n % 4),
                        r#"{"type":"Deposit","amount":1}"#,
                    )
                    .await;
                assert_eq!(r.status().as_u16(), 200);
            }
        })
    };
    let total = 4 + 160;
    let first = read_sse(&s, None, 60).await;
    let last_seen = first.last().unwrap().0;
    // Reconnect while the writer is still going: resume strictly after the last id seen.
    let rest = read_sse(&s, Some(last_seen), total - first.len()).await;
    writer.await.unwrap();
    let ids: Vec<u64> = first.iter().chain(&rest).map(|(id, _)| *id).collect();
    assert_eq!(
        ids,
        (1..=total as u64).collect::<Vec<_>>(),
        "no gap and no duplicate across the reconnect"
    );
    assert!(
        first
            .iter()
            .chain(&rest)
            .all(|(id, data)| data["position"].as_u64() == Some(*id)),
        "SSE id is the position"
    );
    Arc::try_unwrap(s)
        .ok()
        .expect("no other handle")
        .stop()
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn graceful_shutdown_under_load_loses_no_acknowledged_command() {
    let dir = temp_dir();
    let s = TestServer::start(dir.path()).await;
    s.upload("bank-account", "1.0.0", refold_test_guests::BANK_ACCOUNT)
        .await;
    for i in 0..8 {
        s.send(
            "bank-account",
            &format!("acc-{i}"),
            r#"{"type":"Open","owner":"Ada"}"#,
        )
        .await;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let senders: Vec<_> = (0..16)
        .map(|t| {
            let (client, base, stop) = (s.client.clone(), s.base.clone(), stop.clone());
            tokio::spawn(async move {
                let mut acknowledged = Vec::new();
                for n in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let key = format!("t{t}-n{n}");
                    let sent = client
                        .post(format!(
                            "{base}/v1/aggregates/bank-account/acc-{}/commands",
                            t % 8
                        ))
                        .header("idempotency-key", &key)
                        .body(r#"{"type":"Deposit","amount":1}"#)
                        .send()
                        .await;
                    match sent {
                        Ok(r) if r.status().is_success() => {
                            let body: Value = r.json().await.unwrap();
                            acknowledged.push((key, body["position"].as_u64().unwrap()));
                        }
                        _ => break, // the server is going away
                    }
                }
                acknowledged
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(400)).await;
    s.stop().await; // what SIGTERM triggers in `refold serve`
    stop.store(true, Ordering::Relaxed);
    let mut acknowledged = HashMap::new();
    for sender in senders {
        acknowledged.extend(sender.await.unwrap());
    }
    assert!(
        acknowledged.len() > 20,
        "load was running: {} acknowledged",
        acknowledged.len()
    );

    let store =
        Store::open(StoreConfig::new(dir.path().join("events"))).expect("reopens after shutdown");
    for (key, position) in &acknowledged {
        let event = store
            .read_event(*position)
            .unwrap()
            .unwrap_or_else(|| panic!("acknowledged {key} at {position} is lost"));
        assert_eq!(event.metadata.command_id.as_deref(), Some(key.as_str()));
    }
    store.close().await;
}
