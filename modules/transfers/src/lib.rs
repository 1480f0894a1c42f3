//! A transfer between two `bank-account`s, as a process: debit the source
//! (`Withdraw`), then credit the destination (`Deposit`).
//!
//! Each account is its own consistency boundary, so no single command can
//! move money between two of them; this process does it in two steps and
//! undoes the first when the second fails:
//!
//! - the source refuses the debit (overdraft, closed): the transfer fails,
//!   nothing moved;
//! - the destination refuses the credit (closed): the source is refunded
//!   (`Deposit` back), and the transfer fails, compensated;
//! - the debit's outcome has not arrived within [`DEBIT_TIMEOUT_MS`]: the
//!   transfer is given up on. The debit may still go through later (the
//!   runner never drops a command), so the instance waits for its outcome
//!   and refunds it if it did.
//!
//! A transfer starts from a `TransferRequested` event of any aggregate type
//! (a teller desk, a payment order, ...) carrying the transfer's id, which
//! names the process instance.

use bank_account::Command as AccountCommand;
use refold_sdk::{
    Envelope, Process, ProcessCommand, ProcessContext, ProcessInput, ProcessStatus, Reaction,
    Selector,
};
use serde::{Deserialize, Serialize};

/// The aggregate type of the accounts this process moves money between.
pub const ACCOUNT: &str = "bank-account";

/// How long the debit's outcome may take before the transfer is given up on.
/// Generous: the runner retries a slow account, so only a stuck one gets here.
pub const DEBIT_TIMEOUT_MS: u64 = 30_000;

/// Command keys: what each command the process sends is for.
pub const DEBIT: &str = "debit";
pub const CREDIT: &str = "credit";
pub const REFUND: &str = "refund";

/// The log events a transfer starts from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Request {
    TransferRequested {
        transfer_id: String,
        from: String,
        to: String,
        /// In cents.
        amount: i64,
    },
}

/// A transfer's own events, kept in its instance stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Event {
    /// The request was taken up; the debit is on its way.
    Started {
        from: String,
        to: String,
        amount: i64,
    },
    /// The request cannot be carried out as given (nothing was sent).
    Invalid {
        reason: String,
    },
    Debited,
    /// The source refused the debit; nothing moved.
    DebitRefused {
        code: String,
    },
    /// The debit's outcome is overdue: the transfer is given up on, and a
    /// debit that still goes through will be refunded.
    DebitOverdue,
    Credited,
    /// The destination refused the credit; the source is being refunded.
    CreditRefused {
        code: String,
    },
    /// A debit that went through after the transfer was given up on is being refunded.
    LateDebit,
    Refunded,
    /// The refund itself was refused (the source closed meanwhile): the money
    /// is out of every account, and a person has to settle it.
    RefundRefused {
        code: String,
    },
}

/// Where a transfer is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// No request yet.
    #[default]
    New,
    Debiting,
    Crediting,
    /// Given up on while the debit's outcome is awaited.
    Abandoning,
    Refunding,
    Completed,
    /// Nothing moved, or the money went back.
    Failed,
    /// The refund was refused: money is in flight until a person settles it.
    Stuck,
}

/// A transfer's state. Amounts are in cents.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transfer {
    pub phase: Phase,
    pub from: String,
    pub to: String,
    pub amount: i64,
    /// Why it failed: a rejection code, `invalid: ...` or `debit-overdue`.
    pub failure: Option<String>,
}

impl Transfer {
    fn withdraw(&self) -> ProcessCommand {
        let command = AccountCommand::Withdraw {
            amount: self.amount,
        };
        ProcessCommand::new(DEBIT, ACCOUNT, &self.from, &command)
    }

    fn deposit(&self, key: &str, account: &str) -> ProcessCommand {
        let command = AccountCommand::Deposit {
            amount: self.amount,
        };
        ProcessCommand::new(key, ACCOUNT, account, &command)
    }

    /// Decides on the request, in the state it leads to.
    fn start(&self, context: &ProcessContext, request: Request) -> Reaction<Event> {
        let Request::TransferRequested {
            from, to, amount, ..
        } = request;
        let invalid = if amount <= 0 {
            Some(format!("the amount must be positive, not {amount}"))
        } else if from == to {
            Some("the source and the destination are the same account".to_string())
        } else {
            None
        };
        if let Some(reason) = invalid {
            return Reaction::none().emit(Event::Invalid { reason });
        }
        let started = Transfer {
            phase: Phase::Debiting,
            from: from.clone(),
            to: to.clone(),
            amount,
            failure: None,
        };
        Reaction::none()
            .emit(Event::Started { from, to, amount })
            .send(started.withdraw())
            .wake_at(context.now_ms + DEBIT_TIMEOUT_MS, DEBIT)
    }
}

impl Process for Transfer {
    type LogEvent = Request;
    type Event = Event;

    fn subscription() -> Selector {
        Selector::event_types(["TransferRequested"])
    }

    fn route(event: &Envelope<Request>) -> Option<String> {
        let Request::TransferRequested { transfer_id, .. } = &event.event;
        Some(transfer_id.clone())
    }

    fn react(
        &self,
        context: &ProcessContext,
        input: ProcessInput<Envelope<Request>>,
    ) -> Result<Reaction<Event>, String> {
        use ProcessInput::{Accepted, Deadline, Event as Log, Rejected};
        Ok(match (self.phase, input) {
            (Phase::New, Log(request)) => self.start(context, request.event),
            // A request repeated under the id of a transfer already started
            // is the same transfer: it is not carried out twice.
            (_, Log(_)) => Reaction::none(),

            (Phase::Debiting, Accepted(a)) if a.command.key == DEBIT => Reaction::none()
                .emit(Event::Debited)
                .send(self.deposit(CREDIT, &self.to)),
            (Phase::Debiting, Rejected(r)) if r.command.key == DEBIT => {
                Reaction::none().emit(Event::DebitRefused {
                    code: r.code().to_string(),
                })
            }
            (Phase::Debiting, Deadline(d)) if d.key == DEBIT => {
                Reaction::none().emit(Event::DebitOverdue)
            }

            (Phase::Abandoning, Accepted(a)) if a.command.key == DEBIT => Reaction::none()
                .emit(Event::LateDebit)
                .send(self.deposit(REFUND, &self.from)),
            (Phase::Abandoning, Rejected(r)) if r.command.key == DEBIT => {
                Reaction::none().emit(Event::DebitRefused {
                    code: r.code().to_string(),
                })
            }

            (Phase::Crediting, Accepted(a)) if a.command.key == CREDIT => {
                Reaction::none().emit(Event::Credited)
            }
            (Phase::Crediting, Rejected(r)) if r.command.key == CREDIT => Reaction::none()
                .emit(Event::CreditRefused {
                    code: r.code().to_string(),
                })
                .send(self.deposit(REFUND, &self.from)),

            (Phase::Refunding, Accepted(a)) if a.command.key == REFUND => {
                Reaction::none().emit(Event::Refunded)
            }
            (Phase::Refunding, Rejected(r)) if r.command.key == REFUND => {
                Reaction::none().emit(Event::RefundRefused {
                    code: r.code().to_string(),
                })
            }

            // A deadline of a step already settled.
            (_, Deadline(_)) => Reaction::none(),
            // Every command this process sends is answered in the phase it
            // was sent from, so another outcome means the runner and the
            // process disagree: stop rather than guess.
            (phase, Accepted(a)) => {
                return Err(format!("outcome of {:?} while {phase:?}", a.command.key));
            }
            (phase, Rejected(r)) => {
                return Err(format!("outcome of {:?} while {phase:?}", r.command.key));
            }
        })
    }

    fn apply(mut self, event: &Event) -> Self {
        match event {
            Event::Started { from, to, amount } => {
                self.phase = Phase::Debiting;
                self.from.clone_from(from);
                self.to.clone_from(to);
                self.amount = *amount;
            }
            Event::Invalid { reason } => {
                self.phase = Phase::Failed;
                self.failure = Some(format!("invalid: {reason}"));
            }
            Event::Debited => self.phase = Phase::Crediting,
            Event::DebitRefused { code } => {
                self.phase = Phase::Failed;
                // After an overdue debit, the reason stays the delay.
                self.failure.get_or_insert_with(|| code.clone());
            }
            Event::DebitOverdue => {
                self.phase = Phase::Abandoning;
                self.failure = Some("debit-overdue".into());
            }
            Event::Credited => self.phase = Phase::Completed,
            Event::CreditRefused { code } => {
                self.phase = Phase::Refunding;
                self.failure = Some(code.clone());
            }
            Event::LateDebit => self.phase = Phase::Refunding,
            Event::Refunded => self.phase = Phase::Failed,
            Event::RefundRefused { .. } => self.phase = Phase::Stuck,
        }
        self
    }

    fn status(&self) -> ProcessStatus {
        match self.phase {
            Phase::Completed => ProcessStatus::Completed,
            // Stuck is finished as far as the process goes; the money is
            // named in its state for whoever settles it.
            Phase::Failed | Phase::Stuck => ProcessStatus::Failed,
            Phase::New
            | Phase::Debiting
            | Phase::Crediting
            | Phase::Abandoning
            | Phase::Refunding => ProcessStatus::Running,
        }
    }
}

#[cfg(feature = "component")]
refold_sdk::export_process!(Transfer);

#[cfg(test)]
mod tests {
    use super::*;
    use bank_account::Event as AccountEvent;
    use refold_sdk::Deadline;
    use refold_sdk::testing::ProcessTest;

    fn request(amount: i64) -> Request {
        Request::TransferRequested {
            transfer_id: "t-1".into(),
            from: "acc-a".into(),
            to: "acc-b".into(),
            amount,
        }
    }

    fn withdraw(account: &str, amount: i64) -> ProcessCommand {
        ProcessCommand::new(
            DEBIT,
            ACCOUNT,
            account,
            &AccountCommand::Withdraw { amount },
        )
    }

    fn deposit(key: &str, account: &str, amount: i64) -> ProcessCommand {
        ProcessCommand::new(key, ACCOUNT, account, &AccountCommand::Deposit { amount })
    }

    /// A transfer of 100 from acc-a to acc-b, requested and debit sent.
    fn requested() -> ProcessTest<Transfer> {
        let test = ProcessTest::<Transfer>::new().named("transfers");
        let deadline = test.now_ms() + DEBIT_TIMEOUT_MS;
        test.when_event("teller", "desk-1", request(100))
            .then_routed_to("t-1")
            .then_events(vec![Event::Started {
                from: "acc-a".into(),
                to: "acc-b".into(),
                amount: 100,
            }])
            .then_commands(vec![withdraw("acc-a", 100)])
            .then_wake_ups(vec![Deadline::new(deadline, DEBIT)])
            .then_status(ProcessStatus::Running)
    }

    fn withdrawn(amount: i64, balance: i64) -> Vec<AccountEvent> {
        vec![AccountEvent::Withdrawn { amount, balance }]
    }

    fn deposited(amount: i64, balance: i64) -> Vec<AccountEvent> {
        vec![AccountEvent::Deposited { amount, balance }]
    }

    #[test]
    fn a_transfer_debits_then_credits() {
        requested()
            .when_accepted(DEBIT, withdrawn(100, 400))
            .then_events(vec![Event::Debited])
            .then_commands(vec![deposit(CREDIT, "acc-b", 100)])
            .then_pending(&[CREDIT])
            .when_accepted(CREDIT, deposited(100, 100))
            .then_events(vec![Event::Credited])
            .then_no_commands()
            .then_pending(&[])
            .then_status(ProcessStatus::Completed)
            // The debit's deadline fires after all and changes nothing.
            .advance_by(DEBIT_TIMEOUT_MS)
            .then_routed_to("t-1")
            .then_events(vec![])
            .then_status(ProcessStatus::Completed);
    }

    #[test]
    fn command_ids_follow_the_input_and_the_index() {
        let test = requested();
        assert_eq!(test.last_command_ids(), ["transfers/t-1/1/0"]);
        let test = test.when_accepted(DEBIT, withdrawn(100, 0));
        assert_eq!(test.last_command_ids(), ["transfers/t-1/2/0"]);
    }

    #[test]
    fn an_overdraft_fails_the_transfer_and_moves_nothing() {
        requested()
            .when_rejected(DEBIT, "insufficient-funds")
            .then_events(vec![Event::DebitRefused {
                code: "insufficient-funds".into(),
            }])
            .then_no_commands()
            .then_status(ProcessStatus::Failed)
            .then_state(|t| assert_eq!(t.failure.as_deref(), Some("insufficient-funds")));
    }

    #[test]
    fn a_refused_credit_refunds_the_source() {
        requested()
            .when_accepted(DEBIT, withdrawn(100, 0))
            .when_rejected(CREDIT, "closed")
            .then_events(vec![Event::CreditRefused {
                code: "closed".into(),
            }])
            .then_commands(vec![deposit(REFUND, "acc-a", 100)])
            .then_status(ProcessStatus::Running)
            .when_accepted(REFUND, deposited(100, 100))
            .then_events(vec![Event::Refunded])
            .then_status(ProcessStatus::Failed)
            .then_state(|t| {
                assert_eq!(t.phase, Phase::Failed);
                assert_eq!(t.failure.as_deref(), Some("closed"));
            });
    }

    #[test]
    fn a_refused_refund_leaves_the_transfer_stuck_for_a_person() {
        requested()
            .when_accepted(DEBIT, withdrawn(100, 0))
            .when_rejected(CREDIT, "closed")
            .when_rejected(REFUND, "closed")
            .then_events(vec![Event::RefundRefused {
                code: "closed".into(),
            }])
            .then_status(ProcessStatus::Failed)
            .then_state(|t| assert_eq!(t.phase, Phase::Stuck));
    }

    #[test]
    fn an_overdue_debit_gives_the_transfer_up_and_refunds_a_late_debit() {
        requested()
            .advance_by(DEBIT_TIMEOUT_MS - 1)
            .then_not_routed()
            .advance_by(1)
            .then_routed_to("t-1")
            .then_events(vec![Event::DebitOverdue])
            .then_no_commands()
            // Given up on, but not finished: the debit is still in flight.
            .then_status(ProcessStatus::Running)
            .then_pending(&[DEBIT])
            .when_accepted(DEBIT, withdrawn(100, 0))
            .then_events(vec![Event::LateDebit])
            .then_commands(vec![deposit(REFUND, "acc-a", 100)])
            .when_accepted(REFUND, deposited(100, 100))
            .then_status(ProcessStatus::Failed)
            .then_state(|t| assert_eq!(t.failure.as_deref(), Some("debit-overdue")));
    }

    #[test]
    fn an_overdue_debit_that_is_refused_later_just_fails() {
        requested()
            .advance_by(DEBIT_TIMEOUT_MS)
            .when_rejected(DEBIT, "insufficient-funds")
            .then_no_commands()
            .then_status(ProcessStatus::Failed)
            .then_state(|t| assert_eq!(t.failure.as_deref(), Some("debit-overdue")));
    }

    #[test]
    fn an_invalid_request_sends_nothing() {
        ProcessTest::<Transfer>::new()
            .when_event("teller", "desk-1", request(0))
            .then_routed_to("t-1")
            .then_no_commands()
            .then_wake_ups(vec![])
            .then_status(ProcessStatus::Failed);
    }

    #[test]
    fn a_repeated_request_is_not_carried_out_twice() {
        requested()
            .when_event("teller", "desk-1", request(100))
            .then_routed_to("t-1")
            .then_events(vec![])
            .then_no_commands()
            .then_pending(&[DEBIT]);
    }

    #[test]
    fn other_events_pass_by_and_transfers_are_independent() {
        let other = Request::TransferRequested {
            transfer_id: "t-2".into(),
            from: "acc-b".into(),
            to: "acc-a".into(),
            amount: 5,
        };
        requested()
            .when_event("bank-account", "acc-a", AccountEvent::Closed)
            .then_not_routed()
            .when_event("teller", "desk-2", other)
            .then_routed_to("t-2")
            .then_commands(vec![withdraw("acc-b", 5)])
            .when_rejected(DEBIT, "insufficient-funds")
            .then_status(ProcessStatus::Failed)
            .instance("t-1")
            .then_status(ProcessStatus::Running)
            .then_pending(&[DEBIT]);
    }
}
