//! The scratch rebuild of a verify: pages of the log applied to a read model
//! in the scratch generation, chunked like the runner's, never past the
//! position it is told to reach, skipping what the version skipped.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::runner::{self, BatchLimits, Span};
use super::verify::VerifyPhase;
use super::{Failure, ProjectionError, ProjectionService, VersionHandle};
use crate::runtime::{DocumentChanges, ProjectionModule};
use crate::store::{
    BackendReadModel as ReadModel, EventFilter, LogPage, Position, ProjectionCheckpoint,
    RecordedEvent, StoreError,
};

/// The scratch rebuild: its read model, how far it got, why it stopped.
pub(super) struct Scratch {
    pub model: ReadModel,
    pub filter: EventFilter,
    pub checkpoint: ProjectionCheckpoint,
    pub failure: Option<Failure>,
    /// Events per guest call: the configured batch, less after a yield
    /// (see [`runner::JobClock`]).
    pub span: usize,
}

impl ProjectionService {
    /// Advances the scratch to exactly `target` (or to a failure), a page at a
    /// time, showing `phase` in the version's status.
    pub(super) async fn catch_up(
        &self,
        handle: &Arc<VersionHandle>,
        module: &ProjectionModule,
        scratch: &mut Scratch,
        target: Position,
        phase: VerifyPhase,
        cancel: &AtomicBool,
    ) -> Result<(), ProjectionError> {
        while scratch.checkpoint.position < target && scratch.failure.is_none() {
            self.progress(handle, phase, scratch, target);
            self.advance(handle, module, scratch, target, cancel)
                .await?;
        }
        Ok(())
    }

    /// One page of the log into the scratch, never past `target`. Events the
    /// version skipped are skipped here too.
    async fn advance(
        &self,
        handle: &Arc<VersionHandle>,
        module: &ProjectionModule,
        scratch: &mut Scratch,
        target: Position,
        cancel: &AtomicBool,
    ) -> Result<(), ProjectionError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(ProjectionError::Closed);
        }
        if cancel.load(Ordering::Acquire) {
            return Err(ProjectionError::VerifyCancelled(handle.label()));
        }
        let from = scratch.checkpoint.position + 1;
        let (store, filter, limit) = (
            self.store.clone(),
            scratch.filter.clone(),
            self.config.batch.events,
        );
        let live = handle.read_model();
        let (page, skipped) = blocking(
            move || -> Result<(LogPage, HashSet<Position>), StoreError> {
                let page = store.read_all(from, limit, &filter)?;
                let skipped = live.skips()?.into_iter().map(|s| s.position).collect();
                Ok((page, skipped))
            },
        )
        .await?;
        let end = (page.next_position - 1).min(target);
        let (mut apply, mut skip) = (Vec::new(), Vec::new());
        for event in page.events.into_iter().take_while(|e| e.position <= end) {
            if skipped.contains(&event.position) {
                skip.push(event.position);
            } else {
                apply.push(event);
            }
        }
        let (module, model, before, limits, span) = (
            module.clone(),
            scratch.model.clone(),
            scratch.checkpoint,
            self.config.batch,
            scratch.span,
        );
        let (checkpoint, ended, next_span) = self
            .runtime
            .pool()
            .run(&handle.module.record.name, move || {
                replay(&module, &model, before, apply, &skip, end, limits, span)
            })
            .await?;
        scratch.checkpoint = checkpoint;
        scratch.span = next_span;
        let failure = match ended {
            Span::Failed(failure) => Some(failure),
            Span::Done | Span::Yield { .. } => None,
        };
        // Running out of wall-clock time says how busy the host was, not what
        // the module computes: no verdict on determinism can rest on it.
        if let Some(failure) = failure.as_ref().filter(|f| f.code == "guest_timeout") {
            return Err(ProjectionError::Internal(format!(
                "the rebuild hit the wall-clock deadline at position {} (a limit of this host's load, not a divergence); verify again: {}",
                failure.position, failure.message
            )));
        }
        scratch.failure = failure;
        Ok(())
    }
}

/// Applies `events` (the selected, not skipped events up to `end`) to the
/// scratch in calls of at most `span` events like the runner's, committing
/// each with its checkpoint (which counts the `skipped` positions it passes).
/// A chunk that fails is halved like the runner's, down to the event that
/// fails; the job yields like the runner's. Runs on a guest thread.
#[allow(clippy::too_many_arguments)]
fn replay(
    module: &ProjectionModule,
    model: &ReadModel,
    mut checkpoint: ProjectionCheckpoint,
    events: Vec<RecordedEvent>,
    skipped: &[Position],
    end: Position,
    limits: BatchLimits,
    span: usize,
) -> Result<(ProjectionCheckpoint, Span, usize), StoreError> {
    let mut clock = runner::JobClock::start(module.deadline());
    let mut rest = events.as_slice();
    while !rest.is_empty() {
        let chunk = runner::take_chunk(rest, span, limits.bytes);
        rest = &rest[chunk.len()..];
        let chunk_end = rest.first().map_or(end, |e| e.position - 1);
        let mut commit_span =
            |changes: &DocumentChanges, end: Position, applied: &[RecordedEvent]| {
                commit(model, &mut checkpoint, skipped, changes, end, applied)
            };
        match runner::apply_span(
            module,
            model,
            chunk,
            chunk_end,
            &mut clock,
            &mut commit_span,
        )? {
            Span::Done => {}
            ended => {
                let next = clock.next_span(span, &ended, limits.events);
                return Ok((checkpoint, ended, next));
            }
        }
    }
    if checkpoint.position < end {
        commit(
            model,
            &mut checkpoint,
            skipped,
            &DocumentChanges::new(),
            end,
            &[],
        )?;
    }
    let next = clock.next_span(span, &Span::Done, limits.events);
    Ok((checkpoint, Span::Done, next))
}

fn commit(
    model: &ReadModel,
    checkpoint: &mut ProjectionCheckpoint,
    skipped: &[Position],
    changes: &DocumentChanges,
    position: Position,
    applied: &[RecordedEvent],
) -> Result<(), StoreError> {
    let passed = skipped
        .iter()
        .filter(|&&p| p > checkpoint.position && p <= position)
        .count() as u64;
    let next = ProjectionCheckpoint {
        position,
        events_applied: checkpoint.events_applied + applied.len() as u64,
        events_skipped: checkpoint.events_skipped + passed,
    };
    model.commit(changes, &next, None, applied)?;
    *checkpoint = next;
    Ok(())
}

/// Store work off the async threads.
pub(super) async fn blocking<T, E>(
    f: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, ProjectionError>
where
    T: Send + 'static,
    E: Into<ProjectionError> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ProjectionError::Internal(format!("the verify task failed: {e}")))?
        .map_err(Into::into)
}
