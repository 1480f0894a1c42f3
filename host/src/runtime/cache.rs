//! Compiled artifacts on disk, so a restart does not recompile. The file name
//! carries the component digest; the directory carries the engine's
//! compatibility hash (wasmtime version, target, settings). A stale or damaged
//! artifact is discarded and rebuilt, never trusted.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

use super::error::RuntimeError;
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

/// The directory for this engine's artifacts.
pub fn engine_dir(engine: &Engine, root: &Path) -> PathBuf {
    let mut hasher = Sha256Hasher(Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut hasher);
    let digest = hasher.0.finalize();
    root.join(hex(&digest[..8]))
}

/// The component, and whether it came from the cache.
pub fn load_or_compile(
    engine: &Engine,
    root: &Path,
    bytes: &[u8],
    digest: &[u8; 32],
) -> Result<(Component, bool), RuntimeError> {
    let dir = engine_dir(engine, root);
    let path = dir.join(format!("{}.cwasm", hex(digest)));
    if path.exists() {
        // SAFETY: the file was written by `Component::serialize` of an engine with this
        // compatibility hash (it is in the directory name), into a directory only this
        // host writes; wasmtime re-checks the artifact header as well.
        match unsafe { Component::deserialize_file(engine, &path) } {
            Ok(component) => {
                tracing::debug!(path = %path.display(), "compiled artifact loaded from cache");
                return Ok((component, true));
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "discarding an unusable cached artifact");
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    let component =
        Component::new(engine, bytes).map_err(|e| RuntimeError::InvalidModule(format!("{e:#}")))?;
    if let Err(e) = store_artifact(&component, &dir, &path) {
        // A cache that cannot be written costs a recompile at the next start, nothing more.
        tracing::warn!(path = %path.display(), error = %e, "could not cache a compiled artifact");
    }
    Ok((component, false))
}

fn store_artifact(component: &Component, dir: &Path, path: &Path) -> anyhow::Result<()> {
    let serialized = component.serialize()?;
    std::fs::create_dir_all(dir)?;
    crate::fsutil::write_atomically(path, &serialized)?;
    Ok(())
}
