//! `refold process ...`: process managers (sagas) and their instances.

use std::io::{self, Write};

use reqwest::Method;
use serde_json::Value;

use super::client::{Client, Failure};
use super::{ClientOptions, emit, finish};
use crate::json_text::pretty;

/// `refold process ...`
#[derive(clap::Subcommand, Debug)]
pub enum ProcessCommand {
    /// List processes: progress, lag, instances by status, pending commands
    List,
    /// One process and its instances (--status running|completed|failed), or
    /// with an ID one instance: its state, pending commands, deadlines and history
    Show {
        name: String,
        id: Option<String>,
        #[arg(long)]
        status: Option<String>,
        /// Instances listed, or history records shown
        #[arg(long, default_value_t = 100)]
        limit: u64,
        /// List instances after this id
        #[arg(long)]
        after: Option<String>,
    },
}

pub async fn process(opts: &ClientOptions, cmd: ProcessCommand) -> i32 {
    finish(opts, run(opts, cmd).await)
}

async fn run(opts: &ClientOptions, cmd: ProcessCommand) -> Result<(), Failure> {
    let client = Client::new(opts)?;
    match cmd {
        ProcessCommand::List => {
            let url = client.url(&["v1", "processes"], &[])?;
            let reply = client.call(client.request(Method::GET, &url)).await?;
            emit(opts, &reply.body, |out, v| {
                let list = v["processes"].as_array().cloned().unwrap_or_default();
                if list.is_empty() {
                    writeln!(out, "no processes; upload one with `refold module push`")?;
                }
                for p in &list {
                    print_process(out, p)?;
                }
                Ok(())
            })
        }
        ProcessCommand::Show {
            name,
            id: None,
            status,
            limit,
            after,
        } => {
            let mut query = vec![("limit", limit.to_string())];
            if let Some(status) = status {
                query.push(("status", status));
            }
            if let Some(after) = after {
                query.push(("after", after));
            }
            let url = client.url(&["v1", "processes", &name], &query)?;
            let reply = client.call(client.request(Method::GET, &url)).await?;
            emit(opts, &reply.body, |out, v| {
                print_process(out, v)?;
                let page = v["page"]["instances"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                for i in &page {
                    write!(
                        out,
                        "  {:<40} {:<10} v{:<5}",
                        i["id"].as_str().unwrap_or("?"),
                        i["status"].as_str().unwrap_or("?"),
                        i["version"]
                    )?;
                    if let Some(n) = i["pending_commands"].as_u64().filter(|n| *n > 0) {
                        write!(out, " {n} pending")?;
                    }
                    if let Some(at) = i["next_deadline_ms"].as_u64() {
                        write!(out, " wakes at {at}")?;
                    }
                    if let Some(s) = i["stalled"].as_str() {
                        write!(out, " STOPPED: {s}")?;
                    }
                    writeln!(out)?;
                }
                if let Some(next) = v["page"]["next"].as_str() {
                    writeln!(out, "  more: --after {next}")?;
                }
                Ok(())
            })
        }
        ProcessCommand::Show {
            name,
            id: Some(id),
            limit,
            ..
        } => {
            let url = client.url(
                &["v1", "processes", &name, &id],
                &[("limit", limit.to_string())],
            )?;
            let reply = client.call(client.request(Method::GET, &url)).await?;
            emit(opts, &reply.body, |out, v| print_instance(out, v))
        }
    }
}

fn print_process(out: &mut dyn Write, p: &Value) -> io::Result<()> {
    let counts = &p["instances"];
    writeln!(
        out,
        "{}@{}  checkpoint {} of {} (lag {}){}",
        p["name"].as_str().unwrap_or("?"),
        p["version"].as_str().unwrap_or("?"),
        p["checkpoint"],
        p["head"],
        p["lag"],
        if p["caught_up"].as_bool() == Some(true) {
            ", caught up"
        } else {
            ""
        }
    )?;
    writeln!(
        out,
        "  instances: {} running, {} completed, {} failed; {} commands pending; sent {}, accepted {}, rejected {}",
        counts["running"],
        counts["completed"],
        counts["failed"],
        p["pending_commands"],
        p["commands_sent"],
        p["commands_accepted"],
        p["commands_rejected"],
    )?;
    if let Some(f) = p["failure"].as_str() {
        writeln!(out, "  STOPPED: {f}")?;
    }
    if let Some(n) = p["stalled_instances"].as_u64().filter(|n| *n > 0) {
        writeln!(
            out,
            "  {n} instances stopped at an input (see `refold process show NAME ID`)"
        )?;
    }
    Ok(())
}

fn print_instance(out: &mut dyn Write, v: &Value) -> io::Result<()> {
    writeln!(
        out,
        "{} {}: {} at version {} (folded by {})",
        v["process"].as_str().unwrap_or("?"),
        v["id"].as_str().unwrap_or("?"),
        v["status"].as_str().unwrap_or("?"),
        v["version"],
        v["folded_by"].as_str().unwrap_or("?"),
    )?;
    if let Some(s) = v["stalled"].as_str() {
        writeln!(out, "STOPPED: {s}")?;
    }
    writeln!(out, "state:")?;
    writeln!(out, "{}", pretty(&v["state"].to_string()))?;
    for c in v["pending_commands"].as_array().into_iter().flatten() {
        writeln!(
            out,
            "pending {} -> {}/{}: {} ({})",
            c["key"].as_str().unwrap_or("?"),
            c["aggregate_type"].as_str().unwrap_or("?"),
            c["aggregate_id"].as_str().unwrap_or("?"),
            c["command"].as_str().unwrap_or("?"),
            c["command_id"].as_str().unwrap_or("?"),
        )?;
    }
    for d in v["deadlines"].as_array().into_iter().flatten() {
        writeln!(
            out,
            "deadline {} at {}",
            d["key"].as_str().unwrap_or("?"),
            d["at_ms"]
        )?;
    }
    writeln!(out, "history:")?;
    for e in v["history"].as_array().into_iter().flatten() {
        writeln!(
            out,
            "  {:>4} {:<20} {}",
            e["version"],
            e["event_type"].as_str().unwrap_or("?"),
            e["data"]
        )?;
    }
    if let Some(next) = v["history_next"].as_u64() {
        writeln!(out, "  (more from version {next})")?;
    }
    Ok(())
}
