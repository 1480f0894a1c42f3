//! The compile worker: the child side of `refold __compile`. Cranelift cannot
//! be interrupted, and a component built to be hard to compile can take
//! minutes and gigabytes; in a process of its own it can be killed at its
//! deadline and capped in memory without touching the server.
//!
//! Protocol: the component's bytes on stdin; the artifact written to
//! `--output` (a path the parent chose and nobody else uses) and fsynced; the
//! exit status says what happened, stderr says why (one line, for people).

use std::io::{Read, Write};
use std::path::PathBuf;

use wasmtime::Engine;
use wasmtime::component::Component;

use super::engine::{Allocation, engine_config};

/// The artifact is written.
pub const EXIT_COMPILED: i32 = 0;
/// The bytes are not a component wasmtime can compile (EX_DATAERR).
pub const EXIT_INVALID: i32 = 65;
/// The worker could not read its input or write the artifact (EX_IOERR).
pub const EXIT_IO: i32 = 74;
/// Compiling needed more memory than the limit allowed (EX_TEMPFAIL). An
/// allocation that fails inside Rust aborts instead, with "memory allocation
/// of N bytes failed" on stderr; the parent recognises both.
pub const EXIT_OUT_OF_MEMORY: i32 = 75;

/// What the parent tells the worker.
#[derive(Clone, Debug)]
pub struct WorkerArgs {
    /// Where the artifact goes.
    pub output: PathBuf,
    /// The memory limit of this process (RLIMIT_DATA: private writable
    /// mappings, so heap, stacks and cranelift's work), in bytes.
    pub memory_bytes: u64,
}

/// Runs the worker and returns its exit status.
pub fn run_compile_worker(args: &WorkerArgs) -> i32 {
    if let Err(e) = limit_resources(args.memory_bytes) {
        eprintln!("cannot limit the compile worker: {e}");
        return EXIT_IO;
    }
    let mut bytes = Vec::new();
    if let Err(e) = std::io::stdin().lock().read_to_end(&mut bytes) {
        eprintln!("reading the component from stdin: {e}");
        return EXIT_IO;
    }
    let engine = match Engine::new(&engine_config(Allocation::OnDemand)) {
        Ok(engine) => engine,
        Err(e) => return failed(&format!("creating the Wasm engine: {e:#}")),
    };
    let serialized = match Component::new(&engine, &bytes).and_then(|c| c.serialize()) {
        Ok(serialized) => serialized,
        Err(e) => return failed(&format!("{e:#}")),
    };
    drop(bytes);
    match write_artifact(args, &serialized) {
        Ok(()) => EXIT_COMPILED,
        Err(e) => {
            eprintln!("writing {}: {e}", args.output.display());
            EXIT_IO
        }
    }
}

/// A failure of compilation itself: the input's fault, unless the system ran
/// out of memory on the way.
fn failed(message: &str) -> i32 {
    eprintln!("{message}");
    if is_out_of_memory(message) {
        EXIT_OUT_OF_MEMORY
    } else {
        EXIT_INVALID
    }
}

/// ENOMEM from an mmap inside wasmtime, as its error chain words it.
pub fn is_out_of_memory(message: &str) -> bool {
    message.contains("os error 12") || message.contains("Cannot allocate memory")
}

fn write_artifact(args: &WorkerArgs, serialized: &[u8]) -> std::io::Result<()> {
    // `create_new`: the path is this worker's alone; finding a file there is a bug.
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&args.output)?;
    file.write_all(serialized)?;
    file.sync_all()
}

/// Caps the private writable memory (the memory budget; unlike RLIMIT_AS it
/// does not count address space that is only reserved) and turns core dumps
/// off: an allocation failure aborts, and a budget breach must not write a
/// core file the size of the budget.
fn limit_resources(memory_bytes: u64) -> std::io::Result<()> {
    for (resource, limit) in [(libc::RLIMIT_DATA, memory_bytes), (libc::RLIMIT_CORE, 0)] {
        let limit = libc::rlimit {
            rlim_cur: limit as libc::rlim_t,
            rlim_max: limit as libc::rlim_t,
        };
        // SAFETY: setrlimit reads the struct it is given and changes only this
        // process's limits; nothing else runs in this process yet.
        if unsafe { libc::setrlimit(resource, &limit) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}
