//! The bank's books: a projection of the money bank accounts
//! (`modules/bank-account`) hold and move, and of the transfers
//! (`modules/transfers`) that move it between them, kept so that the
//! double-entry invariant of transfers can be checked at any point of the log.
//!
//! # What it reads
//!
//! - `bank-account` streams: `Deposited` and `Withdrawn`, the events that move
//!   money. Each carries its `amount` and the account's `balance` after it.
//! - `process:transfers` streams: the transfers process's own events (every
//!   variant of [`transfers::Event`]), one stream per transfer, its id the
//!   transfer id. This assumes the process is registered under the name
//!   `transfers`, which names its streams. Only `Started` carries the amount:
//!   the legs (`Debited`, `LateDebit`, `Credited`, `Refunded`) take it from
//!   the transfer's document, written at `Started`.
//!
//! The runner also writes its own records into the process streams
//! (`refold.received`, `refold.accepted`, `refold.command`, ...: every type
//! starting with `refold.`). They are not the process's events, do not decode
//! as one, and must not reach the ledger. A selector's aggregate types and
//! event types are both conditions (an event must match a listed aggregate
//! type *and* a listed event type), so the ledger lists its event types
//! explicitly ([`ACCOUNT_EVENTS`], [`TRANSFER_EVENTS`]) rather than taking
//! every event of its two aggregate types. The two lists are disjoint and each
//! belongs to one aggregate type, so the pairs the selector admits are exactly
//! the wanted ones. A new event of either module is not seen until it is
//! listed here.
//!
//! # The invariant
//!
//! Money enters and leaves the bank only by *external* movements: deposits
//! and withdrawals that no transfer claims as one of its legs. A transfer only
//! moves money between accounts, and holds it *in flight* from its debit to
//! its credit or its refund. So, with every amount in cents:
//!
//! ```text
//! external_deposits    = deposits    - transfer_credits - transfer_refunds
//! external_withdrawals = withdrawals - transfer_debits
//! external_net         = external_deposits - external_withdrawals
//! in_flight            = transfer_debits - transfer_credits - transfer_refunds
//!
//! balances_sum + in_flight == external_net       at every position of the log
//! in_flight == 0                                 once every transfer is settled
//! balances_sum == external_net                   hence, once every transfer is settled
//! ```
//!
//! "Settled" means completed or failed: a stuck transfer (its refund refused)
//! keeps its money in flight until a person settles it, and a transfer given
//! up on (`DebitOverdue`) is still running until its debit's outcome arrives.
//!
//! The first equation is checked, not assumed, in two ways. The ledger
//! cannot see which command caused a bank-account event, so "external" is
//! what is left of the movements once the legs are taken out:
//!
//! - The transfer terms cancel out of the equation, which leaves
//!   `balances_sum == deposits - withdrawals`. `balances_sum` adds up each
//!   account's last `balance`, while `deposits` and `withdrawals` add up the
//!   `amount`s, so the equation fails when an account's balances disagree
//!   with its movements.
//! - What ties the legs to the accounts is `unmatched_legs`: each leg a
//!   transfer claims must be backed twice, or its amount counts there. By the
//!   transfer: a debit only once, a credit or a refund only of money the
//!   transfer holds in flight. And by the account it names: a withdrawal from
//!   the source, a deposit into the destination (or back into the source),
//!   that no other leg claimed. The account's movement always comes first in
//!   the log (the process records a leg only in answer to the outcome of the
//!   command that made it), so a leg claimed without its movement, twice, or
//!   by a transfer holding nothing is caught as it is read. A movement made
//!   twice is not: the second reads as external.
//!
//! Between an account's movement and the leg that claims it, the movement
//! reads as external, which keeps the equation true in that window too.
//! `check` is `ok` when the equation holds and no leg is unmatched.
//!
//! # Read model (amounts in cents)
//!
//! - `account/{id}`: `{"balance", "deposits", "withdrawals", "transfers_in", "transfers_out"}`:
//!   the last balance, the sums of its deposits and withdrawals, and of the legs transfers
//!   claimed on it (credits and refunds in, debits out)
//! - `transfer/{id}`: the transfer's state as the process folds it (`{"phase", "from", "to",
//!   "amount", "failure"}`) plus `{"debited", "credited", "refunded"}`
//! - `totals`: [`Totals`]: `{"balances_sum", "deposits", "withdrawals", "transfer_debits",
//!   "transfer_credits", "transfer_refunds", "in_flight", "unmatched_legs", "transfers_started",
//!   "transfers_completed", "transfers_failed", "transfers_stuck", "transfers_invalid"}`;
//!   `transfers_invalid` counts requests refused before they started, so the transfers running
//!   are `transfers_started - transfers_completed - transfers_failed - transfers_stuck`
//!
//! # Queries
//!
//! - `totals` `{}`: the totals document (zeros before the first event)
//! - `check` `{}`: [`Check`]: `{"ok", "balances_sum", "external_net", "in_flight",
//!   "unmatched_legs"}`, `ok` when `balances_sum + in_flight == external_net` and no leg is
//!   unmatched
//! - `transfer` `{"id": id}`: the transfer's document, or `null` if the ledger has not seen it

use bank_account::Event as AccountEvent;
use refold_sdk::{Docs, Envelope, Process, Projection, QueryError, Selector};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use transfers::{Event as TransferEvent, Phase, Transfer};

/// The aggregate type of bank accounts.
pub const ACCOUNT: &str = "bank-account";
/// The aggregate type of the transfers process's instance streams.
pub const TRANSFERS: &str = "process:transfers";
/// The bank-account events that move money. `Opened` and `Closed` move none.
pub const ACCOUNT_EVENTS: [&str; 2] = ["Deposited", "Withdrawn"];
/// Every event type of [`transfers::Event`]: the legs move money, the others
/// tell where a transfer stands, and the document folds them all as the
/// process does.
pub const TRANSFER_EVENTS: [&str; 10] = [
    "Started",
    "Invalid",
    "Debited",
    "DebitRefused",
    "DebitOverdue",
    "Credited",
    "CreditRefused",
    "LateDebit",
    "Refunded",
    "RefundRefused",
];
const ACCOUNT_PREFIX: &str = "account/";
const TRANSFER_PREFIX: &str = "transfer/";
const TOTALS: &str = "totals";

/// One account's movements and the transfer legs claimed on it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountDoc {
    /// As its last movement left it.
    pub balance: i64,
    pub deposits: i64,
    pub withdrawals: i64,
    /// Credits and refunds that transfers claimed as deposits into it.
    pub transfers_in: i64,
    /// Debits that transfers claimed as withdrawals from it.
    pub transfers_out: i64,
}

/// A transfer as the process sees it, and the money its legs moved.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferDoc {
    /// Folded by the process's own `apply`, so the ledger's phase is the
    /// process's.
    #[serde(flatten)]
    pub state: Transfer,
    pub debited: i64,
    pub credited: i64,
    pub refunded: i64,
}

impl TransferDoc {
    /// What the transfer took from its source and has not paid out.
    pub fn in_flight(&self) -> i64 {
        self.debited
            .saturating_sub(self.credited)
            .saturating_sub(self.refunded)
    }
}

/// The books. See the crate documentation for what the fields mean and the
/// invariant they keep.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub balances_sum: i64,
    pub deposits: i64,
    pub withdrawals: i64,
    pub transfer_debits: i64,
    pub transfer_credits: i64,
    pub transfer_refunds: i64,
    pub in_flight: i64,
    pub unmatched_legs: i64,
    pub transfers_started: u64,
    pub transfers_completed: u64,
    pub transfers_failed: u64,
    pub transfers_stuck: u64,
    pub transfers_invalid: u64,
}

/// The answer of the `check` query.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    /// `balances_sum + in_flight == external_net`, and no leg is unmatched.
    pub ok: bool,
    pub balances_sum: i64,
    pub external_net: i64,
    pub in_flight: i64,
    pub unmatched_legs: i64,
}

impl Totals {
    /// Checks the invariant. The sums are taken in 128 bits, so no
    /// combination of 64-bit totals overflows; only an `external_net` beyond
    /// 64 bits is an error.
    pub fn check(&self) -> Result<Check, String> {
        let wide = |v: i64| i128::from(v);
        let external_net = wide(self.deposits)
            - wide(self.transfer_credits)
            - wide(self.transfer_refunds)
            - (wide(self.withdrawals) - wide(self.transfer_debits));
        let conserved = wide(self.balances_sum) + wide(self.in_flight) == external_net;
        Ok(Check {
            ok: conserved && self.unmatched_legs == 0,
            balances_sum: self.balances_sum,
            external_net: i64::try_from(external_net)
                .map_err(|_| format!("the external net {external_net} does not fit in 64 bits"))?,
            in_flight: self.in_flight,
            unmatched_legs: self.unmatched_legs,
        })
    }
}

/// An event the ledger reads: a bank account's or a transfer's, told apart
/// by its type (the two lists are disjoint). Decoding by type, rather than
/// trying one and then the other, keeps the decoding error of the right one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    Account(AccountEvent),
    Transfer(TransferEvent),
}

impl<'de> Deserialize<'de> for Entry {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        let event_type = value.get("type").and_then(Value::as_str);
        if event_type.is_some_and(|t| ACCOUNT_EVENTS.contains(&t)) {
            AccountEvent::deserialize(value)
                .map(Entry::Account)
                .map_err(D::Error::custom)
        } else {
            TransferEvent::deserialize(value)
                .map(Entry::Transfer)
                .map_err(D::Error::custom)
        }
    }
}

pub struct Ledger;

pub fn account_key(id: &str) -> String {
    format!("{ACCOUNT_PREFIX}{id}")
}

pub fn transfer_key(id: &str) -> String {
    format!("{TRANSFER_PREFIX}{id}")
}

impl Projection for Ledger {
    type Event = Entry;

    fn subscription() -> Selector {
        Selector::aggregate_types([ACCOUNT, TRANSFERS])
            .with_event_types(ACCOUNT_EVENTS.into_iter().chain(TRANSFER_EVENTS))
    }

    fn apply(docs: &mut Docs<'_>, event: &Envelope<Entry>) -> Result<(), String> {
        match (event.aggregate_type.as_str(), &event.event) {
            (ACCOUNT, Entry::Account(e)) => apply_movement(docs, &event.aggregate_id, e),
            (TRANSFERS, Entry::Transfer(e)) => apply_transfer(docs, &event.aggregate_id, e),
            (stream, _) => Err(format!(
                "a {} event in a {stream:?} stream: the ledger reads {ACCOUNT_EVENTS:?} of \
                 {ACCOUNT:?} and {TRANSFER_EVENTS:?} of {TRANSFERS:?}",
                event.event_type
            )),
        }
    }

    fn query(docs: &Docs<'_>, name: &str, args: &Value) -> Result<Value, QueryError> {
        let totals = || -> Result<Totals, QueryError> {
            Ok(docs.get(TOTALS).map_err(internal)?.unwrap_or_default())
        };
        match name {
            "totals" => serde_json::to_value(totals()?).map_err(internal),
            "check" => serde_json::to_value(totals()?.check().map_err(internal)?).map_err(internal),
            "transfer" => {
                let id = args
                    .get("id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| QueryError::bad_arguments("\"id\" (a string) is required"))?;
                let transfer: Option<Value> = docs.get(&transfer_key(id)).map_err(internal)?;
                Ok(transfer.unwrap_or(Value::Null))
            }
            _ => Err(QueryError::UnknownQuery),
        }
    }
}

/// A deposit or a withdrawal: the account's balance, its movements and the books.
fn apply_movement(docs: &mut Docs<'_>, id: &str, event: &AccountEvent) -> Result<(), String> {
    let (amount, balance, deposit) = match event {
        AccountEvent::Deposited { amount, balance } => (*amount, *balance, true),
        AccountEvent::Withdrawn { amount, balance } => (*amount, *balance, false),
        // Not subscribed to: they move no money.
        AccountEvent::Opened { .. } | AccountEvent::Closed => return Ok(()),
    };
    let key = account_key(id);
    let mut account: AccountDoc = docs.get(&key)?.unwrap_or_default();
    let mut totals: Totals = docs.get(TOTALS)?.unwrap_or_default();
    let change = balance
        .checked_sub(account.balance)
        .ok_or_else(|| format!("the change of {id:?}'s balance overflows 64 bits"))?;
    add(&mut totals.balances_sum, change, "the sum of the balances")?;
    account.balance = balance;
    if deposit {
        add(&mut account.deposits, amount, "an account's deposits")?;
        add(&mut totals.deposits, amount, "the deposits")?;
    } else {
        add(&mut account.withdrawals, amount, "an account's withdrawals")?;
        add(&mut totals.withdrawals, amount, "the withdrawals")?;
    }
    docs.put(&key, &account)?;
    docs.put(TOTALS, &totals)
}

/// Which way a transfer's leg moved money.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Leg {
    /// Out of the source, into the transfer.
    Debit,
    /// Out of the transfer, into the destination.
    Credit,
    /// Out of the transfer, back into the source.
    Refund,
}

/// One of a transfer's events: its legs go to the books, and the transfer's
/// state moves as the process moves it.
fn apply_transfer(docs: &mut Docs<'_>, id: &str, event: &TransferEvent) -> Result<(), String> {
    let key = transfer_key(id);
    let leg = match event {
        TransferEvent::Debited | TransferEvent::LateDebit => Some(Leg::Debit),
        TransferEvent::Credited => Some(Leg::Credit),
        TransferEvent::Refunded => Some(Leg::Refund),
        _ => None,
    };
    let mut transfer: TransferDoc = match event {
        TransferEvent::Started { .. } | TransferEvent::Invalid { .. } => {
            docs.get(&key)?.unwrap_or_default()
        }
        // Every other event follows `Started` in the transfer's stream (the
        // process sends nothing before it), so a missing document means a
        // broken log or read model, and no amount to book the leg with.
        _ => docs.get(&key)?.ok_or_else(|| {
            format!("{key:?} is missing: the transfer's Started event was never seen")
        })?,
    };
    let mut totals: Totals = docs.get(TOTALS)?.unwrap_or_default();
    if let Some(leg) = leg {
        book_leg(docs, &mut totals, &mut transfer, leg)?;
    }

    let before = transfer.state.phase;
    transfer.state = std::mem::take(&mut transfer.state).apply(event);
    if matches!(event, TransferEvent::Started { .. }) {
        totals.transfers_started += 1;
    }
    if transfer.state.phase != before {
        match transfer.state.phase {
            Phase::Completed => totals.transfers_completed += 1,
            Phase::Failed if matches!(event, TransferEvent::Invalid { .. }) => {
                totals.transfers_invalid += 1
            }
            Phase::Failed => totals.transfers_failed += 1,
            Phase::Stuck => totals.transfers_stuck += 1,
            Phase::New
            | Phase::Debiting
            | Phase::Crediting
            | Phase::Abandoning
            | Phase::Refunding => {}
        }
    }
    docs.put(&key, &transfer)?;
    docs.put(TOTALS, &totals)
}

/// Books a leg of `transfer`'s amount, and counts it as unmatched unless both
/// the transfer and the account it names back it (see the crate docs).
fn book_leg(
    docs: &mut Docs<'_>,
    totals: &mut Totals,
    transfer: &mut TransferDoc,
    leg: Leg,
) -> Result<(), String> {
    let amount = transfer.state.amount;
    let account_id = match leg {
        Leg::Debit | Leg::Refund => &transfer.state.from,
        Leg::Credit => &transfer.state.to,
    };
    let key = account_key(account_id);
    let mut account: AccountDoc = docs.get(&key)?.unwrap_or_default();
    let (by_transfer, unclaimed) = match leg {
        Leg::Debit => (
            transfer.debited == 0,
            account.withdrawals.saturating_sub(account.transfers_out),
        ),
        Leg::Credit | Leg::Refund => (
            transfer.in_flight() >= amount,
            account.deposits.saturating_sub(account.transfers_in),
        ),
    };
    let by_account = unclaimed >= amount;
    match leg {
        Leg::Debit => {
            add(&mut transfer.debited, amount, "a transfer's debits")?;
            add(&mut account.transfers_out, amount, "an account's debits")?;
            add(&mut totals.transfer_debits, amount, "the transfer debits")?;
            add(&mut totals.in_flight, amount, "the money in flight")?;
        }
        Leg::Credit | Leg::Refund => {
            let (per_transfer, total) = if leg == Leg::Credit {
                (&mut transfer.credited, &mut totals.transfer_credits)
            } else {
                (&mut transfer.refunded, &mut totals.transfer_refunds)
            };
            add(per_transfer, amount, "a transfer's payouts")?;
            add(total, amount, "the transfer payouts")?;
            add(&mut account.transfers_in, amount, "an account's credits")?;
            totals.in_flight = totals.in_flight.checked_sub(amount).ok_or_else(|| {
                format!("taking {amount} from the money in flight overflows 64 bits")
            })?;
        }
    }
    if !(by_transfer && by_account) {
        add(&mut totals.unmatched_legs, amount, "the unmatched legs")?;
    }
    docs.put(&key, &account)
}

/// A sum that does not fit stops the projection rather than wrapping around.
fn add(total: &mut i64, amount: i64, what: &str) -> Result<(), String> {
    *total = total
        .checked_add(amount)
        .ok_or_else(|| format!("adding {amount} to {what} overflows 64 bits"))?;
    Ok(())
}

/// A read model that does not decode is the projection's fault, not the caller's;
/// the contract has no other error for a query, so it says so plainly.
fn internal(reason: impl std::fmt::Display) -> QueryError {
    QueryError::bad_arguments(format!("the read model is unreadable: {reason}"))
}

refold_sdk::export_projection!(Ledger);

#[cfg(test)]
mod tests;
