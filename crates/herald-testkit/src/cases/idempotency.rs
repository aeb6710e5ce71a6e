//! Idempotency keys: an event whose key is already held is not stored again.

use herald_core::{Event, Published, Store, StoreError};

use crate::fixture::{claim, claim_one, declare, event, record, settle, succeeded};

/// A second publish with a key already held returns [`Published::Duplicate`] with the first id and
/// stores nothing, also once the first event has finished (the key is held until it is purged).
pub async fn idempotency_key_returns_the_first_event<S: Store + ?Sized>(store: &S) -> Result<(), StoreError> {
    let sub = declare(store, "orders", "order.*").await?;
    let mut first = event(store, "order.paid");
    first.key = Some("order-7".into());
    let first = Event::from_parts(first);
    let out = store.publish(vec![first.clone()]).await?;
    assert_eq!(
        out,
        vec![Published::Stored {
            id: first.id(),
            deliveries: 1
        }],
        "the first holder of a key is stored"
    );

    let mut again = event(store, "order.shipped");
    again.key = Some("order-7".into());
    let again = Event::from_parts(again);
    let out = store.publish(vec![again.clone()]).await?;
    assert_eq!(
        out,
        vec![Published::Duplicate { id: first.id() }],
        "a held key makes the publish a duplicate of the first"
    );
    assert_eq!(
        out[0].id(),
        first.id(),
        "Published::id of a duplicate is the first event's id"
    );
    assert!(store.get(again.id()).await?.is_none(), "a duplicate is not stored");
    assert_eq!(store.stats().await?.events, 1, "a duplicate is not counted");

    let c = claim_one(store, &sub, "the first event's delivery").await?;
    assert_eq!(c.event.id(), first.id(), "only the first event was fanned out");
    assert!(
        claim(store, &sub, 10).await?.is_empty(),
        "the duplicate opened no delivery"
    );
    settle(store, c.lease, succeeded()).await?;

    let mut later = event(store, "order.paid");
    later.key = Some("order-7".into());
    let out = store.publish(vec![Event::from_parts(later)]).await?;
    assert_eq!(
        out,
        vec![Published::Duplicate { id: first.id() }],
        "a finished event still holds its key until purged"
    );
    assert_eq!(
        record(store, first.id()).await?.deliveries.len(),
        1,
        "the first event is unchanged"
    );
    Ok(())
}

/// Within one batch, the second event with a key is a duplicate of the first; other entries are
/// unaffected and the results come back in order.
pub async fn idempotency_key_holds_within_one_batch<S: Store + ?Sized>(store: &S) -> Result<(), StoreError> {
    let sub = declare(store, "orders", "order.*").await?;
    let keyed = |key: Option<&str>| {
        let mut e = event(store, "order.paid");
        e.key = key.map(str::to_owned);
        Event::from_parts(e)
    };
    let (a, b, c, d) = (keyed(Some("k1")), keyed(Some("k1")), keyed(Some("k2")), keyed(None));
    let out = store.publish(vec![a.clone(), b.clone(), c.clone(), d.clone()]).await?;
    assert_eq!(
        out,
        vec![
            Published::Stored {
                id: a.id(),
                deliveries: 1
            },
            Published::Duplicate { id: a.id() },
            Published::Stored {
                id: c.id(),
                deliveries: 1
            },
            Published::Stored {
                id: d.id(),
                deliveries: 1
            },
        ],
        "one entry per event, in order; the second 'k1' is a duplicate of the first"
    );
    assert!(
        store.get(b.id()).await?.is_none(),
        "the duplicate in the batch is not stored"
    );
    let claimed = claim(store, &sub, 10).await?;
    let mut ids: Vec<_> = claimed.iter().map(|c| c.event.id()).collect();
    ids.sort();
    let mut expected = vec![a.id(), c.id(), d.id()];
    expected.sort();
    assert_eq!(ids, expected, "the batch fanned out the three stored events only");
    Ok(())
}
