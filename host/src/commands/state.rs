//! Aggregate state: from the cache, else the latest snapshot plus the events
//! after it, else every event from the start, applied through the module in
//! batches. Also the temporal read (state as of a version) and the
//! determinism audit (`verify`).

use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::fold::{APPLY_BATCH, fold};
use super::{CommandError, CommandService, aggregate_of};
use crate::modules::{LoadedModule, hex};
use crate::runtime::StreamEvent;
use crate::store::{Direction, RecordedEvent, StreamId, StreamVersion};

/// The metadata key under which a command's last event records the digest of the
/// state it led to (sha256 of the state bytes, hex).
pub const STATE_DIGEST_KEY: &str = "state_digest";

/// An aggregate's state bytes at a version.
#[derive(Clone, Debug)]
pub struct AggregateState {
    pub version: StreamVersion,
    pub bytes: Arc<Vec<u8>>,
}

pub fn state_digest(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

pub fn to_stream_event(event: &RecordedEvent) -> StreamEvent {
    StreamEvent {
        version: event.version,
        event_id: event.event_id.to_string(),
        event_type: event.event_type.clone(),
        data: event.data.clone(),
    }
}

/// One audited checkpoint of `verify`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DigestMismatch {
    pub version: StreamVersion,
    pub module: String,
    pub recorded: String,
    pub replayed: String,
}

/// What `verify` found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyReport {
    pub events: u64,
    pub checked: u64,
    pub mismatches: Vec<DigestMismatch>,
    /// Producers whose module version is not loaded, so their digests were not checked.
    pub unavailable_modules: Vec<String>,
}

impl CommandService {
    /// The stream's current state under `module`, using and refreshing the cache.
    pub(super) async fn current_state(
        &self,
        module: &Arc<LoadedModule>,
        stream: &StreamId,
    ) -> Result<AggregateState, CommandError> {
        let key = (stream.clone(), module.record.digest);
        let start = match self.cache.get(&key) {
            Some(state) => state,
            None => self.starting_point(module, stream, None).await?,
        };
        let from = start.version;
        let state = self.replay(module, stream, start, None).await?;
        // A long replay is kept as a snapshot, so the next one starts here.
        let every = self.config.snapshot_every;
        if every > 0 && state.version - from >= every {
            self.save_snapshot(module, stream, &state);
        }
        self.remember(module, stream, &state);
        Ok(state)
    }

    /// The state as of `version` (which must exist), rendered by nobody yet.
    pub(super) async fn state_at(
        &self,
        module: &Arc<LoadedModule>,
        stream: &StreamId,
        version: StreamVersion,
    ) -> Result<AggregateState, CommandError> {
        let start = self.starting_point(module, stream, Some(version)).await?;
        self.replay(module, stream, start, Some(version)).await
    }

    pub(super) fn remember(
        &self,
        module: &LoadedModule,
        stream: &StreamId,
        state: &AggregateState,
    ) {
        self.cache
            .put((stream.clone(), module.record.digest), state.clone());
    }

    pub(super) fn forget(&self, module: &LoadedModule, stream: &StreamId) {
        self.cache.remove(&(stream.clone(), module.record.digest));
    }

    /// The latest snapshot made by this module version at or below `limit`, else the initial state.
    async fn starting_point(
        &self,
        module: &Arc<LoadedModule>,
        stream: &StreamId,
        limit: Option<StreamVersion>,
    ) -> Result<AggregateState, CommandError> {
        if let Some((version, bytes)) = self.store.load_snapshot(stream, &module.record.digest)?
            && limit.is_none_or(|l| version <= l)
        {
            return Ok(AggregateState {
                version,
                bytes: Arc::new(bytes),
            });
        }
        Ok(AggregateState {
            version: 0,
            bytes: Arc::new(self.initial_state(module).await?),
        })
    }

    /// The module's state for an aggregate with no events, checked against the state limit.
    async fn initial_state(&self, module: &Arc<LoadedModule>) -> Result<Vec<u8>, CommandError> {
        let guest = aggregate_of(module)?.clone();
        let bytes = self
            .runtime
            .pool()
            .run(&module.record.name, move || guest.initial_state())
            .await?;
        if bytes.len() > self.config.max_state_bytes {
            return Err(CommandError::StateTooLarge {
                module: module.label(),
                bytes: bytes.len(),
                limit: self.config.max_state_bytes,
            });
        }
        Ok(bytes)
    }

    /// Applies the stream's events after `state.version`, up to `limit` if given.
    async fn replay(
        &self,
        module: &Arc<LoadedModule>,
        stream: &StreamId,
        mut state: AggregateState,
        limit: Option<StreamVersion>,
    ) -> Result<AggregateState, CommandError> {
        loop {
            let want = match limit {
                Some(l) if state.version >= l => break,
                Some(l) => ((l - state.version) as usize).min(APPLY_BATCH),
                None => APPLY_BATCH,
            };
            let events =
                self.store
                    .read_stream(stream, state.version + 1, Direction::Forward, want)?;
            let Some(last) = events.last() else { break };
            state = AggregateState {
                version: last.version,
                bytes: fold(&self.runtime, module, state.bytes, &events).await?,
            };
            if events.len() < want {
                break;
            }
        }
        Ok(state)
    }

    /// The determinism audit: replays the stream with each module version that
    /// produced events in it and checks the state digest recorded by each command.
    pub async fn verify(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
    ) -> Result<VerifyReport, CommandError> {
        let stream = StreamId::new(aggregate_type, aggregate_id)
            .map_err(|e| CommandError::InvalidRequest(e.to_string()))?;
        let events = self
            .store
            .read_stream(&stream, 1, Direction::Forward, usize::MAX)?;
        let mut producers: Vec<String> = events
            .iter()
            .filter_map(|e| e.metadata.producer.clone())
            .collect();
        producers.sort();
        producers.dedup();
        let mut report = VerifyReport {
            events: events.len() as u64,
            checked: 0,
            mismatches: Vec::new(),
            unavailable_modules: Vec::new(),
        };
        for producer in producers {
            let module = producer
                .split_once('@')
                .and_then(|(name, version)| self.modules.get(name, version));
            let Some(module) = module else {
                report.unavailable_modules.push(producer);
                continue;
            };
            let mut state = Arc::new(self.initial_state(&module).await?);
            let mut unfolded = 0;
            for (i, event) in events.iter().enumerate() {
                let checkpoint = event.metadata.producer.as_deref() == Some(producer.as_str())
                    && event.metadata.extra.contains_key(STATE_DIGEST_KEY);
                if checkpoint || i + 1 - unfolded == APPLY_BATCH {
                    state = fold(&self.runtime, &module, state, &events[unfolded..=i]).await?;
                    unfolded = i + 1;
                }
                if checkpoint {
                    let recorded = &event.metadata.extra[STATE_DIGEST_KEY];
                    let replayed = state_digest(&state);
                    report.checked += 1;
                    if *recorded != replayed {
                        report.mismatches.push(DigestMismatch {
                            version: event.version,
                            module: producer.clone(),
                            recorded: recorded.clone(),
                            replayed,
                        });
                    }
                }
            }
        }
        Ok(report)
    }
}
