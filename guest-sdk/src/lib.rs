//! Refold's guest SDK: write an aggregate as plain Rust, test it with
//! `cargo test`, and export it as a Wasm component with one macro.
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
//! # Layout
//! - [`Aggregate`], [`Context`], [`Rejection`]: what a module author implements and sees.
//! - [`codec`]: how commands, events and state cross the Wasm boundary (JSON and postcard).
//! - [`testing`]: given / when / then, natively, no Wasm.
//! - [`bindings`]: the generated WIT bindings (`wit/domain.wit`), used by the export macro.

pub mod codec;
pub mod testing;

use serde::Serialize;
use serde::de::DeserializeOwned;

#[doc(hidden)]
#[allow(clippy::too_many_arguments)] // generated code
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "aggregate",
        pub_export_macro: true,
        export_macro_name: "export_aggregate_world",
        default_bindings_module: "refold_sdk::bindings",
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
