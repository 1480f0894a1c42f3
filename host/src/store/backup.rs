//! Online backup: a consistent copy of the store at one durable position,
//! taken while appends continue.
//!
//! Every key the writer writes is immutable once written except the stream
//! heads (`H`). So the copy takes the durable head `P` first, then copies the
//! events at positions up to `P`, the index, command and seal keys that point at
//! them, and computes each stream's head from the copied stream index instead
//! of copying `H`. The result is exactly the store as it was when `P` became
//! durable. Derived data is left out: snapshots (`N`) could be ahead of `P`,
//! and read models (`P`, `Q`) are rebuilt by replay after a restore.

use std::path::Path;

use super::error::StoreError;
use super::format::{self, StreamHead};
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
        // all durable or not at all); each stream's head is its last copied run.
        let mut last_head: Option<(Vec<u8>, StreamHead)> = None;
        for item in self.inner.db.scan_prefix([format::SPACE_STREAM_INDEX]) {
            let (key, value) =
                item.map_err(|e| StoreError::storage("reading the stream index", e))?;
            let run = format::decode_stream_run(&key, &value)?;
            if run.last_position() > head {
                continue;
            }
            let mut head_key = key[..key.len() - 8].to_vec();
            head_key[0] = format::SPACE_STREAM_HEAD;
            if let Some((k, h)) = last_head.take_if(|(k, _)| *k != head_key) {
                out.put(&k, &format::encode_stream_head(h))?;
                report.streams += 1;
            }
            last_head = Some((
                head_key,
                StreamHead {
                    version: run.last_version(),
                    last_position: run.last_position(),
                },
            ));
            out.put(&key, &value)?;
        }
        if let Some((k, h)) = last_head {
            out.put(&k, &format::encode_stream_head(h))?;
            report.streams += 1;
        }
        // The seals over copied events: they travel with the chain they seal.
        if head > 0 {
            for item in self
                .inner
                .db
                .range(format::seal_key(1)..=format::seal_key(head))
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
