//! What a guest returns is hostile input: on a real server with the real
//! hostile guest, each kind of bad output is refused as a 422
//! `invalid_guest_output` with nothing written and other modules serving, and
//! event data that is accepted comes back from every reader byte for byte.

mod support;

use futures::StreamExt;
use reqwest::Method;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use std::time::Duration;

use refold_test_guests::{BANK_ACCOUNT, HOSTILE, SLOPPY_SELECTOR};
use support::http::{TestServer, expect_problem};
use support::temp_dir;

/// Event data as a guest might write it: a 30-digit integer, `1E2`, `-0`,
/// `1.0`, escapes (a surrogate pair among them), keys out of order, tabs and
/// newlines between tokens. Any re-encoding would change some of these bytes.
const EXACT: &str = "{\"z\" :\t[ 1E2 ,\n -0, 1.0 ],\"big\":123456789012345678901234567890,\
\"esc\":\"caf\\u00e9 \\ud83d\\ude00 \\\"q\\\" \\/\",\"a\":{ }}";

fn emit(events: &[(&str, &str)]) -> String {
    let events: Vec<Value> = events
        .iter()
        .map(|(t, d)| json!({"event_type": t, "data": d}))
        .collect();
    json!({"type": "EmitRaw", "events": events}).to_string()
}

async fn hostile_server(dir: &std::path::Path) -> TestServer {
    let s = TestServer::start(dir).await;
    assert_eq!(s.upload("hostile", "1.0.0", HOSTILE).await.status(), 201);
    assert_eq!(
        s.upload("bank-account", "1.0.0", BANK_ACCOUNT)
            .await
            .status(),
        201
    );
    s
}

async fn head(s: &TestServer) -> u64 {
    let (status, page) = s.get_json("/v1/events?limit=1").await;
    assert_eq!(status, 200, "{page}");
    page["head"].as_u64().expect("a head")
}

async fn stream_len(s: &TestServer, id: &str) -> usize {
    let (status, page) = s
        .get_json(&format!("/v1/aggregates/hostile/{id}/events"))
        .await;
    assert_eq!(status, 200, "{page}");
    page["events"].as_array().expect("events").len()
}

#[tokio::test(flavor = "multi_thread")]
async fn each_kind_of_bad_guest_output_is_a_422_that_writes_nothing() {
    let dir = temp_dir();
    let s = hostile_server(dir.path()).await;
    let opened = s
        .send("bank-account", "steady", r#"{"type":"Open","owner":"Ada"}"#)
        .await;
    assert_eq!(opened.status(), 200);
    let nested = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
    let too_deep = nested(65);
    let long_type = "T".repeat(257);
    let long_code = "c".repeat(65);
    let long_message = "m".repeat(1025);
    let cases: Vec<(&str, String)> = vec![
        ("a number past f64", emit(&[("T", "{\"n\":1e400}")])),
        ("a negative one", emit(&[("T", "-1e999")])),
        ("a lone surrogate", emit(&[("T", "\"\\ud800\"")])),
        (
            "a lone low surrogate",
            emit(&[("T", "{\"k\":\"\\udc00\"}")]),
        ),
        (
            "mis-ordered surrogates",
            emit(&[("T", "\"\\udc00\\ud800\"")]),
        ),
        ("nesting past 64", emit(&[("T", &too_deep)])),
        ("a duplicate key", emit(&[("T", "{\"a\":1,\"a\":2}")])),
        (
            "an escaped duplicate",
            emit(&[("T", "{\"a\":1,\"\\u0061\":2}")]),
        ),
        ("whitespace around", emit(&[("T", " {}")])),
        ("a carriage return", emit(&[("T", "{\"a\":\r\n1}")])),
        ("not JSON", emit(&[("T", "{nope")])),
        ("a comma in a type", emit(&[("Opened,Closed", "{}")])),
        ("a bidi override", emit(&[("Paid\u{202E}diaP", "{}")])),
        ("a zero-width space", emit(&[("Paid\u{200B}", "{}")])),
        ("a space in a type", emit(&[("Was Paid", "{}")])),
        ("an empty type", emit(&[("", "{}")])),
        ("a long type", emit(&[(&long_type, "{}")])),
        (
            "a good event then a bad one",
            emit(&[("Ok", "{}"), ("T", "1e400")]),
        ),
        (
            "1001 events",
            json!({"type": "EmitMany", "count": 1001}).to_string(),
        ),
        (
            "a long code",
            json!({"type": "RejectWith", "code": long_code, "message": "m"}).to_string(),
        ),
        (
            "a code with a space",
            json!({"type": "RejectWith", "code": "no funds", "message": "m"}).to_string(),
        ),
        (
            "an empty code",
            json!({"type": "RejectWith", "code": "", "message": "m"}).to_string(),
        ),
        (
            "a long message",
            json!({"type": "RejectWith", "code": "c", "message": long_message}).to_string(),
        ),
        (
            "an escape sequence",
            json!({"type": "RejectWith", "code": "c", "message": "\u{1b}[2J"}).to_string(),
        ),
        (
            "a long reason",
            json!({"type": "MalformedWith", "reason": long_message}).to_string(),
        ),
    ];
    for (what, command) in &cases {
        let r = s.send("hostile", "h", command).await;
        let problem = expect_problem(r, 422, "invalid_guest_output").await;
        let detail = problem["detail"].as_str().unwrap();
        assert!(
            detail.contains("hostile@1.0.0") && detail.len() < 700,
            "{what}: a short detail naming the module, got {detail:?}"
        );
        assert!(
            !detail.contains(['\u{202E}', '\u{200B}', '\u{1b}']),
            "{what}: the detail echoes no hidden characters: {detail:?}"
        );
    }
    assert_eq!(
        head(&s).await,
        1,
        "only the bank account's event is in the log"
    );
    assert_eq!(
        stream_len(&s, "h").await,
        0,
        "the hostile stream never moved"
    );

    // The limits are limits, not off by one: 64 deep and 1000 events are fine.
    let deepest = nested(64);
    let r = s.send("hostile", "edge", &emit(&[("T", &deepest)])).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let r = s
        .send("hostile", "edge", r#"{"type":"EmitMany","count":1000}"#)
        .await;
    assert_eq!(r.status(), 200);
    let reply: Value = r.json().await.unwrap();
    assert_eq!(reply["events"].as_array().unwrap().len(), 1000);
    // A page around the deepest data still parses with serde_json's default limit.
    let (status, page) = s.get_json("/v1/events?from=2&limit=1").await;
    assert_eq!(
        (status, page["events"][0]["data"].to_string()),
        (200, deepest)
    );

    // A rejection within the rules passes through; other modules keep serving.
    let r = s
        .send(
            "hostile",
            "h",
            r#"{"type":"RejectWith","code":"no-funds.v2","message":"Not now, café."}"#,
        )
        .await;
    let problem = expect_problem(r, 422, "rejected").await;
    assert_eq!(
        (problem["reason"].as_str(), problem["detail"].as_str()),
        (Some("no-funds.v2"), Some("Not now, café."))
    );
    let r = s
        .send("bank-account", "steady", r#"{"type":"Deposit","amount":5}"#)
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(head(&s).await, 1 + 1 + 1000 + 1);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn client_commands_are_held_to_the_same_json_rules() {
    let dir = temp_dir();
    let s = hostile_server(dir.path()).await;
    let deep = format!("{}{}", "[".repeat(65), "]".repeat(65));
    for body in [
        r#"{"type":"Count","type":"Loop"}"#,
        r#"{"type":"Count","n":1e400}"#,
        r#"{"type":"Count","s":"\ud800"}"#,
        deep.as_str(),
    ] {
        let r = s.send("hostile", "h", body).await;
        expect_problem(r, 400, "invalid_command").await;
    }
    assert_eq!(head(&s).await, 0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_render_answer_is_bounded_and_the_stream_still_serves() {
    let dir = temp_dir();
    // `refold serve`'s memory cap: room for the guest to build a 9 MiB
    // answer; answers bounded at 8 MiB (`--max-answer-mib 8`).
    let mut config = support::http::config(dir.path());
    config.runtime.memory_bytes = 64 << 20;
    config.runtime.max_answer_bytes = 8 << 20;
    let s = TestServer::start_with(config).await;
    assert_eq!(s.upload("hostile", "1.0.0", HOSTILE).await.status(), 201);
    assert_eq!(
        s.upload("bank-account", "1.0.0", BANK_ACCOUNT)
            .await
            .status(),
        201
    );
    let amplify = |mib: u64| json!({"type": "Amplify", "mib": mib}).to_string();
    // 8 bytes of state, a 9 MiB answer: the command is fine, the read is refused.
    assert_eq!(s.send("hostile", "big", &amplify(9)).await.status(), 200);
    let r = s
        .request(Method::GET, "/v1/aggregates/hostile/big")
        .send()
        .await
        .unwrap();
    let problem = expect_problem(r, 422, "guest_limit_exceeded").await;
    let detail = problem["detail"].as_str().unwrap();
    assert!(detail.contains("render answered 9437186 bytes"), "{detail}");
    // The same stream, at a later version with a small answer, reads again;
    // the large version stays refused, and other modules are untouched.
    assert_eq!(s.send("hostile", "big", &amplify(7)).await.status(), 200);
    let (status, view) = s.get_json("/v1/aggregates/hostile/big").await;
    assert_eq!(status, 200);
    assert_eq!(view["state"].as_str().map(str::len), Some(7 << 20));
    let r = s
        .request(Method::GET, "/v1/aggregates/hostile/big?at_version=1")
        .send()
        .await
        .unwrap();
    expect_problem(r, 422, "guest_limit_exceeded").await;
    let open = json!({"type": "Open", "owner": "o"}).to_string();
    assert_eq!(s.send("bank-account", "a", &open).await.status(), 200);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn guest_complaints_are_clipped_with_a_marker() {
    let dir = temp_dir();
    let s = hostile_server(dir.path()).await;
    let data = format!("\"{}\"", "x".repeat(5000));
    let r = s
        .send("hostile", "h", &emit(&[("ApplyFailsLoudly", &data)]))
        .await;
    let problem = expect_problem(r, 422, "guest_failed").await;
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.len() < 1200 && detail.contains("[truncated: 70032 bytes in all]"),
        "a clipped detail with a marker: {} bytes, ending {:?}",
        detail.len(),
        &detail[detail.len().saturating_sub(60)..]
    );
    assert!(detail.contains("\\u{1b}[2J") && !detail.contains('\u{1b}'));
    assert_eq!(head(&s).await, 0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn module_names_and_versions_must_fit_the_producer_label_at_upload() {
    let dir = temp_dir();
    let s = TestServer::start(dir.path()).await;
    let long_version = format!("1.0.0-{}", "x".repeat(58));
    let r = s.upload("hostile", &long_version, HOSTILE).await;
    let problem = expect_problem(r, 400, "invalid_request").await;
    assert!(
        problem["detail"].as_str().unwrap().contains("limit is 63"),
        "{problem}"
    );
    // The longest name with the longest version still labels its events.
    let name = format!("h{}", "x".repeat(63));
    let version = format!("1.0.0-{}", "x".repeat(57));
    assert_eq!(s.upload(&name, &version, HOSTILE).await.status(), 201);
    let r = s.send(&name, "a", r#"{"type":"Count"}"#).await;
    assert_eq!(r.status(), 200);
    let reply: Value = r.json().await.unwrap();
    assert_eq!(
        reply["events"][0]["metadata"]["producer"],
        format!("{name}@{version}")
    );
    let (status, _) = s.get_json("/v1/modules").await;
    assert_eq!(status, 200);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_projection_selecting_an_impossible_event_type_is_refused_at_upload() {
    let dir = temp_dir();
    let s = TestServer::start(dir.path()).await;
    let r = s.upload("sloppy", "1.0.0", SLOPPY_SELECTOR).await;
    let problem = expect_problem(r, 422, "invalid_module").await;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("Opened,Closed"),
        "{problem}"
    );
    let (_, modules) = s.get_json("/v1/modules").await;
    assert_eq!(
        modules["modules"],
        json!([]),
        "the refused upload left no trace"
    );
    s.stop().await;
}

/// The real `refold` binary as a client of the test server; its stdout.
async fn cli(s: &TestServer, args: &[&str]) -> String {
    let base = s.base.clone();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(support::process::BIN)
            .env("REFOLD_SERVER", &base)
            .args(&args)
            .output()
            .expect("refold runs");
        assert!(
            out.status.success(),
            "refold {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("UTF-8 output")
    })
    .await
    .expect("the CLI task")
}

/// The parts of a reply whose text we compare: event data as served.
#[derive(Deserialize)]
struct Events<'a> {
    #[serde(borrow)]
    events: Vec<EventData<'a>>,
}

#[derive(Deserialize)]
struct EventData<'a> {
    #[serde(borrow)]
    data: &'a RawValue,
}

fn data_of(body: &str) -> Vec<String> {
    let events: Events = serde_json::from_str(body).expect("a JSON body with events");
    events
        .events
        .iter()
        .map(|e| e.data.get().to_string())
        .collect()
}

/// The first SSE message's data, its `data:` lines joined with `\n` as the
/// SSE specification says.
async fn first_sse_data(s: &TestServer, from: u64) -> String {
    let r = s
        .request(Method::GET, &format!("/v1/events/subscribe?from={from}"))
        .send()
        .await
        .unwrap();
    let mut bytes = r.bytes_stream();
    let mut buffer = String::new();
    loop {
        let chunk = tokio::time::timeout(Duration::from_secs(30), bytes.next())
            .await
            .expect("an event arrives")
            .expect("the stream stays open")
            .unwrap();
        buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        if let Some(end) = buffer.find("\n\n") {
            let lines: Vec<&str> = buffer[..end]
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|v| v.strip_prefix(' ').unwrap_or(v))
                .collect();
            if !lines.is_empty() {
                return lines.join("\n");
            }
            buffer.drain(..end + 2);
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn event_data_comes_back_byte_for_byte_from_every_reader() {
    let dir = temp_dir();
    let server = hostile_server(dir.path()).await;
    let s = &server;
    let command = emit(&[("Exact", EXACT)]);
    let send = || {
        s.request(Method::POST, "/v1/aggregates/hostile/rt/commands")
            .header("content-type", "application/json")
            .header("idempotency-key", "round-trip-1")
            .body(command.clone())
            .send()
    };
    let first = send().await.unwrap();
    assert_eq!(first.status(), 200);
    assert_eq!(data_of(&first.text().await.unwrap()), [EXACT]);
    let retry = send().await.unwrap();
    assert_eq!(retry.status(), 200);
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    assert_eq!(data_of(&retry.text().await.unwrap()), [EXACT], "the retry");

    let text = |path: &'static str| async move {
        let r = s.request(Method::GET, path).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        r.text().await.unwrap()
    };
    assert_eq!(data_of(&text("/v1/events").await), [EXACT], "a log page");
    assert_eq!(
        data_of(&text("/v1/aggregates/hostile/rt/events").await),
        [EXACT],
        "a stream read"
    );
    // The hostile guest's state is its last event's data, rendered as is.
    #[derive(Deserialize)]
    struct State<'a> {
        #[serde(borrow)]
        state: &'a RawValue,
    }
    let body = text("/v1/aggregates/hostile/rt").await;
    let state: State = serde_json::from_str(&body).unwrap();
    assert_eq!(state.state.get(), EXACT, "a state read");
    let sse = first_sse_data(s, 1).await;
    let event: EventData = serde_json::from_str(&sse).unwrap();
    assert_eq!(event.data.get(), EXACT, "SSE");

    // The CLI: `--json` prints the server's body; the text output the data as sent.
    assert_eq!(
        data_of(&cli(s, &["events", "--json"]).await),
        [EXACT],
        "refold events --json"
    );
    let line = cli(s, &["events"]).await;
    assert!(
        line.ends_with(&format!(" Exact {EXACT}\n")),
        "refold events: {line:?}"
    );
    let followed = cli(s, &["events", "--follow", "--limit", "1"]).await;
    assert!(
        followed.ends_with(&format!(" Exact {EXACT}\n")),
        "--follow: {followed:?}"
    );
    let sent = cli(
        s,
        &[
            "send",
            "hostile",
            "rt",
            &command,
            "--key",
            "round-trip-1",
            "--json",
        ],
    )
    .await;
    assert_eq!(data_of(&sent), [EXACT], "refold send --json (a retry)");
    server.stop().await;
}
