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

/// One SSE message as sent: its id, event and data fields.
#[derive(Debug, Default)]
struct Message {
    id: Option<u64>,
    event: Option<String>,
    data: Option<Value>,
}

/// Reads the next `n` messages (keep-alive comments skipped) from an open stream.
async fn next_messages(
    bytes: &mut (impl futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin),
    buffer: &mut String,
    n: usize,
) -> Vec<Message> {
    let mut messages = Vec::new();
    loop {
        while let Some(end) = buffer.find("\n\n") {
            let text: String = buffer.drain(..end + 2).collect();
            let mut message = Message::default();
            for line in text.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    message.id = v.trim().parse().ok();
                } else if let Some(v) = line.strip_prefix("event:") {
                    message.event = Some(v.trim().to_string());
                } else if let Some(v) = line.strip_prefix("data:") {
                    message.data = serde_json::from_str(v.trim()).ok();
                }
            }
            if message.id.is_some() || message.data.is_some() {
                messages.push(message);
            }
            if messages.len() == n {
                return messages;
            }
        }
        let chunk = tokio::time::timeout(Duration::from_secs(30), bytes.next())
            .await
            .expect("messages keep coming")
            .expect("the stream stays open")
            .unwrap();
        buffer.push_str(&String::from_utf8_lossy(&chunk));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sse_from_end_is_live_only_and_every_event_names_its_type() {
    let dir = temp_dir();
    let s = TestServer::start(dir.path()).await;
    s.upload("bank-account", "1.0.0", refold_test_guests::BANK_ACCOUNT)
        .await;
    s.send("bank-account", "acc-1", r#"{"type":"Open","owner":"Ada"}"#)
        .await;
    s.send("bank-account", "acc-1", r#"{"type":"Deposit","amount":5}"#)
        .await;

    // The default start is the beginning of the log; each message's event is the type.
    let all = s
        .request(Method::GET, "/v1/events/subscribe")
        .send()
        .await
        .unwrap();
    let (mut all, mut buffer) = (all.bytes_stream(), String::new());
    let caught_up = next_messages(&mut all, &mut buffer, 2).await;
    let seen: Vec<_> = caught_up
        .iter()
        .map(|m| {
            (
                m.id,
                m.event.as_deref(),
                m.data.as_ref().map(|d| d["event_type"].clone()),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            (Some(1), Some("Opened"), Some(Value::from("Opened"))),
            (Some(2), Some("Deposited"), Some(Value::from("Deposited")))
        ]
    );

    // `from=end`: first the head it starts after (an id, no data), then only
    // what is recorded afterwards.
    let live = s
        .request(Method::GET, "/v1/events/subscribe?from=end")
        .send()
        .await
        .unwrap();
    let (mut live, mut buffer) = (live.bytes_stream(), String::new());
    let marker = next_messages(&mut live, &mut buffer, 1).await;
    assert_eq!(
        (
            marker[0].id,
            marker[0].event.as_deref(),
            marker[0].data.is_none()
        ),
        (Some(2), None, true)
    );
    s.send("bank-account", "acc-1", r#"{"type":"Withdraw","amount":1}"#)
        .await;
    let new = next_messages(&mut live, &mut buffer, 1).await;
    assert_eq!(
        (new[0].id, new[0].event.as_deref()),
        (Some(3), Some("Withdrawn"))
    );
    assert_eq!(new[0].data.as_ref().unwrap()["position"], 3);
    drop(live);

    // A reconnect after the marker alone resumes after it, missing nothing.
    let resumed = s
        .request(Method::GET, "/v1/events/subscribe?from=end")
        .header("last-event-id", "2")
        .send()
        .await
        .unwrap();
    let (mut resumed, mut buffer) = (resumed.bytes_stream(), String::new());
    assert_eq!(
        next_messages(&mut resumed, &mut buffer, 1).await[0].id,
        Some(3)
    );

    let bad = s
        .request(Method::GET, "/v1/events/subscribe?from=later")
        .send()
        .await
        .unwrap();
    support::http::expect_problem(bad, 400, "invalid_request").await;
    drop((all, resumed));
    s.stop().await;
}
