//! Building a module crate: what `cargo metadata` says about it, `cargo build`
//! for wasm32-wasip2 with its output streamed, and the check that the result
//! is a component of a world Refold knows.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::term;
use crate::runtime::{CompileConfig, Runtime, RuntimeConfig, RuntimeError, World};

pub(crate) const TARGET: &str = "wasm32-wasip2";

/// A package, as `cargo metadata` describes it.
#[derive(Clone, Debug)]
pub(crate) struct CrateInfo {
    pub name: String,
    pub version: String,
    /// The directory of its Cargo.toml, canonical.
    pub dir: PathBuf,
    pub manifest_path: PathBuf,
    /// The lib target's name when it has crate-type cdylib: the stem of the `.wasm`.
    pub cdylib: Option<String>,
    /// Where cargo builds it by default (its workspace's, or `CARGO_TARGET_DIR`).
    pub target_directory: PathBuf,
    /// Where cargo keeps intermediate artifacts (`build.build-dir`); `None`
    /// from a cargo too old to have one.
    pub build_directory: Option<PathBuf>,
    /// `[package.metadata.refold] kind`, when it says.
    pub declared_kind: Option<String>,
    /// `[package.metadata.refold] example` (default true): whether
    /// `serve --examples` picks it up.
    pub example: bool,
    /// Its normal dependencies by path.
    pub path_deps: Vec<PathDep>,
}

/// A dependency by path, with the features it asks for.
#[derive(Clone, Debug)]
pub(crate) struct PathDep {
    /// Its package name.
    pub name: String,
    pub dir: PathBuf,
    pub default_features: bool,
    pub features: Vec<String>,
}

/// Cargo's `build.build-dir` setting, as an environment variable: where
/// intermediate artifacts go (cargo 1.91 and later).
pub(crate) const BUILD_DIR_VAR: &str = "CARGO_BUILD_BUILD_DIR";

/// The cargo that runs us when there is one (`cargo run`), else the one on the PATH.
pub(crate) fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// Reads the package whose Cargo.toml is in `dir` (`Ok(None)` if that
/// Cargo.toml declares no package, a virtual workspace).
pub(crate) fn inspect(dir: &Path) -> Result<Option<CrateInfo>, String> {
    let manifest = dir.join("Cargo.toml");
    if !manifest.is_file() {
        return Err(format!(
            "{} has no Cargo.toml; a module is a crate (create one with `refold new`)",
            dir.display()
        ));
    }
    let dir = dir
        .canonicalize()
        .map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    let manifest = dir.join("Cargo.toml");
    let output = cargo()
        .current_dir(&dir)
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--manifest-path",
        ])
        .arg(&manifest)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "cargo cannot read {}:\n{}",
            manifest.display(),
            String::from_utf8_lossy(&output.stderr).trim_end()
        ));
    }
    let meta: Value = serde_json::from_slice(&output.stdout)
        .map_err(|e| format!("cargo metadata printed something unexpected: {e}"))?;
    let same_file = |p: &str| Path::new(p).canonicalize().is_ok_and(|p| p == manifest);
    let Some(package) = meta["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["manifest_path"].as_str().is_some_and(same_file))
    else {
        return Ok(None);
    };
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    let cdylib = package["targets"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|t| {
            t["crate_types"]
                .as_array()
                .is_some_and(|types| types.iter().any(|k| k == "cdylib"))
        })
        .map(|t| text(&t["name"]).replace('-', "_"));
    let refold = &package["metadata"]["refold"];
    let path_deps = package["dependencies"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|d| d["kind"].is_null())
        .filter_map(|d| {
            let path = d["path"].as_str()?;
            let mut features: Vec<String> = d["features"]
                .as_array()
                .into_iter()
                .flatten()
                .map(text)
                .collect();
            features.sort();
            Some(PathDep {
                name: text(&d["name"]),
                dir: Path::new(path)
                    .canonicalize()
                    .unwrap_or_else(|_| path.into()),
                default_features: d["uses_default_features"].as_bool().unwrap_or(true),
                features,
            })
        })
        .collect();
    Ok(Some(CrateInfo {
        name: text(&package["name"]),
        version: text(&package["version"]),
        dir,
        manifest_path: manifest,
        cdylib,
        target_directory: PathBuf::from(text(&meta["target_directory"])),
        build_directory: meta["build_directory"].as_str().map(PathBuf::from),
        declared_kind: refold["kind"].as_str().map(str::to_owned),
        example: refold["example"].as_bool() != Some(false),
        path_deps,
    }))
}

/// Like [`inspect`], for a directory that must hold a module crate.
pub(crate) fn inspect_module(dir: &Path) -> Result<CrateInfo, String> {
    let info = inspect(dir)?.ok_or_else(|| {
        format!(
            "{} declares no package (a virtual workspace?); point at the module crate's directory",
            dir.join("Cargo.toml").display()
        )
    })?;
    if info.cdylib.is_none() {
        return Err(format!(
            "{} has no cdylib library, so it builds no Wasm component; a module's Cargo.toml has [lib] crate-type = [\"cdylib\", \"rlib\"]",
            info.name
        ));
    }
    Ok(info)
}

/// A built component.
pub(crate) struct Built {
    pub info: CrateInfo,
    pub path: PathBuf,
    pub bytes: Vec<u8>,
    pub digest: [u8; 32],
    /// The world it implements, when it was checked.
    pub world: Option<World>,
    /// The shared build cache's directory it was compiled in, if it was.
    pub build_dir: Option<PathBuf>,
    pub elapsed: Duration,
}

impl Built {
    pub fn digest_hex(&self) -> String {
        crate::hex::hex(&self.digest)
    }

    pub fn kind(&self) -> Option<&'static str> {
        self.world.map(world_name)
    }

    /// One JSON object: what `refold build --json` prints.
    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "name": self.info.name,
            "version": self.info.version,
            "kind": self.kind(),
            "path": self.path.display().to_string(),
            "size": self.bytes.len(),
            "digest": self.digest_hex(),
            "build_dir": self.build_dir.as_ref().map(|d| d.display().to_string()),
        })
    }
}

pub(crate) fn world_name(world: World) -> &'static str {
    match world {
        World::Aggregate => "aggregate",
        World::Projection => "projection",
        World::Process => "process",
    }
}

/// Builds `info` in release mode for wasm32-wasip2 (in `target_dir`, or where
/// cargo builds it by default), streaming cargo's output to stderr, with a
/// spinner on a terminal. With a `build_dir` (a slot of the shared build
/// cache, see `cache`), cargo compiles there and only copies the crate's own
/// files to its target directory. With `check`, loads the component to name
/// its world.
pub(crate) fn build(
    info: &CrateInfo,
    target_dir: Option<&Path>,
    build_dir: Option<&Path>,
    check: bool,
) -> Result<Built, String> {
    let started = Instant::now();
    let Some(stem) = &info.cdylib else {
        return Err(format!("{} has no cdylib library", info.name));
    };
    ensure_target(&info.dir)?;
    run_cargo_build(info, target_dir, build_dir)?;
    let target_dir = target_dir.unwrap_or(&info.target_directory);
    let path = target_dir
        .join(TARGET)
        .join("release")
        .join(format!("{stem}.wasm"));
    let bytes = std::fs::read(&path).map_err(|e| {
        format!(
            "cargo built {} but {} cannot be read: {e}",
            info.name,
            path.display()
        )
    })?;
    let digest: [u8; 32] = Sha256::digest(&bytes).into();
    let world = if check {
        let world = check_world(&bytes, &digest, info, &path)?;
        if let Some(declared) = &info.declared_kind
            && declared != world_name(world)
        {
            return Err(format!(
                "{} is {} component, but its Cargo.toml declares [package.metadata.refold] kind = {declared:?}",
                path.display(),
                match world {
                    World::Aggregate => "an aggregate",
                    World::Projection => "a projection",
                    World::Process => "a process",
                }
            ));
        }
        Some(world)
    } else {
        None
    };
    Ok(Built {
        info: info.clone(),
        path,
        bytes,
        digest,
        world,
        build_dir: build_dir.map(Path::to_path_buf),
        elapsed: started.elapsed(),
    })
}

/// Compiles the component as the server would and names its world; a clear
/// reason when it is not a Refold module.
fn check_world(
    bytes: &[u8],
    digest: &[u8; 32],
    info: &CrateInfo,
    path: &Path,
) -> Result<World, String> {
    let bar = term::spinner(format!("checking {}", info.name));
    // This binary is the compile worker, as it is for `refold serve`: the
    // check compiles under the same budget the server would apply.
    let worker = crate::runtime::this_binary()
        .map_err(|e| format!("cannot find this binary to run the compile worker: {e}"))?;
    let runtime = Runtime::new(RuntimeConfig {
        cache_dir: None,
        guest_threads: 1,
        max_instances: 2,
        compile: CompileConfig {
            worker: Some(worker),
            ..CompileConfig::default()
        },
        ..RuntimeConfig::default()
    })
    .map_err(|e| format!("cannot start the Wasm runtime: {e}"))?;
    let label = format!("{}@{}", info.name, info.version);
    // Called on a blocking thread of the async runtime (see `build_module`).
    let loaded = tokio::runtime::Handle::current().block_on(runtime.load(
        bytes.to_vec().into(),
        digest,
        &label,
    ));
    bar.finish_and_clear();
    match loaded {
        Ok(guest) => Ok(guest.world()),
        Err(RuntimeError::InvalidModule(reason)) => Err(format!(
            "{} is not a Refold module: {reason}",
            path.display()
        )),
        Err(e) => Err(format!("cannot check {}: {e}", path.display())),
    }
}

const MISSING_TARGET_HINT: &str =
    "the wasm32-wasip2 target is not installed: run `rustup target add wasm32-wasip2`";

/// Adds the wasm32-wasip2 target with rustup when it is missing (like the
/// workspace's build of its test guests). Without rustup, cargo will say.
pub(crate) fn ensure_target(dir: &Path) -> Result<(), String> {
    let Ok(installed) = Command::new("rustup")
        .current_dir(dir)
        .args(["target", "list", "--installed"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
    else {
        return Ok(());
    };
    if !installed.status.success()
        || String::from_utf8_lossy(&installed.stdout)
            .lines()
            .any(|l| l.trim() == TARGET)
    {
        return Ok(());
    }
    term::note(&format!(
        "the {TARGET} target is missing; adding it: rustup target add {TARGET}"
    ));
    let added = Command::new("rustup")
        .current_dir(dir)
        .args(["target", "add", TARGET])
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .status();
    match added {
        Ok(status) if status.success() => Ok(()),
        _ => Err(format!(
            "could not add the {TARGET} target; run `rustup target add {TARGET}` and try again"
        )),
    }
}

/// `cargo build --release --target wasm32-wasip2` for this one package.
/// Cargo's stderr is relayed line by line (above the spinner on a terminal);
/// its stdout goes to our stderr too, so our stdout stays for the result.
fn run_cargo_build(
    info: &CrateInfo,
    target_dir: Option<&Path>,
    build_dir: Option<&Path>,
) -> Result<(), String> {
    let mut cmd = cargo();
    cmd.current_dir(&info.dir)
        .args(["build", "--release", "--lib", "--target", TARGET])
        .arg("--manifest-path")
        .arg(&info.manifest_path)
        .args(["--package", &info.name]);
    if let Some(dir) = target_dir {
        cmd.arg("--target-dir").arg(dir);
    }
    if let Some(dir) = build_dir {
        cmd.env(BUILD_DIR_VAR, dir);
    }
    let tty = term::stderr_is_tty();
    // Piped, cargo would print no colours; on a terminal keep them.
    if term::stderr_colours() && std::env::var_os("CARGO_TERM_COLOR").is_none() {
        cmd.args(["--color", "always"]);
    }
    cmd.stdin(Stdio::null())
        .stdout(stderr_as_stdio())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("cannot run cargo: {e}"))?;
    let bar = term::spinner(format!("building {}", info.name));
    let mut missing_target = false;
    if let Some(stderr) = child.stderr.take() {
        let mut reader = BufReader::new(stderr);
        let mut raw = Vec::new();
        loop {
            raw.clear();
            match reader.read_until(b'\n', &mut raw) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let line = String::from_utf8_lossy(&raw);
            let line = line.trim_end_matches(['\n', '\r']);
            missing_target |= line.contains("may not be installed")
                || line.contains("can't find crate for `core`")
                || line.contains("can't find crate for `std`");
            if tty {
                bar.println(line);
                if let Some(status) = status_line(line) {
                    bar.set_message(format!("building {}: {status}", info.name));
                }
            } else {
                let mut err = std::io::stderr().lock();
                let _ = writeln!(err, "{line}");
            }
        }
    }
    let status = child
        .wait()
        .map_err(|e| format!("waiting for cargo: {e}"))?;
    bar.finish_and_clear();
    if status.success() {
        return Ok(());
    }
    let mut message = format!(
        "cargo build of {} failed ({status}); its errors are above",
        info.name
    );
    if missing_target {
        message.push_str("\nhint: ");
        message.push_str(MISSING_TARGET_HINT);
    }
    Err(message)
}

/// `Compiling serde v1.0.0` from cargo's `   Compiling serde v1.0.0` (colours stripped).
fn status_line(line: &str) -> Option<String> {
    let plain = strip_ansi(line);
    let trimmed = plain.trim_start();
    let verb = trimmed.split(' ').next()?;
    (trimmed.len() < plain.len()
        && matches!(
            verb,
            "Compiling" | "Checking" | "Downloaded" | "Updating" | "Locking"
        ))
    .then(|| trimmed.to_owned())
}

fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // CSI: ESC [ parameters final-byte
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn stderr_as_stdio() -> Stdio {
    use std::os::fd::AsFd;
    std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .map_or_else(|_| Stdio::null(), Stdio::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cargo_status_lines() {
        assert_eq!(
            status_line("   Compiling serde v1.0.228").as_deref(),
            Some("Compiling serde v1.0.228")
        );
        assert_eq!(
            status_line("\x1b[1m\x1b[32m   Compiling\x1b[0m x v0.1.0 (/p)").as_deref(),
            Some("Compiling x v0.1.0 (/p)")
        );
        assert_eq!(status_line("error[E0308]: mismatched types"), None);
        assert_eq!(status_line("Compiling at the start of a line"), None);
    }
}
