//! Calls into an aggregate component. Every call gets a fresh instance from
//! the `InstancePre`, its own fuel, deadline and memory cap, so no guest state
//! survives from one call to the next: what a call returns depends only on its
//! arguments and on what `Observed` pins down. That is what makes replay exact.

use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::{Component, Linker};
use wasmtime::{Engine, Store};

use super::RuntimeConfig;
use super::bindings::{
    Aggregate, AggregatePre, CommandContext, CommandError, NewEvent, StreamEvent,
};
use super::error::{GuestError, RuntimeError};
use super::sandbox::{self, HostState, Observed};

/// A compiled, checked aggregate component, ready to be called. Cheap to clone.
#[derive(Clone)]
pub struct AggregateModule {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Engine,
    pre: AggregatePre<HostState>,
    with_wasi: bool,
    label: String,
    fuel: u64,
    deadline: Duration,
    memory_bytes: usize,
}

impl AggregateModule {
    pub(super) fn new(
        engine: &Engine,
        linker: &Linker<HostState>,
        component: &Component,
        with_wasi: bool,
        label: &str,
        config: &RuntimeConfig,
    ) -> Result<AggregateModule, RuntimeError> {
        let pre = linker
            .instantiate_pre(component)
            .and_then(AggregatePre::new)
            .map_err(|e| {
                RuntimeError::InvalidModule(format!(
                    "does not implement refold:domain/aggregate: {e:#}"
                ))
            })?;
        Ok(AggregateModule {
            inner: Arc::new(Inner {
                engine: engine.clone(),
                pre,
                with_wasi,
                label: label.to_string(),
                fuel: config.fuel_per_call,
                deadline: config.deadline,
                memory_bytes: config.memory_bytes,
            }),
        })
    }

    /// `name@version`, as it tags events and log lines.
    pub fn label(&self) -> &str {
        &self.inner.label
    }

    pub fn imports_wasi(&self) -> bool {
        self.inner.with_wasi
    }

    pub fn initial_state(&self) -> Result<Vec<u8>, GuestError> {
        self.call(&Observed::default(), |guest, store| {
            guest.call_initial_state(store)
        })
    }

    /// Decides a command. The outer error is the guest failing; the inner one,
    /// the guest refusing the command.
    pub fn handle(
        &self,
        state: &[u8],
        command: &str,
        context: &CommandContext,
    ) -> Result<Result<Vec<NewEvent>, CommandError>, GuestError> {
        let observed = Observed {
            now_ms: context.received_at_ms,
            seed: context.command_id.clone(),
        };
        self.call(&observed, |guest, store| {
            guest.call_handle(store, state, command, context)
        })
    }

    pub fn apply(&self, state: &[u8], events: &[StreamEvent]) -> Result<Vec<u8>, GuestError> {
        self.call(&Observed::default(), |guest, store| {
            guest.call_apply(store, state, events)
        })?
        .map_err(GuestError::Failed)
    }

    pub fn render(&self, state: &[u8]) -> Result<String, GuestError> {
        self.call(&Observed::default(), |guest, store| {
            guest.call_render(store, state)
        })?
        .map_err(GuestError::Failed)
    }

    fn call<T>(
        &self,
        observed: &Observed,
        f: impl FnOnce(&Aggregate, &mut Store<HostState>) -> wasmtime::Result<T>,
    ) -> Result<T, GuestError> {
        let inner = &*self.inner;
        let mut store = Store::new(
            &inner.engine,
            HostState::new(inner.memory_bytes, inner.with_wasi, observed),
        );
        store.limiter(|s| &mut s.limits);
        store
            .set_fuel(inner.fuel)
            .map_err(|e| GuestError::Trap(format!("setting fuel: {e}")))?;
        let ticks = (inner.deadline.as_millis() / super::EPOCH_TICK.as_millis()).max(1) as u64;
        store.set_epoch_deadline(ticks);
        let result = inner
            .pre
            .instantiate(&mut store)
            .and_then(|guest| f(&guest, &mut store));
        let (stdout, stderr) = store.data().take_output();
        if !stdout.is_empty() {
            tracing::info!(module = %inner.label, stream = "stdout", "{}", stdout.trim_end());
        }
        if !stderr.is_empty() {
            tracing::warn!(module = %inner.label, stream = "stderr", "{}", stderr.trim_end());
        }
        result.map_err(|e| {
            sandbox::classify(&e, inner.fuel, inner.memory_bytes, inner.deadline, &stderr)
        })
    }
}
