//! Every v1 route over a real server on 127.0.0.1:0, including each error path.

mod support;

use reqwest::Method;
use serde_json::Value;
use support::http::{TestServer, expect_problem, tokens};
use support::temp_dir;

const BANK: &str = refold_test_guests::BANK_ACCOUNT;

#[tokio::test(flavor = "multi_thread")]
async fn modules_upload_list_activate_and_their_errors() {
    let dir = temp_dir();
    let s = TestServer::start(dir.path()).await;
    let created = s.upload("bank-account", "1.0.0", BANK).await;
    assert_eq!(created.status().as_u16(), 201);
    let body: Value = created.json().await.unwrap();
    assert_eq!(
        (
            body["name"].as_str(),
            body["version"].as_str(),
            body["kind"].as_str()
        ),
        (Some("bank-account"), Some("1.0.0"), Some("aggregate"))
    );
    assert_eq!(
        (
            body["active"].as_bool(),
            body["digest"].as_str().map(str::len)
        ),
        (Some(true), Some(64))
    );

    let again = s.upload("bank-account", "1.0.0", BANK).await;
    assert_eq!(
        again.status().as_u16(),
        200,
        "the same bytes again are a no-op"
    );
    let other = std::fs::read(refold_test_guests::BANK_ACCOUNT_NO_WASI).unwrap();
    let conflict = s
        .request(Method::PUT, "/v1/modules/bank-account/1.0.0")
        .body(other.clone())
        .send()
        .await
        .unwrap();
    expect_problem(conflict, 409, "module_conflict").await;
    let v2 = s
        .request(Method::PUT, "/v1/modules/bank-account/2.0.0")
        .body(other)
        .send()
        .await
        .unwrap();
    assert_eq!(v2.status().as_u16(), 201);
    assert_eq!(
        v2.json::<Value>().await.unwrap()["active"],
        false,
        "a later version is not active until asked"
    );

    let not_wasm = s
        .request(Method::PUT, "/v1/modules/junk/1.0.0")
        .body("hello")
        .send()
        .await
        .unwrap();
    let problem = expect_problem(not_wasm, 422, "invalid_module").await;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("not WebAssembly")
    );
    let bad_version = s
        .request(Method::PUT, "/v1/modules/junk/latest")
        .body("x")
        .send()
        .await
        .unwrap();
    expect_problem(bad_version, 400, "invalid_request").await;

    let (status, list) = s.get_json("/v1/modules").await;
    assert_eq!(status, 200);
    let bank = &list["modules"][0];
    assert_eq!(
        (bank["name"].as_str(), bank["active_version"].as_str()),
        (Some("bank-account"), Some("1.0.0"))
    );
    assert_eq!(bank["versions"].as_array().unwrap().len(), 2);

    // A swap needs a replay check of the new version; `force` skips it.
    let unchecked = s
        .request(Method::POST, "/v1/modules/bank-account/activate")
        .body(r#"{"version":"2.0.0"}"#)
        .send()
        .await
        .unwrap();
    expect_problem(unchecked, 409, "check_required").await;
    let activate = s
        .request(Method::POST, "/v1/modules/bank-account/activate")
        .body(r#"{"version":"2.0.0","force":true}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(activate.status().as_u16(), 200);
    let (_, one) = s.get_json("/v1/modules/bank-account").await;
    assert_eq!(one["active_version"], "2.0.0");
    // When each version became active and stopped being active.
    let history = one["activations"]
        .as_array()
        .expect("an activation history");
    assert_eq!(history.len(), 2, "{one}");
    assert_eq!(
        (&history[0]["version"], &history[1]["version"]),
        (&Value::from("1.0.0"), &Value::from("2.0.0"))
    );
    assert_eq!(history[0]["active_until_ms"], history[1]["active_from_ms"]);
    assert!(history[0]["active_from_ms"].as_u64().unwrap() > 1_700_000_000_000);
    assert!(history[1].get("active_until_ms").is_none(), "{one}");
    let missing = s
        .request(Method::POST, "/v1/modules/bank-account/activate")
        .body(r#"{"version":"9.9.9"}"#)
        .send()
        .await
        .unwrap();
    expect_problem(missing, 404, "not_found").await;
    let garbled = s
        .request(Method::POST, "/v1/modules/bank-account/activate")
        .body("{version")
        .send()
        .await
        .unwrap();
    expect_problem(garbled, 400, "invalid_request").await;
    expect_problem(
        s.request(Method::GET, "/v1/modules/nope")
            .send()
            .await
            .unwrap(),
        404,
        "not_found",
    )
    .await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn commands_state_and_stream_events_with_their_errors() {
    let dir = temp_dir();
    let s = TestServer::start(dir.path()).await;
    s.upload("bank-account", "1.0.0", BANK).await;

    let opened = s
        .send("bank-account", "acc-1", r#"{"type":"Open","owner":"Ada"}"#)
        .await;
    assert_eq!(opened.status().as_u16(), 200);
    assert_eq!(opened.headers()["etag"], "\"1\"");
    let body: Value = opened.json().await.unwrap();
    assert_eq!(
        (body["version"].as_u64(), body["position"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(body["module"], "bank-account@1.0.0");
    let event = &body["events"][0];
    assert_eq!(event["data"]["owner"], "Ada", "data is JSON, not a string");
    for field in [
        "position",
        "aggregate_type",
        "aggregate_id",
        "version",
        "event_id",
        "event_type",
        "data",
        "metadata",
    ] {
        assert!(!event[field].is_null(), "event field {field} in {event}");
    }
    assert_eq!(event["metadata"]["producer"], "bank-account@1.0.0");

    let deposit = s
        .request(Method::POST, "/v1/aggregates/bank-account/acc-1/commands")
        .header("if-match", "\"1\"")
        .header("idempotency-key", "dep-1")
        .body(r#"{"type":"Deposit","amount":500}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(deposit.status().as_u16(), 200);
    let first: Value = deposit.json().await.unwrap();
    let retry = s
        .request(Method::POST, "/v1/aggregates/bank-account/acc-1/commands")
        .header("idempotency-key", "dep-1")
        .body(r#"{"type":"Deposit","amount":500}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    assert_eq!(
        retry.json::<Value>().await.unwrap()["events"],
        first["events"],
        "a retry returns the original response"
    );

    let stale = s
        .request(Method::POST, "/v1/aggregates/bank-account/acc-1/commands")
        .header("if-match", "\"1\"")
        .body(r#"{"type":"Deposit","amount":1}"#)
        .send()
        .await
        .unwrap();
    let problem = expect_problem(stale, 412, "wrong_expected_version").await;
    assert_eq!(problem["actual_version"], 2);
    let overdraft = s
        .send(
            "bank-account",
            "acc-1",
            r#"{"type":"Withdraw","amount":501}"#,
        )
        .await;
    let problem = expect_problem(overdraft, 422, "rejected").await;
    assert_eq!(problem["reason"], "insufficient-funds");
    expect_problem(
        s.send("bank-account", "acc-1", r#"{"type":"Teleport"}"#)
            .await,
        400,
        "invalid_command",
    )
    .await;
    expect_problem(
        s.send("bank-account", "acc-1", "{not json").await,
        400,
        "invalid_command",
    )
    .await;
    expect_problem(
        s.send("unknown-type", "x", "{}").await,
        404,
        "unknown_aggregate_type",
    )
    .await;
    let reused = s
        .request(Method::POST, "/v1/aggregates/bank-account/acc-2/commands")
        .header("idempotency-key", "dep-1")
        .body(r#"{"type":"Open","owner":"Bo"}"#)
        .send()
        .await
        .unwrap();
    expect_problem(reused, 409, "idempotency_key_reused").await;

    let (status, state) = s.get_json("/v1/aggregates/bank-account/acc-1").await;
    assert_eq!(status, 200);
    assert_eq!(
        (
            state["version"].as_u64(),
            state["state"]["balance"].as_i64()
        ),
        (Some(2), Some(500))
    );
    let (_, then) = s
        .get_json("/v1/aggregates/bank-account/acc-1?at_version=1")
        .await;
    assert_eq!(
        (then["version"].as_u64(), then["state"]["balance"].as_i64()),
        (Some(1), Some(0))
    );
    expect_problem(
        s.request(Method::GET, "/v1/aggregates/bank-account/nobody")
            .send()
            .await
            .unwrap(),
        404,
        "not_found",
    )
    .await;
    expect_problem(
        s.request(
            Method::GET,
            "/v1/aggregates/bank-account/acc-1?at_version=x",
        )
        .send()
        .await
        .unwrap(),
        400,
        "invalid_request",
    )
    .await;

    let (_, events) = s
        .get_json("/v1/aggregates/bank-account/acc-1/events?from_version=2&limit=10")
        .await;
    assert_eq!(events["events"].as_array().unwrap().len(), 1);
    assert_eq!(
        (
            events["events"][0]["version"].as_u64(),
            events["next_version"].as_u64()
        ),
        (Some(2), Some(3))
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_global_log_pages_with_filters_and_health_and_metrics_report() {
    let dir = temp_dir();
    let s = TestServer::start(dir.path()).await;
    s.upload("bank-account", "1.0.0", BANK).await;
    for id in ["a", "b", "c"] {
        s.send("bank-account", id, r#"{"type":"Open","owner":"Ada"}"#)
            .await;
        s.send("bank-account", id, r#"{"type":"Deposit","amount":7}"#)
            .await;
    }
    let (_, page) = s.get_json("/v1/events?from=2&limit=3").await;
    let positions: Vec<u64> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["position"].as_u64().unwrap())
        .collect();
    assert_eq!(positions, vec![2, 3, 4]);
    assert_eq!(
        (page["next_position"].as_u64(), page["head"].as_u64()),
        (Some(5), Some(6))
    );
    let (_, deposits) = s
        .get_json("/v1/events?event_type=Deposited&aggregate_type=bank-account")
        .await;
    assert_eq!(deposits["events"].as_array().unwrap().len(), 3);
    let (_, none) = s.get_json("/v1/events?aggregate_type=other").await;
    assert!(none["events"].as_array().unwrap().is_empty());
    expect_problem(
        s.request(Method::GET, "/v1/events?limit=-1")
            .send()
            .await
            .unwrap(),
        400,
        "invalid_request",
    )
    .await;

    let (status, health) = s.get_json("/healthz").await;
    assert_eq!(
        (status, health["status"].as_str(), health["head"].as_u64()),
        (200, Some("ok"), Some(6))
    );
    s.send("bank-account", "a", r#"{"type":"Withdraw","amount":1000}"#)
        .await;
    let metrics = s
        .request(Method::GET, "/metrics")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for needle in [
        "refold_commands_total{outcome=\"ok\"} 6",
        "refold_commands_total{outcome=\"rejected\"} 1",
        "refold_command_duration_seconds_bucket",
        "refold_events_appended_total 6",
        "refold_head_position 6",
        "refold_subscribers 0",
    ] {
        assert!(
            metrics.contains(needle),
            "metrics lack {needle:?}:\n{metrics}"
        );
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_routes_and_methods_get_problems() {
    let dir = temp_dir();
    let s = TestServer::start(dir.path()).await;
    expect_problem(
        s.request(Method::GET, "/v2/anything").send().await.unwrap(),
        404,
        "not_found",
    )
    .await;
    expect_problem(
        s.request(Method::DELETE, "/v1/events")
            .send()
            .await
            .unwrap(),
        405,
        "method_not_allowed",
    )
    .await;
    expect_problem(
        s.request(Method::GET, "/v1/aggregates/bank-account/x/commands")
            .send()
            .await
            .unwrap(),
        405,
        "method_not_allowed",
    )
    .await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_grant_roles_and_nothing_more() {
    let dir = temp_dir();
    let mut config = support::http::config(dir.path());
    config.tokens = tokens();
    let s = TestServer::start_with(config).await;
    assert_eq!(
        s.upload("bank-account", "1.0.0", BANK)
            .await
            .status()
            .as_u16(),
        201,
        "admin uploads"
    );
    let with = |token: Option<&str>, method: Method, path: &str| {
        let b = s.client.request(method, format!("{}{path}", s.base));
        match token {
            Some(t) => b.bearer_auth(t),
            None => b,
        }
    };
    let health = with(None, Method::GET, "/healthz").send().await.unwrap();
    assert_eq!(health.status().as_u16(), 200, "health needs no token");
    let anonymous = with(None, Method::GET, "/v1/events").send().await.unwrap();
    assert_eq!(anonymous.headers()["www-authenticate"], "Bearer");
    expect_problem(anonymous, 401, "unauthorized").await;
    expect_problem(
        with(Some("wrong"), Method::GET, "/v1/events")
            .send()
            .await
            .unwrap(),
        401,
        "unauthorized",
    )
    .await;
    assert_eq!(
        with(Some("reader-secret"), Method::GET, "/v1/events")
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        200
    );
    let reader_writes = with(
        Some("reader-secret"),
        Method::POST,
        "/v1/aggregates/bank-account/a/commands",
    )
    .body(r#"{"type":"Open","owner":"Ada"}"#)
    .send()
    .await
    .unwrap();
    expect_problem(reader_writes, 403, "forbidden").await;
    let writer = with(
        Some("writer-secret"),
        Method::POST,
        "/v1/aggregates/bank-account/a/commands",
    )
    .body(r#"{"type":"Open","owner":"Ada"}"#)
    .send()
    .await
    .unwrap();
    assert_eq!(writer.status().as_u16(), 200);
    let writer_uploads = with(Some("writer-secret"), Method::PUT, "/v1/modules/x/1.0.0")
        .body("x")
        .send()
        .await
        .unwrap();
    expect_problem(writer_uploads, 403, "forbidden").await;
    s.stop().await;
}

#[tokio::test]
async fn a_non_loopback_address_without_tokens_is_refused() {
    let dir = temp_dir();
    let config = refold::server::ServeConfig::new(dir.path(), "0.0.0.0:0".parse().unwrap());
    let err = refold::server::start(config).await.err().expect("refused");
    assert!(err.to_string().contains("without tokens"), "{err}");
}

/// POSTs a command with optional headers (name, value), repeating a name appends.
async fn command(
    s: &TestServer,
    id: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> reqwest::Response {
    let mut request = s.request(
        Method::POST,
        &format!("/v1/aggregates/bank-account/{id}/commands"),
    );
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.body(body.to_string()).send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idempotency_key_stands_for_one_request_and_another_request_with_it_is_refused() {
    let dir = temp_dir();
    let s = TestServer::start(dir.path()).await;
    s.upload("bank-account", "1.0.0", BANK).await;
    s.send("bank-account", "acc-1", r#"{"type":"Open","owner":"Ada"}"#)
        .await;
    let deposit = r#"{"type":"Deposit","amount":500}"#;
    let key = [("idempotency-key", "pay-1")];
    let first = command(&s, "acc-1", &[key[0], ("if-match", "\"1\"")], deposit).await;
    assert_eq!(first.status().as_u16(), 200);
    let first: Value = first.json().await.unwrap();

    // The same request again, even with a newer If-Match (a client that re-read
    // the aggregate after losing the answer): the first result, replayed.
    for headers in [
        vec![key[0], ("if-match", "\"1\"")],
        vec![key[0], ("if-match", "\"2\"")],
    ] {
        let again = command(&s, "acc-1", &headers, deposit).await;
        assert_eq!(again.status().as_u16(), 200);
        assert_eq!(again.headers()["idempotent-replayed"], "true");
        assert_eq!(again.json::<Value>().await.unwrap(), first);
    }

    // Another body under the key: refused, not answered with the first result.
    // The body counts byte for byte: other whitespace is another request too.
    for body in [
        r#"{"type":"Deposit","amount":900}"#,
        r#"{"type":"Deposit", "amount":500}"#,
    ] {
        let problem = expect_problem(
            command(&s, "acc-1", &key, body).await,
            409,
            "idempotency_key_reused",
        )
        .await;
        let detail = problem["detail"].as_str().unwrap();
        assert!(
            detail.contains("first used for a different request")
                && detail.contains("exact body bytes"),
            "{detail}"
        );
        assert_eq!(
            (
                problem["idempotency_key"].as_str(),
                problem["first_aggregate_id"].as_str()
            ),
            (Some("pay-1"), Some("acc-1"))
        );
    }
    let (_, state) = s.get_json("/v1/aggregates/bank-account/acc-1").await;
    assert_eq!(
        (
            state["version"].as_u64(),
            state["state"]["balance"].as_i64()
        ),
        (Some(2), Some(500)),
        "only the first request ran"
    );

    // Different requests racing under one new key on different aggregates (no
    // lock in common): one lands, every other gets the same code.
    let racers: Vec<_> = (0..6)
        .map(|i| {
            let s = &s;
            async move {
                let id = format!("race-{i}");
                command(
                    s,
                    &id,
                    &[("idempotency-key", "open-once")],
                    r#"{"type":"Open","owner":"Bo"}"#,
                )
                .await
            }
        })
        .collect();
    let mut landed = 0;
    for response in futures::future::join_all(racers).await {
        if response.status().is_success() {
            landed += 1;
        } else {
            expect_problem(response, 409, "idempotency_key_reused").await;
        }
    }
    assert_eq!(landed, 1);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn if_match_takes_star_zero_lists_and_never_matches_a_weak_tag() {
    let dir = temp_dir();
    let s = TestServer::start(dir.path()).await;
    s.upload("bank-account", "1.0.0", BANK).await;
    let open = r#"{"type":"Open","owner":"Ada"}"#;
    let deposit = r#"{"type":"Deposit","amount":1}"#;

    // `*`: the aggregate exists.
    let problem = expect_problem(
        command(&s, "acc-1", &[("if-match", "*")], open).await,
        412,
        "wrong_expected_version",
    )
    .await;
    assert_eq!(
        (
            problem["actual_version"].as_u64(),
            problem["expected_exists"].as_bool()
        ),
        (Some(0), Some(true))
    );
    // `"0"`: no events yet.
    let opened = command(&s, "acc-1", &[("if-match", "\"0\"")], open).await;
    assert_eq!(opened.status().as_u16(), 200);
    let problem = expect_problem(
        command(&s, "acc-1", &[("if-match", "\"0\"")], open).await,
        412,
        "wrong_expected_version",
    )
    .await;
    assert_eq!(
        (
            problem["expected_version"].as_u64(),
            problem["actual_version"].as_u64()
        ),
        (Some(0), Some(1))
    );
    let exists = command(&s, "acc-1", &[("if-match", "*")], deposit).await;
    assert_eq!(exists.headers()["etag"], "\"2\"");

    // A weak tag never matches (RFC 9110: If-Match compares strongly).
    for weak in ["W/\"2\"", "\"1\", W/\"2\""] {
        let problem = expect_problem(
            command(&s, "acc-1", &[("if-match", weak)], deposit).await,
            412,
            "wrong_expected_version",
        )
        .await;
        assert_eq!(problem["actual_version"], 2, "{weak}");
    }
    // A list matches any of its versions; so do several header lines.
    let listed = command(&s, "acc-1", &[("if-match", "\"1\", \"2\"")], deposit).await;
    assert_eq!(listed.headers()["etag"], "\"3\"");
    let problem = expect_problem(
        command(&s, "acc-1", &[("if-match", "\"5\",\"4\"")], deposit).await,
        412,
        "wrong_expected_version",
    )
    .await;
    assert_eq!(problem["expected_versions"], serde_json::json!([4, 5]));
    let lines = command(
        &s,
        "acc-1",
        &[("if-match", "\"7\""), ("if-match", "\"3\"")],
        deposit,
    )
    .await;
    assert_eq!(lines.headers()["etag"], "\"4\"");

    for bad in ["*, \"4\"", "\"four\"", "W/4", ""] {
        expect_problem(
            command(&s, "acc-1", &[("if-match", bad)], deposit).await,
            400,
            "invalid_request",
        )
        .await;
    }
    let (_, state) = s.get_json("/v1/aggregates/bank-account/acc-1").await;
    assert_eq!(state["version"], 4, "nothing refused was written");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_state_names_the_module_that_folded_it_and_the_producer_of_its_last_event() {
    let dir = temp_dir();
    let s = TestServer::start(dir.path()).await;
    s.upload("bank-account", "1.0.0", BANK).await;
    s.send("bank-account", "acc-1", r#"{"type":"Open","owner":"Ada"}"#)
        .await;
    let v11 = s
        .request(
            Method::PUT,
            "/v1/modules/bank-account/1.1.0?activate=true&force=true",
        )
        .body(std::fs::read(refold_test_guests::BANK_ACCOUNT_NO_WASI).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(v11.status().as_u16(), 201);
    s.send("bank-account", "acc-1", r#"{"type":"Deposit","amount":5}"#)
        .await;

    let (_, then) = s
        .get_json("/v1/aggregates/bank-account/acc-1?at_version=1")
        .await;
    assert_eq!(
        (
            then["folded_by"].as_str(),
            then["last_event_producer"].as_str(),
            then["module"].as_str()
        ),
        (
            Some("bank-account@1.1.0"),
            Some("bank-account@1.0.0"),
            Some("bank-account@1.1.0")
        ),
        "{then}"
    );
    let (_, now) = s.get_json("/v1/aggregates/bank-account/acc-1").await;
    assert_eq!(
        (
            now["folded_by"].as_str(),
            now["last_event_producer"].as_str()
        ),
        (Some("bank-account@1.1.0"), Some("bank-account@1.1.0"))
    );
    s.stop().await;
}
