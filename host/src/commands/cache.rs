//! The aggregate state cache: most recently used states, bounded in entries
//! and in bytes. A state larger than the whole budget is not cached at all.

use std::num::NonZeroUsize;
use std::sync::Mutex;

use lru::LruCache;

use super::AggregateState;
use crate::store::StreamId;

type Key = (StreamId, [u8; 32]);

pub(super) struct StateCache {
    inner: Mutex<Inner>,
}

struct Inner {
    states: LruCache<Key, AggregateState>,
    bytes: usize,
    max_bytes: usize,
}

/// What the cache holds, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub entries: usize,
    pub bytes: usize,
    pub max_bytes: usize,
}

/// Bytes an entry is counted as: its state, its key, and bookkeeping.
fn weight(key: &Key, state: &AggregateState) -> usize {
    state.bytes.len() + key.0.aggregate_type().len() + key.0.aggregate_id().len() + 128
}

impl StateCache {
    pub(super) fn new(max_entries: usize, max_bytes: usize) -> StateCache {
        let entries = NonZeroUsize::new(max_entries.max(1)).expect("at least one entry");
        StateCache {
            inner: Mutex::new(Inner {
                states: LruCache::new(entries),
                bytes: 0,
                max_bytes,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn get(&self, key: &Key) -> Option<AggregateState> {
        self.lock().states.get(key).cloned()
    }

    pub(super) fn put(&self, key: Key, state: AggregateState) {
        let mut inner = self.lock();
        let w = weight(&key, &state);
        if let Some(old) = inner.states.pop(&key) {
            inner.bytes -= weight(&key, &old);
        }
        if w > inner.max_bytes {
            return;
        }
        if let Some((evicted_key, evicted)) = inner.states.push(key, state) {
            inner.bytes -= weight(&evicted_key, &evicted);
        }
        inner.bytes += w;
        while inner.bytes > inner.max_bytes {
            let Some((k, v)) = inner.states.pop_lru() else {
                break;
            };
            inner.bytes -= weight(&k, &v);
        }
    }

    pub(super) fn remove(&self, key: &Key) {
        let mut inner = self.lock();
        if let Some(old) = inner.states.pop(key) {
            inner.bytes -= weight(key, &old);
        }
    }

    pub(super) fn stats(&self) -> CacheStats {
        let inner = self.lock();
        CacheStats {
            entries: inner.states.len(),
            bytes: inner.bytes,
            max_bytes: inner.max_bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn state(bytes: usize) -> AggregateState {
        AggregateState {
            version: 1,
            bytes: Arc::new(vec![0; bytes]),
        }
    }

    fn key(id: &str) -> Key {
        (StreamId::new("t", id).unwrap(), [0; 32])
    }

    #[test]
    fn stays_within_its_byte_budget_evicting_the_least_recent() {
        let cache = StateCache::new(1000, 10_000);
        for i in 0..10 {
            cache.put(key(&i.to_string()), state(3000));
        }
        let stats = cache.stats();
        assert!(stats.bytes <= 10_000, "{stats:?}");
        assert_eq!(stats.entries, 3);
        assert!(cache.get(&key("9")).is_some() && cache.get(&key("0")).is_none());
    }

    #[test]
    fn a_state_bigger_than_the_budget_is_not_kept_and_replaces_nothing_stale() {
        let cache = StateCache::new(1000, 10_000);
        cache.put(key("a"), state(100));
        cache.put(key("a"), state(20_000));
        assert!(
            cache.get(&key("a")).is_none(),
            "no stale state stays behind"
        );
        assert_eq!(
            cache.stats(),
            CacheStats {
                entries: 0,
                bytes: 0,
                max_bytes: 10_000
            }
        );
    }

    #[test]
    fn counts_replacements_and_removals_exactly() {
        let cache = StateCache::new(2, 1 << 20);
        cache.put(key("a"), state(100));
        cache.put(key("a"), state(200));
        cache.put(key("b"), state(300));
        cache.put(key("c"), state(400)); // evicts a by entry count
        cache.remove(&key("b"));
        let expected = weight(&key("c"), &state(400));
        assert_eq!(cache.stats().bytes, expected);
        assert_eq!(cache.stats().entries, 1);
    }
}
