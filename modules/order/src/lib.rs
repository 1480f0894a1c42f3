//! A shop order: placed with its lines, paid, confirmed once its stock is
//! reserved, then shipped, or cancelled before it ships.
//!
//! ```text
//! new --Place--> placed --Confirm--> confirmed --Ship--> shipped
//!                 |  \                  /
//!                 |   +----Cancel------+--> cancelled
//!                Pay: still placed, now paid
//! ```
//!
//! `Pay` is not a status of its own: a paid order is still `placed` (with
//! `paid` set) until it is confirmed, so `Confirm`, `Ship` and `Cancel` keep
//! the rules they had before orders could be paid; only a `Cancel` that asks
//! for it (`unless_paid`) is refused for a paid order.
//!
//! Prices and totals are in cents; quantities are whole units.
//!
//! # Stock and payment: the `order-fulfilment` process
//!
//! An aggregate decides from its own stream only, so an order cannot look at
//! (or change) the stock of its products: each product's stock is its own
//! `inventory` aggregate (`modules/inventory`, one per product id). The
//! `order-fulfilment` process (`modules/order-fulfilment`) runs the steps
//! between them for every placed order:
//!
//! 1. A client `Place`s the order on `order/{order}`, optionally saying how
//!    long the customer has to pay (`pay_within_ms`, [`DEFAULT_PAY_WITHIN_MS`]
//!    when absent).
//! 2. The process sends `Reserve {order_id, quantity}` to `inventory/{product}`
//!    for each line.
//! 3. The customer `Pay`s the order's total.
//! 4. Once every line is reserved and the order is paid, the process
//!    `Confirm`s it. If a reservation is refused (`out-of-stock`), it
//!    `Release`s the ones that succeeded and `Cancel`s the order; if the
//!    order is still unpaid when its time to pay is up, it cancels it
//!    (`unless_paid`, so a payment that just got in wins) and releases its
//!    stock.
//! 5. To ship: `Ship {order_id}` on each line's inventory, then `Ship` the order.
//!    To cancel a confirmed order: `Release` each reservation, then `Cancel`.
//!
//! The order takes the sender's word for step 2: `Confirm` means "the stock
//! is reserved", not that it is, and it does not require a payment either, so
//! a client can still run the steps by hand where the process is not running
//! (`examples/shop.sh` does). Every step is safe to resend: a repeated
//! `Reserve` is refused with `already-reserved`, a repeated `Release` or `Ship`
//! with `unknown-reservation`, a repeated `Pay` with `already-paid`, so
//! neither stock nor money is ever counted twice.
//!
//! A paid order that is cancelled (its stock ran out after the customer paid,
//! or the customer changed their mind) is owed a refund: the order keeps
//! `paid` set for whoever settles it; refunds are not modelled here.
//!
//! The order's id is the `order_id` of its reservations, and every line has
//! its own product, so an order holds at most one reservation per product.

use refold_sdk::{Aggregate, Context, Rejection};
use serde::{Deserialize, Serialize};

/// The most lines one order has: it keeps the order (and the `sales`
/// projection's document of it) well under the read model's size limit.
pub const MAX_LINES: usize = 100;
/// The longest product id, in bytes: the host's limit on aggregate ids, since
/// a product id names an `inventory` aggregate.
pub const MAX_PRODUCT_ID_BYTES: usize = 256;
/// The longest customer name, in bytes.
pub const MAX_CUSTOMER_BYTES: usize = 256;
/// The longest cancellation reason, in bytes.
pub const MAX_REASON_BYTES: usize = 1000;
/// How long a customer has to pay an order placed without `pay_within_ms`:
/// 15 minutes. The order only records the time it was given; the
/// `order-fulfilment` process waits it out and applies this default.
pub const DEFAULT_PAY_WITHIN_MS: u64 = 15 * 60 * 1000;
/// The longest time to pay an order may be given: 30 days. Stock stays
/// reserved while the order waits, so an order cannot hold it for ever.
pub const MAX_PAY_WITHIN_MS: u64 = 30 * 24 * 60 * 60 * 1000;

/// Amounts are in cents.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    pub status: Status,
    pub customer: String,
    pub lines: Vec<Line>,
    /// The sum of every line's `quantity * unit_price`.
    pub total: i64,
    /// Why it was cancelled, once it is.
    pub cancel_reason: Option<String>,
    /// Whether the customer paid the total. It stays set when a paid order is
    /// cancelled: that customer is owed a refund.
    pub paid: bool,
    /// How long the customer was given to pay, as placed (`None`: the
    /// default, [`DEFAULT_PAY_WITHIN_MS`]).
    pub pay_within_ms: Option<u64>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    #[default]
    New,
    Placed,
    Confirmed,
    Shipped,
    Cancelled,
}

/// One product of an order: `quantity` units at `unit_price` cents each.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    pub product: String,
    pub quantity: i64,
    pub unit_price: i64,
}

impl Line {
    /// `quantity * unit_price`, if it fits.
    pub fn amount(&self) -> Option<i64> {
        self.quantity.checked_mul(self.unit_price)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Command {
    Place {
        customer: String,
        lines: Vec<Line>,
        /// How long the customer has to pay before the order is cancelled
        /// and its stock released; absent: [`DEFAULT_PAY_WITHIN_MS`]. Left
        /// out of the JSON when absent, so a `Place` without it reads and
        /// writes exactly as before it existed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pay_within_ms: Option<u64>,
    },
    /// Every line's stock is reserved (see the crate documentation).
    Confirm,
    Cancel {
        #[serde(default)]
        reason: String,
        /// Refuse (`already-paid`) rather than cancel a paid order. The
        /// `order-fulfilment` process sets it when the time to pay is up: a
        /// payment that reached the order first must win over the
        /// cancellation that raced it. Absent (and left out of the JSON)
        /// when false, so a plain `Cancel` is unchanged.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        unless_paid: bool,
    },
    Ship,
    /// The customer pays the order: exactly its total, once, before it is
    /// confirmed.
    Pay {
        amount: i64,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Event {
    Placed {
        customer: String,
        lines: Vec<Line>,
        total: i64,
        /// As placed. Left out when absent, so events from before it existed
        /// decode, and an order placed without it records the same JSON.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pay_within_ms: Option<u64>,
    },
    Confirmed,
    Cancelled {
        reason: String,
    },
    Shipped,
    /// `amount`: the order's total, in cents.
    Paid {
        amount: i64,
    },
}

impl Aggregate for Order {
    type Command = Command;
    type Event = Event;

    fn handle(&self, command: Command, _context: &Context) -> Result<Vec<Event>, Rejection> {
        match (self.status, command) {
            (
                Status::New,
                Command::Place {
                    customer,
                    lines,
                    pay_within_ms,
                },
            ) => {
                let total = check_order(&customer, &lines)?;
                check_pay_within(pay_within_ms)?;
                Ok(vec![Event::Placed {
                    customer,
                    lines,
                    total,
                    pay_within_ms,
                }])
            }
            (Status::New, _) => Err(Rejection::new(
                "not-placed",
                "the order has not been placed",
            )),
            (_, Command::Place { .. }) => Err(Rejection::new(
                "already-placed",
                "the order has already been placed",
            )),
            // Shipped and cancelled are final: no command changes them.
            (Status::Shipped, _) => Err(Rejection::new(
                "already-shipped",
                "the order has already shipped",
            )),
            (Status::Cancelled, _) => Err(Rejection::new(
                "already-cancelled",
                "the order has been cancelled",
            )),
            (Status::Placed, Command::Confirm) => Ok(vec![Event::Confirmed]),
            (Status::Confirmed, Command::Confirm) => Err(Rejection::new(
                "already-confirmed",
                "the order is already confirmed",
            )),
            (Status::Placed, Command::Ship) => Err(Rejection::new(
                "not-confirmed",
                "an order ships once it is confirmed (its stock reserved)",
            )),
            (Status::Confirmed, Command::Ship) => Ok(vec![Event::Shipped]),
            (Status::Placed | Status::Confirmed, Command::Pay { .. }) if self.paid => Err(
                Rejection::new("already-paid", "the order has already been paid"),
            ),
            (Status::Confirmed, Command::Pay { .. }) => Err(Rejection::new(
                "already-confirmed",
                "the order was confirmed without a payment; it can no longer be paid",
            )),
            (Status::Placed, Command::Pay { amount }) => {
                if amount != self.total {
                    return Err(Rejection::new(
                        "wrong-amount",
                        format!(
                            "the order's total is {}, not {amount}; pay exactly the total",
                            self.total
                        ),
                    ));
                }
                Ok(vec![Event::Paid { amount }])
            }
            (
                Status::Placed | Status::Confirmed,
                Command::Cancel {
                    unless_paid: true, ..
                },
            ) if self.paid => Err(Rejection::new(
                "already-paid",
                "the order has been paid, and the cancellation was only for an unpaid order",
            )),
            (Status::Placed | Status::Confirmed, Command::Cancel { reason, .. }) => {
                if reason.len() > MAX_REASON_BYTES {
                    return Err(Rejection::new(
                        "invalid-reason",
                        format!(
                            "the reason is {} bytes, more than {MAX_REASON_BYTES}",
                            reason.len()
                        ),
                    ));
                }
                Ok(vec![Event::Cancelled { reason }])
            }
        }
    }

    fn apply(mut self, event: &Event) -> Self {
        match event {
            Event::Placed {
                customer,
                lines,
                total,
                pay_within_ms,
            } => {
                self.status = Status::Placed;
                self.customer = customer.clone();
                self.lines = lines.clone();
                self.total = *total;
                self.pay_within_ms = *pay_within_ms;
            }
            Event::Confirmed => self.status = Status::Confirmed,
            Event::Cancelled { reason } => {
                self.status = Status::Cancelled;
                self.cancel_reason = Some(reason.clone());
            }
            Event::Shipped => self.status = Status::Shipped,
            Event::Paid { .. } => self.paid = true,
        }
        self
    }
}

/// Checks the time to pay a new order is given: at least a millisecond, at
/// most [`MAX_PAY_WITHIN_MS`].
fn check_pay_within(pay_within_ms: Option<u64>) -> Result<(), Rejection> {
    match pay_within_ms {
        Some(ms) if ms == 0 || ms > MAX_PAY_WITHIN_MS => Err(Rejection::new(
            "invalid-pay-within",
            format!("the time to pay is 1 to {MAX_PAY_WITHIN_MS} ms, not {ms}"),
        )),
        _ => Ok(()),
    }
}

/// Checks a new order and returns its total.
fn check_order(customer: &str, lines: &[Line]) -> Result<i64, Rejection> {
    if customer.trim().is_empty() || customer.len() > MAX_CUSTOMER_BYTES {
        return Err(Rejection::new(
            "invalid-customer",
            format!("an order needs a customer of 1 to {MAX_CUSTOMER_BYTES} bytes"),
        ));
    }
    if lines.is_empty() {
        return Err(Rejection::new("empty-order", "an order needs a line"));
    }
    if lines.len() > MAX_LINES {
        return Err(Rejection::new(
            "too-many-lines",
            format!(
                "an order has at most {MAX_LINES} lines, not {}",
                lines.len()
            ),
        ));
    }
    let mut total: i64 = 0;
    for (i, line) in lines.iter().enumerate() {
        let product = &line.product;
        if product.is_empty()
            || product.len() > MAX_PRODUCT_ID_BYTES
            || product == "."
            || product == ".."
            || product.chars().any(char::is_control)
        {
            return Err(Rejection::new(
                "invalid-product",
                format!(
                    "a product id is 1 to {MAX_PRODUCT_ID_BYTES} bytes without control characters, not {product:?}"
                ),
            ));
        }
        // One line per product: the line's reservation is keyed by the order id.
        if lines[..i].iter().any(|l| l.product == *product) {
            return Err(Rejection::new(
                "duplicate-product",
                format!("product {product:?} is on two lines; put it on one"),
            ));
        }
        if line.quantity <= 0 {
            return Err(Rejection::new(
                "invalid-quantity",
                format!(
                    "the quantity of {product:?} must be positive, not {}",
                    line.quantity
                ),
            ));
        }
        if line.unit_price < 0 {
            return Err(Rejection::new(
                "invalid-price",
                format!(
                    "the unit price of {product:?} cannot be negative ({})",
                    line.unit_price
                ),
            ));
        }
        total = line
            .amount()
            .and_then(|amount| total.checked_add(amount))
            .ok_or_else(|| Rejection::new("invalid-price", "the order's total is too large"))?;
    }
    Ok(total)
}

#[cfg(feature = "component")]
refold_sdk::export_aggregate!(Order);

#[cfg(test)]
mod tests {
    use super::*;
    use refold_sdk::testing::AggregateTest;

    fn line(product: &str, quantity: i64, unit_price: i64) -> Line {
        Line {
            product: product.into(),
            quantity,
            unit_price,
        }
    }

    fn place(lines: Vec<Line>) -> Command {
        Command::Place {
            customer: "Ada".into(),
            lines,
            pay_within_ms: None,
        }
    }

    fn placed() -> Event {
        Event::Placed {
            customer: "Ada".into(),
            lines: vec![line("apple", 3, 50), line("pear", 1, 120)],
            total: 270,
            pay_within_ms: None,
        }
    }

    fn cancel(reason: &str) -> Command {
        Command::Cancel {
            reason: reason.into(),
            unless_paid: false,
        }
    }

    fn cancelled(reason: &str) -> Event {
        Event::Cancelled {
            reason: reason.into(),
        }
    }

    #[test]
    fn placing_an_order_totals_its_lines() {
        AggregateTest::<Order>::given_no_previous_events()
            .when(place(vec![line("apple", 3, 50), line("pear", 1, 120)]))
            .then_expect_events(vec![placed()])
            .then_state(|s| {
                assert_eq!(s.status, Status::Placed);
                assert_eq!((s.customer.as_str(), s.total), ("Ada", 270));
                assert_eq!(s.lines.len(), 2);
            });
        AggregateTest::<Order>::given(vec![placed()])
            .when(place(vec![line("apple", 1, 50)]))
            .then_expect_rejection("already-placed");
    }

    #[test]
    fn an_order_needs_lines_with_positive_quantities() {
        let when = |command| AggregateTest::<Order>::given_no_previous_events().when(command);
        when(place(vec![])).then_expect_rejection("empty-order");
        when(place(vec![line("apple", 0, 50)])).then_expect_rejection("invalid-quantity");
        when(place(vec![line("apple", 2, 50), line("pear", -1, 50)]))
            .then_expect_rejection("invalid-quantity");
        when(place(vec![line("apple", 1, -50)])).then_expect_rejection("invalid-price");
        when(place(vec![line("apple", i64::MAX, 2)])).then_expect_rejection("invalid-price");
        when(place(vec![line("apple", 1, i64::MAX), line("pear", 1, 1)]))
            .then_expect_rejection("invalid-price");
        when(place(vec![line("apple", 1, 50), line("apple", 2, 50)]))
            .then_expect_rejection("duplicate-product");
        when(place(vec![line("", 1, 50)])).then_expect_rejection("invalid-product");
        when(place(vec![line(
            &"p".repeat(MAX_PRODUCT_ID_BYTES + 1),
            1,
            50,
        )]))
        .then_expect_rejection("invalid-product");
        let many = (0..=MAX_LINES)
            .map(|i| line(&format!("p{i}"), 1, 1))
            .collect();
        when(place(many)).then_expect_rejection("too-many-lines");
        when(Command::Place {
            customer: " ".into(),
            lines: vec![line("apple", 1, 50)],
            pay_within_ms: None,
        })
        .then_expect_rejection("invalid-customer");
        // Free items are fine.
        when(place(vec![line("sticker", 1, 0)])).then_expect_events(vec![Event::Placed {
            customer: "Ada".into(),
            lines: vec![line("sticker", 1, 0)],
            total: 0,
            pay_within_ms: None,
        }]);
    }

    #[test]
    fn an_order_is_confirmed_then_shipped() {
        AggregateTest::<Order>::given(vec![placed()])
            .when(Command::Confirm)
            .then_expect_events(vec![Event::Confirmed])
            .then_state(|s| assert_eq!(s.status, Status::Confirmed));
        AggregateTest::<Order>::given(vec![placed(), Event::Confirmed])
            .when(Command::Ship)
            .then_expect_events(vec![Event::Shipped])
            .then_state(|s| assert_eq!(s.status, Status::Shipped));
    }

    #[test]
    fn steps_cannot_be_skipped_or_repeated() {
        let when = |given: Vec<Event>, command| AggregateTest::<Order>::given(given).when(command);
        when(vec![], Command::Confirm).then_expect_rejection("not-placed");
        when(vec![], Command::Ship).then_expect_rejection("not-placed");
        when(vec![], cancel("")).then_expect_rejection("not-placed");
        when(vec![placed()], Command::Ship).then_expect_rejection("not-confirmed");
        when(vec![placed(), Event::Confirmed], Command::Confirm)
            .then_expect_rejection("already-confirmed");
        let shipped = vec![placed(), Event::Confirmed, Event::Shipped];
        when(shipped.clone(), Command::Ship).then_expect_rejection("already-shipped");
        when(shipped.clone(), Command::Confirm).then_expect_rejection("already-shipped");
        when(shipped, place(vec![line("apple", 1, 1)])).then_expect_rejection("already-placed");
    }

    #[test]
    fn an_order_cancels_until_it_ships() {
        AggregateTest::<Order>::given(vec![placed()])
            .when(cancel("out of stock"))
            .then_expect_events(vec![cancelled("out of stock")])
            .then_state(|s| {
                assert_eq!(s.status, Status::Cancelled);
                assert_eq!(s.cancel_reason.as_deref(), Some("out of stock"));
            });
        AggregateTest::<Order>::given(vec![placed(), Event::Confirmed])
            .when(cancel("changed my mind"))
            .then_expect_events(vec![cancelled("changed my mind")]);
        AggregateTest::<Order>::given(vec![placed(), Event::Confirmed, Event::Shipped])
            .when(cancel("too late"))
            .then_expect_rejection("already-shipped");
        let gone = vec![placed(), cancelled("x")];
        AggregateTest::<Order>::given(gone.clone())
            .when(cancel("again"))
            .then_expect_rejection("already-cancelled");
        AggregateTest::<Order>::given(gone.clone())
            .when(Command::Confirm)
            .then_expect_rejection("already-cancelled");
        AggregateTest::<Order>::given(gone)
            .when(Command::Ship)
            .then_expect_rejection("already-cancelled");
        AggregateTest::<Order>::given(vec![placed()])
            .when(cancel(&"x".repeat(MAX_REASON_BYTES + 1)))
            .then_expect_rejection("invalid-reason");
    }

    #[test]
    fn json_commands_decode_as_the_host_sends_them() {
        AggregateTest::<Order>::given_no_previous_events()
            .when_json(
                r#"{"type":"Place","customer":"Ada","lines":[
                    {"product":"apple","quantity":3,"unit_price":50},
                    {"product":"pear","quantity":1,"unit_price":120}]}"#,
            )
            .then_expect_events(vec![placed()]);
        AggregateTest::<Order>::given(vec![placed()])
            .when_json(r#"{"type":"Confirm"}"#)
            .then_expect_events(vec![Event::Confirmed]);
        AggregateTest::<Order>::given(vec![placed(), Event::Confirmed])
            .when_json(r#"{"type":"Ship"}"#)
            .then_expect_events(vec![Event::Shipped]);
        AggregateTest::<Order>::given(vec![placed()])
            .when_json(r#"{"type":"Cancel","reason":"out of stock"}"#)
            .then_expect_events(vec![cancelled("out of stock")]);
        AggregateTest::<Order>::given(vec![placed()])
            .when_json(r#"{"type":"Cancel"}"#)
            .then_expect_events(vec![cancelled("")]);
        AggregateTest::<Order>::given_no_previous_events()
            .when_json(r#"{"type":"Place","customer":"Ada","lines":[{"product":"apple"}]}"#)
            .then_expect_malformed();
        AggregateTest::<Order>::given_no_previous_events()
            .when_json(r#"{"type":"Place","customer":"Ada"}"#)
            .then_expect_malformed();
    }

    fn paid() -> Event {
        Event::Paid { amount: 270 }
    }

    #[test]
    fn a_placed_order_is_paid_its_total_once() {
        AggregateTest::<Order>::given(vec![placed()])
            .when(Command::Pay { amount: 270 })
            .then_expect_events(vec![paid()])
            .then_state(|s| {
                // Paid is not a status: the order is placed until confirmed.
                assert_eq!(s.status, Status::Placed);
                assert!(s.paid);
            });
        AggregateTest::<Order>::given(vec![placed()])
            .when(Command::Pay { amount: 269 })
            .then_expect_rejection("wrong-amount");
        AggregateTest::<Order>::given(vec![placed()])
            .when(Command::Pay { amount: -270 })
            .then_expect_rejection("wrong-amount");
        AggregateTest::<Order>::given(vec![placed(), paid()])
            .when(Command::Pay { amount: 270 })
            .then_expect_rejection("already-paid");
        // A free order is paid with nothing.
        let free = Event::Placed {
            customer: "Ada".into(),
            lines: vec![line("sticker", 1, 0)],
            total: 0,
            pay_within_ms: None,
        };
        AggregateTest::<Order>::given(vec![free])
            .when(Command::Pay { amount: 0 })
            .then_expect_events(vec![Event::Paid { amount: 0 }]);
    }

    #[test]
    fn only_a_placed_order_not_yet_confirmed_can_be_paid() {
        let when = |given: Vec<Event>| {
            AggregateTest::<Order>::given(given).when(Command::Pay { amount: 270 })
        };
        when(vec![]).then_expect_rejection("not-placed");
        when(vec![placed(), cancelled("x")]).then_expect_rejection("already-cancelled");
        // Confirmed without a payment (a client running the steps by hand).
        when(vec![placed(), Event::Confirmed]).then_expect_rejection("already-confirmed");
        when(vec![placed(), paid(), Event::Confirmed]).then_expect_rejection("already-paid");
        when(vec![placed(), Event::Confirmed, Event::Shipped])
            .then_expect_rejection("already-shipped");
    }

    #[test]
    fn a_paid_order_is_confirmed_shipped_or_cancelled_as_before() {
        AggregateTest::<Order>::given(vec![placed(), paid()])
            .when(Command::Confirm)
            .then_expect_events(vec![Event::Confirmed])
            .then_state(|s| assert_eq!((s.status, s.paid), (Status::Confirmed, true)));
        AggregateTest::<Order>::given(vec![placed(), paid(), Event::Confirmed])
            .when(Command::Ship)
            .then_expect_events(vec![Event::Shipped]);
        AggregateTest::<Order>::given(vec![placed(), paid()])
            .when(Command::Ship)
            .then_expect_rejection("not-confirmed");
        // Cancelled all the same (stock ran out): paid stays set, a refund is owed.
        AggregateTest::<Order>::given(vec![placed(), paid()])
            .when(cancel("out-of-stock: pear"))
            .then_expect_events(vec![cancelled("out-of-stock: pear")])
            .then_state(|s| assert_eq!((s.status, s.paid), (Status::Cancelled, true)));
    }

    #[test]
    fn a_cancellation_unless_paid_loses_to_a_payment() {
        let overdue = Command::Cancel {
            reason: "payment-overdue".into(),
            unless_paid: true,
        };
        AggregateTest::<Order>::given(vec![placed()])
            .when(overdue.clone())
            .then_expect_events(vec![cancelled("payment-overdue")]);
        AggregateTest::<Order>::given(vec![placed(), paid()])
            .when(overdue.clone())
            .then_expect_rejection("already-paid");
        AggregateTest::<Order>::given(vec![placed(), paid(), Event::Confirmed])
            .when(overdue.clone())
            .then_expect_rejection("already-paid");
        // The other rules come first: there is nothing left to cancel.
        AggregateTest::<Order>::given(vec![placed(), paid(), cancelled("x")])
            .when(overdue)
            .then_expect_rejection("already-cancelled");
        // And a payment after the cancellation is refused by the order.
        AggregateTest::<Order>::given(vec![placed(), cancelled("payment-overdue")])
            .when(Command::Pay { amount: 270 })
            .then_expect_rejection("already-cancelled");
    }

    #[test]
    fn an_order_records_the_time_to_pay_it_was_given() {
        let place_within = |ms| Command::Place {
            customer: "Ada".into(),
            lines: vec![line("apple", 3, 50), line("pear", 1, 120)],
            pay_within_ms: Some(ms),
        };
        AggregateTest::<Order>::given_no_previous_events()
            .when(place_within(60_000))
            .then_expect_events(vec![Event::Placed {
                customer: "Ada".into(),
                lines: vec![line("apple", 3, 50), line("pear", 1, 120)],
                total: 270,
                pay_within_ms: Some(60_000),
            }])
            .then_state(|s| assert_eq!(s.pay_within_ms, Some(60_000)));
        AggregateTest::<Order>::given_no_previous_events()
            .when(place_within(MAX_PAY_WITHIN_MS))
            .then_state(|s| assert_eq!(s.pay_within_ms, Some(MAX_PAY_WITHIN_MS)));
        for ms in [0, MAX_PAY_WITHIN_MS + 1] {
            AggregateTest::<Order>::given_no_previous_events()
                .when(place_within(ms))
                .then_expect_rejection("invalid-pay-within");
        }
        AggregateTest::<Order>::given_no_previous_events()
            .when(place(vec![line("apple", 1, 50)]))
            .then_state(|s| assert_eq!(s.pay_within_ms, None));
    }

    #[test]
    fn json_of_the_new_commands() {
        AggregateTest::<Order>::given(vec![placed()])
            .when_json(r#"{"type":"Pay","amount":270}"#)
            .then_expect_events(vec![paid()]);
        AggregateTest::<Order>::given(vec![placed()])
            .when_json(r#"{"type":"Pay"}"#)
            .then_expect_malformed();
        AggregateTest::<Order>::given(vec![placed(), paid()])
            .when_json(r#"{"type":"Cancel","reason":"payment-overdue","unless_paid":true}"#)
            .then_expect_rejection("already-paid");
        AggregateTest::<Order>::given_no_previous_events()
            .when_json(
                r#"{"type":"Place","customer":"Ada","pay_within_ms":60000,
                    "lines":[{"product":"sticker","quantity":1,"unit_price":0}]}"#,
            )
            .then_expect_events(vec![Event::Placed {
                customer: "Ada".into(),
                lines: vec![line("sticker", 1, 0)],
                total: 0,
                pay_within_ms: Some(60_000),
            }]);
    }

    fn json<T: Serialize>(value: &T) -> String {
        serde_json::to_string(value).unwrap()
    }

    /// Orders placed, and commands written, before payment existed read and
    /// write exactly the same JSON: the new fields are left out when absent.
    #[test]
    fn the_json_of_existing_commands_and_events_is_unchanged() {
        assert_eq!(
            json(&place(vec![line("apple", 3, 50)])),
            r#"{"type":"Place","customer":"Ada","lines":[{"product":"apple","quantity":3,"unit_price":50}]}"#
        );
        assert_eq!(json(&cancel("x")), r#"{"type":"Cancel","reason":"x"}"#);
        assert_eq!(
            json(&placed()),
            r#"{"type":"Placed","customer":"Ada","lines":[{"product":"apple","quantity":3,"unit_price":50},{"product":"pear","quantity":1,"unit_price":120}],"total":270}"#
        );
        let old = r#"{"type":"Placed","customer":"Ada","lines":[{"product":"apple","quantity":3,"unit_price":50},{"product":"pear","quantity":1,"unit_price":120}],"total":270}"#;
        assert_eq!(serde_json::from_str::<Event>(old).unwrap(), placed());
        assert_eq!(
            json(&Command::Pay { amount: 270 }),
            r#"{"type":"Pay","amount":270}"#
        );
        assert_eq!(json(&paid()), r#"{"type":"Paid","amount":270}"#);
    }
}
