//! The build cache `refold build` and `refold deploy` share between module
//! crates, so that only the first module a user builds compiles the SDK,
//! wit-bindgen and serde for Wasm; later ones compile only themselves.
//!
//! It is cargo's `build.build-dir` (intermediate artifacts) pointed at
//! `$XDG_CACHE_HOME/refold/build/<slot>` (else `~/.cache/refold/build/<slot>`),
//! while the target directory stays the crate's own: cargo copies the crate's
//! `.wasm` out to `<crate>/target/wasm32-wasip2/release/<lib>.wasm` itself,
//! under its lock, and no other crate ever writes there.
//!
//! One build directory cannot serve every crate, because cargo gives two kinds
//! of files names that do not tell their builds apart:
//!
//! - A path package's cdylib (and the rlib beside it) carries no hash in its
//!   file name, so two crates with one lib name, or one crate built with two
//!   feature sets (an aggregate on its own, and as a projection's dependency
//!   without its `component` feature), write the same `deps/<lib>.wasm`.
//! - Cargo identifies a path package by name, version and its path relative
//!   to the workspace root, which is `""` for every standalone crate: two
//!   crates both named `counter` at 0.1.0 are one unit to cargo, and the
//!   second build would be "fresh" and hand back the first one's component.
//!
//! So each slot records which crate directory (and feature request) owns each
//! package name and lib name compiled in it (`claims.json`, under a file
//! lock). A crate builds in the first slot where none of its names (its own
//! and its path dependencies') belongs to another live crate or feature set;
//! for most users that is slot 0 for everything. A claim lives as long as one
//! of the crates that made it still has its `Cargo.toml`. When a name changes
//! hands in a slot, `cargo clean -p` removes what the previous owner left, so
//! nothing stale can look fresh.
//!
//! The cache serves crates that would otherwise build in their own `target/`:
//! a workspace member, an explicit `--target-dir`, `CARGO_TARGET_DIR`, a
//! configured build dir, or a cargo without build-dir support builds as cargo
//! would. Native builds (`cargo test`) are not cached: they are plain cargo.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde::{Deserialize, Serialize};

use super::compile::{self, CrateInfo, TARGET};
use super::term;

/// The cache's directory: `$XDG_CACHE_HOME/refold/build`, else
/// `$HOME/.cache/refold/build`; `None` when neither is an absolute path.
pub(crate) fn root() -> Option<PathBuf> {
    let absolute = |var: &str| {
        std::env::var_os(var)
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
    };
    let cache =
        absolute("XDG_CACHE_HOME").or_else(|| absolute("HOME").map(|h| h.join(".cache")))?;
    Some(cache.join("refold").join("build"))
}

/// Whether cargo would build `info` in the crate's own `target/`, intermediate
/// artifacts included: the case the cache replaces.
pub(crate) fn serves(info: &CrateInfo) -> bool {
    let own = info.dir.join("target");
    info.target_directory == own && info.build_directory.as_ref() == Some(&own)
}

/// A slot of the cache chosen for one build.
pub(crate) struct Slot {
    pub index: usize,
    pub dir: PathBuf,
}

/// Claims the names `info` compiles in the first slot that can take them,
/// cleans what a previous owner left there, and returns the slot.
pub(crate) fn place(root: &Path, info: &CrateInfo) -> Result<Slot, String> {
    std::fs::create_dir_all(root)
        .map_err(|e| format!("cannot create the build cache {}: {e}", root.display()))?;
    let lock_path = root.join("claims.lock");
    let lock = File::create(&lock_path)
        .map_err(|e| format!("cannot open {}: {e}", lock_path.display()))?;
    // Held while the claims are read, changed and written, and while a
    // previous owner's files are removed; not during the build.
    lock.lock()
        .map_err(|e| format!("cannot lock {}: {e}", lock_path.display()))?;
    let claims_path = root.join("claims.json");
    let mut claims: Claims = match std::fs::read(&claims_path) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            term::note(&format!(
                "{} is unreadable ({e}); starting the build cache's claims afresh",
                claims_path.display()
            ));
            // Without its claims, any name in an existing slot may be a
            // stranger's: every claim made from now on counts as new and is
            // cleaned before it is built.
            Claims::default()
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Claims::default(),
        Err(e) => return Err(format!("cannot read {}: {e}", claims_path.display())),
    };
    let placement = claims.place(&info.dir, &wants(info), &|crate_dir: &Path| {
        crate_dir.join("Cargo.toml").is_file()
    });
    let slot = Slot {
        index: placement.slot,
        dir: root.join(placement.slot.to_string()),
    };
    if let Some((name, owner)) = &placement.displaced {
        term::note(&format!(
            "slot 0 of the build cache compiles {name} from {} (features: {}); {} needs another, so it builds in slot {}",
            owner.dir.display(),
            owner.features,
            info.name,
            slot.index
        ));
    }
    for package in &placement.clean {
        clean(info, &slot.dir, package)?;
    }
    let text = serde_json::to_vec_pretty(&claims).expect("claims serialize");
    crate::fsutil::write_atomically(&claims_path, &text)
        .map_err(|e| format!("cannot write {}: {e}", claims_path.display()))?;
    Ok(slot)
}

/// `cargo clean -p PACKAGE` for wasm32-wasip2 release in the slot's build dir:
/// what a crate that owned the name before left there.
fn clean(info: &CrateInfo, build_dir: &Path, package: &str) -> Result<(), String> {
    let output = compile::cargo()
        .current_dir(&info.dir)
        .env(compile::BUILD_DIR_VAR, build_dir)
        .args([
            "clean",
            "--release",
            "--target",
            TARGET,
            "--package",
            package,
        ])
        .arg("--manifest-path")
        .arg(&info.manifest_path)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if output.status.success() {
        return Ok(());
    }
    Err(format!(
        "cannot clear {package} out of the build cache {} before building {}:\n{}\nhint: pass --target-dir to build without the cache",
        build_dir.display(),
        info.name,
        String::from_utf8_lossy(&output.stderr).trim_end()
    ))
}

/// The names a build of `info` compiles files under, each with the crate and
/// the features it must be compiled from. Keys are `package NAME` and `lib
/// NAME` (a dependency's lib name is taken to be its package name with `_`
/// for `-`, which is what cargo makes it unless its `[lib]` renames it).
fn wants(info: &CrateInfo) -> BTreeMap<String, Owner> {
    let mut wants = BTreeMap::new();
    let own = Owner {
        dir: info.dir.clone(),
        features: "default".to_owned(),
    };
    wants.insert(format!("package {}", info.name), own.clone());
    if let Some(lib) = &info.cdylib {
        wants.insert(format!("lib {lib}"), own);
    }
    for dep in &info.path_deps {
        let mut features = Vec::new();
        if dep.default_features {
            features.push("default".to_owned());
        }
        features.extend(dep.features.iter().cloned());
        let owner = Owner {
            dir: dep.dir.clone(),
            features: features.join(","),
        };
        // A dependency listed twice (for two targets, say) keeps the first
        // request: cargo merges them into one build anyway.
        wants
            .entry(format!("package {}", dep.name))
            .or_insert_with(|| owner.clone());
        wants
            .entry(format!("lib {}", dep.name.replace('-', "_")))
            .or_insert(owner);
    }
    wants
}

/// What a name in a slot is compiled from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Owner {
    dir: PathBuf,
    /// `default`, then the features asked for by name, comma-separated.
    features: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Claim {
    #[serde(flatten)]
    owner: Owner,
    /// The crates (their directories) whose builds compile this name so.
    by: BTreeSet<PathBuf>,
}

#[derive(Default, Debug, Serialize, Deserialize)]
struct Claims {
    slots: Vec<BTreeMap<String, Claim>>,
}

#[derive(Debug, PartialEq, Eq)]
struct Placement {
    slot: usize,
    /// Packages new to the slot or changing hands in it, whose files must go.
    clean: Vec<String>,
    /// When a new slot was opened: one of slot 0's names that is compiled
    /// otherwise there, and how, so the user knows why.
    displaced: Option<(String, Owner)>,
}

impl Claims {
    /// Chooses the slot for the crate at `root` that compiles `wants`, and
    /// records it. `alive` says whether a crate directory still exists.
    fn place(
        &mut self,
        root: &Path,
        wants: &BTreeMap<String, Owner>,
        alive: &dyn Fn(&Path) -> bool,
    ) -> Placement {
        let before: Vec<BTreeMap<String, Owner>> = self
            .slots
            .iter()
            .map(|slot| {
                slot.iter()
                    .map(|(name, claim)| (name.clone(), claim.owner.clone()))
                    .collect()
            })
            .collect();
        // What others hold: crates that are gone hold nothing, and this
        // crate's own earlier claims are about to be made again.
        for slot in &mut self.slots {
            for claim in slot.values_mut() {
                claim.by.retain(|c| c != root && alive(c));
            }
        }
        let taken = |slot: &BTreeMap<String, Claim>, name: &String, want: &Owner| {
            slot.get(name)
                .is_some_and(|c| !c.by.is_empty() && c.owner != *want)
        };
        let index = self
            .slots
            .iter()
            .position(|slot| wants.iter().all(|(name, want)| !taken(slot, name, want)))
            .unwrap_or(self.slots.len());
        let displaced = (index > 0 && index == self.slots.len())
            .then(|| {
                wants.iter().find_map(|(name, want)| {
                    taken(&self.slots[0], name, want)
                        .then(|| (name.clone(), self.slots[0][name].owner.clone()))
                })
            })
            .flatten();
        if index == self.slots.len() {
            self.slots.push(BTreeMap::new());
        }
        let mut clean = BTreeSet::new();
        for (name, want) in wants {
            let unchanged = before
                .get(index)
                .and_then(|slot| slot.get(name))
                .is_some_and(|owner| owner == want);
            if !unchanged && let Some(package) = name.strip_prefix("package ") {
                clean.insert(package.to_owned());
            }
            let claim = self.slots[index]
                .entry(name.clone())
                .or_insert_with(|| Claim {
                    owner: want.clone(),
                    by: BTreeSet::new(),
                });
            claim.owner = want.clone();
            claim.by.insert(root.to_path_buf());
        }
        for slot in &mut self.slots {
            slot.retain(|_, claim| !claim.by.is_empty());
        }
        Placement {
            slot: index,
            clean: clean.into_iter().collect(),
            displaced,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(dir: &str, features: &str) -> Owner {
        Owner {
            dir: PathBuf::from(dir),
            features: features.to_owned(),
        }
    }

    /// A module crate at `dir` named `name`, using the SDK at `/sdk`, and
    /// path dependencies `(name, dir, features)`.
    fn module(name: &str, dir: &str, deps: &[(&str, &str, &str)]) -> BTreeMap<String, Owner> {
        let mut wants = BTreeMap::new();
        wants.insert(format!("package {name}"), owner(dir, "default"));
        wants.insert(
            format!("lib {}", name.replace('-', "_")),
            owner(dir, "default"),
        );
        let sdk = [("refold-sdk", "/sdk", "default")];
        for (dep, dep_dir, features) in sdk.iter().chain(deps) {
            wants.insert(format!("package {dep}"), owner(dep_dir, features));
            wants.insert(
                format!("lib {}", dep.replace('-', "_")),
                owner(dep_dir, features),
            );
        }
        wants
    }

    fn all_alive(_: &Path) -> bool {
        true
    }

    #[test]
    fn distinct_crates_share_slot_0_and_only_new_names_are_cleaned() {
        let mut claims = Claims::default();
        let a = claims.place(Path::new("/a"), &module("a", "/a", &[]), &all_alive);
        assert_eq!(a.slot, 0);
        assert_eq!(a.clean, ["a", "refold-sdk"]);
        assert_eq!(a.displaced, None);
        let b = claims.place(Path::new("/b"), &module("b", "/b", &[]), &all_alive);
        assert_eq!(
            (b.slot, b.clean),
            (0, vec!["b".to_owned()]),
            "the SDK is shared"
        );
        // Building again changes nothing and cleans nothing.
        let again = claims.place(Path::new("/a"), &module("a", "/a", &[]), &all_alive);
        assert_eq!((again.slot, again.clean), (0, Vec::new()));
    }

    #[test]
    fn a_second_crate_of_one_name_or_another_sdk_builds_in_another_slot() {
        let mut claims = Claims::default();
        claims.place(
            Path::new("/one/counter"),
            &module("counter", "/one/counter", &[]),
            &all_alive,
        );
        let twin = claims.place(
            Path::new("/two/counter"),
            &module("counter", "/two/counter", &[]),
            &all_alive,
        );
        assert_eq!(twin.slot, 1);
        assert_eq!(twin.clean, ["counter", "refold-sdk"]);
        assert_eq!(
            twin.displaced,
            Some(("lib counter".to_owned(), owner("/one/counter", "default")))
        );
        // Each keeps its slot.
        let first = claims.place(
            Path::new("/one/counter"),
            &module("counter", "/one/counter", &[]),
            &all_alive,
        );
        assert_eq!((first.slot, first.clean), (0, Vec::new()));
        let second = claims.place(
            Path::new("/two/counter"),
            &module("counter", "/two/counter", &[]),
            &all_alive,
        );
        assert_eq!((second.slot, second.clean), (1, Vec::new()));

        // A crate using the SDK of another checkout.
        let mut other_sdk = module("x", "/x", &[]);
        other_sdk.insert("package refold-sdk".into(), owner("/other/sdk", "default"));
        let x = claims.place(Path::new("/x"), &other_sdk, &all_alive);
        assert_eq!(x.slot, 2, "slots 0 and 1 compile the SDK from /sdk");
    }

    #[test]
    fn a_dependency_in_another_feature_set_builds_in_another_slot() {
        let mut claims = Claims::default();
        claims.place(
            Path::new("/bank"),
            &module("bank", "/bank", &[]),
            &all_alive,
        );
        let balances = module("balances", "/balances", &[("bank", "/bank", "")]);
        let placed = claims.place(Path::new("/balances"), &balances, &all_alive);
        assert_eq!(placed.slot, 1);
        assert_eq!(placed.clean, ["balances", "bank", "refold-sdk"]);
        // A second projection asking the same joins it there.
        let sales = module("sales", "/sales", &[("bank", "/bank", "")]);
        let placed = claims.place(Path::new("/sales"), &sales, &all_alive);
        assert_eq!((placed.slot, placed.clean), (1, vec!["sales".to_owned()]));
    }

    #[test]
    fn names_of_crates_that_are_gone_change_hands_and_are_cleaned() {
        let mut claims = Claims::default();
        claims.place(
            Path::new("/old/counter"),
            &module("counter", "/old/counter", &[]),
            &all_alive,
        );
        let gone = |dir: &Path| dir != Path::new("/old/counter");
        let placed = claims.place(
            Path::new("/new/counter"),
            &module("counter", "/new/counter", &[]),
            &gone,
        );
        assert_eq!(placed.slot, 0);
        assert_eq!(
            placed.clean,
            ["counter"],
            "the old counter's files must not look fresh"
        );
        assert!(
            claims.slots[0]
                .values()
                .all(|c| !c.by.contains(Path::new("/old/counter"))),
            "{claims:?}"
        );
    }

    #[test]
    fn a_crate_that_moves_to_slot_0_leaves_its_old_slot() {
        let mut claims = Claims::default();
        claims.place(
            Path::new("/one/counter"),
            &module("counter", "/one/counter", &[]),
            &all_alive,
        );
        claims.place(
            Path::new("/two/counter"),
            &module("counter", "/two/counter", &[]),
            &all_alive,
        );
        // The second counter is renamed: it fits slot 0 now.
        let placed = claims.place(
            Path::new("/two/counter"),
            &module("tally", "/two/counter", &[]),
            &all_alive,
        );
        assert_eq!((placed.slot, placed.clean), (0, vec!["tally".to_owned()]));
        assert!(
            claims.slots[1].keys().all(|name| !name.contains("counter")),
            "{claims:?}"
        );
    }
}
