//! Runtime benchmarks: what running business logic in Wasm costs, each next to
//! a baseline doing the same work without it.
//!
//! - Instantiation: a fresh instance plus the smallest call there is
//!   (`initial_state`, which encodes a default state), for the WASI component
//!   and the component without WASI imports. Every guest call pays this.
//! - Replay: bank events applied through the component's `apply` in batches of
//!   `APPLY_BATCH` (a fresh instance per batch, as the host replays), against
//!   `refold_sdk::codec::apply` run natively over the same batches: the very
//!   function the component runs. Both must end in the same state bytes.
//! - Durable commands in process (no HTTP, `Durability::Fsync`) over many
//!   pre-opened accounts, from 1 caller and from 64 concurrent callers, against
//!   raw store appends of one equivalent event per command at the same concurrency.
//!   Then where a command's time goes: guest calls, pool hand-offs, the append,
//!   and CPU per command by thread.
//!
//! `cargo bench -p refold --bench runtime` runs the full benchmark (cargo passes
//! `--bench`). Without `--bench` (as under `cargo test --all-targets`) it runs a
//! smoke version with tiny sizes, to check that the benchmark still works.
//!
//! Output: a table on stdout, and one JSON line per result appended to
//! `bench-results/runtime.jsonl` (smoke: `bench-results/runtime-smoke.jsonl`).

mod common;

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use bank_account::{BankAccount, Event, Status};
use refold::commands::{
    APPLY_BATCH, CommandConfig, CommandRequest, CommandService, STATE_DIGEST_KEY, state_digest,
};
use refold::modules::ModuleRegistry;
use refold::runtime::{
    AggregateModule, CommandContext, CompileConfig, Guest, Runtime, RuntimeConfig, StreamEvent,
};
use refold::store::{
    Backend, Direction, Durability, EventMetadata, ExpectedVersion, NewEvent, Store, StoreConfig,
    StreamId,
};
use refold_sdk::codec;
use sha2::{Digest, Sha256};
use tempfile::TempDir;

use common::{
    Bench, Column, GroupCpu, Line, Mode, Record, Table, ThreadTimes, median, no_thread_times, rate,
    tempdir, thousands,
};

const AGGREGATE_TYPE: &str = "bank-account";
const MODULE_VERSION: &str = "1.0.0";
const DEPOSIT: &str = r#"{"type":"Deposit","amount":100}"#;
/// Tasks that pre-open the accounts (not timed).
const SETUP_TASKS: usize = 64;

/// How much work each measurement does. A full run lasts roughly 0.5-1 s.
struct Sizes {
    runs: usize,
    /// How long one run of a calibrated call loop (instantiation, guest calls) lasts.
    call_loop: Duration,
    /// How long one run of the replay lasts at least (whole passes over the events).
    replay_run: Duration,
    replay_events: usize,
    aggregates: usize,
    sequential_commands: usize,
    concurrent_callers: usize,
    concurrent_commands: usize,
}

impl Sizes {
    fn for_mode(mode: Mode) -> Sizes {
        match mode {
            Mode::Full => Sizes {
                runs: 5,
                call_loop: Duration::from_millis(600),
                replay_run: Duration::from_millis(500),
                replay_events: 100_000,
                aggregates: 10_000,
                sequential_commands: 1_000,
                concurrent_callers: 64,
                concurrent_commands: 5_000,
            },
            Mode::Smoke => Sizes {
                runs: 1,
                call_loop: Duration::from_millis(20),
                replay_run: Duration::ZERO,
                replay_events: 2_000,
                aggregates: 100,
                sequential_commands: 50,
                concurrent_callers: 64,
                concurrent_commands: 200,
            },
        }
    }
}

/// What a row measures, and in which unit.
#[derive(Clone, Copy)]
enum Unit {
    MicrosPerCall,
    EventsPerSec,
    CommandsPerSec,
}

impl Unit {
    fn name(self) -> &'static str {
        match self {
            Unit::MicrosPerCall => "us/call",
            Unit::EventsPerSec => "events/s",
            Unit::CommandsPerSec => "commands/s",
        }
    }

    fn format(self, value: f64) -> String {
        match self {
            Unit::MicrosPerCall => format!("{value:.1}"),
            _ => thousands(value),
        }
    }
}

/// What a result is judged against.
#[derive(Clone, Copy)]
enum Goal {
    /// No goal: context for the other rows.
    Informational,
    /// The median must be at most this (a cost).
    AtMost(f64),
    /// The median must be at least this (a rate).
    RateAtLeast(f64),
    /// The median must be at least this rate, and at least this ratio of the baseline.
    RateAndRatio(f64, f64),
}

impl Goal {
    fn describe(self, unit: Unit) -> String {
        let short = match unit {
            Unit::MicrosPerCall => "us",
            Unit::EventsPerSec => "ev/s",
            Unit::CommandsPerSec => "cmd/s",
        };
        match self {
            Goal::Informational => "informational".to_string(),
            Goal::AtMost(v) => format!("<= {v} {short}"),
            Goal::RateAtLeast(r) => format!(">= {} {short}", thousands(r)),
            Goal::RateAndRatio(r, x) => format!(">= {} {short}, >= {x}x", thousands(r)),
        }
    }

    fn verdict(self, median: f64, ratio: Option<f64>) -> &'static str {
        let met = match self {
            Goal::Informational => return "-",
            Goal::AtMost(v) => median <= v,
            Goal::RateAtLeast(r) => median >= r,
            Goal::RateAndRatio(r, x) => median >= r && ratio.is_some_and(|q| q >= x),
        };
        if met { "ok" } else { "below goal" }
    }
}

/// One line of the table: the measurement per run, and its baseline's.
struct Row {
    name: String,
    unit: Unit,
    runs: Vec<f64>,
    baseline: Option<Vec<f64>>,
    goal: Goal,
}

impl Row {
    fn median(&self) -> f64 {
        median(&self.runs)
    }

    fn baseline_median(&self) -> Option<f64> {
        self.baseline.as_deref().map(median)
    }

    fn ratio(&self) -> Option<f64> {
        Some(self.median() / self.baseline_median()?)
    }

    fn record(&self) -> Record<'_> {
        Record {
            name: &self.name,
            unit: self.unit.name(),
            median: self.median(),
            runs: &self.runs,
            baseline_median: self.baseline_median(),
            ratio: self.ratio(),
            goal: self.goal.describe(self.unit),
        }
    }
}

/// Where the commands' time goes, gathered along the way and printed after the table.
#[derive(Default)]
struct Breakdown {
    /// Median microseconds per call of each guest-side step, measured alone.
    steps: Vec<(&'static str, f64)>,
    /// 1e6 / median rate: microseconds per sequential command and per raw append.
    sequential_command_us: f64,
    sequential_append_us: f64,
    /// CPU time by thread group for each workload, [1 caller, concurrent callers].
    cpu: [[GroupCpu; Work::ALL.len()]; 2],
}

/// What the command section times.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Work {
    /// Deposit commands through the `CommandService`.
    Commands,
    /// Raw `store.append` of the event a deposit appends: the baseline.
    Appends,
    /// Raw `store.append_command`: the same, plus the command record the service writes.
    AppendCommands,
    /// Deposit commands through a `CommandService` that journals nothing
    /// (`--journal-days 0`), on the other half of the accounts: what the
    /// command journal costs.
    CommandsNoJournal,
}

impl Work {
    const ALL: [Work; 4] = [
        Work::Commands,
        Work::Appends,
        Work::AppendCommands,
        Work::CommandsNoJournal,
    ];

    fn short(self) -> &'static str {
        match self {
            Work::Commands => "command",
            Work::Appends => "append",
            Work::AppendCommands => "app_cmd",
            Work::CommandsNoJournal => "no_jrnl",
        }
    }
}

fn main() -> Result<()> {
    let bench = Bench::start("runtime")?;
    let sizes = Sizes::for_mode(bench.mode);
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());

    let started = Instant::now();
    let runtime = Arc::new(Runtime::new(RuntimeConfig {
        compile: CompileConfig {
            worker: Some(env!("CARGO_BIN_EXE_refold").into()),
            ..CompileConfig::default()
        },
        ..RuntimeConfig::default()
    })?);
    let wasi_bytes = read_guest(refold_test_guests::BANK_ACCOUNT)?;
    let plain_bytes = read_guest(refold_test_guests::BANK_ACCOUNT_NO_WASI)?;
    let wasi = load(&tokio, &runtime, &wasi_bytes)?;
    let plain = load(&tokio, &runtime, &plain_bytes)?;
    ensure!(wasi.imports_wasi(), "BANK_ACCOUNT should import WASI");
    ensure!(
        !plain.imports_wasi(),
        "BANK_ACCOUNT_NO_WASI should not import WASI"
    );
    println!(
        "refold runtime benchmark ({} mode): bank-account component {} KiB (WASI), {} KiB (no WASI); {cores} cores, {} guest threads",
        bench.mode.name(),
        wasi_bytes.len() / 1024,
        plain_bytes.len() / 1024,
        runtime.config().guest_threads,
    );

    let mut rows = Vec::new();
    let mut breakdown = Breakdown::default();
    rows.extend(measure_instantiation(&sizes, &wasi, &plain)?);
    rows.extend(measure_replay(&sizes, &wasi, &plain)?);
    rows.extend(tokio.block_on(measure_commands(
        &sizes,
        &bench.scratch,
        runtime.clone(),
        wasi_bytes,
        &mut breakdown,
    ))?);

    print_table(&rows);
    print_breakdown(&breakdown, &sizes, cores);
    let records: Vec<Record> = rows.iter().map(Row::record).collect();
    bench.finish(&records, started)
}

// ---------------------------------------------------------------------------
// 1. Instantiation.

/// A fresh instance per call: `initial_state` instantiates, then runs a tiny call
/// (encoding a default state to a few bytes), so this is instantiation plus the
/// smallest round trip into the guest.
fn measure_instantiation(
    sizes: &Sizes,
    wasi: &AggregateModule,
    plain: &AggregateModule,
) -> Result<Vec<Row>> {
    let expected = codec::encode_state(&BankAccount::default());
    ensure!(
        wasi.initial_state()? == expected && plain.initial_state()? == expected,
        "the components' initial state differs from the native one"
    );
    let mut rows = Vec::new();
    for (what, module) in [("WASI", wasi), ("no WASI", plain)] {
        let runs = time_calls(sizes, || {
            black_box(module.initial_state()?);
            Ok(())
        })?;
        rows.push(Row {
            name: format!("fresh instance + initial_state (tiny call), {what}"),
            unit: Unit::MicrosPerCall,
            runs,
            baseline: None,
            goal: Goal::AtMost(10.0),
        });
    }
    Ok(rows)
}

// ---------------------------------------------------------------------------
// 2. Replay.

/// Replays the same events through each component and natively, in batches of
/// `APPLY_BATCH`; each run makes whole passes over the events (as many as the
/// first pass says fit in `replay_run`), the variants alternating run by run.
fn measure_replay(
    sizes: &Sizes,
    wasi: &AggregateModule,
    plain: &AggregateModule,
) -> Result<Vec<Row>> {
    let events = bank_events(sizes.replay_events);
    let initial = codec::encode_state(&BankAccount::default());

    // A first pass of each: the check that all three agree, and the calibration.
    let start = Instant::now();
    let native_state = native_replay(&initial, &events)?;
    let native_pass = start.elapsed();
    let start = Instant::now();
    let wasi_state = wasm_replay(wasi, &initial, &events)?;
    let wasm_pass = start.elapsed();
    let plain_state = wasm_replay(plain, &initial, &events)?;
    assert_eq!(
        wasi_state, native_state,
        "the WASI component and native code replay to different states"
    );
    assert_eq!(
        plain_state, native_state,
        "the component without WASI and native code replay to different states"
    );
    let final_state: BankAccount =
        codec::decode_state(&native_state).map_err(anyhow::Error::msg)?;
    ensure!(
        final_state.status == Status::Open
            && final_state.deposits + final_state.withdrawals + 1 == events.len() as u64,
        "the replayed account did not see every event"
    );
    let passes = if sizes.replay_run.is_zero() {
        1
    } else {
        (sizes.replay_run.as_secs_f64() / wasm_pass.as_secs_f64()).ceil() as usize
    }
    .clamp(1, 50);

    let (mut wasi_runs, mut plain_runs, mut native_runs) = (Vec::new(), Vec::new(), Vec::new());
    let timed = |f: &dyn Fn() -> Result<Vec<u8>>| -> Result<f64> {
        let start = Instant::now();
        for _ in 0..passes {
            black_box(f()?);
        }
        Ok(rate(events.len() * passes, start.elapsed()))
    };
    for _ in 0..sizes.runs {
        wasi_runs.push(timed(&|| wasm_replay(wasi, &initial, &events))?);
        native_runs.push(timed(&|| native_replay(&initial, &events))?);
        plain_runs.push(timed(&|| wasm_replay(plain, &initial, &events))?);
    }
    println!(
        "replay: {} events ({} passes per run), final state {} bytes, identical in Wasm and native; first pass {:.0} ms Wasm, {:.0} ms native",
        thousands(events.len() as f64),
        passes,
        native_state.len(),
        wasm_pass.as_secs_f64() * 1e3,
        native_pass.as_secs_f64() * 1e3,
    );
    let name = |what: &str| {
        format!(
            "replay {} events, batches of {APPLY_BATCH}, {what} (vs native)",
            thousands(events.len() as f64)
        )
    };
    Ok(vec![
        Row {
            name: name("WASI"),
            unit: Unit::EventsPerSec,
            runs: wasi_runs,
            baseline: Some(native_runs.clone()),
            goal: Goal::RateAndRatio(1_000_000.0, 0.3),
        },
        Row {
            name: name("no WASI"),
            unit: Unit::EventsPerSec,
            runs: plain_runs,
            baseline: Some(native_runs),
            goal: Goal::RateAndRatio(1_000_000.0, 0.3),
        },
    ])
}

/// One fresh instance per batch, as the host replays a stream.
fn wasm_replay(
    module: &AggregateModule,
    initial: &[u8],
    events: &[StreamEvent],
) -> Result<Vec<u8>> {
    let mut state = initial.to_vec();
    for batch in events.chunks(APPLY_BATCH) {
        state = module.apply(&state, batch, &[1; APPLY_BATCH][..batch.len()])?;
    }
    Ok(state)
}

/// The component's own `apply`, compiled natively, over the same batches.
fn native_replay(initial: &[u8], events: &[StreamEvent]) -> Result<Vec<u8>> {
    let mut state = initial.to_vec();
    for batch in events.chunks(APPLY_BATCH) {
        state = codec::apply::<BankAccount>(
            &state,
            batch
                .iter()
                .map(|e| (e.event_type.as_str(), e.data.as_str())),
        )
        .map_err(anyhow::Error::msg)?;
    }
    Ok(state)
}

// ---------------------------------------------------------------------------
// 3. Durable commands in process.

/// A store with the bank-account module active and `aggregates` open accounts,
/// plus as many raw streams (one event each) for the append baseline.
struct CommandBench {
    _dir: TempDir,
    store: Store,
    service: Arc<CommandService>,
    /// The same service without the command journal; it takes the odd
    /// accounts, `service` the even ones, so neither's state cache is
    /// invalidated by the other's appends.
    service_no_journal: Arc<CommandService>,
    module: AggregateModule,
    runtime: Arc<Runtime>,
    accounts: Arc<Vec<String>>,
    raw_streams: Arc<Vec<StreamId>>,
    /// Round-robin over the accounts (and raw streams), carried across runs.
    next: Arc<AtomicUsize>,
}

async fn measure_commands(
    sizes: &Sizes,
    scratch: &Path,
    runtime: Arc<Runtime>,
    module_bytes: Vec<u8>,
    breakdown: &mut Breakdown,
) -> Result<Vec<Row>> {
    let setup = Instant::now();
    let bench = open_command_bench(sizes, scratch, runtime, module_bytes).await?;
    println!(
        "commands: {} accounts opened and {} raw streams created in {:.1} s (not timed)",
        thousands(bench.accounts.len() as f64),
        thousands(bench.raw_streams.len() as f64),
        setup.elapsed().as_secs_f64()
    );

    let callers = sizes.concurrent_callers;
    // runs[concurrency][work]: rates per run, 1 caller then `callers` callers.
    let mut runs: [[Vec<f64>; Work::ALL.len()]; 2] = Default::default();
    // Alternating run by run, so a drift in the disk's speed affects all alike.
    for _ in 0..sizes.runs {
        for (c, (n_callers, total)) in [
            (1, sizes.sequential_commands),
            (callers, sizes.concurrent_commands),
        ]
        .into_iter()
        .enumerate()
        {
            for (w, work) in Work::ALL.into_iter().enumerate() {
                let cpu = &mut breakdown.cpu[c][w];
                runs[c][w].push(run_work(&bench, work, n_callers, total, cpu).await?);
            }
        }
    }
    breakdown.sequential_command_us = 1e6 / median(&runs[0][0]);
    breakdown.sequential_append_us = 1e6 / median(&runs[0][1]);
    measure_steps(sizes, &bench, breakdown).await?;
    bench.store.close().await;

    let accounts = thousands(bench.accounts.len() as f64);
    let [
        [seq, seq_raw, seq_raw_command, seq_no_journal],
        [conc, conc_raw, conc_raw_command, conc_no_journal],
    ] = runs;
    Ok(vec![
        Row {
            name: format!("deposit commands, fsync, 1 caller, {accounts} accounts (vs raw append)"),
            unit: Unit::CommandsPerSec,
            runs: seq.clone(),
            baseline: Some(seq_raw),
            goal: Goal::Informational,
        },
        Row {
            name: "deposit commands journaled, 1 caller (vs journal off)".to_string(),
            unit: Unit::CommandsPerSec,
            runs: seq,
            baseline: Some(seq_no_journal),
            goal: Goal::Informational,
        },
        Row {
            name: "  raw append_command (with command record), 1 caller".to_string(),
            unit: Unit::CommandsPerSec,
            runs: seq_raw_command,
            baseline: None,
            goal: Goal::Informational,
        },
        Row {
            name: format!(
                "deposit commands, fsync, {callers} callers, {accounts} accounts (vs raw append)"
            ),
            unit: Unit::CommandsPerSec,
            runs: conc.clone(),
            baseline: Some(conc_raw),
            goal: Goal::RateAtLeast(10_000.0),
        },
        Row {
            name: format!("deposit commands journaled, {callers} callers (vs journal off)"),
            unit: Unit::CommandsPerSec,
            runs: conc,
            baseline: Some(conc_no_journal),
            goal: Goal::Informational,
        },
        Row {
            name: format!("  raw append_command (with command record), {callers} callers"),
            unit: Unit::CommandsPerSec,
            runs: conc_raw_command,
            baseline: None,
            goal: Goal::Informational,
        },
    ])
}

/// Runs `total` operations of `work` from `callers` concurrent tasks and adds
/// the CPU each thread used meanwhile to `cpu`.
async fn run_work(
    bench: &CommandBench,
    work: Work,
    callers: usize,
    total: usize,
    cpu: &mut GroupCpu,
) -> Result<f64> {
    match work {
        Work::Commands => run_commands(bench, &bench.service, 0, callers, total, cpu).await,
        Work::CommandsNoJournal => {
            run_commands(bench, &bench.service_no_journal, 1, callers, total, cpu).await
        }
        Work::Appends => run_raw_appends(bench, callers, total, false, cpu).await,
        Work::AppendCommands => run_raw_appends(bench, callers, total, true, cpu).await,
    }
}

async fn open_command_bench(
    sizes: &Sizes,
    scratch: &Path,
    runtime: Arc<Runtime>,
    module_bytes: Vec<u8>,
) -> Result<CommandBench> {
    let dir = tempdir(scratch)?;
    // The default durability, spelled out.
    let store =
        Store::open(StoreConfig::new(dir.path().join("store")).durability(Durability::Fsync))?;
    let backend = Backend::sled(store.clone(), dir.path().join("modules"))?;
    let registry = Arc::new(ModuleRegistry::open(backend.clone(), runtime.clone()).await?);
    let (_, loaded) = registry
        .upload(AGGREGATE_TYPE, MODULE_VERSION, module_bytes, true, false)
        .await?;
    let module = loaded
        .aggregate()
        .expect("bank-account is an aggregate")
        .clone();
    let service = Arc::new(CommandService::new(
        backend.clone(),
        registry.clone(),
        CommandConfig::default(),
    ));
    let service_no_journal = Arc::new(CommandService::new(
        backend.clone(),
        registry,
        CommandConfig {
            journal: false,
            ..CommandConfig::default()
        },
    ));
    let accounts: Arc<Vec<String>> = Arc::new(
        (0..sizes.aggregates)
            .map(|n| format!("acc-{n:06}"))
            .collect(),
    );
    let raw_streams: Arc<Vec<StreamId>> = Arc::new(
        (0..sizes.aggregates)
            .map(|n| StreamId::new(AGGREGATE_TYPE, format!("raw-{n:06}")))
            .collect::<Result<_, _>>()?,
    );

    let next = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..SETUP_TASKS)
        .map(|_| {
            let (service, store, accounts, raw_streams, next) = (
                service.clone(),
                store.clone(),
                accounts.clone(),
                raw_streams.clone(),
                next.clone(),
            );
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= accounts.len() {
                        return anyhow::Ok(());
                    }
                    let outcome = service
                        .execute(CommandRequest {
                            aggregate_type: AGGREGATE_TYPE.to_string(),
                            aggregate_id: accounts[i].clone(),
                            command: format!(r#"{{"type":"Open","owner":"Owner {i}"}}"#),
                            ..Default::default()
                        })
                        .await?;
                    ensure!(outcome.version == 1, "account {} was not new", accounts[i]);
                    store
                        .append(&raw_streams[i], ExpectedVersion::Any, vec![raw_event(i, 0)])
                        .await?;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    Ok(CommandBench {
        _dir: dir,
        store,
        service,
        service_no_journal,
        module,
        runtime,
        accounts,
        raw_streams,
        next: Arc::new(AtomicUsize::new(0)),
    })
}

/// `total` deposits from `callers` concurrent tasks through `service`, round-robin over the accounts whose
/// index has the parity `half` (0 or 1).
async fn run_commands(
    bench: &CommandBench,
    service: &Arc<CommandService>,
    half: usize,
    callers: usize,
    total: usize,
    cpu: &mut GroupCpu,
) -> Result<f64> {
    let tasks = split(total, callers).into_iter().map(|count| {
        let (service, accounts, next) =
            (service.clone(), bench.accounts.clone(), bench.next.clone());
        async move {
            for _ in 0..count {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let i = (n * 2 + half) % accounts.len();
                let outcome = service
                    .execute(CommandRequest {
                        aggregate_type: AGGREGATE_TYPE.to_string(),
                        aggregate_id: accounts[i].clone(),
                        command: DEPOSIT.to_string(),
                        ..Default::default()
                    })
                    .await?;
                ensure!(
                    outcome.events.len() == 1,
                    "a deposit should produce one event"
                );
            }
            anyhow::Ok(())
        }
    });
    run_tasks(tasks, total, cpu).await
}

/// `total` raw single-event appends (`ExpectedVersion::Any`) from `callers`
/// concurrent tasks, round-robin over the raw streams. The events, built before
/// the clock starts, are what a deposit command appends: the same data shape and
/// metadata. With `command_record`, through `append_command` under the event's
/// command id, as the service appends.
async fn run_raw_appends(
    bench: &CommandBench,
    callers: usize,
    total: usize,
    command_record: bool,
    cpu: &mut GroupCpu,
) -> Result<f64> {
    let counts = split(total, callers);
    let work: Vec<Vec<NewEvent>> = counts
        .iter()
        .enumerate()
        .map(|(t, &count)| (0..count).map(|k| raw_event(t, k + 1)).collect())
        .collect();
    let tasks = work.into_iter().map(|events| {
        let (store, streams, next) = (
            bench.store.clone(),
            bench.raw_streams.clone(),
            bench.next.clone(),
        );
        async move {
            for event in events {
                let i = next.fetch_add(1, Ordering::Relaxed) % streams.len();
                if command_record {
                    let command_id = event.metadata.command_id.clone().unwrap_or_default();
                    store
                        // With a request fingerprint, as the service records one.
                        .append_command(
                            &streams[i],
                            ExpectedVersion::Any,
                            vec![event],
                            &command_id,
                            Some([7; 32]),
                            None,
                        )
                        .await?;
                } else {
                    store
                        .append(&streams[i], ExpectedVersion::Any, vec![event])
                        .await?;
                }
            }
            anyhow::Ok(())
        }
    });
    run_tasks(tasks, total, cpu).await
}

/// Spawns `tasks` on tokio after the clock starts and waits for them all:
/// `total` operations per second. Adds the CPU each thread used meanwhile to `cpu`.
async fn run_tasks<F>(
    tasks: impl IntoIterator<Item = F>,
    total: usize,
    cpu: &mut GroupCpu,
) -> Result<f64>
where
    F: Future<Output = Result<()>> + Send + 'static,
{
    let before = ThreadTimes::sample();
    let start = Instant::now();
    let handles: Vec<_> = tasks.into_iter().map(tokio::spawn).collect();
    for handle in handles {
        handle.await??;
    }
    let elapsed = start.elapsed();
    cpu.add(&before, &ThreadTimes::sample(), total);
    Ok(rate(total, elapsed))
}

/// The steps of one command, each measured alone: the two guest calls (each a
/// fresh instance), a hand-off to the guest pool and back, and the stream read
/// that checks a cached state is current.
async fn measure_steps(
    sizes: &Sizes,
    bench: &CommandBench,
    breakdown: &mut Breakdown,
) -> Result<()> {
    let state = codec::encode_state(&BankAccount {
        status: Status::Open,
        owner: "Ada".into(),
        balance: 100_000,
        ..Default::default()
    });
    let context = CommandContext {
        aggregate_type: AGGREGATE_TYPE.to_string(),
        aggregate_id: "acc-000000".to_string(),
        command_id: uuid::Uuid::now_v7().to_string(),
        correlation_id: uuid::Uuid::now_v7().to_string(),
        received_at_ms: 1_700_000_000_000,
    };
    let event = vec![StreamEvent {
        version: 2,
        event_id: uuid::Uuid::now_v7().to_string(),
        event_type: "Deposited".to_string(),
        data: r#"{"amount":100,"balance":100100}"#.to_string(),
    }];
    let module = &bench.module;
    // Guest calls are blocking CPU work: off the reactor, as the service keeps them.
    let steps = tokio::task::block_in_place(|| -> Result<Vec<(&'static str, f64)>> {
        let handle = time_calls(sizes, || {
            let decided = module
                .handle(&state, DEPOSIT, &context)?
                .map_err(|e| anyhow!("the deposit was refused: {e:?}"))?;
            ensure!(decided.len() == 1, "a deposit decides one event");
            Ok(())
        })?;
        let apply = time_calls(sizes, || {
            black_box(module.apply(&state, &event, &[1])?);
            Ok(())
        })?;
        Ok(vec![
            ("handle (fresh instance + call)", median(&handle)),
            ("apply 1 event (fresh instance + call)", median(&apply)),
        ])
    })?;
    breakdown.steps.extend(steps);

    // A hand-off to the guest pool and back, from a tokio worker as the service does it.
    let runtime = bench.runtime.clone();
    let hops = sizes.call_loop;
    let hop_us = tokio::spawn(async move {
        let (mut calls, start) = (0u32, Instant::now());
        while start.elapsed() < hops {
            runtime.pool().run("bench", || ()).await;
            calls += 1;
        }
        start.elapsed().as_secs_f64() * 1e6 / f64::from(calls.max(1))
    })
    .await?;
    breakdown
        .steps
        .push(("guest pool hand-off and back (empty job)", hop_us));

    let stream = StreamId::new(AGGREGATE_TYPE, bench.accounts[0].clone())?;
    let version = bench.store.stream_version(&stream)?;
    let start = Instant::now();
    let mut reads = 0u32;
    while start.elapsed() < hops {
        black_box(bench.store.read_stream(
            &stream,
            version + 1,
            Direction::Forward,
            APPLY_BATCH,
        )?);
        reads += 1;
    }
    breakdown.steps.push((
        "read_stream past the head (cache check)",
        start.elapsed().as_secs_f64() * 1e6 / f64::from(reads.max(1)),
    ));
    Ok(())
}

// ---------------------------------------------------------------------------
// Test data and helpers.

/// `n` events of one account: opened, then deposits and withdrawals with
/// varying amounts and the running balance, each encoded exactly as the
/// component's `handle` encodes it.
fn bank_events(n: usize) -> Vec<StreamEvent> {
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut random = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut balance = 0i64;
    (0..n)
        .map(|i| {
            let event = if i == 0 {
                Event::Opened {
                    owner: "Ada Lovelace".into(),
                    overdraft_limit: 50_000,
                }
            } else {
                let amount = 100 + (random() % 250_000) as i64;
                if random() % 3 == 0 && balance >= amount {
                    balance -= amount;
                    Event::Withdrawn { amount, balance }
                } else {
                    balance += amount;
                    Event::Deposited { amount, balance }
                }
            };
            let parts = codec::encode_event(&event).expect("bank events encode");
            StreamEvent {
                version: i as u64 + 1,
                event_id: uuid::Uuid::now_v7().to_string(),
                event_type: parts.event_type,
                data: parts.data,
            }
        })
        .collect()
}

/// A `Deposited` event with the metadata a deposit command's event carries.
fn raw_event(stream: usize, n: usize) -> NewEvent {
    let command_id = uuid::Uuid::now_v7().to_string();
    let data = format!(
        r#"{{"amount":100,"balance":{}}}"#,
        100 * (stream + n + 1) as i64
    );
    let mut event = NewEvent::new("Deposited", data.clone());
    event.metadata = EventMetadata {
        correlation_id: Some(command_id.clone()),
        causation_id: Some(command_id.clone()),
        command_id: Some(command_id),
        producer: Some(format!("{AGGREGATE_TYPE}@{MODULE_VERSION}")),
        extra: [(STATE_DIGEST_KEY.to_string(), state_digest(data.as_bytes()))].into(),
    };
    event
}

/// `total` split over `parts` as evenly as possible.
fn split(total: usize, parts: usize) -> Vec<usize> {
    let parts = parts.max(1);
    (0..parts)
        .map(|p| total / parts + usize::from(p < total % parts))
        .filter(|&n| n > 0)
        .collect()
}

fn read_guest(path: &str) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading the guest component {path}"))
}

fn load(
    tokio: &tokio::runtime::Runtime,
    runtime: &Runtime,
    bytes: &[u8],
) -> Result<AggregateModule> {
    let digest: [u8; 32] = Sha256::digest(bytes).into();
    match tokio.block_on(runtime.load(bytes.into(), &digest, "bank-account@1.0.0"))? {
        Guest::Aggregate(module) => Ok(module),
        Guest::Projection(_) | Guest::Process(_) => bail!("bank-account is not an aggregate"),
    }
}

/// Microseconds per call of `call`, per run: each run makes as many calls as a
/// short warm-up says fit in `call_loop`.
fn time_calls(sizes: &Sizes, mut call: impl FnMut() -> Result<()>) -> Result<Vec<f64>> {
    let warm_up = (sizes.call_loop / 10).max(Duration::from_millis(5));
    let (mut calls, start) = (0usize, Instant::now());
    while start.elapsed() < warm_up {
        call()?;
        calls += 1;
    }
    let per_call = start.elapsed().as_secs_f64() / calls as f64;
    let calls = ((sizes.call_loop.as_secs_f64() / per_call) as usize).max(10);
    let mut runs = Vec::with_capacity(sizes.runs);
    for _ in 0..sizes.runs {
        let start = Instant::now();
        for _ in 0..calls {
            call()?;
        }
        runs.push(start.elapsed().as_secs_f64() * 1e6 / calls as f64);
    }
    Ok(runs)
}

// ---------------------------------------------------------------------------
// Reporting.

const TABLE: Table = Table {
    name_width: 70,
    columns: &[
        Column::number("median", 12),
        Column::text("unit", 10),
        Column::number("baseline", 12),
    ],
    goal_width: 24,
    rule: 150,
};

fn print_table(rows: &[Row]) {
    TABLE.print(rows.iter().map(|row| Line {
        name: &row.name,
        cells: vec![
            row.unit.format(row.median()),
            row.unit.name().to_string(),
            row.baseline_median()
                .map_or("-".to_string(), |b| row.unit.format(b)),
        ],
        ratio: row.ratio(),
        goal: row.goal.describe(row.unit),
        verdict: row.goal.verdict(row.median(), row.ratio()),
    }));
}

fn print_breakdown(breakdown: &Breakdown, sizes: &Sizes, cores: usize) {
    println!("\nwhere a command's time goes, 1 caller (microseconds per command):");
    println!(
        "  {:<52} {:>8.0}",
        "deposit command, measured (1e6 / median rate)", breakdown.sequential_command_us
    );
    println!(
        "  {:<52} {:>8.0}",
        "  raw append of its event, fsync (1e6 / median rate)", breakdown.sequential_append_us
    );
    let mut rest = breakdown.sequential_command_us - breakdown.sequential_append_us;
    for &(step, us) in &breakdown.steps {
        // A command hands off to the guest pool twice (handle, apply).
        let (label, times) = if step.starts_with("guest pool") {
            (format!("  {step} x2"), 2.0)
        } else {
            (format!("  {step}"), 1.0)
        };
        println!("  {label:<52} {:>8.1}", us * times);
        rest -= us * times;
    }
    println!(
        "  {:<52} {:>8.0}",
        "  rest: record, read-back, checks, tokio (fsync noise)", rest
    );

    let all = breakdown.cpu.iter().flatten();
    if no_thread_times(all.clone()) {
        return;
    }
    println!(
        "\nCPU per operation by thread (microseconds), 1 caller | {} callers:",
        sizes.concurrent_callers
    );
    let mut header = format!("  {:<18}", "thread");
    for c in 0..2 {
        header.push_str(if c == 0 { "" } else { " |" });
        for work in Work::ALL {
            header.push_str(&format!(" {:>8}", work.short()));
        }
    }
    println!("{header}");
    let mut groups: Vec<&String> = all.clone().flat_map(|cpu| cpu.groups.keys()).collect();
    groups.sort();
    groups.dedup();
    let line = |label: &str, value: &dyn Fn(&GroupCpu) -> f64| {
        let mut out = format!("  {label:<18}");
        for (c, row) in breakdown.cpu.iter().enumerate() {
            out.push_str(if c == 0 { "" } else { " |" });
            for cpu in row {
                out.push_str(&format!(" {:>8.1}", value(cpu)));
            }
        }
        println!("{out}");
    };
    for group in groups {
        if all.clone().all(|cpu| cpu.per_unit_us(group) < 0.5) {
            continue;
        }
        line(group, &|cpu| cpu.per_unit_us(group));
    }
    line("total", &|cpu| cpu.total_us());
    let concurrent = &breakdown.cpu[1];
    println!(
        "  CPU-bound ceiling at {} callers on {cores} cores: {} commands/s, {} appends/s",
        sizes.concurrent_callers,
        thousands(cores as f64 * 1e6 / concurrent[0].total_us().max(1e-9)),
        thousands(cores as f64 * 1e6 / concurrent[1].total_us().max(1e-9)),
    );
}
