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
use super::format::{self, EventRecordRef, StreamHead};
use super::health::WriteHealth;
use super::read;
use super::types::{
    AppendResult, CommandRecord, Durability, ExpectedVersion, NewEvent, Position,
    RequestFingerprint, StreamId, StreamVersion,
};

/// Requests are gathered into one batch until it holds this many events.
const MAX_BATCH_EVENTS: usize = 4096;

pub(crate) struct AppendRequest {
    pub stream: StreamId,
    pub expected: ExpectedVersion,
    pub events: Vec<NewEvent>,
    /// When set, the append is a command's: the command id (and the request's
    /// fingerprint) is recorded with it, atomically, and a later append of the
    /// same request under the same id returns this one's result.
    pub command: Option<(String, Option<RequestFingerprint>)>,
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
}

/// What the batch being built has already decided, on top of what sled holds.
#[derive(Default)]
struct Pending {
    heads: HashMap<StreamId, StreamHead>,
    /// Event ids written by earlier requests of this batch: (stream, version, position).
    ids: HashMap<Uuid, (StreamId, StreamVersion, Position)>,
    commands: HashMap<String, CommandRecord>,
}

impl Writer {
    pub fn run(mut self, mut rx: mpsc::Receiver<WriterMessage>) {
        let mut shutdown_reply = None;
        while shutdown_reply.is_none() {
            let Some(first) = rx.blocking_recv() else {
                break;
            };
            let mut requests = Vec::new();
            let mut events = 0;
            let mut next = Some(first);
            while let Some(message) = next.take() {
                match message {
                    WriterMessage::Append(req) => {
                        events += req.events.len();
                        requests.push(req);
                    }
                    WriterMessage::Shutdown(reply) => {
                        shutdown_reply = Some(reply);
                        break;
                    }
                }
                if events < MAX_BATCH_EVENTS {
                    next = rx.try_recv().ok();
                }
            }
            if !requests.is_empty() {
                self.commit(requests);
            }
        }
        // Anything queued after a shutdown request is refused, not dropped silently.
        rx.close();
        while let Ok(WriterMessage::Append(req)) = rx.try_recv() {
            let _ = req
                .reply
                .send(Err(StoreError::Unavailable("the store is closing".into())));
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
            self.durable_head.send_replace(self.next_position - 1);
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
        let head = self.stream_head(&req.stream, pending)?;
        if let Some(original) = self.idempotent_repeat(req, head, pending)? {
            return Ok(Appended {
                result: original,
                repeated: true,
            });
        }
        if !req.expected.admits(head.version) {
            return Err(StoreError::WrongExpectedVersion {
                stream: req.stream.clone(),
                expected: req.expected,
                actual: head.version,
            });
        }
        let first_position = self.next_position;
        let mut version = head.version;
        for event in &req.events {
            version += 1;
            let position = self.next_position;
            self.next_position += 1;
            let record = format::encode_event(&EventRecordRef {
                stream: &req.stream,
                version,
                event_id: &event.event_id,
                event_type: &event.event_type,
                data: &event.data,
                recorded_at_ms,
                metadata: &event.metadata,
            });
            batch.insert(&format::event_key(position)[..], record);
            batch.insert(
                format::stream_index_key(&req.stream, version),
                &format::encode_position(position)[..],
            );
            batch.insert(
                &format::event_id_key(&event.event_id)[..],
                &format::encode_position(position)[..],
            );
            pending
                .ids
                .insert(event.event_id, (req.stream.clone(), version, position));
        }
        let new_head = StreamHead {
            version,
            last_position: self.next_position - 1,
        };
        batch.insert(
            format::stream_head_key(&req.stream),
            &format::encode_stream_head(new_head)[..],
        );
        pending.heads.insert(req.stream.clone(), new_head);
        let result = AppendResult {
            stream_version: version,
            first_position,
            last_position: new_head.last_position,
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
        Ok(Appended {
            result,
            repeated: false,
        })
    }

    fn stream_head(&self, stream: &StreamId, pending: &Pending) -> Result<StreamHead, StoreError> {
        if let Some(head) = pending.heads.get(stream) {
            return Ok(*head);
        }
        let key = format::stream_head_key(stream);
        match self
            .db
            .get(&key)
            .map_err(|e| StoreError::storage("reading a stream head", e))?
        {
            Some(value) => format::decode_stream_head(&key, &value),
            None => Ok(StreamHead {
                version: 0,
                last_position: 0,
            }),
        }
    }

    /// Where an event id already lives, in this batch or on disk.
    fn locate_event_id(
        &self,
        id: &Uuid,
        pending: &Pending,
    ) -> Result<Option<(StreamId, StreamVersion, Position)>, StoreError> {
        if let Some(found) = pending.ids.get(id) {
            return Ok(Some(found.clone()));
        }
        let key = format::event_id_key(id);
        let Some(value) = self
            .db
            .get(key)
            .map_err(|e| StoreError::storage("reading the event-id index", e))?
        else {
            return Ok(None);
        };
        let position = format::decode_position(&key, &value)?;
        let event_key = format::event_key(position);
        let record = self
            .db
            .get(event_key)
            .map_err(|e| StoreError::storage("reading an event", e))?
            .ok_or_else(|| format::corrupt(&key, "event-id index points at a missing event"))?;
        let event = format::decode_event(position, &record)?;
        Ok(Some((event.stream, event.version, position)))
    }

    /// The idempotency rule (docs/store-format.md, "Idempotency"): an append whose
    /// event ids are already, all of them, in this stream, consecutively and in the
    /// same order, starting at the version its expected version names, returns the
    /// original result and writes nothing. Any other reuse of an id is an error.
    fn idempotent_repeat(
        &self,
        req: &AppendRequest,
        head: StreamHead,
        pending: &Pending,
    ) -> Result<Option<AppendResult>, StoreError> {
        let first_id = &req.events[0].event_id;
        let Some((stream, first_version, first_position)) =
            self.locate_event_id(first_id, pending)?
        else {
            // A fresh append; none of its other ids may be in use either.
            for event in &req.events[1..] {
                if let Some((stream, version, _)) =
                    self.locate_event_id(&event.event_id, pending)?
                {
                    return Err(StoreError::DuplicateEventId {
                        event_id: event.event_id,
                        stream,
                        version,
                    });
                }
            }
            return Ok(None);
        };
        if stream != req.stream {
            return Err(StoreError::DuplicateEventId {
                event_id: *first_id,
                stream,
                version: first_version,
            });
        }
        let mut last_position = first_position;
        for (i, event) in req.events.iter().enumerate().skip(1) {
            let want = first_version + i as u64;
            match self.locate_event_id(&event.event_id, pending)? {
                Some((s, v, p)) if s == req.stream && v == want => last_position = p,
                _ => {
                    return Err(StoreError::DuplicateEventId {
                        event_id: *first_id,
                        stream,
                        version: first_version,
                    });
                }
            }
        }
        let at_expected_place = match req.expected {
            ExpectedVersion::Any | ExpectedVersion::StreamExists => true,
            ExpectedVersion::NoStream => first_version == 1,
            ExpectedVersion::Exact(v) => v.checked_add(1) == Some(first_version),
        };
        if !at_expected_place {
            return Err(StoreError::WrongExpectedVersion {
                stream: req.stream.clone(),
                expected: req.expected,
                actual: head.version,
            });
        }
        Ok(Some(AppendResult {
            stream_version: first_version + req.events.len() as u64 - 1,
            first_position,
            last_position,
        }))
    }
}

pub(crate) fn failed_error() -> StoreError {
    StoreError::Unavailable(
        "a storage failure stopped all writes; restart the process to recover".into(),
    )
}
