//! Paths to guest components compiled by this crate's `build.rs`, so the host's
//! tests and benchmarks run real modules built from this workspace's sources.
//!
//! - `BANK_ACCOUNT`: `modules/bank-account` for `wasm32-wasip2` (imports WASI).
//! - `BANK_ACCOUNT_NO_WASI`: the same crate for `wasm32-unknown-unknown`,
//!   wrapped into a component with `wit-component`: no WASI imports at all.
//! - `BANK_ACCOUNT_V2`: `modules/bank-account-v2` (bank-account 2.0.0: new
//!   event shapes, with the upcasters from 1.x); `BANK_ACCOUNT_V2_NO_UPCASTERS`,
//!   the same built without them; `ACCOUNT_BALANCES_V3`: account-balances
//!   3.0.0 over its events (`modules/account-balances-v3`).
//! - `BANK_ACCOUNT_STRICT`: `modules/bank-account` built with its
//!   `strict-overdraft` feature (half the overdraft limit): the what-if candidate.
//! - `HOSTILE`: `tests/guests/hostile` for `wasm32-wasip2`.
//! - `ACCOUNT_BALANCES`, `ACCOUNT_BALANCES_V2`: the projections `modules/account-balances`
//!   (1.0.0) and `modules/account-balances-v2` (2.0.0) for `wasm32-wasip2`.
//! - `PICKY_PROJECTION`: `tests/guests/picky-projection` for `wasm32-wasip2`, a projection
//!   that fails, panics or loops on chosen event types.
//! - `ENTROPY`, `ENTROPY_PROJECTION`: `tests/guests/entropy` and `tests/guests/entropy-projection`,
//!   an aggregate and a projection that feed every clock and randomness source they can
//!   reach into their state and documents, for the determinism tests.
//! - `INVENTORY`, `ORDER` (aggregates) and `SALES` (a projection): the shop example.
//! - `TRANSFERS`: `modules/transfers`, a process (a saga) over `bank-account`;
//!   `TRANSFER_ORDERS`, the aggregate whose `TransferRequested` events start
//!   transfers; `LEDGER`, a projection that checks the double-entry invariant.
//! - `ORDER_FULFILMENT`: `modules/order-fulfilment`, a process over `order`
//!   and `inventory`.
//! - `HOSTILE_PROCESS`: `tests/guests/hostile-process`, a process over
//!   `transfer-orders` and `bank-account` that misbehaves on command;
//!   `HOSTILE_PROCESS_FIXED`, the same built with its `fixed` feature (its
//!   next version, which never does).

include!(concat!(env!("OUT_DIR"), "/guests.rs"));
