//! Verdicts: what each outcome of an attempt makes of its delivery, and manual retries of the dead.

use std::time::Duration;

use herald_core::{AttemptOutcome, DeliveryId, DeliveryStatus, EventStatus, Requeued, Store, StoreError, Verdict};

use crate::fixture::{
    advance, assert_nothing_claimable, claim_one, declare, delivery, event, publish, record, scheduled, settle,
    succeeded,
};

/// [`Verdict::Retry`] makes the delivery retrying with the error recorded, due at `at`: not
/// claimable before it, reported by `next_due`, claimable at it as the next attempt.
pub async fn retry_verdict_schedules_the_next_attempt<S: Store + ?Sized>(store: &S) -> Result<(), StoreError> {
    let sub = declare(store, "work", "job.*").await?;
    let id = publish(store, event(store, "job.run")).await?;
    let first = claim_one(store, &sub, "the new delivery").await?;
    advance(Duration::from_secs(1)).await;
    let failed_at = store.clock().now();
    let at = failed_at + Duration::from_secs(5);
    settle(
        store,
        first.lease,
        Verdict::Retry {
            at,
            error: "timeout".into(),
        },
    )
    .await?;

    let rec = record(store, id).await?;
    assert_eq!(
        rec.status,
        EventStatus::Retrying,
        "an event waiting for a retry is retrying"
    );
    let d = delivery(&rec, &sub);
    assert_eq!(
        d.status,
        DeliveryStatus::Retrying,
        "a failed delivery waits as retrying"
    );
    assert_eq!(d.due, at, "the next attempt is due at the verdict's time");
    assert_eq!(d.last_error.as_deref(), Some("timeout"), "the error is recorded");
    assert_eq!(d.attempt_count, 1);
    let a = &d.attempts[0];
    assert_eq!(a.outcome, Some(AttemptOutcome::Failed), "attempt 1 failed");
    assert_eq!(a.error.as_deref(), Some("timeout"));
    assert_eq!(
        a.finished_at,
        Some(failed_at),
        "attempt 1 ended at the outcome's finished_at"
    );

    assert_nothing_claimable(store, &sub, "the retry is due in 5s").await?;
    let next = store.next_due(std::slice::from_ref(&sub), store.clock().now()).await?;
    assert_eq!(next, Some(at), "next_due reports the retry's due time");
    advance(Duration::from_millis(4_999)).await;
    assert_nothing_claimable(store, &sub, "the retry is due in 1ms").await?;
    advance(Duration::from_millis(1)).await;
    let second = claim_one(store, &sub, "the retry at its due time").await?;
    assert_eq!(
        second.lease.delivery, first.lease.delivery,
        "the same delivery is retried"
    );
    assert_eq!(second.attempt, 2, "the retry is attempt 2");
    assert_eq!(second.due, at, "the retry reports its due time");
    Ok(())
}

/// [`Verdict::Dead`] ends the delivery as dead with the reason as its last error; `retry` of the
/// dead delivery makes it pending and due now with its history kept, and it is claimed as the next
/// attempt; `retry` of an unknown delivery is not found.
pub async fn dead_verdict_ends_the_delivery_and_retry_requeues_it<S: Store + ?Sized>(
    store: &S,
) -> Result<(), StoreError> {
    let sub = declare(store, "work", "job.*").await?;
    let id = publish(store, event(store, "job.run")).await?;
    let first = claim_one(store, &sub, "the new delivery").await?;
    settle(
        store,
        first.lease,
        Verdict::Dead {
            reason: "bad payload".into(),
        },
    )
    .await?;

    let rec = record(store, id).await?;
    assert_eq!(
        rec.status,
        EventStatus::Dead,
        "an event with a dead delivery and no open one is dead"
    );
    let d = delivery(&rec, &sub);
    assert_eq!(d.status, DeliveryStatus::Dead);
    assert_eq!(
        d.last_error.as_deref(),
        Some("bad payload"),
        "the reason is the last error"
    );
    assert_eq!(d.attempts[0].outcome, Some(AttemptOutcome::Dead), "attempt 1 died");
    assert_eq!(d.attempts[0].error.as_deref(), Some("bad payload"));
    assert_nothing_claimable(store, &sub, "a dead delivery is never handed out").await?;
    assert_eq!(
        store.next_due(std::slice::from_ref(&sub), store.clock().now()).await?,
        None,
        "nothing is due"
    );
    assert_eq!(store.stats().await?.deliveries.dead, 1, "stats count the dead delivery");

    advance(Duration::from_secs(60)).await;
    let now = store.clock().now();
    assert_eq!(
        store.requeue(d.id).await?,
        Requeued::Requeued,
        "a dead delivery can be retried"
    );
    let rec = record(store, id).await?;
    assert_eq!(rec.status, EventStatus::Pending, "a requeued event is pending");
    let d = delivery(&rec, &sub);
    assert_eq!(d.status, DeliveryStatus::Pending, "a requeued delivery is pending");
    assert_eq!(d.due, now, "a requeued delivery is due now");
    assert_eq!(d.attempt_count, 1, "the attempt count is kept");
    assert_eq!(d.attempts.len(), 1, "the history is kept");
    let stats = store.stats().await?.deliveries;
    assert_eq!((stats.dead, stats.pending), (0, 1), "stats follow the requeue");

    let second = claim_one(store, &sub, "the requeued delivery").await?;
    assert_eq!(second.lease.delivery, d.id, "the requeued delivery is handed out");
    assert_eq!(second.attempt, 2, "the next attempt after a requeue is attempt 2");
    assert_eq!(second.due, now);
    assert_eq!(
        store.requeue(DeliveryId::new()).await?,
        Requeued::NotFound,
        "retry of an unknown delivery is not found"
    );
    Ok(())
}

/// `retry` of a delivery that is not dead answers [`Requeued::NotDead`] with its status and changes
/// nothing.
pub async fn retry_refuses_a_delivery_that_is_not_dead<S: Store + ?Sized>(store: &S) -> Result<(), StoreError> {
    let later = declare(store, "later", "later.*").await?;
    let work = declare(store, "work", "job.*").await?;
    let waiting = publish(store, scheduled(store, "later.run", Duration::from_secs(60))).await?;
    let done = publish(store, event(store, "job.done")).await?;
    advance(Duration::from_millis(1)).await;
    let running = publish(store, event(store, "job.running")).await?;
    let c = claim_one(store, &work, "job.done").await?;
    assert_eq!(c.event.id(), done, "the older job is claimed first");
    settle(store, c.lease, succeeded()).await?;
    claim_one(store, &work, "job.running").await?;
    let pending = publish(store, event(store, "job.pending")).await?;

    for (id, sub, status) in [
        (waiting, &later, DeliveryStatus::Scheduled),
        (done, &work, DeliveryStatus::Succeeded),
        (running, &work, DeliveryStatus::Active),
        (pending, &work, DeliveryStatus::Pending),
    ] {
        let before = record(store, id).await?;
        let d = delivery(&before, sub);
        assert_eq!(d.status, status, "the setup left this delivery {status}");
        assert_eq!(
            store.requeue(d.id).await?,
            Requeued::NotDead(status),
            "retry of a {status} delivery"
        );
        assert_eq!(
            record(store, id).await?,
            before,
            "a refused retry of a {status} delivery changes nothing"
        );
    }
    Ok(())
}

/// [`Verdict::Released`] makes the delivery pending again at once, due when it was, with the
/// attempt neither counted nor kept in the history.
pub async fn released_verdict_does_not_count_the_attempt<S: Store + ?Sized>(store: &S) -> Result<(), StoreError> {
    let sub = declare(store, "work", "job.*").await?;
    let t0 = store.clock().now();
    let id = publish(store, event(store, "job.run")).await?;
    advance(Duration::from_secs(1)).await;
    let first = claim_one(store, &sub, "the new delivery").await?;
    settle(store, first.lease, Verdict::Released).await?;

    let rec = record(store, id).await?;
    assert_eq!(rec.status, EventStatus::Pending, "a released event is pending");
    let d = delivery(&rec, &sub);
    assert_eq!(d.status, DeliveryStatus::Pending, "a released delivery is pending");
    assert_eq!(d.attempt_count, 0, "a released attempt is not counted");
    assert!(
        d.attempts.is_empty(),
        "a released attempt is not in the history: {:?}",
        d.attempts
    );
    assert_eq!(d.due, t0, "a released delivery keeps its due time");

    let again = claim_one(store, &sub, "the released delivery, at once").await?;
    assert_eq!(again.lease.delivery, first.lease.delivery);
    assert_eq!(again.attempt, 1, "the first counted attempt is still attempt 1");
    assert_eq!(again.due, t0);
    Ok(())
}
