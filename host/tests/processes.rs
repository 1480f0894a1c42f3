//! Processes (sagas) as uploaded modules, over a real server with the real
//! `transfers` component: the registry tells them apart from aggregates and
//! projections, keeps their kind across a restart, and refuses to activate
//! them while no runner exists.

mod support;

use refold::server::{Example, ExampleLoaded};
use reqwest::Method;
use serde_json::{Value, json};
use support::http::{TestServer, expect_problem};
use support::temp_dir;

const BANK: &str = refold_test_guests::BANK_ACCOUNT;
const TRANSFERS: &str = refold_test_guests::TRANSFERS;

async fn put(
    s: &TestServer,
    name: &str,
    version: &str,
    path: &str,
    activate: bool,
) -> reqwest::Response {
    let query = if activate { "?activate=true" } else { "" };
    s.request(Method::PUT, &format!("/v1/modules/{name}/{version}{query}"))
        .header("content-type", "application/wasm")
        .body(std::fs::read(path).expect("guest built"))
        .send()
        .await
        .unwrap()
}

async fn activate(s: &TestServer, name: &str, version: &str) -> reqwest::Response {
    s.request(Method::POST, &format!("/v1/modules/{name}/activate"))
        .json(&json!({ "version": version }))
        .send()
        .await
        .unwrap()
}

/// The `GET /v1/modules` entry of `name`.
async fn listed(s: &TestServer, name: &str) -> Value {
    let (status, list) = s.get_json("/v1/modules").await;
    assert_eq!(status, 200);
    list["modules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == name)
        .unwrap_or_else(|| panic!("{name} is not listed: {list}"))
        .clone()
}

fn assert_inactive_process(entry: &Value, versions: &[&str]) {
    assert_eq!(entry["active_version"], Value::Null, "{entry}");
    let listed: Vec<&str> = entry["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_str().unwrap())
        .collect();
    assert_eq!(listed, versions, "{entry}");
    for v in entry["versions"].as_array().unwrap() {
        assert_eq!(v["kind"], "process", "{entry}");
        assert_eq!(v["active"], false, "{entry}");
        assert_eq!(v["compile"]["state"], "ready", "{entry}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_process_is_registered_and_listed_but_not_activated() {
    let dir = temp_dir();
    let s = TestServer::start(dir.path()).await;

    // The first version of a name would become active; a process does not.
    let r = put(&s, "transfers", "1.0.0", TRANSFERS, false).await;
    assert_eq!(r.status().as_u16(), 201);
    let view: Value = r.json().await.unwrap();
    assert_eq!(view["kind"], "process", "{view}");
    assert_eq!(view["active"], false, "{view}");
    assert_inactive_process(&listed(&s, "transfers").await, &["1.0.0"]);

    // Activating it is refused, plainly.
    let problem = expect_problem(
        activate(&s, "transfers", "1.0.0").await,
        409,
        "process_runner_missing",
    )
    .await;
    let detail = problem["detail"].as_str().unwrap();
    assert!(detail.contains("runner is not built yet"), "{detail}");

    // Asking for activation with the upload registers the version, and says
    // it was not activated.
    let r = put(&s, "transfers", "1.1.0", TRANSFERS, true).await;
    expect_problem(r, 409, "process_runner_missing").await;
    assert_inactive_process(&listed(&s, "transfers").await, &["1.0.0", "1.1.0"]);

    // Nothing takes commands or runs under the process's name.
    let r = s.send("transfers", "t1", r#"{"type":"Request"}"#).await;
    expect_problem(r, 404, "unknown_aggregate_type").await;
    let (status, projections) = s.get_json("/v1/projections").await;
    assert_eq!(status, 200);
    assert_eq!(projections["projections"], json!([]), "{projections}");

    // One name, one kind.
    expect_problem(
        put(&s, "transfers", "2.0.0", BANK, false).await,
        409,
        "module_kind_mismatch",
    )
    .await;
    let r = put(&s, "bank-account", "1.0.0", BANK, false).await;
    assert_eq!(r.status().as_u16(), 201);
    assert_eq!(listed(&s, "bank-account").await["active_version"], "1.0.0");

    // The kind is stored: after a restart it is still a process, still inactive.
    s.stop().await;
    let s = TestServer::start(dir.path()).await;
    assert_inactive_process(&listed(&s, "transfers").await, &["1.0.0", "1.1.0"]);
    expect_problem(
        activate(&s, "transfers", "1.1.0").await,
        409,
        "process_runner_missing",
    )
    .await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_process_example_is_uploaded_and_left_inactive() {
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
            example("transfers", TRANSFERS),
        ]
    };
    let loaded = s
        .server
        .load_examples(examples())
        .await
        .expect("examples load");
    let kinds: Vec<(&str, bool)> = loaded
        .iter()
        .map(|l| match l {
            ExampleLoaded::Uploaded(m) => (m.record.kind.as_str(), true),
            ExampleLoaded::AlreadyRegistered(m) | ExampleLoaded::Differs(m) => {
                (m.record.kind.as_str(), false)
            }
        })
        .collect();
    assert_eq!(kinds, [("aggregate", true), ("process", true)]);
    assert_eq!(listed(&s, "bank-account").await["active_version"], "1.0.0");
    assert_inactive_process(&listed(&s, "transfers").await, &["1.0.0"]);

    // Again: both registered already.
    let loaded = s
        .server
        .load_examples(examples())
        .await
        .expect("examples load");
    assert!(
        loaded
            .iter()
            .all(|l| matches!(l, ExampleLoaded::AlreadyRegistered(_))),
        "registered once"
    );
    s.stop().await;
}
