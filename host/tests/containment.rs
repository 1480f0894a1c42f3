//! Containment: a hostile module cannot stall the host, see real time, or
//! exhaust host memory through a host call. Each case asserts the clear error
//! (or the deterministic value), that nothing was written, and that another
//! module keeps serving while it happens.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use refold::commands::CommandError;
use refold::runtime::GuestError;
use refold_test_guests::{BANK_ACCOUNT, HOSTILE};
use support::host::Host;
use support::temp_dir;

async fn hostile_host(dir: &std::path::Path) -> Arc<Host> {
    let host = Host::start(dir).await;
    host.upload("hostile", "1.0.0", HOSTILE).await;
    host.upload("bank-account", "1.0.0", BANK_ACCOUNT).await;
    host.send("bank-account", "steady", r#"{"type":"Open","owner":"Ada"}"#)
        .await
        .unwrap();
    Arc::new(host)
}

fn data(outcome: &refold::commands::CommandOutcome) -> serde_json::Value {
    serde_json::from_str(&outcome.events[0].data).unwrap()
}

/// A deposit on the healthy module answers within `within` while `hostile` runs.
async fn healthy_while<F: std::future::Future>(
    host: &Arc<Host>,
    within: Duration,
    hostile: F,
) -> F::Output {
    let probe = {
        let host = host.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let started = Instant::now();
            host.send("bank-account", "steady", r#"{"type":"Deposit","amount":1}"#)
                .await
                .expect("the healthy module serves");
            started.elapsed()
        })
    };
    let out = hostile.await;
    let took = probe.await.unwrap();
    assert!(
        took < within,
        "a healthy command took {took:?} beside the hostile one"
    );
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn sleeping_returns_at_once_in_virtual_time() {
    let dir = temp_dir();
    let host = hostile_host(dir.path()).await;
    let started = Instant::now();
    // Two hour-long sleeps at once used to hold both guest threads for an hour.
    let (a, b) = healthy_while(&host, Duration::from_secs(2), async {
        tokio::join!(
            host.send("hostile", "s1", r#"{"type":"Sleep","secs":3600}"#),
            host.send("hostile", "s2", r#"{"type":"Sleep","secs":3600}"#)
        )
    })
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the sleeps took {:?}",
        started.elapsed()
    );
    for outcome in [a.unwrap(), b.unwrap()] {
        let seen = data(&outcome);
        assert_eq!(seen["monotonic_elapsed_ns"], 3_600_000_000_000u64, "{seen}");
        assert_eq!(seen["wall_elapsed_ns"], 3_600_000_000_000u64, "{seen}");
    }
    host.store.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn blocking_on_a_timer_that_never_fires_returns_at_the_end_of_virtual_time() {
    let dir = temp_dir();
    let host = hostile_host(dir.path()).await;
    let outcome = healthy_while(&host, Duration::from_secs(2), async {
        host.send("hostile", "b", r#"{"type":"BlockForever"}"#)
            .await
    })
    .await
    .expect("blocking on a far timer is a virtual wait, not a hang");
    assert_eq!(data(&outcome)["now"], u64::MAX);
    host.store.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn polling_timers_wakes_the_earliest_first() {
    let dir = temp_dir();
    let host = hostile_host(dir.path()).await;
    let outcome = host
        .send("hostile", "p", r#"{"type":"PollTimers"}"#)
        .await
        .unwrap();
    let seen = data(&outcome);
    assert_eq!(
        seen["ready"],
        serde_json::json!([1]),
        "only the 1 s timer fires: {seen}"
    );
    assert_eq!(seen["elapsed_ns"], 1_000_000_000u64);
    host.store.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_guest_cannot_measure_how_long_it_runs() {
    let dir = temp_dir();
    let host = hostile_host(dir.path()).await;
    for id in ["m1", "m2", "m3"] {
        let outcome = host
            .send("hostile", id, r#"{"type":"Measure"}"#)
            .await
            .unwrap();
        assert_eq!(
            data(&outcome)["elapsed_ns"],
            0,
            "busy work takes no virtual time"
        );
    }
    host.store.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn host_calls_that_would_allocate_what_the_guest_asks_are_bounded() {
    let dir = temp_dir();
    let host = hostile_host(dir.path()).await;
    let head = host.store.head();

    // write-zeroes of 2^40 bytes is counted, not allocated.
    let started = Instant::now();
    host.send("hostile", "z", r#"{"type":"Zeroes"}"#)
        .await
        .expect("zeroes are accepted and dropped past the output cap");
    assert!(started.elapsed() < Duration::from_secs(2));

    match host.send("hostile", "r", r#"{"type":"RandomFlood"}"#).await {
        Err(CommandError::Guest(GuestError::LimitExceeded(why))) => {
            assert!(why.contains("random bytes"), "{why}")
        }
        other => panic!("64 MiB of randomness should exceed the limit, got {other:?}"),
    }
    match host.send("hostile", "h", r#"{"type":"Handles"}"#).await {
        Err(CommandError::Guest(GuestError::LimitExceeded(why))) => {
            assert!(why.contains("host resources"), "{why}")
        }
        other => panic!("hoarding pollables should hit the resource cap, got {other:?}"),
    }
    assert_eq!(host.store.head(), head + 1, "only the zeroes command wrote");
    host.store.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_output_is_capped_even_when_the_call_traps() {
    let dir = temp_dir();
    let host = hostile_host(dir.path()).await;
    let head = host.store.head();
    let started = Instant::now();
    host.send("hostile", "f", r#"{"type":"Flood","mb":8}"#)
        .await
        .expect("writing past the cap is not an error the guest sees");
    match host
        .send("hostile", "f", r#"{"type":"Flood","mb":8,"trap":true}"#)
        .await
    {
        Err(CommandError::Guest(GuestError::Trap(message))) => {
            assert!(
                message.contains("flooded, then panicked"),
                "the tail (the panic) is kept"
            );
            assert!(
                message.len() < 4 * 1024,
                "the error carries a bounded excerpt: {} bytes",
                message.len()
            );
        }
        other => panic!("a panic after a flood is a trap, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(host.store.head(), head + 1);
    host.store.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_component_that_imports_sockets_is_refused_at_upload() {
    let dir = temp_dir();
    let host = Host::start(dir.path()).await;
    let bytes = std::fs::read(refold_test_guests::NETWORKED).unwrap();
    match host
        .modules
        .upload("networked", "1.0.0", bytes, true, false)
        .await
    {
        Err(e) => {
            let text = e.to_string();
            assert!(
                text.contains("wasi:sockets"),
                "the refusal names the import: {text}"
            );
        }
        Ok(_) => panic!("a component importing wasi:sockets must be refused"),
    }
    assert!(
        host.modules.get("networked", "1.0.0").is_none(),
        "nothing registered"
    );
    host.stop().await;
}

/// Over HTTP, as the attack was made: sleepers and a flood on one module while
/// commands, state reads, a projection query and `/healthz` are served.
#[tokio::test(flavor = "multi_thread")]
async fn over_http_a_sleeping_module_stalls_nothing_else() {
    use support::http::TestServer;
    let dir = temp_dir();
    let s = TestServer::start(dir.path()).await;
    for (name, path) in [
        ("hostile", HOSTILE),
        ("bank-account", BANK_ACCOUNT),
        ("account-balances", refold_test_guests::ACCOUNT_BALANCES),
    ] {
        assert_eq!(s.upload(name, "1.0.0", path).await.status(), 201, "{name}");
    }
    let open = s
        .send("bank-account", "a", r#"{"type":"Open","owner":"Ada"}"#)
        .await;
    assert_eq!(open.status(), 200);
    let started = Instant::now();
    let attacks = [
        r#"{"type":"Sleep","secs":3600}"#,
        r#"{"type":"Sleep","secs":86400}"#,
        r#"{"type":"BlockForever"}"#,
        r#"{"type":"Flood","mb":4,"trap":true}"#,
    ];
    let ids: Vec<String> = (0..attacks.len()).map(|i| format!("x{i}")).collect();
    let attack = futures::future::join_all(
        attacks
            .iter()
            .zip(&ids)
            .map(|(c, id)| s.send("hostile", id, c)),
    );
    let service = async {
        let healthz = s
            .request(reqwest::Method::GET, "/healthz")
            .send()
            .await
            .unwrap();
        assert_eq!(healthz.status(), 200);
        let deposit = s
            .send("bank-account", "a", r#"{"type":"Deposit","amount":5}"#)
            .await;
        assert_eq!(deposit.status(), 200);
        let (status, state) = s.get_json("/v1/aggregates/bank-account/a").await;
        assert_eq!(status, 200, "{state}");
        let (status, balance) = s
            .get_json("/v1/projections/account-balances/docs/account/a?min_position=2")
            .await;
        assert_eq!(status, 200, "{balance}");
        started.elapsed()
    };
    let (answers, served_in) = tokio::join!(attack, service);
    assert!(
        served_in < Duration::from_secs(5),
        "other modules took {served_in:?}"
    );
    let codes: Vec<u16> = answers.iter().map(|r| r.status().as_u16()).collect();
    assert_eq!(
        codes,
        [200, 200, 200, 422],
        "sleeps finish in virtual time, the flood traps"
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    s.stop().await;
}
