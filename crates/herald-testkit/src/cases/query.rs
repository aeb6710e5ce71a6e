//! Queries: every filter of [`EventFilter`], alone and combined, over one small history.

use std::time::Duration;

use herald_core::{
    EventFilter, EventId, EventStatus, PageRequest, Store, StoreError, SubscriptionName, Timestamp, Verdict,
};

use crate::fixture::{
    advance, claim_one, declare, delivery, event, filter, name, pattern, publish, scheduled, settle, succeeded,
};

/// The history every query case runs over: four events one second apart, in four states.
struct History {
    t0: Timestamp,
    billing: SubscriptionName,
    shipping: SubscriptionName,
    /// `order.paid` with the key `k1`; billing succeeded, shipping pending: pending.
    paid: EventId,
    /// `order.refunded`; billing dead: dead.
    refunded: EventId,
    /// `user.created`; no subscription: unrouted.
    created: EventId,
    /// `order.paid` due in a minute; billing and shipping scheduled: scheduled.
    later: EventId,
}

impl History {
    async fn publish(store: &(impl Store + ?Sized)) -> Result<Self, StoreError> {
        let billing = declare(store, "billing", "order.*").await?;
        let shipping = declare(store, "shipping", "order.paid").await?;
        let t0 = store.clock().now();
        let mut paid = event(store, "order.paid");
        paid.key = Some("k1".into());
        let paid = publish(store, paid).await?;
        advance(Duration::from_secs(1)).await;
        let refunded = publish(store, event(store, "order.refunded")).await?;
        advance(Duration::from_secs(1)).await;
        let created = publish(store, event(store, "user.created")).await?;
        advance(Duration::from_secs(1)).await;
        let later = publish(store, scheduled(store, "order.paid", Duration::from_secs(60))).await?;
        let c = claim_one(store, &billing, "order.paid, due first").await?;
        assert_eq!(c.event.id(), paid, "the earliest due delivery is claimed first");
        settle(store, c.lease, succeeded()).await?;
        let c = claim_one(store, &billing, "order.refunded").await?;
        assert_eq!(c.event.id(), refunded);
        settle(
            store,
            c.lease,
            Verdict::Dead {
                reason: "refund unknown".into(),
            },
        )
        .await?;
        Ok(History {
            t0,
            billing,
            shipping,
            paid,
            refunded,
            created,
            later,
        })
    }

    fn at(&self, ms: u64) -> Timestamp {
        self.t0 + Duration::from_millis(ms)
    }
}

/// The ids `filter` selects, newest first, from a single page.
async fn select(store: &(impl Store + ?Sized), filter: &EventFilter) -> Result<Vec<EventId>, StoreError> {
    let page = store.query(filter, PageRequest::first(100)).await?;
    assert_eq!(
        page.next, None,
        "a page that holds every match is the last page ({filter:?})"
    );
    Ok(page.items.iter().map(|r| r.event.id()).collect())
}

fn by_topic(p: &str) -> EventFilter {
    filter(|f| f.topic = Some(pattern(p)))
}

fn by_status(s: EventStatus) -> EventFilter {
    filter(|f| f.status = Some(s))
}

fn by_subscription(sub: &SubscriptionName, status: Option<EventStatus>) -> EventFilter {
    filter(|f| {
        f.subscription = Some(sub.clone());
        f.status = status;
    })
}

/// The default filter selects every event, newest first, with deliveries but no attempt history;
/// a topic pattern selects the events whose topic it matches.
pub async fn query_filters_by_topic_pattern<S: Store + ?Sized>(store: &S) -> Result<(), StoreError> {
    let h = History::publish(store).await?;
    let page = store.query(&EventFilter::default(), PageRequest::first(100)).await?;
    let all: Vec<_> = page.items.iter().map(|r| r.event.id()).collect();
    assert_eq!(
        all,
        vec![h.later, h.created, h.refunded, h.paid],
        "every event, newest first"
    );
    let paid = &page.items[3];
    assert_eq!(paid.status, EventStatus::Pending, "query rolls up the status");
    let billed = delivery(paid, &h.billing);
    assert_eq!(billed.attempt_count, 1, "query reports the attempt count");
    assert!(billed.attempts.is_empty(), "query results carry no attempt history");

    for (p, expected) in [
        ("order.>", vec![h.later, h.refunded, h.paid]),
        ("order.paid", vec![h.later, h.paid]),
        ("*.created", vec![h.created]),
        ("user.*", vec![h.created]),
        ("invoice.>", vec![]),
    ] {
        assert_eq!(select(store, &by_topic(p)).await?, expected, "topic pattern '{p}'");
    }
    Ok(())
}

/// A status selects the events whose rolled-up status it is.
pub async fn query_filters_by_status<S: Store + ?Sized>(store: &S) -> Result<(), StoreError> {
    let h = History::publish(store).await?;
    for (status, expected) in [
        (EventStatus::Pending, vec![h.paid]),
        (EventStatus::Dead, vec![h.refunded]),
        (EventStatus::Unrouted, vec![h.created]),
        (EventStatus::Scheduled, vec![h.later]),
        (EventStatus::Succeeded, vec![]),
        (EventStatus::Active, vec![]),
    ] {
        assert_eq!(select(store, &by_status(status)).await?, expected, "status {status}");
    }
    let mut dead_orders = by_topic("order.>");
    dead_orders.status = Some(EventStatus::Dead);
    assert_eq!(
        select(store, &dead_orders).await?,
        vec![h.refunded],
        "topic and status together"
    );
    Ok(())
}

/// A subscription selects the events with a delivery to it; with a status, the events whose
/// delivery to it is in that status (whatever the event's own status).
pub async fn query_filters_by_subscription_and_status<S: Store + ?Sized>(store: &S) -> Result<(), StoreError> {
    let h = History::publish(store).await?;
    let (billing, shipping) = (&h.billing, &h.shipping);
    for (sub, status, expected) in [
        (billing, None, vec![h.later, h.refunded, h.paid]),
        (shipping, None, vec![h.later, h.paid]),
        (billing, Some(EventStatus::Succeeded), vec![h.paid]),
        (billing, Some(EventStatus::Dead), vec![h.refunded]),
        (billing, Some(EventStatus::Scheduled), vec![h.later]),
        (billing, Some(EventStatus::Pending), vec![]),
        (shipping, Some(EventStatus::Pending), vec![h.paid]),
        (shipping, Some(EventStatus::Succeeded), vec![]),
        (shipping, Some(EventStatus::Unrouted), vec![]),
    ] {
        let got = select(store, &by_subscription(sub, status)).await?;
        assert_eq!(got, expected, "subscription '{sub}' with status {status:?}");
    }
    assert_eq!(
        select(store, &by_subscription(&name("ghost"), None)).await?,
        vec![],
        "an unknown subscription"
    );
    let mut recent = by_subscription(shipping, None);
    recent.since = Some(h.at(1_000));
    assert_eq!(
        select(store, &recent).await?,
        vec![h.later],
        "subscription and time together"
    );
    Ok(())
}

/// `since` selects events published at or after it, `until` those published before it.
pub async fn query_filters_by_publication_time<S: Store + ?Sized>(store: &S) -> Result<(), StoreError> {
    let h = History::publish(store).await?;
    let window = |since: Option<u64>, until: Option<u64>| {
        filter(|f| {
            f.since = since.map(|ms| h.at(ms));
            f.until = until.map(|ms| h.at(ms));
        })
    };
    for (since, until, expected) in [
        (Some(1_000), None, vec![h.later, h.created, h.refunded]),
        (Some(999), None, vec![h.later, h.created, h.refunded]),
        (Some(1_001), None, vec![h.later, h.created]),
        (None, Some(1_000), vec![h.paid]),
        (None, Some(1_001), vec![h.refunded, h.paid]),
        (Some(1_000), Some(3_000), vec![h.created, h.refunded]),
        (Some(3_001), None, vec![]),
        (None, Some(0), vec![]),
    ] {
        assert_eq!(
            select(store, &window(since, until)).await?,
            expected,
            "since t0+{since:?}ms until t0+{until:?}ms"
        );
    }
    Ok(())
}

/// A key selects the one event that holds it.
pub async fn query_filters_by_key<S: Store + ?Sized>(store: &S) -> Result<(), StoreError> {
    let h = History::publish(store).await?;
    let by_key = |k: &str| filter(|f| f.key = Some(k.into()));
    assert_eq!(select(store, &by_key("k1")).await?, vec![h.paid], "the key's holder");
    assert_eq!(select(store, &by_key("k2")).await?, vec![], "a key nobody holds");
    let mut elsewhere = by_key("k1");
    elsewhere.topic = Some(pattern("user.>"));
    assert_eq!(select(store, &elsewhere).await?, vec![], "key and topic together");
    let page = store.query(&by_key("k1"), PageRequest::after(h.paid, 10)).await?;
    assert!(
        page.items.is_empty() && page.next.is_none(),
        "nothing comes after the key's holder"
    );
    Ok(())
}
