//! A bank account: open, deposit, withdraw, close. A withdrawal that would take
//! the balance below the account's overdraft limit is refused.

use refold_sdk::{Aggregate, Context, Rejection};
use serde::{Deserialize, Serialize};

/// Amounts are in cents.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BankAccount {
    pub status: Status,
    pub owner: String,
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

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Command {
    Open {
        owner: String,
        #[serde(default)]
        overdraft_limit: i64,
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
    Opened { owner: String, overdraft_limit: i64 },
    Deposited { amount: i64, balance: i64 },
    Withdrawn { amount: i64, balance: i64 },
    Closed,
}

impl Aggregate for BankAccount {
    type Command = Command;
    type Event = Event;

    fn handle(&self, command: Command, _context: &Context) -> Result<Vec<Event>, Rejection> {
        match (self.status, command) {
            (
                Status::New,
                Command::Open {
                    owner,
                    overdraft_limit,
                },
            ) => {
                if owner.trim().is_empty() {
                    return Err(Rejection::new(
                        "owner-required",
                        "an account needs an owner",
                    ));
                }
                if overdraft_limit < 0 {
                    return Err(Rejection::new(
                        "invalid-amount",
                        "the overdraft limit cannot be negative",
                    ));
                }
                Ok(vec![Event::Opened {
                    owner,
                    overdraft_limit,
                }])
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
            (Status::Open, Command::Deposit { amount }) => {
                let amount = positive(amount)?;
                let balance = self.balance.checked_add(amount).ok_or_else(too_large)?;
                Ok(vec![Event::Deposited { amount, balance }])
            }
            (Status::Open, Command::Withdraw { amount }) => {
                let amount = positive(amount)?;
                let balance = self.balance.checked_sub(amount).ok_or_else(too_large)?;
                let limit = if cfg!(feature = "strict-overdraft") {
                    self.overdraft_limit / 2
                } else {
                    self.overdraft_limit
                };
                if balance < -limit {
                    return Err(Rejection::new(
                        "insufficient-funds",
                        format!(
                            "withdrawing {amount} would leave a balance of {balance}, below the overdraft limit of {limit}"
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
            Event::Opened {
                owner,
                overdraft_limit,
            } => {
                self.status = Status::Open;
                self.owner = owner.clone();
                self.overdraft_limit = *overdraft_limit;
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use refold_sdk::testing::AggregateTest;

    fn opened(overdraft_limit: i64) -> Event {
        Event::Opened {
            owner: "Ada".into(),
            overdraft_limit,
        }
    }

    #[test]
    fn an_account_opens_once() {
        AggregateTest::<BankAccount>::given_no_previous_events()
            .when(Command::Open {
                owner: "Ada".into(),
                overdraft_limit: 0,
            })
            .then_expect_events(vec![opened(0)]);
        AggregateTest::<BankAccount>::given(vec![opened(0)])
            .when(Command::Open {
                owner: "Ada".into(),
                overdraft_limit: 0,
            })
            .then_expect_rejection("already-open");
    }

    #[test]
    fn deposits_and_withdrawals_carry_the_new_balance() {
        AggregateTest::<BankAccount>::given(vec![
            opened(0),
            Event::Deposited {
                amount: 1000,
                balance: 1000,
            },
        ])
        .when(Command::Withdraw { amount: 300 })
        .then_expect_events(vec![Event::Withdrawn {
            amount: 300,
            balance: 700,
        }])
        .then_state(|s| assert_eq!((s.balance, s.withdrawals), (700, 1)));
    }

    #[test]
    fn an_overdraft_beyond_the_limit_is_rejected_with_a_reason() {
        AggregateTest::<BankAccount>::given(vec![
            opened(0),
            Event::Deposited {
                amount: 100,
                balance: 100,
            },
        ])
        .when(Command::Withdraw { amount: 101 })
        .then_expect_rejection("insufficient-funds");
        AggregateTest::<BankAccount>::given(vec![
            opened(50),
            Event::Deposited {
                amount: 100,
                balance: 100,
            },
        ])
        .when(Command::Withdraw { amount: 150 })
        .then_expect_events(vec![Event::Withdrawn {
            amount: 150,
            balance: -50,
        }]);
    }

    #[test]
    fn commands_need_an_open_account_and_positive_amounts() {
        AggregateTest::<BankAccount>::given_no_previous_events()
            .when(Command::Deposit { amount: 5 })
            .then_expect_rejection("not-open");
        AggregateTest::<BankAccount>::given(vec![opened(0)])
            .when(Command::Deposit { amount: 0 })
            .then_expect_rejection("invalid-amount");
        AggregateTest::<BankAccount>::given(vec![opened(0), Event::Closed])
            .when(Command::Deposit { amount: 5 })
            .then_expect_rejection("closed");
    }

    #[test]
    fn an_account_closes_only_at_zero() {
        AggregateTest::<BankAccount>::given(vec![
            opened(0),
            Event::Deposited {
                amount: 5,
                balance: 5,
            },
        ])
        .when(Command::Close)
        .then_expect_rejection("balance-not-zero");
        AggregateTest::<BankAccount>::given(vec![opened(0)])
            .when(Command::Close)
            .then_expect_events(vec![Event::Closed]);
    }

    #[test]
    fn json_commands_decode_as_the_host_sends_them() {
        AggregateTest::<BankAccount>::given(vec![opened(0)])
            .when_json(r#"{"type":"Deposit","amount":250}"#)
            .then_expect_events(vec![Event::Deposited {
                amount: 250,
                balance: 250,
            }]);
        AggregateTest::<BankAccount>::given(vec![opened(0)])
            .when_json(r#"{"type":"Deposit"}"#)
            .then_expect_malformed();
        AggregateTest::<BankAccount>::given(vec![opened(0)])
            .when_json("not json")
            .then_expect_malformed();
    }
}
