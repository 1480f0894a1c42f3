//! The one place that generates host bindings for `wit/domain.wit`: one
//! `bindgen!` per world, sharing the `types` interface.

mod aggregate_world {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "aggregate",
    });
}

mod projection_world {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "projection",
        with: {
            "refold:domain/types": super::aggregate_world::refold::domain::types,
            "refold:domain/event-schema": super::aggregate_world::refold::domain::event_schema,
        },
        // Read-model calls check their arguments and trap the guest on misuse.
        imports: { default: trappable },
    });
}

mod process_world {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "process",
        with: {
            "refold:domain/types": super::aggregate_world::refold::domain::types,
            "refold:domain/event-schema": super::aggregate_world::refold::domain::event_schema,
        },
    });
}

pub use aggregate_world::refold::domain::event_schema;
pub use aggregate_world::refold::domain::types::{
    CommandContext, CommandError, EventSelector, NewEvent, QueryError, RecordedEvent, Rejection,
    StreamEvent,
};
pub use aggregate_world::{Aggregate, AggregatePre};
pub use process_world::refold::domain::process_types;
pub use process_world::{Process, ProcessPre};
pub use projection_world::refold::domain::read_model;
pub use projection_world::{Projection, ProjectionPre};
