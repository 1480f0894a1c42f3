//! The tamper-evident log from the command line: `refold verify` re-walks the
//! hash chain and the seals (on a stopped data directory, or on a running
//! server over HTTP), `refold proof P` fetches an event's inclusion proof, and
//! `refold verify-proof FILE` checks one offline, without a server. A log or
//! proof that does not verify exits 3.

use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use reqwest::Method;
use serde_json::Value;

use super::client::{Client, Failure, Problem};
use super::output::text;
use super::{ClientOptions, finish};
use crate::store::integrity::{self, Digest};
use crate::store::{Store, StoreConfig, VerifyReport};

/// A walk of the whole log may take long; the server streams progress lines.
const WALK_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// `refold verify [--from P] [--to P] [--data-dir DIR] [--public-key HEX]`.
#[derive(clap::Args, Debug, Clone)]
pub struct VerifyLogArgs {
    /// First position to check (the walk widens to the seal that holds it)
    #[arg(long, default_value_t = 1)]
    pub from: u64,
    /// Last position to check (default: the head)
    #[arg(long)]
    pub to: Option<u64>,
    /// Check a stopped server's data directory instead of asking a running server
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Every seal must be signed by this ed25519 key (64 hex digits, as
    /// `GET /v1/integrity` shows it)
    #[arg(long)]
    pub public_key: Option<String>,
}

pub async fn verify_log(opts: &ClientOptions, args: VerifyLogArgs) -> i32 {
    finish(opts, run_verify_log(opts, args).await)
}

async fn run_verify_log(opts: &ClientOptions, args: VerifyLogArgs) -> Result<(), Failure> {
    let key = parse_key(args.public_key.as_deref())?;
    if let Some(to) = args.to
        && to < args.from
    {
        return Err(Failure::Local(format!(
            "--to {to} is before --from {}",
            args.from
        )));
    }
    let bar = progress_bar(opts);
    let report = match &args.data_dir {
        Some(dir) => {
            let (dir, bar2) = (dir.clone(), bar.clone());
            tokio::task::spawn_blocking(move || verify_dir(&dir, &args, key.as_ref(), &bar2))
                .await
                .map_err(|e| Failure::Local(format!("the verify task failed: {e}")))??
        }
        None => verify_remote(opts, &args, &bar).await?,
    };
    bar.finish_and_clear();
    report_walk(opts, &report)
}

/// Walks a stopped data directory (the lock says whether a server holds it).
fn verify_dir(
    dir: &Path,
    args: &VerifyLogArgs,
    key: Option<&Digest>,
    bar: &ProgressBar,
) -> Result<VerifyReport, Failure> {
    let events = dir.join("events");
    if !events.join("sled").is_dir() {
        return Err(Failure::Local(format!(
            "{} is not a Refold data directory (no events/sled in it)",
            dir.display()
        )));
    }
    let store = Store::open(StoreConfig::new(events))
        .map_err(|e| Failure::Local(format!("cannot open {}: {e}", dir.display())))?;
    let mut progress = |at: u64, to: u64| {
        bar.set_length(to);
        bar.set_position(at);
        true
    };
    store
        .verify_log(args.from, args.to, key, &mut progress)
        .map_err(|e| Failure::Local(format!("reading {}: {e}", dir.display())))
}

/// Asks a running server to walk its log, following its progress lines.
async fn verify_remote(
    opts: &ClientOptions,
    args: &VerifyLogArgs,
    bar: &ProgressBar,
) -> Result<VerifyReport, Failure> {
    let client = Client::new(opts)?;
    let mut query = vec![("from", args.from.to_string())];
    if let Some(to) = args.to {
        query.push(("to", to.to_string()));
    }
    if let Some(key) = &args.public_key {
        query.push(("public_key", key.clone()));
    }
    let url = client.url(&["v1", "integrity", "verify"], &query)?;
    let mut response = client
        .request(Method::GET, &url)
        .timeout(WALK_TIMEOUT)
        .send()
        .await
        .map_err(|e| client.transport(e))?;
    let status = response.status();
    if !status.is_success() {
        let body = response.text().await.unwrap_or_default();
        return Err(Failure::Problem(Problem::from_response(status, &body)));
    }
    let mut pending = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| client.transport(e))? {
        pending.extend_from_slice(&chunk);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let value: Value = serde_json::from_slice(&line).map_err(|e| {
                Failure::Local(format!("the server sent a line that is not JSON: {e}"))
            })?;
            if let (Some(at), Some(to)) = (value["checked"].as_u64(), value["to"].as_u64()) {
                bar.set_length(to);
                bar.set_position(at);
            } else if let Some(error) = value.get("error") {
                return Err(Failure::Local(format!(
                    "the server could not walk its log: {}",
                    text(&error["detail"])
                )));
            } else if let Some(report) = value.get("report") {
                return report_from_json(report);
            }
        }
    }
    Err(client.unreachable("the server ended the walk without a report".into()))
}

fn report_from_json(report: &Value) -> Result<VerifyReport, Failure> {
    serde_json::from_value(report.clone()).map_err(|e| {
        Failure::Local(format!(
            "the server's report is not one this CLI reads: {e}"
        ))
    })
}

/// Prints the walk's report; a broken log exits 3.
fn report_walk(opts: &ClientOptions, report: &VerifyReport) -> Result<(), Failure> {
    let mut out = io::stdout().lock();
    if opts.json {
        let json = serde_json::json!({ "ok": report.failure.is_none(), "report": report });
        writeln!(out, "{json}").map_err(Failure::Output)?;
    } else if let Some(failure) = &report.failure {
        writeln!(
            out,
            "log BROKEN at position {}: {} (walked {}..={}: {} events, {} seals before it)",
            failure.position, failure.reason, report.from, report.to, report.events, report.seals
        )
        .map_err(Failure::Output)?;
    } else if report.events == 0 {
        writeln!(
            out,
            "nothing to verify: no events in {}..={}",
            report.from, report.to
        )
        .map_err(Failure::Output)?;
    } else {
        writeln!(
            out,
            "ok: positions {}..={}: {} events chain, {} seals match",
            report.from, report.to, report.events, report.seals
        )
        .map_err(Failure::Output)?;
        if report.unsigned_seals > 0 {
            writeln!(
                out,
                "note: {} of the seals are unsigned; with --public-key every seal must be signed by that key",
                report.unsigned_seals
            )
            .map_err(Failure::Output)?;
        }
    }
    match &report.failure {
        Some(f) => Err(Failure::Diverged(format!(
            "the log does not verify at position {}",
            f.position
        ))),
        None => Ok(()),
    }
}

/// `refold proof POSITION`: the proof document, as JSON, for `verify-proof`.
pub async fn proof(opts: &ClientOptions, position: u64) -> i32 {
    let result = async {
        let client = Client::new(opts)?;
        let url = client.url(&["v1", "events", &position.to_string(), "proof"], &[])?;
        let reply = client.call(client.request(Method::GET, &url)).await?;
        let mut out = io::stdout().lock();
        writeln!(out, "{}", reply.body.trim_end()).map_err(Failure::Output)
    }
    .await;
    finish(opts, result)
}

/// A proof document is a few KiB; anything near this is not one.
const MAX_PROOF_FILE: u64 = 16 << 20;

/// `refold verify-proof FILE [--public-key HEX] [--seal-digest HEX]`: offline, no server.
pub fn verify_proof(
    opts: &ClientOptions,
    file: &Path,
    public_key: Option<&str>,
    seal_digest: Option<&str>,
) -> i32 {
    let result = (|| {
        let key = parse_key(public_key)?;
        let digest = seal_digest
            .map(|t| {
                integrity::digest_from_hex(t.trim())
                    .ok_or_else(|| Failure::Local("--seal-digest must be 64 hex digits".into()))
            })
            .transpose()?;
        let document = read_bounded(file)?;
        let mut out = io::stdout().lock();
        let trust = crate::api::integrity::ProofTrust {
            public_key: key.as_ref(),
            seal_digest: digest.as_ref(),
        };
        match crate::api::integrity::check_proof_with(&document, trust) {
            Ok(check) => {
                if opts.json {
                    let json = serde_json::json!({ "ok": true, "check": check });
                    writeln!(out, "{json}").map_err(Failure::Output)?;
                } else {
                    let signer = match (&check.signed_by, key.is_some(), digest.is_some()) {
                        (Some(k), true, _) => format!("signed by the trusted key {k}"),
                        (_, _, true) => "the seal is the one the trusted digest names".into(),
                        (Some(k), false, false) => format!(
                            "signed by {k}, the proof's own key: NOT TRUSTED (pass --public-key)"
                        ),
                        (None, _, false) => format!(
                            "unsigned seal with digest {}: NOT TRUSTED (pass --seal-digest \
                             with a digest you trust)",
                            check.seal_digest
                        ),
                    };
                    writeln!(
                        out,
                        "ok: event {} is in the seal over {}..={} (root {}); {signer}",
                        check.position,
                        check.seal_first_position,
                        check.seal_last_position,
                        check.root
                    )
                    .map_err(Failure::Output)?;
                }
                Ok(())
            }
            Err(reason) => {
                if opts.json {
                    let json = serde_json::json!({ "ok": false, "reason": reason });
                    writeln!(out, "{json}").map_err(Failure::Output)?;
                }
                Err(Failure::Diverged(format!(
                    "the proof does not verify: {reason}"
                )))
            }
        }
    })();
    finish(opts, result)
}

/// Reads a proof file, refusing one too big to be a proof (or endless, like /dev/zero).
fn read_bounded(file: &Path) -> Result<String, Failure> {
    use std::io::Read;
    let cannot = |e: io::Error| Failure::Local(format!("cannot read {}: {e}", file.display()));
    let mut text = String::new();
    std::fs::File::open(file)
        .map_err(cannot)?
        .take(MAX_PROOF_FILE + 1)
        .read_to_string(&mut text)
        .map_err(cannot)?;
    if text.len() as u64 > MAX_PROOF_FILE {
        return Err(Failure::Local(format!(
            "{} is over {} MiB: not a proof",
            file.display(),
            MAX_PROOF_FILE >> 20
        )));
    }
    Ok(text)
}

fn parse_key(text: Option<&str>) -> Result<Option<Digest>, Failure> {
    text.map(|t| {
        integrity::digest_from_hex(t.trim()).ok_or_else(|| {
            Failure::Local("--public-key must be 64 hex digits (an ed25519 public key)".into())
        })
    })
    .transpose()
}

fn progress_bar(opts: &ClientOptions) -> ProgressBar {
    if !io::stderr().is_terminal() || opts.json {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>12} [{bar:40}] {pos}/{len} {per_sec}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix("verify");
    bar
}
