//! Attempt history across the store's layout: the latest attempt lives on the delivery and a new
//! claim moves it to the list, so a release must bring the one before it back.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use herald_core::{AttemptOutcome, Completion, Outcome, Store, Verdict};
use herald_redis::RedisStore;
use herald_testkit::setup;

#[tokio::test]
async fn a_release_after_a_failure_keeps_the_failure_as_the_latest_attempt() {
    let store = RedisStore::builder("redis://127.0.0.1:6379")
        .prefix(format!("herald-history-{:08x}", fastrand::u32(..)))
        .connect()
        .await
        .unwrap();
    let sub = setup::declare(&store, "work", "job.*").await;
    let event = setup::due_now(&store, "job.run", "1");
    let id = event.id();
    store.publish(vec![event]).await.unwrap();
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
