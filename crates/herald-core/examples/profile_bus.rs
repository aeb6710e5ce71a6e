//! A deterministic workload for profiling the in-process bus (e.g. under
//! `valgrind --tool=callgrind`): the bench's throughput case (8 publisher tasks, each awaiting one
//! `publish` at a time, a no-op typed handler counting the events) or its request/reply case (32
//! requester tasks), on the runtime a user gets from `Herald::builder()` with a `MemoryStore`
//! (history, metrics, leases, system events all on; `workers(32)`).
//!
//! `PROFILE_EVENTS` sets N (default 20000); `PROFILE_CASE=rr` runs request/reply instead
//! (`rr_base` its baseline, mpsc + oneshot), `PROFILE_CASE=batch` publishes in batches of 64;
//! `PROFILE_THREADS` sets the tokio worker threads (default 1: a current-thread runtime, the most
//! repeatable under callgrind). Run it twice with different N and divide the difference in
//! instructions by the difference in N for the cost per event, free of start-up.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_core::{Context, HandlerError, Herald, MemoryStore};
use tokio::sync::Notify;

const WORKERS: usize = 32;
const PUBLISHERS: u64 = 8;
const REQUESTERS: u64 = 32;

fn main() {
    let n: u64 = std::env::var("PROFILE_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let threads: usize = std::env::var("PROFILE_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let case = std::env::var("PROFILE_CASE").unwrap_or_default();
    let rr = case == "rr";
    let rt = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    }
    .unwrap();
    rt.block_on(async {
        let herald = Herald::builder()
            .store(
                match std::env::var("PROFILE_RETAIN").ok().and_then(|v| v.parse().ok()) {
                    Some(n) => MemoryStore::builder().retain_max(n).build(),
                    None => MemoryStore::new(),
                },
            )
            .workers(WORKERS)
            .max_pending(1_000_000)
            .build()
            .await
            .unwrap();
        let start = Instant::now();
        if case == "rr_base" {
            channel_request_reply(n).await;
        } else if rr {
            request_reply(&herald, n).await;
        } else {
            throughput(&herald, n).await;
        }
        println!(
            "{} {n}: {:?}",
            if rr { "request/reply" } else { "publish" },
            start.elapsed()
        );
        herald.shutdown(Duration::from_secs(10)).await;
    });
}

async fn throughput(herald: &Herald, n: u64) {
    let count = Arc::new(AtomicU64::new(0));
    let done = Arc::new(Notify::new());
    let (c, d) = (count.clone(), done.clone());
    herald
        .subscribe("sink", "bench.tick")
        .handle(move |_: u64, _ctx: Context| {
            let (c, d) = (c.clone(), d.clone());
            async move {
                if c.fetch_add(1, Ordering::AcqRel) + 1 == n {
                    d.notify_one();
                }
                Ok::<_, HandlerError>(())
            }
        })
        .await
        .unwrap();
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            let herald = herald.clone();
            tokio::spawn(async move {
                let mine = (p..n).step_by(PUBLISHERS as usize);
                if std::env::var("PROFILE_CASE").as_deref() == Ok("batch") {
                    let mine: Vec<u64> = mine.collect();
                    for chunk in mine.chunks(64) {
                        herald
                            .publish_batch(chunk.iter().map(|i| herald_core::Message::json("bench.tick", i)))
                            .await
                            .unwrap();
                    }
                } else {
                    for i in mine {
                        herald.publish("bench.tick", &i).await.unwrap();
                    }
                }
            })
        })
        .collect();
    let start = Instant::now();
    for p in publishers {
        p.await.unwrap();
    }
    let published = start.elapsed();
    let handled_then = count.load(Ordering::Acquire);
    let notified = done.notified();
    if count.load(Ordering::Acquire) < n {
        notified.await;
    }
    eprintln!(
        "publishers done after {published:?} with {handled_then} handled; the rest took {:?}",
        start.elapsed() - published
    );
}

async fn request_reply(herald: &Herald, n: u64) {
    herald
        .subscribe("rpc", "bench.rpc")
        .handle(|n: u64, _ctx: Context| async move { Ok::<_, HandlerError>(n + 1) })
        .await
        .unwrap();
    let requesters: Vec<_> = (0..REQUESTERS)
        .map(|r| {
            let herald = herald.clone();
            tokio::spawn(async move {
                for i in (r..n).step_by(REQUESTERS as usize) {
                    let got: u64 = herald
                        .request("bench.rpc", &i)
                        .timeout(Duration::from_secs(30))
                        .await
                        .unwrap();
                    assert_eq!(got, i + 1);
                }
            })
        })
        .collect();
    for r in requesters {
        r.await.unwrap();
    }
}

/// The bench's baseline for request/reply: `REQUESTERS` tasks sending `(n, oneshot::Sender)` over
/// a tokio `mpsc` to one consumer task (`PROFILE_CASE=rr_base`), for the ratio of instructions.
async fn channel_request_reply(n: u64) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(u64, tokio::sync::oneshot::Sender<u64>)>(1024);
    let consumer = tokio::spawn(async move {
        while let Some((i, reply)) = rx.recv().await {
            let _ = reply.send(i + 1);
        }
    });
    let requesters: Vec<_> = (0..REQUESTERS)
        .map(|r| {
            let tx = tx.clone();
            tokio::spawn(async move {
                for i in (r..n).step_by(REQUESTERS as usize) {
                    let (reply, answer) = tokio::sync::oneshot::channel();
                    tx.send((i, reply)).await.unwrap();
                    assert_eq!(answer.await.unwrap(), i + 1);
                }
            })
        })
        .collect();
    for r in requesters {
        r.await.unwrap();
    }
    drop(tx);
    consumer.await.unwrap();
}
