//! Refold: an event store and a host for business logic compiled to
//! WebAssembly components.
//!
//! # Layout
//! From the bottom up:
//! - [`store`]: the event store on sled: streams, the global log, optimistic
//!   concurrency, group commit, subscriptions, the module registry, snapshots.
//!   The only module that knows sled.
//! - [`runtime`]: compiles and runs Wasm components, sandboxed, metered and
//!   deterministic. The only module that knows wasmtime.
//! - [`modules`]: the module registry service: upload, validate, persist, compile, activate.
//! - [`commands`]: the command pipeline: load state, decide in the guest, append.
//! - [`processes`]: process managers (sagas): one runner per process reacts to
//!   log events, command outcomes and deadlines by sending commands, each
//!   instance event-sourced in a stream of its own.
//! - [`projections`]: the query side: one runner per projection version, read
//!   models committed atomically with their checkpoints, promote, diff.
//! - [`api`]: the HTTP API (axum): routes, auth, limits, problem+json errors.
//! - [`server`]: `refold serve`: wires the services to the HTTP API; graceful shutdown.
//! - [`cli`]: the client commands of the `refold` binary, over HTTP.
//! - [`json_text`]: the one strict check of JSON text that is stored or served,
//!   and indenting it for people without re-encoding it.
//! - `fsutil`: crash-safe file writes. `hex`: digests as text.
//!
//! `docs/ARCHITECTURE.md` has the bird's-eye view and the invariants.

pub mod api;
pub mod cli;
mod clock;
pub mod commands;
mod fsutil;
mod hex;
pub mod json_text;
pub mod modules;
pub mod processes;
pub mod projections;
pub mod runtime;
pub mod server;
pub mod store;
