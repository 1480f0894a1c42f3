//! The determinism audit of one aggregate: replay its stream with every module
//! version that decided commands in it, and compare the state digest each
//! command recorded (`metadata.extra.state_digest` on its last event) with the
//! digest of the state the replay reaches at that version.
//!
//! A module version's replay folds every event of the stream (whoever produced
//! it), in batches that end at each of its own recorded digests, as when it
//! decided with a warm cache. A module whose `apply` depends on anything but
//! its arguments (real time, entropy, batch boundaries) shows up as a digest
//! that differs.
//!
//! Bounded: the stream is read a page at a time (memory does not grow with
//! its length), the audit stops at the version the stream had when it began,
//! at most [`MAX_CONCURRENT_VERIFIES`] audits run at once, and the report
//! lists at most [`MAX_REPORTED_DIVERGENCES`] divergences (it counts all).

use std::sync::Arc;

use super::fold::{APPLY_BATCH, fold};
use super::state::{STATE_DIGEST_KEY, state_digest};
use super::{CommandError, CommandService};
use crate::modules::LoadedModule;
use crate::store::{Direction, RecordedEvent, StreamId, StreamVersion};

/// Audits running at once in one process; more are refused (`too_many_verifies`).
pub const MAX_CONCURRENT_VERIFIES: usize = 2;

/// Divergences listed in a report, the earliest first.
pub const MAX_REPORTED_DIVERGENCES: usize = 100;

/// A recorded state digest that the replay did not reproduce.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DigestMismatch {
    /// The version whose event carries the digest (a command's last event).
    pub version: StreamVersion,
    /// The module version that recorded it, `name@version`.
    pub module: String,
    pub recorded: String,
    pub replayed: String,
    /// How the replay that disagrees was batched.
    pub batching: Batching,
}

/// The two ways a stream is replayed: as its commands applied it (one batch
/// per recorded digest, like a warm cache) and as a cold read does (batches
/// of up to [`APPLY_BATCH`] events). A module whose `apply` depends on how
/// events are batched agrees with one and not the other.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Batching {
    PerCommand,
    AsARead,
}

impl Batching {
    pub fn as_str(self) -> &'static str {
        match self {
            Batching::PerCommand => "per_command",
            Batching::AsARead => "as_a_read",
        }
    }
}

/// What `verify` found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyReport {
    pub stream: StreamId,
    /// The events audited: the stream's version when the audit began.
    pub events: u64,
    /// Recorded digests compared with a replay.
    pub checked: u64,
    /// Recorded digests that could not be compared: their module is not loaded.
    pub unchecked: u64,
    /// Recorded digests the replay did not reproduce.
    pub divergences: u64,
    /// The first divergences in version order, at most [`MAX_REPORTED_DIVERGENCES`].
    pub mismatches: Vec<DigestMismatch>,
    /// Producers whose module version is not loaded, so their digests were not checked.
    pub unavailable_modules: Vec<String>,
}

impl VerifyReport {
    /// Every recorded digest was compared, and at least one was.
    pub fn complete(&self) -> bool {
        self.checked > 0 && self.unchecked == 0
    }

    /// Complete, and no recorded digest differs from its replay. (A stream
    /// with nothing to compare, or whose modules are not all loaded, is not ok.)
    pub fn ok(&self) -> bool {
        self.divergences == 0 && self.complete()
    }

    /// The earliest version whose recorded digest the replay did not reproduce.
    pub fn first_divergence(&self) -> Option<&DigestMismatch> {
        self.mismatches.first()
    }
}

impl CommandService {
    /// The determinism audit of `aggregate_type/aggregate_id` (see the module docs).
    /// An empty stream is `NotFound`.
    pub async fn verify(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
    ) -> Result<VerifyReport, CommandError> {
        let stream = StreamId::new(aggregate_type, aggregate_id)
            .map_err(|e| CommandError::InvalidRequest(e.to_string()))?;
        let _slot = self
            .verifies
            .try_acquire()
            .map_err(|_| CommandError::TooManyVerifies {
                running: MAX_CONCURRENT_VERIFIES,
            })?;
        let end = self.store.stream_version(&stream)?;
        if end == 0 {
            return Err(CommandError::NotFound(format!(
                "aggregate {stream} has no events"
            )));
        }
        let mut report = VerifyReport {
            stream: stream.clone(),
            events: end,
            checked: 0,
            unchecked: 0,
            divergences: 0,
            mismatches: Vec::new(),
            unavailable_modules: Vec::new(),
        };
        for (producer, digests) in self.producers(&stream, end)? {
            let module = producer
                .split_once('@')
                .and_then(|(name, version)| self.modules.get(name, version))
                .filter(|m| m.aggregate().is_some());
            let Some(module) = module else {
                report.unchecked += digests;
                report.unavailable_modules.push(producer);
                continue;
            };
            self.replay_and_compare(&module, &producer, &stream, end, &mut report)
                .await?;
        }
        report.mismatches.sort_by_key(|m| m.version);
        report.mismatches.truncate(MAX_REPORTED_DIVERGENCES);
        Ok(report)
    }

    /// Each module version that recorded digests in the stream up to `end`,
    /// with how many, sorted by label.
    fn producers(
        &self,
        stream: &StreamId,
        end: StreamVersion,
    ) -> Result<Vec<(String, u64)>, CommandError> {
        let mut producers = std::collections::BTreeMap::<String, u64>::new();
        let mut from = 1;
        while let Some(page) = self.next_page(stream, &mut from, end)? {
            for event in &page {
                if let Some(producer) = &event.metadata.producer
                    && event.metadata.extra.contains_key(STATE_DIGEST_KEY)
                {
                    *producers.entry(producer.clone()).or_default() += 1;
                }
            }
        }
        Ok(producers.into_iter().collect())
    }

    /// The next page of `stream` from `from` (at most [`APPLY_BATCH`] events,
    /// none past `end`), moving `from` past it; `None` when there is none.
    fn next_page(
        &self,
        stream: &StreamId,
        from: &mut StreamVersion,
        end: StreamVersion,
    ) -> Result<Option<Vec<RecordedEvent>>, CommandError> {
        if *from > end {
            return Ok(None);
        }
        let want = ((end - *from + 1) as usize).min(APPLY_BATCH);
        let page = self
            .store
            .read_stream(stream, *from, Direction::Forward, want)?;
        let Some(last) = page.last() else {
            return Ok(None);
        };
        *from = last.version + 1;
        Ok(Some(page))
    }

    /// Replays versions 1..=`end` with `module`, applying a batch at each digest
    /// `producer` recorded (and every [`APPLY_BATCH`] events), and compares.
    async fn replay_and_compare(
        &self,
        module: &Arc<LoadedModule>,
        producer: &str,
        stream: &StreamId,
        end: StreamVersion,
        report: &mut VerifyReport,
    ) -> Result<(), CommandError> {
        let initial = Arc::new(self.initial_state(module).await?);
        let mut state = initial.clone();
        let mut batch: Vec<RecordedEvent> = Vec::new();
        let mut reported = 0;
        let mut last_recorded: Option<(StreamVersion, String)> = None;
        let mut from = 1;
        while let Some(page) = self.next_page(stream, &mut from, end)? {
            for event in &page {
                batch.push(event.clone());
                let recorded = event
                    .metadata
                    .extra
                    .get(STATE_DIGEST_KEY)
                    .filter(|_| event.metadata.producer.as_deref() == Some(producer));
                if recorded.is_none() && batch.len() < APPLY_BATCH {
                    continue;
                }
                // The same replay as a read: batches a replay can always afford.
                state = fold(&self.runtime, module, state, &std::mem::take(&mut batch)).await?;
                let Some(recorded) = recorded else { continue };
                report.checked += 1;
                last_recorded = Some((event.version, recorded.clone()));
                let replayed = state_digest(&state);
                if *recorded != replayed {
                    report.divergences += 1;
                    // Versions ascend: the first ones of each producer are the earliest.
                    if reported < MAX_REPORTED_DIVERGENCES {
                        reported += 1;
                        report.mismatches.push(DigestMismatch {
                            version: event.version,
                            module: producer.to_string(),
                            recorded: recorded.clone(),
                            replayed,
                            batching: Batching::PerCommand,
                        });
                    }
                }
            }
        }
        // Then as a cold read folds: pages of the stream, up to the last digest.
        let Some((version, recorded)) = last_recorded else {
            return Ok(());
        };
        let (mut state, mut from) = (initial, 1);
        while let Some(page) = self.next_page(stream, &mut from, version)? {
            state = fold(&self.runtime, module, state, &page).await?;
        }
        let replayed = state_digest(&state);
        if replayed != recorded {
            report.divergences += 1;
            report.mismatches.push(DigestMismatch {
                version,
                module: producer.to_string(),
                recorded,
                replayed,
                batching: Batching::AsARead,
            });
        }
        Ok(())
    }
}
