//! The plumbing the benchmarks share (each includes it with `mod common;`;
//! cargo builds no target of its own from a subdirectory of `benches/`): the
//! mode, where data and results go, statistics, the table, the results file,
//! CPU time by thread, and the allocator.

// Not every benchmark uses every helper (the store benchmark reads no CPU times).
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use tempfile::TempDir;

/// The same allocator as the `refold` binary, so the numbers are the product's.
/// Declared here, once per benchmark binary: every benchmark includes this module.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Full,
    Smoke,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Full => "full",
            Mode::Smoke => "smoke",
        }
    }
}

/// One benchmark's run: its name, its mode, and where its files go.
pub struct Bench {
    /// `store`, `runtime`, `http`: the results file's name and its `bench` field.
    pub name: &'static str,
    pub mode: Mode,
    pub workspace: &'static Path,
    /// Data directories go under target/: the same disk a real deployment's data would be on.
    pub scratch: PathBuf,
}

impl Bench {
    /// Full mode when cargo passes `--bench` (`cargo bench`), else the smoke
    /// version (as under `cargo test --all-targets`); creates the scratch directory.
    pub fn start(name: &'static str) -> Result<Bench> {
        let mode = if std::env::args().any(|a| a == "--bench") {
            Mode::Full
        } else {
            Mode::Smoke
        };
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .context("the crate has no parent directory")?;
        let scratch = workspace.join("target");
        std::fs::create_dir_all(&scratch)?;
        Ok(Bench {
            name,
            mode,
            workspace,
            scratch,
        })
    }

    /// Appends one JSON object per record to `bench-results/<name>.jsonl` in the
    /// workspace (smoke: `<name>-smoke.jsonl`), then says how long the run took.
    pub fn finish(&self, records: &[Record], started: Instant) -> Result<()> {
        let dir = self.workspace.join("bench-results");
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(match self.mode {
            Mode::Full => format!("{}.jsonl", self.name),
            Mode::Smoke => format!("{}-smoke.jsonl", self.name),
        });
        let mut file = OpenOptions::new().create(true).append(true).open(&path)?;
        let timestamp_unix_ms = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as u64;
        let git_rev = git_rev(self.workspace);
        for record in records {
            let line = serde_json::json!({
                "bench": self.name,
                "name": record.name.trim(),
                "unit": record.unit,
                "median": record.median,
                "runs": record.runs,
                "baseline_median": record.baseline_median,
                "ratio": record.ratio,
                "goal": record.goal,
                "timestamp_unix_ms": timestamp_unix_ms,
                "git_rev": git_rev,
                "mode": self.mode.name(),
            });
            writeln!(file, "{line}")?;
        }
        println!("\nresults appended to {}", path.display());
        println!(
            "\n{} mode took {:.1} s",
            self.mode.name(),
            started.elapsed().as_secs_f64()
        );
        Ok(())
    }
}

/// One result, as a line of the results file.
pub struct Record<'a> {
    pub name: &'a str,
    pub unit: &'a str,
    pub median: f64,
    pub runs: &'a [f64],
    pub baseline_median: Option<f64>,
    pub ratio: Option<f64>,
    pub goal: String,
}

/// `git rev-parse --short HEAD`, or None outside a repository or before the first commit.
fn git_rev(workspace: &Path) -> Option<String> {
    let output = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(workspace)
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let rev = String::from_utf8(output.stdout).ok()?.trim().to_string();
    (output.status.success() && !rev.is_empty()).then_some(rev)
}

/// A fresh directory under `scratch`, removed when dropped.
pub fn tempdir(scratch: &Path) -> Result<TempDir> {
    Ok(tempfile::Builder::new()
        .prefix("refold-bench-")
        .tempdir_in(scratch)?)
}

// ---------------------------------------------------------------------------
// Statistics.

pub fn rate(count: usize, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64()
}

pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    }
}

/// 1234567.8 -> "1,234,568".
pub fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value);
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

// ---------------------------------------------------------------------------
// The table.

/// The table's layout: the name, the benchmark's own columns, the ratio, the
/// goal and the verdict, under a rule of `rule` dashes.
pub struct Table {
    pub name_width: usize,
    pub columns: &'static [Column],
    pub goal_width: usize,
    pub rule: usize,
}

/// A column between the name and the ratio.
pub struct Column {
    header: &'static str,
    width: usize,
    /// Left-aligned (text); otherwise right-aligned (numbers).
    left: bool,
}

impl Column {
    /// A left-aligned column.
    pub const fn text(header: &'static str, width: usize) -> Column {
        Column {
            header,
            width,
            left: true,
        }
    }

    /// A right-aligned column.
    pub const fn number(header: &'static str, width: usize) -> Column {
        Column {
            header,
            width,
            left: false,
        }
    }
}

/// One line of the table; `cells` go in the table's `columns`.
pub struct Line<'a> {
    pub name: &'a str,
    pub cells: Vec<String>,
    pub ratio: Option<f64>,
    pub goal: String,
    pub verdict: &'static str,
}

impl Table {
    pub fn print<'a>(&self, lines: impl IntoIterator<Item = Line<'a>>) {
        let headers = self.columns.iter().map(|c| c.header.to_string());
        let header = self.line("name", headers, "ratio", "goal", "verdict");
        println!("\n{header}");
        println!("{}", "-".repeat(self.rule));
        for line in lines {
            let ratio = line.ratio.map_or("-".to_string(), |r| format!("{r:.2}x"));
            let text = self.line(line.name, line.cells, &ratio, &line.goal, line.verdict);
            println!("{text}");
        }
    }

    fn line(
        &self,
        name: &str,
        cells: impl IntoIterator<Item = String>,
        ratio: &str,
        goal: &str,
        verdict: &str,
    ) -> String {
        let mut out = format!("{name:<width$}", width = self.name_width);
        for (column, cell) in self.columns.iter().zip(cells) {
            let width = column.width;
            out.push_str(&if column.left {
                format!(" {cell:<width$}")
            } else {
                format!(" {cell:>width$}")
            });
        }
        let width = self.goal_width;
        out.push_str(&format!(" {ratio:>7}  {goal:<width$} {verdict}"));
        out
    }
}

// ---------------------------------------------------------------------------
// CPU time by thread, from /proc/self/task/*/schedstat.

/// CPU nanoseconds each thread of this process has used so far (none where
/// /proc is unreadable).
pub struct ThreadTimes {
    /// tid -> (thread name, CPU ns)
    threads: HashMap<u32, (String, u64)>,
}

impl ThreadTimes {
    pub fn sample() -> ThreadTimes {
        let mut threads = HashMap::new();
        if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
            for task in tasks.flatten() {
                let Some(tid) = task.file_name().to_str().and_then(|s| s.parse().ok()) else {
                    continue;
                };
                let name = if tid == std::process::id() {
                    "main".to_string()
                } else {
                    std::fs::read_to_string(task.path().join("comm")).unwrap_or_default()
                };
                let ns = std::fs::read_to_string(task.path().join("schedstat"))
                    .ok()
                    .and_then(|s| s.split_whitespace().next()?.parse().ok());
                if let Some(ns) = ns {
                    threads.insert(tid, (name.trim().to_string(), ns));
                }
            }
        }
        ThreadTimes { threads }
    }
}

/// CPU nanoseconds by thread group, summed over `add`s, and the operations
/// (`units`) they were spent on.
#[derive(Default)]
pub struct GroupCpu {
    /// thread group -> CPU ns
    pub groups: BTreeMap<String, u64>,
    pub units: usize,
}

impl GroupCpu {
    /// Adds what each thread group used between two samples, for `units` operations.
    pub fn add(&mut self, before: &ThreadTimes, after: &ThreadTimes, units: usize) {
        for (tid, (name, ns)) in &after.threads {
            let earlier = before.threads.get(tid).map_or(0, |(_, ns)| *ns);
            *self.groups.entry(thread_group(name)).or_default() += ns.saturating_sub(earlier);
        }
        self.units += units;
    }

    pub fn per_unit_us(&self, group: &str) -> f64 {
        self.groups.get(group).copied().unwrap_or(0) as f64 / 1e3 / self.units.max(1) as f64
    }

    pub fn total_us(&self) -> f64 {
        self.groups.values().sum::<u64>() as f64 / 1e3 / self.units.max(1) as f64
    }
}

/// True, after saying so, when none of `cpu` holds a thread's CPU time.
pub fn no_thread_times<'a>(cpu: impl IntoIterator<Item = &'a GroupCpu>) -> bool {
    let none = cpu.into_iter().all(|c| c.groups.is_empty());
    if none {
        println!("\n(no per-thread CPU times: /proc/self/task/*/schedstat is unreadable)");
    }
    none
}

/// `refold-guest-1` -> `refold-guest`: a thread's name without its number.
fn thread_group(name: &str) -> String {
    name.trim_end_matches(|c: char| c.is_ascii_digit() || c == '-' || c == '_')
        .to_string()
}
