//! What every case builds on: names, events, and store calls that check their own shape, so that a
//! case reads as the behaviour it asserts.

use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{FutureExt, StreamExt};
use herald_core::{
    Claimed, Completion, DeliveryRecord, Event, EventFilter, EventId, EventParts, EventRecord, Lease, Outcome, Pattern,
    Published, Store, StoreError, SubscriptionName, SubscriptionSpec, Topic, Verdict, Wakeup,
};

/// The lease every claim asks for unless a case says otherwise.
pub(crate) const LEASE: Duration = Duration::from_secs(30);

/// How long to wait for a wakeup that must come. On tokio's paused clock this costs nothing when the
/// wakeup is already there, and fails the case instead of hanging it when it never comes.
const WAKEUP_WAIT: Duration = Duration::from_secs(5);

/// A topic the case spells out; a typo in a case is a bug in the suite.
pub(crate) fn topic(s: &str) -> Topic {
    Topic::new(s).unwrap_or_else(|e| panic!("the suite uses an invalid topic: {e}"))
}

/// A pattern the case spells out.
pub(crate) fn pattern(s: &str) -> Pattern {
    Pattern::new(s).unwrap_or_else(|e| panic!("the suite uses an invalid pattern: {e}"))
}

/// A subscription name the case spells out.
pub(crate) fn name(s: &str) -> SubscriptionName {
    SubscriptionName::new(s).unwrap_or_else(|e| panic!("the suite uses an invalid subscription name: {e}"))
}

/// Declares `subscription` with `pattern` and returns its name.
pub(crate) async fn declare(
    store: &(impl Store + ?Sized),
    subscription: &str,
    pattern_text: &str,
) -> Result<SubscriptionName, StoreError> {
    let spec = SubscriptionSpec {
        name: name(subscription),
        pattern: pattern(pattern_text),
    };
    store.declare(&spec).await?;
    Ok(spec.name)
}

/// An immediate event on `topic_text`, published now by the store's clock.
pub(crate) fn event(store: &(impl Store + ?Sized), topic_text: &str) -> EventParts {
    due_now(store, topic_text, Bytes::from_static(br#"{"n":1}"#))
}

/// An event on `topic_text` carrying `payload`, published now by the store's clock and due at once.
pub(crate) fn due_now(store: &(impl Store + ?Sized), topic_text: &str, payload: Bytes) -> EventParts {
    let now = store.clock().now();
    let mut e = EventParts::new(topic(topic_text), payload);
    e.published_at = now;
    e.deliver_at = now;
    e
}

/// An event on `topic_text`, published now and due `after` from now.
pub(crate) fn scheduled(store: &(impl Store + ?Sized), topic_text: &str, after: Duration) -> EventParts {
    let mut e = event(store, topic_text);
    e.deliver_at = e.published_at + after;
    e
}

/// A filter built by `set` from the default one. [`EventFilter`] is `#[non_exhaustive]`, so outside
/// herald-core it is built by assignment.
pub(crate) fn filter(set: impl FnOnce(&mut EventFilter)) -> EventFilter {
    let mut f = EventFilter::default();
    set(&mut f);
    f
}

/// Publishes one event that must be stored, and returns its id.
pub(crate) async fn publish(store: &(impl Store + ?Sized), parts: EventParts) -> Result<EventId, StoreError> {
    let id = parts.id;
    let out = store.publish(vec![Event::from_parts(parts)]).await?;
    match out.as_slice() {
        [Published::Stored { id: stored, .. }] => {
            assert_eq!(*stored, id, "publish must report the id of the event it stored");
        }
        other => panic!("publishing one new event must store it and report one entry, got {other:?}"),
    }
    Ok(id)
}

/// Claims up to `max` deliveries of `subscription` under [`LEASE`].
pub(crate) async fn claim(
    store: &(impl Store + ?Sized),
    subscription: &SubscriptionName,
    max: usize,
) -> Result<Vec<Claimed>, StoreError> {
    let claimed = store.claim(subscription, max, LEASE).await?;
    assert!(
        claimed.len() <= max,
        "claim({max}) handed out {} deliveries",
        claimed.len()
    );
    for c in &claimed {
        assert_eq!(
            &c.subscription, subscription,
            "claim handed out a delivery of another subscription"
        );
    }
    Ok(claimed)
}

/// Claims exactly one delivery of `subscription`; `what` says which one the case expects.
pub(crate) async fn claim_one(
    store: &(impl Store + ?Sized),
    subscription: &SubscriptionName,
    what: &str,
) -> Result<Claimed, StoreError> {
    let mut claimed = claim(store, subscription, 1).await?;
    match claimed.pop() {
        Some(c) => Ok(c),
        None => panic!("expected to claim {what} from '{subscription}', but nothing was claimable"),
    }
}

/// Asserts that `subscription` has nothing to hand out now; `why` says why it must not.
pub(crate) async fn assert_nothing_claimable(
    store: &(impl Store + ?Sized),
    subscription: &SubscriptionName,
    why: &str,
) -> Result<(), StoreError> {
    let claimed = claim(store, subscription, 100).await?;
    let ids: Vec<EventId> = claimed.iter().map(|c| c.event.id()).collect();
    assert!(
        ids.is_empty(),
        "nothing of '{subscription}' may be claimable ({why}), but claim handed out events {ids:?}"
    );
    Ok(())
}

/// Records the outcome of the attempt under `lease`, finished now.
pub(crate) async fn complete(
    store: &(impl Store + ?Sized),
    lease: Lease,
    verdict: Verdict,
) -> Result<Completion, StoreError> {
    let outcome = Outcome {
        lease,
        finished_at: store.clock().now(),
        verdict,
    };
    let out = store.complete(vec![outcome]).await?;
    match out.as_slice() {
        [c] => Ok(*c),
        other => panic!("complete of one outcome must report one completion, got {other:?}"),
    }
}

/// Records the outcome of the attempt under `lease`, which must be applied.
pub(crate) async fn settle(store: &(impl Store + ?Sized), lease: Lease, verdict: Verdict) -> Result<(), StoreError> {
    let what = format!("{verdict:?}");
    let c = complete(store, lease, verdict).await?;
    assert_eq!(
        c,
        Completion::Applied,
        "the outcome {what} under a held lease must be applied"
    );
    Ok(())
}

/// A succeeded verdict without a reply.
pub(crate) fn succeeded() -> Verdict {
    Verdict::Succeeded { reply: None }
}

/// The stored record of `id`, which must exist.
pub(crate) async fn record(store: &(impl Store + ?Sized), id: EventId) -> Result<EventRecord, StoreError> {
    match store.get(id).await? {
        Some(r) => {
            assert_eq!(r.event.id(), id, "get({id}) returned another event");
            Ok(r)
        }
        None => panic!("get({id}) found nothing, but the event was published and not purged"),
    }
}

/// The delivery of `record` to `subscription`, which must exist and be the only one.
pub(crate) fn delivery<'a>(record: &'a EventRecord, subscription: &SubscriptionName) -> &'a DeliveryRecord {
    let mut found = record.deliveries.iter().filter(|d| &d.subscription == subscription);
    match (found.next(), found.next()) {
        (Some(d), None) => d,
        (None, _) => panic!("event {} has no delivery to '{subscription}'", record.event.id()),
        (Some(_), Some(_)) => panic!("event {} has two deliveries to '{subscription}'", record.event.id()),
    }
}

/// Moves tokio's paused clock, and with it the store's, forward by `d`.
pub(crate) async fn advance(d: Duration) {
    tokio::time::advance(d).await;
}

/// The next wakeup from `wakeups`, or `None` if none comes in time.
pub(crate) async fn next_wakeup(wakeups: &mut BoxStream<'static, Wakeup>) -> Option<Wakeup> {
    tokio::time::timeout(WAKEUP_WAIT, wakeups.next()).await.ok().flatten()
}

/// Asserts that `wakeups` has nothing waiting; `why` says why it must not. Without waiting, so that
/// the paused clock does not move under the case.
pub(crate) fn assert_no_wakeup(wakeups: &mut BoxStream<'static, Wakeup>, why: &str) {
    if let Some(Some(w)) = wakeups.next().now_or_never() {
        panic!("expected no wakeup ({why}), got {w:?}");
    }
}
