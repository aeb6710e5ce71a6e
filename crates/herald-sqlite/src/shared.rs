//! What the writer publishes after each commit for the readers and the store's callers: the
//! backlog, the subscriptions, and the wakeup channel.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{PoisonError, RwLock};

use herald_core::{Pattern, SubscriptionName, Wakeup};
use rusqlite::Connection;
use tokio::sync::broadcast;

use crate::counts::Counts;

/// A declared subscription as the file holds it.
#[derive(Clone, Debug)]
pub(crate) struct SubscriptionRow {
    pub(crate) id: i64,
    pub(crate) name: SubscriptionName,
    pub(crate) pattern: Pattern,
    /// Removed: it routes nothing and cannot be claimed from; its name stays for the history.
    pub(crate) removed: bool,
}

/// Reads every declared subscription.
pub(crate) fn load_subscriptions(conn: &Connection) -> rusqlite::Result<Vec<SubscriptionRow>> {
    let mut stmt = conn.prepare("SELECT id, name, pattern, removed FROM subscriptions ORDER BY id")?;
    let rows = stmt.query_map([], |r| {
        let name: String = r.get(1)?;
        let pattern: String = r.get(2)?;
        Ok(SubscriptionRow {
            id: r.get(0)?,
            name: SubscriptionName::new(&name).map_err(|e| crate::codec::bad_column(1, e.to_string()))?,
            pattern: crate::writer::pattern_from(&pattern, 2)?,
            removed: r.get(3)?,
        })
    })?;
    rows.collect()
}

#[derive(Debug)]
pub(crate) struct Shared {
    backlog: AtomicU64,
    subs: RwLock<Vec<SubscriptionRow>>,
    wake: broadcast::Sender<Wakeup>,
}

impl Shared {
    pub(crate) fn new(counts: Counts, subs: Vec<SubscriptionRow>) -> Self {
        let (wake, _) = broadcast::channel(1024);
        Shared {
            backlog: AtomicU64::new(counts.open()),
            subs: RwLock::new(subs),
            wake,
        }
    }

    /// Publishes the counts of the last commit.
    pub(crate) fn set_counts(&self, counts: Counts) {
        self.backlog.store(counts.open(), Ordering::Relaxed);
    }

    pub(crate) fn backlog(&self) -> u64 {
        self.backlog.load(Ordering::Relaxed)
    }

    pub(crate) fn subscriptions(&self) -> Vec<SubscriptionRow> {
        self.subs.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    pub(crate) fn set_subscriptions(&self, subs: Vec<SubscriptionRow>) {
        *self.subs.write().unwrap_or_else(PoisonError::into_inner) = subs;
    }

    /// The id of the subscription named `name`, if declared and not removed.
    pub(crate) fn sub_id(&self, name: &SubscriptionName) -> Option<i64> {
        let subs = self.subs.read().unwrap_or_else(PoisonError::into_inner);
        subs.iter().find(|s| &s.name == name && !s.removed).map(|s| s.id)
    }

    /// The id of the subscription named `name`, if it was ever declared (removed or not): its
    /// deliveries' history stays.
    pub(crate) fn history_sub_id(&self, name: &SubscriptionName) -> Option<i64> {
        let subs = self.subs.read().unwrap_or_else(PoisonError::into_inner);
        subs.iter().find(|s| &s.name == name).map(|s| s.id)
    }

    /// The name of the subscription with this id, if declared.
    pub(crate) fn sub_name(&self, id: i64) -> Option<SubscriptionName> {
        let subs = self.subs.read().unwrap_or_else(PoisonError::into_inner);
        subs.iter().find(|s| s.id == id).map(|s| s.name.clone())
    }

    pub(crate) fn sub_ids(&self) -> Vec<i64> {
        let subs = self.subs.read().unwrap_or_else(PoisonError::into_inner);
        subs.iter().map(|s| s.id).collect()
    }

    pub(crate) fn wake(&self, w: Wakeup) {
        // No listener is not an error: nobody needs waking.
        let _ = self.wake.send(w);
    }

    pub(crate) fn listen(&self) -> broadcast::Receiver<Wakeup> {
        self.wake.subscribe()
    }
}
