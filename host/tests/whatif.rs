//! What-if on journaled commands, over HTTP with real components: a
//! candidate that tightens the overdraft rule is reported to refuse exactly
//! the recorded withdrawals it would now refuse, and nothing else; the
//! version that decided them reports no change (the same state, clock and
//! randomness), paging covers the journal once, and the journal is bounded.

mod support;

use std::collections::BTreeSet;

use refold::store::{JournalEntry, JournalOutcome};
use refold_test_guests as guests;
use reqwest::Method;
use serde_json::{Value, json};
use support::http::{TestServer, config, expect_problem};

async fn send_keyed(s: &TestServer, id: &str, key: &str, command: Value) -> u16 {
    s.request(
        Method::POST,
        &format!("/v1/aggregates/bank-account/{id}/commands"),
    )
    .header("content-type", "application/json")
    .header("idempotency-key", key)
    .body(command.to_string())
    .send()
    .await
    .unwrap()
    .status()
    .as_u16()
}

async fn whatif(s: &TestServer, name: &str, version: &str, query: &str) -> (u16, Value) {
    let r = s
        .request(
            Method::POST,
            &format!("/v1/modules/{name}/{version}/whatif{query}"),
        )
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Sends a day of banking; returns the keys of the accepted withdrawals that
/// took an account below half its overdraft limit (what the strict rule
/// would refuse) and how many commands were decided.
async fn banking_day(s: &TestServer) -> (BTreeSet<String>, usize) {
    let accounts = [("a", 100), ("b", 0), ("c", 40), ("d", 7)];
    let mut decided = 0;
    let mut expected = BTreeSet::new();
    for (id, limit) in accounts {
        let open = json!({"type": "Open", "owner": id, "overdraft_limit": limit});
        assert_eq!(send_keyed(s, id, &format!("{id}-open"), open).await, 200);
        decided += 1;
    }
    let mut balances = std::collections::HashMap::from([("a", 0i64), ("b", 0), ("c", 0), ("d", 0)]);
    let plan: [(&str, &str, i64); 14] = [
        ("a", "Deposit", 30),
        ("a", "Withdraw", 60), // -30: within half of 100
        ("a", "Withdraw", 40), // -70: past -50, allowed by 100
        ("b", "Withdraw", 1),  // refused both ways
        ("b", "Deposit", 0),   // refused both ways (invalid-amount)
        ("c", "Withdraw", 20), // -20: exactly half of 40, allowed
        ("c", "Withdraw", 1),  // -21: past -20
        ("c", "Deposit", 50),  // 29
        ("c", "Withdraw", 69), // -40: past -20, allowed by 40
        ("c", "Withdraw", 1),  // -41: refused both ways
        ("d", "Withdraw", 3),  // -3: 7 / 2 = 3, allowed
        ("d", "Withdraw", 1),  // -4: past -3
        ("a", "Deposit", 200), // 130
        ("a", "Withdraw", 10), // 120
    ];
    let limits: std::collections::HashMap<&str, i64> = accounts.into_iter().collect();
    for (i, (id, kind, amount)) in plan.into_iter().enumerate() {
        let key = format!("{id}-{i}");
        let status = send_keyed(s, id, &key, json!({"type": kind, "amount": amount})).await;
        decided += 1;
        let balance = balances[id];
        match kind {
            "Deposit" if amount > 0 => {
                assert_eq!(status, 200, "{key}");
                balances.insert(id, balance + amount);
            }
            "Withdraw" if balance - amount >= -limits[id] => {
                assert_eq!(status, 200, "{key}");
                balances.insert(id, balance - amount);
                if balance - amount < -(limits[id] / 2) {
                    expected.insert(key);
                }
            }
            _ => assert_eq!(status, 422, "{key}"),
        }
    }
    (expected, decided)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tighter_rule_is_reported_to_refuse_exactly_what_it_would_refuse() {
    let dir = support::temp_dir();
    let s = TestServer::start(dir.path()).await;
    assert!(
        s.upload("bank-account", "1.0.0", guests::BANK_ACCOUNT)
            .await
            .status()
            .is_success()
    );
    let (expected, decided) = banking_day(&s).await;
    assert_eq!(expected.len(), 4, "{expected:?}");
    // The candidate is uploaded, not activated.
    let r = s
        .request(Method::PUT, "/v1/modules/bank-account/1.1.0")
        .header("content-type", "application/wasm")
        .body(std::fs::read(guests::BANK_ACCOUNT_STRICT).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);

    let (status, report) = whatif(&s, "bank-account", "1.1.0", "").await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["commands"], decided as u64, "{report}");
    assert_eq!(report["totals"]["accepted_to_rejected"], 4, "{report}");
    assert_eq!(
        report["totals"]["unchanged"],
        decided as u64 - 4,
        "{report}"
    );
    for kind in [
        "rejected_to_accepted",
        "different_events",
        "different_rejection",
        "failed",
    ] {
        assert_eq!(report["totals"][kind], 0, "{kind}: {report}");
    }
    assert_eq!(
        report["by_command_type"]["Withdraw"]["accepted_to_rejected"],
        4
    );
    assert_eq!(report["by_command_type"]["Deposit"]["unchanged"], 4);
    let named: BTreeSet<String> = report["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["command_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        named, expected,
        "the samples name exactly those withdrawals"
    );
    let sample = &report["samples"][0];
    assert_eq!(sample["recorded"]["outcome"], "accepted");
    assert_eq!(sample["recorded"]["events"][0]["event_type"], "Withdrawn");
    assert_eq!(sample["candidate"]["outcome"], "rejected");
    assert_eq!(sample["candidate"]["code"], "insufficient-funds");
    assert_eq!(sample["recorded_by"], "bank-account@1.0.0");
    assert!(report["next_since"].is_null());

    // The version that decided them decides them the same way.
    let (_, same) = whatif(&s, "bank-account", "1.0.0", "").await;
    assert_eq!(same["totals"]["unchanged"], decided as u64, "{same}");

    // Pages of 5 cover the journal once.
    let mut since = String::new();
    let mut seen = 0;
    let mut pages = 0;
    loop {
        let query = if since.is_empty() {
            "?limit=5".to_string()
        } else {
            format!("?limit=5&since={since}")
        };
        let (status, page) = whatif(&s, "bank-account", "1.1.0", &query).await;
        assert_eq!(status, 200, "{page}");
        seen += page["commands"].as_u64().unwrap();
        pages += 1;
        match page["next_since"].as_str() {
            Some(next) => since = next.to_string(),
            None => break,
        }
        assert!(pages < 20, "paging ends");
    }
    assert_eq!(seen, decided as u64);

    // The CLI prints the same report for people.
    let (code, out, err) =
        support::process::cli(&s.base, &["module", "whatif", "bank-account", "1.1.0"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("accepted_to_rejected  4"), "{out}");
    assert!(out.contains("was  accepted [Withdrawn"), "{out}");

    // Bad requests.
    for query in ["?limit=0", "?limit=10001", "?since=soon", "?what=1"] {
        let r = s
            .request(
                Method::POST,
                &format!("/v1/modules/bank-account/1.1.0/whatif{query}"),
            )
            .send()
            .await
            .unwrap();
        expect_problem(r, 400, "invalid_request").await;
    }
    let (status, _) = whatif(&s, "bank-account", "9.9.9", "").await;
    assert_eq!(status, 404);
    s.stop().await;
}

/// The same module decides again with the clock and randomness of the first
/// decision: an aggregate whose events carry both reports no change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_are_replayed_with_their_own_clock_and_randomness() {
    let dir = support::temp_dir();
    let s = TestServer::start(dir.path()).await;
    assert!(
        s.upload("entropy", "1.0.0", guests::ENTROPY)
            .await
            .status()
            .is_success()
    );
    for i in 0..6 {
        let r = s
            .send(
                "entropy",
                &format!("e{}", i % 2),
                r#"{"type":"Burst","count":3}"#,
            )
            .await;
        assert_eq!(r.status().as_u16(), 200);
    }
    let (status, report) = whatif(&s, "entropy", "1.0.0", "").await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["commands"], 6);
    assert_eq!(report["totals"]["unchanged"], 6, "{report}");
    s.stop().await;
}

/// Turned off, nothing is journaled; the store prunes entries by age.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_journal_can_be_off_and_is_pruned_by_age() {
    let dir = support::temp_dir();
    let mut cfg = config(dir.path());
    cfg.commands.journal = false;
    let s = TestServer::start_with(cfg).await;
    assert!(
        s.upload("bank-account", "1.0.0", guests::BANK_ACCOUNT)
            .await
            .status()
            .is_success()
    );
    assert_eq!(
        send_keyed(&s, "z", "z-1", json!({"type": "Open", "owner": "Z"})).await,
        200
    );
    let (_, report) = whatif(&s, "bank-account", "1.0.0", "").await;
    assert_eq!(report["commands"], 0, "{report}");

    let store = s.server.app.store.as_sled().expect("a sled server").clone();
    let entry = |at: u64, id: &str| JournalEntry {
        received_at_ms: at,
        command_id: id.into(),
        aggregate_type: "bank-account".into(),
        aggregate_id: "z".into(),
        command: "{}".into(),
        expected_version: None,
        client_command_id: false,
        correlation_id: id.into(),
        causation_id: None,
        decided_at: 0,
        module: "bank-account@1.0.0".into(),
        outcome: JournalOutcome::Malformed { reason: "x".into() },
    };
    for (at, id) in [(1_000, "old-1"), (1_000, "old-2"), (5_000, "new")] {
        store.journal_refused(&entry(at, id)).unwrap();
    }
    assert_eq!(store.prune_journal(2_000).unwrap(), 2);
    let page = store
        .journal_page("bank-account", 0, None, 10, 100)
        .unwrap();
    let ids: Vec<&str> = page.entries.iter().map(|e| e.command_id.as_str()).collect();
    assert_eq!(ids, ["new"]);
    assert!(page.next.is_none());
    s.stop().await;
}
