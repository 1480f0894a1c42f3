//! `refold module check NAME VERSION`: starts a replay check on the server
//! and follows it (a progress bar on a terminal), then prints the verdict:
//! exit 0 when every stream folded, 3 when some did not.

use std::io::{self, IsTerminal, Write};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use reqwest::Method;
use serde_json::{Value, json};

use super::client::{Client, Failure};
use super::output::text;
use super::{ClientOptions, emit};

pub(super) async fn run(
    client: &Client,
    opts: &ClientOptions,
    name: &str,
    version: &str,
    sample: Vec<String>,
) -> Result<(), Failure> {
    let url = client.url(&["v1", "modules", name, version, "check"], &[])?;
    let body = if sample.is_empty() {
        json!({})
    } else {
        json!({ "sample": sample })
    };
    client
        .call(client.request(Method::POST, &url).json(&body))
        .await?;
    let bar = if io::stderr().is_terminal() && !opts.json {
        ProgressBar::new(0)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{prefix:>12} [{bar:40}] {pos}/{len} streams {msg}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(version.to_string());
    let reply = loop {
        let reply = client.call(client.request(Method::GET, &url)).await?;
        let status: Value = serde_json::from_str(&reply.body).map_err(|e| {
            Failure::Local(format!("the server answered with something not JSON: {e}"))
        })?;
        bar.set_length(status["streams_total"].as_u64().unwrap_or(0));
        bar.set_position(status["streams_checked"].as_u64().unwrap_or(0));
        bar.set_message(format!(
            "{} failed, {} differ",
            status["streams_failed"].as_u64().unwrap_or(0),
            status["streams_differing"].as_u64().unwrap_or(0)
        ));
        if status["state"] != "running" {
            break (reply, status);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    bar.finish_and_clear();
    let (reply, status) = reply;
    emit(opts, &reply.body, check_report)?;
    if status["state"] == "passed" {
        Ok(())
    } else {
        Err(Failure::Diverged(format!(
            "{}@{} did not pass the replay check: {} of {} streams failed{}",
            name,
            version,
            status["streams_failed"].as_u64().unwrap_or(0),
            status["streams_checked"].as_u64().unwrap_or(0),
            match status["error"].as_str() {
                Some(e) => format!(" ({e})"),
                None => String::new(),
            }
        )))
    }
}

fn check_report(out: &mut dyn Write, v: &Value) -> io::Result<()> {
    writeln!(
        out,
        "{}@{} {}: {} streams checked{}, {} failed, {} fold to another state than {}",
        text(&v["module"]),
        text(&v["version"]),
        text(&v["state"]),
        v["streams_checked"].as_u64().unwrap_or(0),
        if v["sampled"] == true {
            " (a sample)"
        } else {
            ""
        },
        v["streams_failed"].as_u64().unwrap_or(0),
        v["streams_differing"].as_u64().unwrap_or(0),
        v["compared_with"].as_str().unwrap_or("no active version"),
    )?;
    for f in v["failures"].as_array().into_iter().flatten() {
        writeln!(
            out,
            "  failed  {} (versions {}..={}) {}: {}",
            text(&f["aggregate_id"]),
            f["from_version"],
            f["to_version"],
            text(&f["kind"]),
            text(&f["error"])
        )?;
    }
    for d in v["differences"].as_array().into_iter().flatten() {
        writeln!(
            out,
            "  differs {} at version {}",
            text(&d["aggregate_id"]),
            d["version"]
        )?;
    }
    Ok(())
}
