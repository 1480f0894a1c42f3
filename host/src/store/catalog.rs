//! What the store keeps besides events: the module registry and aggregate
//! snapshots. Neither is event data, so neither goes through the writer thread:
//! registry writes are rare and made durable one by one; snapshots are derived
//! data that a crash may lose without harm (the events rebuild them).

use serde::{Deserialize, Serialize};

use super::Store;
use super::error::StoreError;
use sha2::Digest;

use super::format::{self, SPACE_REGISTRY, SPACE_SNAPSHOT};
use super::types::{StreamId, StreamVersion};

/// Snapshots above this size are not kept: large values would land in sled's
/// blob files, and replaying events is always correct anyway.
pub const MAX_SNAPSHOT_LEN: usize = 64 * 1024;

/// What a module implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ModuleKind {
    Aggregate,
    Projection,
    /// Stored by postcard as its variant's index: new kinds go at the end.
    Process,
}

impl ModuleKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ModuleKind::Aggregate => "aggregate",
            ModuleKind::Projection => "projection",
            ModuleKind::Process => "process",
        }
    }
}

/// One uploaded version of a module. Immutable once written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleRecord {
    pub name: String,
    pub version: String,
    pub kind: ModuleKind,
    /// sha256 of the component bytes.
    pub digest: [u8; 32],
    pub size: u64,
    pub uploaded_at_ms: u64,
}

/// The outcome of registering a module version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModulePut {
    Created,
    /// The same name, version and digest was already there: nothing changed.
    AlreadyPresent(ModuleRecord),
    /// The version is taken by other bytes: nothing changed.
    Conflict(ModuleRecord),
}

const VERSIONS: u8 = b'm';
const ACTIVE: u8 = b'a';
const HISTORY: u8 = b'h';
const PROCESS_CHECKPOINT: u8 = b'p';
const ROUTING: u8 = b'r';
const CHECK: u8 = b'k';

/// The latest replay check of a module version (`refold module check`): what
/// activation consults. Kept with the digest it checked, so a check counts
/// only for the bytes it folded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckRecord {
    pub digest: [u8; 32],
    pub passed: bool,
    pub streams: u64,
    pub failed: u64,
    pub differing: u64,
    /// A sample of aggregate ids, not every stream: never enough to activate.
    pub sampled: bool,
    pub finished_at_ms: u64,
    /// The stable version when the check began: a check speaks for the
    /// history that version had written, not for another's.
    pub stable: Option<String>,
}

/// One activation: from `at_ms`, `version` was the active (or live) one,
/// until the next activation of the same name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Activation {
    pub version: String,
    pub at_ms: u64,
}

/// How an aggregate type's commands are split beside its active (stable)
/// version: a canary, and the versions a forced rollback retired. Absent (the
/// default) for almost every name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Routing {
    pub canary: Option<CanaryRecord>,
    /// Versions a forced rollback retired: no aggregate is decided by them,
    /// not even one whose last event they produced. Activating one again
    /// (full or canary) takes it off this list.
    pub retired: Vec<String>,
}

/// A version that decides for a share of the aggregate ids.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CanaryRecord {
    pub version: String,
    /// 1..=99: ids whose bucket (0..=99) is below it go to this version.
    pub percent: u8,
    pub since_ms: u64,
}

fn registry_key(sub: u8, name: &str, version: Option<&str>) -> Vec<u8> {
    let mut key = vec![SPACE_REGISTRY, sub, name.len() as u8];
    key.extend_from_slice(name.as_bytes());
    if let Some(version) = version {
        key.extend_from_slice(version.as_bytes());
    }
    key
}

fn snapshot_key(stream: &StreamId, digest: &[u8; 32]) -> Vec<u8> {
    let mut key = format::stream_space_key(SPACE_SNAPSHOT, stream, digest.len());
    key.extend_from_slice(digest);
    key
}

/// A large snapshot's `index`th piece: the snapshot's key, then the index.
fn snapshot_chunk_key(head: &[u8], index: u32) -> Vec<u8> {
    let mut key = head.to_vec();
    key.extend_from_slice(&index.to_be_bytes());
    key
}

/// Snapshot format versions: the state inline, or in chunks.
const SNAPSHOT_INLINE: u8 = format::FORMAT_V1;
const SNAPSHOT_CHUNKED: u8 = 0x02;
/// Bytes per piece of a chunked snapshot: every value stays well below sled's
/// blob threshold, as events do.
const SNAPSHOT_CHUNK: usize = 60 * 1024;

/// A chunked snapshot's head: version, length, piece count, sha256 of the state.
struct ChunkedHead {
    version: StreamVersion,
    len: u64,
    chunks: u32,
    digest: [u8; 32],
}

impl ChunkedHead {
    fn encode(&self) -> Vec<u8> {
        let mut value = Vec::with_capacity(1 + 8 + 8 + 4 + 32);
        value.push(SNAPSHOT_CHUNKED);
        value.extend_from_slice(&self.version.to_be_bytes());
        value.extend_from_slice(&self.len.to_be_bytes());
        value.extend_from_slice(&self.chunks.to_be_bytes());
        value.extend_from_slice(&self.digest);
        value
    }

    fn decode(value: &[u8]) -> Option<ChunkedHead> {
        match value {
            [SNAPSHOT_CHUNKED, rest @ ..] if rest.len() == 8 + 8 + 4 + 32 => Some(ChunkedHead {
                version: u64::from_be_bytes(rest[..8].try_into().ok()?),
                len: u64::from_be_bytes(rest[8..16].try_into().ok()?),
                chunks: u32::from_be_bytes(rest[16..20].try_into().ok()?),
                digest: rest[20..52].try_into().ok()?,
            }),
            _ => None,
        }
    }
}

impl Store {
    /// Registers a module version if that version is free; durable on return.
    pub fn put_module(&self, record: &ModuleRecord) -> Result<ModulePut, StoreError> {
        if record.name.is_empty() || record.name.len() > 64 {
            return Err(StoreError::InvalidStream(format!(
                "module name {:?} must be 1 to 64 bytes",
                record.name
            )));
        }
        let key = registry_key(VERSIONS, &record.name, Some(&record.version));
        let value = format::encode_v1(record);
        let swap = self
            .inner
            .db
            .compare_and_swap(&key, None::<&[u8]>, Some(value))
            .map_err(|e| StoreError::storage("registering a module", e))?;
        match swap {
            Ok(()) => {
                self.sync("registering a module")?;
                Ok(ModulePut::Created)
            }
            Err(existing) => {
                let current = existing
                    .current
                    .ok_or_else(|| format::corrupt(&key, "vanished during registration"))?;
                let existing: ModuleRecord = format::decode_v1(&key, &current)?;
                if existing.digest == record.digest {
                    Ok(ModulePut::AlreadyPresent(existing))
                } else {
                    Ok(ModulePut::Conflict(existing))
                }
            }
        }
    }

    pub fn module(&self, name: &str, version: &str) -> Result<Option<ModuleRecord>, StoreError> {
        let key = registry_key(VERSIONS, name, Some(version));
        self.inner
            .db
            .get(&key)
            .map_err(|e| StoreError::storage("reading the module registry", e))?
            .map(|v| format::decode_v1(&key, &v))
            .transpose()
    }

    /// Every registered module version (registries are small).
    pub fn modules(&self) -> Result<Vec<ModuleRecord>, StoreError> {
        self.inner
            .db
            .scan_prefix([SPACE_REGISTRY, VERSIONS])
            .map(|item| {
                let (key, value) =
                    item.map_err(|e| StoreError::storage("reading the module registry", e))?;
                format::decode_v1(&key, &value)
            })
            .collect()
    }

    /// Which version of `name` takes the next command.
    pub fn active_module(&self, name: &str) -> Result<Option<String>, StoreError> {
        let key = registry_key(ACTIVE, name, None);
        self.inner
            .db
            .get(&key)
            .map_err(|e| StoreError::storage("reading the module registry", e))?
            .map(|v| format::decode_v1(&key, &v))
            .transpose()
    }

    /// Every module's active version.
    pub fn active_modules(&self) -> Result<Vec<(String, String)>, StoreError> {
        self.inner
            .db
            .scan_prefix([SPACE_REGISTRY, ACTIVE])
            .map(|item| {
                let (key, value) =
                    item.map_err(|e| StoreError::storage("reading the module registry", e))?;
                let name = String::from_utf8_lossy(&key[3..]).into_owned();
                Ok((name, format::decode_v1(&key, &value)?))
            })
            .collect()
    }

    /// Points `name` at `version` and appends that to `name`'s activation
    /// history, in one batch; durable on return. Activating the active version
    /// changes nothing. The caller serializes
    /// activations of one name (the registry's activation lock).
    pub fn set_active_module(&self, name: &str, version: &str) -> Result<(), StoreError> {
        if self.active_module(name)?.as_deref() == Some(version) {
            return Ok(()); // already so: nothing changes, nothing to record
        }
        self.require_registered(name, version)?;
        let history = self.activations(name)?;
        let mut batch = sled::Batch::default();
        batch.insert(
            registry_key(ACTIVE, name, None),
            format::encode_v1(&version),
        );
        let mut key = registry_key(HISTORY, name, None);
        key.extend_from_slice(&(history.len() as u32).to_be_bytes());
        // Never before the previous entry, whatever the wall clock did.
        let at_ms = crate::clock::now_ms().max(history.last().map_or(0, |a| a.at_ms));
        batch.insert(
            key,
            format::encode_v1(&Activation {
                version: version.to_string(),
                at_ms,
            }),
        );
        if let Err(e) = self.inner.db.apply_batch(batch) {
            let err = StoreError::storage("activating a module", e);
            self.inner.health.record_failure(err.to_string());
            return Err(err);
        }
        self.sync("activating a module")
    }

    /// Only a registered version is made active (the same rule as PostgreSQL's).
    fn require_registered(&self, name: &str, version: &str) -> Result<(), StoreError> {
        match self.module(name, version)? {
            Some(_) => Ok(()),
            None => Err(StoreError::ModuleNotRegistered {
                name: name.to_string(),
                version: version.to_string(),
            }),
        }
    }

    /// `name`'s routing (canary, retired versions); the default when none is kept.
    pub fn routing(&self, name: &str) -> Result<Routing, StoreError> {
        let key = registry_key(ROUTING, name, None);
        Ok(self
            .inner
            .db
            .get(&key)
            .map_err(|e| StoreError::storage("reading the module registry", e))?
            .map(|v| format::decode_v1::<Routing>(&key, &v))
            .transpose()?
            .unwrap_or_default())
    }

    /// Every name's routing that is not the default.
    pub fn routings(&self) -> Result<Vec<(String, Routing)>, StoreError> {
        self.inner
            .db
            .scan_prefix([SPACE_REGISTRY, ROUTING])
            .map(|item| {
                let (key, value) =
                    item.map_err(|e| StoreError::storage("reading the module registry", e))?;
                let name = String::from_utf8_lossy(&key[3..]).into_owned();
                Ok((name, format::decode_v1(&key, &value)?))
            })
            .collect()
    }

    /// Sets `name`'s routing and, if `active` is given and differs from the
    /// active version, points `name` at it and appends that to the activation
    /// history: all in one batch, durable on return. A promotion, a rollback
    /// and a canary's start or end each change both or one of them at once.
    /// The caller serializes changes of one name (the registry's activation lock).
    pub fn set_routing(
        &self,
        name: &str,
        active: Option<&str>,
        routing: &Routing,
    ) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        if let Some(version) = active
            && self.active_module(name)?.as_deref() != Some(version)
        {
            self.require_registered(name, version)?;
            let history = self.activations(name)?;
            batch.insert(
                registry_key(ACTIVE, name, None),
                format::encode_v1(&version),
            );
            let mut key = registry_key(HISTORY, name, None);
            key.extend_from_slice(&(history.len() as u32).to_be_bytes());
            let at_ms = crate::clock::now_ms().max(history.last().map_or(0, |a| a.at_ms));
            batch.insert(
                key,
                format::encode_v1(&Activation {
                    version: version.to_string(),
                    at_ms,
                }),
            );
        }
        let key = registry_key(ROUTING, name, None);
        if *routing == Routing::default() {
            batch.remove(key);
        } else {
            batch.insert(key, format::encode_v1(routing));
        }
        if let Err(e) = self.inner.db.apply_batch(batch) {
            let err = StoreError::storage("changing a module's routing", e);
            self.inner.health.record_failure(err.to_string());
            return Err(err);
        }
        self.sync("changing a module's routing")
    }

    /// The latest finished replay check of `name@version`, if any.
    pub fn check_record(
        &self,
        name: &str,
        version: &str,
    ) -> Result<Option<CheckRecord>, StoreError> {
        let key = registry_key(CHECK, name, Some(version));
        self.inner
            .db
            .get(&key)
            .map_err(|e| StoreError::storage("reading a check record", e))?
            .map(|v| format::decode_v1::<CheckRecord>(&key, &v))
            .transpose()
    }

    /// Records a finished check of `name@version`, flushed: activation
    /// decides on it after a restart too.
    pub fn set_check_record(
        &self,
        name: &str,
        version: &str,
        record: &CheckRecord,
    ) -> Result<(), StoreError> {
        self.inner
            .db
            .insert(
                registry_key(CHECK, name, Some(version)),
                format::encode_v1(record),
            )
            .map_err(|e| StoreError::storage("saving a check record", e))?;
        self.sync("saving a check record")
    }

    /// Where process `name`'s runner has read the log up to (0: nowhere yet).
    /// A hint that saves re-reading the log after a restart: an input the
    /// runner handled is recorded in its instance's stream, which is what
    /// keeps it from being handled twice.
    pub fn process_checkpoint(&self, name: &str) -> Result<u64, StoreError> {
        let key = registry_key(PROCESS_CHECKPOINT, name, None);
        Ok(self
            .inner
            .db
            .get(&key)
            .map_err(|e| StoreError::storage("reading a process checkpoint", e))?
            .map(|v| format::decode_v1::<u64>(&key, &v))
            .transpose()?
            .unwrap_or(0))
    }

    /// Saves process `name`'s checkpoint; durable with the store's next flush.
    pub fn set_process_checkpoint(&self, name: &str, position: u64) -> Result<(), StoreError> {
        self.inner
            .db
            .insert(
                registry_key(PROCESS_CHECKPOINT, name, None),
                format::encode_v1(&position),
            )
            .map_err(|e| StoreError::storage("saving a process checkpoint", e))?;
        Ok(())
    }

    /// `name`'s activations, oldest first. Activations made before Refold
    /// kept this history are not in it.
    pub fn activations(&self, name: &str) -> Result<Vec<Activation>, StoreError> {
        // The name's length byte keeps `ab` from matching `abc`'s entries.
        let prefix = registry_key(HISTORY, name, None);
        self.inner
            .db
            .scan_prefix(&prefix)
            .map(|item| {
                let (key, value) =
                    item.map_err(|e| StoreError::storage("reading the module registry", e))?;
                format::decode_v1(&key, &value)
            })
            .collect()
    }

    /// Forgets a module version (a dropped projection version); durable on
    /// return. The active version is refused (`module_active`).
    pub fn delete_module(&self, name: &str, version: &str) -> Result<(), StoreError> {
        if self.active_module(name)?.as_deref() == Some(version) {
            return Err(StoreError::ModuleActive {
                name: name.to_string(),
                version: version.to_string(),
            });
        }
        self.inner
            .db
            .remove(registry_key(VERSIONS, name, Some(version)))
            .map_err(|e| StoreError::storage("deleting a module", e))?;
        self.sync("deleting a module")
    }

    /// Keeps `state` as the stream's state at `version` under `module_digest`:
    /// inline up to [`MAX_SNAPSHOT_LEN`], else in pieces of 60 KiB written in one
    /// batch with a head that carries their sha256 (so no value is ever large
    /// enough for sled to keep it in an unsynced blob file). Returns whether it
    /// was kept (always, today).
    pub fn save_snapshot(
        &self,
        stream: &StreamId,
        module_digest: &[u8; 32],
        version: StreamVersion,
        state: &[u8],
    ) -> Result<bool, StoreError> {
        let key = snapshot_key(stream, module_digest);
        let old_chunks = self.snapshot_head(&key)?.map_or(0, |h| h.chunks);
        let mut batch = sled::Batch::default();
        let chunks = if state.len() <= MAX_SNAPSHOT_LEN {
            let mut value = Vec::with_capacity(9 + state.len());
            value.push(SNAPSHOT_INLINE);
            value.extend_from_slice(&version.to_be_bytes());
            value.extend_from_slice(state);
            batch.insert(key.clone(), value);
            0
        } else {
            let pieces: Vec<&[u8]> = state.chunks(SNAPSHOT_CHUNK).collect();
            let chunks = u32::try_from(pieces.len())
                .map_err(|_| StoreError::InvalidStream("a snapshot of over 240 TiB".into()))?;
            for (i, piece) in pieces.iter().enumerate() {
                batch.insert(snapshot_chunk_key(&key, i as u32), piece.to_vec());
            }
            let head = ChunkedHead {
                version,
                len: state.len() as u64,
                chunks,
                digest: sha2::Sha256::digest(state).into(),
            };
            batch.insert(key.clone(), head.encode());
            chunks
        };
        // Pieces of a larger snapshot this one replaces.
        for i in chunks..old_chunks {
            batch.remove(snapshot_chunk_key(&key, i));
        }
        self.inner
            .db
            .apply_batch(batch)
            .map_err(|e| StoreError::storage("saving a snapshot", e))?;
        Ok(true)
    }

    fn snapshot_head(&self, key: &[u8]) -> Result<Option<ChunkedHead>, StoreError> {
        let value = self
            .inner
            .db
            .get(key)
            .map_err(|e| StoreError::storage("loading a snapshot", e))?;
        Ok(value.and_then(|v| ChunkedHead::decode(&v)))
    }

    /// The latest snapshot of `stream` made by the module with `module_digest`.
    /// A chunked snapshot whose pieces do not add up (a crash cannot cause that:
    /// they are one batch) is reported as corrupt.
    pub fn load_snapshot(
        &self,
        stream: &StreamId,
        module_digest: &[u8; 32],
    ) -> Result<Option<(StreamVersion, Vec<u8>)>, StoreError> {
        let key = snapshot_key(stream, module_digest);
        let Some(value) = self
            .inner
            .db
            .get(&key)
            .map_err(|e| StoreError::storage("loading a snapshot", e))?
        else {
            return Ok(None);
        };
        if let [SNAPSHOT_INLINE, rest @ ..] = value.as_ref()
            && rest.len() >= 8
        {
            let version = u64::from_be_bytes(rest[..8].try_into().expect("length checked"));
            return Ok(Some((version, rest[8..].to_vec())));
        }
        let Some(head) = ChunkedHead::decode(&value) else {
            return Err(format::corrupt(
                &key,
                "snapshot is neither [1][u64][state] nor a chunked head",
            ));
        };
        let mut state = Vec::with_capacity(head.len as usize);
        for i in 0..head.chunks {
            let chunk_key = snapshot_chunk_key(&key, i);
            let piece = self
                .inner
                .db
                .get(&chunk_key)
                .map_err(|e| StoreError::storage("loading a snapshot", e))?
                .ok_or_else(|| format::corrupt(&chunk_key, "a snapshot piece is missing"))?;
            state.extend_from_slice(&piece);
        }
        let digest: [u8; 32] = sha2::Sha256::digest(&state).into();
        if state.len() as u64 != head.len || digest != head.digest {
            return Err(format::corrupt(
                &key,
                "a chunked snapshot's pieces do not match its head",
            ));
        }
        Ok(Some((head.version, state)))
    }

    /// Makes every earlier write durable, as the writer does for events.
    /// Makes the registry's last write durable. A failure here is a storage
    /// failure like the writer's: what reached the disk is unknown, so the
    /// store stops writing (and health says so).
    pub(super) fn sync(&self, context: &'static str) -> Result<(), StoreError> {
        let synced = self
            .inner
            .db
            .flush()
            .map(|_| ())
            .map_err(|e| StoreError::storage(context, e))
            .and_then(|()| match &self.inner.sync_file {
                Some(file) => file
                    .sync_data()
                    .map_err(|e| StoreError::storage(context, e)),
                None => Ok(()),
            });
        if let Err(err) = &synced {
            self.inner.health.record_failure(err.to_string());
        }
        synced
    }
}
