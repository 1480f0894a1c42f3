//! One product's stock: restocked, reserved for orders, released or shipped.
//! The aggregate id is the product id (`inventory/{product}`), so each product
//! decides on its own stock and nothing else.
//!
//! Units are counted three ways: `on_hand` (in the warehouse), `reserved`
//! (promised to an order, per order id, still on hand) and `shipped` (gone).
//! What can still be promised is `available = on_hand - sum(reserved)`; a
//! reservation larger than that is refused with `out-of-stock`.
//!
//! A reservation is keyed by the order's id: an order reserves a product once
//! (the `order` aggregate refuses two lines of one product), then either ships
//! the reservation, which takes its units off the shelf, or releases it, which
//! makes them available again.

use std::collections::BTreeMap;

use refold_sdk::{Aggregate, Context, Rejection};
use serde::{Deserialize, Serialize};

/// The longest order id, in bytes: the host's limit on aggregate ids, since an
/// order id names an `order` aggregate.
pub const MAX_ORDER_ID_BYTES: usize = 256;

/// Quantities are whole units.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    /// Units in the warehouse, reserved ones included.
    pub on_hand: i64,
    /// Units promised to each order (order id -> quantity), still on hand.
    pub reserved: BTreeMap<String, i64>,
    /// Units shipped, ever.
    pub shipped: i64,
}

impl Inventory {
    /// Units on hand that no order holds.
    pub fn available(&self) -> i64 {
        self.on_hand - self.reserved.values().sum::<i64>()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Command {
    /// Adds units to the shelf.
    Restock { quantity: i64 },
    /// Holds units for an order.
    Reserve { order_id: String, quantity: i64 },
    /// Gives an order's reservation back (the order was cancelled).
    Release { order_id: String },
    /// Ships an order's reservation: its units leave the warehouse.
    Ship { order_id: String },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Event {
    /// `on_hand`: units on hand after the restock.
    Restocked {
        quantity: i64,
        on_hand: i64,
    },
    /// `available`: units still available after the reservation.
    Reserved {
        order_id: String,
        quantity: i64,
        available: i64,
    },
    Released {
        order_id: String,
        quantity: i64,
    },
    Shipped {
        order_id: String,
        quantity: i64,
    },
}

impl Aggregate for Inventory {
    type Command = Command;
    type Event = Event;

    fn handle(&self, command: Command, _context: &Context) -> Result<Vec<Event>, Rejection> {
        match command {
            Command::Restock { quantity } => {
                let quantity = positive(quantity)?;
                let on_hand = self.on_hand.checked_add(quantity).ok_or_else(|| {
                    Rejection::new("invalid-quantity", "the quantity is too large")
                })?;
                Ok(vec![Event::Restocked { quantity, on_hand }])
            }
            Command::Reserve { order_id, quantity } => {
                valid_order_id(&order_id)?;
                let quantity = positive(quantity)?;
                if let Some(held) = self.reserved.get(&order_id) {
                    return Err(Rejection::new(
                        "already-reserved",
                        format!(
                            "order {order_id:?} already holds {held} units; release it first to change it"
                        ),
                    ));
                }
                let available = self.available();
                if available < quantity {
                    return Err(Rejection::new(
                        "out-of-stock",
                        format!(
                            "order {order_id:?} asks for {quantity} units, but only {available} are available"
                        ),
                    ));
                }
                Ok(vec![Event::Reserved {
                    order_id,
                    quantity,
                    available: available - quantity,
                }])
            }
            Command::Release { order_id } => {
                let quantity = self.reservation(&order_id)?;
                Ok(vec![Event::Released { order_id, quantity }])
            }
            Command::Ship { order_id } => {
                let quantity = self.reservation(&order_id)?;
                Ok(vec![Event::Shipped { order_id, quantity }])
            }
        }
    }

    fn apply(mut self, event: &Event) -> Self {
        match event {
            Event::Restocked { on_hand, .. } => self.on_hand = *on_hand,
            Event::Reserved {
                order_id, quantity, ..
            } => {
                self.reserved.insert(order_id.clone(), *quantity);
            }
            Event::Released { order_id, .. } => {
                self.reserved.remove(order_id);
            }
            Event::Shipped { order_id, quantity } => {
                self.reserved.remove(order_id);
                self.on_hand -= quantity;
                self.shipped += quantity;
            }
        }
        self
    }
}

impl Inventory {
    /// The units `order_id` holds, or `unknown-reservation`.
    fn reservation(&self, order_id: &str) -> Result<i64, Rejection> {
        self.reserved.get(order_id).copied().ok_or_else(|| {
            Rejection::new(
                "unknown-reservation",
                format!("order {order_id:?} holds no reservation of this product"),
            )
        })
    }
}

fn positive(quantity: i64) -> Result<i64, Rejection> {
    if quantity <= 0 {
        return Err(Rejection::new(
            "invalid-quantity",
            format!("the quantity must be positive, not {quantity}"),
        ));
    }
    Ok(quantity)
}

/// An order id must be one the host accepts as an `order` aggregate's id.
fn valid_order_id(order_id: &str) -> Result<(), Rejection> {
    if order_id.is_empty()
        || order_id.len() > MAX_ORDER_ID_BYTES
        || order_id.chars().any(char::is_control)
    {
        return Err(Rejection::new(
            "invalid-order-id",
            format!(
                "an order id is 1 to {MAX_ORDER_ID_BYTES} bytes without control characters, not {order_id:?}"
            ),
        ));
    }
    Ok(())
}

#[cfg(feature = "component")]
refold_sdk::export_aggregate!(Inventory);

#[cfg(test)]
mod tests {
    use super::*;
    use refold_sdk::testing::AggregateTest;

    fn restocked(quantity: i64, on_hand: i64) -> Event {
        Event::Restocked { quantity, on_hand }
    }

    fn reserved(order_id: &str, quantity: i64, available: i64) -> Event {
        Event::Reserved {
            order_id: order_id.into(),
            quantity,
            available,
        }
    }

    fn reserve(order_id: &str, quantity: i64) -> Command {
        Command::Reserve {
            order_id: order_id.into(),
            quantity,
        }
    }

    #[test]
    fn restocking_adds_to_the_units_on_hand() {
        AggregateTest::<Inventory>::given_no_previous_events()
            .when(Command::Restock { quantity: 10 })
            .then_expect_events(vec![restocked(10, 10)]);
        AggregateTest::<Inventory>::given(vec![restocked(10, 10)])
            .when(Command::Restock { quantity: 5 })
            .then_expect_events(vec![restocked(5, 15)])
            .then_state(|s| assert_eq!((s.on_hand, s.available()), (15, 15)));
        AggregateTest::<Inventory>::given_no_previous_events()
            .when(Command::Restock { quantity: 0 })
            .then_expect_rejection("invalid-quantity");
        AggregateTest::<Inventory>::given(vec![restocked(10, 10)])
            .when(Command::Restock { quantity: i64::MAX })
            .then_expect_rejection("invalid-quantity");
    }

    #[test]
    fn a_reservation_holds_units_until_none_are_available() {
        AggregateTest::<Inventory>::given(vec![restocked(10, 10), reserved("o-1", 6, 4)])
            .when(reserve("o-2", 4))
            .then_expect_events(vec![reserved("o-2", 4, 0)])
            .then_state(|s| {
                assert_eq!(s.on_hand, 10);
                assert_eq!(s.available(), 0);
                assert_eq!(
                    s.reserved,
                    BTreeMap::from([("o-1".into(), 6), ("o-2".into(), 4)])
                );
            });
    }

    #[test]
    fn reserving_more_than_is_available_is_out_of_stock() {
        AggregateTest::<Inventory>::given(vec![restocked(10, 10), reserved("o-1", 6, 4)])
            .when(reserve("o-2", 5))
            .then_expect_rejection("out-of-stock");
        // A product never restocked has nothing to reserve.
        AggregateTest::<Inventory>::given_no_previous_events()
            .when(reserve("o-1", 1))
            .then_expect_rejection("out-of-stock");
    }

    #[test]
    fn the_out_of_stock_message_says_what_is_available() {
        let state = [restocked(3, 3)]
            .iter()
            .fold(Inventory::default(), |s, e| s.apply(e));
        let rejection = state
            .handle(reserve("o-1", 5), &Context::default())
            .unwrap_err();
        assert_eq!(rejection.code, "out-of-stock");
        assert_eq!(
            rejection.message,
            "order \"o-1\" asks for 5 units, but only 3 are available"
        );
    }

    #[test]
    fn reservations_need_a_positive_quantity_a_valid_order_id_and_one_per_order() {
        let given = || AggregateTest::<Inventory>::given(vec![restocked(10, 10)]);
        given()
            .when(reserve("o-1", 0))
            .then_expect_rejection("invalid-quantity");
        given()
            .when(reserve("o-1", -2))
            .then_expect_rejection("invalid-quantity");
        given()
            .when(reserve("", 1))
            .then_expect_rejection("invalid-order-id");
        given()
            .when(reserve(&"o".repeat(MAX_ORDER_ID_BYTES + 1), 1))
            .then_expect_rejection("invalid-order-id");
        AggregateTest::<Inventory>::given(vec![restocked(10, 10), reserved("o-1", 2, 8)])
            .when(reserve("o-1", 1))
            .then_expect_rejection("already-reserved");
    }

    #[test]
    fn releasing_makes_the_units_available_again() {
        AggregateTest::<Inventory>::given(vec![restocked(10, 10), reserved("o-1", 6, 4)])
            .when(Command::Release {
                order_id: "o-1".into(),
            })
            .then_expect_events(vec![Event::Released {
                order_id: "o-1".into(),
                quantity: 6,
            }])
            .then_state(|s| {
                assert_eq!((s.on_hand, s.available(), s.shipped), (10, 10, 0));
                assert!(s.reserved.is_empty());
            });
        AggregateTest::<Inventory>::given(vec![restocked(10, 10), reserved("o-1", 6, 4)])
            .when(Command::Release {
                order_id: "o-2".into(),
            })
            .then_expect_rejection("unknown-reservation");
    }

    #[test]
    fn shipping_takes_a_reservations_units_off_the_shelf() {
        AggregateTest::<Inventory>::given(vec![
            restocked(10, 10),
            reserved("o-1", 6, 4),
            reserved("o-2", 1, 3),
        ])
        .when(Command::Ship {
            order_id: "o-1".into(),
        })
        .then_expect_events(vec![Event::Shipped {
            order_id: "o-1".into(),
            quantity: 6,
        }])
        .then_state(|s| {
            assert_eq!((s.on_hand, s.available(), s.shipped), (4, 3, 6));
            assert_eq!(s.reserved, BTreeMap::from([("o-2".into(), 1)]));
        });
    }

    #[test]
    fn a_reservation_ships_or_releases_once() {
        let shipped = Event::Shipped {
            order_id: "o-1".into(),
            quantity: 6,
        };
        let released = Event::Released {
            order_id: "o-1".into(),
            quantity: 6,
        };
        for last in [shipped, released] {
            let history = vec![restocked(10, 10), reserved("o-1", 6, 4), last];
            AggregateTest::<Inventory>::given(history.clone())
                .when(Command::Ship {
                    order_id: "o-1".into(),
                })
                .then_expect_rejection("unknown-reservation");
            AggregateTest::<Inventory>::given(history)
                .when(Command::Release {
                    order_id: "o-1".into(),
                })
                .then_expect_rejection("unknown-reservation");
        }
    }

    #[test]
    fn json_commands_decode_as_the_host_sends_them() {
        AggregateTest::<Inventory>::given_no_previous_events()
            .when_json(r#"{"type":"Restock","quantity":10}"#)
            .then_expect_events(vec![restocked(10, 10)]);
        AggregateTest::<Inventory>::given(vec![restocked(10, 10)])
            .when_json(r#"{"type":"Reserve","order_id":"o-1","quantity":2}"#)
            .then_expect_events(vec![reserved("o-1", 2, 8)]);
        AggregateTest::<Inventory>::given(vec![restocked(10, 10), reserved("o-1", 2, 8)])
            .when_json(r#"{"type":"Release","order_id":"o-1"}"#)
            .then_expect_events(vec![Event::Released {
                order_id: "o-1".into(),
                quantity: 2,
            }]);
        AggregateTest::<Inventory>::given(vec![restocked(10, 10), reserved("o-1", 2, 8)])
            .when_json(r#"{"type":"Ship","order_id":"o-1"}"#)
            .then_expect_events(vec![Event::Shipped {
                order_id: "o-1".into(),
                quantity: 2,
            }]);
        AggregateTest::<Inventory>::given(vec![restocked(10, 10)])
            .when_json(r#"{"type":"Reserve","order_id":"o-1"}"#)
            .then_expect_malformed();
        AggregateTest::<Inventory>::given(vec![restocked(10, 10)])
            .when_json(r#"{"type":"Reserve","order_id":"o-1","quantity":1.5}"#)
            .then_expect_malformed();
    }
}
