//! An online backup taken while commands keep landing is a data directory
//! that opens on its own, holding exactly the log up to the backup's
//! position: gapless, with every stream's version and index consistent.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use refold::store::{Direction, EventFilter, Store, StoreConfig, StreamId};
use reqwest::Method;
use serde_json::{Value, json};
use support::http::{TestServer, expect_problem};
use support::temp_dir;

#[tokio::test(flavor = "multi_thread")]
async fn a_backup_under_load_is_a_consistent_data_directory() {
    let dir = temp_dir();
    let s = Arc::new(TestServer::start(dir.path()).await);
    assert_eq!(
        s.upload("bank-account", "1.0.0", refold_test_guests::BANK_ACCOUNT)
            .await
            .status()
            .as_u16(),
        201
    );
    for i in 0..8 {
        let r = s
            .send(
                "bank-account",
                &format!("acc-{i}"),
                r#"{"type":"Open","owner":"o"}"#,
            )
            .await;
        assert_eq!(r.status().as_u16(), 200);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..8)
        .map(|i| {
            let (s, stop) = (s.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let r = s
                        .send(
                            "bank-account",
                            &format!("acc-{i}"),
                            r#"{"type":"Deposit","amount":5}"#,
                        )
                        .await;
                    assert_eq!(r.status().as_u16(), 200);
                }
            })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let backup_dir = temp_dir();
    let target = backup_dir.path().join("copy");
    let r = s
        .request(Method::POST, "/v1/admin/backup")
        .json(&json!({"path": target}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let report: Value = r.json().await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    let position = report["position"].as_u64().unwrap();
    assert!(
        position > 8 && position < s.server.app.store.head(),
        "taken mid-load: {report} vs head {}",
        s.server.app.store.head()
    );
    assert_eq!(report["events"], position);
    assert_eq!(report["module_files"], 1);

    // A second backup into a non-empty directory is refused.
    let again = s
        .request(Method::POST, "/v1/admin/backup")
        .json(&json!({"path": target}))
        .send()
        .await
        .unwrap();
    expect_problem(again, 409, "backup_target_not_empty").await;
    let relative = s
        .request(Method::POST, "/v1/admin/backup")
        .json(&json!({"path": "relative/dir"}))
        .send()
        .await
        .unwrap();
    expect_problem(relative, 400, "invalid_backup_path").await;
    // A bad target is the caller's mistake, never a storage failure, and
    // leaves nothing behind.
    let a_file = backup_dir.path().join("a-file");
    std::fs::write(&a_file, b"x").unwrap();
    let entries = || {
        let mut names: Vec<_> = std::fs::read_dir(backup_dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        names
    };
    let before = entries();
    for (path, status, code) in [
        (json!(a_file), 409, "backup_target_unusable"),
        (json!(a_file.join("below")), 409, "backup_target_unusable"),
        (
            json!(backup_dir.path().join("no/such/parent")),
            409,
            "backup_target_unusable",
        ),
        (
            json!(format!("{}/nul\u{0}byte", backup_dir.path().display())),
            400,
            "invalid_backup_path",
        ),
        (
            json!(format!("{}/../escape", backup_dir.path().display())),
            400,
            "invalid_backup_path",
        ),
    ] {
        let r = s
            .request(Method::POST, "/v1/admin/backup")
            .json(&json!({ "path": path }))
            .send()
            .await
            .unwrap();
        expect_problem(r, status, code).await;
    }
    assert_eq!(entries(), before, "a refused backup left something behind");
    // The CLI asks for the same.
    let by_cli = backup_dir.path().join("by-cli");
    let cli = std::process::Command::new(support::process::BIN)
        .env("REFOLD_SERVER", &s.base)
        .arg("backup")
        .arg(&by_cli)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&cli.stdout);
    assert!(
        cli.status.success(),
        "{said} {}",
        String::from_utf8_lossy(&cli.stderr)
    );
    assert!(said.starts_with("backed up "), "{said}");
    assert!(by_cli.join("events").is_dir() && by_cli.join("modules").is_dir());
    Arc::try_unwrap(s).ok().expect("writers done").stop().await;

    // The copy: gapless up to the position, each stream's version = its events.
    let copy = Store::open(StoreConfig::new(target.join("events"))).unwrap();
    assert_eq!(copy.head(), position);
    let events = support::read_whole_log(&copy);
    support::assert_gapless(&events, position);
    let mut per_stream: HashMap<StreamId, u64> = HashMap::new();
    for e in &events {
        let n = per_stream.entry(e.stream.clone()).or_default();
        *n += 1;
        assert_eq!(e.version, *n, "versions are contiguous in {}", e.stream);
    }
    for (stream, n) in &per_stream {
        assert_eq!(copy.stream_version(stream).unwrap(), *n, "{stream}");
        let read = copy
            .read_stream(stream, 1, Direction::Forward, 10_000)
            .unwrap();
        assert_eq!(read.len() as u64, *n);
    }
    assert!(
        copy.read_all(position + 1, 10, &EventFilter::all())
            .unwrap()
            .events
            .is_empty()
    );
    copy.close().await;
    drop(copy);

    // And a server opens it as its data directory: modules, state, new commands.
    let restored = TestServer::start(&target).await;
    let (_, modules) = restored.get_json("/v1/modules/bank-account").await;
    assert_eq!(modules["active_version"], "1.0.0", "{modules}");
    let (status, state) = restored.get_json("/v1/aggregates/bank-account/acc-0").await;
    assert_eq!(status, 200);
    let version = state["version"].as_u64().unwrap();
    let r = restored
        .send("bank-account", "acc-0", r#"{"type":"Deposit","amount":1}"#)
        .await;
    assert_eq!(r.status().as_u16(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["version"], version + 1);
    assert_eq!(body["position"], position + 1);
    restored.stop().await;
}
