//! The writer's notes of the leases it gave: an outcome is judged by the file, whatever they say.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use herald_core::{Completion, DeliveryStatus, Event, Outcome, Store, Verdict};
use herald_sqlite::SqliteStore;
use herald_testkit::setup;

fn scratch(name: &str) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "herald-sqlite-leases-{}-{name}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A lease that ends where the writer cannot see it (here, another connection cancels the
/// delivery) makes the outcomes run with it undo and run again, reading their leases from the
/// file: the ended lease's success is stale and changes nothing, the other one applies.
#[test]
fn a_success_whose_lease_ended_behind_the_writer_is_stale() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = scratch("behind");
    let path = dir.join("herald.db");
    rt.block_on(async {
        let store = SqliteStore::open(&path).unwrap();
        let sub = setup::declare(&store, "work", "job.*").await;
        let events: Vec<Event> = (0..2)
            .map(|i| setup::due_now(&store, "job.run", format!("{i}")))
            .collect();
        store.publish(events).await.unwrap();
        let claimed = store.claim(&sub, 2, Duration::from_secs(30)).await.unwrap();
        assert_eq!(claimed.len(), 2);

        let gone = claimed[0].lease.delivery;
        let other = rusqlite::Connection::open(&path).unwrap();
        other.busy_timeout(Duration::from_secs(5)).unwrap();
        let n = other
            .execute(
                "UPDATE deliveries SET status = 3 WHERE id = ?1",
                [&gone.as_uuid().as_bytes()[..]],
            )
            .unwrap();
        assert_eq!(n, 1);
        drop(other);

        let now = store.clock().now();
        let outcomes = claimed
            .iter()
            .map(|c| Outcome {
                lease: c.lease,
                finished_at: now,
                verdict: Verdict::Succeeded { reply: None },
            })
            .collect();
        let out = store.complete(outcomes).await.unwrap();
        assert_eq!(out, vec![Completion::Stale, Completion::Applied]);
        let status = |i: usize| {
            let store = store.clone();
            let id = claimed[i].event.id();
            async move { store.get(id).await.unwrap().unwrap().deliveries[0].status }
        };
        assert_eq!(
            status(0).await,
            DeliveryStatus::Cancelled,
            "the ended lease's delivery is untouched"
        );
        assert_eq!(status(1).await, DeliveryStatus::Succeeded);
        drop(store);
    });
    std::fs::remove_dir_all(&dir).unwrap();
}
