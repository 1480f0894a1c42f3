//! A projection of shop orders (`modules/order`): what each product sold and
//! earned, counted when an order ships, and totals over all shipped orders.
//!
//! An order's `Shipped` event carries no lines, so the projection keeps each
//! order's lines from its `Placed` event in a document of its own and reads
//! them back when the order ships. Cancelled orders never ship, so they never
//! count; their documents stay, marked `cancelled`.
//!
//! Read model (amounts in cents):
//! - `order/{id}`: `{"customer", "lines": [{"product", "quantity", "unit_price"}], "total",
//!   "status", "cancel_reason"}`, `status` one of `placed`, `confirmed`, `shipped`, `cancelled`;
//!   `cancel_reason` is `null` until the order is cancelled
//! - `product/{id}`: `{"units_sold", "revenue"}`, from shipped orders only
//! - `totals`: `{"orders_shipped", "revenue"}`
//!
//! Queries:
//! - `top-products` `{"limit": n}` (default 10, at most 1000): the products with the highest
//!   revenue, highest first (ties by id), each as its document plus `"product": id`
//! - `order` `{"id": id}`: the order's document, or `null` if there is no such order
//! - `totals` `{}`: the totals document (zeros before the first shipment)

use order::{Event, Line, Status};
use refold_sdk::{Docs, Envelope, Projection, QueryError, Selector};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The aggregate type it follows.
pub const AGGREGATE_TYPE: &str = "order";
const ORDER_PREFIX: &str = "order/";
const PRODUCT_PREFIX: &str = "product/";
const TOTALS: &str = "totals";
const DEFAULT_TOP: u64 = 10;
const MAX_TOP: u64 = 1000;

/// An order as placed, and where it is now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderDoc {
    pub customer: String,
    pub lines: Vec<Line>,
    pub total: i64,
    pub status: Status,
    pub cancel_reason: Option<String>,
}

/// What one product sold, in shipped orders.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProductSales {
    pub units_sold: i64,
    pub revenue: i64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub orders_shipped: u64,
    pub revenue: i64,
}

pub struct Sales;

pub fn order_key(id: &str) -> String {
    format!("{ORDER_PREFIX}{id}")
}

pub fn product_key(id: &str) -> String {
    format!("{PRODUCT_PREFIX}{id}")
}

impl Projection for Sales {
    type Event = Event;

    fn subscription() -> Selector {
        Selector::aggregate_types([AGGREGATE_TYPE])
    }

    fn apply(docs: &mut Docs<'_>, event: &Envelope<Event>) -> Result<(), String> {
        let key = order_key(&event.aggregate_id);
        let order = match &event.event {
            Event::Placed {
                customer,
                lines,
                total,
                ..
            } => OrderDoc {
                customer: customer.clone(),
                lines: lines.clone(),
                total: *total,
                status: Status::Placed,
                cancel_reason: None,
            },
            Event::Confirmed => OrderDoc {
                status: Status::Confirmed,
                ..placed_order(docs, &key)?
            },
            Event::Cancelled { reason } => OrderDoc {
                status: Status::Cancelled,
                cancel_reason: Some(reason.clone()),
                ..placed_order(docs, &key)?
            },
            Event::Shipped => {
                let order = placed_order(docs, &key)?;
                for line in &order.lines {
                    record_sale(docs, line)?;
                }
                let mut totals: Totals = docs.get(TOTALS)?.unwrap_or_default();
                totals.orders_shipped += 1;
                totals.revenue = add(totals.revenue, order.total, "the total revenue")?;
                docs.put(TOTALS, &totals)?;
                OrderDoc {
                    status: Status::Shipped,
                    ..order
                }
            }
            // Sales count shipments: a payment changes none of the documents.
            Event::Paid { .. } => return Ok(()),
        };
        docs.put(&key, &order)
    }

    fn query(docs: &Docs<'_>, name: &str, args: &Value) -> Result<Value, QueryError> {
        match name {
            "top-products" => {
                let limit = match args.get("limit") {
                    None | Some(Value::Null) => DEFAULT_TOP,
                    Some(limit) => limit.as_u64().filter(|n| *n <= MAX_TOP).ok_or_else(|| {
                        QueryError::bad_arguments(format!(
                            "\"limit\" is a whole number from 0 to {MAX_TOP}, not {limit}"
                        ))
                    })?,
                };
                let mut products = Vec::new();
                for (key, doc) in docs.scan_all(PRODUCT_PREFIX).map_err(internal)? {
                    let sales: ProductSales = serde_json::from_value(doc.clone())
                        .map_err(|e| internal(format!("{key}: {e}")))?;
                    products.push((sales.revenue, key, doc));
                }
                // Highest revenue first; the scan's key order breaks ties.
                products.sort_by_key(|(revenue, _, _)| std::cmp::Reverse(*revenue));
                let top = products
                    .into_iter()
                    .take(limit as usize)
                    .map(|(_, key, mut doc)| {
                        doc["product"] = Value::String(key[PRODUCT_PREFIX.len()..].to_string());
                        doc
                    })
                    .collect();
                Ok(Value::Array(top))
            }
            "order" => {
                let id = args
                    .get("id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| QueryError::bad_arguments("\"id\" (a string) is required"))?;
                let order: Option<Value> = docs.get(&order_key(id)).map_err(internal)?;
                Ok(order.unwrap_or(Value::Null))
            }
            "totals" => {
                let totals: Totals = docs.get(TOTALS).map_err(internal)?.unwrap_or_default();
                serde_json::to_value(totals).map_err(internal)
            }
            _ => Err(QueryError::UnknownQuery),
        }
    }
}

/// The document of an order whose `Placed` event came before. Every other
/// event follows one in the same stream (the aggregate refuses any command
/// before it), so a missing document means a broken log or read model.
fn placed_order(docs: &Docs<'_>, key: &str) -> Result<OrderDoc, String> {
    docs.get(key)?
        .ok_or_else(|| format!("{key:?} is missing: the order's Placed event was never seen"))
}

/// Adds one shipped line to its product's sales.
fn record_sale(docs: &mut Docs<'_>, line: &Line) -> Result<(), String> {
    let key = product_key(&line.product);
    let mut sales: ProductSales = docs.get(&key)?.unwrap_or_default();
    let what = format!("the sales of {:?}", line.product);
    // The order aggregate checked that the line's amount fits in an i64.
    let amount = line
        .amount()
        .ok_or_else(|| format!("{what}: the line's amount overflows"))?;
    sales.units_sold = add(sales.units_sold, line.quantity, &what)?;
    sales.revenue = add(sales.revenue, amount, &what)?;
    docs.put(&key, &sales)
}

/// A sum that does not fit stops the projection rather than wrapping around.
fn add(a: i64, b: i64, what: &str) -> Result<i64, String> {
    a.checked_add(b)
        .ok_or_else(|| format!("{what} no longer fits in 64 bits"))
}

/// A read model that does not decode is the projection's fault, not the caller's;
/// the contract has no other error for a query, so it says so plainly.
fn internal(reason: impl std::fmt::Display) -> QueryError {
    QueryError::bad_arguments(format!("the read model is unreadable: {reason}"))
}

refold_sdk::export_projection!(Sales);

#[cfg(test)]
mod tests {
    use super::*;
    use refold_sdk::testing::ProjectionTest;
    use serde_json::json;

    fn line(product: &str, quantity: i64, unit_price: i64) -> Line {
        Line {
            product: product.into(),
            quantity,
            unit_price,
        }
    }

    fn placed(lines: Vec<Line>) -> Event {
        let total = lines.iter().map(|l| l.quantity * l.unit_price).sum();
        Event::Placed {
            customer: "Ada".into(),
            lines,
            total,
            pay_within_ms: None,
        }
    }

    fn cancelled(reason: &str) -> Event {
        Event::Cancelled {
            reason: reason.into(),
        }
    }

    fn test() -> ProjectionTest<Sales> {
        ProjectionTest::new()
    }

    /// An order placed, confirmed and shipped.
    fn shipped_order(
        test: ProjectionTest<Sales>,
        id: &str,
        lines: Vec<Line>,
    ) -> ProjectionTest<Sales> {
        test.given_events(
            AGGREGATE_TYPE,
            id,
            [placed(lines), Event::Confirmed, Event::Shipped],
        )
    }

    #[test]
    fn a_placed_order_keeps_its_lines_and_sells_nothing_yet() {
        test()
            .given(
                AGGREGATE_TYPE,
                "o-1",
                placed(vec![line("apple", 3, 50), line("pear", 1, 120)]),
            )
            .then_doc(
                "order/o-1",
                json!({
                    "customer": "Ada",
                    "lines": [
                        {"product": "apple", "quantity": 3, "unit_price": 50},
                        {"product": "pear", "quantity": 1, "unit_price": 120},
                    ],
                    "total": 270,
                    "status": "placed",
                    "cancel_reason": null,
                }),
            )
            .then_docs("product/", 0)
            .then_no_doc("totals")
            .given(AGGREGATE_TYPE, "o-1", Event::Confirmed)
            .then_query(
                "order",
                json!({"id": "o-1"}),
                json!({
                    "customer": "Ada",
                    "lines": [
                        {"product": "apple", "quantity": 3, "unit_price": 50},
                        {"product": "pear", "quantity": 1, "unit_price": 120},
                    ],
                    "total": 270,
                    "status": "confirmed",
                    "cancel_reason": null,
                }),
            )
            .then_docs("product/", 0);
    }

    #[test]
    fn a_payment_changes_no_document() {
        let order = || {
            json!({
                "customer": "Ada",
                "lines": [{"product": "apple", "quantity": 3, "unit_price": 50}],
                "total": 150,
                "status": "placed",
                "cancel_reason": null,
            })
        };
        test()
            .given(AGGREGATE_TYPE, "o-1", placed(vec![line("apple", 3, 50)]))
            .then_doc("order/o-1", order())
            .given(AGGREGATE_TYPE, "o-1", Event::Paid { amount: 150 })
            .then_doc("order/o-1", order())
            .then_docs("product/", 0)
            .then_no_doc("totals");
    }

    #[test]
    fn a_shipped_order_counts_for_its_products_and_the_totals() {
        let t = shipped_order(
            test(),
            "o-1",
            vec![line("apple", 3, 50), line("pear", 1, 120)],
        );
        let t = shipped_order(t, "o-2", vec![line("apple", 2, 45)]);
        let mut t = t
            .then_doc("product/apple", json!({"units_sold": 5, "revenue": 240}))
            .then_doc("product/pear", json!({"units_sold": 1, "revenue": 120}))
            .then_doc("totals", json!({"orders_shipped": 2, "revenue": 360}))
            .then_query(
                "totals",
                json!({}),
                json!({"orders_shipped": 2, "revenue": 360}),
            );
        assert_eq!(t.doc("order/o-2").unwrap()["status"], "shipped");
    }

    #[test]
    fn a_cancelled_order_never_counts() {
        test()
            .given_events(
                AGGREGATE_TYPE,
                "o-1",
                [
                    placed(vec![line("apple", 3, 50)]),
                    Event::Confirmed,
                    cancelled("out of stock"),
                ],
            )
            .given_events(
                AGGREGATE_TYPE,
                "o-2",
                [placed(vec![line("pear", 1, 120)]), cancelled("")],
            )
            .then_docs("product/", 0)
            .then_no_doc("totals")
            .then_query(
                "totals",
                json!({}),
                json!({"orders_shipped": 0, "revenue": 0}),
            )
            .then_query(
                "order",
                json!({"id": "o-1"}),
                json!({
                    "customer": "Ada",
                    "lines": [{"product": "apple", "quantity": 3, "unit_price": 50}],
                    "total": 150,
                    "status": "cancelled",
                    "cancel_reason": "out of stock",
                }),
            );
    }

    #[test]
    fn free_items_count_units_but_no_revenue() {
        shipped_order(
            test(),
            "o-1",
            vec![line("sticker", 4, 0), line("apple", 1, 50)],
        )
        .then_doc("product/sticker", json!({"units_sold": 4, "revenue": 0}))
        .then_doc("totals", json!({"orders_shipped": 1, "revenue": 50}));
    }

    #[test]
    fn other_aggregates_are_not_seen() {
        test()
            .given_raw(
                "inventory",
                "apple",
                "Shipped",
                r#"{"order_id":"o-1","quantity":3}"#,
            )
            .given_raw("bank-account", "a", "Opened", r#"{"owner":"Ada"}"#)
            .then_docs("", 0);
    }

    #[test]
    fn an_event_before_placed_or_that_does_not_decode_stops_the_projection() {
        test()
            .given(AGGREGATE_TYPE, "o-1", Event::Shipped)
            .then_apply_fails("\"order/o-1\" is missing")
            .given(AGGREGATE_TYPE, "o-2", placed(vec![line("apple", 1, 50)]))
            .given_raw(AGGREGATE_TYPE, "o-2", "Cancelled", r#"{"why":"?"}"#)
            .then_apply_fails("event Cancelled does not decode")
            .then_docs("", 0);
    }

    #[test]
    fn revenue_that_overflows_stops_the_projection() {
        let big = line("gold", 1, i64::MAX);
        shipped_order(test(), "o-1", vec![big.clone()])
            .then_doc(
                "product/gold",
                json!({"units_sold": 1, "revenue": i64::MAX}),
            )
            .given_events(
                AGGREGATE_TYPE,
                "o-2",
                [placed(vec![big]), Event::Confirmed, Event::Shipped],
            )
            .then_apply_fails("the sales of \"gold\" no longer fits in 64 bits");
    }

    #[test]
    fn order_answers_an_orders_document() {
        let mut t = test().given(AGGREGATE_TYPE, "o-1", placed(vec![line("apple", 1, 50)]));
        assert_eq!(t.query("order", json!({"id": "o-1"})).unwrap()["total"], 50);
        assert_eq!(
            t.query("order", json!({"id": "o-404"})).unwrap(),
            Value::Null
        );
        for bad in [json!({}), json!({"id": 1}), json!({"order": "o-1"})] {
            assert!(matches!(
                t.query("order", bad),
                Err(QueryError::BadArguments(_))
            ));
        }
        assert_eq!(t.query("orders", json!({})), Err(QueryError::UnknownQuery));
    }

    #[test]
    fn top_products_ranks_by_revenue_then_id() {
        let mut t = shipped_order(
            test(),
            "o-1",
            vec![line("b", 1, 500), line("c", 10, 10), line("a", 5, 100)],
        );
        t = shipped_order(t, "o-2", vec![line("d", 2, 250), line("e", 1, 1)]);
        // Placed but not shipped: no sales.
        t = t.given(AGGREGATE_TYPE, "o-3", placed(vec![line("z", 100, 100)]));
        let ranked = |answer: Value| -> Vec<(String, i64)> {
            answer
                .as_array()
                .unwrap()
                .iter()
                .map(|d| {
                    (
                        d["product"].as_str().unwrap().to_string(),
                        d["revenue"].as_i64().unwrap(),
                    )
                })
                .collect()
        };
        let top = t.query("top-products", json!({"limit": 4})).unwrap();
        assert_eq!(
            ranked(top.clone()),
            [
                ("a".into(), 500),
                ("b".into(), 500),
                ("d".into(), 500),
                ("c".into(), 100)
            ]
        );
        assert_eq!(
            top[3],
            json!({"product": "c", "units_sold": 10, "revenue": 100})
        );
        assert_eq!(ranked(t.query("top-products", json!({})).unwrap()).len(), 5);
        assert_eq!(
            t.query("top-products", json!({"limit": 0})).unwrap(),
            json!([])
        );
        for bad in [
            json!({"limit": -1}),
            json!({"limit": "3"}),
            json!({"limit": 1001}),
        ] {
            assert!(matches!(
                t.query("top-products", bad),
                Err(QueryError::BadArguments(_))
            ));
        }
    }

    #[test]
    fn many_orders_across_batches() {
        let mut t = test();
        for i in 0..600 {
            // Product p-{i % 30}: each of the 30 products ships 20 orders.
            t = shipped_order(
                t,
                &format!("o-{i:04}"),
                vec![line(&format!("p-{:02}", i % 30), 1, 100 + i % 30)],
            );
            if i % 200 == 199 {
                t.apply_pending().unwrap();
            }
        }
        let mut t = t
            .then_docs("order/", 600)
            .then_docs("product/", 30)
            .then_doc(
                "product/p-29",
                json!({"units_sold": 20, "revenue": 20 * 129}),
            );
        let top = t.query("top-products", json!({"limit": 2})).unwrap();
        assert_eq!(top[0]["product"], "p-29");
        assert_eq!(top[1]["product"], "p-28");
        let revenue: i64 = (0..30).map(|p| 20 * (100 + p)).sum();
        assert_eq!(
            t.query("totals", json!({})).unwrap(),
            json!({"orders_shipped": 600, "revenue": revenue})
        );
    }
}
