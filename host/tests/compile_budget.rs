//! Compilation with a budget, on a real server whose compilations run in
//! worker processes of the real `refold` binary, against components made to
//! be hard to compile (`support::components`).

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::Value;
use support::components::{hard_to_compile, slowed};
use support::http::{TestServer, config, expect_problem};
use support::temp_dir;

const BANK: &str = refold_test_guests::BANK_ACCOUNT;
const OPEN: &str = r#"{"type":"Open","owner":"Ada"}"#;
const DEPOSIT: &str = r#"{"type":"Deposit","amount":7}"#;

fn slow_bank_account() -> Vec<u8> {
    slowed(BANK)
}

async fn put(s: &TestServer, name: &str, version: &str, bytes: Vec<u8>) -> reqwest::Response {
    s.request(Method::PUT, &format!("/v1/modules/{name}/{version}"))
        .header("content-type", "application/wasm")
        .body(bytes)
        .send()
        .await
        .expect("the server answers")
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(files_under(&path));
        } else {
            found.push(path.display().to_string());
        }
    }
    found
}

fn compile_state(modules: &Value, name: &str, version: &str) -> Option<String> {
    modules["modules"]
        .as_array()?
        .iter()
        .find(|m| m["name"] == name)?["versions"]
        .as_array()?
        .iter()
        .find(|v| v["version"] == version)
        .and_then(|v| v["compile"]["state"].as_str())
        .map(str::to_string)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_component_that_compiles_too_long_is_refused_at_its_budget_and_leaves_no_trace() {
    let dir = temp_dir();
    let mut config = config(dir.path());
    config.runtime.compile.timeout = Duration::from_secs(2);
    let s = TestServer::start_with(config).await;

    let started = Instant::now();
    let refused = put(&s, "slow", "1.0.0", hard_to_compile(100, 6000)).await;
    let took = started.elapsed();
    eprintln!("a {} s time budget refused the component after {took:?}", 2);
    let problem = expect_problem(refused, 422, "compile_budget_exceeded").await;
    assert_eq!(problem["budget"], "time", "{problem}");
    assert_eq!(problem["limit_ms"], 2000, "{problem}");
    assert!(
        problem["detail"].as_str().unwrap().contains("2 s"),
        "the detail names the budget: {problem}"
    );
    assert!(
        took < Duration::from_secs(10),
        "refused at the 2 s budget, not after compiling: took {took:?}"
    );

    let (status, _) = s.get_json("/v1/modules/slow").await;
    assert_eq!(status, 404, "nothing is registered");
    assert_eq!(
        files_under(&dir.path().join("modules")),
        Vec::<String>::new(),
        "no component file"
    );
    assert_eq!(
        files_under(&dir.path().join("cache")),
        Vec::<String>::new(),
        "no artifact, no staging file"
    );
    // The server is unharmed.
    assert_eq!(s.upload("bank-account", "1.0.0", BANK).await.status(), 201);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_upload_does_not_hold_up_a_legitimate_one() {
    let dir = temp_dir();
    let mut config = config(dir.path());
    config.runtime.compile.timeout = Duration::from_secs(15);
    config.runtime.compile.workers = 2;
    let s = std::sync::Arc::new(TestServer::start_with(config).await);

    let slow = {
        let s = s.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let response = put(&s, "slow", "1.0.0", hard_to_compile(100, 6000)).await;
            (response, started.elapsed())
        })
    };
    // Let the slow one reach its worker first.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let legit = s.upload("bank-account", "1.0.0", BANK).await;
    let legit_took = started.elapsed();
    eprintln!("the legitimate upload beside a slow one took {legit_took:?}");
    assert_eq!(legit.status(), 201);
    assert!(
        !slow.is_finished(),
        "the slow upload is still compiling when the legitimate one is done"
    );
    assert!(
        legit_took < Duration::from_secs(10),
        "the legitimate upload answered in seconds, not after the slow one: {legit_took:?}"
    );
    assert_eq!(s.send("bank-account", "acc-1", OPEN).await.status(), 200);

    let (refused, slow_took) = slow.await.unwrap();
    expect_problem(refused, 422, "compile_budget_exceeded").await;
    assert!(
        slow_took >= Duration::from_secs(15),
        "the slow one ran to its budget: {slow_took:?}"
    );
    std::sync::Arc::into_inner(s)
        .expect("the task is done")
        .stop()
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_compile_that_needs_more_memory_than_its_budget_is_refused_with_its_own_error() {
    let dir = temp_dir();
    let mut config = config(dir.path());
    config.runtime.compile.memory_bytes = 256 << 20;
    let s = TestServer::start_with(config).await;

    let started = Instant::now();
    // ~370 MB to compile.
    let refused = put(&s, "greedy", "1.0.0", hard_to_compile(100, 3000)).await;
    let took = started.elapsed();
    eprintln!("a 256 MiB memory budget refused the component after {took:?}");
    let problem = expect_problem(refused, 422, "compile_budget_exceeded").await;
    assert_eq!(problem["budget"], "memory", "{problem}");
    assert_eq!(problem["limit_bytes"], 256u64 << 20, "{problem}");
    assert!(
        problem["detail"].as_str().unwrap().contains("256 MiB"),
        "the detail names the budget: {problem}"
    );
    assert!(
        took < Duration::from_secs(20),
        "refused when the memory ran out, long before the compile would end: {took:?}"
    );
    assert_eq!(s.get_json("/v1/modules/greedy").await.0, 404);
    assert_eq!(files_under(&dir.path().join("cache")), Vec::<String>::new());

    // The same budget is ample for a real module.
    assert_eq!(s.upload("bank-account", "1.0.0", BANK).await.status(), 201);
    s.stop().await;
}

/// The pids of compile workers writing under `dir`.
fn workers_under(dir: &Path) -> Vec<i32> {
    let dir = dir.display().to_string();
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline);
        if cmdline.contains("__compile") && cmdline.contains(&dir) {
            pids.push(pid);
        }
    }
    pids
}

#[tokio::test(flavor = "multi_thread")]
async fn a_compile_worker_that_dies_is_a_clear_error_not_a_hang() {
    let dir = temp_dir();
    let mut config = config(dir.path());
    config.runtime.compile.timeout = Duration::from_secs(60);
    let s = std::sync::Arc::new(TestServer::start_with(config).await);
    let upload = {
        let s = s.clone();
        tokio::spawn(async move { put(&s, "doomed", "1.0.0", hard_to_compile(100, 6000)).await })
    };
    // What the kernel's OOM killer would do to a worker.
    let deadline = Instant::now() + Duration::from_secs(10);
    let pids = loop {
        let pids = workers_under(dir.path());
        if !pids.is_empty() {
            break pids;
        }
        assert!(Instant::now() < deadline, "a compile worker started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let killed = Instant::now();
    for pid in pids {
        let status = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "killed worker {pid}");
    }
    let response = tokio::time::timeout(Duration::from_secs(10), upload)
        .await
        .expect("the upload answers once its worker is gone, not at the time budget")
        .unwrap();
    assert!(killed.elapsed() < Duration::from_secs(10));
    let problem = expect_problem(response, 422, "compile_crashed").await;
    assert!(
        problem["detail"].as_str().unwrap().contains("signal 9"),
        "the detail says how the compiler died: {problem}"
    );
    assert_eq!(s.get_json("/v1/modules/doomed").await.0, 404);
    assert_eq!(files_under(&dir.path().join("cache")), Vec::<String>::new());
    std::sync::Arc::into_inner(s)
        .expect("the task is done")
        .stop()
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_without_the_artifact_cache_serves_at_once_and_compiles_in_the_background() {
    let dir = temp_dir();
    let s = TestServer::start(dir.path()).await;
    assert_eq!(s.upload("bank-account", "1.0.0", BANK).await.status(), 201);
    assert_eq!(
        put(&s, "slow-account", "1.0.0", slow_bank_account())
            .await
            .status(),
        201,
        "a valid aggregate that is merely slow to compile passes the default budget"
    );
    for name in ["bank-account", "slow-account"] {
        assert_eq!(s.send(name, "acc-1", OPEN).await.status(), 200);
        assert_eq!(s.send(name, "acc-1", DEPOSIT).await.status(), 200);
    }
    s.stop().await;
    std::fs::remove_dir_all(dir.path().join("cache")).expect("the cache is deleted");

    let mut config = config(dir.path());
    config.runtime.compile.request_wait = Duration::from_millis(100);
    let started = Instant::now();
    let s = TestServer::start_with(config).await;
    let (health, _) = s.get_json("/healthz").await;
    let (listed, modules) = s.get_json("/v1/modules").await;
    let serving_after = started.elapsed();
    eprintln!(
        "without the artifact cache: healthz and the module list answered {serving_after:?} after the start"
    );
    assert_eq!((health, listed), (200, 200));
    assert_eq!(
        compile_state(&modules, "slow-account", "1.0.0").as_deref(),
        Some("compiling"),
        "the server serves while the module compiles: {modules}"
    );
    assert!(
        serving_after < Duration::from_secs(2),
        "serving at once: {serving_after:?}"
    );

    let early = s.send("slow-account", "acc-1", DEPOSIT).await;
    assert_eq!(
        early
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1"),
        "a 503 that will pass says when to retry"
    );
    let problem = expect_problem(early, 503, "module_compiling").await;
    assert_eq!(problem["module"], "slow-account@1.0.0");
    let state = s
        .request(Method::GET, "/v1/aggregates/slow-account/acc-1")
        .send()
        .await
        .unwrap();
    expect_problem(state, 503, "module_compiling").await;

    // Once compiled, it serves as before: the state is the one recorded.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let response = s.send("slow-account", "acc-1", DEPOSIT).await;
        if response.status() == 200 {
            break;
        }
        expect_problem(response, 503, "module_compiling").await;
        assert!(Instant::now() < deadline, "the module compiled in time");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "the slow module served {:?} after the start",
        started.elapsed()
    );
    let (status, state) = s.get_json("/v1/aggregates/slow-account/acc-1").await;
    assert_eq!(status, 200);
    assert_eq!(state["state"]["balance"], 14, "{state}");
    assert_eq!(state["version"], 3, "{state}");
    let (_, modules) = s.get_json("/v1/modules").await;
    for name in ["bank-account", "slow-account"] {
        assert_eq!(
            compile_state(&modules, name, "1.0.0").as_deref(),
            Some("ready"),
            "{modules}"
        );
    }
    assert_eq!(s.send("bank-account", "acc-1", DEPOSIT).await.status(), 200);
    assert_eq!(
        files_under(&dir.path().join("cache"))
            .iter()
            .filter(|f| f.ends_with(".cwasm"))
            .count(),
        2,
        "the artifacts are cached again"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_module_that_fails_to_compile_at_startup_is_reported_and_the_others_serve() {
    let dir = temp_dir();
    let s = TestServer::start(dir.path()).await;
    assert_eq!(s.upload("bank-account", "1.0.0", BANK).await.status(), 201);
    let slow = slow_bank_account();
    let uploaded = put(&s, "slow-account", "1.0.0", slow.clone()).await;
    assert_eq!(uploaded.status(), 201);
    let digest = uploaded.json::<Value>().await.unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(s.send("slow-account", "acc-1", OPEN).await.status(), 200);
    s.stop().await;
    // Only this module's artifact is lost: the others load from the cache.
    let artifact = files_under(&dir.path().join("cache"))
        .into_iter()
        .find(|f| f.ends_with(&format!("{digest}.cwasm")))
        .expect("the slow module's artifact is cached");
    std::fs::remove_file(artifact).unwrap();

    // The operator lowered the budget below what this module needs.
    let mut config = config(dir.path());
    config.runtime.compile.timeout = Duration::from_secs(1);
    config.runtime.compile.request_wait = Duration::from_millis(100);
    let s = TestServer::start_with(config).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let version = loop {
        let (_, modules) = s.get_json("/v1/modules/slow-account").await;
        let version = modules["versions"][0].clone();
        if version["compile"]["state"] != "compiling" {
            break version;
        }
        assert!(Instant::now() < deadline, "the startup compile ended");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(version["compile"]["state"], "failed", "{version}");
    assert_eq!(
        version["compile"]["code"], "compile_budget_exceeded",
        "{version}"
    );
    assert!(
        version["compile"]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("1 s")),
        "{version}"
    );
    let refused = s.send("slow-account", "acc-1", DEPOSIT).await;
    let problem = expect_problem(refused, 503, "module_compile_failed").await;
    assert_eq!(problem["compile_code"], "compile_budget_exceeded");

    // The others serve.
    assert_eq!(s.send("bank-account", "acc-2", OPEN).await.status(), 200);
    // Uploading the same bytes again retries, under the budget in force.
    expect_problem(
        put(&s, "slow-account", "1.0.0", slow).await,
        422,
        "compile_budget_exceeded",
    )
    .await;
    s.stop().await;
}

/// Reads `path` until it answers 200; until then it must answer 503 `code`.
async fn read_when_live(s: &TestServer, path: &str, code: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let response = s.request(Method::GET, path).send().await.unwrap();
        if response.status() == 200 {
            return response.json().await.unwrap();
        }
        expect_problem(response, 503, code).await;
        assert!(Instant::now() < deadline, "{path} answered in time");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_projection_still_compiling_after_a_restart_answers_503_then_catches_up() {
    let dir = temp_dir();
    let s = TestServer::start(dir.path()).await;
    assert_eq!(s.upload("bank-account", "1.0.0", BANK).await.status(), 201);
    for id in ["acc-1", "acc-2"] {
        assert_eq!(s.send("bank-account", id, OPEN).await.status(), 200);
        assert_eq!(s.send("bank-account", id, DEPOSIT).await.status(), 200);
    }
    let uploaded = put(
        &s,
        "account-balances",
        "1.0.0",
        slowed(refold_test_guests::ACCOUNT_BALANCES),
    )
    .await;
    assert_eq!(uploaded.status(), 201);
    let doc = "/v1/projections/account-balances/docs/account/acc-1?min_position=4&wait_ms=30000";
    let before = read_when_live(&s, doc, "projection_not_live").await;
    s.stop().await;
    std::fs::remove_dir_all(dir.path().join("cache")).expect("the cache is deleted");

    let mut config = config(dir.path());
    config.runtime.compile.request_wait = Duration::from_millis(100);
    let s = TestServer::start_with(config).await;
    let early = s.request(Method::GET, doc).send().await.unwrap();
    assert!(early.headers().contains_key("retry-after"));
    let problem = expect_problem(early, 503, "module_compiling").await;
    assert_eq!(problem["module"], "account-balances@1.0.0");
    // The live version stays live while it compiles: nothing else takes its place.
    let (_, modules) = s.get_json("/v1/modules/account-balances").await;
    assert_eq!(modules["active_version"], "1.0.0", "{modules}");

    let after = read_when_live(&s, doc, "module_compiling").await;
    assert_eq!(after, before, "the same document after the restart");
    s.stop().await;
}
