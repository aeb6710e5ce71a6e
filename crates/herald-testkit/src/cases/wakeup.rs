//! Wakeups: every change that makes a delivery due tells listeners when.

use std::time::Duration;

use herald_core::{Event, Store, StoreError, Verdict, Wakeup};

use crate::fixture::{advance, claim_one, declare, event, next_wakeup, publish, scheduled, settle};

/// Publishing wakes every listener with [`Wakeup::Due`] at the event's `deliver_at`: now for an
/// immediate event, its exact due time for a scheduled one.
pub async fn publish_wakes_with_the_due_time<S: Store + ?Sized>(store: &S) -> Result<(), StoreError> {
    declare(store, "work", "job.*").await?;
    let mut first = store.wakeups();
    let immediate = event(store, "job.now");
    let now = immediate.deliver_at;
    publish(store, immediate).await?;
    assert_eq!(
        next_wakeup(&mut first).await,
        Some(Wakeup::Due(now)),
        "an immediate event is due now"
    );

    let mut second = store.wakeups();
    let later = scheduled(store, "job.later", Duration::from_secs(5));
    let due = later.deliver_at;
    publish(store, later).await?;
    assert_eq!(
        next_wakeup(&mut first).await,
        Some(Wakeup::Due(due)),
        "a scheduled event is due at deliver_at"
    );
    assert_eq!(
        next_wakeup(&mut second).await,
        Some(Wakeup::Due(due)),
        "every listener is woken"
    );
    Ok(())
}

/// One batch of an immediate and a scheduled event wakes listeners with both times: "due now" alone
/// would leave a timer that has nothing later to wait for asleep past the scheduled one.
pub async fn a_batch_due_now_and_later_wakes_with_both_times<S: Store + ?Sized>(store: &S) -> Result<(), StoreError> {
    declare(store, "work", "job.*").await?;
    let mut wakeups = store.wakeups();
    let immediate = event(store, "job.now");
    let now = immediate.deliver_at;
    let later = scheduled(store, "job.later", Duration::from_secs(5));
    let due = later.deliver_at;
    store
        .publish(vec![Event::from_parts(immediate), Event::from_parts(later)])
        .await?;
    let mut seen = Vec::new();
    while let Some(w) = next_wakeup(&mut wakeups).await {
        seen.push(w);
        if seen.contains(&Wakeup::Due(due)) {
            break;
        }
    }
    assert!(
        seen.iter().any(|w| matches!(w, Wakeup::Due(t) if *t <= now)),
        "the immediate event is due now: {seen:?}"
    );
    assert!(
        seen.contains(&Wakeup::Due(due)),
        "the scheduled event's time must be announced too: {seen:?}"
    );
    Ok(())
}

/// A retry verdict wakes with [`Wakeup::Due`] at the retry's time, a released delivery with a due
/// time no later than now, and a requeued dead delivery with now.
pub async fn retry_release_and_requeue_wake_with_the_due_time<S: Store + ?Sized>(store: &S) -> Result<(), StoreError> {
    let sub = declare(store, "work", "job.*").await?;
    publish(store, event(store, "job.run")).await?;
    let c = claim_one(store, &sub, "the job").await?;
    let mut wakeups = store.wakeups();
    let at = store.clock().now() + Duration::from_secs(30);
    settle(
        store,
        c.lease,
        Verdict::Retry {
            at,
            error: "busy".into(),
        },
    )
    .await?;
    assert_eq!(
        next_wakeup(&mut wakeups).await,
        Some(Wakeup::Due(at)),
        "a retry is due at its time"
    );

    advance(Duration::from_secs(30)).await;
    let c = claim_one(store, &sub, "the retry").await?;
    settle(store, c.lease, Verdict::Released).await?;
    let now = store.clock().now();
    match next_wakeup(&mut wakeups).await {
        Some(Wakeup::Due(t)) => assert!(t <= now, "a released delivery is due at once, got {t} after now {now}"),
        other => panic!("a release must wake with Due, got {other:?}"),
    }

    let c = claim_one(store, &sub, "the released job").await?;
    settle(store, c.lease, Verdict::Dead { reason: "bad".into() }).await?;
    advance(Duration::from_secs(1)).await;
    let now = store.clock().now();
    store.requeue(c.lease.delivery).await?;
    assert_eq!(
        next_wakeup(&mut wakeups).await,
        Some(Wakeup::Due(now)),
        "a requeued delivery is due now"
    );
    Ok(())
}
