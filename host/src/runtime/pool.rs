//! A fixed pool of threads for guest code. Guest calls are CPU work that may
//! run for up to the epoch deadline; they never run on tokio's reactor threads.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

type Job = Box<dyn FnOnce() + Send>;

pub struct GuestPool {
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
}

impl GuestPool {
    pub fn new(threads: usize) -> GuestPool {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("refold-guest-{i}"))
                .spawn(move || {
                    loop {
                        // The lock is held only while taking a job, never while running one.
                        let job = match rx.lock() {
                            Ok(rx) => rx.recv(),
                            Err(_) => return,
                        };
                        match job {
                            Ok(job) => job(),
                            Err(_) => return, // the pool was dropped
                        }
                    }
                })
                .expect("spawning a guest thread");
        }
        GuestPool {
            jobs: Mutex::new(Some(tx)),
        }
    }

    /// Runs `f` on a guest thread and waits for its result without blocking the reactor.
    pub async fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            // A panic in host code around a guest call must not kill the pool's thread.
            let _ = tx.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)));
        });
        let sent = match self.jobs.lock() {
            Ok(jobs) => jobs.as_ref().map(|j| j.send(job).is_ok()).unwrap_or(false),
            Err(_) => false,
        };
        assert!(sent, "the guest pool is shut down");
        match rx.await.expect("a guest thread answers every job it takes") {
            Ok(value) => value,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

impl Drop for GuestPool {
    fn drop(&mut self) {
        if let Ok(mut jobs) = self.jobs.lock() {
            jobs.take();
        }
    }
}
