//! How recorded events look on the wire, everywhere: `data` is JSON, not a
//! string, and it is the stored text itself (`RawValue`), byte for byte.
//! Never pass these views through `serde_json::Value` (`json!`, `to_value`):
//! that re-parses the data, turning big integers into floats, collapsing
//! duplicate keys, and failing on text that is valid but out of its range.

use serde::Serialize;
use serde_json::value::RawValue;

use crate::store::RecordedEvent;

#[derive(Serialize)]
pub struct EventView<'a> {
    pub position: u64,
    pub aggregate_type: &'a str,
    pub aggregate_id: &'a str,
    pub version: u64,
    pub event_id: String,
    pub event_type: &'a str,
    /// The schema version its producer declared for its type (1 if none).
    pub schema_version: u32,
    pub data: &'a RawValue,
    pub metadata: MetadataView<'a>,
    /// The hash chain at this event, hex (docs/store-format.md, "Hash chain").
    pub chain: String,
}

#[derive(Serialize)]
pub struct MetadataView<'a> {
    pub recorded_at_ms: u64,
    pub correlation_id: Option<&'a str>,
    pub causation_id: Option<&'a str>,
    pub command_id: Option<&'a str>,
    pub producer: Option<&'a str>,
    pub extra: &'a std::collections::BTreeMap<String, String>,
}

/// The store checked `data` on append, so this cannot fail for a stored
/// event; a corrupt one is shown as `null` rather than breaking a page.
pub fn event_view(event: &RecordedEvent) -> EventView<'_> {
    let data: &RawValue = serde_json::from_str(&event.data).unwrap_or_else(|_| {
        tracing::error!(position = event.position, "stored event data is not JSON");
        serde_json::from_str("null").expect("null is JSON")
    });
    EventView {
        position: event.position,
        aggregate_type: event.stream.aggregate_type(),
        aggregate_id: event.stream.aggregate_id(),
        version: event.version,
        event_id: event.event_id.to_string(),
        event_type: &event.event_type,
        schema_version: event.schema_version,
        data,
        metadata: MetadataView {
            recorded_at_ms: event.recorded_at_ms,
            correlation_id: event.metadata.correlation_id.as_deref(),
            causation_id: event.metadata.causation_id.as_deref(),
            command_id: event.metadata.command_id.as_deref(),
            producer: event.metadata.producer.as_deref(),
            extra: &event.metadata.extra,
        },
        chain: crate::hex::hex(&event.chain),
    }
}

pub fn event_views(events: &[RecordedEvent]) -> Vec<EventView<'_>> {
    events.iter().map(event_view).collect()
}
