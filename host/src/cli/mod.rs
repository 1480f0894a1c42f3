//! The client side of the `refold` CLI: commands that talk to a running
//! server over HTTP and print the answer for people (or as JSON with `--json`).
//!
//! Every entry point returns the process exit code rather than an error, so
//! `main` only has to pass it on: 0 ok, 1 the server said no (or a usage
//! error), 2 the server could not be reached, 3 a verify found a divergence.
//!
//! - `client`: URLs, requests, and how each failure maps to an exit code.
//! - `follow`: `events --follow` over Server-Sent Events, with resumption.
//! - `sse`: the Server-Sent Events line parser.
//! - `output`: the text for people.
//! - `projection`: `refold projection ...`, with progress bars while versions replay.
//! - `verify`: `refold verify aggregate` and `refold projection verify`: the
//!   determinism audits, exiting 3 on a divergence.
//! - `integrity`: `refold verify` (the log's hash chain and seals), `refold
//!   proof` and `refold verify-proof`, exiting 3 when something does not verify.
//! - `tooling`: `refold new`, `build` and `deploy` (crates, cargo, the world
//!   check), and the example builds of `refold serve --examples`.

mod check;
mod client;
mod follow;
mod integrity;
mod migrate;
mod output;
mod process;
mod projection;
mod sse;
pub mod tooling;
mod verify;

pub use integrity::{proof, verify_proof};
pub use migrate::migrate;
pub use process::{ProcessCommand, process};
pub use projection::{ProjectionCommand, projection};
pub use verify::{VerifyArgs, VerifyCommand, verify};

use std::io::{self, Write};
use std::path::PathBuf;

use reqwest::header::{CONTENT_TYPE, HeaderValue, IF_MATCH};
use reqwest::{Method, StatusCode};
use serde_json::Value;

use client::{Client, Failure};

/// Global options shared by client commands.
#[derive(clap::Args, Debug, Clone)]
pub struct ClientOptions {
    /// Server base URL
    #[arg(
        long,
        env = "REFOLD_SERVER",
        default_value = "http://127.0.0.1:7700",
        global = true
    )]
    pub server: String,
    /// Bearer token
    #[arg(long, env = "REFOLD_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// Print machine-readable JSON instead of text for people
    #[arg(long, global = true)]
    pub json: bool,
}

/// `refold module ...`: manage the modules (Wasm components) on the server.
#[derive(clap::Subcommand, Debug)]
pub enum ModuleCommand {
    /// Upload a compiled component as NAME@VERSION
    Push {
        /// The component file (.wasm)
        file: PathBuf,
        /// Module name, usually the aggregate type it handles
        #[arg(long)]
        name: String,
        /// Module version (semver)
        #[arg(long)]
        version: String,
        /// Make this version the active one once uploaded
        #[arg(long)]
        activate: bool,
    },
    /// List the modules and their versions
    List,
    /// Make an uploaded version the one that handles new commands (or, with
    /// --canary, a share of the aggregate ids)
    Activate {
        name: String,
        version: String,
        /// Percent of aggregate ids (1 to 99, chosen by a hash of the id) that
        /// go to VERSION; the others stay on the stable version. 100 promotes.
        #[arg(long, value_parser = clap::value_parser!(u8).range(1..=100))]
        canary: Option<u8>,
        /// Activate even though VERSION has not passed a replay check
        #[arg(long)]
        force: bool,
    },
    /// Fold every stream of NAME (or the --sample ids) with VERSION's apply,
    /// following the check with a progress bar; exit 3 when a stream fails.
    /// `activate` refuses an aggregate version that has not passed one
    Check {
        name: String,
        version: String,
        /// Check only this aggregate id (repeatable)
        #[arg(long)]
        sample: Vec<String>,
    },
    /// Go back one step: drop the running canary, or re-activate the version
    /// active before the current one
    Rollback {
        name: String,
        /// Also move aggregates whose last event the newer version produced
        /// back (it is retired: it decides for no aggregate)
        #[arg(long)]
        force: bool,
        /// Only if the version it would roll back from is this one (a retry
        /// then never takes a second step)
        #[arg(long)]
        from: Option<String>,
    },
    /// Decide the journaled commands of NAME again with NAME@VERSION, each
    /// from the state it was decided on, and report what would change
    Whatif {
        name: String,
        version: String,
        /// Start at this time (unix ms), or at an earlier answer's next_since
        #[arg(long)]
        since: Option<String>,
        /// At most this many commands (1 to 10000; default 1000)
        #[arg(long)]
        limit: Option<u64>,
    },
}

/// Runs one `module` subcommand; returns the process exit code.
pub async fn module(opts: &ClientOptions, cmd: ModuleCommand) -> i32 {
    finish(opts, run_module(opts, cmd).await)
}

/// Sends one command (JSON text) to an aggregate; returns the process exit code.
/// `expect` is the version the aggregate must be at; `key` an idempotency key.
pub async fn send(
    opts: &ClientOptions,
    aggregate_type: &str,
    id: &str,
    command_json: &str,
    expect: Option<u64>,
    key: Option<&str>,
) -> i32 {
    finish(
        opts,
        run_send(opts, aggregate_type, id, command_json, expect, key).await,
    )
}

/// Prints an aggregate's state, now or as of `at_version`; returns the process exit code.
pub async fn state(
    opts: &ClientOptions,
    aggregate_type: &str,
    id: &str,
    at_version: Option<u64>,
) -> i32 {
    finish(opts, run_state(opts, aggregate_type, id, at_version).await)
}

/// Prints events of the global log from `from`. With `follow` it keeps
/// printing new events as they are recorded (stopping after `limit` events if
/// given; with `from_end`, only those recorded from now on); without, it
/// prints one page. Returns the process exit code.
pub async fn events(
    opts: &ClientOptions,
    from: Option<u64>,
    from_end: bool,
    limit: Option<u64>,
    follow: bool,
) -> i32 {
    let result = match Client::new(opts) {
        Ok(client) if follow => follow::follow(&client, opts.json, from, from_end, limit).await,
        Ok(client) => run_events_page(&client, opts, from, limit).await,
        Err(failure) => Err(failure),
    };
    finish(opts, result)
}

/// Asks the server for an online backup into `path` (on the server's machine);
/// returns the process exit code.
pub async fn backup(opts: &ClientOptions, path: &std::path::Path) -> i32 {
    let result = async {
        let client = Client::new(opts)?;
        let url = client.url(&["v1", "admin", "backup"], &[])?;
        let request = client
            .request(Method::POST, &url)
            .json(&serde_json::json!({ "path": path }));
        let reply = client.call(request).await?;
        emit(opts, &reply.body, |out, v| {
            writeln!(
                out,
                "backed up {} events ({} streams, {} module files) up to position {} into {}",
                v["events"],
                v["streams"],
                v["module_files"],
                v["position"],
                v["path"].as_str().unwrap_or("?")
            )
        })
    }
    .await;
    finish(opts, result)
}

async fn run_module(opts: &ClientOptions, cmd: ModuleCommand) -> Result<(), Failure> {
    let client = Client::new(opts)?;
    match cmd {
        ModuleCommand::Push {
            file,
            name,
            version,
            activate,
        } => {
            let bytes = tokio::fs::read(&file)
                .await
                .map_err(|e| Failure::Local(format!("cannot read {}: {e}", file.display())))?;
            push(&client, opts, bytes, &name, &version, activate)
                .await
                .map(|_| ())
        }
        ModuleCommand::List => {
            let url = client.url(&["v1", "modules"], &[])?;
            let reply = client.call(client.request(Method::GET, &url)).await?;
            emit(opts, &reply.body, output::module_list)
        }
        ModuleCommand::Whatif {
            name,
            version,
            since,
            limit,
        } => {
            let mut query = Vec::new();
            if let Some(since) = since {
                query.push(("since", since));
            }
            if let Some(limit) = limit {
                query.push(("limit", limit.to_string()));
            }
            let url = client.url(&["v1", "modules", &name, &version, "whatif"], &query)?;
            let reply = client.call(client.request(Method::POST, &url)).await?;
            emit(opts, &reply.body, output::module_whatif)
        }
        ModuleCommand::Check {
            name,
            version,
            sample,
        } => check::run(&client, opts, &name, &version, sample).await,
        ModuleCommand::Activate {
            name,
            version,
            canary,
            force,
        } => {
            let url = client.url(&["v1", "modules", &name, "activate"], &[])?;
            let mut body = match canary {
                Some(percent) => serde_json::json!({ "version": version, "canary": percent }),
                None => serde_json::json!({ "version": version }),
            };
            if force {
                body["force"] = serde_json::Value::Bool(true);
            }
            let request = client.request(Method::POST, &url).json(&body);
            let reply = client.call(request).await?;
            emit(opts, &reply.body, output::module_activated)
        }
        ModuleCommand::Rollback { name, force, from } => {
            let url = client.url(&["v1", "modules", &name, "rollback"], &[])?;
            let mut body = serde_json::json!({ "force": force });
            if let Some(from) = from {
                body["from"] = serde_json::Value::String(from);
            }
            let request = client.request(Method::POST, &url).json(&body);
            let reply = client.call(request).await?;
            emit(opts, &reply.body, output::module_rolled_back)
        }
    }
}

/// Uploads a component as `name@version` and prints the server's answer
/// (`refold module push`, `refold deploy`); returns the answer's body.
async fn push(
    client: &Client,
    opts: &ClientOptions,
    bytes: Vec<u8>,
    name: &str,
    version: &str,
    activate: bool,
) -> Result<String, Failure> {
    let query = if activate {
        vec![("activate", "true".to_owned())]
    } else {
        Vec::new()
    };
    let url = client.url(&["v1", "modules", name, version], &query)?;
    let request = client
        .request(Method::PUT, &url)
        .header(CONTENT_TYPE, "application/wasm")
        .body(bytes);
    let reply = client.call(request).await?;
    let created = reply.status == StatusCode::CREATED;
    emit(opts, &reply.body, |out, v| {
        output::module_pushed(out, created, v)?;
        if v["active"].as_bool() != Some(true) {
            let kind = v["kind"].as_str().unwrap_or_default();
            writeln!(out, "  {}", activation_hint(kind, name, version, activate))?;
        }
        Ok(())
    })?;
    Ok(reply.body)
}

/// How a version that an upload left inactive (not live) gets to be used.
fn activation_hint(kind: &str, name: &str, version: &str, activate: bool) -> String {
    match (kind, activate) {
        ("projection", true) => format!(
            "it goes live once it has caught up with the log; watch it with `refold projection status {name} --wait`"
        ),
        ("projection", false) => format!(
            "the first version of a projection goes live once it has caught up; a later one when promoted: `refold projection promote {name} {version}`"
        ),
        _ => format!(
            "not active: commands still go to the active version; make this one active with `refold module activate {name} {version}`"
        ),
    }
}

async fn run_send(
    opts: &ClientOptions,
    aggregate_type: &str,
    id: &str,
    command_json: &str,
    expect: Option<u64>,
    key: Option<&str>,
) -> Result<(), Failure> {
    let client = Client::new(opts)?;
    // A typo in hand-written JSON is caught here with the parser's position,
    // which is more helpful than the server's generic invalid_command.
    crate::json_text::check(command_json)
        .map_err(|e| Failure::Local(format!("the command is not valid JSON: {e}")))?;
    let url = client.url(&["v1", "aggregates", aggregate_type, id, "commands"], &[])?;
    let mut request = client
        .request(Method::POST, &url)
        .header(CONTENT_TYPE, "application/json")
        .body(command_json.to_owned());
    if let Some(version) = expect {
        request = request.header(IF_MATCH, format!("\"{version}\""));
    }
    if let Some(key) = key {
        let value = HeaderValue::from_str(key).map_err(|_| {
            Failure::Local("the idempotency key must be printable ASCII".to_owned())
        })?;
        request = request.header("Idempotency-Key", value);
    }
    let reply = client.call(request).await?;
    // The server marks the answer to a repeated idempotency key; say so, since
    // this call appended nothing new.
    let replayed = reply
        .headers
        .get("idempotent-replayed")
        .is_some_and(|v| v.as_bytes() == b"true");
    emit_as(opts, &reply.body, |out, v| {
        output::send_result(out, v)?;
        if replayed {
            writeln!(
                out,
                "  (a repeat of an earlier command with this idempotency key)"
            )?;
        }
        Ok(())
    })
}

async fn run_state(
    opts: &ClientOptions,
    aggregate_type: &str,
    id: &str,
    at_version: Option<u64>,
) -> Result<(), Failure> {
    let client = Client::new(opts)?;
    let query: Vec<_> = at_version
        .map(|v| ("at_version", v.to_string()))
        .into_iter()
        .collect();
    let url = client.url(&["v1", "aggregates", aggregate_type, id], &query)?;
    let reply = client.call(client.request(Method::GET, &url)).await?;
    emit_as(opts, &reply.body, output::state_result)
}

async fn run_events_page(
    client: &Client,
    opts: &ClientOptions,
    from: Option<u64>,
    limit: Option<u64>,
) -> Result<(), Failure> {
    let mut query = Vec::new();
    if let Some(from) = from {
        query.push(("from", from.to_string()));
    }
    if let Some(limit) = limit {
        query.push(("limit", limit.to_string()));
    }
    let url = client.url(&["v1", "events"], &query)?;
    let reply = client.call(client.request(Method::GET, &url)).await?;
    emit_as(opts, &reply.body, output::event_page)
}

/// Prints a successful response: the body untouched with `--json`, else
/// through `people`.
fn emit(
    opts: &ClientOptions,
    body: &str,
    people: impl FnOnce(&mut dyn Write, &Value) -> io::Result<()>,
) -> Result<(), Failure> {
    emit_as(opts, body, people)
}

/// [`emit`], reading the body as `T`: a type that keeps JSON text as sent
/// (`RawValue`) where the output shows data.
fn emit_as<'a, T: serde::Deserialize<'a>>(
    opts: &ClientOptions,
    body: &'a str,
    people: impl FnOnce(&mut dyn Write, &T) -> io::Result<()>,
) -> Result<(), Failure> {
    let mut out = io::stdout().lock();
    if opts.json {
        writeln!(out, "{}", body.trim_end()).map_err(Failure::Output)?;
    } else {
        let value: T = serde_json::from_str(body).map_err(|e| {
            Failure::Local(format!("the server answered with something not JSON: {e}"))
        })?;
        people(&mut out, &value).map_err(Failure::Output)?;
    }
    out.flush().map_err(Failure::Output)
}

/// Reports a failure on stderr and turns the outcome into the exit code.
fn finish(opts: &ClientOptions, result: Result<(), Failure>) -> i32 {
    let Err(failure) = result else { return 0 };
    match &failure {
        Failure::Problem(problem) => {
            // Scripts using --json get the server's problem document on stdout
            // too, so they can branch on `code` without scraping stderr.
            if opts.json
                && let Some(json) = &problem.json
            {
                let _ = writeln!(io::stdout(), "{json}");
            }
            eprintln!("error: {}", problem.message());
            if problem.status == 401 && opts.token.is_none() {
                eprintln!("hint: the server wants a token: pass --token or set REFOLD_TOKEN");
            }
        }
        Failure::Unreachable { server, reason } => {
            eprintln!("error: cannot reach the server at {server}: {reason}");
        }
        Failure::Local(message) => eprintln!("error: {message}"),
        // A closed pipe (`refold events | head`) means the reader has had
        // enough; that is not an error worth a message.
        Failure::Output(e) if e.kind() == io::ErrorKind::BrokenPipe => {}
        Failure::Output(e) => eprintln!("error: cannot write the output: {e}"),
        Failure::Diverged(summary) => eprintln!("error: {summary}"),
    }
    failure.exit_code()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>(_: T) {}

    /// `main` may spawn these futures on a multi-threaded runtime.
    #[test]
    fn entry_points_are_send() {
        let opts = ClientOptions {
            server: "http://127.0.0.1:1".to_owned(),
            token: None,
            json: false,
        };
        assert_send(module(&opts, ModuleCommand::List));
        assert_send(send(&opts, "t", "i", "{}", None, None));
        assert_send(state(&opts, "t", "i", None));
        assert_send(events(&opts, None, false, None, true));
        assert_send(verify(
            &opts,
            VerifyArgs {
                command: Some(VerifyCommand::Aggregate {
                    aggregate_type: "t".into(),
                    id: "i".into(),
                }),
                log: integrity::VerifyLogArgs {
                    from: 1,
                    to: None,
                    data_dir: None,
                    public_key: None,
                },
            },
        ));
        assert_send(proof(&opts, 1));
        assert_send(projection(
            &opts,
            ProjectionCommand::Verify {
                name: "p".into(),
                version: "1.0.0".into(),
            },
        ));
    }

    #[test]
    fn unreachable_server_exits_with_2() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        // Port 1 on loopback: nothing listens there, so the connect is refused.
        let opts = ClientOptions {
            server: "http://127.0.0.1:1".to_owned(),
            token: None,
            json: false,
        };
        assert_eq!(runtime.block_on(state(&opts, "t", "i", None)), 2);
        let bad = ClientOptions {
            server: "https://example.invalid".to_owned(),
            ..opts
        };
        assert_eq!(runtime.block_on(state(&bad, "t", "i", None)), 1);
    }
}
