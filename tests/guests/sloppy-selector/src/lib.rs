//! A projection whose subscription names an event type with a comma, which
//! no event can have (and which the event-type filter would split in two).
//! The host refuses it at upload.

use refold_sdk::{Docs, Envelope, Projection, QueryError, Selector};
use serde_json::Value;

pub struct Sloppy;

impl Projection for Sloppy {
    type Event = Value;

    fn subscription() -> Selector {
        Selector {
            event_types: vec!["Opened,Closed".to_string()],
            aggregate_types: Vec::new(),
        }
    }

    fn apply(_docs: &mut Docs<'_>, _event: &Envelope<Value>) -> Result<(), String> {
        Ok(())
    }

    fn query(_docs: &Docs<'_>, _name: &str, _args: &Value) -> Result<Value, QueryError> {
        Err(QueryError::UnknownQuery)
    }
}

refold_sdk::export_projection!(Sloppy);
