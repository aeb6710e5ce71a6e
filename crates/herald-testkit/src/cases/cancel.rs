//! Cancellation: ending the deliveries of an event that have not started.

use std::time::Duration;

use herald_core::{CancelAs, Cancelled, DeliveryStatus, EventId, EventStatus, Store, StoreError, Verdict};

use crate::fixture::{
    advance, assert_nothing_claimable, claim_one, declare, delivery, event, publish, record, scheduled, settle,
    succeeded,
};

/// `cancel` ends the scheduled, pending and retrying deliveries of an event as cancelled and counts
/// them; an active one runs on; cancelled deliveries are never handed out or reported by
/// `next_due`; the event is cancelled once all are finished.
pub async fn cancel_ends_deliveries_that_have_not_started<S: Store + ?Sized>(store: &S) -> Result<(), StoreError> {
    let active = declare(store, "active", "order.*").await?;
    let retrying = declare(store, "retrying", "order.*").await?;
    let pending = declare(store, "pending", "order.*").await?;
    let id = publish(store, event(store, "order.paid")).await?;
    let running = claim_one(store, &active, "the order for 'active'").await?;
    let failed = claim_one(store, &retrying, "the order for 'retrying'").await?;
    let retry_at = store.clock().now() + Duration::from_secs(5);
    settle(
        store,
        failed.lease,
        Verdict::Retry {
            at: retry_at,
            error: "timeout".into(),
        },
    )
    .await?;

    assert_eq!(
        store.cancel(id, CancelAs::Cancelled).await?,
        Cancelled::Ended(2),
        "retrying and pending end"
    );
    let rec = record(store, id).await?;
    assert_eq!(
        delivery(&rec, &active).status,
        DeliveryStatus::Active,
        "an active delivery is not cancelled"
    );
    assert_eq!(delivery(&rec, &retrying).status, DeliveryStatus::Cancelled);
    assert_eq!(delivery(&rec, &pending).status, DeliveryStatus::Cancelled);
    assert_eq!(
        rec.status,
        EventStatus::Active,
        "the event runs on while a delivery is active"
    );
    assert_nothing_claimable(store, &pending, "its delivery was cancelled").await?;
    let subs = [retrying.clone(), pending.clone()];
    assert_eq!(
        store.next_due(&subs, store.clock().now()).await?,
        None,
        "cancelled deliveries are never due"
    );
    advance(Duration::from_secs(5)).await;
    assert_nothing_claimable(store, &retrying, "its retry was cancelled").await?;

    settle(store, running.lease, succeeded()).await?;
    let rec = record(store, id).await?;
    assert_eq!(
        rec.status,
        EventStatus::Cancelled,
        "finished with a cancelled delivery and none dead: cancelled"
    );
    let stats = store.stats().await?.deliveries;
    assert_eq!(
        (stats.cancelled, stats.succeeded, stats.open()),
        (2, 1, 0),
        "stats follow the cancel"
    );

    let later = publish(store, scheduled(store, "order.paid", Duration::from_secs(60))).await?;
    assert_eq!(
        store.cancel(later, CancelAs::Cancelled).await?,
        Cancelled::Ended(3),
        "scheduled deliveries end"
    );
    let rec = record(store, later).await?;
    assert!(
        rec.deliveries.iter().all(|d| d.status == DeliveryStatus::Cancelled),
        "{:?}",
        rec.deliveries
    );
    assert_eq!(rec.status, EventStatus::Cancelled);
    advance(Duration::from_secs(60)).await;
    for sub in [&active, &retrying, &pending] {
        assert_nothing_claimable(store, sub, "the scheduled event was cancelled").await?;
    }
    Ok(())
}

/// `cancel` of an event whose deliveries have all started or finished, or that has none, ends
/// nothing and answers [`Cancelled::TooLate`].
pub async fn cancel_is_too_late_once_every_delivery_started<S: Store + ?Sized>(store: &S) -> Result<(), StoreError> {
    let sub = declare(store, "work", "job.*").await?;
    let id = publish(store, event(store, "job.run")).await?;
    let running = claim_one(store, &sub, "the job").await?;
    assert_eq!(
        store.cancel(id, CancelAs::Cancelled).await?,
        Cancelled::TooLate,
        "its only delivery is active"
    );
    let rec = record(store, id).await?;
    assert_eq!(
        delivery(&rec, &sub).status,
        DeliveryStatus::Active,
        "a too-late cancel changes nothing"
    );
    settle(store, running.lease, succeeded()).await?;
    assert_eq!(
        store.cancel(id, CancelAs::Cancelled).await?,
        Cancelled::TooLate,
        "its only delivery succeeded"
    );
    assert_eq!(
        record(store, id).await?.status,
        EventStatus::Succeeded,
        "a too-late cancel changes nothing"
    );

    let unrouted = publish(store, event(store, "nobody.listens")).await?;
    assert_eq!(
        store.cancel(unrouted, CancelAs::Expired).await?,
        Cancelled::TooLate,
        "it has no delivery"
    );
    assert_eq!(record(store, unrouted).await?.status, EventStatus::Unrouted);
    Ok(())
}

/// `cancel` of an event that does not exist answers [`Cancelled::NotFound`].
pub async fn cancel_of_an_unknown_event_is_not_found<S: Store + ?Sized>(store: &S) -> Result<(), StoreError> {
    declare(store, "work", "job.*").await?;
    publish(store, event(store, "job.run")).await?;
    for end in [CancelAs::Cancelled, CancelAs::Expired] {
        assert_eq!(
            store.cancel(EventId::new(), end).await?,
            Cancelled::NotFound,
            "cancel({end:?}) of an unknown id"
        );
    }
    Ok(())
}

/// `cancel` with [`CancelAs::Expired`] ends the deliveries as expired, and the event is expired.
pub async fn cancel_as_expired_ends_deliveries_as_expired<S: Store + ?Sized>(store: &S) -> Result<(), StoreError> {
    let a = declare(store, "a", "order.*").await?;
    let b = declare(store, "b", "order.>").await?;
    let id = publish(store, event(store, "order.paid")).await?;
    assert_eq!(store.cancel(id, CancelAs::Expired).await?, Cancelled::Ended(2));
    let rec = record(store, id).await?;
    assert_eq!(delivery(&rec, &a).status, DeliveryStatus::Expired);
    assert_eq!(delivery(&rec, &b).status, DeliveryStatus::Expired);
    assert_eq!(
        rec.status,
        EventStatus::Expired,
        "every delivery expired: the event is expired"
    );
    assert_eq!(
        store.stats().await?.deliveries.expired,
        2,
        "stats count the expired deliveries"
    );
    assert_nothing_claimable(store, &a, "its delivery expired").await?;
    Ok(())
}
