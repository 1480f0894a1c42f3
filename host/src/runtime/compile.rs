//! Compiling under a budget: each compilation runs in a child process (the
//! `refold` binary's hidden `__compile` subcommand, [`super::worker`]) with a
//! wall-clock deadline (the child is killed) and a memory limit (RLIMIT_DATA,
//! set by the child on itself before it reads the component). A few compile at
//! once, each in its own child, so one slow upload does not hold up the
//! others.
//!
//! There is no in-process fallback: without a worker binary nothing compiles
//! (artifacts already in the cache still load).

use std::io::{Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use super::error::RuntimeError;
use super::worker::{EXIT_COMPILED, EXIT_INVALID, EXIT_IO, EXIT_OUT_OF_MEMORY, is_out_of_memory};

/// The budget of one compilation, and how many run at once.
#[derive(Clone, Debug)]
pub struct CompileConfig {
    /// The `refold` binary that compiles (`refold __compile`). `refold serve`
    /// passes itself; tests pass `CARGO_BIN_EXE_refold`. `None`: nothing
    /// compiles, only cached artifacts load.
    pub worker: Option<PathBuf>,
    /// Wall-clock time one compilation may take; past it the worker is killed.
    pub timeout: Duration,
    /// Memory the worker may use, in bytes: its private writable mappings
    /// (RLIMIT_DATA), which is its heap, thread stacks and cranelift's work.
    pub memory_bytes: u64,
    /// Compilations that run at once; more wait their turn.
    pub workers: usize,
    /// How long a request for a module that is still compiling (after a start
    /// without its cached artifact) waits before it is answered 503.
    pub request_wait: Duration,
}

pub const DEFAULT_COMPILE_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_COMPILE_MEMORY: u64 = 2 << 30;

impl Default for CompileConfig {
    fn default() -> Self {
        CompileConfig {
            worker: None,
            timeout: DEFAULT_COMPILE_TIMEOUT,
            memory_bytes: DEFAULT_COMPILE_MEMORY,
            workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            request_wait: Duration::from_secs(2),
        }
    }
}

/// The binary to run as the compile worker: this very one. On Linux that is
/// `/proc/self/exe`, which still names the running binary after an upgrade
/// replaced its file (a newer worker's artifacts would not load here).
pub fn this_binary() -> std::io::Result<PathBuf> {
    let proc_exe = Path::new("/proc/self/exe");
    if proc_exe.exists() {
        Ok(proc_exe.to_path_buf())
    } else {
        std::env::current_exe()
    }
}

/// What stderr of a worker is kept for the error message.
const STDERR_KEPT: usize = 4 << 10;
/// How often a running worker is checked on.
const POLL: Duration = Duration::from_millis(5);

/// Runs compilations in worker processes, a few at a time.
pub struct Compiler {
    config: CompileConfig,
    slots: Semaphore,
}

impl Compiler {
    pub fn new(config: CompileConfig) -> Compiler {
        let slots = Semaphore::new(config.workers.max(1));
        Compiler { config, slots }
    }

    pub fn config(&self) -> &CompileConfig {
        &self.config
    }

    /// Compiles `bytes` into an artifact at `output` (which must not exist).
    /// On any error nothing is left at `output`.
    pub async fn compile(
        &self,
        bytes: Arc<[u8]>,
        output: &Path,
        label: &str,
    ) -> Result<(), RuntimeError> {
        let worker = self.config.worker.as_ref().ok_or_else(|| {
            RuntimeError::Host(
                "no compile worker is configured (RuntimeConfig.compile.worker): components cannot be compiled".into(),
            )
        })?;
        let _slot = self
            .slots
            .acquire()
            .await
            .map_err(|_| RuntimeError::Host("the compiler is shut down".into()))?;
        let started = Instant::now();
        let outcome = self.run_worker(worker, bytes, output).await;
        if outcome.is_err() {
            let _ = std::fs::remove_file(output);
        }
        let ms = started.elapsed().as_millis() as u64;
        match &outcome {
            Ok(()) => tracing::info!(module = label, ms, "compiled"),
            Err(e) => tracing::warn!(module = label, ms, error = %e, "compilation refused"),
        }
        outcome
    }

    async fn run_worker(
        &self,
        worker: &Path,
        bytes: Arc<[u8]>,
        output: &Path,
    ) -> Result<(), RuntimeError> {
        let mut child = Command::new(worker)
            .arg("__compile")
            .arg("--output")
            .arg(output)
            .arg("--memory-bytes")
            .arg(self.config.memory_bytes.to_string())
            // Nothing of the server's environment (tokens among it) reaches the worker.
            .env_clear()
            // mimalloc reserves 1 GiB of address space per arena ahead of use, and
            // marks it writable, which the worker's memory limit (RLIMIT_DATA)
            // counts: with no reservation the limit measures what compiling uses.
            .env("MIMALLOC_ARENA_RESERVE", "0")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                RuntimeError::Host(format!(
                    "starting the compile worker {}: {e}",
                    worker.display()
                ))
            })?;
        let stdin = child.stdin.take();
        let stderr = child.stderr.take();
        let mut child = Reaped(child);
        // A worker that dies early closes the pipe: the write fails, and the
        // exit status says why, so the write's own error is not interesting.
        std::thread::spawn(move || {
            if let Some(mut stdin) = stdin {
                let _ = stdin.write_all(&bytes);
            }
        });
        let stderr = std::thread::spawn(move || read_kept(stderr));
        let deadline = Instant::now() + self.config.timeout;
        let status = loop {
            match child.0.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() >= deadline => {
                    child.kill();
                    return Err(RuntimeError::CompileTimeout {
                        limit: self.config.timeout,
                    });
                }
                Ok(None) => tokio::time::sleep(POLL).await,
                Err(e) => {
                    return Err(RuntimeError::Host(format!(
                        "waiting for the compile worker: {e}"
                    )));
                }
            }
        };
        // The worker has exited, so its stderr is at end of file.
        let stderr = stderr.join().unwrap_or_default();
        self.outcome(worker, status, stderr.trim())
    }

    fn outcome(&self, worker: &Path, status: ExitStatus, stderr: &str) -> Result<(), RuntimeError> {
        let memory = || RuntimeError::CompileMemory {
            limit_bytes: self.config.memory_bytes,
        };
        match (status.code(), status.signal()) {
            (Some(EXIT_COMPILED), _) => Ok(()),
            (Some(EXIT_INVALID), _) => Err(RuntimeError::InvalidModule(stderr.to_string())),
            (Some(EXIT_OUT_OF_MEMORY), _) => Err(memory()),
            // Rust aborts when an allocation fails, after saying so.
            (None, Some(_))
                if stderr.contains("memory allocation of") || is_out_of_memory(stderr) =>
            {
                Err(memory())
            }
            (None, Some(signal)) => Err(RuntimeError::CompileCrashed(format!(
                "the compiler was killed by signal {signal}{}",
                said(stderr)
            ))),
            // A thread the compiler could not start under the limit.
            (Some(101), _) if stderr.contains("Resource temporarily unavailable") => Err(memory()),
            // A panic: a compiler bug this input reaches.
            (Some(101), _) => Err(RuntimeError::CompileCrashed(format!(
                "the compiler panicked{}",
                said(stderr)
            ))),
            (Some(EXIT_IO), _) | (Some(_), _) | (None, None) => Err(RuntimeError::Host(format!(
                "the compile worker {} failed ({status}){}",
                worker.display(),
                said(stderr)
            ))),
        }
    }
}

fn said(stderr: &str) -> String {
    if stderr.is_empty() {
        String::new()
    } else {
        format!(": {stderr}")
    }
}

/// Reads a pipe to its end, keeping the first `STDERR_KEPT` bytes (the
/// message comes first; the rest would be noise).
fn read_kept(pipe: Option<impl Read>) -> String {
    let Some(mut pipe) = pipe else {
        return String::new();
    };
    let mut kept = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match pipe.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = STDERR_KEPT.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
    String::from_utf8_lossy(&kept).into_owned()
}

/// A child that is killed and reaped when dropped: a compilation whose caller
/// went away (a client that hung up, a server shutting down) stops with it.
struct Reaped(Child);

impl Reaped {
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            self.kill();
        }
    }
}
