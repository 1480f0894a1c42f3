//! SIGKILL the real `refold serve` binary while a projection catches up, again
//! and again. Each batch's documents and checkpoint commit together, so after
//! every restart the projection resumes exactly where its documents stop: at
//! the end the read model equals a from-scratch rebuild, byte for byte, and
//! every balance is right (an event applied twice or skipped would show).

mod support;

use std::time::{Duration, Instant};

use refold::store::{ExpectedVersion, NewEvent, StreamId};
use serde_json::{Value, json};
use support::process::Served;
use support::temp_dir;

const ACCOUNTS: usize = 200;
const DEPOSITS: usize = 149;
const KILLS: usize = 4;

fn serve(data_dir: &std::path::Path) -> Served {
    // Small batches: the catch-up takes many commits, so the kills land inside it.
    support::process::serve(data_dir, &["--projection-batch", "25"])
}

async fn status(client: &reqwest::Client, url: &str) -> Value {
    client
        .get(format!(
            "{url}/v1/projections/account-balances/versions/1.0.0"
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Writes the history straight into the store: bank events as the
/// `bank-account` module would have decided them.
async fn write_history(dir: &std::path::Path) -> u64 {
    let store =
        refold::store::Store::open(refold::store::StoreConfig::new(dir.join("events"))).unwrap();
    for a in 0..ACCOUNTS {
        let stream = StreamId::new("bank-account", format!("acc-{a}")).unwrap();
        let mut events = vec![NewEvent::new(
            "Opened",
            json!({"owner": format!("owner {a}"), "overdraft_limit": 0}).to_string(),
        )];
        let mut balance = 0i64;
        for d in 0..DEPOSITS {
            let amount = (a * 7 + d) as i64 % 100 + 1;
            balance += amount;
            events.push(NewEvent::new(
                "Deposited",
                json!({"amount": amount, "balance": balance}).to_string(),
            ));
        }
        store
            .append(&stream, ExpectedVersion::NoStream, events)
            .await
            .unwrap();
    }
    let head = store.head();
    store.close().await;
    head
}

fn expected_balance(a: usize) -> i64 {
    (0..DEPOSITS).map(|d| (a * 7 + d) as i64 % 100 + 1).sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_during_catch_up_neither_loses_nor_repeats_an_event() {
    let dir = temp_dir();
    let data = dir.path().to_path_buf();
    let head = write_history(&data).await;
    assert_eq!(head, (ACCOUNTS * (DEPOSITS + 1)) as u64);
    let client = reqwest::Client::new();

    let mut server = serve(&data);
    let mut url = server.url.clone();
    let bytes = std::fs::read(refold_test_guests::ACCOUNT_BALANCES).unwrap();
    let put = client
        .put(format!("{url}/v1/modules/account-balances/1.0.0"))
        .body(bytes)
        .send()
        .await
        .unwrap();
    assert_eq!(put.status().as_u16(), 201);

    let mut killed_mid_catch_up = 0;
    let mut last_position = 0;
    for _ in 0..KILLS {
        // Wait for progress past where it was, then kill it mid-batch.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let view = status(&client, &url).await;
            let position = view["position"].as_u64().unwrap_or(0);
            if position > last_position || position == head {
                if position < head {
                    killed_mid_catch_up += 1;
                }
                break;
            }
            assert!(Instant::now() < deadline, "no progress: {view}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        server.child.kill().unwrap(); // SIGKILL
        server.child.wait().unwrap();
        server = serve(&data);
        url = server.url.clone();
        // It resumes from its last committed checkpoint, which may be a little
        // behind what the status said before the kill.
        let view = status(&client, &url).await;
        last_position = view["position"].as_u64().unwrap();
        assert!(last_position <= head);
    }
    assert!(
        killed_mid_catch_up >= 2,
        "the kills landed during the catch-up ({killed_mid_catch_up} of {KILLS})"
    );

    // Caught up: every balance is right.
    let deadline = Instant::now() + Duration::from_secs(120);
    let view = loop {
        let view = status(&client, &url).await;
        if view["position"] == head && view["state"] == "caught_up" {
            break view;
        }
        assert!(Instant::now() < deadline, "never caught up: {view}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        view["events_applied"], head,
        "each event applied exactly once: {view}"
    );
    let totals: Value = client
        .get(format!("{url}/v1/projections/account-balances/docs/totals"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let expected: i64 = (0..ACCOUNTS).map(expected_balance).sum();
    assert_eq!(
        (totals["accounts"].as_u64(), totals["balance"].as_i64()),
        (Some(ACCOUNTS as u64), Some(expected))
    );
    for a in [0, 1, ACCOUNTS / 2, ACCOUNTS - 1] {
        let doc: Value = client
            .get(format!(
                "{url}/v1/projections/account-balances/docs/account/acc-{a}"
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(doc["balance"], expected_balance(a), "acc-{a}: {doc}");
        assert_eq!(doc["deposits"], DEPOSITS, "acc-{a}: {doc}");
    }

    // The read model equals a from-scratch rebuild, byte for byte.
    let digest = |url: String| {
        let client = client.clone();
        async move {
            client
                .get(format!(
                    "{url}/v1/projections/account-balances/versions/1.0.0/digest"
                ))
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let survived = digest(url.clone()).await;
    let rebuild = client
        .post(format!(
            "{url}/v1/projections/account-balances/versions/1.0.0/rebuild?force=true"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(rebuild.status().as_u16(), 202);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let view = status(&client, &url).await;
        if view["position"] == head && view["state"] == "caught_up" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the rebuild never caught up: {view}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rebuilt = digest(url.clone()).await;
    assert_eq!(survived["documents"], ACCOUNTS as u64 + 1);
    assert_eq!(
        survived["digest"], rebuilt["digest"],
        "{survived} vs {rebuilt}"
    );
    drop(server);
}
