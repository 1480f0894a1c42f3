//! The command journal: every command an aggregate decided, accepted or
//! refused, with what it was decided on and how, so a candidate version can
//! decide the same commands again (what-if, `commands::whatif`).
//!
//! `J` | received_at_ms: u64 BE | command id bytes -> `[1]` + postcard
//! [`JournalEntry`]. Time-ordered keys make retention one range delete from
//! the start. An accepted command's entry is written by the writer in the
//! batch that appends its events (so an acknowledged command is journaled
//! with it, atomically); a refused command's is a plain insert, durable with
//! the next commit's flush. Derived, diagnostic data: retention deletes it,
//! backups do not copy it, nothing in the log depends on it.

use serde::{Deserialize, Serialize};

use super::Store;
use super::error::StoreError;
use super::format;
use super::types::{Position, StreamId, StreamVersion};

pub const SPACE_JOURNAL: u8 = b'J';

/// One decided command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalEntry {
    /// When the host received it (unix ms): the clock its decision saw.
    pub received_at_ms: u64,
    /// The id it was decided under: it seeded the decision's randomness.
    pub command_id: String,
    pub aggregate_type: String,
    pub aggregate_id: String,
    /// The command's JSON text, as the client sent it.
    pub command: String,
    /// The precondition it carried (`If-Match`), as text; none when absent.
    pub expected_version: Option<String>,
    /// True when the client chose the command id (`Idempotency-Key`).
    pub client_command_id: bool,
    pub correlation_id: String,
    pub causation_id: Option<String>,
    /// The stream version whose state it was decided on.
    pub decided_at: StreamVersion,
    /// The module version that decided it, `name@version`.
    pub module: String,
    pub outcome: JournalOutcome,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum JournalOutcome {
    /// Accepted: its events are the log's `first..=last` (none: accepted
    /// without a change).
    Accepted {
        first_position: Option<Position>,
        last_position: Option<Position>,
    },
    /// A business rule refused it.
    Rejected { code: String, message: String },
    /// The aggregate did not understand it.
    Malformed { reason: String },
}

impl JournalEntry {
    pub fn stream(&self) -> StreamId {
        StreamId::from_parts_unchecked(self.aggregate_type.clone(), self.aggregate_id.clone())
    }
}

pub(crate) fn journal_key(received_at_ms: u64, command_id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(9 + command_id.len());
    key.push(SPACE_JOURNAL);
    key.extend_from_slice(&received_at_ms.to_be_bytes());
    key.extend_from_slice(command_id.as_bytes());
    key
}

pub(crate) fn encode_entry(entry: &JournalEntry) -> Vec<u8> {
    format::encode_v1(entry)
}

/// A page of the journal.
#[derive(Clone, Debug)]
pub struct JournalPage {
    pub entries: Vec<JournalEntry>,
    /// Where the next page starts (pass it as `after`); none at the end.
    pub next: Option<JournalCursor>,
    /// Entries read (of every aggregate type) to fill the page.
    pub scanned: u64,
}

/// A place in the journal: after this (time, command id).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalCursor {
    pub received_at_ms: u64,
    pub command_id: String,
}

impl JournalCursor {
    /// `"{received_at_ms}/{command id}"`, for URLs.
    pub fn render(&self) -> String {
        format!("{}/{}", self.received_at_ms, self.command_id)
    }

    /// Reads [`JournalCursor::render`]'s form back, or a bare time (unix ms:
    /// the entries received at or after it).
    pub fn parse(text: &str) -> Result<(u64, Option<String>), String> {
        let (ms, id) = match text.split_once('/') {
            Some((ms, id)) => (ms, Some(id.to_string())),
            None => (text, None),
        };
        let ms = ms
            .parse::<u64>()
            .map_err(|_| format!("{text:?} is not unix milliseconds (optionally /command-id)"))?;
        Ok((ms, id))
    }
}

impl Store {
    /// Journals a refused command (an accepted one is journaled by its append).
    pub fn journal_refused(&self, entry: &JournalEntry) -> Result<(), StoreError> {
        // After a failed write the store writes nothing more.
        if self.inner.health.failed() {
            return Err(super::writer::failed_error());
        }
        self.inner
            .db
            .insert(
                journal_key(entry.received_at_ms, &entry.command_id),
                encode_entry(entry),
            )
            .map_err(|e| StoreError::storage("journaling a command", e))?;
        Ok(())
    }

    /// Up to `limit` entries of `aggregate_type`, in the order received, from
    /// `since_ms` (after `after_id` at that time, when given), reading at most
    /// `max_scan` entries in all.
    pub fn journal_page(
        &self,
        aggregate_type: &str,
        since_ms: u64,
        after_id: Option<&str>,
        limit: usize,
        max_scan: u64,
    ) -> Result<JournalPage, StoreError> {
        let start = match after_id {
            Some(id) => {
                let mut key = journal_key(since_ms, id);
                key.push(0); // strictly after it
                key
            }
            None => journal_key(since_ms, ""),
        };
        let mut page = JournalPage {
            entries: Vec::new(),
            next: None,
            scanned: 0,
        };
        for item in self.inner.db.range(start..vec![SPACE_JOURNAL + 1]) {
            let (key, value) = item.map_err(|e| StoreError::storage("reading the journal", e))?;
            if page.entries.len() >= limit || page.scanned >= max_scan {
                break;
            }
            page.scanned += 1;
            let entry: JournalEntry = format::decode_v1(&key, &value)?;
            page.next = Some(JournalCursor {
                received_at_ms: entry.received_at_ms,
                command_id: entry.command_id.clone(),
            });
            if entry.aggregate_type == aggregate_type {
                page.entries.push(entry);
            }
        }
        // A page that stopped at the end of the journal has no next one.
        if let Some(cursor) = &page.next {
            let mut after = journal_key(cursor.received_at_ms, &cursor.command_id);
            after.push(0);
            let more = self
                .inner
                .db
                .range(after..vec![SPACE_JOURNAL + 1])
                .next()
                .is_some();
            if !more {
                page.next = None;
            }
        }
        Ok(page)
    }

    /// Deletes the entries received before `before_ms`; returns how many.
    pub fn prune_journal(&self, before_ms: u64) -> Result<u64, StoreError> {
        if self.inner.health.failed() {
            return Err(super::writer::failed_error());
        }
        let end = journal_key(before_ms, "");
        let mut deleted = 0;
        loop {
            let mut batch = sled::Batch::default();
            let mut n = 0;
            for item in self
                .inner
                .db
                .range(vec![SPACE_JOURNAL]..end.clone())
                .take(1024)
            {
                let (key, _) = item.map_err(|e| StoreError::storage("pruning the journal", e))?;
                batch.remove(key);
                n += 1;
            }
            if n == 0 {
                return Ok(deleted);
            }
            self.inner
                .db
                .apply_batch(batch)
                .map_err(|e| StoreError::storage("pruning the journal", e))?;
            deleted += n;
        }
    }
}
