//! Expiry: an event past its `expires_at` is never handed out.

use std::time::Duration;

use herald_core::{DeliveryStatus, EventStatus, Priority, Store, StoreError};

use crate::fixture::{
    advance, assert_nothing_claimable, claim_one, declare, delivery, event, publish, record, scheduled,
};

/// From its `expires_at` on, an event's deliveries are never claimed: a claim skips them (without
/// counting them against `max`) and ends them as expired, also when the event expired before it
/// was even due.
pub async fn expired_event_is_never_claimed<S: Store + ?Sized>(store: &S) -> Result<(), StoreError> {
    let sub = declare(store, "work", "job.*").await?;
    let t0 = store.clock().now();
    let expires_at = t0 + Duration::from_secs(1);
    let mut urgent = event(store, "job.urgent");
    urgent.priority = Priority::CRITICAL;
    urgent.expires_at = Some(expires_at);
    let urgent = publish(store, urgent).await?;
    let mut too_late = scheduled(store, "job.later", Duration::from_secs(2));
    too_late.expires_at = Some(expires_at);
    let too_late = publish(store, too_late).await?;
    advance(Duration::from_millis(1)).await;
    let plain = publish(store, event(store, "job.plain")).await?;

    advance(Duration::from_millis(999)).await;
    let c = claim_one(store, &sub, "the event that does not expire").await?;
    assert_eq!(
        c.event.id(),
        plain,
        "the critical event expired at its expires_at and is skipped"
    );
    let rec = record(store, urgent).await?;
    assert_eq!(
        delivery(&rec, &sub).status,
        DeliveryStatus::Expired,
        "a skipped expired delivery ends expired"
    );
    assert_eq!(
        delivery(&rec, &sub).attempt_count,
        0,
        "an expired delivery was never attempted"
    );
    assert_eq!(
        rec.status,
        EventStatus::Expired,
        "every delivery expired: the event is expired"
    );

    advance(Duration::from_secs(1)).await;
    assert_nothing_claimable(store, &sub, "job.later expired before it was due").await?;
    let rec = record(store, too_late).await?;
    assert_eq!(
        delivery(&rec, &sub).status,
        DeliveryStatus::Expired,
        "it ends expired once due"
    );
    assert_eq!(rec.status, EventStatus::Expired);
    let stats = store.stats().await?.deliveries;
    assert_eq!(
        (stats.expired, stats.active),
        (2, 1),
        "stats count both expired deliveries"
    );
    Ok(())
}
