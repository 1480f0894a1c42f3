//! Projection benchmark: replaying the log through a Wasm projection with its
//! read-model writes, next to the same logic compiled natively over the same
//! events (issue 5's goal).
//!
//! - The store holds bank events of many accounts (`bank-account`: each account
//!   opened, then deposits and withdrawals with the running balance), appended
//!   10 events per account at a time by concurrent appenders, so the log
//!   interleaves accounts as real traffic does and every batch of the
//!   projection touches many keys.
//! - Refold: the real projection runner. `account-balances` is uploaded to a
//!   `ModuleRegistry` watched by a `ProjectionService` (default config: batches
//!   of 1000 events); a run is a forced `rebuild`, timed from the call until
//!   the version's position reaches the head of the log. The replay after the
//!   upload (which compiles the component) is the warm-up and is reported apart.
//! - Baseline: the same events read from the store with `read_all` in pages of
//!   1000 (the store read is timed), each page converted to `RawEvent`s and
//!   applied by `refold_sdk::codec::apply_projection_native::<AccountBalances>`
//!   to an in-memory map: the very code the component runs, compiled natively,
//!   same batches. A second baseline also writes each batch's changed documents
//!   and a checkpoint to a plain sled tree in one `apply_batch`, as the runner
//!   commits. The Wasm read model must end identical to the native map.
//! - Then where a batch's time goes: each step of a runner's batch timed alone
//!   (log read, conversion, guest `apply`, commit), and CPU per event by thread.
//!
//! `cargo bench -p refold --bench projection` runs the full benchmark (cargo
//! passes `--bench`). Without `--bench` (as under `cargo test --all-targets`) it
//! runs a smoke version with small sizes, to check that the benchmark still works.
//!
//! Output: a table on stdout, and one JSON line per result appended to
//! `bench-results/projection.jsonl` (smoke: `bench-results/projection-smoke.jsonl`).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::hint::black_box;
use std::ops::Bound;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use account_balances::AccountBalances;
use anyhow::{Context, Result, bail, ensure};
use bank_account::Event;
use refold::modules::ModuleRegistry;
use refold::projections::{Documents, ProjectionConfig, ProjectionService, to_guest};
use refold::runtime::{
    CompileConfig, DocumentChanges, DocumentSource, GuestRecordedEvent, ProjectionModule, Runtime,
    RuntimeConfig,
};
use refold::store::{
    Backend, Durability, EventFilter, ExpectedVersion, MAX_EVENTS_PER_APPEND, NewEvent,
    ProjectionCheckpoint, RecordedEvent, Store, StoreConfig, StreamId,
};
use refold_sdk::Projection;
use refold_sdk::codec::{self, RawEvent};

use common::{
    Bench, Column, GroupCpu, Line, Mode, Record, Table, ThreadTimes, median, no_thread_times, rate,
    tempdir, thousands,
};

const AGGREGATE_TYPE: &str = "bank-account";
const PROJECTION: &str = "account-balances";
const VERSION: &str = "1.0.0";
/// Events per account: one `Opened`, then deposits and withdrawals.
const EVENTS_PER_ACCOUNT: usize = 100;
/// Events of one account per append: appenders go round their accounts this many at a time.
const EVENTS_PER_APPEND: usize = 10;
/// Concurrent appenders while the store is filled (not timed).
const SETUP_TASKS: usize = 32;
/// How often the caught-up check polls the version's status.
const POLL: Duration = Duration::from_millis(2);
/// The longest one replay may take before the benchmark gives up.
const REPLAY_TIMEOUT: Duration = Duration::from_secs(600);
/// sled's page cache for the sled baseline: the store's default, so both cache alike.
const CACHE_BYTES: u64 = 256 << 20;

/// How much work each measurement does.
struct Sizes {
    runs: usize,
    events: usize,
}

impl Sizes {
    fn for_mode(mode: Mode) -> Sizes {
        match mode {
            Mode::Full => Sizes {
                runs: 5,
                events: 1_000_000,
            },
            Mode::Smoke => Sizes {
                runs: 1,
                events: 20_000,
            },
        }
    }
}

/// What a result is judged against.
#[derive(Clone, Copy)]
enum Goal {
    /// No goal: context for the other rows.
    Informational,
    /// The median must be at least this rate, and at least this ratio of the baseline.
    RateAndRatio(f64, f64),
}

impl Goal {
    fn describe(self) -> String {
        match self {
            Goal::Informational => "informational".to_string(),
            Goal::RateAndRatio(r, x) => format!(">= {} ev/s, >= {x}x", thousands(r)),
        }
    }

    fn verdict(self, median: f64, ratio: Option<f64>) -> &'static str {
        match self {
            Goal::Informational => "-",
            Goal::RateAndRatio(r, x) if median >= r && ratio.is_some_and(|q| q >= x) => "ok",
            Goal::RateAndRatio(..) => "below goal",
        }
    }
}

/// One line of the table: events per second per run, and its baseline's.
struct Row {
    name: String,
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
            unit: "events/s",
            median: self.median(),
            runs: &self.runs,
            baseline_median: self.baseline_median(),
            ratio: self.ratio(),
            goal: self.goal.describe(),
        }
    }
}

fn main() -> Result<()> {
    let bench = Bench::start("projection")?;
    let sizes = Sizes::for_mode(bench.mode);
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let started = Instant::now();

    let dir = tempdir(&bench.scratch)?;
    let store =
        Store::open(StoreConfig::new(dir.path().join("events")).durability(Durability::None))?;
    let backend = Backend::sled(store.clone(), dir.path().join("modules"))?;
    let setup = Instant::now();
    let accounts = tokio.block_on(fill(&store, sizes.events))?;
    let events = store.head() as usize;
    let fill_secs = setup.elapsed().as_secs_f64();

    let runtime = Arc::new(Runtime::new(RuntimeConfig {
        cache_dir: Some(dir.path().join("cache")),
        compile: CompileConfig {
            worker: Some(env!("CARGO_BIN_EXE_refold").into()),
            ..CompileConfig::default()
        },
        ..RuntimeConfig::default()
    })?);
    let bytes = std::fs::read(refold_test_guests::ACCOUNT_BALANCES).with_context(|| {
        format!(
            "reading the guest component {}",
            refold_test_guests::ACCOUNT_BALANCES
        )
    })?;
    let config = ProjectionConfig::default();
    let batch = config.batch.events;
    let filter = selector_filter();
    println!(
        "refold projection benchmark ({} mode): {} bank events of {} accounts ({EVENTS_PER_APPEND} events per append, {SETUP_TASKS} appenders; filled in {fill_secs:.1} s, not timed); {PROJECTION} component {} KiB; batches of {batch} events; {cores} cores, {} guest threads",
        bench.mode.name(),
        thousands(events as f64),
        thousands(accounts as f64),
        bytes.len() / 1024,
        runtime.config().guest_threads,
    );

    // The first replay: upload (compiles the component), then catch up.
    let (registry, service, first) = tokio.block_on(async {
        let registry = Arc::new(ModuleRegistry::open(backend.clone(), runtime.clone()).await?);
        let service = ProjectionService::start(backend.clone(), registry.clone(), config);
        let start = Instant::now();
        registry
            .upload(PROJECTION, VERSION, bytes, false, false)
            .await?;
        caught_up(&service, start).await?;
        anyhow::Ok((registry, service, start.elapsed()))
    })?;
    let (native_model, _) = native_replay(&store, &filter, batch, None)?;
    tokio.block_on(check_read_model(&service, &native_model))?;
    println!(
        "first replay after upload (compile included): {:.2} s; read model of {} documents, identical to the native one",
        first.as_secs_f64(),
        thousands(native_model.len() as f64),
    );

    // The timed runs, the three variants alternating run by run.
    let (mut wasm_runs, mut native_runs, mut sled_runs) = (Vec::new(), Vec::new(), Vec::new());
    let mut rebuild_calls = Vec::new();
    let mut cpu = GroupCpu::default();
    for _ in 0..sizes.runs {
        let before = ThreadTimes::sample();
        let (elapsed, rebuild_call) = tokio.block_on(rebuild(&service))?;
        cpu.add(&before, &ThreadTimes::sample(), events);
        wasm_runs.push(rate(events, elapsed));
        rebuild_calls.push(rebuild_call.as_secs_f64() * 1e3);

        let start = Instant::now();
        let (model, applied) = native_replay(&store, &filter, batch, None)?;
        native_runs.push(rate(events, start.elapsed()));
        ensure!(
            applied == events && model == native_model,
            "the native replay differs"
        );

        let sled_dir = tempdir(&bench.scratch)?;
        let db = sled::Config::new()
            .path(sled_dir.path())
            .cache_capacity(CACHE_BYTES)
            .mode(sled::Mode::HighThroughput)
            .open()?;
        let start = Instant::now();
        let (model, _) = native_replay(&store, &filter, batch, Some(&db))?;
        sled_runs.push(rate(events, start.elapsed()));
        ensure!(
            model == native_model && db.len() == native_model.len() + 1,
            "the native replay with sled writes differs"
        );
        drop(db);
    }
    tokio.block_on(check_read_model(&service, &native_model))?;

    let module = registry
        .get(PROJECTION, VERSION)
        .and_then(|m| m.projection().cloned())
        .context("account-balances is not a loaded projection")?;
    let steps = measure_steps(&backend, &module, &filter, batch)?;
    tokio.block_on(service.shutdown());
    tokio.block_on(store.close());

    let name = format!(
        "replay {} bank events through {PROJECTION}",
        thousands(events as f64)
    );
    let rows = vec![
        Row {
            name: format!("{name}, Wasm + sled read model (vs native, in-memory map)"),
            runs: wasm_runs.clone(),
            baseline: Some(native_runs.clone()),
            goal: Goal::RateAndRatio(500_000.0, 0.3),
        },
        Row {
            name: format!("{name}, Wasm + sled read model (vs native + sled writes)"),
            runs: wasm_runs.clone(),
            baseline: Some(sled_runs),
            goal: Goal::Informational,
        },
        Row {
            name: format!("{name}, first replay after upload, compile included"),
            runs: vec![rate(events, first)],
            baseline: None,
            goal: Goal::Informational,
        },
    ];
    print_table(&rows);
    print_breakdown(
        &steps,
        batch,
        median(&wasm_runs),
        median(&native_runs),
        median(&rebuild_calls),
        &cpu,
    );
    let records: Vec<Record> = rows.iter().map(Row::record).collect();
    drop(dir);
    bench.finish(&records, started)
}

// ---------------------------------------------------------------------------
// The log.

/// Fills the store with `events` bank events (`EVENTS_PER_ACCOUNT` per
/// account); returns the number of accounts. Each appender owns some accounts
/// and goes round them `EVENTS_PER_APPEND` events at a time, so the log
/// interleaves accounts. Not timed.
async fn fill(store: &Store, events: usize) -> Result<usize> {
    const { assert!(EVENTS_PER_APPEND <= MAX_EVENTS_PER_APPEND) };
    const { assert!(EVENTS_PER_ACCOUNT.is_multiple_of(EVENTS_PER_APPEND)) };
    let accounts = (events / EVENTS_PER_ACCOUNT).max(1);
    let tasks: Vec<_> = (0..SETUP_TASKS.min(accounts))
        .map(|t| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut owned: Vec<AccountEvents> = (t..accounts)
                    .step_by(SETUP_TASKS)
                    .map(AccountEvents::new)
                    .collect::<Result<_>>()?;
                for _ in 0..EVENTS_PER_ACCOUNT / EVENTS_PER_APPEND {
                    for account in &mut owned {
                        let (expected, events) = account.next(EVENTS_PER_APPEND)?;
                        store
                            .append(&account.stream, ExpectedVersion::Exact(expected), events)
                            .await?;
                    }
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    ensure!(
        store.head() as usize == accounts * EVENTS_PER_ACCOUNT,
        "the log holds {} events, not {}",
        store.head(),
        accounts * EVENTS_PER_ACCOUNT
    );
    Ok(accounts)
}

/// One account's events, made as its appender goes: opened, then deposits and
/// withdrawals with varying amounts and the running balance, each encoded
/// exactly as the `bank-account` component's `handle` encodes it.
struct AccountEvents {
    index: usize,
    stream: StreamId,
    written: u64,
    balance: i64,
    seed: u64,
}

impl AccountEvents {
    fn new(index: usize) -> Result<AccountEvents> {
        Ok(AccountEvents {
            index,
            stream: StreamId::new(AGGREGATE_TYPE, format!("acc-{index:07}"))?,
            written: 0,
            balance: 0,
            seed: 0x2545_f491_4f6c_dd1d ^ (index as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
        })
    }

    fn random(&mut self) -> u64 {
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        self.seed
    }

    /// The stream's version before them, and the next `n` events.
    fn next(&mut self, n: usize) -> Result<(u64, Vec<NewEvent>)> {
        let before = self.written;
        let mut events = Vec::with_capacity(n);
        for _ in 0..n {
            let event = if self.written == 0 {
                Event::Opened {
                    owner: format!("Owner {}", self.index),
                    overdraft_limit: 0,
                }
            } else {
                let amount = 100 + (self.random() % 250_000) as i64;
                if self.random().is_multiple_of(3) && self.balance >= amount {
                    self.balance -= amount;
                    Event::Withdrawn {
                        amount,
                        balance: self.balance,
                    }
                } else {
                    self.balance += amount;
                    Event::Deposited {
                        amount,
                        balance: self.balance,
                    }
                }
            };
            let parts = codec::encode_event(&event).map_err(anyhow::Error::msg)?;
            events.push(NewEvent::new(parts.event_type, parts.data));
            self.written += 1;
        }
        Ok((before, events))
    }
}

/// The log filter the runner derives from the projection's selector.
fn selector_filter() -> EventFilter {
    let selector = AccountBalances::subscription();
    EventFilter {
        event_types: selector.event_types,
        aggregate_types: selector.aggregate_types,
    }
}

// ---------------------------------------------------------------------------
// Refold: the projection runner.

/// Waits until `account-balances@1.0.0` has processed the whole log; the time since `start`.
async fn caught_up(service: &ProjectionService, start: Instant) -> Result<Duration> {
    loop {
        if let Ok(view) = service.version_status(PROJECTION, VERSION) {
            if let Some(failure) = &view.status.failure {
                bail!(
                    "{PROJECTION}@{VERSION} failed at position {}: {} ({})",
                    failure.position,
                    failure.message,
                    failure.code
                );
            }
            if view.head > 0 && view.status.position == view.head {
                return Ok(start.elapsed());
            }
        }
        ensure!(
            start.elapsed() < REPLAY_TIMEOUT,
            "{PROJECTION}@{VERSION} did not catch up within {REPLAY_TIMEOUT:?}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// One timed run: a forced rebuild (the version is live), until caught up
/// again. Returns the whole time, and how long the `rebuild` call itself took
/// (stopping the runner, emptying the read model).
async fn rebuild(service: &Arc<ProjectionService>) -> Result<(Duration, Duration)> {
    let start = Instant::now();
    let view = service.rebuild(PROJECTION, VERSION, true).await?;
    let call = start.elapsed();
    ensure!(
        view.status.position < view.head,
        "the rebuild did not start from the beginning"
    );
    Ok((caught_up(service, start).await?, call))
}

/// The version's documents must be exactly the native replay's.
async fn check_read_model(
    service: &ProjectionService,
    expected: &BTreeMap<String, String>,
) -> Result<()> {
    let handle = service.read_target(PROJECTION, Some(VERSION)).await?;
    let mut documents = BTreeMap::new();
    let mut after: Option<String> = None;
    loop {
        let page = service.scan_documents(&handle, "", after.as_deref(), 1000)?;
        let Some((last, _)) = page.documents.last() else {
            break;
        };
        after = Some(last.clone());
        documents.extend(page.documents);
    }
    ensure!(
        documents.len() == expected.len(),
        "the Wasm read model has {} documents, the native one {}",
        documents.len(),
        expected.len()
    );
    if let Some((key, doc)) = expected
        .iter()
        .find(|(key, doc)| documents.get(*key) != Some(*doc))
    {
        bail!(
            "document {key:?}: Wasm {:?}, native {doc:?}",
            documents.get(key)
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The native baseline.

/// The log read from the store in pages of `batch`, each page applied by the
/// projection's own code compiled natively to an in-memory map. With `sink`,
/// each batch's changed documents and a checkpoint are also written to sled in
/// one `apply_batch`, as the runner commits. Returns the map and the events applied.
fn native_replay(
    store: &Store,
    filter: &EventFilter,
    batch: usize,
    sink: Option<&sled::Db>,
) -> Result<(BTreeMap<String, String>, usize)> {
    let mut model = BTreeMap::new();
    let head = store.head();
    let (mut from, mut applied) = (1, 0);
    while from <= head {
        let page = store.read_all(from, batch, filter)?;
        let events: Vec<RawEvent> = page.events.into_iter().map(raw_event).collect();
        codec::apply_projection_native::<AccountBalances>(&mut model, &events)
            .map_err(anyhow::Error::msg)?;
        if let Some(db) = sink {
            write_batch(db, &model, &events, page.next_position - 1)?;
        }
        applied += events.len();
        from = page.next_position;
    }
    Ok((model, applied))
}

fn raw_event(e: RecordedEvent) -> RawEvent {
    RawEvent {
        position: e.position,
        aggregate_type: e.stream.aggregate_type().to_string(),
        aggregate_id: e.stream.aggregate_id().to_string(),
        version: e.version,
        event_id: e.event_id.to_string(),
        event_type: e.event_type,
        data: e.data,
        recorded_at_ms: e.recorded_at_ms,
        schema_version: e.schema_version,
    }
}

/// The documents a batch changed, with a checkpoint, in one sled batch, in the
/// read model's value format (a format byte, then the JSON). Every event of
/// this projection rewrites its account's document and the totals.
fn write_batch(
    db: &sled::Db,
    model: &BTreeMap<String, String>,
    events: &[RawEvent],
    position: u64,
) -> Result<()> {
    let mut keys: BTreeSet<String> = events
        .iter()
        .map(|e| account_balances::account_key(&e.aggregate_id))
        .collect();
    if !events.is_empty() {
        keys.insert("totals".to_string());
    }
    let mut batch = sled::Batch::default();
    for key in keys {
        let doc = model.get(&key).context("a changed document is missing")?;
        let mut value = Vec::with_capacity(1 + doc.len());
        value.push(1);
        value.extend_from_slice(doc.as_bytes());
        let mut k = Vec::with_capacity(1 + key.len());
        k.push(b'd');
        k.extend_from_slice(key.as_bytes());
        batch.insert(k, value);
    }
    batch.insert(&b"c"[..], &position.to_be_bytes()[..]);
    db.apply_batch(batch)?;
    Ok(())
}

// ---------------------------------------------------------------------------
// Where a batch's time goes.

/// The native replay's documents, shared with guest calls as their committed
/// read model: the same documents as the sled one, without sled.
struct InMemory(Arc<RwLock<BTreeMap<String, String>>>);

impl DocumentSource for InMemory {
    fn get(&self, key: &str) -> Result<Option<String>, String> {
        Ok(self.0.read().map_err(|e| e.to_string())?.get(key).cloned())
    }

    fn scan(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<(String, String)>, String> {
        let docs = self.0.read().map_err(|e| e.to_string())?;
        let lower = match after {
            Some(after) if after >= prefix => Bound::Excluded(after),
            _ => Bound::Included(prefix),
        };
        Ok(docs
            .range::<str, _>((lower, Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .take(limit)
            .scan(0usize, |bytes, (k, v)| {
                // Stop after the document that takes the total past max_bytes.
                let within = *bytes <= max_bytes;
                *bytes += k.len() + v.len();
                within.then(|| (k.clone(), v.clone()))
            })
            .collect())
    }
}

/// Mean microseconds per batch of each step, over one pass through the log.
#[derive(Default)]
struct Steps {
    batches: usize,
    read: f64,
    convert: f64,
    apply: f64,
    empty_apply: f64,
    copy_in: f64,
    apply_in_memory: f64,
    commit: f64,
    native_convert: f64,
    native_apply: f64,
    documents: f64,
}

/// One pass through the log doing a runner's batches step by step on this
/// thread, each step timed alone, into a read model of its own (the store's
/// `ReadModel`, under another name); and the native code over the same pages.
/// Two more guest calls per batch split the guest's time: the batch with its
/// first event's type made unknown (the guest fails at once, after the events
/// were copied into it), and the batch against an in-memory copy of the
/// documents instead of sled (which must decide the same changes).
fn measure_steps(
    backend: &Backend,
    module: &ProjectionModule,
    filter: &EventFilter,
    batch: usize,
) -> Result<Steps> {
    let split_name = format!("{PROJECTION}-steps");
    let model = backend.read_model(&split_name, VERSION)?;
    let native = Arc::new(RwLock::new(BTreeMap::new()));
    let mut steps = Steps::default();
    let head = backend.head();
    let (mut from, mut applied) = (1, 0u64);
    let mut lap = Instant::now();
    let mut split = |into: &mut f64| {
        let now = Instant::now();
        *into += (now - lap).as_secs_f64() * 1e6;
        lap = now;
    };
    while from <= head {
        split(&mut 0.0);
        let page = backend.read_all(from, batch, filter)?;
        split(&mut steps.read);
        let guest: Vec<GuestRecordedEvent> = page.events.iter().map(to_guest).collect();
        split(&mut steps.convert);
        let changes: DocumentChanges = module.apply(
            Arc::new(Documents(model.clone())),
            &guest,
            &vec![1; guest.len()],
        )?;
        split(&mut steps.apply);
        applied += guest.len() as u64;
        let checkpoint = ProjectionCheckpoint {
            position: page.next_position - 1,
            events_applied: applied,
            events_skipped: 0,
        };
        model.commit(&changes, &checkpoint, None, &[])?;
        split(&mut steps.commit);
        steps.documents += changes.len() as f64;

        let in_memory = module.apply(
            Arc::new(InMemory(native.clone())),
            &guest,
            &vec![1; guest.len()],
        )?;
        split(&mut steps.apply_in_memory);
        ensure!(
            in_memory == changes,
            "the guest decided other changes over the in-memory documents"
        );
        let mut refused = guest;
        refused[0].event_type = "NotABankEvent".to_string();
        split(&mut 0.0);
        let outcome = module.apply(
            Arc::new(InMemory(native.clone())),
            &refused,
            &vec![1; refused.len()],
        );
        split(&mut steps.copy_in);
        ensure!(outcome.is_err(), "the guest applied an unknown event type");

        let events: Vec<RawEvent> = page.events.into_iter().map(raw_event).collect();
        split(&mut steps.native_convert);
        {
            let mut docs = native.write().map_err(|e| anyhow::anyhow!("{e}"))?;
            codec::apply_projection_native::<AccountBalances>(&mut docs, &events)
                .map_err(anyhow::Error::msg)?;
        }
        split(&mut steps.native_apply);
        steps.batches += 1;
        from = page.next_position;
    }
    // A fresh instance and a call with no events: what every batch pays before its first event.
    let calls = 200;
    let source: Arc<dyn DocumentSource> = Arc::new(Documents(model.clone()));
    split(&mut 0.0);
    for _ in 0..calls {
        black_box(module.apply(source.clone(), &[], &[])?);
    }
    split(&mut steps.empty_apply);
    steps.empty_apply /= calls as f64;

    let n = steps.batches.max(1) as f64;
    for value in [
        &mut steps.read,
        &mut steps.convert,
        &mut steps.apply,
        &mut steps.copy_in,
        &mut steps.apply_in_memory,
        &mut steps.commit,
        &mut steps.native_convert,
        &mut steps.native_apply,
        &mut steps.documents,
    ] {
        *value /= n;
    }
    let documents: BTreeMap<String, String> = model.documents().collect::<Result<_, _>>()?;
    ensure!(
        Some(&documents) == native.read().ok().as_deref(),
        "the step-by-step read model differs from the native one"
    );
    backend.delete_read_model(&split_name, VERSION)?;
    Ok(steps)
}

// ---------------------------------------------------------------------------
// Reporting.

const TABLE: Table = Table {
    name_width: 100,
    columns: &[
        Column::number("median", 12),
        Column::text("unit", 9),
        Column::number("baseline", 12),
    ],
    goal_width: 26,
    rule: 176,
};

fn print_table(rows: &[Row]) {
    TABLE.print(rows.iter().map(|row| Line {
        name: &row.name,
        cells: vec![
            thousands(row.median()),
            "events/s".to_string(),
            row.baseline_median().map_or("-".to_string(), thousands),
        ],
        ratio: row.ratio(),
        goal: row.goal.describe(),
        verdict: row.goal.verdict(row.median(), row.ratio()),
    }));
}

fn print_breakdown(
    steps: &Steps,
    batch: usize,
    wasm_rate: f64,
    native_rate: f64,
    rebuild_call_ms: f64,
    cpu: &GroupCpu,
) {
    let per_batch = |rate: f64| batch as f64 * 1e6 / rate.max(1e-9);
    println!(
        "\nwhere a batch of {batch} events goes ({:.0} batches; microseconds per batch, each step timed alone on one thread):",
        steps.batches
    );
    let line = |label: &str, us: f64| println!("  {label:<62} {us:>9.0}");
    let measured = per_batch(wasm_rate);
    line("runner, measured (batch / median rate)", measured);
    line("  read_all page (store read, decode)", steps.read);
    line("  convert to the guest's recorded-event", steps.convert);
    line(
        "  guest apply (instance, copy in, decode, logic, host get/put)",
        steps.apply,
    );
    line(
        "    of which a fresh instance + apply of no events",
        steps.empty_apply,
    );
    line(
        "    of which instance + copy-in of the events (failing at once)",
        steps.copy_in,
    );
    line(
        "    of which host get from sled (vs an in-memory source)",
        steps.apply - steps.apply_in_memory,
    );
    line(
        "    rest: decode, logic, Docs, host put, lift, in Wasm",
        steps.apply_in_memory - steps.copy_in,
    );
    line(
        "  commit (one sled batch: documents + checkpoint)",
        steps.commit,
    );
    line(
        "  rest: pool hand-offs, guest-thread switches, rebuild call",
        measured - steps.read - steps.convert - steps.apply - steps.commit,
    );
    line(
        "native, measured (batch / median rate)",
        per_batch(native_rate),
    );
    line("  read_all page (store read, decode)", steps.read);
    line("  convert to RawEvent", steps.native_convert);
    line(
        "  apply_projection_native (decode, logic, map writes)",
        steps.native_apply,
    );
    println!(
        "  documents written per batch: {:.0} (the guest reads each once from sled first)",
        steps.documents
    );
    println!(
        "  rebuild call (stop the runner, empty the read model), median: {rebuild_call_ms:.1} ms"
    );

    if no_thread_times([cpu]) {
        return;
    }
    println!("\nCPU per event by thread during the Wasm replays (microseconds):");
    for (group, ns) in &cpu.groups {
        let us = cpu.per_unit_us(group);
        if *ns > 0 && us >= 0.005 {
            println!("  {group:<24} {us:>8.2}");
        }
    }
    println!("  {:<24} {:>8.2}", "total", cpu.total_us());
}
