//! `stats`: counts of events and of deliveries by status.

use std::time::Duration;

use herald_core::{CancelAs, Cancelled, DeliveryStatus, StatusCounts, Store, StoreError, Verdict};

use crate::fixture::{
    assert_nothing_claimable, claim_one, declare, event, name, publish, scheduled, settle, succeeded,
};

/// `stats` counts stored events, unrouted ones, and deliveries in each status; `backlog`, when the
/// store reports one, is the number of open deliveries.
pub async fn stats_count_by_status<S: Store + ?Sized>(store: &S) -> Result<(), StoreError> {
    let empty = store.stats().await?;
    assert_eq!(
        (empty.events, empty.unrouted, empty.deliveries),
        (0, 0, StatusCounts::default()),
        "a new store"
    );

    // One subscription per status, named after it and routing only its own topic.
    for status in DeliveryStatus::ALL {
        let s = status.as_str();
        declare(store, s, &format!("stats.{s}")).await?;
    }
    let sub = |status: DeliveryStatus| name(status.as_str());
    let topic = |status: DeliveryStatus| format!("stats.{}", status.as_str());
    let later = Duration::from_secs(600);

    publish(store, scheduled(store, &topic(DeliveryStatus::Scheduled), later)).await?;
    publish(store, event(store, &topic(DeliveryStatus::Pending))).await?;
    publish(store, event(store, &topic(DeliveryStatus::Active))).await?;
    claim_one(store, &sub(DeliveryStatus::Active), "the active one").await?;
    publish(store, event(store, &topic(DeliveryStatus::Retrying))).await?;
    let c = claim_one(store, &sub(DeliveryStatus::Retrying), "the retrying one").await?;
    let at = store.clock().now() + later;
    settle(
        store,
        c.lease,
        Verdict::Retry {
            at,
            error: "later".into(),
        },
    )
    .await?;
    publish(store, event(store, &topic(DeliveryStatus::Succeeded))).await?;
    let c = claim_one(store, &sub(DeliveryStatus::Succeeded), "the succeeded one").await?;
    settle(store, c.lease, succeeded()).await?;
    publish(store, event(store, &topic(DeliveryStatus::Dead))).await?;
    let c = claim_one(store, &sub(DeliveryStatus::Dead), "the dead one").await?;
    settle(store, c.lease, Verdict::Dead { reason: "bad".into() }).await?;
    let id = publish(store, scheduled(store, &topic(DeliveryStatus::Cancelled), later)).await?;
    assert_eq!(store.cancel(id, CancelAs::Cancelled).await?, Cancelled::Ended(1));
    let mut expired = event(store, &topic(DeliveryStatus::Expired));
    expired.expires_at = Some(expired.published_at);
    publish(store, expired).await?;
    assert_nothing_claimable(
        store,
        &sub(DeliveryStatus::Expired),
        "the event expired as it was published",
    )
    .await?;
    publish(store, event(store, "nobody.listens")).await?;

    let stats = store.stats().await?;
    let mut expected = StatusCounts::default();
    for status in DeliveryStatus::ALL {
        *expected.slot_mut(*status) = 1;
    }
    assert_eq!(stats.deliveries, expected, "one delivery in each status");
    assert_eq!(stats.events, 9, "eight routed events and one unrouted");
    assert_eq!(stats.unrouted, 1);
    if let Some(backlog) = store.backlog() {
        assert_eq!(backlog, stats.deliveries.open(), "the backlog is the open deliveries");
        assert_eq!(backlog, 4, "scheduled, pending, active and retrying are open");
    }
    Ok(())
}
