//! SIGKILL the real `refold serve` binary again and again while 500 transfers
//! between 20 accounts run through the `transfers` process. Each instance
//! records an input, its events and the commands it will send in one append,
//! and sends commands under recorded ids, so after every restart each
//! transfer continues where it was. At the end:
//! - money is conserved, and every account holds exactly what the completed
//!   transfers imply;
//! - every transfer is completed or failed (refused, or refunded);
//! - no command took effect twice: each command id the process recorded is on
//!   at most one account event, and on one exactly when its outcome was an
//!   acceptance;
//! - no input was taken twice: one `refold.received` per instance, one
//!   outcome per command;
//! - every instance stream folds to the same state after another restart, and
//!   the ledger projection finds nothing in flight.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use refold::store::{Direction, EventFilter, Store, StoreConfig, StreamId};
use serde_json::{Value, json};
use support::process::{Served, serve};
use support::temp_dir;

const ACCOUNTS: usize = 20;
const OPENING: i64 = 1_000;
const TRANSFERS: usize = 500;
const KILLS: usize = 12;
const SENDERS: usize = 4;
/// The account every 25th transfer goes to: closed, so its credit is
/// refused and the source refunded.
const CLOSED: &str = "acc-closed";

fn account(i: usize) -> String {
    format!("acc-{i}")
}

/// Transfer `i`: from, to, amount. Amounts up to 400 against balances of
/// about 1,000: some debits are refused as overdrafts.
fn transfer(i: usize) -> (String, String, i64) {
    let from = (i * 7) % ACCOUNTS;
    let to = if i.is_multiple_of(25) {
        CLOSED.to_string()
    } else {
        account((from + 1 + i % (ACCOUNTS - 1)) % ACCOUNTS)
    };
    (account(from), to, 1 + (i as i64 * 37) % 400)
}

struct Client {
    http: reqwest::Client,
    url: Arc<RwLock<String>>,
}

impl Client {
    fn url(&self) -> String {
        self.url.read().unwrap().clone()
    }

    /// Sends until the server answers (it may be down, being restarted);
    /// the idempotency key makes a retry of an acknowledged command a repeat.
    async fn command(
        &self,
        aggregate_type: &str,
        id: &str,
        key: &str,
        command: Value,
    ) -> (u16, Value) {
        let start = Instant::now();
        loop {
            let sent = self
                .http
                .post(format!(
                    "{}/v1/aggregates/{aggregate_type}/{id}/commands",
                    self.url()
                ))
                .header("idempotency-key", key)
                .json(&command)
                .timeout(Duration::from_secs(10))
                .send()
                .await;
            if let Ok(r) = sent {
                let status = r.status().as_u16();
                if let Ok(body) = r.json::<Value>().await
                    && status != 503
                {
                    return (status, body);
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "{aggregate_type}/{id} never answered"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let start = Instant::now();
        loop {
            if let Ok(r) = self.http.get(format!("{}{path}", self.url())).send().await {
                let status = r.status().as_u16();
                if let Ok(body) = r.json::<Value>().await {
                    return (status, body);
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "GET {path} never answered"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn upload(&self, name: &str, path: &str) {
        let r = self
            .http
            .put(format!(
                "{}/v1/modules/{name}/1.0.0?activate=true",
                self.url()
            ))
            .header("content-type", "application/wasm")
            .body(std::fs::read(path).unwrap())
            .send()
            .await
            .unwrap();
        assert!(
            r.status().is_success(),
            "upload {name}: {}",
            r.text().await.unwrap()
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkills_during_500_transfers_lose_nothing_and_repeat_nothing() {
    let dir = temp_dir();
    let data = dir.path().to_path_buf();
    let mut server: Served = serve(&data, &[]);
    let client = Arc::new(Client {
        http: reqwest::Client::new(),
        url: Arc::new(RwLock::new(server.url.clone())),
    });
    client
        .upload("bank-account", refold_test_guests::BANK_ACCOUNT)
        .await;
    client
        .upload("transfer-orders", refold_test_guests::TRANSFER_ORDERS)
        .await;
    client
        .upload("transfers", refold_test_guests::TRANSFERS)
        .await;
    client.upload("ledger", refold_test_guests::LEDGER).await;
    for i in 0..ACCOUNTS {
        let id = account(i);
        let (s, b) = client
            .command(
                "bank-account",
                &id,
                &format!("open-{id}"),
                json!({"type": "Open", "owner": id}),
            )
            .await;
        assert_eq!(s, 200, "{b}");
        let (s, b) = client
            .command(
                "bank-account",
                &id,
                &format!("fund-{id}"),
                json!({"type": "Deposit", "amount": OPENING}),
            )
            .await;
        assert_eq!(s, 200, "{b}");
    }
    for (key, command) in [
        ("open", json!({"type": "Open", "owner": "closed"})),
        ("close", json!({"type": "Close"})),
    ] {
        let (s, b) = client.command("bank-account", CLOSED, key, command).await;
        assert_eq!(s, 200, "{b}");
    }

    // Clients request the transfers at a steady pace while the server is killed.
    let next = Arc::new(AtomicUsize::new(0));
    let mut senders = Vec::new();
    for _ in 0..SENDERS {
        let (client, next) = (client.clone(), next.clone());
        senders.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= TRANSFERS {
                    return;
                }
                let (from, to, amount) = transfer(i);
                let id = format!("t-{i}");
                let (status, body) = client
                    .command(
                        "transfer-orders",
                        &id,
                        &format!("request-{id}"),
                        json!({"type": "Request", "from": from, "to": to, "amount": amount}),
                    )
                    .await;
                assert_eq!(status, 200, "{id}: {body}");
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
        }));
    }
    let mut kills = 0;
    // Instances a restart found with commands recorded and not yet answered.
    let mut resumed = 0;
    let started = Instant::now();
    while kills < KILLS {
        tokio::time::sleep(Duration::from_millis(350 + (kills as u64 * 131) % 400)).await;
        resumed += server
            .log_text()
            .matches("sending recorded commands again")
            .count();
        server.child.kill().expect("SIGKILL");
        server.child.wait().unwrap();
        kills += 1;
        server = serve(&data, &[]);
        *client.url.write().unwrap() = server.url.clone();
    }
    let sent_during_kills = next.load(Ordering::Relaxed).min(TRANSFERS);
    for s in senders {
        s.await.unwrap();
    }
    eprintln!(
        "{kills} kills in {:?}; {sent_during_kills} of {TRANSFERS} transfers were requested by the last kill; restarts resumed {resumed} instances with commands in flight",
        started.elapsed()
    );
    assert!(
        sent_during_kills >= TRANSFERS / 4,
        "the kills landed while transfers ran"
    );

    // Let everything settle.
    let start = Instant::now();
    let view = loop {
        let (_, view) = client.get("/v1/processes/transfers").await;
        let counted = ["running", "completed", "failed"]
            .iter()
            .map(|s| view["instances"][s].as_u64().unwrap_or(0))
            .sum::<u64>();
        if counted == TRANSFERS as u64
            && view["instances"]["running"] == 0
            && view["pending_commands"] == 0
            && view["stalled_instances"] == 0
            && view["caught_up"] == true
        {
            break view;
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "not settled: {view}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("settled: {view}");
    assert!(
        view["instances"]["completed"].as_u64().unwrap() > 250,
        "{view}"
    );
    assert!(view["instances"]["failed"].as_u64().unwrap() > 20, "{view}");

    // Every instance as the server folds it now, and the balances.
    let mut states = HashMap::new();
    let mut expected: HashMap<String, i64> = (0..ACCOUNTS).map(|i| (account(i), OPENING)).collect();
    expected.insert(CLOSED.to_string(), 0);
    for i in 0..TRANSFERS {
        let id = format!("t-{i}");
        let (status, v) = client
            .get(&format!("/v1/processes/transfers/{id}?limit=1"))
            .await;
        assert_eq!(status, 200, "{v}");
        let (from, to, amount) = transfer(i);
        match v["status"].as_str().unwrap() {
            "completed" => {
                *expected.get_mut(&from).unwrap() -= amount;
                *expected.get_mut(&to).unwrap() += amount;
            }
            "failed" => assert_ne!(v["state"]["phase"], "stuck", "{v}"),
            other => panic!("{id} is {other}: {v}"),
        }
        states.insert(id, v["state"].clone());
    }
    let mut total = 0;
    for (id, want) in &expected {
        let (status, v) = client
            .get(&format!("/v1/aggregates/bank-account/{id}"))
            .await;
        assert_eq!(status, 200, "{v}");
        let balance = v["state"]["balance"].as_i64().unwrap();
        assert_eq!(balance, *want, "{id}: {v}");
        total += balance;
    }
    assert_eq!(total, ACCOUNTS as i64 * OPENING, "money is conserved");
    let head = client.get("/v1/integrity").await.1["head"]
        .as_u64()
        .unwrap();
    let (status, check) = client
        .get(&format!(
            "/v1/projections/ledger/queries/check?min_position={head}&wait_ms=20000"
        ))
        .await;
    assert_eq!(status, 200, "{check}");
    assert_eq!(check["ok"], true, "{check}");
    assert_eq!(check["in_flight"], 0, "{check}");

    // Once more: a restart folds every instance to the same state.
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    server = serve(&data, &[]);
    *client.url.write().unwrap() = server.url.clone();
    for (id, state) in &states {
        let (_, v) = client
            .get(&format!("/v1/processes/transfers/{id}?limit=1"))
            .await;
        assert_eq!(&v["state"], state, "{id} folds to the same state");
    }
    // The CLI shows the same.
    let (code, out, err) = support::process::cli(&server.url, &["process", "list"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("transfers@1.0.0"), "{out}");
    assert!(out.contains("0 running"), "{out}");
    let (code, out, err) = support::process::cli(
        &server.url,
        &[
            "process",
            "show",
            "transfers",
            "--status",
            "failed",
            "--limit",
            "3",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(" failed "), "{out}");
    assert!(out.contains("more: --after"), "{out}");
    let (code, out, err) =
        support::process::cli(&server.url, &["process", "show", "transfers", "t-1"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("refold.received") && out.contains("state:"),
        "{out}"
    );
    let (code, out, _) = support::process::cli(
        &server.url,
        &["--json", "process", "show", "transfers", "nope"],
    );
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("unknown_instance"), "{out}");
    assert_eq!(server.sigterm().code(), Some(0), "{}", server.log_text());

    // The log itself: commands and outcomes, one each.
    let store = Store::open(StoreConfig::new(data.join("events"))).unwrap();
    let mut effects: HashMap<String, usize> = HashMap::new();
    let mut from = 1;
    loop {
        let page = store.read_all(from, 4096, &EventFilter::all()).unwrap();
        for e in &page.events {
            if e.stream.aggregate_type() == "bank-account"
                && let Some(id) = &e.metadata.command_id
                && id.starts_with("process:transfers:")
            {
                *effects.entry(id.clone()).or_default() += 1;
            }
        }
        if page.next_position > page.head {
            break;
        }
        from = page.next_position;
    }
    let (mut accepted_total, mut rejected_total) = (0, 0);
    for i in 0..TRANSFERS {
        let stream = StreamId::new("process:transfers", format!("t-{i}")).unwrap();
        let events = store
            .read_stream(&stream, 1, Direction::Forward, 10_000)
            .unwrap();
        let received = events
            .iter()
            .filter(|e| e.event_type == "refold.received")
            .count();
        assert_eq!(received, 1, "t-{i} took its request in once");
        let mut outcomes: HashMap<String, (usize, bool)> = HashMap::new();
        let mut commands = Vec::new();
        for e in &events {
            let data: Value = serde_json::from_str(&e.data).unwrap();
            match e.event_type.as_str() {
                "refold.command" => commands.push(data["command_id"].as_str().unwrap().to_string()),
                "refold.accepted" | "refold.rejected" => {
                    let entry = outcomes
                        .entry(data["command_id"].as_str().unwrap().to_string())
                        .or_default();
                    entry.0 += 1;
                    entry.1 = e.event_type == "refold.accepted";
                }
                _ => {}
            }
        }
        for id in &commands {
            let (count, accepted) = outcomes.get(id).copied().unwrap_or_default();
            assert_eq!(count, 1, "t-{i}: one outcome for {id}");
            let applied = effects.get(id).copied().unwrap_or(0);
            assert_eq!(
                applied,
                usize::from(accepted),
                "t-{i}: {id} took effect {applied} times"
            );
            if accepted {
                accepted_total += 1;
            } else {
                rejected_total += 1;
            }
        }
    }
    assert_eq!(
        effects.values().sum::<usize>(),
        accepted_total,
        "no account event carries a command id the process did not record"
    );
    eprintln!("{accepted_total} commands accepted, {rejected_total} refused, each once");
    store.close().await;
}
