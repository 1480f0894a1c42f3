//! Calls into an aggregate component. Every call gets a fresh instance from
//! the `InstancePre`, its own fuel, deadline and memory cap, so no guest state
//! survives from one call to the next: what a call returns depends only on its
//! arguments and on what `Observed` pins down. That is what makes replay exact.

use std::sync::Arc;

use wasmtime::component::{Component, Linker};
use wasmtime::{Engine, Store};

use super::RuntimeConfig;
use super::bindings::{
    Aggregate, AggregatePre, CommandContext, CommandError, NewEvent, StreamEvent,
};
use super::error::{GuestError, RuntimeError};
use super::sandbox::{CallSettings, HostState, Observed, REPLAY_DEADLINE_FACTOR};
use super::schema::SchemaVersions;

/// A compiled, checked aggregate component, ready to be called. Cheap to clone.
#[derive(Clone)]
pub struct AggregateModule {
    inner: Arc<Inner>,
}

struct Inner {
    pre: AggregatePre<HostState>,
    settings: CallSettings,
    schema: SchemaVersions,
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
        let settings = CallSettings::new(engine, with_wasi, label, config);
        let schema = SchemaVersions::read(engine, component, pre.instance_pre(), &settings)?;
        Ok(AggregateModule {
            inner: Arc::new(Inner {
                pre,
                settings,
                schema,
            }),
        })
    }

    /// The schema version the module emits each event type at.
    pub fn schema(&self) -> &SchemaVersions {
        &self.inner.schema
    }

    /// `name@version`, as it tags events and log lines.
    pub fn label(&self) -> &str {
        self.inner.settings.label()
    }

    pub fn imports_wasi(&self) -> bool {
        self.inner.settings.with_wasi()
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
            given_versions: Vec::new(),
        };
        self.call(&observed, |guest, store| {
            guest.call_handle(store, state, command, context)
        })
    }

    /// `apply` as a command is decided: one call's fuel and deadline.
    /// `versions` are the events' schema versions, in order.
    pub fn apply(
        &self,
        state: &[u8],
        events: &[StreamEvent],
        versions: &[u32],
    ) -> Result<Vec<u8>, GuestError> {
        self.call_scaled(&given(versions), 1, 1, |guest, store| {
            guest.call_apply(store, state, events)
        })?
        .map_err(GuestError::failed)
    }

    /// `apply` for a replay that folds the events of `commands` accepted
    /// commands at once: the call gets that many calls' fuel, and a deadline
    /// with room for a busy host ([`REPLAY_DEADLINE_FACTOR`]).
    pub fn apply_scaled(
        &self,
        state: &[u8],
        events: &[StreamEvent],
        versions: &[u32],
        commands: usize,
    ) -> Result<Vec<u8>, GuestError> {
        self.call_scaled(
            &given(versions),
            commands,
            REPLAY_DEADLINE_FACTOR,
            |guest, store| guest.call_apply(store, state, events),
        )?
        .map_err(GuestError::failed)
    }

    pub fn render(&self, state: &[u8]) -> Result<String, GuestError> {
        self.call(&Observed::default(), |guest, store| {
            guest.call_render(store, state)
        })?
        .map_err(GuestError::failed)
        .and_then(|answer| {
            super::error::bounded_answer("render", answer, self.inner.settings.max_answer_bytes())
        })
    }

    fn call<T>(
        &self,
        observed: &Observed,
        f: impl FnOnce(&Aggregate, &mut Store<HostState>) -> wasmtime::Result<T>,
    ) -> Result<T, GuestError> {
        self.call_scaled(observed, 1, 1, f)
    }

    fn call_scaled<T>(
        &self,
        observed: &Observed,
        fuel_units: usize,
        deadline_factor: u32,
        f: impl FnOnce(&Aggregate, &mut Store<HostState>) -> wasmtime::Result<T>,
    ) -> Result<T, GuestError> {
        let pre = &self.inner.pre;
        self.inner
            .settings
            .run(observed, None, fuel_units, deadline_factor, |store| {
                let guest = pre.instantiate(&mut *store)?;
                f(&guest, store)
            })
            .map(|(value, _)| value)
    }
}

/// What a call given events with these schema versions observes.
pub(super) fn given(versions: &[u32]) -> Observed {
    Observed {
        given_versions: versions.to_vec(),
        ..Observed::default()
    }
}
