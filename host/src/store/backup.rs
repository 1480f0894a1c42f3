//! Online backup: a consistent copy of the store at one durable position,
//! taken while appends continue.
//!
//! Every key the writer writes is immutable once written. So the copy takes
//! the durable head `P` first, then copies the events at positions up to `P`
//! and the index, command and seal keys that point at them. The result is
//! exactly the store as it was when `P` became durable. Derived data is left out: snapshots (`N`) could be ahead of `P`,
//! and read models (`P`, `Q`) are rebuilt by replay after a restore.

use std::path::Path;

use super::error::StoreError;
use super::format;
use super::types::{Durability, Position};
use super::{Store, StoreConfig};

/// What a backup copied.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BackupReport {
    /// The last position in the copy: every event up to here, none after.
    pub position: Position,
    pub events: u64,
    pub streams: u64,
    /// Seals copied: the copy verifies on its own (`refold verify`).
    pub seals: u64,
    pub keys: u64,
    /// The module versions in the copied registry: their component files belong
    /// with the copy.
    #[serde(skip)]
    pub modules: Vec<super::ModuleRecord>,
}

/// Keys copied per sled batch.
const COPY_BATCH: usize = 10_000;

impl Store {
    /// Copies the store into `dest` (a directory that must not exist or be
    /// empty) as a store that opens on its own. Appends may continue meanwhile.
    pub fn backup_to(&self, dest: &Path) -> Result<BackupReport, StoreError> {
        if dest.exists()
            && std::fs::read_dir(dest)
                .map_err(|e| StoreError::storage("reading the backup directory", e))?
                .next()
                .is_some()
        {
            return Err(StoreError::InvalidStream(format!(
                "the backup directory {} is not empty",
                dest.display()
            )));
        }
        let head = self.head();
        let copy = Store::open(StoreConfig::new(dest).durability(Durability::Fsync))?;
        let mut report = BackupReport {
            position: head,
            events: 0,
            streams: 0,
            seals: 0,
            keys: 0,
            modules: Vec::new(),
        };
        let mut out = Copier {
            db: &copy.inner.db,
            batch: sled::Batch::default(),
            pending: 0,
            keys: 0,
        };
        // Events up to the head.
        if head > 0 {
            for item in self
                .inner
                .db
                .range(format::event_key(1)..=format::event_key(head))
            {
                let (key, value) = item.map_err(|e| StoreError::storage("reading the log", e))?;
                out.put(&key, &value)?;
                report.events += 1;
            }
        }
        // The stream index, where it points at copied events (an append's run is
        // all durable or not at all). A stream's last run is its head.
        for item in self.inner.db.scan_prefix([format::SPACE_STREAM_INDEX]) {
            let (key, value) =
                item.map_err(|e| StoreError::storage("reading the stream index", e))?;
            let run = format::decode_stream_run(&key, &value)?;
            if run.last_position() > head {
                continue;
            }
            if run.first_version == 1 {
                report.streams += 1;
            }
            out.put(&key, &value)?;
        }
        // The durable seals over copied events: they travel with the chain they seal.
        let sealed = self.sealed_upto().min(head);
        if sealed > 0 {
            for item in self
                .inner
                .db
                .range(format::seal_key(1)..=format::seal_key(sealed))
            {
                let (key, value) = item.map_err(|e| StoreError::storage("reading the seals", e))?;
                out.put(&key, &value)?;
                report.seals += 1;
            }
        }
        for item in self.inner.db.scan_prefix([format::SPACE_COMMAND]) {
            let (key, value) =
                item.map_err(|e| StoreError::storage("reading command records", e))?;
            if format::decode_command(&key, &value)?.result.last_position <= head {
                out.put(&key, &value)?;
            }
        }
        // The module registry (versions and active pointers) is small and whole.
        for item in self.inner.db.scan_prefix([format::SPACE_REGISTRY]) {
            let (key, value) = item.map_err(|e| StoreError::storage("reading the registry", e))?;
            out.put(&key, &value)?;
        }
        out.flush()?;
        report.modules = copy.modules()?;
        report.keys = out.keys;
        copy.sync("writing the backup")?;
        drop(copy);
        tracing::info!(dest = %dest.display(), position = head, events = report.events, "backup written");
        Ok(report)
    }
}

/// Writes the copy in batches.
struct Copier<'a> {
    db: &'a sled::Db,
    batch: sled::Batch,
    pending: usize,
    keys: u64,
}

impl Copier<'_> {
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.batch.insert(key, value);
        self.pending += 1;
        self.keys += 1;
        if self.pending >= COPY_BATCH {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        if self.pending > 0 {
            self.db
                .apply_batch(std::mem::take(&mut self.batch))
                .map_err(|e| StoreError::storage("writing the backup", e))?;
            self.pending = 0;
        }
        Ok(())
    }
}
