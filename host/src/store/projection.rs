//! Projection read models and checkpoints. Derived data: the log rebuilds all
//! of it. What matters is that a batch's document writes and the checkpoint
//! that covers them land in one atomic sled batch, so a crash never applies
//! an event twice or skips one: after a restart the projection resumes from a
//! checkpoint that matches its documents exactly.
//!
//! Keys (see docs/store-format.md):
//! - `Q` [name][version] -> [`ReadModelMeta`]: the current generation.
//! - `P` [name][version][u32 generation] then
//!   - `c` -> [`ProjectionCheckpoint`]
//!   - `d` key -> `[1]` + the document's JSON text
//!   - `s` u64 position -> [`SkipRecord`]
//!   - `v` -> [`SchemaVersionsSeen`]: the schema versions of the events
//!     applied, by event type, written with the batch that first applied one
//!
//! A rebuild moves to a new generation in one write, then deletes the old one:
//! a crash part-way leaves only unreachable keys, which the next open removes.
//!
//! A verify replays into the scratch generation, [`SCRATCH_GENERATION`]: no
//! `Q` record ever points there, so no reader or runner sees it; the verify
//! deletes it when done, and opening the read model deletes what a crash left.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Store;
use super::error::StoreError;
use super::format::{self, FORMAT_V1};
use super::types::{Position, RecordedEvent};

pub const SPACE_READ_MODEL: u8 = b'P';
pub const SPACE_READ_MODEL_META: u8 = b'Q';

const CHECKPOINT: u8 = b'c';
const DOCUMENT: u8 = b'd';
const SKIP: u8 = b's';
const SCHEMAS: u8 = b'v';
/// The most event types a read model records schema versions for; the
/// types after these are not recorded (a projection of the whole log may
/// see many; the record is for people, not for correctness).
pub const MAX_SCHEMA_TYPES: usize = 1024;

/// The schema versions of the events a read model was built from, by event
/// type: a version built over 1.x and 2.0.0 history says so.
pub type SchemaVersionsSeen = BTreeMap<String, std::collections::BTreeSet<u32>>;

/// Keys removed per sled batch when a read model is deleted.
const DELETE_BATCH: usize = 10_000;

/// The generation a verify rebuilds into. A rebuild never reaches it (it stops
/// one short), so it is never a version's current generation.
pub const SCRATCH_GENERATION: u32 = u32::MAX;

/// How far a projection version has got.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectionCheckpoint {
    /// The last log position processed (applied, skipped or not selected).
    pub position: Position,
    /// Events the guest applied.
    pub events_applied: u64,
    /// Events an operator skipped after they failed.
    pub events_skipped: u64,
}

/// An event an operator chose to skip, kept for the audit trail.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkipRecord {
    pub position: Position,
    pub event_id: String,
    pub event_type: String,
    pub stream: String,
    /// The failure that stopped the projection there.
    pub reason: String,
    pub skipped_at_ms: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct ReadModelMeta {
    generation: u32,
}

/// `[name len][name][version len][version]`, both validated short (module
/// names are at most 64 bytes, versions are semver strings under 256).
fn id_bytes(space: u8, name: &str, version: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(3 + name.len() + version.len() + 5);
    key.push(space);
    key.push(name.len() as u8);
    key.extend_from_slice(name.as_bytes());
    key.push(version.len() as u8);
    key.extend_from_slice(version.as_bytes());
    key
}

pub(crate) fn check_id(name: &str, version: &str) -> Result<(), StoreError> {
    if name.is_empty() || name.len() > 255 || version.is_empty() || version.len() > 255 {
        return Err(StoreError::InvalidStream(format!(
            "projection {name:?} version {version:?}: both must be 1 to 255 bytes"
        )));
    }
    Ok(())
}

/// One projection version's documents, checkpoint and skips, in its current
/// generation. Cheap to clone. Only the projection's runner writes through it.
#[derive(Clone)]
pub struct ReadModel {
    db: sled::Db,
    /// `P` [name][version][generation]
    prefix: Vec<u8>,
}

impl Store {
    /// The read model of `name@version`, created empty if it has none. Removes
    /// what an interrupted rebuild or verify left behind.
    pub fn read_model(&self, name: &str, version: &str) -> Result<ReadModel, StoreError> {
        check_id(name, version)?;
        let meta_key = id_bytes(SPACE_READ_MODEL_META, name, version);
        let meta = match self
            .inner
            .db
            .get(&meta_key)
            .map_err(|e| StoreError::storage("reading a read model's meta", e))?
        {
            Some(v) => format::decode_v1::<ReadModelMeta>(&meta_key, &v)?,
            None => ReadModelMeta { generation: 0 },
        };
        let model = self.read_model_at(name, version, meta.generation);
        // Generations below the current one are garbage from an interrupted rebuild.
        let base = id_bytes(SPACE_READ_MODEL, name, version);
        let mut stale_end = base.clone();
        stale_end.extend_from_slice(&meta.generation.to_be_bytes());
        self.delete_range(base, stale_end)?;
        self.delete_prefix(self.read_model_at(name, version, SCRATCH_GENERATION).prefix)?;
        Ok(model)
    }

    /// An empty read model for `name@version` in the scratch generation, which
    /// no reader sees: what a verify rebuilds into. Deletes whatever an earlier
    /// scratch of the same version left.
    pub fn scratch_read_model(&self, name: &str, version: &str) -> Result<ReadModel, StoreError> {
        check_id(name, version)?;
        let model = self.read_model_at(name, version, SCRATCH_GENERATION);
        self.delete_prefix(model.prefix.clone())?;
        Ok(model)
    }

    /// Deletes `name@version`'s scratch generation.
    pub fn delete_scratch_read_model(&self, name: &str, version: &str) -> Result<(), StoreError> {
        check_id(name, version)?;
        self.delete_prefix(self.read_model_at(name, version, SCRATCH_GENERATION).prefix)
    }

    /// The generations of `name@version` that hold any key, ascending: after an
    /// open, only the current one (none while it is empty). One seek per
    /// generation found, not a scan of the documents.
    pub fn read_model_generations(
        &self,
        name: &str,
        version: &str,
    ) -> Result<Vec<u32>, StoreError> {
        check_id(name, version)?;
        let base = id_bytes(SPACE_READ_MODEL, name, version);
        let mut end = base.clone();
        end.extend_from_slice(&[0xFF; 5]);
        let mut generations = Vec::new();
        let mut start = base.clone();
        loop {
            let first = self
                .inner
                .db
                .range(start..end.clone())
                .keys()
                .next()
                .transpose()
                .map_err(|e| StoreError::storage("listing read model generations", e))?;
            let Some(key) = first else {
                return Ok(generations);
            };
            let bytes: [u8; 4] = key
                .get(base.len()..base.len() + 4)
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| format::corrupt(&key, "read model key without a generation"))?;
            let generation = u32::from_be_bytes(bytes);
            generations.push(generation);
            let Some(next) = generation.checked_add(1) else {
                return Ok(generations);
            };
            start = base.clone();
            start.extend_from_slice(&next.to_be_bytes());
        }
    }

    fn read_model_at(&self, name: &str, version: &str, generation: u32) -> ReadModel {
        let mut prefix = id_bytes(SPACE_READ_MODEL, name, version);
        prefix.extend_from_slice(&generation.to_be_bytes());
        ReadModel {
            db: self.inner.db.clone(),
            prefix,
        }
    }

    /// Empties `name@version`'s read model and checkpoint: the switch to a new
    /// generation is one write; the old documents are deleted after it.
    pub fn reset_read_model(&self, name: &str, version: &str) -> Result<ReadModel, StoreError> {
        check_id(name, version)?;
        let meta_key = id_bytes(SPACE_READ_MODEL_META, name, version);
        let old = match self
            .inner
            .db
            .get(&meta_key)
            .map_err(|e| StoreError::storage("reading a read model's meta", e))?
        {
            Some(v) => format::decode_v1::<ReadModelMeta>(&meta_key, &v)?.generation,
            None => 0,
        };
        let generation = old
            .checked_add(1)
            .filter(|g| *g != SCRATCH_GENERATION)
            .ok_or_else(|| {
                StoreError::InvalidStream("read model rebuilt 4 billion times".into())
            })?;
        self.inner
            .db
            .insert(&meta_key, format::encode_v1(&ReadModelMeta { generation }))
            .map_err(|e| StoreError::storage("resetting a read model", e))?;
        self.inner
            .db
            .flush()
            .map_err(|e| StoreError::storage("resetting a read model", e))?;
        let old_model = self.read_model_at(name, version, old);
        self.delete_prefix(old_model.prefix)?;
        Ok(self.read_model_at(name, version, generation))
    }

    /// Deletes `name@version`'s documents, checkpoint and skips. Like a reset,
    /// it first moves the version to a new, empty generation (one durable
    /// write), so a crash part-way, or a later upload of the same version,
    /// never sees the old documents; `Q` stays to keep generations unique.
    pub fn delete_read_model(&self, name: &str, version: &str) -> Result<(), StoreError> {
        self.reset_read_model(name, version)?;
        Ok(())
    }

    fn delete_prefix(&self, prefix: Vec<u8>) -> Result<(), StoreError> {
        let mut end = prefix.clone();
        // Every key under the prefix sorts below prefix + 0xFF..: keys are
        // length-prefixed, so no key under another version shares it.
        end.extend_from_slice(&[0xFF; 8]);
        self.delete_range(prefix, end)
    }

    fn delete_range(&self, start: Vec<u8>, end: Vec<u8>) -> Result<(), StoreError> {
        loop {
            let keys: Vec<sled::IVec> = self
                .inner
                .db
                .range(start.clone()..end.clone())
                .keys()
                .take(DELETE_BATCH)
                .collect::<Result<_, _>>()
                .map_err(|e| StoreError::storage("deleting a read model", e))?;
            if keys.is_empty() {
                return Ok(());
            }
            let mut batch = sled::Batch::default();
            for key in keys {
                batch.remove(key);
            }
            self.inner
                .db
                .apply_batch(batch)
                .map_err(|e| StoreError::storage("deleting a read model", e))?;
        }
    }
}

impl ReadModel {
    fn key(&self, sub: u8, rest: &[u8]) -> Vec<u8> {
        let mut key = Vec::with_capacity(self.prefix.len() + 1 + rest.len());
        key.extend_from_slice(&self.prefix);
        key.push(sub);
        key.extend_from_slice(rest);
        key
    }

    pub fn checkpoint(&self) -> Result<ProjectionCheckpoint, StoreError> {
        let key = self.key(CHECKPOINT, &[]);
        match self
            .db
            .get(&key)
            .map_err(|e| StoreError::storage("reading a projection checkpoint", e))?
        {
            Some(v) => format::decode_v1(&key, &v),
            None => Ok(ProjectionCheckpoint::default()),
        }
    }

    pub fn get(&self, doc_key: &str) -> Result<Option<String>, StoreError> {
        let key = self.key(DOCUMENT, doc_key.as_bytes());
        self.db
            .get(&key)
            .map_err(|e| StoreError::storage("reading a document", e))?
            .map(|v| decode_doc(&key, &v))
            .transpose()
    }

    /// Up to `limit` documents whose keys start with `prefix`, after `after`.
    pub fn scan(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, String)>, StoreError> {
        self.scan_bounded(prefix, after, limit, usize::MAX)
    }

    /// [`ReadModel::scan`], stopping early after the document that takes the
    /// keys and texts read past `max_bytes`.
    pub fn scan_bounded(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let start = match after {
            Some(after) if after >= prefix => {
                let mut k = self.key(DOCUMENT, after.as_bytes());
                k.push(0); // the smallest key after `after`
                k
            }
            _ => self.key(DOCUMENT, prefix.as_bytes()),
        };
        let scope = self.key(DOCUMENT, prefix.as_bytes());
        let doc_start = self.prefix.len() + 1;
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for item in self.db.range(start..) {
            let (key, value) = item.map_err(|e| StoreError::storage("scanning documents", e))?;
            if !key.starts_with(&scope) || out.len() == limit || bytes > max_bytes {
                break;
            }
            let doc_key = String::from_utf8(key[doc_start..].to_vec())
                .map_err(|_| format::corrupt(&key, "document key is not UTF-8"))?;
            let doc = decode_doc(&key, &value)?;
            bytes = bytes.saturating_add(doc_key.len() + doc.len());
            out.push((doc_key, doc));
        }
        Ok(out)
    }

    /// Every document in key order, for digests and diffs.
    pub fn documents(&self) -> impl Iterator<Item = Result<(String, String), StoreError>> + '_ {
        let scope = self.key(DOCUMENT, &[]);
        let doc_start = scope.len();
        self.db.scan_prefix(scope).map(move |item| {
            let (key, value) = item.map_err(|e| StoreError::storage("scanning documents", e))?;
            let doc_key = String::from_utf8(key[doc_start..].to_vec())
                .map_err(|_| format::corrupt(&key, "document key is not UTF-8"))?;
            Ok((doc_key, decode_doc(&key, &value)?))
        })
    }

    pub fn skips(&self) -> Result<Vec<SkipRecord>, StoreError> {
        self.db
            .scan_prefix(self.key(SKIP, &[]))
            .map(|item| {
                let (key, value) = item.map_err(|e| StoreError::storage("reading skips", e))?;
                format::decode_v1(&key, &value)
            })
            .collect()
    }

    /// Writes a batch's document changes, the checkpoint that covers them and,
    /// for a skip, its record, in one atomic batch.
    /// The schema versions of the events applied so far, by event type.
    pub fn schema_versions(&self) -> Result<SchemaVersionsSeen, StoreError> {
        let key = self.key(SCHEMAS, &[]);
        match self
            .db
            .get(&key)
            .map_err(|e| StoreError::storage("reading a read model's schema versions", e))?
        {
            Some(v) => format::decode_v1(&key, &v),
            None => Ok(SchemaVersionsSeen::new()),
        }
    }

    /// Commits a batch: its document writes, the checkpoint, a skip record,
    /// and (when `applied`, the events the batch applied, bring a schema
    /// version not seen before) the schema versions record, in one write.
    pub fn commit(
        &self,
        changes: &BTreeMap<String, Option<String>>,
        checkpoint: &ProjectionCheckpoint,
        skip: Option<&SkipRecord>,
        applied: &[RecordedEvent],
    ) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        if !applied.is_empty() {
            // Diagnostic: a record that does not read is started afresh,
            // never a reason to stop the projection.
            let mut seen = self.schema_versions().unwrap_or_default();
            let mut changed = false;
            for event in applied {
                if !seen.contains_key(&event.event_type) && seen.len() >= MAX_SCHEMA_TYPES {
                    continue;
                }
                changed |= seen
                    .entry(event.event_type.clone())
                    .or_default()
                    .insert(event.schema_version);
            }
            if changed {
                batch.insert(self.key(SCHEMAS, &[]), format::encode_v1(&seen));
            }
        }
        for (doc_key, doc) in changes {
            let key = self.key(DOCUMENT, doc_key.as_bytes());
            match doc {
                Some(doc) => {
                    let mut value = Vec::with_capacity(1 + doc.len());
                    value.push(FORMAT_V1);
                    value.extend_from_slice(doc.as_bytes());
                    batch.insert(key, value);
                }
                None => batch.remove(key),
            }
        }
        if let Some(skip) = skip {
            batch.insert(
                self.key(SKIP, &skip.position.to_be_bytes()),
                format::encode_v1(skip),
            );
        }
        batch.insert(self.key(CHECKPOINT, &[]), format::encode_v1(checkpoint));
        self.db
            .apply_batch(batch)
            .map_err(|e| StoreError::storage("committing a projection batch", e))
    }
}

fn decode_doc(key: &[u8], value: &[u8]) -> Result<String, StoreError> {
    match value {
        [FORMAT_V1, json @ ..] => String::from_utf8(json.to_vec())
            .map_err(|_| format::corrupt(key, "document is not UTF-8")),
        _ => Err(format::corrupt(key, "document is not [1][json]")),
    }
}
