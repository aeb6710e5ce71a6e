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
