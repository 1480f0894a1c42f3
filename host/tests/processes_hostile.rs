//! A hostile process on a real server: `tests/guests/hostile-process`
//! misbehaves as each `transfer-orders` request asks (its `from` names the
//! misbehaviour). Each case checks that the runner stops that instance at
//! that input with a reason naming the bound, writes nothing of the bad
//! reaction and sends none of its commands, counts the instance as stalled,
//! and keeps serving the process's other instances; and that a `route` that
//! fails stops the reading of the log at its event until a version whose
//! route does not fail is activated.

mod support;

use std::time::{Duration, Instant};

use refold::processes::{
    MAX_COMMANDS_PER_REACTION, MAX_DEADLINES, MAX_EVENTS_PER_REACTION, MAX_PROCESS_COMMAND_BYTES,
};
use serde_json::{Value, json};
use support::http::TestServer;
use support::temp_dir;

const BANK: &str = refold_test_guests::BANK_ACCOUNT;
const TRANSFER_ORDERS: &str = refold_test_guests::TRANSFER_ORDERS;
const HOSTILE_PROCESS: &str = refold_test_guests::HOSTILE_PROCESS;
const HOSTILE_PROCESS_FIXED: &str = refold_test_guests::HOSTILE_PROCESS_FIXED;

/// The process's name on the server.
const NAME: &str = "hostile-process";
/// How long anything asked of the runner may take on a loaded machine.
const LIMIT: Duration = Duration::from_secs(30);

/// Each misbehaviour of `react` the guest knows, and what the reason for the
/// stall must say.
fn misbehaviours() -> Vec<(&'static str, String)> {
    vec![
        (
            "err",
            "the guest reported a failure: the hostile process refuses this input on purpose"
                .into(),
        ),
        ("panic", "the guest trapped".into()),
        // Fuel, or the wall-clock deadline behind it on a very slow machine.
        ("loop", "the guest ".into()),
        (
            "events",
            format!(
                "react returned an invalid reaction: {} events; the limit is {MAX_EVENTS_PER_REACTION}",
                MAX_EVENTS_PER_REACTION + 1
            ),
        ),
        (
            "reserved",
            r#"event 0 has type "refold.received": types starting with "refold." are the runner's"#
                .into(),
        ),
        ("bad-json", "event 0's data is not JSON".into()),
        (
            "commands",
            format!(
                "react returned an invalid reaction: {} commands; the limit is {MAX_COMMANDS_PER_REACTION}",
                MAX_COMMANDS_PER_REACTION + 1
            ),
        ),
        ("bad-command", "command 0 is not JSON".into()),
        (
            "big-command",
            format!("bytes; the limit is {MAX_PROCESS_COMMAND_BYTES}"),
        ),
        (
            "wake-ups",
            format!(
                "react returned an invalid reaction: {} wake-ups; the limit is {MAX_DEADLINES}",
                MAX_DEADLINES + 1
            ),
        ),
    ]
}

/// What a reason says beyond its fixed words: the loop was stopped by fuel
/// (or by the deadline on a very slow machine), the panic's own message.
fn check_detail(word: &str, reason: &str) {
    match word {
        "loop" => assert!(
            reason.contains("ran out of fuel") || reason.contains("wall-clock"),
            "{reason:?}"
        ),
        "panic" => assert!(
            reason.contains("the hostile process panics on purpose"),
            "{reason:?}"
        ),
        _ => {}
    }
}

async fn ok(s: &TestServer, aggregate_type: &str, id: &str, command: Value) -> Value {
    let r = s.send(aggregate_type, id, &command.to_string()).await;
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    assert_eq!(status, 200, "{aggregate_type}/{id} {command}: {body}");
    body
}

async fn upload(s: &TestServer, name: &str, version: &str, path: &str) {
    let r = s.upload(name, version, path).await;
    let status = r.status().as_u16();
    assert!(
        status == 201 || status == 200,
        "upload {name}@{version}: {status} {}",
        r.text().await.unwrap_or_default()
    );
}

/// bank-account, transfer-orders and the hostile process 1.0.0; `bob`, an
/// open account every deposit goes to.
async fn start(dir: &std::path::Path) -> TestServer {
    let s = TestServer::start(dir).await;
    upload(&s, "bank-account", "1.0.0", BANK).await;
    upload(&s, "transfer-orders", "1.0.0", TRANSFER_ORDERS).await;
    upload(&s, NAME, "1.0.0", HOSTILE_PROCESS).await;
    ok(
        &s,
        "bank-account",
        "bob",
        json!({"type": "Open", "owner": "bob"}),
    )
    .await;
    s
}

/// Requests transfer `id` with `from` naming the behaviour; the log position
/// of its `TransferRequested`.
async fn request(s: &TestServer, id: &str, from: &str, amount: i64) -> u64 {
    let reply = ok(
        s,
        "transfer-orders",
        id,
        json!({"type": "Request", "from": from, "to": "bob", "amount": amount}),
    )
    .await;
    reply["events"][0]["position"].as_u64().expect("a position")
}

async fn balance(s: &TestServer, id: &str) -> i64 {
    let (status, view) = s
        .get_json(&format!("/v1/aggregates/bank-account/{id}"))
        .await;
    assert_eq!(status, 200, "{view}");
    view["state"]["balance"].as_i64().expect("a balance")
}

/// Polls `path` until `done` holds of its answer (or [`LIMIT`] passes).
async fn poll(s: &TestServer, path: &str, what: &str, done: impl Fn(u16, &Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let (status, body) = s.get_json(path).await;
        if done(status, &body) {
            return body;
        }
        assert!(
            start.elapsed() < LIMIT,
            "{what}: not within {LIMIT:?}; {path} answered {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Polls an instance until it is completed with nothing pending.
async fn completed(s: &TestServer, id: &str) -> Value {
    let view = poll(s, &format!("/v1/processes/{NAME}/{id}"), id, |status, v| {
        status == 200 && v["status"] != "running" && v["pending_commands"] == json!([])
    })
    .await;
    assert_eq!(view["status"], "completed", "{view}");
    assert_eq!(view["stalled"], Value::Null, "{view}");
    view
}

/// The process, once `stalled_instances` is `n`. A stalled instance is
/// retried with a backoff and is not counted while its retry runs, so the
/// count is polled for rather than read once.
async fn stalled_count(s: &TestServer, n: u64) -> Value {
    poll(
        s,
        &format!("/v1/processes/{NAME}"),
        "the stalled count",
        |status, v| status == 200 && v["stalled_instances"] == n,
    )
    .await
}

/// The instance's entry in the process's listing of running instances.
fn listed<'a>(process: &'a Value, id: &str) -> &'a Value {
    process["page"]["instances"]
        .as_array()
        .expect("a page of instances")
        .iter()
        .find(|i| i["id"] == id)
        .unwrap_or_else(|| panic!("{id} is listed: {process}"))
}

fn history_types(view: &Value) -> Vec<String> {
    view["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_type"].as_str().unwrap().to_string())
        .collect()
}

async fn server_is_up(s: &TestServer) {
    let (status, body) = s.get_json("/healthz").await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_misbehaving_reaction_to_a_log_event_stops_only_its_instance() {
    let dir = temp_dir();
    let s = start(dir.path()).await;
    let mut positions = Vec::new();
    for (word, _) in misbehaviours() {
        positions.push(request(&s, &format!("at-{word}"), word, 1).await);
    }
    // Requested after every bad one: served all the same.
    request(&s, "steady", "alice", 7).await;
    let steady = completed(&s, "steady").await;
    assert_eq!(steady["state"]["outcome"], "accepted", "{steady}");

    let n = misbehaviours().len() as u64;
    let path = format!("/v1/processes/{NAME}?status=running&limit=100");
    let process = poll(
        &s,
        &path,
        "every bad instance stalled with a reason",
        |status, v| {
            status == 200
                && v["stalled_instances"] == n
                && v["page"]["instances"].as_array().is_some_and(|l| {
                    l.len() as u64 == n && l.iter().all(|i| i["stalled"].is_string())
                })
        },
    )
    .await;
    assert_eq!(process["instances"]["running"], n, "{process}");
    assert_eq!(process["instances"]["completed"], 1, "{process}");
    assert_eq!(process["failure"], Value::Null, "{process}");
    // The checkpoint stays before the first event an instance has not taken.
    assert_eq!(process["checkpoint"], positions[0] - 1, "{process}");
    assert_eq!(process["caught_up"], false, "{process}");

    for ((word, wanted), position) in misbehaviours().iter().zip(&positions) {
        let id = format!("at-{word}");
        let entry = listed(&process, &id);
        let reason = entry["stalled"].as_str().unwrap();
        let at = format!("stopped at the log event at position {position}: ");
        assert!(
            reason.starts_with(&at),
            "{id}: {reason:?} starts with {at:?}"
        );
        assert!(
            reason.contains(wanted.as_str()),
            "{id}: {reason:?} names {wanted:?}"
        );
        check_detail(word, reason);
        // Nothing of the reaction was written: not even the input.
        assert_eq!(entry["version"], 0, "{id}: {entry}");
        let (status, page) = s
            .get_json(&format!("/v1/aggregates/process:{NAME}/{id}/events"))
            .await;
        let written = page["events"].as_array().map_or(0, Vec::len);
        assert!(
            written == 0 && (status == 200 || status == 404),
            "{id}: {status} {page}"
        );
    }
    // None of their commands was sent: bob has the steady deposit only.
    assert_eq!(balance(&s, "bob").await, 7);
    server_is_up(&s).await;

    // And still served afterwards, while the bad ones are retried.
    request(&s, "steady-2", "alice", 3).await;
    completed(&s, "steady-2").await;
    assert_eq!(balance(&s, "bob").await, 10);
    stalled_count(&s, n).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_misbehaving_reaction_to_an_outcome_stops_its_instance_there() {
    let dir = temp_dir();
    let s = start(dir.path()).await;
    for (word, _) in misbehaviours() {
        request(&s, &format!("after-{word}"), &format!("after-{word}"), 1).await;
    }
    request(&s, "steady", "alice", 100).await;
    completed(&s, "steady").await;

    let n = misbehaviours().len() as u64;
    stalled_count(&s, n).await;
    for (word, wanted) in misbehaviours() {
        let id = format!("after-{word}");
        let view = poll(
            &s,
            &format!("/v1/processes/{NAME}/{id}"),
            &id,
            |status, v| status == 200 && v["stalled"].is_string(),
        )
        .await;
        assert_eq!(view["status"], "running", "{view}");
        // The deposit was sent and accepted; its outcome is what the
        // instance stopped at, so it is still pending and not recorded.
        let pending = view["pending_commands"].as_array().unwrap();
        assert_eq!(pending.len(), 1, "{view}");
        let command_id = pending[0]["command_id"].as_str().unwrap();
        let reason = view["stalled"].as_str().unwrap();
        let at = format!("stopped at the outcome of command {command_id}: ");
        assert!(
            reason.starts_with(&at),
            "{id}: {reason:?} starts with {at:?}"
        );
        assert!(
            reason.contains(wanted.as_str()),
            "{id}: {reason:?} names {wanted:?}"
        );
        check_detail(word, reason);
        // The stream holds the log event's reaction and nothing after it.
        assert_eq!(
            history_types(&view),
            ["refold.received", "Started", "refold.command"],
            "{id}: {view}"
        );
        assert_eq!(view["version"], 3, "{view}");
        assert_eq!(view["inputs"], 1, "{view}");
        assert_eq!(view["deadlines"], json!([]), "{view}");
        assert_eq!(view["state"]["phase"], "waiting", "{view}");
    }
    // One deposit each (none of the 65 asked for by `commands`), and steady's.
    assert_eq!(balance(&s, "bob").await, n as i64 + 100);
    let (_, process) = s.get_json(&format!("/v1/processes/{NAME}")).await;
    assert_eq!(process["instances"]["running"], n, "{process}");
    assert_eq!(process["pending_commands"], n, "{process}");
    assert_eq!(process["commands_sent"], n + 1, "{process}");
    server_is_up(&s).await;

    request(&s, "steady-2", "alice", 1).await;
    completed(&s, "steady-2").await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_command_to_a_missing_aggregate_type_comes_back_malformed() {
    let dir = temp_dir();
    let s = start(dir.path()).await;
    request(&s, "ghost", "ghost", 5).await;
    let view = completed(&s, "ghost").await;
    assert_eq!(view["state"]["outcome"], "malformed", "{view}");
    assert_eq!(
        history_types(&view),
        [
            "refold.received",
            "Started",
            "refold.command",
            "refold.rejected",
            "Completed",
        ],
        "{view}"
    );
    let rejected = &view["history"][3]["data"];
    assert_eq!(rejected["code"], "malformed", "{view}");
    assert_eq!(rejected["malformed"], true, "{view}");
    assert_eq!(
        view["history"][2]["data"]["aggregate_type"],
        "no-such-aggregate"
    );
    let (_, process) = s.get_json(&format!("/v1/processes/{NAME}")).await;
    assert_eq!(process["commands_rejected"], 1, "{process}");
    assert_eq!(process["command_retries"], 0, "{process}");
    assert_eq!(process["stalled_instances"], 0, "{process}");
    assert_eq!(balance(&s, "bob").await, 0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_route_stops_the_reader_until_a_version_that_routes_is_activated() {
    let dir = temp_dir();
    let s = start(dir.path()).await;
    request(&s, "before", "alice", 1).await;
    completed(&s, "before").await;
    let panicking = request(&s, "panics", "panic", 10).await;
    let poison = request(&s, "poison", "route-fails", 100).await;
    request(&s, "after", "alice", 1000).await;

    let failure = format!(
        "at log position {poison}: route refused the event: the hostile process refuses to route transfer poison"
    );
    let path = format!("/v1/processes/{NAME}");
    poll(&s, &path, "the route's failure", |status, v| {
        status == 200 && v["failure"].as_str().is_some_and(|f| f.contains(&failure))
    })
    .await;
    // Past the first retry of the route (after 1 s), the reader is still
    // stopped at the poison: what follows it is not taken in.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let process = stalled_count(&s, 1).await;
    assert!(
        process["failure"].as_str().unwrap().contains(&failure),
        "{process}"
    );
    assert_eq!(process["checkpoint"], panicking - 1, "{process}");
    assert_eq!(process["caught_up"], false, "{process}");
    assert!(process["lag"].as_u64().unwrap() >= 2, "{process}");
    for id in ["poison", "after"] {
        let (status, body) = s.get_json(&format!("/v1/processes/{NAME}/{id}")).await;
        assert_eq!(status, 404, "{id} not taken in: {body}");
        assert_eq!(body["code"], "unknown_instance", "{body}");
    }
    let (_, page) = s.get_json(&format!("/v1/processes/{NAME}?limit=100")).await;
    let ids: Vec<&str> = page["page"]["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["before", "panics"], "{page}");
    assert_eq!(balance(&s, "bob").await, 1);
    server_is_up(&s).await;

    // The next version routes the poison, and gets past the panic too.
    upload(&s, NAME, "1.1.0", HOSTILE_PROCESS_FIXED).await;
    for id in ["panics", "poison", "after"] {
        let view = completed(&s, id).await;
        assert_eq!(view["folded_by"], format!("{NAME}@1.1.0"), "{view}");
        assert_eq!(view["state"]["outcome"], "accepted", "{view}");
    }
    assert_eq!(balance(&s, "bob").await, 1111);
    let process = poll(&s, &path, "reading on to the head", |status, v| {
        status == 200 && v["caught_up"] == true
    })
    .await;
    assert_eq!(process["failure"], Value::Null, "{process}");
    assert_eq!(process["stalled_instances"], 0, "{process}");
    assert_eq!(process["lag"], 0, "{process}");
    assert_eq!(process["instances"]["completed"], 4, "{process}");
    s.stop().await;
}

/// An instance stopped at its very first input has nothing in its stream,
/// but the runner knows it (it is listed, and counted as stalled): its own
/// page says why it stopped rather than that there is no such instance.
#[tokio::test(flavor = "multi_thread")]
async fn an_instance_stalled_at_its_first_input_has_a_page_saying_why() {
    let dir = temp_dir();
    let s = start(dir.path()).await;
    let position = request(&s, "at-err", "err", 1).await;
    stalled_count(&s, 1).await;
    let (status, view) = s.get_json(&format!("/v1/processes/{NAME}/at-err")).await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["status"], "running", "{view}");
    assert_eq!(view["version"], 0, "{view}");
    assert_eq!(view["history"], json!([]), "{view}");
    let reason = view["stalled"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with(&format!(
            "stopped at the log event at position {position}: "
        )),
        "{view}"
    );
    s.stop().await;
}
