//! The real `refold` binary: `serve` in a child process, driven by the client commands.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};

use support::process::{BIN, serve, sigterm};
use support::temp_dir;

fn refold(url: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .env("REFOLD_SERVER", url)
        .args(args)
        .output()
        .expect("refold runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn the_cli_uploads_sends_reads_and_reports_errors_with_their_codes() {
    let dir = temp_dir();
    let mut server = serve(dir.path(), &[]);
    let url = server.url.clone();
    let run = |args: &[&str]| refold(&url, args);

    let push = run(&[
        "module",
        "push",
        refold_test_guests::BANK_ACCOUNT,
        "--name",
        "bank-account",
        "--version",
        "1.0.0",
    ]);
    assert!(push.status.success(), "{}", stderr(&push));
    assert!(
        stdout(&push).contains("bank-account@1.0.0"),
        "{}",
        stdout(&push)
    );
    let push2 = run(&[
        "module",
        "push",
        refold_test_guests::BANK_ACCOUNT_NO_WASI,
        "--name",
        "bank-account",
        "--version",
        "1.1.0",
    ]);
    assert!(push2.status.success());
    // A swap needs a replay check first.
    let refused = run(&["module", "activate", "bank-account", "1.1.0"]);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("check_required"),
        "{}",
        stderr(&refused)
    );
    let check = run(&["module", "check", "bank-account", "1.1.0"]);
    assert!(check.status.success(), "{}", stderr(&check));
    let report = String::from_utf8_lossy(&check.stdout);
    assert!(report.contains("bank-account@1.1.0 passed"), "{report}");
    let activate = run(&["module", "activate", "bank-account", "1.1.0"]);
    assert!(activate.status.success(), "{}", stderr(&activate));
    let list = run(&["--json", "module", "list"]);
    let list: serde_json::Value = serde_json::from_slice(&list.stdout).expect("--json prints JSON");
    assert_eq!(list["modules"][0]["active_version"], "1.1.0");
    let bad_push = run(&[
        "module",
        "push",
        "Cargo.toml",
        "--name",
        "junk",
        "--version",
        "1.0.0",
    ]);
    assert_eq!(bad_push.status.code(), Some(1));
    assert!(
        stderr(&bad_push).contains("invalid_module"),
        "{}",
        stderr(&bad_push)
    );

    let open = run(&[
        "send",
        "bank-account",
        "acc-1",
        r#"{"type":"Open","owner":"Ada"}"#,
    ]);
    assert!(open.status.success(), "{}", stderr(&open));
    assert!(stdout(&open).contains("version 1"), "{}", stdout(&open));
    let deposit = run(&[
        "send",
        "bank-account",
        "acc-1",
        r#"{"type":"Deposit","amount":40}"#,
        "--expect",
        "1",
        "--key",
        "k-1",
    ]);
    assert!(deposit.status.success(), "{}", stderr(&deposit));
    let retry = run(&[
        "--json",
        "send",
        "bank-account",
        "acc-1",
        r#"{"type":"Deposit","amount":40}"#,
        "--key",
        "k-1",
    ]);
    let retry: serde_json::Value = serde_json::from_slice(&retry.stdout).unwrap();
    assert_eq!(retry["version"], 2, "the retry returns the original result");
    let stale = run(&[
        "send",
        "bank-account",
        "acc-1",
        r#"{"type":"Deposit","amount":1}"#,
        "--expect",
        "1",
    ]);
    assert_eq!(stale.status.code(), Some(1));
    assert!(
        stderr(&stale).contains("wrong_expected_version") && stderr(&stale).contains('2'),
        "{}",
        stderr(&stale)
    );
    let overdraft = run(&[
        "send",
        "bank-account",
        "acc-1",
        r#"{"type":"Withdraw","amount":41}"#,
    ]);
    assert_eq!(overdraft.status.code(), Some(1));
    assert!(
        stderr(&overdraft).contains("rejected"),
        "{}",
        stderr(&overdraft)
    );

    let state = run(&["--json", "state", "bank-account", "acc-1"]);
    let state: serde_json::Value = serde_json::from_slice(&state.stdout).unwrap();
    assert_eq!(
        (
            state["version"].as_u64(),
            state["state"]["balance"].as_i64()
        ),
        (Some(2), Some(40))
    );
    let then = run(&[
        "--json",
        "state",
        "bank-account",
        "acc-1",
        "--at-version",
        "1",
    ]);
    let then: serde_json::Value = serde_json::from_slice(&then.stdout).unwrap();
    assert_eq!(then["state"]["balance"], 0);
    let events = run(&["events", "--from", "1"]);
    assert!(
        stdout(&events).contains("Opened") && stdout(&events).contains("Deposited"),
        "{}",
        stdout(&events)
    );

    // --follow prints what exists, then what arrives.
    let mut follow = Command::new(BIN)
        .env("REFOLD_SERVER", &url)
        .args(["--json", "events", "--follow", "--from", "1"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(follow.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(first.contains("\"position\":1"), "{first}");
    lines.next().unwrap().unwrap();
    run(&[
        "send",
        "bank-account",
        "acc-1",
        r#"{"type":"Deposit","amount":2}"#,
    ]);
    let live = lines.next().unwrap().unwrap();
    assert!(
        live.contains("\"position\":3"),
        "the follower sees the new event: {live}"
    );
    follow.kill().unwrap();
    follow.wait().unwrap();

    // --from-end prints only what is recorded after it subscribed. When it has
    // subscribed is not visible from outside, so deposits go in until it prints one.
    let mut live = Command::new(BIN)
        .env("REFOLD_SERVER", &url)
        .args(["--json", "events", "--follow", "--from-end", "--limit", "1"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = live.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(BufReader::new(out).lines().next());
    });
    let mut sent = Vec::new();
    let line = loop {
        assert!(sent.len() < 100, "--from-end printed nothing");
        let deposit = run(&[
            "--json",
            "send",
            "bank-account",
            "acc-1",
            r#"{"type":"Deposit","amount":1}"#,
        ]);
        let deposit: serde_json::Value = serde_json::from_slice(&deposit.stdout).unwrap();
        sent.push(deposit["position"].as_u64().unwrap());
        if let Ok(line) = rx.recv_timeout(std::time::Duration::from_millis(200)) {
            break line.unwrap().unwrap();
        }
    };
    let printed: serde_json::Value = serde_json::from_str(&line).unwrap();
    let position = printed["position"].as_u64().unwrap();
    assert!(
        position > 3 && sent.contains(&position),
        "nothing from before it subscribed: {line} (sent {sent:?})"
    );
    assert!(live.wait().unwrap().success(), "--limit 1 ends it");

    let status = sigterm(&mut server.child);
    assert!(status.success(), "serve exits cleanly on SIGTERM: {status}");
    let unreachable = refold(&url, &["events"]);
    assert_eq!(unreachable.status.code(), Some(2));
    assert!(
        stderr(&unreachable).contains("cannot reach the server"),
        "{}",
        stderr(&unreachable)
    );

    // Everything acknowledged is there after a restart on the same data directory.
    let mut again = serve(dir.path(), &[]);
    let state = refold(&again.url, &["--json", "state", "bank-account", "acc-1"]);
    let state: serde_json::Value = serde_json::from_slice(&state.stdout).unwrap();
    assert_eq!(
        (state["version"].as_u64(), state["module"].as_str()),
        (Some(3 + sent.len() as u64), Some("bank-account@1.1.0"))
    );
    assert!(sigterm(&mut again.child).success());
}

#[test]
fn serve_refuses_a_public_address_without_tokens_and_a_second_server_on_one_directory() {
    let dir = temp_dir();
    let public = Command::new(BIN)
        .args(["serve", "--listen", "0.0.0.0:0", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(public.status.code(), Some(1));
    assert!(
        stderr(&public).contains("without tokens"),
        "{}",
        stderr(&public)
    );
    // An empty token (an unset variable in a template) is not a token: it must
    // not satisfy the rule above, whether given as a flag or through the
    // environment.
    let empty_flag = Command::new(BIN)
        .args([
            "serve",
            "--listen",
            "0.0.0.0:0",
            "--admin-token",
            "",
            "--data-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    let empty_env = Command::new(BIN)
        .args(["serve", "--listen", "0.0.0.0:0", "--data-dir"])
        .arg(dir.path())
        .env("REFOLD_WRITER_TOKENS", "s3cret,")
        .output()
        .unwrap();
    for refused in [&empty_flag, &empty_env] {
        assert_eq!(refused.status.code(), Some(1), "{}", stderr(refused));
        assert!(stderr(refused).contains("is empty"), "{}", stderr(refused));
    }

    let mut first = serve(dir.path(), &[]);
    let second = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(1));
    assert!(
        stderr(&second).contains("in use by another process"),
        "{}",
        stderr(&second)
    );
    assert!(sigterm(&mut first.child).success());
}
