//! The store's vocabulary: streams, versions, positions, events as written
//! and as recorded. Nothing here knows how events are stored.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::error::StoreError;

/// A place in the global log. Positions start at 1 and have no gaps.
pub type Position = u64;

/// The version of a stream: the number of events in it. A stream's first
/// event has version 1; version 0 means "the stream does not exist".
pub type StreamVersion = u64;

/// A 128-bit event id, assigned by the host (never by a guest).
pub type EventId = Uuid;

pub const MAX_AGGREGATE_TYPE_LEN: usize = 128;
pub const MAX_AGGREGATE_ID_LEN: usize = 256;
pub const MAX_EVENT_TYPE_LEN: usize = 256;
/// Event data is kept well below sled's ~128 KiB blob threshold, so every
/// event lives in sled's log (which we fsync) and never in an un-synced blob file.
pub const MAX_EVENT_DATA_LEN: usize = 64 * 1024;
pub const MAX_METADATA_ID_LEN: usize = 128;
pub const MAX_METADATA_ENTRIES: usize = 32;
pub const MAX_METADATA_KEY_LEN: usize = 64;
pub const MAX_METADATA_VALUE_LEN: usize = 1024;
/// The highest event schema version (versions start at 1).
pub const MAX_SCHEMA_VERSION: u32 = 65_535;
/// The most events one append may carry.
pub const MAX_EVENTS_PER_APPEND: usize = 1000;

/// One aggregate's stream: its type (the module that owns it) and its id.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct StreamId {
    aggregate_type: String,
    aggregate_id: String,
}

impl StreamId {
    /// Validates both parts: non-empty, bounded length, no control characters.
    pub fn new(
        aggregate_type: impl Into<String>,
        aggregate_id: impl Into<String>,
    ) -> Result<Self, StoreError> {
        let aggregate_type = aggregate_type.into();
        let aggregate_id = aggregate_id.into();
        check_name("aggregate type", &aggregate_type, MAX_AGGREGATE_TYPE_LEN)
            .map_err(StoreError::InvalidStream)?;
        check_name("aggregate id", &aggregate_id, MAX_AGGREGATE_ID_LEN)
            .map_err(StoreError::InvalidStream)?;
        Ok(StreamId {
            aggregate_type,
            aggregate_id,
        })
    }

    pub fn aggregate_type(&self) -> &str {
        &self.aggregate_type
    }

    pub fn aggregate_id(&self) -> &str {
        &self.aggregate_id
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.aggregate_type, self.aggregate_id)
    }
}

/// Checks a name-like string: non-empty, at most `max` bytes, no control characters.
pub fn check_name(what: &str, value: &str, max: usize) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("{what} is empty"));
    }
    if value.len() > max {
        return Err(format!(
            "{what} is {} bytes long; the limit is {max}",
            value.len()
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(format!("{what} contains a control character"));
    }
    Ok(())
}

/// The characters of an event type besides ASCII letters and digits.
pub const EVENT_TYPE_SEPARATORS: &str = "._-:/";

/// Checks an event type: 1 to [`MAX_EVENT_TYPE_LEN`] bytes of ASCII letters,
/// digits and [`EVENT_TYPE_SEPARATORS`]. No commas (the event-type filter of
/// `/v1/events` splits on them), whitespace, or invisible and bidi characters
/// that would make two types look alike.
pub fn check_event_type(value: &str) -> Result<(), String> {
    check_name("event type", value, MAX_EVENT_TYPE_LEN)?;
    if let Some(c) = value
        .chars()
        .find(|c| !c.is_ascii_alphanumeric() && !EVENT_TYPE_SEPARATORS.contains(*c))
    {
        // Echoed escaped: the type may hold characters that hide or reorder text.
        let shown = if c.is_ascii_graphic() {
            format!("'{c}' ")
        } else {
            String::new()
        };
        return Err(format!(
            "event type \"{}\" contains {shown}U+{:04X}; event types are ASCII letters, digits and {EVENT_TYPE_SEPARATORS}",
            value.escape_default(),
            c as u32,
        ));
    }
    Ok(())
}

/// What the writer expects the stream's version to be (EventStoreDB semantics).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExpectedVersion {
    /// No check: append wherever the stream is.
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// The stream must have at least one event.
    StreamExists,
    /// The stream's version must be exactly this. `Exact(0)` means the same as `NoStream`.
    Exact(StreamVersion),
}

impl ExpectedVersion {
    /// Does a stream currently at `actual` satisfy this expectation?
    pub fn admits(self, actual: StreamVersion) -> bool {
        match self {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => actual == 0,
            ExpectedVersion::StreamExists => actual > 0,
            ExpectedVersion::Exact(v) => actual == v,
        }
    }
}

impl ExpectedVersion {
    /// The idempotency rule's place (docs/store-format.md, "Idempotency"):
    /// the version an append of `n` events with this expectation would have
    /// put its first event at, if the stream (at `version`) already reaches
    /// it. `NoStream`/`Exact(0)` name 1, `Exact(v)` v + 1, `Any` and
    /// `StreamExists` the stream's last `n` events. None: no place to repeat.
    /// Every backend's writer applies the rule from here.
    pub(crate) fn repeat_place(self, version: StreamVersion, n: u64) -> Option<StreamVersion> {
        match self {
            ExpectedVersion::NoStream => Some(1),
            ExpectedVersion::Exact(v) => v.checked_add(1),
            ExpectedVersion::Any | ExpectedVersion::StreamExists => {
                version.checked_sub(n).map(|v| v + 1)
            }
        }
        .filter(|p| *p <= version)
    }
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("any"),
            ExpectedVersion::NoStream => f.write_str("no stream"),
            ExpectedVersion::StreamExists => f.write_str("stream exists"),
            ExpectedVersion::Exact(v) => write!(f, "{v}"),
        }
    }
}

/// Who and what caused an event. Every field is optional except the map,
/// which may be empty.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventMetadata {
    pub correlation_id: Option<String>,
    pub causation_id: Option<String>,
    pub command_id: Option<String>,
    /// The module that produced the event, as `name@version`.
    pub producer: Option<String>,
    /// A small map of free-form strings.
    pub extra: BTreeMap<String, String>,
}

/// An event as a writer hands it to `append`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewEvent {
    pub event_id: EventId,
    pub event_type: String,
    /// JSON text; validated on append (`json_text::check_stored`), then kept
    /// and served as it is.
    pub data: String,
    pub metadata: EventMetadata,
    /// The schema version of `data`'s shape for this event type, as its
    /// producer declares it: 1 to [`MAX_SCHEMA_VERSION`], 1 by default.
    pub schema_version: u32,
}

impl NewEvent {
    /// A new event with a fresh time-ordered id and empty metadata.
    pub fn new(event_type: impl Into<String>, data: impl Into<String>) -> Self {
        NewEvent {
            event_id: Uuid::now_v7(),
            event_type: event_type.into(),
            data: data.into(),
            metadata: EventMetadata::default(),
            schema_version: 1,
        }
    }

    /// The same event at another schema version.
    pub fn at_schema_version(mut self, schema_version: u32) -> Self {
        self.schema_version = schema_version;
        self
    }

    /// Checks everything about the event that does not depend on the store's state.
    pub(crate) fn validate(&self) -> Result<(), String> {
        check_event_type(&self.event_type)?;
        if !(1..=MAX_SCHEMA_VERSION).contains(&self.schema_version) {
            return Err(format!(
                "schema version {} is out of range; versions are 1 to {MAX_SCHEMA_VERSION}",
                self.schema_version
            ));
        }
        if self.data.len() > MAX_EVENT_DATA_LEN {
            return Err(format!(
                "event data is {} bytes; the limit is {MAX_EVENT_DATA_LEN}",
                self.data.len()
            ));
        }
        crate::json_text::check_stored(&self.data)
            .map_err(|e| format!("event data is not valid JSON: {e}"))?;
        let m = &self.metadata;
        for (what, id) in [
            ("correlation id", &m.correlation_id),
            ("causation id", &m.causation_id),
            ("command id", &m.command_id),
            ("producer", &m.producer),
        ] {
            if let Some(id) = id {
                check_name(what, id, MAX_METADATA_ID_LEN)?;
            }
        }
        if m.extra.len() > MAX_METADATA_ENTRIES {
            return Err(format!(
                "metadata has {} entries; the limit is {MAX_METADATA_ENTRIES}",
                m.extra.len()
            ));
        }
        for (k, v) in &m.extra {
            check_name("metadata key", k, MAX_METADATA_KEY_LEN)?;
            if v.len() > MAX_METADATA_VALUE_LEN {
                return Err(format!(
                    "metadata value of {k:?} is over {MAX_METADATA_VALUE_LEN} bytes"
                ));
            }
        }
        Ok(())
    }
}

/// An event as the store keeps it: everything the writer gave plus where and when it landed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedEvent {
    pub position: Position,
    pub stream: StreamId,
    pub version: StreamVersion,
    pub event_id: EventId,
    pub event_type: String,
    /// JSON text, exactly as appended.
    pub data: String,
    /// When the store committed the event, in unix milliseconds. Never decreases along the log.
    pub recorded_at_ms: u64,
    pub metadata: EventMetadata,
    /// The schema version its producer declared for its type (1 if none).
    pub schema_version: u32,
    /// The hash chain at this event: `sha256(previous chain || position BE ||
    /// the record's canonical bytes)` (docs/store-format.md, "Hash chain").
    pub chain: [u8; 32],
}

impl RecordedEvent {
    /// About how many bytes the event takes in memory and in a guest call:
    /// what replays and projection batches are bounded by.
    pub fn weight(&self) -> usize {
        self.data.len() + self.event_type.len() + 64
    }
}

/// The outcome of a successful append (or of an idempotent repeat of one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppendResult {
    /// The stream's version after the append: the version of its last event.
    pub stream_version: StreamVersion,
    pub first_position: Position,
    pub last_position: Position,
}

/// Which way a stream read goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Forward,
    Backward,
}

/// Selects events of the global log. An empty list admits everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventFilter {
    pub event_types: Vec<String>,
    pub aggregate_types: Vec<String>,
}

impl EventFilter {
    pub fn all() -> Self {
        EventFilter::default()
    }

    pub fn is_all(&self) -> bool {
        self.event_types.is_empty() && self.aggregate_types.is_empty()
    }

    pub fn admits(&self, stream_type: &str, event_type: &str) -> bool {
        (self.event_types.is_empty() || self.event_types.iter().any(|t| t == event_type))
            && (self.aggregate_types.is_empty()
                || self.aggregate_types.iter().any(|t| t == stream_type))
    }
}

/// A page of the global log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogPage {
    /// Matching events in position order.
    pub events: Vec<RecordedEvent>,
    /// The position to ask for next: one past the last position this read examined.
    pub next_position: Position,
    /// The durable head when the page was read.
    pub head: Position,
}

/// How hard an acknowledged append is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Durability {
    /// Acknowledge only after sled's flush and an fdatasync of its data file:
    /// survives a killed process and a power loss.
    #[default]
    Fsync,
    /// Acknowledge as soon as the batch is in sled's memory. For tests only:
    /// a crash may lose acknowledged events.
    None,
}

impl StreamId {
    /// For records read back from disk, which were validated when written.
    pub(crate) fn from_parts_unchecked(aggregate_type: String, aggregate_id: String) -> Self {
        StreamId {
            aggregate_type,
            aggregate_id,
        }
    }
}

/// The outcome of a command's append.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommandAppend {
    pub result: AppendResult,
    /// True when the command id was already recorded (or the same events were
    /// already appended at the same place): nothing was written, and `result`
    /// is the original append's.
    pub repeated: bool,
}

/// What identifies the request behind a command: a SHA-256 the caller computes
/// over whatever makes two requests "the same" (the command service: aggregate
/// type and id and the command body; not the precondition). The store only
/// compares them.
pub type RequestFingerprint = [u8; 32];

/// What the store remembers of a command's append: where its events went, and
/// the fingerprint of the request that made it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandRecord {
    pub stream: StreamId,
    pub result: AppendResult,
    /// None for a record written without one, or by a release before fingerprints:
    /// such a record is matched by its stream alone.
    pub fingerprint: Option<RequestFingerprint>,
}

impl CommandRecord {
    /// Does an append to `stream` with `fingerprint` repeat the request this record
    /// is of? The streams must be equal; the fingerprints too, when both are known.
    pub fn same_request(
        &self,
        stream: &StreamId,
        fingerprint: Option<&RequestFingerprint>,
    ) -> bool {
        self.stream == *stream
            && match (&self.fingerprint, fingerprint) {
                (Some(recorded), Some(asked)) => recorded == asked,
                _ => true,
            }
    }
}
