//! What operators meet in a deployment's first weeks: idle, slow and surplus
//! connections; health that says whether the store still writes; metrics to
//! alert on without scraping JSON.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use refold::api::ConnectionLimits;
use reqwest::Method;
use serde_json::Value;
use support::http::{TestServer, expect_problem};
use support::temp_dir;

const BANK: &str = refold_test_guests::BANK_ACCOUNT;
const BALANCES: &str = refold_test_guests::ACCOUNT_BALANCES;

fn connect(s: &TestServer) -> TcpStream {
    let stream = TcpStream::connect(s.server.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

/// Reads until the server closes the connection; what it said on the way.
fn read_to_close(stream: &mut TcpStream) -> Result<String, std::io::Error> {
    let mut said = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Ok(String::from_utf8_lossy(&said).into_owned()),
            Ok(n) => said.extend_from_slice(&buf[..n]),
            // A reset is a close too.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Ok(String::from_utf8_lossy(&said).into_owned());
            }
            Err(e) => return Err(e),
        }
    }
}

async fn healthz_within(s: &TestServer, within: Duration) {
    let started = Instant::now();
    let r = tokio::time::timeout(within, s.request(Method::GET, "/healthz").send())
        .await
        .expect("healthz answers promptly")
        .unwrap();
    assert_eq!(
        r.status().as_u16(),
        200,
        "healthz after {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_slow_and_surplus_connections_never_stop_the_server_serving_others() {
    let dir = temp_dir();
    let mut config = support::http::config(dir.path());
    config.connections = ConnectionLimits {
        max_connections: 600,
        header_timeout: Duration::from_secs(1),
        ..ConnectionLimits::default()
    };
    config.limits.body_timeout = Duration::from_secs(1);
    let s = TestServer::start_with(config).await;

    // The server raised this process's soft file limit to the hard one.
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    assert_eq!(
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
        0
    );
    assert_eq!(limit.rlim_cur, limit.rlim_max, "soft file limit raised");

    // Many idle connections (no byte sent), connections that trickle a
    // request head, and one that trickles a body.
    let mut idle: Vec<TcpStream> = (0..500).map(|_| connect(&s)).collect();
    let trickling: Vec<TcpStream> = (0..40)
        .map(|_| {
            let mut c = connect(&s);
            c.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n")
                .unwrap();
            c
        })
        .collect();
    let mut slow_body = connect(&s);
    slow_body
        .write_all(
            b"POST /v1/admin/backup HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"pa",
        )
        .unwrap();
    // Others are served meanwhile, promptly.
    for _ in 0..5 {
        healthz_within(&s, Duration::from_secs(2)).await;
    }
    // The trickling clients keep sending header bytes: still closed once the
    // head has taken longer than the header timeout.
    let trickler = std::thread::spawn(move || {
        let started = Instant::now();
        let mut trickling = trickling;
        while started.elapsed() < Duration::from_secs(4) && !trickling.is_empty() {
            trickling.retain_mut(|c| c.write_all(b"x-slow: 1\r\n").is_ok());
            std::thread::sleep(Duration::from_millis(200));
        }
        trickling.len()
    });

    // Idle connections are closed after the header timeout, not held forever.
    let started = Instant::now();
    for c in &mut idle {
        read_to_close(c).expect("an idle connection is closed by the server");
    }
    let closed_after = started.elapsed();
    assert!(
        closed_after < Duration::from_secs(5),
        "idle connections closed after {closed_after:?}"
    );
    assert_eq!(
        tokio::task::spawn_blocking(move || trickler.join().unwrap())
            .await
            .unwrap(),
        0,
        "every connection trickling a request head was closed"
    );
    // The trickled body gets a 408 with a problem.
    let answer = read_to_close(&mut slow_body).unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"code\":\"body_timeout\""), "{answer}");

    // A keep-alive connection idle after a request is closed too.
    let mut kept = connect(&s);
    kept.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    let idle_since = Instant::now();
    let answer = read_to_close(&mut kept).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        idle_since.elapsed() < Duration::from_secs(5),
        "an idle keep-alive connection closed after {:?}",
        idle_since.elapsed()
    );
    healthz_within(&s, Duration::from_secs(2)).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_over_the_cap_is_answered_503_and_the_cap_frees_up() {
    let dir = temp_dir();
    let mut config = support::http::config(dir.path());
    config.connections = ConnectionLimits {
        max_connections: 30,
        header_timeout: Duration::from_secs(1),
        ..ConnectionLimits::default()
    };
    let s = TestServer::start_with(config).await;
    let held: Vec<TcpStream> = (0..30).map(|_| connect(&s)).collect();
    // Let the server accept them all.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut surplus = connect(&s);
    surplus
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    let answer = read_to_close(&mut surplus).unwrap();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("retry-after: 1"), "{answer}");
    assert!(answer.contains("application/problem+json"), "{answer}");
    let body: Value = serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["code"], "too_many_connections");
    assert_eq!(body["status"], 503);
    // Once the idle ones are closed by the header timeout, there is room again.
    drop(held);
    let started = Instant::now();
    loop {
        match s.request(Method::GET, "/healthz").send().await {
            Ok(r) if r.status().as_u16() == 200 => break,
            other => {
                assert!(
                    started.elapsed() < Duration::from_secs(5),
                    "still refused: {other:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_metrics_say_when_the_store_stopped_writing() {
    let dir = temp_dir();
    let s = TestServer::start(dir.path()).await;
    assert_eq!(s.upload("bank-account", "1.0.0", BANK).await.status(), 201);
    let opened = s
        .send("bank-account", "acc-1", r#"{"type":"Open","owner":"Ada"}"#)
        .await;
    assert_eq!(opened.status().as_u16(), 200);
    let (status, health) = s.get_json("/healthz").await;
    assert_eq!((status, &health["writable"]), (200, &Value::Bool(true)));
    let metrics = scrape(&s).await;
    assert!(metrics.contains("\nrefold_store_writable 1\n"), "{metrics}");

    // The disk fails under the next write: that command is not acknowledged,
    // every later write is refused, and health says so until a restart.
    s.server
        .app
        .store
        .as_sled()
        .expect("a sled server")
        .inject_write_fault();
    let failed = s
        .send("bank-account", "acc-1", r#"{"type":"Deposit","amount":5}"#)
        .await;
    assert_eq!(failed.status().as_u16(), 500, "{:?}", failed.text().await);
    let refused = s
        .send("bank-account", "acc-1", r#"{"type":"Deposit","amount":5}"#)
        .await;
    expect_problem(refused, 503, "store_unavailable").await;
    let health = s.request(Method::GET, "/healthz").send().await.unwrap();
    let health = expect_problem(health, 503, "store_not_writable").await;
    assert_eq!(health["writable"], false);
    assert!(
        health["reason"]
            .as_str()
            .is_some_and(|r| r.contains("injected fault")),
        "{health}"
    );
    let metrics = scrape(&s).await;
    assert!(metrics.contains("\nrefold_store_writable 0\n"), "{metrics}");
    s.stop().await;
}

async fn scrape(s: &TestServer) -> String {
    let r = s.request(Method::GET, "/metrics").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    r.text().await.unwrap()
}

/// The value of one sample line, found by its name and labels.
fn sample(metrics: &str, name_and_labels: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        line.strip_prefix(name_and_labels)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.parse().ok())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projection_versions_and_guest_queues_are_labelled_gauges() {
    let dir = temp_dir();
    let s = TestServer::start(dir.path()).await;
    assert_eq!(s.upload("bank-account", "1.0.0", BANK).await.status(), 201);
    for i in 0..20 {
        let r = s
            .send(
                "bank-account",
                &format!("acc-{i}"),
                r#"{"type":"Open","owner":"Ada"}"#,
            )
            .await;
        assert_eq!(r.status().as_u16(), 200);
    }
    assert_eq!(
        s.upload("account-balances", "1.0.0", BALANCES)
            .await
            .status(),
        201
    );
    let view = support::projection::wait_for_version(&s, "account-balances", "1.0.0", |v| {
        support::projection::caught_up(v)
    })
    .await;
    // The replay's numbers stay once it has caught up.
    let replay = &view["last_replay"];
    assert_eq!(
        (&replay["from_position"], &replay["to_position"]),
        (&Value::from(0), &Value::from(20)),
        "{view}"
    );
    assert!(
        replay["seconds"].as_f64().is_some_and(|s| s > 0.0),
        "{view}"
    );
    assert!(
        replay["events_per_second"]
            .as_f64()
            .is_some_and(|r| r > 0.0),
        "{view}"
    );
    let metrics = scrape(&s).await;
    let labels = r#"{projection="account-balances",version="1.0.0"}"#;
    assert_eq!(
        sample(&metrics, &format!("refold_projection_position{labels}")),
        Some(20.0),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, &format!("refold_projection_lag_events{labels}")),
        Some(0.0)
    );
    assert_eq!(
        sample(&metrics, &format!("refold_projection_live{labels}")),
        Some(1.0)
    );
    for (state, value) in [("caught_up", 1.0), ("catching_up", 0.0), ("failed", 0.0)] {
        let line = format!(
            r#"refold_projection_state{{projection="account-balances",version="1.0.0",state="{state}"}}"#
        );
        assert_eq!(sample(&metrics, &line), Some(value), "{line}");
    }
    assert!(metrics.contains("refold_guest_calls_queued "), "{metrics}");
    assert!(metrics.contains("refold_state_cache_bytes "), "{metrics}");
    s.stop().await;
}

#[test]
fn the_process_exits_promptly_after_a_graceful_stop() {
    let dir = temp_dir();
    let mut served = support::process::serve(dir.path(), &[]);
    let addr = served.url.trim_start_matches("http://").to_string();
    // An idle keep-alive connection, a live subscription and a half-open one
    // must not hold the exit up.
    let mut kept = TcpStream::connect(&addr).unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    let mut subscription = TcpStream::connect(&addr).unwrap();
    subscription
        .write_all(b"GET /v1/events/subscribe HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    let _half_open = TcpStream::connect(&addr).unwrap();
    let mut buf = [0u8; 512];
    for c in [&mut kept, &mut subscription] {
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        assert!(c.read(&mut buf).unwrap() > 0, "answered before the stop");
    }
    let started = Instant::now();
    assert!(served.sigterm().success());
    let took = started.elapsed();
    let log = served.log_text();
    assert!(log.contains("refold stopped"), "{log}");
    // Generous for a loaded machine; the wait reported before was 1.7 s.
    assert!(
        took < Duration::from_millis(1000),
        "exited {took:?} after SIGTERM"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_stops_reading_is_cut_off_and_cannot_hold_up_a_shutdown() {
    let dir = temp_dir();
    let mut config = support::http::config(dir.path());
    config.connections.write_timeout = Duration::from_secs(1);
    let s = TestServer::start_with(config).await;
    // A subscriber that reads the response head, then nothing more.
    let mut stalled = connect(&s);
    stalled
        .write_all(b"GET /v1/events/subscribe HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    let mut head = [0u8; 256];
    assert!(stalled.read(&mut head).unwrap() > 0);
    // Enough event bytes to fill the socket buffers on both sides.
    let store = s.server.app.store.as_sled().expect("a sled server").clone();
    let data = format!(r#"{{"pad":"{}"}}"#, "x".repeat(60 << 10));
    for batch in 0..40 {
        let events = (0..10)
            .map(|_| refold::store::NewEvent::new("Padded", data.clone()))
            .collect();
        let stream = refold::store::StreamId::new("padding", format!("p-{batch}")).unwrap();
        store
            .append(&stream, refold::store::ExpectedVersion::Any, events)
            .await
            .unwrap();
    }
    // Within the write timeout (plus a margin for a busy machine) the server
    // has given up on it: no subscriber is left.
    let started = Instant::now();
    loop {
        let metrics = scrape(&s).await;
        if sample(&metrics, "refold_subscribers") == Some(0.0) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the stalled subscriber is still held: {metrics}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // And a stop is not held up by it.
    tokio::time::timeout(Duration::from_secs(5), s.stop())
        .await
        .expect("the server stops promptly");
    drop(stalled);
}
