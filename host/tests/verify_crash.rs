//! A verify's scratch survives nothing: the real binary is killed (SIGKILL)
//! while a projection verify replays into its scratch generation, and the
//! next start deletes what it left.

mod support;

use refold::store::{Store, StoreConfig};
use serde_json::Value;
use support::projection::{append, caught_up};
use support::temp_dir;

const PICKY: &str = refold_test_guests::PICKY_PROJECTION;

#[tokio::test(flavor = "multi_thread")]
async fn a_scratch_left_by_a_killed_server_is_deleted_at_boot() {
    let dir = temp_dir();
    let data = dir.path().join("data");
    {
        let store = Store::open(StoreConfig::new(data.join("events"))).unwrap();
        append(&store, "1", "Counted", 3000).await;
        store.close().await;
    }
    let mut served = support::process::serve(&data, &["--projection-batch", "1"]);
    let http = reqwest::Client::new();
    let status_url = format!("{}/v1/projections/picky/versions/1.0.0", served.url);
    let put = http
        .put(format!("{}/v1/modules/picky/1.0.0", served.url))
        .body(std::fs::read(PICKY).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(put.status().as_u16(), 201);
    let poll = |done: fn(&Value) -> bool| {
        let (http, url) = (http.clone(), status_url.clone());
        async move {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
            loop {
                if let Ok(r) = http.get(&url).send().await
                    && let Ok(view) = r.json::<Value>().await
                    && done(&view)
                {
                    return view;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "{url} never got there"
                );
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    };
    poll(caught_up).await;
    let verifying = tokio::spawn(
        http.post(format!(
            "{}/v1/projections/picky/versions/1.0.0/verify",
            served.url
        ))
        .send(),
    );
    poll(|v| v["verify"]["position"].as_u64().is_some_and(|p| p > 0)).await;
    served.child.kill().unwrap();
    served.child.wait().unwrap();
    verifying.abort();
    {
        let store = Store::open(StoreConfig::new(data.join("events"))).unwrap();
        assert_eq!(
            store.read_model_generations("picky", "1.0.0").unwrap(),
            vec![0, u32::MAX],
            "the kill left a scratch"
        );
        store.close().await;
    }
    let mut served = support::process::serve(&data, &[]);
    let status_url = format!("{}/v1/projections/picky/versions/1.0.0", served.url);
    let view: Value = http
        .get(&status_url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(view["verify"], Value::Null, "{view}");
    assert!(served.sigterm().success());
    let store = Store::open(StoreConfig::new(data.join("events"))).unwrap();
    assert_eq!(
        store.read_model_generations("picky", "1.0.0").unwrap(),
        vec![0],
        "boot deleted the scratch"
    );
    store.close().await;
}
