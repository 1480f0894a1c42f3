//! A corpus of bad requests: each gets a clear 4xx problem, the server stays
//! up, and data acknowledged before is intact afterwards.

mod support;

use reqwest::Method;
use serde_json::Value;
use support::http::{TestServer, expect_problem};
use support::temp_dir;

struct Bad {
    what: &'static str,
    method: Method,
    path: String,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    status: u16,
    code: &'static str,
}

fn bad(
    what: &'static str,
    method: Method,
    path: &str,
    body: impl Into<Vec<u8>>,
    status: u16,
    code: &'static str,
) -> Bad {
    Bad {
        what,
        method,
        path: path.to_string(),
        headers: Vec::new(),
        body: body.into(),
        status,
        code,
    }
}

fn corpus() -> Vec<Bad> {
    let wasm = std::fs::read(refold_test_guests::BANK_ACCOUNT).unwrap();
    let cmd = "/v1/aggregates/bank-account/acc-1/commands";
    let with_header = |what, name, value: &str, status, code| {
        let mut b = bad(
            what,
            Method::POST,
            cmd,
            r#"{"type":"Deposit","amount":1}"#,
            status,
            code,
        );
        b.headers.push((name, value.to_string()));
        b
    };
    let mut list = vec![
        with_header(
            "garbage If-Match",
            "if-match",
            "\"three\"",
            400,
            "invalid_request",
        ),
        with_header(
            "overlong Idempotency-Key",
            "idempotency-key",
            &"k".repeat(300),
            400,
            "invalid_request",
        ),
        bad(
            "invalid UTF-8 command",
            Method::POST,
            cmd,
            vec![0xff, 0xfe, b'{', b'}'],
            400,
            "invalid_command",
        ),
        bad(
            "malformed JSON command",
            Method::POST,
            cmd,
            "{\"type\":",
            400,
            "invalid_command",
        ),
        bad(
            "empty command",
            Method::POST,
            cmd,
            "",
            400,
            "invalid_command",
        ),
        bad(
            "command the module does not know",
            Method::POST,
            cmd,
            r#"{"type":"Explode"}"#,
            400,
            "invalid_command",
        ),
        bad(
            "huge command",
            Method::POST,
            cmd,
            format!("{{\"pad\":\"{}\"}}", "x".repeat(20_000)),
            413,
            "payload_too_large",
        ),
        bad(
            "dot-dot aggregate id",
            Method::POST,
            "/v1/aggregates/bank-account/%2E%2E/commands",
            "{}",
            400,
            "invalid_request",
        ),
        bad(
            "control character in id",
            Method::POST,
            "/v1/aggregates/bank-account/a%0Ab/commands",
            "{}",
            400,
            "invalid_request",
        ),
        bad(
            "overlong aggregate id",
            Method::POST,
            &format!("/v1/aggregates/bank-account/{}/commands", "i".repeat(300)),
            "{}",
            400,
            "invalid_request",
        ),
        bad(
            "invalid percent-encoding",
            Method::GET,
            "/v1/aggregates/bank-account/%FF%FE",
            "",
            400,
            "invalid_request",
        ),
        bad(
            "truncated module",
            Method::PUT,
            "/v1/modules/broken/1.0.0",
            wasm[..wasm.len() / 3].to_vec(),
            422,
            "invalid_module",
        ),
        bad(
            "non-Wasm module",
            Method::PUT,
            "/v1/modules/broken/1.0.0",
            "#!/bin/sh\necho hi\n",
            422,
            "invalid_module",
        ),
        bad(
            "core module instead of a component",
            Method::PUT,
            "/v1/modules/broken/1.0.0",
            b"\0asm\x01\0\0\0".to_vec(),
            422,
            "invalid_module",
        ),
        bad(
            "empty module",
            Method::PUT,
            "/v1/modules/broken/1.0.0",
            "",
            422,
            "invalid_module",
        ),
        bad(
            "huge module",
            Method::PUT,
            "/v1/modules/broken/1.0.0",
            vec![0u8; 5 << 20],
            413,
            "payload_too_large",
        ),
        bad(
            "module name with a space",
            Method::PUT,
            "/v1/modules/bad%20name/1.0.0",
            wasm.clone(),
            400,
            "invalid_request",
        ),
        bad(
            "activate with non-JSON",
            Method::POST,
            "/v1/modules/bank-account/activate",
            "1.0.0",
            400,
            "invalid_request",
        ),
        bad(
            "non-numeric from",
            Method::GET,
            "/v1/events?from=abc",
            "",
            400,
            "invalid_request",
        ),
        bad(
            "non-numeric at_version",
            Method::GET,
            "/v1/aggregates/bank-account/acc-1?at_version=1e3",
            "",
            400,
            "invalid_request",
        ),
        bad(
            "unknown route",
            Method::GET,
            "/v1/nothing/here",
            "",
            404,
            "not_found",
        ),
        bad(
            "wrong method",
            Method::PATCH,
            "/v1/modules",
            "",
            405,
            "method_not_allowed",
        ),
    ];
    let mut resume = bad(
        "garbage Last-Event-ID",
        Method::GET,
        "/v1/events/subscribe",
        "",
        400,
        "invalid_request",
    );
    resume.headers.push(("last-event-id", "yesterday".into()));
    list.push(resume);
    // One rule for `limit` on every route that pages: 1 to 1000, else a 400;
    // and strict query strings everywhere.
    for route in [
        "/v1/events",
        "/v1/aggregates/bank-account/acc-1/events",
        "/v1/projections/none/docs",
    ] {
        for query in [
            "limit=0",
            "limit=1001",
            "limit=1&limit=2",
            "limit=%zz",
            "limit=%ff",
        ] {
            list.push(bad(
                "bad limit or query string",
                Method::GET,
                &format!("{route}?{query}"),
                "",
                400,
                "invalid_request",
            ));
        }
    }
    for path in [
        "/v1/events?from=1&from=2",
        "/v1/aggregates/bank-account/acc-1?at_version=1&at_version=2",
        "/v1/events?from=1%",
        "/v1/events?from=%C3%28",
        "/v1/projections/none/queries/q?x=1&x=2",
    ] {
        list.push(bad(
            "repeated parameter or bad escape",
            Method::GET,
            path,
            "",
            400,
            "invalid_request",
        ));
    }
    list
}

#[tokio::test(flavor = "multi_thread")]
async fn every_bad_request_gets_a_clear_problem_and_nothing_is_lost() {
    let dir = temp_dir();
    let s = TestServer::start(dir.path()).await;
    s.upload("bank-account", "1.0.0", refold_test_guests::BANK_ACCOUNT)
        .await;
    s.send("bank-account", "acc-1", r#"{"type":"Open","owner":"Ada"}"#)
        .await;
    s.send(
        "bank-account",
        "acc-1",
        r#"{"type":"Deposit","amount":250}"#,
    )
    .await;
    let (_, before) = s.get_json("/v1/aggregates/bank-account/acc-1").await;
    let (_, log_before) = s.get_json("/v1/events").await;

    for case in corpus() {
        if case.path.contains("%2E%2E") {
            // HTTP clients normalise dot segments away, so this one goes over a raw socket.
            let (status, body) =
                raw_request(&s, case.method.as_str(), &case.path, &case.body).await;
            assert_eq!(status, case.status, "{}: status", case.what);
            assert_eq!(body["code"], case.code, "{}: {body}", case.what);
            continue;
        }
        let mut request = s
            .request(case.method.clone(), &case.path)
            .body(case.body.clone());
        for (name, value) in &case.headers {
            request = request.header(*name, value);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{}: the server answered nothing: {e}", case.what));
        let status = response.status().as_u16();
        assert_eq!(status, case.status, "{}: status", case.what);
        let problem = expect_problem(response, case.status, case.code).await;
        assert!(problem["title"].is_string(), "{}: {problem}", case.what);
    }

    // An answer that leaves the body unread says it closes the connection, so
    // no client sends its next request into it (this corpus did, one run in ten).
    // The server may answer and close while the client is still writing the
    // body: then the client sees a broken pipe, not the answer. Try again (a
    // few times at most) until the answer is read.
    let mut attempts = 0;
    let r = loop {
        attempts += 1;
        match s
            .request(Method::PUT, "/v1/modules/broken/1.0.0")
            .body(vec![0u8; 5 << 20])
            .send()
            .await
        {
            Ok(r) => break r,
            Err(e) if attempts < 5 && e.is_request() => continue,
            Err(e) => panic!("no answer to an oversized upload in {attempts} attempts: {e}"),
        }
    };
    assert_eq!(r.status().as_u16(), 413);
    assert_eq!(
        r.headers().get("connection").map(|v| v.as_bytes()),
        Some(&b"close"[..])
    );
    let r = s
        .request(Method::PUT, "/v1/modules/broken/1.0.0")
        .body(b"\0asm\x01\0\0\0".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 422, "a body read to its end");
    assert!(
        r.headers().get("connection").is_none(),
        "keeps the connection"
    );

    let (status, health) = s.get_json("/healthz").await;
    assert_eq!(
        (status, health["status"].as_str()),
        (200, Some("ok")),
        "the server is still up"
    );
    let (_, after) = s.get_json("/v1/aggregates/bank-account/acc-1").await;
    let (_, log_after) = s.get_json("/v1/events").await;
    assert_eq!(before, after, "acknowledged state intact");
    assert_eq!(
        log_before, log_after,
        "the log is unchanged: nothing half-written"
    );
    let (_, modules) = s.get_json("/v1/modules").await;
    assert_eq!(
        modules["modules"].as_array().map(Vec::len),
        Some(1),
        "no refused module was registered"
    );
    let ok = s
        .send("bank-account", "acc-1", r#"{"type":"Deposit","amount":1}"#)
        .await;
    assert_eq!(ok.status().as_u16(), 200, "and it still takes commands");
    let body: Value = ok.json().await.unwrap();
    assert_eq!(body["version"], 3);
    s.stop().await;
}

async fn raw_request(s: &TestServer, method: &str, path: &str, body: &[u8]) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = tokio::net::TcpStream::connect(s.server.addr).await.unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    socket.write_all(body).await.unwrap();
    let mut response = Vec::new();
    socket.read_to_end(&mut response).await.unwrap();
    let text = String::from_utf8_lossy(&response);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}
