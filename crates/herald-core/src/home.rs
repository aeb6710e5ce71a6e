//! Each thread's number, which places its work: the memory store's shard for a thread and the
//! worker pool's lane for it are this number modulo their counts. A worker thread of a tokio
//! runtime has its index in the runtime. On a runtime with as many threads as the store has
//! shards, what a thread publishes is then stored in its own shard, claimed from there by the
//! workers running on that thread, run there and recorded there, and the other threads neither
//! wait for that shard's lock nor pull its lines into their caches.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

thread_local! {
    /// The number of a thread that is not a runtime's worker (or one a test gave).
    static NUMBER: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// The next number to give a thread that is not a runtime's worker.
static NEXT: AtomicUsize = AtomicUsize::new(0);

/// This thread's number: its index among its runtime's worker threads, or for another thread a
/// number given out in turn as threads first ask.
pub(crate) fn number() -> usize {
    let given = NUMBER.with(Cell::get);
    if given != usize::MAX {
        return given;
    }
    if let Some(i) = tokio::runtime::worker_index() {
        return i;
    }
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    NUMBER.with(|c| c.set(n));
    n
}

/// This thread's place among `n` (its shard, its lane): its number modulo `n`, without asking for
/// the number when there is one place.
pub(crate) fn place(n: usize) -> usize {
    if n <= 1 {
        0
    } else {
        number() % n
    }
}

/// Gives this thread `number` (tests that need work in a given shard or lane).
#[cfg(test)]
pub(crate) fn set_number(number: usize) {
    NUMBER.with(|n| n.set(number));
}
