//! Canaries and rollback on a real server: the split by aggregate id is
//! deterministic and survives a restart, an aggregate never moves back to an
//! older version unless a rollback is forced, outcomes are counted per
//! version, every bad input is a clear 4xx, and a rollback under load loses
//! no command.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use support::http::{TestServer, expect_problem};
use support::temp_dir;

const V1: &str = "bank-account@1.0.0";
const V2: &str = "bank-account@2.0.0";

/// The bucket docs/concepts.md documents, computed here independently of the host.
fn bucket(name: &str, id: &str) -> u8 {
    let mut hasher = Sha256::new();
    hasher.update(b"refold canary v1\0");
    for part in [name, id] {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part.as_bytes());
    }
    let digest = hasher.finalize();
    (u64::from_be_bytes(digest[..8].try_into().unwrap()) % 100) as u8
}

/// Uploads without activating.
async fn upload_only(s: &TestServer, name: &str, version: &str, path: &str) {
    let r = s
        .request(Method::PUT, &format!("/v1/modules/{name}/{version}"))
        .header("content-type", "application/wasm")
        .body(std::fs::read(path).unwrap())
        .send()
        .await
        .unwrap();
    assert!(
        r.status().is_success(),
        "upload {name}@{version}: {}",
        r.status()
    );
}

/// bank-account 1.0.0 active, 2.0.0 uploaded: the same crate built for two
/// targets, so two digests (two cache and snapshot keys) with one behaviour.
async fn two_versions(s: &TestServer) {
    assert_eq!(
        s.upload("bank-account", "1.0.0", refold_test_guests::BANK_ACCOUNT)
            .await
            .status()
            .as_u16(),
        201
    );
    upload_only(
        s,
        "bank-account",
        "2.0.0",
        refold_test_guests::BANK_ACCOUNT_NO_WASI,
    )
    .await;
}

/// Activates with `force`: these tests are about routing; the replay check
/// that gates activation has its own tests (schema_evolution.rs). A body
/// that is not an object goes as it is (the refusal tests).
async fn activate(s: &TestServer, name: &str, mut body: Value) -> reqwest::Response {
    if let Some(fields) = body.as_object_mut()
        && !fields.contains_key("extra")
    {
        fields.entry("force").or_insert(Value::Bool(true));
    }
    s.request(Method::POST, &format!("/v1/modules/{name}/activate"))
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn rollback(s: &TestServer, name: &str, body: Option<Value>) -> reqwest::Response {
    let request = s.request(Method::POST, &format!("/v1/modules/{name}/rollback"));
    match body {
        Some(body) => request.json(&body),
        None => request,
    }
    .send()
    .await
    .unwrap()
}

async fn ok_json(response: reqwest::Response) -> Value {
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert!(status.is_success(), "{status}: {body}");
    body
}

/// Sends a command; returns the module that decided it.
async fn decided_by(s: &TestServer, id: &str, command: &str) -> String {
    let body = ok_json(s.send("bank-account", id, command).await).await;
    let producers: Vec<&str> = body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["metadata"]["producer"].as_str().unwrap())
        .collect();
    let module = body["module"].as_str().unwrap().to_string();
    assert!(
        producers.iter().all(|p| *p == module),
        "every event of the command names its decider: {body}"
    );
    module
}

/// Every producer of aggregate `id`'s events, in order.
async fn producers(s: &TestServer, id: &str) -> Vec<String> {
    let (status, body) = s
        .get_json(&format!("/v1/aggregates/bank-account/{id}/events"))
        .await;
    assert_eq!(status, 200, "{body}");
    body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["metadata"]["producer"].as_str().unwrap().to_string())
        .collect()
}

fn version_entry<'a>(module: &'a Value, version: &str) -> &'a Value {
    module["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["version"] == version)
        .unwrap_or_else(|| panic!("version {version} in {module}"))
}

fn metric(text: &str, version: &str, outcome: &str) -> u64 {
    let prefix = format!(
        "refold_module_commands_total{{module=\"bank-account\",version=\"{version}\",outcome=\"{outcome}\"}} "
    );
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |v| v.trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_canary_split_is_deterministic_per_aggregate_id_and_survives_a_restart() {
    let dir = temp_dir();
    let s = TestServer::start(dir.path()).await;
    two_versions(&s).await;
    let activated = ok_json(
        activate(
            &s,
            "bank-account",
            json!({"version": "2.0.0", "canary": 30}),
        )
        .await,
    )
    .await;
    assert_eq!(activated["canary_percent"], 30, "{activated}");
    assert_eq!(
        activated["active"], false,
        "the stable version stays active"
    );

    let ids: Vec<String> = (0..200).map(|i| format!("acc-{i}")).collect();
    let mut first = BTreeMap::new();
    for id in &ids {
        let module = decided_by(&s, id, r#"{"type":"Open","owner":"Ada"}"#).await;
        let expected = if bucket("bank-account", id) < 30 {
            V2
        } else {
            V1
        };
        assert_eq!(
            module,
            expected,
            "{id} (bucket {})",
            bucket("bank-account", id)
        );
        first.insert(id.clone(), module);
    }
    let on_canary = first.values().filter(|m| *m == V2).count();
    assert!(
        (40..=80).contains(&on_canary),
        "about 30% of 200 ids on the canary, got {on_canary}"
    );
    // A state read renders with the version that decides for that id.
    for id in ids.iter().take(20) {
        let (_, state) = s
            .get_json(&format!("/v1/aggregates/bank-account/{id}"))
            .await;
        assert_eq!(state["folded_by"], first[id].as_str(), "{id}: {state}");
    }

    // Outcomes per version, in the module's page and in /metrics.
    let (_, module) = s.get_json("/v1/modules/bank-account").await;
    assert_eq!(module["canary"]["version"], "2.0.0", "{module}");
    assert_eq!(module["canary"]["percent"], 30);
    assert_eq!(module["active_version"], "1.0.0");
    let v2 = version_entry(&module, "2.0.0");
    let v1 = version_entry(&module, "1.0.0");
    assert_eq!(v2["role"], "canary");
    assert_eq!(v1["role"], "stable");
    assert_eq!(v2["outcomes"]["accepted"], on_canary as u64);
    assert_eq!(v1["outcomes"]["accepted"], (200 - on_canary) as u64);
    // A rejection is counted for the version that decided it.
    let canary_id = first.iter().find(|(_, m)| *m == V2).unwrap().0.clone();
    expect_problem(
        s.send(
            "bank-account",
            &canary_id,
            r#"{"type":"Withdraw","amount":1}"#,
        )
        .await,
        422,
        "rejected",
    )
    .await;
    let metrics = s
        .request(Method::GET, "/metrics")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(metric(&metrics, "2.0.0", "accepted"), on_canary as u64);
    assert_eq!(
        metric(&metrics, "1.0.0", "accepted"),
        200 - on_canary as u64
    );
    assert_eq!(metric(&metrics, "2.0.0", "rejected"), 1, "{metrics}");
    assert_eq!(metric(&metrics, "1.0.0", "rejected"), 0);
    s.stop().await;

    // After a restart: the same ids go to the same versions.
    let s = TestServer::start(dir.path()).await;
    let (_, module) = s.get_json("/v1/modules/bank-account").await;
    assert_eq!(
        module["canary"]["percent"], 30,
        "the canary is kept: {module}"
    );
    for id in &ids {
        let module = decided_by(&s, id, r#"{"type":"Deposit","amount":5}"#).await;
        assert_eq!(module, first[id], "{id} after a restart");
        let all = producers(&s, id).await;
        assert!(all.iter().all(|p| *p == first[id]), "{id}: {all:?}");
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_aggregate_stays_on_the_newer_version_after_a_rollback_unless_forced() {
    let dir = temp_dir();
    let s = TestServer::start(dir.path()).await;
    two_versions(&s).await;
    let ids: Vec<String> = (0..100).map(|i| format!("s-{i}")).collect();
    let canary_ids: Vec<&String> = ids
        .iter()
        .filter(|id| bucket("bank-account", id) < 50)
        .collect();
    let stable_ids: Vec<&String> = ids
        .iter()
        .filter(|id| bucket("bank-account", id) >= 50)
        .collect();
    let (a, fresh) = (canary_ids[0].as_str(), canary_ids[1].as_str());
    let b = stable_ids[0].as_str();
    ok_json(
        activate(
            &s,
            "bank-account",
            json!({"version": "2.0.0", "canary": "50%"}),
        )
        .await,
    )
    .await;
    assert_eq!(
        decided_by(&s, a, r#"{"type":"Open","owner":"A"}"#).await,
        V2
    );
    assert_eq!(
        decided_by(&s, b, r#"{"type":"Open","owner":"B"}"#).await,
        V1
    );

    // A rollback that names the version it goes back from: a retry cannot take a second step.
    let rolled = ok_json(rollback(&s, "bank-account", Some(json!({"from": "2.0.0"}))).await).await;
    let retry = expect_problem(
        rollback(&s, "bank-account", Some(json!({"from": "2.0.0"}))).await,
        409,
        "rollback_from_mismatch",
    )
    .await;
    assert_eq!(retry["rollback_from"], "1.0.0", "{retry}");
    assert_eq!(
        (
            &rolled["from"],
            &rolled["to"],
            &rolled["canary_dropped"],
            &rolled["forced"]
        ),
        (
            &json!("2.0.0"),
            &json!("1.0.0"),
            &json!(true),
            &json!(false)
        ),
    );
    // `a` wrote with 2.0.0: it stays there; `b` and a new id on the canary's side go to 1.0.0.
    let deposit = r#"{"type":"Deposit","amount":10}"#;
    assert_eq!(decided_by(&s, a, deposit).await, V2, "sticky forward");
    assert_eq!(decided_by(&s, b, deposit).await, V1);
    assert_eq!(
        decided_by(&s, fresh, r#"{"type":"Open","owner":"F"}"#).await,
        V1
    );
    let (_, state) = s
        .get_json(&format!("/v1/aggregates/bank-account/{a}"))
        .await;
    assert_eq!(
        state["folded_by"], V2,
        "reads follow the same rule: {state}"
    );
    let (_, module) = s.get_json("/v1/modules/bank-account").await;
    let v2 = version_entry(&module, "2.0.0");
    assert_eq!(v2["role"], "sticky", "{module}");
    assert!(
        v2["note"]
            .as_str()
            .unwrap()
            .contains("last event it produced"),
        "{module}"
    );
    assert_eq!(v2["outcomes"]["sticky"], 1, "{module}");
    assert_eq!(module["canary"], Value::Null);
    // Nothing before 1.0.0 to go back to.
    expect_problem(
        rollback(&s, "bank-account", None).await,
        409,
        "nothing_to_roll_back",
    )
    .await;

    // A forced rollback retires the canary: `a` goes back too, and stays back.
    ok_json(
        activate(
            &s,
            "bank-account",
            json!({"version": "2.0.0", "canary": 50}),
        )
        .await,
    )
    .await;
    let forced = ok_json(rollback(&s, "bank-account", Some(json!({"force": true}))).await).await;
    assert_eq!(forced["forced"], true);
    assert_eq!(forced["retired"], json!(["2.0.0"]), "{forced}");
    assert_eq!(decided_by(&s, a, deposit).await, V1, "forced back");
    assert_eq!(decided_by(&s, a, deposit).await, V1);
    let (_, module) = s.get_json("/v1/modules/bank-account").await;
    assert_eq!(
        version_entry(&module, "2.0.0")["role"],
        "retired",
        "{module}"
    );
    assert_eq!(module["retired_versions"], json!(["2.0.0"]));
    assert_eq!(
        producers(&s, a).await,
        [V2, V2, V1, V1],
        "one move back, the forced one"
    );

    // Promoting (a full activation) takes it off the retired list; a rollback
    // of that goes back to 1.0.0, and aggregates 2.0.0 wrote last stay on it.
    ok_json(
        activate(
            &s,
            "bank-account",
            json!({"version": "2.0.0", "canary": 100}),
        )
        .await,
    )
    .await;
    assert_eq!(decided_by(&s, b, deposit).await, V2);
    let back = ok_json(rollback(&s, "bank-account", Some(json!({}))).await).await;
    assert_eq!(
        (&back["from"], &back["to"]),
        (&json!("2.0.0"), &json!("1.0.0"))
    );
    assert_eq!(back["canary_dropped"], false);
    assert_eq!(
        decided_by(&s, b, deposit).await,
        V2,
        "sticky after a full rollback"
    );
    assert_eq!(
        decided_by(&s, stable_ids[1], r#"{"type":"Open","owner":"N"}"#).await,
        V1
    );
    // The split and stickiness survive a restart.
    s.stop().await;
    let s = TestServer::start(dir.path()).await;
    assert_eq!(decided_by(&s, b, deposit).await, V2);
    assert_eq!(decided_by(&s, stable_ids[1], deposit).await, V1);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_canaries_and_rollbacks_are_clear_refusals() {
    let dir = temp_dir();
    let s = TestServer::start(dir.path()).await;
    two_versions(&s).await;
    upload_only(
        &s,
        "bank-account",
        "3.0.0",
        refold_test_guests::BANK_ACCOUNT,
    )
    .await;
    for bad in [
        json!(0),
        json!(101),
        json!("abc"),
        json!(2.5),
        json!(-1),
        json!("0%"),
        json!(""),
        json!(true),
        json!([30]),
    ] {
        let body = expect_problem(
            activate(
                &s,
                "bank-account",
                json!({"version": "2.0.0", "canary": bad}),
            )
            .await,
            400,
            "invalid_canary",
        )
        .await;
        assert!(
            body["detail"].as_str().unwrap().contains("1 to 100"),
            "{body}"
        );
    }
    for bad in [
        json!({"version": "2.0.0", "canary": 5, "extra": 1}),
        json!(["2.0.0", 5]),
        json!("2.0.0"),
    ] {
        expect_problem(
            activate(&s, "bank-account", bad).await,
            400,
            "invalid_request",
        )
        .await;
    }
    // Nothing changed.
    let (_, module) = s.get_json("/v1/modules/bank-account").await;
    assert_eq!(module["canary"], Value::Null);
    expect_problem(
        rollback(&s, "bank-account", None).await,
        409,
        "nothing_to_roll_back",
    )
    .await;
    expect_problem(rollback(&s, "no-such-module", None).await, 404, "not_found").await;
    for bad in [
        json!({"force": "yes"}),
        json!({"from": "not-semver"}),
        json!({"to": "1.0.0"}),
        json!([]),
    ] {
        expect_problem(
            rollback(&s, "bank-account", Some(bad)).await,
            400,
            "invalid_request",
        )
        .await;
    }
    expect_problem(
        activate(
            &s,
            "bank-account",
            json!({"version": "1.0.0", "canary": 10}),
        )
        .await,
        409,
        "canary_is_stable",
    )
    .await;
    expect_problem(
        activate(
            &s,
            "bank-account",
            json!({"version": "9.0.0", "canary": 10}),
        )
        .await,
        404,
        "not_found",
    )
    .await;

    // One canary at a time; it can be re-weighed, promoted or rolled back.
    ok_json(
        activate(
            &s,
            "bank-account",
            json!({"version": "2.0.0", "canary": 10}),
        )
        .await,
    )
    .await;
    let other = expect_problem(
        activate(
            &s,
            "bank-account",
            json!({"version": "3.0.0", "canary": 10}),
        )
        .await,
        409,
        "canary_in_progress",
    )
    .await;
    assert_eq!(other["canary_version"], "2.0.0");
    expect_problem(
        activate(&s, "bank-account", json!({"version": "3.0.0"})).await,
        409,
        "canary_in_progress",
    )
    .await;
    let whole = ok_json(
        activate(
            &s,
            "bank-account",
            json!({"version": "2.0.0", "canary": 40.0}),
        )
        .await,
    )
    .await;
    assert_eq!(whole["canary_percent"], 40, "40.0 is a whole number");
    let reweighed = ok_json(
        activate(
            &s,
            "bank-account",
            json!({"version": "2.0.0", "canary": "60%"}),
        )
        .await,
    )
    .await;
    assert_eq!(reweighed["canary_percent"], 60);
    let promoted = ok_json(activate(&s, "bank-account", json!({"version": "2.0.0"})).await).await;
    assert_eq!(promoted["active"], true);
    let (_, module) = s.get_json("/v1/modules/bank-account").await;
    assert_eq!(module["active_version"], "2.0.0");
    assert_eq!(module["canary"], Value::Null);
    expect_problem(
        activate(
            &s,
            "bank-account",
            json!({"version": "1.0.0", "canary": 10}),
        )
        .await,
        409,
        "canary_not_newer",
    )
    .await;

    // A process cannot be split; a projection is promoted, not activated.
    assert_eq!(
        s.upload("transfers", "1.0.0", refold_test_guests::TRANSFERS)
            .await
            .status()
            .as_u16(),
        201
    );
    upload_only(&s, "transfers", "1.1.0", refold_test_guests::TRANSFERS).await;
    expect_problem(
        activate(&s, "transfers", json!({"version": "1.1.0", "canary": 10})).await,
        400,
        "canary_not_supported",
    )
    .await;
    assert_eq!(
        s.upload(
            "account-balances",
            "1.0.0",
            refold_test_guests::ACCOUNT_BALANCES
        )
        .await
        .status()
        .as_u16(),
        201
    );
    expect_problem(
        activate(
            &s,
            "account-balances",
            json!({"version": "1.0.0", "canary": 10}),
        )
        .await,
        409,
        "use_promote",
    )
    .await;
    expect_problem(
        rollback(&s, "account-balances", None).await,
        409,
        "use_promote",
    )
    .await;
    s.stop().await;
}

/// What one client saw: acknowledged idempotency keys, refusals by code.
#[derive(Default)]
struct Seen {
    acked: HashMap<String, u64>,
    refused: BTreeMap<String, u64>,
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rollback_under_load_loses_no_command() {
    let dir = temp_dir();
    let s = Arc::new(TestServer::start(dir.path()).await);
    two_versions(&s).await;
    let ids: Vec<String> = (0..40).map(|i| format!("load-{i}")).collect();
    for id in &ids {
        decided_by(&s, id, r#"{"type":"Open","owner":"L"}"#).await;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for c in 0..8 {
        let (s, stop, ids) = (s.clone(), stop.clone(), ids.clone());
        clients.push(tokio::spawn(async move {
            let mut seen = Seen::default();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let id = &ids[((c * 7 + n * 3) % ids.len() as u64) as usize];
                let key = format!("k-c{c}-{n}");
                // Every 5th command is sent twice under its key: one event, two acks.
                let sends = if n.is_multiple_of(5) { 2 } else { 1 };
                for _ in 0..sends {
                    let r = s
                        .request(
                            Method::POST,
                            &format!("/v1/aggregates/bank-account/{id}/commands"),
                        )
                        .header("content-type", "application/json")
                        .header("idempotency-key", &key)
                        .body(r#"{"type":"Deposit","amount":1}"#)
                        .send()
                        .await
                        .expect("the server answers");
                    let status = r.status().as_u16();
                    let body: Value = r.json().await.unwrap();
                    assert!(status < 500, "no 5xx under a rollback: {status} {body}");
                    if status == 200 {
                        assert_eq!(body["events"].as_array().unwrap().len(), 1, "{body}");
                        *seen.acked.entry(key.clone()).or_default() += 1;
                    } else {
                        let code = body["code"].as_str().expect("a problem with a code");
                        *seen.refused.entry(code.to_string()).or_default() += 1;
                    }
                }
            }
            seen
        }));
    }
    let pause = || tokio::time::sleep(Duration::from_millis(300));
    pause().await;
    for step in [
        json!({"version": "2.0.0", "canary": 30}),
        json!({"version": "2.0.0", "canary": 70}),
        json!({"version": "2.0.0"}),
    ] {
        ok_json(activate(&s, "bank-account", step).await).await;
        pause().await;
    }
    let back = ok_json(rollback(&s, "bank-account", None).await).await;
    assert_eq!(back["to"], "1.0.0");
    pause().await;
    ok_json(
        activate(
            &s,
            "bank-account",
            json!({"version": "2.0.0", "canary": 50}),
        )
        .await,
    )
    .await;
    pause().await;
    ok_json(rollback(&s, "bank-account", Some(json!({"force": true}))).await).await;
    pause().await;
    stop.store(true, Ordering::Relaxed);
    let mut acked: HashMap<String, u64> = HashMap::new();
    let mut refused: BTreeMap<String, u64> = BTreeMap::new();
    for client in clients {
        let seen = client.await.unwrap();
        acked.extend(seen.acked);
        for (code, n) in seen.refused {
            *refused.entry(code).or_default() += n;
        }
    }
    assert!(
        refused.is_empty(),
        "deposits on open accounts are never refused, whatever the routing: {refused:?}"
    );
    assert!(acked.len() > 100, "the load ran: {} commands", acked.len());

    // The log: every acknowledged key's event exactly once, nothing else.
    let mut events = Vec::new();
    let mut from = 1;
    loop {
        let (status, page) = s
            .get_json(&format!("/v1/events?from={from}&limit=1000"))
            .await;
        assert_eq!(status, 200);
        let batch = page["events"].as_array().unwrap().clone();
        events.extend(batch);
        from = page["next_position"].as_u64().unwrap();
        if from > page["head"].as_u64().unwrap() {
            break;
        }
    }
    let mut by_key: HashMap<String, u64> = HashMap::new();
    let mut by_stream: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for e in &events {
        let producer = e["metadata"]["producer"].as_str().unwrap().to_string();
        by_stream
            .entry(e["aggregate_id"].as_str().unwrap().to_string())
            .or_default()
            .push(producer);
        let key = e["metadata"]["command_id"].as_str().unwrap();
        if key.starts_with("k-") {
            *by_key.entry(key.to_string()).or_default() += 1;
        }
    }
    assert_eq!(
        by_key.len(),
        acked.len(),
        "one event per acknowledged command"
    );
    for (key, n) in &by_key {
        assert_eq!(*n, 1, "{key} in the log once");
        assert!(acked.contains_key(key), "{key} was acknowledged");
    }
    // No aggregate moved back mid-stream except at the forced rollback, and
    // after it every aggregate is on 1.0.0.
    for (id, producers) in &by_stream {
        let moves_back = producers
            .windows(2)
            .filter(|w| w[0] == V2 && w[1] == V1)
            .count();
        assert!(moves_back <= 1, "{id}: {producers:?}");
    }
    for id in ids.iter().take(10) {
        assert_eq!(
            decided_by(&s, id, r#"{"type":"Deposit","amount":1}"#).await,
            V1
        );
    }
    let (_, module) = s.get_json("/v1/modules/bank-account").await;
    let accepted: u64 = ["1.0.0", "2.0.0"]
        .iter()
        .map(|v| {
            version_entry(&module, v)["outcomes"]["accepted"]
                .as_u64()
                .unwrap()
        })
        .sum();
    assert_eq!(
        accepted,
        ids.len() as u64 + by_key.len() as u64 + 10,
        "every decided command counted once (repeats are not decided again): {module}"
    );
    Arc::into_inner(s).expect("clients done").stop().await;
}

/// `refold module activate --canary` and `refold module rollback [--force]`, the real binary.
#[tokio::test(flavor = "multi_thread")]
async fn the_cli_starts_promotes_and_rolls_back_a_canary() {
    let dir = temp_dir();
    let s = TestServer::start(dir.path()).await;
    two_versions(&s).await;
    let base = s.base.clone();
    let run = move |args: &'static [&'static str]| {
        let base = base.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                let out = std::process::Command::new(support::process::BIN)
                    .env("REFOLD_SERVER", &base)
                    .args(args)
                    .output()
                    .expect("refold runs");
                (
                    out.status.code(),
                    String::from_utf8_lossy(&out.stdout).into_owned(),
                    String::from_utf8_lossy(&out.stderr).into_owned(),
                )
            })
            .await
            .unwrap()
        }
    };
    let (code, out, err) = run(&[
        "module",
        "activate",
        "bank-account",
        "2.0.0",
        "--canary",
        "25",
        "--force",
    ])
    .await;
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("canary for 25%"), "{out}");
    let (_, module) = s.get_json("/v1/modules/bank-account").await;
    assert_eq!(module["canary"]["percent"], 25, "{module}");

    let (code, _, err) = run(&[
        "module",
        "activate",
        "bank-account",
        "2.0.0",
        "--canary",
        "0",
    ])
    .await;
    assert_eq!(code, Some(2), "a usage error: {err}");

    let (code, out, err) = run(&["module", "rollback", "bank-account"]).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("canary 2.0.0 rolled back"), "{out}");
    let (code, _, err) = run(&["module", "rollback", "bank-account", "--force"]).await;
    assert_eq!(code, Some(1));
    assert!(err.contains("nothing_to_roll_back"), "{err}");

    let (code, out, err) = run(&["module", "activate", "bank-account", "2.0.0", "--force"]).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("is now active"), "{out}");
    let (code, out, err) = run(&["module", "rollback", "bank-account", "--force"]).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("rolled back from 2.0.0 to 1.0.0") && out.contains("retired"),
        "{out}"
    );
    let (_, module) = s.get_json("/v1/modules/bank-account").await;
    assert_eq!(module["active_version"], "1.0.0");
    assert_eq!(module["retired_versions"], json!(["2.0.0"]));
    s.stop().await;
}
