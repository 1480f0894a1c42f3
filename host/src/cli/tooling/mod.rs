//! `refold new`, `refold build`, `refold deploy`: a module author's loop from
//! the command line, and the example builds behind `refold serve --examples`.
//!
//! - `scaffold`: `new`, from the templates in `host/templates/` (compiled in).
//! - `compile`: `cargo metadata`, `cargo build --target wasm32-wasip2` with its
//!   output streamed, and the world check through [`crate::runtime::Runtime::load`].
//! - `examples`: finding example crates, and target directories that keep
//!   their feature sets apart.
//! - `term`: spinners and colours, only on a terminal.

mod compile;
mod examples;
mod scaffold;
mod term;

use std::io::{self, Write};
use std::path::PathBuf;

use serde_json::{Value, json};

use super::client::Client;
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
    /// Cargo's target directory; default: the crate's own (or CARGO_TARGET_DIR)
    #[arg(long, value_name = "DIR")]
    pub target_dir: Option<PathBuf>,
}

/// `refold deploy [DIR]`
#[derive(clap::Args, Debug)]
pub struct DeployArgs {
    /// The module crate's directory
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    /// The version to upload as (semver); default: the crate's package version
    #[arg(long)]
    pub version: Option<String>,
    /// The module name; default: the crate's package name
    #[arg(long)]
    pub name: Option<String>,
    /// Aggregates: make it the active version. Projections: make it the live
    /// version once it has caught up with the log
    #[arg(long)]
    pub activate: bool,
    /// Cargo's target directory; default: the crate's own (or CARGO_TARGET_DIR)
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
    let built = match build_module(args.dir, args.target_dir).await {
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
pub async fn deploy(opts: &ClientOptions, args: DeployArgs) -> i32 {
    // A malformed server URL fails before a long build.
    let client = match Client::new(opts) {
        Ok(client) => client,
        Err(failure) => return finish(opts, Err(failure)),
    };
    let built = match build_module(args.dir, args.target_dir).await {
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
    let version = args.version.unwrap_or_else(|| built.info.version.clone());
    let kind = built.kind();
    let result = super::push(&client, opts, built.bytes, &name, &version, args.activate).await;
    if let Ok(body) = &result
        && !opts.json
        && kind == Some("projection")
    {
        let reply: Value = serde_json::from_str(body).unwrap_or_default();
        if reply["active"].as_bool() != Some(true) {
            let how = if args.activate {
                format!(
                    "it goes live once it has caught up with the log; watch it with `refold projection status {name} --wait`"
                )
            } else {
                format!(
                    "the first version of a projection goes live once it has caught up; a later one when promoted: `refold projection promote {name} {version}`"
                )
            };
            println!("  {how}");
        }
    }
    finish(opts, result.map(|_| ()))
}

/// Inspects and builds the crate in `dir` with the world check, off the async threads.
async fn build_module(dir: PathBuf, target_dir: Option<PathBuf>) -> Result<compile::Built, String> {
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
        compile::build(&info, target_dir.as_deref(), true)
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
