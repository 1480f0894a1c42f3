//! Refold's guest SDK: write an aggregate, a projection or a process as plain Rust, test it
//! with `cargo test`, and export it as a Wasm component with one macro.
//!
//! # Aggregates
//!
//! An [`Aggregate`] decides what a command means (`handle`) and folds its own
//! stream's events into its state (`apply`):
//!
//! ```ignore
//! #[derive(Default, Serialize, Deserialize)]
//! struct Counter { total: i64 }
//!
//! #[derive(Deserialize)]
//! #[serde(tag = "type")]
//! enum Command { Add { amount: i64 } }
//!
//! #[derive(Serialize, Deserialize, PartialEq, Debug)]
//! #[serde(tag = "type")]
//! enum Event { Added { amount: i64 } }
//!
//! impl Aggregate for Counter {
//!     type Command = Command;
//!     type Event = Event;
//!     fn handle(&self, command: Command, _ctx: &Context) -> Result<Vec<Event>, Rejection> {
//!         match command { Command::Add { amount } => Ok(vec![Event::Added { amount }]) }
//!     }
//!     fn apply(mut self, event: &Event) -> Self {
//!         match event { Event::Added { amount } => self.total += amount }
//!         self
//!     }
//! }
//!
//! refold_sdk::export_aggregate!(Counter);
//! ```
//!
//! # Projections
//!
//! A [`Projection`] folds events of the global log into a read model of JSON
//! documents by key ([`Docs`]) and answers named queries from it. It keeps no
//! state of its own: everything lives in the read model, which the host stores
//! (one per projection version) and commits atomically with the projection's
//! checkpoint after each batch.
//!
//! ```ignore
//! struct Totals;
//!
//! impl Projection for Totals {
//!     type Event = Event; // the aggregate's event enum, reused as is
//!
//!     fn subscription() -> Selector {
//!         Selector::aggregate_types(["counter"])
//!     }
//!
//!     fn apply(docs: &mut Docs, event: &Envelope<Event>) -> Result<(), String> {
//!         let key = format!("counter/{}", event.aggregate_id);
//!         let mut total: i64 = docs.get(&key)?.unwrap_or(0);
//!         match &event.event { Event::Added { amount } => total += amount }
//!         docs.put(&key, &total)
//!     }
//!
//!     fn query(docs: &Docs, name: &str, args: &Value) -> Result<Value, QueryError> {
//!         match name {
//!             "total" => {
//!                 let id = args["id"].as_str().ok_or(QueryError::bad_arguments("needs \"id\""))?;
//!                 let total: Option<i64> = docs.get(&format!("counter/{id}")).map_err(QueryError::BadArguments)?;
//!                 Ok(serde_json::json!({ "total": total }))
//!             }
//!             _ => Err(QueryError::UnknownQuery),
//!         }
//!     }
//! }
//!
//! refold_sdk::export_projection!(Totals);
//! ```
//!
//! Inside the component, [`Docs`] is a write-back cache over the host's
//! `read-model` import for the duration of one `apply` call: reads hit the
//! cache first, writes are buffered, and the changed documents go to the host
//! once, in key order, when the batch succeeded. Natively (tests, benchmarks)
//! the same cache sits over an in-memory `BTreeMap`, so the same logic runs
//! unchanged on both.
//!
//! # Processes
//!
//! A [`Process`] (a saga) coordinates aggregates: each instance reacts to log
//! events routed to it, to the outcomes of the commands it sent and to the
//! deadlines it set, with a [`Reaction`]: its own events (folded by `apply`
//! into its state, as an aggregate's), commands to send, times to be woken at.
//! See the `transfers` module for a transfer between two bank accounts.
//!
//! # Layout
//! - [`Aggregate`], [`Context`], [`Rejection`]: what an aggregate author implements and sees.
//! - [`Projection`], [`Envelope`], [`Selector`], [`Docs`], [`QueryError`]: the same for projections.
//! - [`Process`], [`ProcessInput`], [`Reaction`], [`ProcessCommand`], [`Deadline`]: the same for processes.
//! - [`codec`]: how commands, events, state and read-model documents cross the Wasm
//!   boundary, and native runners that execute exactly what the components run.
//! - [`testing`]: given / when / then for all three, natively, no Wasm.
//! - [`bindings`], [`projection_bindings`], [`process_bindings`]: the generated WIT bindings
//!   (`wit/domain.wit`) of the `aggregate`, `projection` and `process` worlds, used by the
//!   export macros.

pub mod codec;
mod docs;
mod process;
mod projection;
pub mod schema;
pub mod testing;

pub use docs::{Docs, MAX_DOC_BYTES, MAX_KEY_BYTES, MAX_SCAN};
pub use process::{
    Accepted, Deadline, OutcomeEvent, Process, ProcessCommand, ProcessContext, ProcessInput,
    ProcessStatus, Reaction, Rejected,
};
pub use projection::{Envelope, Projection, QueryError, Selector};
pub use schema::{Schema, Upcast};

use serde::Serialize;
use serde::de::DeserializeOwned;

#[doc(hidden)]
#[allow(clippy::too_many_arguments)] // generated code
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "versioned-aggregate",
        pub_export_macro: true,
        export_macro_name: "export_aggregate_world",
        default_bindings_module: "refold_sdk::bindings",
    });
}

/// The `projection` world's bindings: its exports and the `read-model` import.
/// Its `types` are generated again here, distinct from [`bindings`]' ones.
#[doc(hidden)]
#[allow(clippy::too_many_arguments)] // generated code
pub mod projection_bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "projection",
        pub_export_macro: true,
        export_macro_name: "export_projection_world",
        default_bindings_module: "refold_sdk::projection_bindings",
    });
}

/// The `process` world's bindings. Its `types` are generated again here too.
#[doc(hidden)]
#[allow(clippy::too_many_arguments)] // generated code
pub mod process_bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "versioned-process",
        pub_export_macro: true,
        export_macro_name: "export_process_world",
        default_bindings_module: "refold_sdk::process_bindings",
    });
}

/// What the host tells an aggregate about the command being decided.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Context {
    pub aggregate_type: String,
    pub aggregate_id: String,
    /// Unique per command; the host seeds WASI randomness from it.
    pub command_id: String,
    pub correlation_id: String,
    /// Unix milliseconds when the host received the command: the only "now" there is.
    pub received_at_ms: u64,
}

/// A business rule refused the command: a stable code and a sentence for people.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub code: String,
    pub message: String,
}

impl Rejection {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Rejection {
            code: code.into(),
            message: message.into(),
        }
    }
}

/// An event-sourced aggregate, in the shape of esrs: `handle` decides, `apply`
/// evolves. Both are pure: no clock but the context's, no I/O.
///
/// - The state (`Self`) is kept by the host as postcard bytes and rendered to
///   readers as JSON through its `Serialize` impl.
/// - Commands and events are JSON at the boundary. Tag both enums with
///   `#[serde(tag = "type")]`: an event's type is its tag, its data the other fields.
pub trait Aggregate: Default + Serialize + DeserializeOwned {
    type Command: DeserializeOwned;
    type Event: Serialize + DeserializeOwned;

    /// Decides what the command means for this state.
    fn handle(
        &self,
        command: Self::Command,
        context: &Context,
    ) -> Result<Vec<Self::Event>, Rejection>;

    /// The state after one event. Must accept every event `handle` ever produced.
    fn apply(self, event: &Self::Event) -> Self;

    /// The schema versions of the events it emits and the upcasters from
    /// older ones ([`Schema`]). Default: every type at version 1, none.
    fn schema() -> Schema {
        Schema::new()
    }
}

/// Exports an [`Aggregate`] as the `aggregate` world's component.
///
/// On non-Wasm targets it expands to nothing, so the same crate also builds
/// natively for its tests.
#[macro_export]
macro_rules! export_aggregate {
    ($aggregate:ty) => {
        #[cfg(target_family = "wasm")]
        const _: () = {
            type RefoldComponent = $crate::codec::AggregateComponent<$aggregate>;
            $crate::bindings::export_aggregate_world!(RefoldComponent with_types_in $crate::bindings);
        };
    };
}

/// Exports a [`Projection`] as the `projection` world's component.
///
/// On non-Wasm targets it expands to nothing, so the same crate also builds
/// natively for its tests.
#[macro_export]
macro_rules! export_projection {
    ($projection:ty) => {
        #[cfg(target_family = "wasm")]
        const _: () = {
            type RefoldProjection = $crate::codec::ProjectionComponent<$projection>;
            $crate::projection_bindings::export_projection_world!(RefoldProjection with_types_in $crate::projection_bindings);
        };
    };
}

/// Exports a [`Process`] as the `process` world's component.
///
/// On non-Wasm targets it expands to nothing, so the same crate also builds
/// natively for its tests.
#[macro_export]
macro_rules! export_process {
    ($process:ty) => {
        #[cfg(target_family = "wasm")]
        const _: () = {
            type RefoldProcess = $crate::codec::ProcessComponent<$process>;
            $crate::process_bindings::export_process_world!(RefoldProcess with_types_in $crate::process_bindings);
        };
    };
}
