//! Leases with fencing tokens and leased read models on PostgreSQL: one
//! runner per projection version across hosts, a lapsed lease taken over
//! with a new token, a runner that lost its lease unable to commit, and the
//! read model's contents (documents, scans, skips, schema versions,
//! generations, scratch) as on sled.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use refold::store::pg::{PgStore, Refused};
use refold::store::{Durability, ExpectedVersion, NewEvent, ProjectionCheckpoint, SkipRecord};

const TTL: Duration = Duration::from_millis(300);

fn cp(position: u64) -> ProjectionCheckpoint {
    ProjectionCheckpoint {
        position,
        events_applied: position,
        events_skipped: 0,
    }
}

fn docs(pairs: &[(&str, Option<&str>)]) -> BTreeMap<String, Option<String>> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.map(str::to_string)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_holder_at_a_time_and_a_stale_holder_cannot_commit() {
    let url = support::pg::database();
    let (a, b) = (
        PgStore::open(&url).await.unwrap(),
        PgStore::open(&url).await.unwrap(),
    );
    let (la, lb) = (a.leases(), b.leases());
    let name = "account-balances@1.0.0";
    let (ma, mb) = (
        a.read_model("account-balances", "1.0.0").await.unwrap(),
        b.read_model("account-balances", "1.0.0").await.unwrap(),
    );

    let lease_a = la
        .acquire(name, "host-a", TTL)
        .await
        .unwrap()
        .expect("free");
    assert_eq!(lease_a.token, 1);
    assert!(
        lb.acquire(name, "host-b", TTL).await.unwrap().is_none(),
        "held by a"
    );
    assert_eq!(
        la.acquire(name, "host-a", TTL)
            .await
            .unwrap()
            .unwrap()
            .token,
        1,
        "a re-takes its own"
    );

    ma.commit(
        &lease_a,
        0,
        &docs(&[("x", Some("10")), ("y", Some("1"))]),
        &cp(10),
        None,
        &[],
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(
        mb.get("x").await.unwrap().as_deref(),
        Some("10"),
        "visible to every host"
    );
    assert_eq!(mb.checkpoint().await.unwrap(), cp(10));
    la.renew(&lease_a, TTL).await.unwrap().unwrap();

    // a stops renewing (paused, partitioned); b takes over once it lapses.
    tokio::time::sleep(TTL + Duration::from_millis(150)).await;
    let lease_b = lb
        .acquire(name, "host-b", TTL)
        .await
        .unwrap()
        .expect("lapsed");
    assert_eq!(lease_b.token, 2, "a takeover bumps the token");
    // a wakes up still believing it holds the lease: fenced off.
    assert!(matches!(
        la.renew(&lease_a, TTL).await.unwrap(),
        Err(Refused::LeaseLost { .. })
    ));
    assert!(matches!(
        ma.commit(
            &lease_a,
            10,
            &docs(&[("x", Some("20"))]),
            &cp(20),
            None,
            &[]
        )
        .await
        .unwrap(),
        Err(Refused::LeaseLost { .. })
    ));
    assert_eq!(
        mb.get("x").await.unwrap().as_deref(),
        Some("10"),
        "nothing of a's was written"
    );
    assert_eq!(mb.checkpoint().await.unwrap(), cp(10));
    assert!(
        la.acquire(name, "host-a", TTL).await.unwrap().is_none(),
        "b holds it now"
    );

    // The checkpoint is compared and set: a commit from the wrong place is refused.
    assert_eq!(
        mb.commit(&lease_b, 0, &docs(&[]), &cp(5), None, &[])
            .await
            .unwrap(),
        Err(Refused::CheckpointMoved {
            name: name.into(),
            expected: 0,
            actual: 10
        })
    );
    mb.commit(
        &lease_b,
        10,
        &docs(&[("x", Some("20")), ("y", None)]),
        &cp(20),
        None,
        &[],
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(ma.get("x").await.unwrap().as_deref(), Some("20"));
    assert_eq!(ma.get("y").await.unwrap(), None, "deleted");
    a.close().await;
    b.close().await;
}

/// Standbys ask for a running lease every second on every host: a refused
/// try must not lock or write the row (it would be a write transaction per
/// version, per host, per second). The row's xmax names any transaction that
/// locked it, so a try that locked the row shows there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_try_neither_locks_nor_writes_the_running_lease() {
    let url = support::pg::database();
    let (a, b) = (
        PgStore::open(&url).await.unwrap(),
        PgStore::open(&url).await.unwrap(),
    );
    let name = "account-balances@1.0.0";
    let long = Duration::from_secs(60);
    let held = a.leases().acquire(name, "host-a", long).await.unwrap();
    assert_eq!(held.unwrap().token, 1);
    let row = || {
        support::pg::shared().query(
            &url,
            "SELECT xmin::text || '/' || xmax::text || '/' || token || '/' || holder \
             FROM refold_leases WHERE name = 'account-balances@1.0.0'",
        )
    };
    let before = row();
    assert!(before.ends_with("/0/1/host-a\n"), "{before}");
    for _ in 0..3 {
        assert!(
            b.leases()
                .acquire(name, "host-b", long)
                .await
                .unwrap()
                .is_none()
        );
    }
    assert_eq!(row(), before, "a refused try locked or wrote the lease row");
    // The holder's own try still renews (a write, the same token), and once
    // the lease lapses the standby's try takes it with a new token.
    let renewed = a.leases().acquire(name, "host-a", TTL).await.unwrap();
    assert_eq!(renewed.unwrap().token, 1);
    assert_ne!(row(), before, "a renewal writes");
    tokio::time::sleep(TTL + Duration::from_millis(100)).await;
    let taken = b.leases().acquire(name, "host-b", long).await.unwrap();
    assert_eq!(taken.expect("lapsed").token, 2);
    a.close().await;
    b.close().await;
}

/// Three runners on three hosts fold positions into one counter under one
/// lease, each pausing past the lease time now and then, so the lease moves
/// between them: every position is applied exactly once (the counter equals
/// the checkpoint), however often it moved.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_moving_lease_applies_every_position_exactly_once() {
    let url = support::pg::database();
    let name = "counter@1.0.0";
    let mut runners = Vec::new();
    for host in 0..3u64 {
        let store = PgStore::open(&url).await.unwrap();
        runners.push(tokio::spawn(async move {
            let leases = store.leases();
            let model = store.read_model("counter", "1.0.0").await.unwrap();
            let holder = format!("host-{host}");
            let mut commits = 0u64;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(4);
            let mut step = host;
            while tokio::time::Instant::now() < deadline {
                let Some(lease) = leases.acquire(name, &holder, TTL).await.unwrap() else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                loop {
                    step += 1;
                    let from = model.checkpoint().await.unwrap().position;
                    let count: u64 = model
                        .get("count")
                        .await
                        .unwrap()
                        .map_or(0, |d| d.parse().unwrap());
                    if step % 7 == 0 {
                        // A pause longer than the lease: someone else takes over.
                        tokio::time::sleep(TTL + Duration::from_millis(100)).await;
                    }
                    let next = (count + 5).to_string();
                    match model
                        .commit(
                            &lease,
                            from,
                            &docs(&[("count", Some(&next))]),
                            &cp(from + 5),
                            None,
                            &[],
                        )
                        .await
                        .unwrap()
                    {
                        Ok(()) => commits += 1,
                        Err(_) => break, // fenced or overtaken: take the lease again
                    }
                    if leases.renew(&lease, TTL).await.unwrap().is_err()
                        || tokio::time::Instant::now() >= deadline
                    {
                        break;
                    }
                }
            }
            store.close().await;
            commits
        }));
    }
    let mut total_commits = 0;
    for r in runners {
        total_commits += r.await.unwrap();
    }
    let store = PgStore::open(&url).await.unwrap();
    let model = store.read_model("counter", "1.0.0").await.unwrap();
    let checkpoint = model.checkpoint().await.unwrap().position;
    let count: u64 = model.get("count").await.unwrap().unwrap().parse().unwrap();
    assert_eq!(count, checkpoint, "every position applied exactly once");
    assert_eq!(checkpoint, total_commits * 5);
    let token: i64 = support::pg::shared()
        .query(
            &url,
            "SELECT token FROM refold_leases WHERE name = 'counter@1.0.0'",
        )
        .trim()
        .parse()
        .unwrap();
    assert!(token >= 3, "the lease moved between hosts (token {token})");
    store.close().await;
}

/// The read model's contents behave as sled's: scans in key byte order with
/// prefixes, `after`, limits and a byte bound (against sled's own answers),
/// skip records, schema versions merged, generations, and the scratch one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_models_keep_what_sled_keeps() {
    let url = support::pg::database();
    let pg = PgStore::open(&url).await.unwrap();
    let dir = support::temp_dir();
    let sled = support::open(&dir, Durability::None);
    let lease = pg
        .leases()
        .acquire("p@1", "h", Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();

    let keys = [
        "a",
        "a%",
        "a_b",
        "ab",
        "b",
        "ba",
        "é",
        "z\u{10FFFF}",
        "A",
        "a/1",
        "a/10",
        "a/2",
    ];
    let changes: BTreeMap<String, Option<String>> = keys
        .iter()
        .map(|k| (k.to_string(), Some(format!("{{\"k\":{}}}", k.len()))))
        .collect();
    let model = pg.read_model("p", "1").await.unwrap();
    let skip = SkipRecord {
        position: 3,
        event_id: "e".into(),
        event_type: "Bad".into(),
        stream: "s/1".into(),
        reason: "trap".into(),
        skipped_at_ms: 7,
    };
    // Two events at schema versions 1 and 2, as applied events.
    let s = support::stream("s");
    sled.append(
        &s,
        ExpectedVersion::Any,
        vec![
            NewEvent::new("Opened", "{}"),
            NewEvent::new("Opened", "{}").at_schema_version(2),
        ],
    )
    .await
    .unwrap();
    let applied = sled
        .read_all(1, 10, &refold::store::EventFilter::all())
        .unwrap()
        .events;
    model
        .commit(&lease, 0, &changes, &cp(5), Some(&skip), &applied)
        .await
        .unwrap()
        .unwrap();
    let sled_model = sled.read_model("p", "1").unwrap();
    sled_model
        .commit(&changes, &cp(5), Some(&skip), &applied)
        .unwrap();

    for (prefix, after, limit, max_bytes) in [
        ("", None, 100, usize::MAX),
        ("a", None, 100, usize::MAX),
        ("a%", None, 100, usize::MAX),
        ("a_", None, 100, usize::MAX),
        ("a/", Some("a/10"), 100, usize::MAX),
        ("a", Some("a%"), 2, usize::MAX),
        ("", Some("b"), 100, usize::MAX),
        ("", None, 100, 20),
        ("zz", None, 100, usize::MAX),
    ] {
        assert_eq!(
            model
                .scan_bounded(prefix, after, limit, max_bytes)
                .await
                .unwrap(),
            sled_model
                .scan_bounded(prefix, after, limit, max_bytes)
                .unwrap(),
            "scan {prefix:?} after {after:?} limit {limit} bytes {max_bytes}"
        );
    }
    assert_eq!(model.skips().await.unwrap(), vec![skip]);
    assert_eq!(
        model.schema_versions().await.unwrap(),
        sled_model.schema_versions().unwrap()
    );
    assert_eq!(model.checkpoint().await.unwrap(), cp(5));

    // The scratch generation is nobody's but its verify's, and deleted after.
    let scratch = pg.scratch_read_model("p", "1").await.unwrap();
    scratch
        .commit(
            &lease,
            0,
            &docs(&[("only-scratch", Some("1"))]),
            &cp(1),
            None,
            &[],
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        pg.read_model("p", "1")
            .await
            .unwrap()
            .get("only-scratch")
            .await
            .unwrap(),
        None
    );
    pg.delete_scratch_read_model("p", "1").await.unwrap();
    assert_eq!(scratch.get("only-scratch").await.unwrap(), None);

    // A rebuild starts empty in the next generation and the old one is gone.
    let rebuilt = pg.reset_read_model("p", "1").await.unwrap();
    assert_eq!(rebuilt.generation(), model.generation() + 1);
    assert!(rebuilt.documents().await.unwrap().is_empty());
    assert_eq!(
        rebuilt.checkpoint().await.unwrap(),
        ProjectionCheckpoint::default()
    );
    assert!(
        model.documents().await.unwrap().is_empty(),
        "the old generation was deleted"
    );
    assert_eq!(
        pg.read_model("p", "1").await.unwrap().generation(),
        rebuilt.generation()
    );
    pg.delete_read_model("p", "1").await.unwrap();
    assert_eq!(pg.read_model("p", "1").await.unwrap().generation(), 0);
    pg.close().await;
    sled.close().await;
}
