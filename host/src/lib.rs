//! Refold: an event store and a host for business logic compiled to
//! WebAssembly components.
//!
//! # Layout
//! - [`store`]: the event store on sled: streams, the global log, optimistic
//!   concurrency, group commit, subscriptions. The only module that knows sled.
//!
//! `docs/ARCHITECTURE.md` has the bird's-eye view and the invariants.

pub mod store;
