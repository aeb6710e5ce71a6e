//! Subscriptions: declaring routes later publishes; redeclaring reroutes them.

use herald_core::{DeliveryStatus, Event, EventStatus, Published, Store, StoreError};

use crate::fixture::{claim, claim_one, declare, delivery, event, publish, record};

/// Redeclaring a subscription with a new pattern routes later publishes by the new pattern, keeps
/// the deliveries it already has, and redeclaring with the same pattern changes nothing.
pub async fn redeclare_changes_routing_for_later_publishes<S: Store + ?Sized>(store: &S) -> Result<(), StoreError> {
    let sub = declare(store, "mail", "user.*").await?;
    let before = publish(store, event(store, "user.created")).await?;
    declare(store, "mail", "user.*").await?;
    let same = publish(store, event(store, "user.deleted")).await?;
    assert_eq!(
        record(store, same).await?.deliveries.len(),
        1,
        "redeclaring the same pattern changes nothing"
    );

    declare(store, "mail", "order.*").await?;
    let out = store
        .publish(vec![Event::from_parts(event(store, "user.updated"))])
        .await?;
    assert!(
        matches!(out.as_slice(), [Published::Stored { deliveries: 0, .. }]),
        "the old pattern no longer routes: {out:?}"
    );
    let routed = publish(store, event(store, "order.paid")).await?;
    let rec = record(store, routed).await?;
    assert_eq!(
        delivery(&rec, &sub).status,
        DeliveryStatus::Pending,
        "the new pattern routes"
    );
    assert_eq!(record(store, out[0].id()).await?.status, EventStatus::Unrouted);

    let mut got: Vec<_> = claim(store, &sub, 10).await?.iter().map(|c| c.event.id()).collect();
    got.sort();
    let mut expected = vec![before, same, routed];
    expected.sort();
    assert_eq!(got, expected, "deliveries routed before the redeclare are kept");
    assert!(claim(store, &sub, 10).await?.is_empty());

    let other = declare(store, "audit", ">").await?;
    let both = publish(store, event(store, "order.paid")).await?;
    assert_eq!(
        record(store, both).await?.deliveries.len(),
        2,
        "a newly declared subscription routes at once"
    );
    claim_one(store, &other, "the audit delivery").await?;
    Ok(())
}

/// Removing a subscription stops routing to it and cancels its unfinished deliveries, leased ones
/// included (their outcomes are then stale), while other subscriptions and the history stay. A
/// store that cannot remove subscriptions refuses cleanly with `Unsupported`.
pub async fn remove_subscription_stops_routing_and_cancels_its_deliveries<S: Store + ?Sized>(
    store: &S,
) -> Result<(), StoreError> {
    let gone = declare(store, "gone", "order.*").await?;
    let kept = declare(store, "kept", "order.*").await?;
    let leased_event = publish(store, event(store, "order.paid")).await?;
    let leased = claim_one(store, &gone, "the delivery to lease before removal").await?;
    let pending = publish(store, event(store, "order.sent")).await?;
    match store.remove_subscription(&gone).await {
        Err(StoreError::Unsupported(_)) => return Ok(()),
        Err(e) => return Err(e),
        Ok(n) => assert_eq!(n, 2, "the leased and the pending delivery are cancelled"),
    }
    for id in [leased_event, pending] {
        let rec = record(store, id).await?;
        assert_eq!(delivery(&rec, &gone).status, DeliveryStatus::Cancelled, "history stays");
        assert_eq!(
            delivery(&rec, &kept).status,
            DeliveryStatus::Pending,
            "other subscriptions are untouched"
        );
    }
    let late = crate::fixture::complete(store, leased.lease, crate::fixture::succeeded()).await?;
    assert_eq!(
        late,
        herald_core::Completion::Stale,
        "the removed delivery's outcome is stale"
    );
    let after = publish(store, event(store, "order.paid")).await?;
    assert_eq!(
        record(store, after).await?.deliveries.len(),
        1,
        "only 'kept' routes now"
    );
    assert!(
        matches!(claim(store, &gone, 1).await, Err(StoreError::UnknownSubscription(_))),
        "a removed subscription is unknown until declared again"
    );
    assert_eq!(
        store.remove_subscription(&gone).await?,
        0,
        "removing twice cancels nothing"
    );
    Ok(())
}
