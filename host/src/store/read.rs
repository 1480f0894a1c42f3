//! Reads. Every read is capped at the durable head: an event the writer has put
//! into sled but not yet made durable (and acknowledged) is never shown, so no
//! reader can see an event that a crash could still take back.

use super::Store;
use super::error::StoreError;
use super::format;
use super::integrity::Seal;
use super::types::{
    CommandRecord, Direction, EventFilter, LogPage, Position, RecordedEvent, StreamId,
    StreamVersion,
};

/// A filtered global-log read examines at most this many records, so a filter
/// that matches rarely cannot turn one request into a scan of the whole log.
pub const MAX_SCAN_PER_READ: usize = 65_536;

impl Store {
    /// Up to `limit` events of `stream`, starting at version `from` (inclusive).
    /// Backward from `u64::MAX` reads the newest events first.
    pub fn read_stream(
        &self,
        stream: &StreamId,
        from: StreamVersion,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let head = self.head();
        let db = &self.inner.db;
        let mut events = Vec::with_capacity(limit.min(1024));
        if limit == 0 {
            return Ok(events);
        }
        match direction {
            Direction::Forward => {
                let from = from.max(1);
                // The run holding `from` starts at or before it.
                let start = match run_holding(db, stream, from)? {
                    Some(run) => run.first_version,
                    None => from,
                };
                let range = format::stream_index_key(stream, start)
                    ..=format::stream_index_key(stream, u64::MAX);
                'runs: for item in db.range(range) {
                    let (key, value) =
                        item.map_err(|e| StoreError::storage("reading a stream", e))?;
                    let run = format::decode_stream_run(&key, &value)?;
                    if run.last_position() > head {
                        // Not yet durable: later runs are not durable either.
                        break;
                    }
                    for version in run.first_version.max(from)..=run.last_version() {
                        if events.len() >= limit {
                            break 'runs;
                        }
                        let position = run.position_of(version).expect("in the run");
                        events.push(indexed_event(db, &key, position)?);
                    }
                }
            }
            Direction::Backward if from == 0 => {}
            Direction::Backward => {
                let range =
                    format::stream_index_key(stream, 1)..=format::stream_index_key(stream, from);
                'runs: for item in db.range(range).rev() {
                    let (key, value) =
                        item.map_err(|e| StoreError::storage("reading a stream", e))?;
                    let run = format::decode_stream_run(&key, &value)?;
                    if run.last_position() > head {
                        continue;
                    }
                    for version in (run.first_version..=run.last_version().min(from)).rev() {
                        if events.len() >= limit {
                            break 'runs;
                        }
                        let position = run.position_of(version).expect("in the run");
                        events.push(indexed_event(db, &key, position)?);
                    }
                }
            }
        }
        Ok(events)
    }

    /// A page of the global log from `from` (inclusive): up to `limit` matching events.
    pub fn read_all(
        &self,
        from: Position,
        limit: usize,
        filter: &EventFilter,
    ) -> Result<LogPage, StoreError> {
        let head = self.head();
        let from = from.max(1);
        let mut page = LogPage {
            events: Vec::new(),
            next_position: from,
            head,
        };
        if from > head || limit == 0 {
            return Ok(page);
        }
        page.events.reserve(limit.min(4096));
        let range = format::event_key(from)..=format::event_key(head);
        for (scanned, item) in self.inner.db.range(range).enumerate() {
            if page.events.len() >= limit || scanned >= MAX_SCAN_PER_READ {
                break;
            }
            let (key, value) = item.map_err(|e| StoreError::storage("reading the log", e))?;
            let position = format::position_of_event_key(&key)?;
            let event = format::decode_event(position, &value)?;
            page.next_position = position + 1;
            if filter.admits(event.stream.aggregate_type(), &event.event_type) {
                page.events.push(event);
            }
        }
        Ok(page)
    }

    /// How many streams of `aggregate_type` have a durable event.
    pub fn count_streams(&self, aggregate_type: &str) -> Result<u64, StoreError> {
        let mut count = 0;
        let mut after: Option<String> = None;
        loop {
            let page = self.stream_ids(aggregate_type, after.as_deref(), 1000)?;
            count += page.len() as u64;
            match page.last() {
                Some(last) if page.len() == 1000 => after = Some(last.clone()),
                _ => return Ok(count),
            }
        }
    }

    /// The ids of the streams of `aggregate_type` that have a durable event,
    /// in key order (shorter ids first, then by bytes), starting after
    /// `after`: up to `limit`. One seek per
    /// stream (past its runs), so the cost is the number of streams, not of
    /// events. The process runner lists its instances with it.
    pub fn stream_ids(
        &self,
        aggregate_type: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let head = self.head();
        let prefix = format::stream_type_prefix(aggregate_type);
        let mut start = match after {
            Some(id) => {
                let stream = StreamId::new(aggregate_type, id)?;
                let mut key = format::stream_index_prefix(&stream);
                key.extend_from_slice(&[0xff; 8]);
                std::ops::Bound::Excluded(key)
            }
            None => std::ops::Bound::Included(prefix.clone()),
        };
        let mut ids = Vec::new();
        while ids.len() < limit {
            let Some(item) = self
                .inner
                .db
                .range::<Vec<u8>, _>((start.clone(), std::ops::Bound::Unbounded))
                .next()
            else {
                break;
            };
            let (key, value) = item.map_err(|e| StoreError::storage("listing streams", e))?;
            if !key.starts_with(&prefix) {
                break;
            }
            let rest = &key[prefix.len()..];
            let corrupt = || format::corrupt(&key, "a stream-index key cut short");
            let len =
                u16::from_be_bytes(rest.get(..2).ok_or_else(corrupt)?.try_into().unwrap()) as usize;
            let id_bytes = rest.get(2..2 + len).ok_or_else(corrupt)?;
            let id = String::from_utf8(id_bytes.to_vec())
                .map_err(|_| format::corrupt(&key, "a stream id that is not UTF-8"))?;
            // The stream's first run: is it durable yet?
            let run = format::decode_stream_run(&key, &value)?;
            if run.first_position <= head {
                ids.push(id);
            }
            let mut past = key[..prefix.len() + 2 + len].to_vec();
            past.extend_from_slice(&[0xff; 8]);
            start = std::ops::Bound::Excluded(past);
        }
        Ok(ids)
    }

    /// The stream's durable version (0: the stream does not exist).
    pub fn stream_version(&self, stream: &StreamId) -> Result<StreamVersion, StoreError> {
        let Some(last) = last_run(&self.inner.db, stream)? else {
            return Ok(0);
        };
        if last.last_position() <= self.head() {
            return Ok(last.last_version());
        }
        // The writer is committing this stream right now: the durable version is the
        // newest one whose event is at or below the durable head.
        let newest = self.read_stream(stream, u64::MAX, Direction::Backward, 1)?;
        Ok(newest.first().map_or(0, |e| e.version))
    }

    /// Reads one event by position, if it is durable.
    pub fn read_event(&self, position: Position) -> Result<Option<RecordedEvent>, StoreError> {
        if position == 0 || position > self.head() {
            return Ok(None);
        }
        event_at(&self.inner.db, position)
    }
}

impl Store {
    /// The append a command made, once it is durable.
    pub fn command_record(&self, command_id: &str) -> Result<Option<CommandRecord>, StoreError> {
        let record = command_record(&self.inner.db, command_id)?;
        Ok(record.filter(|r| r.result.last_position <= self.head()))
    }
}

impl Store {
    /// Every command record, in id order (for `refold migrate`).
    pub fn command_records(&self) -> Result<Vec<(String, CommandRecord)>, StoreError> {
        let prefix = format::command_key("");
        let mut out = Vec::new();
        for item in self.inner.db.scan_prefix(&prefix) {
            let (key, value) =
                item.map_err(|e| StoreError::storage("reading command records", e))?;
            let id = String::from_utf8(key[prefix.len()..].to_vec())
                .map_err(|_| format::corrupt(&key, "a command id that is not UTF-8"))?;
            out.push((id, format::decode_command(&key, &value)?));
        }
        Ok(out)
    }
}

pub(crate) fn command_record(
    db: &sled::Db,
    command_id: &str,
) -> Result<Option<CommandRecord>, StoreError> {
    let key = format::command_key(command_id);
    db.get(&key)
        .map_err(|e| StoreError::storage("reading a command record", e))?
        .map(|value| format::decode_command(&key, &value))
        .transpose()
}

/// The stream-index run that holds `version` of `stream`, if any.
pub(crate) fn run_holding(
    db: &sled::Db,
    stream: &StreamId,
    version: StreamVersion,
) -> Result<Option<format::StreamRun>, StoreError> {
    let range = format::stream_index_key(stream, 0)..=format::stream_index_key(stream, version);
    let Some(item) = db.range(range).next_back() else {
        return Ok(None);
    };
    let (key, value) = item.map_err(|e| StoreError::storage("reading a stream", e))?;
    let run = format::decode_stream_run(&key, &value)?;
    Ok((run.last_version() >= version).then_some(run))
}

/// The stream's last run (its head), durable or not: one reverse seek.
pub(crate) fn last_run(
    db: &sled::Db,
    stream: &StreamId,
) -> Result<Option<format::StreamRun>, StoreError> {
    let range = format::stream_index_key(stream, 0)..=format::stream_index_key(stream, u64::MAX);
    let Some(item) = db.range(range).next_back() else {
        return Ok(None);
    };
    let (key, value) = item.map_err(|e| StoreError::storage("reading a stream head", e))?;
    format::decode_stream_run(&key, &value).map(Some)
}

/// The position of `version` of `stream`, durable or not.
pub(crate) fn stream_position(
    db: &sled::Db,
    stream: &StreamId,
    version: StreamVersion,
) -> Result<Option<Position>, StoreError> {
    Ok(run_holding(db, stream, version)?.and_then(|run| run.position_of(version)))
}

fn indexed_event(
    db: &sled::Db,
    index_key: &[u8],
    position: Position,
) -> Result<RecordedEvent, StoreError> {
    event_at(db, position)?
        .ok_or_else(|| format::corrupt(index_key, "stream index points at a missing event"))
}

/// The newest seal, durable or not (the writer's own view).
pub(crate) fn last_seal(db: &sled::Db) -> Result<Option<Seal>, StoreError> {
    let last = db
        .range(format::seal_key(0)..=format::seal_key(u64::MAX))
        .next_back()
        .transpose()
        .map_err(|e| StoreError::storage("reading the seals", e))?;
    last.map(|(key, value)| format::decode_seal(&key, &value))
        .transpose()
}

pub(crate) fn event_at(
    db: &sled::Db,
    position: Position,
) -> Result<Option<RecordedEvent>, StoreError> {
    db.get(format::event_key(position))
        .map_err(|e| StoreError::storage("reading an event", e))?
        .map(|value| format::decode_event(position, &value))
        .transpose()
}

/// The last position in the log: one lookup, not a scan.
pub(crate) fn last_position(db: &sled::Db) -> Result<Position, StoreError> {
    let last = db
        .range(format::event_key(0)..=format::event_key(u64::MAX))
        .next_back()
        .transpose()
        .map_err(|e| StoreError::storage("finding the head of the log", e))?;
    match last {
        Some((key, _)) => format::position_of_event_key(&key),
        None => Ok(0),
    }
}
