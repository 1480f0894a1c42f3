//! Startup: every registered version is known at once; those whose compiled
//! artifact is cached are ready at once, the others compile in the background
//! (each in a compile worker, under the compile budget) while the server
//! already serves. A version whose compilation fails is marked failed, visible
//! in the module list and the log, and the others serve on.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use super::version::{CompileState, Registered};
use super::{ModuleError, ProjectionListener, load_module};
use crate::runtime::Runtime;
use crate::store::{Backend, ModuleKind, ModuleRecord};

/// The registered versions with their first state, and the ones left to compile.
pub(super) struct Booted {
    pub versions: HashMap<(String, String), Arc<Registered>>,
    pub to_compile: Vec<(Arc<Registered>, Arc<[u8]>)>,
}

/// Reads each version's component file and its cached artifact. Reads the
/// registry keys and the files, never the event log.
pub(super) fn load_registered(
    runtime: &Runtime,
    store: &Backend,
    records: Vec<ModuleRecord>,
) -> Booted {
    let mut booted = Booted {
        versions: HashMap::new(),
        to_compile: Vec::new(),
    };
    for record in records {
        let key = (record.name.clone(), record.version.clone());
        let label = format!("{}@{}", record.name, record.version);
        let state = match component_bytes(store, &record) {
            Err(failed) => failed,
            Ok(bytes) => match runtime.load_cached(&record.digest, &label) {
                Ok(Some(guest)) => {
                    CompileState::Ready(Arc::new(super::LoadedModule::new(record.clone(), guest)))
                }
                Ok(None) => {
                    let entry = Registered::new(record, CompileState::Compiling);
                    booted.to_compile.push((entry.clone(), bytes));
                    booted.versions.insert(key, entry);
                    continue;
                }
                Err(e) => failed_state(&ModuleError::from(e)),
            },
        };
        if let CompileState::Failed { reason, .. } = &state {
            tracing::error!(module = %label, "cannot load a registered module: {reason}");
        }
        booted.versions.insert(key, Registered::new(record, state));
    }
    booted
}

/// The component bytes of a version, checked against its digest.
fn component_bytes(store: &Backend, record: &ModuleRecord) -> Result<Arc<[u8]>, CompileState> {
    store
        .module_bytes(&record.digest)
        .map(Into::into)
        .map_err(|e| CompileState::Failed {
            code: e.code,
            reason: e.reason,
        })
}

pub(super) fn failed_state(err: &ModuleError) -> CompileState {
    CompileState::Failed {
        code: err.code(),
        reason: err.to_string(),
    }
}

/// Compiles the versions the cache did not have, in the background; the
/// compiler's worker limit decides how many at once.
pub(super) fn compile_in_background(
    runtime: &Arc<Runtime>,
    to_compile: Vec<(Arc<Registered>, Arc<[u8]>)>,
    listener: &Arc<RwLock<Option<ProjectionListener>>>,
) {
    if to_compile.is_empty() {
        return;
    }
    tracing::info!(
        modules = to_compile.len(),
        "compiling modules missing from the artifact cache in the background"
    );
    for (entry, bytes) in to_compile {
        let (runtime, listener) = (runtime.clone(), listener.clone());
        tokio::spawn(async move {
            let state = match load_module(&runtime, bytes, entry.record.clone()).await {
                Ok(module) => CompileState::Ready(module),
                Err(err) => {
                    tracing::error!(module = %entry.label(), code = err.code(), "compiling a registered module failed; it does not run: {err}");
                    failed_state(&err)
                }
            };
            entry.state.send_replace(state);
            if let Some(module) = entry.ready()
                && module.record.kind == ModuleKind::Projection
                && let Some(listener) = &*listener.read().unwrap_or_else(|e| e.into_inner())
            {
                listener(module, false);
            }
        });
    }
}
