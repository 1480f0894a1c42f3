//! `refold projection ...`: watch projection versions replay, compare them,
//! promote one, and read their documents. `verify` is in `cli::verify`.

use std::io::{self, IsTerminal, Write};
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use reqwest::Method;
use serde_json::value::RawValue;
use serde_json::{Value, json};

use super::client::{Client, Failure};
use super::{ClientOptions, emit, emit_as, finish};
use crate::json_text::pretty;

/// `refold projection ...`
#[derive(clap::Subcommand, Debug)]
pub enum ProjectionCommand {
    /// List projections, their versions and progress
    List,
    /// One projection's versions; with --wait, follow them until each has caught up
    Status {
        name: String,
        /// Show progress bars until every version has caught up (or failed)
        #[arg(long)]
        wait: bool,
    },
    /// Make VERSION the live version (refused while it lags, unless --force)
    Promote {
        name: String,
        version: String,
        #[arg(long)]
        force: bool,
    },
    /// Empty VERSION's read model and replay the whole log into it
    Rebuild {
        name: String,
        version: String,
        /// Rebuild even the live version (its readers see it empty until it catches up)
        #[arg(long)]
        force: bool,
        /// Show a progress bar until it has caught up
        #[arg(long)]
        wait: bool,
    },
    /// Run a failed version's failing event again
    Retry { name: String, version: String },
    /// Skip a failed version's failing event (it is recorded)
    Skip {
        name: String,
        version: String,
        /// The failing event's position, as `status` shows it
        #[arg(long)]
        position: u64,
    },
    /// Delete VERSION and its read model (not the live version)
    Drop { name: String, version: String },
    /// What promoting TO over FROM would change
    Diff {
        name: String,
        from: String,
        to: String,
        /// Examples of each kind of change to show
        #[arg(long, default_value_t = 10)]
        sample: u64,
    },
    /// Print one document of the live version (or --version)
    Get {
        name: String,
        key: String,
        #[arg(long)]
        version: Option<String>,
        /// Wait until the version has processed this position (read your writes)
        #[arg(long)]
        min_position: Option<u64>,
    },
    /// List documents in key order
    Docs {
        name: String,
        #[arg(long, default_value = "")]
        prefix: String,
        #[arg(long, default_value_t = 100)]
        limit: u64,
        #[arg(long)]
        version: Option<String>,
    },
    /// Ask a projection's named query; arguments as KEY=VALUE
    Query {
        name: String,
        query: String,
        args: Vec<String>,
        #[arg(long)]
        version: Option<String>,
        /// Wait until the version has processed this position (read your writes)
        #[arg(long)]
        min_position: Option<u64>,
    },
    /// A digest of a version's documents, to check two replays agree
    Digest { name: String, version: String },
    /// Rebuild VERSION into a scratch copy no reader sees, up to its checkpoint,
    /// and compare the documents (exit 3 on a divergence); the version keeps serving
    Verify { name: String, version: String },
}

pub async fn projection(opts: &ClientOptions, cmd: ProjectionCommand) -> i32 {
    finish(opts, run(opts, cmd).await)
}

async fn run(opts: &ClientOptions, cmd: ProjectionCommand) -> Result<(), Failure> {
    let client = Client::new(opts)?;
    let get = |segments: &[&str], query: &[(&str, String)]| -> Result<_, Failure> {
        let url = client.url(segments, query)?;
        Ok(client.request(Method::GET, &url))
    };
    match cmd {
        ProjectionCommand::List => {
            let reply = client.call(get(&["v1", "projections"], &[])?).await?;
            emit(opts, &reply.body, |out, v| {
                let list = v["projections"].as_array().cloned().unwrap_or_default();
                if list.is_empty() {
                    writeln!(out, "no projections; upload one with `refold module push`")?;
                }
                for p in &list {
                    print_projection(out, p)?;
                }
                Ok(())
            })
        }
        ProjectionCommand::Status { name, wait } => {
            if wait && !opts.json {
                watch(&client, &name, None).await?;
            }
            let reply = client
                .call(get(&["v1", "projections", &name], &[])?)
                .await?;
            emit(opts, &reply.body, print_projection)
        }
        ProjectionCommand::Promote {
            name,
            version,
            force,
        } => {
            let url = client.url(&["v1", "projections", &name, "promote"], &[])?;
            let request = client
                .request(Method::POST, &url)
                .json(&json!({"version": version, "force": force}));
            let reply = client.call(request).await?;
            emit(opts, &reply.body, |out, v| {
                writeln!(out, "{name}@{} is live", str_of(&v["version"]))
            })
        }
        ProjectionCommand::Rebuild {
            name,
            version,
            force,
            wait,
        } => {
            let query: Vec<(&str, String)> = if force {
                vec![("force", "true".into())]
            } else {
                vec![]
            };
            let url = client.url(
                &["v1", "projections", &name, "versions", &version, "rebuild"],
                &query,
            )?;
            let reply = client.call(client.request(Method::POST, &url)).await?;
            if wait && !opts.json {
                watch(&client, &name, Some(&version)).await?;
            }
            emit(opts, &reply.body, |out, _| {
                writeln!(
                    out,
                    "{name}@{version} is replaying from the start of the log"
                )
            })
        }
        ProjectionCommand::Retry { name, version } => {
            let url = client.url(
                &["v1", "projections", &name, "versions", &version, "retry"],
                &[],
            )?;
            let reply = client.call(client.request(Method::POST, &url)).await?;
            emit(opts, &reply.body, |out, _| {
                writeln!(out, "{name}@{version} is retrying its failing event")
            })
        }
        ProjectionCommand::Skip {
            name,
            version,
            position,
        } => {
            let url = client.url(
                &["v1", "projections", &name, "versions", &version, "skip"],
                &[("position", position.to_string())],
            )?;
            let reply = client.call(client.request(Method::POST, &url)).await?;
            emit(opts, &reply.body, |out, _| {
                writeln!(
                    out,
                    "{name}@{version} skipped the event at position {position}"
                )
            })
        }
        ProjectionCommand::Drop { name, version } => {
            let url = client.url(&["v1", "projections", &name, "versions", &version], &[])?;
            client.call(client.request(Method::DELETE, &url)).await?;
            emit(opts, r#"{"dropped": true}"#, |out, _| {
                writeln!(out, "dropped {name}@{version} and its read model")
            })
        }
        ProjectionCommand::Diff {
            name,
            from,
            to,
            sample,
        } => {
            let query = [("from", from), ("to", to), ("sample", sample.to_string())];
            let reply = client
                .call(get(&["v1", "projections", &name, "diff"], &query)?)
                .await?;
            emit_as(opts, &reply.body, print_diff)
        }
        ProjectionCommand::Get {
            name,
            key,
            version,
            min_position,
        } => {
            let mut query = Vec::new();
            if let Some(v) = version {
                query.push(("version", v));
            }
            if let Some(p) = min_position {
                query.push(("min_position", p.to_string()));
            }
            let mut segments = vec!["v1", "projections", &name, "docs"];
            segments.extend(key.split('/'));
            let reply = client.call(get(&segments, &query)?).await?;
            emit_as(opts, &reply.body, |out, doc: &&RawValue| {
                writeln!(out, "{}", pretty(doc.get()))
            })
        }
        ProjectionCommand::Docs {
            name,
            prefix,
            limit,
            version,
        } => {
            let mut query = vec![("prefix", prefix), ("limit", limit.to_string())];
            if let Some(v) = version {
                query.push(("version", v));
            }
            let reply = client
                .call(get(&["v1", "projections", &name, "docs"], &query)?)
                .await?;
            emit_as(opts, &reply.body, |out, page: &DocsText| {
                for d in &page.documents {
                    writeln!(out, "{}  {}", str_of(&d.key), d.doc.get())?;
                }
                writeln!(
                    out,
                    "({} documents of {}@{} at position {})",
                    page.documents.len(),
                    name,
                    str_of(&page.version),
                    page.position
                )
            })
        }
        ProjectionCommand::Query {
            name,
            query,
            args,
            version,
            min_position,
        } => {
            let mut params = Vec::new();
            for arg in &args {
                let (k, v) = arg.split_once('=').ok_or_else(|| {
                    Failure::Local(format!("query arguments are KEY=VALUE, not {arg:?}"))
                })?;
                params.push((k, v.to_string()));
            }
            if let Some(v) = version {
                params.push(("version", v));
            }
            if let Some(p) = min_position {
                params.push(("min_position", p.to_string()));
            }
            let reply = client
                .call(get(
                    &["v1", "projections", &name, "queries", &query],
                    &params,
                )?)
                .await?;
            emit_as(opts, &reply.body, |out, answer: &&RawValue| {
                writeln!(out, "{}", pretty(answer.get()))
            })
        }
        ProjectionCommand::Verify { name, version } => {
            super::verify::verify_projection(&client, opts, &name, &version).await
        }
        ProjectionCommand::Digest { name, version } => {
            let reply = client
                .call(get(
                    &["v1", "projections", &name, "versions", &version, "digest"],
                    &[],
                )?)
                .await?;
            emit(opts, &reply.body, |out, v| {
                writeln!(
                    out,
                    "{name}@{version}: {} ({} documents at position {})",
                    str_of(&v["digest"]),
                    v["documents"],
                    v["position"]
                )
            })
        }
    }
}

/// A page of documents, each kept as the text the server sent.
#[derive(serde::Deserialize)]
struct DocsText<'a> {
    #[serde(borrow, default)]
    documents: Vec<DocText<'a>>,
    #[serde(default)]
    version: Value,
    #[serde(default)]
    position: Value,
}

#[derive(serde::Deserialize)]
struct DocText<'a> {
    #[serde(default)]
    key: Value,
    #[serde(borrow)]
    doc: &'a RawValue,
}

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or("?")
}

fn print_projection(out: &mut dyn Write, p: &Value) -> io::Result<()> {
    let live = p["live_version"].as_str();
    writeln!(
        out,
        "{} (live: {})",
        str_of(&p["name"]),
        live.unwrap_or("none yet")
    )?;
    for v in p["versions"].as_array().into_iter().flatten() {
        let mut line = format!(
            "  {}{}  {}  position {} of {}",
            str_of(&v["version"]),
            if v["live"].as_bool() == Some(true) {
                " *"
            } else {
                ""
            },
            str_of(&v["state"]),
            v["position"],
            v["head"],
        );
        if let Some(rate) = v["events_per_second"].as_f64().filter(|r| *r > 0.0) {
            line.push_str(&format!(", {rate:.0} events/s"));
        }
        if let Some(eta) = v["eta_seconds"].as_f64().filter(|e| *e > 0.0) {
            line.push_str(&format!(", ETA {eta:.0}s"));
        }
        writeln!(out, "{line}")?;
        if let Some(f) = v["failure"].as_object() {
            writeln!(
                out,
                "    failed at position {} ({}, attempt {}): {}",
                f["position"],
                str_of(&f["code"]),
                f["attempts"],
                str_of(&f["message"])
            )?;
            writeln!(
                out,
                "    fix the module and upload a new version, or: refold projection retry|skip {} {}",
                str_of(&p["name"]),
                str_of(&v["version"])
            )?;
        }
    }
    Ok(())
}

/// A diff, its sample documents kept as the text the server sent.
#[derive(serde::Deserialize)]
struct DiffText<'a> {
    #[serde(default)]
    from: Value,
    #[serde(default)]
    to: Value,
    #[serde(default)]
    from_position: Value,
    #[serde(default)]
    to_position: Value,
    #[serde(default)]
    added: Value,
    #[serde(default)]
    removed: Value,
    #[serde(default)]
    changed: Value,
    #[serde(default)]
    unchanged: Value,
    #[serde(borrow, default)]
    samples: DiffSamplesText<'a>,
}

#[derive(serde::Deserialize, Default)]
struct DiffSamplesText<'a> {
    #[serde(borrow, default)]
    added: Vec<DocText<'a>>,
    #[serde(borrow, default)]
    removed: Vec<DocText<'a>>,
    #[serde(borrow, default)]
    changed: Vec<ChangedText<'a>>,
}

#[derive(serde::Deserialize)]
struct ChangedText<'a> {
    #[serde(default)]
    key: Value,
    #[serde(borrow)]
    from: &'a RawValue,
    #[serde(borrow)]
    to: &'a RawValue,
}

fn print_diff(out: &mut dyn Write, v: &DiffText) -> io::Result<()> {
    writeln!(
        out,
        "{} (position {}) -> {} (position {}): {} added, {} removed, {} changed, {} unchanged",
        str_of(&v.from),
        v.from_position,
        str_of(&v.to),
        v.to_position,
        v.added,
        v.removed,
        v.changed,
        v.unchanged
    )?;
    for s in &v.samples.added {
        writeln!(out, "  + {}  {}", str_of(&s.key), s.doc.get())?;
    }
    for s in &v.samples.removed {
        writeln!(out, "  - {}  {}", str_of(&s.key), s.doc.get())?;
    }
    for s in &v.samples.changed {
        writeln!(
            out,
            "  ~ {}  {} -> {}",
            str_of(&s.key),
            s.from.get(),
            s.to.get()
        )?;
    }
    Ok(())
}

/// Polls a projection's status and draws one bar per version (only `version`
/// if given) until each has caught up or failed. Bars only on a terminal.
async fn watch(client: &Client, name: &str, version: Option<&str>) -> Result<(), Failure> {
    let tty = io::stderr().is_terminal();
    let bars = MultiProgress::new();
    let style = ProgressStyle::with_template("{prefix:>12} [{bar:40}] {pos}/{len} {msg}")
        .expect("a valid template")
        .progress_chars("=> ");
    let mut shown: Vec<(String, ProgressBar)> = Vec::new();
    loop {
        let url = client.url(&["v1", "projections", name], &[])?;
        let reply = client.call(client.request(Method::GET, &url)).await?;
        let view: Value = serde_json::from_str(&reply.body).map_err(|e| {
            Failure::Local(format!("the server answered with something not JSON: {e}"))
        })?;
        let mut done = true;
        for v in view["versions"].as_array().into_iter().flatten() {
            let ver = str_of(&v["version"]).to_string();
            if version.is_some_and(|want| want != ver) {
                continue;
            }
            let bar = match shown.iter().find(|(n, _)| *n == ver) {
                Some((_, bar)) => bar.clone(),
                None => {
                    let bar = if tty {
                        bars.add(ProgressBar::new(0))
                    } else {
                        ProgressBar::hidden()
                    };
                    bar.set_style(style.clone());
                    bar.set_prefix(ver.clone());
                    shown.push((ver.clone(), bar.clone()));
                    bar
                }
            };
            let (position, head) = (
                v["position"].as_u64().unwrap_or(0),
                v["head"].as_u64().unwrap_or(0),
            );
            bar.set_length(head);
            bar.set_position(position);
            let failed = v["failure"].is_object();
            let rate = v["events_per_second"].as_f64().unwrap_or(0.0);
            bar.set_message(if failed {
                "failed".to_string()
            } else {
                format!("{rate:.0} events/s")
            });
            if !failed && (position < head || v["state"] != "caught_up") {
                done = false;
            }
        }
        if done {
            for (_, bar) in &shown {
                bar.finish();
            }
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
