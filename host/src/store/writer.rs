//! The single writer: group commit.
//!
//! One OS thread owns every append. It takes the first waiting request, drains
//! whatever else is queued (up to a batch bound), checks each request against
//! the stream heads as they stand *including earlier requests of the same
//! batch*, writes all accepted requests in one atomic sled batch, makes it
//! durable with one flush + fdatasync, publishes the new durable head, and only
//! then answers every waiter.
//!
//! Invariant: the writer is the only code that writes event, index or head keys,
//! so between batches what sled holds is exactly the durable state.

use std::collections::HashMap;
use std::fs::File;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, watch};
use uuid::Uuid;

use super::error::StoreError;
use super::format::{self, EventRecordRef, StreamRun};
use super::health::WriteHealth;
use super::integrity::{self, Digest, SEAL_INTERVAL, Seal, SealSigner};
use super::read;
use super::types::{
    AppendResult, CommandRecord, Durability, ExpectedVersion, NewEvent, Position,
    RequestFingerprint, StreamId, StreamVersion,
};

/// Requests are gathered into one batch until it holds this many events.
const MAX_BATCH_EVENTS: usize = 4096;
/// ...or this many requests for a seal on demand.
const MAX_BATCH_SEAL_REQUESTS: usize = 256;

pub(crate) struct AppendRequest {
    pub stream: StreamId,
    pub expected: ExpectedVersion,
    pub events: Vec<NewEvent>,
    /// When set, the append is a command's: the command id (and the request's
    /// fingerprint) is recorded with it, atomically, and a later append of the
    /// same request under the same id returns this one's result.
    pub command: Option<(String, Option<RequestFingerprint>)>,
    /// When set, the command's journal entry, written in the same batch with
    /// the positions its events got.
    pub journal: Option<Box<super::journal::JournalEntry>>,
    pub reply: oneshot::Sender<Result<Appended, StoreError>>,
}

/// What the writer answers an append with.
pub(crate) struct Appended {
    pub result: AppendResult,
    /// True when nothing was written because this repeats an earlier append
    /// (same event ids at the same place, or the same command id).
    pub repeated: bool,
}

pub(crate) enum WriterMessage {
    Append(AppendRequest),
    /// Seal the events since the last seal now, and answer with the newest seal
    /// (None when nothing was ever sealed and nothing waits to be).
    Seal(oneshot::Sender<Result<Option<Seal>, StoreError>>),
    /// Flush, then stop; the reply says the thread is done with the database.
    Shutdown(oneshot::Sender<()>),
}

pub(crate) struct Writer {
    pub db: sled::Db,
    /// A second handle on sled's `db` file: fdatasync acts on the inode, so this
    /// makes sled's `sync_file_range`-only flush survive a power loss too.
    pub data_file: Option<File>,
    pub durability: Durability,
    pub durable_head: watch::Sender<Position>,
    pub health: Arc<WriteHealth>,
    pub next_position: Position,
    pub last_recorded_at_ms: u64,
    pub chain: ChainState,
    /// The last position of the newest durable seal: readers look for seals
    /// only up to here, so no one sees a seal a crash could take back.
    pub sealed: Arc<std::sync::atomic::AtomicU64>,
    /// The newest seal staged in the batch being built.
    pub staged_seal: Option<Position>,
    /// The last run of recently appended streams, as committed: saves the
    /// reverse seek per append that finding a stream's head otherwise costs.
    /// Only this thread writes runs, so it cannot go stale.
    pub heads: lru::LruCache<StreamId, StreamRun>,
}

/// Stream heads the writer keeps in memory (about 200 bytes each).
pub(crate) const HEAD_CACHE: usize = 65_536;

/// What the batch being built has already decided, on top of what sled holds.
#[derive(Default)]
struct Pending {
    streams: HashMap<StreamId, PendingStream>,
    commands: HashMap<String, CommandRecord>,
}

/// A stream that earlier requests of this batch appended to.
struct PendingStream {
    /// Its version on disk, before this batch.
    base_version: StreamVersion,
    /// Its last run: the one this batch staged last.
    last: StreamRun,
    /// The staged events' ids and positions, for versions `base_version + 1..`.
    staged: Vec<(Uuid, Position)>,
}

/// The hash chain as the writer extends it (docs/store-format.md, "Hash chain").
pub(crate) struct ChainState {
    /// The chain value at the last position written.
    pub chain: Digest,
    /// The chain values since the last seal, from `segment_first` on.
    pub segment: Vec<Digest>,
    pub segment_first: Position,
    pub signer: Option<Arc<SealSigner>>,
}

impl ChainState {
    /// For a store whose chain could not be read at open: it refuses writes
    /// (its health says why), so this state is never extended.
    pub fn unusable(signer: Option<Arc<SealSigner>>) -> ChainState {
        ChainState {
            chain: integrity::ZERO,
            segment: Vec::new(),
            segment_first: 1,
            signer,
        }
    }
}

impl Writer {
    pub fn run(mut self, mut rx: mpsc::Receiver<WriterMessage>) {
        let mut shutdown_reply = None;
        // How many appends the last commit carried: that many appenders are
        // likely to be back soon, woken by its replies.
        let mut last_commit = 0;
        while shutdown_reply.is_none() {
            let first = match spin_recv(&mut rx) {
                Some(message) => message,
                None => match rx.blocking_recv() {
                    Some(message) => message,
                    None => break,
                },
            };
            let mut requests = Vec::new();
            let mut seal_requests = Vec::new();
            let mut events = 0;
            let mut next = Some(first);
            let mut lingered = false;
            while let Some(message) = next.take() {
                match message {
                    WriterMessage::Append(req) => {
                        events += req.events.len();
                        requests.push(req);
                    }
                    WriterMessage::Seal(reply) => seal_requests.push(reply),
                    WriterMessage::Shutdown(reply) => {
                        shutdown_reply = Some(reply);
                        break;
                    }
                }
                // Seal requests are answered together by one seal; a flood of
                // them must not keep the batch open either.
                if events < MAX_BATCH_EVENTS && seal_requests.len() < MAX_BATCH_SEAL_REQUESTS {
                    next = rx.try_recv().ok();
                    if next.is_none() && requests.len() < last_commit {
                        next = linger(&mut rx, &mut lingered);
                    }
                }
            }
            last_commit = requests.len();
            if !requests.is_empty() {
                self.commit(requests);
            }
            if !seal_requests.is_empty() {
                let answer = self.seal_now();
                for reply in seal_requests {
                    let copy = match &answer {
                        Ok(seal) => Ok(seal.clone()),
                        Err(e) => Err(StoreError::Unavailable(e.to_string())),
                    };
                    let _ = reply.send(copy);
                }
            }
        }
        // Anything queued after a shutdown request is refused, not dropped silently.
        rx.close();
        while let Ok(message) = rx.try_recv() {
            let closing = || StoreError::Unavailable("the store is closing".into());
            match message {
                WriterMessage::Append(req) => {
                    let _ = req.reply.send(Err(closing()));
                }
                WriterMessage::Seal(reply) => {
                    let _ = reply.send(Err(closing()));
                }
                WriterMessage::Shutdown(_) => {}
            }
        }
        if let Err(e) = self.db.flush() {
            tracing::error!(error = %e, "final flush of the event store failed");
        }
        if let Some(reply) = shutdown_reply {
            let _ = reply.send(());
        }
    }

    fn commit(&mut self, requests: Vec<AppendRequest>) {
        if self.health.failed() {
            for req in requests {
                let _ = req.reply.send(Err(failed_error()));
            }
            return;
        }
        let now = crate::clock::now_ms();
        let recorded_at_ms = now.max(self.last_recorded_at_ms);
        let start_position = self.next_position;
        let mut batch = sled::Batch::default();
        let mut pending = Pending::default();
        let mut outcomes = Vec::with_capacity(requests.len());
        let mut replies = Vec::with_capacity(requests.len());
        for req in requests {
            let outcome = self.stage(&req, recorded_at_ms, &mut batch, &mut pending);
            outcomes.push(outcome);
            replies.push(req.reply);
        }
        if self.next_position != start_position {
            if let Err(err) = self.write(batch) {
                // What reached the disk is unknown: refuse every write until reopened,
                // and tell each waiter of this batch that its append may not be durable.
                tracing::error!(error = %err, "event store write failed; refusing further writes");
                self.health.record_failure(err.to_string());
                for (outcome, reply) in outcomes.into_iter().zip(replies) {
                    let answer = match outcome {
                        Ok(_) => Err(StoreError::storage("committing a batch", &err)),
                        rejected => rejected,
                    };
                    let _ = reply.send(answer);
                }
                return;
            }
            self.last_recorded_at_ms = recorded_at_ms;
            if let Some(last) = self.staged_seal.take() {
                self.sealed
                    .store(last, std::sync::atomic::Ordering::Release);
            }
            self.durable_head.send_replace(self.next_position - 1);
            for (stream, staged) in pending.streams {
                self.heads.put(stream, staged.last);
            }
        }
        for (outcome, reply) in outcomes.into_iter().zip(replies) {
            let _ = reply.send(outcome);
        }
    }

    fn write(&self, batch: sled::Batch) -> Result<(), StoreError> {
        if self.health.take_injected_fault() {
            return Err(StoreError::storage(
                "applying a batch",
                std::io::Error::other("injected fault (tests)"),
            ));
        }
        self.db
            .apply_batch(batch)
            .map_err(|e| StoreError::storage("applying a batch", e))?;
        if self.durability == Durability::Fsync {
            self.db
                .flush()
                .map_err(|e| StoreError::storage("flushing sled", e))?;
            if let Some(file) = &self.data_file {
                file.sync_data()
                    .map_err(|e| StoreError::storage("fdatasync of sled's db file", e))?;
            }
        }
        Ok(())
    }

    /// Decides one request against the state as of everything staged before it,
    /// and stages its writes.
    fn stage(
        &mut self,
        req: &AppendRequest,
        recorded_at_ms: u64,
        batch: &mut sled::Batch,
        pending: &mut Pending,
    ) -> Result<Appended, StoreError> {
        if let Some((command_id, fingerprint)) = &req.command {
            let recorded = match pending.commands.get(command_id) {
                Some(record) => Some(record.clone()),
                None => read::command_record(&self.db, command_id)?,
            };
            if let Some(record) = recorded {
                if !record.same_request(&req.stream, fingerprint.as_ref()) {
                    return Err(StoreError::CommandIdInUse {
                        command_id: command_id.clone(),
                        stream: record.stream,
                    });
                }
                return Ok(Appended {
                    result: record.result,
                    repeated: true,
                });
            }
        }
        let last = self.last_run(&req.stream, pending)?;
        let version = last.map_or(0, |run| run.last_version());
        if let Some(original) = self.idempotent_repeat(req, version, last, pending)? {
            return Ok(Appended {
                result: original,
                repeated: true,
            });
        }
        if !req.expected.admits(version) {
            return Err(StoreError::WrongExpectedVersion {
                stream: req.stream.clone(),
                expected: req.expected,
                actual: version,
            });
        }
        let run = StreamRun {
            first_version: version + 1,
            first_position: self.next_position,
            count: req.events.len() as u32, // at most MAX_EVENTS_PER_APPEND
            first_event_id: req.events[0].event_id,
        };
        let pending_stream = pending
            .streams
            .entry(req.stream.clone())
            .or_insert_with(|| PendingStream {
                base_version: version,
                last: run,
                staged: Vec::new(),
            });
        for (i, event) in req.events.iter().enumerate() {
            let position = self.next_position;
            self.next_position += 1;
            let (record, chain) = format::encode_event(
                &self.chain.chain,
                position,
                &EventRecordRef {
                    stream: &req.stream,
                    version: run.first_version + i as u64,
                    event_id: &event.event_id,
                    event_type: &event.event_type,
                    data: &event.data,
                    recorded_at_ms,
                    metadata: &event.metadata,
                    schema_version: event.schema_version,
                },
            );
            batch.insert(&format::event_key(position)[..], record);
            pending_stream.staged.push((event.event_id, position));
            self.chain.chain = chain;
            self.chain.segment.push(chain);
            if self.chain.segment.len() as u64 >= SEAL_INTERVAL {
                self.seal_into(batch, recorded_at_ms);
            }
        }
        batch.insert(
            format::stream_index_key(&req.stream, run.first_version),
            &format::encode_stream_run(&run)[..],
        );
        pending_stream.last = run;
        let result = AppendResult {
            stream_version: run.last_version(),
            first_position: run.first_position,
            last_position: run.last_position(),
        };
        if let Some((command_id, fingerprint)) = &req.command {
            let record = CommandRecord {
                stream: req.stream.clone(),
                result,
                fingerprint: *fingerprint,
            };
            batch.insert(
                format::command_key(command_id),
                format::encode_command(&record),
            );
            pending.commands.insert(command_id.clone(), record);
        }
        if let Some(entry) = &req.journal {
            let entry = super::journal::JournalEntry {
                outcome: super::journal::JournalOutcome::Accepted {
                    first_position: Some(result.first_position),
                    last_position: Some(result.last_position),
                },
                ..(**entry).clone()
            };
            batch.insert(
                super::journal::journal_key(entry.received_at_ms, &entry.command_id),
                super::journal::encode_entry(&entry),
            );
        }
        Ok(Appended {
            result,
            repeated: false,
        })
    }

    /// Seals the chain values since the last seal into `batch`: the Merkle root
    /// over them, the chain value at the last one, signed if a key is set.
    fn seal_into(&mut self, batch: &mut sled::Batch, sealed_at_ms: u64) -> Seal {
        let state = &mut self.chain;
        let last_position = state.segment_first + state.segment.len() as u64 - 1;
        let mut seal = Seal {
            first_position: state.segment_first,
            last_position,
            root: integrity::merkle_root(&state.segment),
            chain: state.chain,
            sealed_at_ms,
            signature: None,
            public_key: None,
        };
        if let Some(signer) = &state.signer {
            signer.sign(&mut seal);
        }
        batch.insert(
            &format::seal_key(last_position)[..],
            format::encode_seal(&seal),
        );
        state.segment.clear();
        state.segment_first = last_position + 1;
        self.staged_seal = Some(last_position);
        seal
    }

    /// An on-demand seal over the events since the last one (all durable: the
    /// writer answers appends before it takes the next message).
    fn seal_now(&mut self) -> Result<Option<Seal>, StoreError> {
        if self.health.failed() {
            return Err(failed_error());
        }
        if self.chain.segment.is_empty() {
            return read::last_seal(&self.db);
        }
        let sealed_at_ms = crate::clock::now_ms().max(self.last_recorded_at_ms);
        let mut batch = sled::Batch::default();
        let seal = self.seal_into(&mut batch, sealed_at_ms);
        if let Err(err) = self.write(batch) {
            tracing::error!(error = %err, "writing a seal failed; refusing further writes");
            self.health.record_failure(err.to_string());
            return Err(err);
        }
        self.last_recorded_at_ms = sealed_at_ms;
        if let Some(last) = self.staged_seal.take() {
            self.sealed
                .store(last, std::sync::atomic::Ordering::Release);
        }
        Ok(Some(seal))
    }

    /// The stream's last run (its head), in this batch or on disk.
    fn last_run(
        &self,
        stream: &StreamId,
        pending: &Pending,
    ) -> Result<Option<StreamRun>, StoreError> {
        if let Some(staged) = pending.streams.get(stream) {
            return Ok(Some(staged.last));
        }
        if let Some(run) = self.heads.peek(stream) {
            return Ok(Some(*run));
        }
        read::last_run(&self.db, stream)
    }

    /// The id and position of the event at `version` of `stream`, in this batch
    /// or on disk (the caller knows the stream reaches that version).
    fn event_at_version(
        &self,
        stream: &StreamId,
        version: StreamVersion,
        pending: &Pending,
    ) -> Result<(Uuid, Position), StoreError> {
        if let Some(staged) = pending.streams.get(stream)
            && version > staged.base_version
        {
            let index = (version - staged.base_version - 1) as usize;
            return staged.staged.get(index).copied().ok_or_else(|| {
                StoreError::Unavailable("the writer lost track of a staged event".into())
            });
        }
        let position = read::stream_position(&self.db, stream, version)?.ok_or_else(|| {
            format::corrupt(
                &format::stream_index_key(stream, version),
                "the stream head names a version the stream index lacks",
            )
        })?;
        let value = self
            .db
            .get(format::event_key(position))
            .map_err(|e| StoreError::storage("reading an event", e))?
            .ok_or_else(|| {
                format::corrupt(
                    &format::event_key(position),
                    "stream index points at a missing event",
                )
            })?;
        Ok((format::event_id_of(position, &value)?, position))
    }

    /// The idempotency rule (docs/store-format.md, "Idempotency"): stream-local,
    /// as in EventStoreDB. The place an append's expectation names is the version
    /// its first event would get: `NoStream`/`Exact(0)` 1, `Exact(v)` v + 1,
    /// `Any`/`StreamExists` the stream's last `n` events. If the stream already
    /// holds the append's first event id there, the append is a repeat when all of
    /// its ids follow in order (returning the original result, writing nothing),
    /// and `DuplicateEventId` otherwise.
    fn idempotent_repeat(
        &self,
        req: &AppendRequest,
        version: StreamVersion,
        last: Option<StreamRun>,
        pending: &Pending,
    ) -> Result<Option<AppendResult>, StoreError> {
        let n = req.events.len() as u64;
        let Some(place) = req.expected.repeat_place(version, n) else {
            return Ok(None);
        };
        let first_id = req.events[0].event_id;
        // Most often the place is where the stream's last append began.
        let (id, first_position) = match last {
            Some(run) if run.first_version == place => (run.first_event_id, run.first_position),
            _ => self.event_at_version(&req.stream, place, pending)?,
        };
        if id != first_id {
            return Ok(None);
        }
        let duplicate = || StoreError::DuplicateEventId {
            event_id: first_id,
            stream: req.stream.clone(),
            version: place,
        };
        let last_version = place + n - 1;
        if last_version > version {
            return Err(duplicate());
        }
        let mut last_position = first_position;
        for (i, event) in req.events.iter().enumerate().skip(1) {
            let (id, position) = self.event_at_version(&req.stream, place + i as u64, pending)?;
            if id != event.event_id {
                return Err(duplicate());
            }
            last_position = position;
        }
        Ok(Some(AppendResult {
            stream_version: last_version,
            first_position,
            last_position,
        }))
    }
}

/// Waits a little for the next message without parking the thread: an
/// appender that was just answered sends its next append within tens of
/// microseconds, and a parked writer costs it a futex wake-up on top.
fn spin_recv(rx: &mut mpsc::Receiver<WriterMessage>) -> Option<WriterMessage> {
    const SPIN: std::time::Duration = std::time::Duration::from_micros(60);
    let started = std::time::Instant::now();
    loop {
        if let Ok(message) = rx.try_recv() {
            return Some(message);
        }
        if started.elapsed() >= SPIN {
            return None;
        }
        for _ in 0..64 {
            std::hint::spin_loop();
        }
    }
}

/// Group commit's short wait: when the last commit carried more appends than
/// this batch holds so far, their appenders are about to send their next ones
/// (each was just woken by its reply), and one commit for all of them costs one
/// flush and one fsync instead of two. Sleeps once, for `LINGER` (the kernel's
/// timer slack adds about 50 us), then takes what arrived; a lone appender
/// never waits, because its last commit carried one append.
fn linger(rx: &mut mpsc::Receiver<WriterMessage>, done: &mut bool) -> Option<WriterMessage> {
    const LINGER: std::time::Duration = std::time::Duration::from_micros(50);
    if std::mem::replace(done, true) {
        return None;
    }
    std::thread::sleep(LINGER);
    rx.try_recv().ok()
}

pub(crate) fn failed_error() -> StoreError {
    StoreError::Unavailable(
        "a storage failure stopped all writes; restart the process to recover".into(),
    )
}
