//! A projection that feeds every clock and randomness source it can reach
//! (the entropy aggregate's probe) into its documents, for the host's
//! determinism tests: on a deterministic host, a rebuild (or a verify's
//! scratch replay) writes the same documents byte for byte as the live run
//! did, however differently the two batched the log.
//!
//! It follows the `entropy` aggregate type. Documents:
//! - `stream/{id}`: `{"events": n, "chain": sha256 over each event (position,
//!   type, data) and the readings `apply` took while folding it}`;
//! - `observed`: the call readings of the last `apply` (the same on every call
//!   of a deterministic host).
//!
//! Query `chain` `{"id": ...}`: the document `stream/{id}`, or `null`.

use refold_entropy_guest::probe;
use refold_sdk::{Docs, Envelope, Projection, QueryError, Selector};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

pub struct EntropyProjection;

impl Projection for EntropyProjection {
    type Event = Value;

    fn subscription() -> Selector {
        Selector::aggregate_types(["entropy"])
    }

    fn apply(docs: &mut Docs<'_>, event: &Envelope<Value>) -> Result<(), String> {
        let key = format!("stream/{}", event.aggregate_id);
        let before: Value = docs
            .get(&key)?
            .unwrap_or_else(|| json!({"events": 0, "chain": ""}));
        let mut chain = Sha256::new();
        chain.update(before["chain"].as_str().unwrap_or_default());
        chain.update(event.position.to_be_bytes());
        chain.update(&event.event_type);
        chain.update(event.event.to_string());
        chain.update(probe::call().to_string());
        chain.update(probe::per_event().to_string());
        docs.put(
            &key,
            &json!({
                "events": before["events"].as_u64().unwrap_or(0) + 1,
                "chain": probe::hex(&chain.finalize()),
            }),
        )?;
        docs.put("observed", probe::call())
    }

    fn query(docs: &Docs<'_>, name: &str, args: &Value) -> Result<Value, QueryError> {
        match name {
            "chain" => {
                let id = args
                    .get("id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| QueryError::bad_arguments("\"id\" (a string) is required"))?;
                let doc: Option<Value> = docs
                    .get(&format!("stream/{id}"))
                    .map_err(QueryError::BadArguments)?;
                Ok(doc.unwrap_or(Value::Null))
            }
            _ => Err(QueryError::UnknownQuery),
        }
    }
}

refold_sdk::export_projection!(EntropyProjection);
