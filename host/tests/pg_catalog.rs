//! The module registry on PostgreSQL, shared by hosts: uploads with their
//! bytes, conflicts, activations serialized across hosts with their history,
//! routing and check records, snapshots, and every host learning of a change
//! of what runs within a second.

mod support;

use support::pg::module_record as record;

use std::time::{Duration, Instant};

use refold::store::pg::PgStore;
use refold::store::{CanaryRecord, CheckRecord, ModulePut, Routing, StreamId};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_and_activations_are_shared_and_reach_every_host_within_a_second() {
    let url = support::pg::database();
    let (a, b) = (
        PgStore::open(&url).await.unwrap(),
        PgStore::open(&url).await.unwrap(),
    );

    // An upload on a is on b, bytes and all, byte for byte.
    let bytes: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let r1 = record("bank-account", "1.0.0", &bytes);
    assert_eq!(a.put_module(&r1, &bytes).await.unwrap(), ModulePut::Created);
    assert_eq!(
        b.module("bank-account", "1.0.0").await.unwrap(),
        Some(r1.clone())
    );
    assert_eq!(
        b.module_bytes(&r1.digest).await.unwrap(),
        Some(bytes.clone())
    );
    assert_eq!(
        b.put_module(&r1, &bytes).await.unwrap(),
        ModulePut::AlreadyPresent(r1.clone())
    );
    let other = record("bank-account", "1.0.0", b"other bytes");
    assert_eq!(
        b.put_module(&other, b"other bytes").await.unwrap(),
        ModulePut::Conflict(r1.clone())
    );
    assert!(matches!(
        a.put_module(&record("", "1.0.0", b"x"), b"x").await,
        Err(refold::store::StoreError::InvalidStream(_))
    ));

    // An activation on a reaches b's watcher within a second.
    let mut watch_b = b.watch_catalog();
    watch_b.borrow_and_update();
    let started = Instant::now();
    a.set_active_module("bank-account", "1.0.0").await.unwrap();
    tokio::time::timeout(Duration::from_secs(1), watch_b.changed())
        .await
        .expect("b heard of the activation within a second")
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(
        b.active_module("bank-account").await.unwrap().as_deref(),
        Some("1.0.0")
    );
    // Activating the active version changes nothing (no history entry).
    b.set_active_module("bank-account", "1.0.0").await.unwrap();
    assert_eq!(a.activations("bank-account").await.unwrap().len(), 1);

    // Routing and check records round-trip, across hosts.
    let r2 = record("bank-account", "2.0.0", b"v2");
    a.put_module(&r2, b"v2").await.unwrap();
    let routing = Routing {
        canary: Some(CanaryRecord {
            version: "2.0.0".into(),
            percent: 10,
            since_ms: 5,
        }),
        retired: vec![],
    };
    b.set_routing("bank-account", None, Some(&routing))
        .await
        .unwrap();
    assert_eq!(a.routing("bank-account").await.unwrap(), routing);
    b.set_routing("bank-account", Some("2.0.0"), Some(&Routing::default()))
        .await
        .unwrap();
    assert_eq!(a.routing("bank-account").await.unwrap(), Routing::default());
    assert_eq!(
        a.active_module("bank-account").await.unwrap().as_deref(),
        Some("2.0.0")
    );
    let check = CheckRecord {
        digest: r2.digest,
        passed: true,
        streams: 3,
        failed: 0,
        differing: 1,
        sampled: false,
        finished_at_ms: 9,
        stable: Some("1.0.0".into()),
    };
    a.set_check_record("bank-account", "2.0.0", &check)
        .await
        .unwrap();
    assert_eq!(
        b.check_record("bank-account", "2.0.0").await.unwrap(),
        Some(check)
    );
    assert_eq!(
        b.active_modules().await.unwrap(),
        vec![("bank-account".into(), "2.0.0".into())]
    );

    // Snapshots keep the newest version; process checkpoints never go back.
    let s = StreamId::new("account", "a1").unwrap();
    a.save_snapshot(&s, &r1.digest, 5, b"five").await.unwrap();
    b.save_snapshot(&s, &r1.digest, 3, b"three").await.unwrap();
    assert_eq!(
        a.load_snapshot(&s, &r1.digest).await.unwrap(),
        Some((5, b"five".to_vec()))
    );
    assert_eq!(a.load_snapshot(&s, &r2.digest).await.unwrap(), None);
    a.set_process_checkpoint("transfers", 40).await.unwrap();
    b.set_process_checkpoint("transfers", 30).await.unwrap();
    assert_eq!(b.process_checkpoint("transfers").await.unwrap(), 40);

    a.delete_module("bank-account", "1.0.0").await.unwrap();
    assert_eq!(b.module("bank-account", "1.0.0").await.unwrap(), None);
    assert_eq!(b.modules().await.unwrap(), vec![r2]);
    a.close().await;
    b.close().await;
}

/// Activations of one name from three hosts at once are serialized: the
/// history holds each change once, in order, and ends at the active version.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_activations_across_hosts_keep_one_consistent_history() {
    let url = support::pg::database();
    let mut hosts = Vec::new();
    for _ in 0..3 {
        hosts.push(PgStore::open(&url).await.unwrap());
    }
    for v in 0..4 {
        let bytes = format!("v{v}").into_bytes();
        hosts[0]
            .put_module(&record("m", &format!("{v}.0.0"), &bytes), &bytes)
            .await
            .unwrap();
    }
    let tasks: Vec<_> = (0..24)
        .map(|i| {
            let host = hosts[i % 3].clone();
            tokio::spawn(
                async move { host.set_active_module("m", &format!("{}.0.0", i % 4)).await },
            )
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let history = hosts[1].activations("m").await.unwrap();
    assert!(!history.is_empty());
    for pair in history.windows(2) {
        assert_ne!(
            pair[0].version, pair[1].version,
            "no activation of the active version is recorded"
        );
        assert!(pair[0].at_ms <= pair[1].at_ms);
    }
    assert_eq!(
        hosts[2].active_module("m").await.unwrap().as_deref(),
        Some(history.last().unwrap().version.as_str())
    );
    for h in hosts {
        h.close().await;
    }
}

/// Only a registered version is made active, and the active version is never
/// removed, even when one host removes a version while another activates it
/// (a drop racing a promotion): exactly one of the two happens, and the
/// active version always names a registered module.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removal_and_an_activation_of_one_version_on_two_hosts_never_both_happen() {
    let url = support::pg::database();
    let (a, b) = (
        PgStore::open(&url).await.unwrap(),
        PgStore::open(&url).await.unwrap(),
    );
    let err = a.set_active_module("m", "9.9.9").await.unwrap_err();
    assert_eq!(err.code(), "not_found", "{err}");
    let bytes = b"v0".to_vec();
    a.put_module(&record("m", "0", &bytes), &bytes)
        .await
        .unwrap();
    a.set_active_module("m", "0").await.unwrap();
    let err = b.delete_module("m", "0").await.unwrap_err();
    assert_eq!(err.code(), "module_active", "{err}");

    let (mut activated, mut removed) = (0, 0);
    for round in 1..=30 {
        let version = round.to_string();
        let bytes = format!("v{round}").into_bytes();
        a.put_module(&record("m", &version, &bytes), &bytes)
            .await
            .unwrap();
        let (remove, activate) = tokio::join!(
            tokio::spawn({
                let (a, version) = (a.clone(), version.clone());
                async move { a.delete_module("m", &version).await }
            }),
            tokio::spawn({
                let (b, version) = (b.clone(), version.clone());
                async move { b.set_active_module("m", &version).await }
            }),
        );
        match (remove.unwrap(), activate.unwrap()) {
            (Err(e), Ok(())) if e.code() == "module_active" => activated += 1,
            (Ok(()), Err(e)) if e.code() == "not_found" => removed += 1,
            other => panic!("round {round}: {other:?}"),
        }
        let active = b
            .active_module("m")
            .await
            .unwrap()
            .expect("an active version");
        assert!(
            a.module("m", &active).await.unwrap().is_some(),
            "round {round}: the active version {active} is registered"
        );
    }
    println!("of 30 races: {activated} activations won, {removed} removals");
    a.close().await;
    b.close().await;
}
