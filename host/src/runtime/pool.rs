//! The threads guest code runs on, shared fairly between modules.
//!
//! Guest calls are CPU work that may run up to their deadline; they never run
//! on tokio's reactor threads. Every call names its *tenant* (the module it
//! belongs to), and the pool keeps one tenant from taking it from the others:
//!
//! - Jobs wait in one FIFO queue per tenant; free threads take them round-robin
//!   across tenants, so a tenant with a deep queue cannot starve a tenant with one job.
//! - While other tenants are active (running, queued, or seen in the last
//!   [`ACTIVE_WINDOW`]), a tenant runs at most `threads - 1` calls at once, so
//!   one thread stays for the others. Alone, a tenant may use every thread.
//! - A tenant with no call running is never made to wait for another tenant's
//!   long calls: if every base thread is busy, an extra thread starts for it
//!   (up to `2 * threads`), and the OS shares the cores between them.
//!
//! - A call that runs longer than [`DEMOTE_AFTER`] has its thread's OS priority
//!   lowered (nice [`DEMOTED_NICE`]) for the rest of the call, so the threads that
//!   serve short calls, the store's writer and tokio get the cores first. (Where
//!   the process may not raise the priority back afterwards, that thread retires
//!   and a fresh one takes its place.)
//!
//! Guest calls cannot be preempted, but every one ends by its deadline (fuel,
//! epoch, and host calls that never block), so a busy thread frees up in bounded time.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

type Job = Box<dyn FnOnce() + Send>;

/// How long a tenant counts as active after its last call ended.
pub const ACTIVE_WINDOW: Duration = Duration::from_secs(1);
/// A call running this long is a long call: its thread's priority is lowered.
pub const DEMOTE_AFTER: Duration = Duration::from_millis(20);
/// The nice value of a thread running a long call.
pub const DEMOTED_NICE: i32 = 10;
const WATCH_TICK: Duration = Duration::from_millis(10);

pub struct GuestPool {
    shared: Arc<Shared>,
}

struct Shared {
    sched: Mutex<Sched>,
    work: Condvar,
    /// Threads kept even when idle; also the number of calls that run at once
    /// before tenants without a running call get extra threads.
    base_threads: usize,
    max_threads: usize,
    jobs_run: AtomicU64,
}

#[derive(Default)]
struct Sched {
    tenants: HashMap<Arc<str>, Tenant>,
    /// Tenants with queued jobs, in the order they are served.
    ring: VecDeque<Arc<str>>,
    running: usize,
    queued: usize,
    threads: usize,
    idle: usize,
    /// Idle threads told to look for work that have not woken yet.
    wakeups: usize,
    /// Threads running a call, by OS thread id.
    busy: HashMap<i32, Busy>,
    demoted: u64,
    shutdown: bool,
}

struct Busy {
    since: Instant,
    demoted: bool,
}

struct Tenant {
    queue: VecDeque<Job>,
    running: usize,
    last_active: Instant,
}

/// A snapshot of the pool, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    pub threads: usize,
    pub running: usize,
    pub queued: usize,
    pub jobs_run: u64,
    /// Calls that ran long enough to have their thread's priority lowered.
    pub demoted: u64,
}

impl GuestPool {
    pub fn new(threads: usize) -> GuestPool {
        let base_threads = threads.max(1);
        let shared = Arc::new(Shared {
            sched: Mutex::new(Sched::default()),
            work: Condvar::new(),
            base_threads,
            max_threads: base_threads * 2,
            jobs_run: AtomicU64::new(0),
        });
        {
            let mut sched = shared.lock();
            for _ in 0..base_threads {
                sched.threads += 1;
                spawn_worker(&shared);
            }
        }
        let watched = shared.clone();
        let watch = std::thread::Builder::new()
            .name("refold-guest-watch".into())
            .spawn(move || watch_long_calls(&watched));
        if let Err(e) = watch {
            tracing::error!(error = %e, "could not start the guest pool's watch thread; long calls keep their priority");
        }
        GuestPool { shared }
    }

    /// Runs `f` on a guest thread, on behalf of `tenant` (a module name), and
    /// waits for its result without blocking the reactor.
    pub async fn run<T: Send + 'static>(
        &self,
        tenant: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> T {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            // A panic in host code around a guest call must not kill the pool's thread.
            let _ = tx.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)));
        });
        self.submit(tenant, job);
        match rx.await.expect("a guest thread answers every job it takes") {
            Ok(value) => value,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    fn submit(&self, tenant: &str, job: Job) {
        let shared = &self.shared;
        let mut sched = shared.lock();
        assert!(!sched.shutdown, "the guest pool is shut down");
        let now = Instant::now();
        let key: Arc<str> = match sched.tenants.get_key_value(tenant) {
            Some((key, _)) => key.clone(),
            None => Arc::from(tenant),
        };
        let entry = sched.tenants.entry(key.clone()).or_insert_with(|| Tenant {
            queue: VecDeque::new(),
            running: 0,
            last_active: now,
        });
        entry.queue.push_back(job);
        entry.last_active = now;
        if entry.queue.len() == 1 {
            sched.ring.push_back(key.clone());
        }
        sched.queued += 1;
        if !sched.may_start(&key, shared.base_threads, now) {
            return; // a thread picks it up when the tenant's turn comes
        }
        if sched.idle > sched.wakeups {
            sched.wakeups += 1;
            shared.work.notify_one();
        } else if sched.tenants[&key].running == 0
            && sched.wakeups == 0
            && sched.threads < shared.max_threads
        {
            // Every thread is busy: an extra thread only for a tenant that would
            // otherwise wait behind others' calls. Not while woken threads are
            // on their way (a burst of jobs after a group commit), and not for
            // a tenant with calls running: those free up a thread soon enough.
            sched.threads += 1;
            spawn_worker(shared);
        }
    }

    pub fn stats(&self) -> PoolStats {
        let sched = self.shared.lock();
        PoolStats {
            threads: sched.threads,
            running: sched.running,
            queued: sched.queued,
            jobs_run: self.shared.jobs_run.load(Ordering::Relaxed),
            demoted: sched.demoted,
        }
    }
}

impl Drop for GuestPool {
    fn drop(&mut self) {
        self.shared.lock().shutdown = true;
        self.shared.work.notify_all();
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Sched> {
        self.sched.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Sched {
    /// Whether `tenant` may start one more call now.
    fn may_start(&self, tenant: &str, base_threads: usize, now: Instant) -> bool {
        let Some(t) = self.tenants.get(tenant) else {
            return false;
        };
        if t.running == 0 {
            return true; // never kept waiting behind other tenants' calls
        }
        let others_active = self.tenants.iter().any(|(name, other)| {
            &**name != tenant
                && (other.running > 0
                    || !other.queue.is_empty()
                    || now.duration_since(other.last_active) < ACTIVE_WINDOW)
        });
        let cap = if others_active {
            base_threads.saturating_sub(1).max(1)
        } else {
            base_threads
        };
        t.running < cap && self.running < base_threads
    }

    /// The next job to run, round-robin over tenants that may start one.
    fn next_job(&mut self, base_threads: usize) -> Option<(Arc<str>, Job)> {
        let now = Instant::now();
        let position =
            (0..self.ring.len()).find(|&i| self.may_start(&self.ring[i], base_threads, now))?;
        let name = self.ring.remove(position)?;
        let tenant = self.tenants.get_mut(&name)?;
        let job = tenant.queue.pop_front()?;
        tenant.running += 1;
        if !tenant.queue.is_empty() {
            self.ring.push_back(name.clone());
        }
        self.running += 1;
        self.queued -= 1;
        Some((name, job))
    }

    fn finished(&mut self, name: &str) {
        self.running -= 1;
        let now = Instant::now();
        if let Some(t) = self.tenants.get_mut(name) {
            t.running -= 1;
            t.last_active = now;
        }
        // Forget tenants long idle, so the map holds only recent modules.
        if self.tenants.len() > 64 {
            self.tenants.retain(|_, t| {
                t.running > 0
                    || !t.queue.is_empty()
                    || now.duration_since(t.last_active) < ACTIVE_WINDOW
            });
        }
    }
}

fn spawn_worker(shared: &Arc<Shared>) {
    let shared = shared.clone();
    let spawned = std::thread::Builder::new()
        .name("refold-guest".into())
        .spawn(move || work(&shared));
    if let Err(e) = spawned {
        // Running with fewer threads is degraded, not broken: the others take the jobs.
        tracing::error!(error = %e, "could not start a guest thread");
    }
}

fn work(shared: &Shared) {
    let tid = os::thread_id();
    let mut sched = shared.lock();
    loop {
        if let Some((tenant, job)) = sched.next_job(shared.base_threads) {
            sched.busy.insert(
                tid,
                Busy {
                    since: Instant::now(),
                    demoted: false,
                },
            );
            drop(sched);
            job();
            shared.jobs_run.fetch_add(1, Ordering::Relaxed);
            sched = shared.lock();
            sched.finished(&tenant);
            let demoted = sched.busy.remove(&tid).is_some_and(|b| b.demoted);
            if demoted && !os::set_nice(tid, 0) {
                // Not allowed to raise it back: leave, and let a fresh thread
                // (started by the watch thread, at normal priority) take over.
                sched.threads -= 1;
                return;
            }
            continue;
        }
        if sched.shutdown || sched.threads > shared.base_threads {
            sched.threads -= 1;
            return;
        }
        sched.idle += 1;
        while sched.wakeups == 0 && !sched.shutdown {
            sched = shared.work.wait(sched).unwrap_or_else(|e| e.into_inner());
        }
        sched.wakeups = sched.wakeups.saturating_sub(1);
        sched.idle -= 1;
    }
}

/// Lowers the priority of threads whose call runs long, and keeps the base
/// number of threads (replacing threads that retired after a long call).
fn watch_long_calls(shared: &Arc<Shared>) {
    loop {
        std::thread::sleep(WATCH_TICK);
        let mut sched = shared.lock();
        if sched.shutdown {
            return;
        }
        let mut demoted = 0;
        for (tid, busy) in sched.busy.iter_mut() {
            if !busy.demoted && busy.since.elapsed() >= DEMOTE_AFTER {
                busy.demoted = true;
                demoted += 1;
                os::set_nice(*tid, DEMOTED_NICE);
            }
        }
        sched.demoted += demoted;
        while sched.threads < shared.base_threads {
            sched.threads += 1;
            spawn_worker(shared);
        }
    }
}

/// Thread ids and priorities (Linux); elsewhere long calls keep their priority.
mod os {
    #[cfg(target_os = "linux")]
    pub fn thread_id() -> i32 {
        // SAFETY: gettid has no preconditions and cannot fail.
        unsafe { libc::gettid() }
    }

    /// Sets a thread's nice value; false when the OS refuses.
    #[cfg(target_os = "linux")]
    pub fn set_nice(tid: i32, nice: i32) -> bool {
        // SAFETY: setpriority only reads its arguments; a bad tid is an error return.
        unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice) == 0 }
    }

    /// A process-unique number per thread (no OS priorities to set here).
    #[cfg(not(target_os = "linux"))]
    pub fn thread_id() -> i32 {
        use std::sync::atomic::{AtomicI32, Ordering};
        static NEXT: AtomicI32 = AtomicI32::new(1);
        thread_local!(static ID: i32 = NEXT.fetch_add(1, Ordering::Relaxed));
        ID.with(|id| *id)
    }

    #[cfg(not(target_os = "linux"))]
    pub fn set_nice(_tid: i32, _nice: i32) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn a_busy_tenant_does_not_delay_another() {
        runtime().block_on(async {
            let pool = Arc::new(GuestPool::new(2));
            let release = Arc::new(AtomicUsize::new(0));
            let mut hogs = Vec::new();
            for _ in 0..6 {
                let (pool, release) = (pool.clone(), release.clone());
                hogs.push(tokio::spawn(async move {
                    pool.run("hog", move || {
                        while release.load(Ordering::Relaxed) == 0 {
                            std::thread::sleep(Duration::from_millis(1));
                        }
                    })
                    .await
                }));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            let started = Instant::now();
            for _ in 0..20 {
                pool.run("light", || ()).await;
            }
            let light = started.elapsed();
            assert!(
                light < Duration::from_secs(1),
                "20 light calls took {light:?} while another tenant held the pool"
            );
            let stats = pool.stats();
            assert!(
                stats.threads <= 4,
                "at most twice the base threads: {stats:?}"
            );
            release.store(1, Ordering::Relaxed);
            for h in hogs {
                h.await.unwrap();
            }
        });
    }

    #[test]
    fn one_tenant_alone_uses_every_thread() {
        runtime().block_on(async {
            let pool = Arc::new(GuestPool::new(2));
            let peak = Arc::new(AtomicUsize::new(0));
            let now = Arc::new(AtomicUsize::new(0));
            let mut calls = Vec::new();
            for _ in 0..8 {
                let (pool, peak, now) = (pool.clone(), peak.clone(), now.clone());
                calls.push(tokio::spawn(async move {
                    pool.run("solo", move || {
                        let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                        peak.fetch_max(n, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(20));
                        now.fetch_sub(1, Ordering::SeqCst);
                    })
                    .await
                }));
            }
            for c in calls {
                c.await.unwrap();
            }
            assert_eq!(peak.load(Ordering::SeqCst), 2);
        });
    }

    #[test]
    fn a_panicking_job_is_reported_and_the_thread_survives() {
        runtime().block_on(async {
            let pool = Arc::new(GuestPool::new(1));
            let p = pool.clone();
            let panicked = tokio::spawn(async move { p.run("t", || panic!("on purpose")).await })
                .await
                .is_err();
            assert!(panicked);
            assert_eq!(pool.run("t", || 7).await, 7);
        });
    }
}
