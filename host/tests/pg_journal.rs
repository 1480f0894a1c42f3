//! The command journal on PostgreSQL: an accepted command's entry commits with
//! its events and carries their positions, a refused one is a plain insert,
//! pages equal sled's for the same entries, pruning deletes by age.

mod support;

use refold::store::pg::PgStore;
use refold::store::{
    Durability, EventStore, ExpectedVersion, JournalEntry, JournalOutcome, NewEvent, StreamId,
};

fn entry(ms: u64, id: &str, ty: &str, outcome: JournalOutcome) -> JournalEntry {
    JournalEntry {
        received_at_ms: ms,
        command_id: id.into(),
        aggregate_type: ty.into(),
        aggregate_id: "a1".into(),
        command: r#"{"Deposit":{"amount":5}}"#.into(),
        expected_version: None,
        client_command_id: false,
        correlation_id: "corr".into(),
        causation_id: None,
        decided_at: 0,
        module: format!("{ty}@1.0.0"),
        outcome,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_journal_pages_as_on_sled_and_accepted_entries_carry_their_positions() {
    let url = support::pg::database();
    let pg = PgStore::open(&url).await.unwrap();
    let dir = support::temp_dir();
    let sled = support::open(&dir, Durability::None);
    let accepted = || JournalOutcome::Accepted {
        first_position: None,
        last_position: None,
    };
    let rejected = || JournalOutcome::Rejected {
        code: "no_funds".into(),
        message: "no".into(),
    };

    // The same commands on both backends, at the same received-at times.
    for i in 0..30u64 {
        let ty = if i % 3 == 0 { "order" } else { "account" };
        let id = format!("c{:02}", i % 10);
        let ms = 1000 + i / 2; // two commands per millisecond: ties broken by id
        let s = StreamId::new(ty, format!("a{i}")).unwrap();
        if i % 4 == 0 {
            let e = entry(ms, &id, ty, rejected());
            pg.journal_refused(&e).await.unwrap();
            sled.journal_refused(&e).unwrap();
        } else {
            let e = entry(ms, &id, ty, accepted());
            let events = vec![
                NewEvent::new("Deposited", "{}"),
                NewEvent::new("Noted", "{}"),
            ];
            let command_id = format!("cmd-{i}");
            let a = pg
                .append_command_journaled(
                    &s,
                    ExpectedVersion::NoStream,
                    events.clone(),
                    &command_id,
                    None,
                    e.clone(),
                )
                .await
                .unwrap();
            let b = sled
                .append_command(
                    &s,
                    ExpectedVersion::NoStream,
                    events,
                    &command_id,
                    None,
                    Some(e),
                )
                .await
                .unwrap();
            assert_eq!(a.result, b.result, "the same positions on both");
        }
    }
    for (ty, since, after, limit, max_scan) in [
        ("account", 0, None, 100, 1000),
        ("order", 0, None, 3, 1000),
        ("account", 1005, None, 4, 1000),
        ("account", 1005, Some("c01"), 4, 1000),
        ("order", 1000, None, 100, 7),
        ("account", 2000, None, 10, 1000),
        ("account", 1014, Some("c09"), 10, 1000),
    ] {
        let a = pg
            .journal_page(ty, since, after, limit, max_scan)
            .await
            .unwrap();
        let b = sled
            .journal_page(ty, since, after, limit, max_scan)
            .unwrap();
        let what = format!("{ty} since {since} after {after:?} limit {limit} scan {max_scan}");
        assert_eq!(a.entries, b.entries, "{what}");
        assert_eq!(a.next, b.next, "{what}");
        assert_eq!(a.scanned, b.scanned, "{what}");
    }
    // An accepted entry holds its events' positions.
    let page = pg
        .journal_page("account", 0, None, 100, 1000)
        .await
        .unwrap();
    let first = page
        .entries
        .iter()
        .find(|e| matches!(e.outcome, JournalOutcome::Accepted { .. }))
        .unwrap();
    let JournalOutcome::Accepted {
        first_position: Some(f),
        last_position: Some(l),
    } = first.outcome
    else {
        panic!("positions missing: {first:?}");
    };
    assert_eq!(l, f + 1);
    let event = pg.read_event(f).await.unwrap().unwrap();
    assert_eq!(event.stream.aggregate_type(), "account");

    assert_eq!(
        pg.prune_journal(1005).await.unwrap(),
        sled.prune_journal(1005).unwrap()
    );
    let a = pg
        .journal_page("account", 0, None, 100, 1000)
        .await
        .unwrap();
    let b = sled.journal_page("account", 0, None, 100, 1000).unwrap();
    assert_eq!(a.entries, b.entries);
    assert!(a.entries.iter().all(|e| e.received_at_ms >= 1005));
    pg.close().await;
    sled.close().await;
}
