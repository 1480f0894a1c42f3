//! Folding a stream's events into state through the module's `apply`, in
//! batches a replay can always afford.
//!
//! At write time `apply` sees one command's events, with one call's fuel and
//! memory. A replay folds many commands at once, so it must not be held to one
//! call's budget, or history whose every command was accepted could become
//! unreadable. Each replay call therefore:
//! - ends at a command boundary (events of one command stay together; the
//!   stream is read in pages that end at one too, except where a temporal read
//!   asks for a version inside a command) and holds
//!   at most [`APPLY_BATCH`] events and about [`REPLAY_BATCH_BYTES`] of data
//!   (always at least one whole command);
//! - gets the fuel of as many calls as it folds commands;
//! - if it still runs out of fuel, memory, time or another sandbox bound, is
//!   split in two at a command boundary and retried, down to one command per
//!   call: exactly what write time ran, and succeeded with.
//!
//! Only wall-clock time can still stop a one-command replay (load can slow a
//! call past any deadline, even the replay's 4x one): that is
//! [`CommandError::ReplayTimedOut`], a transient 503, never a guest failure
//! that would blame the history.

use std::ops::Range;
use std::sync::Arc;

use super::{CommandError, aggregate_of, to_stream_event};
use crate::modules::LoadedModule;
use crate::runtime::{GuestError, Runtime, StreamEvent};
use crate::store::RecordedEvent;

/// Most events handed to one `apply` call.
pub const APPLY_BATCH: usize = 1000;

/// About how many bytes of event data one replay call takes in (one command's
/// events may be more; they are never split).
pub const REPLAY_BATCH_BYTES: usize = 1 << 20;

/// Folds `events`, in stream order, into `state`.
pub(super) async fn fold(
    runtime: &Runtime,
    module: &Arc<LoadedModule>,
    mut state: Arc<Vec<u8>>,
    events: &[RecordedEvent],
) -> Result<Arc<Vec<u8>>, CommandError> {
    let commands = command_spans(events);
    let mut next = 0;
    while next < commands.len() {
        let end = batch_end(events, &commands, next);
        state = fold_commands(runtime, module, state, events, &commands[next..end]).await?;
        next = end;
    }
    Ok(state)
}

/// One call for `commands` (spans of `events`), split in halves while it fails
/// for want of resources.
async fn fold_commands(
    runtime: &Runtime,
    module: &Arc<LoadedModule>,
    state: Arc<Vec<u8>>,
    events: &[RecordedEvent],
    commands: &[Range<usize>],
) -> Result<Arc<Vec<u8>>, CommandError> {
    let span = commands[0].start..commands[commands.len() - 1].end;
    let batch: Vec<StreamEvent> = events[span.clone()].iter().map(to_stream_event).collect();
    let versions: Vec<u32> = events[span].iter().map(|e| e.schema_version).collect();
    let guest = aggregate_of(module)?.clone();
    let (before, units) = (state.clone(), commands.len());
    let folded = runtime
        .pool()
        .run(&module.record.name, move || {
            guest.apply_scaled(&before, &batch, &versions, units)
        })
        .await;
    match folded {
        Ok(bytes) => Ok(Arc::new(bytes)),
        Err(e) if commands.len() > 1 && for_want_of_resources(&e) => {
            let (first, second) = commands.split_at(commands.len() / 2);
            let state = Box::pin(fold_commands(runtime, module, state, events, first)).await?;
            Box::pin(fold_commands(runtime, module, state, events, second)).await
        }
        Err(GuestError::Timeout(limit)) => Err(CommandError::ReplayTimedOut {
            module: module.label(),
            limit,
        }),
        Err(e) => Err(e.into()),
    }
}

fn for_want_of_resources(e: &GuestError) -> bool {
    matches!(
        e,
        GuestError::FuelExhausted { .. }
            | GuestError::MemoryLimit { .. }
            | GuestError::Timeout(_)
            | GuestError::LimitExceeded(_)
    )
}

/// The events of each command, as index ranges: consecutive events with the
/// same command id. An event without one (appended through the store's own
/// API) is a command of its own.
fn command_spans(events: &[RecordedEvent]) -> Vec<Range<usize>> {
    let mut spans: Vec<Range<usize>> = Vec::new();
    for (i, event) in events.iter().enumerate() {
        let id = event.metadata.command_id.as_deref();
        match spans.last_mut() {
            Some(last)
                if id.is_some() && events[last.start].metadata.command_id.as_deref() == id =>
            {
                last.end = i + 1
            }
            _ => spans.push(i..i + 1),
        }
    }
    spans
}

/// Where the replay call that starts with command `from` ends (exclusive).
fn batch_end(events: &[RecordedEvent], commands: &[Range<usize>], from: usize) -> usize {
    let (mut count, mut bytes) = (0, 0);
    let mut end = from;
    for span in &commands[from..] {
        let span_bytes: usize = events[span.clone()].iter().map(RecordedEvent::weight).sum();
        let fits = count + span.len() <= APPLY_BATCH && bytes + span_bytes <= REPLAY_BATCH_BYTES;
        if end > from && !fits {
            break;
        }
        count += span.len();
        bytes += span_bytes;
        end += 1;
    }
    end
}
