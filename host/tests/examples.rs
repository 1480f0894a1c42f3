//! The example scripts (`examples/bank.sh`, `examples/shop.sh`) run to the end
//! against the real binary: `refold serve` in a child process with the example
//! modules uploaded, and the scripts driving it with the `refold` CLI. Each
//! runs twice against the same server, as a reader would.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::process::{BIN, Served, sigterm, wait_or_kill};
use support::temp_dir;

/// A script that takes longer than this is stuck (a wait that never ends).
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(300);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the host crate sits in the workspace")
        .to_path_buf()
}

/// `refold serve` on a free port over `dir/data`.
fn serve(dir: &Path) -> Served {
    support::process::serve(&dir.join("data"), &[])
}

fn refold(url: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .env("REFOLD_SERVER", url)
        .env_remove("REFOLD_TOKEN")
        .args(args)
        .output()
        .expect("refold runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Uploads a component over HTTP (`refold module push`), active if an aggregate.
fn push(url: &str, file: &str, name: &str, version: &str) {
    let out = refold(
        url,
        &[
            "module",
            "push",
            file,
            "--name",
            name,
            "--version",
            version,
            "--activate",
        ],
    );
    assert!(
        out.status.success(),
        "pushing {name}@{version} from {file}: {}",
        text(&out.stderr)
    );
}

/// Waits until `version` is the projection's live version.
fn wait_live(url: &str, projection: &str, version: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = refold(url, &["--json", "projection", "status", projection]);
        if out.status.success() {
            let status: serde_json::Value =
                serde_json::from_slice(&out.stdout).expect("--json prints JSON");
            if status["live_version"] == version {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{projection}@{version} is not live after 60 s: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct ScriptRun {
    success: bool,
    stdout: String,
    stderr: String,
}

/// Runs `bash examples/<script>` against the server, as a reader would.
fn run_script(
    served: &Served,
    dir: &Path,
    script: &str,
    run: u32,
    env: &[(&str, &str)],
) -> ScriptRun {
    let out_path = dir.join(format!("{script}.{run}.stdout"));
    let err_path = dir.join(format!("{script}.{run}.stderr"));
    let mut command = Command::new("bash");
    command
        .arg(repo_root().join("examples").join(script))
        .current_dir(dir)
        .env("REFOLD_SERVER", &served.url)
        .env("REFOLD_BIN", BIN)
        .env_remove("REFOLD_TOKEN")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap());
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command.spawn().expect("bash runs");
    let status = wait_or_kill(&mut child, SCRIPT_TIMEOUT);
    let result = ScriptRun {
        success: status.is_some_and(|s| s.success()),
        stdout: std::fs::read_to_string(&out_path).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
    };
    if !result.success {
        let verdict = match status {
            None => format!("timed out after {SCRIPT_TIMEOUT:?}"),
            Some(status) => format!("failed: {status}"),
        };
        let server_log = std::fs::read_to_string(&served.log).unwrap_or_default();
        let lines: Vec<&str> = server_log.lines().collect();
        let tail = lines[lines.len().saturating_sub(40)..].join("\n");
        panic!(
            "examples/{script} (run {run}) {verdict}\n--- stdout\n{}\n--- stderr\n{}\n--- server log (last lines)\n{tail}",
            result.stdout, result.stderr,
        );
    }
    result
}

fn assert_contains(run: &ScriptRun, markers: &[&str]) {
    for marker in markers {
        assert!(
            run.stdout.contains(marker),
            "the output lacks {marker:?}:\n{}",
            run.stdout
        );
    }
}

#[test]
fn the_bank_story_runs_to_the_end_twice() {
    let dir = temp_dir();
    let mut served = serve(dir.path());
    push(
        &served.url,
        refold_test_guests::BANK_ACCOUNT,
        "bank-account",
        "1.0.0",
    );
    push(
        &served.url,
        refold_test_guests::ACCOUNT_BALANCES,
        "account-balances",
        "1.0.0",
    );
    wait_live(&served.url, "account-balances", "1.0.0");
    let env = [(
        "ACCOUNT_BALANCES_V2_WASM",
        refold_test_guests::ACCOUNT_BALANCES_V2,
    )];

    let first = run_script(&served, dir.path(), "bank.sh", 1, &env);
    assert_contains(
        &first,
        &[
            "== Alice withdraws 20.00 with 5.00 left: refused",
            "(refused as expected: insufficient-funds, exit code 1)",
            "(a repeat of an earlier command with this idempotency key)",
            "== Audit: Alice's history",
            "== Alice's state as of version 3",
            "\"balance\": 7000",
            "uploaded account-balances@2.0.0",
            "account-balances@2.0.0 is live",
            "\"low\": true",
            "The bank story ran to the end.",
        ],
    );
    assert_eq!(
        first
            .stdout
            .matches("(refused as expected: insufficient-funds")
            .count(),
        2,
        "Alice's and Bob's overdrafts are both refused"
    );

    // Again, against the same server: new ids, and 2.0.0 already there and live.
    let second = run_script(&served, dir.path(), "bank.sh", 2, &env);
    assert_contains(
        &second,
        &[
            "(refused as expected: insufficient-funds, exit code 1)",
            "(2.0.0 is already live, promoted by an earlier run",
            "account-balances@2.0.0 is live",
            "The bank story ran to the end.",
        ],
    );

    assert!(sigterm(&mut served.child).success());
}

/// The shop's components. refold-test-guests does not build the shop crates
/// (yet), so this builds them with a nested cargo of its own, like its
/// build.rs does: `sales` apart, since it uses `order` without its
/// `component` feature and one build would unify the features.
fn shop_components() -> [(&'static str, PathBuf); 3] {
    [
        ("inventory", PathBuf::from(refold_test_guests::INVENTORY)),
        ("order", PathBuf::from(refold_test_guests::ORDER)),
        ("sales", PathBuf::from(refold_test_guests::SALES)),
    ]
}

#[test]
fn the_shop_story_runs_to_the_end_twice() {
    let components = shop_components();
    let dir = temp_dir();
    let mut served = serve(dir.path());
    for (name, path) in &components {
        push(&served.url, path.to_str().unwrap(), name, "1.0.0");
    }
    wait_live(&served.url, "sales", "1.0.0");

    for run in 1..=2 {
        let story = run_script(&served, dir.path(), "shop.sh", run, &[]);
        assert_contains(
            &story,
            &[
                "== ...but reserving 5 of 3 widgets would oversell: refused",
                "(refused as expected: out-of-stock, exit code 1)",
                "6 customers order at the same moment",
                "== Reserved: ",
                "== The others give their gadget back and are cancelled",
                "== What sold, from the sales projection",
                "The shop story ran to the end.",
            ],
        );
    }

    assert!(sigterm(&mut served.child).success());
}
