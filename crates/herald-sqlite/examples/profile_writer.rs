//! A deterministic workload for profiling the writer thread (e.g. under
//! `valgrind --tool=callgrind --separate-threads=yes`): publishes N events in batches of 1000,
//! then claims and acknowledges them in batches of 32, one call at a time. Prints the time of
//! each phase. `PROFILE_EVENTS` sets N (default 20000); `PROFILE_PHASE=publish` stops after
//! publishing, `PROFILE_PHASE=claim` claims without acknowledging.
#![allow(clippy::unwrap_used, missing_docs)]

use std::time::{Duration, Instant};

use herald_core::{Event, EventParts, Outcome, Pattern, Store, SubscriptionName, SubscriptionSpec, Topic, Verdict};
use herald_sqlite::SqliteStore;

fn main() {
    let n: usize = std::env::var("PROFILE_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let phase = std::env::var("PROFILE_PHASE").unwrap_or_default();
    let publish_only = phase == "publish";
    let claim_only = phase == "claim";
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = SqliteStore::temporary().unwrap();
        let sub = SubscriptionName::new("work").unwrap();
        store
            .declare(&SubscriptionSpec {
                name: sub.clone(),
                pattern: Pattern::new("work.item").unwrap(),
            })
            .await
            .unwrap();
        let topic = Topic::new("work.item").unwrap();
        let start = Instant::now();
        let mut i = 0;
        while i < n {
            let k = (n - i).min(1000);
            let now = store.clock().now();
            let events = (i..i + k)
                .map(|j| {
                    let mut e = EventParts::new(topic.clone(), serde_json::to_vec(&j).unwrap());
                    e.published_at = now;
                    e.deliver_at = now;
                    Event::from_parts(e)
                })
                .collect();
            store.publish(events).await.unwrap();
            i += k;
        }
        println!("publish {n}: {:?}", start.elapsed());
        if publish_only {
            return;
        }
        let start = Instant::now();
        let mut done = 0;
        while done < n {
            let claimed = store.claim(&sub, 32, Duration::from_secs(60)).await.unwrap();
            assert!(!claimed.is_empty());
            let now = store.clock().now();
            let outcomes: Vec<Outcome> = claimed
                .iter()
                .map(|c| Outcome {
                    lease: c.lease,
                    finished_at: now,
                    verdict: Verdict::Succeeded { reply: None },
                })
                .collect();
            done += outcomes.len();
            if claim_only {
                continue;
            }
            store.complete(outcomes).await.unwrap();
        }
        println!("claim+ack {n}: {:?}", start.elapsed());
        let stats = store.stats().await.unwrap();
        assert_eq!(stats.deliveries.succeeded + stats.deliveries.active, n as u64);
    });
}
