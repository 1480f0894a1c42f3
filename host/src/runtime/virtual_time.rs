//! Virtual time: the only clocks and timers a guest can reach.
//!
//! Every guest call gets a [`VirtualClock`] that starts at the call's pinned
//! instant (a command's received-at time; zero for `apply`, `render` and
//! projections) and moves only when the guest itself waits on a timer. Waiting
//! never blocks: `poll` and `pollable.block` first look for pollables that are
//! ready now; if none is, the clock jumps to the earliest timer the guest waits
//! on and those timers fire. A wait that no timer can end (there is no real I/O
//! in the sandbox) fails the call at once instead of hanging a guest thread.
//!
//! So a guest that sleeps sees time pass, deterministically, and a guest thread
//! never sleeps in the host, where the epoch deadline cannot reach it.
//! `Runtime::new` installs these functions over wasmtime-wasi's own (shadowing
//! `wasi:clocks/monotonic-clock` and the blocking parts of `wasi:io/poll`).

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use wasmtime::component::{Linker, Resource, ResourceTable};
use wasmtime::{StoreContextMut, format_err};
use wasmtime_wasi::p2::{DynPollable, Pollable, subscribe};
use wasmtime_wasi::{HostMonotonicClock, HostWallClock};
use wasmtime_wasi_io::bindings::wasi::io::poll::Host as _;

use super::error::SandboxLimit;
use super::sandbox::HostState;

/// Versions of the WASI interfaces wasmtime-wasi links; guests importing any
/// 0.2.x version are served by these (semver-compatible) definitions.
const MONOTONIC_CLOCK: &str = "wasi:clocks/monotonic-clock@0.2.12";
const POLL: &str = "wasi:io/poll@0.2.12";

/// One call's clock: nanoseconds since the unix epoch, pinned at the start of
/// the call and advanced only by the guest's own waits.
#[derive(Debug)]
pub struct VirtualClock {
    now_ns: AtomicU64,
    /// The earliest deadline of a timer found pending by the current poll.
    earliest_wait: Mutex<Option<u64>>,
}

impl VirtualClock {
    pub fn starting_at(pinned: Duration) -> Arc<VirtualClock> {
        Arc::new(VirtualClock {
            now_ns: AtomicU64::new(u64::try_from(pinned.as_nanos()).unwrap_or(u64::MAX)),
            earliest_wait: Mutex::new(None),
        })
    }

    pub fn now_ns(&self) -> u64 {
        self.now_ns.load(Ordering::Relaxed)
    }

    fn advance_to(&self, when_ns: u64) {
        self.now_ns.fetch_max(when_ns, Ordering::Relaxed);
    }

    fn note_wait(&self, deadline_ns: u64) {
        let mut earliest = self.earliest_wait.lock().unwrap_or_else(|e| e.into_inner());
        *earliest = Some(earliest.map_or(deadline_ns, |e| e.min(deadline_ns)));
    }

    fn take_earliest_wait(&self) -> Option<u64> {
        self.earliest_wait
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }
}

/// WASI's wall clock: the virtual clock as a time of day.
pub struct VirtualWallClock(pub Arc<VirtualClock>);

impl HostWallClock for VirtualWallClock {
    fn resolution(&self) -> Duration {
        Duration::from_nanos(1)
    }
    fn now(&self) -> Duration {
        Duration::from_nanos(self.0.now_ns())
    }
}

/// WASI's monotonic clock reads the same virtual instant (nanoseconds).
pub struct VirtualMonotonicClock(pub Arc<VirtualClock>);

impl HostMonotonicClock for VirtualMonotonicClock {
    fn resolution(&self) -> u64 {
        1
    }
    fn now(&self) -> u64 {
        self.0.now_ns()
    }
}

/// A timer pollable: ready once the virtual clock reaches its deadline. While
/// it is not, it tells the clock how long the guest is willing to wait.
struct VirtualTimer {
    clock: Arc<VirtualClock>,
    deadline_ns: u64,
}

#[wasmtime_wasi::async_trait]
impl Pollable for VirtualTimer {
    async fn ready(&mut self) {
        if self.clock.now_ns() < self.deadline_ns {
            self.clock.note_wait(self.deadline_ns);
            std::future::pending::<()>().await;
        }
    }
}

fn timer(state: &mut HostState, deadline_ns: u64) -> wasmtime::Result<Resource<DynPollable>> {
    let clock = state.clock().clone();
    let table = state.table();
    let timer = table.push(VirtualTimer { clock, deadline_ns })?;
    subscribe(table, timer)
}

/// Polls `pollables` in virtual time: the indices of those ready now, or else
/// of those ready once the clock has jumped to the earliest pending timer.
fn poll_virtual(state: &mut HostState, pollables: &[u32]) -> wasmtime::Result<Vec<u32>> {
    if pollables.is_empty() {
        return Err(format_err!("wasi:io/poll.poll was given no pollables"));
    }
    let clock = state.clock().clone();
    for attempt in 0..2 {
        clock.take_earliest_wait();
        if let Some(ready) = poll_once(state.table(), pollables)? {
            return Ok(ready);
        }
        match clock.take_earliest_wait() {
            Some(deadline) if attempt == 0 => clock.advance_to(deadline),
            _ => break,
        }
    }
    Err(SandboxLimit(
        "the guest waits on something that never becomes ready in the sandbox (it has no real time, files, network or input)".into(),
    )
    .into())
}

/// One non-blocking pass of wasmtime-wasi's own `poll`: which pollables are ready now.
fn poll_once(table: &mut ResourceTable, pollables: &[u32]) -> wasmtime::Result<Option<Vec<u32>>> {
    let list = pollables
        .iter()
        .map(|rep| Resource::<DynPollable>::new_borrow(*rep))
        .collect();
    let future = std::pin::pin!(table.poll(list));
    match future.poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(ready) => ready.map(Some),
        Poll::Pending => Ok(None),
    }
}

/// Installs virtual time over wasmtime-wasi's clocks and blocking poll.
pub fn shadow_wasi(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let mut clock = linker.instance(MONOTONIC_CLOCK)?;
    clock.func_wrap("now", |store: StoreContextMut<'_, HostState>, (): ()| {
        Ok((store.data().clock().now_ns(),))
    })?;
    clock.func_wrap("resolution", |_: StoreContextMut<'_, HostState>, (): ()| {
        Ok((1u64,))
    })?;
    clock.func_wrap(
        "subscribe-instant",
        |mut store: StoreContextMut<'_, HostState>, (when,): (u64,)| {
            Ok((timer(store.data_mut(), when)?,))
        },
    )?;
    clock.func_wrap(
        "subscribe-duration",
        |mut store: StoreContextMut<'_, HostState>, (duration,): (u64,)| {
            let state = store.data_mut();
            let deadline = state.clock().now_ns().saturating_add(duration);
            Ok((timer(state, deadline)?,))
        },
    )?;
    let mut poll = linker.instance(POLL)?;
    poll.func_wrap(
        "poll",
        |mut store: StoreContextMut<'_, HostState>, (list,): (Vec<Resource<DynPollable>>,)| {
            let reps: Vec<u32> = list.iter().map(|r| r.rep()).collect();
            Ok((poll_virtual(store.data_mut(), &reps)?,))
        },
    )?;
    poll.func_wrap(
        "[method]pollable.block",
        |mut store: StoreContextMut<'_, HostState>, (pollable,): (Resource<DynPollable>,)| {
            poll_virtual(store.data_mut(), &[pollable.rep()])?;
            Ok(())
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}
