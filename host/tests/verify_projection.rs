//! The projection determinism audit over a real server on 127.0.0.1:0:
//! `POST /v1/projections/{name}/versions/{version}/verify` and `refold
//! projection verify`. A verify rebuilds the version into a scratch
//! generation that no reader sees and compares documents at the version's
//! checkpoint, while the version keeps serving; one at a time per version;
//! the scratch is gone afterwards however the verify ended (`verify_crash.rs`:
//! even after SIGKILL).

mod support;

use refold::store::{Store, StoreConfig};
use reqwest::Method;
use serde_json::{Value, json};
use support::http::{TestServer, config, expect_problem};
use support::projection::{append, caught_up, wait_for_version};
use support::temp_dir;

const BANK: &str = refold_test_guests::BANK_ACCOUNT;
const BALANCES: &str = refold_test_guests::ACCOUNT_BALANCES;
const PICKY: &str = refold_test_guests::PICKY_PROJECTION;

async fn deposit(s: &TestServer, id: &str, amount: i64) -> u64 {
    let r = s
        .send(
            "bank-account",
            id,
            &json!({"type": "Deposit", "amount": amount}).to_string(),
        )
        .await;
    assert_eq!(r.status().as_u16(), 200);
    r.json::<Value>().await.unwrap()["position"]
        .as_u64()
        .unwrap()
}

/// A server with bank accounts acc-0..acc-4 and their balances projection, live and caught up.
async fn balances_server(dir: &std::path::Path) -> TestServer {
    let s = TestServer::start(dir).await;
    assert_eq!(s.upload("bank-account", "1.0.0", BANK).await.status(), 201);
    for i in 0..5 {
        let id = format!("acc-{i}");
        let open = json!({"type": "Open", "owner": id}).to_string();
        assert_eq!(s.send("bank-account", &id, &open).await.status(), 200);
        deposit(&s, &id, 100 + i).await;
    }
    assert_eq!(
        s.upload("account-balances", "1.0.0", BALANCES)
            .await
            .status(),
        201
    );
    wait_for_version(&s, "account-balances", "1.0.0", caught_up).await;
    s
}

async fn verify(s: &TestServer, name: &str, version: &str) -> reqwest::Response {
    s.request(
        Method::POST,
        &format!("/v1/projections/{name}/versions/{version}/verify"),
    )
    .send()
    .await
    .unwrap()
}

/// `refold --server URL ARGS...` against `s`: (exit code, stdout, stderr).
fn cli(s: &TestServer, args: &[&str]) -> (i32, String, String) {
    support::process::cli(&s.base, args)
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_matches_a_deterministic_projection_while_it_keeps_serving() {
    let dir = temp_dir();
    let s = balances_server(dir.path()).await;
    let writes = async {
        for i in 0..30 {
            deposit(&s, &format!("acc-{}", i % 5), 1).await;
        }
    };
    let (response, ()) = tokio::join!(verify(&s, "account-balances", "1.0.0"), writes);
    assert_eq!(response.status().as_u16(), 200);
    let report: Value = response.json().await.unwrap();
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["projection"], "account-balances");
    assert_eq!(report["version"], "1.0.0");
    assert!(report["position"].as_u64().unwrap() >= 10, "{report}");
    assert_eq!(report["live"], report["rebuilt"], "{report}");
    assert_eq!(
        report["live"]["documents"], 6,
        "5 accounts and the totals: {report}"
    );
    assert_eq!(
        (
            report["added"].as_u64(),
            report["removed"].as_u64(),
            report["changed"].as_u64()
        ),
        (Some(0), Some(0), Some(0))
    );
    assert_eq!(report["first_divergence"], Value::Null);
    assert_eq!(report["failure"], Value::Null);

    // Still (caught up, no writes): the report's digest is the version's own
    // digest at that position.
    wait_for_version(&s, "account-balances", "1.0.0", caught_up).await;
    let quiet: Value = verify(&s, "account-balances", "1.0.0")
        .await
        .json()
        .await
        .unwrap();
    let (_, digest) = s
        .get_json("/v1/projections/account-balances/versions/1.0.0/digest")
        .await;
    assert_eq!(quiet["ok"], true, "{quiet}");
    assert_eq!(quiet["position"], digest["position"]);
    assert_eq!(
        quiet["live"]["digest"], digest["digest"],
        "{quiet} {digest}"
    );

    let store = s.server.app.store.as_sled().expect("a sled server");
    assert_eq!(
        store
            .read_model_generations("account-balances", "1.0.0")
            .unwrap(),
        vec![0],
        "the scratch is gone"
    );
    let view = wait_for_version(&s, "account-balances", "1.0.0", caught_up).await;
    assert_eq!(view["verify"], Value::Null, "{view}");
    assert_eq!(view["last_verify"]["outcome"], "ok", "{view}");
    assert_eq!(view["last_verify"]["position"], quiet["position"]);
    let position = deposit(&s, "acc-1", 7).await;
    let r = s
        .request(
            Method::GET,
            &format!("/v1/projections/account-balances/docs/account/acc-1?min_position={position}"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status().as_u16(),
        200,
        "the version follows appends after a verify"
    );

    let (code, stdout, stderr) = cli(&s, &["projection", "verify", "account-balances", "1.0.0"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains("account-balances@1.0.0: ok at position"),
        "{stdout}"
    );
    let missing = verify(&s, "account-balances", "9.9.9").await;
    expect_problem(missing, 404, "not_found").await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_reports_the_first_key_where_the_documents_differ_from_a_rebuild() {
    let dir = temp_dir();
    let s = balances_server(dir.path()).await;
    s.stop().await;
    // Documents that no replay of the log produces, at the same checkpoint.
    {
        let store = Store::open(StoreConfig::new(dir.path().join("events"))).unwrap();
        let model = store.read_model("account-balances", "1.0.0").unwrap();
        let checkpoint = model.checkpoint().unwrap();
        let mut doc: Value =
            serde_json::from_str(&model.get("account/acc-2").unwrap().unwrap()).unwrap();
        doc["balance"] = json!(999_999);
        let changes = [
            ("account/acc-2".to_string(), Some(doc.to_string())),
            (
                "account/zzz".to_string(),
                Some(r#"{"owner":"nobody"}"#.to_string()),
            ),
        ]
        .into_iter()
        .collect();
        model.commit(&changes, &checkpoint, None, &[]).unwrap();
        store.close().await;
    }
    let s = TestServer::start_with(config(dir.path())).await;
    wait_for_version(&s, "account-balances", "1.0.0", caught_up).await;

    let response = verify(&s, "account-balances", "1.0.0").await;
    assert_eq!(response.status().as_u16(), 200, "a divergence is a finding");
    let report: Value = response.json().await.unwrap();
    assert_eq!(report["ok"], false, "{report}");
    assert_eq!(report["position"], 10, "{report}");
    assert_eq!(
        (
            report["changed"].as_u64(),
            report["removed"].as_u64(),
            report["added"].as_u64()
        ),
        (Some(1), Some(1), Some(0)),
        "{report}"
    );
    assert_ne!(report["live"]["digest"], report["rebuilt"]["digest"]);
    let first = &report["first_divergence"];
    assert_eq!(first["key"], "account/acc-2", "{report}");
    assert_eq!(first["live"]["balance"], 999_999);
    assert_eq!(
        first["rebuilt"]["balance"], 102,
        "the rebuild's own document: {report}"
    );

    let (code, stdout, stderr) = cli(&s, &["projection", "verify", "account-balances", "1.0.0"]);
    assert_eq!(code, 3, "{stdout}{stderr}");
    assert!(
        stdout.contains("account-balances@1.0.0: DIVERGED at position 10"),
        "{stdout}"
    );
    assert!(
        stdout.contains("1 keys changed, 0 only in the rebuild, 1 only in the version"),
        "{stdout}"
    );
    assert!(
        stdout.contains("first differing key: account/acc-2"),
        "{stdout}"
    );
    assert!(
        stderr.contains("diverged from its rebuild at position 10"),
        "{stderr}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_verify_is_refused_while_one_runs_and_an_abandoned_one_cleans_up() {
    let dir = temp_dir();
    {
        let store = Store::open(StoreConfig::new(dir.path().join("events"))).unwrap();
        append(&store, "1", "Counted", 3000).await;
        store.close().await;
    }
    let mut cfg = config(dir.path());
    // One event per batch: a verify takes long enough to be caught running.
    cfg.projections.batch.events = 1;
    let s = TestServer::start_with(cfg).await;
    assert_eq!(s.upload("picky", "1.0.0", PICKY).await.status(), 201);
    wait_for_version(&s, "picky", "1.0.0", caught_up).await;

    let first = tokio::spawn(verify_owned(s.base.clone(), "picky"));
    let view = wait_for_version(&s, "picky", "1.0.0", |v| {
        v["verify"]["position"].as_u64().is_some_and(|p| p > 0)
    })
    .await;
    assert_eq!(view["verify"]["phase"], "replaying", "{view}");
    let second = verify(&s, "picky", "1.0.0").await;
    let problem = expect_problem(second, 409, "verify_in_progress").await;
    assert!(problem["target"].as_u64().unwrap() >= 3000, "{problem}");
    let generations = s
        .server
        .app
        .store
        .as_sled()
        .expect("a sled server")
        .read_model_generations("picky", "1.0.0")
        .unwrap();
    assert_eq!(
        generations,
        vec![0, u32::MAX],
        "the scratch exists while it runs"
    );

    // The client goes away: the verify stops, deletes its scratch, and the
    // version keeps running.
    first.abort();
    let view = wait_for_version(&s, "picky", "1.0.0", |v| v["verify"].is_null()).await;
    assert_eq!(view["last_verify"]["outcome"], "cancelled", "{view}");
    assert_eq!(view["failure"], Value::Null);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while s
        .server
        .app
        .store
        .as_sled()
        .expect("a sled server")
        .read_model_generations("picky", "1.0.0")
        .unwrap()
        != vec![0]
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the scratch is deleted"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    append(
        s.server.app.store.as_sled().expect("a sled server"),
        "2",
        "Counted",
        1,
    )
    .await;
    let view = wait_for_version(&s, "picky", "1.0.0", |v| {
        caught_up(v) && v["position"] == 3001
    })
    .await;
    assert_eq!(view["events_applied"], 3001);
    s.stop().await;
}

async fn verify_owned(base: String, name: &'static str) -> u16 {
    reqwest::Client::new()
        .post(format!(
            "{base}/v1/projections/{name}/versions/1.0.0/verify"
        ))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_version_stopped_at_a_failing_event_is_verified_up_to_it_and_not_retried() {
    let dir = temp_dir();
    {
        let store = Store::open(StoreConfig::new(dir.path().join("events"))).unwrap();
        append(&store, "1", "Counted", 5).await;
        append(&store, "1", "Poison", 1).await;
        append(&store, "1", "Counted", 3).await;
        store.close().await;
    }
    let s = TestServer::start_with(config(dir.path())).await;
    assert_eq!(s.upload("picky", "1.0.0", PICKY).await.status(), 201);
    let failed = wait_for_version(&s, "picky", "1.0.0", |v| v["state"] == "failed").await;
    assert_eq!(failed["failure"]["position"], 6);

    let report: Value = verify(&s, "picky", "1.0.0").await.json().await.unwrap();
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["position"], 5, "up to the failing event: {report}");
    assert_eq!(report["events_applied"], 5);
    assert_eq!(
        report["paused_ms"], 0,
        "a stopped runner is not stopped again"
    );
    let (_, after) = s.get_json("/v1/projections/picky/versions/1.0.0").await;
    assert_eq!(after["state"], "failed", "not retried: {after}");
    assert_eq!(
        after["failure"], failed["failure"],
        "the same failure, same attempts"
    );

    let skip = s
        .request(
            Method::POST,
            "/v1/projections/picky/versions/1.0.0/skip?position=6",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(skip.status().as_u16(), 200);
    wait_for_version(&s, "picky", "1.0.0", caught_up).await;
    let report: Value = verify(&s, "picky", "1.0.0").await.json().await.unwrap();
    assert_eq!(
        report["ok"], true,
        "the rebuild skips what the version skipped: {report}"
    );
    assert_eq!(
        (
            report["position"].as_u64(),
            report["events_applied"].as_u64(),
            report["events_skipped"].as_u64()
        ),
        (Some(9), Some(8), Some(1))
    );
    assert_eq!(
        s.server
            .app
            .store
            .as_sled()
            .expect("a sled server")
            .read_model_generations("picky", "1.0.0")
            .unwrap(),
        vec![0]
    );
    s.stop().await;
}
