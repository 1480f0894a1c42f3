//! The `refold` binary: `refold serve` runs the host; `new` and `build` work
//! on a module crate locally; the other commands (and `deploy`) are clients
//! of a running server (`--server`, `--token`, `--json`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use refold::api::Tokens;
use refold::cli::tooling::{self, BuildArgs, DeployArgs, NewArgs};
use refold::cli::{
    self, ClientOptions, ModuleCommand, ProcessCommand, ProjectionCommand, VerifyArgs,
};
use refold::server::{self, Example, ExampleLoaded, ServeConfig};
use refold::store::{Durability, ModuleKind};

/// The host allocates per event and per request (JSON, strings); mimalloc is
/// measurably faster at that than the system allocator (see the benchmarks).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "refold",
    version,
    about = "Event sourcing with business logic in Wasm components"
)]
struct Cli {
    #[command(flatten)]
    client: ClientOptions,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the server
    Serve(Box<ServeArgs>),
    /// Create a module crate (an aggregate or a projection) with its tests
    New(NewArgs),
    /// Compile a module crate to a Wasm component and check what it implements
    Build(BuildArgs),
    /// Build a module crate and upload it to the server
    Deploy(DeployArgs),
    /// Manage modules (Wasm components)
    #[command(subcommand)]
    Module(ModuleCommand),
    /// Watch, compare, promote, verify and read projections
    #[command(subcommand)]
    Projection(ProjectionCommand),
    /// Process managers (sagas): progress and instances
    #[command(subcommand)]
    Process(ProcessCommand),
    /// Verify the log's hash chain and seals (a running server, or a stopped
    /// --data-dir); `verify aggregate` audits that replaying a stream
    /// reproduces what was recorded. Exit 3 when something does not verify
    Verify(VerifyArgs),
    /// Print the inclusion proof of the event at POSITION (JSON, for verify-proof)
    Proof { position: u64 },
    /// Check an event's inclusion proof offline, without a server (exit 3 if it fails)
    VerifyProof {
        /// The proof document (`refold proof P > proof.json`)
        file: PathBuf,
        /// The seal must be signed by this ed25519 key (64 hex digits)
        #[arg(long)]
        public_key: Option<String>,
        /// The seal must be the one with this digest (64 hex digits, as
        /// `GET /v1/integrity` shows it): for unsigned seals
        #[arg(long)]
        seal_digest: Option<String>,
    },
    /// Send a command (JSON) to an aggregate
    Send {
        aggregate_type: String,
        id: String,
        /// The command, as JSON
        #[arg(value_name = "JSON")]
        command: String,
        /// Fail unless the aggregate is at this version
        #[arg(long)]
        expect: Option<u64>,
        /// Idempotency key: a retry with the same key returns the original result
        #[arg(long)]
        key: Option<String>,
    },
    /// Show an aggregate's state, now or as of a version
    State {
        aggregate_type: String,
        id: String,
        #[arg(long)]
        at_version: Option<u64>,
    },
    /// Print the global log; --follow keeps printing new events
    Events {
        #[arg(long)]
        from: Option<u64>,
        /// With --follow: only events recorded from now on, none from before
        #[arg(long, requires = "follow", conflicts_with = "from")]
        from_end: bool,
        #[arg(long)]
        limit: Option<u64>,
        #[arg(long)]
        follow: bool,
    },
    /// Write a consistent copy of the server's data directory into PATH, on the
    /// server's machine, while it keeps serving (admin)
    Backup {
        /// An absolute directory that does not exist yet or is empty
        path: std::path::PathBuf,
    },
    /// Copy a stopped data directory (its event log, verified, and its
    /// modules with their active versions) into an empty PostgreSQL database
    /// (exit 1 if anything differs)
    Migrate {
        /// The stopped server's data directory
        #[arg(long, env = "REFOLD_DATA_DIR", default_value = "./refold-data")]
        data_dir: PathBuf,
        /// The target database: `postgres://user@host/db` or `host=... dbname=...`
        #[arg(long, hide_env_values = true)]
        to: String,
    },
    /// The compile worker the server runs for each compilation: a component on
    /// stdin, its artifact to --output. Not for people.
    #[command(name = "__compile", hide = true)]
    CompileWorker {
        #[arg(long)]
        output: PathBuf,
        #[arg(long)]
        memory_bytes: u64,
    },
}

#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// Where events, modules and compiled artifacts live (with --store
    /// postgres://..., only this host's compiled-artifact cache)
    #[arg(long, env = "REFOLD_DATA_DIR", default_value = "./refold-data")]
    data_dir: PathBuf,
    /// Keep events, modules and read models in PostgreSQL
    /// (`postgres://user@host/db`), shared by every host serving it; the
    /// default is sled in --data-dir
    #[arg(long, env = "REFOLD_STORE", hide_env_values = true)]
    store: Option<String>,
    /// Address to listen on; without tokens it must be a loopback address
    #[arg(long, env = "REFOLD_LISTEN", default_value = "127.0.0.1:7700")]
    listen: SocketAddr,
    /// Tokens with the admin role (modules), comma-separated
    #[arg(
        long,
        env = "REFOLD_ADMIN_TOKENS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    admin_token: Vec<String>,
    /// Tokens with the writer role (commands), comma-separated
    #[arg(
        long,
        env = "REFOLD_WRITER_TOKENS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    writer_token: Vec<String>,
    /// Tokens with the reader role (reads), comma-separated
    #[arg(
        long,
        env = "REFOLD_READER_TOKENS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    reader_token: Vec<String>,
    /// Largest module upload, in bytes
    #[arg(long, env = "REFOLD_MAX_MODULE_BYTES", default_value_t = 32 << 20)]
    max_module_bytes: usize,
    /// Largest command body, in bytes
    #[arg(long, env = "REFOLD_MAX_COMMAND_BYTES", default_value_t = 64 << 10)]
    max_command_bytes: usize,
    /// Connections open at once (subscriptions included); one more is
    /// answered 503 too_many_connections. Kept within the open-file limit,
    /// whose soft value is raised to the hard one at start
    #[arg(long, env = "REFOLD_MAX_CONNECTIONS", default_value_t = 4096,
          value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: u32,
    /// Seconds a connection has to send a request's head, when new or idle
    /// between requests (keep-alive); it is closed after
    #[arg(long, env = "REFOLD_HEADER_TIMEOUT_SECS", default_value_t = 15,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    header_timeout_secs: u64,
    /// Seconds a request body has to arrive, whole (408 body_timeout after)
    #[arg(long, env = "REFOLD_BODY_TIMEOUT_SECS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..=86400))]
    body_timeout_secs: u64,
    /// Sign every seal of the log's hash chain with this ed25519 key: a file
    /// holding the 32-byte seed as 64 hex digits (`openssl rand -hex 32`).
    /// The public key is served at /v1/integrity
    #[arg(long, env = "REFOLD_SIGNING_KEY")]
    signing_key: Option<PathBuf>,
    /// Fuel per guest call (deterministic limit)
    #[arg(long, env = "REFOLD_FUEL", default_value_t = 1_000_000_000)]
    fuel: u64,
    /// Wall-clock limit per guest call, in milliseconds
    #[arg(long, env = "REFOLD_GUEST_DEADLINE_MS", default_value_t = 5000)]
    guest_deadline_ms: u64,
    /// Memory cap per guest instance, in MiB
    #[arg(long, env = "REFOLD_GUEST_MEMORY_MIB", default_value_t = 64)]
    guest_memory_mib: usize,
    /// The largest answer a render (state read) or a query may give, in MiB;
    /// a larger one is refused (guest_limit_exceeded). Keep it above the JSON
    /// size of the largest state (--max-state-kib)
    #[arg(long, env = "REFOLD_MAX_ANSWER_MIB", default_value_t = 16)]
    max_answer_mib: usize,
    /// Bytes of aggregate state the state cache may hold, in MiB
    #[arg(long, env = "REFOLD_STATE_CACHE_MIB", default_value_t = 256)]
    state_cache_mib: usize,
    /// The largest state an aggregate may reach, in KiB; a command that would
    /// pass it is refused (state_too_large)
    #[arg(long, env = "REFOLD_MAX_STATE_KIB", default_value_t = 8 << 10)]
    max_state_kib: usize,
    /// Keep a snapshot each time an aggregate crosses this many events (0: never)
    #[arg(long, env = "REFOLD_SNAPSHOT_EVERY", default_value_t = 100)]
    snapshot_every: u64,
    /// Days the command journal (every decided command, for `module whatif`)
    /// keeps an entry; 0 turns the journal off and deletes what it holds
    #[arg(long, env = "REFOLD_JOURNAL_DAYS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(0..=36_500))]
    journal_days: u64,
    /// Wall-clock budget for compiling one component, in seconds; a component
    /// that takes longer is refused (422 compile_budget_exceeded)
    #[arg(long, env = "REFOLD_COMPILE_TIMEOUT", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    compile_timeout: u64,
    /// Memory budget for compiling one component (the compile worker's address
    /// space), in MiB
    #[arg(long, env = "REFOLD_COMPILE_MEMORY_MIB", default_value_t = 2048,
          value_parser = clap::value_parser!(u64).range(256..=1 << 20))]
    compile_memory_mib: u64,
    /// Components that compile at once, each in its own worker process
    /// (default: one per core)
    #[arg(long, env = "REFOLD_COMPILE_WORKERS",
          value_parser = clap::value_parser!(u16).range(1..=256))]
    compile_workers: Option<u16>,
    /// Events per projection batch: one guest call and one atomic commit each
    #[arg(long, env = "REFOLD_PROJECTION_BATCH", default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    projection_batch: u32,
    /// Acknowledge appends without fsync. Loses acknowledged events on power loss: for tests only
    #[arg(long, hide = true)]
    unsafe_no_fsync: bool,
    /// Log as JSON lines
    #[arg(long, env = "REFOLD_LOG_JSON")]
    log_json: bool,
    /// Build the example module crates in DIR (DIR itself if it is one, else
    /// its subdirectories) and register each as NAME@<package version> if that
    /// version is new. Repeatable or comma-separated
    #[arg(
        long,
        value_name = "DIR",
        env = "REFOLD_EXAMPLES",
        value_delimiter = ','
    )]
    examples: Vec<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The worker is a short-lived child of the server: no async runtime, no
    // logging, nothing but the compilation under its limits.
    let command = match cli.command {
        Command::CompileWorker {
            output,
            memory_bytes,
        } => {
            let args = refold::runtime::WorkerArgs {
                output,
                memory_bytes,
            };
            return ExitCode::from(refold::runtime::run_compile_worker(&args) as u8);
        }
        command => command,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let code = runtime.block_on(async move {
        let opts = &cli.client;
        match command {
            Command::Serve(args) => serve(*args).await,
            Command::New(args) => tooling::new(opts, args),
            Command::Build(args) => tooling::build(opts, args).await,
            Command::Deploy(args) => tooling::deploy(opts, args).await,
            Command::Module(cmd) => cli::module(opts, cmd).await,
            Command::Projection(cmd) => cli::projection(opts, cmd).await,
            Command::Process(cmd) => cli::process(opts, cmd).await,
            Command::Verify(args) => cli::verify(opts, args).await,
            Command::Proof { position } => cli::proof(opts, position).await,
            Command::VerifyProof {
                file,
                public_key,
                seal_digest,
            } => cli::verify_proof(opts, &file, public_key.as_deref(), seal_digest.as_deref()),
            Command::Send {
                aggregate_type,
                id,
                command,
                expect,
                key,
            } => cli::send(opts, &aggregate_type, &id, &command, expect, key.as_deref()).await,
            Command::State {
                aggregate_type,
                id,
                at_version,
            } => cli::state(opts, &aggregate_type, &id, at_version).await,
            Command::Events {
                from,
                from_end,
                limit,
                follow,
            } => cli::events(opts, from, from_end, limit, follow).await,
            Command::Backup { path } => cli::backup(opts, &path).await,
            Command::Migrate { data_dir, to } => cli::migrate(opts, &data_dir, &to).await,
            Command::CompileWorker { .. } => 2,
        }
    });
    ExitCode::from(code.clamp(0, 255) as u8)
}

async fn serve(args: ServeArgs) -> i32 {
    init_logging(args.log_json);
    // Built before the server starts: a build that fails stops here, with
    // nothing listening yet.
    let examples = if args.examples.is_empty() {
        Vec::new()
    } else {
        let dirs = args.examples.clone();
        match tokio::task::spawn_blocking(move || tooling::build_examples(&dirs)).await {
            Ok(Ok(built)) => built,
            Ok(Err(message)) => {
                tooling::report_error(&message);
                return 1;
            }
            Err(e) => {
                tooling::report_error(&format!("the example build task failed: {e}"));
                return 1;
            }
        }
    };
    let mut config = ServeConfig::new(&args.data_dir, args.listen);
    config.store_url = args.store.filter(|url| !url.is_empty());
    config.tokens = Tokens {
        admin: args.admin_token,
        writer: args.writer_token,
        reader: args.reader_token,
    };
    config.limits.max_module_bytes = args.max_module_bytes;
    config.limits.max_command_bytes = args.max_command_bytes;
    config.limits.body_timeout = Duration::from_secs(args.body_timeout_secs);
    config.connections.max_connections = args.max_connections as usize;
    config.connections.header_timeout = Duration::from_secs(args.header_timeout_secs);
    config.runtime.fuel_per_call = args.fuel;
    config.runtime.deadline = Duration::from_millis(args.guest_deadline_ms);
    config.runtime.memory_bytes = args.guest_memory_mib << 20;
    config.runtime.max_answer_bytes = args.max_answer_mib << 20;
    config.runtime.compile.timeout = Duration::from_secs(args.compile_timeout);
    config.runtime.compile.memory_bytes = args.compile_memory_mib << 20;
    if let Some(workers) = args.compile_workers {
        config.runtime.compile.workers = workers.into();
    }
    config.runtime.compile.worker = match refold::runtime::this_binary() {
        Ok(exe) => Some(exe),
        Err(e) => {
            eprintln!("error: cannot find this binary to run compile workers: {e}");
            return 1;
        }
    };
    config.commands.snapshot_every = args.snapshot_every;
    config.commands.journal = args.journal_days > 0;
    config.commands.journal_retention =
        std::time::Duration::from_secs(args.journal_days * 24 * 3600);
    config.commands.cache_bytes = args.state_cache_mib << 20;
    config.commands.max_state_bytes = args.max_state_kib << 10;
    config.projections.batch.events = args.projection_batch as usize;
    if args.unsafe_no_fsync {
        config.durability = Durability::None;
    }
    if let Some(path) = &args.signing_key {
        match refold::store::SealSigner::from_file(path) {
            Ok(signer) => config.signer = Some(std::sync::Arc::new(signer)),
            Err(e) => {
                eprintln!("error: {e}");
                return 1;
            }
        }
    }
    let server = match server::start(config).await {
        Ok(server) => server,
        Err(e) => {
            eprintln!("error: {e:#}");
            return 1;
        }
    };
    // Handlers go in before the address is printed: whoever reads that line may
    // signal at once, and a signal before the handler exists would kill the
    // process without a graceful shutdown.
    let signals = match Signals::install() {
        Ok(signals) => signals,
        Err(e) => {
            eprintln!("error: cannot install signal handlers: {e}");
            return 1;
        }
    };
    if !examples.is_empty() && !load_examples(&server, examples).await {
        return match server.shutdown().await {
            Ok(()) => 1,
            Err(e) => {
                eprintln!("error: {e:#}");
                1
            }
        };
    }
    // Printed for scripts and tests that start the server on port 0.
    println!("refold listening on http://{}", server.addr);
    let stop = server.shutdown_handle();
    tokio::spawn(async move {
        let mut signals = signals;
        signals.wait().await;
        tracing::info!(
            "shutting down: finishing in-flight requests (a second signal stops at once)"
        );
        stop.send_replace(true);
        // Everything acknowledged is already durable (fsync before every
        // ack): a second signal may end the process without waiting.
        signals.wait().await;
        tracing::warn!("a second signal: exiting without waiting for requests in flight");
        std::process::exit(130);
    });
    match server.wait().await {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}

/// Registers the built examples and says what became of each on stderr;
/// false if the registry refused one.
async fn load_examples(server: &server::RunningServer, built: Vec<tooling::ExampleBuild>) -> bool {
    let examples = built
        .into_iter()
        .map(|b| Example {
            name: b.name,
            version: b.version,
            bytes: b.bytes,
        })
        .collect();
    let loaded = match server.load_examples(examples).await {
        Ok(loaded) => loaded,
        Err(e) => {
            tooling::report_error(&format!("registering the examples: {e}"));
            return false;
        }
    };
    for outcome in loaded {
        let line = match &outcome {
            ExampleLoaded::Uploaded(m) => {
                let state = match m.record.kind {
                    ModuleKind::Projection => "goes live once caught up",
                    ModuleKind::Aggregate => "active",
                    ModuleKind::Process => "active",
                };
                format!("uploaded, {state}")
            }
            ExampleLoaded::AlreadyRegistered(_) => "already registered".to_owned(),
            ExampleLoaded::Differs(m) => format!(
                "NOT loaded: this version is registered with other bytes (sha256 {}); bump the version in the crate's Cargo.toml",
                refold::modules::hex(&m.record.digest)
            ),
        };
        let (ExampleLoaded::Uploaded(m)
        | ExampleLoaded::AlreadyRegistered(m)
        | ExampleLoaded::Differs(m)) = &outcome;
        eprintln!("example {} ({}): {line}", m.label(), m.record.kind.as_str());
    }
    true
}

/// SIGTERM and SIGINT, registered up front.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    async fn wait(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,cranelift=warn,wasmtime=warn")
    });
    // Colours only for a person at a terminal, not in files or pipes.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
