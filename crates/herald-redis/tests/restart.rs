//! The Redis server restarts under a running herald: a private `redis-server` (append-only file,
//! fsync on every write) on a free loopback port in a temp dir, killed with SIGKILL mid-run and
//! started again on the same files.
//!
//! While it is down, publish returns an error (never a silent loss); once it is back, the same
//! runtime (no restart of its own) goes on: every event whose publish returned `Ok` is handled,
//! and another node's wakeup listener resubscribes on its own (reporting `Lagged`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use herald_core::{Context, EventId, HandlerError, Herald, Store, Wakeup};
use herald_redis::RedisStore;
use tokio::sync::Notify;
use tokio::time::Instant;

/// How long any step may take before the test fails instead of hanging.
const DEADLINE: Duration = Duration::from_secs(60);

#[derive(Default)]
struct Shared {
    acknowledged: Mutex<Vec<EventId>>,
    failed: AtomicU64,
    handled: Mutex<BTreeSet<EventId>>,
    changed: Notify,
    stop: AtomicBool,
}

impl Shared {
    fn acknowledged(&self) -> usize {
        self.acknowledged.lock().unwrap().len()
    }

    /// Waits (with a deadline) until `cond` holds; re-checked whenever something changes.
    async fn until(&self, what: &str, cond: impl Fn(&Shared) -> bool) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let changed = self.changed.notified();
            if cond(self) {
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                tokio::time::timeout(left, changed).await.is_ok() || cond(self),
                "waiting for {what}: {} acknowledged, {} failed, {} handled",
                self.acknowledged(),
                self.failed.load(Ordering::SeqCst),
                self.handled.lock().unwrap().len()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_loses_no_acknowledged_event() {
    if !common::redis_server_available("a_redis_restart_loses_no_acknowledged_event") {
        return;
    }
    let dir = common::TempDir::new("restart");
    let mut server = common::Server::start(
        &dir.0,
        &["--appendonly", "yes", "--appendfsync", "always", "--save", ""],
    );
    server.ready().await;

    let store = RedisStore::builder(server.url())
        .prefix("restart")
        .timeouts(Some(Duration::from_secs(2)), Some(Duration::from_secs(2)))
        .connect()
        .await
        .unwrap();
    let herald = Herald::builder()
        .store(store)
        .workers(8)
        .lease(Duration::from_secs(2))
        .unbounded()
        .system_events(false)
        .build()
        .await
        .unwrap();
    // A second node that only listens: its wakeup connection must come back on its own too.
    let observer = RedisStore::builder(server.url())
        .prefix("restart")
        .timeouts(Some(Duration::from_secs(2)), Some(Duration::from_secs(2)))
        .connect()
        .await
        .unwrap();
    let mut seen = observer.wakeups();
    let shared = Arc::new(Shared::default());
    let on_handle = shared.clone();
    herald
        .subscribe("work", "job.run")
        .handle(move |_: u64, ctx: Context| {
            let shared = on_handle.clone();
            async move {
                shared.handled.lock().unwrap().insert(ctx.event().id());
                shared.changed.notify_waiters();
                Ok::<_, HandlerError>(())
            }
        })
        .await
        .unwrap();

    let publisher = {
        let herald = herald.clone();
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut n = 0u64;
            while !shared.stop.load(Ordering::SeqCst) {
                n += 1;
                match herald.publish("job.run", &n).await {
                    Ok(id) => shared.acknowledged.lock().unwrap().push(id),
                    Err(_) => {
                        shared.failed.fetch_add(1, Ordering::SeqCst);
                        // Do not spin while the server is down.
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
                shared.changed.notify_waiters();
            }
        })
    };

    let t0 = Instant::now();
    shared
        .until("300 publishes before the restart", |s| s.acknowledged() >= 300)
        .await;
    server.kill();
    let before = shared.acknowledged();
    shared
        .until("publishes to fail while Redis is down", |s| {
            s.failed.load(Ordering::SeqCst) >= 2
        })
        .await;
    println!("{:?}: publishes to fail while Redis is down", t0.elapsed());
    let during = shared.acknowledged() - before;
    assert!(during <= 1, "publishes succeeded while Redis was down: {during}");
    server.restart();
    server.ready().await;
    shared
        .until("300 publishes after the restart", |s| s.acknowledged() >= before + 300)
        .await;
    println!("{:?}: 300 publishes after the restart", t0.elapsed());
    let resubscribed = tokio::time::timeout(DEADLINE, async {
        let mut lagged = false;
        while let Some(w) = seen.next().await {
            match w {
                Wakeup::Lagged => lagged = true,
                Wakeup::Due(_) if lagged => return true,
                _ => {}
            }
        }
        false
    })
    .await;
    assert_eq!(
        resubscribed.ok(),
        Some(true),
        "the other node's wakeups resume after the restart (Lagged, then due times)"
    );
    shared.stop.store(true, Ordering::SeqCst);
    publisher.await.unwrap();

    let acknowledged: BTreeSet<EventId> = shared.acknowledged.lock().unwrap().iter().copied().collect();
    shared
        .until("every acknowledged event to be handled", |s| {
            acknowledged.is_subset(&s.handled.lock().unwrap())
        })
        .await;
    println!("{:?}: every acknowledged event to be handled", t0.elapsed());
    println!(
        "{} acknowledged, {} failed while Redis was down, all handled by the same runtime",
        acknowledged.len(),
        shared.failed.load(Ordering::SeqCst)
    );
    for id in &acknowledged {
        assert!(herald.get(*id).await.unwrap().is_some(), "event {id} is in the store");
    }
    herald.shutdown(Duration::from_secs(5)).await;
}
