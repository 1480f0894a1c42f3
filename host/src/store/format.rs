//! The on-disk format: key spaces and record layouts. `docs/store-format.md`
//! describes the same bytes for people; keep the two in step.
//!
//! Everything lives in sled's default tree so that one `apply_batch` is one
//! atomic write across all key spaces. Each key starts with a one-byte space tag.
//! Integers in keys are big-endian so that byte order is numeric order.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::error::StoreError;
use super::integrity::{self, Digest, Seal};
use super::types::{
    AppendResult, CommandRecord, EventMetadata, Position, RecordedEvent, StreamId, StreamVersion,
};

/// The first byte of a value: the layout version of that kind of record.
/// Command records, snapshots, registry and read-model values are layout 1.
pub const FORMAT_V1: u8 = 1;
/// Layout 2: event records (with their chain value), stream-index entries
/// (one per append) and seals.
pub const FORMAT_V2: u8 = 2;
/// The store format this build reads and writes (the `Mformat` marker).
pub const STORE_FORMAT: u8 = 2;

/// `E` position -> event record.
pub const SPACE_EVENT: u8 = b'E';
/// `S` stream-key first-version -> (first position, count, first event id):
/// one per append. A stream's last run is its head.
pub const SPACE_STREAM_INDEX: u8 = b'S';
/// `K` last-position -> seal (a Merkle checkpoint over a run of chain values).
pub const SPACE_SEAL: u8 = b'K';
/// `C` command-id -> command record.
pub const SPACE_COMMAND: u8 = b'C';
/// `N` stream-key module-digest -> snapshot.
pub const SPACE_SNAPSHOT: u8 = b'N';
/// `R` module registry: `Rm` versions, `Ra` active pointers.
pub const SPACE_REGISTRY: u8 = b'R';

/// In space `M` (store metadata): the format marker, `[STORE_FORMAT]`.
pub const META_FORMAT_KEY: &[u8] = b"Mformat";

pub fn event_key(position: Position) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[0] = SPACE_EVENT;
    key[1..].copy_from_slice(&position.to_be_bytes());
    key
}

pub fn position_of_event_key(key: &[u8]) -> Result<Position, StoreError> {
    let bytes: [u8; 8] = key
        .get(1..9)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| corrupt(key, "event key is not 9 bytes"))?;
    Ok(u64::from_be_bytes(bytes))
}

/// `[space][u8 type len][type][u16 BE id len][id]`: both parts length-prefixed,
/// so no stream's key is a prefix of another stream's key.
fn stream_key(space: u8, stream: &StreamId, extra: usize) -> Vec<u8> {
    let t = stream.aggregate_type().as_bytes();
    let id = stream.aggregate_id().as_bytes();
    let mut key = Vec::with_capacity(4 + t.len() + id.len() + extra);
    key.push(space);
    key.push(t.len() as u8); // validated: at most 128 bytes
    key.extend_from_slice(t);
    key.extend_from_slice(&(id.len() as u16).to_be_bytes()); // validated: at most 256 bytes
    key.extend_from_slice(id);
    key
}

/// `[space]` followed by the stream key: how per-stream spaces (snapshots) begin.
pub fn stream_space_key(space: u8, stream: &StreamId, extra: usize) -> Vec<u8> {
    stream_key(space, stream, extra)
}

/// The prefix shared by the stream-index keys of every stream of `aggregate_type`.
pub fn stream_type_prefix(aggregate_type: &str) -> Vec<u8> {
    let t = aggregate_type.as_bytes();
    let mut key = Vec::with_capacity(2 + t.len());
    key.push(SPACE_STREAM_INDEX);
    key.push(t.len() as u8);
    key.extend_from_slice(t);
    key
}

/// The prefix shared by every stream-index key of `stream`.
pub fn stream_index_prefix(stream: &StreamId) -> Vec<u8> {
    stream_key(SPACE_STREAM_INDEX, stream, 8)
}

/// The key of the stream-index entry for the append that starts at `first_version`.
pub fn stream_index_key(stream: &StreamId, first_version: StreamVersion) -> Vec<u8> {
    let mut key = stream_index_prefix(stream);
    key.extend_from_slice(&first_version.to_be_bytes());
    key
}

/// One append's run of a stream: versions `first_version..first_version + count`
/// are at positions `first_position..first_position + count`. The run carries
/// its first event's id, so the idempotency check of an append that repeats
/// the stream's last one needs no event read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamRun {
    pub first_version: StreamVersion,
    pub first_position: Position,
    pub count: u32,
    pub first_event_id: Uuid,
}

impl StreamRun {
    pub fn last_version(&self) -> StreamVersion {
        self.first_version + u64::from(self.count) - 1
    }

    pub fn last_position(&self) -> Position {
        self.first_position + u64::from(self.count) - 1
    }

    /// The position of `version`, if this run holds it.
    pub fn position_of(&self, version: StreamVersion) -> Option<Position> {
        (self.first_version..=self.last_version())
            .contains(&version)
            .then(|| self.first_position + (version - self.first_version))
    }
}

/// `[FORMAT_V2][first position u64 BE][count u32 BE][first event id: 16]`.
pub fn encode_stream_run(run: &StreamRun) -> [u8; 29] {
    let mut v = [0u8; 29];
    v[0] = FORMAT_V2;
    v[1..9].copy_from_slice(&run.first_position.to_be_bytes());
    v[9..13].copy_from_slice(&run.count.to_be_bytes());
    v[13..].copy_from_slice(run.first_event_id.as_bytes());
    v
}

pub fn decode_stream_run(key: &[u8], value: &[u8]) -> Result<StreamRun, StoreError> {
    let first_version = key
        .len()
        .checked_sub(8)
        .and_then(|at| key[at..].try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| corrupt(key, "stream-index key too short"))?;
    match value {
        [FORMAT_V2, rest @ ..] if rest.len() == 28 => {
            let run = StreamRun {
                first_version,
                first_position: u64::from_be_bytes(rest[..8].try_into().expect("length checked")),
                count: u32::from_be_bytes(rest[8..12].try_into().expect("length checked")),
                first_event_id: Uuid::from_bytes(rest[12..].try_into().expect("length checked")),
            };
            if run.count == 0 || run.first_version == 0 || run.first_position == 0 {
                return Err(corrupt(key, "empty stream-index run"));
            }
            Ok(run)
        }
        _ => Err(corrupt(
            key,
            "stream-index value is not [2][u64][u32][16 bytes]",
        )),
    }
}

/// The body of an event record. The position is the key, so it is not repeated
/// here. Field order is the postcard layout: never reorder, only add a new format.
#[derive(Serialize, Deserialize)]
struct EventBody<S> {
    aggregate_type: S,
    aggregate_id: S,
    version: StreamVersion,
    event_id: [u8; 16],
    event_type: S,
    data: S,
    recorded_at_ms: u64,
    correlation_id: Option<S>,
    causation_id: Option<S>,
    command_id: Option<S>,
    producer: Option<S>,
    extra: Vec<(S, S)>,
}

/// The first fields of a body, for checks that need only the event id.
#[derive(Deserialize)]
struct EventBodyPrefix<'a> {
    #[serde(borrow)]
    _aggregate_type: &'a str,
    #[serde(borrow)]
    _aggregate_id: &'a str,
    _version: StreamVersion,
    event_id: [u8; 16],
}

/// The parts of an event record the writer knows before it is committed.
pub struct EventRecordRef<'a> {
    pub stream: &'a StreamId,
    pub version: StreamVersion,
    pub event_id: &'a Uuid,
    pub event_type: &'a str,
    pub data: &'a str,
    pub recorded_at_ms: u64,
    pub metadata: &'a EventMetadata,
    pub schema_version: u32,
}

/// Bytes before the body in an event value: the format byte and the chain value.
pub const EVENT_HEADER_LEN: usize = 1 + 32;

/// `[FORMAT_V2][chain: 32][postcard(EventBody)][schema version]`, where
/// `chain = sha256(previous chain || position BE || body)` and the body is
/// everything after the chain value. The schema version is a postcard varint
/// written only when it is not 1, so an event at version 1 has exactly the
/// bytes it had before versions existed (and the same chain value); a reader
/// that knows nothing of versions reads the postcard part and stops there.
/// Returns the value and its chain value, the next event's `previous`.
pub fn encode_event(
    previous: &Digest,
    position: Position,
    event: &EventRecordRef<'_>,
) -> (Vec<u8>, Digest) {
    let mut out = Vec::with_capacity(EVENT_HEADER_LEN + 64 + event.data.len());
    out.push(FORMAT_V2);
    out.extend_from_slice(&[0; 32]);
    write_event_body(&mut out, event);
    let chain = integrity::chain_next(previous, position, &out[EVENT_HEADER_LEN..]);
    out[1..EVENT_HEADER_LEN].copy_from_slice(&chain);
    (out, chain)
}

/// An event's canonical body alone (what follows the chain value), for a
/// backend that computes the chain where the position is assigned (PostgreSQL).
pub fn encode_event_body(event: &EventRecordRef<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + event.data.len());
    write_event_body(&mut out, event);
    out
}

/// The canonical body of a recorded event: the bytes its chain value hashes
/// (`chain = sha256(previous chain || position BE || body)`), on any backend.
pub fn canonical_body(event: &RecordedEvent) -> Vec<u8> {
    encode_event_body(&EventRecordRef {
        stream: &event.stream,
        version: event.version,
        event_id: &event.event_id,
        event_type: &event.event_type,
        data: &event.data,
        recorded_at_ms: event.recorded_at_ms,
        metadata: &event.metadata,
        schema_version: event.schema_version,
    })
}

fn write_event_body(out: &mut Vec<u8>, event: &EventRecordRef<'_>) {
    let m = event.metadata;
    let body = EventBody::<&str> {
        aggregate_type: event.stream.aggregate_type(),
        aggregate_id: event.stream.aggregate_id(),
        version: event.version,
        event_id: *event.event_id.as_bytes(),
        event_type: event.event_type,
        data: event.data,
        recorded_at_ms: event.recorded_at_ms,
        correlation_id: m.correlation_id.as_deref(),
        causation_id: m.causation_id.as_deref(),
        command_id: m.command_id.as_deref(),
        producer: m.producer.as_deref(),
        extra: m
            .extra
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect(),
    };
    postcard::to_io(&body, &mut *out).expect("writing postcard to a Vec cannot fail");
    if event.schema_version != 1 {
        postcard::to_io(&event.schema_version, &mut *out)
            .expect("writing postcard to a Vec cannot fail");
    }
}

/// An event value's stored chain value and body, unchecked.
pub fn split_event(position: Position, value: &[u8]) -> Result<(Digest, &[u8]), StoreError> {
    match value {
        [FORMAT_V2, rest @ ..] if rest.len() >= 32 => {
            Ok((rest[..32].try_into().expect("length checked"), &rest[32..]))
        }
        [FORMAT_V1, ..] => Err(corrupt(
            &event_key(position),
            "a format-1 event record (this build reads format 2)",
        )),
        [other, ..] if *other != FORMAT_V2 => Err(corrupt(
            &event_key(position),
            &format!("unknown format version {other}"),
        )),
        _ => Err(corrupt(&event_key(position), "truncated event record")),
    }
}

pub fn decode_event(position: Position, value: &[u8]) -> Result<RecordedEvent, StoreError> {
    let (chain, body) = split_event(position, value)?;
    decode_event_body(position, chain, body)
}

/// Decodes an event body (the canonical bytes after the position), as stored
/// or as carried in a proof.
pub fn decode_event_body(
    position: Position,
    chain: Digest,
    body: &[u8],
) -> Result<RecordedEvent, StoreError> {
    let (r, rest): (EventBody<String>, _) = postcard::take_from_bytes(body)
        .map_err(|e| corrupt(&event_key(position), &format!("postcard: {e}")))?;
    let schema_version = match rest {
        [] => 1,
        // One canonical varint of 2 to 65535: what `encode_event` writes.
        rest => match postcard::take_from_bytes::<u32>(rest) {
            Ok((v, []))
                if (2..=crate::store::MAX_SCHEMA_VERSION).contains(&v)
                    && postcard::to_allocvec(&v).is_ok_and(|b| b == rest) =>
            {
                v
            }
            _ => {
                return Err(corrupt(
                    &event_key(position),
                    "bytes after the event body that are not one schema version of 2 or more",
                ));
            }
        },
    };
    Ok(RecordedEvent {
        position,
        // Built without re-validation: the writer validated it, and a read must not
        // fail because validation rules were tightened later.
        stream: StreamId::from_parts_unchecked(r.aggregate_type, r.aggregate_id),
        version: r.version,
        event_id: Uuid::from_bytes(r.event_id),
        event_type: r.event_type,
        data: r.data,
        recorded_at_ms: r.recorded_at_ms,
        metadata: EventMetadata {
            correlation_id: r.correlation_id,
            causation_id: r.causation_id,
            command_id: r.command_id,
            producer: r.producer,
            extra: r.extra.into_iter().collect(),
        },
        schema_version,
        chain,
    })
}

/// The event id of a stored event, without decoding the rest.
pub fn event_id_of(position: Position, value: &[u8]) -> Result<Uuid, StoreError> {
    let (_, body) = split_event(position, value)?;
    let (prefix, _): (EventBodyPrefix<'_>, _) = postcard::take_from_bytes(body)
        .map_err(|e| corrupt(&event_key(position), &format!("postcard: {e}")))?;
    Ok(Uuid::from_bytes(prefix.event_id))
}

pub fn seal_key(last_position: Position) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[0] = SPACE_SEAL;
    key[1..].copy_from_slice(&last_position.to_be_bytes());
    key
}

/// `[FORMAT_V2] | postcard(Seal)`.
pub fn encode_seal(seal: &Seal) -> Vec<u8> {
    let mut out = vec![FORMAT_V2];
    postcard::to_io(seal, &mut out).expect("writing postcard to a Vec cannot fail");
    out
}

pub fn decode_seal(key: &[u8], value: &[u8]) -> Result<Seal, StoreError> {
    let seal: Seal = match value {
        [FORMAT_V2, body @ ..] => {
            postcard::from_bytes(body).map_err(|e| corrupt(key, &format!("postcard: {e}")))?
        }
        _ => return Err(corrupt(key, "unknown seal format")),
    };
    if key != seal_key(seal.last_position)
        || seal.first_position == 0
        || seal.first_position > seal.last_position
    {
        return Err(corrupt(key, "seal positions do not match its key"));
    }
    Ok(seal)
}

pub fn command_key(command_id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + command_id.len());
    key.push(SPACE_COMMAND);
    key.extend_from_slice(command_id.as_bytes());
    key
}

#[derive(Serialize, Deserialize)]
struct CommandRecordV1<S> {
    aggregate_type: S,
    aggregate_id: S,
    stream_version: StreamVersion,
    first_position: Position,
    last_position: Position,
}

/// `[FORMAT_V1] | postcard(CommandRecordV1) | [fingerprint: 32 bytes]`. The
/// fingerprint trails the postcard body, raw, so a record without it (written
/// before fingerprints, or without one) is the same bytes as before, and a
/// reader that knows nothing of it (postcard ignores trailing bytes) still reads
/// the rest.
pub fn encode_command(record: &CommandRecord) -> Vec<u8> {
    let mut out = encode_v1(&CommandRecordV1::<&str> {
        aggregate_type: record.stream.aggregate_type(),
        aggregate_id: record.stream.aggregate_id(),
        stream_version: record.result.stream_version,
        first_position: record.result.first_position,
        last_position: record.result.last_position,
    });
    if let Some(fingerprint) = &record.fingerprint {
        out.extend_from_slice(fingerprint);
    }
    out
}

pub fn decode_command(key: &[u8], value: &[u8]) -> Result<CommandRecord, StoreError> {
    let body = match value {
        [FORMAT_V1, body @ ..] => body,
        _ => return Err(corrupt(key, "unknown format version")),
    };
    let (r, rest): (CommandRecordV1<String>, &[u8]) =
        postcard::take_from_bytes(body).map_err(|e| corrupt(key, &format!("postcard: {e}")))?;
    let fingerprint = match rest {
        [] => None,
        rest => Some(rest.try_into().map_err(|_| {
            corrupt(
                key,
                &format!(
                    "{} bytes after the command record, not a 32-byte fingerprint",
                    rest.len()
                ),
            )
        })?),
    };
    Ok(CommandRecord {
        stream: StreamId::from_parts_unchecked(r.aggregate_type, r.aggregate_id),
        result: AppendResult {
            stream_version: r.stream_version,
            first_position: r.first_position,
            last_position: r.last_position,
        },
        fingerprint,
    })
}

/// `[FORMAT_V1] | postcard(value)`.
pub fn encode_v1<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = vec![FORMAT_V1];
    postcard::to_io(value, &mut out).expect("writing postcard to a Vec cannot fail");
    out
}

pub fn decode_v1<T: serde::de::DeserializeOwned>(
    key: &[u8],
    value: &[u8],
) -> Result<T, StoreError> {
    match value {
        [FORMAT_V1, body @ ..] => {
            postcard::from_bytes(body).map_err(|e| corrupt(key, &format!("postcard: {e}")))
        }
        _ => Err(corrupt(key, "unknown format version")),
    }
}

pub fn corrupt(key: &[u8], reason: &str) -> StoreError {
    StoreError::Corrupt {
        key: render_key(key),
        reason: reason.to_string(),
    }
}

/// A key as a person reads it: the space tag, then hex.
fn render_key(key: &[u8]) -> String {
    match key.split_first() {
        Some((space, rest)) => {
            let hex: String = rest.iter().map(|b| format!("{b:02x}")).collect();
            format!("{}:{hex}", *space as char)
        }
        None => "<empty>".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(fingerprint: Option<[u8; 32]>) -> CommandRecord {
        CommandRecord {
            stream: StreamId::new("bank-account", "acc-1").unwrap(),
            result: AppendResult {
                stream_version: 3,
                first_position: 7,
                last_position: 8,
            },
            fingerprint,
        }
    }

    #[test]
    fn an_event_at_schema_version_1_keeps_the_old_bytes_and_others_trail() {
        let stream = StreamId::new("bank-account", "acc-1").unwrap();
        let id = Uuid::from_bytes([7; 16]);
        let metadata = EventMetadata::default();
        let at = |schema_version| EventRecordRef {
            stream: &stream,
            version: 1,
            event_id: &id,
            event_type: "Opened",
            data: "{}",
            recorded_at_ms: 5,
            metadata: &metadata,
            schema_version,
        };
        let (v1, chain1) = encode_event(&[0; 32], 1, &at(1));
        // What releases before versions wrote: the postcard body alone.
        let mut old = vec![FORMAT_V2];
        old.extend_from_slice(&chain1);
        postcard::to_io(
            &EventBody::<&str> {
                aggregate_type: "bank-account",
                aggregate_id: "acc-1",
                version: 1,
                event_id: [7; 16],
                event_type: "Opened",
                data: "{}",
                recorded_at_ms: 5,
                correlation_id: None,
                causation_id: None,
                command_id: None,
                producer: None,
                extra: Vec::new(),
            },
            &mut old,
        )
        .unwrap();
        assert_eq!(v1, old);
        assert_eq!(decode_event(1, &v1).unwrap().schema_version, 1);
        let (v300, chain300) = encode_event(&[0; 32], 1, &at(300));
        assert_eq!(&v300[EVENT_HEADER_LEN..v1.len()], &v1[EVENT_HEADER_LEN..]);
        assert_eq!(
            &v300[v1.len()..],
            &[0xac, 0x02],
            "300 as a varint, trailing"
        );
        assert_ne!(chain1, chain300, "the chain covers the version");
        assert_eq!(decode_event(1, &v300).unwrap().schema_version, 300);
        // 1 (never written), 0, two varints, a cut varint, 2 written in two
        // bytes, 65536.
        for trailing in [
            &[1u8][..],
            &[0],
            &[2, 2],
            &[0x80],
            &[0x82, 0x00],
            &[0x80, 0x80, 0x04],
        ] {
            let mut bad = v1.clone();
            bad.extend_from_slice(trailing);
            assert!(decode_event(1, &bad).is_err(), "{trailing:?}");
        }
    }

    #[test]
    fn a_command_record_without_a_fingerprint_keeps_the_old_bytes() {
        // What releases before fingerprints wrote, byte for byte.
        let old = encode_v1(&CommandRecordV1::<&str> {
            aggregate_type: "bank-account",
            aggregate_id: "acc-1",
            stream_version: 3,
            first_position: 7,
            last_position: 8,
        });
        assert_eq!(encode_command(&record(None)), old);
        assert_eq!(decode_command(b"Cx", &old).unwrap(), record(None));

        let new = encode_command(&record(Some([9; 32])));
        assert_eq!(new.len(), old.len() + 32, "the fingerprint trails, raw");
        assert_eq!(decode_command(b"Cx", &new).unwrap(), record(Some([9; 32])));
        // What an earlier release's reader does with it: the rest, as before.
        let seen_by_old: CommandRecordV1<String> = decode_v1(b"Cx", &new).unwrap();
        assert_eq!(seen_by_old.last_position, 8);
        assert!(matches!(
            decode_command(b"Cx", &new[..new.len() - 1]),
            Err(StoreError::Corrupt { .. })
        ));
    }
}
