//! The aggregate determinism audit over a real server on 127.0.0.1:0 and the
//! real binary as its client: `GET /v1/aggregates/{type}/{id}/verify` and
//! `refold verify aggregate TYPE ID`. A divergence is provoked honestly: with
//! the server stopped, the store's own API appends an event that records a
//! state digest no replay can reproduce, as a module that leaked time or
//! entropy into its state would have recorded.

mod support;

use std::collections::BTreeMap;

use refold::store::{EventMetadata, ExpectedVersion, NewEvent, Store, StoreConfig, StreamId};
use reqwest::Method;
use serde_json::{Value, json};
use support::http::{TestServer, config, expect_problem, tokens};
use support::temp_dir;

const BANK: &str = refold_test_guests::BANK_ACCOUNT;

async fn bank_server(dir: &std::path::Path) -> TestServer {
    let s = TestServer::start(dir).await;
    assert_eq!(s.upload("bank-account", "1.0.0", BANK).await.status(), 201);
    s
}

async fn command(s: &TestServer, id: &str, command: Value) {
    let r = s.send("bank-account", id, &command.to_string()).await;
    assert_eq!(r.status().as_u16(), 200, "{command} accepted");
}

/// `refold --server URL ARGS...` against `s`: (exit code, stdout, stderr).
fn cli(s: &TestServer, args: &[&str]) -> (i32, String, String) {
    support::process::cli(&s.base, args)
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_replays_the_stream_and_checks_every_recorded_state_digest() {
    let dir = temp_dir();
    let s = bank_server(dir.path()).await;
    command(&s, "acc-1", json!({"type": "Open", "owner": "Ada"})).await;
    for amount in [100, 250, 40] {
        command(&s, "acc-1", json!({"type": "Deposit", "amount": amount})).await;
    }

    let (status, report) = s.get_json("/v1/aggregates/bank-account/acc-1/verify").await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["events"], 4);
    assert_eq!(
        report["digests_checked"], 4,
        "one digest per command: {report}"
    );
    assert_eq!(report["digests_unchecked"], 0);
    assert_eq!(report["unchecked_modules"], json!([]));
    assert_eq!(report["divergences"], 0);
    assert_eq!(report["first_divergence"], Value::Null);

    let (code, stdout, stderr) = cli(&s, &["verify", "aggregate", "bank-account", "acc-1"]);
    assert_eq!(code, 0, "stdout: {stdout}\nstderr: {stderr}");
    assert!(
        stdout.contains(
            "bank-account/acc-1: ok: replaying 4 events reproduced all 4 recorded state digests"
        ),
        "{stdout}"
    );
    let (code, stdout, _) = cli(
        &s,
        &["--json", "verify", "aggregate", "bank-account", "acc-1"],
    );
    assert_eq!(code, 0);
    let json: Value = serde_json::from_str(&stdout).expect("--json prints the report");
    assert_eq!(json, report);

    let empty = s
        .request(Method::GET, "/v1/aggregates/bank-account/nobody/verify")
        .send()
        .await
        .unwrap();
    expect_problem(empty, 404, "not_found").await;
    let long_id = "x".repeat(300);
    let invalid = s
        .request(
            Method::GET,
            &format!("/v1/aggregates/bank-account/{long_id}/verify"),
        )
        .send()
        .await
        .unwrap();
    expect_problem(invalid, 400, "invalid_request").await;
    let (code, _, stderr) = cli(&s, &["verify", "aggregate", "bank-account", "nobody"]);
    assert_eq!(code, 1, "a refused request exits 1: {stderr}");
    assert!(stderr.contains("not_found"), "{stderr}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_names_the_first_version_whose_recorded_digest_a_replay_does_not_reproduce() {
    let dir = temp_dir();
    let s = bank_server(dir.path()).await;
    command(&s, "acc-1", json!({"type": "Open", "owner": "Ada"})).await;
    command(&s, "acc-1", json!({"type": "Deposit", "amount": 100})).await;
    command(&s, "acc-1", json!({"type": "Deposit", "amount": 20})).await;
    s.stop().await;

    // What a module that leaked real time into its state would have recorded:
    // a digest of a state that no replay of the same events reaches.
    let forged = "0".repeat(64);
    {
        let store = Store::open(StoreConfig::new(dir.path().join("events"))).unwrap();
        let stream = StreamId::new("bank-account", "acc-1").unwrap();
        let mut event = NewEvent::new("Deposited", r#"{"amount":5,"balance":125}"#);
        event.metadata = EventMetadata {
            producer: Some("bank-account@1.0.0".into()),
            extra: BTreeMap::from([("state_digest".to_string(), forged.clone())]),
            ..EventMetadata::default()
        };
        store
            .append(&stream, ExpectedVersion::Exact(3), vec![event])
            .await
            .unwrap();
        store.close().await;
    }
    let s = TestServer::start_with(config(dir.path())).await;
    // A later command records an honest digest again.
    command(&s, "acc-1", json!({"type": "Deposit", "amount": 1})).await;

    let (status, report) = s.get_json("/v1/aggregates/bank-account/acc-1/verify").await;
    assert_eq!(
        status, 200,
        "a divergence is a finding, not an error: {report}"
    );
    assert_eq!(report["ok"], false, "{report}");
    assert_eq!(report["events"], 5);
    assert_eq!(report["digests_checked"], 5, "{report}");
    assert_eq!(report["divergences"], 1, "only the forged digest: {report}");
    let first = &report["first_divergence"];
    assert_eq!(first["version"], 4, "the forged event's version: {report}");
    assert_eq!(first["module"], "bank-account@1.0.0");
    assert_eq!(first["recorded"], forged.as_str());
    let replayed = first["replayed"].as_str().unwrap();
    assert!(
        replayed.len() == 64 && replayed != forged,
        "the replay's own digest: {replayed}"
    );

    let (code, stdout, stderr) = cli(&s, &["verify", "aggregate", "bank-account", "acc-1"]);
    assert_eq!(code, 3, "a divergence exits 3: {stdout}{stderr}");
    assert!(
        stdout.contains("bank-account/acc-1: DIVERGED at version 4 (replayed per command): bank-account@1.0.0 recorded state digest 0000"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("replaying gives {replayed}")),
        "{stdout}"
    );
    assert!(
        stdout.contains("1 of 5 recorded digests differ"),
        "{stdout}"
    );
    assert!(stderr.contains("diverged at version 4"), "{stderr}");
    let (code, stdout, _) = cli(
        &s,
        &["--json", "verify", "aggregate", "bank-account", "acc-1"],
    );
    assert_eq!(code, 3);
    let json: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(json["first_divergence"]["version"], 4);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_is_a_reader_route_and_many_at_once_are_bounded_not_fatal() {
    let dir = temp_dir();
    let mut cfg = config(dir.path());
    cfg.tokens = tokens();
    let s = TestServer::start_with(cfg).await;
    assert_eq!(s.upload("bank-account", "1.0.0", BANK).await.status(), 201);
    command(&s, "acc-1", json!({"type": "Open", "owner": "Ada"})).await;
    for amount in 1..=200 {
        command(&s, "acc-1", json!({"type": "Deposit", "amount": amount})).await;
    }
    let url = format!("{}/v1/aggregates/bank-account/acc-1/verify", s.base);
    let anonymous = s.client.get(&url).send().await.unwrap();
    expect_problem(anonymous, 401, "unauthorized").await;
    let reader = s
        .client
        .get(&url)
        .bearer_auth("reader-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(reader.status().as_u16(), 200);

    // Twelve at once: each answers with a report or a clear "too many", and
    // the server keeps serving.
    let requests = (0..12).map(|_| {
        let request = s.client.get(&url).bearer_auth("reader-secret");
        async move { request.send().await.unwrap() }
    });
    let mut reports = 0;
    for response in futures::future::join_all(requests).await {
        if response.status().as_u16() == 200 {
            let report: Value = response.json().await.unwrap();
            assert_eq!(report["digests_checked"], 201, "{report}");
            reports += 1;
        } else {
            let problem = expect_problem(response, 429, "too_many_verifies").await;
            assert_eq!(problem["running"], 2);
        }
    }
    assert!(reports >= 1, "at least the first ones run");
    assert!(
        reports < 12,
        "each replays 201 commands: twelve at once cannot all have had one of the two permits"
    );
    command(&s, "acc-1", json!({"type": "Deposit", "amount": 1})).await;
    s.stop().await;
}

/// An `apply` that counts its calls rather than folding events agrees with
/// the digests it recorded one command at a time, and not with a cold read,
/// which folds many commands per call: verify says so, and how it replayed.
#[tokio::test(flavor = "multi_thread")]
async fn verify_catches_an_apply_that_depends_on_how_events_are_batched() {
    let dir = temp_dir();
    let s = TestServer::start(dir.path()).await;
    let hostile = refold_test_guests::HOSTILE;
    assert_eq!(s.upload("hostile", "1.0.0", hostile).await.status(), 201);
    for _ in 0..3 {
        let r = s.send("hostile", "t", r#"{"type":"Tally"}"#).await;
        assert_eq!(r.status().as_u16(), 200);
    }
    let (status, report) = s.get_json("/v1/aggregates/hostile/t/verify").await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["ok"], false, "{report}");
    assert_eq!(
        report["digests_checked"], 3,
        "per command, every digest agrees: {report}"
    );
    assert_eq!(report["divergences"], 1, "{report}");
    assert_eq!(report["first_divergence"]["version"], 3);
    assert_eq!(report["first_divergence"]["batching"], "as_a_read");
    s.stop().await;
}

/// A stream with no recorded digests (raw appends) has nothing to compare:
/// not "ok".
#[tokio::test(flavor = "multi_thread")]
async fn verify_of_a_stream_with_nothing_to_compare_is_not_ok() {
    let dir = temp_dir();
    let s = bank_server(dir.path()).await;
    let stream = StreamId::new("bank-account", "raw").unwrap();
    s.server
        .app
        .store
        .append(
            &stream,
            ExpectedVersion::Any,
            vec![NewEvent::new("Opened", r#"{"owner":"Raw"}"#)],
        )
        .await
        .unwrap();
    let (status, report) = s.get_json("/v1/aggregates/bank-account/raw/verify").await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["ok"], false, "{report}");
    assert_eq!(report["complete"], false, "{report}");
    assert_eq!(report["digests_checked"], 0);
    let (code, out, _) = cli(&s, &["verify", "aggregate", "bank-account", "raw"]);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("INCOMPLETE"), "{out}");
    s.stop().await;
}
