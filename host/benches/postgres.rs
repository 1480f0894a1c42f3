//! The PostgreSQL event log against the sled default and against plain INSERTs,
//! in one run, on one box.
//!
//! - Durable single-event appends (150-byte JSON), 1 caller and 64 callers:
//!   sled (`Durability::Fsync`) against PostgreSQL with 1, 2 and 3 hosts
//!   (`PgStore`s) over one database, the callers split evenly between them.
//! - The baseline: the same callers doing a plain autocommit
//!   `INSERT (stream, body)` of a record of the same size into a table with a
//!   `bigserial` key: what PostgreSQL costs before Refold's checks, gapless
//!   positions and chain.
//!
//! - Commands over HTTP (a deposit each, durable before its 200): `refold
//!   serve` hosts in this process, 1, 2 and 3 over one PostgreSQL database,
//!   against one host on sled; 1 caller, and 32 callers (each on its own
//!   account) spread over the hosts. What a load balancer in front of N
//!   hosts would see.
//!
//! The cluster is a throwaway one (tests/support/pg.rs) with PostgreSQL's
//! durable defaults (fsync on, synchronous_commit on), on the same disk.
//! `cargo bench -p refold --bench postgres`; without `--bench` a smoke run.
//! Results: a table, and JSON lines in `bench-results/postgres.jsonl`.

mod common;
#[path = "../tests/support/pg.rs"]
mod pg;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use common::{Bench, Mode, Record, median, rate, tempdir, thousands};
use refold::store::pg::PgStore;
use refold::store::{
    Durability, EventStore, ExpectedVersion, NewEvent, Store, StoreConfig, StreamId,
};

const EVENT_DATA_LEN: usize = 150;

struct Sizes {
    runs: usize,
    sequential: usize,
    callers: usize,
    per_caller: usize,
}

fn data() -> String {
    let pad = "x".repeat(EVENT_DATA_LEN - 20);
    format!(r#"{{"amount":100,"p":"{pad}"}}"#)
}

/// appends/s and p99 latency (ms) of `callers` tasks, each appending
/// `per_caller` single events to its own streams through `stores[i % n]`.
async fn drive<S: EventStore>(stores: &[S], callers: usize, per_caller: usize) -> (f64, f64) {
    let started = Instant::now();
    let tasks: Vec<_> = (0..callers)
        .map(|i| {
            let store = stores[i % stores.len()].clone();
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(per_caller);
                for k in 0..per_caller {
                    let s = StreamId::new("account", format!("c{i}-{}", k % 10)).unwrap();
                    let t = Instant::now();
                    store
                        .append(
                            &s,
                            ExpectedVersion::Any,
                            vec![NewEvent::new("Deposited", data())],
                        )
                        .await
                        .expect("append");
                    latencies.push(t.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.unwrap());
    }
    let elapsed = started.elapsed();
    (rate(latencies.len(), elapsed), p99(&mut latencies))
}

/// `hosts` servers (sled in `dir` when `url` is None, else over `url`), with
/// bank-account uploaded on the first and running on all.
async fn start_hosts(
    dir: &std::path::Path,
    url: Option<&str>,
    hosts: usize,
) -> Result<Vec<refold::server::RunningServer>> {
    let mut servers = Vec::new();
    for h in 0..hosts {
        let mut config =
            refold::server::ServeConfig::new(dir.join(format!("host-{h}")), "127.0.0.1:0".parse()?);
        config.runtime.compile.worker = Some(env!("CARGO_BIN_EXE_refold").into());
        config.store_url = url.map(str::to_string);
        servers.push(refold::server::start(config).await?);
    }
    let client = reqwest::Client::new();
    let bytes = std::fs::read(refold_test_guests::BANK_ACCOUNT)?;
    let reply = client
        .put(format!(
            "http://{}/v1/modules/bank-account/1.0.0?activate=true",
            servers[0].addr
        ))
        .body(bytes)
        .send()
        .await?;
    anyhow::ensure!(reply.status().is_success(), "upload: {}", reply.status());
    for server in &servers {
        let deadline = Instant::now() + Duration::from_secs(60);
        while server.app.modules.active("bank-account").is_none() {
            anyhow::ensure!(Instant::now() < deadline, "a host never ran the module");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(servers)
}

/// commands/s and p99 (ms) of `callers` tasks, each opening its own account
/// (not timed) and then sending `per_caller` deposits to it, through host `i % n`.
async fn drive_commands(
    servers: &[refold::server::RunningServer],
    callers: usize,
    per_caller: usize,
    run: usize,
) -> Result<(f64, f64)> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(callers)
        .build()?;
    let bases: Vec<String> = servers
        .iter()
        .map(|s| format!("http://{}", s.addr))
        .collect();
    let send = move |base: String, id: String, body: &'static str| {
        let client = client.clone();
        async move {
            let reply = client
                .post(format!("{base}/v1/aggregates/bank-account/{id}/commands"))
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await?;
            anyhow::ensure!(reply.status().is_success(), "{id}: {}", reply.status());
            anyhow::Ok(())
        }
    };
    for i in 0..callers {
        send(
            bases[i % bases.len()].clone(),
            format!("r{run}-c{i}"),
            r#"{"type":"Open","owner":"o"}"#,
        )
        .await?;
    }
    let started = Instant::now();
    let tasks: Vec<_> = (0..callers)
        .map(|i| {
            let (base, send) = (bases[i % bases.len()].clone(), send.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(per_caller);
                for _ in 0..per_caller {
                    let t = Instant::now();
                    send(
                        base.clone(),
                        format!("r{run}-c{i}"),
                        r#"{"type":"Deposit","amount":1}"#,
                    )
                    .await?;
                    latencies.push(t.elapsed());
                }
                anyhow::Ok(latencies)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await??);
    }
    let elapsed = started.elapsed();
    Ok((rate(latencies.len(), elapsed), p99(&mut latencies)))
}

fn p99(latencies: &mut [Duration]) -> f64 {
    latencies.sort();
    let i = ((latencies.len() as f64) * 0.99) as usize;
    latencies[i.min(latencies.len() - 1)].as_secs_f64() * 1000.0
}

/// The baseline: plain autocommit INSERTs of a record of the same size, one
/// connection per caller.
async fn plain_inserts(
    url: &str,
    callers: usize,
    per_caller: usize,
    record_len: usize,
) -> (f64, f64) {
    let mut clients = Vec::new();
    for _ in 0..callers {
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        clients.push(client);
    }
    clients[0]
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS plain_events (position bigserial PRIMARY KEY, stream text NOT NULL, body bytea NOT NULL)",
        )
        .await
        .unwrap();
    let body = Arc::new(vec![7u8; record_len]);
    let started = Instant::now();
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, client)| {
            let body = body.clone();
            tokio::spawn(async move {
                let statement = client
                    .prepare("INSERT INTO plain_events (stream, body) VALUES ($1, $2)")
                    .await
                    .unwrap();
                let mut latencies = Vec::with_capacity(per_caller);
                for k in 0..per_caller {
                    let stream = format!("account/c{i}-{}", k % 10);
                    let t = Instant::now();
                    client
                        .execute(&statement, &[&stream, &*body])
                        .await
                        .unwrap();
                    latencies.push(t.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.unwrap());
    }
    let elapsed = started.elapsed();
    (rate(latencies.len(), elapsed), p99(&mut latencies))
}

struct Row {
    name: String,
    runs: Vec<f64>,
    p99: Vec<f64>,
    baseline: Option<(String, Vec<f64>)>,
}

fn main() -> Result<()> {
    let bench = Bench::start("postgres")?;
    let sizes = match bench.mode {
        Mode::Full => Sizes {
            runs: 5,
            sequential: 400,
            callers: 64,
            per_caller: 60,
        },
        Mode::Smoke => Sizes {
            runs: 1,
            sequential: 10,
            callers: 8,
            per_caller: 3,
        },
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let started = Instant::now();
    let cluster = pg::Cluster::start(pg::Durability::Fsync);
    // The size of the record a PgStore writes for one such event (body + chain).
    let record_len = 33 + 60 + EVENT_DATA_LEN;
    println!(
        "refold PostgreSQL benchmark ({} mode): {EVENT_DATA_LEN}-byte JSON events; PostgreSQL fsync on",
        bench.mode.name()
    );

    let mut rows: Vec<Row> = Vec::new();
    for (label, callers, per_caller) in [
        ("1 caller", 1, sizes.sequential),
        ("64 callers", sizes.callers, sizes.per_caller),
    ] {
        let mut sled_runs = (Vec::new(), Vec::new());
        let mut plain_runs = (Vec::new(), Vec::new());
        let mut pg_runs: Vec<(Vec<f64>, Vec<f64>)> = vec![Default::default(); 3];
        for _ in 0..sizes.runs {
            runtime.block_on(async {
                let dir = tempdir(&bench.scratch).unwrap();
                let store = Store::open(
                    StoreConfig::new(dir.path().join("events")).durability(Durability::Fsync),
                )
                .unwrap();
                let (r, p) = drive(std::slice::from_ref(&store), callers, per_caller).await;
                store.close().await;
                sled_runs.0.push(r);
                sled_runs.1.push(p);

                for hosts in 1..=3 {
                    let url = cluster.database();
                    let mut stores = Vec::new();
                    for _ in 0..hosts {
                        stores.push(PgStore::open(&url).await.unwrap());
                    }
                    let (r, p) = drive(&stores, callers, per_caller).await;
                    for s in stores {
                        s.close().await;
                    }
                    pg_runs[hosts - 1].0.push(r);
                    pg_runs[hosts - 1].1.push(p);
                }

                let url = cluster.database();
                let (r, p) = plain_inserts(&url, callers, per_caller, record_len).await;
                plain_runs.0.push(r);
                plain_runs.1.push(p);
            });
        }
        rows.push(Row {
            name: format!("sled, {label}"),
            runs: sled_runs.0.clone(),
            p99: sled_runs.1,
            baseline: None,
        });
        rows.push(Row {
            name: format!("plain INSERT, {label}"),
            runs: plain_runs.0.clone(),
            p99: plain_runs.1,
            baseline: None,
        });
        for (i, (runs, p)) in pg_runs.into_iter().enumerate() {
            rows.push(Row {
                name: format!(
                    "PostgreSQL {} host{}, {label} vs sled",
                    i + 1,
                    if i == 0 { "" } else { "s" }
                ),
                runs: runs.clone(),
                p99: p.clone(),
                baseline: Some(("sled".into(), sled_runs.0.clone())),
            });
            rows.push(Row {
                name: format!(
                    "PostgreSQL {} host{}, {label} vs plain INSERT",
                    i + 1,
                    if i == 0 { "" } else { "s" }
                ),
                runs,
                p99: p,
                baseline: Some(("plain INSERT".into(), plain_runs.0.clone())),
            });
        }
    }

    // Commands over HTTP through 1, 2 and 3 hosts, against one sled host.
    let mut command_rows: Vec<Row> = Vec::new();
    for (label, callers, per_caller) in [
        ("1 caller", 1, sizes.sequential / 2),
        ("32 callers", sizes.callers / 2, sizes.per_caller),
    ] {
        let mut sled_runs = (Vec::new(), Vec::new());
        let mut pg_runs: Vec<(Vec<f64>, Vec<f64>)> = vec![Default::default(); 3];
        // Hosts start once per configuration (compiling takes seconds); each run
        // uses new accounts.
        runtime.block_on(async {
            let dir = tempdir(&bench.scratch)?;
            let servers = start_hosts(&dir.path().join("sled"), None, 1).await?;
            for run in 0..sizes.runs {
                let (r, p) = drive_commands(&servers, callers, per_caller, run).await?;
                sled_runs.0.push(r);
                sled_runs.1.push(p);
            }
            for s in servers {
                s.shutdown().await?;
            }
            for hosts in 1..=3 {
                let url = cluster.database();
                let servers =
                    start_hosts(&dir.path().join(format!("pg-{hosts}")), Some(&url), hosts).await?;
                for run in 0..sizes.runs {
                    let (r, p) = drive_commands(&servers, callers, per_caller, run).await?;
                    pg_runs[hosts - 1].0.push(r);
                    pg_runs[hosts - 1].1.push(p);
                }
                for s in servers {
                    s.shutdown().await?;
                }
            }
            anyhow::Ok(())
        })?;
        command_rows.push(Row {
            name: format!("sled 1 host, {label}"),
            runs: sled_runs.0.clone(),
            p99: sled_runs.1,
            baseline: None,
        });
        for (i, (runs, p)) in pg_runs.into_iter().enumerate() {
            command_rows.push(Row {
                name: format!(
                    "PostgreSQL {} host{}, {label} vs sled",
                    i + 1,
                    if i == 0 { "" } else { "s" }
                ),
                runs,
                p99: p,
                baseline: Some(("sled".into(), sled_runs.0.clone())),
            });
        }
    }

    println!(
        "\n{:<48} {:>12} {:>10} {:>12} {:>7}",
        "appends (durable, one event each)", "median/s", "p99 ms", "baseline/s", "ratio"
    );
    let mut records = Vec::new();
    for row in &rows {
        let m = median(&row.runs);
        let p = median(&row.p99);
        let (base, ratio) = match &row.baseline {
            Some((_, b)) => {
                let b = median(b);
                (Some(b), Some(m / b))
            }
            None => (None, None),
        };
        println!(
            "{:<48} {:>12} {:>10.2} {:>12} {:>7}",
            row.name,
            thousands(m),
            p,
            base.map(thousands).unwrap_or_default(),
            ratio.map(|r| format!("{r:.2}x")).unwrap_or_default()
        );
        records.push((row.name.clone(), m, row.runs.clone(), base, ratio, p));
    }
    println!(
        "\n{:<48} {:>12} {:>10} {:>12} {:>7}",
        "commands over HTTP (durable deposits)", "median/s", "p99 ms", "baseline/s", "ratio"
    );
    let appends = records.len();
    for row in &command_rows {
        let m = median(&row.runs);
        let p = median(&row.p99);
        let (base, ratio) = match &row.baseline {
            Some((_, b)) => {
                let b = median(b);
                (Some(b), Some(m / b))
            }
            None => (None, None),
        };
        println!(
            "{:<48} {:>12} {:>10.2} {:>12} {:>7}",
            row.name,
            thousands(m),
            p,
            base.map(thousands).unwrap_or_default(),
            ratio.map(|r| format!("{r:.2}x")).unwrap_or_default()
        );
        records.push((
            format!("commands: {}", row.name),
            m,
            row.runs.clone(),
            base,
            ratio,
            p,
        ));
    }
    let records: Vec<Record> = records
        .iter()
        .enumerate()
        .map(|(i, (name, m, runs, base, ratio, p))| Record {
            name,
            unit: if i < appends {
                "appends/s"
            } else {
                "commands/s"
            },
            median: *m,
            runs,
            baseline_median: *base,
            ratio: *ratio,
            goal: format!("informational; p99 {p:.2} ms"),
        })
        .collect();
    bench.finish(&records, started)
}
