//! What-if: decide the journaled commands of an aggregate type again with a
//! candidate version, each from the state it was first decided on (the
//! candidate's fold of its stream up to that version) and with the same clock
//! and randomness (its received-at time and command id), and compare the
//! outcomes with what was recorded. Nothing is written.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::Serialize;

use super::{
    AggregateState, CommandError, CommandRequest, CommandService, Precondition, aggregate_of,
    decide,
};
use crate::modules::LoadedModule;
use crate::runtime::CommandContext;
use crate::store::{JournalEntry, JournalOutcome, ModuleKind, StreamId, StreamVersion};

/// The most journal entries one what-if decides again.
pub const MAX_WHATIF_LIMIT: usize = 10_000;
pub const DEFAULT_WHATIF_LIMIT: usize = 1_000;
/// The most journal entries one what-if reads (of every aggregate type).
pub const MAX_WHATIF_SCAN: u64 = 200_000;
/// Samples kept per kind of change.
pub const SAMPLES_PER_KIND: usize = 10;
/// Streams whose folded candidate state is kept between entries, and the
/// bytes of state kept at most.
const STATES_KEPT: usize = 1024;
const STATE_BYTES_KEPT: usize = 64 << 20;

/// How a recorded command fares under the candidate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// The same outcome: the same events (type, schema version, data), or a
    /// refusal with the same code.
    Unchanged,
    AcceptedToRejected,
    RejectedToAccepted,
    /// Accepted both times, with other events.
    DifferentEvents,
    /// Refused both times, with another code (or malformed one way only).
    DifferentRejection,
    /// The candidate failed: its `apply` could not fold the stream up to the
    /// version, or `handle` trapped, ran out of fuel or broke an output rule.
    Failed,
}

/// Counts per kind of change, for one command type.
#[derive(Clone, Debug, Default, Serialize)]
pub struct WhatIfCounts {
    pub unchanged: u64,
    pub accepted_to_rejected: u64,
    pub rejected_to_accepted: u64,
    pub different_events: u64,
    pub different_rejection: u64,
    pub failed: u64,
}

impl WhatIfCounts {
    fn add(&mut self, change: Change) {
        *match change {
            Change::Unchanged => &mut self.unchanged,
            Change::AcceptedToRejected => &mut self.accepted_to_rejected,
            Change::RejectedToAccepted => &mut self.rejected_to_accepted,
            Change::DifferentEvents => &mut self.different_events,
            Change::DifferentRejection => &mut self.different_rejection,
            Change::Failed => &mut self.failed,
        } += 1;
    }
}

/// An outcome, recorded or the candidate's, side by side in a sample.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum WhatIfOutcome {
    Accepted { events: Vec<WhatIfEvent> },
    Rejected { code: String, message: String },
    Malformed { reason: String },
    Failed { error: String },
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WhatIfEvent {
    pub event_type: String,
    pub schema_version: u32,
    /// JSON text, as stored or as the candidate produced it.
    pub data: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct WhatIfSample {
    pub change: Change,
    pub command_id: String,
    pub aggregate_id: String,
    pub command_type: String,
    /// The command's JSON text.
    pub command: String,
    pub received_at_ms: u64,
    pub decided_at: StreamVersion,
    /// The version that decided it then.
    pub recorded_by: String,
    pub recorded: WhatIfOutcome,
    pub candidate: WhatIfOutcome,
}

#[derive(Clone, Debug, Serialize)]
pub struct WhatIfReport {
    pub module: String,
    pub candidate: String,
    /// Journal entries of this aggregate type decided again.
    pub commands: u64,
    /// Journal entries read, of every type.
    pub scanned: u64,
    /// Counts by command type (the command's `type` field; `?` when it has none).
    pub by_command_type: BTreeMap<String, WhatIfCounts>,
    pub totals: WhatIfCounts,
    /// Up to [`SAMPLES_PER_KIND`] of each kind of change, unchanged excluded.
    pub samples: Vec<WhatIfSample>,
    /// Pass as `since` for the next page; none when the journal was read to its end.
    pub next_since: Option<String>,
    /// False when this server journals no commands (`--journal-days 0`):
    /// then no count here says anything about the candidate.
    pub journal_enabled: bool,
}

impl CommandService {
    /// Decides the journaled commands of `name` again with `name@version`
    /// (see the module docs): from `since_ms` (after `after_id` at that
    /// time), at most `limit`.
    pub async fn what_if(
        &self,
        name: &str,
        version: &str,
        since_ms: u64,
        after_id: Option<&str>,
        limit: usize,
    ) -> Result<WhatIfReport, CommandError> {
        let limit = limit.clamp(1, MAX_WHATIF_LIMIT);
        let candidate =
            self.modules.ready(name, version).await?.ok_or_else(|| {
                CommandError::NotFound(format!("no module version {name}@{version}"))
            })?;
        if candidate.record.kind != ModuleKind::Aggregate {
            return Err(CommandError::InvalidRequest(format!(
                "{name}@{version} is a {}; what-if decides an aggregate's commands again",
                candidate.record.kind.as_str()
            )));
        }
        let _slot = self
            .verifies
            .try_acquire()
            .map_err(|_| CommandError::TooManyVerifies {
                running: super::verify::MAX_CONCURRENT_VERIFIES,
            })?;
        let store = self.store.clone();
        let (type_name, after) = (name.to_string(), after_id.map(str::to_string));
        let page = tokio::task::spawn_blocking(move || {
            store.journal_page(
                &type_name,
                since_ms,
                after.as_deref(),
                limit,
                MAX_WHATIF_SCAN,
            )
        })
        .await
        .map_err(|e| CommandError::Guest(crate::runtime::GuestError::Trap(e.to_string())))??;
        let mut report = WhatIfReport {
            module: name.to_string(),
            candidate: candidate.label(),
            commands: 0,
            scanned: page.scanned,
            by_command_type: BTreeMap::new(),
            totals: WhatIfCounts::default(),
            samples: Vec::new(),
            next_since: page.next.as_ref().map(|c| c.render()),
            journal_enabled: self.config.journal,
        };
        let mut states: HashMap<StreamId, (StreamVersion, Arc<Vec<u8>>)> = HashMap::new();
        let mut sampled: BTreeMap<Change, usize> = BTreeMap::new();
        let durable = self.store.head();
        for entry in page.entries {
            // Journaled in its append's batch, which may not be durable yet:
            // its events are not readable until it is.
            if let JournalOutcome::Accepted {
                last_position: Some(last),
                ..
            } = &entry.outcome
                && *last > durable
            {
                continue;
            }
            let recorded = self.recorded_outcome(&entry)?;
            let candidate_outcome =
                match self.candidate_state(&candidate, &entry, &mut states).await {
                    Ok(state) => self.decide_again(&candidate, &entry, state).await,
                    Err(error) => WhatIfOutcome::Failed { error },
                };
            let change = compare(&recorded, &candidate_outcome);
            let command_type = command_type(&entry.command);
            report.commands += 1;
            report.totals.add(change);
            report
                .by_command_type
                .entry(command_type.clone())
                .or_default()
                .add(change);
            let taken = sampled.entry(change).or_default();
            if change != Change::Unchanged && *taken < SAMPLES_PER_KIND {
                *taken += 1;
                report.samples.push(WhatIfSample {
                    change,
                    command_id: entry.command_id.clone(),
                    aggregate_id: entry.aggregate_id.clone(),
                    command_type,
                    command: entry.command.clone(),
                    received_at_ms: entry.received_at_ms,
                    decided_at: entry.decided_at,
                    recorded_by: entry.module.clone(),
                    recorded,
                    candidate: candidate_outcome,
                });
            }
        }
        Ok(report)
    }

    fn recorded_outcome(&self, entry: &JournalEntry) -> Result<WhatIfOutcome, CommandError> {
        Ok(match &entry.outcome {
            JournalOutcome::Accepted {
                first_position: Some(first),
                last_position: Some(last),
            } => WhatIfOutcome::Accepted {
                events: self
                    .store
                    .read_all(
                        *first,
                        (*last - *first + 1) as usize,
                        &crate::store::EventFilter::all(),
                    )?
                    .events
                    .into_iter()
                    .map(|e| WhatIfEvent {
                        event_type: e.event_type,
                        schema_version: e.schema_version,
                        data: e.data,
                    })
                    .collect(),
            },
            JournalOutcome::Accepted { .. } => WhatIfOutcome::Accepted { events: Vec::new() },
            JournalOutcome::Rejected { code, message } => WhatIfOutcome::Rejected {
                code: code.clone(),
                message: message.clone(),
            },
            JournalOutcome::Malformed { reason } => WhatIfOutcome::Malformed {
                reason: reason.clone(),
            },
        })
    }

    /// The candidate's state of the entry's stream at the version the entry
    /// was decided on, folded on from what an earlier entry of the stream left.
    async fn candidate_state(
        &self,
        candidate: &Arc<LoadedModule>,
        entry: &JournalEntry,
        states: &mut HashMap<StreamId, (StreamVersion, Arc<Vec<u8>>)>,
    ) -> Result<Arc<Vec<u8>>, String> {
        let stream = entry.stream();
        let target = entry.decided_at;
        let start = match states.get(&stream) {
            Some((v, s)) if *v <= target => AggregateState {
                version: *v,
                bytes: s.clone(),
            },
            _ => AggregateState {
                version: 0,
                bytes: Arc::new(
                    self.initial_state(candidate)
                        .await
                        .map_err(|e| format!("initial-state: {e}"))?,
                ),
            },
        };
        let folded = self
            .replay(candidate, &stream, start, Some(target))
            .await
            .map_err(|e| format!("apply failed folding {stream} up to {target}: {e}"))?;
        let (version, state) = (folded.version, folded.bytes);
        if version < target {
            return Err(format!(
                "the stream ends at {version}, before the version {target} the command was decided on"
            ));
        }
        let kept: usize = states.values().map(|(_, s)| s.len()).sum();
        if states.len() >= STATES_KEPT || kept + state.len() > STATE_BYTES_KEPT {
            states.clear();
        }
        states.insert(stream, (version, state.clone()));
        Ok(state)
    }

    async fn decide_again(
        &self,
        candidate: &Arc<LoadedModule>,
        entry: &JournalEntry,
        state: Arc<Vec<u8>>,
    ) -> WhatIfOutcome {
        let guest = match aggregate_of(candidate) {
            Ok(guest) => guest.clone(),
            Err(e) => {
                return WhatIfOutcome::Failed {
                    error: e.to_string(),
                };
            }
        };
        let request = CommandRequest {
            aggregate_type: entry.aggregate_type.clone(),
            aggregate_id: entry.aggregate_id.clone(),
            command: entry.command.clone(),
            precondition: Precondition::None,
            command_id: Some(entry.command_id.clone()),
            correlation_id: Some(entry.correlation_id.clone()),
            causation_id: entry.causation_id.clone(),
        };
        // The clock and the randomness the first decision saw.
        let context = CommandContext {
            aggregate_type: entry.aggregate_type.clone(),
            aggregate_id: entry.aggregate_id.clone(),
            command_id: entry.command_id.clone(),
            correlation_id: entry.correlation_id.clone(),
            received_at_ms: entry.received_at_ms,
        };
        let (label, version, max_state_bytes) = (
            candidate.label(),
            entry.decided_at,
            self.config.max_state_bytes,
        );
        let decided = self
            .runtime
            .pool()
            .run(&candidate.record.name, move || {
                decide::decide(
                    &guest,
                    &label,
                    &state,
                    version,
                    &request,
                    &context,
                    max_state_bytes,
                )
            })
            .await;
        match decided {
            Ok(Some(decision)) => WhatIfOutcome::Accepted {
                events: decision
                    .events
                    .into_iter()
                    .map(|e| WhatIfEvent {
                        event_type: e.event_type,
                        schema_version: e.schema_version,
                        data: e.data,
                    })
                    .collect(),
            },
            Ok(None) => WhatIfOutcome::Accepted { events: Vec::new() },
            Err(CommandError::Rejected { code, message }) => {
                WhatIfOutcome::Rejected { code, message }
            }
            Err(CommandError::InvalidCommand(reason)) => WhatIfOutcome::Malformed { reason },
            Err(e) => WhatIfOutcome::Failed {
                error: e.to_string(),
            },
        }
    }
}

fn compare(recorded: &WhatIfOutcome, candidate: &WhatIfOutcome) -> Change {
    use WhatIfOutcome::*;
    match (recorded, candidate) {
        (_, Failed { .. }) | (Failed { .. }, _) => Change::Failed,
        (Accepted { events: a }, Accepted { events: b }) if a == b => Change::Unchanged,
        (Accepted { .. }, Accepted { .. }) => Change::DifferentEvents,
        (Accepted { .. }, Rejected { .. } | Malformed { .. }) => Change::AcceptedToRejected,
        (Rejected { .. } | Malformed { .. }, Accepted { .. }) => Change::RejectedToAccepted,
        (Rejected { code: a, .. }, Rejected { code: b, .. }) if a == b => Change::Unchanged,
        (Malformed { .. }, Malformed { .. }) => Change::Unchanged,
        _ => Change::DifferentRejection,
    }
}

/// The command's `type` field, or `?`.
fn command_type(command: &str) -> String {
    serde_json::from_str::<serde_json::Value>(command)
        .ok()
        .and_then(|v| v.get("type").and_then(|t| t.as_str()).map(str::to_string))
        .map(|t| t.chars().take(128).collect())
        .unwrap_or_else(|| "?".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accepted(data: &str) -> WhatIfOutcome {
        WhatIfOutcome::Accepted {
            events: vec![WhatIfEvent {
                event_type: "Withdrawn".into(),
                schema_version: 1,
                data: data.into(),
            }],
        }
    }

    fn rejected(code: &str) -> WhatIfOutcome {
        WhatIfOutcome::Rejected {
            code: code.into(),
            message: String::new(),
        }
    }

    #[test]
    fn outcomes_compare_by_kind_events_and_code() {
        assert_eq!(compare(&accepted("{}"), &accepted("{}")), Change::Unchanged);
        assert_eq!(
            compare(&accepted("{}"), &accepted("{ }")),
            Change::DifferentEvents
        );
        assert_eq!(
            compare(&accepted("{}"), &rejected("x")),
            Change::AcceptedToRejected
        );
        assert_eq!(
            compare(&rejected("x"), &accepted("{}")),
            Change::RejectedToAccepted
        );
        assert_eq!(compare(&rejected("x"), &rejected("x")), Change::Unchanged);
        assert_eq!(
            compare(&rejected("x"), &rejected("y")),
            Change::DifferentRejection
        );
        let failed = WhatIfOutcome::Failed {
            error: "trap".into(),
        };
        assert_eq!(compare(&accepted("{}"), &failed), Change::Failed);
        assert_eq!(command_type(r#"{"type":"Deposit","amount":1}"#), "Deposit");
        assert_eq!(command_type("[1]"), "?");
    }
}
