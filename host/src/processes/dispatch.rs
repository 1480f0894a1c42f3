//! Sending one command a process asked for, until it has an outcome.
//!
//! The command goes through the same pipeline as a client's, under the id the
//! runner recorded with it, so a re-send (after a crash, or a retry here) of
//! a command that was accepted with events is answered by the original
//! outcome and takes effect once. A refusal, or an acceptance without events,
//! writes no command record, so a re-send of such a command is decided again:
//! safe, as nothing of the first attempt happened, though the second answer
//! may differ from the first (which no instance had taken in yet).
//!
//! Transient failures (a busy host, a module still compiling, a storage
//! hiccup, a guest stopped by its wall-clock deadline) are retried with
//! backoff for as long as it takes: a process never loses a command. Every
//! other failure is an outcome the process hears about.

use std::time::Duration;

use tokio::sync::watch;

use super::records::Command;
use crate::commands::{CommandError, CommandRequest, CommandService};
use crate::runtime::GuestError;
use crate::store::RecordedEvent;

/// What became of a command.
#[derive(Clone, Debug)]
pub enum Outcome {
    Accepted {
        command: Command,
        /// The target's version after it.
        version: u64,
        events: Vec<RecordedEvent>,
    },
    Rejected {
        command: Command,
        code: String,
        message: String,
        /// The target did not understand it (or does not exist).
        malformed: bool,
    },
}

impl Outcome {
    pub fn command(&self) -> &Command {
        match self {
            Outcome::Accepted { command, .. } | Outcome::Rejected { command, .. } => command,
        }
    }
}

/// The longest a retry of a transiently failing command waits.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Sends `command` until it has an outcome; None if `stop` turned true first.
/// `on_retry` hears about each transient failure (for status and metrics).
pub async fn send(
    commands: &CommandService,
    command: &Command,
    correlation_id: &str,
    stop: &mut watch::Receiver<bool>,
    mut on_retry: impl FnMut(&CommandError),
) -> Option<Outcome> {
    // A target no stream can have: answered here, never sent.
    if let Err(e) = crate::store::StreamId::new(&command.aggregate_type, &command.aggregate_id) {
        return Some(Outcome::Rejected {
            command: command.clone(),
            code: "malformed".to_string(),
            message: format!("the command's target is no aggregate: {e}"),
            malformed: true,
        });
    }
    let mut backoff = Duration::from_millis(10);
    loop {
        if *stop.borrow() {
            return None;
        }
        let request = CommandRequest {
            aggregate_type: command.aggregate_type.clone(),
            aggregate_id: command.aggregate_id.clone(),
            command: command.command.clone(),
            precondition: Default::default(),
            command_id: Some(command.command_id.clone()),
            correlation_id: Some(correlation_id.to_string()),
            causation_id: Some(correlation_id.to_string()),
        };
        let result = tokio::select! {
            result = commands.execute(request) => result,
            _ = stop.wait_for(|s| *s) => return None,
        };
        match result {
            Ok(outcome) => {
                return Some(Outcome::Accepted {
                    command: command.clone(),
                    version: outcome.version,
                    events: outcome.events,
                });
            }
            Err(e) if transient(&e) => {
                on_retry(&e);
                tracing::debug!(command_id = %command.command_id, error = %e, "a process's command failed for now; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.wait_for(|s| *s) => return None,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            Err(CommandError::Rejected { code, message }) => {
                return Some(Outcome::Rejected {
                    command: command.clone(),
                    code,
                    message,
                    malformed: false,
                });
            }
            Err(e) => {
                let malformed = matches!(
                    e,
                    CommandError::InvalidCommand(_)
                        | CommandError::InvalidRequest(_)
                        | CommandError::UnknownAggregateType(_)
                );
                return Some(Outcome::Rejected {
                    command: command.clone(),
                    code: if malformed {
                        "malformed".to_string()
                    } else {
                        e.code().to_string()
                    },
                    message: e.to_string(),
                    malformed,
                });
            }
        }
    }
}

/// Failures that say nothing about the command: try again later.
fn transient(e: &CommandError) -> bool {
    match e {
        CommandError::Conflict { .. }
        | CommandError::ReplayTimedOut { .. }
        | CommandError::ModuleNotReady(_)
        | CommandError::TooManyVerifies { .. }
        | CommandError::Store(_)
        | CommandError::Guest(GuestError::Timeout(_)) => true,
        CommandError::UnknownAggregateType(_)
        | CommandError::InvalidRequest(_)
        | CommandError::CommandIdReused { .. }
        | CommandError::InvalidCommand(_)
        | CommandError::Rejected { .. }
        | CommandError::WrongExpectedVersion { .. }
        | CommandError::Guest(_)
        | CommandError::InvalidGuestOutput { .. }
        | CommandError::StateTooLarge { .. }
        | CommandError::NotFound(_) => false,
    }
}
