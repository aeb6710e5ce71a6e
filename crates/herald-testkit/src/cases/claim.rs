//! Claims: which due deliveries a subscription hands out, in what order, and how many.

use std::collections::HashSet;
use std::time::Duration;

use futures_util::future::join_all;
use herald_core::{DeliveryStatus, EventParts, EventStatus, Priority, Store, StoreError};

use crate::fixture::{
    advance, assert_nothing_claimable, claim, claim_one, declare, delivery, event, name, publish, record, scheduled,
    LEASE,
};

/// Due deliveries go out highest priority first, then earliest due first, whatever the order they
/// were published in; a delivery that becomes due later joins the line by the same rule.
pub async fn claims_by_priority_then_due<S: Store + ?Sized>(store: &S) -> Result<(), StoreError> {
    let sub = declare(store, "work", "job.*").await?;
    let with = |mut e: EventParts, p: Priority| {
        e.priority = p;
        e
    };
    let t0 = store.clock().now();
    let normal_late = publish(store, scheduled(store, "job.a", Duration::from_millis(3))).await?;
    let low = publish(store, with(event(store, "job.b"), Priority::LOW)).await?;
    advance(Duration::from_millis(1)).await;
    let normal_1 = publish(store, event(store, "job.c")).await?;
    advance(Duration::from_millis(1)).await;
    let high_1 = publish(store, with(event(store, "job.d"), Priority::HIGH)).await?;
    advance(Duration::from_millis(2)).await;
    let normal_2 = publish(store, event(store, "job.e")).await?;
    let high_2 = publish(store, with(event(store, "job.f"), Priority::HIGH)).await?;
    let critical = publish(
        store,
        with(scheduled(store, "job.g", Duration::from_millis(10)), Priority::CRITICAL),
    )
    .await?;

    let mut order = Vec::new();
    for _ in 0..2 {
        order.push(claim_one(store, &sub, "a high-priority delivery").await?);
    }
    advance(Duration::from_millis(10)).await;
    for _ in 0..5 {
        order.push(claim_one(store, &sub, "the next delivery").await?);
    }
    assert!(
        claim(store, &sub, 10).await?.is_empty(),
        "all seven deliveries were handed out"
    );

    let got: Vec<_> = order.iter().map(|c| c.event.id()).collect();
    let expected = vec![high_1, high_2, critical, normal_1, normal_late, normal_2, low];
    assert_eq!(
        got, expected,
        "claims go by priority (critical > high > normal > low), then by due time (earliest first)"
    );
    let dues: Vec<_> = order.iter().map(|c| c.due.millis_since(t0)).collect();
    assert_eq!(
        dues,
        vec![2, 4, 14, 1, 3, 4, 0],
        "each claim reports its delivery's due time"
    );
    Ok(())
}

/// A claim hands out at most `max` deliveries, each once, with a lease of the asked length, and
/// marks them active.
pub async fn claim_respects_max<S: Store + ?Sized>(store: &S) -> Result<(), StoreError> {
    let sub = declare(store, "work", "job.*").await?;
    let mut published = HashSet::new();
    for _ in 0..5 {
        published.insert(publish(store, event(store, "job.run")).await?);
    }
    assert!(claim(store, &sub, 0).await?.is_empty(), "claim(0) hands out nothing");
    let now = store.clock().now();
    let mut seen = HashSet::new();
    for (max, expected) in [(2, 2), (2, 2), (2, 1), (2, 0)] {
        let claimed = claim(store, &sub, max).await?;
        assert_eq!(claimed.len(), expected, "claim({max}) with {} left", 5 - seen.len());
        for c in claimed {
            assert!(seen.insert(c.event.id()), "event {} was handed out twice", c.event.id());
            assert_eq!(c.attempt, 1, "a first claim is attempt 1");
            assert_eq!(
                c.lease_until,
                now + LEASE,
                "the lease runs for the asked duration from now"
            );
            let rec = record(store, c.event.id()).await?;
            assert_eq!(
                delivery(&rec, &sub).status,
                DeliveryStatus::Active,
                "a claimed delivery is active"
            );
            assert_eq!(delivery(&rec, &sub).attempt_count, 1, "a claim starts an attempt");
            assert_eq!(
                rec.status,
                EventStatus::Active,
                "an event with an active delivery is active"
            );
        }
    }
    assert_eq!(seen, published, "every delivery was handed out exactly once");
    Ok(())
}

/// Claims running at the same time never hand out the same delivery, and together hand out all.
pub async fn concurrent_claims_never_share_a_delivery<S: Store + ?Sized>(store: &S) -> Result<(), StoreError> {
    let sub = declare(store, "work", "job.*").await?;
    let mut published = HashSet::new();
    for _ in 0..40 {
        published.insert(publish(store, event(store, "job.run")).await?);
    }
    let batches = join_all((0..8).map(|_| store.claim(&sub, 6, LEASE))).await;
    let mut seen = HashSet::new();
    for batch in batches {
        for c in batch? {
            assert!(
                seen.insert(c.event.id()),
                "event {} was handed out to two claims",
                c.event.id()
            );
        }
    }
    assert_eq!(seen, published, "8 claims of 6 hand out all 40 deliveries");
    assert_nothing_claimable(store, &sub, "every delivery is leased").await
}

/// Claiming for a subscription that was never declared fails with
/// [`StoreError::UnknownSubscription`] naming it.
pub async fn claim_of_an_undeclared_subscription_fails<S: Store + ?Sized>(store: &S) -> Result<(), StoreError> {
    declare(store, "known", "job.*").await?;
    publish(store, event(store, "job.run")).await?;
    let ghost = name("ghost");
    match store.claim(&ghost, 10, LEASE).await {
        Err(StoreError::UnknownSubscription(n)) => assert_eq!(n, ghost, "the error names the subscription"),
        other => panic!("claim of an undeclared subscription must fail with UnknownSubscription, got {other:?}"),
    }
    Ok(())
}
