//! One process per data directory. sled also locks its file, but its error does
//! not say who holds it; this lock does, and it is taken first.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use super::error::StoreError;

pub(crate) struct DirLock {
    // Held open for the store's lifetime; the OS releases the lock when the
    // process ends, however it ends.
    _file: File,
}

impl DirLock {
    pub fn acquire(dir: &Path) -> Result<DirLock, StoreError> {
        let path = dir.join("LOCK");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| StoreError::storage("opening the lock file", e))?;
        // A store this process closed a moment ago may still hold the lock: a
        // child process forked (to run a compile worker) before it closed
        // shares the lock until it execs. So a lock held by this very process
        // is waited for, briefly; another process's is an error at once.
        let patience = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(TryLockError::WouldBlock) => {
                    let mut holder = String::new();
                    let _ = file.seek(SeekFrom::Start(0));
                    let _ = file.read_to_string(&mut holder);
                    let holder = match holder.trim() {
                        "" => "pid unknown".to_string(),
                        h => h.to_string(),
                    };
                    let ours = holder == format!("pid {}", std::process::id());
                    if ours && std::time::Instant::now() < patience {
                        std::thread::sleep(std::time::Duration::from_millis(20));
                        continue;
                    }
                    return Err(StoreError::Locked {
                        path: dir.to_path_buf(),
                        holder,
                    });
                }
                Err(TryLockError::Error(e)) => {
                    return Err(StoreError::storage("locking the data directory", e));
                }
            }
        }
        // Record who holds it, for the next process's error message.
        let _ = file.set_len(0);
        let _ = file.seek(SeekFrom::Start(0));
        let _ = write!(file, "pid {}", std::process::id());
        let _ = file.sync_data();
        Ok(DirLock { _file: file })
    }
}
