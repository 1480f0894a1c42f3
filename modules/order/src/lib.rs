//! A shop order: placed with its lines, confirmed once its stock is reserved,
//! then shipped, or cancelled before it ships.
//!
//! ```text
//! new --Place--> placed --Confirm--> confirmed --Ship--> shipped
//!                   \                    /
//!                    +----Cancel--------+--> cancelled
//! ```
//!
//! Prices and totals are in cents; quantities are whole units.
//!
//! # Stock: a saga-less flow, run by the client
//!
//! An aggregate decides from its own stream only, so an order cannot look at
//! (or change) the stock of its products: each product's stock is its own
//! `inventory` aggregate (`modules/inventory`, one per product id). Nothing in
//! the host runs a saga or a process manager either. The client that places an
//! order drives the steps itself, one command at a time:
//!
//! 1. `Place` the order on `order/{order}`.
//! 2. For each line, `Reserve {order_id, quantity}` on `inventory/{product}`.
//! 3. If every reservation succeeded, `Confirm` the order. If one was refused
//!    (`out-of-stock`), `Release {order_id}` the ones that succeeded and
//!    `Cancel` the order.
//! 4. To ship: `Ship {order_id}` on each line's inventory, then `Ship` the order.
//!    To cancel a confirmed order: `Release` each reservation, then `Cancel`.
//!
//! The order takes the client's word for step 2: `Confirm` means "the client
//! says the stock is reserved", not that it is. A client that stops halfway
//! leaves the steps done so far in place (reservations holding stock, an order
//! left `placed`); it, or an operator, finishes or compensates them by sending
//! the remaining commands, which are safe to resend: a repeated `Reserve` is
//! refused with `already-reserved`, a repeated `Release` or `Ship` with
//! `unknown-reservation`, so the stock is never counted twice.
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
    },
    /// The client reserved every line's stock (see the crate documentation).
    Confirm,
    Cancel {
        #[serde(default)]
        reason: String,
    },
    Ship,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Event {
    Placed {
        customer: String,
        lines: Vec<Line>,
        total: i64,
    },
    Confirmed,
    Cancelled {
        reason: String,
    },
    Shipped,
}

impl Aggregate for Order {
    type Command = Command;
    type Event = Event;

    fn handle(&self, command: Command, _context: &Context) -> Result<Vec<Event>, Rejection> {
        match (self.status, command) {
            (Status::New, Command::Place { customer, lines }) => {
                let total = check_order(&customer, &lines)?;
                Ok(vec![Event::Placed {
                    customer,
                    lines,
                    total,
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
            (Status::Placed | Status::Confirmed, Command::Cancel { reason }) => {
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
            } => {
                self.status = Status::Placed;
                self.customer = customer.clone();
                self.lines = lines.clone();
                self.total = *total;
            }
            Event::Confirmed => self.status = Status::Confirmed,
            Event::Cancelled { reason } => {
                self.status = Status::Cancelled;
                self.cancel_reason = Some(reason.clone());
            }
            Event::Shipped => self.status = Status::Shipped,
        }
        self
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
        }
    }

    fn placed() -> Event {
        Event::Placed {
            customer: "Ada".into(),
            lines: vec![line("apple", 3, 50), line("pear", 1, 120)],
            total: 270,
        }
    }

    fn cancel(reason: &str) -> Command {
        Command::Cancel {
            reason: reason.into(),
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
        })
        .then_expect_rejection("invalid-customer");
        // Free items are fine.
        when(place(vec![line("sticker", 1, 0)])).then_expect_events(vec![Event::Placed {
            customer: "Ada".into(),
            lines: vec![line("sticker", 1, 0)],
            total: 0,
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
}
