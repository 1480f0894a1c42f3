//! A projection batch cannot write without bound: a batch whose writes go past
//! the per-call limit is re-run event by event, and an event that alone goes
//! past it stops the version with `guest_limit_exceeded` at that event, while
//! appends and other reads carry on.

mod support;

use std::time::{Duration, Instant};

use refold::store::{ExpectedVersion, NewEvent, StreamId};
use serde_json::Value;
use support::http::TestServer;
use support::temp_dir;

async fn wait_for(s: &TestServer, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, view) = s.get_json("/v1/projections/picky/versions/1.0.0").await;
        if status == 200 && done(&view) {
            return view;
        }
        assert!(Instant::now() < deadline, "never reached; last: {view}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn projection_writes_are_bounded_per_call() {
    let dir = temp_dir();
    // Enough fuel that the write limit, not fuel, is what stops a big batch.
    let mut config = support::http::config(dir.path());
    config.runtime.fuel_per_call = 4_000_000_000;
    let s = TestServer::start_with(config).await;
    let store = s.server.app.store.as_sled().expect("a sled server").clone();
    let thing = StreamId::new("thing", "t").unwrap();
    let scatter = |n: u64| NewEvent::new("Scatter", format!(r#"{{"docs":{n}}}"#));
    // Two events of 6,000 documents: together over the 10,000 limit, each within it.
    store
        .append(
            &thing,
            ExpectedVersion::Any,
            vec![scatter(6000), scatter(6000), NewEvent::new("Hello", "{}")],
        )
        .await
        .unwrap();
    let uploaded = s.upload("picky", "1.0.0", refold_test_guests::PICKY_PROJECTION);
    assert_eq!(uploaded.await.status(), 201);
    let view = wait_for(&s, |v| v["state"] == "caught_up" && v["lag"] == 0).await;
    assert_eq!(view["position"], 3, "{view}");
    let (_, doc) = s
        .get_json("/v1/projections/picky/docs/scatter/2/5999?version=1.0.0")
        .await;
    assert_eq!(doc["i"], 5999);

    // One event of 20,000 documents cannot be applied at all.
    store
        .append(
            &thing,
            ExpectedVersion::Any,
            vec![NewEvent::new("Hello", "{}"), scatter(20_000)],
        )
        .await
        .unwrap();
    let failed = wait_for(&s, |v| v["failure"].is_object()).await;
    assert_eq!(failed["failure"]["position"], 5, "{failed}");
    assert_eq!(
        failed["failure"]["code"], "guest_limit_exceeded",
        "{failed}"
    );
    assert_eq!(failed["position"], 4, "the event before it is applied");
    let (_, none) = s
        .get_json("/v1/projections/picky/docs/scatter/5/0?version=1.0.0")
        .await;
    assert_eq!(
        none["code"], "not_found",
        "nothing of the failing event is written: {none}"
    );

    // Appends and the log carry on.
    store
        .append(
            &thing,
            ExpectedVersion::Any,
            vec![NewEvent::new("Hello", "{}")],
        )
        .await
        .unwrap();
    assert_eq!(store.head(), 6);
    s.stop().await;
}

/// A batch that times out is halved down to the event that fails, but not
/// inside one job of the guest pool: once a job has run a call's deadline it
/// commits what it has and yields, and the next job (behind other modules'
/// work) carries on with the span it was about to try. So no job holds a
/// guest thread for much more than two deadlines.
#[tokio::test(flavor = "multi_thread")]
async fn a_batch_that_times_out_is_halved_across_jobs_not_inside_one() {
    let dir = temp_dir();
    let mut config = support::http::config(dir.path());
    // The deadline, not fuel, stops `Loop` whatever the span.
    config.runtime.fuel_per_call = 1 << 50;
    config.runtime.deadline = Duration::from_millis(500);
    let s = TestServer::start_with(config).await;
    let store = s.server.app.store.as_sled().expect("a sled server").clone();
    let thing = StreamId::new("thing", "t").unwrap();
    let mut events: Vec<NewEvent> = (0..31).map(|_| NewEvent::new("Hello", "{}")).collect();
    events.push(NewEvent::new("Loop", "{}"));
    store
        .append(&thing, ExpectedVersion::Any, events)
        .await
        .unwrap();
    let jobs_before = s.server.app.modules.guest_pool_stats().jobs_run;
    let uploaded = s.upload("picky", "1.0.0", refold_test_guests::PICKY_PROJECTION);
    assert_eq!(uploaded.await.status(), 201);
    let failed = wait_for(&s, |v| v["failure"].is_object()).await;
    let jobs = s.server.app.modules.guest_pool_stats().jobs_run - jobs_before;
    assert_eq!(failed["failure"]["position"], 32, "{failed}");
    assert_eq!(failed["failure"]["code"], "guest_timeout", "{failed}");
    assert_eq!(failed["position"], 31, "every event before it is applied");
    // 32 events, then 16, 8, 4, 2 and 1 each time out: six batches, each its
    // own job, committing the good half before yielding (in one job, this
    // was six deadlines on one thread).
    assert!(jobs >= 6, "{jobs} jobs: the halving ran inside fewer jobs");
    let (_, hello) = s
        .get_json("/v1/projections/picky/docs/count/Hello?version=1.0.0")
        .await;
    assert_eq!(hello["n"], 31, "{hello}");
    s.stop().await;
}

/// A failure that says how busy the host was (`guest_timeout`) is retried
/// without an operator, with backoff (1 s, then doubling); one that says what
/// the module computes (here `Poison`) waits for an operator.
#[tokio::test(flavor = "multi_thread")]
async fn a_timed_out_event_is_retried_automatically_and_a_poisoned_one_is_not() {
    for (event, retried) in [("Loop", true), ("Poison", false)] {
        let dir = temp_dir();
        let mut config = support::http::config(dir.path());
        config.runtime.fuel_per_call = 1 << 50;
        config.runtime.deadline = Duration::from_millis(200);
        let s = TestServer::start_with(config).await;
        let thing = StreamId::new("thing", "t").unwrap();
        s.server
            .app
            .store
            .append(
                &thing,
                ExpectedVersion::Any,
                vec![NewEvent::new("Hello", "{}"), NewEvent::new(event, "{}")],
            )
            .await
            .unwrap();
        let uploaded = s.upload("picky", "1.0.0", refold_test_guests::PICKY_PROJECTION);
        assert_eq!(uploaded.await.status(), 201);
        let failed = wait_for(&s, |v| v["failure"].is_object()).await;
        assert_eq!(failed["failure"]["position"], 2, "{failed}");
        assert_eq!(failed["position"], 1, "{failed}");
        if retried {
            assert_eq!(failed["failure"]["code"], "guest_timeout", "{failed}");
            let again = wait_for(&s, |v| v["failure"]["attempts"].as_u64() >= Some(2)).await;
            assert_eq!(again["failure"]["position"], 2, "{again}");
        } else {
            assert_eq!(failed["failure"]["code"], "guest_failed", "{failed}");
            tokio::time::sleep(Duration::from_millis(2500)).await;
            let (_, still) = s.get_json("/v1/projections/picky/versions/1.0.0").await;
            assert_eq!(still["failure"]["attempts"], 1, "not retried: {still}");
            assert_eq!(still["state"], "failed", "{still}");
        }
        s.stop().await;
    }
}
