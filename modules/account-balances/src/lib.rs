//! A projection of bank accounts (`modules/bank-account`): each account's
//! owner, balance and number of deposits, and totals over all accounts.
//!
//! Read model:
//! - `account/{id}`: `{"owner", "balance", "deposits", "open"}`
//! - `totals`: `{"accounts", "balance"}`: accounts ever opened, the sum of their balances
//!
//! Queries:
//! - `balance` `{"account": id}`: the account's document, or `null` if there is no such account
//! - `richest` `{"limit": n}` (default 10, at most 1000): the accounts with the highest
//!   balances, highest first (ties by id), each as its document plus `"account": id`

use bank_account::Event;
use refold_sdk::{Docs, Envelope, Projection, QueryError, Selector};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The aggregate type it follows.
pub const AGGREGATE_TYPE: &str = "bank-account";
const ACCOUNT_PREFIX: &str = "account/";
const TOTALS: &str = "totals";
const DEFAULT_RICHEST: u64 = 10;
const MAX_RICHEST: u64 = 1000;

/// Amounts are in cents.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub owner: String,
    pub balance: i64,
    pub deposits: u64,
    pub open: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub accounts: u64,
    pub balance: i64,
}

pub struct AccountBalances;

pub fn account_key(id: &str) -> String {
    format!("{ACCOUNT_PREFIX}{id}")
}

impl Projection for AccountBalances {
    type Event = Event;

    fn subscription() -> Selector {
        Selector::aggregate_types([AGGREGATE_TYPE])
    }

    fn apply(docs: &mut Docs<'_>, event: &Envelope<Event>) -> Result<(), String> {
        let key = account_key(&event.aggregate_id);
        let mut account: Account = docs.get(&key)?.unwrap_or_default();
        match &event.event {
            Event::Opened { owner, .. } => {
                account.owner = owner.clone();
                account.open = true;
                update_totals(docs, |t| t.accounts += 1)?;
            }
            Event::Deposited { balance, .. } | Event::Withdrawn { balance, .. } => {
                let change = balance - account.balance;
                account.balance = *balance;
                if matches!(event.event, Event::Deposited { .. }) {
                    account.deposits += 1;
                }
                update_totals(docs, |t| t.balance += change)?;
            }
            Event::Closed => account.open = false,
        }
        docs.put(&key, &account)
    }

    fn query(docs: &Docs<'_>, name: &str, args: &Value) -> Result<Value, QueryError> {
        match name {
            "balance" => {
                let id = args.get("account").and_then(Value::as_str).ok_or_else(|| {
                    QueryError::bad_arguments("\"account\" (a string) is required")
                })?;
                let account: Option<Value> = docs.get(&account_key(id)).map_err(internal)?;
                Ok(account.unwrap_or(Value::Null))
            }
            "richest" => {
                let limit = match args.get("limit") {
                    None | Some(Value::Null) => DEFAULT_RICHEST,
                    Some(limit) => limit.as_u64().filter(|n| *n <= MAX_RICHEST).ok_or_else(
                        || {
                            QueryError::bad_arguments(format!(
                                "\"limit\" is a whole number from 0 to {MAX_RICHEST}, not {limit}"
                            ))
                        },
                    )?,
                };
                let mut accounts = Vec::new();
                for (key, doc) in docs.scan_all(ACCOUNT_PREFIX).map_err(internal)? {
                    let account: Account = serde_json::from_value(doc.clone())
                        .map_err(|e| internal(format!("{key}: {e}")))?;
                    accounts.push((account.balance, key, doc));
                }
                // Highest balance first; the scan's key order breaks ties.
                accounts.sort_by_key(|(balance, _, _)| std::cmp::Reverse(*balance));
                let richest = accounts
                    .into_iter()
                    .take(limit as usize)
                    .map(|(_, key, mut doc)| {
                        doc["account"] = Value::String(key[ACCOUNT_PREFIX.len()..].to_string());
                        doc
                    })
                    .collect();
                Ok(Value::Array(richest))
            }
            _ => Err(QueryError::UnknownQuery),
        }
    }
}

fn update_totals(docs: &mut Docs<'_>, change: impl FnOnce(&mut Totals)) -> Result<(), String> {
    let mut totals: Totals = docs.get(TOTALS)?.unwrap_or_default();
    change(&mut totals);
    docs.put(TOTALS, &totals)
}

/// A read model that does not decode is the projection's fault, not the caller's;
/// the contract has no other error for a query, so it says so plainly.
fn internal(reason: impl std::fmt::Display) -> QueryError {
    QueryError::bad_arguments(format!("the read model is unreadable: {reason}"))
}

refold_sdk::export_projection!(AccountBalances);

#[cfg(test)]
mod tests {
    use super::*;
    use refold_sdk::testing::ProjectionTest;
    use serde_json::json;

    fn opened(owner: &str) -> Event {
        Event::Opened {
            owner: owner.into(),
            overdraft_limit: 0,
        }
    }

    fn deposited(amount: i64, balance: i64) -> Event {
        Event::Deposited { amount, balance }
    }

    fn withdrawn(amount: i64, balance: i64) -> Event {
        Event::Withdrawn { amount, balance }
    }

    fn test() -> ProjectionTest<AccountBalances> {
        ProjectionTest::new()
    }

    #[test]
    fn an_account_tracks_its_owner_balance_and_deposits() {
        test()
            .given_events(
                AGGREGATE_TYPE,
                "acc-1",
                [
                    opened("Ada"),
                    deposited(1000, 1000),
                    withdrawn(300, 700),
                    deposited(50, 750),
                ],
            )
            .then_doc(
                "account/acc-1",
                json!({"owner": "Ada", "balance": 750, "deposits": 2, "open": true}),
            )
            .then_doc("totals", json!({"accounts": 1, "balance": 750}));
    }

    #[test]
    fn totals_sum_every_account_and_closed_accounts_stay() {
        test()
            .given_events(AGGREGATE_TYPE, "a", [opened("Ada"), deposited(500, 500)])
            .given_events(AGGREGATE_TYPE, "b", [opened("Bob"), deposited(200, 200)])
            .given(AGGREGATE_TYPE, "a", withdrawn(500, 0))
            .given(AGGREGATE_TYPE, "a", Event::Closed)
            .then_doc(
                "account/a",
                json!({"owner": "Ada", "balance": 0, "deposits": 1, "open": false}),
            )
            .then_doc("totals", json!({"accounts": 2, "balance": 200}))
            .then_docs("account/", 2);
    }

    #[test]
    fn overdrafts_count_negative_in_the_totals() {
        test()
            .given_events(AGGREGATE_TYPE, "a", [opened("Ada"), withdrawn(40, -40)])
            .given_events(AGGREGATE_TYPE, "b", [opened("Bob"), deposited(10, 10)])
            .then_doc("totals", json!({"accounts": 2, "balance": -30}));
    }

    #[test]
    fn other_aggregates_are_not_seen() {
        test()
            .given_raw("order", "o-1", "Placed", r#"{"items":3}"#)
            .given_raw("order", "o-1", "Opened", r#"{"owner":"not an account"}"#)
            .then_docs("", 0);
    }

    #[test]
    fn an_event_that_does_not_decode_stops_the_projection() {
        test()
            .given(AGGREGATE_TYPE, "a", opened("Ada"))
            .given_raw(AGGREGATE_TYPE, "a", "Deposited", r#"{"amount":5}"#)
            .then_apply_fails("event Deposited does not decode")
            .then_docs("", 0);
    }

    #[test]
    fn balance_answers_an_accounts_document() {
        let mut t = test()
            .given_events(AGGREGATE_TYPE, "a", [opened("Ada"), deposited(5, 5)])
            .then_query(
                "balance",
                json!({"account": "a"}),
                json!({"owner": "Ada", "balance": 5, "deposits": 1, "open": true}),
            )
            .then_query("balance", json!({"account": "nobody"}), Value::Null);
        assert!(matches!(
            t.query("balance", json!({})),
            Err(QueryError::BadArguments(_))
        ));
        assert!(matches!(
            t.query("balance", json!({"account": 7})),
            Err(QueryError::BadArguments(_))
        ));
        assert_eq!(t.query("poorest", json!({})), Err(QueryError::UnknownQuery));
    }

    #[test]
    fn richest_ranks_accounts_by_balance() {
        let mut t = test();
        for (id, balance) in [("a", 30), ("b", 50), ("c", 10), ("d", 50)] {
            t = t.given_events(
                AGGREGATE_TYPE,
                id,
                [opened(id), deposited(balance, balance)],
            );
        }
        let ranked = |answer: Value| -> Vec<(String, i64)> {
            answer
                .as_array()
                .unwrap()
                .iter()
                .map(|d| {
                    (
                        d["account"].as_str().unwrap().to_string(),
                        d["balance"].as_i64().unwrap(),
                    )
                })
                .collect()
        };
        let top = t.query("richest", json!({"limit": 3})).unwrap();
        assert_eq!(
            ranked(top.clone()),
            [("b".into(), 50), ("d".into(), 50), ("a".into(), 30)]
        );
        assert_eq!(
            top[0],
            json!({"account": "b", "owner": "b", "balance": 50, "deposits": 1, "open": true})
        );
        assert_eq!(ranked(t.query("richest", json!({})).unwrap()).len(), 4);
        assert_eq!(t.query("richest", json!({"limit": 0})).unwrap(), json!([]));
        for bad in [
            json!({"limit": -1}),
            json!({"limit": "3"}),
            json!({"limit": 1001}),
        ] {
            assert!(matches!(
                t.query("richest", bad),
                Err(QueryError::BadArguments(_))
            ));
        }
    }

    #[test]
    fn many_accounts_across_batches() {
        let mut t = test();
        for i in 0..1500 {
            t = t.given_events(
                AGGREGATE_TYPE,
                &format!("acc-{i:04}"),
                [opened("x"), deposited(i + 1, i + 1)],
            );
            if i % 500 == 499 {
                t.apply_pending().unwrap();
            }
        }
        let t = t.then_docs("account/", 1500).then_doc(
            "totals",
            json!({"accounts": 1500, "balance": 1500 * 1501 / 2}),
        );
        let mut t = t;
        let top = t.query("richest", json!({"limit": 2})).unwrap();
        assert_eq!(top[0]["account"], "acc-1499");
        assert_eq!(top[1]["account"], "acc-1498");
    }
}
