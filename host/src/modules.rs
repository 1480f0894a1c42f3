//! The module registry service: upload, validate, persist, compile and
//! activate versioned modules, and hand out the active version of each.
//!
//! Lifecycle: upload -> validate (a component implementing a known world) ->
//! bytes to `<data>/modules/<digest>.wasm` (fsync, rename, fsync dir) -> record
//! in the store -> compile (cached by digest) -> activate (an atomic swap of
//! an `Arc`; a command that already holds the old one finishes on it).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use crate::fsutil;
pub use crate::hex::hex;
use crate::runtime::{AggregateModule, Guest, ProjectionModule, Runtime, RuntimeError, World};
use crate::store::{
    MAX_METADATA_ID_LEN, ModuleKind, ModulePut, ModuleRecord, Store, StoreError, check_event_type,
};

pub const MAX_MODULE_NAME_LEN: usize = 64;
/// Longest version, in bytes: `name@version` tags every event a module
/// produces, so it must always fit the store's limit for such ids.
pub const MAX_MODULE_VERSION_LEN: usize = MAX_METADATA_ID_LEN - MAX_MODULE_NAME_LEN - 1;

/// A module version that is compiled and ready to run.
pub struct LoadedModule {
    pub record: ModuleRecord,
    pub guest: Guest,
}

impl LoadedModule {
    pub fn aggregate(&self) -> Option<&AggregateModule> {
        match &self.guest {
            Guest::Aggregate(m) => Some(m),
            Guest::Projection(_) => None,
        }
    }

    pub fn projection(&self) -> Option<&ProjectionModule> {
        match &self.guest {
            Guest::Projection(m) => Some(m),
            Guest::Aggregate(_) => None,
        }
    }

    /// `name@version`.
    pub fn label(&self) -> String {
        format!("{}@{}", self.record.name, self.record.version)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    #[error("invalid module name {name:?}: {reason}")]
    InvalidName { name: String, reason: String },
    #[error("invalid module version {version:?}: {reason}")]
    InvalidVersion { version: String, reason: String },
    #[error("invalid module: {0}")]
    InvalidModule(String),
    #[error(
        "{name}@{version} already holds other bytes (digest {existing_digest}); versions are immutable, upload a new version"
    )]
    Conflict {
        name: String,
        version: String,
        existing_digest: String,
    },
    #[error("no module {0}")]
    NotFound(String),
    #[error(
        "{0} is a projection: a version goes live with POST /v1/projections/{0}/promote once it has caught up"
    )]
    PromoteProjection(String),
    #[error("{name} already names {existing} modules; this upload is {uploaded}. Use another name")]
    KindMismatch {
        name: String,
        existing: &'static str,
        uploaded: &'static str,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("module host failure: {0}")]
    Host(String),
}

impl From<RuntimeError> for ModuleError {
    fn from(err: RuntimeError) -> Self {
        match err {
            RuntimeError::InvalidModule(reason) => ModuleError::InvalidModule(reason),
            other => ModuleError::Host(other.to_string()),
        }
    }
}

/// What an upload did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Uploaded {
    Created,
    /// The same bytes were already registered under this version.
    Unchanged,
}

/// Told about every projection version that is uploaded (or loaded at
/// startup), and whether the uploader asked for it to go live.
pub type ProjectionListener = Box<dyn Fn(Arc<LoadedModule>, bool) + Send + Sync>;

pub struct ModuleRegistry {
    store: Store,
    runtime: Arc<Runtime>,
    dir: PathBuf,
    loaded: RwLock<HashMap<(String, String), Arc<LoadedModule>>>,
    active: RwLock<HashMap<String, Arc<LoadedModule>>>,
    /// Uploads run one at a time: they are rare, and it keeps the registry
    /// record, the loaded map and the first-version activation in step.
    uploads: tokio::sync::Mutex<()>,
    /// Held across the store write and the in-memory swap of an activation, so
    /// disk and memory agree on the active version.
    activation: std::sync::Mutex<()>,
    /// The projection service, which runs every projection version.
    projection_listener: RwLock<Option<ProjectionListener>>,
}

impl ModuleRegistry {
    /// Loads every registered version (compiling from the artifact cache) and the
    /// active pointers. Reads the registry keys, never the event log.
    pub async fn open(
        store: Store,
        runtime: Arc<Runtime>,
        dir: PathBuf,
    ) -> Result<ModuleRegistry, ModuleError> {
        std::fs::create_dir_all(&dir)
            .map_err(|e| ModuleError::Host(format!("creating {}: {e}", dir.display())))?;
        let registry = ModuleRegistry {
            store,
            runtime,
            dir,
            loaded: RwLock::new(HashMap::new()),
            active: RwLock::new(HashMap::new()),
            uploads: tokio::sync::Mutex::new(()),
            activation: std::sync::Mutex::new(()),
            projection_listener: RwLock::new(None),
        };
        for record in registry.store.modules()? {
            let path = registry.path_of(&record.digest);
            let bytes = std::fs::read(&path).map_err(|e| {
                ModuleError::Host(format!(
                    "reading {} for {}@{}: {e}",
                    path.display(),
                    record.name,
                    record.version
                ))
            })?;
            let module = registry.compile(bytes, record).await?;
            registry.loaded_mut().insert(key_of(&module.record), module);
        }
        for (name, version) in registry.store.active_modules()? {
            if let Some(module) = registry.get(&name, &version) {
                registry.active_mut().insert(name, module);
            }
        }
        Ok(registry)
    }

    /// Registers `bytes` as `name@version`. The first version of a name becomes
    /// active; later ones only when `activate` is set.
    pub async fn upload(
        &self,
        name: &str,
        version: &str,
        bytes: Vec<u8>,
        activate: bool,
    ) -> Result<(Uploaded, Arc<LoadedModule>), ModuleError> {
        validate_name(name)?;
        validate_version(version)?;
        let digest: [u8; 32] = Sha256::digest(&bytes).into();
        let _one_at_a_time = self.uploads.lock().await;
        let outcome = match self.store.module(name, version)? {
            Some(existing) if existing.digest == digest => {
                // Registered but not loaded: an earlier upload failed after its record
                // was written. These are the same bytes, so load them now.
                if self.get(name, version).is_none() {
                    let module = self.compile(bytes, existing).await?;
                    self.loaded_mut().insert(key_of(&module.record), module);
                }
                Uploaded::Unchanged
            }
            Some(existing) => return Err(conflict(&existing)),
            None => {
                let record = ModuleRecord {
                    name: name.to_string(),
                    version: version.to_string(),
                    kind: ModuleKind::Aggregate,
                    digest,
                    size: bytes.len() as u64,
                    uploaded_at_ms: now_ms(),
                };
                // Compile before anything is written: an invalid module leaves no trace.
                let path = self.path_of(&digest);
                let module = self.compile(bytes.clone(), record.clone()).await?;
                self.check_selector(&module).await?;
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
                if !path.exists() {
                    fsutil::write_atomically(&path, &bytes).map_err(|e| {
                        ModuleError::Host(format!("writing {}: {e}", path.display()))
                    })?;
                }
                match self.store.put_module(&module.record)? {
                    ModulePut::Created => {
                        self.loaded_mut().insert(key_of(&module.record), module);
                        Uploaded::Created
                    }
                    ModulePut::AlreadyPresent(_) => {
                        self.loaded_mut().insert(key_of(&module.record), module);
                        Uploaded::Unchanged
                    }
                    ModulePut::Conflict(existing) => return Err(conflict(&existing)),
                }
            }
        };
        let module = self
            .get(name, version)
            .ok_or_else(|| ModuleError::NotFound(format!("{name}@{version}")))?;
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
        } else if activate || self.active(name).is_none() {
            self.activate(name, version)?;
        }
        Ok((outcome, module))
    }

    /// Registers the projection service, and tells it about every projection
    /// version already loaded.
    pub fn set_projection_listener(&self, listener: ProjectionListener) {
        for module in self.list() {
            if module.record.kind == ModuleKind::Projection {
                listener(module, false);
            }
        }
        *self
            .projection_listener
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Some(listener);
    }

    /// Makes `version` the live version of projection `name`. For the
    /// projection service, which checks that it has caught up.
    pub fn set_live(&self, name: &str, version: &str) -> Result<Arc<LoadedModule>, ModuleError> {
        let module = self
            .get(name, version)
            .ok_or_else(|| ModuleError::NotFound(format!("{name}@{version}")))?;
        let _in_step = self.activation.lock().unwrap_or_else(|e| e.into_inner());
        self.store.set_active_module(name, version)?;
        self.active_mut().insert(name.to_string(), module.clone());
        tracing::info!(module = %module.label(), "projection version is live");
        Ok(module)
    }

    /// Forgets a version that is not active (a dropped projection version), so
    /// the version can be uploaded again. Its bytes stay under `modules/`,
    /// where other versions may share them.
    pub fn remove(&self, name: &str, version: &str) -> Result<(), ModuleError> {
        let _in_step = self.activation.lock().unwrap_or_else(|e| e.into_inner());
        if self
            .active(name)
            .is_some_and(|m| m.record.version == version)
        {
            return Err(ModuleError::Host(format!(
                "{name}@{version} is active and cannot be removed"
            )));
        }
        self.store.delete_module(name, version)?;
        self.loaded_mut()
            .remove(&(name.to_string(), version.to_string()));
        Ok(())
    }

    /// Makes `version` the one that takes `name`'s next command.
    pub fn activate(&self, name: &str, version: &str) -> Result<Arc<LoadedModule>, ModuleError> {
        let module = self
            .get(name, version)
            .ok_or_else(|| ModuleError::NotFound(format!("{name}@{version}")))?;
        if module.record.kind == ModuleKind::Projection {
            return Err(ModuleError::PromoteProjection(name.to_string()));
        }
        let _in_step = self.activation.lock().unwrap_or_else(|e| e.into_inner());
        self.store.set_active_module(name, version)?;
        self.active_mut().insert(name.to_string(), module.clone());
        tracing::info!(module = %module.label(), "activated");
        Ok(module)
    }

    /// The version that takes `name`'s next command.
    pub fn active(&self, name: &str) -> Option<Arc<LoadedModule>> {
        self.active
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    pub fn get(&self, name: &str, version: &str) -> Option<Arc<LoadedModule>> {
        self.loaded
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(name.to_string(), version.to_string()))
            .cloned()
    }

    /// Every loaded version, sorted by name then semantic version.
    pub fn list(&self) -> Vec<Arc<LoadedModule>> {
        let mut all: Vec<_> = self
            .loaded
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        all.sort_by(|a, b| {
            (a.record.name.as_str(), semver_key(&a.record.version))
                .cmp(&(b.record.name.as_str(), semver_key(&b.record.version)))
        });
        all
    }

    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    async fn compile(
        &self,
        bytes: Vec<u8>,
        record: ModuleRecord,
    ) -> Result<Arc<LoadedModule>, ModuleError> {
        let runtime = self.runtime.clone();
        let label = format!("{}@{}", record.name, record.version);
        let digest = record.digest;
        // Compilation takes tens of milliseconds of CPU: keep it off the reactor.
        let guest = tokio::task::spawn_blocking(move || runtime.load(&bytes, &digest, &label))
            .await
            .map_err(|e| ModuleError::Host(format!("compiling: {e}")))??;
        let kind = match guest.world() {
            World::Aggregate => ModuleKind::Aggregate,
            World::Projection => ModuleKind::Projection,
        };
        Ok(Arc::new(LoadedModule {
            record: ModuleRecord { kind, ..record },
            guest,
        }))
    }

    /// A projection's selector may name only event types that events can have:
    /// a name with a comma or an invisible character would silently select
    /// nothing. A selector that fails to run is left to the projection's
    /// runner, which reports it like any failure of the module's code.
    async fn check_selector(&self, module: &LoadedModule) -> Result<(), ModuleError> {
        let Some(projection) = module.projection().cloned() else {
            return Ok(());
        };
        let selector = self
            .runtime
            .pool()
            .run(&module.record.name, move || projection.selector())
            .await;
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

    /// Copies the component files of `records` into `dir` (for a backup): each
    /// written whole or not at all, and durable.
    pub fn copy_files_to(
        &self,
        records: &[ModuleRecord],
        dir: &std::path::Path,
    ) -> Result<u64, ModuleError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| ModuleError::Host(format!("creating {}: {e}", dir.display())))?;
        let mut copied = 0;
        for record in records {
            let name = format!("{}.wasm", hex(&record.digest));
            let target = dir.join(&name);
            if target.exists() {
                continue;
            }
            let bytes = std::fs::read(self.dir.join(&name))
                .map_err(|e| ModuleError::Host(format!("reading {name}: {e}")))?;
            fsutil::write_atomically(&target, &bytes)
                .map_err(|e| ModuleError::Host(format!("writing {}: {e}", target.display())))?;
            copied += 1;
        }
        Ok(copied)
    }

    fn path_of(&self, digest: &[u8; 32]) -> PathBuf {
        self.dir.join(format!("{}.wasm", hex(digest)))
    }

    fn loaded_mut(
        &self,
    ) -> std::sync::RwLockWriteGuard<'_, HashMap<(String, String), Arc<LoadedModule>>> {
        self.loaded.write().unwrap_or_else(|e| e.into_inner())
    }

    fn active_mut(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Arc<LoadedModule>>> {
        self.active.write().unwrap_or_else(|e| e.into_inner())
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

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// At most the first 64 characters of a rejected name or version, for its error.
fn shown(text: &str) -> String {
    match text.char_indices().nth(64) {
        Some((at, _)) => format!("{}...", &text[..at]),
        None => text.to_string(),
    }
}

/// Module names double as aggregate types: lowercase letters, digits, `-` and `_`.
pub fn validate_name(name: &str) -> Result<(), ModuleError> {
    let bad = |reason: &str| {
        Err(ModuleError::InvalidName {
            name: shown(name),
            reason: reason.to_string(),
        })
    };
    if name.is_empty() || name.len() > MAX_MODULE_NAME_LEN {
        return bad("must be 1 to 64 characters");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
    {
        return bad("may hold only lowercase letters, digits, '-' and '_'");
    }
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        return bad("must start with a letter");
    }
    Ok(())
}

/// Semantic versions: MAJOR.MINOR.PATCH with an optional -prerelease and
/// +build, at most [`MAX_MODULE_VERSION_LEN`] bytes.
pub fn validate_version(version: &str) -> Result<(), ModuleError> {
    if version.len() > MAX_MODULE_VERSION_LEN {
        return Err(ModuleError::InvalidVersion {
            version: shown(version),
            reason: format!(
                "is {} bytes; the limit is {MAX_MODULE_VERSION_LEN}, so that name@version fits the {MAX_METADATA_ID_LEN} bytes events carry",
                version.len()
            ),
        });
    }
    semver::Version::parse(version)
        .map(|_| ())
        .map_err(|e| ModuleError::InvalidVersion {
            version: version.to_string(),
            reason: e.to_string(),
        })
}

fn semver_key(version: &str) -> Option<semver::Version> {
    semver::Version::parse(version).ok()
}
