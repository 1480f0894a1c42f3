//! The tamper-evident log over HTTP: `GET /v1/integrity`, `POST
//! /v1/integrity/seal`, `GET /v1/events/{position}/proof` and the streaming
//! `GET /v1/integrity/verify`. Also the proof document's one definition: the
//! server writes it here and `check_proof` (used by `refold verify-proof`)
//! reads it, offline.

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

/// The proof document, as served and as `refold verify-proof` reads it.
#[derive(Serialize)]
struct ProofView<'a> {
    proof_format: &'static str,
    position: u64,
    /// The event as `/v1/events` shows it: derived from `record`, for people.
    event: EventView<'a>,
    /// The record's canonical bytes after the position (hex): what the chain hashes.
    record: String,
    previous_chain: String,
    chain: String,
    leaf_index: u64,
    /// Sibling hashes from the leaf up (RFC 6962 inclusion path), hex.
    path: Vec<String>,
    seal: SealView,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProofDoc {
    proof_format: String,
    position: u64,
    event: EventShown,
    record: String,
    previous_chain: String,
    chain: String,
    leaf_index: u64,
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
    data: Box<serde_json::value::RawValue>,
    metadata: MetadataShown,
    chain: String,
}

#[derive(Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct MetadataShown {
    recorded_at_ms: u64,
    correlation_id: Option<String>,
    causation_id: Option<String>,
    command_id: Option<String>,
    producer: Option<String>,
    extra: std::collections::BTreeMap<String, String>,
}

impl EventShown {
    fn same(&self, other: &EventShown) -> bool {
        self.position == other.position
            && self.aggregate_type == other.aggregate_type
            && self.aggregate_id == other.aggregate_id
            && self.version == other.version
            && self.event_id == other.event_id
            && self.event_type == other.event_type
            && without_whitespace(self.data.get()) == without_whitespace(other.data.get())
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

fn proof_view(proof: &EventProof) -> ProofView<'_> {
    ProofView {
        proof_format: PROOF_FORMAT,
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
    let from = query.number("from")?.unwrap_or(1);
    let to = query.number("to")?;
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
            tx.blocking_send(format!("{}\n", json!({ "checked": checked, "to": to })))
                .is_ok()
        };
        let last = match store.verify_log(from, to, trusted.as_ref(), &mut progress) {
            Ok(report) => json!({ "report": report, "ok": report.failure.is_none() }),
            Err(e) => json!({ "error": { "code": e.code(), "detail": e.to_string() } }),
        };
        let _ = tx.blocking_send(format!("{last}\n"));
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
    pub trusted: bool,
}

/// Checks a proof document offline: the event shown is the record's, the
/// record and the previous chain value give the chain value, the path takes it
/// to the seal's root, and the seal's signature holds (by `trusted_key` when
/// given; then an unsigned seal fails). Any edited field fails one of these.
pub fn check_proof(document: &str, trusted_key: Option<&Digest>) -> Result<ProofCheck, String> {
    let doc: ProofDoc =
        serde_json::from_str(document).map_err(|e| format!("not a Refold proof: {e}"))?;
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
    // 4. The seal is signed by whom it says (and by the trusted key, if given).
    integrity::verify_seal_signature(&seal, trusted_key)
        .map_err(|e| format!("the seal's signature: {e}"))?;
    Ok(ProofCheck {
        position: doc.position,
        seal_first_position: seal.first_position,
        seal_last_position: seal.last_position,
        root: hex(&seal.root),
        signed_by: seal.public_key.as_ref().map(|k| hex(k)),
        trusted: trusted_key.is_some(),
    })
}

/// JSON text without the whitespace between tokens (strings kept as they
/// are), so a pretty-printed proof file compares equal to the served one.
fn without_whitespace(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in text.chars() {
        if in_string {
            out.push(c);
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
        } else if !matches!(c, ' ' | '\t' | '\n' | '\r') {
            in_string = c == '"';
            out.push(c);
        }
    }
    out
}
