//! Version 2 of the bank-account projection (`modules/account-balances`): the
//! same documents, plus withdrawals counted per account and in the totals, and
//! a `low` flag on every account a withdrawal ever took below [`LOW_THRESHOLD`].
//!
//! Read model:
//! - `account/{id}`: `{"owner", "balance", "deposits", "withdrawals", "open", "low"}`
//! - `totals`: `{"accounts", "balance", "withdrawals"}`
//!
//! Queries:
//! - `balance` `{"account": id}`: the account's document, or `null` if there is no such account
//! - `richest` `{"limit": n}` (default 10, at most 1000): as in version 1
//! - `low` `{}`: the ids of the accounts flagged `low`, in id order

use bank_account::Event;
use refold_sdk::{Docs, Envelope, Projection, QueryError, Selector};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

pub const AGGREGATE_TYPE: &str = "bank-account";
/// A withdrawal that leaves less than this (in cents) flags the account `low`, for good.
pub const LOW_THRESHOLD: i64 = 10_00;
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
    pub withdrawals: u64,
    pub open: bool,
    /// A withdrawal once left the balance below [`LOW_THRESHOLD`]; it never clears.
    pub low: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub accounts: u64,
    pub balance: i64,
    pub withdrawals: u64,
}

/// What one event changes: on the account, and on the totals.
#[derive(Default)]
struct Change {
    accounts: u64,
    balance: i64,
    withdrawals: u64,
}

pub struct AccountBalancesV2;

pub fn account_key(id: &str) -> String {
    format!("{ACCOUNT_PREFIX}{id}")
}

/// Folds one event into an account, saying what it changes in the totals.
fn evolve(account: &mut Account, event: &Event) -> Change {
    match event {
        Event::Opened { owner, .. } => {
            account.owner.clone_from(owner);
            account.open = true;
            Change {
                accounts: 1,
                ..Change::default()
            }
        }
        Event::Deposited { balance, .. } => {
            let change = balance - account.balance;
            account.balance = *balance;
            account.deposits += 1;
            Change {
                balance: change,
                ..Change::default()
            }
        }
        Event::Withdrawn { balance, .. } => {
            let change = balance - account.balance;
            account.balance = *balance;
            account.withdrawals += 1;
            account.low |= *balance < LOW_THRESHOLD;
            Change {
                balance: change,
                withdrawals: 1,
                ..Change::default()
            }
        }
        Event::Closed => {
            account.open = false;
            Change::default()
        }
    }
}

impl Projection for AccountBalancesV2 {
    type Event = Event;

    fn subscription() -> Selector {
        Selector::aggregate_types([AGGREGATE_TYPE])
    }

    fn apply(docs: &mut Docs<'_>, event: &Envelope<Event>) -> Result<(), String> {
        let key = account_key(&event.aggregate_id);
        let mut account: Account = docs.get(&key)?.unwrap_or_default();
        let change = evolve(&mut account, &event.event);
        docs.put(&key, &account)?;
        if change.accounts != 0 || change.balance != 0 || change.withdrawals != 0 {
            let mut totals: Totals = docs.get(TOTALS)?.unwrap_or_default();
            totals.accounts += change.accounts;
            totals.balance += change.balance;
            totals.withdrawals += change.withdrawals;
            docs.put(TOTALS, &totals)?;
        }
        Ok(())
    }

    fn query(docs: &Docs<'_>, name: &str, args: &Value) -> Result<Value, QueryError> {
        match name {
            "balance" => {
                let id = args.get("account").and_then(Value::as_str).ok_or_else(|| {
                    QueryError::bad_arguments("\"account\" (a string) is required")
                })?;
                let account: Option<Value> = docs.get(&account_key(id)).map_err(unreadable)?;
                Ok(account.unwrap_or(Value::Null))
            }
            "richest" => {
                let limit = limit(args)?;
                let mut ranked: Vec<(String, Account)> = accounts(docs)?;
                ranked
                    .sort_by(|(a_id, a), (b_id, b)| b.balance.cmp(&a.balance).then(a_id.cmp(b_id)));
                ranked.truncate(limit);
                Ok(ranked
                    .into_iter()
                    .map(|(id, account)| {
                        let mut doc = json!(account);
                        doc["account"] = Value::String(id);
                        doc
                    })
                    .collect())
            }
            "low" => Ok(accounts(docs)?
                .into_iter()
                .filter(|(_, account)| account.low)
                .map(|(id, _)| Value::String(id))
                .collect()),
            _ => Err(QueryError::UnknownQuery),
        }
    }
}

/// Every account, by id, in id order.
fn accounts(docs: &Docs<'_>) -> Result<Vec<(String, Account)>, QueryError> {
    docs.scan_all(ACCOUNT_PREFIX)
        .map_err(unreadable)?
        .into_iter()
        .map(|(key, doc)| {
            let account =
                serde_json::from_value(doc).map_err(|e| unreadable(format!("{key}: {e}")))?;
            Ok((key[ACCOUNT_PREFIX.len()..].to_string(), account))
        })
        .collect()
}

fn limit(args: &Value) -> Result<usize, QueryError> {
    match args.get("limit") {
        None | Some(Value::Null) => Ok(DEFAULT_RICHEST as usize),
        Some(limit) => limit
            .as_u64()
            .filter(|n| *n <= MAX_RICHEST)
            .map(|n| n as usize)
            .ok_or_else(|| {
                QueryError::bad_arguments(format!(
                    "\"limit\" is a whole number from 0 to {MAX_RICHEST}, not {limit}"
                ))
            }),
    }
}

fn unreadable(reason: impl std::fmt::Display) -> QueryError {
    QueryError::bad_arguments(format!("the read model is unreadable: {reason}"))
}

refold_sdk::export_projection!(AccountBalancesV2);

#[cfg(test)]
mod tests {
    use super::*;
    use refold_sdk::testing::ProjectionTest;

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

    fn test() -> ProjectionTest<AccountBalancesV2> {
        ProjectionTest::new()
    }

    #[test]
    fn withdrawals_are_counted_per_account_and_in_total() {
        test()
            .given_events(
                AGGREGATE_TYPE,
                "a",
                [opened("Ada"), deposited(5000, 5000), withdrawn(100, 4900), withdrawn(100, 4800)],
            )
            .given_events(AGGREGATE_TYPE, "b", [opened("Bob"), deposited(2000, 2000), withdrawn(500, 1500)])
            .then_doc(
                "account/a",
                json!({"owner": "Ada", "balance": 4800, "deposits": 1, "withdrawals": 2, "open": true, "low": false}),
            )
            .then_doc("totals", json!({"accounts": 2, "balance": 6300, "withdrawals": 3}));
    }

    #[test]
    fn an_account_once_below_the_threshold_stays_flagged_low() {
        test()
            .given_events(AGGREGATE_TYPE, "a", [opened("Ada"), deposited(2000, 2000)])
            .then_doc(
                "account/a",
                json!({"owner": "Ada", "balance": 2000, "deposits": 1, "withdrawals": 0, "open": true, "low": false}),
            )
            .given(AGGREGATE_TYPE, "a", withdrawn(1001, 999))
            .given(AGGREGATE_TYPE, "a", deposited(10_000, 10_999))
            .then_doc(
                "account/a",
                json!({"owner": "Ada", "balance": 10_999, "deposits": 2, "withdrawals": 1, "open": true, "low": true}),
            );
    }

    #[test]
    fn exactly_the_threshold_is_not_low() {
        test()
            .given_events(
                AGGREGATE_TYPE,
                "a",
                [opened("Ada"), deposited(2000, 2000), withdrawn(1000, 1000)],
            )
            .then_query("low", json!({}), json!([]))
            .given(AGGREGATE_TYPE, "a", withdrawn(1, 999))
            .then_query("low", json!({}), json!(["a"]));
    }

    #[test]
    fn closing_changes_no_totals() {
        test()
            .given_events(AGGREGATE_TYPE, "a", [opened("Ada"), Event::Closed])
            .then_doc("totals", json!({"accounts": 1, "balance": 0, "withdrawals": 0}))
            .then_doc(
                "account/a",
                json!({"owner": "Ada", "balance": 0, "deposits": 0, "withdrawals": 0, "open": false, "low": false}),
            );
    }

    #[test]
    fn other_aggregates_are_not_seen() {
        test()
            .given_raw("order", "o-1", "Withdrawn", r#"{"everything":true}"#)
            .then_docs("", 0);
    }

    #[test]
    fn queries_answer_from_the_read_model() {
        let mut t = test()
            .given_events(
                AGGREGATE_TYPE,
                "a",
                [opened("Ada"), deposited(3000, 3000), withdrawn(2500, 500)],
            )
            .given_events(AGGREGATE_TYPE, "b", [opened("Bob"), deposited(4000, 4000)])
            .given_events(AGGREGATE_TYPE, "c", [opened("Cy"), deposited(4000, 4000)])
            .then_query("low", json!({}), json!(["a"]))
            .then_query("balance", json!({"account": "zz"}), Value::Null);
        assert_eq!(
            t.query("balance", json!({"account": "a"})).unwrap()["low"],
            true
        );
        let top = t.query("richest", json!({"limit": 2})).unwrap();
        assert_eq!(top[0]["account"], "b");
        assert_eq!(top[1]["account"], "c");
        assert_eq!(top.as_array().unwrap().len(), 2);
        assert!(matches!(
            t.query("richest", json!({"limit": "x"})),
            Err(QueryError::BadArguments(_))
        ));
        assert!(matches!(
            t.query("balance", json!({})),
            Err(QueryError::BadArguments(_))
        ));
        assert_eq!(t.query("nope", json!({})), Err(QueryError::UnknownQuery));
    }
}
