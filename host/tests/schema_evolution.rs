//! Event schema versions and upcasting, end to end over HTTP with real
//! components: bank-account 1.0.0 writes history, 2.0.0 (a renamed field, an
//! event split in two, and the upcaster from 1.x) takes over, and
//! account-balances 3.0.0 builds the same documents over that mixed history
//! as over a history 2.0.0 wrote alone.

mod support;

use std::time::Duration;

use refold_test_guests as guests;
use reqwest::Method;
use serde_json::{Value, json};
use support::http::TestServer;
use support::projection::{caught_up, wait_for_version};

/// The same business, command by command: `(account, command)`.
fn script() -> Vec<(&'static str, Value)> {
    vec![
        (
            "ada",
            json!({"type": "Open", "owner": "Ada", "overdraft_limit": 50}),
        ),
        ("bo", json!({"type": "Open", "owner": "Bo"})),
        ("ada", json!({"type": "Deposit", "amount": 100})),
        ("bo", json!({"type": "Deposit", "amount": 40})),
        ("ada", json!({"type": "Withdraw", "amount": 130})),
        // -- on the mixed server, 2.0.0 takes over here --
        ("ada", json!({"type": "Withdraw", "amount": 20})),
        ("bo", json!({"type": "Withdraw", "amount": 41})),
        (
            "cy",
            json!({"type": "Open", "owner": "Cy", "overdraft_limit": 10}),
        ),
        ("cy", json!({"type": "Withdraw", "amount": 10})),
        ("ada", json!({"type": "Deposit", "amount": 5})),
    ]
}
const SWAP_AT: usize = 5;

async fn send(s: &TestServer, id: &str, command: &Value) -> (u16, Value) {
    let r = s.send("bank-account", id, &command.to_string()).await;
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn events(s: &TestServer, id: &str) -> Vec<Value> {
    let (status, page) = s
        .get_json(&format!(
            "/v1/aggregates/bank-account/{id}/events?limit=100"
        ))
        .await;
    assert_eq!(status, 200, "{page}");
    page["events"].as_array().cloned().unwrap_or_default()
}

/// Every document of account-balances 3.0.0, once it has caught up.
async fn balances(s: &TestServer) -> (Value, Value) {
    let view = wait_for_version(s, "account-balances", "3.0.0", caught_up).await;
    let (status, page) = s
        .get_json("/v1/projections/account-balances/docs?version=3.0.0&limit=100")
        .await;
    assert_eq!(status, 200, "{page}");
    (page["documents"].clone(), view)
}

/// Uploads without activating.
async fn put(s: &TestServer, name: &str, version: &str, path: &str) {
    let r = s
        .request(Method::PUT, &format!("/v1/modules/{name}/{version}"))
        .header("content-type", "application/wasm")
        .body(std::fs::read(path).unwrap())
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
}

/// Runs the replay check of `name@version` and waits for its verdict.
async fn check(s: &TestServer, name: &str, version: &str, body: Value) -> Value {
    let r = s
        .request(Method::POST, &format!("/v1/modules/{name}/{version}/check"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202, "{}", r.text().await.unwrap());
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (status, view) = s
            .get_json(&format!("/v1/modules/{name}/{version}/check"))
            .await;
        assert_eq!(status, 200, "{view}");
        if view["state"] != "running" {
            return view;
        }
        assert!(std::time::Instant::now() < deadline, "{view}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn activate(s: &TestServer, name: &str, version: &str, force: bool) -> reqwest::Response {
    s.request(Method::POST, &format!("/v1/modules/{name}/activate"))
        .json(&json!({"version": version, "force": force}))
        .send()
        .await
        .unwrap()
}

async fn upload(s: &TestServer, name: &str, version: &str, path: &str) {
    let r = s.upload(name, version, path).await;
    let status = r.status().as_u16();
    assert!(
        status == 200 || status == 201,
        "{name}@{version}: {status} {}",
        r.text().await.unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_history_reads_as_if_2_0_0_had_written_it_all() {
    let mixed_dir = support::temp_dir();
    let mixed = TestServer::start(mixed_dir.path()).await;
    let only_dir = support::temp_dir();
    let only_v2 = TestServer::start(only_dir.path()).await;

    upload(&mixed, "bank-account", "1.0.0", guests::BANK_ACCOUNT).await;
    upload(&only_v2, "bank-account", "2.0.0", guests::BANK_ACCOUNT_V2).await;

    let mut outcomes = (Vec::new(), Vec::new());
    for (i, (id, command)) in script().iter().enumerate() {
        if i == SWAP_AT {
            // Refused until a replay check of 2.0.0 has passed.
            put(&mixed, "bank-account", "2.0.0", guests::BANK_ACCOUNT_V2).await;
            support::http::expect_problem(
                activate(&mixed, "bank-account", "2.0.0", false).await,
                409,
                "check_required",
            )
            .await;
            let verdict = check(&mixed, "bank-account", "2.0.0", json!({})).await;
            assert_eq!(verdict["state"], "passed", "{verdict}");
            assert_eq!(verdict["streams_checked"], 2, "{verdict}");
            assert_eq!(verdict["streams_failed"], 0, "{verdict}");
            // The same state bytes: the states hold the same values in the
            // same order (postcard keeps no field names; `owner` became
            // `holder`), so the upcast history folds to exactly 1.0.0's.
            assert_eq!(verdict["streams_differing"], 0, "{verdict}");
            assert_eq!(verdict["compared_with"], "bank-account@1.0.0");
            let r = activate(&mixed, "bank-account", "2.0.0", false).await;
            assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap());
        }
        outcomes.0.push(send(&mixed, id, command).await.0);
        outcomes.1.push(send(&only_v2, id, command).await.0);
    }
    // The same decisions on both: `bo`'s overdraft is refused on both, and
    // `ada`'s withdrawal to -50 is accepted under 2.0.0 on the mixed server
    // only because the limit 1.0.0 recorded inside `Opened` reached 2.0.0's
    // state through the upcaster (split into `OverdraftLimitSet`).
    assert_eq!(outcomes.0, outcomes.1);
    assert_eq!(
        outcomes.0,
        [200, 200, 200, 200, 200, 200, 422, 200, 200, 200],
        "the script's outcomes"
    );

    // The log keeps what 1.0.0 wrote, with its schema version; 2.0.0's
    // `Opened` is at version 2 and split as 2.0.0 writes it.
    let ada = events(&mixed, "ada").await;
    assert_eq!(ada[0]["event_type"], "Opened");
    assert_eq!(ada[0]["schema_version"], 1);
    assert_eq!(
        ada[0]["data"],
        json!({"owner": "Ada", "overdraft_limit": 50})
    );
    assert!(
        ada.iter().all(|e| e["schema_version"] == 1),
        "Deposited/Withdrawn stay at 1"
    );
    assert_eq!(
        ada.last().unwrap()["metadata"]["producer"],
        "bank-account@2.0.0"
    );
    let cy = events(&mixed, "cy").await;
    let cy_types: Vec<(&str, u64)> = cy
        .iter()
        .map(|e| {
            (
                e["event_type"].as_str().unwrap(),
                e["schema_version"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        cy_types,
        [("Opened", 2), ("OverdraftLimitSet", 1), ("Withdrawn", 1)]
    );
    assert_eq!(cy[0]["data"], json!({"holder": "Cy"}));

    // The state of a stream 1.0.0 opened, under 2.0.0, equals the state of
    // the same account on the server 2.0.0 ran alone.
    for id in ["ada", "bo", "cy"] {
        let (_, a) = mixed
            .get_json(&format!("/v1/aggregates/bank-account/{id}"))
            .await;
        let (_, b) = only_v2
            .get_json(&format!("/v1/aggregates/bank-account/{id}"))
            .await;
        assert_eq!(a["state"], b["state"], "{id}");
        assert!(a["state"]["holder"].is_string(), "{a}");
    }
    let (_, ada_state) = mixed.get_json("/v1/aggregates/bank-account/ada").await;
    assert_eq!(ada_state["state"]["overdraft_limit"], 50);
    assert_eq!(ada_state["state"]["balance"], -45);

    // account-balances 3.0.0 over both logs: the same documents.
    upload(
        &mixed,
        "account-balances",
        "3.0.0",
        guests::ACCOUNT_BALANCES_V3,
    )
    .await;
    upload(
        &only_v2,
        "account-balances",
        "3.0.0",
        guests::ACCOUNT_BALANCES_V3,
    )
    .await;
    let (docs_mixed, view_mixed) = balances(&mixed).await;
    let (docs_v2, view_v2) = balances(&only_v2).await;
    assert_eq!(docs_mixed, docs_v2);
    assert_eq!(
        docs_mixed.as_array().map(Vec::len),
        Some(4),
        "three accounts and the totals: {docs_mixed}"
    );
    // Each read model says which schema versions it was built from.
    assert_eq!(view_mixed["schema_versions"]["Opened"], json!([1, 2]));
    assert_eq!(view_v2["schema_versions"]["Opened"], json!([2]));
    assert_eq!(view_mixed["schema_versions"]["Deposited"], json!([1]));

    // Restarted, the mixed server reads the same (the versions are durable).
    mixed.stop().await;
    let mixed = TestServer::start(mixed_dir.path()).await;
    let cy = events(&mixed, "cy").await;
    assert_eq!(cy[0]["schema_version"], 2);
    let (_, ada_again) = mixed.get_json("/v1/aggregates/bank-account/ada").await;
    assert_eq!(ada_again["state"], ada_state["state"]);
    mixed.stop().await;
    only_v2.stop().await;
}

/// 2.0.0 built without its upcaster cannot read a stream 1.0.0 opened: the
/// replay check names the streams, activation is refused, and (forced) a
/// command on such a stream fails naming the event while others are served
/// and nothing is written. Commands keep flowing while a check runs, and its
/// verdict survives a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_upcasters_the_check_fails_and_activation_is_refused() {
    let dir = support::temp_dir();
    let s = TestServer::start(dir.path()).await;
    upload(&s, "bank-account", "1.0.0", guests::BANK_ACCOUNT).await;
    for id in ["old-1", "old-2", "old-3"] {
        let open = json!({"type": "Open", "owner": "Ada"});
        assert_eq!(send(&s, id, &open).await.0, 200);
    }
    put(
        &s,
        "bank-account",
        "2.0.0",
        guests::BANK_ACCOUNT_V2_NO_UPCASTERS,
    )
    .await;
    put(&s, "bank-account", "2.0.1", guests::BANK_ACCOUNT_V2).await;

    // Checks and commands at once: the commands are served.
    let deposits = async {
        for i in 0..30 {
            let (status, body) = send(&s, "old-3", &json!({"type": "Deposit", "amount": 1})).await;
            assert_eq!(status, 200, "deposit {i}: {body}");
        }
    };
    let (verdict, ()) = tokio::join!(check(&s, "bank-account", "2.0.0", json!({})), deposits);
    assert_eq!(verdict["state"], "failed", "{verdict}");
    assert_eq!(verdict["streams_checked"], 3);
    assert_eq!(verdict["streams_failed"], 3);
    let failure = &verdict["failures"][0];
    assert_eq!(failure["from_version"], 1, "{failure}");
    assert_eq!(failure["kind"], "guest_failed", "{failure}");
    assert!(
        failure["error"]
            .as_str()
            .unwrap()
            .contains("missing field `holder`"),
        "{failure}"
    );
    let named: std::collections::BTreeSet<&str> = verdict["failures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["aggregate_id"].as_str().unwrap())
        .collect();
    assert_eq!(named, ["old-1", "old-2", "old-3"].into());
    support::http::expect_problem(
        activate(&s, "bank-account", "2.0.0", false).await,
        409,
        "check_failed",
    )
    .await;
    // A canary needs the check too; an upload that activates as well.
    let r = s
        .request(Method::POST, "/v1/modules/bank-account/activate")
        .json(&json!({"version": "2.0.0", "canary": 10}))
        .send()
        .await
        .unwrap();
    support::http::expect_problem(r, 409, "check_failed").await;
    let r = s
        .request(Method::PUT, "/v1/modules/bank-account/2.0.1?activate=true")
        .header("content-type", "application/wasm")
        .body(std::fs::read(guests::BANK_ACCOUNT_V2).unwrap())
        .send()
        .await
        .unwrap();
    support::http::expect_problem(r, 409, "check_required").await;
    // A sample checks only the ids it names.
    let sampled = check(&s, "bank-account", "2.0.1", json!({"sample": ["old-2"]})).await;
    assert_eq!(sampled["state"], "passed", "{sampled}");
    assert_eq!(
        (
            sampled["streams_checked"].as_u64(),
            sampled["sampled"].as_bool()
        ),
        (Some(1), Some(true))
    );
    for bad in [
        json!({"sample": []}),
        json!({"sample": ["a\u{0}"]}),
        json!({"samples": ["a"]}),
        json!([1]),
    ] {
        let r = s
            .request(Method::POST, "/v1/modules/bank-account/2.0.1/check")
            .json(&bad)
            .send()
            .await
            .unwrap();
        support::http::expect_problem(r, 400, "invalid_request").await;
    }
    let (status, _) = s.get_json("/v1/modules/bank-account/9.0.0/check").await;
    assert_eq!(status, 404);
    // A sample, even of ids without a stream, never unlocks activation.
    let ghost = check(
        &s,
        "bank-account",
        "2.0.0",
        json!({"sample": ["ghost", "ghost"]}),
    )
    .await;
    assert_eq!(
        (ghost["state"].as_str(), ghost["streams_checked"].as_u64()),
        (Some("passed"), Some(1))
    );
    support::http::expect_problem(
        activate(&s, "bank-account", "2.0.0", false).await,
        409,
        "check_required",
    )
    .await;
    // A full pass speaks for the history it folded: a stream opened since
    // makes it stale.
    let full = check(&s, "bank-account", "2.0.1", json!({})).await;
    assert_eq!(full["state"], "passed", "{full}");
    assert_eq!(
        send(&s, "old-4", &json!({"type": "Open", "owner": "Cy"}))
            .await
            .0,
        200
    );
    support::http::expect_problem(
        activate(&s, "bank-account", "2.0.1", false).await,
        409,
        "check_stale",
    )
    .await;
    // Again, failing, so what follows starts from a failed verdict.
    let again = check(&s, "bank-account", "2.0.0", json!({})).await;
    assert_eq!(
        (again["state"].as_str(), again["streams_failed"].as_u64()),
        (Some("failed"), Some(4))
    );

    // The verdicts survive a restart.
    s.stop().await;
    let s = TestServer::start(dir.path()).await;
    let (_, after) = s.get_json("/v1/modules/bank-account/2.0.0/check").await;
    assert_eq!(after["state"], "failed", "{after}");
    support::http::expect_problem(
        activate(&s, "bank-account", "2.0.0", false).await,
        409,
        "check_failed",
    )
    .await;

    // Forced, it goes live and cannot read the old streams.
    assert_eq!(
        activate(&s, "bank-account", "2.0.0", true).await.status(),
        200
    );
    let (status, body) = send(&s, "old-1", &json!({"type": "Deposit", "amount": 1})).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (422, Some("guest_failed")),
        "{body}"
    );
    assert!(
        body.to_string().contains("Opened") && body.to_string().contains("holder"),
        "names the event and the field: {body}"
    );
    assert_eq!(events(&s, "old-1").await.len(), 1, "nothing written");
    assert_eq!(
        send(&s, "new", &json!({"type": "Open", "holder": "Bo"}))
            .await
            .0,
        200
    );
    // Its repair passes a check even though the broken active version
    // cannot fold the old streams (a difference, not a failure), and goes live.
    let repair = check(&s, "bank-account", "2.0.1", json!({})).await;
    assert_eq!(repair["state"], "passed", "{repair}");
    assert_eq!(repair["streams_checked"], 5, "{repair}");
    assert!(
        repair["differences"][0]["active_digest"]
            .as_str()
            .unwrap()
            .contains("cannot fold"),
        "{repair}"
    );
    assert_eq!(
        activate(&s, "bank-account", "2.0.1", false).await.status(),
        200
    );
    assert_eq!(
        send(&s, "old-1", &json!({"type": "Deposit", "amount": 1}))
            .await
            .0,
        200
    );
    s.stop().await;
}
