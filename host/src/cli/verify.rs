//! The determinism audits from the command line: `refold verify aggregate
//! TYPE ID` and `refold projection verify NAME VERSION`. Each prints its
//! finding (or the server's report with `--json`) and exits 3 when replaying
//! did not reproduce what was recorded.

use std::io::{self, IsTerminal, Write};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use reqwest::Method;
use serde_json::Value;

use super::client::{Client, Failure};
use super::output::text;
use super::{ClientOptions, emit, finish};

/// A verify replays a whole stream or projection: far longer than other requests may take.
const VERIFY_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// `refold verify`: without a subcommand, the log's hash chain and seals
/// (`integrity::VerifyLogArgs`); `refold verify aggregate TYPE ID` replays a stream.
#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct VerifyArgs {
    #[command(subcommand)]
    pub command: Option<VerifyCommand>,
    #[command(flatten)]
    pub log: super::integrity::VerifyLogArgs,
}

#[derive(clap::Subcommand, Debug)]
pub enum VerifyCommand {
    /// Replay an aggregate's stream with the modules that wrote it and compare
    /// every recorded state digest
    Aggregate { aggregate_type: String, id: String },
}

pub async fn verify(opts: &ClientOptions, args: VerifyArgs) -> i32 {
    let Some(cmd) = args.command else {
        return super::integrity::verify_log(opts, args.log).await;
    };
    let result = match cmd {
        VerifyCommand::Aggregate { aggregate_type, id } => {
            verify_aggregate(opts, &aggregate_type, &id).await
        }
    };
    finish(opts, result)
}

async fn verify_aggregate(
    opts: &ClientOptions,
    aggregate_type: &str,
    id: &str,
) -> Result<(), Failure> {
    let client = Client::new(opts)?;
    let url = client.url(&["v1", "aggregates", aggregate_type, id, "verify"], &[])?;
    let reply = client
        .call_within(client.request(Method::GET, &url), VERIFY_TIMEOUT)
        .await?;
    emit(opts, &reply.body, aggregate_report)?;
    verdict(&reply.body, |v| {
        let stream = format!(
            "{}/{}",
            text(&v["aggregate_type"]),
            text(&v["aggregate_id"])
        );
        if v["divergences"].as_u64() == Some(0) {
            format!("{stream} could not be verified completely (see the report)")
        } else {
            format!(
                "{stream} diverged at version {}",
                text(&v["first_divergence"]["version"])
            )
        }
    })
}

/// `bank-account/acc-1: ok: replaying 12 events reproduced all 5 recorded state digests`
fn aggregate_report(out: &mut dyn Write, v: &Value) -> io::Result<()> {
    let stream = format!(
        "{}/{}",
        text(&v["aggregate_type"]),
        text(&v["aggregate_id"])
    );
    if v["ok"] == Value::Bool(true) {
        writeln!(
            out,
            "{stream}: ok: replaying {} events reproduced all {} recorded state digests",
            text(&v["events"]),
            text(&v["digests_checked"])
        )?;
    } else if v["divergences"].as_u64() == Some(0) {
        writeln!(
            out,
            "{stream}: INCOMPLETE: {} of {} recorded state digests could be compared ({} events); no divergence among them",
            text(&v["digests_checked"]),
            v["digests_checked"].as_u64().unwrap_or(0)
                + v["digests_unchecked"].as_u64().unwrap_or(0),
            text(&v["events"]),
        )?;
    } else {
        let first = &v["first_divergence"];
        writeln!(
            out,
            "{stream}: DIVERGED at version {} (replayed {}): {} recorded state digest {}, replaying gives {}",
            text(&first["version"]),
            text(&first["batching"]).replace('_', " "),
            text(&first["module"]),
            text(&first["recorded"]),
            text(&first["replayed"])
        )?;
        writeln!(
            out,
            "  {} of {} recorded digests differ ({} events)",
            text(&v["divergences"]),
            text(&v["digests_checked"]),
            text(&v["events"])
        )?;
    }
    let unchecked = v["unchecked_modules"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if !unchecked.is_empty() {
        let names: Vec<String> = unchecked.iter().map(text).collect();
        writeln!(
            out,
            "  not checked: {} digests recorded by {} (not loaded on the server)",
            text(&v["digests_unchecked"]),
            names.join(", ")
        )?;
    }
    Ok(())
}

/// `refold projection verify NAME VERSION`, with a progress bar on a terminal
/// while the scratch rebuild catches up with the version.
pub(super) async fn verify_projection(
    client: &Client,
    opts: &ClientOptions,
    name: &str,
    version: &str,
) -> Result<(), Failure> {
    let url = client.url(
        &["v1", "projections", name, "versions", version, "verify"],
        &[],
    )?;
    let request = client.call_within(client.request(Method::POST, &url), VERIFY_TIMEOUT);
    let reply = if io::stderr().is_terminal() && !opts.json {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template("{prefix:>12} [{bar:40}] {pos}/{len} {msg}")
                .expect("a valid template")
                .progress_chars("=> "),
        );
        bar.set_prefix("verify");
        let reply = {
            let watching = watch_progress(client, name, version, &bar);
            tokio::pin!(request);
            tokio::select! {
                reply = &mut request => reply,
                _ = watching => request.await,
            }
        };
        bar.finish_and_clear();
        reply?
    } else {
        request.await?
    };
    emit(opts, &reply.body, projection_report)?;
    verdict(&reply.body, |v| {
        format!(
            "{}@{} diverged from its rebuild at position {}",
            text(&v["projection"]),
            text(&v["version"]),
            text(&v["position"])
        )
    })
}

/// Polls the version's status and moves the bar until the verify is done
/// (never returns on its own; a failed poll just stops the bar).
async fn watch_progress(client: &Client, name: &str, version: &str, bar: &ProgressBar) {
    let Ok(url) = client.url(&["v1", "projections", name, "versions", version], &[]) else {
        return;
    };
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let Ok(reply) = client.call(client.request(Method::GET, &url)).await else {
            return std::future::pending().await;
        };
        let Ok(view) = serde_json::from_str::<Value>(&reply.body) else {
            return std::future::pending().await;
        };
        let progress = &view["verify"];
        if let (Some(position), Some(target)) =
            (progress["position"].as_u64(), progress["target"].as_u64())
        {
            bar.set_length(target);
            bar.set_position(position);
            bar.set_message(text(&progress["phase"]).replace('_', " "));
        }
    }
}

/// `account-balances@1.0.0: ok at position 120: the rebuild's 14 documents are identical (sha256 ...)`
fn projection_report(out: &mut dyn Write, v: &Value) -> io::Result<()> {
    let label = format!("{}@{}", text(&v["projection"]), text(&v["version"]));
    if let Some(failure) = v["failure"].as_object() {
        writeln!(
            out,
            "{label}: DIVERGED: the rebuild failed at position {} ({}), which the version had applied: {}",
            text(&failure["position"]),
            text(&failure["code"]),
            text(&failure["message"])
        )?;
    } else if v["ok"] == Value::Bool(true) {
        writeln!(
            out,
            "{label}: ok at position {}: the rebuild's {} documents are identical (sha256 {})",
            text(&v["position"]),
            text(&v["live"]["documents"]),
            text(&v["live"]["digest"])
        )?;
    } else {
        writeln!(
            out,
            "{label}: DIVERGED at position {}: {} documents (sha256 {}) but the rebuild has {} (sha256 {})",
            text(&v["position"]),
            text(&v["live"]["documents"]),
            text(&v["live"]["digest"]),
            text(&v["rebuilt"]["documents"]),
            text(&v["rebuilt"]["digest"])
        )?;
        writeln!(
            out,
            "  {} keys changed, {} only in the rebuild, {} only in the version",
            text(&v["changed"]),
            text(&v["added"]),
            text(&v["removed"])
        )?;
        let first = &v["first_divergence"];
        writeln!(out, "  first differing key: {}", text(&first["key"]))?;
        writeln!(out, "    version: {}", first["live"])?;
        writeln!(out, "    rebuild: {}", first["rebuilt"])?;
    }
    writeln!(
        out,
        "  {} events applied, {} skipped; the version's runner was paused {} ms of {} ms",
        text(&v["events_applied"]),
        text(&v["events_skipped"]),
        text(&v["paused_ms"]),
        text(&v["duration_ms"])
    )
}

/// Exit 3 when the report says the replay diverged.
fn verdict(body: &str, summary: impl FnOnce(&Value) -> String) -> Result<(), Failure> {
    let report: Value = serde_json::from_str(body)
        .map_err(|e| Failure::Local(format!("the server answered with something not JSON: {e}")))?;
    if report["ok"] == Value::Bool(true) {
        Ok(())
    } else {
        Err(Failure::Diverged(summary(&report)))
    }
}
