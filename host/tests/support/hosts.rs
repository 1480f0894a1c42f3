//! Several real `refold serve --store postgres://...` hosts over one
//! database, driven over HTTP (`pg_hosts.rs`, `attack15_hosts.rs`).

use std::path::Path;
use std::time::{Duration, Instant};

use reqwest::Client;
use serde_json::{Value, json};

use super::process::{Served, serve};

pub fn host(dir: &Path, name: &str, url: &str) -> Served {
    serve(&dir.join(name), &["--store", url])
}

pub async fn get(client: &Client, base: &str, path: &str) -> (u16, Value) {
    match client.get(format!("{base}{path}")).send().await {
        Ok(r) => {
            let status = r.status().as_u16();
            (status, r.json().await.unwrap_or(Value::Null))
        }
        Err(e) => (0, json!({ "error": format!("{e:?}") })),
    }
}

pub async fn put_module(
    client: &Client,
    base: &str,
    name: &str,
    version: &str,
    path: &str,
    query: &str,
) -> (u16, String) {
    let r = client
        .put(format!("{base}/v1/modules/{name}/{version}?{query}"))
        .header("content-type", "application/wasm")
        .body(std::fs::read(path).expect("guest built"))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.text().await.unwrap_or_default())
}

pub async fn upload(
    client: &Client,
    base: &str,
    name: &str,
    version: &str,
    path: &str,
    query: &str,
) {
    let (status, body) = put_module(client, base, name, version, path, query).await;
    assert!(
        status == 201 || status == 200,
        "upload of {name}@{version}: {status} {body}"
    );
}

pub async fn until(
    client: &Client,
    base: &str,
    path: &str,
    limit: Duration,
    check: impl Fn(&Value) -> bool,
) -> Duration {
    let started = Instant::now();
    loop {
        let (status, body) = get(client, base, path).await;
        if status == 200 && check(&body) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "{base}{path} did not get there within {limit:?}: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn whole_log(client: &Client, base: &str) -> Vec<Value> {
    let mut events = Vec::new();
    let mut from = 1;
    loop {
        let (status, page) = get(client, base, &format!("/v1/events?from={from}&limit=1000")).await;
        assert_eq!(status, 200, "{page}");
        let batch = page["events"].as_array().unwrap().clone();
        if batch.is_empty() {
            return events;
        }
        from = page["next_position"].as_u64().unwrap();
        events.extend(batch);
    }
}

pub fn version_state<'a>(view: &'a Value, version: &str) -> Option<&'a Value> {
    view["versions"]
        .as_array()?
        .iter()
        .find(|v| v["version"] == version)
}
