//! Completion fencing: an outcome counts only under the lease it was claimed with.

use std::time::Duration;

use herald_core::{AttemptOutcome, Completion, DeliveryId, DeliveryStatus, Lease, Outcome, Store, StoreError, Verdict};

use crate::fixture::{advance, claim_one, complete, declare, delivery, event, publish, record, succeeded};

/// After a lease runs out and the delivery is claimed again, the first worker's outcome is
/// [`Completion::Stale`] and changes nothing, whatever its verdict; the current worker's outcome
/// applies; outcomes for a finished or unknown delivery are stale; a batch answers in order.
pub async fn completion_is_fenced_by_the_lease_token<S: Store + ?Sized>(store: &S) -> Result<(), StoreError> {
    let sub = declare(store, "work", "job.*").await?;
    let id = publish(store, event(store, "job.run")).await?;
    let claimed = store.claim(&sub, 1, Duration::from_secs(10)).await?;
    let [stale] = claimed.as_slice() else {
        panic!("expected to claim the one delivery, got {claimed:?}")
    };
    advance(Duration::from_secs(10)).await;
    let fresh = claim_one(store, &sub, "the delivery whose lease ran out").await?;
    let before = record(store, id).await?;

    let later = store.clock().now() + Duration::from_secs(60);
    for verdict in [
        succeeded(),
        Verdict::Retry {
            at: later,
            error: "late worker".into(),
        },
        Verdict::Dead {
            reason: "late worker".into(),
        },
        Verdict::Released,
    ] {
        let what = format!("{verdict:?}");
        let c = complete(store, stale.lease, verdict).await?;
        assert_eq!(
            c,
            Completion::Stale,
            "the first worker's {what} must be refused: its lease was lost"
        );
        assert_eq!(record(store, id).await?, before, "a stale {what} must change nothing");
    }

    let now = store.clock().now();
    let outcome = |lease: Lease| Outcome {
        lease,
        finished_at: now,
        verdict: succeeded(),
    };
    let unknown = Lease {
        delivery: DeliveryId::new(),
        token: fresh.lease.token,
    };
    let out = store
        .complete(vec![outcome(stale.lease), outcome(fresh.lease), outcome(unknown)])
        .await?;
    assert_eq!(
        out,
        vec![Completion::Stale, Completion::Applied, Completion::Stale],
        "one answer per outcome, in order: only the current lease applies"
    );
    let rec = record(store, id).await?;
    let d = delivery(&rec, &sub);
    assert_eq!(
        d.status,
        DeliveryStatus::Succeeded,
        "the current worker's success applied"
    );
    assert_eq!(d.attempt_count, 2);
    assert_eq!(
        d.attempts[1].outcome,
        Some(AttemptOutcome::Succeeded),
        "attempt 2 succeeded"
    );

    let again = complete(store, fresh.lease, Verdict::Dead { reason: "twice".into() }).await?;
    assert_eq!(
        again,
        Completion::Stale,
        "a second outcome for a finished attempt is stale"
    );
    let rec = record(store, id).await?;
    assert_eq!(
        delivery(&rec, &sub).status,
        DeliveryStatus::Succeeded,
        "a finished delivery stays finished"
    );
    Ok(())
}
