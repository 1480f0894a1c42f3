//! The real `refold` binary as a child process: a server on a free port whose
//! log goes to a file, stopped with SIGTERM (or killed if a test fails first).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_refold");

pub struct Served {
    pub child: Child,
    pub url: String,
    /// The server's stderr.
    pub log: PathBuf,
}

impl Served {
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then waits (at most 20 s) for a graceful exit.
    pub fn sigterm(&mut self) -> ExitStatus {
        sigterm(&mut self.child)
    }
}

impl Drop for Served {
    /// A failed test must not leave its server running.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `refold serve --listen 127.0.0.1:0 --data-dir DATA EXTRA...` from `command`
/// (the binary, perhaps with an environment), stderr to `DATA/server.log`.
/// Returns once the server prints its address.
pub fn serve_with(mut command: Command, data_dir: &Path, extra: &[&str]) -> Served {
    std::fs::create_dir_all(data_dir).expect("the data directory");
    let log = data_dir.join("server.log");
    let mut child = command
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).expect("the server log"))
        .spawn()
        .expect("refold serve starts");
    let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
    let mut line = String::new();
    stdout
        .read_line(&mut line)
        .expect("the server's first line");
    let Some(url) = line.trim().strip_prefix("refold listening on ") else {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "the server did not start ({line:?}); its log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    };
    // Whatever else it prints is read and dropped: it must not block on a full pipe.
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    Served {
        url: url.to_string(),
        child,
        log,
    }
}

pub fn serve(data_dir: &Path, extra: &[&str]) -> Served {
    serve_with(Command::new(BIN), data_dir, extra)
}

pub fn sigterm(child: &mut Child) -> ExitStatus {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().expect("the child's status") {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "the server stops within 20 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits for `child` at most `timeout`; past it, kills it and answers `None`.
pub fn wait_or_kill(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("the child's status") {
            return Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `refold --server URL ARGS...` against a running server: (exit code,
/// stdout, stderr).
pub fn cli(server: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(["--server", server])
        .args(args)
        .output()
        .expect("the refold binary runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
