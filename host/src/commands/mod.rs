//! The command pipeline: a command for an aggregate goes through the module
//! version that decides for its id and, if accepted, into the store.
//!
//! execute: check the command id (a repeat of the same request returns the
//! original result; the same id for another request is refused) ->
//! lock the aggregate -> pick the version (`ModuleRegistry::for_aggregate`:
//! the active one, or the canary for its share of the ids, or a newer version
//! that wrote the stream's last event) -> load its state -> `handle` in the guest -> check the
//! guest's output -> `apply` the new events to get the new state and its digest
//! -> append with the loaded version as expected version and the command id ->
//! on a concurrency conflict start over from fresh state (bounded), unless the
//! caller named the expected version.
//!
//! - `decide`: the guest calls of one command.
//! - `guest_output`: the rules for what `handle` returns (event count, types,
//!   data, rejections), each breach an `invalid_guest_output`.
//! - `state`: loading state (cache, snapshots, replay), temporal reads.
//! - `fold`: replaying events through `apply` in batches a replay can always afford.
//! - `cache`: the state cache, bounded in entries and bytes.
//! - `verify`: the determinism audit of a stream's recorded state digests.
//! - `locks`: one in-process lock per aggregate.

mod cache;
mod check;
mod decide;
mod fold;
mod guest_output;
mod locks;
mod state;
mod verify;
mod whatif;

use std::sync::Arc;

use sha2::{Digest, Sha256};
use uuid::Uuid;

pub use cache::CacheStats;
pub use check::{
    CHECK_SAMPLES, CheckDifference, CheckFailure, CheckState, CheckStatus, MAX_CHECK_SAMPLE,
};
pub use fold::{APPLY_BATCH, REPLAY_BATCH_BYTES};
pub use guest_output::{MAX_GUEST_MESSAGE_LEN, MAX_REJECTION_CODE_LEN, REJECTION_CODE_SEPARATORS};
pub use state::{AggregateState, STATE_DIGEST_KEY, state_digest, to_stream_event};
pub use verify::{
    Batching, DigestMismatch, MAX_CONCURRENT_VERIFIES, MAX_REPORTED_DIVERGENCES, VerifyReport,
};
pub use whatif::{
    Change, DEFAULT_WHATIF_LIMIT, MAX_WHATIF_LIMIT, WhatIfCounts, WhatIfEvent, WhatIfOutcome,
    WhatIfReport, WhatIfSample,
};

use crate::modules::{CommandOutcomeKind, LoadedModule, ModuleRegistry, NotReady};
use crate::runtime::{CommandContext, GuestError, Runtime};
use crate::store::{
    Backend, Direction, EventFilter, ExpectedVersion, JournalEntry, JournalOutcome, RecordedEvent,
    RequestFingerprint, StoreError, StreamId, StreamVersion, check_name,
};
use cache::StateCache;
use locks::AggregateLocks;

#[derive(Clone, Debug)]
pub struct CommandConfig {
    /// A snapshot is kept each time a stream crosses a multiple of this many events (0: never).
    pub snapshot_every: u64,
    /// Fresh attempts after a concurrency conflict, when the caller gave no
    /// expected version, each after a random pause of up to 2, 4, .. 64 ms
    /// (hosts that lost one race do not all run into the next).
    pub max_retries: u32,
    /// Aggregate states kept in memory, at most.
    pub cache_entries: usize,
    /// Bytes of aggregate state kept in memory, at most.
    pub cache_bytes: usize,
    /// The largest state an aggregate may have: a command whose events would
    /// lead past it is refused (`state_too_large`), so every accepted history
    /// stays foldable within the guest's memory.
    pub max_state_bytes: usize,
    /// The largest command JSON accepted.
    pub max_command_bytes: usize,
    /// Journal every decided command, accepted or refused, for what-if
    /// (`docs/store-format.md`, "Command journal").
    pub journal: bool,
    /// How long journal entries are kept (by the time they were received).
    pub journal_retention: std::time::Duration,
}

/// Journal entries are kept this long by default: 30 days.
pub const DEFAULT_JOURNAL_RETENTION: std::time::Duration =
    std::time::Duration::from_secs(30 * 24 * 3600);

impl Default for CommandConfig {
    fn default() -> Self {
        CommandConfig {
            snapshot_every: 100,
            max_retries: 10,
            cache_entries: 10_000,
            cache_bytes: 256 << 20,
            max_state_bytes: 8 << 20,
            max_command_bytes: 64 * 1024,
            journal: true,
            journal_retention: DEFAULT_JOURNAL_RETENTION,
        }
    }
}

/// What a command requires of its aggregate before it runs (HTTP `If-Match`).
/// Unmet, the command fails with `WrongExpectedVersion` and writes nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Precondition {
    /// Nothing: a conflict with a concurrent command is retried on fresh state.
    #[default]
    None,
    /// The aggregate has at least one event (`If-Match: *`). It can only stay
    /// true, so a conflict is retried on fresh state as without a precondition.
    Exists,
    /// The aggregate is at one of these versions (`If-Match: "3"`, `"3", "4"`);
    /// 0 is an aggregate with no events yet. Sorted, without repeats; empty
    /// matches nothing (an `If-Match` of weak tags only). Never retried.
    AtVersion(Vec<StreamVersion>),
}

impl Precondition {
    /// One of `versions` (sorted and deduplicated here).
    pub fn at_versions(versions: impl IntoIterator<Item = StreamVersion>) -> Precondition {
        let mut versions: Vec<_> = versions.into_iter().collect();
        versions.sort_unstable();
        versions.dedup();
        Precondition::AtVersion(versions)
    }

    /// Does an aggregate at `actual` (0: no events) meet it?
    pub fn admits(&self, actual: StreamVersion) -> bool {
        match self {
            Precondition::None => true,
            Precondition::Exists => actual > 0,
            Precondition::AtVersion(versions) => versions.binary_search(&actual).is_ok(),
        }
    }

    /// May a concurrency conflict be retried on fresh state? Not when the caller
    /// named the versions it decided from.
    fn retries(&self) -> bool {
        !matches!(self, Precondition::AtVersion(_))
    }
}

impl std::fmt::Display for Precondition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Precondition::None => f.write_str("any version"),
            Precondition::Exists => f.write_str("an existing aggregate (any version from 1)"),
            Precondition::AtVersion(versions) if versions.is_empty() => {
                f.write_str("no version at all (only weak tags, which never match)")
            }
            Precondition::AtVersion(versions) => {
                for (i, v) in versions.iter().enumerate() {
                    if i > 0 {
                        f.write_str(" or ")?;
                    }
                    write!(f, "{v}")?;
                    if *v == 0 {
                        f.write_str(" (no events yet)")?;
                    }
                }
                Ok(())
            }
        }
    }
}

/// A command as a caller hands it in.
#[derive(Clone, Debug, Default)]
pub struct CommandRequest {
    pub aggregate_type: String,
    pub aggregate_id: String,
    /// The command, as JSON.
    pub command: String,
    /// Fail with `WrongExpectedVersion` unless the aggregate meets it.
    pub precondition: Precondition,
    /// Unique per request; a retry of the same request (`request_fingerprint`)
    /// with the same id returns the original result, another request with it
    /// is refused (`CommandIdReused`). The host makes one up when absent.
    pub command_id: Option<String>,
    pub correlation_id: Option<String>,
    pub causation_id: Option<String>,
}

/// What an accepted command did.
#[derive(Clone, Debug)]
pub struct CommandOutcome {
    pub stream: StreamId,
    pub command_id: String,
    /// The aggregate's version after the command.
    pub version: StreamVersion,
    /// The global position of the command's last event (None: it produced no events).
    pub position: Option<u64>,
    /// The module that decided, `name@version`.
    pub module: String,
    pub events: Vec<RecordedEvent>,
    /// True when this is a repeat of a command already recorded under this id.
    pub repeated: bool,
}

/// An aggregate's state for readers.
#[derive(Clone, Debug)]
pub struct StateView {
    pub version: StreamVersion,
    /// The module that folded the events into this state and rendered it,
    /// `name@version`: the one that decides the aggregate's next command
    /// (`ModuleRegistry::for_aggregate`), whatever produced the events.
    pub folded_by: String,
    /// The module that produced the event at `version` (its `producer`), which at
    /// a past version, or after a hot swap, may be another version than `folded_by`.
    /// None for an event appended without one.
    pub last_event_producer: Option<String>,
    /// The state as the module renders it (JSON).
    pub state: String,
}

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("no active module for aggregate type {0:?}; upload one under that name")]
    UnknownAggregateType(String),
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The command id is recorded for a different request: another aggregate,
    /// or (for records that carry a fingerprint) another command text.
    #[error(
        "command id {command_id} was first used for a different request (a command on {stream}); an id stands for one request: its aggregate type and id and its exact command text"
    )]
    CommandIdReused {
        command_id: String,
        /// The stream of the command first recorded under this id.
        stream: StreamId,
    },
    #[error("invalid command: {0}")]
    InvalidCommand(String),
    #[error("rejected ({code}): {message}")]
    Rejected { code: String, message: String },
    #[error("wrong expected version: expected {expected}, actual {actual}")]
    WrongExpectedVersion {
        expected: Precondition,
        actual: StreamVersion,
    },
    #[error(transparent)]
    Guest(#[from] GuestError),
    #[error("the module {module} returned invalid output: {reason}")]
    InvalidGuestOutput { module: String, reason: String },
    #[error(
        "the module {module} would make the aggregate's state {bytes} bytes; the limit is {limit}"
    )]
    StateTooLarge {
        module: String,
        bytes: usize,
        limit: usize,
    },
    #[error("the aggregate kept changing under the command; gave up after {attempts} attempts")]
    Conflict { attempts: u32 },
    #[error("not found: {0}")]
    NotFound(String),
    #[error("{running} verifies are running, the most at once; try again when one has finished")]
    TooManyVerifies { running: usize },
    /// Replaying one accepted command ran past even a replay's wall-clock
    /// deadline: the host is too busy, the history is intact. Transient.
    #[error(
        "replaying an accepted command of {module} ran past its wall-clock deadline ({limit:?}) on a busy host; the history is intact, try again"
    )]
    ReplayTimedOut {
        module: String,
        limit: std::time::Duration,
    },
    /// The active module is still compiling after a start without its artifact, or failed to.
    #[error(transparent)]
    ModuleNotReady(#[from] NotReady),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl CommandError {
    /// A stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            CommandError::UnknownAggregateType(_) => "unknown_aggregate_type",
            CommandError::InvalidRequest(_) => "invalid_request",
            CommandError::CommandIdReused { .. } => "idempotency_key_reused",
            CommandError::InvalidCommand(_) => "invalid_command",
            CommandError::Rejected { .. } => "rejected",
            CommandError::WrongExpectedVersion { .. } => "wrong_expected_version",
            CommandError::Guest(g) => g.code(),
            CommandError::InvalidGuestOutput { .. } => "invalid_guest_output",
            CommandError::StateTooLarge { .. } => "state_too_large",
            CommandError::Conflict { .. } => "conflict",
            CommandError::NotFound(_) => "not_found",
            CommandError::TooManyVerifies { .. } => "too_many_verifies",
            CommandError::ReplayTimedOut { .. } => "replay_timeout",
            CommandError::ModuleNotReady(n) => n.code(),
            CommandError::Store(s) => s.code(),
        }
    }
}

pub struct CommandService {
    store: Backend,
    modules: Arc<ModuleRegistry>,
    runtime: Arc<Runtime>,
    locks: AggregateLocks,
    cache: StateCache,
    /// One permit per running `verify`: each costs a replay of a whole stream.
    verifies: tokio::sync::Semaphore,
    /// Replay checks of candidate versions, running or finished.
    checks: check::Checks,
    config: CommandConfig,
}

impl CommandService {
    pub fn new(
        store: Backend,
        modules: Arc<ModuleRegistry>,
        config: CommandConfig,
    ) -> CommandService {
        let runtime = modules.runtime().clone();
        CommandService {
            store,
            modules,
            runtime,
            locks: AggregateLocks::default(),
            cache: StateCache::new(config.cache_entries, config.cache_bytes),
            verifies: tokio::sync::Semaphore::new(MAX_CONCURRENT_VERIFIES),
            checks: check::Checks::default(),
            config,
        }
    }

    /// What the state cache holds now.
    pub fn cache_stats(&self) -> CacheStats {
        self.cache.stats()
    }

    pub fn modules(&self) -> &Arc<ModuleRegistry> {
        &self.modules
    }

    /// Aggregates with a command running or waiting for its lock.
    pub fn busy_aggregates(&self) -> usize {
        self.locks.busy()
    }

    pub async fn execute(&self, request: CommandRequest) -> Result<CommandOutcome, CommandError> {
        let received_at_ms = crate::clock::now_ms();
        let stream = StreamId::new(&request.aggregate_type, &request.aggregate_id)
            .map_err(|e| CommandError::InvalidRequest(e.to_string()))?;
        self.check_command(&request)?;
        let command_id = request
            .command_id
            .clone()
            .unwrap_or_else(|| Uuid::now_v7().to_string());
        for (what, id) in [
            ("command id", Some(&command_id)),
            ("correlation id", request.correlation_id.as_ref()),
            ("causation id", request.causation_id.as_ref()),
        ] {
            if let Some(id) = id {
                check_name(what, id, crate::store::MAX_METADATA_ID_LEN)
                    .map_err(CommandError::InvalidRequest)?;
            }
        }
        let fingerprint = request_fingerprint(&request);
        let _guard = self.locks.lock(&stream).await;
        // A repeat is answered with the original outcome, never decided again.
        // Checked under the lock: a retry that raced its original on this host
        // finds it landed (one on another host is caught by the append). An id
        // this host just made up cannot have been used.
        if request.command_id.is_some()
            && let Some(outcome) = self.repeat_of(&command_id, &stream, &fingerprint).await?
        {
            return Ok(outcome);
        }
        // The version that takes this command is fixed here, under the
        // aggregate's lock (so the stream's last producer cannot change under
        // the choice): a hot swap, canary or rollback during the command does
        // not change it.
        let routed = self
            .modules
            .for_aggregate(&request.aggregate_type, &request.aggregate_id, || {
                self.last_producer(&stream)
            })
            .await?
            .ok_or_else(|| CommandError::UnknownAggregateType(request.aggregate_type.clone()))?;
        let result = self
            .decide_and_append(
                &routed.module,
                &stream,
                &request,
                &command_id,
                received_at_ms,
                &fingerprint,
            )
            .await;
        if let Some(kind) = outcome_kind(&result) {
            self.modules
                .count_outcome(&routed.module, routed.sticky, kind);
        }
        result
    }

    /// The attempts of one command on `module`, under the aggregate's lock.
    async fn decide_and_append(
        &self,
        module: &Arc<LoadedModule>,
        stream: &StreamId,
        request: &CommandRequest,
        command_id: &str,
        received_at_ms: u64,
        fingerprint: &RequestFingerprint,
    ) -> Result<CommandOutcome, CommandError> {
        let context = CommandContext {
            aggregate_type: request.aggregate_type.clone(),
            aggregate_id: request.aggregate_id.clone(),
            command_id: command_id.to_string(),
            correlation_id: request
                .correlation_id
                .clone()
                .unwrap_or_else(|| command_id.to_string()),
            received_at_ms,
        };
        // A conflict is answered 412 only when the precondition does not admit
        // the stream's actual version; while it does (no precondition, `*`, a
        // list of versions the stream moved within), the command is decided
        // again from the current state.
        let attempts = 1 + self.config.max_retries;
        for attempt in 1..=attempts {
            match self
                .attempt(module, stream, request, &context, fingerprint, attempt == 1)
                .await
            {
                Err(CommandError::Store(StoreError::WrongExpectedVersion { actual, .. })) => {
                    self.forget(module, stream);
                    if !request.precondition.retries() && !request.precondition.admits(actual) {
                        return Err(CommandError::WrongExpectedVersion {
                            expected: request.precondition.clone(),
                            actual,
                        });
                    }
                    tracing::debug!(%stream, attempt, "concurrency conflict; retrying from fresh state");
                    // Another writer (another host, or a direct append) won the
                    // race: hosts that lost together must not retry in lockstep.
                    if attempt < attempts {
                        let limit = 1u64 << attempt.min(6);
                        tokio::time::sleep(std::time::Duration::from_millis(jitter(limit))).await;
                    }
                }
                // Another request under this id landed first, past the checks above
                // (on another aggregate, whose lock this command does not hold).
                Err(CommandError::Store(StoreError::CommandIdInUse { command_id, stream })) => {
                    return Err(CommandError::CommandIdReused { command_id, stream });
                }
                other => return other,
            }
        }
        Err(CommandError::Conflict { attempts })
    }

    /// The producer (`name@version`) of the stream's last event, if it has one.
    fn last_producer(&self, stream: &StreamId) -> Result<Option<String>, CommandError> {
        let version = self.store.stream_version(stream)?;
        if version == 0 {
            return Ok(None);
        }
        Ok(self
            .store
            .read_stream(stream, version, Direction::Forward, 1)?
            .into_iter()
            .next()
            .and_then(|event| event.metadata.producer))
    }

    async fn attempt(
        &self,
        module: &Arc<LoadedModule>,
        stream: &StreamId,
        request: &CommandRequest,
        context: &CommandContext,
        fingerprint: &RequestFingerprint,
        first: bool,
    ) -> Result<CommandOutcome, CommandError> {
        let label = module.label();
        // The cached state decides without a read of the stream: an append
        // from it names its version, so a state another writer (another host)
        // made stale fails there and is decided again. A refusal or a no-op
        // writes nothing, so it comes only from a state known to be current.
        // After a conflict the cache is not trusted again: a read elsewhere
        // may have filled it with a state that is already old.
        let mut trust_cache = first;
        let (state, decision) = loop {
            let cached = trust_cache
                .then(|| self.cached_state(module, stream))
                .flatten()
                .filter(|cached| request.precondition.admits(cached.version));
            let verified = cached.is_none();
            let state = match cached {
                Some(state) => state,
                None => self.current_state(module, stream).await?,
            };
            if !request.precondition.admits(state.version) {
                return Err(CommandError::WrongExpectedVersion {
                    expected: request.precondition.clone(),
                    actual: state.version,
                });
            }
            // One trip to a guest thread for both calls: each hand-off costs a wake-up.
            let guest = aggregate_of(module)?.clone();
            let (before, version) = (state.bytes.clone(), state.version);
            let (request_copy, context_copy, label_copy) =
                (request.clone(), context.clone(), label.clone());
            let max_state_bytes = self.config.max_state_bytes;
            let decision = self
                .runtime
                .pool()
                .run(&module.record.name, move || {
                    decide::decide(
                        &guest,
                        &label_copy,
                        &before,
                        version,
                        &request_copy,
                        &context_copy,
                        max_state_bytes,
                    )
                })
                .await;
            if !verified
                && !matches!(decision, Ok(Some(_)))
                && self.store.stream_version_async(stream).await? != state.version
            {
                self.forget(module, stream);
                trust_cache = false;
                continue;
            }
            break (state, decision);
        };
        // The same request under the same key, in flight on another host, may
        // have landed while this one decided: its outcome is the answer, not
        // this refusal. (The lock of a host serializes its own repeats.)
        if request.command_id.is_some()
            && !matches!(decision, Ok(Some(_)))
            && let Some(outcome) = self
                .repeat_of(&context.command_id, stream, fingerprint)
                .await?
        {
            return Ok(outcome);
        }
        let journal = |outcome| {
            self.config.journal.then(|| JournalEntry {
                received_at_ms: context.received_at_ms,
                command_id: context.command_id.clone(),
                aggregate_type: context.aggregate_type.clone(),
                aggregate_id: context.aggregate_id.clone(),
                command: request.command.clone(),
                expected_version: match &request.precondition {
                    Precondition::None => None,
                    other => Some(other.to_string()),
                },
                client_command_id: request.command_id.is_some(),
                correlation_id: context.correlation_id.clone(),
                causation_id: request.causation_id.clone(),
                decided_at: state.version,
                module: label.clone(),
                outcome,
            })
        };
        let refused = match &decision {
            Err(CommandError::Rejected { code, message }) => Some(JournalOutcome::Rejected {
                code: code.clone(),
                message: message.clone(),
            }),
            Err(CommandError::InvalidCommand(reason)) => Some(JournalOutcome::Malformed {
                reason: reason.clone(),
            }),
            Ok(None) => Some(JournalOutcome::Accepted {
                first_position: None,
                last_position: None,
            }),
            _ => None,
        };
        if let Some(entry) = refused.and_then(journal) {
            // Diagnostic: a journal that cannot be written does not refuse the command.
            if let Err(e) = self.store.journal_refused(&entry) {
                tracing::warn!(%stream, error = %e, "could not journal a command");
            }
        }
        let Some(decide::Decision {
            events,
            state_after: after,
        }) = decision?
        else {
            return Ok(CommandOutcome {
                stream: stream.clone(),
                command_id: context.command_id.clone(),
                version: state.version,
                position: None,
                module: label,
                events: Vec::new(),
                repeated: false,
            });
        };
        let appended = self
            .store
            .append_command(
                stream,
                ExpectedVersion::Exact(state.version),
                events,
                &context.command_id,
                Some(*fingerprint),
                journal(JournalOutcome::Accepted {
                    first_position: None,
                    last_position: None,
                }),
            )
            .await?;
        if appended.repeated {
            // The same command landed meanwhile (a retry raced its original). Our state
            // is what *this* attempt decided, not what the stored events produce: keep
            // it out of the cache and the snapshots, and answer with the original.
            return self
                .repeat_of(&context.command_id, stream, fingerprint)
                .await?
                .ok_or_else(|| {
                    CommandError::NotFound(format!("command {} vanished", context.command_id))
                });
        }
        let appended = appended.result;
        let new_state = AggregateState {
            version: appended.stream_version,
            bytes: Arc::new(after),
        };
        self.remember(module, stream, &new_state);
        self.maybe_snapshot(module, stream, state.version, &new_state);
        let events = self
            .read_events(appended.first_position, appended.last_position)
            .await?;
        Ok(CommandOutcome {
            stream: stream.clone(),
            command_id: context.command_id.clone(),
            version: appended.stream_version,
            position: Some(appended.last_position),
            module: label,
            events,
            repeated: false,
        })
    }

    fn check_command(&self, request: &CommandRequest) -> Result<(), CommandError> {
        if request.command.len() > self.config.max_command_bytes {
            return Err(CommandError::InvalidCommand(format!(
                "the command is {} bytes; the limit is {}",
                request.command.len(),
                self.config.max_command_bytes
            )));
        }
        crate::json_text::check(&request.command)
            .map_err(|e| CommandError::InvalidCommand(format!("the command is not JSON: {e}")))?;
        Ok(())
    }

    /// The original outcome of the same request already recorded under
    /// `command_id`; an error if the id is recorded for a different request.
    /// A record without a fingerprint (written before fingerprints) is matched
    /// by its stream alone, as it always was.
    async fn repeat_of(
        &self,
        command_id: &str,
        stream: &StreamId,
        fingerprint: &RequestFingerprint,
    ) -> Result<Option<CommandOutcome>, CommandError> {
        let Some(record) = self.store.command_record_async(command_id).await? else {
            return Ok(None);
        };
        if !record.same_request(stream, Some(fingerprint)) {
            return Err(CommandError::CommandIdReused {
                command_id: command_id.to_string(),
                stream: record.stream,
            });
        }
        let events = self
            .read_events(record.result.first_position, record.result.last_position)
            .await?;
        let module = events
            .first()
            .and_then(|e| e.metadata.producer.clone())
            .unwrap_or_default();
        Ok(Some(CommandOutcome {
            stream: record.stream,
            command_id: command_id.to_string(),
            version: record.result.stream_version,
            position: Some(record.result.last_position),
            module,
            events,
            repeated: true,
        }))
    }

    async fn read_events(&self, first: u64, last: u64) -> Result<Vec<RecordedEvent>, CommandError> {
        let page = self
            .store
            .read_all_at_once(first, (last - first + 1) as usize, &EventFilter::all())
            .await?;
        Ok(page.events)
    }

    fn maybe_snapshot(
        &self,
        module: &LoadedModule,
        stream: &StreamId,
        before: StreamVersion,
        state: &AggregateState,
    ) {
        let every = self.config.snapshot_every;
        if every == 0 || before / every == state.version / every {
            return;
        }
        self.save_snapshot(module, stream, state);
    }

    fn save_snapshot(&self, module: &LoadedModule, stream: &StreamId, state: &AggregateState) {
        // A snapshot is an optimisation: failing to keep one is logged, not fatal.
        if let Err(e) =
            self.store
                .save_snapshot(stream, &module.record.digest, state.version, &state.bytes)
        {
            tracing::warn!(%stream, error = %e, "could not save a snapshot");
        }
    }

    /// The aggregate's state as the version that decides for it renders it, now or as of `at_version`.
    pub async fn read_state(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        at_version: Option<StreamVersion>,
    ) -> Result<StateView, CommandError> {
        let stream = StreamId::new(aggregate_type, aggregate_id)
            .map_err(|e| CommandError::InvalidRequest(e.to_string()))?;
        // Rendered by the version that decides this aggregate's next command.
        let module = self
            .modules
            .for_aggregate(aggregate_type, aggregate_id, || self.last_producer(&stream))
            .await?
            .ok_or_else(|| CommandError::UnknownAggregateType(aggregate_type.to_string()))?
            .module;
        let current = self.store.stream_version(&stream)?;
        if current == 0 {
            return Err(CommandError::NotFound(format!(
                "aggregate {stream} has no events"
            )));
        }
        let state = match at_version {
            None => self.current_state(&module, &stream).await?,
            Some(0) => return Err(CommandError::InvalidRequest("versions start at 1".into())),
            Some(v) if v > current => {
                return Err(CommandError::NotFound(format!(
                    "aggregate {stream} has {current} versions, not {v}"
                )));
            }
            Some(v) => self.state_at(&module, &stream, v).await?,
        };
        let guest = aggregate_of(&module)?.clone();
        let bytes = state.bytes.clone();
        let rendered = self
            .runtime
            .pool()
            .run(&module.record.name, move || guest.render(&bytes))
            .await?;
        crate::json_text::check(&rendered).map_err(|e| CommandError::InvalidGuestOutput {
            module: module.label(),
            reason: format!("render returned text that is not JSON: {e}"),
        })?;
        let last_event_producer = self
            .store
            .read_stream(&stream, state.version, Direction::Forward, 1)?
            .into_iter()
            .next()
            .and_then(|event| event.metadata.producer);
        Ok(StateView {
            version: state.version,
            folded_by: module.label(),
            last_event_producer,
            state: rendered,
        })
    }
}

/// A random number in `0..=limit`, for spreading retries.
fn jitter(limit: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(crate::clock::now_ms());
    hasher.finish() % (limit + 1)
}

/// How a command a version decided ended, for its counters; None for a
/// repeat (decided before, by whichever version it was).
fn outcome_kind(result: &Result<CommandOutcome, CommandError>) -> Option<CommandOutcomeKind> {
    Some(match result {
        Ok(outcome) if outcome.repeated => return None,
        Ok(_) => CommandOutcomeKind::Accepted,
        Err(CommandError::Rejected { .. } | CommandError::InvalidCommand(_)) => {
            CommandOutcomeKind::Rejected
        }
        Err(
            CommandError::Guest(_)
            | CommandError::InvalidGuestOutput { .. }
            | CommandError::StateTooLarge { .. }
            | CommandError::ReplayTimedOut { .. },
        ) => CommandOutcomeKind::Failed,
        Err(_) => CommandOutcomeKind::Refused,
    })
}

/// The aggregate a module implements; a projection's name is no aggregate type.
fn aggregate_of(module: &LoadedModule) -> Result<&crate::runtime::AggregateModule, CommandError> {
    module
        .aggregate()
        .ok_or_else(|| CommandError::UnknownAggregateType(module.record.name.clone()))
}

/// What makes two command requests the same request, for the idempotency rule:
/// SHA-256 over the aggregate type, the aggregate id and the command text
/// exactly as sent (no JSON normalisation: other whitespace or key order is
/// another request). Each part is length-prefixed, so no two requests share an
/// input. Not covered:
/// - the precondition: it says when the command may run, not what it asks. A
///   client that lost the answer, re-read the aggregate (now past its own
///   command) and retries with a newer `If-Match` is retrying the same command,
///   and gets its result; the first attempt met its precondition.
/// - the correlation and causation ids, which say where a request comes from;
///   a retry gets the first request's.
pub fn request_fingerprint(request: &CommandRequest) -> RequestFingerprint {
    let mut hasher = Sha256::new();
    hasher.update(b"refold command request v1\0");
    for part in [
        &request.aggregate_type,
        &request.aggregate_id,
        &request.command,
    ] {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part.as_bytes());
    }
    hasher.finalize().into()
}

/// Event ids are derived from the command id, so a command's events have the
/// same ids however often it is retried: the store's idempotency rule then
/// catches any repeat that gets past the command record.
fn event_id_for(command_id: &str, index: usize) -> Uuid {
    let mut hasher = Sha256::new();
    hasher.update(command_id.as_bytes());
    hasher.update((index as u64).to_be_bytes());
    let digest = hasher.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    Uuid::new_v8(bytes)
}
