//! [`Backend`]: what the services store, over sled or PostgreSQL. The one
//! place that chooses between the two; the services above never do.
//!
//! Every method keeps the signature of sled's [`Store`] (synchronous where
//! sled's is, async where it is), so a service reads the same whichever
//! backend serves it. On PostgreSQL a synchronous call waits for its query on
//! the calling thread ([`wait`]): in place on a runtime worker (the runtime
//! moves the worker's other tasks elsewhere meanwhile), directly on a guest or
//! blocking thread. The hot path of a command (its append) is async on both.
//!
//! What only one backend has answers [`StoreError::Unsupported`] on the
//! other: a sled data directory's backup through the host (PostgreSQL has
//! `pg_dump` and its own replication).

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures::stream::BoxStream;
use sha2::Digest as _;
use tokio::sync::watch;

use super::chain::{EventProof, IntegrityStatus, VerifyReport};
use super::integrity::{Digest, Seal};
use super::pg::{Lease, PgReadModel, PgStore, Refused};
use super::projection::ReadModel;
use super::{
    Activation, AppendResult, BackupReport, CheckRecord, CommandAppend, CommandRecord, Direction,
    EventFilter, EventStore, ExpectedVersion, JournalEntry, JournalPage, LogPage, ModulePut,
    ModuleRecord, NewEvent, Position, ProjectionCheckpoint, RecordedEvent, RequestFingerprint,
    Routing, SchemaVersionsSeen, SkipRecord, Store, StoreError, StreamId, StreamVersion,
};

/// Where a host keeps everything: a sled data directory (one host) or a
/// PostgreSQL database (any number of hosts). Cheap to clone.
#[derive(Clone)]
pub struct Backend {
    inner: Inner,
}

#[derive(Clone)]
enum Inner {
    /// The event store, and the directory of module component files.
    Sled { store: Store, modules: PathBuf },
    Postgres {
        store: PgStore,
        runtime: tokio::runtime::Handle,
    },
}

/// Why a registered module's bytes cannot be had.
#[derive(Debug)]
pub struct ModuleBytesError {
    /// `module_file_unreadable`, `module_file_corrupt` (sled), `module_bytes_missing`,
    /// `store_unavailable`, `corrupt_record` (PostgreSQL).
    pub code: &'static str,
    pub reason: String,
}

/// Runs `future` to its end on this thread: see the module's note.
fn wait<F: Future>(runtime: &tokio::runtime::Handle, future: F) -> F::Output {
    match tokio::runtime::Handle::try_current() {
        // On a worker (or a blocking thread, where this just runs the closure).
        Ok(_) => tokio::task::block_in_place(|| runtime.block_on(future)),
        // A guest thread: outside the runtime.
        Err(_) => runtime.block_on(future),
    }
}

macro_rules! either {
    ($self:ident, $s:ident => $sled:expr, $p:ident, $rt:ident => $pg:expr) => {
        match &$self.inner {
            Inner::Sled { store: $s, .. } => $sled,
            Inner::Postgres {
                store: $p,
                runtime: $rt,
            } => $pg,
        }
    };
}

/// This process's name as the holder of verifies' scratch generations: a
/// verify after another on the same host takes the hold over at once.
fn scratch_holder() -> &'static str {
    static HOLDER: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HOLDER.get_or_init(super::pg::unique_holder)
}

/// How long a verify's hold on its scratch generation keeps another host's
/// verify of the same version out (it is not renewed: a commit checks only
/// that no one took it over).
const SCRATCH_LEASE: std::time::Duration = std::time::Duration::from_secs(120);

fn unsupported(what: &'static str) -> StoreError {
    StoreError::Unsupported {
        what,
        backend: "postgres",
    }
}

impl Backend {
    /// sled's store, with module component files under `modules`.
    pub fn sled(store: Store, modules: impl Into<PathBuf>) -> Result<Backend, StoreError> {
        let modules = modules.into();
        std::fs::create_dir_all(&modules)
            .map_err(|e| StoreError::storage("creating the modules directory", e))?;
        Ok(Backend {
            inner: Inner::Sled { store, modules },
        })
    }

    /// A PostgreSQL store; its synchronous calls run on the current runtime,
    /// which must be multi-threaded (they wait in place: `block_in_place`).
    pub fn postgres(store: PgStore) -> Result<Backend, StoreError> {
        let runtime = tokio::runtime::Handle::current();
        if runtime.runtime_flavor() != tokio::runtime::RuntimeFlavor::MultiThread {
            return Err(StoreError::Unavailable(
                "the PostgreSQL backend needs a multi-threaded tokio runtime".into(),
            ));
        }
        Ok(Backend {
            inner: Inner::Postgres { store, runtime },
        })
    }

    /// `sled` or `postgres`.
    pub fn kind(&self) -> &'static str {
        either!(self, _s => "sled", _p, _r => "postgres")
    }

    /// The sled store, when this is one (backups, the CLI's offline tools).
    pub fn as_sled(&self) -> Option<&Store> {
        either!(self, s => Some(s), _p, _r => None)
    }

    /// Changes whenever the module catalog may have changed on another host
    /// (PostgreSQL); never on sled, where this host makes every change.
    pub fn watch_catalog(&self) -> Option<watch::Receiver<i64>> {
        either!(self, _s => None, p, _r => Some(p.watch_catalog()))
    }

    // The event log.

    pub async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError> {
        either!(self, s => s.append(stream, expected, events).await,
                p, _r => EventStore::append(p, stream, expected, events).await)
    }

    pub async fn append_command(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        command_id: &str,
        fingerprint: Option<RequestFingerprint>,
        journal: Option<JournalEntry>,
    ) -> Result<CommandAppend, StoreError> {
        match &self.inner {
            Inner::Sled { store, .. } => {
                store
                    .append_command(stream, expected, events, command_id, fingerprint, journal)
                    .await
            }
            Inner::Postgres { store, .. } => match journal {
                Some(journal) => {
                    store
                        .append_command_journaled(
                            stream,
                            expected,
                            events,
                            command_id,
                            fingerprint,
                            journal,
                        )
                        .await
                }
                None => {
                    EventStore::append_command(
                        store,
                        stream,
                        expected,
                        events,
                        command_id,
                        fingerprint,
                    )
                    .await
                }
            },
        }
    }

    pub fn read_stream(
        &self,
        stream: &StreamId,
        from: StreamVersion,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        either!(self, s => s.read_stream(stream, from, direction, limit),
                p, r => wait(r, EventStore::read_stream(p, stream, from, direction, limit)))
    }

    pub fn read_all(
        &self,
        from: Position,
        limit: usize,
        filter: &EventFilter,
    ) -> Result<LogPage, StoreError> {
        either!(self, s => s.read_all(from, limit, filter),
                p, r => wait(r, EventStore::read_all(p, from, limit, filter)))
    }

    /// [`Backend::read_all`] for async callers: never blocks a runtime worker.
    pub async fn read_all_async(
        &self,
        from: Position,
        limit: usize,
        filter: &EventFilter,
    ) -> Result<LogPage, StoreError> {
        match &self.inner {
            Inner::Sled { store, .. } => {
                let (store, filter) = (store.clone(), filter.clone());
                tokio::task::spawn_blocking(move || store.read_all(from, limit, &filter))
                    .await
                    .map_err(|e| StoreError::storage("reading the log", e))?
            }
            Inner::Postgres { store, .. } => EventStore::read_all(store, from, limit, filter).await,
        }
    }

    /// [`Backend::read_all`] for a short read on an async caller's hot path:
    /// sled reads on the caller's task (as the services always have), PostgreSQL
    /// awaits its query.
    pub async fn read_all_at_once(
        &self,
        from: Position,
        limit: usize,
        filter: &EventFilter,
    ) -> Result<LogPage, StoreError> {
        match &self.inner {
            Inner::Sled { store, .. } => store.read_all(from, limit, filter),
            Inner::Postgres { store, .. } => EventStore::read_all(store, from, limit, filter).await,
        }
    }

    /// [`Backend::read_stream`] for async callers (sled reads on the caller's task).
    pub async fn read_stream_at_once(
        &self,
        stream: &StreamId,
        from: StreamVersion,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        match &self.inner {
            Inner::Sled { store, .. } => store.read_stream(stream, from, direction, limit),
            Inner::Postgres { store, .. } => {
                EventStore::read_stream(store, stream, from, direction, limit).await
            }
        }
    }

    /// [`Backend::stream_version`] for async callers.
    pub async fn stream_version_async(
        &self,
        stream: &StreamId,
    ) -> Result<StreamVersion, StoreError> {
        match &self.inner {
            Inner::Sled { store, .. } => store.stream_version(stream),
            Inner::Postgres { store, .. } => EventStore::stream_version(store, stream).await,
        }
    }

    /// [`Backend::command_record`] for async callers.
    pub async fn command_record_async(
        &self,
        command_id: &str,
    ) -> Result<Option<CommandRecord>, StoreError> {
        match &self.inner {
            Inner::Sled { store, .. } => store.command_record(command_id),
            Inner::Postgres { store, .. } => EventStore::command_record(store, command_id).await,
        }
    }

    pub fn read_event(&self, position: Position) -> Result<Option<RecordedEvent>, StoreError> {
        either!(self, s => s.read_event(position),
                p, r => wait(r, EventStore::read_event(p, position)))
    }

    pub fn stream_version(&self, stream: &StreamId) -> Result<StreamVersion, StoreError> {
        either!(self, s => s.stream_version(stream),
                p, r => wait(r, EventStore::stream_version(p, stream)))
    }

    pub fn command_record(&self, command_id: &str) -> Result<Option<CommandRecord>, StoreError> {
        either!(self, s => s.command_record(command_id),
                p, r => wait(r, EventStore::command_record(p, command_id)))
    }

    pub fn count_streams(&self, aggregate_type: &str) -> Result<u64, StoreError> {
        either!(self, s => s.count_streams(aggregate_type),
                p, r => wait(r, p.count_streams(aggregate_type)))
    }

    pub fn stream_ids(
        &self,
        aggregate_type: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        either!(self, s => s.stream_ids(aggregate_type, after, limit),
                p, r => wait(r, p.stream_ids(aggregate_type, after, limit)))
    }

    pub fn head(&self) -> Position {
        either!(self, s => s.head(), p, _r => EventStore::head(p))
    }

    pub fn watch_head(&self) -> watch::Receiver<Position> {
        either!(self, s => s.watch_head(), p, _r => EventStore::watch_head(p))
    }

    pub fn subscribe(
        &self,
        from: Position,
        filter: EventFilter,
    ) -> BoxStream<'static, Result<RecordedEvent, StoreError>> {
        either!(self, s => EventStore::subscribe(s, from, filter),
                p, _r => EventStore::subscribe(p, from, filter))
    }

    /// Why writes stopped, if they did (sled stops after a failed write until
    /// reopened; PostgreSQL's writer reconnects instead).
    pub fn write_failure(&self) -> Option<String> {
        either!(self, s => s.write_failure(), _p, _r => None)
    }

    /// Why this host cannot write now, if it cannot: sled after a storage
    /// failure; PostgreSQL while the database does not answer (within 2 s).
    pub async fn unwritable(&self) -> Option<String> {
        match &self.inner {
            Inner::Sled { store, .. } => store.write_failure(),
            Inner::Postgres { store, .. } => {
                match tokio::time::timeout(std::time::Duration::from_secs(2), store.ping()).await {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => Some(e.to_string()),
                    Err(_) => Some("the database did not answer within 2 s".into()),
                }
            }
        }
    }

    pub async fn close(&self) {
        either!(self, s => s.close().await, p, _r => p.close().await)
    }

    // The command journal.

    pub fn journal_refused(&self, entry: &JournalEntry) -> Result<(), StoreError> {
        either!(self, s => s.journal_refused(entry), p, r => wait(r, p.journal_refused(entry)))
    }

    pub fn journal_page(
        &self,
        aggregate_type: &str,
        since_ms: u64,
        after_id: Option<&str>,
        limit: usize,
        max_scan: u64,
    ) -> Result<JournalPage, StoreError> {
        either!(self, s => s.journal_page(aggregate_type, since_ms, after_id, limit, max_scan),
                p, r => wait(r, p.journal_page(aggregate_type, since_ms, after_id, limit, max_scan)))
    }

    pub fn prune_journal(&self, before_ms: u64) -> Result<u64, StoreError> {
        either!(self, s => s.prune_journal(before_ms), p, r => wait(r, p.prune_journal(before_ms)))
    }

    // The module catalog.

    /// Registers a module version with its component bytes: on sled the bytes
    /// go to a file (fsynced) before the record; on PostgreSQL both commit in
    /// one transaction.
    pub fn put_module(&self, record: &ModuleRecord, bytes: &[u8]) -> Result<ModulePut, StoreError> {
        match &self.inner {
            Inner::Sled { store, modules } => {
                write_module_file(modules, &record.digest, bytes)?;
                store.put_module(record)
            }
            Inner::Postgres { store, runtime } => wait(runtime, store.put_module(record, bytes)),
        }
    }

    /// Makes sure the bytes of a registered version are kept as they should
    /// be (a sled file rewritten after it was lost or damaged); PostgreSQL
    /// keeps them with the record.
    pub fn keep_module_bytes(&self, digest: &[u8; 32], bytes: &[u8]) -> Result<(), StoreError> {
        match &self.inner {
            Inner::Sled { modules, .. } => write_module_file(modules, digest, bytes),
            Inner::Postgres { .. } => Ok(()),
        }
    }

    /// A registered version's component bytes, checked against its digest.
    pub fn module_bytes(&self, digest: &[u8; 32]) -> Result<Vec<u8>, ModuleBytesError> {
        match &self.inner {
            Inner::Sled { modules, .. } => {
                let path = module_path(modules, digest);
                let bytes = std::fs::read(&path).map_err(|e| ModuleBytesError {
                    code: "module_file_unreadable",
                    reason: format!("reading {}: {e}", path.display()),
                })?;
                let actual: [u8; 32] = sha2::Sha256::digest(&bytes).into();
                if actual != *digest {
                    return Err(ModuleBytesError {
                        code: "module_file_corrupt",
                        reason: format!(
                            "{} does not hold the registered bytes (its sha256 is {})",
                            path.display(),
                            crate::hex::hex(&actual)
                        ),
                    });
                }
                Ok(bytes)
            }
            Inner::Postgres { store, runtime } => match wait(runtime, store.module_bytes(digest)) {
                Ok(Some(bytes)) => Ok(bytes),
                Ok(None) => Err(ModuleBytesError {
                    code: "module_bytes_missing",
                    reason: format!(
                        "the database has no component with sha256 {}",
                        crate::hex::hex(digest)
                    ),
                }),
                Err(e) => Err(ModuleBytesError {
                    code: e.code(),
                    reason: e.to_string(),
                }),
            },
        }
    }

    pub fn module(&self, name: &str, version: &str) -> Result<Option<ModuleRecord>, StoreError> {
        either!(self, s => s.module(name, version), p, r => wait(r, p.module(name, version)))
    }

    pub fn modules(&self) -> Result<Vec<ModuleRecord>, StoreError> {
        either!(self, s => s.modules(), p, r => wait(r, p.modules()))
    }

    pub fn active_module(&self, name: &str) -> Result<Option<String>, StoreError> {
        either!(self, s => s.active_module(name), p, r => wait(r, p.active_module(name)))
    }

    pub fn active_modules(&self) -> Result<Vec<(String, String)>, StoreError> {
        either!(self, s => s.active_modules(), p, r => wait(r, p.active_modules()))
    }

    pub fn set_active_module(&self, name: &str, version: &str) -> Result<(), StoreError> {
        either!(self, s => s.set_active_module(name, version),
                p, r => wait(r, p.set_active_module(name, version)))
    }

    pub fn routing(&self, name: &str) -> Result<Routing, StoreError> {
        either!(self, s => s.routing(name), p, r => wait(r, p.routing(name)))
    }

    pub fn routings(&self) -> Result<Vec<(String, Routing)>, StoreError> {
        either!(self, s => s.routings(), p, r => wait(r, p.routings()))
    }

    pub fn set_routing(
        &self,
        name: &str,
        active: Option<&str>,
        routing: &Routing,
    ) -> Result<(), StoreError> {
        either!(self, s => s.set_routing(name, active, routing),
                p, r => wait(r, p.set_routing(name, active, Some(routing))))
    }

    pub fn check_record(
        &self,
        name: &str,
        version: &str,
    ) -> Result<Option<CheckRecord>, StoreError> {
        either!(self, s => s.check_record(name, version), p, r => wait(r, p.check_record(name, version)))
    }

    pub fn set_check_record(
        &self,
        name: &str,
        version: &str,
        record: &CheckRecord,
    ) -> Result<(), StoreError> {
        either!(self, s => s.set_check_record(name, version, record),
                p, r => wait(r, p.set_check_record(name, version, record)))
    }

    pub fn process_checkpoint(&self, name: &str) -> Result<u64, StoreError> {
        either!(self, s => s.process_checkpoint(name), p, r => wait(r, p.process_checkpoint(name)))
    }

    pub fn set_process_checkpoint(&self, name: &str, position: u64) -> Result<(), StoreError> {
        either!(self, s => s.set_process_checkpoint(name, position),
                p, r => wait(r, p.set_process_checkpoint(name, position)))
    }

    pub fn activations(&self, name: &str) -> Result<Vec<Activation>, StoreError> {
        either!(self, s => s.activations(name), p, r => wait(r, p.activations(name)))
    }

    pub fn delete_module(&self, name: &str, version: &str) -> Result<(), StoreError> {
        either!(self, s => s.delete_module(name, version), p, r => wait(r, p.delete_module(name, version)))
    }

    pub fn save_snapshot(
        &self,
        stream: &StreamId,
        module_digest: &[u8; 32],
        version: StreamVersion,
        state: &[u8],
    ) -> Result<bool, StoreError> {
        either!(self, s => s.save_snapshot(stream, module_digest, version, state),
                p, r => wait(r, p.save_snapshot(stream, module_digest, version, state)))
    }

    pub fn load_snapshot(
        &self,
        stream: &StreamId,
        module_digest: &[u8; 32],
    ) -> Result<Option<(StreamVersion, Vec<u8>)>, StoreError> {
        either!(self, s => s.load_snapshot(stream, module_digest),
                p, r => wait(r, p.load_snapshot(stream, module_digest)))
    }

    // Read models.

    /// `name@version`'s read model. On PostgreSQL it commits only while its
    /// runner holds the version's lease ([`BackendReadModel::fence`]).
    pub fn read_model(&self, name: &str, version: &str) -> Result<BackendReadModel, StoreError> {
        either!(self, s => s.read_model(name, version).map(BackendReadModel::sled),
                p, r => wait(r, p.read_model(name, version)).map(|m| BackendReadModel::pg(m, r)))
    }

    /// A runner's read model: [`Backend::read_model`] while `name@version` is
    /// registered, None once it is not (dropped, perhaps on another host); on
    /// PostgreSQL the check and the opening are one transaction, so a
    /// standby never brings back what a drop deletes.
    pub fn registered_read_model(
        &self,
        name: &str,
        version: &str,
    ) -> Result<Option<BackendReadModel>, StoreError> {
        match &self.inner {
            Inner::Sled { store, .. } => match store.module(name, version)? {
                Some(_) => store
                    .read_model(name, version)
                    .map(|m| Some(BackendReadModel::sled(m))),
                None => Ok(None),
            },
            Inner::Postgres { store, runtime } => {
                Ok(wait(runtime, store.registered_read_model(name, version))?
                    .map(|m| BackendReadModel::pg(m, runtime)))
            }
        }
    }

    pub fn reset_read_model(
        &self,
        name: &str,
        version: &str,
    ) -> Result<BackendReadModel, StoreError> {
        either!(self, s => s.reset_read_model(name, version).map(BackendReadModel::sled),
                p, r => wait(r, p.reset_read_model(name, version)).map(|m| BackendReadModel::pg(m, r)))
    }

    /// A verify's scratch generation, empty. On PostgreSQL under a lease of its
    /// own (`scratch:name@version`): of two verifies of one version on two
    /// hosts, the second waits for the first's lease to lapse, then fences it out.
    pub fn scratch_read_model(
        &self,
        name: &str,
        version: &str,
    ) -> Result<BackendReadModel, StoreError> {
        match &self.inner {
            Inner::Sled { store, .. } => store
                .scratch_read_model(name, version)
                .map(BackendReadModel::sled),
            Inner::Postgres { store, runtime } => {
                let lease = wait(
                    runtime,
                    store.leases().acquire(
                        &format!("scratch:{name}@{version}"),
                        scratch_holder(),
                        SCRATCH_LEASE,
                    ),
                )?
                .ok_or_else(|| {
                    StoreError::LeaseLost(format!(
                        "another host is verifying {name}@{version}; try again once it has finished"
                    ))
                })?;
                let model = BackendReadModel::pg(
                    wait(runtime, store.scratch_read_model(name, version))?,
                    runtime,
                );
                model.fence(Some((lease, 0)));
                Ok(model)
            }
        }
    }

    /// Deletes a verify's scratch generation; on PostgreSQL also gives up
    /// this host's hold on it (see [`Backend::scratch_read_model`]).
    pub fn delete_scratch_read_model(&self, name: &str, version: &str) -> Result<(), StoreError> {
        match &self.inner {
            Inner::Sled { store, .. } => store.delete_scratch_read_model(name, version),
            Inner::Postgres { store, runtime } => wait(runtime, async {
                let leases = store.leases();
                let lease_name = format!("scratch:{name}@{version}");
                // Held by this host (or free): take it to delete, then let it go.
                let Some(lease) = leases
                    .acquire(&lease_name, scratch_holder(), SCRATCH_LEASE)
                    .await?
                else {
                    return Err(StoreError::LeaseLost(format!(
                        "another host is verifying {name}@{version}; its scratch copy is its own"
                    )));
                };
                store.delete_scratch_read_model(name, version).await?;
                leases.release(&lease).await
            }),
        }
    }

    pub fn delete_read_model(&self, name: &str, version: &str) -> Result<(), StoreError> {
        either!(self, s => s.delete_read_model(name, version),
                p, r => wait(r, p.delete_read_model(name, version)))
    }

    /// The generation `name@version`'s read model is in now, as the database
    /// has it (None: no read model); on sled, where only this host rebuilds,
    /// always None.
    pub fn current_generation(&self, name: &str, version: &str) -> Result<Option<i64>, StoreError> {
        either!(self, _s => Ok(None), p, r => wait(r, p.current_generation(name, version)))
    }

    /// The leases of a shared database; None on sled, where one host runs everything.
    pub fn leases(&self) -> Option<super::pg::Leases> {
        either!(self, _s => None, p, _r => Some(p.leases()))
    }

    // Integrity and backups.

    pub async fn seal(&self) -> Result<Option<Seal>, StoreError> {
        either!(self, s => s.seal().await, p, _r => p.seal().await)
    }

    pub fn integrity(&self) -> Result<IntegrityStatus, StoreError> {
        either!(self, s => s.integrity(), p, r => wait(r, p.integrity()))
    }

    pub fn proof(&self, position: Position) -> Result<Option<EventProof>, StoreError> {
        either!(self, s => s.proof(position), p, r => wait(r, p.proof(position)))
    }

    pub fn verify_log(
        &self,
        from: Position,
        to: Option<Position>,
        trusted_key: Option<&Digest>,
        progress: &mut dyn FnMut(Position, Position) -> bool,
    ) -> Result<VerifyReport, StoreError> {
        either!(self, s => s.verify_log(from, to, trusted_key, progress),
                p, r => wait(r, p.verify_log(from, to, trusted_key, progress)))
    }

    pub fn backup_to(&self, dest: &Path) -> Result<BackupReport, StoreError> {
        either!(self, s => s.backup_to(dest),
                _p, _r => Err(unsupported("backups through the host (back the database up with pg_dump or its replication)")))
    }
}

fn module_path(dir: &Path, digest: &[u8; 32]) -> PathBuf {
    dir.join(format!("{}.wasm", crate::hex::hex(digest)))
}

/// Writes a component file whole and durably, unless it already holds these bytes.
fn write_module_file(dir: &Path, digest: &[u8; 32], bytes: &[u8]) -> Result<(), StoreError> {
    let path = module_path(dir, digest);
    if path.exists() && std::fs::read(&path).is_ok_and(|b| *b == *bytes) {
        return Ok(());
    }
    crate::fsutil::write_atomically(&path, bytes).map_err(|e| StoreError::Storage {
        context: "writing a module file",
        message: format!("{}: {e}", path.display()),
    })
}

/// One projection version's read model on either backend. Cheap to clone.
#[derive(Clone)]
pub struct BackendReadModel {
    inner: ModelInner,
}

#[derive(Clone)]
enum ModelInner {
    Sled(ReadModel),
    Postgres {
        model: PgReadModel,
        runtime: tokio::runtime::Handle,
        /// The lease this host's runner holds, and the checkpoint position
        /// its next commit starts from; None while it holds none.
        fence: Arc<Mutex<Option<(Lease, Position)>>>,
    },
}

macro_rules! model {
    ($self:ident, $s:ident => $sled:expr, $p:ident, $rt:ident => $pg:expr) => {
        match &$self.inner {
            ModelInner::Sled($s) => $sled,
            ModelInner::Postgres {
                model: $p,
                runtime: $rt,
                ..
            } => $pg,
        }
    };
}

impl BackendReadModel {
    fn sled(model: ReadModel) -> Self {
        BackendReadModel {
            inner: ModelInner::Sled(model),
        }
    }

    fn pg(model: PgReadModel, runtime: &tokio::runtime::Handle) -> Self {
        BackendReadModel {
            inner: ModelInner::Postgres {
                model,
                runtime: runtime.clone(),
                fence: Arc::new(Mutex::new(None)),
            },
        }
    }

    /// Lets commits go ahead under `lease`, from the checkpoint at `from`
    /// (PostgreSQL; nothing to do on sled). None stops them.
    pub fn fence(&self, lease: Option<(Lease, Position)>) {
        if let ModelInner::Postgres { fence, .. } = &self.inner {
            *fence.lock().unwrap_or_else(|e| e.into_inner()) = lease;
        }
    }

    pub fn checkpoint(&self) -> Result<ProjectionCheckpoint, StoreError> {
        model!(self, m => m.checkpoint(), p, r => wait(r, p.checkpoint()))
    }

    /// The generation this model writes (PostgreSQL; None on sled).
    pub fn generation(&self) -> Option<i64> {
        model!(self, _m => None, p, _r => Some(p.generation()))
    }

    pub fn get(&self, doc_key: &str) -> Result<Option<String>, StoreError> {
        model!(self, m => m.get(doc_key), p, r => wait(r, p.get(doc_key)))
    }

    pub fn scan(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, String)>, StoreError> {
        self.scan_bounded(prefix, after, limit, usize::MAX)
    }

    pub fn scan_bounded(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<(String, String)>, StoreError> {
        model!(self, m => m.scan_bounded(prefix, after, limit, max_bytes),
               p, r => wait(r, p.scan_bounded(prefix, after, limit, max_bytes)))
    }

    /// Every document in key order (on PostgreSQL read a page at a time).
    pub fn documents(
        &self,
    ) -> Box<dyn Iterator<Item = Result<(String, String), StoreError>> + Send + '_> {
        match &self.inner {
            ModelInner::Sled(m) => Box::new(m.documents()),
            ModelInner::Postgres { .. } => Box::new(Pages {
                model: self,
                after: None,
                page: std::collections::VecDeque::new(),
                done: false,
            }),
        }
    }

    pub fn skips(&self) -> Result<Vec<SkipRecord>, StoreError> {
        model!(self, m => m.skips(), p, r => wait(r, p.skips()))
    }

    pub fn schema_versions(&self) -> Result<SchemaVersionsSeen, StoreError> {
        model!(self, m => m.schema_versions(), p, r => wait(r, p.schema_versions()))
    }

    /// Commits a batch (see sled's [`ReadModel::commit`]). On PostgreSQL only
    /// under the fence's lease and from its checkpoint: `lease_lost`, writing
    /// nothing, when the lease moved to another host or the checkpoint did.
    pub fn commit(
        &self,
        changes: &BTreeMap<String, Option<String>>,
        checkpoint: &ProjectionCheckpoint,
        skip: Option<&SkipRecord>,
        applied: &[RecordedEvent],
    ) -> Result<(), StoreError> {
        match &self.inner {
            ModelInner::Sled(m) => m.commit(changes, checkpoint, skip, applied),
            ModelInner::Postgres {
                model,
                runtime,
                fence,
            } => {
                let mut fence = fence.lock().unwrap_or_else(|e| e.into_inner());
                let Some((lease, from)) = fence.clone() else {
                    return Err(StoreError::LeaseLost(
                        "this host holds no lease on the projection version".into(),
                    ));
                };
                match wait(
                    runtime,
                    model.commit(&lease, from, changes, checkpoint, skip, applied),
                )? {
                    Ok(()) => {
                        *fence = Some((lease, checkpoint.position));
                        Ok(())
                    }
                    Err(refused) => {
                        *fence = None;
                        Err(StoreError::LeaseLost(describe(&refused)))
                    }
                }
            }
        }
    }
}

fn describe(refused: &Refused) -> String {
    match refused {
        Refused::LeaseLost { name, token } => {
            format!("another host took over {name} (token {token})")
        }
        Refused::CheckpointMoved {
            name,
            expected,
            actual,
        } => format!("the checkpoint of {name} is at {actual}, not {expected}"),
        Refused::CheckpointBackwards { from, to } => {
            format!("a commit would move the checkpoint back from {from} to {to}")
        }
        Refused::GenerationGone { name, generation } => {
            format!("{name} was rebuilt or dropped since generation {generation} was opened")
        }
    }
}

/// A read model's documents a page at a time.
struct Pages<'a> {
    model: &'a BackendReadModel,
    after: Option<String>,
    page: std::collections::VecDeque<(String, String)>,
    done: bool,
}

const PAGE: usize = 1000;

impl Iterator for Pages<'_> {
    type Item = Result<(String, String), StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.page.is_empty() && !self.done {
            match self.model.scan("", self.after.as_deref(), PAGE) {
                Ok(page) => {
                    self.done = page.len() < PAGE;
                    self.after = page.last().map(|(k, _)| k.clone());
                    self.page = page.into();
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
        self.page.pop_front().map(Ok)
    }
}
