//! The replay check of a candidate aggregate version: fold every stream of
//! its type (or a sample of ids) from its first event with the candidate's
//! `apply`, name the streams it cannot fold (decode errors, traps, fuel), and
//! say for each stream whether the state it reaches differs from the active
//! version's. It runs in the background, one `apply` batch at a time on the
//! guest pool (commands of the same type take turns with it), writes nothing
//! to the log, and records its verdict in the catalog, which `activate`
//! consults (`ModuleRegistry::require_check`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::sync::watch;

use super::{APPLY_BATCH, CommandError, CommandService, state_digest};
use crate::modules::LoadedModule;
use crate::store::{CheckRecord, Direction, ModuleKind, StreamId, StreamVersion};

/// Samples kept of failing streams, and of streams whose state differs.
pub const CHECK_SAMPLES: usize = 20;
/// The most aggregate ids a sampled check may name.
pub const MAX_CHECK_SAMPLE: usize = 1000;
/// Checks running at once, over every module.
pub const MAX_RUNNING_CHECKS: usize = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckState {
    Running,
    Passed,
    Failed,
}

/// A stream the candidate could not fold.
#[derive(Clone, Debug, Serialize)]
pub struct CheckFailure {
    pub aggregate_id: String,
    /// The stream versions of the batch whose `apply` failed: the failing
    /// event is one of them (`from_version..=to_version`).
    pub from_version: StreamVersion,
    pub to_version: StreamVersion,
    /// A stable name for why: `guest_failed`, `guest_trapped`,
    /// `fuel_exhausted`, `deadline_exceeded`, `memory_exhausted`, ...
    pub kind: String,
    pub error: String,
}

/// A stream the candidate folds to another state than the active version.
#[derive(Clone, Debug, Serialize)]
pub struct CheckDifference {
    pub aggregate_id: String,
    pub version: StreamVersion,
    pub candidate_digest: String,
    pub active_digest: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct CheckStatus {
    pub module: String,
    pub version: String,
    /// The candidate's digest: a check counts only for these bytes.
    pub digest: String,
    pub state: CheckState,
    /// The version whose states it was compared with (`name@version`), if any.
    pub compared_with: Option<String>,
    pub sampled: bool,
    pub streams_total: u64,
    pub streams_checked: u64,
    pub streams_failed: u64,
    pub streams_differing: u64,
    pub events_folded: u64,
    pub started_at_ms: u64,
    pub finished_at_ms: Option<u64>,
    pub failures: Vec<CheckFailure>,
    pub differences: Vec<CheckDifference>,
    /// Set when the check itself could not go on (the store failed, the
    /// host stopped): it then failed without judging the candidate.
    pub error: Option<String>,
}

/// The checks this server ran or runs, by `(name, version)`.
#[derive(Default)]
pub(super) struct Checks {
    by_version: Mutex<HashMap<(String, String), watch::Sender<CheckStatus>>>,
}

impl CommandService {
    /// Starts the replay check of `name@version` in the background (over
    /// `sample` ids only, when given), or returns the one already running.
    pub async fn start_check(
        self: &Arc<Self>,
        name: &str,
        version: &str,
        sample: Option<Vec<String>>,
    ) -> Result<CheckStatus, CommandError> {
        let candidate =
            self.modules.ready(name, version).await?.ok_or_else(|| {
                CommandError::NotFound(format!("no module version {name}@{version}"))
            })?;
        if candidate.record.kind != ModuleKind::Aggregate {
            return Err(CommandError::InvalidRequest(format!(
                "{name}@{version} is a {}; the replay check folds an aggregate's streams (a projection version replays beside the live one)",
                candidate.record.kind.as_str()
            )));
        }
        let sample = match sample {
            None => None,
            Some(ids) if ids.is_empty() || ids.len() > MAX_CHECK_SAMPLE => {
                return Err(CommandError::InvalidRequest(format!(
                    "a sample names 1 to {MAX_CHECK_SAMPLE} aggregate ids, not {}",
                    ids.len()
                )));
            }
            // Each id once: a repeated id would fold its stream again.
            Some(ids) => Some(
                ids.iter()
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .map(|id| StreamId::new(name, id.as_str()))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| CommandError::InvalidRequest(e.to_string()))?,
            ),
        };
        let key = (name.to_string(), version.to_string());
        let status = {
            let mut checks = self
                .checks
                .by_version
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if let Some(running) = checks.get(&key)
                && running.borrow().state == CheckState::Running
            {
                return Ok(running.borrow().clone());
            }
            let running = checks
                .values()
                .filter(|s| s.borrow().state == CheckState::Running)
                .count();
            if running >= MAX_RUNNING_CHECKS {
                return Err(CommandError::TooManyVerifies { running });
            }
            let status = CheckStatus {
                module: name.to_string(),
                version: version.to_string(),
                digest: crate::hex::hex(&candidate.record.digest),
                state: CheckState::Running,
                compared_with: self
                    .modules
                    .active(name)
                    .filter(|a| a.record.version != version)
                    .map(|a| a.label()),
                sampled: sample.is_some(),
                streams_total: 0,
                streams_checked: 0,
                streams_failed: 0,
                streams_differing: 0,
                events_folded: 0,
                started_at_ms: crate::clock::now_ms(),
                finished_at_ms: None,
                failures: Vec::new(),
                differences: Vec::new(),
                error: None,
            };
            checks.insert(key, watch::Sender::new(status.clone()));
            status
        };
        let service = self.clone();
        let stable_at_start = self.modules.active_version(name);
        tokio::spawn(async move {
            let key = (
                candidate.record.name.clone(),
                candidate.record.version.clone(),
            );
            let progress = service.check_sender(&key);
            let result = service.run_check(&candidate, sample, &progress).await;
            progress.send_modify(|s| {
                if let Err(e) = &result {
                    s.error = Some(e.to_string());
                }
                s.state = if s.error.is_none() && s.streams_failed == 0 {
                    CheckState::Passed
                } else {
                    CheckState::Failed
                };
                s.finished_at_ms = Some(crate::clock::now_ms());
            });
            let done = progress.borrow().clone();
            let record = CheckRecord {
                digest: candidate.record.digest,
                passed: done.state == CheckState::Passed,
                streams: done.streams_checked,
                failed: done.streams_failed,
                differing: done.streams_differing,
                sampled: done.sampled,
                finished_at_ms: done.finished_at_ms.unwrap_or_default(),
                stable: stable_at_start,
            };
            if let Err(e) = service.store.set_check_record(&key.0, &key.1, &record) {
                tracing::error!(module = %candidate.label(), error = %e, "could not record a replay check");
            }
            tracing::info!(module = %candidate.label(), state = ?done.state, streams = done.streams_checked, failed = done.streams_failed, differing = done.streams_differing, "replay check finished");
        });
        Ok(status)
    }

    fn check_sender(&self, key: &(String, String)) -> watch::Sender<CheckStatus> {
        self.checks
            .by_version
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned()
            .expect("a check is registered before it starts")
    }

    /// The latest check of `name@version`: the one running or finished since
    /// the server started, else the verdict recorded before.
    pub fn check_status(&self, name: &str, version: &str) -> Result<CheckStatus, CommandError> {
        let key = (name.to_string(), version.to_string());
        if let Some(status) = self
            .checks
            .by_version
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return Ok(status.borrow().clone());
        }
        let record = self
            .store
            .check_record(name, version)?
            .ok_or_else(|| CommandError::NotFound(format!("{name}@{version} was never checked")))?;
        Ok(CheckStatus {
            module: name.to_string(),
            version: version.to_string(),
            digest: crate::hex::hex(&record.digest),
            state: if record.passed {
                CheckState::Passed
            } else {
                CheckState::Failed
            },
            compared_with: None,
            sampled: record.sampled,
            streams_total: record.streams,
            streams_checked: record.streams,
            streams_failed: record.failed,
            streams_differing: record.differing,
            events_folded: 0,
            started_at_ms: record.finished_at_ms,
            finished_at_ms: Some(record.finished_at_ms),
            failures: Vec::new(),
            differences: Vec::new(),
            error: None,
        })
    }

    async fn run_check(
        &self,
        candidate: &Arc<LoadedModule>,
        sample: Option<Vec<StreamId>>,
        progress: &watch::Sender<CheckStatus>,
    ) -> Result<(), CommandError> {
        let name = &candidate.record.name;
        let streams = match sample {
            Some(streams) => streams,
            None => {
                let mut all = Vec::new();
                let mut after: Option<String> = None;
                loop {
                    let page = self.store.stream_ids(name, after.as_deref(), 1000)?;
                    let Some(last) = page.last().cloned() else {
                        break;
                    };
                    for id in page {
                        all.push(StreamId::from_parts_unchecked(name.clone(), id));
                    }
                    after = Some(last);
                }
                all
            }
        };
        progress.send_modify(|s| s.streams_total = streams.len() as u64);
        let active = self
            .modules
            .active(name)
            .filter(|a| a.record.version != candidate.record.version);
        let initial = Arc::new(self.initial_state(candidate).await?);
        for stream in streams {
            let end = self.store.stream_version(&stream)?;
            let outcome = self
                .fold_for_check(candidate, &stream, end, initial.clone())
                .await;
            let difference = match (&outcome, &active) {
                // Best effort: an active version that cannot fold the
                // stream (a broken one being repaired) is a difference, not
                // a reason to stop checking the candidate.
                (Ok((state, _)), Some(active)) if end > 0 => {
                    let mine = state_digest(state);
                    let theirs = match self.state_at(active, &stream, end).await {
                        Ok(theirs) => state_digest(&theirs.bytes),
                        Err(e) => format!("({} cannot fold it: {e})", active.label()),
                    };
                    (mine != theirs).then(|| CheckDifference {
                        aggregate_id: stream.aggregate_id().to_string(),
                        version: end,
                        candidate_digest: mine,
                        active_digest: theirs,
                    })
                }
                _ => None,
            };
            progress.send_modify(|s| {
                s.streams_checked += 1;
                match outcome {
                    Ok((_, events)) => s.events_folded += events,
                    Err(failure) => {
                        s.streams_failed += 1;
                        if s.failures.len() < CHECK_SAMPLES {
                            s.failures.push(failure);
                        }
                    }
                }
                if let Some(difference) = difference {
                    s.streams_differing += 1;
                    if s.differences.len() < CHECK_SAMPLES {
                        s.differences.push(difference);
                    }
                }
            });
        }
        Ok(())
    }

    /// Folds `stream` up to `end` with the candidate, one batch per guest
    /// call; the state, and how many events it folded, or where it failed.
    async fn fold_for_check(
        &self,
        candidate: &Arc<LoadedModule>,
        stream: &StreamId,
        end: StreamVersion,
        mut state: Arc<Vec<u8>>,
    ) -> Result<(Arc<Vec<u8>>, u64), CheckFailure> {
        let mut version = 0;
        let failure = |from, to, kind: &str, error: String| CheckFailure {
            aggregate_id: stream.aggregate_id().to_string(),
            from_version: from,
            to_version: to,
            kind: kind.to_string(),
            error,
        };
        while version < end {
            let want = ((end - version) as usize).min(APPLY_BATCH);
            let events = self
                .store
                .read_stream(stream, version + 1, Direction::Forward, want)
                .map_err(|e| failure(version + 1, end, "store_failed", e.to_string()))?;
            let Some(last) = events.last().map(|e| e.version) else {
                break;
            };
            state = super::fold::fold(&self.runtime, candidate, state, &events)
                .await
                .map_err(|e| failure(version + 1, last, e.code(), e.to_string()))?;
            version = last;
        }
        Ok((state, version))
    }
}
