//! The OpenAPI document served at /v1/openapi.json matches the real routes:
//! the same (method, path) pairs as the router in `host/src/api/mod.rs`, and
//! every documented operation reaches a handler on a running server (never
//! the "no route" fallback or a 405).

mod support;

use std::collections::BTreeSet;

use reqwest::Method;
use serde_json::Value;
use support::http::TestServer;
use support::temp_dir;

/// (METHOD, path) for every `.route("path", method(handler))` in the router's source.
fn router_routes() -> BTreeSet<(String, String)> {
    let source = include_str!("../src/api/mod.rs");
    let compact: String = source.split_whitespace().collect();
    let mut routes = BTreeSet::new();
    for piece in compact.split(".route(\"").skip(1) {
        let (path, rest) = piece.split_once('"').expect("a quoted path");
        let rest = rest.trim_start_matches(',');
        let method = rest.split('(').next().expect("a method router");
        // axum's catch-all `{*key}` is an ordinary `{key}` parameter in OpenAPI.
        routes.insert((method.to_uppercase(), path.replace("{*", "{")));
    }
    routes
}

fn documented(doc: &Value) -> BTreeSet<(String, String)> {
    let mut routes = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            routes.insert((method.to_uppercase(), path.clone()));
        }
    }
    routes
}

#[tokio::test(flavor = "multi_thread")]
async fn the_openapi_document_matches_the_router_and_every_operation_is_routed() {
    let dir = temp_dir();
    let s = TestServer::start(dir.path()).await;
    let (status, doc) = s.get_json("/v1/openapi.json").await;
    assert_eq!(status, 200);
    assert_eq!(doc["openapi"], "3.1.0");

    let router = router_routes();
    assert!(
        router.len() >= 25,
        "the source scan found the routes: {router:?}"
    );
    let documented = documented(&doc);
    let undocumented: Vec<_> = router.difference(&documented).collect();
    let phantom: Vec<_> = documented.difference(&router).collect();
    assert!(
        undocumented.is_empty(),
        "routes missing from openapi.json: {undocumented:?}"
    );
    assert!(
        phantom.is_empty(),
        "openapi.json documents routes that do not exist: {phantom:?}"
    );

    for (method, path) in &documented {
        let op = &doc["paths"][path][method.to_lowercase()];
        assert!(op["summary"].is_string(), "{method} {path} has a summary");
        assert!(op["responses"].is_object(), "{method} {path} has responses");
        let url = path
            .replace("{name}", "bank-account")
            .replace("{version}", "1.0.0")
            .replace("{aggregate_type}", "bank-account")
            .replace("{id}", "acc-1")
            .replace("{key}", "a/b")
            .replace("{query}", "q");
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let response = s
            .request(method.clone(), &url)
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        // A subscription never ends: its status is the answer.
        let streaming = response
            .headers()
            .get("content-type")
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
        let body = if streaming {
            String::new()
        } else {
            response.text().await.unwrap_or_default()
        };
        assert_ne!(status, 405, "{method} {url}: {body}");
        assert!(
            !body.contains("no route for"),
            "{method} {url} reached no handler: {body}"
        );
    }
    s.stop().await;
}

/// Schemathesis (PyPI) fuzzes the served document against a real server with
/// tokens: a short smoke run with a fixed seed, so CI judges the same cases
/// each time. `REFOLD_SCHEMATHESIS_EXAMPLES` (default 5) and
/// `REFOLD_SCHEMATHESIS_SEED` and `REFOLD_SCHEMATHESIS_PHASES` make it longer
/// or different (docs/http-api.md,
/// "Fuzzing the API"). `.ci/run` installs it.
#[tokio::test(flavor = "multi_thread")]
async fn schemathesis_finds_no_difference_between_the_document_and_the_server() {
    let exe = std::env::var("REFOLD_SCHEMATHESIS").unwrap_or_else(|_| "schemathesis".into());
    let installed = std::process::Command::new(&exe)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        installed,
        "this test runs schemathesis: `pip install 'schemathesis>=4,<5'` (or set REFOLD_SCHEMATHESIS to its path)"
    );
    let dir = temp_dir();
    let mut config = support::http::config(dir.path());
    config.tokens = support::http::tokens();
    // Reads that wait for a min_position the fuzzer makes up end quickly; the
    // served document says so (its wait_ms maximum is this server's).
    config.projections.max_wait = std::time::Duration::from_millis(50);
    let s = TestServer::start_with(config).await;
    // Something to find: a module of each kind, an aggregate, a live projection.
    assert_eq!(
        s.upload("bank-account", "1.0.0", refold_test_guests::BANK_ACCOUNT)
            .await
            .status()
            .as_u16(),
        201
    );
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
    let opened = s
        .send("bank-account", "acc-1", r#"{"type":"Open","owner":"Ada"}"#)
        .await;
    assert_eq!(opened.status().as_u16(), 200);

    let examples = std::env::var("REFOLD_SCHEMATHESIS_EXAMPLES").unwrap_or_else(|_| "5".into());
    let seed = std::env::var("REFOLD_SCHEMATHESIS_SEED").unwrap_or_else(|_| "1".into());
    // Every phase unless told otherwise.
    let phases: Vec<String> = std::env::var("REFOLD_SCHEMATHESIS_PHASES")
        .map(|p| vec!["--phases".into(), p])
        .unwrap_or_default();
    let url = format!("{}/v1/openapi.json", s.base);
    let token = s.token.clone().expect("an admin token");
    // Its cache and crash files go to a scratch directory, not the repository.
    let scratch = temp_dir();
    let scratch_path = scratch.path().to_path_buf();
    let run = tokio::task::spawn_blocking(move || {
        std::process::Command::new(exe)
            .current_dir(&scratch_path)
            .arg("--no-color")
            .arg("--config-file")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/schemathesis.toml"
            ))
            .arg("run")
            .arg(&url)
            .args([
                "--checks",
                "all",
                "--max-examples",
                &examples,
                "--seed",
                &seed,
            ])
            .args(&phases)
            // A backup writes where the request says, on this machine; a
            // subscription never ends by itself, so each would wait out the
            // request timeout (http_live.rs tests it).
            .args(["--exclude-path", "/v1/admin/backup"])
            .args(["--exclude-path", "/v1/events/subscribe"])
            .args(["-H", &format!("Authorization: Bearer {token}")])
            .env(
                "HYPOTHESIS_STORAGE_DIRECTORY",
                scratch_path.join("hypothesis"),
            )
            .output()
            .expect("schemathesis runs")
    })
    .await
    .unwrap();
    let said = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "schemathesis found differences:\n{said}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    s.stop().await;
}
