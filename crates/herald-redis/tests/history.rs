//! Attempt history across the store's layout: the latest attempt lives on the delivery and a new
//! claim moves it to the list, so a release must bring the one before it back.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use bytes::Bytes;
use herald_core::{
    AttemptOutcome, Completion, Event, EventParts, Outcome, Pattern, Store, SubscriptionName, SubscriptionSpec, Topic,
    Verdict,
};
use herald_redis::RedisStore;

#[tokio::test]
async fn a_release_after_a_failure_keeps_the_failure_as_the_latest_attempt() {
    let store = RedisStore::builder("redis://127.0.0.1:6379")
        .prefix(format!("herald-history-{:08x}", fastrand::u32(..)))
        .connect()
        .await
        .unwrap();
    let sub = SubscriptionName::new("work").unwrap();
    store
        .declare(&SubscriptionSpec {
            name: sub.clone(),
            pattern: Pattern::new("job.*").unwrap(),
        })
        .await
        .unwrap();
    let mut parts = EventParts::new(Topic::new("job.run").unwrap(), Bytes::from_static(b"1"));
    parts.published_at = store.clock().now();
    parts.deliver_at = parts.published_at;
    let id = parts.id;
    store.publish(vec![Event::from_parts(parts)]).await.unwrap();
    let lease = Duration::from_secs(30);
    let settle = |lease, verdict| Outcome {
        lease,
        finished_at: store.clock().now(),
        verdict,
    };

    let first = store.claim(&sub, 1, lease).await.unwrap().pop().unwrap();
    let retry = Verdict::Retry {
        at: store.clock().now(),
        error: "busy".into(),
    };
    assert_eq!(
        store.complete(vec![settle(first.lease, retry)]).await.unwrap(),
        vec![Completion::Applied]
    );
    let second = store.claim(&sub, 1, lease).await.unwrap().pop().unwrap();
    assert_eq!(second.attempt, 2);
    let released = store
        .complete(vec![settle(second.lease, Verdict::Released)])
        .await
        .unwrap();
    assert_eq!(released, vec![Completion::Applied]);

    let rec = store.get(id).await.unwrap().unwrap();
    let d = &rec.deliveries[0];
    assert_eq!(d.attempt_count, 1, "{d:?}");
    assert_eq!(d.attempts.len(), 1, "{d:?}");
    assert_eq!(d.attempts[0].outcome, Some(AttemptOutcome::Failed));
    assert_eq!(d.attempts[0].error.as_deref(), Some("busy"));

    let third = store.claim(&sub, 1, lease).await.unwrap().pop().unwrap();
    assert_eq!(third.attempt, 2);
    let done = Verdict::Succeeded { reply: None };
    assert_eq!(
        store.complete(vec![settle(third.lease, done)]).await.unwrap(),
        vec![Completion::Applied]
    );
    let rec = store.get(id).await.unwrap().unwrap();
    let d = &rec.deliveries[0];
    let outcomes: Vec<_> = d.attempts.iter().map(|a| (a.number, a.outcome)).collect();
    assert_eq!(
        outcomes,
        vec![(1, Some(AttemptOutcome::Failed)), (2, Some(AttemptOutcome::Succeeded))],
        "{d:?}"
    );
    store.destroy().await.unwrap();
}
