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
mod error;
mod names;
mod routing;
mod upload;
mod version;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::fsutil;
pub use crate::hex::hex;
pub use crate::runtime::PoolStats;
use crate::runtime::{AggregateModule, Guest, ProcessModule, ProjectionModule, Runtime, World};
use crate::store::{Backend, ModuleKind, ModuleRecord, StoreError};
pub use error::{CompileBudget, ModuleError};
use names::semver_key;
pub use names::{MAX_MODULE_NAME_LEN, MAX_MODULE_VERSION_LEN, validate_name, validate_version};
use routing::Active;
pub use routing::{
    CanaryView, CommandOutcomeKind, OutcomeCounts, RollbackOutcome, Routed, RoutingView,
    VersionRole, canary_bucket,
};
use version::Registered;
pub use version::{CompileState, ModuleVersion, NotReady};

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
            World::Process => ModuleKind::Process,
        };
        LoadedModule {
            record: ModuleRecord { kind, ..record },
            guest,
        }
    }

    pub fn aggregate(&self) -> Option<&AggregateModule> {
        match &self.guest {
            Guest::Aggregate(m) => Some(m),
            Guest::Projection(_) | Guest::Process(_) => None,
        }
    }

    pub fn projection(&self) -> Option<&ProjectionModule> {
        match &self.guest {
            Guest::Projection(m) => Some(m),
            Guest::Aggregate(_) | Guest::Process(_) => None,
        }
    }

    pub fn process(&self) -> Option<&ProcessModule> {
        match &self.guest {
            Guest::Process(m) => Some(m),
            Guest::Aggregate(_) | Guest::Projection(_) => None,
        }
    }

    /// The schema versions it declares for the event types it emits (those
    /// other than 1); empty for a projection, which emits none.
    pub fn schema_versions(&self) -> std::collections::BTreeMap<String, u32> {
        match &self.guest {
            Guest::Aggregate(m) => m.schema().declared().clone(),
            Guest::Process(m) => m.schema().declared().clone(),
            Guest::Projection(_) => Default::default(),
        }
    }

    /// `name@version`.
    pub fn label(&self) -> String {
        format!("{}@{}", self.record.name, self.record.version)
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

/// Told about every version another host removed (a projection version dropped there).
pub type RemovalListener = Box<dyn Fn(&str, &str) + Send + Sync>;

pub struct ModuleRegistry {
    store: Backend,
    runtime: Arc<Runtime>,
    /// Every registered version, compiled or not.
    versions: RwLock<HashMap<(String, String), Arc<Registered>>>,
    /// Per name: the active (stable) version, and for an aggregate its canary
    /// and retired versions (`routing`). One map, so a command's routing reads
    /// one consistent picture.
    active: RwLock<HashMap<String, Active>>,
    /// Command outcomes per (name, version) since this process started.
    outcomes: routing::Outcomes,
    /// Held while a compiled upload is checked, filed and recorded (never while
    /// compiling): it keeps the record, the version map and the first-version
    /// activation in step.
    uploads: tokio::sync::Mutex<()>,
    /// Held across the store write and the in-memory swap of an activation, so
    /// disk and memory agree on the active version.
    activation: std::sync::Mutex<()>,
    /// The projection service, which runs every projection version.
    projection_listener: Arc<RwLock<Option<ProjectionListener>>>,
    /// The projection service again, for versions dropped on another host.
    removal_listener: RwLock<Option<RemovalListener>>,
    /// Counts activations: the process service watches it to start a runner
    /// for a process's first version and to refold instances under a new one.
    activations: tokio::sync::watch::Sender<u64>,
}

impl ModuleRegistry {
    /// Knows every registered version at once: those with a cached artifact are
    /// ready, the others compile in the background (see [`boot`]).
    pub async fn open(
        store: Backend,
        runtime: Arc<Runtime>,
    ) -> Result<ModuleRegistry, ModuleError> {
        let booted = boot::load_registered(&runtime, &store, store.modules()?);
        let mut routings: HashMap<String, crate::store::Routing> =
            store.routings()?.into_iter().collect();
        let mut active = HashMap::new();
        for (name, version) in store.active_modules()? {
            if let Some(entry) = booted.versions.get(&(name.clone(), version)) {
                let routing = routings.remove(&name).unwrap_or_default();
                let state = Active::restore(entry.clone(), routing, &name, &booted.versions);
                active.insert(name, state);
            }
        }
        let registry = ModuleRegistry {
            store,
            runtime,
            versions: RwLock::new(booted.versions),
            active: RwLock::new(active),
            outcomes: routing::Outcomes::default(),
            uploads: tokio::sync::Mutex::new(()),
            activation: std::sync::Mutex::new(()),
            projection_listener: Arc::new(RwLock::new(None)),
            removal_listener: RwLock::new(None),
            activations: tokio::sync::watch::Sender::new(0),
        };
        boot::compile_in_background(
            &registry.runtime,
            booted.to_compile,
            &registry.projection_listener,
        );
        Ok(registry)
    }

    /// On a shared database (PostgreSQL), follows what other hosts change in
    /// the catalog: their uploads compile here too (projection versions get
    /// a runner, standing by while another host holds the lease), and their
    /// activations, canaries and rollbacks route this host's next commands.
    /// Woken by the database's notifications, and every half second.
    pub fn follow_catalog(self: &Arc<Self>) {
        let Some(mut changes) = self.store.watch_catalog() else {
            return;
        };
        let registry = Arc::downgrade(self);
        tokio::spawn(async move {
            while changes.changed().await.is_ok() {
                // Until a refresh has read the change: a failed one is tried
                // again (the catalog's version does not move for it).
                let mut wait = Duration::from_millis(200);
                loop {
                    let Some(registry) = registry.upgrade() else {
                        return;
                    };
                    match registry.refresh() {
                        Ok(()) => break,
                        Err(e) => {
                            tracing::warn!(error = %e, "could not read the shared module catalog; trying again");
                        }
                    }
                    drop(registry);
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
            }
        });
    }

    /// Reads the catalog as the store has it now into this host's registry.
    fn refresh(&self) -> Result<(), ModuleError> {
        // Known before the catalog is read: a version this host registers
        // meanwhile is in the store before it is in the map, so it is never
        // taken for one another host removed.
        let known: std::collections::HashSet<(String, String)> =
            self.versions_map().keys().cloned().collect();
        let records = self.store.modules()?;
        let listed: std::collections::HashSet<(String, String)> = records
            .iter()
            .map(|r| (r.name.clone(), r.version.clone()))
            .collect();
        let new: Vec<ModuleRecord> = records
            .into_iter()
            .filter(|r| !known.contains(&(r.name.clone(), r.version.clone())))
            .collect();
        if !new.is_empty() {
            let booted = boot::load_registered(&self.runtime, &self.store, new);
            let mut ready = Vec::new();
            {
                let mut versions = self.versions_mut();
                for (key, entry) in booted.versions {
                    if let std::collections::hash_map::Entry::Vacant(slot) = versions.entry(key) {
                        tracing::info!(module = %entry.label(), "registered on another host");
                        if let Some(module) = entry.ready() {
                            ready.push(module);
                        }
                        slot.insert(entry);
                    }
                }
            }
            boot::compile_in_background(
                &self.runtime,
                booted.to_compile,
                &self.projection_listener,
            );
            if let Some(listener) = &*self
                .projection_listener
                .read()
                .unwrap_or_else(|e| e.into_inner())
            {
                for module in ready {
                    if module.record.kind == ModuleKind::Projection {
                        listener(module, false);
                    }
                }
            }
        }
        let _in_step = self.activation.lock().unwrap_or_else(|e| e.into_inner());
        // Versions another host removed (a dropped projection version).
        let mut removed = Vec::new();
        self.versions_mut().retain(|key, _| {
            let keep = listed.contains(key) || !known.contains(key);
            if !keep {
                removed.push(key.clone());
            }
            keep
        });
        if let Some(listener) = &*self
            .removal_listener
            .read()
            .unwrap_or_else(|e| e.into_inner())
        {
            for (name, version) in &removed {
                tracing::info!(module = %format!("{name}@{version}"), "removed on another host");
                listener(name, version);
            }
        }
        let mut routings: HashMap<String, crate::store::Routing> =
            self.store.routings()?.into_iter().collect();
        let mut changed = false;
        let versions = self.versions_map().clone();
        let mut active = HashMap::new();
        for (name, version) in self.store.active_modules()? {
            if let Some(entry) = versions.get(&(name.clone(), version)) {
                let routing = routings.remove(&name).unwrap_or_default();
                active.insert(
                    name.clone(),
                    Active::restore(entry.clone(), routing, &name, &versions),
                );
            }
        }
        {
            let mut current = self.active_mut();
            for (name, state) in active {
                let same = current.get(&name).is_some_and(|c| c.same_as(&state));
                if !same {
                    tracing::info!(module = %name, version = %state.stable.record.version, "routing changed on another host");
                    current.insert(name, state);
                    changed = true;
                }
            }
        }
        if changed {
            self.activations.send_modify(|n| *n += 1);
        }
        Ok(())
    }

    /// Registers the projection service's handler of versions another host removed.
    pub fn set_removal_listener(&self, listener: RemovalListener) {
        *self
            .removal_listener
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Some(listener);
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

    /// `name`'s active (for a projection: live) version as the store has it
    /// now, which on a shared database may be newer than this host's view.
    pub fn stored_active_version(&self, name: &str) -> Result<Option<String>, StoreError> {
        self.store.active_module(name)
    }

    /// Makes `version` the live version of projection `name`. For the
    /// projection service, which checks that it has caught up.
    pub fn set_live(&self, name: &str, version: &str) -> Result<Arc<LoadedModule>, ModuleError> {
        let entry = self.entry(name, version)?;
        let module = entry.now(self.request_wait())?;
        let _in_step = self.activation.lock().unwrap_or_else(|e| e.into_inner());
        if entry.record.kind == ModuleKind::Process && self.store.active_module(name)?.is_none() {
            // A process starts with the events after its first activation:
            // replaying the history before it would carry out every past
            // request again (a second transfers process would move the money
            // twice). Made durable with the activation below.
            self.store.set_process_checkpoint(name, self.store.head())?;
        }
        self.store.set_active_module(name, version)?;
        self.active_mut()
            .insert(name.to_string(), Active::stable(entry));
        tracing::info!(module = %module.label(), "projection version is live");
        Ok(module)
    }

    /// Forgets a version that is not active (a dropped projection version), so
    /// the version can be uploaded again. Its bytes stay under `modules/`,
    /// where other versions may share them.
    pub fn remove(&self, name: &str, version: &str) -> Result<(), ModuleError> {
        let _in_step = self.activation.lock().unwrap_or_else(|e| e.into_inner());
        if self.active_version(name).as_deref() == Some(version) {
            return Err(ModuleError::Store(StoreError::ModuleActive {
                name: name.to_string(),
                version: version.to_string(),
            }));
        }
        self.store.delete_module(name, version)?;
        self.versions_mut()
            .remove(&(name.to_string(), version.to_string()));
        Ok(())
    }

    /// Makes `version` the one that takes `name`'s next command. While a
    /// canary runs, activating the canary's version promotes it (it becomes
    /// the stable version, for every aggregate id); any other version is
    /// refused (`canary_in_progress`): promote or roll back first.
    ///
    /// Swapping an aggregate's stable version needs a passing replay check of
    /// the new version's bytes ([`ModuleRegistry::require_check`]) unless `force`.
    pub fn activate(
        &self,
        name: &str,
        version: &str,
        force: bool,
    ) -> Result<Arc<LoadedModule>, ModuleError> {
        let entry = self.entry(name, version)?;
        match entry.record.kind {
            ModuleKind::Aggregate | ModuleKind::Process => {}
            ModuleKind::Projection => {
                return Err(ModuleError::PromoteProjection(name.to_string()));
            }
        }
        if !force {
            self.require_check(&entry.record)?;
        }
        let module = entry.now(self.request_wait())?;
        let _in_step = self.activation.lock().unwrap_or_else(|e| e.into_inner());
        let mut routing = self.store.routing(name)?;
        if let Some(canary) = &routing.canary
            && canary.version != version
        {
            return Err(ModuleError::CanaryInProgress {
                name: name.to_string(),
                canary: canary.version.clone(),
                percent: canary.percent,
            });
        }
        if entry.record.kind == ModuleKind::Process && self.store.active_module(name)?.is_none() {
            // A process starts with the events after its first activation:
            // replaying the history before it would carry out every past
            // request again (a second transfers process would move the money
            // twice). Made durable with the activation below.
            self.store.set_process_checkpoint(name, self.store.head())?;
        }
        let promoted = routing.canary.take().is_some();
        routing.retired.retain(|v| v != version);
        self.store.set_routing(name, Some(version), &routing)?;
        let state = Active {
            stable: entry,
            canary: None,
            retired: routing.retired,
        };
        self.active_mut().insert(name.to_string(), state);
        self.activations.send_modify(|n| *n += 1);
        if promoted {
            tracing::info!(module = %module.label(), "canary promoted: it decides for every aggregate id");
        } else {
            tracing::info!(module = %module.label(), "activated");
        }
        Ok(module)
    }

    /// An aggregate version that would take commands from a stable version
    /// (a swap or a canary) must have passed a replay check of its bytes: its
    /// `apply` has folded every stream (or the sample asked for) of the
    /// type. The first version of a name (no history of its own to fold) and
    /// the stable version itself need none; nor do processes and projections
    /// (a projection replays beside the live one before it can go live).
    pub fn require_check(&self, record: &ModuleRecord) -> Result<(), ModuleError> {
        if record.kind != ModuleKind::Aggregate {
            return Ok(());
        }
        match self.active_version(&record.name) {
            None => return Ok(()),
            Some(stable) if stable == record.version => return Ok(()),
            Some(_) => {}
        }
        let label = format!("{}@{}", record.name, record.version);
        match self.store.check_record(&record.name, &record.version)? {
            Some(check) if check.digest == record.digest && check.passed && !check.sampled => {
                // A check speaks for the history as it was: the same stable
                // version, and no stream it did not fold.
                let stable = self.active_version(&record.name);
                let stale = |reason: String| ModuleError::CheckStale {
                    label: label.clone(),
                    name: record.name.clone(),
                    version: record.version.clone(),
                    reason,
                };
                if check.stable != stable {
                    return Err(stale(format!(
                        "it was checked against {} and the stable version is {}",
                        check.stable.as_deref().unwrap_or("none"),
                        stable.as_deref().unwrap_or("none")
                    )));
                }
                let streams = self.store.count_streams(&record.name)?;
                if streams > check.streams {
                    return Err(stale(format!(
                        "it folded {} streams and there are {streams} now",
                        check.streams
                    )));
                }
                Ok(())
            }
            Some(check) if check.digest == record.digest && !check.passed => {
                Err(ModuleError::CheckFailed {
                    label,
                    name: record.name.clone(),
                    version: record.version.clone(),
                    failed: check.failed,
                    streams: check.streams,
                })
            }
            _ => Err(ModuleError::CheckRequired {
                label,
                name: record.name.clone(),
                version: record.version.clone(),
            }),
        }
    }

    /// Changes whenever a version is activated.
    pub fn watch_activations(&self) -> tokio::sync::watch::Receiver<u64> {
        self.activations.subscribe()
    }

    /// The names whose active version is a process, compiled or not.
    pub fn active_processes(&self) -> Vec<String> {
        self.active
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(_, active)| active.stable.record.kind == ModuleKind::Process)
            .map(|(name, _)| name.clone())
            .collect()
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

    /// How the guest threads are doing, for metrics.
    pub fn guest_pool_stats(&self) -> PoolStats {
        self.runtime.pool().stats()
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

    /// The active (stable) version of `name`.
    fn active_entry(&self, name: &str) -> Option<Arc<Registered>> {
        self.active
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .map(|a| a.stable.clone())
    }

    fn versions_map(
        &self,
    ) -> std::sync::RwLockReadGuard<'_, HashMap<(String, String), Arc<Registered>>> {
        self.versions.read().unwrap_or_else(|e| e.into_inner())
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
            let bytes = self
                .store
                .module_bytes(&record.digest)
                .map_err(|e| ModuleError::Host(format!("reading {name}: {}", e.reason)))?;
            fsutil::write_atomically(&target, &bytes)
                .map_err(|e| ModuleError::Host(format!("writing {}: {e}", target.display())))?;
            copied += 1;
        }
        Ok(copied)
    }

    fn versions_mut(
        &self,
    ) -> std::sync::RwLockWriteGuard<'_, HashMap<(String, String), Arc<Registered>>> {
        self.versions.write().unwrap_or_else(|e| e.into_inner())
    }

    fn active_mut(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Active>> {
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
