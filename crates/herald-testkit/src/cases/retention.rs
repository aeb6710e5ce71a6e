//! Retention: `purge` deletes finished events, and only those.

use std::time::Duration;

use herald_core::{CancelAs, Cancelled, Event, PageRequest, Published, Store, StoreError, Verdict};

use crate::fixture::{advance, claim_one, declare, event, filter, publish, record, scheduled, settle, succeeded};

/// `purge(before)` deletes the events that finished (every delivery succeeded, dead, cancelled or
/// expired, or none routed) strictly before `before`, returns how many, and keeps open events and
/// those that finished later; stats follow.
pub async fn purge_removes_only_events_finished_before<S: Store + ?Sized>(store: &S) -> Result<(), StoreError> {
    let sub = declare(store, "work", "job.*").await?;
    let t0 = store.clock().now();
    let ok = publish(store, event(store, "job.ok")).await?;
    let c = claim_one(store, &sub, "job.ok").await?;
    settle(store, c.lease, succeeded()).await?;
    let unrouted = publish(store, event(store, "nobody.listens")).await?;
    let cancelled = publish(store, scheduled(store, "job.cancelled", Duration::from_secs(600))).await?;
    assert_eq!(store.cancel(cancelled, CancelAs::Cancelled).await?, Cancelled::Ended(1));
    advance(Duration::from_millis(1)).await;
    let open = publish(store, event(store, "job.open")).await?;
    advance(Duration::from_secs(10)).await;
    let late = publish(store, event(store, "job.late")).await?;
    let c = claim_one(store, &sub, "job.open, due first").await?;
    assert_eq!(c.event.id(), open);
    settle(
        store,
        c.lease,
        Verdict::Retry {
            at: t0 + Duration::from_secs(600),
            error: "later".into(),
        },
    )
    .await?;
    let c = claim_one(store, &sub, "job.late").await?;
    settle(store, c.lease, Verdict::Dead { reason: "bad".into() }).await?;
    let late_finished = store.clock().now();

    assert_eq!(store.purge(t0).await?, 0, "nothing finished before t0");
    assert_eq!(
        store.purge(t0 + Duration::from_secs(1)).await?,
        3,
        "ok, unrouted and cancelled finished at t0"
    );
    for gone in [ok, unrouted, cancelled] {
        assert_eq!(store.get(gone).await?, None, "a purged event is gone");
    }
    record(store, open).await?;
    record(store, late).await?;
    assert_eq!(
        store.purge(late_finished).await?,
        0,
        "job.late finished at `before`, not before it"
    );
    assert_eq!(
        store.purge(store.clock().now() + Duration::from_secs(3600)).await?,
        1,
        "only job.late is finished"
    );
    assert_eq!(store.get(late).await?, None);
    record(store, open).await?;

    let stats = store.stats().await?;
    assert_eq!((stats.events, stats.unrouted), (1, 0), "only the open event is left");
    assert_eq!(
        (stats.deliveries.retrying, stats.deliveries.open()),
        (1, 1),
        "its delivery is the only one counted"
    );
    assert_eq!(
        stats.deliveries.succeeded + stats.deliveries.dead + stats.deliveries.cancelled,
        0,
        "purged deliveries are not counted"
    );
    Ok(())
}

/// Once the event holding a key is purged, the key is free: a new event with it is stored.
pub async fn purge_frees_idempotency_keys<S: Store + ?Sized>(store: &S) -> Result<(), StoreError> {
    let sub = declare(store, "work", "job.*").await?;
    let keyed = || {
        let mut e = event(store, "job.run");
        e.key = Some("job-1".into());
        Event::from_parts(e)
    };
    let first = keyed();
    store.publish(vec![first.clone()]).await?;
    let c = claim_one(store, &sub, "the first job").await?;
    settle(store, c.lease, succeeded()).await?;
    advance(Duration::from_secs(1)).await;
    assert_eq!(
        store.publish(vec![keyed()]).await?,
        vec![Published::Duplicate { id: first.id() }],
        "held until purged"
    );

    assert_eq!(store.purge(store.clock().now()).await?, 1);
    let second = keyed();
    let out = store.publish(vec![second.clone()]).await?;
    assert_eq!(
        out,
        vec![Published::Stored {
            id: second.id(),
            deliveries: 1
        }],
        "a purged event's key is free"
    );
    let by_key = filter(|f| f.key = Some("job-1".into()));
    let page = store.query(&by_key, PageRequest::first(10)).await?;
    let ids: Vec<_> = page.items.iter().map(|r| r.event.id()).collect();
    assert_eq!(ids, vec![second.id()], "the key now names the new event");
    Ok(())
}
