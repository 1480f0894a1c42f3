//! Uploads: a new version is compiled under the compile budget and checked
//! before anything is written (an invalid module leaves no trace), and not
//! under the upload lock, so a slow compilation holds up no other upload.
//! The same bytes again are answered from what is registered.

use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::boot::failed_state;
use super::version::{CompileState, Registered};
use super::{
    LoadedModule, ModuleError, ModuleRegistry, Uploaded, hex, load_module, validate_name,
    validate_version,
};
use crate::store::{ModuleKind, ModulePut, ModuleRecord, check_event_type};

impl ModuleRegistry {
    /// Registers `bytes` as `name@version`. The first version of an aggregate
    /// or a process becomes active; later ones only when `activate` is set
    /// (and, for an aggregate, once a replay check passed, unless `force`).
    pub async fn upload(
        &self,
        name: &str,
        version: &str,
        bytes: Vec<u8>,
        activate: bool,
        force: bool,
    ) -> Result<(Uploaded, Arc<LoadedModule>), ModuleError> {
        validate_name(name)?;
        validate_version(version)?;
        let digest: [u8; 32] = Sha256::digest(&bytes).into();
        let bytes: Arc<[u8]> = bytes.into();
        let (outcome, module) = match self.store.module(name, version)? {
            Some(existing) if existing.digest == digest => {
                (Uploaded::Unchanged, self.reload(existing, bytes).await?)
            }
            Some(existing) => return Err(conflict(&existing)),
            None => self.register(name, version, digest, bytes).await?,
        };
        if module.record.kind == ModuleKind::Projection {
            // A projection version goes live only after it has replayed the log:
            // the projection service decides when.
            if let Some(listener) = &*self
                .projection_listener
                .read()
                .unwrap_or_else(|e| e.into_inner())
            {
                listener(module.clone(), activate);
            }
        } else {
            // Under the upload lock: of two first versions uploaded at once,
            // exactly one becomes active.
            let _one_at_a_time = self.uploads.lock().await;
            // What the store says: on a shared database another host may have
            // activated a first version this host has not heard of yet.
            if activate || self.store.active_module(name)?.is_none() {
                self.activate(name, version, force)?;
            }
        }
        Ok((outcome, module))
    }

    /// A new version: compiled first (not under the upload lock, so a slow
    /// compilation holds up no other upload), then filed and recorded.
    async fn register(
        &self,
        name: &str,
        version: &str,
        digest: [u8; 32],
        bytes: Arc<[u8]>,
    ) -> Result<(Uploaded, Arc<LoadedModule>), ModuleError> {
        let record = ModuleRecord {
            name: name.to_string(),
            version: version.to_string(),
            kind: ModuleKind::Aggregate,
            digest,
            size: bytes.len() as u64,
            uploaded_at_ms: crate::clock::now_ms(),
        };
        // Compile before anything is written: an invalid module leaves no trace.
        let module = load_module(&self.runtime, bytes.clone(), record).await?;
        self.check_selector(&module).await?;
        let _one_at_a_time = self.uploads.lock().await;
        // One name, one kind: the name is an aggregate type or a projection.
        if let Some(other) = self
            .list()
            .into_iter()
            .find(|m| m.record.name == name && m.record.kind != module.record.kind)
        {
            return Err(ModuleError::KindMismatch {
                name: name.to_string(),
                existing: other.record.kind.as_str(),
                uploaded: module.record.kind.as_str(),
            });
        }
        let outcome = match self.store.put_module(&module.record, &bytes)? {
            ModulePut::Created => Uploaded::Created,
            // The same bytes, registered by an upload that raced this one.
            ModulePut::AlreadyPresent(_) => Uploaded::Unchanged,
            ModulePut::Conflict(existing) => return Err(conflict(&existing)),
        };
        let entry = Registered::new(module.record.clone(), CompileState::Ready(module.clone()));
        let module = match self.versions_mut().entry(key_of(&module.record)) {
            std::collections::hash_map::Entry::Occupied(e) => e.get().ready().unwrap_or(module),
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(entry);
                module
            }
        };
        Ok((outcome, module))
    }

    /// A version registered with these very bytes: the compiled module, once a
    /// compilation under way has ended; compiled now if its startup
    /// compilation failed (or it is recorded but was never loaded).
    async fn reload(
        &self,
        record: ModuleRecord,
        bytes: Arc<[u8]>,
    ) -> Result<Arc<LoadedModule>, ModuleError> {
        let entry = self
            .versions_mut()
            .entry(key_of(&record))
            .or_insert_with(|| {
                Registered::new(
                    record.clone(),
                    CompileState::Failed {
                        code: "not_loaded",
                        reason: "recorded, but not loaded".into(),
                    },
                )
            })
            .clone();
        if let CompileState::Ready(module) = entry.wait_compiled().await {
            return Ok(module);
        }
        // Whatever went wrong with the file, these are the registered bytes.
        self.store.keep_module_bytes(&record.digest, &bytes)?;
        match load_module(&self.runtime, bytes, record).await {
            Ok(module) => {
                entry
                    .state
                    .send_replace(CompileState::Ready(module.clone()));
                tracing::info!(module = %module.label(), "compiled on a repeated upload");
                Ok(module)
            }
            Err(err) => {
                entry.state.send_replace(failed_state(&err));
                Err(err)
            }
        }
    }
}

fn key_of(record: &ModuleRecord) -> (String, String) {
    (record.name.clone(), record.version.clone())
}

fn conflict(existing: &ModuleRecord) -> ModuleError {
    ModuleError::Conflict {
        name: existing.name.clone(),
        version: existing.version.clone(),
        existing_digest: hex(&existing.digest),
    }
}

impl ModuleRegistry {
    /// A projection's or a process's selector may name only event types that
    /// events can have: a name with a comma or an invisible character would
    /// silently select nothing. A selector that fails to run is left to the
    /// module's runner, which reports it like any failure of the module's code.
    async fn check_selector(&self, module: &LoadedModule) -> Result<(), ModuleError> {
        let pool = self.runtime.pool();
        let selector = if let Some(projection) = module.projection().cloned() {
            pool.run(&module.record.name, move || projection.selector())
                .await
        } else if let Some(process) = module.process().cloned() {
            pool.run(&module.record.name, move || process.selector())
                .await
        } else {
            return Ok(());
        };
        let Ok(selector) = selector else {
            return Ok(());
        };
        for event_type in &selector.event_types {
            check_event_type(event_type).map_err(|reason| {
                ModuleError::InvalidModule(format!(
                    "its subscription selects an event type no event can have: {reason}"
                ))
            })?;
        }
        Ok(())
    }
}
