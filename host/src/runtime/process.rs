//! Calls into a process component (a saga: `refold:domain/process`). Like
//! aggregates and projections, every call gets a fresh, metered instance.
//! The runner (`crate::processes`) decides what to call when; this file only
//! crosses the boundary, and bounds what comes back.

use std::sync::Arc;

use wasmtime::component::{Component, Linker};
use wasmtime::{Engine, Store};

use super::RuntimeConfig;
use super::aggregate::given;
use super::bindings::process_types::{ProcessContext, ProcessInput, ProcessStatus, Reaction};
use super::bindings::{EventSelector, Process, ProcessPre, RecordedEvent, StreamEvent};
use super::error::{GuestError, RuntimeError};
use super::projection::Selector;
use super::sandbox::{CallSettings, HostState, Observed, REPLAY_DEADLINE_FACTOR};
use super::schema::SchemaVersions;

/// A compiled process component, ready to call.
#[derive(Clone)]
pub struct ProcessModule {
    inner: Arc<Inner>,
}

struct Inner {
    pre: ProcessPre<HostState>,
    settings: CallSettings,
    schema: SchemaVersions,
}

impl ProcessModule {
    pub(super) fn new(
        engine: &Engine,
        linker: &Linker<HostState>,
        component: &Component,
        with_wasi: bool,
        label: &str,
        config: &RuntimeConfig,
    ) -> Result<ProcessModule, RuntimeError> {
        let pre = linker
            .instantiate_pre(component)
            .and_then(ProcessPre::new)
            .map_err(|e| {
                RuntimeError::InvalidModule(format!(
                    "does not implement refold:domain/process: {e:#}"
                ))
            })?;
        let settings = CallSettings::new(engine, with_wasi, label, config);
        let schema = SchemaVersions::read(engine, component, pre.instance_pre(), &settings)?;
        Ok(ProcessModule {
            inner: Arc::new(Inner {
                pre,
                settings,
                schema,
            }),
        })
    }

    /// The schema version the process emits each of its event types at.
    pub fn schema(&self) -> &SchemaVersions {
        &self.inner.schema
    }

    pub fn label(&self) -> &str {
        self.inner.settings.label()
    }

    pub fn imports_wasi(&self) -> bool {
        self.inner.settings.with_wasi()
    }

    /// The events of the log this process wants.
    pub fn selector(&self) -> Result<Selector, GuestError> {
        let selector: EventSelector = self.call(|guest, store| guest.call_subscription(store))?;
        Ok(Selector {
            event_types: selector.event_types,
            aggregate_types: selector.aggregate_types,
        })
    }

    /// Which instance a log event belongs to. `Err` is the guest's own
    /// failure to decide (an event it cannot decode).
    pub fn route(
        &self,
        event: &RecordedEvent,
        schema_version: u32,
    ) -> Result<Result<Option<String>, String>, GuestError> {
        self.call_with(&given(&[schema_version]), 1, 1, |guest, store| {
            guest.call_route(store, event)
        })
    }

    pub fn initial_state(&self) -> Result<Vec<u8>, GuestError> {
        self.call(|guest, store| guest.call_initial_state(store))
    }

    /// Decides one input. The guest sees the context's `now_ms` as its wall
    /// clock too, and randomness seeded from the instance and the time, so a
    /// reaction is a function of what is recorded with it.
    /// `versions` are the schema versions of the input's events: the log
    /// event's, or those of an accepted command's events.
    pub fn react(
        &self,
        state: &[u8],
        context: &ProcessContext,
        input: &ProcessInput,
        versions: &[u32],
    ) -> Result<Reaction, GuestError> {
        let observed = Observed {
            now_ms: context.now_ms,
            seed: format!("{}@{}", context.process_id, context.now_ms),
            given_versions: versions.to_vec(),
        };
        self.call_with(&observed, 1, 1, |guest, store| {
            guest.call_react(store, state, context, input)
        })?
        .map_err(GuestError::failed)
    }

    /// Folds a batch of the instance's own events; `inputs` is how many
    /// reactions produced them, which scales the call's fuel as for an
    /// aggregate's replay.
    pub fn apply(
        &self,
        state: &[u8],
        events: &[StreamEvent],
        versions: &[u32],
        inputs: usize,
    ) -> Result<Vec<u8>, GuestError> {
        self.call_with(
            &given(versions),
            inputs.max(1),
            REPLAY_DEADLINE_FACTOR,
            |guest, store| guest.call_apply(store, state, events),
        )?
        .map_err(GuestError::failed)
    }

    pub fn status(&self, state: &[u8]) -> Result<ProcessStatus, GuestError> {
        self.call(|guest, store| guest.call_status(store, state))?
            .map_err(GuestError::failed)
    }

    pub fn render(&self, state: &[u8]) -> Result<String, GuestError> {
        self.call(|guest, store| guest.call_render(store, state))?
            .map_err(GuestError::failed)
            .and_then(|answer| {
                super::error::bounded_answer(
                    "render",
                    answer,
                    self.inner.settings.max_answer_bytes(),
                )
            })
    }

    /// Like projections, `subscription` observes nothing: no clock reading but
    /// zero, randomness seeded from nothing. (What `react` may observe is the
    /// runner's to decide: the context's `now-ms` is its only clock.)
    fn call<T>(
        &self,
        f: impl FnOnce(&Process, &mut Store<HostState>) -> wasmtime::Result<T>,
    ) -> Result<T, GuestError> {
        self.call_with(&Observed::default(), 1, 1, f)
    }

    fn call_with<T>(
        &self,
        observed: &Observed,
        fuel_units: usize,
        deadline_factor: u32,
        f: impl FnOnce(&Process, &mut Store<HostState>) -> wasmtime::Result<T>,
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
