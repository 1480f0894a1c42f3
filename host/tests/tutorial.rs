//! `docs/tutorial.md`, run: every command of it against a real server, every
//! file it shows written to disk, every output it shows checked, in the order
//! the tutorial gives them. A tutorial whose steps stop working fails here.
//!
//! How the tutorial's fenced blocks are read (its first HTML comment says the same):
//! - ` ```sh `: commands, one a line, each run with `sh -c` and required to exit 0.
//!   `#` starts a comment line, a trailing `\` continues a line, and `cd DIR`
//!   (alone on its line) changes the directory of the commands after it.
//! - ` ```sh fails `: commands that must exit non-zero.
//! - ` ```sh setup `: shown, not run; the test does the equivalent itself (a
//!   server on a fresh data directory, `refold` first on the PATH, an empty
//!   working directory). Checked to still say so.
//! - ` ```text `: output of the command just before it. Each non-empty line
//!   must appear in its stdout and stderr, in order; `...` matches anything.
//! - ` ```LANG file=PATH `: a whole file, written to PATH (relative to the
//!   tutorial's working directory).
//! - ` ```LANG edit=PATH `: replaces one item of PATH: the one whose line equals
//!   the block's first line that is neither an attribute nor a comment, from
//!   the attributes and comments just above it to its closing brace (the next
//!   line that is only `}` at its indentation).
//! - ` ```toml edit=PATH `: one `key = value` line, which replaces the one line
//!   of PATH that sets that key.
//!
//! Any other block fails the test, so the tutorial holds nothing untested.
//!
//! The module crates build in the target directory the tooling tests share
//! (`CARGO_TARGET_DIR`), so the SDK and its dependencies compile once.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::process::{BIN, Served};

const TUTORIAL: &str = include_str!("../../docs/tutorial.md");
/// A command that takes longer is stuck (a cold build of the SDK for Wasm
/// takes a few minutes on two cores).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(900);

/// The target directory `host/tests/tooling.rs` uses: its crates and these
/// share the compiled SDK.
fn shared_target_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("tooling-target")
}

#[derive(Debug)]
enum Step {
    /// A command, and whether it must fail.
    Run {
        line: usize,
        command: String,
        fails: bool,
    },
    /// Output the last command must have printed.
    Expect { line: usize, text: String },
    /// A whole file.
    Write {
        line: usize,
        path: String,
        text: String,
    },
    /// One item of a file (one `key = value` line of a TOML file), replaced.
    Edit {
        line: usize,
        path: String,
        toml: bool,
        text: String,
    },
}

struct Tutorial {
    steps: Vec<Step>,
    /// The `sh setup` blocks' text, which the test carries out itself.
    setup: Vec<String>,
}

/// Reads the tutorial's fenced blocks, in order. Panics on a block it does not know.
fn parse(doc: &str) -> Tutorial {
    let lines: Vec<&str> = doc.lines().collect();
    let mut steps = Vec::new();
    let mut setup = Vec::new();
    let mut in_comment = false;
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        if in_comment {
            in_comment = !line.contains("-->");
            i += 1;
            continue;
        }
        if line.trim_start().starts_with("<!--") && !line.contains("-->") {
            in_comment = true;
            i += 1;
            continue;
        }
        let Some(info) = line.strip_prefix("```") else {
            i += 1;
            continue;
        };
        let start = i + 1; // 1-based line number of the opening fence
        let close = lines[start..]
            .iter()
            .position(|l| l.trim_end() == "```")
            .unwrap_or_else(|| panic!("tutorial.md:{start}: the block is never closed"))
            + start;
        let body: Vec<&str> = lines[start..close].to_vec();
        let text = body.iter().map(|l| format!("{l}\n")).collect::<String>();
        let words: Vec<&str> = info.split_whitespace().collect();
        match words.as_slice() {
            ["sh"] | ["sh", "fails"] => {
                let fails = words.len() == 2;
                for (line, command) in commands(&body, start + 1) {
                    steps.push(Step::Run {
                        line,
                        command,
                        fails,
                    });
                }
            }
            ["sh", "setup"] => setup.push(text),
            ["text"] => steps.push(Step::Expect { line: start, text }),
            [lang, target] => {
                let prose = prose_before(&lines, i);
                if let Some(path) = target.strip_prefix("file=") {
                    check_named(&prose, path, start);
                    steps.push(Step::Write {
                        line: start,
                        path: path.to_string(),
                        text,
                    });
                } else if let Some(path) = target.strip_prefix("edit=") {
                    check_named(&prose, path, start);
                    steps.push(Step::Edit {
                        line: start,
                        path: path.to_string(),
                        toml: *lang == "toml",
                        text,
                    });
                } else {
                    panic!("tutorial.md:{start}: unknown block ```{info}");
                }
            }
            _ => panic!(
                "tutorial.md:{start}: unknown block ```{info}; every block is run or checked (see host/tests/tutorial.rs)"
            ),
        }
        i = close + 1;
    }
    Tutorial { steps, setup }
}

/// The commands of a `sh` block with their line numbers: comments and blank
/// lines dropped, continued lines joined.
fn commands(body: &[&str], first_line: usize) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut pending: Option<(usize, String)> = None;
    for (n, raw) in body.iter().enumerate() {
        let line_no = first_line + n;
        let trimmed = raw.trim();
        if pending.is_none() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        let (at, mut command) = pending.take().unwrap_or((line_no, String::new()));
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                command.push_str(part);
                command.push(' ');
                pending = Some((at, command));
            }
            None => {
                command.push_str(trimmed);
                out.push((at, command));
            }
        }
    }
    assert!(
        pending.is_none(),
        "tutorial.md:{first_line}: a block ends with a continued line"
    );
    out
}

/// The last non-empty line of prose before the fence at `fence`.
fn prose_before(lines: &[&str], fence: usize) -> String {
    lines[..fence]
        .iter()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map_or_else(String::new, |l| l.to_string())
}

/// A reader does not see a block's info string: the sentence before a file
/// block must name its file.
fn check_named(prose: &str, path: &str, line: usize) {
    assert!(
        prose.contains(&format!("`{path}`")),
        "tutorial.md:{line}: the sentence before the block must name `{path}`, not: {prose}"
    );
}

/// Whether a line belongs to an item's preamble: attributes and comments.
fn is_preamble(line: &str) -> bool {
    let t = line.trim_start();
    t.starts_with("#[") || t.starts_with("//")
}

/// Replaces the item of `file` that `block` is a new version of (see the module docs).
fn apply_edit(file: &str, block: &str) -> Result<String, String> {
    let block_lines: Vec<&str> = block.lines().collect();
    let anchor = *block_lines
        .iter()
        .find(|l| !is_preamble(l) && !l.trim().is_empty())
        .ok_or("the block has no item, only attributes and comments")?;
    let lines: Vec<&str> = file.lines().collect();
    let hits: Vec<usize> = (0..lines.len()).filter(|&i| lines[i] == anchor).collect();
    let [at] = hits[..] else {
        return Err(format!(
            "{} lines of the file are {anchor:?}; there must be exactly one",
            hits.len()
        ));
    };
    let indent = &anchor[..anchor.len() - anchor.trim_start().len()];
    let end = if anchor.trim_end().ends_with(';') {
        at
    } else {
        let closing = format!("{indent}}}");
        (at + 1..lines.len())
            .find(|&j| lines[j] == closing)
            .ok_or_else(|| format!("no {closing:?} closes {anchor:?}"))?
    };
    let mut start = at;
    while start > 0 && is_preamble(lines[start - 1]) {
        start -= 1;
    }
    let mut out: Vec<&str> = lines[..start].to_vec();
    out.extend(&block_lines);
    out.extend(&lines[end + 1..]);
    Ok(out.join("\n") + "\n")
}

/// Replaces the line of a TOML `file` that sets the key `block`'s one line sets.
fn apply_toml_edit(file: &str, block: &str) -> Result<String, String> {
    let [line] = block.lines().collect::<Vec<_>>()[..] else {
        return Err("a TOML edit is one `key = value` line".to_owned());
    };
    let key = |l: &str| l.split_once(" = ").map(|(k, _)| k.trim().to_owned());
    let wanted = key(line).ok_or("a TOML edit is one `key = value` line")?;
    let lines: Vec<&str> = file.lines().collect();
    let hits: Vec<usize> = (0..lines.len())
        .filter(|&i| key(lines[i]).as_deref() == Some(wanted.as_str()))
        .collect();
    let [at] = hits[..] else {
        return Err(format!(
            "{} lines of the file set {wanted}; there must be exactly one",
            hits.len()
        ));
    };
    let mut out = lines.clone();
    out[at] = line;
    Ok(out.join("\n") + "\n")
}

/// Whether `line` of the expected output matches a line of actual output:
/// its pieces between `...` appear in it, in order.
fn line_matches(expected: &str, actual: &str) -> bool {
    let mut rest = actual;
    for piece in expected.split("...") {
        match rest.find(piece) {
            Some(i) => rest = &rest[i + piece.len()..],
            None => return false,
        }
    }
    true
}

/// Each expected line, in order, in the output; the first one missing if not.
fn missing_line<'a>(expected: &'a str, output: &str) -> Option<&'a str> {
    let actual: Vec<&str> = output.lines().collect();
    let mut next = 0;
    for want in expected.lines().map(str::trim) {
        if want.is_empty() || want == "..." {
            continue;
        }
        match (next..actual.len()).find(|&i| line_matches(want, actual[i])) {
            Some(i) => next = i + 1,
            None => return Some(want),
        }
    }
    None
}

/// `refold serve` on a free port, with no token or example settings from the environment.
fn serve(data_dir: &Path) -> Served {
    let mut command = Command::new(BIN);
    command
        .env_remove("REFOLD_ADMIN_TOKENS")
        .env_remove("REFOLD_WRITER_TOKENS")
        .env_remove("REFOLD_READER_TOKENS")
        .env_remove("REFOLD_EXAMPLES")
        .stdin(Stdio::null());
    support::process::serve_with(command, data_dir, &[])
}

struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs one tutorial command with `sh -c` in `dir`, its output in files (cargo's can be long).
fn run(command: &str, dir: &Path, env: &[(&str, String)], out_dir: &Path, n: usize) -> Ran {
    let (out_path, err_path) = (
        out_dir.join(format!("{n:03}.stdout")),
        out_dir.join(format!("{n:03}.stderr")),
    );
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(command)
        .current_dir(dir)
        .env_remove("REFOLD_TOKEN")
        .env_remove("REFOLD_EXAMPLES")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("sh runs");
    let status = support::process::wait_or_kill(&mut child, COMMAND_TIMEOUT);
    Ran {
        code: status.and_then(|s| s.code()),
        stdout: std::fs::read_to_string(&out_path).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
    }
}

#[test]
fn the_tutorial_reads_as_blocks_the_test_knows() {
    let tutorial = parse(TUTORIAL);
    assert!(tutorial.steps.len() > 20, "{} steps", tutorial.steps.len());
    assert!(
        tutorial
            .steps
            .iter()
            .any(|s| matches!(s, Step::Run { fails: true, .. })),
        "the tutorial shows a command being refused"
    );
    // The setup the test does itself, in the tutorial's words.
    let setup = tutorial.setup.concat();
    for part in [
        "-p refold -- serve --data-dir ",
        "export PATH=\"$PWD/target/release:$PATH\"",
        "mkdir ",
    ] {
        assert!(setup.contains(part), "{part:?} in the setup:\n{setup}");
    }
    // Every `text` block follows a command.
    let mut after_command = false;
    for step in &tutorial.steps {
        match step {
            Step::Run { .. } => after_command = true,
            Step::Expect { line, .. } => assert!(
                after_command,
                "tutorial.md:{line}: output shown with no command before it"
            ),
            Step::Write { .. } | Step::Edit { .. } => after_command = false,
        }
    }
}

#[test]
fn edits_replace_one_item_with_its_attributes() {
    let file = "use x;\n\n/// A.\n#[derive(Debug)]\npub struct A {\n    a: u32,\n}\n\nimpl A {\n    fn f() {\n        if x {\n        }\n    }\n}\n";
    let block =
        "/// A, longer.\n#[derive(Clone)]\npub struct A {\n    b: u64,\n}\n\npub struct B;\n";
    assert_eq!(
        apply_edit(file, block).unwrap(),
        "use x;\n\n/// A, longer.\n#[derive(Clone)]\npub struct A {\n    b: u64,\n}\n\npub struct B;\n\nimpl A {\n    fn f() {\n        if x {\n        }\n    }\n}\n"
    );
    let replaced = apply_edit(file, "    fn f() {\n        g();\n    }\n").unwrap();
    assert!(replaced.ends_with("impl A {\n    fn f() {\n        g();\n    }\n}\n"));
    assert!(apply_edit(file, "fn nowhere() {\n}\n").is_err());
    let manifest = "[package]\nname = \"x\"\nversion = \"0.1.0\"\n\n[dependencies]\nserde = { version = \"1\" }\n";
    assert_eq!(
        apply_toml_edit(manifest, "version = \"0.2.0\"\n").unwrap(),
        manifest.replace("0.1.0", "0.2.0")
    );
    assert!(apply_toml_edit(manifest, "edition = \"2024\"\n").is_err());
    assert!(apply_toml_edit(manifest, "[package]\nversion = \"0.2.0\"\n").is_err());
    assert!(line_matches(
        "uploaded x@1: aggregate, ..., active",
        "uploaded x@1: aggregate, 2 KiB, abc, active"
    ));
    assert!(!line_matches("a...b", "b a"));
    assert_eq!(missing_line("b\n...\nc\n", "a\nb\nx\nc\n"), None);
    assert_eq!(missing_line("c\nb\n", "a\nb\nc\n"), Some("b"));
}

#[test]
fn the_tutorial_runs_end_to_end() {
    let started = Instant::now();
    let tutorial = parse(TUTORIAL);
    // Under the target directory, like the tooling tests' crates; a directory
    // of its own, so two test runs at once do not share one.
    let temp = tempfile::Builder::new()
        .prefix("tutorial-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("a temporary directory");
    let root = temp.path();
    let work = root.join("work");
    let outputs = root.join("outputs");
    for dir in [&work, &outputs] {
        std::fs::create_dir_all(dir).unwrap();
    }
    let server = serve(&root.join("data"));

    let bin_dir = Path::new(BIN).parent().expect("the binary's directory");
    let path = std::env::join_paths(std::iter::once(bin_dir.to_path_buf()).chain(
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
    ))
    .unwrap()
    .into_string()
    .expect("a UTF-8 PATH");
    let env = [
        ("PATH", path),
        ("REFOLD_SERVER", server.url.clone()),
        (
            "CARGO_TARGET_DIR",
            shared_target_dir().to_string_lossy().into_owned(),
        ),
    ];

    let mut dir = work.clone();
    let mut last: Option<(usize, String, Ran)> = None;
    for (n, step) in tutorial.steps.iter().enumerate() {
        match step {
            Step::Run {
                line,
                command,
                fails,
            } => {
                if let Some(to) = command.strip_prefix("cd ") {
                    dir = dir.join(to.trim()).canonicalize().unwrap_or_else(|e| {
                        panic!(
                            "tutorial.md:{line}: `{command}` from {}: {e}",
                            dir.display()
                        )
                    });
                    assert!(
                        dir.starts_with(work.canonicalize().unwrap()),
                        "tutorial.md:{line}: `{command}` leaves the tutorial's directory"
                    );
                    println!("$ {command}");
                    last = None;
                    continue;
                }
                let at = Instant::now();
                let ran = run(command, &dir, &env, &outputs, n);
                println!(
                    "$ {command}    # tutorial.md:{line}, exit {:?}, {:.1}s\n{}{}",
                    ran.code,
                    at.elapsed().as_secs_f64(),
                    ran.stdout,
                    ran.stderr
                );
                let ok = match ran.code {
                    Some(0) => !fails,
                    Some(_) => *fails,
                    None => false,
                };
                assert!(
                    ok,
                    "tutorial.md:{line}: `{command}` {} (exit {:?}, in {})\n--- stdout\n{}\n--- stderr\n{}\n--- server log\n{}",
                    if *fails {
                        "was to fail, and did not"
                    } else {
                        "failed"
                    },
                    ran.code,
                    dir.display(),
                    ran.stdout,
                    ran.stderr,
                    server.log_text()
                );
                last = Some((*line, command.clone(), ran));
            }
            Step::Expect { line, text } => {
                let Some((at, command, ran)) = &last else {
                    panic!("tutorial.md:{line}: output shown with no command before it");
                };
                let output = format!("{}\n{}", ran.stdout, ran.stderr);
                if let Some(missing) = missing_line(text, &output) {
                    panic!(
                        "tutorial.md:{line}: the output of `{command}` (tutorial.md:{at}) lacks {missing:?} (in order)\n--- expected\n{text}--- actual\n{output}"
                    );
                }
            }
            Step::Write { line, path, text } => {
                let file = work.join(path);
                assert!(
                    file.parent().is_some_and(Path::is_dir),
                    "tutorial.md:{line}: {path} is in no directory made so far"
                );
                std::fs::write(&file, text).unwrap();
                println!("(wrote {path})");
            }
            Step::Edit {
                line,
                path,
                toml,
                text,
            } => {
                let file = work.join(path);
                let before = std::fs::read_to_string(&file)
                    .unwrap_or_else(|e| panic!("tutorial.md:{line}: cannot read {path}: {e}"));
                let edit = if *toml { apply_toml_edit } else { apply_edit };
                let after = edit(&before, text)
                    .unwrap_or_else(|e| panic!("tutorial.md:{line}: cannot edit {path}: {e}"));
                std::fs::write(&file, after).unwrap();
                println!("(edited {path})");
            }
        }
    }
    println!(
        "the tutorial ran in {:.1}s",
        started.elapsed().as_secs_f64()
    );
}
