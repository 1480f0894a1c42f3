use super::*;
use refold_sdk::testing::ProjectionTest;
use serde_json::json;

fn test() -> ProjectionTest<Ledger> {
    ProjectionTest::new()
}

fn opened(owner: &str) -> AccountEvent {
    AccountEvent::Opened {
        owner: owner.into(),
        overdraft_limit: 0,
    }
}

fn deposited(amount: i64, balance: i64) -> AccountEvent {
    AccountEvent::Deposited { amount, balance }
}

fn withdrawn(amount: i64, balance: i64) -> AccountEvent {
    AccountEvent::Withdrawn { amount, balance }
}

fn started(amount: i64) -> TransferEvent {
    TransferEvent::Started {
        from: "acc-a".into(),
        to: "acc-b".into(),
        amount,
    }
}

/// The answer `check` should give.
fn check(ok: bool, balances_sum: i64, external_net: i64, in_flight: i64, unmatched: i64) -> Value {
    json!({
        "ok": ok,
        "balances_sum": balances_sum,
        "external_net": external_net,
        "in_flight": in_flight,
        "unmatched_legs": unmatched,
    })
}

fn totals(totals: Totals) -> Value {
    serde_json::to_value(totals).unwrap()
}

/// acc-a holds 500, acc-b is open and empty.
fn funded() -> ProjectionTest<Ledger> {
    test()
        .given_events(ACCOUNT, "acc-a", [opened("Ada"), deposited(500, 500)])
        .given(ACCOUNT, "acc-b", opened("Bob"))
}

/// Transfer t-1 of 100 from acc-a to acc-b, debited, with the runner's
/// records around the process's events as the runner appends them (its input
/// first, then the process's events, then the commands and wake-ups it asked
/// for): the request taken in, the debit sent, the account's withdrawal, its
/// outcome taken in, the credit sent.
fn debited() -> ProjectionTest<Ledger> {
    let record = r#"{"key":"debit"}"#;
    funded()
        .given_raw(TRANSFERS, "t-1", "refold.received", record)
        .given(TRANSFERS, "t-1", started(100))
        .given_raw(TRANSFERS, "t-1", "refold.command", record)
        .given_raw(TRANSFERS, "t-1", "refold.wake-up", record)
        .given(ACCOUNT, "acc-a", withdrawn(100, 400))
        .given_raw(TRANSFERS, "t-1", "refold.accepted", record)
        .given(TRANSFERS, "t-1", TransferEvent::Debited)
        .given_raw(TRANSFERS, "t-1", "refold.command", record)
}

#[test]
fn a_completed_transfer_moves_money_between_accounts_and_the_books_balance() {
    debited()
        .given(ACCOUNT, "acc-b", deposited(100, 100))
        .given(TRANSFERS, "t-1", TransferEvent::Credited)
        .then_doc(
            "totals",
            json!({
                "balances_sum": 500,
                "deposits": 600,
                "withdrawals": 100,
                "transfer_debits": 100,
                "transfer_credits": 100,
                "transfer_refunds": 0,
                "in_flight": 0,
                "unmatched_legs": 0,
                "transfers_started": 1,
                "transfers_completed": 1,
                "transfers_failed": 0,
                "transfers_stuck": 0,
                "transfers_invalid": 0,
            }),
        )
        .then_doc(
            "account/acc-a",
            json!({"balance": 400, "deposits": 500, "withdrawals": 100,
                   "transfers_in": 0, "transfers_out": 100}),
        )
        .then_doc(
            "account/acc-b",
            json!({"balance": 100, "deposits": 100, "withdrawals": 0,
                   "transfers_in": 100, "transfers_out": 0}),
        )
        .then_doc(
            "transfer/t-1",
            json!({"phase": "completed", "from": "acc-a", "to": "acc-b", "amount": 100,
                   "failure": null, "debited": 100, "credited": 100, "refunded": 0}),
        )
        .then_query("check", json!({}), check(true, 500, 500, 0, 0));
}

#[test]
fn money_is_in_flight_between_the_debit_and_the_credit() {
    funded()
        .given(TRANSFERS, "t-1", started(100))
        .given(ACCOUNT, "acc-a", withdrawn(100, 400))
        // Not claimed yet: the withdrawal reads as external.
        .then_query("check", json!({}), check(true, 400, 400, 0, 0))
        .given(TRANSFERS, "t-1", TransferEvent::Debited)
        .then_query("check", json!({}), check(true, 400, 500, 100, 0))
        .then_query(
            "transfer",
            json!({"id": "t-1"}),
            json!({"phase": "crediting", "from": "acc-a", "to": "acc-b", "amount": 100,
                   "failure": null, "debited": 100, "credited": 0, "refunded": 0}),
        )
        // The credit has landed; the process has not recorded it yet.
        .given(ACCOUNT, "acc-b", deposited(100, 100))
        .then_query("check", json!({}), check(true, 500, 600, 100, 0))
        .given(TRANSFERS, "t-1", TransferEvent::Credited)
        .then_query("check", json!({}), check(true, 500, 500, 0, 0));
}

#[test]
fn a_refused_debit_moves_nothing() {
    funded()
        .given(TRANSFERS, "t-1", started(1000))
        .given(
            TRANSFERS,
            "t-1",
            TransferEvent::DebitRefused {
                code: "insufficient-funds".into(),
            },
        )
        .then_doc(
            "transfer/t-1",
            json!({"phase": "failed", "from": "acc-a", "to": "acc-b", "amount": 1000,
                   "failure": "insufficient-funds", "debited": 0, "credited": 0, "refunded": 0}),
        )
        .then_doc(
            "totals",
            totals(Totals {
                balances_sum: 500,
                deposits: 500,
                transfers_started: 1,
                transfers_failed: 1,
                ..Totals::default()
            }),
        )
        // Opening an account moves no money, so acc-b has no document.
        .then_no_doc("account/acc-b")
        .then_query("check", json!({}), check(true, 500, 500, 0, 0));
}

#[test]
fn a_refused_credit_is_refunded_and_the_books_balance_again() {
    debited()
        .given(
            TRANSFERS,
            "t-1",
            TransferEvent::CreditRefused {
                code: "closed".into(),
            },
        )
        .then_query("check", json!({}), check(true, 400, 500, 100, 0))
        .given(ACCOUNT, "acc-a", deposited(100, 500))
        .given(TRANSFERS, "t-1", TransferEvent::Refunded)
        .then_doc(
            "totals",
            totals(Totals {
                balances_sum: 500,
                deposits: 600,
                withdrawals: 100,
                transfer_debits: 100,
                transfer_refunds: 100,
                transfers_started: 1,
                transfers_failed: 1,
                ..Totals::default()
            }),
        )
        .then_doc(
            "account/acc-a",
            json!({"balance": 500, "deposits": 600, "withdrawals": 100,
                   "transfers_in": 100, "transfers_out": 100}),
        )
        .then_doc(
            "transfer/t-1",
            json!({"phase": "failed", "from": "acc-a", "to": "acc-b", "amount": 100,
                   "failure": "closed", "debited": 100, "credited": 0, "refunded": 100}),
        )
        .then_query("check", json!({}), check(true, 500, 500, 0, 0));
}

#[test]
fn a_late_debit_is_in_flight_until_refunded() {
    funded()
        .given(TRANSFERS, "t-1", started(100))
        .given(TRANSFERS, "t-1", TransferEvent::DebitOverdue)
        .then_doc(
            "totals",
            totals(Totals {
                balances_sum: 500,
                deposits: 500,
                transfers_started: 1,
                ..Totals::default()
            }),
        )
        .given(ACCOUNT, "acc-a", withdrawn(100, 400))
        .given(TRANSFERS, "t-1", TransferEvent::LateDebit)
        .then_query("check", json!({}), check(true, 400, 500, 100, 0))
        .given(ACCOUNT, "acc-a", deposited(100, 500))
        .given(TRANSFERS, "t-1", TransferEvent::Refunded)
        .then_query("check", json!({}), check(true, 500, 500, 0, 0))
        .then_doc(
            "transfer/t-1",
            json!({"phase": "failed", "from": "acc-a", "to": "acc-b", "amount": 100,
                   "failure": "debit-overdue", "debited": 100, "credited": 0, "refunded": 100}),
        );
}

#[test]
fn a_stuck_transfer_keeps_its_money_in_flight() {
    debited()
        .given(
            TRANSFERS,
            "t-1",
            TransferEvent::CreditRefused {
                code: "closed".into(),
            },
        )
        .given(
            TRANSFERS,
            "t-1",
            TransferEvent::RefundRefused {
                code: "closed".into(),
            },
        )
        // The books still balance, but the money is in no account: this
        // transfer is not settled, and counts as neither failed nor running.
        .then_query("check", json!({}), check(true, 400, 500, 100, 0))
        .then_doc(
            "totals",
            totals(Totals {
                balances_sum: 400,
                deposits: 500,
                withdrawals: 100,
                transfer_debits: 100,
                in_flight: 100,
                transfers_started: 1,
                transfers_stuck: 1,
                ..Totals::default()
            }),
        )
        .then_query(
            "transfer",
            json!({"id": "t-1"}),
            json!({"phase": "stuck", "from": "acc-a", "to": "acc-b", "amount": 100,
                   "failure": "closed", "debited": 100, "credited": 0, "refunded": 0}),
        );
}

#[test]
fn an_invalid_request_is_counted_and_never_started() {
    test()
        .given(
            TRANSFERS,
            "t-9",
            TransferEvent::Invalid {
                reason: "the amount must be positive, not 0".into(),
            },
        )
        .then_doc(
            "totals",
            totals(Totals {
                transfers_invalid: 1,
                ..Totals::default()
            }),
        )
        .then_doc(
            "transfer/t-9",
            json!({"phase": "failed", "from": "", "to": "", "amount": 0,
                   "failure": "invalid: the amount must be positive, not 0",
                   "debited": 0, "credited": 0, "refunded": 0}),
        );
}

#[test]
fn a_leg_no_account_movement_backs_is_unmatched() {
    // Both transfers claim a debit of acc-a; it was withdrawn from once.
    let second = TransferEvent::Started {
        from: "acc-a".into(),
        to: "acc-c".into(),
        amount: 100,
    };
    debited()
        .given(TRANSFERS, "t-2", second)
        .given(TRANSFERS, "t-2", TransferEvent::Debited)
        .then_query("check", json!({}), check(false, 400, 600, 200, 100))
        // A credit claimed on an account that received nothing.
        .given(TRANSFERS, "t-1", TransferEvent::Credited)
        .then_query("check", json!({}), check(false, 400, 500, 100, 200))
        .then_doc(
            "account/acc-b",
            json!({"balance": 0, "deposits": 0, "withdrawals": 0,
                   "transfers_in": 100, "transfers_out": 0}),
        );
}

#[test]
fn a_leg_the_transfer_cannot_back_is_unmatched() {
    // Credited without a debit: money paid out of a transfer holding none.
    funded()
        .given(TRANSFERS, "t-1", started(100))
        .given(ACCOUNT, "acc-b", deposited(100, 100))
        .given(TRANSFERS, "t-1", TransferEvent::Credited)
        .then_query("check", json!({}), check(false, 600, 500, -100, 100));
    // Debited twice, with two withdrawals to back the account side.
    debited()
        .given(ACCOUNT, "acc-a", withdrawn(100, 300))
        .given(TRANSFERS, "t-1", TransferEvent::Debited)
        .then_query("check", json!({}), check(false, 300, 500, 200, 100));
}

#[test]
fn balances_that_disagree_with_their_movements_fail_the_check() {
    test()
        .given(ACCOUNT, "acc-a", deposited(100, 150))
        .then_query("check", json!({}), check(false, 150, 100, 0, 0));
}

#[test]
fn the_runners_records_and_other_events_are_not_read() {
    test()
        .given_raw(TRANSFERS, "t-1", "refold.received", r#"{"position":1}"#)
        .given_raw(TRANSFERS, "t-1", "refold.fired", "{}")
        .given(ACCOUNT, "acc-a", opened("Ada"))
        .given(ACCOUNT, "acc-a", AccountEvent::Closed)
        .given_raw(
            "teller",
            "desk-1",
            "Deposited",
            r#"{"amount":5,"balance":5}"#,
        )
        .given_raw("process:other", "x", "Started", r#"{"anything":1}"#)
        .then_docs("", 0);
}

#[test]
fn an_event_in_the_other_modules_stream_stops_the_projection() {
    // The selector admits every listed type in both aggregate types; these
    // pairs never occur, and would be a broken log if they did.
    test()
        .given_raw(TRANSFERS, "t-1", "Withdrawn", r#"{"amount":5,"balance":5}"#)
        .then_apply_fails("a Withdrawn event in a \"process:transfers\" stream")
        .given_raw(ACCOUNT, "acc-a", "Debited", "{}")
        .then_apply_fails("a Debited event in a \"bank-account\" stream")
        .then_docs("", 0);
}

#[test]
fn a_leg_before_started_or_an_undecodable_event_stops_the_projection() {
    test()
        .given(TRANSFERS, "t-1", TransferEvent::Debited)
        .then_apply_fails("\"transfer/t-1\" is missing")
        .given_raw(ACCOUNT, "acc-a", "Deposited", r#"{"amount":5}"#)
        .then_apply_fails("event Deposited does not decode")
        .given_raw(TRANSFERS, "t-1", "Started", r#"{"from":"acc-a"}"#)
        .then_apply_fails("event Started does not decode")
        .then_docs("", 0);
}

/// One of each of the process's events. The match does not compile once the
/// process has an event it does not list, which is the cue to add it here
/// and to [`TRANSFER_EVENTS`].
fn one_of_each_transfer_event() -> Vec<TransferEvent> {
    let all = vec![
        started(1),
        TransferEvent::Invalid { reason: "r".into() },
        TransferEvent::Debited,
        TransferEvent::DebitRefused { code: "c".into() },
        TransferEvent::DebitOverdue,
        TransferEvent::Credited,
        TransferEvent::CreditRefused { code: "c".into() },
        TransferEvent::LateDebit,
        TransferEvent::Refunded,
        TransferEvent::RefundRefused { code: "c".into() },
    ];
    for event in &all {
        match event {
            TransferEvent::Started { .. }
            | TransferEvent::Invalid { .. }
            | TransferEvent::Debited
            | TransferEvent::DebitRefused { .. }
            | TransferEvent::DebitOverdue
            | TransferEvent::Credited
            | TransferEvent::CreditRefused { .. }
            | TransferEvent::LateDebit
            | TransferEvent::Refunded
            | TransferEvent::RefundRefused { .. } => {}
        }
    }
    all
}

fn event_type<E: Serialize>(event: &E) -> String {
    refold_sdk::codec::encode_event(event).unwrap().event_type
}

#[test]
fn the_selector_lists_every_transfer_event_and_the_money_moving_account_events() {
    let transfer_types: Vec<String> = one_of_each_transfer_event()
        .iter()
        .map(event_type)
        .collect();
    assert_eq!(transfer_types, TRANSFER_EVENTS, "the process's event types");
    assert_eq!(
        [event_type(&deposited(1, 1)), event_type(&withdrawn(1, 0))],
        ACCOUNT_EVENTS
    );
    assert!(
        ACCOUNT_EVENTS.iter().all(|t| !TRANSFER_EVENTS.contains(t)),
        "the ledger tells the two modules' events apart by type"
    );
    let selector = Ledger::subscription();
    assert!(selector.matches(ACCOUNT, "Deposited"));
    assert!(selector.matches(TRANSFERS, "LateDebit"));
    assert!(!selector.matches(TRANSFERS, "refold.accepted"));
    assert!(!selector.matches(ACCOUNT, "Opened"));
    assert!(!selector.matches("teller", "Started"));
}

#[test]
fn queries_answer_before_the_first_event_and_check_their_arguments() {
    let mut t = test()
        .then_query("totals", json!({}), totals(Totals::default()))
        .then_query("check", json!({}), check(true, 0, 0, 0, 0))
        .then_query("transfer", json!({"id": "t-404"}), Value::Null);
    assert!(matches!(
        t.query("transfer", json!({})),
        Err(QueryError::BadArguments(_))
    ));
    assert_eq!(t.query("audit", json!({})), Err(QueryError::UnknownQuery));
}

#[test]
fn the_check_takes_its_sums_in_128_bits() {
    let books = Totals {
        balances_sum: i64::MAX,
        deposits: i64::MAX,
        ..Totals::default()
    };
    assert!(books.check().unwrap().ok);
    let beyond = Totals {
        deposits: i64::MAX,
        transfer_debits: 1,
        ..Totals::default()
    };
    let error = beyond.check().unwrap_err();
    assert!(error.contains("does not fit in 64 bits"), "{error}");
}
