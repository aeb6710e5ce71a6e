//! The in-process bus, end to end on tokio's paused clock: every timing assertion is exact.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use herald_core::*;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::time::{timeout, Instant};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Order {
    id: u64,
}

async fn bus() -> Herald {
    Herald::builder().system_events(false).build().await.unwrap()
}

/// What a handler saw: the payload, the attempt and when (store clock).
type Seen<T> = mpsc::UnboundedReceiver<(T, u32, Timestamp)>;

async fn recorder<T>(herald: &Herald, name: &str, pattern: &str) -> Seen<T>
where
    T: serde::de::DeserializeOwned + Send + 'static,
{
    let (tx, rx) = mpsc::unbounded_channel();
    let clock = herald.clock();
    herald
        .subscribe(name, pattern)
        .handle(move |v: T, ctx: Context| {
            let tx = tx.clone();
            async move {
                let _ = tx.send((v, ctx.attempt(), clock.now()));
                Ok::<_, HandlerError>(())
            }
        })
        .await
        .unwrap();
    rx
}

async fn next<T>(rx: &mut mpsc::UnboundedReceiver<T>) -> T {
    timeout(Duration::from_secs(3600), rx.recv())
        .await
        .expect("nothing arrived within an hour of paused time")
        .expect("channel closed")
}

async fn settle(herald: &Herald, id: EventId) -> EventRecord {
    for _ in 0..100_000 {
        let rec = herald.get(id).await.unwrap().expect("event exists");
        if rec.status.is_finished() {
            return rec;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("event {id} did not finish");
}

#[tokio::test(start_paused = true)]
async fn publish_reaches_every_matching_subscription_with_a_typed_payload() {
    let herald = bus().await;
    let mut exact = recorder::<Order>(&herald, "exact", "order.paid").await;
    let mut one = recorder::<Order>(&herald, "one", "order.*").await;
    let mut rest = recorder::<Order>(&herald, "rest", "order.>").await;
    let mut other = recorder::<Order>(&herald, "other", "user.*").await;

    let id = herald.publish("order.paid", &Order { id: 7 }).await.unwrap();
    for rx in [&mut exact, &mut one, &mut rest] {
        assert_eq!(next(rx).await.0, Order { id: 7 });
    }
    let rec = settle(&herald, id).await;
    assert_eq!(rec.status, EventStatus::Succeeded);
    assert_eq!(rec.deliveries.len(), 3);
    assert!(rec
        .deliveries
        .iter()
        .all(|d| d.attempts.len() == 1 && d.attempts[0].outcome == Some(AttemptOutcome::Succeeded)));
    assert!(other.try_recv().is_err());

    let unrouted = herald.publish("nobody.listens", &1).await.unwrap();
    assert_eq!(
        herald.get(unrouted).await.unwrap().unwrap().status,
        EventStatus::Unrouted
    );
}

#[tokio::test(start_paused = true)]
async fn invalid_topics_and_options_are_clear_errors() {
    let herald = bus().await;
    let err = herald.publish("Order Paid", &1).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("topic 'Order Paid' is invalid: use lowercase dotted names such as 'order.paid'"),
        "{err}"
    );
    let err = herald
        .subscribe("x", "order.>.x")
        .handle(|_: u8, _| async { Ok(()) })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("'>' may only be the last segment"), "{err}");
    let err = herald
        .subscribe("x", "a")
        .max_attempts(0)
        .handle(|_: u8, _| async { Ok(()) })
        .await
        .unwrap_err();
    assert!(matches!(err, SubscribeError::Options(_)));
    herald
        .subscribe("dup", "a")
        .handle(|_: u8, _| async { Ok(()) })
        .await
        .unwrap();
    let err = herald
        .subscribe("dup", "b")
        .handle(|_: u8, _| async { Ok(()) })
        .await
        .unwrap_err();
    assert!(matches!(err, SubscribeError::Duplicate(_)), "{err}");
}

#[tokio::test(start_paused = true)]
async fn a_delay_fires_on_its_millisecond() {
    let herald = bus().await;
    let mut rx = recorder::<u32>(&herald, "late", "job.run").await;
    let start = herald.clock().now();
    herald
        .publish("job.run", &1)
        .delay(Duration::from_millis(1_537))
        .await
        .unwrap();
    herald
        .publish("job.run", &2)
        .at(start + Duration::from_millis(250))
        .await
        .unwrap();
    let (v, _, at) = next(&mut rx).await;
    assert_eq!((v, at), (2, start + Duration::from_millis(250)));
    let (v, _, at) = next(&mut rx).await;
    assert_eq!((v, at), (1, start + Duration::from_millis(1_537)));
}

#[tokio::test(start_paused = true)]
async fn retries_follow_exponential_backoff() {
    let herald = bus().await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let clock = herald.clock();
    herald
        .subscribe("flaky", "job.flaky")
        .max_attempts(4)
        .backoff(
            Backoff::exponential(Duration::from_millis(100))
                .cap(Duration::from_millis(250))
                .no_jitter(),
        )
        .handle(move |_: u8, ctx: Context| {
            let tx = tx.clone();
            async move {
                let _ = tx.send((ctx.attempt(), clock.now()));
                Err::<(), _>(HandlerError::msg("downstream is down"))
            }
        })
        .await
        .unwrap();
    let t0 = herald.clock().now();
    let id = herald.publish("job.flaky", &0).await.unwrap();
    let mut times = Vec::new();
    for _ in 0..4 {
        times.push(next(&mut rx).await);
    }
    let offsets: Vec<i64> = times.iter().map(|(_, t)| t.millis_since(t0)).collect();
    // 100 ms, then 200 ms, then capped at 250 ms.
    assert_eq!(offsets, vec![0, 100, 300, 550]);
    let rec = settle(&herald, id).await;
    assert_eq!(rec.status, EventStatus::Dead);
    let d = &rec.deliveries[0];
    assert_eq!(d.attempt_count, 4);
    assert_eq!(
        d.last_error.as_deref(),
        Some("gave up after 4 attempts: downstream is down")
    );
    assert_eq!(
        d.attempts.iter().map(|a| a.outcome).collect::<Vec<_>>(),
        vec![
            Some(AttemptOutcome::Failed),
            Some(AttemptOutcome::Failed),
            Some(AttemptOutcome::Failed),
            Some(AttemptOutcome::Dead)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn jittered_backoff_stays_under_its_ceiling() {
    let herald = bus().await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let clock = herald.clock();
    herald
        .subscribe("jitter", "job.jitter")
        .max_attempts(6)
        .backoff(Backoff::exponential(Duration::from_millis(100)))
        .handle(move |_: u8, _ctx: Context| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(clock.now());
                Err::<(), _>(HandlerError::msg("no"))
            }
        })
        .await
        .unwrap();
    herald.publish("job.jitter", &0).await.unwrap();
    let mut prev = next(&mut rx).await;
    for attempt in 1..6u32 {
        let t = next(&mut rx).await;
        let gap = t.millis_since(prev);
        let ceiling = 100 * (1 << (attempt - 1));
        assert!(
            (0..=ceiling).contains(&gap),
            "gap {gap} after attempt {attempt} exceeds {ceiling}"
        );
        prev = t;
    }
}

#[tokio::test(start_paused = true)]
async fn a_timed_out_attempt_is_a_failed_attempt() {
    let herald = bus().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    herald
        .subscribe("slow", "job.slow")
        .max_attempts(2)
        .backoff(Backoff::fixed(Duration::from_millis(10)))
        .timeout(Duration::from_secs(1))
        .handle(move |_: u8, _ctx: Context| {
            c.fetch_add(1, Ordering::SeqCst);
            async move {
                tokio::time::sleep(Duration::from_secs(10)).await;
                Ok::<_, HandlerError>(())
            }
        })
        .await
        .unwrap();
    let t0 = herald.clock().now();
    let id = herald.publish("job.slow", &0).await.unwrap();
    let rec = settle(&herald, id).await;
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    let d = &rec.deliveries[0];
    assert_eq!(d.status, DeliveryStatus::Dead);
    assert_eq!(
        d.last_error.as_deref(),
        Some("gave up after 2 attempts: the attempt timed out after 1s")
    );
    assert_eq!(d.attempts[0].finished_at, Some(t0 + Duration::from_secs(1)));
    assert_eq!(d.attempts[1].started_at, t0 + Duration::from_millis(1_010));
}

#[tokio::test(start_paused = true)]
async fn cancel_stops_a_scheduled_event() {
    let herald = bus().await;
    let mut rx = recorder::<u8>(&herald, "c", "job.c").await;
    let id = herald
        .publish("job.c", &1)
        .delay(Duration::from_secs(10))
        .await
        .unwrap();
    let keep = herald
        .publish("job.c", &2)
        .delay(Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(herald.cancel(id).await.unwrap(), Cancelled::Ended(1));
    assert_eq!(herald.cancel(id).await.unwrap(), Cancelled::TooLate);
    assert_eq!(herald.cancel(EventId::new()).await.unwrap(), Cancelled::NotFound);
    assert_eq!(next(&mut rx).await.0, 2);
    assert_eq!(herald.get(id).await.unwrap().unwrap().status, EventStatus::Cancelled);
    assert_eq!(herald.get(keep).await.unwrap().unwrap().status, EventStatus::Succeeded);
}

#[tokio::test(start_paused = true)]
async fn an_expired_event_is_never_handled() {
    let herald = bus().await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let sub = herald
        .subscribe("exp", "job.exp")
        .handle(move |v: u8, _ctx: Context| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(v);
                Ok::<_, HandlerError>(())
            }
        })
        .await
        .unwrap();
    sub.pause();
    let id = herald.publish("job.exp", &1).ttl(Duration::from_secs(1)).await.unwrap();
    let live = herald
        .publish("job.exp", &2)
        .ttl(Duration::from_secs(60))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    sub.resume();
    assert_eq!(next(&mut rx).await, 2);
    let rec = settle(&herald, id).await;
    assert_eq!(rec.status, EventStatus::Expired);
    assert_eq!(rec.deliveries[0].attempt_count, 0);
    assert_eq!(settle(&herald, live).await.status, EventStatus::Succeeded);
    assert!(rx.try_recv().is_err());
}

#[tokio::test(start_paused = true)]
async fn priorities_decide_the_order_among_due_deliveries() {
    let herald = bus().await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let sub = herald
        .subscribe("prio", "job.prio")
        .concurrency(1)
        .handle(move |v: String, _ctx: Context| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(v);
                Ok::<_, HandlerError>(())
            }
        })
        .await
        .unwrap();
    sub.pause();
    for (name, p) in [
        ("low", Priority::LOW),
        ("normal", Priority::NORMAL),
        ("critical", Priority::CRITICAL),
        ("high", Priority::HIGH),
        ("normal2", Priority::NORMAL),
    ] {
        herald.publish("job.prio", &name).priority(p).await.unwrap();
    }
    sub.resume();
    let mut order = Vec::new();
    for _ in 0..5 {
        order.push(next(&mut rx).await);
    }
    assert_eq!(order, vec!["critical", "high", "normal", "normal2", "low"]);
}

#[tokio::test(start_paused = true)]
async fn concurrency_limits_are_never_exceeded() {
    let herald = Herald::builder().system_events(false).workers(5).build().await.unwrap();
    let running = Arc::new(AtomicUsize::new(0));
    let peak_a = Arc::new(AtomicUsize::new(0));
    let peak_all = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    for (name, limit) in [("a", 3usize), ("b", 100)] {
        let running = running.clone();
        let peak_a = peak_a.clone();
        let peak_all = peak_all.clone();
        let done = done.clone();
        let mine = Arc::new(AtomicUsize::new(0));
        herald
            .subscribe(name, "job.many")
            .concurrency(limit)
            .handle(move |_: u32, _ctx: Context| {
                let (running, peak_a, peak_all, done, mine) = (
                    running.clone(),
                    peak_a.clone(),
                    peak_all.clone(),
                    done.clone(),
                    mine.clone(),
                );
                async move {
                    let now_all = running.fetch_add(1, Ordering::SeqCst) + 1;
                    peak_all.fetch_max(now_all, Ordering::SeqCst);
                    let now_mine = mine.fetch_add(1, Ordering::SeqCst) + 1;
                    if limit == 3 {
                        peak_a.fetch_max(now_mine, Ordering::SeqCst);
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    mine.fetch_sub(1, Ordering::SeqCst);
                    running.fetch_sub(1, Ordering::SeqCst);
                    done.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, HandlerError>(())
                }
            })
            .await
            .unwrap();
    }
    herald
        .publish_batch((0..30).map(|i| Message::json("job.many", &i)))
        .await
        .unwrap();
    while done.load(Ordering::SeqCst) < 60 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        peak_a.load(Ordering::SeqCst),
        3,
        "subscription a runs at most 3 at once, and does reach 3"
    );
    assert_eq!(
        peak_all.load(Ordering::SeqCst),
        5,
        "the pool runs at most 5 at once, and does reach 5"
    );
}

/// On two threads, attempts end on both and give their units of the limit back on their own
/// thread's line: the limit still holds, and no unit given back is lost (every event runs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_limits_hold_across_threads() {
    const EVENTS: usize = 20_000;
    let herald = Herald::builder()
        .system_events(false)
        .workers(16)
        .build()
        .await
        .unwrap();
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let all_done = Arc::new(tokio::sync::Notify::new());
    let (r, p, d, n) = (running.clone(), peak.clone(), done.clone(), all_done.clone());
    herald
        .subscribe("limited", "job.quick")
        .concurrency(3)
        .handle(move |_: u32, _ctx: Context| {
            let (running, peak, done, all_done) = (r.clone(), p.clone(), d.clone(), n.clone());
            async move {
                peak.fetch_max(running.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
                // Let the other attempts of the moment start, if the limit let them.
                for _ in 0..3 {
                    tokio::task::yield_now().await;
                }
                running.fetch_sub(1, Ordering::SeqCst);
                if done.fetch_add(1, Ordering::SeqCst) + 1 == EVENTS {
                    all_done.notify_one();
                }
                Ok::<_, HandlerError>(())
            }
        })
        .await
        .unwrap();
    let publishers: Vec<_> = (0..4)
        .map(|p| {
            let herald = herald.clone();
            tokio::spawn(async move {
                for i in (p..EVENTS).step_by(4) {
                    herald.publish("job.quick", &(i as u32)).await.unwrap();
                }
            })
        })
        .collect();
    for p in publishers {
        p.await.unwrap();
    }
    let finished = all_done.notified();
    if done.load(Ordering::SeqCst) < EVENTS {
        timeout(Duration::from_secs(60), finished)
            .await
            .unwrap_or_else(|_| panic!("only {} of {EVENTS} handled", done.load(Ordering::SeqCst)));
    }
    let peak = peak.load(Ordering::SeqCst);
    assert!(peak <= 3, "at most 3 at once, saw {peak}");
    let report = herald.shutdown(Duration::from_secs(5)).await;
    assert_eq!(report.unfinished, Some(0));
}

#[tokio::test(start_paused = true)]
async fn backpressure_waits_or_fails_when_full() {
    let herald = Herald::builder()
        .system_events(false)
        .max_pending(3)
        .build()
        .await
        .unwrap();
    let mut rx = recorder::<u8>(&herald, "bp", "job.bp").await;
    // Pause by saturating: the recorder is fast, so publish to a topic nobody drains first.
    let (tx, mut gate) = mpsc::unbounded_channel::<()>();
    let gate_tx = tx.clone();
    let slow = herald
        .subscribe("held", "job.held")
        .handle(move |_: u8, _ctx: Context| {
            let _ = gate_tx.send(());
            async { Ok::<_, HandlerError>(()) }
        })
        .await
        .unwrap();
    slow.pause();
    for i in 0..3 {
        herald.publish("job.held", &i).await.unwrap();
    }
    let err = herald.try_publish("job.bp", &9).await.unwrap_err();
    assert!(matches!(err, PublishError::Full { max_pending: 3 }), "{err}");
    assert!(err.to_string().contains("raise `max_pending`"));
    // `publish` waits for room rather than failing...
    assert!(timeout(Duration::from_secs(60), herald.publish("job.bp", &1))
        .await
        .is_err());
    // ...and goes through once deliveries finish.
    slow.resume();
    for _ in 0..3 {
        next(&mut gate).await;
    }
    timeout(Duration::from_secs(60), herald.publish("job.bp", &2))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(next(&mut rx).await.0, 2);
    drop(tx);
}

#[tokio::test(start_paused = true)]
async fn a_panic_is_a_failed_attempt_and_nothing_else_stops() {
    let herald = bus().await;
    let mut others = recorder::<u8>(&herald, "bystander", "job.panic").await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    herald
        .subscribe("panicky", "job.panic")
        .backoff(Backoff::fixed(Duration::from_millis(5)))
        .handle(move |_: u8, ctx: Context| {
            let tx = tx.clone();
            async move {
                if ctx.attempt() == 1 {
                    panic!("boom on attempt one");
                }
                let _ = tx.send(ctx.attempt());
                Ok::<_, HandlerError>(())
            }
        })
        .await
        .unwrap();
    let id = herald.publish("job.panic", &1).await.unwrap();
    assert_eq!(next(&mut rx).await, 2);
    assert_eq!(next(&mut others).await.0, 1);
    let rec = settle(&herald, id).await;
    let d = rec
        .deliveries
        .iter()
        .find(|d| d.subscription.as_str() == "panicky")
        .unwrap();
    assert_eq!(d.status, DeliveryStatus::Succeeded);
    assert_eq!(
        d.attempts[0].error.as_deref(),
        Some("the handler panicked: boom on attempt one")
    );
    // The runtime still works.
    herald.publish("job.panic", &2).await.unwrap();
    assert_eq!(next(&mut others).await.0, 2);
}

#[tokio::test(start_paused = true)]
async fn permanent_errors_and_undecodable_payloads_are_dead_letters_with_reasons() {
    let herald = Herald::builder().build().await.unwrap();
    let mut notices = recorder::<DeadLetter>(&herald, "watch-dead", DEAD_LETTER_TOPIC).await;
    herald
        .subscribe("strict", "job.strict")
        .handle(|o: Order, _ctx: Context| async move {
            if o.id == 0 {
                return Err(HandlerError::permanent("order 0 does not exist"));
            }
            Ok(())
        })
        .await
        .unwrap();
    let bad = herald.publish("job.strict", &Order { id: 0 }).await.unwrap();
    let undecodable = herald.publish("job.strict", &"not an order").await.unwrap();

    let rec = settle(&herald, bad).await;
    assert_eq!(rec.status, EventStatus::Dead);
    assert_eq!(rec.deliveries[0].attempt_count, 1);
    assert_eq!(rec.deliveries[0].last_error.as_deref(), Some("order 0 does not exist"));
    let rec = settle(&herald, undecodable).await;
    let reason = rec.deliveries[0].last_error.clone().unwrap();
    assert!(
        reason.starts_with("payload does not decode as bus::Order: invalid type: string"),
        "{reason}"
    );

    let mut seen = [next(&mut notices).await.0, next(&mut notices).await.0];
    seen.sort_by_key(|n| n.event_id);
    assert_eq!(seen[0].event_id, bad);
    assert_eq!(seen[0].reason, "order 0 does not exist");
    assert_eq!(seen[0].subscription.as_str(), "strict");
    assert_eq!(seen[1].event_id, undecodable);

    let dead = herald.dead_letters().await.unwrap();
    assert_eq!(
        dead.items.iter().map(|r| r.event.id()).collect::<Vec<_>>(),
        vec![undecodable, bad]
    );
}

#[tokio::test(start_paused = true)]
async fn a_dead_delivery_can_be_retried() {
    let herald = bus().await;
    let fail = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let f = fail.clone();
    herald
        .subscribe("once", "job.once")
        .max_attempts(1)
        .handle(move |_: u8, _ctx: Context| {
            let fail = f.load(Ordering::SeqCst);
            async move {
                if fail {
                    Err(HandlerError::msg("not yet"))
                } else {
                    Ok(())
                }
            }
        })
        .await
        .unwrap();
    let id = herald.publish("job.once", &1).await.unwrap();
    let rec = settle(&herald, id).await;
    assert_eq!(rec.status, EventStatus::Dead);
    fail.store(false, Ordering::SeqCst);
    let delivery = rec.deliveries[0].id;
    assert_eq!(herald.retry(delivery).await.unwrap(), Requeued::Requeued);
    let rec = settle(&herald, id).await;
    assert_eq!(rec.status, EventStatus::Succeeded);
    assert_eq!(rec.deliveries[0].attempts.len(), 2);
    assert_eq!(
        herald.retry(delivery).await.unwrap(),
        Requeued::NotDead(DeliveryStatus::Succeeded)
    );
}

#[tokio::test(start_paused = true)]
async fn request_reply_returns_the_typed_answer() {
    let herald = bus().await;
    herald
        .subscribe("render", "invoice.render")
        .handle(|o: Order, _ctx: Context| async move { Ok(format!("invoice for order {}", o.id)) })
        .await
        .unwrap();
    let reply: String = herald.request("invoice.render", &Order { id: 3 }).await.unwrap();
    assert_eq!(reply, "invoice for order 3");

    let err = herald.request::<_, String>("nobody.home", &1).await.unwrap_err();
    assert!(matches!(err, RequestError::NoHandler(_)), "{err}");

    herald
        .subscribe("refuse", "invoice.refuse")
        .handle(|_: u8, _ctx: Context| async move { Err::<u8, _>(HandlerError::permanent("never")) })
        .await
        .unwrap();
    let err = herald.request::<_, u8>("invoice.refuse", &1).await.unwrap_err();
    assert!(matches!(&err, RequestError::Failed(r) if r == "never"), "{err}");
}

/// Subscribes `slow` to `pattern` with the concurrency limit `limit`: its handler takes `takes`
/// and answers ten times its number. Returns how many of its attempts run now and the most that
/// ever ran at once.
async fn counted(
    herald: &Herald,
    pattern: &str,
    limit: usize,
    takes: Duration,
) -> (Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (r, p) = (running.clone(), peak.clone());
    herald
        .subscribe("slow", pattern)
        .concurrency(limit)
        .handle(move |n: u64, _ctx: Context| {
            let (r, p) = (r.clone(), p.clone());
            async move {
                p.fetch_max(r.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
                tokio::time::sleep(takes).await;
                r.fetch_sub(1, Ordering::SeqCst);
                Ok::<_, HandlerError>(n * 10)
            }
        })
        .await
        .unwrap();
    (running, peak)
}

/// Keeps a worker busy until the returned gate is opened (`notify_one`).
async fn occupy_a_worker(herald: &Herald) -> Arc<tokio::sync::Notify> {
    let gate = Arc::new(tokio::sync::Notify::new());
    let (started_tx, mut started) = mpsc::unbounded_channel::<()>();
    let g = gate.clone();
    herald
        .subscribe("blocker", "job.block")
        .handle(move |_: u8, _ctx: Context| {
            let (g, started_tx) = (g.clone(), started_tx.clone());
            async move {
                let _ = started_tx.send(());
                g.notified().await;
                Ok::<_, HandlerError>(())
            }
        })
        .await
        .unwrap();
    herald.publish("job.block", &1u8).await.unwrap();
    next(&mut started).await;
    gate
}

/// A request whose handler is in the runtime, with room in its limit and nothing due before it,
/// runs in the requesting task: it is answered while every worker is busy, and its history is
/// the same as a worker's attempt would leave.
#[tokio::test(start_paused = true)]
async fn a_request_runs_in_the_requesting_task_when_nothing_is_due_before_it() {
    let herald = Herald::builder().system_events(false).workers(1).build().await.unwrap();
    herald
        .subscribe("double", "math.double")
        .handle(|n: u64, _ctx: Context| async move { Ok::<_, HandlerError>(n * 2) })
        .await
        .unwrap();
    let gate = occupy_a_worker(&herald).await;

    let t0 = herald.clock().now();
    let doubled: u64 = herald.request("math.double", &21).await.unwrap();
    assert_eq!(doubled, 42, "answered while the one worker is busy");
    assert_eq!(herald.clock().now(), t0, "at once");
    let page = herald.events().topic("math.double").await.unwrap();
    let rec = &page.items[0];
    assert_eq!(rec.status, EventStatus::Succeeded);
    let delivery = herald.get(rec.event.id()).await.unwrap().unwrap().deliveries.remove(0);
    assert_eq!(delivery.attempts.len(), 1);
    assert_eq!(delivery.attempts[0].outcome, Some(AttemptOutcome::Succeeded));
    assert_eq!(delivery.reply.as_deref(), Some(&b"42"[..]));
    gate.notify_one();
}

/// A request to a subscription that has deliveries due waits for a worker behind them, in
/// priority order, rather than running ahead of them in the requesting task.
#[tokio::test(start_paused = true)]
async fn a_request_waits_behind_the_deliveries_due_before_it() {
    let herald = Herald::builder().system_events(false).workers(1).build().await.unwrap();
    let (order_tx, mut order) = mpsc::unbounded_channel::<String>();
    herald
        .subscribe("rpc", "rpc.>")
        .handle(move |what: String, _ctx: Context| {
            let order_tx = order_tx.clone();
            async move {
                let _ = order_tx.send(what.clone());
                Ok::<_, HandlerError>(what)
            }
        })
        .await
        .unwrap();
    let gate = occupy_a_worker(&herald).await;
    for what in ["first", "second"] {
        herald.publish("rpc.job", &what).priority(Priority::HIGH).await.unwrap();
    }
    let asking = herald.clone();
    let request = tokio::spawn(async move { asking.request::<_, String>("rpc.ask", &"asked").await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(order.try_recv().is_err(), "nothing ran while the worker was busy");
    gate.notify_one();
    assert_eq!(request.await.unwrap().unwrap(), "asked");
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(next(&mut order).await);
    }
    assert_eq!(seen, ["first", "second", "asked"]);
}

/// The requester's own attempt failing leaves the request to its retries; one whose handler
/// waits goes on in a task of its own, within the request's timeout; a subscription's limit
/// holds for requests as for every delivery.
#[tokio::test(start_paused = true)]
async fn requests_are_retried_and_waited_for_within_their_limits() {
    let herald = bus().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    herald
        .subscribe("flaky", "math.flaky")
        .backoff(Backoff::fixed(Duration::from_secs(1)))
        .handle(move |n: u64, ctx: Context| {
            c.fetch_add(1, Ordering::SeqCst);
            async move {
                if ctx.attempt() == 1 {
                    return Err(HandlerError::msg("not yet"));
                }
                Ok::<_, HandlerError>(n + 1)
            }
        })
        .await
        .unwrap();
    let t0 = herald.clock().now();
    let got: u64 = herald.request("math.flaky", &1).await.unwrap();
    assert_eq!(got, 2);
    assert_eq!(herald.clock().now(), t0 + Duration::from_secs(1), "after the backoff");
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    let (running, peak) = counted(&herald, "math.slow", 2, Duration::from_secs(2)).await;
    let t0 = herald.clock().now();
    let requests: Vec<_> = (0..6u64)
        .map(|n| {
            let herald = herald.clone();
            tokio::spawn(async move {
                herald
                    .request::<_, u64>("math.slow", &n)
                    .timeout(Duration::from_secs(60))
                    .await
            })
        })
        .collect();
    for (n, r) in requests.into_iter().enumerate() {
        assert_eq!(r.await.unwrap().unwrap(), n as u64 * 10);
    }
    assert_eq!(peak.load(Ordering::SeqCst), 2, "two at a time, and two do run at once");
    assert_eq!(herald.clock().now(), t0 + Duration::from_secs(6), "three rounds of two");

    let err = herald
        .request::<_, u64>("math.slow", &1)
        .timeout(Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(matches!(err, RequestError::Timeout(_)), "{err}");
    assert_eq!(
        running.load(Ordering::SeqCst),
        1,
        "the attempt goes on after the requester left"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(running.load(Ordering::SeqCst), 0);
}

/// A request whose handler fails for good is a dead letter, announced like any other.
#[tokio::test(start_paused = true)]
async fn a_request_that_fails_for_good_is_announced_dead() {
    let herald = Herald::builder().build().await.unwrap();
    let mut notices = recorder::<DeadLetter>(&herald, "watch-dead", DEAD_LETTER_TOPIC).await;
    herald
        .subscribe("refuse", "invoice.refuse")
        .handle(|_: u8, _ctx: Context| async move { Err::<u8, _>(HandlerError::permanent("never")) })
        .await
        .unwrap();
    let err = herald.request::<_, u8>("invoice.refuse", &1).await.unwrap_err();
    assert!(matches!(&err, RequestError::Failed(r) if r == "never"), "{err}");
    let (notice, _, _) = next(&mut notices).await;
    assert_eq!(notice.subscription.as_str(), "refuse");
    assert_eq!(notice.reason, "never");
    let report = herald.shutdown(Duration::from_secs(5)).await;
    assert_eq!(report.interrupted, 0);
}

/// A handler in one runtime answers a requester in another that shares its store (through the
/// store's answer announcement), and a requester in its own runtime (directly).
#[tokio::test(start_paused = true)]
async fn a_request_is_answered_from_another_runtime_on_the_same_store() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let runtime = |store: Arc<dyn Store>| Herald::builder().system_events(false).shared_store(store).build();
    let asker = runtime(store.clone()).await.unwrap();
    let server = runtime(store).await.unwrap();
    server
        .subscribe("double", "math.double")
        .handle(|n: u64, _ctx: Context| async move { Ok::<_, HandlerError>(n * 2) })
        .await
        .unwrap();
    let remote: u64 = asker
        .request("math.double", &21)
        .timeout(Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(remote, 42, "answered across runtimes");
    let local: u64 = server
        .request("math.double", &4)
        .timeout(Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(local, 8, "answered in the handler's own runtime");
}

/// A quick handler's subscription claims more deliveries than it has free workers, queued for the
/// first worker free. When the handler turns slow, the queued deliveries' leases run out; another
/// runtime competing for the same subscription takes them over, and the first runtime, renewing a
/// half-spent lease before it starts each one, gives them up: every delivery is handled once.
#[tokio::test(start_paused = true)]
async fn deliveries_claimed_ahead_are_handled_once_when_the_handler_turns_slow() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let runtime = |store: Arc<dyn Store>| {
        Herald::builder()
            .system_events(false)
            .workers(1)
            .lease(Duration::from_secs(2))
            .shared_store(store)
            .build()
    };
    let a = runtime(store.clone()).await.unwrap();
    let b = runtime(store).await.unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel::<(u32, &'static str)>();
    let (slow_tx, mut slow_started) = mpsc::unbounded_channel::<()>();
    let seen = tx.clone();
    a.subscribe("work", "job.run")
        // Its own limit above the one worker, so that claims may run ahead of the worker.
        .concurrency(16)
        .handle(move |n: u32, _ctx: Context| {
            let (seen, slow_tx) = (seen.clone(), slow_tx.clone());
            async move {
                if n == 1 {
                    let _ = slow_tx.send(());
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
                let _ = seen.send((n, "a"));
                Ok::<_, HandlerError>(())
            }
        })
        .await
        .unwrap();
    a.publish("job.run", &0u32).await.unwrap();
    assert_eq!(next(&mut rx).await, (0, "a"), "a quick first attempt");
    a.publish_batch((1..=10u32).map(|n| Message::json("job.run", &n)))
        .await
        .unwrap();
    next(&mut slow_started).await;
    let stats = a.stats().await.unwrap();
    assert_eq!(
        stats.deliveries.active, 10,
        "all ten claimed by the one worker: {stats:?}"
    );

    let seen = tx.clone();
    b.subscribe("work", "job.run")
        .handle(move |n: u32, _ctx: Context| {
            let seen = seen.clone();
            async move {
                let _ = seen.send((n, "b"));
                Ok::<_, HandlerError>(())
            }
        })
        .await
        .unwrap();
    let mut handled = Vec::new();
    for _ in 1..=10 {
        handled.push(next(&mut rx).await);
    }
    tokio::time::sleep(Duration::from_secs(60)).await;
    while let Ok(more) = rx.try_recv() {
        handled.push(more);
    }
    handled.sort_unstable();
    let mut expected: Vec<(u32, &str)> = (2..=10).map(|n| (n, "b")).collect();
    expected.insert(0, (1, "a"));
    assert_eq!(
        handled, expected,
        "each once: the queued ones by the runtime that took them over"
    );
    let stats = a.stats().await.unwrap();
    assert_eq!(stats.deliveries.succeeded, 11, "{stats:?}");
}

#[tokio::test(start_paused = true)]
async fn a_request_that_timed_out_expires_and_is_never_handled() {
    let herald = bus().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let sub = herald
        .subscribe("busy", "invoice.busy")
        .handle(move |_: u8, _ctx: Context| {
            c.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, HandlerError>(1u8) }
        })
        .await
        .unwrap();
    sub.pause();
    let t0 = herald.clock().now();
    let err = herald
        .request::<_, u8>("invoice.busy", &1)
        .timeout(Duration::from_millis(500))
        .await
        .unwrap_err();
    assert!(
        matches!(err, RequestError::Timeout(d) if d == Duration::from_millis(500)),
        "{err}"
    );
    assert_eq!(herald.clock().now(), t0 + Duration::from_millis(500));
    sub.resume();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    let page = herald.events().topic("invoice.busy").await.unwrap();
    assert_eq!(page.items[0].status, EventStatus::Expired);
}

#[tokio::test(start_paused = true)]
async fn idempotency_keys_return_the_first_id() {
    let herald = bus().await;
    let a = herald.publish("order.paid", &1).key("order-1").await.unwrap();
    let b = herald.publish("order.paid", &2).key("order-1").await.unwrap();
    let c = herald.publish("order.paid", &3).key("order-2").await.unwrap();
    assert_eq!(a, b);
    assert_ne!(a, c);
    let page = herald.events().key("order-1").await.unwrap();
    assert_eq!(page.items.len(), 1);
    assert_eq!(page.items[0].event.json::<u8>().unwrap(), 1);
}

#[tokio::test(start_paused = true)]
async fn history_queries_filter_and_page() {
    let herald = bus().await;
    let _rx = recorder::<u32>(&herald, "hist", "order.*").await;
    let mut ids = Vec::new();
    for i in 0..7u32 {
        let topic = if i % 2 == 0 { "order.paid" } else { "user.signup" };
        ids.push(herald.publish(topic, &i).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    let page = herald.events().topic("order.*").limit(2).await.unwrap();
    assert_eq!(
        page.items.iter().map(|r| r.event.id()).collect::<Vec<_>>(),
        vec![ids[6], ids[4]]
    );
    let page = herald
        .events()
        .topic("order.*")
        .limit(2)
        .after(page.next.unwrap())
        .await
        .unwrap();
    assert_eq!(
        page.items.iter().map(|r| r.event.id()).collect::<Vec<_>>(),
        vec![ids[2], ids[0]]
    );
    assert_eq!(page.next, None);
    let unrouted = herald.events().status(EventStatus::Unrouted).limit(100).await.unwrap();
    assert_eq!(unrouted.items.len(), 3);
    let by_sub = herald
        .events()
        .subscription("hist")
        .status(EventStatus::Succeeded)
        .await
        .unwrap();
    assert_eq!(by_sub.items.len(), 4);
    let err = herald.events().topic("Bad Topic").await.unwrap_err();
    assert!(err.to_string().contains("pattern 'Bad Topic' is invalid"), "{err}");
    let stats = herald.stats().await.unwrap();
    assert_eq!((stats.events, stats.unrouted, stats.deliveries.succeeded), (7, 3, 4));
}

#[tokio::test(start_paused = true)]
async fn shutdown_drains_in_flight_attempts() {
    // A subscription declared in the store before the runtime starts receives `system.startup`
    // (durable stores keep declarations across restarts, so this is the usual case there).
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let spec = SubscriptionSpec {
        name: SubscriptionName::new("lifecycle").unwrap(),
        pattern: Pattern::new("system.*").unwrap(),
    };
    store.declare(&spec).await.unwrap();
    let herald = Herald::builder().shared_store(store).build().await.unwrap();
    let mut lifecycle = recorder::<Lifecycle>(&herald, "lifecycle", "system.*").await;
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let finished = Arc::new(AtomicUsize::new(0));
    let f = finished.clone();
    herald
        .subscribe("work", "job.work")
        .handle(move |secs: u64, _ctx: Context| {
            let (f, started_tx) = (f.clone(), started_tx.clone());
            async move {
                let _ = started_tx.send(());
                tokio::time::sleep(Duration::from_secs(secs)).await;
                f.fetch_add(1, Ordering::SeqCst);
                Ok::<_, HandlerError>(())
            }
        })
        .await
        .unwrap();
    herald.publish("job.work", &2u64).await.unwrap();
    next(&mut started).await;
    let report = herald.shutdown(Duration::from_secs(5)).await;
    assert_eq!(finished.load(Ordering::SeqCst), 1);
    assert_eq!((report.drained, report.interrupted), (1, 0));
    let err = herald.publish("job.work", &1u64).await.unwrap_err();
    assert!(matches!(err, PublishError::ShuttingDown));
    let topics: Vec<_> = [next(&mut lifecycle).await.0, next(&mut lifecycle).await.0]
        .iter()
        .map(|l| l.node.clone())
        .collect();
    assert_eq!(topics, vec![herald.node().to_owned(), herald.node().to_owned()]);
}

#[tokio::test(start_paused = true)]
async fn shutdown_stops_what_outlives_the_deadline_and_releases_it() {
    let herald = bus().await;
    let (started_tx, mut started) = mpsc::unbounded_channel();
    herald
        .subscribe("long", "job.long")
        .no_timeout()
        .handle(move |_: u8, _ctx: Context| {
            let started_tx = started_tx.clone();
            async move {
                let _ = started_tx.send(());
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok::<_, HandlerError>(())
            }
        })
        .await
        .unwrap();
    let id = herald.publish("job.long", &1).await.unwrap();
    next(&mut started).await;
    let t0 = herald.clock().now();
    let report = herald.shutdown(Duration::from_secs(2)).await;
    assert_eq!(herald.clock().now(), t0 + Duration::from_secs(2));
    assert_eq!(report.interrupted, 1);
    assert_eq!(report.unfinished, Some(1));
    let rec = herald.get(id).await.unwrap().unwrap();
    assert_eq!(rec.status, EventStatus::Pending, "released, to run again");
    assert_eq!(
        rec.deliveries[0].attempt_count, 0,
        "the interrupted attempt does not count"
    );
}

#[tokio::test(start_paused = true)]
async fn leases_are_extended_while_a_handler_runs() {
    let herald = Herald::builder()
        .system_events(false)
        .lease(Duration::from_millis(100))
        .build()
        .await
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    herald
        .subscribe("slowpoke", "job.slowpoke")
        .no_timeout()
        .handle(move |_: u8, _ctx: Context| {
            c.fetch_add(1, Ordering::SeqCst);
            async {
                tokio::time::sleep(Duration::from_secs(2)).await;
                Ok::<_, HandlerError>(())
            }
        })
        .await
        .unwrap();
    let id = herald.publish("job.slowpoke", &1).await.unwrap();
    let rec = settle(&herald, id).await;
    assert_eq!(rec.status, EventStatus::Succeeded);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the lease never ran out, so nobody claimed it again"
    );
    assert_eq!(rec.deliveries[0].attempts.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_delivery_whose_worker_died_comes_back_when_its_lease_runs_out() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let name = SubscriptionName::new("orphans").unwrap();
    store
        .declare(&SubscriptionSpec {
            name: name.clone(),
            pattern: Pattern::new("job.orphan").unwrap(),
        })
        .await
        .unwrap();
    let herald = Herald::builder()
        .system_events(false)
        .shared_store(store.clone())
        .build()
        .await
        .unwrap();
    let id = herald.publish("job.orphan", &7u8).await.unwrap();
    // Another worker claims it with a 5 s lease and dies without a word.
    let t0 = herald.clock().now();
    let taken = store.claim(&name, 1, Duration::from_secs(5)).await.unwrap();
    assert_eq!(taken.len(), 1);

    let mut rx = recorder::<u8>(&herald, "orphans", "job.orphan").await;
    let (v, attempt, at) = next(&mut rx).await;
    assert_eq!((v, attempt), (7, 2));
    assert_eq!(
        at,
        t0 + Duration::from_secs(5),
        "picked up on the millisecond the lease ran out"
    );
    let rec = settle(&herald, id).await;
    assert_eq!(
        rec.deliveries[0].attempts[0].outcome,
        Some(AttemptOutcome::LeaseExpired)
    );
}

#[tokio::test(start_paused = true)]
async fn unsubscribe_stops_handling_and_routing() {
    let herald = bus().await;
    let mut rx = recorder::<u8>(&herald, "temp", "job.temp").await;
    let sub = herald.subscription("temp").expect("listed while running");
    assert_eq!(herald.subscriptions().len(), 1);
    sub.pause();
    let waiting = herald.publish("job.temp", &1).await.unwrap();
    assert_eq!(sub.unsubscribe().await.unwrap(), 1, "the waiting delivery is cancelled");
    assert!(herald.subscription("temp").is_none());
    assert_eq!(
        herald.get(waiting).await.unwrap().unwrap().status,
        EventStatus::Cancelled
    );
    let later = herald.publish("job.temp", &2).await.unwrap();
    assert_eq!(herald.get(later).await.unwrap().unwrap().status, EventStatus::Unrouted);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(rx.try_recv().is_err());
}

#[tokio::test(start_paused = true)]
async fn try_variants_of_message_and_batch_publishes_fail_when_full() {
    let herald = Herald::builder()
        .system_events(false)
        .max_pending(2)
        .build()
        .await
        .unwrap();
    let sub = herald
        .subscribe("full", "job.full")
        .handle(|_: u8, _ctx: Context| async { Ok::<_, HandlerError>(()) })
        .await
        .unwrap();
    sub.pause();
    let ids = herald
        .try_publish_batch([Message::json("job.full", &1), Message::json("job.full", &2)])
        .await
        .unwrap();
    assert_eq!(ids.len(), 2);
    let err = herald
        .try_publish_message(Message::json("job.full", &3))
        .await
        .unwrap_err();
    assert!(matches!(err, PublishError::Full { max_pending: 2 }), "{err}");
    let err = herald
        .try_publish_batch([Message::json("job.full", &4)])
        .await
        .unwrap_err();
    assert!(matches!(err, PublishError::Full { .. }), "{err}");
}

#[tokio::test(start_paused = true)]
async fn a_subscription_at_its_limit_leaves_the_other_workers_to_the_rest() {
    // Two workers; `slow` may run one attempt at a time and each takes 10 s. `fast` must not wait
    // behind it: the pool claims for whichever subscription has due work and room.
    let herald = Herald::builder().system_events(false).workers(2).build().await.unwrap();
    let started = Instant::now();
    let (_, peak) = counted(&herald, "work.slow", 1, Duration::from_secs(10)).await;
    let mut fast = recorder::<u32>(&herald, "fast", "work.fast").await;
    herald
        .publish_batch((0..3).map(|i| Message::json("work.slow", &i)))
        .await
        .unwrap();
    herald
        .publish_batch((0..10).map(|i| Message::json("work.fast", &i)))
        .await
        .unwrap();
    for _ in 0..10 {
        next(&mut fast).await;
    }
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "the fast subscription finished while the first slow attempt was still running ({:?})",
        started.elapsed()
    );
    let id = herald.publish("work.slow", &99).await.unwrap();
    settle(&herald, id).await;
    assert_eq!(peak.load(Ordering::SeqCst), 1, "slow never ran two at once");
    assert!(
        started.elapsed() >= Duration::from_secs(40),
        "four slow attempts, one at a time"
    );
}

/// Outcomes are recorded by combining (the first worker to finish records the others' outcomes
/// too): with quick handlers on several threads, every outcome must still reach the store, once.
/// A lost one would leave its delivery active, and the drain would report it interrupted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_outcome_is_recorded_when_many_workers_finish_at_once() {
    const N: usize = 20_000;
    let herald = Herald::builder()
        .system_events(false)
        .workers(32)
        .max_pending(N as u64)
        .build()
        .await
        .unwrap();
    let handled = Arc::new(AtomicUsize::new(0));
    let all = Arc::new(tokio::sync::Notify::new());
    let (h, a) = (handled.clone(), all.clone());
    herald
        .subscribe("quick", "job.quick")
        .handle(move |n: u64, _ctx: Context| {
            let (h, a) = (h.clone(), a.clone());
            async move {
                // Some attempts end at once, some after a yield: outcomes arrive in bursts while
                // one is being recorded.
                if n % 3 == 0 {
                    tokio::task::yield_now().await;
                }
                if h.fetch_add(1, Ordering::SeqCst) + 1 == N {
                    a.notify_one();
                }
                Ok::<_, HandlerError>(())
            }
        })
        .await
        .unwrap();
    let publishers: Vec<_> = (0..4u64)
        .map(|p| {
            let herald = herald.clone();
            tokio::spawn(async move {
                for n in (p..N as u64).step_by(4) {
                    herald.publish("job.quick", &n).await.unwrap();
                }
            })
        })
        .collect();
    for p in publishers {
        p.await.unwrap();
    }
    timeout(Duration::from_secs(120), all.notified())
        .await
        .expect("every event handled within two minutes");
    let report = herald.shutdown(Duration::from_secs(60)).await;
    assert_eq!(report.interrupted, 0);
    let stats = herald.store().stats().await.unwrap();
    assert_eq!(stats.deliveries.succeeded, N as u64);
    assert_eq!(stats.deliveries.active + stats.deliveries.pending, 0);
    assert_eq!(handled.load(Ordering::SeqCst), N);
}

/// A worker records the outcomes of quick attempts in batches, keeping each back while it runs the
/// next queued delivery; but never across a wait: an attempt that waits for its handler records
/// what was kept back first, so a quick event's status never waits on a slow one.
#[tokio::test(start_paused = true)]
async fn an_outcome_kept_back_is_recorded_before_the_worker_waits() {
    let herald = Herald::builder().system_events(false).workers(1).build().await.unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel::<u32>();
    let (slow_tx, mut slow_started) = mpsc::unbounded_channel::<()>();
    herald
        .subscribe("work", "job.run")
        // Its own limit above the one worker, so that a claim may take both deliveries at once.
        .concurrency(16)
        .handle(move |n: u32, _ctx: Context| {
            let (tx, slow_tx) = (tx.clone(), slow_tx.clone());
            async move {
                if n == 2 {
                    let _ = slow_tx.send(());
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
                let _ = tx.send(n);
                Ok::<_, HandlerError>(())
            }
        })
        .await
        .unwrap();
    // A quick first attempt makes the next claim take more than the one idle worker could start.
    herald.publish("job.run", &0u32).await.unwrap();
    assert_eq!(next(&mut rx).await, 0);
    let ids = herald
        .publish_batch([Message::json("job.run", &1u32), Message::json("job.run", &2u32)])
        .await
        .unwrap();
    next(&mut slow_started).await;
    assert_eq!(next(&mut rx).await, 1);
    // The slow attempt is running on the only worker, and the quick one is already recorded.
    let quick = herald.get(ids[0]).await.unwrap().expect("stored");
    assert_eq!(quick.status, EventStatus::Succeeded, "{quick:?}");
    let slow = herald.get(ids[1]).await.unwrap().expect("stored");
    assert_eq!(slow.deliveries[0].status, DeliveryStatus::Active, "{slow:?}");
    assert_eq!(next(&mut rx).await, 2);
    assert_eq!(settle(&herald, ids[1]).await.status, EventStatus::Succeeded);
}

/// A publish spends tokio's cooperative budget, as a send on a tokio channel does: a task that
/// publishes in a loop on a one-thread runtime gives the thread to the workers now and then, so
/// handling goes along with publishing instead of waiting for the loop to end. The same holds
/// for batches and requests.
#[tokio::test]
async fn a_publishing_loop_lets_the_workers_run() {
    let herald = bus().await;
    let handled = Arc::new(AtomicUsize::new(0));
    let all = Arc::new(tokio::sync::Notify::new());
    let (h, a) = (handled.clone(), all.clone());
    herald
        .subscribe("count", "tick.*")
        .handle(move |_: u64, _ctx: Context| {
            let (h, a) = (h.clone(), a.clone());
            async move {
                if h.fetch_add(1, Ordering::SeqCst) + 1 == 3_000 {
                    a.notify_one();
                }
                Ok::<_, HandlerError>(())
            }
        })
        .await
        .unwrap();
    for n in 0..1_000u64 {
        herald.publish("tick.one", &n).await.unwrap();
    }
    let during_publishes = handled.load(Ordering::SeqCst);
    for chunk in 0..1_000u64 {
        herald
            .publish_batch((0..2).map(|k| Message::json("tick.batch", &(chunk * 2 + k))))
            .await
            .unwrap();
    }
    let during_batches = handled.load(Ordering::SeqCst) - during_publishes;
    assert!(
        during_publishes >= 500,
        "only {during_publishes} of 1000 events were handled while they were published one by one"
    );
    assert!(
        during_batches >= 1_000,
        "only {during_batches} of 2000 events were handled while they were published in batches"
    );
    timeout(Duration::from_secs(60), all.notified())
        .await
        .expect("every event handled within a minute");
    assert_eq!(handled.load(Ordering::SeqCst), 3_000);
}
