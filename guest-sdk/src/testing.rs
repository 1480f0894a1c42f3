//! Given / when / then, natively, for aggregates in the shape of cqrs-es's
//! `TestFramework`:
//!
//! ```ignore
//! AggregateTest::<BankAccount>::given(vec![Event::Opened { .. }])
//!     .when(Command::Withdraw { amount: 500 })
//!     .then_expect_rejection("insufficient-funds");
//! ```
//!
//! and for projections:
//!
//! ```ignore
//! let mut test = ProjectionTest::<AccountBalances>::new()
//!     .given("bank-account", "acc-1", Event::Opened { .. })
//!     .given("bank-account", "acc-1", Event::Deposited { amount: 5, balance: 5 })
//!     .then_doc("account/acc-1", json!({ "owner": "Ada", "balance": 5, .. }))
//!     .then_no_doc("account/acc-2");
//! assert_eq!(test.query("balance", json!({ "account": "acc-1" }))?["balance"], 5);
//! ```
//!
//! and for processes ([`ProcessTest`]): log events in, command outcomes and
//! deadlines answered by the test, the commands and events out.
//!
//! Every event goes through the same JSON split (type + data) the component
//! uses, so an event that would not survive the Wasm boundary fails here too.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;

use serde::Serialize;
use serde_json::Value;

use crate::codec::{self, CommandFailure, RawEvent, RawInput};
use crate::{
    Accepted, Aggregate, Context, Deadline, OutcomeEvent, Process, ProcessCommand, ProcessContext,
    ProcessInput, ProcessStatus, Projection, QueryError, Rejected, Rejection, Selector,
};

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

    /// Starts from the state these recorded events lead to, each given as it
    /// sits in the log: its type, the schema version it was written at and
    /// its data (the fields without the tag). Older versions go through the
    /// aggregate's upcasters first, exactly as in the component, so a v1
    /// history can be checked against the state today's events give.
    ///
    /// Panics with the reason if an event does not upcast or decode.
    pub fn given_recorded<'a>(events: impl IntoIterator<Item = (&'a str, u32, Value)>) -> Self {
        let events: Vec<(&str, u32, String)> = events
            .into_iter()
            .map(|(t, v, data)| (t, v, data.to_string()))
            .collect();
        let versions: Vec<u32> = events.iter().map(|(_, v, _)| *v).collect();
        let bytes = codec::apply_versioned::<A>(
            &codec::encode_state(&A::default()),
            events.iter().map(|(t, _, d)| (*t, d.as_str())),
            &versions,
        )
        .unwrap_or_else(|e| panic!("the recorded events do not fold: {e}"));
        AggregateTest {
            state: codec::decode_state(&bytes).expect("the state it encoded decodes"),
            context: test_context(),
        }
    }

    /// The events a recorded one stands for today, after the aggregate's
    /// upcasters, decoded: given a v1 event, then the current shape.
    pub fn upcast(event_type: &str, version: u32, data: Value) -> Result<Vec<A::Event>, String> {
        A::schema()
            .upcast_event(event_type, version, &data.to_string())?
            .iter()
            .map(|c| codec::decode_event(&c.event_type, &c.data))
            .collect()
    }

    /// The state the given events led to.
    pub fn state(&self) -> &A {
        &self.state
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
    /// The events the command produced, or why it produced none.
    pub fn events(&self) -> Result<&[A::Event], &CommandFailure> {
        self.result.as_deref()
    }

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

/// Given / then for a [`Projection`], natively, through the very code the
/// component runs ([`codec::apply_projection_native`]).
///
/// Events are numbered like a log: positions 1, 2, 3, ... in the order given,
/// versions 1, 2, 3, ... per aggregate. Those the projection's subscription
/// does not select are dropped (their positions stay used), as the host does.
/// The events given since the last check are applied as one batch when a
/// `then_*` or [`query`](ProjectionTest::query) needs the read model.
pub struct ProjectionTest<P: Projection> {
    selector: Selector,
    store: BTreeMap<String, String>,
    pending: Vec<RawEvent>,
    position: u64,
    versions: HashMap<(String, String), u64>,
    _projection: std::marker::PhantomData<P>,
}

impl<P: Projection> Default for ProjectionTest<P> {
    fn default() -> Self {
        Self::new()
    }
}

impl<P: Projection> ProjectionTest<P> {
    /// An empty log and read model.
    pub fn new() -> Self {
        ProjectionTest {
            selector: P::subscription(),
            store: BTreeMap::new(),
            pending: Vec::new(),
            position: 0,
            versions: HashMap::new(),
            _projection: std::marker::PhantomData,
        }
    }

    /// Starts from a read model holding these documents (key, JSON).
    pub fn with_docs<K: Into<String>>(
        mut self,
        docs: impl IntoIterator<Item = (K, Value)>,
    ) -> Self {
        self.store
            .extend(docs.into_iter().map(|(k, v)| (k.into(), v.to_string())));
        self
    }

    /// Appends an event of aggregate `aggregate_type`/`aggregate_id` to the log.
    pub fn given<E: Serialize>(self, aggregate_type: &str, aggregate_id: &str, event: E) -> Self {
        let parts = codec::encode_event(&event).unwrap_or_else(|e| panic!("{e}"));
        self.given_raw(aggregate_type, aggregate_id, &parts.event_type, &parts.data)
    }

    /// Appends several events of one aggregate.
    pub fn given_events<E: Serialize>(
        self,
        aggregate_type: &str,
        aggregate_id: &str,
        events: impl IntoIterator<Item = E>,
    ) -> Self {
        events.into_iter().fold(self, |test, event| {
            test.given(aggregate_type, aggregate_id, event)
        })
    }

    /// Appends an event given as its type and JSON data (the fields without
    /// the tag), for events the projection's `Event` type cannot express.
    /// It is recorded at the version the projection's schema says is current.
    pub fn given_raw(
        self,
        aggregate_type: &str,
        aggregate_id: &str,
        event_type: &str,
        data: &str,
    ) -> Self {
        let version = P::schema().version_of(event_type);
        self.given_recorded(aggregate_type, aggregate_id, event_type, version, data)
    }

    /// Appends an event as an older producer recorded it: its type, schema
    /// version and data. The projection's upcasters run on it as in the
    /// component.
    pub fn given_recorded(
        mut self,
        aggregate_type: &str,
        aggregate_id: &str,
        event_type: &str,
        schema_version: u32,
        data: &str,
    ) -> Self {
        self.position += 1;
        let version = self
            .versions
            .entry((aggregate_type.to_string(), aggregate_id.to_string()))
            .or_default();
        *version += 1;
        if self.selector.matches(aggregate_type, event_type) {
            self.pending.push(RawEvent {
                position: self.position,
                aggregate_type: aggregate_type.to_string(),
                aggregate_id: aggregate_id.to_string(),
                version: *version,
                event_id: format!("event-{}", self.position),
                event_type: event_type.to_string(),
                data: data.to_string(),
                recorded_at_ms: 1_700_000_000_000 + self.position,
                schema_version,
            });
        }
        self
    }

    /// Applies the events given since the last check as one batch. On error
    /// the read model is left as it was and the events are dropped.
    pub fn apply_pending(&mut self) -> Result<(), String> {
        let batch = std::mem::take(&mut self.pending);
        codec::apply_projection_native::<P>(&mut self.store, &batch)
    }

    fn applied(&mut self) -> &BTreeMap<String, String> {
        if let Err(e) = self.apply_pending() {
            panic!("the projection failed to apply the given events: {e}");
        }
        &self.store
    }

    /// The read model after the given events: key to JSON text.
    pub fn docs(&mut self) -> &BTreeMap<String, String> {
        self.applied()
    }

    /// The document at `key` after the given events.
    pub fn doc(&mut self, key: &str) -> Option<Value> {
        self.applied()
            .get(key)
            .map(|doc| serde_json::from_str(doc).expect("the read model holds JSON"))
    }

    /// Asserts the document at `key` is exactly `expected`.
    pub fn then_doc(mut self, key: &str, expected: Value) -> Self {
        match self.doc(key) {
            Some(doc) => assert_eq!(doc, expected, "the document at {key:?} differs"),
            None => panic!("expected a document at {key:?}, there is none"),
        }
        self
    }

    /// Asserts there is no document at `key`.
    pub fn then_no_doc(mut self, key: &str) -> Self {
        if let Some(doc) = self.doc(key) {
            panic!("expected no document at {key:?}, found {doc}");
        }
        self
    }

    /// Asserts exactly `count` documents have keys starting with `prefix`.
    pub fn then_docs(mut self, prefix: &str, count: usize) -> Self {
        let found = self
            .applied()
            .keys()
            .filter(|k| k.starts_with(prefix))
            .count();
        assert_eq!(found, count, "documents with keys starting with {prefix:?}");
        self
    }

    /// Asserts applying the events given since the last check fails with an
    /// error containing `fragment`, and that the read model kept none of the
    /// batch's writes.
    pub fn then_apply_fails(mut self, fragment: &str) -> Self {
        let before = self.store.clone();
        match self.apply_pending() {
            Ok(()) => panic!("expected the batch to fail with {fragment:?}, it applied"),
            Err(e) => assert!(
                e.contains(fragment),
                "the batch failed, but with {e:?}, not {fragment:?}"
            ),
        }
        assert_eq!(self.store, before, "a failed batch must leave no writes");
        self
    }

    /// Runs a query as the host would: `args` travels as JSON text, the answer comes back as JSON.
    pub fn query(&mut self, name: &str, args: Value) -> Result<Value, QueryError> {
        let answer = codec::query_projection_native::<P>(self.applied(), name, &args.to_string())?;
        Ok(serde_json::from_str(&answer).expect("a query answers JSON"))
    }

    /// Asserts a query answers exactly `expected`.
    pub fn then_query(mut self, name: &str, args: Value, expected: Value) -> Self {
        match self.query(name, args) {
            Ok(answer) => assert_eq!(answer, expected, "the answer to query {name:?} differs"),
            Err(e) => panic!("query {name:?} failed: {e:?}"),
        }
        self
    }
}

/// Given / when / then for a [`Process`], natively, through the very code the
/// component runs ([`codec::react_process`], [`codec::apply_process`]), and
/// with the runner's bookkeeping played in memory:
///
/// - log events get positions 1, 2, 3, ... and per-aggregate versions; those
///   the subscription admits are routed, and the chosen instance reacts;
/// - the commands an instance sends stay pending until the test answers them
///   by key ([`when_accepted`](ProcessTest::when_accepted),
///   [`when_rejected`](ProcessTest::when_rejected)), so a test cannot feed an
///   outcome of a command that was never sent;
/// - wake-ups stay pending until the clock passes them
///   ([`advance_to`](ProcessTest::advance_to)), and a wake-up with the key of
///   a pending one moves it.
///
/// Each `when_*` (and `advance_to`) is a step; the `then_*` assertions are
/// about the last step's reactions, or about the current instance (the one
/// the last step reached, or the one chosen with
/// [`instance`](ProcessTest::instance)).
///
/// ```ignore
/// ProcessTest::<Transfer>::new()
///     .when_event("transfer-desk", "desk", Request::TransferRequested { .. })
///     .then_routed_to("t-1")
///     .then_commands(vec![withdraw("acc-a", 100)])
///     .when_accepted("debit", vec![bank_account::Event::Withdrawn { amount: 100, balance: 0 }])
///     .then_commands(vec![deposit("acc-b", 100)])
///     .then_status(ProcessStatus::Running);
/// ```
pub struct ProcessTest<P: Process> {
    name: String,
    selector: Selector,
    now_ms: u64,
    position: u64,
    versions: HashMap<(String, String), u64>,
    instances: BTreeMap<String, Instance>,
    current: Option<String>,
    last: Result<Step, String>,
    _process: std::marker::PhantomData<P>,
}

/// One instance as the runner would keep it.
struct Instance {
    state: Vec<u8>,
    /// Inputs taken so far: the runner's "triggering input" for command ids.
    inputs: u64,
    pending: Vec<(ProcessCommand, String)>,
    deadlines: BTreeMap<String, u64>,
}

/// What one step produced, across the instances it reached.
#[derive(Default)]
struct Step {
    routed: Vec<String>,
    events: Vec<codec::EventParts>,
    commands: Vec<ProcessCommand>,
    command_ids: Vec<String>,
    wake_ups: Vec<Deadline>,
}

impl<P: Process> Default for ProcessTest<P>
where
    P::Event: PartialEq + Debug,
{
    fn default() -> Self {
        Self::new()
    }
}

impl<P: Process> ProcessTest<P>
where
    P::Event: PartialEq + Debug,
{
    /// An empty log, no instances, the clock at 1 700 000 000 000 ms.
    pub fn new() -> Self {
        ProcessTest {
            name: "process".into(),
            selector: P::subscription(),
            now_ms: 1_700_000_000_000,
            position: 0,
            versions: HashMap::new(),
            instances: BTreeMap::new(),
            current: None,
            last: Ok(Step::default()),
            _process: std::marker::PhantomData,
        }
    }

    /// The process's name, which command ids are derived from.
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The clock now (Unix milliseconds): the `now_ms` of the next input.
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// Makes `id` the current instance, for the `then_*` about one instance
    /// and for answering its commands.
    pub fn instance(mut self, id: &str) -> Self {
        assert!(
            self.instances.contains_key(id),
            "there is no instance {id:?}"
        );
        self.current = Some(id.to_string());
        self
    }

    /// Appends an event to the log; if the subscription admits it and
    /// `route` names an instance, that instance reacts to it.
    pub fn when_event<E: Serialize>(
        self,
        aggregate_type: &str,
        aggregate_id: &str,
        event: E,
    ) -> Self {
        let parts = codec::encode_event(&event).unwrap_or_else(|e| panic!("{e}"));
        self.when_raw_event(aggregate_type, aggregate_id, &parts.event_type, &parts.data)
    }

    /// [`when_event`](ProcessTest::when_event) with the event as type and JSON data.
    pub fn when_raw_event(
        self,
        aggregate_type: &str,
        aggregate_id: &str,
        event_type: &str,
        data: &str,
    ) -> Self {
        let version = P::schema().version_of(event_type);
        self.when_recorded_event(aggregate_type, aggregate_id, event_type, version, data)
    }

    /// A log event as an older producer recorded it (its type, schema
    /// version and data): the process's upcasters run on it before `route`
    /// and `react`, as in the component.
    pub fn when_recorded_event(
        mut self,
        aggregate_type: &str,
        aggregate_id: &str,
        event_type: &str,
        schema_version: u32,
        data: &str,
    ) -> Self {
        let (position, version) = self.append(aggregate_type, aggregate_id);
        let mut step = Step::default();
        if self.selector.matches(aggregate_type, event_type) {
            let raw = RawEvent {
                position,
                aggregate_type: aggregate_type.into(),
                aggregate_id: aggregate_id.into(),
                version,
                event_id: format!("event-{position}"),
                event_type: event_type.into(),
                data: data.into(),
                recorded_at_ms: self.now_ms,
                schema_version,
            };
            let routed = codec::route_process::<P>(&raw);
            match routed {
                Err(e) => {
                    self.last = Err(e);
                    return self;
                }
                Ok(None) => {}
                Ok(Some(id)) => {
                    if let Err(e) = self.react(&id, ProcessInput::Event(raw), &mut step) {
                        self.last = Err(e);
                        return self;
                    }
                }
            }
        }
        self.last = Ok(step);
        self
    }

    /// Answers the current instance's oldest pending command with this key:
    /// accepted, having appended these events (of the target's event type)
    /// to the target's stream.
    pub fn when_accepted<E: Serialize>(mut self, key: &str, events: Vec<E>) -> Self {
        let (id, command, command_id) = self.take_pending(key);
        let events = events
            .iter()
            .map(|event| {
                let parts = codec::encode_event(event).unwrap_or_else(|e| panic!("{e}"));
                let (position, version) =
                    self.append(&command.aggregate_type, &command.aggregate_id);
                OutcomeEvent {
                    version,
                    event_id: format!("event-{position}"),
                    event_type: parts.event_type,
                    data: parts.data,
                }
            })
            .collect();
        let input = ProcessInput::Accepted(Accepted {
            command,
            command_id,
            events,
        });
        self.step(&id, input)
    }

    /// Answers the current instance's oldest pending command with this key:
    /// refused by a business rule with this code.
    pub fn when_rejected(self, key: &str, code: &str) -> Self {
        let failure = CommandFailure::Rejected(Rejection::new(code, format!("rejected: {code}")));
        self.when_failed(key, failure)
    }

    /// Answers the current instance's oldest pending command with this key:
    /// not understood by the target.
    pub fn when_malformed(self, key: &str, reason: &str) -> Self {
        self.when_failed(key, CommandFailure::Malformed(reason.into()))
    }

    fn when_failed(mut self, key: &str, failure: CommandFailure) -> Self {
        let (id, command, command_id) = self.take_pending(key);
        let input = ProcessInput::Rejected(Rejected {
            command,
            command_id,
            failure,
        });
        self.step(&id, input)
    }

    /// Moves the clock to `now_ms`, firing every pending deadline at or
    /// before it in time order (each instance reacting at its deadline's
    /// time). The clock never goes back.
    pub fn advance_to(mut self, now_ms: u64) -> Self {
        let mut step = Step::default();
        loop {
            let due = self
                .instances
                .iter()
                .flat_map(|(id, i)| {
                    i.deadlines
                        .iter()
                        .map(move |(key, at)| (*at, id.clone(), key.clone()))
                })
                .filter(|(at, _, _)| *at <= now_ms)
                .min();
            let Some((at, id, key)) = due else { break };
            let instance = self
                .instances
                .get_mut(&id)
                .expect("a pending deadline's instance exists");
            instance.deadlines.remove(&key);
            self.now_ms = self.now_ms.max(at);
            if let Err(e) = self.react(
                &id,
                ProcessInput::Deadline(Deadline::new(at, key)),
                &mut step,
            ) {
                self.last = Err(e);
                return self;
            }
        }
        self.now_ms = self.now_ms.max(now_ms);
        self.last = Ok(step);
        self
    }

    /// [`advance_to`](ProcessTest::advance_to) `ms` from now.
    pub fn advance_by(self, ms: u64) -> Self {
        let to = self.now_ms + ms;
        self.advance_to(to)
    }

    fn step(mut self, id: &str, input: RawInput) -> Self {
        let mut step = Step::default();
        self.last = self.react(id, input, &mut step).map(|()| step);
        self
    }

    fn append(&mut self, aggregate_type: &str, aggregate_id: &str) -> (u64, u64) {
        self.position += 1;
        let version = self
            .versions
            .entry((aggregate_type.to_string(), aggregate_id.to_string()))
            .or_default();
        *version += 1;
        (self.position, *version)
    }

    fn take_pending(&mut self, key: &str) -> (String, ProcessCommand, String) {
        let id = self
            .current
            .clone()
            .expect("no instance yet: route an event to one first");
        let instance = self
            .instances
            .get_mut(&id)
            .expect("the current instance exists");
        let Some(at) = instance.pending.iter().position(|(c, _)| c.key == key) else {
            let keys: Vec<_> = instance
                .pending
                .iter()
                .map(|(c, _)| c.key.as_str())
                .collect();
            panic!("instance {id:?} has no pending command {key:?}; pending: {keys:?}");
        };
        let (command, command_id) = instance.pending.remove(at);
        (id, command, command_id)
    }

    /// One input of one instance, as the runner takes it: react, then fold
    /// the reaction's events and keep its commands and wake-ups pending.
    fn react(&mut self, id: &str, input: RawInput, step: &mut Step) -> Result<(), String> {
        let instance = self
            .instances
            .entry(id.to_string())
            .or_insert_with(|| Instance {
                state: codec::encode_process_state(&P::default()),
                inputs: 0,
                pending: Vec::new(),
                deadlines: BTreeMap::new(),
            });
        instance.inputs += 1;
        self.current = Some(id.to_string());
        step.routed.push(id.to_string());
        let context = ProcessContext {
            process_id: id.to_string(),
            now_ms: self.now_ms,
        };
        let reaction = codec::react_process::<P>(&instance.state, &context, input)?;
        instance.state = codec::apply_process::<P>(
            &instance.state,
            reaction
                .events
                .iter()
                .map(|e| (e.event_type.as_str(), e.data.as_str())),
        )?;
        for (index, command) in reaction.commands.iter().enumerate() {
            let command_id = format!("{}/{id}/{}/{index}", self.name, instance.inputs);
            instance.pending.push((command.clone(), command_id.clone()));
            step.command_ids.push(command_id);
        }
        for wake_up in &reaction.wake_ups {
            instance
                .deadlines
                .insert(wake_up.key.clone(), wake_up.at_ms);
        }
        step.events.extend(reaction.events);
        step.commands.extend(reaction.commands);
        step.wake_ups.extend(reaction.wake_ups);
        Ok(())
    }

    fn last(&self) -> &Step {
        match &self.last {
            Ok(step) => step,
            Err(e) => panic!("the process failed to react: {e}"),
        }
    }

    fn current(&self) -> (&str, &Instance) {
        let id = self
            .current
            .as_deref()
            .expect("no instance yet: route an event to one first");
        (id, &self.instances[id])
    }

    /// Asserts the last step reached exactly this instance.
    pub fn then_routed_to(self, id: &str) -> Self {
        assert_eq!(
            self.last().routed,
            [id],
            "the instances the last step reached"
        );
        self
    }

    /// Asserts the last step reached no instance.
    pub fn then_not_routed(self) -> Self {
        assert!(
            self.last().routed.is_empty(),
            "expected no instance to react, but {:?} did",
            self.last().routed
        );
        self
    }

    /// Asserts the last step's reactions recorded exactly these events, in order.
    pub fn then_events(self, expected: Vec<P::Event>) -> Self {
        let events: Vec<P::Event> = self
            .last()
            .events
            .iter()
            .map(|p| codec::decode_event(&p.event_type, &p.data).unwrap_or_else(|e| panic!("{e}")))
            .collect();
        assert_eq!(
            events, expected,
            "the process recorded other events than expected"
        );
        self
    }

    /// Asserts the last step's reactions sent exactly these commands, in order.
    /// Their JSON is compared as values, so field order does not matter.
    pub fn then_commands(self, expected: Vec<ProcessCommand>) -> Self {
        let normal = |commands: &[ProcessCommand]| -> Vec<(String, String, String, Value)> {
            commands
                .iter()
                .map(|c| {
                    let json = serde_json::from_str(&c.command)
                        .unwrap_or_else(|e| panic!("command {:?} is not JSON: {e}", c.key));
                    (
                        c.key.clone(),
                        c.aggregate_type.clone(),
                        c.aggregate_id.clone(),
                        json,
                    )
                })
                .collect()
        };
        assert_eq!(
            normal(&self.last().commands),
            normal(&expected),
            "the process sent other commands than expected"
        );
        self
    }

    /// Asserts the last step sent no command.
    pub fn then_no_commands(self) -> Self {
        self.then_commands(Vec::new())
    }

    /// The ids the runner would send the last step's commands under.
    pub fn last_command_ids(&self) -> &[String] {
        &self.last().command_ids
    }

    /// Asserts the last step's reactions asked for exactly these wake-ups.
    pub fn then_wake_ups(self, expected: Vec<Deadline>) -> Self {
        assert_eq!(self.last().wake_ups, expected, "the wake-ups asked for");
        self
    }

    /// Asserts the current instance's pending commands, by key, oldest first.
    pub fn then_pending(self, keys: &[&str]) -> Self {
        let (id, instance) = self.current();
        let pending: Vec<_> = instance
            .pending
            .iter()
            .map(|(c, _)| c.key.as_str())
            .collect();
        assert_eq!(pending, keys, "the commands of {id:?} awaiting an outcome");
        self
    }

    /// Asserts where the current instance stands.
    pub fn then_status(self, expected: ProcessStatus) -> Self {
        let (id, instance) = self.current();
        let status = codec::process_status::<P>(&instance.state).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(status, expected, "the status of {id:?}");
        self
    }

    /// Checks the current instance's state, as folded from its events.
    pub fn then_state(self, check: impl FnOnce(&P)) -> Self {
        let (_, instance) = self.current();
        let state =
            codec::decode_process_state::<P>(&instance.state).unwrap_or_else(|e| panic!("{e}"));
        check(&state);
        self
    }

    /// Asserts the last step failed (a routing or reaction error) with an
    /// error containing `fragment`.
    pub fn then_fails(self, fragment: &str) -> Self {
        match &self.last {
            Ok(_) => panic!("expected the process to fail with {fragment:?}, it reacted"),
            Err(e) => assert!(
                e.contains(fragment),
                "the process failed with {e:?}, not {fragment:?}"
            ),
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Docs, Envelope, Reaction};
    use serde::Deserialize;
    use serde_json::json;

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    #[serde(tag = "type")]
    enum Event {
        Added { amount: i64 },
        Broken,
    }

    struct Sums;

    impl Projection for Sums {
        type Event = Event;

        fn subscription() -> Selector {
            Selector::aggregate_types(["counter"])
        }

        fn apply(docs: &mut Docs<'_>, e: &Envelope<Event>) -> Result<(), String> {
            let key = format!("sum/{}", e.aggregate_id);
            let mut sum: Value = docs.get(&key)?.unwrap_or(json!({"total": 0}));
            match e.event {
                Event::Added { amount } => {
                    sum["total"] = json!(sum["total"].as_i64().unwrap() + amount);
                    sum["version"] = json!(e.version);
                    sum["position"] = json!(e.position);
                    docs.put(&key, &sum)?;
                    docs.put("last", &json!({"position": e.position}))
                }
                Event::Broken => Err("broken on purpose".into()),
            }
        }

        fn query(docs: &Docs<'_>, name: &str, args: &Value) -> Result<Value, QueryError> {
            match name {
                "sum" => {
                    let id = args["id"]
                        .as_str()
                        .ok_or(QueryError::bad_arguments("needs \"id\""))?;
                    let doc: Option<Value> = docs
                        .get(&format!("sum/{id}"))
                        .map_err(QueryError::BadArguments)?;
                    Ok(doc.unwrap_or(Value::Null))
                }
                "count" => Ok(json!(
                    docs.scan_all("sum/")
                        .map_err(QueryError::BadArguments)?
                        .len()
                )),
                _ => Err(QueryError::UnknownQuery),
            }
        }
    }

    #[test]
    fn events_of_other_aggregates_are_filtered_out_but_use_positions() {
        let mut test = ProjectionTest::<Sums>::new()
            .given("counter", "a", Event::Added { amount: 2 })
            .given_raw("other", "x", "Unknown", "{\"garbage\":true}")
            .given_events("counter", "a", [Event::Added { amount: 3 }])
            .given("counter", "b", Event::Added { amount: 1 })
            .then_doc("sum/a", json!({"total": 5, "version": 2, "position": 3}))
            .then_doc("last", json!({"position": 4}))
            .then_docs("sum/", 2)
            .then_no_doc("sum/x")
            .then_query(
                "sum",
                json!({"id": "b"}),
                json!({"total": 1, "version": 1, "position": 4}),
            )
            .then_query("count", json!({}), json!(2));
        assert_eq!(test.query("sum", json!({"id": "zz"})), Ok(Value::Null));
        assert_eq!(test.query("nope", json!({})), Err(QueryError::UnknownQuery));
        assert!(matches!(
            test.query("sum", json!({})),
            Err(QueryError::BadArguments(_))
        ));
    }

    #[test]
    fn a_failing_batch_keeps_no_writes_and_names_the_event() {
        let mut test = ProjectionTest::<Sums>::new()
            .given("counter", "a", Event::Added { amount: 2 })
            .then_doc("sum/a", json!({"total": 2, "version": 1, "position": 1}))
            .given("counter", "a", Event::Added { amount: 3 })
            .given("counter", "a", Event::Broken)
            .then_apply_fails("event Broken at position 3: broken on purpose")
            .then_doc("sum/a", json!({"total": 2, "version": 1, "position": 1}))
            .given_raw("counter", "a", "Added", "{\"amount\":\"three\"}")
            .then_apply_fails("event Added does not decode");
        test = test
            .given_raw("counter", "a", "Teleported", "{}")
            .then_apply_fails("(at position 5)");
        assert_eq!(test.docs().len(), 2);
    }

    #[test]
    fn query_arguments_travel_as_json_text() {
        let store = BTreeMap::from([("sum/a".to_string(), "{\"total\":7}".to_string())]);
        assert_eq!(
            codec::query_projection_native::<Sums>(&store, "sum", r#"{"id":"a"}"#).unwrap(),
            r#"{"total":7}"#
        );
        assert!(matches!(
            codec::query_projection_native::<Sums>(&store, "sum", "{not json"),
            Err(QueryError::BadArguments(e)) if e.contains("not JSON")
        ));
        assert!(matches!(
            codec::query_projection_native::<Sums>(&store, "sum", ""),
            Err(QueryError::BadArguments(_))
        ));
    }

    /// A process that pings a target on every `Pinged` and waits for a pong.
    #[derive(Default, Serialize, Deserialize)]
    struct Pinger {
        pings: u32,
        pongs: u32,
        timed_out: bool,
    }

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    #[serde(tag = "type")]
    enum Ping {
        Pinged { id: String },
    }

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    #[serde(tag = "type")]
    enum PingEvent {
        Sent,
        Ponged,
        TimedOut,
    }

    impl Process for Pinger {
        type LogEvent = Ping;
        type Event = PingEvent;

        fn subscription() -> Selector {
            Selector::event_types(["Pinged"])
        }

        fn route(e: &Envelope<Ping>) -> Option<String> {
            let Ping::Pinged { id } = &e.event;
            (id != "nobody").then(|| id.clone())
        }

        fn react(
            &self,
            ctx: &ProcessContext,
            input: ProcessInput<Envelope<Ping>>,
        ) -> Result<Reaction<PingEvent>, String> {
            Ok(match input {
                ProcessInput::Event(_) => Reaction::none()
                    .emit(PingEvent::Sent)
                    .send(ProcessCommand::new(
                        "ping",
                        "target",
                        &ctx.process_id,
                        &json!({"type": "Ping", "n": self.pings}),
                    ))
                    .wake_at(ctx.now_ms + 10, "pong"),
                ProcessInput::Accepted(a) if a.events.is_empty() => {
                    return Err("a pong without events".into());
                }
                ProcessInput::Accepted(_) => Reaction::none().emit(PingEvent::Ponged),
                ProcessInput::Rejected(r) => return Err(format!("refused: {}", r.code())),
                ProcessInput::Deadline(_) => Reaction::none().emit(PingEvent::TimedOut),
            })
        }

        fn apply(mut self, event: &PingEvent) -> Self {
            match event {
                PingEvent::Sent => self.pings += 1,
                PingEvent::Ponged => self.pongs += 1,
                PingEvent::TimedOut => self.timed_out = true,
            }
            self
        }

        fn status(&self) -> ProcessStatus {
            match (self.timed_out, self.pongs == self.pings) {
                (true, _) => ProcessStatus::Failed,
                (false, true) => ProcessStatus::Completed,
                (false, false) => ProcessStatus::Running,
            }
        }
    }

    fn pinged(id: &str) -> Ping {
        Ping::Pinged { id: id.into() }
    }

    /// Counts pings, reading two older shapes of them through upcasters:
    /// `Pinged` v1 `{who}` (renamed to `id`), and `Pings` v1 `{ids: [..]}`,
    /// split into one `Pinged` per id.
    #[derive(Default, Serialize, Deserialize)]
    struct PingCounter {
        pings: u32,
    }

    impl Process for PingCounter {
        type LogEvent = Ping;
        type Event = PingEvent;

        fn subscription() -> Selector {
            Selector::all()
        }

        fn route(_: &Envelope<Ping>) -> Option<String> {
            Some("counter".into())
        }

        fn react(
            &self,
            _: &ProcessContext,
            input: ProcessInput<Envelope<Ping>>,
        ) -> Result<Reaction<PingEvent>, String> {
            match input {
                // Sees the state the reaction before it left, within a split.
                ProcessInput::Event(_) if self.pings >= 3 => Err("too many pings".into()),
                ProcessInput::Event(_) => Ok(Reaction::none().emit(PingEvent::Sent)),
                _ => Ok(Reaction::none()),
            }
        }

        fn apply(mut self, event: &PingEvent) -> Self {
            if matches!(event, PingEvent::Sent) {
                self.pings += 1;
            }
            self
        }

        fn status(&self) -> ProcessStatus {
            ProcessStatus::Running
        }

        fn schema() -> crate::Schema {
            crate::Schema::new()
                .current("Pinged", 2)
                .upcast("Pinged", 1, |d| {
                    Ok(vec![crate::Upcast::new(
                        "Pinged",
                        2,
                        json!({"id": d["who"]}),
                    )])
                })
                .upcast("Pings", 1, |d| {
                    Ok(d["ids"]
                        .as_array()
                        .ok_or("ids")?
                        .iter()
                        .map(|id| crate::Upcast::new("Pinged", 2, json!({"id": id})))
                        .collect())
                })
        }
    }

    #[test]
    fn a_process_reads_older_log_events_through_its_upcasters() {
        ProcessTest::<PingCounter>::new()
            .when_recorded_event("source", "s", "Pinged", 1, r#"{"who":"a"}"#)
            .then_routed_to("counter")
            .then_events(vec![PingEvent::Sent])
            .when_recorded_event("source", "s", "Pinged", 2, r#"{"id":"b"}"#)
            .then_events(vec![PingEvent::Sent])
            // One v1 `Pings` of two ids: two reactions, folded one after the other.
            .when_recorded_event("source", "s", "Pings", 1, r#"{"ids":["c","d"]}"#)
            .then_fails("too many pings")
            .then_state(|p| assert_eq!(p.pings, 2));
        ProcessTest::<PingCounter>::new()
            .when_recorded_event("source", "s", "Pings", 1, r#"{"ids":["c","d"]}"#)
            .then_events(vec![PingEvent::Sent, PingEvent::Sent])
            .then_state(|p| assert_eq!(p.pings, 2));
    }

    #[test]
    fn a_process_sends_commands_and_folds_their_outcomes() {
        let test = ProcessTest::<Pinger>::new()
            .named("pinger")
            .when_event("source", "s", pinged("p-1"))
            .then_routed_to("p-1")
            .then_events(vec![PingEvent::Sent])
            .then_commands(vec![ProcessCommand {
                key: "ping".into(),
                aggregate_type: "target".into(),
                aggregate_id: "p-1".into(),
                // Compared as JSON values: field order is free.
                command: r#"{"n":0,"type":"Ping"}"#.into(),
            }])
            .then_status(ProcessStatus::Running);
        assert_eq!(test.last_command_ids(), ["pinger/p-1/1/0"]);
        test.when_accepted("ping", vec![PingEvent::Ponged])
            .then_events(vec![PingEvent::Ponged])
            .then_pending(&[])
            .then_status(ProcessStatus::Completed)
            .then_state(|p| assert_eq!((p.pings, p.pongs), (1, 1)));
    }

    #[test]
    fn a_wake_up_with_a_pending_key_moves_the_deadline() {
        let start = ProcessTest::<Pinger>::new().now_ms();
        ProcessTest::<Pinger>::new()
            .when_event("source", "s", pinged("p-1"))
            .advance_by(5)
            .then_not_routed()
            .when_event("source", "s", pinged("p-1"))
            .then_wake_ups(vec![Deadline::new(start + 15, "pong")])
            .advance_to(start + 14)
            .then_not_routed()
            .advance_to(start + 100)
            .then_routed_to("p-1")
            .then_events(vec![PingEvent::TimedOut])
            .then_status(ProcessStatus::Failed)
            .advance_by(1_000)
            .then_not_routed();
    }

    #[test]
    fn unrouted_and_unsubscribed_events_reach_no_instance() {
        ProcessTest::<Pinger>::new()
            .when_event("source", "s", pinged("nobody"))
            .then_not_routed()
            .when_raw_event("source", "s", "Other", "{}")
            .then_not_routed();
    }

    #[test]
    fn errors_of_route_and_react_are_failures_not_reactions() {
        ProcessTest::<Pinger>::new()
            .when_event("source", "s", pinged(""))
            .then_fails("ids are 1 to 256 bytes")
            .when_raw_event("source", "s", "Pinged", r#"{"id":3}"#)
            .then_fails("event Pinged does not decode")
            .when_event("source", "s", pinged("p-1"))
            .when_rejected("ping", "busy")
            .then_fails("refused: busy")
            .when_event("source", "s", pinged("p-1"))
            .when_accepted::<PingEvent>("ping", vec![])
            .then_fails("a pong without events")
            .then_state(|p| assert_eq!((p.pings, p.pongs), (2, 0)));
    }

    #[test]
    #[should_panic(expected = "has no pending command \"pong\"")]
    fn an_outcome_needs_a_command_sent() {
        ProcessTest::<Pinger>::new()
            .when_event("source", "s", pinged("p-1"))
            .when_accepted("pong", vec![PingEvent::Ponged]);
    }
}
