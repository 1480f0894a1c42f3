//! `refold migrate --to postgres://...`: a stopped sled data directory's log
//! copied into PostgreSQL, verified, and then extended there: the copy reads
//! back event for event (every field and chain value), stream versions and
//! command records carry over, a PostgreSQL host appends after it with the
//! chain continuing, and a second migration into the same database is refused.

mod support;

use std::collections::BTreeMap;
use std::process::Command;

use refold::store::integrity::{ZERO, chain_next};
use refold::store::pg::PgStore;
use refold::store::{
    Direction, Durability, EventFilter, EventMetadata, EventStore, ExpectedVersion, NewEvent,
    StreamId, canonical_body,
};
use support::{event, stream, temp_dir};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sled_log_moves_to_postgres_byte_for_byte_and_goes_on_there() {
    let dir = temp_dir();
    let data = dir.path().join("data");
    let store = refold::store::Store::open(
        refold::store::StoreConfig::new(data.join("events")).durability(Durability::None),
    )
    .unwrap();
    for i in 0..300u64 {
        let s = stream(&format!("a{}", i % 17));
        let mut e = event(if i % 3 == 0 { "Deposited" } else { "Withdrawn" }, i);
        if i % 5 == 0 {
            e = e.at_schema_version(2);
        }
        if i % 7 == 0 {
            e.metadata = EventMetadata {
                correlation_id: Some(format!("corr-{i}")),
                causation_id: None,
                command_id: Some(format!("cmd-{i}")),
                producer: Some("bank-account@1.0.0".into()),
                extra: BTreeMap::from([("k".to_string(), format!("v{i}"))]),
            };
            store
                .append_command(
                    &s,
                    ExpectedVersion::Any,
                    vec![e],
                    &format!("cmd-{i}"),
                    Some([i as u8; 32]),
                    None,
                )
                .await
                .unwrap();
        } else {
            store
                .append(&s, ExpectedVersion::Any, vec![e, event("Noted", i)])
                .await
                .unwrap();
        }
    }
    let source = store
        .read_all(1, usize::MAX, &EventFilter::all())
        .unwrap()
        .events;
    let head = store.head();
    store.close().await;
    drop(store);

    let url = support::pg::database();
    let out = Command::new(env!("CARGO_BIN_EXE_refold"))
        .args([
            "migrate",
            "--data-dir",
            data.to_str().unwrap(),
            "--to",
            &url,
            "--json",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "migrate failed: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(report["events"], head);
    assert_eq!(report["streams"], 17);
    assert_eq!(report["command_records"], 43);
    assert_eq!(report["verified"], true);

    // Event for event, every field and chain value.
    let pg = PgStore::open(&url).await.unwrap();
    assert_eq!(pg.head(), head);
    let copied = pg
        .read_all(1, usize::MAX, &EventFilter::all())
        .await
        .unwrap()
        .events;
    assert_eq!(copied, source);
    assert_eq!(
        pg.stream_version(&stream("a3")).await.unwrap(),
        store_version(&source, "a3")
    );
    let record = pg
        .command_record("cmd-14")
        .await
        .unwrap()
        .expect("carried over");
    assert_eq!(record.fingerprint, Some([14u8; 32]));
    // A retry of a migrated command is answered from its record.
    let retry = pg
        .append_command(
            &record.stream,
            ExpectedVersion::Any,
            vec![event("E", 1)],
            "cmd-14",
            Some([14u8; 32]),
        )
        .await
        .unwrap();
    assert!(retry.repeated);
    assert_eq!(retry.result, record.result);

    // The log goes on in PostgreSQL: positions and the chain continue.
    let r = pg
        .append(
            &stream("a3"),
            ExpectedVersion::Exact(store_version(&source, "a3")),
            vec![event("After", 1)],
        )
        .await
        .unwrap();
    assert_eq!(r.first_position, head + 1);
    let all = pg
        .read_all(1, usize::MAX, &EventFilter::all())
        .await
        .unwrap()
        .events;
    let mut previous = ZERO;
    for e in &all {
        assert_eq!(
            e.chain,
            chain_next(&previous, e.position, &canonical_body(e))
        );
        previous = e.chain;
    }
    let tail = pg
        .read_stream(&stream("a3"), u64::MAX, Direction::Backward, 1)
        .await
        .unwrap();
    assert_eq!(tail[0].event_type, "After");
    pg.close().await;

    // A second migration into a database that holds a log is refused, and changes nothing.
    let again = Command::new(env!("CARGO_BIN_EXE_refold"))
        .args([
            "migrate",
            "--data-dir",
            data.to_str().unwrap(),
            "--to",
            &url,
        ])
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already holds a log"));
    let pg = PgStore::open(&url).await.unwrap();
    assert_eq!(
        pg.read_all(1, 0, &EventFilter::all()).await.unwrap().head,
        head + 1
    );
    pg.close().await;

    // Not a data directory: a clear error.
    let wrong = Command::new(env!("CARGO_BIN_EXE_refold"))
        .args([
            "migrate",
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--to",
            &url,
        ])
        .output()
        .unwrap();
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("not a Refold data directory"));
}

fn store_version(events: &[refold::store::RecordedEvent], id: &str) -> u64 {
    let s = StreamId::new("account", id).unwrap();
    events
        .iter()
        .filter(|e| e.stream == s)
        .map(|e| e.version)
        .max()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_servers_directory_is_not_migrated() {
    let dir = temp_dir();
    let data = dir.path().join("data");
    let store = refold::store::Store::open(
        refold::store::StoreConfig::new(data.join("events")).durability(Durability::None),
    )
    .unwrap();
    store
        .append(
            &stream("x"),
            ExpectedVersion::Any,
            vec![NewEvent::new("E", "{}")],
        )
        .await
        .unwrap();
    // The store is open (as a server holds it): the lock refuses the copy.
    let url = support::pg::database();
    let out = Command::new(env!("CARGO_BIN_EXE_refold"))
        .args([
            "migrate",
            "--data-dir",
            data.to_str().unwrap(),
            "--to",
            &url,
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("in use"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    store.close().await;
}

/// The user's path: a sled server with modules and history is stopped,
/// migrated, and a `refold serve --store postgres://` host carries on with
/// the same modules, state and projection, without uploading anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migrated_directory_serves_on_postgres_with_its_modules() {
    let dir = temp_dir();
    let data = dir.path().join("data");
    let sled_host = support::process::serve(&data, &[]);
    let client = reqwest::Client::new();
    for (name, path) in [
        ("bank-account", refold_test_guests::BANK_ACCOUNT),
        ("account-balances", refold_test_guests::ACCOUNT_BALANCES),
    ] {
        let r = client
            .put(format!(
                "{}/v1/modules/{name}/1.0.0?activate=true",
                sled_host.url
            ))
            .body(std::fs::read(path).unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 201, "{}", r.text().await.unwrap());
    }
    let send = |base: String, body: &'static str| {
        let client = client.clone();
        async move {
            let r = client
                .post(format!("{base}/v1/aggregates/bank-account/acc-1/commands"))
                .body(body)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let body: serde_json::Value = r.json().await.unwrap();
            assert_eq!(status, 200, "{body}");
            body
        }
    };
    send(sled_host.url.clone(), r#"{"type":"Open","owner":"Ada"}"#).await;
    send(sled_host.url.clone(), r#"{"type":"Deposit","amount":70}"#).await;
    let mut sled_host = sled_host;
    assert!(sled_host.sigterm().success());

    let url = support::pg::database();
    let out = Command::new(env!("CARGO_BIN_EXE_refold"))
        .args([
            "migrate",
            "--data-dir",
            data.to_str().unwrap(),
            "--to",
            &url,
            "--json",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(report["modules"], 2, "{report}");

    let pg_host = support::process::serve(&dir.path().join("pg-host"), &["--store", &url]);
    let answer = send(pg_host.url.clone(), r#"{"type":"Deposit","amount":5}"#).await;
    assert_eq!(answer["version"], 3, "{answer}");
    assert_eq!(answer["module"], "bank-account@1.0.0", "{answer}");
    // The projection was live on sled; on PostgreSQL it replays, and stays live.
    let started = std::time::Instant::now();
    loop {
        let r = client
            .get(format!(
                "{}/v1/projections/account-balances/docs/account/acc-1",
                pg_host.url
            ))
            .send()
            .await
            .unwrap();
        if r.status().as_u16() == 200 {
            let doc: serde_json::Value = r.json().await.unwrap();
            if doc["balance"] == 75 {
                assert_eq!(doc["deposits"], 2, "{doc}");
                break;
            }
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "the projection replays"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
