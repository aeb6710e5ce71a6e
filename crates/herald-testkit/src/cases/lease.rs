//! Leases: a claimed delivery belongs to its worker until the lease runs out; then any claim may
//! take it again, so a crashed worker's deliveries are never lost.

use std::time::Duration;

use herald_core::{AttemptOutcome, DeliveryId, DeliveryStatus, EventParts, Lease, Priority, Store, StoreError};

use crate::fixture::{
    advance, assert_nothing_claimable, claim_one, declare, delivery, event, publish, record, settle, succeeded,
};

/// A leased delivery is not claimable while the lease holds; `next_due` reports when it runs out;
/// once it has, the next claim takes it again as a new attempt with a new token, and the history
/// shows the first attempt ended with the lease.
pub async fn leased_delivery_is_claimable_again_once_the_lease_runs_out<S: Store + ?Sized>(
    store: &S,
) -> Result<(), StoreError> {
    let sub = declare(store, "work", "job.*").await?;
    let t0 = store.clock().now();
    let id = publish(store, event(store, "job.run")).await?;
    let first = store.claim(&sub, 1, Duration::from_secs(10)).await?;
    let [first] = first.as_slice() else {
        panic!("expected to claim the one delivery, got {first:?}")
    };
    assert_eq!(
        first.lease_until,
        t0 + Duration::from_secs(10),
        "the lease runs 10s from the claim"
    );

    assert_nothing_claimable(store, &sub, "the delivery is leased").await?;
    let next = store.next_due(std::slice::from_ref(&sub), store.clock().now()).await?;
    assert_eq!(
        next,
        Some(first.lease_until),
        "next_due reports when the lease runs out"
    );
    advance(Duration::from_millis(9_999)).await;
    assert_nothing_claimable(store, &sub, "the lease holds for 1ms more").await?;

    advance(Duration::from_millis(1)).await;
    let second = claim_one(store, &sub, "the delivery whose lease ran out").await?;
    let lease_ran_out = store.clock().now();
    assert_eq!(second.event.id(), id);
    assert_eq!(
        second.lease.delivery, first.lease.delivery,
        "the same delivery is handed out again"
    );
    assert_ne!(
        second.lease.token, first.lease.token,
        "a new claim gets a new fencing token"
    );
    assert_eq!(second.attempt, 2, "the lost attempt counts: this is attempt 2");
    assert_eq!(second.due, t0, "the due time is unchanged");

    let rec = record(store, id).await?;
    let d = delivery(&rec, &sub);
    assert_eq!(d.status, DeliveryStatus::Active);
    assert_eq!(d.attempt_count, 2, "two attempts have started");
    assert_eq!(
        d.attempts.len(),
        2,
        "both attempts are in the history: {:?}",
        d.attempts
    );
    let lost = &d.attempts[0];
    assert_eq!(
        (lost.number, lost.started_at),
        (1, t0),
        "attempt 1 started at the first claim"
    );
    assert_eq!(
        lost.outcome,
        Some(AttemptOutcome::LeaseExpired),
        "attempt 1 ended with its lease"
    );
    assert_eq!(
        lost.finished_at,
        Some(lease_ran_out),
        "attempt 1 ended when its lease ran out"
    );
    let running = &d.attempts[1];
    assert_eq!(
        (running.number, running.started_at),
        (2, lease_ran_out),
        "attempt 2 started at the second claim"
    );
    assert_eq!(
        (running.finished_at, running.outcome),
        (None, None),
        "attempt 2 is running"
    );
    settle(store, second.lease, succeeded()).await
}

/// Deliveries whose lease ran out go back in line by the same rule as every due delivery:
/// priority first, then due time, whether their lease ran out or they were never claimed, even
/// when more leases ran out than one claim takes.
pub async fn leases_that_ran_out_go_back_in_line_by_priority<S: Store + ?Sized>(store: &S) -> Result<(), StoreError> {
    let sub = declare(store, "work", "job.*").await?;
    let with = |mut e: EventParts, p: Priority| {
        e.priority = p;
        e
    };
    let low = publish(store, with(event(store, "job.a"), Priority::LOW)).await?;
    let high = publish(store, with(event(store, "job.b"), Priority::HIGH)).await?;
    let normal = publish(store, event(store, "job.c")).await?;
    let lost = store.claim(&sub, 3, Duration::from_secs(10)).await?;
    assert_eq!(lost.len(), 3, "the three deliveries are leased: {lost:?}");
    advance(Duration::from_millis(5)).await;
    let fresh = publish(store, event(store, "job.d")).await?;
    advance(Duration::from_secs(10)).await;

    let first = store.claim(&sub, 2, Duration::from_secs(10)).await?;
    let got: Vec<_> = first.iter().map(|c| c.event.id()).collect();
    assert_eq!(
        got,
        vec![high, normal],
        "of the three lost leases and the fresh delivery, the high one goes first, then the normal one due earliest"
    );
    let second = store.claim(&sub, 2, Duration::from_secs(10)).await?;
    let got: Vec<_> = second.iter().map(|c| c.event.id()).collect();
    assert_eq!(
        got,
        vec![fresh, low],
        "then the fresh normal delivery before the low one whose lease ran out"
    );
    assert_eq!(second[1].attempt, 2, "the low delivery's lost attempt counts");
    Ok(())
}

/// `next_due` skips a lease that ran out at or before `after` and reports the next one.
pub async fn next_due_skips_leases_that_already_ran_out<S: Store + ?Sized>(store: &S) -> Result<(), StoreError> {
    let sub = declare(store, "work", "job.*").await?;
    let t0 = store.clock().now();
    publish(store, event(store, "job.a")).await?;
    publish(store, event(store, "job.b")).await?;
    let lease = Duration::from_secs(10);
    assert_eq!(store.claim(&sub, 1, lease).await?.len(), 1, "claim the first delivery");
    advance(Duration::from_secs(5)).await;
    assert_eq!(store.claim(&sub, 1, lease).await?.len(), 1, "claim the second delivery");
    advance(Duration::from_secs(6)).await;
    let next = store.next_due(std::slice::from_ref(&sub), store.clock().now()).await?;
    assert_eq!(
        next,
        Some(t0 + Duration::from_secs(15)),
        "the first lease ran out at t0+10s (not after now): the next time is the second lease's end"
    );
    Ok(())
}

/// `extend` pushes a held lease out from now: the delivery stays leased past its first lease and
/// becomes claimable when the extended lease runs out.
pub async fn extend_keeps_a_delivery_leased<S: Store + ?Sized>(store: &S) -> Result<(), StoreError> {
    let sub = declare(store, "work", "job.*").await?;
    let t0 = store.clock().now();
    publish(store, event(store, "job.run")).await?;
    let claimed = store.claim(&sub, 1, Duration::from_secs(10)).await?;
    let [first] = claimed.as_slice() else {
        panic!("expected to claim the one delivery, got {claimed:?}")
    };

    advance(Duration::from_secs(6)).await;
    let held = store.extend(&[first.lease], Duration::from_secs(10)).await?;
    assert_eq!(held, vec![true], "a held lease is extended");
    let until = t0 + Duration::from_secs(16);
    let next = store.next_due(std::slice::from_ref(&sub), store.clock().now()).await?;
    assert_eq!(next, Some(until), "next_due reports the extended lease's end");

    advance(Duration::from_secs(4)).await;
    assert_nothing_claimable(
        store,
        &sub,
        "the first lease ran out but the extension holds until t0+16s",
    )
    .await?;
    advance(Duration::from_millis(5_999)).await;
    assert_nothing_claimable(store, &sub, "the extension holds for 1ms more").await?;
    let held = store.extend(&[first.lease], Duration::from_secs(10)).await?;
    assert_eq!(held, vec![true], "a lease can be extended again while held");
    advance(Duration::from_millis(9_999)).await;
    assert_nothing_claimable(store, &sub, "the second extension holds for 1ms more").await?;
    advance(Duration::from_millis(1)).await;
    let second = claim_one(store, &sub, "the delivery once the extended lease ran out").await?;
    assert_eq!(second.lease.delivery, first.lease.delivery);
    assert_eq!(second.attempt, 2, "the lost attempt counts");
    Ok(())
}

/// `extend` answers per lease, in order: false for a lease lost to a newer claim, for a finished
/// delivery and for an unknown one, and it leaves those deliveries alone.
pub async fn extend_refuses_a_lost_lease<S: Store + ?Sized>(store: &S) -> Result<(), StoreError> {
    let sub = declare(store, "work", "job.*").await?;
    publish(store, event(store, "job.run")).await?;
    let claimed = store.claim(&sub, 1, Duration::from_secs(10)).await?;
    let [stale] = claimed.as_slice() else {
        panic!("expected to claim the one delivery, got {claimed:?}")
    };
    advance(Duration::from_secs(10)).await;
    let fresh = claim_one(store, &sub, "the delivery whose lease ran out").await?;
    let unknown = Lease {
        delivery: DeliveryId::new(),
        token: fresh.lease.token,
    };

    let held = store
        .extend(&[stale.lease, fresh.lease, unknown], Duration::from_secs(60))
        .await?;
    assert_eq!(held, vec![false, true, false], "only the current claim's lease is held");
    let rec = record(store, fresh.event.id()).await?;
    assert_eq!(
        delivery(&rec, &sub).attempt_count,
        2,
        "a refused extend changes nothing"
    );

    settle(store, fresh.lease, succeeded()).await?;
    let held = store.extend(&[fresh.lease], Duration::from_secs(60)).await?;
    assert_eq!(held, vec![false], "the lease of a finished delivery is not held");
    let rec = record(store, fresh.event.id()).await?;
    assert_eq!(
        delivery(&rec, &sub).status,
        DeliveryStatus::Succeeded,
        "extend does not revive a finished delivery"
    );
    Ok(())
}
