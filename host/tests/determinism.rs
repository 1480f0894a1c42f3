//! Determinism end to end, with guests that try to break it: the entropy
//! aggregate and projection (`tests/guests/entropy*`) read every clock and
//! randomness source a guest can reach (`SystemTime`, `Instant`, a short
//! `thread::sleep`, a WASI timer pollable, `getrandom`, WASI insecure
//! randomness and seed, `RandomState`) in `handle` and `apply`, and fold the
//! readings into their events, state and documents. The host must pin every
//! one of them, so that state built from the same events is the same bytes
//! from the cache, a snapshot, a temporal read, after a restart, in a verify,
//! and a projection's rebuild writes the same documents as its live run.
//!
//! These tests fail on a host whose sandbox lets real time through (a timer
//! pollable that reads the host's clock): that is what they are for.

mod support;

use std::collections::BTreeSet;

use reqwest::Method;
use serde_json::{Value, json};
use support::http::{TestServer, config};
use support::projection::{caught_up, wait_for_version};
use support::temp_dir;

const ENTROPY: &str = refold_test_guests::ENTROPY;
const ENTROPY_PROJECTION: &str = refold_test_guests::ENTROPY_PROJECTION;

/// The commands of each aggregate: one event for `Sample`, `count` for `Burst`.
/// With a snapshot every 4 events, `a` (versions 1, 4, 5, 10, 11, 13, 14) keeps
/// its latest snapshot at 13 and `b` (2, 3, 4) at 4.
const PLAN: [(&str, &[u64]); 2] = [("a", &[1, 3, 1, 5, 1, 2, 1]), ("b", &[2, 1, 1])];

/// A server whose aggregates keep a snapshot every 4 events.
async fn start(dir: &std::path::Path) -> TestServer {
    let mut cfg = config(dir);
    cfg.commands.snapshot_every = 4;
    TestServer::start_with(cfg).await
}

fn command(events: u64) -> String {
    match events {
        1 => json!({"type": "Sample"}),
        n => json!({"type": "Burst", "count": n}),
    }
    .to_string()
}

/// Runs the plan; returns every recorded event's data, grouped by command.
async fn run_plan(s: &TestServer) -> Vec<Vec<Value>> {
    let mut commands = Vec::new();
    for (id, plan) in PLAN {
        for &events in plan {
            let r = s.send("entropy", id, &command(events)).await;
            assert_eq!(r.status().as_u16(), 200, "command accepted");
            let reply: Value = r.json().await.unwrap();
            let data = reply["events"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["data"].clone())
                .collect::<Vec<_>>();
            assert_eq!(data.len() as u64, events);
            commands.push(data);
        }
    }
    commands
}

fn versions(id: &str) -> u64 {
    PLAN.iter()
        .find(|(i, _)| *i == id)
        .map_or(0, |(_, plan)| plan.iter().sum())
}

/// The state now and as of every version, as the server renders them.
async fn states(s: &TestServer, id: &str) -> (Value, Vec<Value>) {
    let (status, now) = s.get_json(&format!("/v1/aggregates/entropy/{id}")).await;
    assert_eq!(status, 200, "{now}");
    let mut at = Vec::new();
    for v in 1..=versions(id) {
        let (status, view) = s
            .get_json(&format!("/v1/aggregates/entropy/{id}?at_version={v}"))
            .await;
        assert_eq!(status, 200, "{view}");
        assert_eq!(view["version"], v);
        at.push(view["state"].clone());
    }
    (now["state"].clone(), at)
}

async fn verify_aggregate(s: &TestServer, id: &str) {
    let (status, report) = s
        .get_json(&format!("/v1/aggregates/entropy/{id}/verify"))
        .await;
    assert_eq!(status, 200, "{report}");
    let commands = PLAN.iter().find(|(i, _)| *i == id).unwrap().1.len();
    assert_eq!(
        report["ok"], true,
        "a replay reproduces every recorded digest: {report}"
    );
    assert_eq!(report["digests_checked"], commands as u64, "{report}");
    assert_eq!(report["digests_unchecked"], 0);
}

async fn verify_projection(s: &TestServer) -> Value {
    let r = s
        .request(
            Method::POST,
            "/v1/projections/entropy-view/versions/1.0.0/verify",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let report: Value = r.json().await.unwrap();
    assert_eq!(
        report["ok"], true,
        "the rebuild writes the same documents: {report}"
    );
    report
}

async fn digest(s: &TestServer) -> Value {
    let (_, digest) = s
        .get_json("/v1/projections/entropy-view/versions/1.0.0/digest")
        .await;
    digest
}

#[tokio::test(flavor = "multi_thread")]
async fn handle_reads_the_commands_time_seeded_randomness_and_no_real_time() {
    let dir = temp_dir();
    let s = start(dir.path()).await;
    assert_eq!(s.upload("entropy", "1.0.0", ENTROPY).await.status(), 201);
    let commands = run_plan(&s).await;
    let events: Vec<&Value> = commands.iter().flatten().collect();
    for data in &events {
        assert_eq!(
            data["call"]["wall_clock_ns"].as_u64(),
            data["received_at_ms"].as_u64().map(|ms| ms * 1_000_000),
            "the wall clock reads the command's received-at time: {data}"
        );
    }
    // Sleeping, working and polling a timer measure the same on every event:
    // what a guest measures must not depend on how fast the host ran it.
    let timings: BTreeSet<String> = events.iter().map(|d| d["event"].to_string()).collect();
    assert_eq!(
        timings.len(),
        1,
        "time measured inside handle differs between events, so real time leaks in: {timings:#?}"
    );
    // Randomness is there, seeded by the command: the same within one call,
    // different between commands.
    let mut per_command = BTreeSet::new();
    for data in &commands {
        let call: BTreeSet<String> = data.iter().map(|d| d["call"].to_string()).collect();
        assert_eq!(call.len(), 1, "one call reads one set of values: {call:?}");
        per_command.insert(data[0]["call"]["getrandom"].to_string());
    }
    assert_eq!(
        per_command.len(),
        commands.len(),
        "each command id seeds its own randomness"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_events_give_the_same_bytes_across_reads_restarts_snapshots_rebuilds_and_verifies()
{
    let dir = temp_dir();
    let s = start(dir.path()).await;
    assert_eq!(s.upload("entropy", "1.0.0", ENTROPY).await.status(), 201);
    assert_eq!(
        s.upload("entropy-view", "1.0.0", ENTROPY_PROJECTION)
            .await
            .status(),
        201
    );
    run_plan(&s).await;

    // Warm: the current state comes from the cache, built command by command.
    let mut before = Vec::new();
    for (id, _) in PLAN {
        let (now, at) = states(&s, id).await;
        assert_eq!(
            at.last(),
            Some(&now),
            "{id}: the temporal read of the last version equals the cached state"
        );
        assert_eq!(now["events"], versions(id));
        verify_aggregate(&s, id).await;
        before.push((now, at));
    }
    let live = wait_for_version(&s, "entropy-view", "1.0.0", caught_up).await;
    assert_eq!(live["live"], true);
    let documents = digest(&s).await;
    let report = verify_projection(&s).await;
    assert_eq!(report["live"]["digest"], documents["digest"], "{report}");
    let (_, chain) = s
        .get_json("/v1/projections/entropy-view/queries/chain?id=a")
        .await;
    assert_eq!(chain["events"], versions("a"), "{chain}");
    s.stop().await;

    // Cold: no cache. Now: a's snapshot at 13 and a replay of 14, b's snapshot.
    // As of earlier versions: replays from the initial state.
    let s = start(dir.path()).await;
    for ((id, _), (now, at)) in PLAN.iter().zip(&before) {
        let (now_again, at_again) = states(&s, id).await;
        assert_eq!(&now_again, now, "{id}: the state after a restart");
        for (v, (a, b)) in at.iter().zip(&at_again).enumerate() {
            assert_eq!(
                a,
                b,
                "{id}: the state as of version {} after a restart",
                v + 1
            );
        }
        verify_aggregate(&s, id).await;
    }
    wait_for_version(&s, "entropy-view", "1.0.0", caught_up).await;
    assert_eq!(digest(&s).await, documents, "the documents after a restart");

    // A rebuild replays the whole log in other batches than the live run did.
    let rebuild = s
        .request(
            Method::POST,
            "/v1/projections/entropy-view/versions/1.0.0/rebuild?force=true",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(rebuild.status().as_u16(), 202);
    wait_for_version(&s, "entropy-view", "1.0.0", |v| {
        caught_up(v) && v["position"] == documents["position"]
    })
    .await;
    assert_eq!(digest(&s).await, documents, "the documents after a rebuild");
    let report = verify_projection(&s).await;
    assert_eq!(report["rebuilt"]["digest"], documents["digest"], "{report}");
    s.stop().await;
}
