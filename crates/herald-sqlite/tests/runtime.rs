//! The runtime over the SQLite store: delays fire on their millisecond (on tokio's paused clock),
//! retries and dead letters are recorded, requests are answered, and `.sqlite(path)` reports open
//! errors from `build()`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use herald_core::{Backoff, Context, DeliveryStatus, Error, EventStatus, HandlerError, Herald, StoreError, Timestamp};
use herald_sqlite::{SqliteBuilderExt, SqliteStore};
use tokio::sync::mpsc;

#[tokio::test(start_paused = true)]
async fn a_delayed_event_fires_on_its_due_time_on_the_paused_clock() {
    let herald = Herald::builder()
        .store(SqliteStore::temporary().unwrap())
        .build()
        .await
        .unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let clock = herald.clock();
    herald
        .subscribe("reminders", "remind.*")
        .handle(move |n: u32, _ctx: Context| {
            let tx = tx.clone();
            async move {
                tx.send((n, clock.now())).unwrap();
                Ok::<_, HandlerError>(())
            }
        })
        .await
        .unwrap();
    let published = herald.clock().now();
    herald
        .publish("remind.pay", &1u32)
        .delay(Duration::from_secs(3600))
        .await
        .unwrap();
    herald.publish("remind.now", &2u32).await.unwrap();
    let (n, at) = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 2, "the immediate event comes first");
    assert!(
        at.millis_since(published) < 5,
        "at once: {}ms",
        at.millis_since(published)
    );
    let (n, at) = tokio::time::timeout(Duration::from_secs(7200), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 1);
    let late = at.millis_since(published + Duration::from_secs(3600));
    assert!(
        (0..5).contains(&late),
        "the delayed event fires on its due time, {late}ms late"
    );
    herald.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_dead_letters_and_replies_are_recorded() {
    let herald = Herald::builder()
        .store(SqliteStore::temporary().unwrap())
        .build()
        .await
        .unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    let seen = calls.clone();
    herald
        .subscribe("flaky", "job.flaky")
        .max_attempts(3)
        .backoff(Backoff::fixed(Duration::from_millis(10)))
        .handle(move |_: u32, ctx: Context| {
            seen.fetch_add(1, Ordering::SeqCst);
            async move {
                if ctx.attempt() < 3 {
                    Err(HandlerError::new("not yet"))
                } else {
                    Ok(())
                }
            }
        })
        .await
        .unwrap();
    herald
        .subscribe("broken", "job.broken")
        .handle(|_: u32, _ctx: Context| async { Err::<(), _>(HandlerError::permanent("bad input")) })
        .await
        .unwrap();
    herald
        .subscribe("math", "math.double")
        .handle(|n: u64, _ctx: Context| async move { Ok::<_, HandlerError>(n * 2) })
        .await
        .unwrap();

    let flaky = herald.publish("job.flaky", &1u32).await.unwrap();
    let broken = herald.publish("job.broken", &1u32).await.unwrap();
    let answer: u64 = herald
        .request("math.double", &21u64)
        .timeout(Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(answer, 42);

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let a = herald.get(flaky).await.unwrap().unwrap();
        let b = herald.get(broken).await.unwrap().unwrap();
        if a.status.is_finished() && b.status.is_finished() {
            assert_eq!(a.status, EventStatus::Succeeded);
            let d = &a.deliveries[0];
            assert_eq!((d.attempt_count, d.attempts.len()), (3, 3), "{d:?}");
            assert_eq!(b.status, EventStatus::Dead);
            assert_eq!(b.deliveries[0].status, DeliveryStatus::Dead);
            assert_eq!(b.deliveries[0].last_error.as_deref(), Some("bad input"));
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "not finished: {a:?} {b:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    let dead = herald.dead_letters().limit(10).await.unwrap();
    assert_eq!(dead.items.len(), 1);
    herald.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn sqlite_on_the_builder_reports_open_errors_from_build() {
    let dir = std::env::temp_dir().join(format!("herald-sqlite-builder-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let blocker = dir.join("file");
    std::fs::write(&blocker, b"x").unwrap();
    let err = Herald::builder()
        .sqlite(blocker.join("herald.db"))
        .build()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Store(StoreError::Unavailable { .. })), "{err:?}");
    assert!(err.to_string().contains("cannot create or open"), "{err}");

    let herald = Herald::builder().sqlite(dir.join("ok.db")).build().await.unwrap();
    let id = herald.publish("audit.login", &"x").await.unwrap();
    let rec = herald.get(id).await.unwrap().unwrap();
    assert_eq!(rec.status, EventStatus::Unrouted);
    assert!(rec.event.published_at() > Timestamp::EPOCH);
    herald.shutdown(Duration::from_secs(1)).await;
    drop(herald);
    std::fs::remove_dir_all(&dir).unwrap();
}
