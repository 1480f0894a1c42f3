//! Which version decides a command for one aggregate id: canaries, sticky
//! forward, rollback, and command outcomes per version.
//!
//! - The split: `canary_bucket(name, id)` is 0..=99, from SHA-256 (never a
//!   randomized hasher), so every process and every restart agrees; a bucket
//!   below the canary's percentage goes to the canary, the rest to the stable
//!   version.
//! - Sticky forward: an aggregate never moves back mid-stream. If the stream's
//!   last event was produced by a registered version of the same name that is
//!   newer (semver) than the split's pick and not retired, that version decides.
//! - A forced rollback retires every version newer than the one it goes back
//!   to: stickiness no longer leads to them, so every aggregate goes back.
//!   Activating one again takes it off the retired list.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use super::names::semver_key;
use super::version::{NotReady, Registered};
use super::{LoadedModule, ModuleError, ModuleRegistry};
use crate::store::{CanaryRecord, ModuleKind, Routing};

/// The percentages a canary may take: 0 would route nothing, 100 is a full
/// activation (a promotion).
pub const CANARY_PERCENT: std::ops::RangeInclusive<u8> = 1..=99;

/// One name's routing in memory.
pub(super) struct Active {
    /// The active version: for an aggregate the stable one, which decides for
    /// every id the canary does not take.
    pub stable: Arc<Registered>,
    pub canary: Option<(Arc<Registered>, CanaryRecord)>,
    pub retired: Vec<String>,
}

impl Active {
    pub fn stable(entry: Arc<Registered>) -> Active {
        Active {
            stable: entry,
            canary: None,
            retired: Vec::new(),
        }
    }

    /// At startup: the kept routing over the registered versions (a canary
    /// whose version is not registered is dropped, with a warning).
    /// The same versions in the same roles, with the same canary share.
    pub fn same_as(&self, other: &Active) -> bool {
        let canary = |a: &Active| {
            a.canary
                .as_ref()
                .map(|(e, c)| (e.record.version.clone(), c.percent))
        };
        self.stable.record.version == other.stable.record.version
            && canary(self) == canary(other)
            && self.retired == other.retired
    }

    pub fn restore(
        stable: Arc<Registered>,
        routing: Routing,
        name: &str,
        versions: &HashMap<(String, String), Arc<Registered>>,
    ) -> Active {
        let canary = routing.canary.and_then(|c| {
            match versions.get(&(name.to_string(), c.version.clone())) {
                Some(entry) => Some((entry.clone(), c)),
                None => {
                    tracing::warn!(module = name, version = %c.version, "the canary's version is not registered; ignoring the canary");
                    None
                }
            }
        });
        Active {
            stable,
            canary,
            retired: routing.retired,
        }
    }
}

/// The bucket (0..=99) of aggregate `id` of type `name`: the first 8 bytes,
/// big-endian, of SHA-256 over `refold canary v1\0`, then the name and the id,
/// each prefixed with its length as a big-endian u64, modulo 100.
pub fn canary_bucket(name: &str, id: &str) -> u8 {
    let mut hasher = Sha256::new();
    hasher.update(b"refold canary v1\0");
    for part in [name, id] {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part.as_bytes());
    }
    let digest = hasher.finalize();
    let head = u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"));
    (head % 100) as u8
}

/// The version that decides for one aggregate id, and why.
pub struct Routed {
    pub module: Arc<LoadedModule>,
    /// Decided by this version because the stream's last event was produced
    /// by it, while the split picked an older one.
    pub sticky: bool,
}

/// How a command decided by a version ended, for the per-version counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommandOutcomeKind {
    /// Accepted (with or without events).
    Accepted,
    /// Refused by the module: a rejection, or a command it could not read.
    Rejected,
    /// The module's fault: a trap, fuel, deadline, memory, invalid output, a
    /// state past the limit.
    Failed,
    /// Says nothing about the version: an unmet precondition, a conflict, a
    /// reused idempotency key, a store failure.
    Refused,
}

/// Commands decided by one version since this process started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct OutcomeCounts {
    pub accepted: u64,
    pub rejected: u64,
    pub failed: u64,
    pub refused: u64,
    /// Of all the above, those decided by this version only because the
    /// aggregate's last event was its (sticky forward).
    pub sticky: u64,
}

#[derive(Default)]
pub(super) struct Outcomes(Mutex<HashMap<(String, String), OutcomeCounts>>);

/// What a version is to its name's routing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VersionRole {
    /// The active version (for a projection: the live one).
    Stable,
    /// Decides for its share of aggregate ids.
    Canary,
    /// Newer than the stable version and not in the split: still decides for
    /// the aggregates whose last event it produced (sticky forward), so it
    /// stays loaded.
    Sticky,
    /// A forced rollback retired it: it decides for no aggregate.
    Retired,
    /// Decides for nothing (older than the stable version, or never activated).
    Inactive,
}

impl VersionRole {
    pub fn as_str(self) -> &'static str {
        match self {
            VersionRole::Stable => "stable",
            VersionRole::Canary => "canary",
            VersionRole::Sticky => "sticky",
            VersionRole::Retired => "retired",
            VersionRole::Inactive => "inactive",
        }
    }
}

/// A running canary.
#[derive(Clone, Debug)]
pub struct CanaryView {
    pub version: String,
    pub percent: u8,
    pub since_ms: u64,
}

/// One name's routing, for readers.
#[derive(Clone, Debug)]
pub struct RoutingView {
    pub stable: String,
    pub canary: Option<CanaryView>,
    pub retired: Vec<String>,
}

/// What a rollback did.
#[derive(Clone, Debug)]
pub struct RollbackOutcome {
    /// The version rolled back from (the canary, or the previous stable one).
    pub from: String,
    /// The stable version now.
    pub to: String,
    /// True when a canary was dropped (the stable version did not change).
    pub canary_dropped: bool,
    /// True when the rollback was forced.
    pub forced: bool,
    /// What a forced rollback retired: every registered version newer than
    /// `to` (`from` among them), which decides for no aggregate any more.
    pub retired: Vec<String>,
}

fn newer(a: &str, b: &str) -> bool {
    match (semver_key(a), semver_key(b)) {
        (Some(a), Some(b)) => a > b,
        _ => false,
    }
}

impl ModuleRegistry {
    /// The version that decides a command (or renders the state) of aggregate
    /// `id` of type `name`: the split's pick, unless the stream's last event
    /// was produced by a newer version that is registered and not retired
    /// (then that one: an aggregate never moves back mid-stream). `last_producer`
    /// is asked only when a newer version exists. `Ok(None)`: `name` has no
    /// active aggregate version.
    pub async fn for_aggregate<E: From<NotReady>>(
        &self,
        name: &str,
        id: &str,
        last_producer: impl FnOnce() -> Result<Option<String>, E>,
    ) -> Result<Option<Routed>, E> {
        let (pick, retired) = {
            let active = self.active.read().unwrap_or_else(|e| e.into_inner());
            let Some(state) = active.get(name) else {
                return Ok(None);
            };
            if state.stable.record.kind != ModuleKind::Aggregate {
                return Ok(None);
            }
            let pick = match &state.canary {
                Some((entry, canary)) if canary_bucket(name, id) < canary.percent => entry.clone(),
                _ => state.stable.clone(),
            };
            (pick, state.retired.clone())
        };
        let picked = pick.record.version.as_str();
        let newer_exists = self
            .versions_map()
            .keys()
            .any(|(n, v)| n == name && newer(v, picked) && !retired.iter().any(|r| r == v));
        let mut chosen = pick.clone();
        let mut sticky = false;
        if newer_exists
            && let Some(producer) = last_producer()?
            && let Some((producer_name, producer_version)) = producer.split_once('@')
            && producer_name == name
            && newer(producer_version, picked)
            && !retired.iter().any(|r| r == producer_version)
            && let Ok(entry) = self.entry(name, producer_version)
        {
            chosen = entry;
            sticky = true;
        }
        let module = chosen.wait_ready(self.request_wait()).await?;
        Ok(Some(Routed { module, sticky }))
    }

    /// Starts (or, for the same version, re-weighs) a canary: `percent` of
    /// `name`'s aggregate ids go to `version`, the rest stay on the stable
    /// version. Aggregates only; the version must be newer than the stable
    /// one; another version's canary must be promoted or rolled back first.
    pub fn activate_canary(
        &self,
        name: &str,
        version: &str,
        percent: u8,
        force: bool,
    ) -> Result<Arc<LoadedModule>, ModuleError> {
        if !CANARY_PERCENT.contains(&percent) {
            return Err(ModuleError::InvalidCanary(format!(
                "a canary takes 1 to 99 percent of the aggregate ids, not {percent}; 100 (or no canary) is a full activation"
            )));
        }
        let entry = self.entry(name, version)?;
        match entry.record.kind {
            ModuleKind::Aggregate => {}
            ModuleKind::Projection => {
                return Err(ModuleError::PromoteProjection(name.to_string()));
            }
            ModuleKind::Process => {
                return Err(ModuleError::CanaryNotSupported(name.to_string()));
            }
        }
        if !force {
            self.require_check(&entry.record)?;
        }
        let module = entry.now(self.request_wait())?;
        let _in_step = self.activation.lock().unwrap_or_else(|e| e.into_inner());
        let Some(stable) = self.active_entry(name) else {
            return Err(ModuleError::NoActiveVersion(name.to_string()));
        };
        let stable_version = stable.record.version.clone();
        if stable_version == version {
            return Err(ModuleError::CanaryIsStable(format!("{name}@{version}")));
        }
        if !newer(version, &stable_version) {
            return Err(ModuleError::CanaryNotNewer {
                name: name.to_string(),
                version: version.to_string(),
                stable: stable_version,
            });
        }
        let mut routing = self.store.routing(name)?;
        let since_ms = match &routing.canary {
            Some(c) if c.version != version => {
                return Err(ModuleError::CanaryInProgress {
                    name: name.to_string(),
                    canary: c.version.clone(),
                    percent: c.percent,
                });
            }
            Some(c) => c.since_ms,
            None => crate::clock::now_ms(),
        };
        let canary = CanaryRecord {
            version: version.to_string(),
            percent,
            since_ms,
        };
        routing.canary = Some(canary.clone());
        routing.retired.retain(|v| v != version);
        self.store.set_routing(name, None, &routing)?;
        {
            let mut active = self.active_mut();
            if let Some(state) = active.get_mut(name) {
                state.canary = Some((entry, canary));
                state.retired = routing.retired;
            }
        }
        self.activations.send_modify(|n| *n += 1);
        tracing::info!(module = %module.label(), percent, stable = %stable_version, "canary");
        Ok(module)
    }

    /// Goes back one step in one call: while a canary runs, drops it (the
    /// stable version stays); otherwise re-activates the version that was
    /// active before the current one. `force` also retires every version newer
    /// than the one it goes back to, so even aggregates whose last event such a
    /// version produced go back. `from`, if given, must be the version it
    /// would roll back from (the canary, else the stable version): a retry of a
    /// rollback whose answer was lost is then refused (`rollback_from_mismatch`)
    /// instead of taking a second step.
    pub fn rollback(
        &self,
        name: &str,
        force: bool,
        from: Option<&str>,
    ) -> Result<RollbackOutcome, ModuleError> {
        let _in_step = self.activation.lock().unwrap_or_else(|e| e.into_inner());
        let Some(stable) = self.active_entry(name) else {
            return match self.list().iter().any(|v| v.record.name == name) {
                true => Err(ModuleError::NothingToRollBack(format!(
                    "{name} has no active version"
                ))),
                false => Err(ModuleError::NotFound(name.to_string())),
            };
        };
        if stable.record.kind == ModuleKind::Projection {
            return Err(ModuleError::PromoteProjection(name.to_string()));
        }
        let mut routing = self.store.routing(name)?;
        let current_from = match &routing.canary {
            Some(canary) => canary.version.clone(),
            None => stable.record.version.clone(),
        };
        if let Some(expected) = from
            && expected != current_from
        {
            return Err(ModuleError::RollbackFromMismatch {
                name: name.to_string(),
                expected: expected.to_string(),
                actual: current_from,
            });
        }
        if let Some(canary) = routing.canary.take() {
            let retired = if force {
                self.retire_newer_than(name, &stable.record.version, &mut routing)
            } else {
                Vec::new()
            };
            self.store.set_routing(name, None, &routing)?;
            if let Some(state) = self.active_mut().get_mut(name) {
                state.canary = None;
                state.retired = routing.retired;
            }
            self.activations.send_modify(|n| *n += 1);
            tracing::info!(module = name, canary = %canary.version, force, "canary rolled back");
            return Ok(RollbackOutcome {
                from: canary.version,
                to: stable.record.version.clone(),
                canary_dropped: true,
                forced: force,
                retired,
            });
        }
        let current = stable.record.version.clone();
        let history = self.store.activations(name)?;
        let previous = match history.as_slice() {
            [.., before, last] if last.version == current => before.version.clone(),
            _ => {
                return Err(ModuleError::NothingToRollBack(format!(
                    "{name}@{current} is the first version activated since activations were recorded \
                     (to move aggregates off a newer version that wrote them last, start it as a canary \
                     again and roll that back with force)"
                )));
            }
        };
        let entry = self.entry(name, &previous)?;
        entry.now(self.request_wait())?;
        routing.retired.retain(|v| *v != previous);
        let retired = if force {
            self.retire_newer_than(name, &previous, &mut routing)
        } else {
            Vec::new()
        };
        self.store.set_routing(name, Some(&previous), &routing)?;
        let state = Active {
            stable: entry,
            canary: None,
            retired: routing.retired,
        };
        self.active_mut().insert(name.to_string(), state);
        self.activations.send_modify(|n| *n += 1);
        tracing::info!(module = name, from = %current, to = %previous, force, "rolled back");
        Ok(RollbackOutcome {
            from: current,
            to: previous,
            canary_dropped: false,
            forced: force,
            retired,
        })
    }

    /// Adds every registered version of `name` newer than `target` to the
    /// retired list; returns them, oldest first.
    fn retire_newer_than(&self, name: &str, target: &str, routing: &mut Routing) -> Vec<String> {
        let mut newer_versions: Vec<String> = self
            .versions_map()
            .keys()
            .filter(|(n, v)| n == name && newer(v, target))
            .map(|(_, v)| v.clone())
            .collect();
        newer_versions.sort_by_key(|v| semver_key(v));
        for v in &newer_versions {
            if !routing.retired.contains(v) {
                routing.retired.push(v.clone());
            }
        }
        newer_versions
    }

    /// `name`'s routing, if it has an active version.
    pub fn routing(&self, name: &str) -> Option<RoutingView> {
        let active = self.active.read().unwrap_or_else(|e| e.into_inner());
        let state = active.get(name)?;
        Some(RoutingView {
            stable: state.stable.record.version.clone(),
            canary: state.canary.as_ref().map(|(_, c)| CanaryView {
                version: c.version.clone(),
                percent: c.percent,
                since_ms: c.since_ms,
            }),
            retired: state.retired.clone(),
        })
    }

    /// What `version` is to `name`'s routing.
    pub fn role(&self, name: &str, version: &str) -> VersionRole {
        let active = self.active.read().unwrap_or_else(|e| e.into_inner());
        let Some(state) = active.get(name) else {
            return VersionRole::Inactive;
        };
        if state.stable.record.version == version {
            VersionRole::Stable
        } else if state
            .canary
            .as_ref()
            .is_some_and(|(_, c)| c.version == version)
        {
            VersionRole::Canary
        } else if state.retired.iter().any(|r| r == version) {
            VersionRole::Retired
        } else if state.stable.record.kind == ModuleKind::Aggregate
            && newer(version, &state.stable.record.version)
        {
            VersionRole::Sticky
        } else {
            VersionRole::Inactive
        }
    }

    /// Counts a command `module` decided.
    pub fn count_outcome(&self, module: &LoadedModule, sticky: bool, outcome: CommandOutcomeKind) {
        let mut all = self.outcomes.0.lock().unwrap_or_else(|e| e.into_inner());
        let counts = all
            .entry((module.record.name.clone(), module.record.version.clone()))
            .or_default();
        match outcome {
            CommandOutcomeKind::Accepted => counts.accepted += 1,
            CommandOutcomeKind::Rejected => counts.rejected += 1,
            CommandOutcomeKind::Failed => counts.failed += 1,
            CommandOutcomeKind::Refused => counts.refused += 1,
        }
        if sticky {
            counts.sticky += 1;
        }
    }

    /// Commands per (name, version) since this process started.
    pub fn outcomes(&self) -> Vec<((String, String), OutcomeCounts)> {
        let all = self.outcomes.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut list: Vec<_> = all.iter().map(|(k, v)| (k.clone(), *v)).collect();
        list.sort_by(|a, b| a.0.cmp(&b.0));
        list
    }

    /// Commands decided by `name@version` since this process started.
    pub fn outcomes_of(&self, name: &str, version: &str) -> OutcomeCounts {
        let all = self.outcomes.0.lock().unwrap_or_else(|e| e.into_inner());
        all.get(&(name.to_string(), version.to_string()))
            .copied()
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_stable_and_spread() {
        // Pinned: the formula is documented (docs/concepts.md) and must never change.
        assert_eq!(
            canary_bucket("bank-account", "acc-1"),
            canary_bucket("bank-account", "acc-1")
        );
        assert_ne!(
            (0..50)
                .map(|i| canary_bucket("a", &format!("id-{i}")))
                .collect::<Vec<_>>(),
            (0..50)
                .map(|i| canary_bucket("b", &format!("id-{i}")))
                .collect::<Vec<_>>(),
            "the name is part of the hash"
        );
        let below_30 = (0..10_000)
            .filter(|i| canary_bucket("bank-account", &format!("acc-{i}")) < 30)
            .count();
        assert!(
            (2_800..3_200).contains(&below_30),
            "{below_30} of 10000 below 30"
        );
    }

    #[test]
    fn newer_is_semver_order() {
        assert!(newer("2.0.0", "1.10.0"));
        assert!(newer("1.10.0", "1.9.0"));
        assert!(!newer("1.0.0-rc.1", "1.0.0"));
        assert!(!newer("1.0.0", "1.0.0"));
    }
}
