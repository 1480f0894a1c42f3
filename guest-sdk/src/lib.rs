//! Refold guest SDK: filled in by the Wasm aggregates issue.
