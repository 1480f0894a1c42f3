//! The tamper-evident log over HTTP: `GET /v1/integrity`, `POST
//! /v1/integrity/seal`, `GET /v1/events/{position}/proof` and the streaming
//! `GET /v1/integrity/verify`. Also the proof document's one definition: the
//! server writes it here and `check_proof` (used by `refold verify-proof`)
//! reads it, offline.

use std::collections::BTreeMap;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::AppState;
use super::problem::ApiError;
use super::render::{EventView, event_view};
use super::request::QueryPairs;
use crate::hex::hex;
use crate::store::integrity::{self, Digest, SEAL_INTERVAL};
use crate::store::{EventProof, Seal, decode_event_body};

/// The value of a proof's `proof_format`: bump it when the document changes.
pub const PROOF_FORMAT: &str = "refold-proof/1";

/// A seal as JSON: digests and the signature in hex.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SealView {
    pub first_position: u64,
    pub last_position: u64,
    pub root: String,
    pub chain: String,
    pub sealed_at_ms: u64,
    pub signature: Option<String>,
    pub public_key: Option<String>,
    /// sha256 of the signed message (`integrity::seal_digest`): one value that
    /// names the whole seal, for comparing unsigned seals.
    pub digest: String,
}

impl SealView {
    pub fn of(seal: &Seal) -> SealView {
        SealView {
            first_position: seal.first_position,
            last_position: seal.last_position,
            root: hex(&seal.root),
            chain: hex(&seal.chain),
            sealed_at_ms: seal.sealed_at_ms,
            signature: seal.signature.as_deref().map(hex),
            public_key: seal.public_key.as_ref().map(|k| hex(k)),
            digest: hex(&integrity::seal_digest(seal)),
        }
    }

    fn to_seal(&self) -> Result<Seal, String> {
        let digest = |field: &str, text: &str| {
            integrity::digest_from_hex(text)
                .ok_or_else(|| format!("seal.{field} is not 64 hex digits"))
        };
        Ok(Seal {
            first_position: self.first_position,
            last_position: self.last_position,
            root: digest("root", &self.root)?,
            chain: digest("chain", &self.chain)?,
            sealed_at_ms: self.sealed_at_ms,
            signature: match &self.signature {
                Some(text) => {
                    Some(integrity::bytes_from_hex(text).ok_or("seal.signature is not hex")?)
                }
                None => None,
            },
            public_key: match &self.public_key {
                Some(text) => Some(digest("public_key", text)?),
                None => None,
            },
        })
    }
}

/// The proof document, as served (`event` is an [`EventView`]) and as
/// `refold verify-proof` reads it back (`event` is an [`EventShown`]).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProofDocument<E> {
    proof_format: String,
    position: u64,
    /// The event as `/v1/events` shows it: derived from `record`, for people.
    event: E,
    /// The record's canonical bytes after the position (hex): what the chain hashes.
    record: String,
    previous_chain: String,
    chain: String,
    leaf_index: u64,
    /// Sibling hashes from the leaf up (RFC 6962 inclusion path), hex.
    path: Vec<String>,
    seal: SealView,
}

/// The `event` of a proof, read back field by field (in any order) for the
/// comparison with the record; `data` stays text, compared token for token,
/// never through `Value` (which would turn big numbers into floats and merge
/// duplicate keys).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventShown {
    position: u64,
    aggregate_type: String,
    aggregate_id: String,
    version: u64,
    event_id: String,
    event_type: String,
    /// Absent in proofs served before schema versions existed: 1.
    #[serde(default = "schema_version_one")]
    schema_version: u32,
    data: Box<serde_json::value::RawValue>,
    metadata: MetadataShown,
    chain: String,
}

fn schema_version_one() -> u32 {
    1
}

#[derive(Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct MetadataShown {
    recorded_at_ms: u64,
    correlation_id: Option<String>,
    causation_id: Option<String>,
    command_id: Option<String>,
    producer: Option<String>,
    #[serde(deserialize_with = "unique_keys")]
    extra: BTreeMap<String, String>,
}

impl EventShown {
    fn same(&self, other: &EventShown) -> bool {
        self.position == other.position
            && self.aggregate_type == other.aggregate_type
            && self.aggregate_id == other.aggregate_id
            && self.version == other.version
            && self.event_id == other.event_id
            && self.event_type == other.event_type
            && self.schema_version == other.schema_version
            && canonical_json(self.data.get()).is_some()
            && canonical_json(self.data.get()) == canonical_json(other.data.get())
            && self.metadata == other.metadata
            && self.chain == other.chain
    }
}

/// `GET /v1/integrity`: the chain at the head, the newest seal, the signing key.
pub async fn status(State(app): State<AppState>) -> Result<Response, ApiError> {
    let status = app.store.integrity()?;
    Ok(Json(json!({
        "store_format": 2,
        "hash": "sha256",
        "seal_interval": SEAL_INTERVAL,
        "head": status.head,
        "chain": hex(&status.chain),
        "last_seal": status.last_seal.as_ref().map(SealView::of),
        "next_seal_at": status.next_seal_at,
        "signing": status.public_key.map(|key| json!({
            "algorithm": "ed25519",
            "public_key": hex(&key),
        })),
    }))
    .into_response())
}

/// `POST /v1/integrity/seal`: seal everything since the last seal now.
pub async fn seal(State(app): State<AppState>) -> Result<Response, ApiError> {
    match app.store.seal().await? {
        Some(seal) => Ok(Json(json!({ "seal": SealView::of(&seal) })).into_response()),
        None => Ok(Json(json!({ "seal": null })).into_response()),
    }
}

/// `GET /v1/events/{position}/proof`.
pub async fn proof(
    State(app): State<AppState>,
    Path(position): Path<String>,
) -> Result<Response, ApiError> {
    let position = super::request::path_number("position", &position)?;
    // A proof may re-walk up to 4,096 events: at most one per core at a time,
    // so readers asking for proofs cannot take the machine from writers. A
    // request waits a little for its turn, then is told to come back.
    let permit = tokio::time::timeout(PROOF_WAIT, proof_permits().acquire()).await;
    let Ok(Ok(_permit)) = permit else {
        let mut busy = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "proofs_busy",
            "as many proofs as this server builds at once are being built; retry shortly",
        );
        busy.retry_after = Some(1);
        return Err(busy);
    };
    let store = app.store.clone();
    let proof = tokio::task::spawn_blocking(move || store.proof(position))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))??
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "event_not_found",
                format!("there is no event at position {position}"),
            )
        })?;
    Ok(Json(proof_view(&proof)).into_response())
}

/// How long a proof request waits for one of the per-core permits.
const PROOF_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

fn proof_permits() -> &'static tokio::sync::Semaphore {
    static PERMITS: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    PERMITS.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        tokio::sync::Semaphore::new(cores)
    })
}

fn proof_view(proof: &EventProof) -> ProofDocument<EventView<'_>> {
    ProofDocument {
        proof_format: PROOF_FORMAT.to_owned(),
        position: proof.event.position,
        event: event_view(&proof.event),
        record: hex(&proof.body),
        previous_chain: hex(&proof.previous_chain),
        chain: hex(&proof.event.chain),
        leaf_index: proof.leaf_index,
        path: proof.path.iter().map(|d| hex(d)).collect(),
        seal: SealView::of(&proof.seal),
    }
}

/// `GET /v1/integrity/verify?from=&to=`: re-walks the chain and the seals on
/// the running server, streaming one JSON line per 4,096 events walked
/// (`{"checked": P, "to": Q}`) and a last line with the report.
pub async fn verify(
    State(app): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let query = QueryPairs::parse(query.as_deref())?;
    query.only(&["from", "to", "public_key"])?;
    let from = query.number("from")?.unwrap_or(1);
    let to = query.number("to")?;
    // `to` before `from` is an empty walk (the report says 0 events); the CLI
    // refuses it before asking.
    let trusted = match query.get("public_key") {
        Some(text) => Some(integrity::digest_from_hex(text).ok_or_else(|| {
            ApiError::bad_request("invalid_request", "public_key must be 64 hex digits")
        })?),
        None => None,
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<String>(16);
    let store = app.store.clone();
    tokio::task::spawn_blocking(move || {
        let mut progress = |checked: u64, to: u64| {
            send_waiting(
                &tx,
                format!("{}\n", json!({ "checked": checked, "to": to })),
            )
        };
        let last = match store.verify_log(from, to, trusted.as_ref(), &mut progress) {
            Ok(report) => json!({ "report": report, "ok": report.failure.is_none() }),
            Err(e) => json!({ "error": { "code": e.code(), "detail": e.to_string() } }),
        };
        send_waiting(&tx, format!("{last}\n"));
    });
    let body = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|line| (Ok::<_, std::convert::Infallible>(line), rx))
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(body),
    )
        .into_response())
}

/// Sends `line`, waiting while the client is behind; false once it is gone.
/// (Not `blocking_send`: the walk may run inside a runtime's `block_on`, as
/// the PostgreSQL backend's does, where that panics.)
fn send_waiting(tx: &tokio::sync::mpsc::Sender<String>, mut line: String) -> bool {
    loop {
        match tx.try_send(line) {
            Ok(()) => return true,
            Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => return false,
            Err(tokio::sync::mpsc::error::TrySendError::Full(back)) => {
                line = back;
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
    }
}

/// What an offline proof check established.
#[derive(Debug, Serialize)]
pub struct ProofCheck {
    pub position: u64,
    pub seal_first_position: u64,
    pub seal_last_position: u64,
    pub root: String,
    /// Whose signature the seal carries (hex), if any; `trusted` says whether
    /// it was checked against a key the caller gave, or only against itself.
    pub signed_by: Option<String>,
    /// The seal's digest (the `digest` field, recomputed).
    pub seal_digest: String,
    /// Whether a trusted key or seal digest was checked; without one, the
    /// proof is consistent, but vouched for only by itself.
    pub trusted: bool,
}

/// What a proof must be anchored to, beyond its own consistency.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProofTrust<'a> {
    /// The seal must be signed by this key.
    pub public_key: Option<&'a Digest>,
    /// The seal's digest must be this (for unsigned seals, or as well).
    pub seal_digest: Option<&'a Digest>,
}

/// Checks a proof document offline: the event shown is the record's, the
/// record and the previous chain value give the chain value, the path takes it
/// to the seal's root, and the seal's signature holds (by `trusted_key` when
/// given; then an unsigned seal fails). Any edited field fails one of these.
pub fn check_proof(document: &str, trusted_key: Option<&Digest>) -> Result<ProofCheck, String> {
    check_proof_with(
        document,
        ProofTrust {
            public_key: trusted_key,
            seal_digest: None,
        },
    )
}

/// The longest inclusion path a seal of at most 4,096 events has, with room.
const MAX_PATH: usize = 64;

/// [`check_proof`], anchored to a trusted key and/or a trusted seal digest.
pub fn check_proof_with(document: &str, trust: ProofTrust<'_>) -> Result<ProofCheck, String> {
    let trusted_key = trust.public_key;
    let doc: ProofDocument<EventShown> =
        serde_json::from_str(document).map_err(|e| format!("not a Refold proof: {e}"))?;
    if doc.path.len() > MAX_PATH {
        return Err(format!(
            "the path has {} elements; a seal's has at most {MAX_PATH}",
            doc.path.len()
        ));
    }
    if doc.proof_format != PROOF_FORMAT {
        return Err(format!(
            "proof_format {:?} is not {PROOF_FORMAT:?}",
            doc.proof_format
        ));
    }
    let digest = |field: &str, text: &str| {
        integrity::digest_from_hex(text).ok_or_else(|| format!("{field} is not 64 hex digits"))
    };
    let record = integrity::bytes_from_hex(&doc.record).ok_or("record is not hex")?;
    let previous = digest("previous_chain", &doc.previous_chain)?;
    let chain = digest("chain", &doc.chain)?;
    let seal = doc.seal.to_seal()?;
    if doc.position == 0 {
        return Err("position 0 holds no event".into());
    }
    if doc.position == 1 && previous != integrity::ZERO {
        return Err("position 1 chains from 32 zero bytes".into());
    }
    // 1. The record is the event shown.
    let event = decode_event_body(doc.position, chain, &record)
        .map_err(|e| format!("the record does not decode: {e}"))?;
    let shown = serde_json::to_string(&event_view(&event)).map_err(|e| e.to_string())?;
    let shown: EventShown = serde_json::from_str(&shown).map_err(|e| e.to_string())?;
    if !doc.event.same(&shown) {
        return Err("the event shown is not the event in the record".into());
    }
    // 2. The chain value follows from the previous one and the record.
    if integrity::chain_next(&previous, doc.position, &record) != chain {
        return Err("the chain value does not follow from previous_chain and the record".into());
    }
    // 3. The path leads from the chain value to the seal's root.
    if !(seal.first_position..=seal.last_position).contains(&doc.position)
        || doc.leaf_index != doc.position - seal.first_position
    {
        return Err("the seal does not cover this position at leaf_index".into());
    }
    let path = doc
        .path
        .iter()
        .map(|p| digest("a path element", p))
        .collect::<Result<Vec<_>, _>>()?;
    let size = seal.last_position - seal.first_position + 1;
    if integrity::root_from_inclusion(&chain, doc.leaf_index, size, &path) != Some(seal.root) {
        return Err("the inclusion path does not lead to the seal's root".into());
    }
    // 4. The seal is signed by whom it says (and by the trusted key, if given),
    // and is the seal its digest names (and the trusted digest, if given).
    integrity::verify_seal_signature(&seal, trusted_key)
        .map_err(|e| format!("the seal's signature: {e}"))?;
    let seal_digest = integrity::seal_digest(&seal);
    if digest("seal.digest", &doc.seal.digest)? != seal_digest {
        return Err("seal.digest is not the digest of the seal's fields".into());
    }
    if let Some(trusted) = trust.seal_digest
        && *trusted != seal_digest
    {
        return Err("the seal is not the one the trusted seal digest names".into());
    }
    Ok(ProofCheck {
        position: doc.position,
        seal_first_position: seal.first_position,
        seal_last_position: seal.last_position,
        root: hex(&seal.root),
        signed_by: seal.public_key.as_ref().map(|k| hex(k)),
        seal_digest: hex(&seal_digest),
        trusted: trusted_key.is_some() || trust.seal_digest.is_some(),
    })
}

/// JSON text in one spelling: no whitespace between tokens, every string
/// decoded and re-encoded (so `\u00e9` and `é`, or `\/` and `/`, compare
/// equal), numbers and key order kept exactly as written. None if the text
/// holds a string that is not valid JSON.
fn canonical_json(text: &str) -> Option<String> {
    let mut out = String::with_capacity(text.len());
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b' ' | b'\t' | b'\n' | b'\r' => i += 1,
            b'"' => {
                let mut end = i + 1;
                while end < bytes.len() && bytes[end] != b'"' {
                    end += if bytes[end] == b'\\' { 2 } else { 1 };
                }
                let token = text.get(i..=end)?;
                let decoded: String = serde_json::from_str(token).ok()?;
                out.push_str(&serde_json::to_string(&decoded).ok()?);
                i = end + 1;
            }
            _ => {
                // Copy up to the next string or whitespace, whole characters.
                let start = i;
                while i < bytes.len() && !matches!(bytes[i], b' ' | b'\t' | b'\n' | b'\r' | b'"') {
                    i += 1;
                }
                out.push_str(text.get(start..i)?);
            }
        }
    }
    Some(out)
}

/// `extra` as the proof shows it: a map that refuses a key given twice (a
/// reader of the file, or another parser, could take the other value).
fn unique_keys<'de, D>(deserializer: D) -> Result<BTreeMap<String, String>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    struct Unique;
    impl<'de> serde::de::Visitor<'de> for Unique {
        type Value = BTreeMap<String, String>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an object of strings with distinct keys")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some((k, v)) = map.next_entry::<String, String>()? {
                if out.contains_key(&k) {
                    return Err(serde::de::Error::custom(format!("key {k:?} appears twice")));
                }
                out.insert(k, v);
            }
            Ok(out)
        }
    }
    deserializer.deserialize_map(Unique)
}
