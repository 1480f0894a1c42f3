//! The threads guest code runs on, shared fairly between modules.
//!
//! Guest calls are CPU work that may run up to their deadline; they never run
//! on tokio's reactor threads. Every call names its *tenant* (the module it
//! belongs to), and the pool keeps one tenant from taking it from the others:
//!
//! - Jobs wait in one FIFO queue per tenant; free threads take them round-robin
//!   across tenants, so a tenant with a deep queue cannot starve a tenant with one job.
//! - While other tenants are active (running, queued, or seen in the last
//!   [`ACTIVE_WINDOW`]), a tenant runs at most its fair share of the threads
//!   (`threads / active tenants`, at least one). Alone, a tenant may use every thread.
//! - A tenant with no call running is never made to wait for another tenant's
//!   long calls: if every thread is busy, an extra thread starts for it, and
//!   the OS shares the cores between them. Extra threads are bounded twice:
//!   one starts only while fewer than `2 * threads` run calls that are not
//!   (yet) long, and never past `4 * threads` in all ([`HARD_MAX_FACTOR`]). So
//!   tenants that each keep a long call running (module names are free) must
//!   outnumber `3 * threads` before a newcomer queues; it then takes its turn
//!   round-robin behind the tenants queued before it.
//! - A call that runs longer than [`DEMOTE_AFTER`] has its thread's OS priority
//!   lowered (by [`DEMOTE_BY`] nice levels) for the rest of the call, so the
//!   threads that serve short calls, the store's writer and tokio get the cores
//!   first. (Where the process may not raise the priority back afterwards,
//!   that thread retires and a fresh one takes its place.)
//! - A job whose caller has gone away (a request cancelled while it queued) is
//!   dropped unrun.
//!
//! Whenever something changes (a job queued or finished, a thread retired, a
//! tenant's activity window ending), [`dispatch`] wakes or starts as many
//! threads as there are jobs the rules let start.
//!
//! Guest calls cannot be preempted, but every one ends by its deadline (fuel,
//! epoch, and host calls that never block), so a busy thread frees up in bounded time.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

/// A queued call: runs it, or (its caller gone) drops it.
type Job = Box<dyn FnOnce() + Send>;

/// How long a tenant counts as active after its last call ended.
pub const ACTIVE_WINDOW: Duration = Duration::from_secs(1);
/// A call running this long is a long call: its thread's priority is lowered.
pub const DEMOTE_AFTER: Duration = Duration::from_millis(20);
/// How many nice levels a long call's thread is lowered by.
pub const DEMOTE_BY: i32 = 10;
const WATCH_TICK: Duration = Duration::from_millis(10);
/// The most threads the pool runs, as a multiple of its base threads.
pub const HARD_MAX_FACTOR: usize = 4;

pub struct GuestPool {
    shared: Arc<Shared>,
}

struct Shared {
    sched: Mutex<Sched>,
    work: Condvar,
    /// Threads kept even when idle; also the number of calls that run at once
    /// before tenants without a running call get extra threads.
    base_threads: usize,
    /// The most threads running calls that are not long.
    soft_max_threads: usize,
    /// The most threads in all.
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
    /// The thread's nice value before it was lowered, once it has been.
    demoted_from: Option<i32>,
}

struct Tenant {
    queue: VecDeque<Job>,
    running: usize,
    last_active: Instant,
}

/// A snapshot of the pool, for metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    pub threads: usize,
    pub running: usize,
    pub queued: usize,
    pub jobs_run: u64,
    /// Calls that ran long enough to have their thread's priority lowered.
    pub demoted: u64,
    /// Per module (tenant) with calls queued or running now: (name, queued, running).
    pub modules: Vec<(String, usize, usize)>,
}

impl GuestPool {
    pub fn new(threads: usize) -> GuestPool {
        let base_threads = threads.max(1);
        let shared = Arc::new(Shared {
            sched: Mutex::new(Sched::default()),
            work: Condvar::new(),
            base_threads,
            soft_max_threads: base_threads * 2,
            max_threads: base_threads * HARD_MAX_FACTOR,
            jobs_run: AtomicU64::new(0),
        });
        {
            let mut sched = shared.lock();
            for _ in 0..base_threads {
                start_thread(&shared, &mut sched);
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

    /// The most threads the pool ever runs (base threads plus extra ones).
    pub fn max_threads(&self) -> usize {
        self.shared.max_threads
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
            if tx.is_closed() {
                return; // the caller went away while the job queued
            }
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
            sched.ring.push_back(key);
        }
        sched.queued += 1;
        dispatch(shared, &mut sched);
    }

    pub fn stats(&self) -> PoolStats {
        let sched = self.shared.lock();
        PoolStats {
            threads: sched.threads,
            running: sched.running,
            queued: sched.queued,
            jobs_run: self.shared.jobs_run.load(Ordering::Relaxed),
            demoted: sched.demoted,
            modules: sched
                .tenants
                .iter()
                .filter(|(_, t)| !t.queue.is_empty() || t.running > 0)
                .map(|(name, t)| (name.to_string(), t.queue.len(), t.running))
                .collect(),
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
    /// Tenants active now: running, queued, or seen within the window.
    fn active_tenants(&self, now: Instant) -> usize {
        self.tenants
            .values()
            .filter(|t| {
                t.running > 0
                    || !t.queue.is_empty()
                    || now.duration_since(t.last_active) < ACTIVE_WINDOW
            })
            .count()
    }

    /// The rule, for a tenant with `running` calls when the pool runs `total`:
    /// a tenant with nothing running may always start (on an extra thread if
    /// need be); otherwise within its fair share and the base threads.
    fn may_start(running: usize, total: usize, base: usize, active: usize) -> bool {
        let share = if active > 1 {
            (base / active).max(1)
        } else {
            base
        };
        running == 0 || (running < share && total < base)
    }

    /// The next job to run, round-robin over tenants that may start one.
    fn next_job(&mut self, base: usize) -> Option<(Arc<str>, Job)> {
        let active = self.active_tenants(Instant::now());
        let total = self.running;
        let position = (0..self.ring.len()).find(|&i| {
            let running = self.tenants.get(&self.ring[i]).map_or(0, |t| t.running);
            Sched::may_start(running, total, base, active)
        })?;
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

    /// How many queued jobs the rules would let start now, if threads were
    /// free: ring order, each start counted as it would be.
    fn startable(&self, base: usize) -> usize {
        let active = self.active_tenants(Instant::now());
        let mut running: HashMap<&str, usize> = HashMap::new();
        let (mut total, mut started) = (self.running, 0);
        loop {
            let mut progress = false;
            for name in &self.ring {
                let Some(t) = self.tenants.get(name) else {
                    continue;
                };
                let r = running.entry(&**name).or_insert(t.running);
                let taken = *r - t.running;
                if taken < t.queue.len() && Sched::may_start(*r, total, base, active) {
                    *r += 1;
                    total += 1;
                    started += 1;
                    progress = true;
                }
            }
            if !progress {
                return started;
            }
        }
    }

    /// Threads whose call has run past [`DEMOTE_AFTER`].
    fn long_calls(&self) -> usize {
        self.busy
            .values()
            .filter(|b| b.since.elapsed() >= DEMOTE_AFTER)
            .count()
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

/// Wakes or starts a thread for each job the rules let start that no woken
/// thread is on its way to: idle threads first, extra threads (within both
/// maximums) only when none is idle.
fn dispatch(shared: &Arc<Shared>, sched: &mut Sched) {
    if sched.queued == 0 || sched.shutdown {
        return;
    }
    let need = sched
        .startable(shared.base_threads)
        .saturating_sub(sched.wakeups);
    let long = if need > 0 { sched.long_calls() } else { 0 };
    for _ in 0..need {
        if sched.idle > sched.wakeups {
            sched.wakeups += 1;
            shared.work.notify_one();
        } else if sched.threads >= shared.max_threads
            || sched.threads.saturating_sub(long) >= shared.soft_max_threads
            || !start_thread(shared, sched)
        {
            break;
        }
    }
}

/// Starts a guest thread, counted in `threads` only if it started.
fn start_thread(shared: &Arc<Shared>, sched: &mut Sched) -> bool {
    let worker = shared.clone();
    let spawned = std::thread::Builder::new()
        .name("refold-guest".into())
        .spawn(move || work(&worker));
    match spawned {
        Ok(_) => {
            sched.threads += 1;
            true
        }
        Err(e) => {
            // Fewer threads is degraded, not broken: the others take the jobs.
            tracing::error!(error = %e, "could not start a guest thread");
            false
        }
    }
}

fn work(shared: &Arc<Shared>) {
    let tid = os::thread_id();
    let mut sched = shared.lock();
    loop {
        if let Some((tenant, job)) = sched.next_job(shared.base_threads) {
            // What else may start now (this thread has taken one job).
            dispatch(shared, &mut sched);
            sched.busy.insert(
                tid,
                Busy {
                    since: Instant::now(),
                    demoted_from: None,
                },
            );
            drop(sched);
            job();
            shared.jobs_run.fetch_add(1, Ordering::Relaxed);
            sched = shared.lock();
            sched.finished(&tenant);
            let demoted_from = sched.busy.remove(&tid).and_then(|b| b.demoted_from);
            if let Some(nice) = demoted_from
                && !os::set_nice(tid, nice)
            {
                // Not allowed to raise it back: leave, and let a fresh thread
                // (started by the watch thread, at normal priority) take over.
                sched.threads -= 1;
                dispatch(shared, &mut sched);
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

/// Lowers the priority of threads whose call runs long, keeps the base number
/// of threads (replacing threads that retired after a long call), and
/// dispatches what a tenant's activity window ending let start.
fn watch_long_calls(shared: &Arc<Shared>) {
    loop {
        std::thread::sleep(WATCH_TICK);
        let mut sched = shared.lock();
        if sched.shutdown {
            return;
        }
        let mut demoted = 0;
        for (tid, busy) in sched.busy.iter_mut() {
            if busy.demoted_from.is_none() && busy.since.elapsed() >= DEMOTE_AFTER {
                let Some(nice) = os::nice(*tid) else { continue };
                if os::set_nice(*tid, (nice + DEMOTE_BY).min(19)) {
                    busy.demoted_from = Some(nice);
                    demoted += 1;
                }
            }
        }
        sched.demoted += demoted;
        while sched.threads < shared.base_threads {
            if !start_thread(shared, &mut sched) {
                break;
            }
        }
        dispatch(shared, &mut sched);
    }
}

/// Thread ids and priorities (Linux); elsewhere long calls keep their priority.
mod os {
    #[cfg(target_os = "linux")]
    pub fn thread_id() -> i32 {
        // SAFETY: gettid has no preconditions and cannot fail.
        unsafe { libc::gettid() }
    }

    /// A thread's nice value, if the OS tells it.
    #[cfg(target_os = "linux")]
    pub fn nice(tid: i32) -> Option<i32> {
        // getpriority returns -1 both as a value and on error: errno tells them apart.
        // SAFETY: errno is thread-local; getpriority only reads its arguments.
        unsafe {
            *libc::__errno_location() = 0;
            let nice = libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t);
            (nice != -1 || *libc::__errno_location() == 0).then_some(nice)
        }
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
    pub fn nice(_tid: i32) -> Option<i32> {
        None
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
    fn many_tenants_with_long_calls_do_not_shut_out_a_newcomer() {
        runtime().block_on(async {
            let pool = Arc::new(GuestPool::new(2));
            let release = Arc::new(AtomicUsize::new(0));
            let mut hogs = Vec::new();
            // Six module names, each keeping one long call running: more than
            // the 2 * base threads that calls which are not long may use.
            for i in 0..6 {
                let (pool, release) = (pool.clone(), release.clone());
                hogs.push(tokio::spawn(async move {
                    pool.run(&format!("hog-{i}"), move || {
                        while release.load(Ordering::Relaxed) == 0 {
                            std::thread::sleep(Duration::from_millis(1));
                        }
                    })
                    .await
                }));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            let light =
                tokio::time::timeout(Duration::from_secs(2), pool.run("light", || ())).await;
            let stats = pool.stats();
            release.store(1, Ordering::Relaxed);
            for h in hogs {
                h.await.unwrap();
            }
            assert!(
                light.is_ok(),
                "a newcomer waited behind six tenants' long calls: {stats:?}"
            );
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

    #[test]
    fn two_busy_tenants_each_get_their_share() {
        runtime().block_on(async {
            let pool = Arc::new(GuestPool::new(2));
            let peaks: Arc<[AtomicUsize; 2]> = Arc::new(Default::default());
            let now: Arc<[AtomicUsize; 2]> = Arc::new(Default::default());
            let mut calls = Vec::new();
            for i in 0..16 {
                let tenant = i % 2;
                let (pool, peaks, now) = (pool.clone(), peaks.clone(), now.clone());
                calls.push(tokio::spawn(async move {
                    pool.run(["a", "b"][tenant], move || {
                        let n = now[tenant].fetch_add(1, Ordering::SeqCst) + 1;
                        peaks[tenant].fetch_max(n, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(10));
                        now[tenant].fetch_sub(1, Ordering::SeqCst);
                    })
                    .await
                }));
            }
            for c in calls {
                c.await.unwrap();
            }
            // Both active: one thread each (the first call of each may start
            // before the other tenant is seen, so allow that one overlap).
            for peak in peaks.iter() {
                assert!(peak.load(Ordering::SeqCst) <= 2);
            }
            assert!(pool.stats().threads <= 4);
        });
    }

    #[test]
    fn a_job_whose_caller_went_away_is_not_run() {
        runtime().block_on(async {
            let pool = Arc::new(GuestPool::new(1));
            let release = Arc::new(AtomicUsize::new(0));
            let ran = Arc::new(AtomicUsize::new(0));
            let hog = {
                let (pool, release) = (pool.clone(), release.clone());
                tokio::spawn(async move {
                    pool.run("t", move || {
                        while release.load(Ordering::Relaxed) == 0 {
                            std::thread::sleep(Duration::from_millis(1));
                        }
                    })
                    .await
                })
            };
            tokio::time::sleep(Duration::from_millis(20)).await;
            let queued = {
                let (pool, ran) = (pool.clone(), ran.clone());
                tokio::spawn(async move {
                    pool.run("t", move || ran.fetch_add(1, Ordering::SeqCst))
                        .await
                })
            };
            tokio::time::sleep(Duration::from_millis(20)).await;
            queued.abort();
            let _ = queued.await;
            release.store(1, Ordering::Relaxed);
            hog.await.unwrap();
            assert_eq!(pool.run("t", || 1).await, 1);
            assert_eq!(ran.load(Ordering::SeqCst), 0, "the abandoned job never ran");
        });
    }
}
