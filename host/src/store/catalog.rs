//! What the store keeps besides events: the module registry and aggregate
//! snapshots. Neither is event data, so neither goes through the writer thread:
//! registry writes are rare and made durable one by one; snapshots are derived
//! data that a crash may lose without harm (the events rebuild them).

use serde::{Deserialize, Serialize};

use super::Store;
use super::error::StoreError;
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
}

impl ModuleKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ModuleKind::Aggregate => "aggregate",
            ModuleKind::Projection => "projection",
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

fn registry_key(sub: u8, name: &str, version: Option<&str>) -> Vec<u8> {
    let mut key = vec![SPACE_REGISTRY, sub, name.len() as u8];
    key.extend_from_slice(name.as_bytes());
    if let Some(version) = version {
        key.extend_from_slice(version.as_bytes());
    }
    key
}

fn snapshot_key(stream: &StreamId, digest: &[u8; 32]) -> Vec<u8> {
    let mut key = format::stream_head_key(stream);
    key[0] = SPACE_SNAPSHOT;
    key.extend_from_slice(digest);
    key
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

    /// Points `name` at `version`; durable on return.
    pub fn set_active_module(&self, name: &str, version: &str) -> Result<(), StoreError> {
        self.inner
            .db
            .insert(
                registry_key(ACTIVE, name, None),
                format::encode_v1(&version),
            )
            .map_err(|e| StoreError::storage("activating a module", e))?;
        self.sync("activating a module")
    }

    /// Forgets a module version (a dropped projection version); durable on return.
    /// Its name's active pointer is the caller's to keep consistent.
    pub fn delete_module(&self, name: &str, version: &str) -> Result<(), StoreError> {
        self.inner
            .db
            .remove(registry_key(VERSIONS, name, Some(version)))
            .map_err(|e| StoreError::storage("deleting a module", e))?;
        self.sync("deleting a module")
    }

    /// Keeps `state` as the stream's state at `version` under `module_digest`.
    /// Returns false (and keeps nothing) for a state over [`MAX_SNAPSHOT_LEN`].
    pub fn save_snapshot(
        &self,
        stream: &StreamId,
        module_digest: &[u8; 32],
        version: StreamVersion,
        state: &[u8],
    ) -> Result<bool, StoreError> {
        if state.len() > MAX_SNAPSHOT_LEN {
            return Ok(false);
        }
        let mut value = Vec::with_capacity(9 + state.len());
        value.push(format::FORMAT_V1);
        value.extend_from_slice(&version.to_be_bytes());
        value.extend_from_slice(state);
        self.inner
            .db
            .insert(snapshot_key(stream, module_digest), value)
            .map_err(|e| StoreError::storage("saving a snapshot", e))?;
        Ok(true)
    }

    /// The latest snapshot of `stream` made by the module with `module_digest`.
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
        match value.as_ref() {
            [format::FORMAT_V1, rest @ ..] if rest.len() >= 8 => {
                let version = u64::from_be_bytes(rest[..8].try_into().expect("length checked"));
                Ok(Some((version, rest[8..].to_vec())))
            }
            _ => Err(format::corrupt(&key, "snapshot is not [1][u64][state]")),
        }
    }

    /// Makes every earlier write durable, as the writer does for events.
    pub(super) fn sync(&self, context: &'static str) -> Result<(), StoreError> {
        self.inner
            .db
            .flush()
            .map_err(|e| StoreError::storage(context, e))?;
        if let Some(file) = &self.inner.sync_file {
            file.sync_data()
                .map_err(|e| StoreError::storage(context, e))?;
        }
        Ok(())
    }
}
