//! Comparing read models: the diff an operator reads before promoting a
//! version, and the digest that shows two replays produced the same bytes.

use std::cmp::Ordering;

use serde::Serialize;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use super::{ProjectionError, VersionHandle};
use crate::store::{Position, StoreError};

/// What would change for readers if `to` replaced `from`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Diff {
    pub from: String,
    pub to: String,
    pub from_position: Position,
    pub to_position: Position,
    /// Keys only `to` has.
    pub added: u64,
    /// Keys only `from` has.
    pub removed: u64,
    /// Keys both have, with different documents.
    pub changed: u64,
    pub unchanged: u64,
    /// The first few of each kind, in key order.
    pub samples: DiffSample,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct DiffSample {
    pub added: Vec<SampleDocument>,
    pub removed: Vec<SampleDocument>,
    pub changed: Vec<ChangedDocument>,
}

/// Documents go out as their stored text, never re-encoded.
#[derive(Clone, Debug, Serialize)]
pub struct SampleDocument {
    pub key: String,
    pub doc: Box<RawValue>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ChangedDocument {
    pub key: String,
    pub from: Box<RawValue>,
    pub to: Box<RawValue>,
}

/// sha256 over every (key, document) in key order, each length-prefixed.
#[derive(Clone, Debug, Serialize)]
pub struct ReadModelDigest {
    pub version: String,
    pub position: Position,
    pub documents: u64,
    pub digest: String,
}

/// A stored document; one that is somehow not JSON is shown as a string of its text.
fn doc(json: &str) -> Box<RawValue> {
    match serde_json::from_str::<&RawValue>(json) {
        Ok(raw) => raw.to_owned(),
        Err(_) => serde_json::value::to_raw_value(json).expect("a string serializes"),
    }
}

/// Walks both read models in key order at once. Each side is read while its
/// runner may still be committing, so a version that is not caught up gives a
/// diff of a moment, labelled with the positions read.
pub(super) fn diff(
    from: &VersionHandle,
    to: &VersionHandle,
    samples: usize,
) -> Result<Diff, ProjectionError> {
    let mut out = Diff {
        from: from.version().to_string(),
        to: to.version().to_string(),
        from_position: from.status.borrow().position,
        to_position: to.status.borrow().position,
        ..Diff::default()
    };
    let (from_model, to_model) = (from.read_model(), to.read_model());
    let mut a = from_model.documents().peekable();
    let mut b = to_model.documents().peekable();
    loop {
        let order = match (a.peek(), b.peek()) {
            (None, None) => break,
            (Some(Err(_)), _) => return Err(a.next().expect("peeked").unwrap_err().into()),
            (_, Some(Err(_))) => return Err(b.next().expect("peeked").unwrap_err().into()),
            (Some(Ok(_)), None) => Ordering::Less,
            (None, Some(Ok(_))) => Ordering::Greater,
            (Some(Ok((ka, _))), Some(Ok((kb, _)))) => ka.cmp(kb),
        };
        match order {
            Ordering::Less => {
                let (key, value) = next_ok(&mut a)?;
                out.removed += 1;
                if out.samples.removed.len() < samples {
                    out.samples.removed.push(SampleDocument {
                        doc: doc(&value),
                        key,
                    });
                }
            }
            Ordering::Greater => {
                let (key, value) = next_ok(&mut b)?;
                out.added += 1;
                if out.samples.added.len() < samples {
                    out.samples.added.push(SampleDocument {
                        doc: doc(&value),
                        key,
                    });
                }
            }
            Ordering::Equal => {
                let (key, old) = next_ok(&mut a)?;
                let (_, new) = next_ok(&mut b)?;
                if old == new {
                    out.unchanged += 1;
                } else {
                    out.changed += 1;
                    if out.samples.changed.len() < samples {
                        out.samples.changed.push(ChangedDocument {
                            from: doc(&old),
                            to: doc(&new),
                            key,
                        });
                    }
                }
            }
        }
    }
    Ok(out)
}

fn next_ok(
    it: &mut impl Iterator<Item = Result<(String, String), StoreError>>,
) -> Result<(String, String), ProjectionError> {
    Ok(it.next().expect("peeked")?)
}

/// Holds the version's commit lock, so the documents hashed are exactly those
/// of the checkpoint reported.
pub(super) fn digest(handle: &VersionHandle) -> Result<ReadModelDigest, ProjectionError> {
    let _no_commits = handle.commit_lock.lock().unwrap_or_else(|e| e.into_inner());
    let model = handle.read_model();
    let position = model.checkpoint()?.position;
    let mut hasher = Sha256::new();
    let mut documents = 0;
    for item in model.documents() {
        let (key, value) = item?;
        hasher.update((key.len() as u32).to_be_bytes());
        hasher.update(key.as_bytes());
        hasher.update((value.len() as u32).to_be_bytes());
        hasher.update(value.as_bytes());
        documents += 1;
    }
    Ok(ReadModelDigest {
        version: handle.version().to_string(),
        position,
        documents,
        digest: crate::hex::hex(&<[u8; 32]>::from(hasher.finalize())),
    })
}
