//! Processes (sagas) on a real server with real components: the `transfers`
//! process over `bank-account` (started by `transfer-orders`), checked by the
//! `ledger` projection; the `order-fulfilment` process over `order` and
//! `inventory`. What each test checks is what a bank or a shop would: money
//! moved once or not at all, stock never promised twice, and the instance's
//! own stream telling the whole story.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use refold::server::{Example, ExampleLoaded};
use reqwest::Method;
use serde_json::{Value, json};
use support::http::{TestServer, expect_problem};
use support::temp_dir;

const BANK: &str = refold_test_guests::BANK_ACCOUNT;
const TRANSFERS: &str = refold_test_guests::TRANSFERS;
const TRANSFER_ORDERS: &str = refold_test_guests::TRANSFER_ORDERS;
const LEDGER: &str = refold_test_guests::LEDGER;
const ORDER: &str = refold_test_guests::ORDER;
const INVENTORY: &str = refold_test_guests::INVENTORY;
const FULFILMENT: &str = refold_test_guests::ORDER_FULFILMENT;

async fn ok(s: &TestServer, aggregate_type: &str, id: &str, command: Value) -> Value {
    let r = s.send(aggregate_type, id, &command.to_string()).await;
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    assert_eq!(status, 200, "{aggregate_type}/{id} {command}: {body}");
    body
}

async fn upload(s: &TestServer, name: &str, path: &str) {
    let r = s.upload(name, "1.0.0", path).await;
    let status = r.status().as_u16();
    assert!(
        status == 201 || status == 200,
        "upload {name}: {status} {}",
        r.text().await.unwrap_or_default()
    );
}

async fn bank(s: &TestServer) {
    upload(s, "bank-account", BANK).await;
    upload(s, "transfer-orders", TRANSFER_ORDERS).await;
    upload(s, "transfers", TRANSFERS).await;
}

async fn open(s: &TestServer, id: &str, balance: i64) {
    ok(s, "bank-account", id, json!({"type": "Open", "owner": id})).await;
    if balance > 0 {
        ok(
            s,
            "bank-account",
            id,
            json!({"type": "Deposit", "amount": balance}),
        )
        .await;
    }
}

async fn balance(s: &TestServer, id: &str) -> i64 {
    let (status, view) = s
        .get_json(&format!("/v1/aggregates/bank-account/{id}"))
        .await;
    assert_eq!(status, 200, "{view}");
    view["state"]["balance"].as_i64().expect("a balance")
}

async fn request(s: &TestServer, transfer: &str, from: &str, to: &str, amount: i64) {
    ok(
        s,
        "transfer-orders",
        transfer,
        json!({"type": "Request", "from": from, "to": to, "amount": amount}),
    )
    .await;
}

/// Polls an instance until it is no longer running (or `limit` passes).
async fn settled(s: &TestServer, process: &str, id: &str, limit: Duration) -> Value {
    let start = Instant::now();
    loop {
        let (status, view) = s.get_json(&format!("/v1/processes/{process}/{id}")).await;
        if status == 200 && view["status"] != "running" && view["pending_commands"] == json!([]) {
            return view;
        }
        assert!(
            start.elapsed() < limit,
            "{process}/{id} did not settle within {limit:?}: {status} {view}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn history_types(view: &Value) -> Vec<String> {
    view["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_type"].as_str().unwrap().to_string())
        .collect()
}

/// The recorded commands of an instance, by command id, and the outcome
/// records by command id: every command has exactly one outcome.
fn commands_and_outcomes(view: &Value) -> (Vec<Value>, HashMap<String, Vec<Value>>) {
    let mut commands = Vec::new();
    let mut outcomes: HashMap<String, Vec<Value>> = HashMap::new();
    for e in view["history"].as_array().unwrap() {
        let data: Value = e["data"].clone();
        match e["event_type"].as_str().unwrap() {
            "refold.command" => commands.push(data),
            "refold.accepted" | "refold.rejected" => outcomes
                .entry(data["command_id"].as_str().unwrap().to_string())
                .or_default()
                .push(e.clone()),
            _ => {}
        }
    }
    (commands, outcomes)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_transfer_debits_then_credits_and_its_stream_tells_the_story() {
    let dir = temp_dir();
    let s = TestServer::start(dir.path()).await;
    bank(&s).await;
    upload(&s, "ledger", LEDGER).await;
    open(&s, "alice", 100).await;
    open(&s, "bob", 0).await;

    request(&s, "t-1", "alice", "bob", 30).await;
    let view = settled(&s, "transfers", "t-1", Duration::from_secs(20)).await;
    assert_eq!(view["status"], "completed", "{view}");
    assert_eq!(view["state"]["phase"], "completed", "{view}");
    assert_eq!(view["stream"], "process:transfers/t-1");
    assert_eq!(view["folded_by"], "transfers@1.0.0");
    assert_eq!(balance(&s, "alice").await, 70);
    assert_eq!(balance(&s, "bob").await, 30);

    // The stream: input, own events, effects, in that order, per input.
    assert_eq!(
        history_types(&view),
        [
            "refold.received",
            "Started",
            "refold.command",
            "refold.wake-up",
            "refold.accepted",
            "Debited",
            "refold.command",
            "refold.accepted",
            "Credited",
        ],
        "{view}"
    );
    let (commands, outcomes) = commands_and_outcomes(&view);
    assert_eq!(commands.len(), 2);
    for command in &commands {
        let id = command["command_id"].as_str().unwrap();
        assert!(id.starts_with("process:transfers:"), "{id}");
        // No client can take a process's command id first.
        let r = s
            .request(Method::POST, "/v1/aggregates/bank-account/alice/commands")
            .header("idempotency-key", id)
            .header("content-type", "application/json")
            .body(r#"{"type":"Deposit","amount":1}"#)
            .send()
            .await
            .unwrap();
        expect_problem(r, 400, "reserved_idempotency_key").await;
        assert_eq!(outcomes[id].len(), 1, "one outcome per command: {view}");
        // The target's event carries the command id the process recorded.
        let target = command["aggregate_id"].as_str().unwrap();
        let (_, events) = s
            .get_json(&format!("/v1/aggregates/bank-account/{target}/events"))
            .await;
        let carrying: Vec<&Value> = events["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["metadata"]["command_id"] == id)
            .collect();
        assert_eq!(carrying.len(), 1, "{id} took effect once: {events}");
        assert_eq!(
            carrying[0]["metadata"]["correlation_id"], "process:transfers/t-1",
            "{events}"
        );
    }
    // The wake-up it asked for is on record, but a finished instance is
    // woken by nothing: no deadline is pending.
    assert_eq!(view["deadlines"], json!([]), "{view}");
    assert_eq!(view["next_deadline_ms"], Value::Null, "{view}");

    // The same stream under the aggregate routes.
    let (status, page) = s
        .get_json("/v1/aggregates/process:transfers/t-1/events")
        .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["events"].as_array().unwrap().len(), 9, "{page}");

    // Listing, by status.
    let (status, list) = s.get_json("/v1/processes").await;
    assert_eq!(status, 200);
    let transfers = &list["processes"][0];
    assert_eq!(transfers["name"], "transfers", "{list}");
    assert_eq!(transfers["instances"]["completed"], 1, "{list}");
    assert_eq!(transfers["pending_commands"], 0, "{list}");
    let (_, completed) = s.get_json("/v1/processes/transfers?status=completed").await;
    assert_eq!(
        completed["page"]["instances"][0]["id"], "t-1",
        "{completed}"
    );
    let (_, running) = s.get_json("/v1/processes/transfers?status=running").await;
    assert_eq!(running["page"]["instances"], json!([]), "{running}");

    // Metrics.
    let metrics = s
        .request(Method::GET, "/metrics")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        r#"refold_process_instances{process="transfers",kind="completed"} 1"#,
        r#"refold_process_pending_commands{process="transfers"} 0"#,
        r#"refold_process_stalled_instances{process="transfers"} 0"#,
    ] {
        assert!(metrics.contains(line), "{line} in:\n{metrics}");
    }
    assert!(
        metrics.contains("refold_process_lag_events{process=\"transfers\"}"),
        "{metrics}"
    );

    // The ledger sees the double entry balance out.
    let check = ledger_check(&s).await;
    assert_eq!(check["ok"], true, "{check}");
    assert_eq!(check["in_flight"], 0, "{check}");
    assert_eq!(check["balances_sum"], 100, "{check}");

    // A process activated now starts with the events after it: a second
    // copy of transfers does not carry out t-1 again.
    let r = s
        .request(Method::PUT, "/v1/modules/transfers-two/1.0.0?activate=true")
        .header("content-type", "application/wasm")
        .body(std::fs::read(TRANSFERS).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201, "{}", r.text().await.unwrap());
    let head = s.server.app.store.head();
    let start = Instant::now();
    loop {
        let (status, view) = s.get_json("/v1/processes/transfers-two").await;
        if status == 200 && view["caught_up"] == true {
            assert!(view["checkpoint"].as_u64().unwrap() >= head, "{view}");
            assert_eq!(view["page"]["instances"], json!([]), "{view}");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "{status} {view}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(balance(&s, "alice").await, 70);
    assert_eq!(balance(&s, "bob").await, 30);

    // Errors: unknown process, unknown instance, bad status, unknown parameter.
    expect_problem(
        s.request(Method::GET, "/v1/processes/nope")
            .send()
            .await
            .unwrap(),
        404,
        "unknown_process",
    )
    .await;
    expect_problem(
        s.request(Method::GET, "/v1/processes/transfers/nope")
            .send()
            .await
            .unwrap(),
        404,
        "unknown_instance",
    )
    .await;
    expect_problem(
        s.request(Method::GET, "/v1/processes/transfers?status=done")
            .send()
            .await
            .unwrap(),
        400,
        "invalid_request",
    )
    .await;
    expect_problem(
        s.request(Method::GET, "/v1/processes/transfers?stauts=running")
            .send()
            .await
            .unwrap(),
        400,
        "invalid_request",
    )
    .await;
    s.stop().await;
}

async fn ledger_check(s: &TestServer) -> Value {
    let head = s.server.app.store.head();
    let start = Instant::now();
    loop {
        let (status, check) = s
            .get_json(&format!(
                "/v1/projections/ledger/queries/check?min_position={head}"
            ))
            .await;
        if status == 200 {
            return check;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{status} {check}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_overdraft_fails_the_transfer_and_a_refused_credit_is_refunded() {
    let dir = temp_dir();
    let s = TestServer::start(dir.path()).await;
    bank(&s).await;
    upload(&s, "ledger", LEDGER).await;
    open(&s, "alice", 100).await;
    open(&s, "bob", 0).await;
    open(&s, "carol", 0).await;
    ok(&s, "bank-account", "carol", json!({"type": "Close"})).await;

    // Overdraft: the debit is refused, nothing moves.
    request(&s, "t-over", "alice", "bob", 500).await;
    let view = settled(&s, "transfers", "t-over", Duration::from_secs(20)).await;
    assert_eq!(view["status"], "failed", "{view}");
    let (commands, outcomes) = commands_and_outcomes(&view);
    assert_eq!(commands.len(), 1, "only the debit was sent: {view}");
    let refused = &outcomes[commands[0]["command_id"].as_str().unwrap()][0];
    assert_eq!(refused["event_type"], "refold.rejected", "{view}");
    assert_eq!(balance(&s, "alice").await, 100);
    assert_eq!(balance(&s, "bob").await, 0);

    // The destination is closed: the credit is refused, the source refunded.
    request(&s, "t-closed", "alice", "carol", 40).await;
    let view = settled(&s, "transfers", "t-closed", Duration::from_secs(20)).await;
    assert_eq!(view["status"], "failed", "{view}");
    let types = history_types(&view);
    for wanted in ["Debited", "CreditRefused", "Refunded"] {
        assert!(types.iter().any(|t| t == wanted), "{wanted} in {types:?}");
    }
    let (commands, outcomes) = commands_and_outcomes(&view);
    let keys: Vec<&str> = commands
        .iter()
        .map(|c| c["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["debit", "credit", "refund"], "{view}");
    assert!(
        commands
            .iter()
            .all(|c| outcomes[c["command_id"].as_str().unwrap()].len() == 1)
    );
    assert_eq!(balance(&s, "alice").await, 100, "refunded");

    // A destination no account can have (too long, a control character):
    // the credit comes back malformed, and the source is refunded.
    for (id, to) in [
        ("t-ctl", "bob\u{7}".to_string()),
        ("t-long", "x".repeat(300)),
    ] {
        request(&s, id, "alice", &to, 10).await;
        let view = settled(&s, "transfers", id, Duration::from_secs(20)).await;
        assert_eq!(view["status"], "failed", "{view}");
        let (commands, outcomes) = commands_and_outcomes(&view);
        let credit = &outcomes[commands[1]["command_id"].as_str().unwrap()][0];
        assert_eq!(credit["data"]["malformed"], true, "{view}");
        assert!(
            history_types(&view).iter().any(|t| t == "Refunded"),
            "{view}"
        );
    }
    assert_eq!(balance(&s, "alice").await, 100, "refunded");

    // An instance id as long as an aggregate id may be (256 bytes): the
    // correlation id its commands carry still fits.
    let long = format!("t-{}", "x".repeat(254));
    request(&s, &long, "alice", "bob", 1).await;
    let view = settled(&s, "transfers", &long, Duration::from_secs(20)).await;
    assert_eq!(view["status"], "completed", "{view}");
    ok(
        &s,
        "bank-account",
        "bob",
        json!({"type": "Withdraw", "amount": 1}),
    )
    .await;
    ok(
        &s,
        "bank-account",
        "alice",
        json!({"type": "Deposit", "amount": 1}),
    )
    .await;

    let (_, list) = s.get_json("/v1/processes/transfers").await;
    assert_eq!(list["instances"]["failed"], 4, "{list}");
    let check = ledger_check(&s).await;
    assert_eq!(check["ok"], true, "{check}");
    assert_eq!(check["in_flight"], 0, "{check}");
    assert_eq!(check["balances_sum"], 100, "{check}");
    s.stop().await;
}

/// The component with a custom section appended: the same code under
/// another digest, which a new version must have to be folded anew.
fn with_custom_section(path: &str, tag: &str) -> Vec<u8> {
    let mut bytes = std::fs::read(path).unwrap();
    let name = b"refold-test";
    let payload = tag.as_bytes();
    let len = 1 + name.len() + payload.len();
    assert!(len < 128, "one LEB128 byte");
    bytes.extend_from_slice(&[0, len as u8, name.len() as u8]);
    bytes.extend_from_slice(name);
    bytes.extend_from_slice(payload);
    bytes
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_version_takes_over_a_waiting_instance() {
    let dir = temp_dir();
    let s = TestServer::start(dir.path()).await;
    shop(&s).await;
    ok(
        &s,
        "inventory",
        "sku-1",
        json!({"type": "Restock", "quantity": 5}),
    )
    .await;
    let placed = ok(
        &s,
        "order",
        "o-1",
        json!({"type": "Place", "customer": "c", "lines": [{"product": "sku-1", "quantity": 1, "unit_price": 100}], "pay_within_ms": 600000}),
    )
    .await;
    let total = placed["events"][0]["data"]["total"].as_i64().unwrap();
    // Reserved, waiting for the payment.
    let start = Instant::now();
    loop {
        let (_, view) = s.get_json("/v1/processes/order-fulfilment/o-1").await;
        if view["state"]["phase"] == "awaiting_payment" {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "{view}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = s
        .request(
            Method::PUT,
            "/v1/modules/order-fulfilment/1.1.0?activate=true",
        )
        .header("content-type", "application/wasm")
        .body(with_custom_section(FULFILMENT, "1.1.0"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201, "{}", r.text().await.unwrap());
    ok(&s, "order", "o-1", json!({"type": "Pay", "amount": total})).await;
    let view = settled(&s, "order-fulfilment", "o-1", Duration::from_secs(20)).await;
    assert_eq!(view["status"], "completed", "{view}");
    assert_eq!(view["folded_by"], "order-fulfilment@1.1.0");
    // The records before the swap were made by 1.0.0, those after by 1.1.0,
    // which folded the instance's stream first.
    let producers: Vec<(String, String)> = view["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["event_type"].as_str().unwrap().to_string(),
                e["metadata"]["producer"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let paid = producers
        .iter()
        .position(|(t, _)| t == "refold.received")
        .and_then(|first| {
            producers[first + 1..]
                .iter()
                .position(|(t, _)| t == "refold.received")
                .map(|p| p + first + 1)
        })
        .expect("the payment was taken in");
    assert!(
        producers[..paid]
            .iter()
            .all(|(_, p)| p == "order-fulfilment@1.0.0"),
        "{producers:?}"
    );
    assert!(
        producers[paid..]
            .iter()
            .all(|(_, p)| p == "order-fulfilment@1.1.0"),
        "{producers:?}"
    );
    assert_eq!(order_state(&s, "o-1").await["status"], "confirmed");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn instances_continue_after_a_restart_and_a_new_version_folds_them() {
    let dir = temp_dir();
    let s = TestServer::start(dir.path()).await;
    bank(&s).await;
    open(&s, "alice", 1000).await;
    open(&s, "bob", 0).await;
    for i in 0..20 {
        request(&s, &format!("t-{i}"), "alice", "bob", 10).await;
    }
    // Stop at once: some transfers are mid-way, with commands recorded and
    // not yet sent, or sent and not yet answered.
    s.stop().await;
    let s = TestServer::start(dir.path()).await;
    for i in 0..20 {
        let view = settled(&s, "transfers", &format!("t-{i}"), Duration::from_secs(30)).await;
        assert_eq!(view["status"], "completed", "{view}");
        let (commands, outcomes) = commands_and_outcomes(&view);
        assert_eq!(commands.len(), 2, "{view}");
        for c in &commands {
            assert_eq!(
                outcomes[c["command_id"].as_str().unwrap()].len(),
                1,
                "{view}"
            );
        }
    }
    assert_eq!(balance(&s, "alice").await, 800);
    assert_eq!(balance(&s, "bob").await, 200);

    // A new version takes over: it folds the existing instances with its
    // own apply, and serves new inputs.
    let r = s
        .request(Method::PUT, "/v1/modules/transfers/1.1.0?activate=true")
        .header("content-type", "application/wasm")
        .body(std::fs::read(TRANSFERS).unwrap())
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let view = settled(&s, "transfers", "t-0", Duration::from_secs(5)).await;
    assert_eq!(view["folded_by"], "transfers@1.1.0", "{view}");
    request(&s, "t-new", "alice", "bob", 5).await;
    let view = settled(&s, "transfers", "t-new", Duration::from_secs(20)).await;
    assert_eq!(view["status"], "completed", "{view}");
    let producers: Vec<&str> = view["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["metadata"]["producer"].as_str().unwrap())
        .collect();
    assert!(
        producers.iter().all(|p| *p == "transfers@1.1.0"),
        "{producers:?}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_process_example_is_loaded_and_runs() {
    let dir = temp_dir();
    let s = TestServer::start(dir.path()).await;
    let example = |name: &str, path: &str| Example {
        name: name.into(),
        version: "1.0.0".into(),
        bytes: std::fs::read(path).unwrap(),
    };
    let examples = || {
        vec![
            example("bank-account", BANK),
            example("transfer-orders", TRANSFER_ORDERS),
            example("transfers", TRANSFERS),
        ]
    };
    let loaded = s
        .server
        .load_examples(examples())
        .await
        .expect("examples load");
    let kinds: Vec<&str> = loaded
        .iter()
        .map(|l| match l {
            ExampleLoaded::Uploaded(m) => m.record.kind.as_str(),
            other => panic!(
                "uploaded once: {}",
                matches!(other, ExampleLoaded::Differs(_))
            ),
        })
        .collect();
    assert_eq!(kinds, ["aggregate", "aggregate", "process"]);
    let (_, modules) = s.get_json("/v1/modules").await;
    let transfers = modules["modules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "transfers")
        .unwrap()
        .clone();
    assert_eq!(transfers["active_version"], "1.0.0", "{transfers}");
    open(&s, "a", 10).await;
    open(&s, "b", 0).await;
    request(&s, "t", "a", "b", 10).await;
    let view = settled(&s, "transfers", "t", Duration::from_secs(20)).await;
    assert_eq!(view["status"], "completed", "{view}");

    // A process name is no aggregate type: commands to it are refused.
    let r = s.send("transfers", "t1", r#"{"type":"Request"}"#).await;
    expect_problem(r, 404, "unknown_aggregate_type").await;
    s.stop().await;
}

// ---- the shop ----

async fn shop(s: &TestServer) {
    upload(s, "order", ORDER).await;
    upload(s, "inventory", INVENTORY).await;
    upload(s, "order-fulfilment", FULFILMENT).await;
}

async fn inventory(s: &TestServer, sku: &str) -> Value {
    let (status, view) = s.get_json(&format!("/v1/aggregates/inventory/{sku}")).await;
    assert_eq!(status, 200, "{view}");
    view["state"].clone()
}

async fn order_state(s: &TestServer, id: &str) -> Value {
    let (status, view) = s.get_json(&format!("/v1/aggregates/order/{id}")).await;
    assert_eq!(status, 200, "{view}");
    view["state"].clone()
}

fn reserved_for(inventory: &Value, order: &str) -> i64 {
    inventory["reserved"][order].as_i64().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_order_is_confirmed_once_paid_and_cancelled_when_payment_is_overdue() {
    let dir = temp_dir();
    let s = TestServer::start(dir.path()).await;
    shop(&s).await;
    ok(
        &s,
        "inventory",
        "sku-1",
        json!({"type": "Restock", "quantity": 5}),
    )
    .await;

    // Paid in time: reserved, then confirmed.
    let placed = ok(
        &s,
        "order",
        "o-paid",
        json!({"type": "Place", "customer": "c", "lines": [{"product": "sku-1", "quantity": 2, "unit_price": 100}], "pay_within_ms": 60000}),
    )
    .await;
    let total = placed["events"][0]["data"]["total"].as_i64().unwrap();
    ok(
        &s,
        "order",
        "o-paid",
        json!({"type": "Pay", "amount": total}),
    )
    .await;
    let view = settled(&s, "order-fulfilment", "o-paid", Duration::from_secs(20)).await;
    assert_eq!(view["status"], "completed", "{view}");
    assert_eq!(order_state(&s, "o-paid").await["status"], "confirmed");
    assert_eq!(reserved_for(&inventory(&s, "sku-1").await, "o-paid"), 2);

    // Never paid: the deadline fires, the order is cancelled, its stock released.
    ok(
        &s,
        "order",
        "o-late",
        json!({"type": "Place", "customer": "c", "lines": [{"product": "sku-1", "quantity": 3, "unit_price": 100}], "pay_within_ms": 300}),
    )
    .await;
    let view = settled(&s, "order-fulfilment", "o-late", Duration::from_secs(20)).await;
    assert_eq!(view["status"], "failed", "{view}");
    assert!(
        history_types(&view).iter().any(|t| t == "refold.fired"),
        "{view}"
    );
    assert_eq!(order_state(&s, "o-late").await["status"], "cancelled");
    assert_eq!(reserved_for(&inventory(&s, "sku-1").await, "o-late"), 0);
    // Paying afterwards is refused by the order itself.
    let r = s
        .send(
            "order",
            "o-late",
            &json!({"type": "Pay", "amount": 300}).to_string(),
        )
        .await;
    assert_eq!(r.status().as_u16(), 422, "{}", r.text().await.unwrap());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_orders_for_scarce_stock_never_oversell() {
    let dir = temp_dir();
    let s = TestServer::start(dir.path()).await;
    shop(&s).await;
    let stock: BTreeMap<&str, i64> = [("sku-a", 7), ("sku-b", 4)].into();
    for (sku, quantity) in &stock {
        ok(
            &s,
            "inventory",
            sku,
            json!({"type": "Restock", "quantity": quantity}),
        )
        .await;
    }
    const ORDERS: usize = 24;
    let mut tasks = Vec::new();
    for i in 0..ORDERS {
        let base = s.base.clone();
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let lines = match i % 3 {
                0 => json!([{"product": "sku-a", "quantity": 2, "unit_price": 10}]),
                1 => json!([{"product": "sku-a", "quantity": 1, "unit_price": 10}, {"product": "sku-b", "quantity": 1, "unit_price": 10}]),
                _ => json!([{"product": "sku-b", "quantity": 2, "unit_price": 10}, {"product": "sku-a", "quantity": 1, "unit_price": 10}]),
            };
            let id = format!("o-{i}");
            let url = format!("{base}/v1/aggregates/order/{id}/commands");
            let placed: Value = client
                .post(&url)
                .json(&json!({"type": "Place", "customer": "c", "lines": lines, "pay_within_ms": 60000}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let total = placed["events"][0]["data"]["total"].as_i64().unwrap();
            // Pay every other order; the rest wait (their deadline is far).
            if i % 2 == 0 {
                let r = client
                    .post(&url)
                    .json(&json!({"type": "Pay", "amount": total}))
                    .send()
                    .await
                    .unwrap();
                assert!(r.status().is_success() || r.status().as_u16() == 422);
            }
            id
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.unwrap());
    }
    // Settle: every order is confirmed, cancelled, or (unpaid) holding its stock.
    let start = Instant::now();
    loop {
        let (_, view) = s.get_json("/v1/processes/order-fulfilment").await;
        let busy = view["pending_commands"].as_u64().unwrap() > 0
            || view["queued_inputs"].as_u64().unwrap() > 0
            || view["busy_instances"].as_u64().unwrap() > 0
            || view["lag"].as_u64().unwrap() > 0;
        let counted = view["instances"]["running"].as_u64().unwrap()
            + view["instances"]["completed"].as_u64().unwrap()
            + view["instances"]["failed"].as_u64().unwrap();
        if !busy && counted == ORDERS as u64 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "{view}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut promised: BTreeMap<&str, i64> = BTreeMap::new();
    for id in &ids {
        let order = order_state(&s, id).await;
        let status = order["status"].as_str().unwrap().to_string();
        for sku in stock.keys() {
            let held = reserved_for(&inventory(&s, sku).await, id);
            match status.as_str() {
                "cancelled" => assert_eq!(held, 0, "{id} cancelled but holds {sku}"),
                _ => *promised.entry(sku).or_default() += held,
            }
        }
        if status == "confirmed" {
            let view = settled(&s, "order-fulfilment", id, Duration::from_secs(5)).await;
            assert_eq!(view["status"], "completed", "{view}");
        }
    }
    for (sku, quantity) in &stock {
        let inv = inventory(&s, sku).await;
        assert_eq!(inv["on_hand"], *quantity, "{inv}");
        let held: i64 = inv["reserved"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_i64().unwrap())
            .sum();
        assert!(held <= *quantity, "{sku} oversold: {inv}");
        assert_eq!(held, promised[sku], "{sku}: {inv}");
    }
    let (_, view) = s.get_json("/v1/processes/order-fulfilment").await;
    assert!(
        view["instances"]["failed"].as_u64().unwrap() > 0,
        "stock ran out: {view}"
    );
    s.stop().await;
}
