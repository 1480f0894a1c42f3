//! One command's guest work, run on a guest thread: `handle`, check what the
//! guest returned, then `apply` the new events to get the state they lead to.

use super::guest_output;
use super::{CommandError, CommandRequest, STATE_DIGEST_KEY, event_id_for, state_digest};
use crate::runtime::{
    AggregateModule, CommandContext, CommandError as GuestCommandError, StreamEvent,
};
use crate::store::{EventMetadata, NewEvent, StreamVersion};

/// What a command decided: the events to append and the state they lead to.
pub struct Decision {
    pub events: Vec<NewEvent>,
    pub state_after: Vec<u8>,
}

/// `None` when the command decided on no events.
pub fn decide(
    guest: &AggregateModule,
    label: &str,
    state: &[u8],
    version: StreamVersion,
    request: &CommandRequest,
    context: &CommandContext,
    max_state_bytes: usize,
) -> Result<Option<Decision>, CommandError> {
    let invalid = |reason: String| CommandError::InvalidGuestOutput {
        module: label.to_string(),
        reason,
    };
    let decided = match guest.handle(state, &request.command, context)? {
        Ok(events) => events,
        Err(GuestCommandError::Malformed(reason)) => {
            guest_output::check_malformed(&reason).map_err(invalid)?;
            return Err(CommandError::InvalidCommand(reason));
        }
        Err(GuestCommandError::Rejected(r)) => {
            guest_output::check_rejection(&r.code, &r.message).map_err(invalid)?;
            return Err(CommandError::Rejected {
                code: r.code,
                message: r.message,
            });
        }
    };
    if decided.is_empty() {
        return Ok(None);
    }
    guest_output::check_event_count(decided.len()).map_err(invalid)?;
    guest_output::check_producer(label).map_err(invalid)?;
    let mut events = Vec::with_capacity(decided.len());
    for (i, event) in decided.into_iter().enumerate() {
        guest_output::check_event(i, &event.event_type, &event.data).map_err(invalid)?;
        let schema_version = guest.schema().of(&event.event_type);
        events.push(NewEvent {
            event_id: event_id_for(&context.command_id, i),
            event_type: event.event_type,
            data: event.data,
            metadata: EventMetadata {
                correlation_id: Some(context.correlation_id.clone()),
                causation_id: Some(
                    request
                        .causation_id
                        .clone()
                        .unwrap_or_else(|| context.command_id.clone()),
                ),
                command_id: Some(context.command_id.clone()),
                producer: Some(label.to_string()),
                extra: Default::default(),
            },
            schema_version,
        });
    }
    // Evolve before appending, so the last event can carry the digest of the
    // state it leads to: the record `verify` audits replays against.
    let batch: Vec<StreamEvent> = events
        .iter()
        .enumerate()
        .map(|(i, e)| StreamEvent {
            version: version + 1 + i as u64,
            event_id: e.event_id.to_string(),
            event_type: e.event_type.clone(),
            data: e.data.clone(),
        })
        .collect();
    let versions: Vec<u32> = events.iter().map(|e| e.schema_version).collect();
    let after = guest.apply(state, &batch, &versions)?;
    if after.len() > max_state_bytes {
        return Err(CommandError::StateTooLarge {
            module: label.to_string(),
            bytes: after.len(),
            limit: max_state_bytes,
        });
    }
    if let Some(last) = events.last_mut() {
        last.metadata
            .extra
            .insert(STATE_DIGEST_KEY.to_string(), state_digest(&after));
    }
    Ok(Some(Decision {
        events,
        state_after: after,
    }))
}
