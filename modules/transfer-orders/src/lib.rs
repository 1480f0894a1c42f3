//! A transfer order: a customer's request to move money from one bank
//! account to another, made once, under the transfer's id.
//!
//! The aggregate's id is the transfer id. Accepting the order appends a
//! `TransferRequested` event carrying that id, which the `transfers` process
//! (`modules/transfers`) subscribes to by event type and routes on: the
//! process instance that moves the money is named by the order's id, so one
//! order is one transfer.
//!
//! Why an aggregate in front of the process: the process takes a repeated
//! request under a known id as the same transfer, but it cannot refuse it to
//! the client. Here a second `Request` on the same id is refused outright
//! (`already_requested`), as are requests the process would only record as
//! invalid (a non-positive amount, the same account twice), so the client
//! hears "no" when it asks rather than finding a failed transfer later.
//!
//! The event is defined here rather than borrowed from `transfers`: the
//! order is the source and the process one consumer of it, so the order does
//! not depend on the process. The tests check that the JSON it appends
//! decodes as the process's `Request` and is routed to the order's id.

use refold_sdk::{Aggregate, Context, Rejection};
use serde::{Deserialize, Serialize};

/// Amounts are in cents.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferOrder {
    pub status: Status,
    pub from: String,
    pub to: String,
    pub amount: i64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    #[default]
    New,
    Requested,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Command {
    /// Asks for `amount` cents to move from account `from` to account `to`.
    Request {
        from: String,
        to: String,
        amount: i64,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Event {
    /// The event the `transfers` process starts from: its type and fields are
    /// that process's `Request::TransferRequested`, field for field.
    /// `transfer_id` repeats the aggregate id because the process routes on
    /// the event's data, not on the stream it came from.
    TransferRequested {
        transfer_id: String,
        from: String,
        to: String,
        amount: i64,
    },
}

impl Aggregate for TransferOrder {
    type Command = Command;
    type Event = Event;

    fn handle(&self, command: Command, context: &Context) -> Result<Vec<Event>, Rejection> {
        let Command::Request { from, to, amount } = command;
        if self.status == Status::Requested {
            return Err(Rejection::new(
                "already_requested",
                format!(
                    "transfer {} was already requested ({} from {} to {}); a new transfer needs a new id",
                    context.aggregate_id, self.amount, self.from, self.to
                ),
            ));
        }
        if amount <= 0 {
            return Err(Rejection::new(
                "invalid_amount",
                format!("the amount must be positive, not {amount}"),
            ));
        }
        if from.trim().is_empty() || to.trim().is_empty() {
            return Err(Rejection::new(
                "account_required",
                "a transfer needs a source and a destination account",
            ));
        }
        if from == to {
            return Err(Rejection::new(
                "same_account",
                format!("the source and the destination are the same account, {from}"),
            ));
        }
        Ok(vec![Event::TransferRequested {
            transfer_id: context.aggregate_id.clone(),
            from,
            to,
            amount,
        }])
    }

    fn apply(mut self, event: &Event) -> Self {
        match event {
            Event::TransferRequested {
                from, to, amount, ..
            } => {
                self.status = Status::Requested;
                self.from.clone_from(from);
                self.to.clone_from(to);
                self.amount = *amount;
            }
        }
        self
    }
}

#[cfg(feature = "component")]
refold_sdk::export_aggregate!(TransferOrder);

#[cfg(test)]
mod tests {
    use super::*;
    use refold_sdk::testing::{AggregateTest, ProcessTest};
    use refold_sdk::{ProcessCommand, ProcessStatus, codec};

    /// The aggregate type the host gives this module's streams: its name.
    const AGGREGATE_TYPE: &str = "transfer-orders";

    fn context(transfer_id: &str) -> Context {
        Context {
            aggregate_type: AGGREGATE_TYPE.into(),
            aggregate_id: transfer_id.into(),
            command_id: "command-1".into(),
            correlation_id: "correlation-1".into(),
            received_at_ms: 1_700_000_000_000,
        }
    }

    fn request(from: &str, to: &str, amount: i64) -> Command {
        Command::Request {
            from: from.into(),
            to: to.into(),
            amount,
        }
    }

    fn requested(transfer_id: &str, amount: i64) -> Event {
        Event::TransferRequested {
            transfer_id: transfer_id.into(),
            from: "acc-a".into(),
            to: "acc-b".into(),
            amount,
        }
    }

    #[test]
    fn a_request_names_the_transfer_by_the_orders_id() {
        AggregateTest::<TransferOrder>::given_no_previous_events()
            .with_context(context("t-1"))
            .when(request("acc-a", "acc-b", 100))
            .then_expect_events(vec![requested("t-1", 100)])
            .then_state(|s| {
                assert_eq!(
                    s,
                    &TransferOrder {
                        status: Status::Requested,
                        from: "acc-a".into(),
                        to: "acc-b".into(),
                        amount: 100,
                    }
                )
            });
    }

    #[test]
    fn an_order_is_requested_once() {
        AggregateTest::<TransferOrder>::given(vec![requested("t-1", 100)])
            .with_context(context("t-1"))
            .when(request("acc-a", "acc-b", 100))
            .then_expect_rejection("already_requested");
        // Another request is refused too, not taken as a change of the first.
        AggregateTest::<TransferOrder>::given(vec![requested("t-1", 100)])
            .with_context(context("t-1"))
            .when(request("acc-c", "acc-d", 5))
            .then_expect_rejection("already_requested");
    }

    #[test]
    fn the_amount_must_be_positive() {
        for amount in [0, -1, i64::MIN] {
            AggregateTest::<TransferOrder>::given_no_previous_events()
                .when(request("acc-a", "acc-b", amount))
                .then_expect_rejection("invalid_amount");
        }
    }

    #[test]
    fn money_moves_between_two_named_accounts() {
        AggregateTest::<TransferOrder>::given_no_previous_events()
            .when(request("acc-a", "acc-a", 100))
            .then_expect_rejection("same_account");
        AggregateTest::<TransferOrder>::given_no_previous_events()
            .when(request("", "acc-b", 100))
            .then_expect_rejection("account_required");
        AggregateTest::<TransferOrder>::given_no_previous_events()
            .when(request("acc-a", " ", 100))
            .then_expect_rejection("account_required");
    }

    #[test]
    fn a_refused_request_leaves_the_id_free() {
        let state = TransferOrder::default();
        let refused = state.handle(request("acc-a", "acc-b", 0), &context("t-1"));
        assert_eq!(refused.unwrap_err().code, "invalid_amount");
        AggregateTest::<TransferOrder>::given_no_previous_events()
            .with_context(context("t-1"))
            .when(request("acc-a", "acc-b", 1))
            .then_expect_events(vec![requested("t-1", 1)]);
    }

    #[test]
    fn json_commands_decode_as_the_host_sends_them() {
        AggregateTest::<TransferOrder>::given_no_previous_events()
            .with_context(context("t-7"))
            .when_json(r#"{"type":"Request","from":"acc-a","to":"acc-b","amount":250}"#)
            .then_expect_events(vec![requested("t-7", 250)]);
        AggregateTest::<TransferOrder>::given_no_previous_events()
            .when_json(r#"{"type":"Request","from":"acc-a","to":"acc-b"}"#)
            .then_expect_malformed();
        AggregateTest::<TransferOrder>::given_no_previous_events()
            .when_json(r#"{"type":"Request","from":"acc-a","to":"acc-b","amount":"250"}"#)
            .then_expect_malformed();
    }

    /// The event exactly as the host would store it: type and JSON data, from
    /// the command as JSON text.
    fn stored_event(transfer_id: &str, command: &str) -> codec::EventParts {
        let state = codec::encode_state(&TransferOrder::default());
        let mut parts = codec::handle::<TransferOrder>(&state, command, &context(transfer_id))
            .unwrap_or_else(|failure| panic!("the request was not accepted: {failure:?}"));
        assert_eq!(parts.len(), 1, "a request appends one event");
        parts.remove(0)
    }

    #[test]
    fn the_stored_event_is_the_transfers_process_request() {
        let stored = stored_event(
            "t-1",
            r#"{"type":"Request","from":"acc-a","to":"acc-b","amount":100}"#,
        );
        assert_eq!(stored.event_type, "TransferRequested");
        let decoded: transfers::Request = codec::decode_event(&stored.event_type, &stored.data)
            .unwrap_or_else(|e| panic!("the transfers process cannot read the event: {e}"));
        assert_eq!(
            decoded,
            transfers::Request::TransferRequested {
                transfer_id: "t-1".into(),
                from: "acc-a".into(),
                to: "acc-b".into(),
                amount: 100,
            }
        );
    }

    #[test]
    fn the_transfers_process_starts_the_ordered_transfer() {
        let stored = stored_event(
            "t-1",
            r#"{"type":"Request","from":"acc-a","to":"acc-b","amount":100}"#,
        );
        ProcessTest::<transfers::Transfer>::new()
            .when_raw_event(AGGREGATE_TYPE, "t-1", &stored.event_type, &stored.data)
            .then_routed_to("t-1")
            .then_events(vec![transfers::Event::Started {
                from: "acc-a".into(),
                to: "acc-b".into(),
                amount: 100,
            }])
            .then_commands(vec![ProcessCommand::new(
                transfers::DEBIT,
                transfers::ACCOUNT,
                "acc-a",
                &bank_account::Command::Withdraw { amount: 100 },
            )])
            .then_status(ProcessStatus::Running);
    }
}
