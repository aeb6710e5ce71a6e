//! A subscription's dispatcher: takes free capacity, claims that many due deliveries, starts an
//! attempt for each, and sleeps until woken when nothing is due.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::OwnedSemaphorePermit;

use super::subscribe::LocalSub;
use super::{worker, Inner};

/// The most deliveries one claim asks for.
const MAX_BATCH: usize = 64;

/// A slot in the subscription's limit and one in the global worker pool, held while a handler
/// runs.
#[derive(Debug)]
pub(crate) struct Permit {
    _sub: OwnedSemaphorePermit,
    _global: OwnedSemaphorePermit,
}

async fn acquire(inner: &Inner, sub: &LocalSub) -> Option<Permit> {
    let own = sub.limit.clone().acquire_owned().await.ok()?;
    let global = inner.workers.clone().acquire_owned().await.ok()?;
    Some(Permit {
        _sub: own,
        _global: global,
    })
}

fn try_acquire(inner: &Inner, sub: &LocalSub) -> Option<Permit> {
    let own = sub.limit.clone().try_acquire_owned().ok()?;
    let global = inner.workers.clone().try_acquire_owned().ok()?;
    Some(Permit {
        _sub: own,
        _global: global,
    })
}

pub(crate) async fn run(inner: Arc<Inner>, sub: Arc<LocalSub>) {
    let mut failures: u32 = 0;
    loop {
        // Register for wakeups before looking at the store, so a publish that lands while we
        // claim is not missed.
        let woken = sub.wake.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();

        if sub.paused.load(Ordering::SeqCst) {
            tokio::select! {
                _ = &mut woken => continue,
                _ = sub.stop.cancelled() => return,
            }
        }
        let first = tokio::select! {
            biased;
            _ = sub.stop.cancelled() => return,
            p = acquire(&inner, &sub) => match p {
                Some(p) => p,
                None => return,
            },
        };
        let mut permits = vec![first];
        while permits.len() < MAX_BATCH {
            match try_acquire(&inner, &sub) {
                Some(p) => permits.push(p),
                None => break,
            }
        }
        let wanted = permits.len();
        let claimed = match inner.store.claim(&sub.name, wanted, sub.lease).await {
            Ok(c) => {
                failures = 0;
                c
            }
            Err(e) => {
                drop(permits);
                failures = failures.saturating_add(1);
                let wait = Duration::from_millis(50u64.saturating_mul(1 << failures.min(7)));
                tracing::warn!(subscription = %sub.name, error = %e, ?wait, "herald: claim failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => continue,
                    _ = sub.stop.cancelled() => return,
                }
            }
        };
        let exhausted = claimed.len() < wanted;
        for delivery in claimed {
            let Some(permit) = permits.pop() else { break };
            inner.in_flight.start();
            let job = worker::Job {
                sub: sub.clone(),
                claimed: delivery,
                permit,
            };
            if let Err(lost) = inner.work.try_send(job) {
                // Only after shutdown closed the queue: the lease runs out and the delivery
                // comes back (at-least-once).
                drop(lost);
                inner.in_flight.finish();
            }
        }
        drop(permits);
        if exhausted {
            tokio::select! {
                _ = &mut woken => {}
                _ = sub.stop.cancelled() => return,
            }
        }
    }
}
