//! Seals on PostgreSQL: full segments sealed in the background by whichever
//! host's follower gets there, on-demand seals, several hosts sealing at once,
//! and every seal checked against the chain values it covers and its signature.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use refold::store::integrity::{SEAL_INTERVAL, merkle_root, verify_seal_signature};
use refold::store::pg::PgStore;
use refold::store::{
    EventFilter, EventStore, ExpectedVersion, NewEvent, Seal, SealSigner, StreamId,
};

async fn check_seals(store: &PgStore, signer: &SealSigner) -> Vec<Seal> {
    let seals = store.seals(0, 1000, false).await.unwrap();
    let mut events = Vec::new();
    let mut next = 1;
    loop {
        let page = store
            .read_all(next, 4096, &EventFilter::all())
            .await
            .unwrap();
        if page.events.is_empty() {
            break;
        }
        next = page.next_position;
        events.extend(page.events);
    }
    let mut expected_first = 1;
    for seal in &seals {
        assert_eq!(
            seal.first_position, expected_first,
            "seals are contiguous: {seals:?}"
        );
        assert!(seal.last_position - seal.first_position < SEAL_INTERVAL);
        let chains: Vec<[u8; 32]> = events
            [(seal.first_position - 1) as usize..seal.last_position as usize]
            .iter()
            .map(|e| e.chain)
            .collect();
        assert_eq!(
            seal.root,
            merkle_root(&chains),
            "the root over the seal's chain values"
        );
        assert_eq!(seal.chain, *chains.last().unwrap());
        verify_seal_signature(seal, Some(&signer.public_key())).expect("signed by the hosts' key");
        expected_first = seal.last_position + 1;
    }
    seals
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hosts_seal_full_segments_in_the_background_and_on_demand_without_overlap() {
    let url = support::pg::database();
    let signer = Arc::new(SealSigner::from_seed([7; 32]));
    let mut hosts = Vec::new();
    for _ in 0..3 {
        hosts.push(
            PgStore::open_signed(&url, Some(signer.clone()))
                .await
                .unwrap(),
        );
    }
    assert_eq!(hosts[0].seal().await.unwrap(), None, "nothing to seal yet");
    for i in 0..10u64 {
        let s = StreamId::new("sealed", format!("s{i}")).unwrap();
        let events = (0..1000)
            .map(|n| NewEvent::new("E", format!(r#"{{"n":{n}}}"#)))
            .collect();
        hosts[i as usize % 3]
            .append(&s, ExpectedVersion::NoStream, events)
            .await
            .unwrap();
    }
    // The followers seal the two full segments by themselves.
    let started = Instant::now();
    loop {
        let seals = hosts[1].seals(0, 10, false).await.unwrap();
        if seals
            .last()
            .is_some_and(|s| s.last_position == 2 * SEAL_INTERVAL)
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no background seal: {seals:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // On demand: the rest, up to the head.
    let newest = hosts[2].seal().await.unwrap().unwrap();
    assert_eq!(newest.last_position, 10_000);
    assert_eq!(
        hosts[0].seal().await.unwrap(),
        Some(newest.clone()),
        "nothing new: the newest"
    );

    // Three hosts sealing at once, while a fourth writes: no overlap, no gap.
    let writer = hosts[0].clone();
    let writing = tokio::spawn(async move {
        for i in 0..50u64 {
            let s = StreamId::new("sealed", format!("w{i}")).unwrap();
            writer
                .append(&s, ExpectedVersion::Any, vec![NewEvent::new("E", "{}")])
                .await
                .unwrap();
        }
    });
    let sealing: Vec<_> = (0..9)
        .map(|i| {
            let host = hosts[i % 3].clone();
            tokio::spawn(async move { host.seal().await.unwrap() })
        })
        .collect();
    for s in sealing {
        s.await.unwrap();
    }
    writing.await.unwrap();
    hosts[1].seal().await.unwrap();
    let seals = check_seals(&hosts[1], &signer).await;
    assert_eq!(seals.last().unwrap().last_position, 10_050);
    for h in hosts {
        h.close().await;
    }
}
