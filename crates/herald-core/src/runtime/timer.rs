//! The timer: sleeps until the earliest due time the store knows of, then wakes the dispatchers.
//!
//! There is no polling tick: a delay fires on its millisecond because the timer sleeps exactly
//! until it. Store wakeups (from this node or any other) move the timer earlier; a slow safety
//! re-check covers a notification that was lost.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::Instant;

use super::{Answer, Inner};
use crate::store::{DeliveryStatus, Wakeup};
use crate::time::Timestamp;

/// How often the timer asks the store even when nothing told it to.
const SAFETY_RECHECK: Duration = Duration::from_secs(30);

pub(crate) async fn run(inner: Arc<Inner>) {
    let taken = inner.wakeups.lock().unwrap_or_else(|p| p.into_inner()).take();
    let Some(mut wakeups) = taken else { return };
    let mut next = ask_store(&inner).await;
    let mut recheck_at = Instant::now() + SAFETY_RECHECK;
    loop {
        let fire_at = next.map_or(recheck_at, |t| inner.clock.instant_at(t).min(recheck_at));
        tokio::select! {
            biased;
            _ = inner.stopped.cancelled() => return,
            w = wakeups.next() => match w {
                Some(Wakeup::Due(t)) => {
                    if t <= inner.clock.now() {
                        inner.notify_due();
                    } else if next.is_none_or(|n| t < n) {
                        next = Some(t);
                    }
                }
                Some(Wakeup::Answered(id)) => answer_from_store(&inner, id).await,
                Some(Wakeup::Lagged) => {
                    inner.notify_due();
                    next = ask_store(&inner).await;
                }
                None => {
                    tracing::warn!("herald: the store's wakeup stream ended; relying on re-checks");
                    wakeups = Box::pin(futures_util::stream::pending());
                }
            },
            _ = inner.timer_refresh.notified() => {
                inner.notify_due();
                next = ask_store(&inner).await;
            }
            _ = tokio::time::sleep_until(fire_at) => {
                inner.notify_due();
                if Instant::now() >= recheck_at {
                    recheck_at = Instant::now() + SAFETY_RECHECK;
                }
                next = ask_store(&inner).await;
            }
        }
    }
}

/// The earliest future due time of any local subscription.
async fn ask_store(inner: &Inner) -> Option<Timestamp> {
    let names: Vec<_> = inner.subs_snapshot().iter().map(|s| s.name.clone()).collect();
    if names.is_empty() {
        return None;
    }
    match inner.store.next_due(&names, inner.clock.now()).await {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(error = %e, "herald: could not ask the store for the next due time");
            Some(inner.clock.now() + Duration::from_secs(1))
        }
    }
}

/// Answers a local requester from the store, for a reply recorded by another node.
async fn answer_from_store(inner: &Inner, id: crate::event::EventId) {
    if !inner.has_waiter(id) {
        return;
    }
    let Ok(Some(record)) = inner.store.get(id).await else {
        return;
    };
    let answer = record
        .deliveries
        .iter()
        .find_map(|d| match d.status {
            DeliveryStatus::Succeeded => Some(Answer::Reply(d.reply.clone().unwrap_or_default())),
            _ => None,
        })
        .or_else(|| {
            record.deliveries.iter().find_map(|d| match d.status {
                DeliveryStatus::Dead => Some(Answer::Failed(d.last_error.clone().unwrap_or_default())),
                _ => None,
            })
        });
    if let Some(answer) = answer {
        inner.answer(id, answer);
    }
}
