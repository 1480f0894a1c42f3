//! The module registry service: upload, validate, persist, compile and
//! activate versioned modules, and hand out the active version of each.
//!
//! Lifecycle: upload -> compile under the compile budget and check the world
//! (nothing written yet) -> bytes to `<data>/modules/<digest>.wasm` (fsync,
//! rename, fsync dir) -> record in the store -> activate (an atomic swap of an
//! `Arc`; a command that already holds the old one finishes on it).
//!
//! At startup ([`boot`]) every registered version is known at once and those
//! without a cached artifact compile in the background ([`version`] holds
//! their state); a request for one waits a little, then hears `NotReady`.

mod boot;
mod version;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use crate::fsutil;
pub use crate::hex::hex;
use crate::runtime::{AggregateModule, Guest, ProjectionModule, Runtime, RuntimeError, World};
use crate::store::{ModuleKind, ModulePut, ModuleRecord, Store, StoreError};
use version::Registered;
pub use version::{CompileState, ModuleVersion, NotReady};

pub const MAX_MODULE_NAME_LEN: usize = 64;

/// A module version that is compiled and ready to run.
pub struct LoadedModule {
    pub record: ModuleRecord,
    pub guest: Guest,
}

impl LoadedModule {
    /// The record's kind is the world the compiled component implements.
    fn new(record: ModuleRecord, guest: Guest) -> LoadedModule {
        let kind = match guest.world() {
            World::Aggregate => ModuleKind::Aggregate,
            World::Projection => ModuleKind::Projection,
        };
        LoadedModule {
            record: ModuleRecord { kind, ..record },
            guest,
        }
    }

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

/// Which compile budget a component exceeded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompileBudget {
    Time { limit: Duration },
    Memory { limit_bytes: u64 },
}

#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    #[error("invalid module name {name:?}: {reason}")]
    InvalidName { name: String, reason: String },
    #[error("invalid module version {version:?}: {reason}")]
    InvalidVersion { version: String, reason: String },
    #[error("invalid module: {0}")]
    InvalidModule(String),
    /// Compiling the component would take more time or memory than allowed.
    #[error("{detail}")]
    CompileBudgetExceeded {
        budget: CompileBudget,
        detail: String,
    },
    /// The compiler died on this component.
    #[error("{0}")]
    CompileCrashed(String),
    #[error(transparent)]
    NotReady(#[from] NotReady),
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

impl ModuleError {
    pub fn code(&self) -> &'static str {
        match self {
            ModuleError::InvalidName { .. } | ModuleError::InvalidVersion { .. } => {
                "invalid_request"
            }
            ModuleError::InvalidModule(_) => "invalid_module",
            ModuleError::CompileBudgetExceeded { .. } => "compile_budget_exceeded",
            ModuleError::CompileCrashed(_) => "compile_crashed",
            ModuleError::NotReady(not_ready) => not_ready.code(),
            ModuleError::Conflict { .. } => "module_conflict",
            ModuleError::NotFound(_) => "not_found",
            ModuleError::PromoteProjection(_) => "use_promote",
            ModuleError::KindMismatch { .. } => "module_kind_mismatch",
            ModuleError::Store(store) => store.code(),
            ModuleError::Host(_) => "internal",
        }
    }
}

impl From<RuntimeError> for ModuleError {
    fn from(err: RuntimeError) -> Self {
        let detail = err.to_string();
        match err {
            RuntimeError::InvalidModule(reason) => ModuleError::InvalidModule(reason),
            RuntimeError::CompileTimeout { limit } => ModuleError::CompileBudgetExceeded {
                budget: CompileBudget::Time { limit },
                detail,
            },
            RuntimeError::CompileMemory { limit_bytes } => ModuleError::CompileBudgetExceeded {
                budget: CompileBudget::Memory { limit_bytes },
                detail,
            },
            RuntimeError::CompileCrashed(_) => ModuleError::CompileCrashed(detail),
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

/// Told about every projection version once it is compiled (uploaded, or
/// loaded at startup), and whether the uploader asked for it to go live.
pub type ProjectionListener = Box<dyn Fn(Arc<LoadedModule>, bool) + Send + Sync>;

pub struct ModuleRegistry {
    store: Store,
    runtime: Arc<Runtime>,
    dir: PathBuf,
    /// Every registered version, compiled or not.
    versions: RwLock<HashMap<(String, String), Arc<Registered>>>,
    active: RwLock<HashMap<String, Arc<Registered>>>,
    /// Held while a compiled upload is checked, filed and recorded (never while
    /// compiling): it keeps the record, the version map and the first-version
    /// activation in step.
    uploads: tokio::sync::Mutex<()>,
    /// Held across the store write and the in-memory swap of an activation, so
    /// disk and memory agree on the active version.
    activation: std::sync::Mutex<()>,
    /// The projection service, which runs every projection version.
    projection_listener: Arc<RwLock<Option<ProjectionListener>>>,
}

impl ModuleRegistry {
    /// Knows every registered version at once: those with a cached artifact are
    /// ready, the others compile in the background (see [`boot`]).
    pub async fn open(
        store: Store,
        runtime: Arc<Runtime>,
        dir: PathBuf,
    ) -> Result<ModuleRegistry, ModuleError> {
        std::fs::create_dir_all(&dir)
            .map_err(|e| ModuleError::Host(format!("creating {}: {e}", dir.display())))?;
        let booted = boot::load_registered(&runtime, &dir, store.modules()?);
        let mut active = HashMap::new();
        for (name, version) in store.active_modules()? {
            if let Some(entry) = booted.versions.get(&(name.clone(), version)) {
                active.insert(name, entry.clone());
            }
        }
        let registry = ModuleRegistry {
            store,
            runtime,
            dir,
            versions: RwLock::new(booted.versions),
            active: RwLock::new(active),
            uploads: tokio::sync::Mutex::new(()),
            activation: std::sync::Mutex::new(()),
            projection_listener: Arc::new(RwLock::new(None)),
        };
        boot::compile_in_background(
            &registry.runtime,
            booted.to_compile,
            &registry.projection_listener,
        );
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
        } else if activate || self.active_version(name).is_none() {
            self.activate(name, version)?;
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
            uploaded_at_ms: now_ms(),
        };
        // Compile before anything is written: an invalid module leaves no trace.
        let module = load_module(&self.runtime, bytes.clone(), record).await?;
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
        self.write_file(&digest, &bytes)?;
        let outcome = match self.store.put_module(&module.record)? {
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
        self.write_file(&record.digest, &bytes)?;
        let module = load_module(&self.runtime, bytes, record).await?;
        entry
            .state
            .send_replace(CompileState::Ready(module.clone()));
        tracing::info!(module = %module.label(), "compiled on a repeated upload");
        Ok(module)
    }

    fn write_file(&self, digest: &[u8; 32], bytes: &[u8]) -> Result<(), ModuleError> {
        let path = self.path_of(digest);
        if path.exists() && std::fs::read(&path).is_ok_and(|b| *b == *bytes) {
            return Ok(());
        }
        fsutil::write_atomically(&path, bytes)
            .map_err(|e| ModuleError::Host(format!("writing {}: {e}", path.display())))
    }

    /// Registers the projection service, and tells it about every projection
    /// version already compiled. Versions still compiling are announced when
    /// they are: the lock is held across both, so none is missed.
    pub fn set_projection_listener(&self, listener: ProjectionListener) {
        let mut slot = self
            .projection_listener
            .write()
            .unwrap_or_else(|e| e.into_inner());
        for version in self.list() {
            if let CompileState::Ready(module) = version.state
                && module.record.kind == ModuleKind::Projection
            {
                listener(module, false);
            }
        }
        *slot = Some(listener);
    }

    /// Makes `version` the live version of projection `name`. For the
    /// projection service, which checks that it has caught up.
    pub fn set_live(&self, name: &str, version: &str) -> Result<Arc<LoadedModule>, ModuleError> {
        let entry = self.entry(name, version)?;
        let module = entry.now(self.request_wait())?;
        let _in_step = self.activation.lock().unwrap_or_else(|e| e.into_inner());
        self.store.set_active_module(name, version)?;
        self.active_mut().insert(name.to_string(), entry);
        tracing::info!(module = %module.label(), "projection version is live");
        Ok(module)
    }

    /// Forgets a version that is not active (a dropped projection version), so
    /// the version can be uploaded again. Its bytes stay under `modules/`,
    /// where other versions may share them.
    pub fn remove(&self, name: &str, version: &str) -> Result<(), ModuleError> {
        let _in_step = self.activation.lock().unwrap_or_else(|e| e.into_inner());
        if self.active_version(name).as_deref() == Some(version) {
            return Err(ModuleError::Host(format!(
                "{name}@{version} is active and cannot be removed"
            )));
        }
        self.store.delete_module(name, version)?;
        self.versions_mut()
            .remove(&(name.to_string(), version.to_string()));
        Ok(())
    }

    /// Makes `version` the one that takes `name`'s next command.
    pub fn activate(&self, name: &str, version: &str) -> Result<Arc<LoadedModule>, ModuleError> {
        let entry = self.entry(name, version)?;
        if entry.record.kind == ModuleKind::Projection {
            return Err(ModuleError::PromoteProjection(name.to_string()));
        }
        let module = entry.now(self.request_wait())?;
        let _in_step = self.activation.lock().unwrap_or_else(|e| e.into_inner());
        self.store.set_active_module(name, version)?;
        self.active_mut().insert(name.to_string(), entry);
        tracing::info!(module = %module.label(), "activated");
        Ok(module)
    }

    /// The version that takes `name`'s next command, if it is compiled.
    pub fn active(&self, name: &str) -> Option<Arc<LoadedModule>> {
        self.active_entry(name).and_then(|e| e.ready())
    }

    /// The active (for a projection: live) version of `name`, compiled or not.
    pub fn active_version(&self, name: &str) -> Option<String> {
        self.active_entry(name).map(|e| e.record.version.clone())
    }

    /// The active version of `name` if it is of `kind`: waits a little
    /// (`CompileConfig::request_wait`) for one that is still compiling.
    pub async fn active_ready(
        &self,
        name: &str,
        kind: ModuleKind,
    ) -> Result<Option<Arc<LoadedModule>>, NotReady> {
        match self.active_entry(name) {
            Some(entry) if entry.record.kind == kind => {
                entry.wait_ready(self.request_wait()).await.map(Some)
            }
            _ => Ok(None),
        }
    }

    /// `name@version` if it is compiled.
    pub fn get(&self, name: &str, version: &str) -> Option<Arc<LoadedModule>> {
        self.entry(name, version).ok().and_then(|e| e.ready())
    }

    /// `name@version`, waiting a little for one that is still compiling;
    /// `Ok(None)` if no such version is registered.
    pub async fn ready(
        &self,
        name: &str,
        version: &str,
    ) -> Result<Option<Arc<LoadedModule>>, NotReady> {
        match self.entry(name, version) {
            Ok(entry) => entry.wait_ready(self.request_wait()).await.map(Some),
            Err(_) => Ok(None),
        }
    }

    /// Why `name@version` cannot run now, if it is registered and cannot.
    pub fn not_ready(&self, name: &str, version: &str) -> Option<NotReady> {
        self.entry(name, version)
            .ok()
            .and_then(|e| e.now(self.request_wait()).err())
    }

    /// Every registered version with its compile state, sorted by name then
    /// semantic version.
    pub fn list(&self) -> Vec<ModuleVersion> {
        let mut all: Vec<ModuleVersion> = self
            .versions
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|e| e.snapshot())
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

    fn request_wait(&self) -> Duration {
        self.runtime.compile_config().request_wait
    }

    fn entry(&self, name: &str, version: &str) -> Result<Arc<Registered>, ModuleError> {
        self.versions
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(name.to_string(), version.to_string()))
            .cloned()
            .ok_or_else(|| ModuleError::NotFound(format!("{name}@{version}")))
    }

    fn active_entry(&self, name: &str) -> Option<Arc<Registered>> {
        self.active
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
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

    fn versions_mut(
        &self,
    ) -> std::sync::RwLockWriteGuard<'_, HashMap<(String, String), Arc<Registered>>> {
        self.versions.write().unwrap_or_else(|e| e.into_inner())
    }

    fn active_mut(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Arc<Registered>>> {
        self.active.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// Compiles (or takes from the artifact cache) one version's component.
async fn load_module(
    runtime: &Runtime,
    bytes: Arc<[u8]>,
    record: ModuleRecord,
) -> Result<Arc<LoadedModule>, ModuleError> {
    let label = format!("{}@{}", record.name, record.version);
    let guest = runtime.load(bytes, &record.digest, &label).await?;
    Ok(Arc::new(LoadedModule::new(record, guest)))
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

/// Module names double as aggregate types: lowercase letters, digits, `-` and `_`.
pub fn validate_name(name: &str) -> Result<(), ModuleError> {
    let bad = |reason: &str| {
        Err(ModuleError::InvalidName {
            name: name.to_string(),
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

/// Semantic versions: MAJOR.MINOR.PATCH with an optional -prerelease and +build.
pub fn validate_version(version: &str) -> Result<(), ModuleError> {
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
