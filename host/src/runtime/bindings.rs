//! The one place that generates host bindings for `wit/domain.wit`.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "aggregate",
});

pub use refold::domain::types::Rejection;
