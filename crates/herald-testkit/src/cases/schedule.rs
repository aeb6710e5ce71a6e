//! Scheduled deliveries: nothing is handed out before its due time, and `next_due` says when.

use std::time::Duration;

use herald_core::{DeliveryStatus, EventStatus, Store, StoreError};

use crate::fixture::{advance, assert_nothing_claimable, claim_one, declare, delivery, publish, record, scheduled};

/// A delivery due later is scheduled, not claimable until its due time (to the millisecond), then
/// pending and claimable; `next_due` reports its exact due time meanwhile.
pub async fn scheduled_delivery_waits_for_its_due_time<S: Store + ?Sized>(store: &S) -> Result<(), StoreError> {
    let sub = declare(store, "reminders", "remind.*").await?;
    let t0 = store.clock().now();
    let due = t0 + Duration::from_secs(5);
    let id = publish(store, scheduled(store, "remind.pay", Duration::from_secs(5))).await?;

    let rec = record(store, id).await?;
    assert_eq!(rec.status, EventStatus::Scheduled, "an event due later is scheduled");
    assert_eq!(
        delivery(&rec, &sub).status,
        DeliveryStatus::Scheduled,
        "a delivery due later is scheduled"
    );
    assert_eq!(delivery(&rec, &sub).due, due, "the delivery is due at deliver_at");
    assert_eq!(
        store.stats().await?.deliveries.scheduled,
        1,
        "stats count it as scheduled"
    );
    assert_nothing_claimable(store, &sub, "the delivery is due in 5s").await?;
    let next = store.next_due(std::slice::from_ref(&sub), store.clock().now()).await?;
    assert_eq!(next, Some(due), "next_due reports the exact due time");

    advance(Duration::from_millis(4_999)).await;
    assert_nothing_claimable(store, &sub, "the delivery is due in 1ms").await?;
    let next = store.next_due(std::slice::from_ref(&sub), store.clock().now()).await?;
    assert_eq!(next, Some(due), "next_due still reports the due time");

    advance(Duration::from_millis(1)).await;
    let rec = record(store, id).await?;
    assert_eq!(
        delivery(&rec, &sub).status,
        DeliveryStatus::Pending,
        "at its due time a delivery is pending"
    );
    assert_eq!(rec.status, EventStatus::Pending, "at its due time the event is pending");
    let stats = store.stats().await?.deliveries;
    assert_eq!(
        (stats.scheduled, stats.pending),
        (0, 1),
        "stats agree with get once the delivery is due"
    );
    let next = store.next_due(std::slice::from_ref(&sub), store.clock().now()).await?;
    assert_eq!(next, None, "next_due reports only times strictly after `after`");
    let c = claim_one(store, &sub, "the delivery at its due time").await?;
    assert_eq!(c.event.id(), id);
    assert_eq!(c.due, due, "the claim reports the due time");
    assert_eq!(c.attempt, 1);
    Ok(())
}

/// `next_due` is the earliest due time strictly after `after` over the given subscriptions, skips
/// what is not after it, ignores other subscriptions, and asking about a time ahead of the clock
/// makes nothing claimable early.
pub async fn next_due_reports_the_earliest_time_after<S: Store + ?Sized>(store: &S) -> Result<(), StoreError> {
    let a = declare(store, "a", "a.*").await?;
    let b = declare(store, "b", "b.*").await?;
    let idle = declare(store, "idle", "idle.*").await?;
    let t0 = store.clock().now();
    let at = |s: u64| t0 + Duration::from_secs(s);
    let a5 = publish(store, scheduled(store, "a.x", Duration::from_secs(5))).await?;
    publish(store, scheduled(store, "a.x", Duration::from_secs(10))).await?;
    publish(store, scheduled(store, "b.x", Duration::from_secs(7))).await?;

    let cases = [
        (vec![a.clone()], t0, Some(at(5))),
        (vec![b.clone()], t0, Some(at(7))),
        (vec![a.clone(), b.clone()], t0, Some(at(5))),
        (vec![b.clone(), idle.clone()], t0, Some(at(7))),
        (vec![idle.clone()], t0, None),
        (vec![], t0, None),
        (vec![a.clone()], at(5), Some(at(10))),
        (vec![a.clone(), b.clone()], at(5), Some(at(7))),
        (vec![a.clone(), b.clone()], at(7), Some(at(10))),
        (vec![a.clone(), b.clone()], at(10), None),
    ];
    for (subs, after, expected) in cases {
        let got = store.next_due(&subs, after).await?;
        let names: Vec<_> = subs.iter().map(|s| s.as_str()).collect();
        assert_eq!(got, expected, "next_due({names:?}, t0+{}ms)", after.millis_since(t0));
    }

    assert_nothing_claimable(
        store,
        &a,
        "asking next_due about later times must not make deliveries due",
    )
    .await?;
    let rec = record(store, a5).await?;
    assert_eq!(
        delivery(&rec, &a).status,
        DeliveryStatus::Scheduled,
        "a5 is still scheduled"
    );

    advance(Duration::from_secs(5)).await;
    let c = claim_one(store, &a, "a5 at its due time").await?;
    assert_eq!(c.event.id(), a5);
    let next = store.next_due(std::slice::from_ref(&a), store.clock().now()).await?;
    assert_eq!(
        next,
        Some(at(10)),
        "after a5 is claimed, a's next time is a10 (before a5's lease runs out)"
    );
    Ok(())
}
