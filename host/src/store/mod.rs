//! The event store: streams per aggregate, one gapless global log, optimistic
//! concurrency, durable group commit, catch-up subscriptions.
//!
//! Architecture Invariant: this module is the only one that knows about sled
//! and PostgreSQL. Everything above it speaks [`StreamId`], [`ExpectedVersion`],
//! [`RecordedEvent`]; [`EventStore`] is the event log's contract both backends keep.
//!
//! - `types`: the vocabulary; `error`: [`StoreError`].
//! - `format`: key spaces and record layouts (docs/store-format.md).
//! - `writer`: the single group-commit writer thread.
//! - `read`: stream and global-log reads, capped at the durable head.
//! - `subscribe`: catch-up-then-live subscriptions.
//! - `lock`: one process per data directory.
//! - `projection`: read models and checkpoints of projection versions.
//! - `catalog`: the module registry and aggregate snapshots.
//! - `backup`: a consistent copy at one durable position, while appends continue.
//! - `integrity`: hash chain, Merkle trees and seal signatures (pure functions);
//!   `chain`: seals on demand, inclusion proofs and the verifying re-walk.
//! - `pg`: the PostgreSQL backend (event log, module registry, leased read
//!   models, `refold migrate`), for several hosts over one database.

mod backend;
mod backup;
mod catalog;
mod chain;
mod error;
mod format;
mod health;
pub mod integrity;
mod journal;
mod lock;
pub mod pg;
mod projection;
mod read;
mod subscribe;
mod types;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::stream::BoxStream;
use tokio::sync::{mpsc, oneshot, watch};

pub use backend::{Backend, BackendReadModel, ModuleBytesError};
pub use backup::BackupReport;
pub use catalog::{
    Activation, CanaryRecord, CheckRecord, MAX_SNAPSHOT_LEN, ModuleKind, ModulePut, ModuleRecord,
    Routing,
};
pub use chain::{EventProof, IntegrityStatus, VerifyFailure, VerifyReport};
pub use error::StoreError;
pub use format::{canonical_body, decode_event_body};
pub use integrity::{Seal, SealSigner};
pub use journal::{JournalCursor, JournalEntry, JournalOutcome, JournalPage};
/// One holder per name across hosts ([`Backend::leases`]): the services name
/// leases here, not in a backend's module. Only PostgreSQL has them (sled
/// has one host, so every runner holds its version).
pub use pg::{Lease, Leases, unique_holder};
pub use projection::{
    ProjectionCheckpoint, ReadModel, SCRATCH_GENERATION, SchemaVersionsSeen, SkipRecord,
};
pub use types::*;

use writer::{AppendRequest, Appended, Writer, WriterMessage};

/// How to open a store.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// The store's own directory (it holds sled's files and the lock file).
    pub path: PathBuf,
    pub durability: Durability,
    /// sled's page cache, in bytes.
    pub cache_bytes: u64,
    /// Signs every seal the writer writes (`serve --signing-key`).
    pub signer: Option<Arc<SealSigner>>,
}

impl StoreConfig {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        StoreConfig {
            path: path.into(),
            durability: Durability::Fsync,
            cache_bytes: 256 << 20,
            signer: None,
        }
    }

    pub fn signer(mut self, signer: Option<Arc<SealSigner>>) -> Self {
        self.signer = signer;
        self
    }

    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }
}

/// The event log every backend offers: the embedded sled [`Store`] and the
/// shared PostgreSQL [`pg::PgStore`]. The contract tests (`store_contract`,
/// `store_model`) run the same scenarios through this trait against both.
///
/// Semantics every backend keeps: positions are gapless and assigned in
/// commit order, so a reader that has seen position N+1 has seen N; an append
/// is all or nothing; an acknowledged append is durable; a command id records
/// its append atomically with it (`CommandRecord`); reads show only committed
/// (acknowledged) events.
pub trait EventStore: Clone + Send + Sync + 'static {
    /// Appends `events` to `stream` if its version satisfies `expected`; all or nothing.
    fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> impl Future<Output = Result<AppendResult, StoreError>> + Send;
    /// Appends a command's events and records its id with them (see [`Store::append_command`]).
    fn append_command(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        command_id: &str,
        fingerprint: Option<RequestFingerprint>,
    ) -> impl Future<Output = Result<CommandAppend, StoreError>> + Send;
    /// Up to `limit` events of a stream, from version `from` (inclusive) in
    /// `direction`; backward from `u64::MAX` reads the newest first.
    fn read_stream(
        &self,
        stream: &StreamId,
        from: StreamVersion,
        direction: Direction,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<RecordedEvent>, StoreError>> + Send;
    /// A page of the global log from position `from` (inclusive).
    fn read_all(
        &self,
        from: Position,
        limit: usize,
        filter: &EventFilter,
    ) -> impl Future<Output = Result<LogPage, StoreError>> + Send;
    /// One event by position, if it is committed.
    fn read_event(
        &self,
        position: Position,
    ) -> impl Future<Output = Result<Option<RecordedEvent>, StoreError>> + Send;
    /// A stream's current version (0: no such stream).
    fn stream_version(
        &self,
        stream: &StreamId,
    ) -> impl Future<Output = Result<StreamVersion, StoreError>> + Send;
    /// The append a command id recorded, once it is committed.
    fn command_record(
        &self,
        command_id: &str,
    ) -> impl Future<Output = Result<Option<CommandRecord>, StoreError>> + Send;
    /// The position of the last committed event this process knows of (0: the
    /// log is empty). Another host's commits reach it within moments.
    fn head(&self) -> Position;
    /// Follows [`EventStore::head`]: changes whenever it moves.
    fn watch_head(&self) -> watch::Receiver<Position>;
    /// Every matching event from `from` on, exactly once, in order; catches up, then follows.
    fn subscribe(
        &self,
        from: Position,
        filter: EventFilter,
    ) -> BoxStream<'static, Result<RecordedEvent, StoreError>> {
        Box::pin(subscribe::follow(self.clone(), from, filter))
    }
}

/// The sled-backed store. Cheap to clone; all clones share one writer.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    db: sled::Db,
    path: PathBuf,
    writer: mpsc::Sender<WriterMessage>,
    durable_head: watch::Receiver<Position>,
    /// The last position of the newest durable seal (0: none yet).
    sealed: Arc<std::sync::atomic::AtomicU64>,
    /// Seals whose events a proof re-walked, by last position: their chain
    /// values (`chain::Store::verified_seal`).
    verified_seals: std::sync::Mutex<lru::LruCache<Position, Arc<Vec<integrity::Digest>>>>,
    health: Arc<health::WriteHealth>,
    /// The public key of `StoreConfig::signer`.
    public_key: Option<integrity::Digest>,
    /// sled's `db` file, for fdatasync of registry writes (None without fsync durability).
    sync_file: Option<std::fs::File>,
    writer_thread: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
    _lock: lock::DirLock,
}

impl Store {
    /// Opens (or creates) the store at `config.path`. Reads a handful of keys;
    /// never scans the log.
    pub fn open(config: StoreConfig) -> Result<Store, StoreError> {
        std::fs::create_dir_all(&config.path)
            .map_err(|e| StoreError::storage("creating the store directory", e))?;
        let dir_lock = lock::DirLock::acquire(&config.path)?;
        let sled_path = config.path.join("sled");
        let db = open_sled(&sled_path, config.cache_bytes)?;
        check_format_marker(&db)?;
        let head = read::last_position(&db)?;
        let data_file = match config.durability {
            Durability::Fsync => Some(
                std::fs::OpenOptions::new()
                    .read(true)
                    .open(sled_path.join("db"))
                    .map_err(|e| StoreError::storage("opening sled's db file for fdatasync", e))?,
            ),
            Durability::None => None,
        };
        let health = Arc::new(health::WriteHealth::default());
        // A log altered on disk still opens, so that it can be read and
        // `refold verify` can name where; but the writer cannot extend a chain
        // it cannot read, so writes are refused, with the reason.
        let unreadable = |e: StoreError| -> Result<(), StoreError> {
            match e {
                StoreError::Corrupt { .. } => {
                    tracing::error!(error = %e, "the log's tail is unreadable; refusing writes");
                    health.record_failure(format!(
                        "the log's tail is unreadable ({e}); run `refold verify` on the stopped data directory"
                    ));
                    Ok(())
                }
                other => Err(other),
            }
        };
        let last_recorded_at_ms = match head {
            0 => 0,
            p => match read::event_at(&db, p) {
                Ok(event) => event.map_or(0, |e| e.recorded_at_ms),
                Err(e) => {
                    unreadable(e)?;
                    0
                }
            },
        };
        let sync_file = match &data_file {
            Some(f) => Some(
                f.try_clone()
                    .map_err(|e| StoreError::storage("opening sled's db file", e))?,
            ),
            None => None,
        };
        let public_key = config.signer.as_ref().map(|s| s.public_key());
        let chain = match chain::load_chain_state(&db, head, config.signer.clone()) {
            Ok(chain) => chain,
            Err(e) => {
                unreadable(e)?;
                chain::ChainState::unusable(config.signer.clone())
            }
        };
        let sealed = Arc::new(std::sync::atomic::AtomicU64::new(
            chain::last_seal_end(&db)?.min(head),
        ));
        let (head_tx, head_rx) = watch::channel(head);
        let (tx, rx) = mpsc::channel(8192);
        let writer = Writer {
            db: db.clone(),
            data_file,
            durability: config.durability,
            durable_head: head_tx,
            health: health.clone(),
            next_position: head + 1,
            last_recorded_at_ms,
            chain,
            sealed: sealed.clone(),
            staged_seal: None,
            heads: lru::LruCache::new(
                std::num::NonZeroUsize::new(writer::HEAD_CACHE).expect("not zero"),
            ),
        };
        let thread = std::thread::Builder::new()
            .name("refold-store-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| StoreError::storage("starting the writer thread", e))?;
        tracing::info!(path = %config.path.display(), head, "event store open");
        Ok(Store {
            inner: Arc::new(Inner {
                db,
                path: config.path,
                writer: tx,
                durable_head: head_rx,
                sealed,
                verified_seals: std::sync::Mutex::new(lru::LruCache::new(
                    std::num::NonZeroUsize::new(16).expect("not zero"),
                )),
                health,
                public_key,
                sync_file,
                writer_thread: std::sync::Mutex::new(Some(thread)),
                _lock: dir_lock,
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Appends after validating everything that does not need the store's state,
    /// so the writer thread only does the decisions that must be serialized.
    pub async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError> {
        Ok(self
            .send_append(stream, expected, events, None, None)
            .await?
            .result)
    }

    /// Appends a command's events and records its command id (and the request's
    /// fingerprint, if given) with them, in the same atomic batch. If the id is
    /// already recorded for the same request (`CommandRecord::same_request`),
    /// returns the original append's result and writes nothing; for another
    /// stream or another fingerprint, fails with `CommandIdInUse`.
    pub async fn append_command(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        command_id: &str,
        fingerprint: Option<RequestFingerprint>,
        journal: Option<JournalEntry>,
    ) -> Result<CommandAppend, StoreError> {
        check_name("command id", command_id, MAX_METADATA_ID_LEN)
            .map_err(|reason| StoreError::InvalidEvent { index: 0, reason })?;
        let appended = self
            .send_append(
                stream,
                expected,
                events,
                Some((command_id.to_string(), fingerprint)),
                journal,
            )
            .await?;
        Ok(CommandAppend {
            result: appended.result,
            repeated: appended.repeated,
        })
    }

    async fn send_append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        command: Option<(String, Option<RequestFingerprint>)>,
        journal: Option<JournalEntry>,
    ) -> Result<Appended, StoreError> {
        validate_append(&events)?;
        if self.inner.health.failed() {
            return Err(writer::failed_error());
        }
        let stream = stream.clone();
        self.ask_writer(|reply| {
            WriterMessage::Append(AppendRequest {
                stream,
                expected,
                events,
                command,
                journal: journal.map(Box::new),
                reply,
            })
        })
        .await
    }

    /// One round trip to the writer thread: the message carries the reply
    /// channel, and the writer's answer (or why there is none) comes back.
    async fn ask_writer<T>(
        &self,
        message: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> WriterMessage,
    ) -> Result<T, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.inner
            .writer
            .send(message(reply))
            .await
            .map_err(|_| StoreError::Unavailable("the store is closed".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Unavailable("the writer stopped before answering".into()))?
    }

    /// Why the store refuses writes, if it does: after a failed write it
    /// refuses every later one until the process restarts (health checks and
    /// metrics report this).
    pub fn write_failure(&self) -> Option<String> {
        self.inner.health.failure().map(str::to_owned)
    }

    /// Fault injection for tests: the writer's next batch fails as a failing
    /// disk would make it fail, with everything that follows from that.
    #[doc(hidden)]
    pub fn inject_write_fault(&self) {
        self.inner.health.inject_write_fault();
    }

    /// The position of the last durable event (0 when the log is empty).
    pub fn head(&self) -> Position {
        *self.inner.durable_head.borrow()
    }

    /// The last position the newest durable seal covers (0: nothing sealed yet).
    pub(crate) fn sealed_upto(&self) -> Position {
        self.inner.sealed.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Waits until the durable head changes from what `rx` last saw. For followers.
    pub fn watch_head(&self) -> watch::Receiver<Position> {
        self.inner.durable_head.clone()
    }

    /// Flushes and stops the writer. Appends after this fail with `Unavailable`.
    pub async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self
            .inner
            .writer
            .send(WriterMessage::Shutdown(tx))
            .await
            .is_ok()
        {
            let _ = rx.await;
        }
        let thread = self
            .inner
            .writer_thread
            .lock()
            .ok()
            .and_then(|mut t| t.take());
        if let Some(thread) = thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

/// Opens sled's database. Our directory lock is already held, so another
/// Refold cannot hold sled's own file lock; if it is still held, a store
/// closed a moment ago in this process is releasing it (sled finishes its
/// background writes on its own threads): wait a little for that.
fn open_sled(path: &std::path::Path, cache_bytes: u64) -> Result<sled::Db, StoreError> {
    const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
    let started = std::time::Instant::now();
    loop {
        // sled 0.34 panics on some damaged files instead of failing: a damaged
        // data directory must be an error that names it, not a crash.
        let opened = std::panic::catch_unwind(|| {
            sled::Config::new()
                .path(path)
                .cache_capacity(cache_bytes)
                .mode(sled::Mode::HighThroughput)
                .open()
        })
        .map_err(|panic| {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".into());
            StoreError::Corrupt {
                key: path.display().to_string(),
                reason: format!("sled could not read its database ({what}): the files are damaged"),
            }
        })?;
        match opened {
            // sled 0.34 says so only in the text (`ErrorKind::Other`).
            Err(sled::Error::Io(e))
                if e.to_string().starts_with("could not acquire lock")
                    && started.elapsed() < LOCK_WAIT =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other.map_err(|e| StoreError::storage("opening sled", e)),
        }
    }
}

pub(crate) fn validate_append(events: &[NewEvent]) -> Result<(), StoreError> {
    if events.is_empty() {
        return Err(StoreError::InvalidEvent {
            index: 0,
            reason: "an append needs at least one event".into(),
        });
    }
    if events.len() > MAX_EVENTS_PER_APPEND {
        return Err(StoreError::InvalidEvent {
            index: MAX_EVENTS_PER_APPEND,
            reason: format!("an append holds at most {MAX_EVENTS_PER_APPEND} events"),
        });
    }
    let mut seen = std::collections::HashSet::with_capacity(events.len());
    for (index, event) in events.iter().enumerate() {
        event
            .validate()
            .map_err(|reason| StoreError::InvalidEvent { index, reason })?;
        if !seen.insert(event.event_id) {
            return Err(StoreError::InvalidEvent {
                index,
                reason: format!("event id {} appears twice in the append", event.event_id),
            });
        }
    }
    Ok(())
}

/// A new database gets the format marker; an existing one must carry ours.
fn check_format_marker(db: &sled::Db) -> Result<(), StoreError> {
    let marker = [format::STORE_FORMAT];
    match db
        .get(format::META_FORMAT_KEY)
        .map_err(|e| StoreError::storage("reading the format marker", e))?
    {
        Some(v) if v.as_ref() == marker => Ok(()),
        Some(v) if v.as_ref() == [1] => Err(StoreError::Corrupt {
            key: "Mformat".into(),
            reason: "this data directory holds store format 1, from before the hash chain; \
                     this build reads format 2 only. Format 1 was never released, so there is \
                     no migration: start with a new data directory"
                .into(),
        }),
        Some(v) => Err(StoreError::Corrupt {
            key: "Mformat".into(),
            reason: format!(
                "store format {:?} is not one this build reads (it reads [{}])",
                v.as_ref(),
                format::STORE_FORMAT
            ),
        }),
        None => {
            // A database that holds anything at all without a marker is not ours.
            if db.first().ok().flatten().is_some() {
                return Err(StoreError::Corrupt {
                    key: "Mformat".into(),
                    reason: "the database has records but no format marker".into(),
                });
            }
            db.insert(format::META_FORMAT_KEY, &marker[..])
                .map_err(|e| StoreError::storage("writing the format marker", e))?;
            db.flush()
                .map_err(|e| StoreError::storage("flushing the format marker", e))?;
            Ok(())
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The writer holds its own sled handle; flush ours so a dropped store
        // without `close` still leaves everything it acknowledged on disk.
        let _ = self.db.flush();
    }
}

impl EventStore for Store {
    fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> impl Future<Output = Result<AppendResult, StoreError>> + Send {
        Store::append(self, stream, expected, events)
    }

    fn append_command(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        command_id: &str,
        fingerprint: Option<RequestFingerprint>,
    ) -> impl Future<Output = Result<CommandAppend, StoreError>> + Send {
        Store::append_command(
            self,
            stream,
            expected,
            events,
            command_id,
            fingerprint,
            None,
        )
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        from: StreamVersion,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        Store::read_stream(self, stream, from, direction, limit)
    }

    async fn read_all(
        &self,
        from: Position,
        limit: usize,
        filter: &EventFilter,
    ) -> Result<LogPage, StoreError> {
        Store::read_all(self, from, limit, filter)
    }

    async fn read_event(&self, position: Position) -> Result<Option<RecordedEvent>, StoreError> {
        Store::read_event(self, position)
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<StreamVersion, StoreError> {
        Store::stream_version(self, stream)
    }

    async fn command_record(&self, command_id: &str) -> Result<Option<CommandRecord>, StoreError> {
        Store::command_record(self, command_id)
    }

    fn head(&self) -> Position {
        Store::head(self)
    }

    fn watch_head(&self) -> watch::Receiver<Position> {
        Store::watch_head(self)
    }
}
