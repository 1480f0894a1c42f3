//! Projections end to end over a real server on 127.0.0.1:0 with the real
//! `account-balances` v1/v2 and `picky-projection` guests: replay, live
//! following, documents, queries, read-your-writes, diff, promote, drop,
//! rebuild, and failure handling (retry, skip).

mod support;

use std::time::{Duration, Instant};

use refold::store::{ExpectedVersion, NewEvent, StreamId};
use reqwest::Method;
use serde_json::{Value, json};
use support::http::{TestServer, expect_problem};
use support::temp_dir;

const BANK: &str = refold_test_guests::BANK_ACCOUNT;
const BALANCES: &str = refold_test_guests::ACCOUNT_BALANCES;
const BALANCES_V2: &str = refold_test_guests::ACCOUNT_BALANCES_V2;
const PICKY: &str = refold_test_guests::PICKY_PROJECTION;

/// Uploads a module without asking for activation.
/// A server whose store is a fresh PostgreSQL database.
async fn on_postgres(dir: &std::path::Path) -> TestServer {
    let mut config = support::http::config(dir);
    config.store_url = Some(support::pg::database());
    TestServer::start_with(config).await
}

async fn put_module(s: &TestServer, name: &str, version: &str, path: &str) -> u16 {
    s.request(Method::PUT, &format!("/v1/modules/{name}/{version}"))
        .body(std::fs::read(path).unwrap())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Polls one version's status until `done` holds (at most 60 s).
async fn wait_for(
    s: &TestServer,
    name: &str,
    version: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
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

fn caught_up(view: &Value) -> bool {
    view["state"] == "caught_up" && view["lag"] == 0
}

async fn deposit(s: &TestServer, id: &str, amount: i64) -> u64 {
    let r = s
        .send(
            "bank-account",
            id,
            &json!({"type": "Deposit", "amount": amount}).to_string(),
        )
        .await;
    assert_eq!(r.status().as_u16(), 200, "deposit accepted");
    r.json::<Value>().await.unwrap()["position"]
        .as_u64()
        .unwrap()
}

async fn open(s: &TestServer, id: &str) {
    let r = s
        .send(
            "bank-account",
            id,
            &json!({"type": "Open", "owner": id}).to_string(),
        )
        .await;
    assert_eq!(r.status().as_u16(), 200, "open accepted");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_first_version_replays_goes_live_and_serves_documents_and_queries() {
    let dir = temp_dir();
    the_first_version_replays_goes_live_and_serves_documents_and_queries_on(
        TestServer::start(dir.path()).await,
    )
    .await;
}

/// The same on PostgreSQL (one host).
#[tokio::test(flavor = "multi_thread")]
async fn the_first_version_replays_goes_live_and_serves_documents_and_queries_on_postgres() {
    let dir = temp_dir();
    the_first_version_replays_goes_live_and_serves_documents_and_queries_on(
        on_postgres(dir.path()).await,
    )
    .await;
}

async fn the_first_version_replays_goes_live_and_serves_documents_and_queries_on(s: TestServer) {
    assert_eq!(put_module(&s, "bank-account", "1.0.0", BANK).await, 201);
    for id in ["acc-1", "acc-2", "acc-3"] {
        open(&s, id).await;
    }
    deposit(&s, "acc-1", 500).await;
    deposit(&s, "acc-2", 700).await;

    let uploaded = s
        .request(Method::PUT, "/v1/modules/account-balances/1.0.0")
        .body(std::fs::read(BALANCES).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(uploaded.status().as_u16(), 201);
    assert_eq!(
        uploaded.json::<Value>().await.unwrap()["kind"],
        "projection"
    );
    let view = wait_for(&s, "account-balances", "1.0.0", caught_up).await;
    assert_eq!(view["events_applied"], 5, "3 opens and 2 deposits: {view}");
    let (_, projection) = s.get_json("/v1/projections/account-balances").await;
    assert_eq!(
        projection["live_version"], "1.0.0",
        "the first version goes live once caught up"
    );
    let (_, all) = s.get_json("/v1/projections").await;
    assert_eq!(all["projections"][0]["name"], "account-balances");

    // Read your writes: the command's position, then a read that waits for it.
    let position = deposit(&s, "acc-1", 250).await;
    let r = s
        .request(
            Method::GET,
            &format!("/v1/projections/account-balances/docs/account/acc-1?min_position={position}"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["refold-projection-version"], "1.0.0");
    let seen: u64 = r.headers()["refold-position"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(seen >= position);
    let doc: Value = r.json().await.unwrap();
    assert_eq!(doc["balance"], 750, "{doc}");

    let (status, totals) = s
        .get_json("/v1/projections/account-balances/docs/totals")
        .await;
    assert_eq!(
        (
            status,
            totals["accounts"].as_u64(),
            totals["balance"].as_i64()
        ),
        (200, Some(3), Some(1450))
    );

    // Paging through documents by prefix.
    let (_, page) = s
        .get_json("/v1/projections/account-balances/docs?prefix=account/&limit=2")
        .await;
    let keys: Vec<&str> = page["documents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["account/acc-1", "account/acc-2"]);
    assert_eq!(page["next_after"], "account/acc-2");
    let (_, rest) = s
        .get_json(
            "/v1/projections/account-balances/docs?prefix=account/&limit=2&after=account/acc-2",
        )
        .await;
    assert_eq!(rest["documents"][0]["key"], "account/acc-3");
    assert_eq!(rest["next_after"], Value::Null);

    // Queries run in the guest, read-only.
    let (status, answer) = s
        .get_json("/v1/projections/account-balances/queries/balance?account=acc-2")
        .await;
    assert_eq!(
        (status, answer["balance"].as_i64()),
        (200, Some(700)),
        "{answer}"
    );
    let unknown = s
        .request(Method::GET, "/v1/projections/account-balances/queries/nope")
        .send()
        .await
        .unwrap();
    expect_problem(unknown, 404, "unknown_query").await;
    let bad = s
        .request(
            Method::GET,
            "/v1/projections/account-balances/queries/balance",
        )
        .send()
        .await
        .unwrap();
    expect_problem(bad, 400, "bad_query_arguments").await;

    // Waiting is bounded, and says how far the projection got.
    let far = s
        .request(
            Method::GET,
            &format!(
                "/v1/projections/account-balances/docs/totals?min_position={}&wait_ms=100",
                position + 1000
            ),
        )
        .send()
        .await
        .unwrap();
    let problem = expect_problem(far, 503, "min_position_timeout").await;
    assert_eq!(problem["min_position"], position + 1000);
    // "Not yet" and "never here" are told apart: the head is in the answer.
    assert_eq!(problem["head"], position, "{problem}");
    assert_eq!(problem["position"], position, "{problem}");
    assert_eq!(problem["beyond_head"], true, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("never written to this server's log")),
        "{problem}"
    );
    let too_long = s
        .request(
            Method::GET,
            "/v1/projections/account-balances/docs/totals?min_position=1&wait_ms=999999",
        )
        .send()
        .await
        .unwrap();
    expect_problem(too_long, 400, "invalid_request").await;
    let missing = s
        .request(
            Method::GET,
            "/v1/projections/account-balances/docs/account/nobody",
        )
        .send()
        .await
        .unwrap();
    expect_problem(missing, 404, "not_found").await;
    let no_such = s
        .request(Method::GET, "/v1/projections/nothing")
        .send()
        .await
        .unwrap();
    expect_problem(no_such, 404, "not_found").await;

    // A projection is not an aggregate, and a name has one kind.
    let activate = s
        .request(Method::POST, "/v1/modules/account-balances/activate")
        .json(&json!({"version": "1.0.0"}))
        .send()
        .await
        .unwrap();
    expect_problem(activate, 409, "use_promote").await;
    let command = s
        .send("account-balances", "x", r#"{"type":"Deposit","amount":1}"#)
        .await;
    expect_problem(command, 404, "unknown_aggregate_type").await;
    let mixed = s
        .request(Method::PUT, "/v1/modules/bank-account/9.0.0")
        .body(std::fs::read(BALANCES).unwrap())
        .send()
        .await
        .unwrap();
    expect_problem(mixed, 409, "module_kind_mismatch").await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_version_replays_beside_the_live_one_then_diff_promote_rebuild_and_drop() {
    let dir = temp_dir();
    a_new_version_replays_beside_the_live_one_then_diff_promote_rebuild_and_drop_on(
        TestServer::start(dir.path()).await,
    )
    .await;
}

/// The same on PostgreSQL (one host).
#[tokio::test(flavor = "multi_thread")]
async fn a_new_version_replays_beside_the_live_one_then_diff_promote_rebuild_and_drop_on_postgres()
{
    let dir = temp_dir();
    a_new_version_replays_beside_the_live_one_then_diff_promote_rebuild_and_drop_on(
        on_postgres(dir.path()).await,
    )
    .await;
}

async fn a_new_version_replays_beside_the_live_one_then_diff_promote_rebuild_and_drop_on(
    s: TestServer,
) {
    assert_eq!(put_module(&s, "bank-account", "1.0.0", BANK).await, 201);
    for i in 0..10 {
        let id = format!("acc-{i}");
        open(&s, &id).await;
        deposit(&s, &id, 2000).await;
        let r = s
            .send(
                "bank-account",
                &id,
                &json!({"type": "Withdraw", "amount": 1500 + i * 10}).to_string(),
            )
            .await;
        assert_eq!(r.status().as_u16(), 200);
    }
    assert_eq!(
        put_module(&s, "account-balances", "1.0.0", BALANCES).await,
        201
    );
    wait_for(&s, "account-balances", "1.0.0", caught_up).await;

    assert_eq!(
        put_module(&s, "account-balances", "2.0.0", BALANCES_V2).await,
        201
    );
    let v2 = wait_for(&s, "account-balances", "2.0.0", caught_up).await;
    assert_eq!(v2["events_applied"], 30);
    assert_eq!(v2["live"], false, "a later version waits for promotion");
    let (_, projection) = s.get_json("/v1/projections/account-balances").await;
    assert_eq!(projection["live_version"], "1.0.0");
    assert_eq!(projection["versions"].as_array().unwrap().len(), 2);

    // Reads go to the live version unless another is named.
    let (_, live_doc) = s
        .get_json("/v1/projections/account-balances/docs/account/acc-1")
        .await;
    let (_, v2_doc) = s
        .get_json("/v1/projections/account-balances/docs/account/acc-1?version=2.0.0")
        .await;
    assert!(live_doc.get("withdrawals").is_none(), "{live_doc}");
    assert_eq!(v2_doc["withdrawals"], 1, "{v2_doc}");

    let (status, diff) = s
        .get_json("/v1/projections/account-balances/diff?from=1.0.0&to=2.0.0&sample=3")
        .await;
    assert_eq!(status, 200, "{diff}");
    assert_eq!(
        diff["changed"], 11,
        "every account document and the totals change: {diff}"
    );
    assert_eq!(diff["added"], 0);
    assert_eq!(diff["removed"], 0);
    assert_eq!(diff["samples"]["changed"].as_array().unwrap().len(), 3);
    assert_eq!(diff["samples"]["changed"][0]["key"], "account/acc-0");

    // Promote, then the old version can go.
    let promoted = s
        .request(Method::POST, "/v1/projections/account-balances/promote")
        .json(&json!({"version": "2.0.0"}))
        .send()
        .await
        .unwrap();
    assert_eq!(promoted.status().as_u16(), 200);
    let (_, doc) = s
        .get_json("/v1/projections/account-balances/docs/account/acc-1")
        .await;
    assert_eq!(doc["withdrawals"], 1, "reads now go to 2.0.0");
    let drop_live = s
        .request(
            Method::DELETE,
            "/v1/projections/account-balances/versions/2.0.0",
        )
        .send()
        .await
        .unwrap();
    expect_problem(drop_live, 409, "projection_live").await;
    let dropped = s
        .request(
            Method::DELETE,
            "/v1/projections/account-balances/versions/1.0.0",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(dropped.status().as_u16(), 204);
    let (_, projection) = s.get_json("/v1/projections/account-balances").await;
    assert_eq!(projection["versions"].as_array().unwrap().len(), 1);
    let gone = s
        .request(
            Method::GET,
            "/v1/projections/account-balances/docs/totals?version=1.0.0",
        )
        .send()
        .await
        .unwrap();
    expect_problem(gone, 404, "not_found").await;
    // A dropped version may be uploaded again, and replays from scratch.
    assert_eq!(
        put_module(&s, "account-balances", "1.0.0", BALANCES).await,
        201
    );
    let again = wait_for(&s, "account-balances", "1.0.0", caught_up).await;
    assert_eq!(again["events_applied"], 30);

    // Rebuilding gives the same bytes; the live version only when forced.
    let (_, before) = s
        .get_json("/v1/projections/account-balances/versions/2.0.0/digest")
        .await;
    let refused = s
        .request(
            Method::POST,
            "/v1/projections/account-balances/versions/2.0.0/rebuild",
        )
        .send()
        .await
        .unwrap();
    expect_problem(refused, 409, "projection_live").await;
    let rebuilt = s
        .request(
            Method::POST,
            "/v1/projections/account-balances/versions/2.0.0/rebuild?force=true",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(rebuilt.status().as_u16(), 202);
    wait_for(&s, "account-balances", "2.0.0", caught_up).await;
    let (_, after) = s
        .get_json("/v1/projections/account-balances/versions/2.0.0/digest")
        .await;
    assert_eq!(before["documents"], 11);
    assert_eq!(before["digest"], after["digest"], "{before} vs {after}");

    // Rebuilds that race each other still leave one runner and the same bytes.
    let racing: Vec<_> = (0..3)
        .map(|_| {
            s.request(
                Method::POST,
                "/v1/projections/account-balances/versions/2.0.0/rebuild?force=true",
            )
            .send()
        })
        .collect();
    for r in futures::future::join_all(racing).await {
        assert_eq!(r.unwrap().status().as_u16(), 202);
    }
    let view = wait_for(&s, "account-balances", "2.0.0", caught_up).await;
    assert_eq!(
        view["events_applied"], 30,
        "each event applied once: {view}"
    );
    let (_, raced) = s
        .get_json("/v1/projections/account-balances/versions/2.0.0/digest")
        .await;
    assert_eq!(before["digest"], raced["digest"], "{before} vs {raced}");
    s.stop().await;
}

fn thing(id: &str) -> StreamId {
    StreamId::new("thing", id).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_projection_stops_at_the_failing_event_until_retried_or_skipped() {
    let dir = temp_dir();
    let s = TestServer::start(dir.path()).await;
    let store = s.server.app.store.as_sled().expect("a sled server").clone();
    let events = |types: &[&str]| -> Vec<NewEvent> {
        types.iter().map(|t| NewEvent::new(*t, "{}")).collect()
    };
    store
        .append(
            &thing("a"),
            ExpectedVersion::Any,
            events(&["Hello", "Hello", "Hello", "Poison", "Hello", "Hello"]),
        )
        .await
        .unwrap();
    assert_eq!(put_module(&s, "picky", "1.0.0", PICKY).await, 201);
    let failed = wait_for(&s, "picky", "1.0.0", |v| v["failure"].is_object()).await;
    assert_eq!(failed["state"], "failed");
    assert_eq!(
        failed["position"], 3,
        "everything before the failing event is applied: {failed}"
    );
    assert_eq!(failed["failure"]["position"], 4);
    assert_eq!(failed["failure"]["event_type"], "Poison");
    assert_eq!(failed["failure"]["code"], "guest_failed");
    assert_eq!(failed["failure"]["attempts"], 1);
    // It never caught up, so it is not live; its documents are readable by version.
    let not_live = s
        .request(Method::GET, "/v1/projections/picky/docs/last")
        .send()
        .await
        .unwrap();
    expect_problem(not_live, 503, "projection_not_live").await;
    let (_, count) = s
        .get_json("/v1/projections/picky/docs/count/Hello?version=1.0.0")
        .await;
    assert_eq!(count["n"], 3);

    // A read waiting for a position past the failure says so at once.
    let blocked = s
        .request(
            Method::GET,
            "/v1/projections/picky/docs/last?version=1.0.0&min_position=5",
        )
        .send()
        .await
        .unwrap();
    let problem = expect_problem(blocked, 503, "projection_failed").await;
    assert_eq!(problem["position"], 4);

    // A retry runs the event again: deterministic, so it fails again, counted.
    let retry = s
        .request(Method::POST, "/v1/projections/picky/versions/1.0.0/retry")
        .send()
        .await
        .unwrap();
    assert_eq!(retry.status().as_u16(), 202);
    let again = wait_for(&s, "picky", "1.0.0", |v| v["failure"]["attempts"] == 2).await;
    assert_eq!(again["failure"]["position"], 4);
    assert_eq!(again["position"], 3);

    // Promotion of a version that is behind is refused unless forced.
    let lagging = s
        .request(Method::POST, "/v1/projections/picky/promote")
        .json(&json!({"version": "1.0.0"}))
        .send()
        .await
        .unwrap();
    let problem = expect_problem(lagging, 409, "projection_lagging").await;
    assert_eq!(problem["lag"], 3);

    // Only the failing event can be skipped, and the skip is recorded.
    let wrong = s
        .request(
            Method::POST,
            "/v1/projections/picky/versions/1.0.0/skip?position=5",
        )
        .send()
        .await
        .unwrap();
    expect_problem(wrong, 409, "projection_not_failed").await;
    let skipped = s
        .request(
            Method::POST,
            "/v1/projections/picky/versions/1.0.0/skip?position=4",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(skipped.status().as_u16(), 200);
    let view = wait_for(&s, "picky", "1.0.0", caught_up).await;
    assert_eq!(
        (
            view["events_applied"].as_u64(),
            view["events_skipped"].as_u64()
        ),
        (Some(5), Some(1))
    );
    assert_eq!(view["skipped"][0]["position"], 4);
    assert_eq!(view["skipped"][0]["event_type"], "Poison");
    assert!(
        view["skipped"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("poison"),
        "{view}"
    );
    let (_, projection) = s.get_json("/v1/projections/picky").await;
    assert_eq!(projection["live_version"], "1.0.0", "live once caught up");
    let (_, count) = s.get_json("/v1/projections/picky/docs/count/Hello").await;
    assert_eq!(count["n"], 5);
    let (_, poison) = s.get_json("/v1/projections/picky/docs/count/Poison").await;
    assert_eq!(
        poison["code"], "not_found",
        "the skipped event left no trace: {poison}"
    );
    let nothing = s
        .request(Method::POST, "/v1/projections/picky/versions/1.0.0/retry")
        .send()
        .await
        .unwrap();
    expect_problem(nothing, 409, "projection_not_failed").await;

    // A trap and a runaway loop stop it the same way, with their own codes.
    for (event, code) in [("Panic", "guest_trap"), ("Loop", "fuel_exhausted")] {
        let at = store
            .append(&thing("b"), ExpectedVersion::Any, events(&[event, "Hello"]))
            .await
            .unwrap()
            .first_position;
        let failed = wait_for(&s, "picky", "1.0.0", |v| v["failure"].is_object()).await;
        assert_eq!(
            (
                failed["failure"]["position"].as_u64(),
                failed["failure"]["code"].as_str()
            ),
            (Some(at), Some(code)),
            "{failed}"
        );
        let skip = s
            .request(
                Method::POST,
                &format!("/v1/projections/picky/versions/1.0.0/skip?position={at}"),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(skip.status().as_u16(), 200);
        wait_for(&s, "picky", "1.0.0", caught_up).await;
    }
    let (_, count) = s.get_json("/v1/projections/picky/docs/count/Hello").await;
    assert_eq!(count["n"], 7);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_appends_during_catch_up_and_live_are_each_applied_once() {
    let dir = temp_dir();
    let mut config = support::http::config(dir.path());
    // Small batches: the catch-up takes many commits, interleaved with appends.
    config.projections.batch.events = 7;
    let s = std::sync::Arc::new(TestServer::start_with(config).await);
    assert_eq!(put_module(&s, "bank-account", "1.0.0", BANK).await, 201);
    const ACCOUNTS: usize = 16;
    const DEPOSITS: usize = 40;
    for i in 0..ACCOUNTS {
        open(&s, &format!("acc-{i}")).await;
    }
    assert_eq!(
        put_module(&s, "account-balances", "1.0.0", BALANCES).await,
        201
    );
    let writers: Vec<_> = (0..ACCOUNTS)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                for d in 0..DEPOSITS {
                    deposit(&s, &format!("acc-{i}"), (d + 1) as i64).await;
                }
            })
        })
        .collect();
    // The second version starts replaying while the writers run.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        put_module(&s, "account-balances", "2.0.0", BALANCES_V2).await,
        201
    );
    for w in writers {
        w.await.unwrap();
    }
    let per_account: i64 = (1..=DEPOSITS as i64).sum();
    let events = (ACCOUNTS * (DEPOSITS + 1)) as u64;
    for version in ["1.0.0", "2.0.0"] {
        let view = wait_for(&s, "account-balances", version, caught_up).await;
        assert_eq!(
            view["events_applied"], events,
            "{version}: each event applied exactly once: {view}"
        );
        let (_, totals) = s
            .get_json(&format!(
                "/v1/projections/account-balances/docs/totals?version={version}"
            ))
            .await;
        assert_eq!(
            totals["balance"],
            per_account * ACCOUNTS as i64,
            "{version}: {totals}"
        );
        for i in 0..ACCOUNTS {
            let (_, doc) = s
                .get_json(&format!(
                    "/v1/projections/account-balances/docs/account/acc-{i}?version={version}"
                ))
                .await;
            assert_eq!(
                (doc["balance"].as_i64(), doc["deposits"].as_u64()),
                (Some(per_account), Some(DEPOSITS as u64)),
                "{version} acc-{i}: {doc}"
            );
        }
    }
    std::sync::Arc::try_unwrap(s)
        .ok()
        .expect("writers are done")
        .stop()
        .await;
}

/// An upload with `?activate=true` made while no version is live stands when
/// another version then goes live by itself (the first version to catch up):
/// the asked version goes live once it catches up. Only a promotion after the
/// ask (or the live version changing from one to another) makes it lapse.
#[tokio::test(flavor = "multi_thread")]
async fn an_ask_made_before_any_version_was_live_survives_the_first_going_live() {
    let dir = temp_dir();
    let s = TestServer::start(dir.path()).await;
    let store = s.server.app.store.as_sled().expect("a sled server").clone();
    store
        .append(
            &thing("a"),
            ExpectedVersion::Any,
            ["Hello", "Poison", "Hello"]
                .iter()
                .map(|t| NewEvent::new(*t, "{}"))
                .collect(),
        )
        .await
        .unwrap();
    // 2.0.0 is asked live first, and stops at the poison: it lags.
    let r = s
        .request(Method::PUT, "/v1/modules/picky/2.0.0?activate=true")
        .body(std::fs::read(PICKY).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let failed = wait_for(&s, "picky", "2.0.0", |v| v["failure"].is_object()).await;
    assert_eq!(failed["promote_when_caught_up"], true, "{failed}");
    // 1.0.0 (no ask) catches up and goes live as the first version.
    assert_eq!(put_module(&s, "picky", "1.0.0", BALANCES).await, 201);
    wait_for(&s, "picky", "1.0.0", |v| v["live"] == true).await;
    // Past the poison, 2.0.0 catches up and goes live as asked.
    let skipped = s
        .request(
            Method::POST,
            "/v1/projections/picky/versions/2.0.0/skip?position=2",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(skipped.status().as_u16(), 200);
    let live = wait_for(&s, "picky", "2.0.0", |v| v["live"] == true).await;
    assert_eq!(live["promote_when_caught_up"], false, "{live}");
    s.stop().await;
}
