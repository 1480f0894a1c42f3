//! `refold serve --examples DIR`: find the example crates in DIR and build
//! each one, with the same code as `refold build`.
//!
//! Each crate is built by a cargo of its own, so features never merge across
//! crates. What remains is the target directory: a crate that is both built
//! as a component and used by another example without its `component`
//! feature (bank-account, by account-balances) exists in two feature sets,
//! and on wasm32 cargo names both builds' files alike, so the second build
//! overwrites the first's. Cargo notices and rebuilds, which is correct but
//! would rebuild some crates on every start. So the crates are grouped: two
//! crates share a target directory unless they need some crate in different
//! feature sets. Group 0 uses the crates' usual target directory, later
//! groups `<target>/refold-examples-N`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::compile::{self, Built, CrateInfo};
use super::term;

/// Builds every example crate found in `dirs`: each directory that is itself
/// a crate with a cdylib, else each of its subdirectories that is one. A crate
/// with `[package.metadata.refold] example = false` is skipped.
pub(crate) fn build_examples(dirs: &[PathBuf]) -> Result<Vec<Built>, String> {
    let crates = discover(dirs)?;
    let target_dirs = plan(&crates);
    let mut built = Vec::new();
    for (info, target_dir) in crates.iter().zip(target_dirs) {
        let result = compile::build(info, target_dir.as_deref(), None, false)
            .map_err(|e| format!("building the example {}: {e}", info.dir.display()))?;
        built.push(result);
    }
    Ok(built)
}

fn discover(dirs: &[PathBuf]) -> Result<Vec<CrateInfo>, String> {
    let mut crates: Vec<CrateInfo> = Vec::new();
    for dir in dirs {
        if !dir.is_dir() {
            return Err(format!("--examples {}: no such directory", dir.display()));
        }
        let mut candidates = Vec::new();
        let own = dir
            .join("Cargo.toml")
            .is_file()
            .then(|| compile::inspect(dir));
        match own {
            Some(Ok(Some(info))) if info.cdylib.is_some() => candidates.push(info),
            Some(Err(e)) => return Err(e),
            // Not a crate, a virtual workspace or a plain library: look inside.
            _ => {
                let mut subdirs: Vec<PathBuf> = std::fs::read_dir(dir)
                    .map_err(|e| format!("cannot read {}: {e}", dir.display()))?
                    .filter_map(|entry| entry.ok().map(|e| e.path()))
                    .filter(|path| path.join("Cargo.toml").is_file())
                    .collect();
                subdirs.sort();
                for sub in subdirs {
                    if let Some(info) = compile::inspect(&sub)?
                        && info.cdylib.is_some()
                    {
                        candidates.push(info);
                    }
                }
            }
        }
        for info in candidates {
            if !info.example {
                term::note(&format!(
                    "skipping {}: its Cargo.toml says [package.metadata.refold] example = false",
                    info.dir.display()
                ));
            } else if let Some(other) = crates.iter().find(|c| c.name == info.name) {
                if other.dir != info.dir {
                    return Err(format!(
                        "two example crates are named {}: {} and {}",
                        info.name,
                        other.dir.display(),
                        info.dir.display()
                    ));
                }
            } else {
                crates.push(info);
            }
        }
    }
    if crates.is_empty() {
        let list: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
        return Err(format!(
            "no example crates in {}: an example is a crate with crate-type cdylib",
            list.join(", ")
        ));
    }
    Ok(crates)
}

/// The features a crate is built with: default features on or off, and the
/// features asked for by name.
type FeatureSet = (bool, Vec<String>);

/// The target directory of each crate (`None`: its usual one); see the module
/// documentation.
fn plan(crates: &[CrateInfo]) -> Vec<Option<PathBuf>> {
    let is_example = |dir: &Path| crates.iter().any(|c| c.dir == dir);
    // Crates others use go first, so they land in group 0 with their default
    // features: the build `refold build` or a plain cargo build makes too.
    let used_by = |c: &CrateInfo| {
        crates
            .iter()
            .filter(|o| o.path_deps.iter().any(|d| d.dir == c.dir))
            .count()
    };
    let mut order: Vec<usize> = (0..crates.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(used_by(&crates[i])));
    let mut groups: Vec<HashMap<PathBuf, FeatureSet>> = Vec::new();
    let mut target_dirs = vec![None; crates.len()];
    for i in order {
        let krate = &crates[i];
        let mut needs: HashMap<PathBuf, FeatureSet> = HashMap::new();
        needs.insert(krate.dir.clone(), (true, Vec::new()));
        for dep in krate.path_deps.iter().filter(|d| is_example(&d.dir)) {
            needs.insert(
                dep.dir.clone(),
                (dep.default_features, dep.features.clone()),
            );
        }
        let fits = |group: &HashMap<PathBuf, FeatureSet>| {
            needs
                .iter()
                .all(|(dir, set)| group.get(dir).is_none_or(|s| s == set))
        };
        let index = match groups.iter().position(fits) {
            Some(index) => index,
            None => {
                groups.push(HashMap::new());
                groups.len() - 1
            }
        };
        groups[index].extend(needs);
        if index > 0 {
            target_dirs[i] = Some(
                krate
                    .target_directory
                    .join(format!("refold-examples-{index}")),
            );
        }
    }
    target_dirs
}

#[cfg(test)]
mod tests {
    use super::*;
    use compile::PathDep;

    fn krate(name: &str, deps: &[(&str, bool)]) -> CrateInfo {
        CrateInfo {
            name: name.into(),
            version: "1.0.0".into(),
            dir: PathBuf::from("/m").join(name),
            manifest_path: PathBuf::from("/m").join(name).join("Cargo.toml"),
            cdylib: Some(name.replace('-', "_")),
            target_directory: PathBuf::from("/t"),
            build_directory: Some(PathBuf::from("/t")),
            declared_kind: None,
            example: true,
            path_deps: deps
                .iter()
                .map(|(dep, default_features)| PathDep {
                    name: dep.to_string(),
                    dir: PathBuf::from("/m").join(dep),
                    default_features: *default_features,
                    features: Vec::new(),
                })
                .collect(),
        }
    }

    #[test]
    fn crates_needing_another_feature_set_get_another_target_dir() {
        let crates = [
            krate(
                "account-balances",
                &[("bank-account", false), ("sdk", true)],
            ),
            krate("bank-account", &[("sdk", true)]),
            krate("inventory", &[]),
            krate("order", &[]),
            krate("sales", &[("order", false)]),
        ];
        let dirs = plan(&crates);
        let second = Some(PathBuf::from("/t/refold-examples-1"));
        assert_eq!(
            dirs,
            [second.clone(), None, None, None, second],
            "the aggregates build where cargo would; the projections using them without features elsewhere"
        );
        // Features asked for the same way share a directory.
        let crates = [
            krate("a", &[("shared", true)]),
            krate("b", &[("shared", true)]),
            krate("shared", &[]),
        ];
        assert_eq!(plan(&crates), [None, None, None]);
    }
}
