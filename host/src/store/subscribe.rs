//! Catch-up subscriptions.
//!
//! A subscription is a cursor that pulls pages from the log on disk, and when
//! it has read everything up to the durable head, waits for the head to move.
//! There is no separate "live" channel to hand over to, so there is no hand-over
//! gap or duplicate by construction: the cursor advances exactly over the
//! positions it has read. Memory is bounded by one page, whatever the
//! subscriber's speed; a slow subscriber only lags.

use std::collections::VecDeque;

use futures::Stream;
use tokio::sync::watch;

use super::error::StoreError;
use super::types::{EventFilter, Position, RecordedEvent};
use super::{EventStore, Store};

/// Events read from disk per page.
const PAGE: usize = 512;

struct Cursor<S> {
    store: S,
    filter: EventFilter,
    next: Position,
    buffer: VecDeque<RecordedEvent>,
    head: watch::Receiver<Position>,
    failed: bool,
}

impl Store {
    /// Every event at or after `from` that `filter` admits, exactly once, in
    /// position order: first those already durable, then each new one as it
    /// becomes durable. Ends only on a read error (yielded) or when the store closes.
    pub fn subscribe(
        &self,
        from: Position,
        filter: EventFilter,
    ) -> impl Stream<Item = Result<RecordedEvent, StoreError>> + Send + 'static + use<> {
        follow(self.clone(), from, filter)
    }
}

/// The subscription of any backend: a cursor over `read_all` pages that waits
/// on the backend's head when it has caught up.
pub(crate) fn follow<S: EventStore>(
    store: S,
    from: Position,
    filter: EventFilter,
) -> impl Stream<Item = Result<RecordedEvent, StoreError>> + Send + 'static {
    let cursor = Cursor {
        head: store.watch_head(),
        store,
        filter,
        next: from.max(1),
        buffer: VecDeque::new(),
        failed: false,
    };
    futures::stream::unfold(cursor, |mut cursor| async move {
        loop {
            if let Some(event) = cursor.buffer.pop_front() {
                return Some((Ok(event), cursor));
            }
            if cursor.failed {
                return None;
            }
            // Mark the current head as seen *before* reading, so an append that
            // lands after this line wakes `changed()` below.
            let head = *cursor.head.borrow_and_update();
            if cursor.next <= head {
                match cursor
                    .store
                    .read_all(cursor.next, PAGE, &cursor.filter)
                    .await
                {
                    Ok(page) => {
                        cursor.next = page.next_position;
                        cursor.buffer.extend(page.events);
                        continue;
                    }
                    Err(err) => {
                        cursor.failed = true;
                        return Some((Err(err), cursor));
                    }
                }
            }
            if cursor.head.changed().await.is_err() {
                return None; // the writer is gone: the store closed
            }
        }
    })
}
