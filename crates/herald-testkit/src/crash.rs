//! What a run killed in the middle must show once another process has finished its work.
//!
//! Every backend's crash test (a worker process killed with SIGKILL mid-run, another taking over
//! once the leases run out) ends with the same check of at-least-once delivery, stated once here.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use herald_core::{AttemptOutcome, DeliveryStatus, EventId, Store, SubscriptionName};

/// Checks the history of `published` after a kill and a takeover, and returns the events whose
/// attempt was in flight at the kill.
///
/// `runs` counts how many times a handler ran on each event, in any process, as the processes'
/// logs tell (each start, or each end: an attempt in flight at the kill may have ended without
/// its outcome being recorded). For each event, the delivery of `subscription` must have succeeded, and:
///
/// - with no attempt lost to a lease that ran out, it was handled exactly once, in one attempt:
///   nothing acknowledged is handled again;
/// - otherwise exactly one attempt was lost (the one in flight at the kill), the next one started
///   only once that lease (`lease`) had run out, and the handler ran at most twice.
///
/// The kill must have come mid-run: some attempts were in flight.
///
/// # Panics
///
/// When any of this does not hold, or the store fails, naming the event and its delivery.
///
/// ```no_run
/// # async fn after_the_takeover(store: &herald_core::MemoryStore, published: Vec<herald_core::EventId>,
/// #     runs: std::collections::BTreeMap<herald_core::EventId, usize>) {
/// use std::time::Duration;
/// use herald_core::SubscriptionName;
///
/// let work = SubscriptionName::new("work").unwrap();
/// let in_flight =
///     herald_testkit::crash::check_at_least_once(store, &work, published, &runs, Duration::from_secs(2)).await;
/// println!("{} attempts were in flight at the kill and ran again", in_flight.len());
/// # }
/// ```
pub async fn check_at_least_once<S: Store + ?Sized>(
    store: &S,
    subscription: &SubscriptionName,
    published: impl IntoIterator<Item = EventId>,
    runs: &BTreeMap<EventId, usize>,
    lease: Duration,
) -> BTreeSet<EventId> {
    let mut in_flight = BTreeSet::new();
    for id in published {
        let record = store
            .get(id)
            .await
            .unwrap_or_else(|e| panic!("reading event {id}: {e}"))
            .unwrap_or_else(|| panic!("event {id} was published before the kill, yet is not in the store"));
        let d = record
            .deliveries
            .iter()
            .find(|d| &d.subscription == subscription)
            .unwrap_or_else(|| panic!("event {id} has no delivery for '{subscription}': {record:?}"));
        assert_eq!(d.status, DeliveryStatus::Succeeded, "{id}: {d:?}");
        let count = runs.get(&id).copied().unwrap_or(0);
        assert!(count >= 1, "event {id} was never handled");
        let lost = d
            .attempts
            .iter()
            .filter(|a| a.outcome == Some(AttemptOutcome::LeaseExpired))
            .count();
        if lost == 0 {
            assert_eq!(count, 1, "event {id} was acknowledged, yet handled {count} times");
            assert_eq!(d.attempt_count, 1, "{d:?}");
        } else {
            in_flight.insert(id);
            assert_eq!(lost, 1, "one attempt per event was in flight at the kill: {d:?}");
            assert_eq!(d.attempt_count, 2, "{d:?}");
            assert!(count <= 2, "event {id} in flight at the kill was handled {count} times");
            let (first, second) = (&d.attempts[0], &d.attempts[1]);
            assert!(
                second.started_at >= first.started_at + lease,
                "the attempt after the kill started only once the lease ran out: {d:?}"
            );
        }
    }
    // In flight = claimed by the killed process with no outcome recorded: its handler may have
    // been running, or done with the outcome not yet committed. Those, and only those, ran twice.
    assert!(
        !in_flight.is_empty(),
        "the kill came mid-run, so some attempts were in flight and ran again"
    );
    in_flight
}
