//! Several `refold serve --store postgres://...` hosts over one database, as
//! real processes over HTTP: modules uploaded and activated on one host run
//! on all; commands on the same aggregates through different hosts lose no
//! write and get 412s exactly where a precondition is stale; a host killed
//! under load loses nothing it acknowledged, and its projection lease moves to
//! a survivor, which applies every event exactly once.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use reqwest::Client;
use serde_json::Value;
use support::hosts::{get, host, until, upload, version_state, whole_log};
use support::process::Served;

const BANK: &str = refold_test_guests::BANK_ACCOUNT;
const BANK_STRICT: &str = refold_test_guests::BANK_ACCOUNT_STRICT;
const BALANCES: &str = refold_test_guests::ACCOUNT_BALANCES;
const BALANCES_V2: &str = refold_test_guests::ACCOUNT_BALANCES_V2;

/// Sends `command` to an account through `base`: (status, body).
async fn command(
    client: &Client,
    base: &str,
    id: &str,
    command: &str,
    if_match: Option<u64>,
) -> (u16, Value) {
    let mut request = client
        .post(format!("{base}/v1/aggregates/bank-account/{id}/commands"))
        .header("content-type", "application/json")
        .body(command.to_string());
    if let Some(v) = if_match {
        request = request.header("if-match", format!("\"{v}\""));
    }
    match request.send().await {
        Ok(r) => {
            let status = r.status().as_u16();
            (status, r.json().await.unwrap_or(Value::Null))
        }
        Err(e) => (0, serde_json::json!({ "error": format!("{e:?}") })),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hosts_share_modules_and_commands_with_no_lost_write_and_exact_412s() {
    let url = support::pg::database();
    let dir = support::temp_dir();
    let hosts: Vec<Served> = ["a", "b", "c"]
        .iter()
        .map(|name| host(dir.path(), name, &url))
        .collect();
    let urls: Vec<String> = hosts.iter().map(|h| h.url.clone()).collect();
    let client = Client::new();

    // Uploaded and activated on a: every host runs it, within moments.
    upload(
        &client,
        &urls[0],
        "bank-account",
        "1.0.0",
        BANK,
        "activate=true",
    )
    .await;
    for base in &urls[1..] {
        let took = until(
            &client,
            base,
            "/v1/modules/bank-account",
            Duration::from_secs(10),
            |m| m["active_version"] == "1.0.0",
        )
        .await;
        println!("{base} runs bank-account@1.0.0 {took:?} after the upload on another host");
    }

    // Concurrent commands on the same accounts through all three hosts.
    const ACCOUNTS: usize = 4;
    const PER_TASK: usize = 25;
    const TASKS_PER_HOST: usize = 4;
    for i in 0..ACCOUNTS {
        let (status, body) = command(
            &client,
            &urls[i % 3],
            &format!("acct-{i}"),
            r#"{"type":"Open","owner":"o"}"#,
            None,
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
    let mut tasks = Vec::new();
    for (h, base) in urls.iter().enumerate() {
        for t in 0..TASKS_PER_HOST {
            let (client, base) = (client.clone(), base.clone());
            tasks.push(tokio::spawn(async move {
                let mut accepted = Vec::new();
                for k in 0..PER_TASK {
                    let account = format!("acct-{}", (h + t + k) % ACCOUNTS);
                    let (status, body) = command(
                        &client,
                        &base,
                        &account,
                        r#"{"type":"Deposit","amount":1}"#,
                        None,
                    )
                    .await;
                    assert_eq!(status, 200, "a deposit through {base}: {body}");
                    accepted.push((account, body["version"].as_u64().unwrap()));
                }
                accepted
            }));
        }
    }
    let mut versions: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for task in tasks {
        for (account, version) in task.await.unwrap() {
            versions.entry(account).or_default().push(version);
        }
    }
    // No lost write: each account's versions are exactly 2..=n+1, one per deposit.
    let mut total = 0;
    for (account, mut got) in versions {
        got.sort_unstable();
        let expected: Vec<u64> = (2..2 + got.len() as u64).collect();
        assert_eq!(got, expected, "{account}: one version per accepted deposit");
        total += got.len();
        for base in &urls {
            let (_, state) = get(
                &client,
                base,
                &format!("/v1/aggregates/bank-account/{account}"),
            )
            .await;
            assert_eq!(state["version"], got.len() as u64 + 1, "{base}: {state}");
        }
    }
    assert_eq!(total, 3 * TASKS_PER_HOST * PER_TASK);

    // A stale If-Match is a 412 whichever host took the write that made it stale.
    for round in 0..10 {
        let (_, state) = get(
            &client,
            &urls[round % 3],
            "/v1/aggregates/bank-account/acct-0",
        )
        .await;
        let version = state["version"].as_u64().unwrap();
        let racers: Vec<_> = urls
            .iter()
            .map(|base| {
                let (client, base) = (client.clone(), base.clone());
                tokio::spawn(async move {
                    command(
                        &client,
                        &base,
                        "acct-0",
                        r#"{"type":"Deposit","amount":5}"#,
                        Some(version),
                    )
                    .await
                })
            })
            .collect();
        let mut outcomes = Vec::new();
        for racer in racers {
            outcomes.push(racer.await.unwrap());
        }
        let won = outcomes.iter().filter(|(s, _)| *s == 200).count();
        assert_eq!(
            won, 1,
            "exactly one of three racers on version {version} wins: {outcomes:?}"
        );
        for (status, body) in outcomes.iter().filter(|(s, _)| *s != 200) {
            assert_eq!(*status, 412, "{body}");
            assert_eq!(body["code"], "wrong_expected_version", "{body}");
            assert_eq!(body["actual_version"], version + 1, "{body}");
        }
    }

    // What a host cached is never the reason for a refusal: a knows "stale"
    // with nothing in it; b deposits; a withdrawal only the deposit covers,
    // sent to a, is decided on the current balance.
    for (base, body) in [
        (&urls[0], r#"{"type":"Open","owner":"o"}"#),
        (&urls[0], r#"{"type":"Deposit","amount":1}"#),
        (&urls[1], r#"{"type":"Deposit","amount":100}"#),
        (&urls[0], r#"{"type":"Withdraw","amount":80}"#),
    ] {
        let (status, answer) = command(&client, base, "stale", body, None).await;
        assert_eq!(status, 200, "{body} through {base}: {answer}");
    }

    // A new version activated on b decides on a and c within moments.
    upload(&client, &urls[1], "bank-account", "1.1.0", BANK_STRICT, "").await;
    let r = client
        .post(format!("{}/v1/modules/bank-account/activate", urls[1]))
        .json(&serde_json::json!({"version": "1.1.0", "force": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap());
    for base in [&urls[0], &urls[2]] {
        let took = until(
            &client,
            base,
            "/v1/modules/bank-account",
            Duration::from_secs(10),
            |m| m["active_version"] == "1.1.0",
        )
        .await;
        println!(
            "{base} routes to bank-account@1.1.0 {took:?} after its activation on another host"
        );
        let (status, body) = command(
            &client,
            base,
            "acct-1",
            r#"{"type":"Deposit","amount":1}"#,
            None,
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["module"], "bank-account@1.1.0", "{body}");
    }
    // Every host serves the same log.
    let logs: Vec<Vec<Value>> =
        futures::future::join_all(urls.iter().map(|b| whole_log(&client, b))).await;
    assert!(
        logs.windows(2).all(|w| w[0] == w[1]),
        "every host reads the same log"
    );
    let positions: Vec<u64> = logs[0]
        .iter()
        .map(|e| e["position"].as_u64().unwrap())
        .collect();
    assert_eq!(
        positions,
        (1..=positions.len() as u64).collect::<Vec<_>>(),
        "gapless"
    );
}

/// Which of two hosts runs account-balances@`version` (the other stands by),
/// once both have settled.
async fn holder_of(client: &Client, urls: &[String], version: &str) -> usize {
    let mut states = Vec::new();
    for base in urls {
        until(
            client,
            base,
            "/v1/projections/account-balances",
            Duration::from_secs(20),
            |p| {
                version_state(p, version)
                    .is_some_and(|v| v["state"] == "caught_up" || v["state"] == "standby")
            },
        )
        .await;
        let (_, view) = get(client, base, "/v1/projections/account-balances").await;
        states.push(version_state(&view, version).unwrap()["state"].clone());
    }
    let holder = states
        .iter()
        .position(|s| s != "standby")
        .unwrap_or_else(|| panic!("one host runs {version}: {states:?}"));
    assert_eq!(
        states[1 - holder],
        "standby",
        "only one host runs {version}: {states:?}"
    );
    holder
}

/// Two hosts over a fresh database, bank-account@1.0.0 and
/// account-balances@1.0.0 uploaded and active on both: (database URL, the
/// hosts' directory, hosts, their base URLs, a client).
async fn two_hosts_with_balances() -> (String, tempfile::TempDir, Vec<Served>, Vec<String>, Client)
{
    let url = support::pg::database();
    let dir = support::temp_dir();
    let hosts: Vec<Served> = ["a", "b"]
        .iter()
        .map(|name| host(dir.path(), name, &url))
        .collect();
    let urls: Vec<String> = hosts.iter().map(|h| h.url.clone()).collect();
    let client = Client::new();
    upload(
        &client,
        &urls[0],
        "bank-account",
        "1.0.0",
        BANK,
        "activate=true",
    )
    .await;
    upload(
        &client,
        &urls[0],
        "account-balances",
        "1.0.0",
        BALANCES,
        "activate=true",
    )
    .await;
    for base in &urls {
        until(
            &client,
            base,
            "/v1/modules/bank-account",
            Duration::from_secs(10),
            |m| m["active_version"] == "1.0.0",
        )
        .await;
    }
    (url, dir, hosts, urls, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_host_loses_nothing_acknowledged_and_its_projection_moves_to_a_survivor() {
    let (url, _dir, mut hosts, urls, client) = two_hosts_with_balances().await;
    const ACCOUNTS: usize = 4;
    for i in 0..ACCOUNTS {
        let (status, body) = command(
            &client,
            &urls[i % 2],
            &format!("acct-{i}"),
            r#"{"type":"Open","owner":"o"}"#,
            None,
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
    // One host runs the projection, the other stands by.
    let holder = holder_of(&client, &urls, "1.0.0").await;
    let survivor = urls[1 - holder].clone();
    // While nothing happens, the standby's polls (every second) neither lock
    // nor write: xmin and xmax (the last locker) of the read model's and the
    // module's rows stay as they are, and the lease row, which only the
    // holder's renewals change (an UPDATE leaves xmax at 0), is never locked.
    // First, the holder's last commit has landed: both hosts show it.
    for base in &urls {
        until(
            &client,
            base,
            "/v1/projections/account-balances",
            Duration::from_secs(20),
            |p| version_state(p, "1.0.0").is_some_and(|v| v["position"] == ACCOUNTS as u64),
        )
        .await;
    }
    let rows = || {
        support::pg::shared().query(
            &url,
            "SELECT (SELECT xmin::text || '/' || xmax::text FROM refold_read_models \
                      WHERE name = 'account-balances' AND version = '1.0.0') || ' ' || \
                    (SELECT xmin::text || '/' || xmax::text FROM refold_modules \
                      WHERE name = 'account-balances' AND version = '1.0.0')",
        )
    };
    let lease_locker = || {
        support::pg::shared().query(
            &url,
            "SELECT xmax FROM refold_leases WHERE name = 'projection:account-balances@1.0.0'",
        )
    };
    // A commit holds the lease row in share mode, which shows in xmax until
    // the holder's next renewal (every 3 s) writes a fresh row.
    let renewed = Instant::now();
    while lease_locker() != "0\n" {
        assert!(renewed.elapsed() < Duration::from_secs(5), "no renewal");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let idle = rows();
    for _ in 0..10 {
        assert_eq!(
            lease_locker(),
            "0\n",
            "a standby's try locked the lease row"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(rows(), idle, "an idle standby locked or wrote a row");

    // Deposits through both hosts; the holder is killed in the middle.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for (h, base) in urls.iter().enumerate() {
        for t in 0..4 {
            let (client, base, stop) = (client.clone(), base.clone(), stop.clone());
            load.push(tokio::spawn(async move {
                let mut acked: Vec<(u64, String)> = Vec::new();
                let mut k = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    k += 1;
                    let account = format!("acct-{}", (h + t + k) % ACCOUNTS);
                    let (status, body) = command(
                        &client,
                        &base,
                        &account,
                        r#"{"type":"Deposit","amount":1}"#,
                        None,
                    )
                    .await;
                    match status {
                        200 => {
                            for e in body["events"].as_array().unwrap() {
                                acked.push((
                                    e["position"].as_u64().unwrap(),
                                    e["event_id"].as_str().unwrap().to_string(),
                                ));
                            }
                        }
                        // The killed host; a moment of back-pressure is not an ack.
                        _ => tokio::time::sleep(Duration::from_millis(20)).await,
                    }
                }
                acked
            }));
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    hosts[holder].child.kill().expect("SIGKILL the holder");
    hosts[holder].child.wait().unwrap();
    let killed = Instant::now();
    let took = until(
        &client,
        &survivor,
        "/v1/projections/account-balances",
        Duration::from_secs(25),
        |p| version_state(p, "1.0.0").is_some_and(|v| v["state"] != "standby"),
    )
    .await;
    println!("the survivor took the projection over {took:?} after the kill (lease time 10 s)");
    assert!(
        killed.elapsed() < Duration::from_secs(16),
        "the lease moves within its time (10 s) and a standby's poll"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut acked = Vec::new();
    for task in load {
        acked.extend(task.await.unwrap());
    }
    assert!(
        acked.len() > 50,
        "the load ran: {} acknowledged events",
        acked.len()
    );

    // Nothing acknowledged is lost, on either side of the kill.
    let log = whole_log(&client, &survivor).await;
    let by_position: HashMap<u64, &Value> = log
        .iter()
        .map(|e| (e["position"].as_u64().unwrap(), e))
        .collect();
    for (position, event_id) in &acked {
        let event = by_position
            .get(position)
            .unwrap_or_else(|| panic!("acknowledged position {position} is in the log"));
        assert_eq!(event["event_id"], event_id.as_str());
    }
    // Every event applied exactly once: the survivor catches up, and each
    // account's deposit count is the number of its Deposited events.
    let head = log.len() as u64;
    until(
        &client,
        &survivor,
        "/v1/projections/account-balances",
        Duration::from_secs(30),
        |p| {
            version_state(p, "1.0.0")
                .is_some_and(|v| v["state"] == "caught_up" && v["position"] == head)
        },
    )
    .await;
    let (_, view) = get(&client, &survivor, "/v1/projections/account-balances").await;
    let version = version_state(&view, "1.0.0").unwrap();
    assert_eq!(
        version["events_applied"], head,
        "each event applied once: {version}"
    );
    for i in 0..ACCOUNTS {
        let id = format!("acct-{i}");
        let deposits = log
            .iter()
            .filter(|e| e["aggregate_id"] == id.as_str() && e["event_type"] == "Deposited")
            .count() as u64;
        let (status, doc) = get(
            &client,
            &survivor,
            &format!("/v1/projections/account-balances/docs/account/{id}"),
        )
        .await;
        assert_eq!(status, 200, "{doc}");
        assert_eq!(doc["deposits"], deposits, "{id}: {doc}");
        assert_eq!(doc["balance"], deposits, "{id}: {doc}");
    }
}

async fn ok(client: &Client, base: &str, aggregate_type: &str, id: &str, command: Value) {
    let r = client
        .post(format!(
            "{base}/v1/aggregates/{aggregate_type}/{id}/commands"
        ))
        .json(&command)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    assert_eq!(
        status,
        200,
        "{aggregate_type}/{id} {command}: {}",
        r.text().await.unwrap_or_default()
    );
}

/// Polls a process instance through `base` until it has settled.
async fn settled(client: &Client, base: &str, id: &str) -> Value {
    let started = Instant::now();
    loop {
        let (status, view) = get(client, base, &format!("/v1/processes/transfers/{id}")).await;
        if status == 200
            && view["status"] != "running"
            && view["pending_commands"] == serde_json::json!([])
        {
            return view;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "transfers/{id} did not settle: {status} {view}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_runs_on_one_host_at_a_time_and_moves_at_once_when_its_host_stops() {
    use serde_json::json;
    let url = support::pg::database();
    let dir = support::temp_dir();
    let mut hosts: Vec<Served> = ["a", "b"]
        .iter()
        .map(|name| host(dir.path(), name, &url))
        .collect();
    let urls: Vec<String> = hosts.iter().map(|h| h.url.clone()).collect();
    let client = Client::new();
    for (name, path) in [
        ("bank-account", BANK),
        ("transfer-orders", refold_test_guests::TRANSFER_ORDERS),
        ("transfers", refold_test_guests::TRANSFERS),
    ] {
        upload(&client, &urls[0], name, "1.0.0", path, "activate=true").await;
        for base in &urls {
            until(
                &client,
                base,
                &format!("/v1/modules/{name}"),
                Duration::from_secs(20),
                |m| m["active_version"] == "1.0.0",
            )
            .await;
        }
    }
    for (i, id) in ["alice", "bob"].iter().enumerate() {
        ok(
            &client,
            &urls[i],
            "bank-account",
            id,
            json!({"type": "Open", "owner": id}),
        )
        .await;
        ok(
            &client,
            &urls[i],
            "bank-account",
            id,
            json!({"type": "Deposit", "amount": 1000}),
        )
        .await;
    }
    // Requests through both hosts; whichever host holds the process carries them out, once.
    for k in 0..6 {
        ok(
            &client,
            &urls[k % 2],
            "transfer-orders",
            &format!("t-{k}"),
            json!({"type": "Request", "from": "alice", "to": "bob", "amount": 10}),
        )
        .await;
    }
    for k in 0..6 {
        let view = settled(&client, &urls[(k + 1) % 2], &format!("t-{k}")).await;
        assert_eq!(view["status"], "completed", "{view}");
    }
    let balance = |base: String, id: &'static str| {
        let client = client.clone();
        async move {
            let (_, view) = get(&client, &base, &format!("/v1/aggregates/bank-account/{id}")).await;
            view["state"]["balance"].as_i64().unwrap()
        }
    };
    assert_eq!(
        balance(urls[1].clone(), "alice").await,
        940,
        "six debits, each once"
    );
    assert_eq!(
        balance(urls[0].clone(), "bob").await,
        1060,
        "six credits, each once"
    );

    // The host that runs it stops cleanly: the other takes over at once (the
    // lease is given up, not left to lapse).
    let mut standby = Vec::new();
    for base in &urls {
        let (_, view) = get(&client, base, "/v1/processes/transfers").await;
        standby.push(view["standby"].as_bool().expect("standby is reported"));
    }
    assert_eq!(
        standby.iter().filter(|s| !**s).count(),
        1,
        "exactly one host runs the process: {standby:?}"
    );
    let holder = standby.iter().position(|s| !s).unwrap();
    let other = urls[1 - holder].clone();
    hosts[holder].sigterm();
    let stopped = Instant::now();
    ok(
        &client,
        &other,
        "transfer-orders",
        "t-after",
        json!({"type": "Request", "from": "alice", "to": "bob", "amount": 100}),
    )
    .await;
    let view = settled(&client, &other, "t-after").await;
    assert_eq!(view["status"], "completed", "{view}");
    println!(
        "a transfer requested after a host stopped settled {:?} after the stop",
        stopped.elapsed()
    );
    assert_eq!(balance(other.clone(), "alice").await, 840);
    assert_eq!(balance(other.clone(), "bob").await, 1160);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proofs_integrity_and_the_re_walk_work_from_any_host() {
    let url = support::pg::database();
    let dir = support::temp_dir();
    let hosts: Vec<Served> = ["a", "b"]
        .iter()
        .map(|name| host(dir.path(), name, &url))
        .collect();
    let urls: Vec<String> = hosts.iter().map(|h| h.url.clone()).collect();
    let client = Client::new();
    upload(
        &client,
        &urls[0],
        "bank-account",
        "1.0.0",
        BANK,
        "activate=true",
    )
    .await;
    until(
        &client,
        &urls[1],
        "/v1/modules/bank-account",
        Duration::from_secs(10),
        |m| m["active_version"] == "1.0.0",
    )
    .await;
    for k in 0..20 {
        let body = if k == 0 {
            r#"{"type":"Open","owner":"o"}"#
        } else {
            r#"{"type":"Deposit","amount":3}"#
        };
        let (status, answer) = command(&client, &urls[k % 2], "proved", body, None).await;
        assert_eq!(status, 200, "{answer}");
    }
    // Not sealed yet: a clear 409, not a proof.
    let r = client
        .get(format!("{}/v1/events/5/proof", urls[0]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 409);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "not_sealed_yet");
    // Sealed on b, proved on a, and the proof checks offline.
    let r = client
        .post(format!("{}/v1/integrity/seal", urls[1]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap());
    for position in [1u64, 5, 20] {
        let r = client
            .get(format!("{}/v1/events/{position}/proof", urls[0]))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        assert_eq!(status, 200, "{text}");
        let check = refold::api::integrity::check_proof(&text, None)
            .unwrap_or_else(|e| panic!("the proof of {position} checks: {e}\n{text}"));
        assert_eq!(check.position, position);
        assert_eq!(
            (check.seal_first_position, check.seal_last_position),
            (1, 20)
        );
    }
    let (_, a) = get(&client, &urls[0], "/v1/integrity").await;
    let (_, b) = get(&client, &urls[1], "/v1/integrity").await;
    assert_eq!(a["head"], 20, "{a}");
    assert_eq!(a["chain"], b["chain"], "{a} {b}");
    assert_eq!(a["last_seal"], b["last_seal"], "{a} {b}");
    // The re-walk on either host finds the log whole.
    for base in &urls {
        let text = client
            .get(format!("{base}/v1/integrity/verify?from=1"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let last: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
        assert_eq!(last["ok"], true, "{text}");
        assert_eq!(last["report"]["events"], 20, "{text}");
        assert_eq!(last["report"]["seals"], 1, "{text}");
    }
    // Altered in the database: the proof and the walk say where.
    support::pg::shared().query(
        &url,
        "UPDATE refold_events SET body = set_byte(body, length(body) - 2, 48) WHERE position = 7",
    );
    let r = client
        .get(format!("{}/v1/events/5/proof", urls[1]))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let problem: Value = r.json().await.unwrap();
    assert_eq!(
        (status, problem["code"].as_str()),
        (500, Some("integrity_violation")),
        "{problem}"
    );
    let text = client
        .get(format!("{}/v1/integrity/verify?from=1", urls[0]))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let last: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(last["ok"], false, "{text}");
    assert_eq!(last["report"]["failure"]["position"], 7, "{text}");
}

/// `PUT ...?activate=true` of a projection version asks for it to go live
/// once it has caught up. When another host holds the version's lease, the
/// host that took the upload stands by, and still sees the holder catch up
/// (its checkpoint, read every second): it promotes the version then. The
/// holder is paused while the log grows, so the upload arrives while the
/// version lags.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_asked_live_on_a_standby_host_goes_live_when_the_holder_catches_up() {
    let (_url, _dir, hosts, urls, client) = two_hosts_with_balances().await;
    ok(
        &client,
        &urls[0],
        "bank-account",
        "acct-1",
        serde_json::json!({"type": "Open", "owner": "o"}),
    )
    .await;

    // 2.0.0 replays beside 1.0.0; one host holds it, the other stands by.
    upload(
        &client,
        &urls[0],
        "account-balances",
        "2.0.0",
        BALANCES_V2,
        "",
    )
    .await;
    let holder = holder_of(&client, &urls, "2.0.0").await;
    let standby = 1 - holder;

    // The holder pauses (well inside its lease); the log grows through the
    // standby host, and the standby host takes the upload asking for live.
    let pid = hosts[holder].child.id().to_string();
    let signal = |sig: &str| {
        let status = std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap();
        assert!(status.success(), "kill {sig} {pid}");
    };
    signal("-STOP");
    let stopped = Instant::now();
    for _ in 0..3 {
        ok(
            &client,
            &urls[standby],
            "bank-account",
            "acct-1",
            serde_json::json!({"type": "Deposit", "amount": 5}),
        )
        .await;
    }
    let (status, body) = support::hosts::put_module(
        &client,
        &urls[standby],
        "account-balances",
        "2.0.0",
        BALANCES_V2,
        "activate=true",
    )
    .await;
    let (_, view) = get(&client, &urls[standby], "/v1/projections/account-balances").await;
    signal("-CONT");
    let paused = stopped.elapsed();
    assert_eq!(status, 200, "the same bytes again: {body}");
    assert!(
        paused < Duration::from_secs(5),
        "the holder was paused {paused:?}: too close to its lease time (10 s) to test a standby"
    );
    let asked = version_state(&view, "2.0.0").unwrap();
    assert_eq!(view["live_version"], "1.0.0", "2.0.0 lags: {view}");
    assert_eq!(asked["promote_when_caught_up"], true, "{view}");
    assert_eq!(asked["state"], "standby", "{view}");

    // The holder catches up; the standby host promotes 2.0.0 for every host.
    for base in &urls {
        let took = until(
            &client,
            base,
            "/v1/projections/account-balances",
            Duration::from_secs(10),
            |p| p["live_version"] == "2.0.0",
        )
        .await;
        println!("{base}: 2.0.0 live {took:?} after the holder went on");
    }
    let (_, doc) = get(
        &client,
        &urls[standby],
        "/v1/projections/account-balances/docs/account/acct-1",
    )
    .await;
    assert_eq!(doc["balance"], 15, "{doc}");
}
