//! Leases with fencing tokens and fenced read-model commits on PostgreSQL:
//! one runner per projection version across hosts, a lapsed lease taken over
//! with a new token, and a runner that lost its lease unable to commit.

mod support;

use std::time::Duration;

use refold::store::pg::{PgStore, Refused};

const TTL: Duration = Duration::from_millis(300);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_holder_at_a_time_and_a_stale_holder_cannot_commit() {
    let url = support::pg::database();
    let (a, b) = (
        PgStore::open(&url).await.unwrap(),
        PgStore::open(&url).await.unwrap(),
    );
    let (ra, rb) = (a.read_models(), b.read_models());
    let name = "account-balances@1.0.0";

    let lease_a = ra
        .acquire(name, "host-a", TTL)
        .await
        .unwrap()
        .expect("free");
    assert_eq!(lease_a.token, 1);
    assert!(
        rb.acquire(name, "host-b", TTL).await.unwrap().is_none(),
        "held by a"
    );
    assert_eq!(
        ra.acquire(name, "host-a", TTL)
            .await
            .unwrap()
            .unwrap()
            .token,
        1,
        "a re-takes its own"
    );

    let doc = |n: u64| Some(format!("{{\"n\":{n}}}"));
    ra.commit(
        &lease_a,
        0,
        10,
        &[("x".into(), doc(10)), ("y".into(), doc(1))],
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(
        rb.document(name, "x").await.unwrap(),
        doc(10),
        "visible to every host"
    );
    assert_eq!(rb.checkpoint(name).await.unwrap(), 10);
    ra.renew(&lease_a, TTL).await.unwrap().unwrap();

    // a stops renewing (paused, partitioned); b takes over once it lapses.
    tokio::time::sleep(TTL + Duration::from_millis(150)).await;
    let lease_b = rb
        .acquire(name, "host-b", TTL)
        .await
        .unwrap()
        .expect("lapsed");
    assert_eq!(lease_b.token, 2, "a takeover bumps the token");
    // a wakes up still believing it holds the lease: fenced off.
    assert!(matches!(
        ra.renew(&lease_a, TTL).await.unwrap(),
        Err(Refused::LeaseLost { .. })
    ));
    assert!(matches!(
        ra.commit(&lease_a, 10, 20, &[("x".into(), doc(20))])
            .await
            .unwrap(),
        Err(Refused::LeaseLost { .. })
    ));
    assert_eq!(
        rb.document(name, "x").await.unwrap(),
        doc(10),
        "nothing of a's was written"
    );
    assert_eq!(rb.checkpoint(name).await.unwrap(), 10);
    assert!(
        ra.acquire(name, "host-a", TTL).await.unwrap().is_none(),
        "b holds it now"
    );

    // The checkpoint is compared and set: a commit from the wrong place is refused.
    assert_eq!(
        rb.commit(&lease_b, 0, 5, &[]).await.unwrap(),
        Err(Refused::CheckpointMoved {
            name: name.into(),
            expected: 0,
            actual: 10
        })
    );
    rb.commit(
        &lease_b,
        10,
        20,
        &[("x".into(), doc(20)), ("y".into(), None)],
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(ra.document(name, "x").await.unwrap(), doc(20));
    assert_eq!(ra.document(name, "y").await.unwrap(), None, "deleted");
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
            let models = store.read_models();
            let holder = format!("host-{host}");
            let mut takeovers = 0;
            let mut commits = 0;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(4);
            let mut step = host;
            while tokio::time::Instant::now() < deadline {
                let Some(lease) = models.acquire(name, &holder, TTL).await.unwrap() else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                takeovers += 1;
                loop {
                    step += 1;
                    let from = models.checkpoint(name).await.unwrap();
                    let count: u64 = models
                        .document(name, "count")
                        .await
                        .unwrap()
                        .map_or(0, |d| d.parse().unwrap());
                    if step % 7 == 0 {
                        // A pause longer than the lease: someone else takes over.
                        tokio::time::sleep(TTL + Duration::from_millis(100)).await;
                    }
                    let to = from + 5;
                    match models
                        .commit(
                            &lease,
                            from,
                            to,
                            &[("count".into(), Some((count + 5).to_string()))],
                        )
                        .await
                        .unwrap()
                    {
                        Ok(()) => commits += 1,
                        Err(_) => break, // fenced or overtaken: take the lease again
                    }
                    if models.renew(&lease, TTL).await.unwrap().is_err()
                        || tokio::time::Instant::now() >= deadline
                    {
                        break;
                    }
                }
            }
            store.close().await;
            (takeovers, commits)
        }));
    }
    let mut total_commits = 0;
    for r in runners {
        let (_takeovers, commits) = r.await.unwrap();
        total_commits += commits;
    }
    let store = PgStore::open(&url).await.unwrap();
    let models = store.read_models();
    let checkpoint = models.checkpoint(name).await.unwrap();
    let count: u64 = models
        .document(name, "count")
        .await
        .unwrap()
        .unwrap()
        .parse()
        .unwrap();
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
