//! account-balances 3.0.0: the balances of `modules/account-balances`, over
//! bank-account 2.0.0's events. It reads the whole history, 1.x events
//! included, through 2.0.0's [`schema`](bank_account_v2::schema) (its
//! upcasters): over a log that 1.x and 2.0.0 wrote in turns it builds the
//! same documents as over one 2.0.0 wrote alone.
//!
//! Read model:
//! - `account/{id}`: `{"holder", "balance", "overdraft_limit", "deposits", "open"}`
//! - `totals`: `{"accounts", "balance"}`
//!
//! Queries: `balance` `{"account": id}`: the account's document or `null`.

use bank_account_v2::Event;
use refold_sdk::{Docs, Envelope, Projection, QueryError, Schema, Selector};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub const AGGREGATE_TYPE: &str = "bank-account";
const TOTALS: &str = "totals";

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub holder: String,
    pub balance: i64,
    pub overdraft_limit: i64,
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
    format!("account/{id}")
}

impl Projection for AccountBalances {
    type Event = Event;

    fn subscription() -> Selector {
        Selector::aggregate_types([AGGREGATE_TYPE])
    }

    fn schema() -> Schema {
        bank_account_v2::schema()
    }

    fn apply(docs: &mut Docs<'_>, event: &Envelope<Event>) -> Result<(), String> {
        let key = account_key(&event.aggregate_id);
        let mut account: Account = docs.get(&key)?.unwrap_or_default();
        match &event.event {
            Event::Opened { holder } => {
                account.holder = holder.clone();
                account.open = true;
                update_totals(docs, |t| t.accounts += 1)?;
            }
            Event::OverdraftLimitSet { limit } => account.overdraft_limit = *limit,
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
                let account: Option<Value> = docs
                    .get(&account_key(id))
                    .map_err(|e| QueryError::bad_arguments(format!("unreadable: {e}")))?;
                Ok(account.unwrap_or(Value::Null))
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

refold_sdk::export_projection!(AccountBalances);

#[cfg(test)]
mod tests {
    use super::*;
    use refold_sdk::testing::ProjectionTest;
    use serde_json::json;

    #[test]
    fn a_1_x_history_builds_the_documents_a_2_0_0_history_does() {
        let mixed = ProjectionTest::<AccountBalances>::new()
            .given_recorded(
                AGGREGATE_TYPE,
                "a",
                "Opened",
                1,
                r#"{"owner":"Ada","overdraft_limit":50}"#,
            )
            .given_recorded(
                AGGREGATE_TYPE,
                "a",
                "Deposited",
                1,
                r#"{"amount":100,"balance":100}"#,
            );
        let current = ProjectionTest::<AccountBalances>::new()
            .given(
                AGGREGATE_TYPE,
                "a",
                Event::Opened {
                    holder: "Ada".into(),
                },
            )
            .given(AGGREGATE_TYPE, "a", Event::OverdraftLimitSet { limit: 50 })
            .given(
                AGGREGATE_TYPE,
                "a",
                Event::Deposited {
                    amount: 100,
                    balance: 100,
                },
            );
        let expected = json!({"holder": "Ada", "balance": 100, "overdraft_limit": 50, "deposits": 1, "open": true});
        mixed
            .then_doc("account/a", expected.clone())
            .then_doc("totals", json!({"accounts": 1, "balance": 100}));
        current
            .then_doc("account/a", expected)
            .then_doc("totals", json!({"accounts": 1, "balance": 100}));
    }
}
