//! bank-account 2.0.0: the account of `modules/bank-account`, after its
//! events changed shape in two ways history has to survive:
//!
//! - a field was renamed: `Opened`'s `owner` is now `holder` (and the state's);
//! - an event was split in two: 1.x `Opened { owner, overdraft_limit }` is now
//!   `Opened { holder }` followed, when there is a limit, by
//!   `OverdraftLimitSet { limit }`, which 2.0.0 also emits on its own for the
//!   new `SetOverdraftLimit` command.
//!
//! `Opened` is declared at schema version 2; the upcaster from version 1
//! turns every 1.x `Opened` into exactly the events 2.0.0 itself writes for
//! the same command, so a stream opened under 1.x folds to the state it would
//! have had under 2.0.0 from the start, and so does any read model built from
//! it with the same [`schema`] (account-balances 3.0.0). The log keeps the
//! 1.x events as they were written.
//!
//! Built with the `no-upcasters` feature it forgets the upcaster: the version
//! that `refold module check` must refuse over a 1.x history.

use refold_sdk::{Aggregate, Context, Rejection, Schema, Upcast};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Amounts are in cents.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BankAccount {
    pub status: Status,
    pub holder: String,
    pub balance: i64,
    /// How far below zero the balance may go (0: no overdraft).
    pub overdraft_limit: i64,
    pub deposits: u64,
    pub withdrawals: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    #[default]
    New,
    Open,
    Closed,
}

/// The commands 1.x took, unchanged (so clients need not change with it),
/// plus `SetOverdraftLimit`. `Open` takes `holder` or, as 1.x did, `owner`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Command {
    Open {
        #[serde(alias = "owner")]
        holder: String,
        #[serde(default)]
        overdraft_limit: i64,
    },
    SetOverdraftLimit {
        limit: i64,
    },
    Deposit {
        amount: i64,
    },
    Withdraw {
        amount: i64,
    },
    Close,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Event {
    /// Schema version 2 (1.x: `{ owner, overdraft_limit }`).
    Opened {
        holder: String,
    },
    OverdraftLimitSet {
        limit: i64,
    },
    Deposited {
        amount: i64,
        balance: i64,
    },
    Withdrawn {
        amount: i64,
        balance: i64,
    },
    Closed,
}

/// The events `Open` leads to, in 2.0.0's shapes: what `handle` emits and
/// what the upcaster turns a 1.x `Opened` into. One function for both, so
/// the two cannot drift apart.
fn opening(holder: String, overdraft_limit: i64) -> Vec<Event> {
    let mut events = vec![Event::Opened { holder }];
    if overdraft_limit != 0 {
        events.push(Event::OverdraftLimitSet {
            limit: overdraft_limit,
        });
    }
    events
}

/// 2.0.0's event schema: `Opened` at version 2, and (unless built with
/// `no-upcasters`) the step from 1.x's `Opened`.
pub fn schema() -> Schema {
    let schema = Schema::new().current("Opened", 2);
    if cfg!(feature = "no-upcasters") {
        return schema;
    }
    schema.upcast("Opened", 1, |data: Value| {
        let holder = data
            .get("owner")
            .and_then(Value::as_str)
            .ok_or("a 1.x Opened has a string \"owner\"")?;
        let limit = match data.get("overdraft_limit") {
            None | Some(Value::Null) => 0,
            Some(v) => v
                .as_i64()
                .ok_or("a 1.x Opened's \"overdraft_limit\" is a whole number")?,
        };
        opening(holder.to_string(), limit)
            .into_iter()
            .map(|event| {
                let mut value = serde_json::to_value(&event).map_err(|e| e.to_string())?;
                let Value::Object(fields) = &mut value else {
                    return Err("an event serializes to an object".to_string());
                };
                let event_type = fields
                    .remove("type")
                    .and_then(|t| t.as_str().map(str::to_string))
                    .ok_or("an event has a type tag")?;
                let version = if event_type == "Opened" { 2 } else { 1 };
                Ok(Upcast::new(event_type, version, json!(fields)))
            })
            .collect()
    })
}

impl Aggregate for BankAccount {
    type Command = Command;
    type Event = Event;

    fn handle(&self, command: Command, _context: &Context) -> Result<Vec<Event>, Rejection> {
        match (self.status, command) {
            (
                Status::New,
                Command::Open {
                    holder,
                    overdraft_limit,
                },
            ) => {
                if holder.trim().is_empty() {
                    return Err(Rejection::new(
                        "owner-required",
                        "an account needs a holder",
                    ));
                }
                if overdraft_limit < 0 {
                    return Err(Rejection::new(
                        "invalid-amount",
                        "the overdraft limit cannot be negative",
                    ));
                }
                Ok(opening(holder, overdraft_limit))
            }
            (Status::New, _) => Err(Rejection::new(
                "not-open",
                "the account has not been opened",
            )),
            (Status::Closed, _) => Err(Rejection::new("closed", "the account is closed")),
            (Status::Open, Command::Open { .. }) => Err(Rejection::new(
                "already-open",
                "the account is already open",
            )),
            (Status::Open, Command::SetOverdraftLimit { limit }) => {
                if limit < 0 {
                    return Err(Rejection::new(
                        "invalid-amount",
                        "the overdraft limit cannot be negative",
                    ));
                }
                if self.balance < -limit {
                    return Err(Rejection::new(
                        "insufficient-funds",
                        format!("the balance of {} is already below -{limit}", self.balance),
                    ));
                }
                Ok(vec![Event::OverdraftLimitSet { limit }])
            }
            (Status::Open, Command::Deposit { amount }) => {
                let amount = positive(amount)?;
                let balance = self.balance.checked_add(amount).ok_or_else(too_large)?;
                Ok(vec![Event::Deposited { amount, balance }])
            }
            (Status::Open, Command::Withdraw { amount }) => {
                let amount = positive(amount)?;
                let balance = self.balance.checked_sub(amount).ok_or_else(too_large)?;
                if balance < -self.overdraft_limit {
                    return Err(Rejection::new(
                        "insufficient-funds",
                        format!(
                            "withdrawing {amount} would leave a balance of {balance}, below the overdraft limit of {}",
                            self.overdraft_limit
                        ),
                    ));
                }
                Ok(vec![Event::Withdrawn { amount, balance }])
            }
            (Status::Open, Command::Close) => {
                if self.balance != 0 {
                    return Err(Rejection::new(
                        "balance-not-zero",
                        format!(
                            "the balance is {}; an account closes only at zero",
                            self.balance
                        ),
                    ));
                }
                Ok(vec![Event::Closed])
            }
        }
    }

    fn apply(mut self, event: &Event) -> Self {
        match event {
            Event::Opened { holder } => {
                self.status = Status::Open;
                self.holder = holder.clone();
            }
            Event::OverdraftLimitSet { limit } => self.overdraft_limit = *limit,
            Event::Deposited { balance, .. } => {
                self.balance = *balance;
                self.deposits += 1;
            }
            Event::Withdrawn { balance, .. } => {
                self.balance = *balance;
                self.withdrawals += 1;
            }
            Event::Closed => self.status = Status::Closed,
        }
        self
    }

    fn schema() -> Schema {
        schema()
    }
}

fn positive(amount: i64) -> Result<i64, Rejection> {
    if amount <= 0 {
        return Err(Rejection::new(
            "invalid-amount",
            format!("the amount must be positive, not {amount}"),
        ));
    }
    Ok(amount)
}

fn too_large() -> Rejection {
    Rejection::new("invalid-amount", "the amount is too large")
}

#[cfg(feature = "component")]
refold_sdk::export_aggregate!(BankAccount);

#[cfg(all(test, not(feature = "no-upcasters")))]
mod tests {
    use super::*;
    use refold_sdk::testing::AggregateTest;

    #[test]
    fn a_v1_opening_upcasts_to_what_2_0_0_writes_for_the_same_command() {
        for limit in [0, 50] {
            let written = AggregateTest::<BankAccount>::given_no_previous_events()
                .when_json(&format!(
                    r#"{{"type":"Open","owner":"Ada","overdraft_limit":{limit}}}"#
                ))
                .events()
                .expect("opens")
                .to_vec();
            let upcast = AggregateTest::<BankAccount>::upcast(
                "Opened",
                1,
                json!({"owner": "Ada", "overdraft_limit": limit}),
            )
            .unwrap();
            assert_eq!(upcast, written, "limit {limit}");
        }
        // The shapes, spelled out: the rename and the split.
        assert_eq!(
            AggregateTest::<BankAccount>::upcast(
                "Opened",
                1,
                json!({"owner": "Ada", "overdraft_limit": 50})
            )
            .unwrap(),
            vec![
                Event::Opened {
                    holder: "Ada".into()
                },
                Event::OverdraftLimitSet { limit: 50 }
            ]
        );
    }

    #[test]
    fn a_1_x_history_folds_to_the_state_2_0_0_history_gives() {
        let v1 = AggregateTest::<BankAccount>::given_recorded([
            ("Opened", 1, json!({"owner": "Ada", "overdraft_limit": 50})),
            ("Deposited", 1, json!({"amount": 100, "balance": 100})),
            ("Withdrawn", 1, json!({"amount": 130, "balance": -30})),
        ]);
        let v2 = AggregateTest::<BankAccount>::given(vec![
            Event::Opened {
                holder: "Ada".into(),
            },
            Event::OverdraftLimitSet { limit: 50 },
            Event::Deposited {
                amount: 100,
                balance: 100,
            },
            Event::Withdrawn {
                amount: 130,
                balance: -30,
            },
        ]);
        assert_eq!(v1.state(), v2.state());
        assert_eq!(v1.state().holder, "Ada");
        assert_eq!(v1.state().overdraft_limit, 50);
        for test in [v1, v2] {
            test.when(Command::Withdraw { amount: 21 })
                .then_expect_rejection("insufficient-funds");
        }
    }

    #[test]
    fn version_2_openings_and_the_new_command() {
        AggregateTest::<BankAccount>::given_recorded([("Opened", 2, json!({"holder": "Bo"}))])
            .when(Command::SetOverdraftLimit { limit: 10 })
            .then_expect_events(vec![Event::OverdraftLimitSet { limit: 10 }]);
        assert!(
            AggregateTest::<BankAccount>::upcast("Opened", 1, json!({"holder": "Bo"}))
                .unwrap_err()
                .contains("owner")
        );
    }
}
