//! Event-store benchmarks, each next to a raw-sled baseline doing the same I/O.
//!
//! - Durable append (`Durability::Fsync`), one sequential appender, 1 / 10 / 100
//!   events per append, against raw sled writing the same event records with
//!   `apply_batch` + `flush` + `fdatasync` per batch (exactly the store's commit).
//! - 64 concurrent single-event appenders: measures group commit.
//! - A full read of the global log with `read_all`, against raw sled iteration.
//!
//! `cargo bench -p refold --bench store` runs the full benchmark (cargo passes
//! `--bench`). Without `--bench` (as under `cargo test --all-targets`) it runs a
//! smoke version with tiny sizes, to check that the benchmark still works.
//!
//! Output: a table on stdout, and one JSON line per result appended to
//! `bench-results/store.jsonl` (smoke: `bench-results/store-smoke.jsonl`).

mod common;

use std::fs::File;
use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use common::{Bench, Column, Line, Mode, Record, Table, median, rate, tempdir, thousands};
use refold::store::{
    Durability, EventFilter, ExpectedVersion, NewEvent, Store, StoreConfig, StreamId,
};
use tempfile::TempDir;

/// Size of every event's JSON data, in bytes.
const EVENT_DATA_LEN: usize = 150;
const EVENT_TYPE: &str = "Deposited";
/// The sequential appender spreads its appends over this many streams.
const SEQUENTIAL_STREAMS: usize = 100;
/// Page size of the global-log read.
const READ_PAGE: usize = 1000;
/// sled's page cache, the same as the store's default, so both sides cache alike.
const CACHE_BYTES: u64 = 256 << 20;

/// How much work each measurement does. A full run lasts roughly 0.3-1 s.
struct Sizes {
    runs: usize,
    /// (events per append, appends per run) for the sequential appender.
    sequential: Vec<(usize, usize)>,
    concurrent_tasks: usize,
    appends_per_task: usize,
    read_events: usize,
}

impl Sizes {
    fn for_mode(mode: Mode) -> Sizes {
        match mode {
            Mode::Full => Sizes {
                runs: 5,
                sequential: vec![(1, 1000), (10, 300), (100, 300)],
                concurrent_tasks: 64,
                appends_per_task: 200,
                read_events: 200_000,
            },
            Mode::Smoke => Sizes {
                runs: 1,
                sequential: vec![(1, 20), (10, 20), (100, 20)],
                concurrent_tasks: 16,
                appends_per_task: 5,
                read_events: 2_000,
            },
        }
    }
}

/// What a result is judged against.
#[derive(Clone, Copy)]
enum Goal {
    /// No goal: context for the other rows.
    Informational,
    /// store / raw must be at least this.
    RatioAtLeast(f64),
    /// store / raw must be at most this (a cost share).
    RatioAtMost(f64),
    /// The store's median must be at least this many events/s.
    RateAtLeast(f64),
}

impl Goal {
    fn describe(self) -> String {
        match self {
            Goal::Informational => "informational".to_string(),
            Goal::RatioAtLeast(r) => format!("store >= {r}x raw"),
            Goal::RatioAtMost(r) => format!("share <= {r}"),
            Goal::RateAtLeast(r) => format!(">= {} ev/s", thousands(r)),
        }
    }

    fn verdict(self, median: f64, ratio: Option<f64>) -> &'static str {
        let met = match self {
            Goal::Informational => return "-",
            Goal::RatioAtLeast(goal) => ratio.is_some_and(|r| r >= goal),
            Goal::RatioAtMost(goal) => ratio.is_some_and(|r| r <= goal),
            Goal::RateAtLeast(goal) => median >= goal,
        };
        if met { "ok" } else { "below goal" }
    }
}

/// One line of the table: events/s per run, for the store and/or raw sled.
struct Row {
    name: String,
    store: Option<Vec<f64>>,
    raw: Option<Vec<f64>>,
    goal: Goal,
}

impl Row {
    fn store_median(&self) -> Option<f64> {
        self.store.as_deref().map(median)
    }

    fn raw_median(&self) -> Option<f64> {
        self.raw.as_deref().map(median)
    }

    fn ratio(&self) -> Option<f64> {
        Some(self.store_median()? / self.raw_median()?)
    }

    fn record(&self) -> Record<'_> {
        let (runs, median) = self.measured();
        Record {
            name: &self.name,
            unit: "events/s",
            median,
            runs,
            // For a raw-only row, its raw numbers are the measurement, not a baseline.
            baseline_median: self.store.as_ref().and(self.raw_median()),
            ratio: self.ratio(),
            goal: self.goal.describe(),
        }
    }

    /// The row's own measurement: the store's, or raw sled's for a raw-only row.
    fn measured(&self) -> (&[f64], f64) {
        let runs = self
            .store
            .as_deref()
            .or(self.raw.as_deref())
            .expect("a row measures something");
        (runs, median(runs))
    }
}

/// Where raw sled's durable commit spends its time, summed over batches.
#[derive(Default)]
struct PhaseTimes {
    batches: u32,
    apply: Duration,
    flush: Duration,
    fdatasync: Duration,
}

impl PhaseTimes {
    fn add(&mut self, apply: Duration, flush: Duration, fdatasync: Duration) {
        self.batches += 1;
        self.apply += apply;
        self.flush += flush;
        self.fdatasync += fdatasync;
    }

    fn report(&self) -> String {
        let per_batch = |d: Duration| d.as_secs_f64() * 1e6 / f64::from(self.batches.max(1));
        format!(
            "apply_batch {:>7.0} us, flush {:>7.0} us, fdatasync {:>7.0} us per batch",
            per_batch(self.apply),
            per_batch(self.flush),
            per_batch(self.fdatasync)
        )
    }
}

fn main() -> Result<()> {
    let bench = Bench::start("store")?;
    let sizes = Sizes::for_mode(bench.mode);
    let scratch = &bench.scratch;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;

    let started = Instant::now();
    let record_len = runtime.block_on(encoded_record_len(scratch))?;
    println!(
        "refold store benchmark ({} mode): {EVENT_DATA_LEN}-byte JSON events, {record_len}-byte event records",
        bench.mode.name()
    );

    let mut rows = Vec::new();
    let mut phases = Vec::new();
    for &(batch, appends) in &sizes.sequential {
        let (batch_rows, times) =
            measure_sequential(&runtime, scratch, &sizes, batch, appends, record_len)?;
        if batch == 100 {
            let appends = batch_rows[0].store.clone().expect("the store row");
            rows.push(measure_chain_cost(&sizes, appends, record_len)?);
        }
        rows.extend(batch_rows);
        phases.push((batch, times));
    }
    rows.push(measure_concurrent(&runtime, scratch, &sizes)?);
    rows.push(measure_read(&runtime, scratch, &sizes, record_len)?);

    print_table(&rows);
    println!("\nraw sled durable commit (apply_batch + flush + fdatasync), mean per batch:");
    for (batch, [event_only, all_keys]) in &phases {
        println!(
            "  batch {batch:>3}, E keys only:       {}",
            event_only.report()
        );
        println!(
            "  batch {batch:>3}, all store keys:    {}",
            all_keys.report()
        );
    }
    let records: Vec<Record> = rows.iter().map(Row::record).collect();
    bench.finish(&records, started)
}

// ---------------------------------------------------------------------------
// Measurements: each returns the table rows it produces.

/// Store durable append vs raw sled, one appender, `batch` events per append.
/// The headline row compares the store with raw sled writing only the event
/// records, durably. Three informational rows say where the difference goes:
/// raw sled writing every key the store writes (the I/O the store's format
/// costs), raw sled without fdatasync, and the store without any flush (the
/// store's own CPU and thread hand-off).
/// All variants are measured in alternation, run by run, so a drift in the
/// disk's speed affects them alike.
fn measure_sequential(
    runtime: &tokio::runtime::Runtime,
    scratch: &Path,
    sizes: &Sizes,
    batch: usize,
    appends: usize,
    record_len: usize,
) -> Result<(Vec<Row>, [PhaseTimes; 2])> {
    let mut store = Vec::new();
    let mut store_no_flush = Vec::new();
    let mut raw = Vec::new();
    let mut raw_all_keys = Vec::new();
    let mut raw_no_fdatasync = Vec::new();
    let mut times = [PhaseTimes::default(), PhaseTimes::default()];
    let mut ignored = PhaseTimes::default();
    for _ in 0..sizes.runs {
        let shape = RawShape {
            batch,
            batches: appends,
            record_len,
        };
        store.push(runtime.block_on(store_sequential_append(
            scratch,
            batch,
            appends,
            Durability::Fsync,
        ))?);
        raw.push(raw_append(
            scratch,
            shape,
            Keys::EventOnly,
            true,
            &mut times[0],
        )?);
        raw_all_keys.push(raw_append(
            scratch,
            shape,
            Keys::AllStoreKeys,
            true,
            &mut times[1],
        )?);
        raw_no_fdatasync.push(raw_append(
            scratch,
            shape,
            Keys::EventOnly,
            false,
            &mut ignored,
        )?);
        store_no_flush.push(runtime.block_on(store_sequential_append(
            scratch,
            batch,
            appends,
            Durability::None,
        ))?);
    }
    let goal = if batch == 100 {
        Goal::RatioAtLeast(0.8)
    } else {
        Goal::Informational
    };
    let rows = vec![
        Row {
            name: format!("append fsync, batch {batch}"),
            store: Some(store),
            raw: Some(raw),
            goal,
        },
        Row {
            name: format!("  raw, all store keys (E,S), fsync, batch {batch}"),
            store: None,
            raw: Some(raw_all_keys),
            goal: Goal::Informational,
        },
        Row {
            name: format!("  raw, flush only (no fdatasync), batch {batch}"),
            store: None,
            raw: Some(raw_no_fdatasync),
            goal: Goal::Informational,
        },
        Row {
            name: format!("  store, Durability::None, batch {batch}"),
            store: Some(store_no_flush),
            raw: None,
            goal: Goal::Informational,
        },
    ];
    Ok((rows, times))
}

/// What the hash chain and the seals cost the writer, as a share of a durable
/// batch-100 append: the same work the writer does per event (sha256 over the
/// previous chain value, the position and a body of the store's record size),
/// plus a Merkle root and an ed25519 signature every 4,096 events, timed alone.
/// The row's ratio is append rate / chain-only rate: the share of an append's
/// time the chain takes.
fn measure_chain_cost(sizes: &Sizes, appends: Vec<f64>, record_len: usize) -> Result<Row> {
    use refold::store::integrity::{self, SEAL_INTERVAL, Seal, ZERO};
    let signer = refold::store::SealSigner::from_seed([7; 32]);
    let body = record_bytes(record_len - 33);
    let n = 30_000;
    let mut runs = Vec::new();
    for _ in 0..sizes.runs.max(3) {
        let start = Instant::now();
        let mut chain = ZERO;
        let mut segment = Vec::with_capacity(SEAL_INTERVAL as usize);
        let mut first = 1;
        for position in 1..=n as u64 {
            chain = integrity::chain_next(&chain, position, &body);
            segment.push(chain);
            if segment.len() as u64 == SEAL_INTERVAL {
                let mut seal = Seal {
                    first_position: first,
                    last_position: position,
                    root: integrity::merkle_root(&segment),
                    chain,
                    sealed_at_ms: 0,
                    signature: None,
                    public_key: None,
                };
                signer.sign(&mut seal);
                black_box(&seal);
                segment.clear();
                first = position + 1;
            }
        }
        black_box(chain);
        runs.push(rate(n, start.elapsed()));
    }
    Ok(Row {
        name: "chain + seals: share of a batch-100 append (append / chain-only rate)".into(),
        store: Some(appends),
        raw: Some(runs),
        goal: Goal::RatioAtMost(0.05),
    })
}

/// Store durable append from many concurrent single-event appenders: the writer
/// folds whatever is queued into one group commit, so this is group commit's rate.
fn measure_concurrent(
    runtime: &tokio::runtime::Runtime,
    scratch: &Path,
    sizes: &Sizes,
) -> Result<Row> {
    let mut runs = Vec::new();
    for _ in 0..sizes.runs {
        runs.push(runtime.block_on(store_concurrent_append(
            scratch,
            sizes.concurrent_tasks,
            sizes.appends_per_task,
        ))?);
    }
    Ok(Row {
        name: format!(
            "append fsync, {} concurrent x 1 event",
            sizes.concurrent_tasks
        ),
        store: Some(runs),
        raw: None,
        goal: Goal::RateAtLeast(50_000.0),
    })
}

/// A full read of the global log (decoding every event) vs raw sled iterating
/// over the same number of same-size records (touching the bytes only).
/// Each database is written once, then read `runs` times. The two are measured
/// one after the other, not side by side: a second large sled database in the
/// process slows the store's reads by a third or more (measured), and in
/// production the store's database is the only one.
fn measure_read(
    runtime: &tokio::runtime::Runtime,
    scratch: &Path,
    sizes: &Sizes,
    record_len: usize,
) -> Result<Row> {
    let n = sizes.read_events;
    let store_runs = {
        let dir = tempdir(scratch)?;
        let store = runtime.block_on(fill_store(dir.path(), n))?;
        let runs = (0..sizes.runs)
            .map(|_| store_read_all(&store, n))
            .collect::<Result<Vec<_>>>()?;
        runtime.block_on(store.close());
        runs
    };
    let raw = RawSled::open(scratch)?;
    fill_raw(&raw.db, n, record_len)?;
    let raw_runs = (0..sizes.runs)
        .map(|_| raw_iterate(&raw.db, n))
        .collect::<Result<Vec<_>>>()?;
    Ok(Row {
        name: format!(
            "read_all, pages of {READ_PAGE}, {} events",
            thousands(n as f64)
        ),
        store: Some(store_runs),
        raw: Some(raw_runs),
        goal: Goal::RateAtLeast(1_000_000.0),
    })
}

// ---------------------------------------------------------------------------
// Store workloads. Events are built before the clock starts.

/// One appender, `appends` appends of `batch` events each, awaiting each: every
/// append is its own group commit (with `Fsync`: apply + flush + fdatasync).
/// A fresh store per run.
async fn store_sequential_append(
    scratch: &Path,
    batch: usize,
    appends: usize,
    durability: Durability,
) -> Result<f64> {
    let dir = tempdir(scratch)?;
    let store = Store::open(StoreConfig::new(dir.path()).durability(durability))?;
    let streams = (0..SEQUENTIAL_STREAMS)
        .map(stream_id)
        .collect::<Result<Vec<_>>>()?;
    let work: Vec<Vec<NewEvent>> = (0..appends).map(|i| new_events(i * batch, batch)).collect();
    let start = Instant::now();
    for (i, events) in work.into_iter().enumerate() {
        store
            .append(&streams[i % streams.len()], ExpectedVersion::Any, events)
            .await?;
    }
    let elapsed = start.elapsed();
    store.close().await;
    Ok(rate(batch * appends, elapsed))
}

/// `tasks` tokio tasks, each appending one event per call to its own stream,
/// `appends_per_task` times. A fresh store per run.
async fn store_concurrent_append(
    scratch: &Path,
    tasks: usize,
    appends_per_task: usize,
) -> Result<f64> {
    let dir = tempdir(scratch)?;
    let store = Store::open(StoreConfig::new(dir.path()).durability(Durability::Fsync))?;
    let mut work = Vec::with_capacity(tasks);
    for t in 0..tasks {
        work.push((
            stream_id(t)?,
            new_events(t * appends_per_task, appends_per_task),
        ));
    }
    let start = Instant::now();
    let handles: Vec<_> = work
        .into_iter()
        .map(|(stream, events)| {
            let store = store.clone();
            tokio::spawn(async move {
                for event in events {
                    store
                        .append(&stream, ExpectedVersion::Any, vec![event])
                        .await?;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for handle in handles {
        handle.await??;
    }
    let elapsed = start.elapsed();
    store.close().await;
    Ok(rate(tasks * appends_per_task, elapsed))
}

/// Writes `n` events quickly (no fsync, appends of 1000) and returns the open store.
async fn fill_store(dir: &Path, n: usize) -> Result<Store> {
    let store = Store::open(StoreConfig::new(dir).durability(Durability::None))?;
    let mut written = 0;
    while written < n {
        let count = (n - written).min(1000);
        let stream = stream_id(written / 1000)?;
        store
            .append(&stream, ExpectedVersion::Any, new_events(written, count))
            .await?;
        written += count;
    }
    ensure!(
        store.head() == n as u64,
        "the store's head is {}, expected {n}",
        store.head()
    );
    Ok(store)
}

/// Reads the whole global log from position 1 to the head in pages.
fn store_read_all(store: &Store, n: usize) -> Result<f64> {
    let filter = EventFilter::all();
    let start = Instant::now();
    let (mut from, mut count) = (1, 0);
    loop {
        let page = store.read_all(from, READ_PAGE, &filter)?;
        if page.events.is_empty() {
            break;
        }
        count += page.events.len();
        from = page.next_position;
        black_box(&page.events);
        if from > page.head {
            break;
        }
    }
    let elapsed = start.elapsed();
    ensure!(count == n, "read_all returned {count} events, expected {n}");
    Ok(rate(n, elapsed))
}

/// The size of one event record as the store writes it (format byte + postcard),
/// measured rather than assumed: append one event to a scratch store, then look
/// at the value under key `E` 1 with sled directly.
async fn encoded_record_len(scratch: &Path) -> Result<usize> {
    let dir = tempdir(scratch)?;
    let store = Store::open(StoreConfig::new(dir.path()).durability(Durability::None))?;
    store
        .append(&stream_id(1)?, ExpectedVersion::Any, new_events(1, 1))
        .await?;
    store.close().await;
    drop(store);
    let db = sled::Config::new().path(dir.path().join("sled")).open()?;
    let record = db
        .get(event_key(1))?
        .context("the scratch store has no event at position 1")?;
    Ok(record.len())
}

// ---------------------------------------------------------------------------
// Raw sled workloads: the store's I/O without the store.

/// A sled database configured as the store configures its own, and a handle on
/// its `db` file for fdatasync (what the store syncs after each flush).
struct RawSled {
    db: sled::Db,
    data_file: File,
    _dir: TempDir,
}

impl RawSled {
    fn open(scratch: &Path) -> Result<RawSled> {
        let dir = tempdir(scratch)?;
        let path = dir.path().join("sled");
        let db = sled::Config::new()
            .path(&path)
            .cache_capacity(CACHE_BYTES)
            .mode(sled::Mode::HighThroughput)
            .open()?;
        let data_file = File::open(path.join("db")).context("opening sled's db file")?;
        Ok(RawSled {
            db,
            data_file,
            _dir: dir,
        })
    }
}

/// The size of a raw append workload.
#[derive(Clone, Copy)]
struct RawShape {
    batch: usize,
    batches: usize,
    record_len: usize,
}

/// Which keys a raw batch writes per event.
#[derive(Clone, Copy)]
enum Keys {
    /// Only `E`+position -> record: the baseline.
    EventOnly,
    /// Every key the store writes (format.rs): the event record per event, and
    /// one stream-index run per append.
    AllStoreKeys,
}

/// `batches` batches of `batch` events: apply_batch, flush and (when `fdatasync`)
/// sync_data per batch, as the store commits. A fresh database per run.
fn raw_append(
    scratch: &Path,
    shape: RawShape,
    keys: Keys,
    fdatasync: bool,
    times: &mut PhaseTimes,
) -> Result<f64> {
    let raw = RawSled::open(scratch)?;
    let record = record_bytes(shape.record_len);
    let mut position = 0;
    let start = Instant::now();
    for i in 0..shape.batches {
        let t0 = Instant::now();
        let mut writes = sled::Batch::default();
        let stream = stream_key_bytes(i % SEQUENTIAL_STREAMS);
        for _ in 0..shape.batch {
            position += 1;
            writes.insert(&event_key(position)[..], &record[..]);
            if let Keys::AllStoreKeys = keys {}
        }
        if let Keys::AllStoreKeys = keys {
            // One stream-index run per append: `S` + stream key + first version
            // (the position stands in for it: same length) -> 29 bytes.
            writes.insert(
                [&[b'S'][..], &stream, &position.to_be_bytes()].concat(),
                &[2u8; 29][..],
            );
        }
        raw.db.apply_batch(writes)?;
        let t1 = Instant::now();
        raw.db.flush()?;
        let t2 = Instant::now();
        if fdatasync {
            raw.data_file.sync_data()?;
        }
        let t3 = Instant::now();
        times.add(t1 - t0, t2 - t1, t3 - t2);
    }
    Ok(rate(shape.batch * shape.batches, start.elapsed()))
}

/// Writes `n` records of `record_len` bytes under `E`+position keys, no fsync.
fn fill_raw(db: &sled::Db, n: usize, record_len: usize) -> Result<()> {
    let record = record_bytes(record_len);
    for first in (1..=n as u64).step_by(1000) {
        let mut writes = sled::Batch::default();
        for position in first..(first + 1000).min(n as u64 + 1) {
            writes.insert(&event_key(position)[..], &record[..]);
        }
        db.apply_batch(writes)?;
    }
    db.flush()?;
    Ok(())
}

/// Iterates over every event key and touches each value's bytes.
fn raw_iterate(db: &sled::Db, n: usize) -> Result<f64> {
    let start = Instant::now();
    let (mut count, mut touched) = (0, 0u64);
    for item in db.range(event_key(1)..=event_key(u64::MAX)) {
        let (_key, value) = item?;
        touched = touched.wrapping_add(value.iter().map(|&b| u64::from(b)).sum::<u64>());
        count += 1;
    }
    let elapsed = start.elapsed();
    black_box(touched);
    ensure!(
        count == n,
        "raw iteration saw {count} records, expected {n}"
    );
    Ok(rate(n, elapsed))
}

// ---------------------------------------------------------------------------
// Test data.

/// `account/acc-NNNNNN`: every stream id has the same length.
fn stream_id(n: usize) -> Result<StreamId> {
    Ok(StreamId::new(
        "account",
        format!("acc-{:06}", n % 1_000_000),
    )?)
}

/// `count` events numbered from `first`.
fn new_events(first: usize, count: usize) -> Vec<NewEvent> {
    (first..first + count)
        .map(|n| NewEvent::new(EVENT_TYPE, event_data(n)))
        .collect()
}

/// The store's stream key body for `stream_id(n)` (format.rs): `[type len u8][type][id len u16 BE][id]`.
fn stream_key_bytes(n: usize) -> Vec<u8> {
    let id = format!("acc-{:06}", n % 1_000_000);
    [
        &[7u8][..],
        b"account",
        &(id.len() as u16).to_be_bytes(),
        id.as_bytes(),
    ]
    .concat()
}

/// A realistic JSON object of exactly `EVENT_DATA_LEN` bytes.
fn event_data(n: usize) -> String {
    const FILLER: &str = "monthly transfer from savings to checking, reference invoice 2024-000417, approved by treasury desk";
    let head = format!(
        r#"{{"account":"acc-{:06}","amount":{},"currency":"EUR","note":""#,
        n % 1_000_000,
        10_000 + n % 90_000
    );
    let tail = r#""}"#;
    let note = &FILLER[..EVENT_DATA_LEN - head.len() - tail.len()];
    let data = format!("{head}{note}{tail}");
    assert_eq!(
        data.len(),
        EVENT_DATA_LEN,
        "event data must be exactly {EVENT_DATA_LEN} bytes"
    );
    data
}

/// Raw record bytes of the store's record size: a format byte, then JSON-like text.
fn record_bytes(len: usize) -> Vec<u8> {
    let text = event_data(0).into_bytes();
    std::iter::once(1u8)
        .chain(text.into_iter().cycle())
        .take(len)
        .collect()
}

/// `E` + position (u64 big-endian): the store's event key.
fn event_key(position: u64) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[0] = b'E';
    key[1..].copy_from_slice(&position.to_be_bytes());
    key
}

// ---------------------------------------------------------------------------
// Reporting.

const TABLE: Table = Table {
    name_width: 52,
    columns: &[
        Column::number("store ev/s", 12),
        Column::number("raw ev/s", 12),
    ],
    goal_width: 20,
    rule: 118,
};

fn print_table(rows: &[Row]) {
    let cell = |v: Option<f64>| v.map_or("-".to_string(), thousands);
    TABLE.print(rows.iter().map(|row| {
        let (_, measured) = row.measured();
        Line {
            name: &row.name,
            cells: vec![cell(row.store_median()), cell(row.raw_median())],
            ratio: row.ratio(),
            goal: row.goal.describe(),
            verdict: row.goal.verdict(measured, row.ratio()),
        }
    }));
}
