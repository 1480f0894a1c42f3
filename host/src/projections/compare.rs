//! Comparing read models: the diff an operator reads before promoting a
//! version, the digest that shows two replays produced the same bytes, and
//! the comparison of a version with its rebuild that a verify reports.

use std::cmp::Ordering;

use serde::Serialize;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use super::{ProjectionError, VersionHandle};
use crate::store::{BackendReadModel as ReadModel, Position, StoreError};

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
    walk(&from.read_model(), &to.read_model(), |pair| match pair {
        Pair::Left(key, value) => {
            out.removed += 1;
            if out.samples.removed.len() < samples {
                out.samples.removed.push(SampleDocument {
                    doc: doc(&value),
                    key,
                });
            }
        }
        Pair::Right(key, value) => {
            out.added += 1;
            if out.samples.added.len() < samples {
                out.samples.added.push(SampleDocument {
                    doc: doc(&value),
                    key,
                });
            }
        }
        Pair::Both(_, old, new) if old == new => out.unchanged += 1,
        Pair::Both(key, old, new) => {
            out.changed += 1;
            if out.samples.changed.len() < samples {
                out.samples.changed.push(ChangedDocument {
                    from: doc(&old),
                    to: doc(&new),
                    key,
                });
            }
        }
    })?;
    Ok(out)
}

/// A key of one or both read models of a [`walk`], with its documents.
enum Pair {
    /// Only the left model has the key.
    Left(String, String),
    /// Only the right model has the key.
    Right(String, String),
    Both(String, String, String),
}

/// Visits the keys of both read models in key order, once each.
fn walk(
    left: &ReadModel,
    right: &ReadModel,
    mut visit: impl FnMut(Pair),
) -> Result<(), ProjectionError> {
    let mut a = left.documents().peekable();
    let mut b = right.documents().peekable();
    loop {
        let order = match (a.peek(), b.peek()) {
            (None, None) => return Ok(()),
            (Some(Err(_)), _) => return Err(a.next().expect("peeked").unwrap_err().into()),
            (_, Some(Err(_))) => return Err(b.next().expect("peeked").unwrap_err().into()),
            (Some(Ok(_)), None) => Ordering::Less,
            (None, Some(Ok(_))) => Ordering::Greater,
            (Some(Ok((ka, _))), Some(Ok((kb, _)))) => ka.cmp(kb),
        };
        visit(match order {
            Ordering::Less => {
                let (key, value) = next_ok(&mut a)?;
                Pair::Left(key, value)
            }
            Ordering::Greater => {
                let (key, value) = next_ok(&mut b)?;
                Pair::Right(key, value)
            }
            Ordering::Equal => {
                let (key, old) = next_ok(&mut a)?;
                let (_, new) = next_ok(&mut b)?;
                Pair::Both(key, old, new)
            }
        });
    }
}

fn next_ok(
    it: &mut impl Iterator<Item = Result<(String, String), StoreError>>,
) -> Result<(String, String), ProjectionError> {
    Ok(it.next().expect("peeked")?)
}

/// The digest of a read model's documents: sha256 over every (key, document)
/// in key order, each length-prefixed.
#[derive(Default)]
struct DocumentHasher {
    hasher: Sha256,
    documents: u64,
}

impl DocumentHasher {
    fn add(&mut self, key: &str, value: &str) {
        self.hasher.update((key.len() as u32).to_be_bytes());
        self.hasher.update(key.as_bytes());
        self.hasher.update((value.len() as u32).to_be_bytes());
        self.hasher.update(value.as_bytes());
        self.documents += 1;
    }

    fn finish(self) -> DocumentsDigest {
        DocumentsDigest {
            documents: self.documents,
            digest: crate::hex::hex(&<[u8; 32]>::from(self.hasher.finalize())),
        }
    }
}

/// How many documents a read model holds and their digest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DocumentsDigest {
    pub documents: u64,
    pub digest: String,
}

/// The first key, in key order, whose document differs between two read
/// models (absent on the side that lacks it).
#[derive(Clone, Debug, Serialize)]
pub struct FirstDivergence {
    pub key: String,
    pub live: Option<Box<RawValue>>,
    pub rebuilt: Option<Box<RawValue>>,
}

/// A version's documents against a rebuild of them at the same position.
#[derive(Clone, Debug, Serialize)]
pub struct Comparison {
    pub live: DocumentsDigest,
    pub rebuilt: DocumentsDigest,
    /// Keys only the rebuild has.
    pub added: u64,
    /// Keys only the version has.
    pub removed: u64,
    /// Keys both have, with different documents.
    pub changed: u64,
    pub first_divergence: Option<FirstDivergence>,
}

impl Comparison {
    pub fn identical(&self) -> bool {
        self.added == 0 && self.removed == 0 && self.changed == 0
    }
}

/// Digests both read models and finds where they differ, in one walk. The
/// caller keeps both still (no runner commits to either meanwhile).
pub(super) fn compare(
    live: &ReadModel,
    rebuilt: &ReadModel,
) -> Result<Comparison, ProjectionError> {
    let (mut left, mut right) = (DocumentHasher::default(), DocumentHasher::default());
    let (mut added, mut removed, mut changed) = (0, 0, 0);
    let mut first = None;
    walk(live, rebuilt, |pair| {
        let divergence = match pair {
            Pair::Left(key, value) => {
                left.add(&key, &value);
                removed += 1;
                (key, Some(value), None)
            }
            Pair::Right(key, value) => {
                right.add(&key, &value);
                added += 1;
                (key, None, Some(value))
            }
            Pair::Both(key, old, new) => {
                left.add(&key, &old);
                right.add(&key, &new);
                if old == new {
                    return;
                }
                changed += 1;
                (key, Some(old), Some(new))
            }
        };
        if first.is_none() {
            let (key, live, rebuilt) = divergence;
            first = Some(FirstDivergence {
                key,
                live: live.as_deref().map(doc),
                rebuilt: rebuilt.as_deref().map(doc),
            });
        }
    })?;
    Ok(Comparison {
        live: left.finish(),
        rebuilt: right.finish(),
        added,
        removed,
        changed,
        first_divergence: first,
    })
}

/// Holds the version's commit lock, so the documents hashed are exactly those
/// of the checkpoint reported.
pub(super) fn digest(handle: &VersionHandle) -> Result<ReadModelDigest, ProjectionError> {
    let _no_commits = handle.commit_lock.lock().unwrap_or_else(|e| e.into_inner());
    let model = handle.read_model();
    let position = model.checkpoint()?.position;
    let mut hasher = DocumentHasher::default();
    for item in model.documents() {
        let (key, value) = item?;
        hasher.add(&key, &value);
    }
    let DocumentsDigest { documents, digest } = hasher.finish();
    Ok(ReadModelDigest {
        version: handle.version().to_string(),
        position,
        documents,
        digest,
    })
}
