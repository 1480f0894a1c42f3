//! Compiled artifacts on disk, so a restart does not recompile. The file name
//! carries the component digest; the directory carries the engine's
//! compatibility hash (wasmtime version, target, settings). A stale or damaged
//! artifact is discarded and rebuilt, never trusted.
//!
//! A compile worker writes its artifact to a staging file beside the final
//! one; the runtime loads and checks it, then renames it into place. So the
//! cache holds only artifacts of components that passed the checks, and a
//! crash leaves at most a staging file, which the next start deletes.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

use crate::hex::hex;

struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
    fn finish(&self) -> u64 {
        unreachable!("only the full digest is read")
    }
}

const STAGING_MARK: &str = ".staging-";

/// The directory for this engine's artifacts.
pub fn engine_dir(engine: &Engine, root: &Path) -> PathBuf {
    let mut hasher = Sha256Hasher(Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut hasher);
    let digest = hasher.0.finalize();
    root.join(hex(&digest[..8]))
}

/// Where the artifact of `digest` lives in `dir` (an engine directory).
pub fn artifact_path(dir: &Path, digest: &[u8; 32]) -> PathBuf {
    dir.join(format!("{}.cwasm", hex(digest)))
}

/// A fresh staging path for an artifact of `digest`, unique in this process.
pub fn staging_path(dir: &Path, digest: &[u8; 32]) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    dir.join(format!(
        "{}.cwasm{STAGING_MARK}{}-{n}",
        hex(digest),
        std::process::id()
    ))
}

/// The cached artifact at `path`, if there is a usable one. An unusable one
/// is deleted, so that it is compiled again.
pub fn load(engine: &Engine, path: &Path) -> Option<Component> {
    if !path.exists() {
        return None;
    }
    // SAFETY: the file was written by `Component::serialize` of an engine with this
    // compatibility hash (it is in the directory name), into a directory only this
    // host writes; wasmtime re-checks the artifact header as well.
    match unsafe { Component::deserialize_file(engine, path) } {
        Ok(component) => {
            tracing::debug!(path = %path.display(), "compiled artifact loaded from cache");
            Some(component)
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "discarding an unusable cached artifact");
            let _ = std::fs::remove_file(path);
            None
        }
    }
}

/// Moves a checked staging artifact to its final path, durably. Failing costs
/// a recompile at the next start, nothing more.
pub fn publish(staging: &Path, path: &Path) {
    let renamed = std::fs::rename(staging, path).and_then(|()| {
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::File::open(dir)?.sync_all()
    });
    if let Err(e) = renamed {
        tracing::warn!(path = %path.display(), error = %e, "could not cache a compiled artifact");
        let _ = std::fs::remove_file(staging);
    }
}

/// Deletes staging files a crash left behind (one process per data directory,
/// so none of them is in use).
pub fn remove_stale_staging(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().contains(STAGING_MARK) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// A staging file that is deleted when dropped, unless it was published:
/// an artifact of a refused or abandoned compilation never stays.
pub struct Staging {
    pub path: PathBuf,
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::super::RuntimeConfig;
    use super::super::engine::{Allocation, engine_config};
    use super::*;

    #[test]
    fn the_compile_worker_engine_and_the_serving_engine_share_one_artifact_directory() {
        let root = Path::new("/cache");
        let serving = Engine::new(&engine_config(Allocation::Pooling(&RuntimeConfig {
            max_instances: 4,
            ..RuntimeConfig::default()
        })))
        .expect("serving engine");
        let worker = Engine::new(&engine_config(Allocation::OnDemand)).expect("worker engine");
        assert_eq!(
            engine_dir(&serving, root),
            engine_dir(&worker, root),
            "artifacts of the compile worker must load in the server"
        );
    }
}
