//! `refold new`, `refold build`, `refold deploy`: a module author's loop from
//! the command line, and the example builds behind `refold serve --examples`.
//!
//! - `scaffold`: `new`, from the templates in `host/templates/` (compiled in).
//! - `compile`: `cargo metadata`, `cargo build --target wasm32-wasip2` with its
//!   output streamed, and the world check through [`crate::runtime::Runtime::load`].
//! - `cache`: the build cache module crates share, so the SDK compiles once per user.
//! - `examples`: finding example crates, and target directories that keep
//!   their feature sets apart.
//! - `term`: spinners and colours, only on a terminal.

mod cache;
mod compile;
mod examples;
mod scaffold;
mod term;

use std::io::{self, Write};
use std::path::PathBuf;

use serde_json::json;

use super::client::{Client, Failure};
use super::{ClientOptions, finish};

/// What a module implements, for `refold new`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Decides commands and folds its own stream's events (a counter)
    Aggregate,
    /// Folds the log into a read model and answers queries (events per type)
    Projection,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Aggregate => "aggregate",
            Kind::Projection => "projection",
        }
    }
}

/// `refold new NAME --kind KIND`
#[derive(clap::Args, Debug)]
pub struct NewArgs {
    /// The crate and module name: lowercase letters, digits, '-' and '_', starting with a letter
    pub name: String,
    #[arg(long, value_enum)]
    pub kind: Kind,
    /// Where to create the crate (it goes in DIR/NAME)
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub dir: PathBuf,
    /// The Refold SDK (guest-sdk) the crate depends on; default: the one of the
    /// source tree this binary was built from
    #[arg(long, value_name = "PATH")]
    pub sdk: Option<PathBuf>,
}

/// `refold build [DIR]`
#[derive(clap::Args, Debug)]
pub struct BuildArgs {
    /// The module crate's directory
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    /// Cargo's target directory, without the shared build cache; default: the
    /// crate's own, compiling in the cache (see the README), unless
    /// CARGO_TARGET_DIR or a workspace says otherwise
    #[arg(long, value_name = "DIR")]
    pub target_dir: Option<PathBuf>,
}

/// `refold deploy [DIR]`
#[derive(clap::Args, Debug)]
pub struct DeployArgs {
    /// The module crate's directory
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    /// The version the crate must be at: deploy fails unless its Cargo.toml
    /// says this version. The version uploaded is always the crate's own
    #[arg(long)]
    pub version: Option<String>,
    /// The module name; default: the crate's package name
    #[arg(long)]
    pub name: Option<String>,
    /// Aggregates: make it the active version. Projections: make it the live
    /// version once it has caught up with the log
    #[arg(long)]
    pub activate: bool,
    /// Cargo's target directory, without the shared build cache (as for `refold build`)
    #[arg(long, value_name = "DIR")]
    pub target_dir: Option<PathBuf>,
}

/// `refold new`: writes the crate; returns the process exit code.
pub fn new(opts: &ClientOptions, args: NewArgs) -> i32 {
    let created = match scaffold::create(&args.name, args.kind, &args.dir, args.sdk.as_deref()) {
        Ok(created) => created,
        Err(message) => {
            term::error(&message);
            return 1;
        }
    };
    let mut out = io::stdout().lock();
    let written = if opts.json {
        writeln!(
            out,
            "{}",
            json!({
                "name": args.name,
                "kind": args.kind.as_str(),
                "path": created.path.display().to_string(),
                "sdk": created.sdk.display().to_string(),
                "lockfile": created.lockfile.as_ref().map(|l| l.display().to_string()),
            })
        )
    } else {
        let colour = term::stdout_colours();
        let path = created.path.display();
        let dim = |text: &str| term::paint(colour, term::DIM, text);
        let article = match args.kind {
            Kind::Aggregate => "an",
            Kind::Projection => "a",
        };
        writeln!(
            out,
            "{} {}, {article} {} crate, in {path}",
            term::paint(colour, term::BOLD_GREEN, "created"),
            term::paint(colour, term::BOLD, &args.name),
            args.kind.as_str(),
        )
        .and_then(|()| {
            writeln!(out, "  sdk:  {}", created.sdk.display())?;
            if let Some(lock) = &created.lockfile {
                writeln!(out, "  lock: dependency versions as in {}", lock.display())?;
            }
            writeln!(out, "next:")?;
            let steps = [
                (format!("cd {path} && cargo test"), "its tests, natively"),
                (
                    format!("refold build {path}"),
                    "the Wasm component, checked",
                ),
                (
                    format!("refold deploy {path} --activate"),
                    "build it and upload it to the server",
                ),
            ];
            let width = steps.iter().map(|(c, _)| c.len()).max().unwrap_or(0);
            for (command, what) in steps {
                writeln!(out, "  {command:width$}  {}", dim(&format!("# {what}")))?;
            }
            Ok(())
        })
    };
    match written.and_then(|()| out.flush()) {
        Ok(()) => 0,
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => 0,
        Err(e) => {
            term::error(&format!("cannot write the output: {e}"));
            1
        }
    }
}

/// `refold build`: builds and checks the component, prints what it is;
/// returns the process exit code.
pub async fn build(opts: &ClientOptions, args: BuildArgs) -> i32 {
    let built = match build_module(args.dir, args.target_dir, None).await {
        Ok(built) => built,
        Err(message) => {
            term::error(&message);
            return 1;
        }
    };
    let mut out = io::stdout().lock();
    let written = if opts.json {
        writeln!(out, "{}", built.to_json())
    } else {
        print_built(&mut out, &built, true)
    };
    match written.and_then(|()| out.flush()) {
        Ok(()) => 0,
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => 0,
        Err(e) => {
            term::error(&format!("cannot write the output: {e}"));
            1
        }
    }
}

/// `refold deploy`: builds, checks and uploads the component, printing the
/// server's answer as `refold module push` does; returns the process exit code.
///
/// The version uploaded is the crate's `Cargo.toml` version, the one `built`
/// prints: a module version is immutable on the server, and a version that
/// lived only on a command line would leave the crate claiming another one,
/// which its next deploy would upload with other bytes (`module_conflict`).
pub async fn deploy(opts: &ClientOptions, args: DeployArgs) -> i32 {
    // A malformed server URL fails before a long build.
    let client = match Client::new(opts) {
        Ok(client) => client,
        Err(failure) => return finish(opts, Err(failure)),
    };
    let built = match build_module(args.dir, args.target_dir, args.version).await {
        Ok(built) => built,
        Err(message) => {
            term::error(&message);
            return 1;
        }
    };
    if !opts.json {
        let mut out = io::stdout().lock();
        let _ = print_built(&mut out, &built, false);
    }
    let name = args.name.unwrap_or_else(|| built.info.name.clone());
    let version = &built.info.version;
    let result = super::push(&client, opts, built.bytes, &name, version, args.activate).await;
    let conflict = matches!(&result, Err(Failure::Problem(p)) if p.code == "module_conflict");
    let code = finish(opts, result.map(|_| ()));
    if conflict {
        eprintln!(
            "hint: give the changed module a new version: raise `version` in {} (now {version}) and deploy again",
            built.info.manifest_path.display()
        );
    }
    code
}

/// Inspects and builds the crate in `dir` with the world check, off the async
/// threads. `expect_version`: fail before building unless the crate is at it.
async fn build_module(
    dir: PathBuf,
    target_dir: Option<PathBuf>,
    expect_version: Option<String>,
) -> Result<compile::Built, String> {
    // Cargo runs in the crate's directory: a relative --target-dir means one
    // relative to where we were started.
    let target_dir = match target_dir {
        Some(dir) if dir.is_relative() => Some(
            std::env::current_dir()
                .map_err(|e| format!("cannot read the current directory: {e}"))?
                .join(dir),
        ),
        other => other,
    };
    tokio::task::spawn_blocking(move || {
        let info = compile::inspect_module(&dir)?;
        if let Some(expected) = expect_version
            && expected != info.version
        {
            return Err(format!(
                "--version {expected} does not match {}'s version in {} ({}): deploy uploads the version the crate says it is; to deploy {expected}, set `version = \"{expected}\"` there",
                info.name,
                info.manifest_path.display(),
                info.version
            ));
        }
        let slot = match (&target_dir, cache::root()) {
            (None, Some(root)) if cache::serves(&info) => {
                // Placing may run `cargo clean` for the target.
                compile::ensure_target(&info.dir)?;
                Some(cache::place(&root, &info)?)
            }
            _ => None,
        };
        compile::build(
            &info,
            target_dir.as_deref(),
            slot.as_ref().map(|s| s.dir.as_path()),
            true,
        )
    })
    .await
    .map_err(|e| format!("the build task failed: {e}"))?
}

fn print_built(out: &mut dyn Write, built: &compile::Built, detailed: bool) -> io::Result<()> {
    let colour = term::stdout_colours();
    writeln!(
        out,
        "{} {} {} ({}) in {:.1}s",
        term::paint(colour, term::BOLD_GREEN, "built"),
        term::paint(colour, term::BOLD, &built.info.name),
        built.info.version,
        built.kind().unwrap_or("component"),
        built.elapsed.as_secs_f64()
    )?;
    writeln!(out, "  path:   {}", built.path.display())?;
    if detailed {
        if let Some(dir) = &built.build_dir {
            writeln!(out, "  cache:  {}", dir.display())?;
        }
        writeln!(
            out,
            "  size:   {} bytes ({})",
            built.bytes.len(),
            term::size(built.bytes.len() as u64)
        )?;
        writeln!(out, "  sha256: {}", built.digest_hex())?;
        writeln!(out, "  kind:   {}", built.kind().unwrap_or("?"))?;
    }
    Ok(())
}

/// A component built for `refold serve --examples`.
pub struct ExampleBuild {
    pub name: String,
    pub version: String,
    pub bytes: Vec<u8>,
}

/// Builds the example crates found in `dirs` (see `refold serve --examples`),
/// streaming cargo's output to stderr. Blocking: call it off the async threads.
pub fn build_examples(dirs: &[PathBuf]) -> Result<Vec<ExampleBuild>, String> {
    Ok(examples::build_examples(dirs)?
        .into_iter()
        .map(|built| ExampleBuild {
            name: built.info.name,
            version: built.info.version,
            bytes: built.bytes,
        })
        .collect())
}

/// Prints `error: message` on stderr (the label red on a terminal).
pub fn report_error(message: &str) {
    term::error(message);
}
