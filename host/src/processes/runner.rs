//! The runner of one process: reads the log from its checkpoint, routes each
//! event the subscription admits to an instance, and has each instance take
//! its inputs in order, one at a time, many instances at once.
//!
//! The loop owns every instance that is not busy; a busy one is inside a
//! task, which takes one input and then sends the instance's pending
//! commands one by one, taking each outcome in as it comes, and hands the
//! instance back. Inputs for a busy instance wait in its queue. Reading the
//! log stops while [`MAX_QUEUED`] inputs wait or [`MAX_BUSY`] instances are
//! busy: a slow target aggregate holds the runner back instead of growing
//! its memory.
//!
//! The checkpoint is the position before the oldest log event not yet taken
//! in (or routed nowhere). It is saved every second and at shutdown, and is a
//! hint: after a crash the runner reads from it again, and an instance that
//! already took an event in (its stream says so) takes it as a repeat.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::dispatch;
use super::react::{Input, Stall, correlation_id};
use super::records::{Instance, stream_type};
use super::{InstanceSummary, RunnerHandle, Shared};
use crate::store::{EventFilter, MAX_AGGREGATE_ID_LEN, RecordedEvent, check_name};

/// The most instances taking inputs at once.
pub const MAX_BUSY: usize = 256;
/// The most inputs waiting for busy instances before the log reader stops.
pub const MAX_QUEUED: usize = 4096;
/// The most instances stopped at an input before the log reader stops too.
pub const MAX_STALLED: usize = 1024;
/// The soonest a deadline fires after it was scheduled: a process that asks
/// for a deadline in the past each time one fires is woken at most this often.
const MIN_DEADLINE_DELAY_MS: u64 = 50;
/// Events read from the log per page.
const PAGE: usize = 256;
/// Idle instances kept folded in memory; others are folded again from their stream.
const KEEP_IDLE: usize = 4096;

struct Done {
    id: String,
    /// None if the instance could not even be loaded.
    instance: Option<Instance>,
    /// The log position of the input the task took, if it was a log event.
    position: Option<u64>,
    /// The input it stopped at, to be tried again.
    stalled: Option<(Input, Stall)>,
}

pub(super) struct Runner {
    shared: Arc<Shared>,
    handle: Arc<RunnerHandle>,
    stop: watch::Receiver<bool>,
    idle: HashMap<String, Instance>,
    queues: HashMap<String, VecDeque<Input>>,
    /// Instances that may have an input to take: pushed when a queue gets its
    /// first input or a task ends with inputs still queued; checked when popped.
    ready: VecDeque<String>,
    queued: usize,
    busy: usize,
    tasks: JoinSet<Done>,
    /// (when to fire, instance, key, the deadline's time)
    deadlines: BinaryHeap<Reverse<(u64, String, String, u64)>>,
    scheduled: HashSet<(u64, String, String, u64)>,
    /// (instance, key, the deadline's time) of every entry on the timer.
    scheduled_keys: HashSet<(String, String, u64)>,
    /// Busy instances: inside a task.
    busy_ids: HashSet<String>,
    /// The backoff of instances being retried after a stall.
    retry_waits: HashMap<String, Duration>,
    /// Log positions routed to an instance and not yet taken in, with counts.
    in_flight: BTreeMap<u64, usize>,
    filter: Option<EventFilter>,
    buffer: VecDeque<RecordedEvent>,
    read_from: u64,
    caught_up: bool,
    /// Instances stopped at an input, and when to try again.
    /// (The instance itself is folded again on the retry: a stalled one holds no state here.)
    stalled: HashMap<String, (Input, Instant, Duration)>,
    /// The digest of the active version the runner last saw.
    digest: Option<[u8; 32]>,
    /// `process:<name>`: the aggregate type of this process's instances.
    own_streams: String,
    /// The reader stopped at an event `route` failed on; when to try again.
    route_retry: Option<(Instant, Duration)>,
    /// The wait before the last retry of a failing `route` (zero: none failed).
    route_backoff: Duration,
    saved_checkpoint: u64,
}

impl Runner {
    pub(super) fn new(
        shared: Arc<Shared>,
        handle: Arc<RunnerHandle>,
        stop: watch::Receiver<bool>,
    ) -> Runner {
        let own_streams = stream_type(&shared.name);
        Runner {
            shared,
            handle,
            stop,
            idle: HashMap::new(),
            queues: HashMap::new(),
            ready: VecDeque::new(),
            queued: 0,
            busy: 0,
            tasks: JoinSet::new(),
            deadlines: BinaryHeap::new(),
            scheduled: HashSet::new(),
            scheduled_keys: HashSet::new(),
            busy_ids: HashSet::new(),
            retry_waits: HashMap::new(),
            in_flight: BTreeMap::new(),
            filter: None,
            buffer: VecDeque::new(),
            read_from: 1,
            caught_up: false,
            stalled: HashMap::new(),
            route_retry: None,
            route_backoff: Duration::ZERO,
            saved_checkpoint: 0,
            digest: None,
            own_streams,
        }
    }

    pub(super) async fn run(mut self) {
        // A runner that cannot start (the module still compiling, a storage
        // error) tries again with backoff until it can, or until shutdown.
        let mut wait = Duration::from_millis(500);
        while let Err(stall) = self.boot().await {
            self.handle
                .set_failure(Some(format!("starting: {}", stall.reason)));
            tracing::warn!(process = %self.shared.name, error = %stall.reason, "the process runner could not start; trying again");
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.stop.wait_for(|s| *s) => return,
            }
            wait = (wait * 2).min(Duration::from_secs(30));
        }
        self.handle.set_failure(None);
        let mut head = self.shared.store.watch_head();
        let mut activations = self.shared.modules.watch_activations();
        let mut save = tokio::time::interval(Duration::from_secs(1));
        save.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if *self.stop.borrow() {
                break;
            }
            self.publish();
            self.fire_due();
            self.start_ready();
            if self.room_to_read() && !self.caught_up {
                self.read_some().await;
                continue;
            }
            let wake = self.next_wake();
            tokio::select! {
                _ = self.stop.changed() => {}
                Some(done) = self.tasks.join_next(), if !self.tasks.is_empty() => match done {
                    Ok(done) => self.finished(done),
                    // `work` catches panics; only a cancelled task gets here.
                    Err(e) => tracing::error!(process = %self.shared.name, error = %e, "a process task ended without an answer"),
                },
                _ = head.changed(), if self.caught_up => self.caught_up = false,
                _ = activations.changed() => self.refresh().await,
                _ = tokio::time::sleep_until(wake) => {}
                _ = save.tick() => self.save_checkpoint(),
            }
        }
        // Tasks in flight stop where they are: what they committed is in
        // their instances' streams, the rest is taken up again after a start.
        self.tasks.shutdown().await;
        self.save_checkpoint();
    }

    /// Folds every instance of the process from its stream: pending commands
    /// are sent again (under their recorded ids), deadlines rescheduled.
    async fn boot(&mut self) -> Result<(), Stall> {
        let module = self.shared.module().await?;
        self.digest = Some(module.record.digest);
        self.read_from = self
            .shared
            .store
            .process_checkpoint(&self.shared.name)?
            .saturating_add(1);
        self.saved_checkpoint = self.read_from - 1;
        let kind = stream_type(&self.shared.name);
        let mut after: Option<String> = None;
        loop {
            let ids = self
                .shared
                .store
                .stream_ids(&kind, after.as_deref(), 1024)?;
            let Some(last) = ids.last().cloned() else {
                break;
            };
            for id in ids {
                if self.knows(&id) {
                    continue; // adopted by an earlier attempt
                }
                match self.shared.load_with(&module, &id).await {
                    Ok(instance) => self.adopt(instance),
                    // One instance that does not fold stops only itself: it
                    // is tried again like an instance stopped at an input.
                    Err(stall) => {
                        self.handle
                            .set_stalled(&id, Some(format!("folding at start: {}", stall.reason)));
                        self.stall(id, Input::Resume);
                    }
                }
            }
            after = Some(last);
        }
        self.refresh_filter(&module).await;
        self.publish();
        Ok(())
    }

    fn knows(&self, id: &str) -> bool {
        self.idle.contains_key(id) || self.busy_ids.contains(id) || self.stalled.contains_key(id)
    }

    /// Takes an idle instance in: its summary, its deadlines, and a task for
    /// its pending commands.
    fn adopt(&mut self, instance: Instance) {
        self.handle.summarise(&instance, None);
        self.schedule(&instance);
        if instance.pending.is_empty() {
            self.keep_idle(instance);
        } else {
            tracing::info!(process = %self.shared.name, instance = %instance.id, commands = instance.pending.len(), "sending recorded commands again");
            self.enqueue(instance.id.clone(), Input::Resume);
            self.keep_idle(instance);
        }
    }

    /// Puts the instance's deadlines on the timer, each once, and none
    /// sooner than [`MIN_DEADLINE_DELAY_MS`] from now.
    fn schedule(&mut self, instance: &Instance) {
        let soonest = crate::clock::now_ms() + MIN_DEADLINE_DELAY_MS;
        for (key, at_ms) in instance.live_deadlines() {
            let key_of = (instance.id.clone(), key.clone(), *at_ms);
            if self.scheduled_keys.insert(key_of) {
                let entry = (
                    (*at_ms).max(soonest),
                    instance.id.clone(),
                    key.clone(),
                    *at_ms,
                );
                self.scheduled.insert(entry.clone());
                self.deadlines.push(Reverse(entry));
            }
        }
    }

    fn keep_idle(&mut self, instance: Instance) {
        if self.idle.len() >= KEEP_IDLE {
            // Forget one without a deadline to come first; any instance is
            // folded again from its stream when it is needed.
            let victim = self
                .idle
                .iter()
                .find(|(_, i)| i.next_deadline().is_none())
                .or_else(|| self.idle.iter().next())
                .map(|(id, _)| id.clone());
            if let Some(victim) = victim {
                self.idle.remove(&victim);
            }
        }
        self.idle.insert(instance.id.clone(), instance);
    }

    async fn refresh(&mut self) {
        if let Ok(module) = self.shared.module().await {
            if self.digest == Some(module.record.digest) {
                return; // another module's activation
            }
            self.digest = Some(module.record.digest);
            self.refresh_filter(&module).await;
            // A new version may get past what stopped the old one.
            let now = Instant::now();
            for (_, at, _) in self.stalled.values_mut() {
                *at = now;
            }
            if let Some((at, _)) = &mut self.route_retry {
                *at = now;
            }
        }
    }

    async fn refresh_filter(&mut self, module: &Arc<crate::modules::LoadedModule>) {
        let guest = module.process().expect("a process module").clone();
        let selector = self
            .shared
            .runtime
            .pool()
            .run(&self.shared.name, move || guest.selector())
            .await;
        match selector {
            Ok(s) => {
                let filter = EventFilter {
                    event_types: s.event_types,
                    aggregate_types: s.aggregate_types,
                };
                if self.filter.as_ref() != Some(&filter) {
                    // Events read under the old filter are read again.
                    if let Some(first) = self.buffer.front() {
                        self.read_from = first.position;
                    }
                    self.buffer.clear();
                    self.filter = Some(filter);
                    self.caught_up = false;
                }
                self.handle.set_failure(None);
            }
            Err(e) => {
                self.handle
                    .set_failure(Some(format!("subscription failed: {e}")));
            }
        }
    }

    fn room_to_read(&self) -> bool {
        self.filter.is_some()
            && self.route_retry.is_none()
            && self.stalled.len() < MAX_STALLED
            && self.queued < MAX_QUEUED
            && self.busy < MAX_BUSY
    }

    /// Routes the next event of the log (reading a page when the buffer is empty).
    async fn read_some(&mut self) {
        if self.buffer.is_empty() {
            let filter = self.filter.clone().expect("checked by room_to_read");
            match self.shared.store.read_all(self.read_from, PAGE, &filter) {
                Ok(page) => {
                    self.read_from = page.next_position;
                    self.buffer.extend(page.events);
                    if self.buffer.is_empty() && page.next_position > page.head {
                        self.caught_up = true;
                        return;
                    }
                }
                Err(e) => {
                    self.handle
                        .set_failure(Some(format!("reading the log: {e}")));
                    self.route_retry = Some((
                        Instant::now() + Duration::from_secs(1),
                        Duration::from_secs(1),
                    ));
                    return;
                }
            }
        }
        let Some(event) = self.buffer.pop_front() else {
            return;
        };
        // Its own instances' streams never route back into the process: a
        // process subscribed to everything would otherwise feed on itself.
        if event.stream.aggregate_type() == self.own_streams {
            return;
        }
        let routed = match self.shared.module().await {
            Ok(module) => {
                let guest = module.process().expect("a process module").clone();
                let guest_event = crate::projections::to_guest(&event);
                let version = event.schema_version;
                self.shared
                    .runtime
                    .pool()
                    .run(&self.shared.name, move || {
                        guest.route(&guest_event, version)
                    })
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| {
                        r.map_err(|e| {
                            format!(
                                "route refused the event: {}",
                                crate::runtime::clip_guest_text(&e)
                            )
                        })
                    })
            }
            Err(stall) => Err(stall.reason),
        };
        let routed = routed.and_then(|id| match id {
            Some(id) => check_name("process id", &id, MAX_AGGREGATE_ID_LEN)
                .map(|()| Some(id))
                .map_err(|e| format!("route returned an invalid process id: {e}")),
            None => Ok(None),
        });
        match routed {
            Ok(Some(id)) => {
                self.route_retry = None;
                self.route_backoff = Duration::ZERO;
                self.handle.set_failure(None);
                *self.in_flight.entry(event.position).or_default() += 1;
                self.enqueue(id, Input::Event(event));
            }
            Ok(None) => {
                self.route_retry = None;
                self.route_backoff = Duration::ZERO;
                self.handle.set_failure(None);
            }
            Err(reason) => {
                let reason = format!("at log position {}: {reason}", event.position);
                tracing::warn!(process = %self.shared.name, error = %reason, "the process runner stopped at an event");
                self.handle.set_failure(Some(reason));
                self.buffer.push_front(event);
                let wait = self.route_retry.map_or(Duration::from_secs(1), |(_, w)| {
                    (w * 2).min(Duration::from_secs(30))
                });
                self.route_retry = Some((Instant::now() + wait, wait));
            }
        }
    }

    fn enqueue(&mut self, id: String, input: Input) {
        let queue = self.queues.entry(id.clone()).or_default();
        queue.push_back(input);
        self.queued += 1;
        if queue.len() == 1 {
            self.ready.push_back(id);
        }
    }

    /// Starts a task for each instance in `ready` that can take its next
    /// input now (not busy, not stalled), as long as the busy cap allows: no
    /// scan of every queue per turn of the loop.
    fn start_ready(&mut self) {
        while self.busy < MAX_BUSY {
            let Some(id) = self.ready.pop_front() else {
                break;
            };
            // Busy or stalled: `finished` puts it back when that ends.
            if self.is_busy(&id) || self.stalled.contains_key(&id) {
                continue;
            }
            let Some(input) = self.queues.get_mut(&id).and_then(VecDeque::pop_front) else {
                continue; // an entry left from before its queue emptied
            };
            self.queued -= 1;
            if self.queues.get(&id).is_some_and(VecDeque::is_empty) {
                self.queues.remove(&id);
            }
            let instance = self.idle.remove(&id);
            self.spawn(id, instance, Some(input));
        }
    }

    fn is_busy(&self, id: &str) -> bool {
        self.busy_ids.contains(id)
    }

    fn spawn(&mut self, id: String, instance: Option<Instance>, input: Option<Input>) {
        self.busy += 1;
        self.busy_ids.insert(id.clone());
        let shared = self.shared.clone();
        let stop = self.stop.clone();
        self.tasks.spawn(async move {
            use futures::FutureExt;
            let position = match &input {
                Some(Input::Event(e)) => Some(e.position),
                _ => None,
            };
            let (id_copy, input_copy) = (id.clone(), input.clone());
            // A panic in host code must not leave the instance busy forever:
            // it stops the instance at its input like any other failure.
            std::panic::AssertUnwindSafe(work(shared, stop, id, instance, input))
                .catch_unwind()
                .await
                .unwrap_or_else(|_| Done {
                    id: id_copy,
                    instance: None,
                    position,
                    stalled: Some((
                        input_copy.unwrap_or(Input::Resume),
                        Stall {
                            reason: "the host panicked taking this input in (see the server log)"
                                .into(),
                        },
                    )),
                })
        });
    }

    fn finished(&mut self, done: Done) {
        self.busy -= 1;
        self.busy_ids.remove(&done.id);
        if let Some(position) = done.position
            && let Some(count) = self.in_flight.get_mut(&position)
        {
            *count -= 1;
            if *count == 0 {
                self.in_flight.remove(&position);
            }
        }
        let Some(instance) = done.instance else {
            // Not even loaded: try again later, with its input.
            if let Some((input, stall)) = done.stalled {
                self.handle
                    .set_stalled(&done.id, Some(stall.reason.clone()));
                self.stall(done.id, input);
            }
            return;
        };
        self.schedule(&instance);
        match done.stalled {
            Some((input, stall)) => {
                tracing::warn!(process = %self.shared.name, instance = %instance.id, error = %stall.reason, "a process instance stopped at {}", input.describe());
                self.handle.summarise(
                    &instance,
                    Some(format!("stopped at {}: {}", input.describe(), stall.reason)),
                );
                let id = instance.id.clone();
                self.stall(id, input);
            }
            None => {
                self.retry_waits.remove(&instance.id);
                self.handle.summarise(&instance, None);
                if self.queues.contains_key(&instance.id) {
                    self.ready.push_back(instance.id.clone());
                }
                self.keep_idle(instance);
            }
        }
    }

    /// Keeps an instance stopped at `input` aside, to try again after a
    /// backoff (at once when a new version is activated). Its log position
    /// stays in flight, so the checkpoint stays before it.
    fn stall(&mut self, id: String, input: Input) {
        if let Input::Event(e) = &input {
            *self.in_flight.entry(e.position).or_default() += 1;
        }
        let wait = self
            .retry_waits
            .remove(&id)
            .map_or(Duration::from_secs(1), |w| {
                (w * 2).min(Duration::from_secs(30))
            });
        self.stalled
            .insert(id, (input, Instant::now() + wait, wait));
    }

    /// Queues each deadline that has passed, and retries what is due.
    fn fire_due(&mut self) {
        let now_ms = crate::clock::now_ms();
        while let Some(Reverse((fire_at, _, _, _))) = self.deadlines.peek() {
            if *fire_at > now_ms {
                break;
            }
            let Reverse(entry) = self.deadlines.pop().expect("peeked");
            self.scheduled.remove(&entry);
            let (_, id, key, at_ms) = entry;
            self.scheduled_keys
                .remove(&(id.clone(), key.clone(), at_ms));
            // A deadline moved or dropped since it was scheduled: nothing to do.
            if let Some(idle) = self.idle.get(&id)
                && idle
                    .live_deadlines()
                    .all(|(k, at)| *k != key || *at != at_ms)
            {
                continue;
            }
            self.enqueue(id, Input::Deadline { key, at_ms });
        }
        let now = Instant::now();
        let due: Vec<String> = self
            .stalled
            .iter()
            .filter(|(_, (_, at, _))| *at <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in due {
            if self.busy >= MAX_BUSY {
                break;
            }
            if self.is_busy(&id) {
                continue;
            }
            let (input, _, wait) = self.stalled.remove(&id).expect("listed");
            // Its log position stays in flight until the retry finishes.
            self.retry_waits.insert(id.clone(), wait);
            let instance = self.idle.remove(&id);
            self.spawn(id, instance, Some(input));
        }
        if let Some((at, wait)) = self.route_retry
            && at <= now
        {
            // Let the reader try once; a failure again waits twice as long.
            self.route_retry = None;
            self.route_backoff = wait;
        }
    }

    fn next_wake(&self) -> Instant {
        let mut wake = Instant::now() + Duration::from_secs(3600);
        if let Some(Reverse((fire_at, _, _, _))) = self.deadlines.peek() {
            let now_ms = crate::clock::now_ms();
            wake = wake.min(Instant::now() + Duration::from_millis(fire_at.saturating_sub(now_ms)));
        }
        for (_, at, _) in self.stalled.values() {
            wake = wake.min(*at);
        }
        if let Some((at, _)) = self.route_retry {
            wake = wake.min(at);
        }
        wake
    }

    /// The position before the oldest event not yet fully taken in.
    fn checkpoint(&self) -> u64 {
        let mut checkpoint = self.read_from.saturating_sub(1);
        if let Some(first) = self.buffer.front() {
            checkpoint = checkpoint.min(first.position - 1);
        }
        if let Some((first, _)) = self.in_flight.iter().next() {
            checkpoint = checkpoint.min(first - 1);
        }
        checkpoint
    }

    fn save_checkpoint(&mut self) {
        let checkpoint = self.checkpoint();
        if checkpoint == self.saved_checkpoint {
            return;
        }
        match self
            .shared
            .store
            .set_process_checkpoint(&self.shared.name, checkpoint)
        {
            Ok(()) => self.saved_checkpoint = checkpoint,
            Err(e) => {
                tracing::warn!(process = %self.shared.name, error = %e, "could not save the process checkpoint")
            }
        }
    }

    fn publish(&self) {
        let head = self.shared.store.head();
        let checkpoint = self.checkpoint();
        self.handle.status.send_modify(|s| {
            s.checkpoint = checkpoint;
            s.head = head;
            s.queued_inputs = self.queued;
            s.busy_instances = self.busy;
            s.stalled_instances = self.stalled.len();
            s.caught_up = self.caught_up && self.in_flight.is_empty() && self.queued == 0;
        });
    }
}

/// One task: the instance takes `input`, then sends its pending commands and
/// takes their outcomes, until nothing is pending.
async fn work(
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    id: String,
    instance: Option<Instance>,
    input: Option<Input>,
) -> Done {
    let position = match &input {
        Some(Input::Event(e)) => Some(e.position),
        _ => None,
    };
    let mut instance = match instance {
        Some(instance) => instance,
        None => match shared.load(&id).await {
            Ok(instance) => instance,
            Err(stall) => {
                return Done {
                    id,
                    instance: None,
                    position,
                    stalled: input.map(|i| (i, stall)),
                };
            }
        },
    };
    if let Some(input) = input
        && let Err(stall) = shared.take(&mut instance, input.clone()).await
    {
        return Done {
            id,
            instance: Some(instance),
            position,
            stalled: Some((input, stall)),
        };
    }
    let correlation = correlation_id(&instance.stream);
    while let Some(command) = instance.pending.front().cloned() {
        let counters = shared.counters.clone();
        let Some(outcome) =
            dispatch::send(&shared.commands, &command, &correlation, &mut stop, |_| {
                counters.note_retry()
            })
            .await
        else {
            break; // shutting down
        };
        shared.counters.note_outcome(&outcome);
        let input = Input::Outcome(outcome);
        if let Err(stall) = shared.take(&mut instance, input.clone()).await {
            return Done {
                id,
                instance: Some(instance),
                position,
                stalled: Some((input, stall)),
            };
        }
    }
    Done {
        id,
        instance: Some(instance),
        position,
        stalled: None,
    }
}

impl InstanceSummary {
    pub(super) fn of(instance: &Instance, stalled: Option<String>) -> InstanceSummary {
        InstanceSummary {
            status: instance.status,
            version: instance.version,
            pending_commands: instance.pending.len(),
            next_deadline_ms: instance.next_deadline(),
            stalled,
        }
    }
}
