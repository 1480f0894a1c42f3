//! `refold new`, `build`, `deploy` and `serve --examples`: the real binary,
//! the real cargo and a real server.
//!
//! Every crate these tests create builds in one shared target directory
//! (`CARGO_TARGET_DIR`, kept between runs), so the SDK and its dependencies
//! compile once. Crate names are unique across tests: two crates of one name
//! would write the same `.wasm` there. The tests of `refold build`'s own
//! shared build cache use one kept between runs too (`XDG_CACHE_HOME`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

mod support;

use serde_json::Value;
use sha2::{Digest, Sha256};
use support::process::Served;
use tempfile::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_refold");

fn shared_target_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("tooling-target")
}

/// `XDG_CACHE_HOME` for the tests of the build cache: the cache is
/// `tooling-cache/refold/build`.
fn cache_home() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("tooling-cache")
}

fn temp_dir() -> TempDir {
    tempfile::Builder::new()
        .prefix("tooling-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("a temporary directory")
}

/// The binary with the shared target directory and no server settings from
/// the environment.
fn refold_command() -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env("CARGO_TARGET_DIR", shared_target_dir())
        .env_remove("REFOLD_SERVER")
        .env_remove("REFOLD_TOKEN")
        .env_remove("REFOLD_EXAMPLES")
        .stdin(Stdio::null());
    cmd
}

fn refold(args: &[&str]) -> Output {
    refold_command().args(args).output().expect("refold runs")
}

/// The binary as a user runs it, with no target directory set: `build` uses
/// the shared build cache (in [`cache_home`]).
fn refold_cached(args: &[&str]) -> Output {
    refold_command()
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET_DIR")
        .env_remove("CARGO_BUILD_BUILD_DIR")
        .env("XDG_CACHE_HOME", cache_home())
        .args(args)
        .output()
        .expect("refold runs")
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[track_caller]
fn assert_ok(o: &Output) {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        stdout(o),
        stderr(o)
    );
}

/// `refold new NAME --kind KIND --dir DIR`; the crate's path.
fn new_crate(dir: &Path, name: &str, kind: &str) -> PathBuf {
    let out = refold(&["new", name, "--kind", kind, "--dir", dir.to_str().unwrap()]);
    assert_ok(&out);
    assert!(
        stdout(&out).contains(&format!("created {name}, ")),
        "{}",
        stdout(&out)
    );
    dir.join(name)
}

/// `cargo test` inside a generated crate: its own tests pass, natively.
fn cargo_test(krate: &Path, expected_tests: usize) {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(krate)
        .env("CARGO_TARGET_DIR", shared_target_dir())
        .arg("test")
        .output()
        .expect("cargo runs");
    assert_ok(&out);
    assert!(
        stdout(&out).contains(&format!("test result: ok. {expected_tests} passed")),
        "{}",
        stdout(&out)
    );
}

/// Stops a server with SIGTERM and returns what it logged.
fn stop(mut server: Served) -> String {
    assert!(server.sigterm().success());
    server.log_text()
}

/// `refold serve` on port 0 with `extra` arguments and the shared target directory.
fn serve(data_dir: &Path, extra: &[&str]) -> Served {
    support::process::serve_with(refold_command(), data_dir, extra)
}

fn client(url: &str, args: &[&str]) -> Output {
    refold_command()
        .env("REFOLD_SERVER", url)
        .args(args)
        .output()
        .expect("refold runs")
}

#[test]
fn new_refuses_bad_names_and_directories_in_use() {
    let dir = temp_dir();
    for bad in ["Counter", "9lives", "has space", "fn", "serde", ""] {
        let out = refold(&[
            "new",
            bad,
            "--kind",
            "aggregate",
            "--dir",
            dir.path().to_str().unwrap(),
        ]);
        assert_eq!(out.status.code(), Some(1), "{bad:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("invalid module name"),
            "{bad:?}: {}",
            stderr(&out)
        );
    }
    let used = dir.path().join("taken");
    std::fs::create_dir_all(&used).unwrap();
    std::fs::write(used.join("notes.txt"), "mine").unwrap();
    let out = refold(&[
        "new",
        "taken",
        "--kind",
        "projection",
        "--dir",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("not empty"), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(used.join("notes.txt")).unwrap(),
        "mine"
    );

    // An empty directory is fine, and --json says what was written.
    std::fs::create_dir_all(dir.path().join("empty")).unwrap();
    let out = refold(&[
        "--json",
        "new",
        "empty",
        "--kind",
        "projection",
        "--dir",
        dir.path().to_str().unwrap(),
    ]);
    assert_ok(&out);
    let created: Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(created["kind"], "projection");
    let manifest = std::fs::read_to_string(dir.path().join("empty/Cargo.toml")).unwrap();
    for part in [
        "name = \"empty\"",
        "crate-type = [\"cdylib\", \"rlib\"]",
        "default = [\"component\"]",
        "\n[workspace]\n",
        "kind = \"projection\"",
    ] {
        assert!(manifest.contains(part), "{part:?} in\n{manifest}");
    }
    let lib = std::fs::read_to_string(dir.path().join("empty/src/lib.rs")).unwrap();
    assert!(
        lib.contains("#[cfg(feature = \"component\")]\nrefold_sdk::export_projection!(Empty);")
    );

    let out = refold(&[
        "new",
        "nosdk",
        "--kind",
        "aggregate",
        "--dir",
        dir.path().to_str().unwrap(),
        "--sdk",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("is not the Refold SDK"),
        "{}",
        stderr(&out)
    );
    assert!(!dir.path().join("nosdk").exists());
}

#[test]
fn an_aggregate_from_new_tests_builds_and_deploys() {
    let dir = temp_dir();
    let krate = new_crate(dir.path(), "tool-counter", "aggregate");
    cargo_test(&krate, 4);

    let out = refold(&["--json", "build", krate.to_str().unwrap()]);
    assert_ok(&out);
    let built: Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(built["name"], "tool-counter");
    assert_eq!(built["version"], "0.1.0");
    assert_eq!(built["kind"], "aggregate");
    let path = built["path"].as_str().unwrap();
    assert!(
        path.ends_with("wasm32-wasip2/release/tool_counter.wasm"),
        "{path}"
    );
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(built["size"], bytes.len());
    let digest = sha256_hex(&bytes);
    assert_eq!(built["digest"], digest.as_str());
    assert_eq!(
        built["build_dir"],
        Value::Null,
        "CARGO_TARGET_DIR: no cache"
    );
    // Cargo's own output went to stderr, keeping stdout to the one object.
    assert!(stderr(&out).contains("Finished"), "{}", stderr(&out));

    let data = dir.path().join("data");
    let server = serve(&data, &[]);
    let run = |args: &[&str]| client(&server.url, args);
    let out = run(&["deploy", krate.to_str().unwrap(), "--activate"]);
    assert_ok(&out);
    assert!(
        stdout(&out).contains(&format!(
            "uploaded tool-counter@0.1.0: aggregate, {} KiB, {digest}, active",
            format_args!("{:.1}", bytes.len() as f64 / 1024.0)
        )),
        "{}",
        stdout(&out)
    );
    let out = run(&[
        "send",
        "tool-counter",
        "c-1",
        r#"{"type":"Add","amount":5}"#,
    ]);
    assert_ok(&out);
    assert!(stdout(&out).contains("Added"), "{}", stdout(&out));
    let out = run(&[
        "--json",
        "send",
        "tool-counter",
        "c-1",
        r#"{"type":"Add","amount":5000}"#,
    ]);
    assert_eq!(out.status.code(), Some(1));
    let problem: Value = serde_json::from_slice(&out.stdout).expect("the problem as JSON");
    assert_eq!(problem["code"], "rejected", "{problem}");
    assert_eq!(problem["reason"], "over-limit", "{problem}");
    // The same bytes again: nothing changes. --json prints the server's answer only.
    let out = run(&["--json", "deploy", krate.to_str().unwrap()]);
    assert_ok(&out);
    let answer: Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(answer["version"], "0.1.0");
    assert_eq!(answer["active"], true);
    stop(server);
}

#[test]
fn a_projection_from_new_tests_builds_and_deploys() {
    let dir = temp_dir();
    let krate = new_crate(dir.path(), "tool-counts", "projection");
    cargo_test(&krate, 2);

    let out = refold(&["build", krate.to_str().unwrap()]);
    assert_ok(&out);
    let text = stdout(&out);
    assert!(
        text.starts_with("built tool-counts 0.1.0 (projection)"),
        "{text}"
    );
    assert!(text.contains("kind:   projection"), "{text}");
    assert!(text.contains("tool_counts.wasm"), "{text}");
    assert!(text.contains("sha256: "), "{text}");

    let data = dir.path().join("data");
    let server = serve(&data, &[]);
    let run = |args: &[&str]| client(&server.url, args);
    // --version only confirms the crate's own version.
    let out = run(&[
        "deploy",
        krate.to_str().unwrap(),
        "--name",
        "counts",
        "--version",
        "0.1.0",
        "--activate",
    ]);
    assert_ok(&out);
    assert!(
        stdout(&out).contains("uploaded counts@0.1.0: projection"),
        "{}",
        stdout(&out)
    );
    // The log is empty, so it catches up and goes live at once; then it answers.
    let deadline = Instant::now() + Duration::from_secs(30);
    let answer = loop {
        let out = run(&["--json", "projection", "query", "counts", "summary"]);
        if out.status.success() {
            break serde_json::from_slice::<Value>(&out.stdout).unwrap();
        }
        assert!(Instant::now() < deadline, "{}", stderr(&out));
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(answer["total"], 0, "{answer}");
    stop(server);
}

#[test]
fn a_compile_error_fails_the_build_with_cargos_errors() {
    let dir = temp_dir();
    let krate = new_crate(dir.path(), "tool-broken", "aggregate");
    let lib = krate.join("src/lib.rs");
    let source = std::fs::read_to_string(&lib).unwrap();
    std::fs::write(
        &lib,
        source.replace(
            "Event::Reset => self.value = 0,",
            "Event::Reset => self.value = \"zero\",",
        ),
    )
    .unwrap();
    let out = refold(&["build", krate.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("error[E0308]: mismatched types"), "{err}");
    assert!(err.contains("src/lib.rs"), "{err}");
    assert!(err.contains("cargo build of tool-broken failed"), "{err}");
    assert!(stdout(&out).is_empty(), "{}", stdout(&out));
}

#[test]
fn a_crate_that_is_not_a_module_fails_the_world_check() {
    let dir = temp_dir();
    let plain = dir.path().join("tool-plain");
    std::fs::create_dir_all(plain.join("src")).unwrap();
    std::fs::write(
        plain.join("Cargo.toml"),
        "[package]\nname = \"tool-plain\"\nversion = \"0.1.0\"\nedition = \"2024\"\n\n\
         [lib]\ncrate-type = [\"cdylib\"]\n\n[workspace]\n",
    )
    .unwrap();
    std::fs::write(
        plain.join("src/lib.rs"),
        "#[unsafe(no_mangle)]\npub extern \"C\" fn add(a: i32, b: i32) -> i32 {\n    a + b\n}\n",
    )
    .unwrap();
    let out = refold(&["build", plain.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("tool_plain.wasm is not a Refold module"),
        "{err}"
    );
    assert!(err.contains("implements no world Refold knows"), "{err}");

    // A module that is not what its Cargo.toml says it is.
    let liar = new_crate(dir.path(), "tool-liar", "projection");
    let manifest = std::fs::read_to_string(liar.join("Cargo.toml")).unwrap();
    std::fs::write(
        liar.join("Cargo.toml"),
        manifest.replace("kind = \"projection\"", "kind = \"aggregate\""),
    )
    .unwrap();
    let out = refold(&["build", liar.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("is a projection component, but its Cargo.toml declares"),
        "{}",
        stderr(&out)
    );

    // Not a crate at all.
    let out = refold(&["build", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("has no Cargo.toml"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn serve_examples_builds_and_registers_each_example_once() {
    let dir = temp_dir();
    let examples = dir.path().join("examples");
    new_crate(&examples, "tool-ex-agg", "aggregate");
    new_crate(&examples, "tool-ex-proj", "projection");
    let skipped = new_crate(&examples, "tool-ex-skipped", "aggregate");
    let mut manifest = std::fs::read_to_string(skipped.join("Cargo.toml")).unwrap();
    manifest = manifest.replace(
        "[package.metadata.refold]\n",
        "[package.metadata.refold]\nexample = false\n",
    );
    std::fs::write(skipped.join("Cargo.toml"), manifest).unwrap();
    std::fs::create_dir_all(examples.join("notes")).unwrap();

    let data = dir.path().join("data");
    let examples_arg = examples.to_str().unwrap();
    let server = serve(&data, &["--examples", examples_arg]);
    let list = client(&server.url, &["--json", "module", "list"]);
    assert_ok(&list);
    let list: Value = serde_json::from_slice(&list.stdout).unwrap();
    let modules: Vec<(String, String, String)> = list["modules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap().to_owned(),
                m["versions"][0]["version"].as_str().unwrap().to_owned(),
                m["versions"][0]["kind"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        modules,
        [
            ("tool-ex-agg".into(), "0.1.0".into(), "aggregate".into()),
            ("tool-ex-proj".into(), "0.1.0".into(), "projection".into()),
        ]
    );
    assert_eq!(list["modules"][0]["active_version"], "0.1.0");
    let out = client(
        &server.url,
        &["send", "tool-ex-agg", "x", r#"{"type":"Add","amount":1}"#],
    );
    assert_ok(&out);
    let log = stop(server);
    assert!(
        log.contains("example tool-ex-agg@0.1.0 (aggregate): uploaded, active"),
        "{log}"
    );
    assert!(
        log.contains("example tool-ex-proj@0.1.0 (projection): uploaded"),
        "{log}"
    );
    assert!(
        log.contains("skipping") && log.contains("tool-ex-skipped"),
        "{log}"
    );

    // Again, on the same data: the projection's bytes are registered already;
    // the aggregate changed without a new version, so the registered one stays.
    let lib = examples.join("tool-ex-agg/src/lib.rs");
    let source = std::fs::read_to_string(&lib).unwrap();
    std::fs::write(
        &lib,
        source.replace("LIMIT: u64 = 1000", "LIMIT: u64 = 2000"),
    )
    .unwrap();
    let server = serve(&data, &["--examples", examples_arg]);
    let log = stop(server);
    assert!(
        log.contains("example tool-ex-agg@0.1.0 (aggregate): NOT loaded: this version is registered with other bytes"),
        "{log}"
    );
    assert!(
        log.contains("example tool-ex-proj@0.1.0 (projection): already registered"),
        "{log}"
    );
}

/// Cargo's `Compiling NAME vX` lines in `stderr`, by package name.
fn compiled(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("Compiling "))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_second_module_reuses_the_sdk_compiled_for_the_first() {
    let dir = temp_dir();
    let first = new_crate(dir.path(), "tool-cache-agg", "aggregate");
    let second = new_crate(dir.path(), "tool-cache-proj", "projection");

    let started = Instant::now();
    let out = refold_cached(&["--json", "build", first.to_str().unwrap()]);
    let first_took = started.elapsed();
    assert_ok(&out);
    let built: Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert!(
        compiled(&stderr(&out)).contains(&"tool-cache-agg".to_owned()),
        "{}",
        stderr(&out)
    );
    let cache = cache_home().join("refold").join("build");
    let build_dir = built["build_dir"].as_str().expect("built in the cache");
    assert!(Path::new(build_dir).starts_with(&cache), "{build_dir}");
    // The component is copied out under the crate's own target directory.
    let first_wasm = first
        .canonicalize()
        .unwrap()
        .join("target/wasm32-wasip2/release/tool_cache_agg.wasm");
    assert_eq!(built["path"], first_wasm.to_str().unwrap());
    let first_digest = sha256_hex(&std::fs::read(&first_wasm).unwrap());
    assert_eq!(built["digest"], first_digest.as_str());

    let started = Instant::now();
    let out = refold_cached(&["--json", "build", second.to_str().unwrap()]);
    let second_took = started.elapsed();
    assert_ok(&out);
    let built: Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(built["build_dir"], build_dir, "one slot serves both");
    assert_eq!(built["kind"], "projection");
    let compiled = compiled(&stderr(&out));
    assert_eq!(
        compiled,
        ["tool-cache-proj"],
        "only the new crate compiles; the SDK and its dependencies come from the cache:\n{}",
        stderr(&out)
    );
    eprintln!(
        "refold build: first module {:.1}s, second {:.1}s",
        first_took.as_secs_f64(),
        second_took.as_secs_f64()
    );
    // The first crate's component is untouched.
    assert_eq!(
        sha256_hex(&std::fs::read(&first_wasm).unwrap()),
        first_digest
    );
}

#[test]
fn crates_of_one_name_build_apart_in_the_cache() {
    let dir = temp_dir();
    let module = new_crate(&dir.path().join("one"), "tool-cache-twin", "aggregate");
    // Another crate with the same package and lib name: a plain cdylib (not a
    // module, so its build ends at the world check, after cargo built it).
    let plain = dir.path().join("two").join("tool-cache-twin");
    std::fs::create_dir_all(plain.join("src")).unwrap();
    std::fs::write(
        plain.join("Cargo.toml"),
        "[package]\nname = \"tool-cache-twin\"\nversion = \"0.1.0\"\nedition = \"2024\"\n\n\
         [lib]\ncrate-type = [\"cdylib\"]\n\n[workspace]\n",
    )
    .unwrap();
    std::fs::write(
        plain.join("src/lib.rs"),
        "#[unsafe(no_mangle)]\npub extern \"C\" fn twin() -> i32 {\n    2\n}\n",
    )
    .unwrap();
    let wasm = |krate: &Path| krate.join("target/wasm32-wasip2/release/tool_cache_twin.wasm");

    let out = refold_cached(&["--json", "build", module.to_str().unwrap()]);
    assert_ok(&out);
    let built: Value = serde_json::from_slice(&out.stdout).unwrap();
    let module_digest = built["digest"].as_str().unwrap().to_owned();
    let module_slot = built["build_dir"].as_str().unwrap().to_owned();

    let out = refold_cached(&["build", plain.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("is not a Refold module"),
        "{}",
        stderr(&out)
    );
    assert!(
        compiled(&stderr(&out)).contains(&"tool-cache-twin".to_owned()),
        "{}",
        stderr(&out)
    );
    let plain_digest = sha256_hex(&std::fs::read(wasm(&plain)).unwrap());
    assert_ne!(plain_digest, module_digest);

    // Had both built in one directory, the plain crate's build would have
    // replaced the module's files there: this build would either rebuild the
    // module or hand back the plain crate's component.
    let out = refold_cached(&["--json", "build", module.to_str().unwrap()]);
    assert_ok(&out);
    let built: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(built["digest"], module_digest.as_str());
    assert_eq!(built["build_dir"], module_slot.as_str());
    assert!(
        compiled(&stderr(&out)).is_empty(),
        "nothing to rebuild:\n{}",
        stderr(&out)
    );
    assert_eq!(
        sha256_hex(&std::fs::read(wasm(&module)).unwrap()),
        module_digest
    );
}

#[test]
fn deploy_uploads_the_version_the_crate_says_and_how_to_activate_it() {
    let dir = temp_dir();
    let krate = new_crate(dir.path(), "tool-versioned", "aggregate");
    let manifest_path = krate.join("Cargo.toml");
    let manifest = std::fs::read_to_string(&manifest_path).unwrap();
    let data = dir.path().join("data");
    let server = serve(&data, &[]);
    let run = |args: &[&str]| client(&server.url, args);
    let path = krate.to_str().unwrap();

    // Another version than the crate's is refused before anything is built.
    let out = run(&["deploy", path, "--version", "9.9.9"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("--version 9.9.9 does not match tool-versioned's version in")
            && err.contains("(0.1.0)")
            && err.contains("set `version = \"9.9.9\"` there"),
        "{err}"
    );
    assert!(
        compiled(&err).is_empty() && !err.contains("Finished"),
        "{err}"
    );
    assert!(stdout(&out).is_empty(), "{}", stdout(&out));

    let out = run(&["deploy", path, "--version", "0.1.0"]);
    assert_ok(&out);
    let text = stdout(&out);
    assert!(
        text.starts_with("built tool-versioned 0.1.0 (aggregate)"),
        "{text}"
    );
    assert!(
        text.contains("uploaded tool-versioned@0.1.0: aggregate"),
        "{text}"
    );
    assert!(
        text.contains(", active"),
        "the first version is active: {text}"
    );

    // A new version is the crate's: raise it in Cargo.toml.
    let lib = krate.join("src/lib.rs");
    let source = std::fs::read_to_string(&lib).unwrap();
    std::fs::write(
        &lib,
        source.replace("LIMIT: u64 = 1000", "LIMIT: u64 = 2000"),
    )
    .unwrap();
    let bumped = manifest.replacen("version = \"0.1.0\"", "version = \"0.2.0\"", 1);
    assert_ne!(bumped, manifest);
    std::fs::write(&manifest_path, &bumped).unwrap();
    let out = run(&["deploy", path]);
    assert_ok(&out);
    let text = stdout(&out);
    assert!(
        text.starts_with("built tool-versioned 0.2.0 (aggregate)"),
        "{text}"
    );
    assert!(
        text.contains("uploaded tool-versioned@0.2.0: aggregate"),
        "{text}"
    );
    assert!(!text.contains(", active"), "{text}");
    let hint = "`refold module activate tool-versioned 0.2.0`";
    assert!(text.contains(hint), "{text}");
    assert_ok(&run(&["module", "check", "tool-versioned", "0.2.0"]));
    let out = run(&["module", "activate", "tool-versioned", "0.2.0"]);
    assert_ok(&out);
    assert!(
        stdout(&out).contains("tool-versioned@0.2.0 is now active"),
        "{}",
        stdout(&out)
    );

    // Changed code under a version the server has: refused, with the way out.
    std::fs::write(
        &lib,
        source.replace("LIMIT: u64 = 1000", "LIMIT: u64 = 3000"),
    )
    .unwrap();
    let out = run(&["deploy", path]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("tool-versioned@0.2.0 already holds other bytes"),
        "{err}"
    );
    assert!(
        err.contains("hint: give the changed module a new version: raise `version` in")
            && err.contains("(now 0.2.0)"),
        "{err}"
    );
    // Deploy never writes the crate's manifest.
    assert_eq!(std::fs::read_to_string(&manifest_path).unwrap(), bumped);
    stop(server);
}
