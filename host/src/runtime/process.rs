//! Calls into a process component (a saga: `refold:domain/process`). Like
//! aggregates and projections, every call gets a fresh, metered instance.
//!
//! For now the registry only loads processes, to tell them apart from the
//! other worlds and check their subscription; the runner that routes events
//! to instances, calls `react` and sends the commands is still to come.

use std::sync::Arc;

use wasmtime::component::{Component, Linker};
use wasmtime::{Engine, Store};

use super::RuntimeConfig;
use super::bindings::{EventSelector, Process, ProcessPre};
use super::error::{GuestError, RuntimeError};
use super::projection::Selector;
use super::sandbox::{CallSettings, HostState, Observed};

/// A compiled process component, ready to call.
#[derive(Clone)]
pub struct ProcessModule {
    inner: Arc<Inner>,
}

struct Inner {
    pre: ProcessPre<HostState>,
    settings: CallSettings,
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
        Ok(ProcessModule {
            inner: Arc::new(Inner {
                pre,
                settings: CallSettings::new(engine, with_wasi, label, config),
            }),
        })
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

    /// Like projections, `subscription` observes nothing: no clock reading but
    /// zero, randomness seeded from nothing. (What `react` may observe is the
    /// runner's to decide: the context's `now-ms` is its only clock.)
    fn call<T>(
        &self,
        f: impl FnOnce(&Process, &mut Store<HostState>) -> wasmtime::Result<T>,
    ) -> Result<T, GuestError> {
        let pre = &self.inner.pre;
        self.inner
            .settings
            .run(&Observed::default(), None, 1, 1, |store| {
                let guest = pre.instantiate(&mut *store)?;
                f(&guest, store)
            })
            .map(|(value, _)| value)
    }
}
