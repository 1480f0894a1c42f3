//! Aggregate state: from the cache, else the latest snapshot plus the events
//! after it, else every event from the start, applied through the module in
//! batches. Also the temporal read (state as of a version).

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

    /// The state this host last knew of, if it still has it (it may be stale:
    /// another host may have written since).
    pub(super) fn cached_state(
        &self,
        module: &LoadedModule,
        stream: &StreamId,
    ) -> Option<AggregateState> {
        self.cache.get(&(stream.clone(), module.record.digest))
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
        // A snapshot is a cache: one that cannot be read is replayed around.
        let snapshot = self
            .store
            .load_snapshot(stream, &module.record.digest)
            .unwrap_or_else(|e| {
                tracing::warn!(%stream, error = %e, "ignoring an unreadable snapshot");
                None
            });
        if let Some((version, bytes)) = snapshot
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
    pub(super) async fn initial_state(
        &self,
        module: &Arc<LoadedModule>,
    ) -> Result<Vec<u8>, CommandError> {
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
    pub(super) async fn replay(
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
            let mut events = self
                .store
                .read_stream_at_once(stream, state.version + 1, Direction::Forward, want)
                .await?;
            let full = events.len() == want;
            // A full page may end inside a command: its events wait for the
            // next page, so every `apply` call ends at a command boundary.
            if full && limit.is_none() {
                let tail = last_command_start(&events);
                if tail > 0 {
                    events.truncate(tail);
                }
            }
            let Some(last) = events.last() else { break };
            state = AggregateState {
                version: last.version,
                bytes: fold(&self.runtime, module, state.bytes, &events).await?,
            };
            if !full {
                break;
            }
        }
        Ok(state)
    }
}

/// Where the events of the last command in `events` start (consecutive events
/// with its command id; an event without one is a command of its own).
fn last_command_start(events: &[RecordedEvent]) -> usize {
    let Some(last) = events.last() else { return 0 };
    let Some(id) = last.metadata.command_id.as_deref() else {
        return events.len() - 1;
    };
    events
        .iter()
        .rposition(|e| e.metadata.command_id.as_deref() != Some(id))
        .map_or(0, |i| i + 1)
}
