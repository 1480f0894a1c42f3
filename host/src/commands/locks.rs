//! One in-process lock per aggregate: commands for one aggregate run one at a
//! time (load, decide, append), while different aggregates run in parallel.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::OwnedMutexGuard;

use crate::store::StreamId;

#[derive(Default)]
pub struct AggregateLocks {
    locks: Mutex<HashMap<StreamId, Arc<tokio::sync::Mutex<()>>>>,
}

/// Held for one command's critical section. On drop, the lock's map entry is
/// removed if nobody else is waiting for it, so the map holds only busy aggregates.
pub struct AggregateGuard<'a> {
    locks: &'a AggregateLocks,
    stream: StreamId,
    lock: Arc<tokio::sync::Mutex<()>>,
    guard: Option<OwnedMutexGuard<()>>,
}

impl AggregateLocks {
    pub async fn lock(&self, stream: &StreamId) -> AggregateGuard<'_> {
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
            locks.entry(stream.clone()).or_default().clone()
        };
        let guard = lock.clone().lock_owned().await;
        AggregateGuard {
            locks: self,
            stream: stream.clone(),
            lock,
            guard: Some(guard),
        }
    }
}

impl Drop for AggregateGuard<'_> {
    fn drop(&mut self) {
        // Release first: the guard holds a reference of its own to the lock.
        self.guard.take();
        let mut locks = self.locks.locks.lock().unwrap_or_else(|e| e.into_inner());
        // Now two references mean the map's and ours: nobody holds or waits for the
        // lock, and nobody can take a new reference without the map's mutex, which we hold.
        if Arc::strong_count(&self.lock) == 2 {
            locks.remove(&self.stream);
        }
    }
}

impl AggregateLocks {
    /// Aggregates with a command running or waiting (for tests and metrics).
    pub fn busy(&self) -> usize {
        self.locks.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}
