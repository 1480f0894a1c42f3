//! HTTP benchmark: durable deposit commands through the real server, over
//! keep-alive HTTP/1.1 connections, next to the same commands called in process.
//!
//! - A real server (`refold::server::start`, default `Durability::Fsync`) on
//!   127.0.0.1:0 in this process; the bank-account component uploaded with
//!   `PUT /v1/modules/bank-account/1.0.0?activate=true`; `accounts` accounts
//!   opened over HTTP (not timed).
//! - The load generator: `connections` client tasks, each with its own
//!   keep-alive connection (its own `reqwest::Client`, `pool_max_idle_per_host(1)`),
//!   each sending `{"type":"Deposit","amount":1}` to the next account round-robin,
//!   one request at a time (a closed loop), for `duration` per run. Every reply is
//!   durable. Each request's latency is recorded: commands/s, p50 and p99 per run.
//!   Any reply other than 200 fails the benchmark (after printing the table).
//! - The baseline, alternating run by run: as many concurrent in-process callers
//!   of the same server's `CommandService::execute`, for the same duration.
//! - Informational: the same pair after restarting the server on the same data
//!   directory with `Durability::None` (no flush, no fdatasync): what is left
//!   when the disk is out of the way.
//!
//! The client runs on the same machine (2 cores here) as the server, so the
//! load generator's CPU (HTTP client, JSON, syscalls) competes with the server's;
//! the printed CPU use by thread says how much.
//!
//! `cargo bench -p refold --bench http` runs the full benchmark (cargo passes
//! `--bench`). Without `--bench` (as under `cargo test --all-targets`) it runs a
//! smoke version with tiny sizes, to check that the benchmark still works.
//!
//! Output: a table on stdout, and one JSON line per result appended to
//! `bench-results/http.jsonl` (smoke: `bench-results/http-smoke.jsonl`).

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use refold::commands::{CommandRequest, CommandService};
use refold::server::{RunningServer, ServeConfig};
use refold::store::Durability;
use reqwest::StatusCode;
use reqwest::header::CONTENT_TYPE;
use tokio::runtime::Handle;
use tokio::sync::{Barrier, watch};

use common::{
    Bench, Column, GroupCpu, Line, Mode, Record, Table, ThreadTimes, median, no_thread_times, rate,
    tempdir, thousands,
};

const AGGREGATE_TYPE: &str = "bank-account";
const MODULE_VERSION: &str = "1.0.0";
const DEPOSIT: &str = r#"{"type":"Deposit","amount":1}"#;
/// Concurrent requests that open the accounts (not timed).
const SETUP_TASKS: usize = 32;

struct Sizes {
    runs: usize,
    accounts: usize,
    connections: usize,
    /// How long one run of the load (HTTP or in process) lasts.
    duration: Duration,
}

impl Sizes {
    fn for_mode(mode: Mode) -> Sizes {
        match mode {
            Mode::Full => Sizes {
                runs: 5,
                accounts: 1_000,
                connections: 64,
                duration: Duration::from_secs(3),
            },
            Mode::Smoke => Sizes {
                runs: 1,
                accounts: 100,
                connections: 8,
                duration: Duration::from_millis(500),
            },
        }
    }
}

#[derive(Clone, Copy)]
enum Unit {
    CommandsPerSec,
    Millis,
}

impl Unit {
    fn name(self) -> &'static str {
        match self {
            Unit::CommandsPerSec => "commands/s",
            Unit::Millis => "ms",
        }
    }

    fn format(self, value: f64) -> String {
        match self {
            Unit::CommandsPerSec => thousands(value),
            Unit::Millis => format!("{value:.2}"),
        }
    }
}

/// What a result is judged against.
#[derive(Clone, Copy)]
enum Goal {
    Informational,
    /// The median must be at least this rate.
    RateAtLeast(f64),
    /// The median must be at most this many milliseconds.
    MillisAtMost(f64),
}

impl Goal {
    fn describe(self) -> String {
        match self {
            Goal::Informational => "informational".to_string(),
            Goal::RateAtLeast(r) => format!(">= {} cmd/s", thousands(r)),
            Goal::MillisAtMost(ms) => format!("<= {ms} ms"),
        }
    }

    fn verdict(self, median: f64) -> &'static str {
        let met = match self {
            Goal::Informational => return "-",
            Goal::RateAtLeast(r) => median >= r,
            Goal::MillisAtMost(ms) => median <= ms,
        };
        if met { "ok" } else { "below goal" }
    }
}

/// One line of the table: the HTTP measurement per run, and the in-process baseline's.
struct Row {
    name: String,
    unit: Unit,
    runs: Vec<f64>,
    baseline: Vec<f64>,
    goal: Goal,
}

impl Row {
    fn median(&self) -> f64 {
        median(&self.runs)
    }

    fn baseline_median(&self) -> f64 {
        median(&self.baseline)
    }

    fn ratio(&self) -> f64 {
        self.median() / self.baseline_median()
    }

    fn record(&self) -> Record<'_> {
        Record {
            name: &self.name,
            unit: self.unit.name(),
            median: self.median(),
            runs: &self.runs,
            baseline_median: Some(self.baseline_median()),
            ratio: Some(self.ratio()),
            goal: self.goal.describe(),
        }
    }
}

fn main() -> Result<()> {
    let bench = Bench::start("http")?;
    let sizes = Sizes::for_mode(bench.mode);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());

    // The server gets a multi-thread runtime with a worker per core, as `refold serve`.
    // The clients get their own runtime with one worker thread, as a separate load
    // generator would be. Both placements were measured on the 2-core box (full mode,
    // fsync): clients sharing the server's runtime 4,316 cmd/s, p99 24.3 ms; clients
    // on their own 1-thread runtime 4,308 cmd/s, p99 24.7 ms: the same, as the
    // machine is CPU-bound either way. The separate runtime is kept: it is closer to
    // a real client (its tasks do not take the server's worker slots), and it lets
    // the CPU table tell the load generator's CPU (`tokio-client`) from the server's.
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("tokio-server")
        .build()?;
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .thread_name("tokio-client")
        .build()?;

    let started = Instant::now();
    println!(
        "refold HTTP benchmark ({} mode): {} keep-alive HTTP/1.1 connections x deposit commands on {} accounts, {:.1} s per run x {}; client and server on the same {cores}-core machine, clients on their own 1-thread tokio runtime",
        bench.mode.name(),
        sizes.connections,
        thousands(sizes.accounts as f64),
        sizes.duration.as_secs_f64(),
        sizes.runs,
    );
    let outcome = server_rt.block_on(run(&sizes, &bench.scratch, client_rt.handle().clone()));
    drop(client_rt);
    let (rows, failures, cpu) = outcome?;

    print_table(&rows);
    print_cpu(&cpu, cores);
    if failures.total() > 0 {
        failures.print();
        bail!(
            "{} requests failed (non-200 replies or transport errors); no results written",
            failures.total()
        );
    }
    let records: Vec<Record> = rows.iter().map(Row::record).collect();
    bench.finish(&records, started)
}

/// Both measurements, fsync then Durability::None (the same data directory,
/// the server restarted), alternating HTTP and in process run by run.
async fn run(
    sizes: &Sizes,
    scratch: &Path,
    clients: Handle,
) -> Result<(Vec<Row>, Failures, Vec<(String, CpuTotals)>)> {
    let dir = tempdir(scratch)?;
    let accounts: Arc<Vec<String>> =
        Arc::new((0..sizes.accounts).map(|n| format!("acc-{n:06}")).collect());
    let mut rows = Vec::new();
    let mut failures = Failures::default();
    let mut cpu = Vec::new();

    for durability in [Durability::Fsync, Durability::None] {
        let label = match durability {
            Durability::Fsync => "fsync",
            Durability::None => "Durability::None",
        };
        let short = match durability {
            Durability::Fsync => "fsync",
            Durability::None => "none",
        };
        let mut config = ServeConfig::new(dir.path(), "127.0.0.1:0".parse()?);
        config.durability = durability;
        config.runtime.compile.worker = Some(env!("CARGO_BIN_EXE_refold").into());
        let setup = Instant::now();
        let server = refold::server::start(config).await?;
        if durability == Durability::Fsync {
            upload_and_open(&server, &accounts, &clients).await?;
        }
        println!(
            "\n{label}: server on {} ready in {:.1} s{} (not timed)",
            server.addr,
            setup.elapsed().as_secs_f64(),
            if durability == Durability::Fsync {
                format!(
                    ", module uploaded and {} accounts opened over HTTP",
                    thousands(accounts.len() as f64)
                )
            } else {
                ", restarted on the same data directory".to_string()
            }
        );

        let next = Arc::new(AtomicUsize::new(0));
        let (mut http, mut local) = (Vec::new(), Vec::new());
        let (mut http_cpu, mut local_cpu) = (CpuTotals::default(), CpuTotals::default());
        for run in 0..sizes.runs {
            let head = server.app.store.head();
            let before = CpuSample::take();
            let h = http_load(&clients, server.addr, &accounts, &next, sizes).await?;
            http_cpu.add(&before, &CpuSample::take(), h.ok);
            // Every 200 is one deposit event, every warm-up request too.
            let written = server.app.store.head() - head;
            ensure!(
                written == (h.ok + h.warm_up) as u64,
                "the store gained {written} events for {} deposits acknowledged",
                h.ok + h.warm_up
            );
            let before = CpuSample::take();
            let l = local_load(server.app.commands.clone(), &accounts, &next, sizes).await?;
            local_cpu.add(&before, &CpuSample::take(), l.ok);
            println!(
                "  run {}/{}: http {} | in process {}",
                run + 1,
                sizes.runs,
                h.summary(),
                l.summary()
            );
            failures.absorb(&format!("{label}, http"), &h);
            failures.absorb(&format!("{label}, in process"), &l);
            http.push(h);
            local.push(l);
        }
        server.shutdown().await?;

        let what = format!(
            "{label}, {} conns x {} accounts",
            sizes.connections,
            thousands(accounts.len() as f64)
        );
        let per_run = |runs: &[Load], f: fn(&Load) -> f64| runs.iter().map(f).collect::<Vec<_>>();
        let informational = durability == Durability::None;
        rows.push(Row {
            name: format!("http deposits, {what} (vs in process)"),
            unit: Unit::CommandsPerSec,
            runs: per_run(&http, Load::rate),
            baseline: per_run(&local, Load::rate),
            goal: if informational {
                Goal::Informational
            } else {
                Goal::RateAtLeast(10_000.0)
            },
        });
        rows.push(Row {
            name: format!("  p50 latency, {label}"),
            unit: Unit::Millis,
            runs: per_run(&http, |l| l.percentile_ms(0.50)),
            baseline: per_run(&local, |l| l.percentile_ms(0.50)),
            goal: Goal::Informational,
        });
        rows.push(Row {
            name: format!("  p99 latency, {label}"),
            unit: Unit::Millis,
            runs: per_run(&http, |l| l.percentile_ms(0.99)),
            baseline: per_run(&local, |l| l.percentile_ms(0.99)),
            goal: if informational {
                Goal::Informational
            } else {
                Goal::MillisAtMost(10.0)
            },
        });
        cpu.push((format!("{short}, http"), http_cpu));
        cpu.push((format!("{short}, in proc"), local_cpu));
    }
    Ok((rows, failures, cpu))
}

// ---------------------------------------------------------------------------
// Setup.

async fn upload_and_open(
    server: &RunningServer,
    accounts: &Arc<Vec<String>>,
    clients: &Handle,
) -> Result<()> {
    let base = format!("http://{}", server.addr);
    let bytes = std::fs::read(refold_test_guests::BANK_ACCOUNT)
        .with_context(|| format!("reading {}", refold_test_guests::BANK_ACCOUNT))?;
    let (base, accounts) = (Arc::new(base), accounts.clone());
    clients
        .spawn(async move {
            let client = reqwest::Client::new();
            let reply = client
                .put(format!(
                    "{base}/v1/modules/{AGGREGATE_TYPE}/{MODULE_VERSION}?activate=true"
                ))
                .body(bytes)
                .send()
                .await?;
            let status = reply.status();
            ensure!(
                status.is_success(),
                "uploading the module: {status} {}",
                reply.text().await.unwrap_or_default()
            );
            let next = Arc::new(AtomicUsize::new(0));
            let tasks: Vec<_> = (0..SETUP_TASKS)
                .map(|_| {
                    let (client, base, accounts, next) =
                        (client.clone(), base.clone(), accounts.clone(), next.clone());
                    tokio::spawn(async move {
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            let Some(id) = accounts.get(i) else {
                                return anyhow::Ok(());
                            };
                            let reply = client
                                .post(format!(
                                    "{base}/v1/aggregates/{AGGREGATE_TYPE}/{id}/commands"
                                ))
                                .header(CONTENT_TYPE, "application/json")
                                .body(r#"{"type":"Open","owner":"Ada"}"#)
                                .send()
                                .await?;
                            let status = reply.status();
                            ensure!(
                                status == StatusCode::OK,
                                "opening {id}: {status} {}",
                                reply.text().await.unwrap_or_default()
                            );
                        }
                    })
                })
                .collect();
            for task in tasks {
                task.await??;
            }
            anyhow::Ok(())
        })
        .await?
}

// ---------------------------------------------------------------------------
// The loads.

/// What one run of a load did.
struct Load {
    /// Successful commands in the timed window.
    ok: usize,
    /// Requests sent before the clock started (one per connection, to open it).
    warm_up: usize,
    elapsed: Duration,
    /// Latency of every successful command, sorted.
    latencies: Vec<Duration>,
    /// Failure kind -> (count, first message).
    failures: BTreeMap<String, (usize, String)>,
}

impl Load {
    fn rate(&self) -> f64 {
        rate(self.ok, self.elapsed)
    }

    fn percentile_ms(&self, q: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let rank =
            ((q * self.latencies.len() as f64).ceil() as usize).clamp(1, self.latencies.len());
        self.latencies[rank - 1].as_secs_f64() * 1e3
    }

    fn failed(&self) -> usize {
        self.failures.values().map(|(n, _)| n).sum()
    }

    fn summary(&self) -> String {
        format!(
            "{:>6} cmd/s, p50 {:>6.2} ms, p99 {:>6.2} ms{}",
            thousands(self.rate()),
            self.percentile_ms(0.50),
            self.percentile_ms(0.99),
            match self.failed() {
                0 => String::new(),
                n => format!(", {n} FAILED"),
            }
        )
    }

    fn merge(parts: Vec<TaskLoad>, warm_up: usize, elapsed: Duration) -> Load {
        let mut load = Load {
            ok: 0,
            warm_up,
            elapsed,
            latencies: Vec::new(),
            failures: BTreeMap::new(),
        };
        for part in parts {
            load.ok += part.latencies.len();
            load.latencies.extend(part.latencies);
            for (kind, message) in part.failures {
                let entry = load.failures.entry(kind).or_insert((0, message));
                entry.0 += 1;
            }
        }
        load.latencies.sort_unstable();
        load
    }
}

/// What one client task did.
#[derive(Default)]
struct TaskLoad {
    latencies: Vec<Duration>,
    /// (kind, message) per failed request.
    failures: Vec<(String, String)>,
}

/// Starts `tasks` client tasks on `handle`: each runs `prepare` (untimed), then
/// waits for the start, then calls `request` in a loop until the deadline.
/// Returns their results and the time from the start until the last finished.
async fn closed_loop<C, P, PF, R, RF>(
    handle: &Handle,
    tasks: usize,
    prepare: P,
    request: R,
    duration: Duration,
) -> Result<(Vec<TaskLoad>, Duration)>
where
    C: Send + Sync + 'static,
    P: Fn() -> PF,
    PF: Future<Output = Result<C>> + Send + 'static,
    R: Fn(Arc<C>) -> RF + Send + Sync + 'static,
    RF: Future<Output = Result<(), (String, String)>> + Send + 'static,
{
    let ready = Arc::new(Barrier::new(tasks + 1));
    let (go, start_rx) = watch::channel(None::<Instant>);
    let request = Arc::new(request);
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let prepared = prepare();
            let (ready, mut start_rx, request) = (ready.clone(), start_rx.clone(), request.clone());
            handle.spawn(async move {
                let context = prepared.await;
                // Wait even after a failed preparation, so the others are not stuck.
                ready.wait().await;
                let context = Arc::new(context?);
                let deadline = start_rx
                    .wait_for(Option::is_some)
                    .await
                    .map(|s| s.expect("checked") + duration)
                    .context("the start signal was dropped")?;
                let mut out = TaskLoad::default();
                while Instant::now() < deadline {
                    let t0 = Instant::now();
                    match request(context.clone()).await {
                        Ok(()) => out.latencies.push(t0.elapsed()),
                        Err(failure) => out.failures.push(failure),
                    }
                }
                anyhow::Ok(out)
            })
        })
        .collect();
    ready.wait().await;
    let start = Instant::now();
    go.send_replace(Some(start));
    let mut parts = Vec::with_capacity(tasks);
    for h in handles {
        parts.push(h.await??);
    }
    Ok((parts, start.elapsed()))
}

/// `connections` clients, each with its own keep-alive connection (opened by a
/// warm-up deposit before the clock starts), sending deposits over HTTP.
async fn http_load(
    clients: &Handle,
    addr: SocketAddr,
    accounts: &Arc<Vec<String>>,
    next: &Arc<AtomicUsize>,
    sizes: &Sizes,
) -> Result<Load> {
    let urls: Arc<Vec<String>> = Arc::new(
        accounts
            .iter()
            .map(|id| format!("http://{addr}/v1/aggregates/{AGGREGATE_TYPE}/{id}/commands"))
            .collect(),
    );
    struct Conn {
        client: reqwest::Client,
        urls: Arc<Vec<String>>,
        next: Arc<AtomicUsize>,
    }
    async fn deposit(conn: &Conn) -> Result<(), (String, String)> {
        let i = conn.next.fetch_add(1, Ordering::Relaxed) % conn.urls.len();
        let reply = conn
            .client
            .post(&conn.urls[i])
            .header(CONTENT_TYPE, "application/json")
            .body(DEPOSIT)
            .send()
            .await
            .map_err(|e| ("transport error".to_string(), format!("{e:#}")))?;
        let status = reply.status();
        // Read the whole body: the connection goes back to the pool only then.
        let body = reply
            .bytes()
            .await
            .map_err(|e| ("transport error".to_string(), format!("{e:#}")))?;
        if status != StatusCode::OK {
            return Err((
                format!("HTTP {status}"),
                String::from_utf8_lossy(&body).into_owned(),
            ));
        }
        Ok(())
    }
    let (urls2, next2) = (urls.clone(), next.clone());
    let (parts, elapsed) = closed_loop(
        clients,
        sizes.connections,
        move || {
            let (urls, next) = (urls2.clone(), next2.clone());
            async move {
                let client = reqwest::Client::builder()
                    .pool_max_idle_per_host(1)
                    .tcp_nodelay(true)
                    .build()?;
                let conn = Conn { client, urls, next };
                deposit(&conn)
                    .await
                    .map_err(|(kind, msg)| anyhow::anyhow!("warm-up deposit: {kind}: {msg}"))?;
                Ok(conn)
            }
        },
        |conn: Arc<Conn>| async move { deposit(&conn).await },
        sizes.duration,
    )
    .await?;
    Ok(Load::merge(parts, sizes.connections, elapsed))
}

/// As many in-process callers of the server's CommandService, on the server's runtime.
async fn local_load(
    service: Arc<CommandService>,
    accounts: &Arc<Vec<String>>,
    next: &Arc<AtomicUsize>,
    sizes: &Sizes,
) -> Result<Load> {
    let (accounts, next) = (accounts.clone(), next.clone());
    let (parts, elapsed) = closed_loop(
        &Handle::current(),
        sizes.connections,
        || async { Ok(()) },
        move |_: Arc<()>| {
            let (service, accounts, next) = (service.clone(), accounts.clone(), next.clone());
            async move {
                let i = next.fetch_add(1, Ordering::Relaxed) % accounts.len();
                service
                    .execute(CommandRequest {
                        aggregate_type: AGGREGATE_TYPE.into(),
                        aggregate_id: accounts[i].clone(),
                        command: DEPOSIT.into(),
                        ..Default::default()
                    })
                    .await
                    .map(|_| ())
                    .map_err(|e| ("command error".to_string(), e.to_string()))
            }
        },
        sizes.duration,
    )
    .await?;
    Ok(Load::merge(parts, 0, elapsed))
}

// ---------------------------------------------------------------------------
// Failures.

#[derive(Default)]
struct Failures {
    /// (load, kind) -> (count, first message)
    by_kind: BTreeMap<(String, String), (usize, String)>,
}

impl Failures {
    fn absorb(&mut self, load: &str, run: &Load) {
        for (kind, (n, message)) in &run.failures {
            let entry = self
                .by_kind
                .entry((load.to_string(), kind.clone()))
                .or_insert((0, message.clone()));
            entry.0 += n;
        }
    }

    fn total(&self) -> usize {
        self.by_kind.values().map(|(n, _)| n).sum()
    }

    fn print(&self) {
        eprintln!("\nFAILED REQUESTS (every command must succeed):");
        for ((load, kind), (n, message)) in &self.by_kind {
            eprintln!("  {load}: {n} x {kind}; first: {message}");
        }
    }
}

// ---------------------------------------------------------------------------
// CPU use: the whole machine's (from /proc/stat), and this process's by thread
// group (from /proc/self/task/*/schedstat).

struct CpuSample {
    at: Instant,
    /// (busy, total) jiffies of all cores.
    machine: Option<(u64, u64)>,
    threads: ThreadTimes,
}

impl CpuSample {
    fn take() -> CpuSample {
        let machine = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
            let fields: Vec<u64> = s
                .lines()
                .next()?
                .split_whitespace()
                .skip(1)
                .filter_map(|f| f.parse().ok())
                .collect();
            let total: u64 = fields.iter().take(8).sum();
            // idle + iowait
            let idle = fields.get(3)? + fields.get(4).copied().unwrap_or(0);
            Some((total - idle, total))
        });
        let threads = ThreadTimes::sample();
        CpuSample {
            at: Instant::now(),
            machine,
            threads,
        }
    }
}

/// Sums over the runs of one load.
#[derive(Default)]
struct CpuTotals {
    wall: Duration,
    machine_busy: u64,
    machine_total: u64,
    /// By thread group, per command.
    threads: GroupCpu,
}

impl CpuTotals {
    fn add(&mut self, before: &CpuSample, after: &CpuSample, commands: usize) {
        self.wall += after.at - before.at;
        if let (Some((b0, t0)), Some((b1, t1))) = (before.machine, after.machine) {
            self.machine_busy += b1 - b0;
            self.machine_total += t1 - t0;
        }
        self.threads.add(&before.threads, &after.threads, commands);
    }

    fn process_cores(&self) -> f64 {
        self.threads.groups.values().sum::<u64>() as f64 / 1e9 / self.wall.as_secs_f64()
    }
}

fn print_cpu(cpu: &[(String, CpuTotals)], cores: usize) {
    if no_thread_times(cpu.iter().map(|(_, t)| &t.threads)) {
        return;
    }
    println!("\nCPU during the timed runs (microseconds of CPU per command, by thread group):");
    let mut groups: Vec<&String> = cpu
        .iter()
        .flat_map(|(_, t)| t.threads.groups.keys())
        .collect();
    groups.sort();
    groups.dedup();
    groups.retain(|g| cpu.iter().any(|(_, t)| t.threads.per_unit_us(g) >= 0.5));
    print!("  {:<22}", "thread group");
    for (label, _) in cpu {
        print!(" {label:>16}");
    }
    println!();
    for group in &groups {
        print!("  {group:<22}");
        for (_, t) in cpu {
            print!(" {:>16.1}", t.threads.per_unit_us(group));
        }
        println!();
    }
    print!("  {:<22}", "total");
    for (_, t) in cpu {
        print!(" {:>16.1}", t.threads.total_us());
    }
    println!();
    print!("  {:<22}", "this process, cores");
    for (_, t) in cpu {
        print!(" {:>16.2}", t.process_cores());
    }
    println!();
    print!("  {:<22}", format!("machine busy, of {cores}"));
    for (_, t) in cpu {
        let busy = t.machine_busy as f64 / t.machine_total.max(1) as f64;
        print!(" {:>15.0}%", busy * 100.0);
    }
    println!();
}

// ---------------------------------------------------------------------------
// Reporting.

const TABLE: Table = Table {
    name_width: 74,
    columns: &[
        Column::number("http", 10),
        Column::text("unit", 10),
        Column::number("in process", 12),
    ],
    goal_width: 16,
    rule: 144,
};

fn print_table(rows: &[Row]) {
    TABLE.print(rows.iter().map(|row| Line {
        name: &row.name,
        cells: vec![
            row.unit.format(row.median()),
            row.unit.name().to_string(),
            row.unit.format(row.baseline_median()),
        ],
        ratio: Some(row.ratio()),
        goal: row.goal.describe(),
        verdict: row.goal.verdict(row.median()),
    }));
}
