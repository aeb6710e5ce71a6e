//! Publishing: fan-out to every matching subscription, unrouted events, and events that come back
//! exactly as they went in.

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use herald_core::{
    AttemptOutcome, Completion, DeliveryStatus, Event, EventStatus, Headers, Outcome, Priority, Published, Store,
    StoreError, Verdict,
};

use crate::fixture::{claim, claim_one, declare, delivery, event, publish, record};

/// An event gets one pending delivery per subscription whose pattern matches its topic (exact, `*`
/// and `>` patterns), each handed out once to its own subscription; a subscription whose pattern
/// does not match gets nothing.
pub async fn publish_fans_out_to_every_matching_subscription<S: Store + ?Sized>(store: &S) -> Result<(), StoreError> {
    let exact = declare(store, "exact", "order.paid").await?;
    let one = declare(store, "one", "order.*").await?;
    let rest = declare(store, "rest", "order.>").await?;
    let other = declare(store, "other", "invoice.>").await?;

    let paid = event(store, "order.paid");
    let due = paid.deliver_at;
    let paid = Event::from_parts(paid);
    let out = store.publish(vec![paid.clone()]).await?;
    assert_eq!(
        out,
        vec![Published::Stored {
            id: paid.id(),
            deliveries: 3
        }],
        "order.paid matches 'order.paid', 'order.*' and 'order.>' but not 'invoice.>'"
    );

    let rec = record(store, paid.id()).await?;
    assert_eq!(
        rec.status,
        EventStatus::Pending,
        "an event with due deliveries is pending"
    );
    let subs: BTreeSet<_> = rec.deliveries.iter().map(|d| d.subscription.clone()).collect();
    let expected: BTreeSet<_> = [exact.clone(), one.clone(), rest.clone()].into_iter().collect();
    assert_eq!(subs, expected, "one delivery per matching subscription");
    for d in &rec.deliveries {
        assert_eq!(d.status, DeliveryStatus::Pending, "a new immediate delivery is pending");
        assert_eq!(d.attempt_count, 0, "a new delivery has no attempts");
        assert_eq!(d.due, due, "a delivery is due at the event's deliver_at");
        assert!(
            d.attempts.is_empty() && d.last_error.is_none() && d.reply.is_none(),
            "a new delivery has no history"
        );
    }
    let ids: BTreeSet<_> = rec.deliveries.iter().map(|d| d.id).collect();
    assert_eq!(ids.len(), 3, "every delivery has its own id");

    for sub in [&exact, &one, &rest] {
        let c = claim_one(store, sub, "the order.paid delivery").await?;
        assert_eq!(c.event.id(), paid.id(), "'{sub}' hands out the event it matched");
        assert_eq!(
            c.lease.delivery,
            delivery(&rec, sub).id,
            "'{sub}' hands out its own delivery"
        );
        assert!(claim(store, sub, 10).await?.is_empty(), "'{sub}' had one delivery");
    }
    assert!(
        claim(store, &other, 10).await?.is_empty(),
        "'invoice.>' matched nothing"
    );

    // '>' needs at least one more segment and '*' exactly one.
    let deep = publish(store, event(store, "order.paid.eu")).await?;
    let rec = record(store, deep).await?;
    assert_eq!(rec.deliveries.len(), 1, "order.paid.eu matches only 'order.>'");
    assert_eq!(delivery(&rec, &rest).status, DeliveryStatus::Pending);
    let bare = publish(store, event(store, "order")).await?;
    assert_eq!(
        record(store, bare).await?.status,
        EventStatus::Unrouted,
        "'order.>' and 'order.*' do not match 'order'"
    );
    Ok(())
}

/// An event no subscription matches is stored with no deliveries and the status unrouted.
pub async fn publish_records_an_unrouted_event<S: Store + ?Sized>(store: &S) -> Result<(), StoreError> {
    let sub = declare(store, "orders", "order.*").await?;
    let lost = Event::from_parts(event(store, "audit.login"));
    let out = store.publish(vec![lost.clone()]).await?;
    assert_eq!(
        out,
        vec![Published::Stored {
            id: lost.id(),
            deliveries: 0
        }],
        "an unrouted event is stored with 0 deliveries"
    );
    let rec = record(store, lost.id()).await?;
    assert_eq!(
        rec.status,
        EventStatus::Unrouted,
        "an event that matched nothing is unrouted"
    );
    assert!(rec.deliveries.is_empty(), "an unrouted event has no deliveries");
    assert_eq!(rec.event, lost, "an unrouted event is kept as published");
    assert!(
        claim(store, &sub, 10).await?.is_empty(),
        "an unrouted event is never handed out"
    );
    let stats = store.stats().await?;
    assert_eq!((stats.events, stats.unrouted), (1, 1), "stats count the unrouted event");
    assert_eq!(stats.deliveries.open(), 0, "an unrouted event opens no delivery");
    Ok(())
}

/// Every field of an event comes back unchanged from `claim`, `get` and `query`.
pub async fn events_round_trip_every_field<S: Store + ?Sized>(store: &S) -> Result<(), StoreError> {
    let sub = declare(store, "all", ">").await?;
    let mut parts = event(store, "order.paid");
    parts.payload = Bytes::from_static(b"\x00\x01binary\xff");
    parts.content_type = Some("application/octet-stream".into());
    parts.source = Some("/shop/eu".into());
    parts.headers = Headers::from_iter([
        ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        ("tenant", "acme"),
    ]);
    parts.priority = Priority::HIGH;
    parts.expires_at = Some(parts.published_at + Duration::from_secs(3600));
    parts.key = Some("order-7-paid".into());
    parts.reply_to = Some("inbox.7".into());
    let sent = Event::from_parts(parts);
    let id = sent.id();
    let out = store.publish(vec![sent.clone()]).await?;
    assert_eq!(out, vec![Published::Stored { id, deliveries: 1 }]);

    assert_eq!(
        record(store, id).await?.event,
        sent,
        "get returns the event as published"
    );
    let page = store.query(&Default::default(), Default::default()).await?;
    assert_eq!(page.items.len(), 1, "query finds the one event");
    assert_eq!(page.items[0].event, sent, "query returns the event as published");
    let c = claim_one(store, &sub, "the published event").await?;
    assert_eq!(c.event, sent, "claim hands out the event as published");
    assert_eq!(c.event.payload(), sent.payload(), "the payload bytes survive");
    assert_eq!(c.event.headers(), sent.headers(), "headers survive in order");
    Ok(())
}

/// `publish_one` and `complete_one` (one event, one outcome: what the runtime sends for a single
/// publish and a single finished attempt) do what `publish` and `complete` do with a batch of one:
/// fan-out, unrouted events, idempotency keys, and outcomes fenced by the lease token.
pub async fn single_publish_and_outcome_act_as_batches_of_one<S: Store + ?Sized>(store: &S) -> Result<(), StoreError> {
    let sub = declare(store, "single", "order.*").await?;
    let mut first = event(store, "order.paid");
    first.key = Some("order-7".into());
    let first = Event::from_parts(first);
    assert_eq!(
        store.publish_one(first.clone()).await?,
        Published::Stored {
            id: first.id(),
            deliveries: 1
        },
        "a matching subscription gets a delivery"
    );
    let mut again = event(store, "order.paid");
    again.key = Some("order-7".into());
    assert_eq!(
        store.publish_one(Event::from_parts(again)).await?,
        Published::Duplicate { id: first.id() },
        "a held key returns the first event's id"
    );
    let unrouted = Event::from_parts(event(store, "invoice.sent"));
    assert_eq!(
        store.publish_one(unrouted.clone()).await?,
        Published::Stored {
            id: unrouted.id(),
            deliveries: 0
        },
        "an event no pattern matches is stored unrouted"
    );

    let c = claim_one(store, &sub, "the published order").await?;
    assert_eq!(c.event.id(), first.id());
    let outcome = Outcome {
        lease: c.lease,
        finished_at: store.clock().now(),
        verdict: Verdict::Succeeded { reply: None },
    };
    assert_eq!(store.complete_one(outcome.clone()).await?, Completion::Applied);
    let rec = record(store, first.id()).await?;
    assert_eq!(rec.status, EventStatus::Succeeded);
    let d = delivery(&rec, &sub);
    assert_eq!(d.attempts.len(), 1, "one attempt in the history: {d:?}");
    assert_eq!(d.attempts[0].outcome, Some(AttemptOutcome::Succeeded));
    assert_eq!(d.attempts[0].finished_at, Some(outcome.finished_at));

    let c2 = claim(store, &sub, 1).await?;
    assert!(c2.is_empty(), "a succeeded delivery is not handed out again");
    assert_eq!(
        store.complete_one(outcome).await?,
        Completion::Stale,
        "a second outcome for a finished attempt changes nothing"
    );
    Ok(())
}
