//! A projection that misbehaves on chosen events, for the host's tests of
//! projection failures, skips and retries. It subscribes to the whole log.
//!
//! For every event it increments `count/{event type}` (`{"n": k}`) and sets
//! `last` to `{"position": p}`, except for these event types:
//! - `Poison`: fails with `poison at position P` (the batch keeps no writes);
//! - `Panic`: panics (a trap);
//! - `Loop`: never returns (fuel or the deadline stops it);
//! - `Scatter` (`{"docs": n}`): also writes n documents `scatter/{position}/{i}`.
//!
//! Query `count` `{"type": t}`: the document `count/{t}`, or `null` if there is none.
//!
//! Events are decoded as JSON objects, so an event whose data is not a JSON
//! object fails to decode and stops the projection like `Poison` does.

use refold_sdk::{Docs, Envelope, Projection, QueryError};
use serde_json::{Value, json};

pub struct Picky;

impl Projection for Picky {
    type Event = Value;

    fn apply(docs: &mut Docs<'_>, event: &Envelope<Value>) -> Result<(), String> {
        match event.event_type.as_str() {
            "Poison" => return Err(format!("poison at position {}", event.position)),
            "Panic" => panic!(
                "the picky projection panics on purpose at position {}",
                event.position
            ),
            "Loop" => {
                let mut i: u64 = 0;
                loop {
                    i = std::hint::black_box(i.wrapping_add(1));
                }
            }
            "Scatter" => {
                let n = event.event["docs"].as_u64().unwrap_or(0);
                for i in 0..n {
                    docs.put(
                        &format!("scatter/{}/{i}", event.position),
                        &json!({ "i": i }),
                    )?;
                }
            }
            _ => {}
        }
        let key = format!("count/{}", event.event_type);
        let n = docs
            .get::<Value>(&key)?
            .and_then(|doc| doc["n"].as_u64())
            .unwrap_or(0);
        docs.put(&key, &json!({ "n": n + 1 }))?;
        docs.put("last", &json!({ "position": event.position }))
    }

    fn query(docs: &Docs<'_>, name: &str, args: &Value) -> Result<Value, QueryError> {
        match name {
            "count" => {
                let event_type = args
                    .get("type")
                    .and_then(Value::as_str)
                    .ok_or_else(|| QueryError::bad_arguments("\"type\" (a string) is required"))?;
                let doc: Option<Value> = docs
                    .get(&format!("count/{event_type}"))
                    .map_err(QueryError::BadArguments)?;
                Ok(doc.unwrap_or(Value::Null))
            }
            _ => Err(QueryError::UnknownQuery),
        }
    }
}

refold_sdk::export_projection!(Picky);

#[cfg(test)]
mod tests {
    use super::*;
    use refold_sdk::testing::ProjectionTest;

    #[test]
    fn counts_every_event_and_fails_on_poison() {
        ProjectionTest::<Picky>::new()
            .given_raw("a", "1", "Counted", "{}")
            .given_raw("b", "2", "Counted", r#"{"x":1}"#)
            .given_raw("b", "2", "Other", "{}")
            .then_doc("count/Counted", json!({"n": 2}))
            .then_doc("last", json!({"position": 3}))
            .then_query("count", json!({"type": "Other"}), json!({"n": 1}))
            .then_query("count", json!({"type": "Nope"}), Value::Null)
            .given_raw("a", "1", "Counted", "{}")
            .given_raw("a", "1", "Poison", "{}")
            .then_apply_fails("poison at position 5")
            .then_doc("count/Counted", json!({"n": 2}));
    }
}
