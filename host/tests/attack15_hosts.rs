//! Adversarial multi-host tests (issue 15's attack pass over `refold serve
//! --store postgres://`): several real hosts over one PostgreSQL database,
//! pushed where the per-host locks and caches no longer serialize anything.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use reqwest::Client;
use serde_json::{Value, json};
use support::hosts::{get, host, put_module, until, upload, version_state, whole_log};
use support::process::Served;

const BANK: &str = refold_test_guests::BANK_ACCOUNT;
const BANK_STRICT: &str = refold_test_guests::BANK_ACCOUNT_STRICT;
const BANK_NO_WASI: &str = refold_test_guests::BANK_ACCOUNT_NO_WASI;
const BALANCES: &str = refold_test_guests::ACCOUNT_BALANCES;
const BALANCES_V2: &str = refold_test_guests::ACCOUNT_BALANCES_V2;

fn hosts(dir: &Path, url: &str, n: usize) -> Vec<Served> {
    (0..n).map(|i| host(dir, &format!("h{i}"), url)).collect()
}

/// (status, body, idempotent-replayed header)
async fn send(
    client: &Client,
    base: &str,
    id: &str,
    command: &str,
    if_match: Option<&str>,
    key: Option<&str>,
) -> (u16, Value, bool) {
    let mut request = client
        .post(format!("{base}/v1/aggregates/bank-account/{id}/commands"))
        .header("content-type", "application/json")
        .body(command.to_string());
    if let Some(v) = if_match {
        request = request.header("if-match", v);
    }
    if let Some(k) = key {
        request = request.header("idempotency-key", k);
    }
    match request.send().await {
        Ok(r) => {
            let status = r.status().as_u16();
            let replayed = r.headers().get("idempotent-replayed").is_some();
            (status, r.json().await.unwrap_or(Value::Null), replayed)
        }
        Err(e) => (0, json!({ "error": format!("{e:?}") }), false),
    }
}

async fn ok(client: &Client, base: &str, id: &str, command: &str) -> Value {
    let (status, body, _) = send(client, base, id, command, None, None).await;
    assert_eq!(status, 200, "{command} on {id} through {base}: {body}");
    body
}

fn event_ids(body: &Value) -> Vec<String> {
    body["events"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| e["event_id"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

async fn setup_bank(client: &Client, urls: &[String], balances: bool) {
    upload(
        client,
        &urls[0],
        "bank-account",
        "1.0.0",
        BANK,
        "activate=true",
    )
    .await;
    if balances {
        upload(
            client,
            &urls[0],
            "account-balances",
            "1.0.0",
            BALANCES,
            "activate=true",
        )
        .await;
    }
    for base in urls {
        until(
            client,
            base,
            "/v1/modules/bank-account",
            Duration::from_secs(20),
            |m| m["active_version"] == "1.0.0",
        )
        .await;
        if balances {
            until(
                client,
                base,
                "/v1/projections/account-balances",
                Duration::from_secs(20),
                |p| version_state(p, "1.0.0").is_some(),
            )
            .await;
        }
    }
}

/// Which host (index) runs `name@version`; waits until exactly one does.
async fn holder_of(client: &Client, urls: &[String], name: &str, version: &str) -> usize {
    let started = Instant::now();
    loop {
        let mut states = Vec::new();
        for base in urls {
            let (_, view) = get(client, base, &format!("/v1/projections/{name}")).await;
            states.push(
                version_state(&view, version)
                    .map(|v| v["state"].clone())
                    .unwrap_or(Value::Null),
            );
        }
        let running: Vec<usize> = states
            .iter()
            .enumerate()
            .filter(|(_, s)| **s == "caught_up" || **s == "catching_up")
            .map(|(i, _)| i)
            .collect();
        let standby = states.iter().filter(|s| **s == "standby").count();
        if running.len() == 1 && standby == urls.len() - 1 {
            return running[0];
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no single holder of {name}@{version}: {states:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Checks account-balances `version` through `base` against the log: every
/// account's deposits equal its Deposited events (each applied exactly once),
/// and events_applied equals the number of bank-account events.
async fn check_balances(
    client: &Client,
    base: &str,
    version: &str,
    accounts: &[String],
) -> Result<(), String> {
    let log = whole_log(client, base).await;
    let head = log.len() as u64;
    let bank_events = log
        .iter()
        .filter(|e| e["aggregate_type"] == "bank-account")
        .count() as u64;
    let (_, view) = get(client, base, "/v1/projections/account-balances").await;
    let v =
        version_state(&view, version).ok_or_else(|| format!("no {version} on {base}: {view}"))?;
    if v["position"] != head {
        return Err(format!(
            "{base}: {version} at {} of head {head}: {v}",
            v["position"]
        ));
    }
    if v["events_applied"] != bank_events {
        return Err(format!(
            "{base}: events_applied {} but the log has {bank_events} bank-account events: {v}",
            v["events_applied"]
        ));
    }
    for id in accounts {
        let deposits = log
            .iter()
            .filter(|e| e["aggregate_id"] == id.as_str() && e["event_type"] == "Deposited")
            .count() as u64;
        let (status, doc) = get(
            client,
            base,
            &format!("/v1/projections/account-balances/docs/account/{id}?version={version}"),
        )
        .await;
        if status != 200 || doc["deposits"] != deposits || doc["owner"].is_null() {
            return Err(format!(
                "{base}: {id} should show {deposits} deposits and an owner: {status} {doc}"
            ));
        }
    }
    Ok(())
}

async fn eventually_balances(
    client: &Client,
    base: &str,
    version: &str,
    accounts: &[String],
    limit: Duration,
) {
    let started = Instant::now();
    loop {
        match check_balances(client, base, version, accounts).await {
            Ok(()) => return,
            Err(e) => assert!(started.elapsed() < limit, "within {limit:?}: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

// ------------------------------------------------------------- idempotency

/// The same Idempotency-Key sent at the same moment to three hosts: one
/// outcome. An `Open` on a fresh account and a withdrawal that only one
/// execution can cover are accepted once and every racer gets that acceptance
/// (a duplicate must never come back `rejected`: the first one's events
/// carry the same command id). A key reused with another body: one 200, the
/// other 409 `idempotency_key_reused`, one event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_idempotency_key_on_three_hosts_has_one_outcome() {
    let url = support::pg::database();
    let dir = support::temp_dir();
    let hs = hosts(dir.path(), &url, 3);
    let urls: Vec<String> = hs.iter().map(|h| h.url.clone()).collect();
    let client = Client::new();
    setup_bank(&client, &urls, false).await;

    const N: usize = 16;
    let mut failures = Vec::new();
    // 1. Open, same key, three hosts at once, on fresh accounts.
    for i in 0..N {
        let id = format!("open-{i}");
        let key = format!("k-open-{i}");
        let racers: Vec<_> = urls
            .iter()
            .map(|base| {
                let (client, base, id, key) =
                    (client.clone(), base.clone(), id.clone(), key.clone());
                tokio::spawn(async move {
                    send(
                        &client,
                        &base,
                        &id,
                        r#"{"type":"Open","owner":"o"}"#,
                        None,
                        Some(&key),
                    )
                    .await
                })
            })
            .collect();
        let mut outcomes = Vec::new();
        for r in racers {
            outcomes.push(r.await.unwrap());
        }
        let accepted: Vec<_> = outcomes.iter().filter(|o| o.0 == 200).collect();
        if accepted.len() != 3
            || accepted
                .iter()
                .any(|o| event_ids(&o.1) != event_ids(&accepted[0].1))
        {
            failures.push(format!(
                "Open {id} key {key}: {:?}",
                outcomes
                    .iter()
                    .map(|o| (o.0, o.1["code"].clone(), o.1["reason"].clone(), o.2))
                    .collect::<Vec<_>>()
            ));
        }
    }
    // 2. A withdrawal only one execution can cover, same key, three hosts at once.
    for i in 0..N {
        let id = format!("wd-{i}");
        ok(&client, &urls[0], &id, r#"{"type":"Open","owner":"o"}"#).await;
        ok(&client, &urls[0], &id, r#"{"type":"Deposit","amount":100}"#).await;
    }
    for i in 0..N {
        let id = format!("wd-{i}");
        let key = format!("k-wd-{i}");
        let racers: Vec<_> = urls
            .iter()
            .map(|base| {
                let (client, base, id, key) =
                    (client.clone(), base.clone(), id.clone(), key.clone());
                tokio::spawn(async move {
                    send(
                        &client,
                        &base,
                        &id,
                        r#"{"type":"Withdraw","amount":80}"#,
                        None,
                        Some(&key),
                    )
                    .await
                })
            })
            .collect();
        let mut outcomes = Vec::new();
        for r in racers {
            outcomes.push(r.await.unwrap());
        }
        let accepted: Vec<_> = outcomes.iter().filter(|o| o.0 == 200).collect();
        if accepted.len() != 3
            || accepted
                .iter()
                .any(|o| event_ids(&o.1) != event_ids(&accepted[0].1))
        {
            failures.push(format!(
                "Withdraw {id} key {key}: {:?}",
                outcomes
                    .iter()
                    .map(|o| (o.0, o.1["code"].clone(), o.1["reason"].clone(), o.2))
                    .collect::<Vec<_>>()
            ));
        }
        let (_, state) = get(
            &client,
            &urls[1],
            &format!("/v1/aggregates/bank-account/{id}"),
        )
        .await;
        assert_eq!(
            state["state"]["balance"], 20,
            "{id} withdrawn once: {state}"
        );
    }
    // 3. One key, two bodies, two hosts at once.
    for i in 0..N {
        let id = format!("wd-{i}");
        let key = format!("k-dep-{i}");
        let a = {
            let (client, base, id, key) =
                (client.clone(), urls[0].clone(), id.clone(), key.clone());
            tokio::spawn(async move {
                send(
                    &client,
                    &base,
                    &id,
                    r#"{"type":"Deposit","amount":5}"#,
                    None,
                    Some(&key),
                )
                .await
            })
        };
        let b = {
            let (client, base, id, key) =
                (client.clone(), urls[1].clone(), id.clone(), key.clone());
            tokio::spawn(async move {
                send(
                    &client,
                    &base,
                    &id,
                    r#"{"type":"Deposit","amount":6}"#,
                    None,
                    Some(&key),
                )
                .await
            })
        };
        let (a, b) = (a.await.unwrap(), b.await.unwrap());
        let statuses = [a.0, b.0];
        let fine = statuses.iter().filter(|s| **s == 200).count() == 1
            && [&a, &b]
                .iter()
                .any(|o| o.0 == 409 && o.1["code"] == "idempotency_key_reused");
        if !fine {
            failures.push(format!(
                "two bodies under {key}: {} {} / {} {}",
                a.0, a.1, b.0, b.1
            ));
        }
        let (_, state) = get(
            &client,
            &urls[2],
            &format!("/v1/aggregates/bank-account/{id}"),
        )
        .await;
        assert_eq!(
            state["state"]["deposits"], 2,
            "{id}: one of the two deposits landed: {state}"
        );
    }
    // 4. Every key replays identically on every host afterwards.
    for i in 0..N {
        for (id, key, body) in [
            (
                format!("open-{i}"),
                format!("k-open-{i}"),
                r#"{"type":"Open","owner":"o"}"#,
            ),
            (
                format!("wd-{i}"),
                format!("k-wd-{i}"),
                r#"{"type":"Withdraw","amount":80}"#,
            ),
        ] {
            let mut seen = Vec::new();
            for base in &urls {
                let (status, answer, replayed) =
                    send(&client, base, &id, body, None, Some(&key)).await;
                assert_eq!(status, 200, "replay of {key} on {base}: {answer}");
                assert!(replayed, "replay of {key} on {base} says so");
                seen.push((answer["version"].clone(), event_ids(&answer)));
            }
            assert!(
                seen.windows(2).all(|w| w[0] == w[1]),
                "{key} replays identically: {seen:?}"
            );
        }
    }
    // Exactly one Opened / Withdrawn per account in the log.
    let log = whole_log(&client, &urls[0]).await;
    let mut per: BTreeMap<(String, String), usize> = BTreeMap::new();
    for e in &log {
        *per.entry((
            e["aggregate_id"].as_str().unwrap().into(),
            e["event_type"].as_str().unwrap().into(),
        ))
        .or_default() += 1;
    }
    for i in 0..N {
        assert_eq!(per.get(&(format!("open-{i}"), "Opened".into())), Some(&1));
        assert_eq!(per.get(&(format!("wd-{i}"), "Withdrawn".into())), Some(&1));
    }
    assert!(
        failures.is_empty(),
        "{} of {} races gave a key more than one outcome:\n{}",
        failures.len(),
        3 * N,
        failures.join("\n")
    );
}

/// Sequential retries after the world moved on, If-Match lists decided on a
/// stale cache, and the endpoints PostgreSQL does not support.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_if_match_lists_and_unsupported_endpoints_across_hosts() {
    let url = support::pg::database();
    let dir = support::temp_dir();
    let hs = hosts(dir.path(), &url, 3);
    let urls: Vec<String> = hs.iter().map(|h| h.url.clone()).collect();
    let client = Client::new();
    setup_bank(&client, &urls, false).await;
    let mut failures: Vec<String> = Vec::new();

    // A withdrawal accepted on a; b drains the account; the retry on c (and on
    // b, with the If-Match the client had then) is the original acceptance.
    ok(&client, &urls[0], "drain", r#"{"type":"Open","owner":"o"}"#).await;
    ok(
        &client,
        &urls[0],
        "drain",
        r#"{"type":"Deposit","amount":100}"#,
    )
    .await;
    let (status, first, _) = send(
        &client,
        &urls[0],
        "drain",
        r#"{"type":"Withdraw","amount":80}"#,
        Some("\"2\""),
        Some("w-1"),
    )
    .await;
    assert_eq!(status, 200, "{first}");
    ok(
        &client,
        &urls[1],
        "drain",
        r#"{"type":"Withdraw","amount":20}"#,
    )
    .await;
    for (base, if_match) in [
        (&urls[2], None),
        (&urls[1], Some("\"2\"")),
        (&urls[0], Some("*")),
    ] {
        let (status, again, replayed) = send(
            &client,
            base,
            "drain",
            r#"{"type":"Withdraw","amount":80}"#,
            if_match,
            Some("w-1"),
        )
        .await;
        if status != 200
            || !replayed
            || event_ids(&again) != event_ids(&first)
            || again["version"] != first["version"]
        {
            failures.push(format!("retry of w-1 on {base} with If-Match {if_match:?}: {status} replayed={replayed} {again}"));
        }
    }

    // If-Match lists: b cached the account at version 2; a moved it to 3.
    // `If-Match: "2", "3"` through b meets its precondition (the aggregate is
    // at 3) and must be accepted, not refused from b's stale cache.
    for round in 0..5 {
        let id = format!("list-{round}");
        ok(&client, &urls[0], &id, r#"{"type":"Open","owner":"o"}"#).await;
        ok(&client, &urls[1], &id, r#"{"type":"Deposit","amount":1}"#).await; // b caches v2
        ok(&client, &urls[0], &id, r#"{"type":"Deposit","amount":1}"#).await; // now v3
        let (status, body, _) = send(
            &client,
            &urls[1],
            &id,
            r#"{"type":"Deposit","amount":1}"#,
            Some("\"2\", \"3\""),
            None,
        )
        .await;
        if status != 200 || body["version"] != 4 {
            failures.push(format!("If-Match \"2\", \"3\" on {id} (at version 3) through the host that cached 2: {status} {body}"));
        }
        // The single-version form, from the same kind of stale cache: "3" only.
        ok(&client, &urls[1], &id, r#"{"type":"Deposit","amount":1}"#).await; // b caches v5 (or the current)
        let (_, state) = get(
            &client,
            &urls[0],
            &format!("/v1/aggregates/bank-account/{id}"),
        )
        .await;
        let v = state["version"].as_u64().unwrap();
        ok(&client, &urls[0], &id, r#"{"type":"Deposit","amount":1}"#).await; // v+1 on a
        let (status, body, _) = send(
            &client,
            &urls[1],
            &id,
            r#"{"type":"Deposit","amount":1}"#,
            Some(&format!("\"{}\"", v + 1)),
            None,
        )
        .await;
        if status != 200 {
            failures.push(format!(
                "If-Match \"{}\" on {id} (at {}) through the host that cached {v}: {status} {body}",
                v + 1,
                v + 1
            ));
        }
    }

    // Racing lists and `*`: a 412 never names an actual version its own list admits.
    ok(&client, &urls[0], "race", r#"{"type":"Open","owner":"o"}"#).await;
    for round in 0..8 {
        let (_, state) = get(
            &client,
            &urls[round % 3],
            "/v1/aggregates/bank-account/race",
        )
        .await;
        let v = state["version"].as_u64().unwrap();
        let list = format!("\"{v}\", \"{}\", \"{}\"", v + 1, v + 2);
        let racers: Vec<_> = urls
            .iter()
            .map(|base| {
                let (client, base, list) = (client.clone(), base.clone(), list.clone());
                tokio::spawn(async move {
                    send(
                        &client,
                        &base,
                        "race",
                        r#"{"type":"Deposit","amount":1}"#,
                        Some(&list),
                        None,
                    )
                    .await
                })
            })
            .collect();
        let mut outcomes = Vec::new();
        for r in racers {
            outcomes.push(r.await.unwrap());
        }
        for (status, body, _) in &outcomes {
            if *status == 412 {
                let actual = body["actual_version"].as_u64().unwrap();
                if (v..=v + 2).contains(&actual) {
                    failures.push(format!("If-Match {list}: 412 with actual_version {actual}, which the list admits: {body}"));
                }
            } else if *status != 200 {
                failures.push(format!("If-Match {list}: {status} {body}"));
            }
        }
        let won = outcomes.iter().filter(|o| o.0 == 200).count();
        let (_, after) = get(&client, &urls[0], "/v1/aggregates/bank-account/race").await;
        assert_eq!(
            after["version"].as_u64().unwrap(),
            v + won as u64,
            "every 200 is one event: {outcomes:?}"
        );
        // `*` is retried on fresh state: all three land.
        let racers: Vec<_> = urls
            .iter()
            .map(|base| {
                let (client, base) = (client.clone(), base.clone());
                tokio::spawn(async move {
                    send(
                        &client,
                        &base,
                        "race",
                        r#"{"type":"Deposit","amount":1}"#,
                        Some("*"),
                        None,
                    )
                    .await
                })
            })
            .collect();
        for r in racers {
            let (status, body, _) = r.await.unwrap();
            assert_eq!(status, 200, "If-Match * on an existing aggregate: {body}");
        }
    }

    // Endpoints PostgreSQL does not support: a clean 501, and the host keeps serving.
    // (Proofs, the integrity status and the re-walk work on PostgreSQL: pg_hosts.rs.)
    for (method, path) in [("POST", "/v1/admin/backup")] {
        for base in &urls {
            let request = match method {
                "GET" => client.get(format!("{base}{path}")),
                _ => client
                    .post(format!("{base}{path}"))
                    .json(&json!({"path": dir.path().join("backup-target").to_str().unwrap()})),
            };
            let r = tokio::time::timeout(Duration::from_secs(10), request.send()).await;
            match r {
                Err(_) => {
                    failures.push(format!("{method} {path} on {base}: no answer within 10 s"))
                }
                Ok(Err(e)) => failures.push(format!("{method} {path} on {base}: {e}")),
                Ok(Ok(r)) => {
                    let status = r.status().as_u16();
                    let body: Value = r.json().await.unwrap_or(Value::Null);
                    if status != 501 || body["code"] != "not_supported_by_backend" {
                        failures.push(format!("{method} {path} on {base}: {status} {body}"));
                    }
                }
            }
        }
    }
    for base in &urls {
        ok(&client, base, "race", r#"{"type":"Deposit","amount":1}"#).await;
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

// ------------------------------------------------------------- projections

/// A non-live projection version dropped through one host must stay dropped:
/// no host lists it afterwards, and no host writes its read model again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_projection_version_stays_dropped_on_every_host() {
    let url = support::pg::database();
    let dir = support::temp_dir();
    let hs = hosts(dir.path(), &url, 2);
    let urls: Vec<String> = hs.iter().map(|h| h.url.clone()).collect();
    let client = Client::new();
    setup_bank(&client, &urls, true).await;
    upload(
        &client,
        &urls[1],
        "account-balances",
        "2.0.0",
        BALANCES_V2,
        "",
    )
    .await;
    for base in &urls {
        until(
            &client,
            base,
            "/v1/projections/account-balances",
            Duration::from_secs(30),
            |p| version_state(p, "2.0.0").is_some(),
        )
        .await;
    }
    for i in 0..4 {
        ok(
            &client,
            &urls[i % 2],
            &format!("acct-{i}"),
            r#"{"type":"Open","owner":"o"}"#,
        )
        .await;
        ok(
            &client,
            &urls[i % 2],
            &format!("acct-{i}"),
            r#"{"type":"Deposit","amount":3}"#,
        )
        .await;
    }
    let holder = holder_of(&client, &urls, "account-balances", "2.0.0").await;
    let standby = 1 - holder;
    // Dropped through the standby, while the holder runs it.
    let r = client
        .delete(format!(
            "{}/v1/projections/account-balances/versions/2.0.0",
            urls[standby]
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status().as_u16(),
        204,
        "{}",
        r.text().await.unwrap_or_default()
    );
    // More events: a holder that did not notice would apply them.
    for i in 0..4 {
        ok(
            &client,
            &urls[i % 2],
            &format!("acct-{i}"),
            r#"{"type":"Deposit","amount":1}"#,
        )
        .await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let cluster = support::pg::shared();
    let mut failures = Vec::new();
    for (i, base) in urls.iter().enumerate() {
        let (_, view) = get(&client, base, "/v1/projections/account-balances").await;
        if let Some(v) = version_state(&view, "2.0.0") {
            failures.push(format!(
                "host {i} ({}) still lists 2.0.0 5 s after the drop: {v}",
                if i == holder {
                    "the holder"
                } else {
                    "the standby"
                }
            ));
        }
        let (status, doc) = get(
            &client,
            base,
            "/v1/projections/account-balances/docs/account/acct-0?version=2.0.0",
        )
        .await;
        if status != 404 {
            failures.push(format!(
                "host {i}: a document of the dropped 2.0.0 still reads: {status} {doc}"
            ));
        }
    }
    let rows = cluster.query(
        &url,
        "SELECT (SELECT count(*) FROM refold_read_models WHERE version = '2.0.0') || ' models, ' || \
         (SELECT count(*) FROM refold_read_model_state WHERE version = '2.0.0') || ' states, ' || \
         (SELECT count(*) FROM refold_documents WHERE version = '2.0.0') || ' documents'",
    );
    if rows.trim() != "0 models, 0 states, 0 documents" {
        failures.push(format!(
            "the database holds the dropped version again: {}",
            rows.trim()
        ));
    }
    // The live version is untouched.
    let accounts: Vec<String> = (0..4).map(|i| format!("acct-{i}")).collect();
    eventually_balances(
        &client,
        &urls[holder],
        "1.0.0",
        &accounts,
        Duration::from_secs(20),
    )
    .await;
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// A rebuild asked of the standby: the version starts over and ends with
/// every document right (each Deposited counted once), on both hosts, even
/// when no new event arrives after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_through_the_standby_restores_every_document() {
    let url = support::pg::database();
    let dir = support::temp_dir();
    let hs = hosts(dir.path(), &url, 2);
    let urls: Vec<String> = hs.iter().map(|h| h.url.clone()).collect();
    let client = Client::new();
    setup_bank(&client, &urls, true).await;
    let accounts: Vec<String> = (0..4).map(|i| format!("acct-{i}")).collect();
    for (i, id) in accounts.iter().enumerate() {
        ok(&client, &urls[i % 2], id, r#"{"type":"Open","owner":"o"}"#).await;
        for _ in 0..=i {
            ok(
                &client,
                &urls[(i + 1) % 2],
                id,
                r#"{"type":"Deposit","amount":2}"#,
            )
            .await;
        }
    }
    let holder = holder_of(&client, &urls, "account-balances", "1.0.0").await;
    eventually_balances(
        &client,
        &urls[holder],
        "1.0.0",
        &accounts,
        Duration::from_secs(20),
    )
    .await;
    let standby = 1 - holder;
    let r = client
        .post(format!(
            "{}/v1/projections/account-balances/versions/1.0.0/rebuild?force=true",
            urls[standby]
        ))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let body = r.text().await.unwrap_or_default();
    assert_eq!(status, 202, "rebuild through the standby: {body}");
    // No new event: both hosts must still get back to the full read model.
    let mut failures = Vec::new();
    for (i, base) in urls.iter().enumerate() {
        let started = Instant::now();
        loop {
            match check_balances(&client, base, "1.0.0", &accounts).await {
                Ok(()) => break,
                Err(e) if started.elapsed() > Duration::from_secs(20) => {
                    failures.push(format!("host {i} ({}) 20 s after a rebuild through the standby, with no new event: {e}", if i == holder { "holder" } else { "standby" }));
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
    }
    // After new events it must be right, too (each event applied once).
    for (i, id) in accounts.iter().enumerate() {
        ok(
            &client,
            &urls[i % 2],
            id,
            r#"{"type":"Deposit","amount":1}"#,
        )
        .await;
    }
    for (i, base) in urls.iter().enumerate() {
        let started = Instant::now();
        loop {
            match check_balances(&client, base, "1.0.0", &accounts).await {
                Ok(()) => break,
                Err(e) if started.elapsed() > Duration::from_secs(25) => {
                    failures.push(format!("host {i} after new events: {e}"));
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_uploads_and_activations_converge_on_every_host() {
    use sha2::Digest as _;
    let url = support::pg::database();
    let dir = support::temp_dir();
    let hs = hosts(dir.path(), &url, 3);
    let urls: Vec<String> = hs.iter().map(|h| h.url.clone()).collect();
    let client = Client::new();
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let digest_of = |p: &str| hex(&sha2::Sha256::digest(std::fs::read(p).unwrap()));
    let mut failures = Vec::new();

    // Same bytes, two hosts at once: both succeed.
    let (a, b) = tokio::join!(
        put_module(&client, &urls[0], "same-bytes", "1.0.0", BANK, ""),
        put_module(&client, &urls[1], "same-bytes", "1.0.0", BANK, ""),
    );
    for (status, body) in [&a, &b] {
        if *status != 200 && *status != 201 {
            failures.push(format!(
                "same bytes uploaded on two hosts at once: {status} {body}"
            ));
        }
    }
    // Other bytes under one version, two hosts at once: one wins, the other 409.
    let (a, b) = tokio::join!(
        put_module(&client, &urls[0], "other-bytes", "1.0.0", BANK, ""),
        put_module(&client, &urls[1], "other-bytes", "1.0.0", BANK_STRICT, ""),
    );
    let winners: Vec<&str> = [(&a, BANK), (&b, BANK_STRICT)]
        .iter()
        .filter(|((s, _), _)| *s == 200 || *s == 201)
        .map(|(_, p)| *p)
        .collect();
    if winners.len() != 1 || ![a.0, b.0].contains(&409) {
        failures.push(format!(
            "other bytes under one version: {} {} / {} {}",
            a.0, a.1, b.0, b.1
        ));
    }
    if let [winner] = winners.as_slice() {
        let want = digest_of(winner);
        for base in &urls {
            let started = Instant::now();
            loop {
                let (_, m) = get(&client, base, "/v1/modules/other-bytes").await;
                let got = m["versions"]
                    .as_array()
                    .and_then(|v| v.iter().find(|v| v["version"] == "1.0.0"))
                    .map(|v| v["digest"].clone());
                if got == Some(json!(want)) {
                    break;
                }
                if started.elapsed() > Duration::from_secs(10) {
                    failures.push(format!(
                        "{base} shows other-bytes@1.0.0 as {got:?}, the winner is {want}"
                    ));
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    // Activations of different versions on two hosts at once.
    upload(
        &client,
        &urls[0],
        "bank-account",
        "1.0.0",
        BANK,
        "activate=true",
    )
    .await;
    upload(&client, &urls[1], "bank-account", "1.1.0", BANK_STRICT, "").await;
    upload(&client, &urls[2], "bank-account", "1.2.0", BANK_NO_WASI, "").await;
    for base in &urls {
        until(
            &client,
            base,
            "/v1/modules/bank-account",
            Duration::from_secs(20),
            |m| {
                m["active_version"] == "1.0.0"
                    && m["versions"].as_array().is_some_and(|v| v.len() == 3)
            },
        )
        .await;
    }
    for round in 0..6 {
        let (x, y) = if round % 2 == 0 {
            ("1.1.0", "1.2.0")
        } else {
            ("1.2.0", "1.1.0")
        };
        let activate = |base: String, version: &'static str| {
            let client = client.clone();
            async move {
                let r = client
                    .post(format!("{base}/v1/modules/bank-account/activate"))
                    .json(&json!({"version": version, "force": true}))
                    .send()
                    .await
                    .unwrap();
                (r.status().as_u16(), r.text().await.unwrap_or_default())
            }
        };
        // Versions uploaded on another host compile in the background first.
        let started = Instant::now();
        let (ra, rb) = loop {
            let (ra, rb) = tokio::join!(activate(urls[0].clone(), x), activate(urls[1].clone(), y));
            if (ra.0 == 503 || rb.0 == 503) && started.elapsed() < Duration::from_secs(60) {
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            break (ra, rb);
        };
        if ra.0 != 200 && rb.0 != 200 {
            failures.push(format!(
                "round {round}: neither activation worked: {ra:?} {rb:?}"
            ));
        }
        // Converged within 10 s: one active version everywhere, and commands run on it.
        let started = Instant::now();
        loop {
            let mut actives = Vec::new();
            for base in &urls {
                let (_, m) = get(&client, base, "/v1/modules/bank-account").await;
                actives.push(m["active_version"].clone());
            }
            if actives.windows(2).all(|w| w[0] == w[1]) {
                let want = actives[0].as_str().unwrap().to_string();
                // Fresh accounts: an account whose last event a newer version
                // wrote stays on that version by design.
                for (h, base) in urls.iter().enumerate() {
                    let body = ok(
                        &client,
                        base,
                        &format!("conv-{round}-{h}"),
                        r#"{"type":"Open","owner":"o"}"#,
                    )
                    .await;
                    if body["module"] != format!("bank-account@{want}") {
                        failures.push(format!("round {round}: {base} decided with {} while every host shows {want} active", body["module"]));
                    }
                }
                break;
            }
            if started.elapsed() > Duration::from_secs(10) {
                failures.push(format!("round {round}: hosts disagree on the active version 10 s after racing activations of {x} and {y}: {actives:?} ({ra:?} / {rb:?})"));
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

// ------------------------------------------------------------- the database
