//! Process benchmark: money transfers between bank accounts carried out by the
//! `transfers` process (a saga) through the real server, next to the same two
//! commands sent by the client itself.
//!
//! - A real server (`refold::server::start`, default `Durability::Fsync`) on
//!   127.0.0.1:0 in this process. Uploaded over HTTP with
//!   `PUT /v1/modules/{name}/1.0.0?activate=true`: `bank-account`,
//!   `transfer-orders` (the aggregate whose `TransferRequested` events start
//!   transfers) and `transfers` (the process: activated like an aggregate, the
//!   host starts its runner). `2 x clients x pairs` accounts opened and funded
//!   with 1,000,000 over HTTP (not timed). Client `k` moves money only between
//!   its own `pairs` (source, destination) account pairs, taking them in turn,
//!   so no two clients ever touch the same account and the same-aggregate
//!   contention does not dominate.
//! - Throughput, process: `clients` client tasks, each with its own keep-alive
//!   connection, each sending `{"type":"Request","from":..,"to":..,"amount":1}`
//!   to `transfer-orders/{a fresh transfer id}`, one request at a time (a
//!   closed loop on the reply, which comes once the order is durable, not the
//!   transfer), for `duration`; then one client polls the instance counts
//!   (`GET /v1/processes/transfers?limit=1`, no Wasm) every 5 ms until every
//!   transfer requested is completed. Transfers/s = transfers / (first request
//!   .. last completion seen): whatever backlog the runner has when the load
//!   stops counts against it.
//! - Throughput, baseline (alternating run by run): as many clients, each
//!   carrying its transfers out itself, one after another: `Withdraw` on the
//!   source, then `Deposit` on the destination, each over HTTP and durable,
//!   for the same duration and over the same pairs. Transfers/s = pairs done /
//!   (first request .. last reply).
//! - Latency: one client, `latency_samples` transfers one after another: the
//!   order sent -> `GET /v1/processes/transfers/{id}` answers
//!   `"status":"completed"` (404 `unknown_instance` until the runner has taken
//!   the order in). Polled every millisecond (tokio's timer makes it 1 to 2
//!   ms); polling the counts back to back instead gave the same p50, polling
//!   the instance back to back a worse one (each read folds the instance in
//!   Wasm, on the pool the runner needs). Baseline: one client's `Withdraw`
//!   then `Deposit`, the time of the pair. p50 and p99 per run.
//!
//! What the process adds per transfer, over the baseline's 2 commands (2 Wasm
//! calls, 2 durable appends): the order (1 call, 1 append), `route` (1 call),
//! three inputs of the instance (the request, the debit's outcome, the
//! credit's outcome: 3 `react` calls, 3 appends of the instance's records),
//! and the hops through the log and the runner; in all 7 Wasm calls and 6
//! appends, one after another. What it buys is not measured: a baseline
//! client that dies between its two commands leaves the money withdrawn and
//! never deposited; the process finishes the transfer or compensates.
//!
//! Every order and command must be answered 200 and every transfer must
//! complete (none failed, none left running); otherwise the benchmark fails
//! after printing the table. The client runs on the same machine (2 cores
//! here) as the server, on its own 1-thread tokio runtime as in `http.rs`; the
//! printed CPU use by thread group says where the CPU goes per transfer
//! ("threads since exited": the whole process's CPU minus the listed threads',
//! mostly the guest pool's extra threads, which leave as soon as they find no job).
//!
//! `cargo bench -p refold --bench processes` runs the full benchmark (cargo
//! passes `--bench`). Without `--bench` (as under `cargo test --all-targets`)
//! it runs a smoke version with tiny sizes, to check that the benchmark still
//! works.
//!
//! Output: a table on stdout, and one JSON line per result appended to
//! `bench-results/processes.jsonl` (smoke: `bench-results/processes-smoke.jsonl`).

mod common;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use refold::server::ServeConfig;
use reqwest::StatusCode;
use reqwest::header::CONTENT_TYPE;
use serde_json::Value;
use tokio::runtime::Handle;
use tokio::sync::{Barrier, watch};

use common::{
    Bench, Column, GroupCpu, Line, Mode, Record, Table, ThreadTimes, median, no_thread_times, rate,
    tempdir, thousands,
};

const MODULE_VERSION: &str = "1.0.0";
const ACCOUNT: &str = "bank-account";
const ORDERS: &str = "transfer-orders";
const PROCESS: &str = "transfers";
/// Every account's opening deposit: far more than the runs move out of it.
const BALANCE: i64 = 1_000_000;
/// Concurrent requests that open the accounts (not timed).
const SETUP_TASKS: usize = 16;
/// How often the latency client asks whether its transfer is done.
const LATENCY_POLL: Duration = Duration::from_millis(1);
/// How often the throughput poller reads the instance counts after the load.
const DRAIN_POLL: Duration = Duration::from_millis(5);

#[derive(Clone, Copy)]
struct Sizes {
    runs: usize,
    clients: usize,
    /// Account pairs of each client.
    pairs: usize,
    /// How long the clients send in one throughput run.
    duration: Duration,
    /// Transfers one after another in one latency run.
    latency_samples: usize,
    /// The longest the transfers of one run may take to complete once sent.
    timeout: Duration,
}

impl Sizes {
    fn for_mode(mode: Mode) -> Sizes {
        match mode {
            Mode::Full => Sizes {
                runs: 5,
                clients: 16,
                pairs: 16,
                duration: Duration::from_secs(3),
                latency_samples: 200,
                timeout: Duration::from_secs(120),
            },
            Mode::Smoke => Sizes {
                runs: 1,
                clients: 2,
                pairs: 2,
                duration: Duration::from_millis(300),
                latency_samples: 5,
                timeout: Duration::from_secs(60),
            },
        }
    }
}

#[derive(Clone, Copy)]
enum Unit {
    TransfersPerSec,
    Millis,
}

impl Unit {
    fn name(self) -> &'static str {
        match self {
            Unit::TransfersPerSec => "transfers/s",
            Unit::Millis => "ms",
        }
    }

    fn format(self, value: f64) -> String {
        match self {
            Unit::TransfersPerSec => thousands(value),
            Unit::Millis => format!("{value:.2}"),
        }
    }
}

/// One line of the table: the process's measurement per run, and the baseline's.
struct Row {
    name: String,
    unit: Unit,
    runs: Vec<f64>,
    baseline: Vec<f64>,
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
            goal: "informational".to_string(),
        }
    }
}

fn main() -> Result<()> {
    let bench = Bench::start("processes")?;
    let sizes = Sizes::for_mode(bench.mode);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());

    // As in http.rs: the server gets a multi-thread runtime with a worker per
    // core, as `refold serve`; the clients their own runtime with one worker
    // thread, as a separate load generator would be.
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
        "refold process benchmark ({} mode): transfers by the `transfers` process vs the client's own Withdraw+Deposit; throughput: {} clients x {} account pairs each, {:.1} s per run; latency: 1 client, {} transfers per run; x {} runs; fsync; client and server on the same {cores}-core machine, clients on their own 1-thread tokio runtime",
        bench.mode.name(),
        sizes.clients,
        sizes.pairs,
        sizes.duration.as_secs_f64(),
        sizes.latency_samples,
        sizes.runs,
    );
    let outcome = server_rt.block_on(run(&sizes, &bench.scratch, client_rt.handle().clone()));
    drop(client_rt);
    let (rows, failures, cpu) = outcome?;

    print_table(&rows);
    print_cpu(&cpu);
    if failures.total() > 0 {
        failures.print();
        bail!(
            "{} requests or transfers failed; no results written",
            failures.total()
        );
    }
    let records: Vec<Record> = rows.iter().map(Row::record).collect();
    bench.finish(&records, started)
}

/// The setup, then `runs` rounds of: process throughput, baseline throughput,
/// process latency, baseline latency.
async fn run(
    sizes: &Sizes,
    scratch: &Path,
    clients: Handle,
) -> Result<(Vec<Row>, Failures, Vec<(String, CpuTotals)>)> {
    let dir = tempdir(scratch)?;
    let mut config = ServeConfig::new(dir.path(), "127.0.0.1:0".parse()?);
    config.runtime.compile.worker = Some(env!("CARGO_BIN_EXE_refold").into());
    let setup = Instant::now();
    let server = refold::server::start(config).await?;
    let base = Arc::new(format!("http://{}", server.addr));
    // Client k's pairs: accounts 2(kP + j) -> 2(kP + j) + 1.
    let pairs: Arc<Vec<Vec<(String, String)>>> = Arc::new(
        (0..sizes.clients)
            .map(|k| {
                (0..sizes.pairs)
                    .map(|j| {
                        let n = 2 * (k * sizes.pairs + j);
                        (format!("acc-{n:05}"), format!("acc-{:05}", n + 1))
                    })
                    .collect()
            })
            .collect(),
    );
    let accounts: Vec<String> = pairs
        .iter()
        .flatten()
        .flat_map(|(a, b)| [a.clone(), b.clone()])
        .collect();
    let opened = accounts.len();
    clients
        .spawn(setup_server(base.clone(), accounts))
        .await??;
    println!(
        "\nserver on {} ready in {:.1} s: 3 modules uploaded, {} accounts opened and funded over HTTP (not timed)",
        server.addr,
        setup.elapsed().as_secs_f64(),
        opened
    );

    let ids = Arc::new(AtomicUsize::new(0));
    let mut failures = Failures::default();
    let (mut process, mut direct) = (Vec::new(), Vec::new());
    let (mut process_latency, mut direct_latency) = (Vec::new(), Vec::new());
    let (mut process_cpu, mut direct_cpu) = (CpuTotals::default(), CpuTotals::default());
    for run in 0..sizes.runs {
        let before = CpuSample::take();
        let p = clients
            .spawn(process_load(
                base.clone(),
                pairs.clone(),
                ids.clone(),
                *sizes,
            ))
            .await??;
        process_cpu.add(&before, &CpuSample::take(), p.done);
        let before = CpuSample::take();
        let d = clients
            .spawn(direct_load(
                base.clone(),
                pairs.clone(),
                ids.clone(),
                *sizes,
            ))
            .await??;
        direct_cpu.add(&before, &CpuSample::take(), d.done);
        let pl = clients
            .spawn(process_latency_run(
                base.clone(),
                pairs.clone(),
                ids.clone(),
                *sizes,
            ))
            .await??;
        let dl = clients
            .spawn(direct_latency_run(
                base.clone(),
                pairs.clone(),
                ids.clone(),
                *sizes,
            ))
            .await??;
        println!(
            "  run {}/{}: process {} | direct {}",
            run + 1,
            sizes.runs,
            p.summary(),
            d.summary(),
        );
        println!(
            "           latency: process {} | direct {}",
            pl.latency_summary(),
            dl.latency_summary(),
        );
        failures.absorb("throughput, process", &p);
        failures.absorb("throughput, direct", &d);
        failures.absorb("latency, process", &pl);
        failures.absorb("latency, direct", &dl);
        process.push(p);
        direct.push(d);
        process_latency.push(pl);
        direct_latency.push(dl);
    }

    // Every transfer the process was asked for completed, and nothing was refused.
    let (url, timeout) = (
        format!("{base}/v1/processes/{PROCESS}?limit=1"),
        sizes.timeout,
    );
    let view = clients
        .spawn(async move {
            let start = Instant::now();
            loop {
                let view = get_json_once(&url).await?;
                if view["instances"]["running"] == 0 || start.elapsed() > timeout {
                    return anyhow::Ok(view);
                }
                tokio::time::sleep(DRAIN_POLL).await;
            }
        })
        .await??;
    let field = |path: &[&str]| {
        path.iter()
            .fold(&view, |v, key| &v[*key])
            .as_u64()
            .unwrap_or(u64::MAX)
    };
    let asked = ids.load(Ordering::Relaxed) as u64;
    let requested: u64 = process.iter().map(|l| l.done as u64).sum::<u64>()
        + process_latency.iter().map(|l| l.done as u64).sum::<u64>();
    println!(
        "\nprocess totals: {} transfers completed, {} failed, {} running; {} reactions, {} commands sent, {} rejected, {} retried",
        field(&["instances", "completed"]),
        field(&["instances", "failed"]),
        field(&["instances", "running"]),
        field(&["reactions"]),
        field(&["commands_sent"]),
        field(&["commands_rejected"]),
        field(&["command_retries"]),
    );
    let sound = field(&["instances", "completed"]) == requested
        && field(&["instances", "failed"]) == 0
        && field(&["instances", "running"]) == 0
        && field(&["commands_rejected"]) == 0;
    if !sound {
        failures.add(
            "process totals",
            "transfers not completed",
            format!("{requested} transfers requested ({asked} ids used); the process says {view}"),
        );
    }
    server.shutdown().await?;

    let per_run = |runs: &[Load], f: &dyn Fn(&Load) -> f64| runs.iter().map(f).collect::<Vec<_>>();
    let rows = vec![
        Row {
            name: format!(
                "transfers, {} clients x {} pairs, {:.1} s load (process vs client-driven)",
                sizes.clients,
                sizes.pairs,
                sizes.duration.as_secs_f64()
            ),
            unit: Unit::TransfersPerSec,
            runs: per_run(&process, &Load::rate),
            baseline: per_run(&direct, &Load::rate),
        },
        Row {
            name: format!(
                "  p50 latency, 1 client, {} transfers one at a time",
                sizes.latency_samples
            ),
            unit: Unit::Millis,
            runs: per_run(&process_latency, &|l| l.percentile_ms(0.50)),
            baseline: per_run(&direct_latency, &|l| l.percentile_ms(0.50)),
        },
        Row {
            name: format!(
                "  p99 latency, 1 client, {} transfers one at a time",
                sizes.latency_samples
            ),
            unit: Unit::Millis,
            runs: per_run(&process_latency, &|l| l.percentile_ms(0.99)),
            baseline: per_run(&direct_latency, &|l| l.percentile_ms(0.99)),
        },
    ];
    let cpu = vec![
        ("process".to_string(), process_cpu),
        ("direct".to_string(), direct_cpu),
    ];
    Ok((rows, failures, cpu))
}

// ---------------------------------------------------------------------------
// Setup.

/// Uploads the three modules, waits for the process's runner, then opens and
/// funds every account.
async fn setup_server(base: Arc<String>, accounts: Vec<String>) -> Result<()> {
    let client = reqwest::Client::new();
    for (name, path) in [
        (ACCOUNT, refold_test_guests::BANK_ACCOUNT),
        (ORDERS, refold_test_guests::TRANSFER_ORDERS),
        (PROCESS, refold_test_guests::TRANSFERS),
    ] {
        let bytes = std::fs::read(path).with_context(|| format!("reading {path}"))?;
        let reply = client
            .put(format!(
                "{base}/v1/modules/{name}/{MODULE_VERSION}?activate=true"
            ))
            .header(CONTENT_TYPE, "application/wasm")
            .body(bytes)
            .send()
            .await?;
        let status = reply.status();
        let body = reply.text().await.unwrap_or_default();
        ensure!(status.is_success(), "uploading {name}: {status} {body}");
        let view: Value = serde_json::from_str(&body).unwrap_or_default();
        ensure!(
            view["active"] == true,
            "uploading {name}: not activated: {body}"
        );
    }
    // The runner starts when the activation is noticed.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let reply = client
            .get(format!("{base}/v1/processes/{PROCESS}?limit=1"))
            .send()
            .await?;
        if reply.status() == StatusCode::OK {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the {PROCESS} runner did not start within 30 s: {} {}",
            reply.status(),
            reply.text().await.unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let accounts = Arc::new(accounts);
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
                    let url = format!("{base}/v1/aggregates/{ACCOUNT}/{id}/commands");
                    for command in [
                        r#"{"type":"Open","owner":"x","overdraft_limit":0}"#.to_string(),
                        format!(r#"{{"type":"Deposit","amount":{BALANCE}}}"#),
                    ] {
                        post(&client, &url, command).await.map_err(|(kind, msg)| {
                            anyhow::anyhow!("opening {id}: {kind}: {msg}")
                        })?;
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    Ok(())
}

async fn get_json_once(url: &str) -> Result<Value> {
    let reply = reqwest::get(url).await?;
    let status = reply.status();
    let body = reply.text().await?;
    ensure!(status == StatusCode::OK, "GET {url}: {status} {body}");
    Ok(serde_json::from_str(&body)?)
}

// ---------------------------------------------------------------------------
// The client.

/// (kind, message) of a failed request or transfer.
type Failure = (String, String);

fn transport(e: reqwest::Error) -> Failure {
    ("transport error".to_string(), format!("{e:#}"))
}

/// POSTs a JSON command; anything but 200 is a failure.
async fn post(client: &reqwest::Client, url: &str, body: String) -> Result<(), Failure> {
    let reply = client
        .post(url)
        .header(CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await
        .map_err(transport)?;
    let status = reply.status();
    // Read the whole body: the connection goes back to the pool only then.
    let body = reply.bytes().await.map_err(transport)?;
    if status != StatusCode::OK {
        return Err((
            format!("HTTP {status}"),
            String::from_utf8_lossy(&body).into_owned(),
        ));
    }
    Ok(())
}

async fn get(client: &reqwest::Client, url: &str) -> Result<(StatusCode, Value), Failure> {
    let reply = client.get(url).send().await.map_err(transport)?;
    let status = reply.status();
    let body = reply.bytes().await.map_err(transport)?;
    let value = serde_json::from_slice(&body).map_err(|e| {
        (
            "unreadable reply".to_string(),
            format!("{e}: {}", String::from_utf8_lossy(&body)),
        )
    })?;
    Ok((status, value))
}

/// The process's instances by status.
#[derive(Clone, Copy, Debug, Default)]
struct Counts {
    running: u64,
    completed: u64,
    failed: u64,
}

/// One client: its keep-alive connection and its account pairs.
struct Client {
    http: reqwest::Client,
    base: Arc<String>,
    pairs: Vec<(String, String)>,
    next_pair: AtomicUsize,
    /// Transfer ids, shared by every client and run.
    ids: Arc<AtomicUsize>,
}

impl Client {
    /// A client with its connection open (by a read of the counts, which
    /// writes nothing), not yet timed.
    async fn connect(
        base: Arc<String>,
        pairs: Vec<(String, String)>,
        ids: Arc<AtomicUsize>,
    ) -> Result<Client> {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(1)
            .tcp_nodelay(true)
            .build()?;
        let client = Client {
            http,
            base,
            pairs,
            next_pair: AtomicUsize::new(0),
            ids,
        };
        client
            .counts()
            .await
            .map_err(|(kind, msg)| anyhow::anyhow!("warm-up read: {kind}: {msg}"))?;
        Ok(client)
    }

    fn pair(&self) -> &(String, String) {
        let i = self.next_pair.fetch_add(1, Ordering::Relaxed);
        &self.pairs[i % self.pairs.len()]
    }

    async fn counts(&self) -> Result<Counts, Failure> {
        let url = format!("{}/v1/processes/{PROCESS}?limit=1", self.base);
        let (status, view) = get(&self.http, &url).await?;
        if status != StatusCode::OK {
            return Err((
                format!("HTTP {status} reading the counts"),
                view.to_string(),
            ));
        }
        let count = |key: &str| view["instances"][key].as_u64();
        match (count("running"), count("completed"), count("failed")) {
            (Some(running), Some(completed), Some(failed)) => Ok(Counts {
                running,
                completed,
                failed,
            }),
            _ => Err(("no instance counts".to_string(), view.to_string())),
        }
    }

    /// The counts once no instance is running (the last transfer of a latency
    /// run may be seen completed in its stream just before it is counted).
    async fn settled(&self, timeout: Duration) -> Result<Counts> {
        let start = Instant::now();
        loop {
            let counts = self
                .counts()
                .await
                .map_err(|(kind, msg)| anyhow::anyhow!("reading the counts: {kind}: {msg}"))?;
            if counts.running == 0 {
                return Ok(counts);
            }
            ensure!(
                start.elapsed() < timeout,
                "transfers still running after {:.0} s: {counts:?}",
                timeout.as_secs_f64()
            );
            tokio::time::sleep(DRAIN_POLL).await;
        }
    }

    /// Orders a transfer of 1 over the next pair; returns its id once the order is durable.
    async fn request_transfer(&self) -> Result<String, Failure> {
        let (from, to) = self.pair();
        let id = format!("t-{:07}", self.ids.fetch_add(1, Ordering::Relaxed));
        let url = format!("{}/v1/aggregates/{ORDERS}/{id}/commands", self.base);
        let body = format!(r#"{{"type":"Request","from":"{from}","to":"{to}","amount":1}}"#);
        post(&self.http, &url, body).await?;
        Ok(id)
    }

    /// The transfer as the client would do it without a process: Withdraw on
    /// the source, then Deposit on the destination.
    async fn transfer_directly(&self) -> Result<(), Failure> {
        let (from, to) = self.pair();
        let base = &self.base;
        let withdraw = format!("{base}/v1/aggregates/{ACCOUNT}/{from}/commands");
        post(
            &self.http,
            &withdraw,
            r#"{"type":"Withdraw","amount":1}"#.into(),
        )
        .await?;
        let deposit = format!("{base}/v1/aggregates/{ACCOUNT}/{to}/commands");
        post(
            &self.http,
            &deposit,
            r#"{"type":"Deposit","amount":1}"#.into(),
        )
        .await
    }

    /// The instance's status, or None while the process has not seen the order.
    async fn instance_status(&self, id: &str) -> Result<Option<String>, Failure> {
        let url = format!("{}/v1/processes/{PROCESS}/{id}", self.base);
        let (status, view) = get(&self.http, &url).await?;
        match status {
            StatusCode::OK => match view["status"].as_str() {
                Some(s) => Ok(Some(s.to_string())),
                None => Err(("instance without a status".to_string(), view.to_string())),
            },
            StatusCode::NOT_FOUND if view["code"] == "unknown_instance" => Ok(None),
            _ => Err((
                format!("HTTP {status} reading an instance"),
                view.to_string(),
            )),
        }
    }
}

// ---------------------------------------------------------------------------
// The loads.

/// What one run of a load did.
struct Load {
    /// Transfers done: completed by the process, or both commands answered.
    done: usize,
    /// From the first request to the last completion (throughput), or the
    /// whole run (latency).
    elapsed: Duration,
    /// From the first request until the clients stopped sending.
    sending: Duration,
    /// Latency of every transfer (latency runs), sorted.
    latencies: Vec<Duration>,
    /// Failure kind -> (count, first message).
    failures: BTreeMap<String, (usize, String)>,
}

impl Load {
    fn rate(&self) -> f64 {
        rate(self.done, self.elapsed)
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

    fn failed_note(&self) -> String {
        match self.failed() {
            0 => String::new(),
            n => format!(", {n} FAILED"),
        }
    }

    fn summary(&self) -> String {
        format!(
            "{:>6} transfers/s ({} in {:.2} s, sent in {:.2} s){}",
            thousands(self.rate()),
            self.done,
            self.elapsed.as_secs_f64(),
            self.sending.as_secs_f64(),
            self.failed_note(),
        )
    }

    fn latency_summary(&self) -> String {
        format!(
            "p50 {:>6.2} ms, p99 {:>6.2} ms{}",
            self.percentile_ms(0.50),
            self.percentile_ms(0.99),
            self.failed_note()
        )
    }

    fn merge(parts: Vec<TaskLoad>, elapsed: Duration) -> Load {
        let mut load = Load {
            done: 0,
            elapsed,
            sending: elapsed,
            latencies: Vec::new(),
            failures: BTreeMap::new(),
        };
        for part in parts {
            load.done += part.done;
            load.latencies.extend(part.latencies);
            for (kind, message) in part.failures {
                load.fail(kind, message);
            }
        }
        load.latencies.sort_unstable();
        load
    }

    fn fail(&mut self, kind: String, message: String) {
        let entry = self.failures.entry(kind).or_insert((0, message));
        entry.0 += 1;
    }
}

/// What one client task did.
#[derive(Default)]
struct TaskLoad {
    done: usize,
    latencies: Vec<Duration>,
    /// (kind, message) per failed request.
    failures: Vec<Failure>,
}

/// Starts `tasks` client tasks on this runtime: task `k` runs `prepare(k)`
/// (untimed), then waits for the start, then calls `request` in a loop until
/// the deadline. Returns their results, the start, and the time from the
/// start until the last finished. (`http.rs`'s closed loop, with the task's
/// index given to `prepare`.)
async fn closed_loop<C, P, PF, R, RF>(
    tasks: usize,
    prepare: P,
    request: R,
    duration: Duration,
) -> Result<(Vec<TaskLoad>, Instant, Duration)>
where
    C: Send + Sync + 'static,
    P: Fn(usize) -> PF,
    PF: Future<Output = Result<C>> + Send + 'static,
    R: Fn(Arc<C>) -> RF + Send + Sync + 'static,
    RF: Future<Output = Result<(), Failure>> + Send + 'static,
{
    let ready = Arc::new(Barrier::new(tasks + 1));
    let (go, start_rx) = watch::channel(None::<Instant>);
    let request = Arc::new(request);
    let handles: Vec<_> = (0..tasks)
        .map(|k| {
            let prepared = prepare(k);
            let (ready, mut start_rx, request) = (ready.clone(), start_rx.clone(), request.clone());
            tokio::spawn(async move {
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
                    match request(context.clone()).await {
                        Ok(()) => out.done += 1,
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
    Ok((parts, start, start.elapsed()))
}

/// The clients order transfers for `duration`; then the counts are polled
/// until the process has completed every one (or one failed, or time ran out).
async fn process_load(
    base: Arc<String>,
    pairs: Arc<Vec<Vec<(String, String)>>>,
    ids: Arc<AtomicUsize>,
    sizes: Sizes,
) -> Result<Load> {
    let poller = Client::connect(base.clone(), Vec::new(), ids.clone()).await?;
    let before = poller.settled(sizes.timeout).await?;
    let (parts, start, sending) = closed_loop(
        sizes.clients,
        |k| Client::connect(base.clone(), pairs[k].clone(), ids.clone()),
        |client: Arc<Client>| async move { client.request_transfer().await.map(|_| ()) },
        sizes.duration,
    )
    .await?;
    let mut load = Load::merge(parts, sending);
    let target = before.completed + load.done as u64;
    loop {
        match poller.counts().await {
            Ok(now) if now.failed > before.failed => {
                load.fail(
                    "transfer failed".to_string(),
                    format!("{} transfers failed: {now:?}", now.failed - before.failed),
                );
                break;
            }
            Ok(now) if now.completed >= target => break,
            Ok(now) if start.elapsed() > sizes.duration + sizes.timeout => {
                load.fail(
                    "transfers not completed".to_string(),
                    format!(
                        "{} of {} transfers completed after {:.0} s: {now:?}",
                        now.completed - before.completed,
                        load.done,
                        start.elapsed().as_secs_f64()
                    ),
                );
                break;
            }
            Ok(_) => tokio::time::sleep(DRAIN_POLL).await,
            Err((kind, message)) => {
                load.fail(kind, message);
                break;
            }
        }
    }
    load.elapsed = start.elapsed();
    load.sending = sending;
    Ok(load)
}

/// The clients carry their transfers out themselves for `duration`.
async fn direct_load(
    base: Arc<String>,
    pairs: Arc<Vec<Vec<(String, String)>>>,
    ids: Arc<AtomicUsize>,
    sizes: Sizes,
) -> Result<Load> {
    let (parts, _, elapsed) = closed_loop(
        sizes.clients,
        |k| Client::connect(base.clone(), pairs[k].clone(), ids.clone()),
        |client: Arc<Client>| async move { client.transfer_directly().await },
        sizes.duration,
    )
    .await?;
    Ok(Load::merge(parts, elapsed))
}

/// One client, `latency_samples` transfers one at a time, each from its
/// order to its instance answering `completed`. Client 0's pairs.
async fn process_latency_run(
    base: Arc<String>,
    pairs: Arc<Vec<Vec<(String, String)>>>,
    ids: Arc<AtomicUsize>,
    sizes: Sizes,
) -> Result<Load> {
    let client = Arc::new(Client::connect(base, pairs[0].clone(), ids).await?);
    let timeout = sizes.timeout;
    latency_run(
        client,
        sizes.latency_samples,
        move |client: Arc<Client>| async move {
            let t0 = Instant::now();
            let id = client.request_transfer().await?;
            loop {
                match client.instance_status(&id).await?.as_deref() {
                    Some("completed") => return Ok(t0.elapsed()),
                    Some("running") | None if t0.elapsed() < timeout => {
                        tokio::time::sleep(LATENCY_POLL).await
                    }
                    status => {
                        return Err((
                            "transfer not completed".to_string(),
                            format!(
                                "transfer {id} is {status:?} after {:.1} s",
                                t0.elapsed().as_secs_f64()
                            ),
                        ));
                    }
                }
            }
        },
    )
    .await
}

/// One client, `latency_samples` transfers one at a time, each a Withdraw then a Deposit.
async fn direct_latency_run(
    base: Arc<String>,
    pairs: Arc<Vec<Vec<(String, String)>>>,
    ids: Arc<AtomicUsize>,
    sizes: Sizes,
) -> Result<Load> {
    let client = Arc::new(Client::connect(base, pairs[0].clone(), ids).await?);
    latency_run(
        client,
        sizes.latency_samples,
        |client: Arc<Client>| async move {
            let t0 = Instant::now();
            client.transfer_directly().await?;
            Ok(t0.elapsed())
        },
    )
    .await
}

async fn latency_run<F, Fut>(client: Arc<Client>, samples: usize, one: F) -> Result<Load>
where
    F: Fn(Arc<Client>) -> Fut,
    Fut: Future<Output = Result<Duration, Failure>>,
{
    let start = Instant::now();
    let mut part = TaskLoad::default();
    for _ in 0..samples {
        match one(client.clone()).await {
            Ok(latency) => {
                part.done += 1;
                part.latencies.push(latency);
            }
            Err(failure) => part.failures.push(failure),
        }
    }
    Ok(Load::merge(vec![part], start.elapsed()))
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

    fn add(&mut self, load: &str, kind: &str, message: String) {
        let entry = self
            .by_kind
            .entry((load.to_string(), kind.to_string()))
            .or_insert((0, message));
        entry.0 += 1;
    }

    fn total(&self) -> usize {
        self.by_kind.values().map(|(n, _)| n).sum()
    }

    fn print(&self) {
        eprintln!("\nFAILURES (every request must be answered 200 and every transfer complete):");
        for ((load, kind), (n, message)) in &self.by_kind {
            eprintln!("  {load}: {n} x {kind}; first: {message}");
        }
    }
}

// ---------------------------------------------------------------------------
// Reporting.

/// CPU by thread, and of the whole process: threads that exited between two
/// samples (the guest pool's extra threads leave as soon as they find no job)
/// are missing from the first and counted in the second.
struct CpuSample {
    threads: ThreadTimes,
    process_ns: Option<u64>,
}

impl CpuSample {
    fn take() -> CpuSample {
        CpuSample {
            threads: ThreadTimes::sample(),
            process_ns: process_cpu_ns(),
        }
    }
}

/// utime + stime of /proc/self/stat (exited threads included), in ns.
fn process_cpu_ns() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The fields after the command name's closing parenthesis start at the
    // 3rd (state); utime and stime are the 14th and 15th, in USER_HZ (100 on Linux).
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) * 10_000_000)
}

/// Sums over the runs of one load.
#[derive(Default)]
struct CpuTotals {
    /// By thread group, per transfer.
    threads: GroupCpu,
    /// The whole process's CPU.
    process_ns: u64,
    /// A sample lacked the whole process's CPU.
    process_unknown: bool,
}

impl CpuTotals {
    fn add(&mut self, before: &CpuSample, after: &CpuSample, transfers: usize) {
        self.threads.add(&before.threads, &after.threads, transfers);
        match (before.process_ns, after.process_ns) {
            (Some(b), Some(a)) => self.process_ns += a.saturating_sub(b),
            _ => self.process_unknown = true,
        }
    }

    /// CPU per transfer of threads gone by the end of their run.
    fn exited_us(&self) -> Option<f64> {
        let listed: u64 = self.threads.groups.values().sum();
        let exited = self.process_ns.saturating_sub(listed);
        (!self.process_unknown).then(|| exited as f64 / 1e3 / self.threads.units.max(1) as f64)
    }
}

fn print_cpu(cpu: &[(String, CpuTotals)]) {
    if no_thread_times(cpu.iter().map(|(_, c)| &c.threads)) {
        return;
    }
    println!(
        "\nCPU during the throughput runs (microseconds of CPU per transfer, by thread group; process: until the last completion):"
    );
    let mut groups: Vec<&String> = cpu
        .iter()
        .flat_map(|(_, c)| c.threads.groups.keys())
        .collect();
    groups.sort();
    groups.dedup();
    groups.retain(|g| cpu.iter().any(|(_, c)| c.threads.per_unit_us(g) >= 0.5));
    print!("  {:<22}", "thread group");
    for (label, _) in cpu {
        print!(" {label:>12}");
    }
    println!();
    for group in &groups {
        print!("  {group:<22}");
        for (_, c) in cpu {
            print!(" {:>12.1}", c.threads.per_unit_us(group));
        }
        println!();
    }
    print!("  {:<22}", "threads since exited");
    for (_, c) in cpu {
        match c.exited_us() {
            Some(us) => print!(" {us:>12.1}"),
            None => print!(" {:>12}", "?"),
        }
    }
    println!();
    print!("  {:<22}", "total");
    for (_, c) in cpu {
        print!(
            " {:>12.1}",
            c.threads.total_us() + c.exited_us().unwrap_or(0.0)
        );
    }
    println!();
}

const TABLE: Table = Table {
    name_width: 74,
    columns: &[
        Column::number("process", 10),
        Column::text("unit", 11),
        Column::number("direct", 10),
    ],
    goal_width: 14,
    rule: 136,
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
        goal: "informational".to_string(),
        verdict: "-",
    }));
}
