//! Verify: rebuild a projection version into a scratch generation that no
//! reader sees, up to exactly the version's checkpoint, and compare the two
//! sets of documents. A deterministic module rebuilds the same bytes; any
//! difference is reported with the first differing key.
//!
//! The version keeps serving throughout. The scratch replays while the
//! version's runner keeps running, until it is within one batch of the
//! version's checkpoint; only then is the runner stopped (its checkpoint and
//! documents are then still), the scratch catches up to that checkpoint, both
//! are compared, and the runner starts again from its checkpoint. A version
//! that appends keep ahead of the replay is never paused for long: after
//! `MAX_CHASE_ROUNDS` rounds without gaining on it the verify gives up
//! (409 `projection_busy`). A rebuild that hits the wall-clock deadline is
//! no verdict either way (an error, not a divergence). A version
//! stopped at a failing event is not stopped again: its runner waits for an
//! operator, so the comparison holds its commit lock instead and starts over
//! if an operator moved the checkpoint meanwhile.
//!
//! The scratch is deleted however the verify ends (done, failed, cancelled
//! because the client went away or the server is stopping); opening the read
//! model at boot deletes what a crash left. A verify holds the version's
//! operation lock throughout: a verify that finds it held (by another
//! verify, a rebuild or a drop) is refused; a rebuild or drop waits for it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use serde::Serialize;

use super::compare::{self, Comparison};
use super::runner;
use super::scratch::{Scratch, blocking};
use super::{Failure, ProjectionError, ProjectionService, VersionHandle};
use crate::runtime::ProjectionModule;
use crate::store::{BackendReadModel as ReadModel, EventFilter, Position, ProjectionCheckpoint};

/// What a running verify is doing, shown in the version's status.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct VerifyProgress {
    pub phase: VerifyPhase,
    /// The scratch rebuild's checkpoint.
    pub position: Position,
    /// The version's checkpoint it is catching up with.
    pub target: Position,
    pub started_at_ms: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VerifyPhase {
    /// Replaying into the scratch while the version runs.
    Replaying,
    /// The version's runner is stopped; the scratch catches up with its checkpoint.
    Finishing,
    /// Both are still; their documents are being compared.
    Comparing,
}

/// How a verify ended, kept in the version's status until the next one.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct VerifyOutcome {
    pub outcome: VerifyEnd,
    /// The position compared at (for `ok` and `diverged`).
    pub position: Option<Position>,
    /// Why it ended without a finding (for `cancelled` and `error`).
    pub detail: Option<String>,
    pub finished_at_ms: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VerifyEnd {
    /// The rebuild reproduced the documents.
    Ok,
    /// It did not (or failed where the version had not).
    Diverged,
    /// The caller went away or the server stopped first.
    Cancelled,
    /// It could not run to the end (a store error, the selector failed, ...).
    Error,
}

/// A version's verify, as its handle keeps it.
#[derive(Default)]
pub(super) struct VerifyState {
    running: Option<VerifyProgress>,
    last: Option<VerifyOutcome>,
}

impl VersionHandle {
    pub(super) fn verify_progress(&self) -> Option<VerifyProgress> {
        self.verify_state().running.clone()
    }

    pub(super) fn last_verify(&self) -> Option<VerifyOutcome> {
        self.verify_state().last.clone()
    }

    fn verify_state(&self) -> std::sync::MutexGuard<'_, VerifyState> {
        self.verify.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn update_verify_progress(&self, update: impl FnOnce(&mut VerifyProgress)) {
        if let Some(progress) = self.verify_state().running.as_mut() {
            update(progress);
        }
    }

    /// The verify is over: it stops showing as running and its outcome stays.
    fn verify_ended(&self, outcome: VerifyOutcome) {
        let mut state = self.verify_state();
        state.running = None;
        state.last = Some(outcome);
    }
}

/// What a verify found.
#[derive(Clone, Debug, Serialize)]
pub struct VerifyReport {
    pub projection: String,
    pub version: String,
    /// The rebuild reproduced the version's documents exactly.
    pub ok: bool,
    /// The checkpoint both were compared at.
    pub position: Position,
    /// Events the rebuild applied (and skipped, where the version had skipped them).
    pub events_applied: u64,
    pub events_skipped: u64,
    /// Both digests, the counts of differing keys and the first of them; absent
    /// when the rebuild failed before reaching the position.
    #[serde(flatten)]
    pub comparison: Option<Comparison>,
    /// The event at which the rebuild failed although the version had applied it.
    pub failure: Option<Failure>,
    /// How long the version's runner was stopped.
    pub paused_ms: u64,
    pub duration_ms: u64,
}

/// Rounds of chasing a running version's checkpoint before its runner is
/// stopped for the last stretch anyway.
const MAX_CHASE_ROUNDS: usize = 8;

/// How comparing a version stopped at a failing event went.
enum AtFailure {
    Compared(Comparison),
    /// The rebuild failed before it reached the version's checkpoint.
    RebuildFailed,
    /// An operator retried or skipped meanwhile: start over.
    CheckpointMoved,
}

/// Starts the version's runner again when dropped (unless the service is closing).
struct RestartOnDrop<'a> {
    service: &'a ProjectionService,
    handle: &'a Arc<VersionHandle>,
}

impl Drop for RestartOnDrop<'_> {
    fn drop(&mut self) {
        if !self.service.closed.load(Ordering::Acquire) {
            self.service.start_runner(self.handle);
        }
    }
}

/// Sets the flag when dropped: the caller went away, so the verify stops.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

impl ProjectionService {
    /// Rebuilds `name@version` into a scratch generation and compares (see the
    /// module docs). Dropping the future stops the verify and cleans up.
    pub async fn verify(
        self: &Arc<Self>,
        name: &str,
        version: &str,
    ) -> Result<VerifyReport, ProjectionError> {
        let handle = self.handle(name, version)?;
        let cancel = Arc::new(AtomicBool::new(false));
        let _cancel_on_drop = CancelOnDrop(cancel.clone());
        // In a task of its own, so the version's runner is started again even if
        // the caller goes away while it is stopped.
        let service = self.clone();
        tokio::spawn(async move { service.verify_now(&handle, &cancel).await })
            .await
            .map_err(|e| ProjectionError::Internal(format!("the verify task failed: {e}")))?
    }

    async fn verify_now(
        &self,
        handle: &Arc<VersionHandle>,
        cancel: &AtomicBool,
    ) -> Result<VerifyReport, ProjectionError> {
        let Ok(_one_action) = handle.ops.try_lock() else {
            return Err(match handle.verify_progress() {
                Some(progress) => ProjectionError::VerifyInProgress {
                    label: handle.label(),
                    position: progress.position,
                    target: progress.target,
                },
                None => ProjectionError::Busy(handle.label()),
            });
        };
        let started = Instant::now();
        handle.verify_state().running = Some(VerifyProgress {
            phase: VerifyPhase::Replaying,
            position: 0,
            target: handle.status.borrow().position,
            started_at_ms: runner::now_ms(),
        });
        let (store, name, version) = (
            self.store.clone(),
            handle.name().to_string(),
            handle.version().to_string(),
        );
        let scratch = blocking(move || store.scratch_read_model(&name, &version)).await;
        let outcome = match scratch {
            Ok(model) => self.rebuild_and_compare(handle, model, cancel).await,
            Err(err) => Err(err),
        };
        let (store, name, version) = (
            self.store.clone(),
            handle.name().to_string(),
            handle.version().to_string(),
        );
        if let Err(err) = blocking(move || store.delete_scratch_read_model(&name, &version)).await {
            // Unreachable keys; the next open of the read model deletes them.
            tracing::warn!(projection = %handle.label(), "could not delete the verify's scratch: {err}");
        }
        let (scratch, comparison, paused_ms) = match outcome {
            Ok(found) => found,
            Err(err) => {
                let outcome = match err {
                    ProjectionError::VerifyCancelled(_) | ProjectionError::Closed => {
                        VerifyEnd::Cancelled
                    }
                    _ => VerifyEnd::Error,
                };
                tracing::info!(projection = %handle.label(), ?outcome, "verify ended: {err}");
                handle.verify_ended(VerifyOutcome {
                    outcome,
                    position: None,
                    detail: Some(err.to_string()),
                    finished_at_ms: runner::now_ms(),
                });
                return Err(err);
            }
        };
        let report = VerifyReport {
            projection: handle.name().to_string(),
            version: handle.version().to_string(),
            ok: scratch.failure.is_none() && comparison.as_ref().is_some_and(|c| c.identical()),
            position: scratch.checkpoint.position,
            events_applied: scratch.checkpoint.events_applied,
            events_skipped: scratch.checkpoint.events_skipped,
            comparison,
            failure: scratch.failure,
            paused_ms,
            duration_ms: started.elapsed().as_millis() as u64,
        };
        tracing::info!(
            projection = %handle.label(),
            ok = report.ok,
            position = report.position,
            paused_ms = report.paused_ms,
            "verified"
        );
        handle.verify_ended(VerifyOutcome {
            outcome: if report.ok {
                VerifyEnd::Ok
            } else {
                VerifyEnd::Diverged
            },
            position: Some(report.position),
            detail: None,
            finished_at_ms: runner::now_ms(),
        });
        Ok(report)
    }

    /// The scratch rebuild up to the version's checkpoint, and the comparison
    /// (absent when the rebuild failed first), with how long the runner was stopped.
    async fn rebuild_and_compare(
        &self,
        handle: &Arc<VersionHandle>,
        model: ReadModel,
        cancel: &AtomicBool,
    ) -> Result<(Scratch, Option<Comparison>, u64), ProjectionError> {
        let module = handle
            .module
            .projection()
            .expect("projection handles hold projection modules")
            .clone();
        let selector = {
            let module = module.clone();
            self.runtime
                .pool()
                .run(&handle.module.record.name, move || module.selector())
                .await?
        };
        let mut scratch = Scratch {
            model,
            filter: EventFilter {
                event_types: selector.event_types,
                aggregate_types: selector.aggregate_types,
            },
            checkpoint: ProjectionCheckpoint::default(),
            failure: None,
            span: self.config.batch.events,
        };
        let within = self.config.batch.events as u64;
        loop {
            // While the version runs, chase its checkpoint: each round catches up
            // with where it was when the round began, until the scratch is within
            // one batch of it. The version is paused only for that last batch; a
            // version that keeps getting away (appends outpace the replay for
            // MAX_CHASE_ROUNDS rounds in a row) is not paused for longer: the
            // verify gives up and says so.
            let mut stalled = 0;
            loop {
                let target = handle.status.borrow().position;
                let gap = target.saturating_sub(scratch.checkpoint.position);
                if gap <= within {
                    break;
                }
                self.catch_up(
                    handle,
                    &module,
                    &mut scratch,
                    target,
                    VerifyPhase::Replaying,
                    cancel,
                )
                .await?;
                if scratch.failure.is_some() {
                    return Ok((scratch, None, 0));
                }
                let behind = handle
                    .status
                    .borrow()
                    .position
                    .saturating_sub(scratch.checkpoint.position);
                stalled = if behind >= gap { stalled + 1 } else { 0 };
                if stalled >= MAX_CHASE_ROUNDS {
                    return Err(ProjectionError::Busy(format!(
                        "{} advances faster than its rebuild replays ({behind} positions behind after {MAX_CHASE_ROUNDS} rounds); verify again when appends slow down",
                        handle.label()
                    )));
                }
            }
            if handle.status.borrow().failure.is_some() {
                // Its runner waits for an operator: compare under the commit lock.
                match self
                    .compare_failed(handle, &module, &mut scratch, cancel)
                    .await?
                {
                    AtFailure::Compared(comparison) => {
                        return Ok((scratch, Some(comparison), 0));
                    }
                    AtFailure::RebuildFailed => return Ok((scratch, None, 0)),
                    AtFailure::CheckpointMoved => continue,
                }
            }
            // Stop the runner for the last stretch; the guard starts it again
            // however this ends (an error, a cancel, a panic).
            let paused = Instant::now();
            Self::stop_runner(handle).await;
            let restart = RestartOnDrop {
                service: self,
                handle,
            };
            let outcome = self
                .compare_stopped(handle, &module, &mut scratch, cancel)
                .await;
            drop(restart);
            let paused_ms = paused.elapsed().as_millis() as u64;
            return outcome.map(|comparison| (scratch, comparison, paused_ms));
        }
    }

    /// For a version stopped at a failing event: catch the scratch up with its
    /// checkpoint and compare while holding its commit lock (an operator's
    /// skip or retry waits meanwhile).
    async fn compare_failed(
        &self,
        handle: &Arc<VersionHandle>,
        module: &ProjectionModule,
        scratch: &mut Scratch,
        cancel: &AtomicBool,
    ) -> Result<AtFailure, ProjectionError> {
        let Some(target) = self.finish(handle, module, scratch, cancel).await? else {
            return Ok(AtFailure::RebuildFailed);
        };
        let (handle, rebuilt) = (handle.clone(), scratch.model.clone());
        blocking(move || -> Result<_, ProjectionError> {
            let _no_commits = handle.commit_lock.lock().unwrap_or_else(|e| e.into_inner());
            let live = handle.read_model();
            if live.checkpoint()?.position != target {
                return Ok(AtFailure::CheckpointMoved);
            }
            compare::compare(&live, &rebuilt).map(AtFailure::Compared)
        })
        .await
    }

    /// With the version's runner stopped: catch the scratch up with its
    /// checkpoint and compare.
    async fn compare_stopped(
        &self,
        handle: &Arc<VersionHandle>,
        module: &ProjectionModule,
        scratch: &mut Scratch,
        cancel: &AtomicBool,
    ) -> Result<Option<Comparison>, ProjectionError> {
        if self
            .finish(handle, module, scratch, cancel)
            .await?
            .is_none()
        {
            return Ok(None);
        }
        let (live, rebuilt) = (handle.read_model(), scratch.model.clone());
        blocking(move || compare::compare(&live, &rebuilt))
            .await
            .map(Some)
    }

    /// The last stretch: catches the scratch up with the version's checkpoint
    /// and shows the comparison phase. Returns that checkpoint, or `None` when
    /// the rebuild stopped at a failure first.
    async fn finish(
        &self,
        handle: &Arc<VersionHandle>,
        module: &ProjectionModule,
        scratch: &mut Scratch,
        cancel: &AtomicBool,
    ) -> Result<Option<Position>, ProjectionError> {
        let target = handle.read_model().checkpoint()?.position;
        self.catch_up(
            handle,
            module,
            scratch,
            target,
            VerifyPhase::Finishing,
            cancel,
        )
        .await?;
        if scratch.failure.is_some() {
            return Ok(None);
        }
        self.progress(handle, VerifyPhase::Comparing, scratch, target);
        Ok(Some(target))
    }

    pub(super) fn progress(
        &self,
        handle: &VersionHandle,
        phase: VerifyPhase,
        scratch: &Scratch,
        target: Position,
    ) {
        handle.update_verify_progress(|p| {
            p.phase = phase;
            p.position = scratch.checkpoint.position;
            p.target = target;
        });
    }
}
