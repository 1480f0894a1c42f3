//! One task per projection version: read the log from the checkpoint in
//! batches, apply each batch in the guest, commit its document writes with the
//! new checkpoint in one atomic batch; once caught up, wait for the durable
//! head to move. A guest failure stops the version at the failing event until
//! an operator retries or skips it.
//!
//! The runner reads the log with the same pull cursor discipline as
//! subscriptions (positions below the durable head, in order), so live appends
//! during a catch-up are neither missed nor applied twice: the checkpoint is
//! the only cursor, and it moves exactly over what was committed.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};

use super::tenure::{STANDBY_POLL, Tenure};
use super::{Failure, ReplayStats, RunState, VersionHandle};
use crate::runtime::{
    DocumentChanges, DocumentSource, GuestError, GuestRecordedEvent, ProjectionModule,
};
use crate::store::{
    Backend, BackendReadModel as ReadModel, EventFilter, LogPage, Position, ProjectionCheckpoint,
    RecordedEvent, SkipRecord, StoreError,
};

/// What an operator asks a stopped version to do.
pub enum Control {
    /// Run the failing event again.
    Retry,
    /// Pass over the event at this position (it must be the failing one).
    Skip {
        position: Position,
        reply: oneshot::Sender<Result<(), String>>,
    },
}

/// How a runner batches its work.
#[derive(Clone, Copy, Debug)]
pub struct BatchLimits {
    /// Events per guest call.
    pub events: usize,
    /// Bytes of event data per guest call: the guest copies them into its memory.
    pub bytes: usize,
}

pub(super) struct Runner {
    pub handle: Arc<VersionHandle>,
    pub store: Backend,
    pub pool: Arc<crate::runtime::Runtime>,
    pub limits: BatchLimits,
    pub stop: watch::Receiver<bool>,
    pub control: mpsc::Receiver<Control>,
    /// Called when the version first catches up; may make it live.
    pub on_caught_up: Box<dyn Fn(&VersionHandle) + Send + Sync>,
    /// PostgreSQL: the version's lease, which this runner must hold to apply
    /// events (`tenure`); None on sled.
    pub tenure: Option<Tenure>,
}

impl Runner {
    pub async fn run(mut self) {
        self.run_until_stopped().await;
        if let Some(tenure) = &mut self.tenure {
            tenure.release().await;
        }
    }

    async fn run_until_stopped(&mut self) {
        let module = self
            .handle
            .module
            .projection()
            .expect("runners are started for projection modules only")
            .clone();
        let filter = loop {
            let selector = {
                let module = module.clone();
                self.pool
                    .pool()
                    .run(&self.handle.module.record.name, move || module.selector())
                    .await
            };
            match selector {
                Ok(s) => {
                    self.handle.status.send_modify(|s| {
                        s.failure = None;
                        s.retrying = None;
                    });
                    break EventFilter {
                        event_types: s.event_types,
                        aggregate_types: s.aggregate_types,
                    };
                }
                Err(err) => {
                    // Without a selector nothing can run: stopped before any event,
                    // until a retry asks the guest again.
                    let position = self.handle.status.borrow().position;
                    self.fail(Failure::from_guest(position + 1, None, &err));
                    loop {
                        tokio::select! {
                            changed = self.stop.changed() => if changed.is_err() || *self.stop.borrow() { return },
                            control = self.control.recv() => match control {
                                Some(Control::Retry) => break,
                                Some(Control::Skip { reply, .. }) => {
                                    let _ = reply.send(Err("the projection failed before any event (asking which events it wants); fix the module or retry".into()));
                                }
                                None => return,
                            },
                        }
                    }
                }
            }
        };
        let mut rate = Rate::default();
        // The catch-up in progress: when and where it started.
        let mut replay: Option<(std::time::Instant, Position)> = None;
        let mut caught_up_once = false;
        // Events per guest call: the configured batch, less after a yield.
        let mut span = self.limits.events;
        let mut head_rx = self.store.watch_head();
        let mut prefetched: Option<(
            Position,
            tokio::task::JoinHandle<Result<LogPage, StoreError>>,
        )> = None;
        loop {
            if *self.stop.borrow() {
                return;
            }
            if self.tenure.as_ref().is_some_and(|t| t.lease().is_none()) {
                if !self.stand_by().await {
                    return;
                }
                // Held now: what this host read ahead may be another holder's past.
                prefetched = None;
                replay = None;
                continue;
            }
            let failure = self.handle.status.borrow().failure.clone();
            if let Some(failure) = failure {
                // Time spent failed is not replay time: a retry starts a new one.
                replay = None;
                let retry_in = auto_retry_in(&failure);
                tokio::select! {
                    changed = self.stop.changed() => if changed.is_err() { return },
                    control = self.control.recv() => match control {
                        Some(control) => self.on_control(control).await,
                        None => return,
                    },
                    () = sleep_or_never(retry_in) => self.on_control(Control::Retry).await,
                    () = lease_lost(&mut self.tenure) => self.lose_lease(),
                }
                continue;
            }
            let head = *head_rx.borrow_and_update();
            let position = self.handle.status.borrow().position;
            if position >= head {
                // Live first, then say so: whoever sees the state sees the pointer.
                (self.on_caught_up)(&self.handle);
                // The runner's first catch-up is its replay; a later one counts
                // when it spans more than a batch (following appends a batch at
                // a time is not a replay).
                let finished = replay
                    .take()
                    .filter(|&(_, from)| {
                        !caught_up_once || position - from > self.limits.events as u64
                    })
                    .map(|(started, from)| {
                        let seconds = started.elapsed().as_secs_f64();
                        ReplayStats {
                            from_position: from,
                            to_position: position,
                            seconds,
                            events_per_second: (position - from) as f64 / seconds.max(1e-9),
                            caught_up_at_ms: now_ms(),
                        }
                    });
                self.handle.status.send_modify(|s| {
                    s.state = RunState::CaughtUp;
                    // The rate is a catch-up rate: waiting, nothing moves.
                    s.events_per_second = 0.0;
                    if finished.is_some() {
                        s.last_replay = finished;
                    }
                });
                caught_up_once = true;
                tokio::select! {
                    changed = self.stop.changed() => if changed.is_err() { return },
                    changed = head_rx.changed() => if changed.is_err() { return },
                    control = self.control.recv() => match control {
                        Some(control) => self.on_control(control).await,
                        None => return,
                    },
                    () = lease_lost(&mut self.tenure) => self.lose_lease(),
                    // PostgreSQL: a rebuild on another host starts a new generation;
                    // the holder takes it over (from the start) within a poll.
                    () = tokio::time::sleep(STANDBY_POLL), if self.tenure.is_some() => {
                        if self.generation_moved() {
                            tracing::info!(projection = %self.handle.label(), "rebuilt on another host; starting over");
                            self.lose_lease();
                        }
                    }
                }
                continue;
            }
            replay.get_or_insert((std::time::Instant::now(), position));
            self.handle
                .status
                .send_modify(|s| s.state = RunState::CatchingUp);
            // The page for this batch: the one read ahead during the last batch if
            // it starts where this one must, else a fresh read.
            let page = match prefetched.take() {
                Some((from, read)) if from == position + 1 => read
                    .await
                    .unwrap_or_else(|e| Err(StoreError::storage("reading the log ahead", e))),
                _ => self.read_page(position + 1, &filter).await,
            };
            let page = match page {
                Ok(page) => page,
                Err(err) => {
                    self.fail(Failure::from_store(position + 1, &err));
                    continue;
                }
            };
            // Read the next page while the guest works on this one: reads and guest
            // calls overlap. Used only if this batch ends exactly where it starts.
            if page.next_position <= page.head {
                let (store, filter, from, limit) = (
                    self.store.clone(),
                    filter.clone(),
                    page.next_position,
                    self.limits.events,
                );
                prefetched = Some((
                    from,
                    tokio::spawn(async move { store.read_all_async(from, limit, &filter).await }),
                ));
            }
            let step = {
                let handle = self.handle.clone();
                let (module, limits) = (module.clone(), self.limits);
                self.pool
                    .pool()
                    .run(&self.handle.module.record.name, move || {
                        // A panic in host code must stop this version visibly, not
                        // end its runner silently.
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            step(&handle, &module, page, limits, span)
                        }))
                        .unwrap_or_else(|_| {
                            Err(StoreError::Unavailable(
                                "the projection batch panicked in the host; see the log".into(),
                            ))
                        })
                    })
                    .await
            };
            let failure = match step {
                // Another host runs this version now; this batch wrote nothing.
                Err(StoreError::LeaseLost(reason)) => {
                    tracing::warn!(projection = %self.handle.label(), "{reason}");
                    self.lose_lease();
                    continue;
                }
                Ok((ended, next_span)) => {
                    span = next_span;
                    match ended {
                        Span::Failed(failure) => Some(failure),
                        Span::Done | Span::Yield { .. } => None,
                    }
                }
                // The batch may have committed part of the page: the failure is
                // just after what is committed, never before it.
                Err(err) => Some(Failure::from_store(
                    self.handle.status.borrow().position + 1,
                    &err,
                )),
            };
            let position = self.handle.status.borrow().position;
            self.handle
                .status
                .send_modify(|s| s.events_per_second = rate.record(position));
            if let Some(failure) = failure {
                self.fail(failure);
            }
        }
    }

    /// PostgreSQL, without the version's lease: shows the holder's progress
    /// and tries to take the lease every [`STANDBY_POLL`]. True once it holds
    /// it, having adopted the read model's checkpoint as the holder left it;
    /// false when the runner is to stop.
    async fn stand_by(&mut self) -> bool {
        loop {
            let Some(tenure) = self.tenure.as_mut() else {
                return true;
            };
            match tenure.try_take().await {
                Ok(Some(lease)) => {
                    let lease = lease.clone();
                    match self.adopt(Some(lease)) {
                        Ok(()) => return true,
                        Err(e) => {
                            tracing::warn!(projection = %self.handle.label(), error = %e, "took the lease but cannot read the read model; standing by");
                            if let Some(t) = self.tenure.as_mut() {
                                t.lost();
                            }
                        }
                    }
                }
                Ok(None) => match self.adopt(None) {
                    // An upload on this host asked for the version to go live
                    // once caught up, and another host runs it: the holder's
                    // checkpoint, just read, says when.
                    Ok(())
                        if self.handle.promotion_asked()
                            && self.handle.status.borrow().position >= self.store.head() =>
                    {
                        (self.on_caught_up)(&self.handle)
                    }
                    Ok(()) => {}
                    Err(e) => {
                        tracing::warn!(projection = %self.handle.label(), error = %e, "cannot read the holder's checkpoint");
                    }
                },
                Err(e) => {
                    tracing::warn!(projection = %self.handle.label(), error = %e, "cannot take the projection lease")
                }
            }
            tokio::select! {
                changed = self.stop.changed() => if changed.is_err() || *self.stop.borrow() { return false },
                control = self.control.recv() => match control {
                    Some(Control::Retry) => {}
                    Some(Control::Skip { reply, .. }) => {
                        let _ = reply.send(Err("another host runs this projection version now; a skip must go to it".into()));
                    }
                    None => return false,
                },
                () = tokio::time::sleep(STANDBY_POLL) => {}
            }
        }
    }

    /// Reads the version's read model as the database has it (its current
    /// generation and checkpoint) into this host's handle; with `lease`,
    /// fences its commits under it from that checkpoint.
    fn adopt(&self, lease: Option<crate::store::Lease>) -> Result<(), StoreError> {
        let handle = &self.handle;
        // A standby whose read model is still the current generation only
        // reads the holder's checkpoint: no lock, no write, every second.
        let open = handle.read_model();
        let model = if lease.is_none()
            && open.generation().is_some()
            && self
                .store
                .current_generation(handle.name(), handle.version())?
                == open.generation()
        {
            open
        } else {
            // A version dropped on another host is not brought back (its
            // runner here stops once the registry hears of the drop).
            self.store
                .registered_read_model(handle.name(), handle.version())?
                .ok_or_else(|| StoreError::Unavailable(format!("{} was dropped", handle.label())))?
        };
        let checkpoint = model.checkpoint()?;
        let _no_commits = handle.commit_lock.lock().unwrap_or_else(|e| e.into_inner());
        let holding = lease.is_some();
        model.fence(lease.map(|lease| (lease, checkpoint.position)));
        *handle.read_model.write().unwrap_or_else(|e| e.into_inner()) = model;
        handle.status.send_modify(|s| {
            s.position = checkpoint.position;
            s.events_applied = checkpoint.events_applied;
            s.events_skipped = checkpoint.events_skipped;
            if holding {
                s.state = RunState::CatchingUp;
            } else {
                // The holder's failure is the holder's to report.
                s.state = RunState::Standby;
                s.failure = None;
                s.retrying = None;
                s.events_per_second = 0.0;
            }
        });
        Ok(())
    }

    /// Whether the read model's current generation is no longer the one this
    /// runner writes (a rebuild elsewhere).
    fn generation_moved(&self) -> bool {
        let ours = self.handle.read_model().generation();
        match self
            .store
            .current_generation(self.handle.name(), self.handle.version())
        {
            Ok(current) => ours.is_some() && current != ours,
            Err(_) => false,
        }
    }

    fn lose_lease(&mut self) {
        self.handle.read_model().fence(None);
        if let Some(tenure) = self.tenure.as_mut() {
            tenure.lost();
        }
        self.handle
            .status
            .send_modify(|s| s.state = RunState::Standby);
    }

    async fn read_page(&self, from: Position, filter: &EventFilter) -> Result<LogPage, StoreError> {
        self.store
            .read_all_async(from, self.limits.events, filter)
            .await
    }

    fn fail(&self, failure: Failure) {
        tracing::error!(
            projection = %self.handle.label(),
            position = failure.position,
            code = failure.code,
            "projection stopped: {}",
            failure.message
        );
        self.handle.status.send_modify(|s| {
            let attempts = s
                .failure
                .as_ref()
                .or(s.retrying.as_ref())
                .filter(|f| f.position == failure.position)
                .map_or(0, |f| f.attempts);
            s.state = RunState::Failed;
            s.retrying = None;
            s.failure = Some(Failure {
                attempts: attempts + 1,
                ..failure
            });
        });
    }

    async fn on_control(&mut self, control: Control) {
        match control {
            Control::Retry => {
                let failure = self.handle.status.borrow().failure.clone();
                if let Some(failure) = failure {
                    tracing::info!(projection = %self.handle.label(), position = failure.position, "retrying");
                    // Keep the failure's attempt count until the next outcome replaces it.
                    self.handle.status.send_modify(|s| {
                        s.state = RunState::CatchingUp;
                        s.retrying = s.failure.take();
                    });
                }
            }
            Control::Skip { position, reply } => {
                let result = self.skip(position).await;
                let _ = reply.send(result);
            }
        }
    }

    async fn skip(&mut self, position: Position) -> Result<(), String> {
        let failure = self.handle.status.borrow().failure.clone();
        let Some(failure) = failure else {
            return Err(
                "the projection has not failed; only a failing event can be skipped".into(),
            );
        };
        if failure.position != position {
            return Err(format!(
                "the projection is stopped at position {}, not {position}",
                failure.position
            ));
        }
        let handle = self.handle.clone();
        let store = self.store.clone();
        let reason = failure.message.clone();
        let committed = self
            .pool
            .pool()
            .run(
                &self.handle.module.record.name,
                move || -> Result<ProjectionCheckpoint, StoreError> {
                    let event = store.read_event(position)?;
                    let _committing = handle.commit_lock.lock().unwrap_or_else(|e| e.into_inner());
                    let model = handle.read_model();
                    let before = model.checkpoint()?;
                    if position <= before.position {
                        return Err(StoreError::InvalidStream(format!(
                            "position {position} is already processed (checkpoint {})",
                            before.position
                        )));
                    }
                    let record = SkipRecord {
                        position,
                        event_id: event
                            .as_ref()
                            .map(|e| e.event_id.to_string())
                            .unwrap_or_default(),
                        event_type: event
                            .as_ref()
                            .map(|e| e.event_type.clone())
                            .unwrap_or_default(),
                        stream: event
                            .as_ref()
                            .map(|e| e.stream.to_string())
                            .unwrap_or_default(),
                        reason,
                        skipped_at_ms: now_ms(),
                    };
                    let checkpoint = ProjectionCheckpoint {
                        position,
                        events_skipped: before.events_skipped + 1,
                        ..before
                    };
                    model.commit(&DocumentChanges::new(), &checkpoint, Some(&record), &[])?;
                    Ok(checkpoint)
                },
            )
            .await
            .map_err(|e| e.to_string())?;
        tracing::warn!(projection = %self.handle.label(), position, "skipped a failing event");
        self.handle.status.send_modify(|s| {
            s.position = committed.position;
            s.events_applied = committed.events_applied;
            s.events_skipped = committed.events_skipped;
            s.failure = None;
            s.retrying = None;
            s.state = RunState::CatchingUp;
        });
        Ok(())
    }
}

/// One batch: apply a page of the log that starts just after the checkpoint,
/// in calls of at most `span` events, and commit. Runs on a guest thread, as
/// one job of the pool. Returns how it ended (done, a failure: the checkpoint
/// covers everything before the failing event, or a yield) and the span the
/// next batch should use.
fn step(
    handle: &VersionHandle,
    module: &ProjectionModule,
    page: LogPage,
    limits: BatchLimits,
    span: usize,
) -> Result<(Span, usize), StoreError> {
    let model = handle.read_model();
    let start = handle.status.borrow().position;
    let mut clock = JobClock::start(module.deadline());
    let mut done = start;
    let mut events = page.events.as_slice();
    while !events.is_empty() {
        let chunk = take_chunk(events, span, limits.bytes);
        events = &events[chunk.len()..];
        // The chunk ends just before the next selected event (or at the page's end).
        let end = events
            .first()
            .map_or(page.next_position - 1, |e| e.position - 1);
        let mut commit_span =
            |changes: &DocumentChanges, end: Position, applied: &[RecordedEvent]| {
                commit(handle, &model, changes, end, applied)
            };
        match apply_span(module, &model, chunk, end, &mut clock, &mut commit_span)? {
            Span::Done => done = end,
            other => {
                let next = clock.next_span(span, &other, limits.events);
                return Ok((other, next));
            }
        }
    }
    if done < page.next_position - 1 {
        // Nothing selected in the rest of the page: move the checkpoint over it.
        commit(
            handle,
            &model,
            &DocumentChanges::new(),
            page.next_position - 1,
            &[],
        )?;
    }
    let next = clock.next_span(span, &Span::Done, limits.events);
    Ok((Span::Done, next))
}

/// Automatic retries of a failure that says how busy the host was, not what
/// the module computes (`guest_timeout`): after 1 s, doubling to at most
/// [`AUTO_RETRY_MAX_DELAY`], for this many attempts in all; then the version
/// waits for an operator's retry or skip like any other failure.
pub const AUTO_RETRY_ATTEMPTS: u32 = 8;
pub const AUTO_RETRY_MAX_DELAY: Duration = Duration::from_secs(60);

/// When `failure` is retried without an operator, if it is.
fn auto_retry_in(failure: &Failure) -> Option<Duration> {
    // Both say how the host or its database was doing, not what the module computes.
    let transient = matches!(failure.code, "guest_timeout" | "store_unavailable");
    if !transient || failure.attempts >= AUTO_RETRY_ATTEMPTS {
        return None;
    }
    let delay = Duration::from_secs(1 << (failure.attempts.saturating_sub(1)).min(6))
        .min(AUTO_RETRY_MAX_DELAY);
    let waited = Duration::from_millis(crate::clock::now_ms().saturating_sub(failure.failed_at_ms));
    Some(delay.saturating_sub(waited))
}

/// Ends when the runner's lease is found lost; never without one.
async fn lease_lost(tenure: &mut Option<Tenure>) {
    match tenure {
        Some(tenure) => tenure.until_lost().await,
        None => std::future::pending().await,
    }
}

async fn sleep_or_never(after: Option<Duration>) {
    match after {
        Some(after) => tokio::time::sleep(after).await,
        None => std::future::pending().await,
    }
}

/// How a span of events ended.
#[derive(Debug)]
pub(super) enum Span {
    /// Applied and committed.
    Done,
    /// Committed up to just before this failing event.
    Failed(Failure),
    /// The job used its time: committed up to just before the events it did
    /// not get to. After a failed call, `shrink_to` is the span it was about
    /// to try, which the next job starts with; after calls that all
    /// succeeded, `None`.
    Yield { shrink_to: Option<usize> },
}

/// One guest-pool job's time. The pool counts on a job ending about when a
/// guest call would; a batch of slow events, halved after a timeout, could
/// otherwise hold its thread for minutes. Once a job has run a call's
/// deadline it makes no further call: it commits what it has and yields, and
/// the next batch starts (as a new job, behind other modules' work) from the
/// checkpoint with the span it was about to try. A call that timed out ends
/// the job's time at once (the epoch deadline can fire a tick before the
/// budget has passed by the clock).
pub(super) struct JobClock {
    started: Instant,
    budget: Duration,
    calls: u32,
    failed: bool,
    timed_out: bool,
}

impl JobClock {
    pub fn start(budget: Duration) -> Self {
        JobClock {
            started: Instant::now(),
            budget,
            calls: 0,
            failed: false,
            timed_out: false,
        }
    }

    /// Whether another call may start: always the first.
    fn may_call(&mut self) -> bool {
        let may = self.calls == 0 || (!self.timed_out && self.started.elapsed() < self.budget);
        self.calls += u32::from(may);
        may
    }

    fn failed(&mut self, err: &GuestError) {
        self.failed = true;
        self.timed_out |= matches!(err, GuestError::Timeout(_));
    }

    /// The span the next batch should use, after this job used `span` and
    /// ended as `ended`: what it was about to try after a failed call; twice
    /// as many (up to `limit`) after a job that took under half its time;
    /// else the same. (Doubling after any clean batch would keep growing back
    /// into a span that times out, losing a deadline each time.)
    pub fn next_span(&self, span: usize, ended: &Span, limit: usize) -> usize {
        match ended {
            Span::Yield {
                shrink_to: Some(events),
            } => (*events).max(1),
            Span::Done if self.started.elapsed() < self.budget / 2 => {
                span.saturating_mul(2).min(limit)
            }
            _ => span,
        }
    }
}

/// Applies `events` and commits them with a checkpoint at `end`. If the guest
/// fails, the span is halved and each half applied and committed in turn, down
/// to the single event that fails: the checkpoint then stops exactly before it.
/// Halving (rather than going one event at a time) also keeps a batch that
/// only went past the per-call write limit fast: its halves commit. No call
/// starts once `clock` has run out: the span yields.
pub(super) fn apply_span(
    module: &ProjectionModule,
    model: &ReadModel,
    events: &[RecordedEvent],
    end: Position,
    clock: &mut JobClock,
    commit: &mut impl FnMut(&DocumentChanges, Position, &[RecordedEvent]) -> Result<(), StoreError>,
) -> Result<Span, StoreError> {
    if !clock.may_call() {
        return Ok(Span::Yield {
            shrink_to: clock.failed.then_some(events.len()),
        });
    }
    match apply(module, model, events) {
        Ok(changes) => {
            commit(&changes, end, events)?;
            Ok(Span::Done)
        }
        Err(err) if events.len() == 1 => Ok(Span::Failed(Failure::from_guest(
            events[0].position,
            Some(&events[0]),
            &err,
        ))),
        Err(err) => {
            clock.failed(&err);
            let (first, second) = events.split_at(events.len() / 2);
            match apply_span(module, model, first, second[0].position - 1, clock, commit)? {
                Span::Done => apply_span(module, model, second, end, clock, commit),
                other => Ok(other),
            }
        }
    }
}

/// Events from the front of `events`, at most `max_events` and up to
/// `max_bytes` of data (at least one).
pub(super) fn take_chunk(
    events: &[RecordedEvent],
    max_events: usize,
    max_bytes: usize,
) -> &[RecordedEvent] {
    let mut bytes = 0;
    let mut n = 0;
    for event in events.iter().take(max_events.max(1)) {
        bytes += event.weight();
        if n > 0 && bytes > max_bytes {
            break;
        }
        n += 1;
    }
    &events[..n]
}

pub(super) fn apply(
    module: &ProjectionModule,
    model: &ReadModel,
    events: &[RecordedEvent],
) -> Result<DocumentChanges, GuestError> {
    let guest_events: Vec<GuestRecordedEvent> = events.iter().map(to_guest).collect();
    let versions: Vec<u32> = events.iter().map(|e| e.schema_version).collect();
    module.apply(Arc::new(Documents(model.clone())), &guest_events, &versions)
}

fn commit(
    handle: &VersionHandle,
    model: &ReadModel,
    changes: &DocumentChanges,
    position: Position,
    applied: &[RecordedEvent],
) -> Result<(), StoreError> {
    let _committing = handle.commit_lock.lock().unwrap_or_else(|e| e.into_inner());
    let (applied_before, skipped) = {
        let s = handle.status.borrow();
        (s.events_applied, s.events_skipped)
    };
    let checkpoint = ProjectionCheckpoint {
        position,
        events_applied: applied_before + applied.len() as u64,
        events_skipped: skipped,
    };
    model.commit(changes, &checkpoint, None, applied)?;
    handle.status.send_modify(|s| {
        s.position = position;
        s.events_applied = checkpoint.events_applied;
        if !applied.is_empty() {
            s.retrying = None;
        }
    });
    Ok(())
}

/// An event of the log as the guest receives it.
pub fn to_guest(event: &RecordedEvent) -> GuestRecordedEvent {
    GuestRecordedEvent {
        position: event.position,
        aggregate_type: event.stream.aggregate_type().to_string(),
        aggregate_id: event.stream.aggregate_id().to_string(),
        version: event.version,
        event_id: event.event_id.to_string(),
        event_type: event.event_type.clone(),
        data: event.data.clone(),
        recorded_at_ms: event.recorded_at_ms,
    }
}

/// The committed documents of a read model, as a guest call reads them.
pub struct Documents(pub ReadModel);

impl DocumentSource for Documents {
    fn get(&self, key: &str) -> Result<Option<String>, String> {
        self.0.get(key).map_err(|e| e.to_string())
    }

    fn scan(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<(String, String)>, String> {
        self.0
            .scan_bounded(prefix, after, limit, max_bytes)
            .map_err(|e| e.to_string())
    }
}

/// Positions per second over the last few seconds.
#[derive(Default)]
struct Rate {
    samples: VecDeque<(Instant, Position)>,
}

const RATE_WINDOW: Duration = Duration::from_secs(5);

impl Rate {
    fn record(&mut self, position: Position) -> f64 {
        let now = Instant::now();
        self.samples.push_back((now, position));
        while self.samples.len() > 2
            && self
                .samples
                .front()
                .is_some_and(|(t, _)| now.duration_since(*t) > RATE_WINDOW)
        {
            self.samples.pop_front();
        }
        self.per_second(position)
    }

    fn per_second(&self, position: Position) -> f64 {
        // Idle for a whole window: nothing is moving.
        if self
            .samples
            .back()
            .is_none_or(|(t, _)| t.elapsed() > RATE_WINDOW)
        {
            return 0.0;
        }
        match self.samples.front() {
            Some((t, p)) if position > *p => {
                let secs = t.elapsed().as_secs_f64();
                if secs > 0.0 {
                    (position - p) as f64 / secs
                } else {
                    0.0
                }
            }
            _ => 0.0,
        }
    }
}

pub use crate::clock::now_ms;
