//! `get`: one event with its deliveries and every attempt of each.

use std::time::Duration;

use herald_core::{AttemptOutcome, EventId, Store, StoreError, Verdict};

use crate::fixture::{advance, claim_one, declare, delivery, event, publish, record, settle, succeeded};

/// `get` returns every attempt, oldest first, with when it started and finished, how it ended and
/// its error; `get` of an unknown id is `None`.
pub async fn get_includes_every_attempt<S: Store + ?Sized>(store: &S) -> Result<(), StoreError> {
    let sub = declare(store, "work", "job.*").await?;
    let t0 = store.clock().now();
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    let id = publish(store, event(store, "job.run")).await?;
    advance(Duration::from_secs(1)).await;
    let first = claim_one(store, &sub, "attempt 1").await?;
    advance(Duration::from_secs(2)).await;
    settle(
        store,
        first.lease,
        Verdict::Retry {
            at: at(8_000),
            error: "connection refused".into(),
        },
    )
    .await?;
    advance(Duration::from_secs(5)).await;
    let second = claim_one(store, &sub, "attempt 2").await?;
    advance(Duration::from_secs(1)).await;
    settle(store, second.lease, succeeded()).await?;

    let rec = record(store, id).await?;
    let d = delivery(&rec, &sub);
    assert_eq!(d.attempt_count, 2);
    assert_eq!(
        d.attempts.len(),
        2,
        "both attempts are in the history: {:?}",
        d.attempts
    );
    let (one, two) = (&d.attempts[0], &d.attempts[1]);
    assert_eq!(
        (one.number, one.started_at, one.finished_at),
        (1, at(1_000), Some(at(3_000))),
        "attempt 1's times"
    );
    assert_eq!(one.outcome, Some(AttemptOutcome::Failed), "attempt 1 failed");
    assert_eq!(one.error.as_deref(), Some("connection refused"), "attempt 1's error");
    assert_eq!(
        (two.number, two.started_at, two.finished_at),
        (2, at(8_000), Some(at(9_000))),
        "attempt 2's times"
    );
    assert_eq!(two.outcome, Some(AttemptOutcome::Succeeded), "attempt 2 succeeded");
    assert_eq!(two.error, None, "a successful attempt has no error");

    assert_eq!(
        store.get(EventId::new()).await?,
        None,
        "get of an unknown id finds nothing"
    );
    Ok(())
}
