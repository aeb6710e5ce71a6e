//! What a delivery shows once its due time has passed, before any claim moves it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use herald_core::{DeliveryStatus, EventFilter, EventStatus, Outcome, PageRequest, Store, Verdict};
use herald_sqlite::SqliteStore;
use herald_testkit::setup;

#[test]
fn a_retrying_delivery_whose_time_has_come_reads_as_pending() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        let store = SqliteStore::temporary().unwrap();
        let sub = setup::declare(&store, "work", "job.*").await;
        let e = setup::due_now(&store, "job.run", "{}");
        store.publish(vec![e.clone()]).await.unwrap();
        let claimed = store.claim(&sub, 1, Duration::from_secs(30)).await.unwrap();
        let at = store.clock().now() + Duration::from_secs(5);
        let outcome = Outcome {
            lease: claimed[0].lease,
            finished_at: store.clock().now(),
            verdict: Verdict::Retry {
                at,
                error: "later".into(),
            },
        };
        store.complete(vec![outcome]).await.unwrap();
        let by_sub = |status| EventFilter {
            subscription: Some(sub.clone()),
            status: Some(status),
            ..Default::default()
        };
        let found = |f: EventFilter| {
            let store = store.clone();
            async move { store.query(&f, PageRequest::first(10)).await.unwrap().items.len() }
        };

        let rec = store.get(e.id()).await.unwrap().unwrap();
        assert_eq!(rec.deliveries[0].status, DeliveryStatus::Retrying);
        assert_eq!(store.stats().await.unwrap().deliveries.retrying, 1);
        assert_eq!(found(by_sub(EventStatus::Retrying)).await, 1);

        tokio::time::advance(Duration::from_secs(5)).await;
        let rec = store.get(e.id()).await.unwrap().unwrap();
        assert_eq!(rec.deliveries[0].status, DeliveryStatus::Pending, "due: pending");
        assert_eq!(rec.status, EventStatus::Pending);
        let stats = store.stats().await.unwrap();
        assert_eq!((stats.deliveries.retrying, stats.deliveries.pending), (0, 1));
        assert_eq!(found(by_sub(EventStatus::Pending)).await, 1);
        assert_eq!(found(by_sub(EventStatus::Retrying)).await, 0);
        let by_status = EventFilter {
            status: Some(EventStatus::Pending),
            ..Default::default()
        };
        assert_eq!(found(by_status).await, 1);
        assert_eq!(store.backlog(), Some(1));
    });
}
