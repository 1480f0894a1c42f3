//! Given / when / then for aggregates, natively, in the shape of cqrs-es's
//! `TestFramework`:
//!
//! ```ignore
//! AggregateTest::<BankAccount>::given(vec![Event::Opened { .. }])
//!     .when(Command::Withdraw { amount: 500 })
//!     .then_expect_rejection("insufficient-funds");
//! ```
//!
//! Every event goes through the same JSON split (type + data) the component
//! uses, so an event that would not survive the Wasm boundary fails here too.

use std::fmt::Debug;

use crate::codec::{self, CommandFailure};
use crate::{Aggregate, Context};

pub struct AggregateTest<A: Aggregate> {
    state: A,
    context: Context,
}

impl<A: Aggregate> AggregateTest<A> {
    /// Starts from an aggregate with no events.
    pub fn given_no_previous_events() -> Self {
        Self::given(Vec::new())
    }

    /// Starts from the state these events lead to.
    pub fn given(events: Vec<A::Event>) -> Self {
        let mut state = A::default();
        for event in &events {
            state = state.apply(&roundtrip::<A>(event));
        }
        AggregateTest {
            state,
            context: test_context(),
        }
    }

    /// Replaces the command context (ids, received-at time).
    pub fn with_context(mut self, context: Context) -> Self {
        self.context = context;
        self
    }

    /// Decides a typed command.
    pub fn when(self, command: A::Command) -> Outcome<A> {
        let result = self
            .state
            .handle(command, &self.context)
            .map(|events| events.iter().map(roundtrip::<A>).collect())
            .map_err(CommandFailure::Rejected);
        Outcome {
            state: self.state,
            result,
        }
    }

    /// Decides a command given as JSON, exactly as the host would send it.
    pub fn when_json(self, command: &str) -> Outcome<A> {
        let bytes = codec::encode_state(&self.state);
        let result = codec::handle::<A>(&bytes, command, &self.context).map(|parts| {
            parts
                .iter()
                .map(|p| {
                    codec::decode_event::<A::Event>(&p.event_type, &p.data)
                        .expect("an event the aggregate made decodes")
                })
                .collect()
        });
        Outcome {
            state: self.state,
            result,
        }
    }
}

/// What a command led to.
pub struct Outcome<A: Aggregate> {
    state: A,
    result: Result<Vec<A::Event>, CommandFailure>,
}

impl<A: Aggregate> Outcome<A>
where
    A::Event: PartialEq + Debug,
{
    /// Asserts the command produced exactly these events, in order.
    pub fn then_expect_events(self, expected: Vec<A::Event>) -> Self {
        match &self.result {
            Ok(events) => assert_eq!(
                events, &expected,
                "the command produced other events than expected"
            ),
            Err(failure) => {
                panic!("expected events {expected:?}, but the command failed: {failure:?}")
            }
        }
        self
    }

    /// Asserts a business rule refused the command with this code.
    pub fn then_expect_rejection(self, code: &str) -> Self {
        match &self.result {
            Err(CommandFailure::Rejected(r)) => {
                assert_eq!(r.code, code, "rejected, but with another code: {r:?}")
            }
            other => panic!("expected a rejection {code:?}, got {other:?}"),
        }
        self
    }

    /// Asserts the command was not understood (bad JSON, unknown type, missing field).
    pub fn then_expect_malformed(self) -> Self {
        match &self.result {
            Err(CommandFailure::Malformed(_)) => {}
            other => panic!("expected a malformed-command failure, got {other:?}"),
        }
        self
    }

    /// Checks the state after the command's events are applied.
    pub fn then_state(self, check: impl FnOnce(&A)) -> Self {
        let events = self
            .result
            .as_ref()
            .expect("then_state needs a command that produced events");
        let mut state =
            codec::decode_state::<A>(&codec::encode_state(&self.state)).expect("state round-trips");
        for event in events {
            state = state.apply(event);
        }
        check(&state);
        Outcome {
            state: self.state,
            result: self.result,
        }
    }
}

fn roundtrip<A: Aggregate>(event: &A::Event) -> A::Event {
    let parts = codec::encode_event(event).unwrap_or_else(|e| panic!("{e}"));
    codec::decode_event(&parts.event_type, &parts.data).unwrap_or_else(|e| panic!("{e}"))
}

fn test_context() -> Context {
    Context {
        aggregate_type: "test".into(),
        aggregate_id: "test-1".into(),
        command_id: "command-1".into(),
        correlation_id: "correlation-1".into(),
        received_at_ms: 1_700_000_000_000,
    }
}
