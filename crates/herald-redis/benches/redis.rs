//! Benchmarks of the Redis store against the Redis at 127.0.0.1:6379, each beside a baseline
//! measured in the same run on the same server.
//!
//! `cargo bench -p herald-redis` prints:
//!
//! ```text
//! BENCH redis_e2e events_per_s=.. baseline_per_s=.. ratio=..
//! BENCH redis_lateness p50_ms=.. p99_ms=.. max_ms=..
//! ```
//!
//! - baseline: `redis-benchmark -t lpush -P 1 -q` (50 clients, no pipelining): the requests per
//!   second of the simplest write on this server, run right before each herald round (the machine
//!   is shared: both meet it in the same state). The BENCH line gives the medians of both.
//! - e2e: two herald nodes in this process share one prefix, each with a subscription of 32
//!   workers and a no-op handler; 64 tasks publish N events one at a time (half through each
//!   node). The time from the first publish until all N are acknowledged (succeeded in the store).
//!   Target: at least 0.25 of the baseline.
//! - lateness: node A publishes events with random delays of 0.5 to 3.5 s; node B handles them. The
//!   lateness of each is node B's clock (the server's, see the crate docs) at the handler's start
//!   minus the due time. Target: p99 at most 5 ms.
//!
//! Environment: `HERALD_BENCH_QUICK=1` (or `--test`): each case once with small N, no criterion
//! (what CI runs). `HERALD_REDIS_URL` overrides the server (the baseline then runs against its host
//! and port).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use criterion::{Criterion, SamplingMode, Throughput};
use herald_core::{Context, HandlerError, Herald, Message};
use herald_redis::RedisStore;
use tokio::runtime::Runtime;
use tokio::sync::Notify;
use tokio::time::Instant;

const WORKERS: usize = 32;
const PUBLISHERS: u64 = 64;
const HANG: Duration = Duration::from_secs(300);

struct Sizes {
    e2e: u64,
    lateness: u64,
    baseline_requests: u64,
}

const FULL: Sizes = Sizes {
    e2e: 20_000,
    lateness: 2_000,
    baseline_requests: 50_000,
};

const QUICK: Sizes = Sizes {
    e2e: 2_000,
    lateness: 300,
    baseline_requests: 20_000,
};

fn url() -> String {
    std::env::var("HERALD_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

fn main() {
    let quick = std::env::var_os("HERALD_BENCH_QUICK").is_some_and(|v| v != "0" && !v.is_empty())
        || std::env::args().any(|a| a == "--test");
    let sizes = if quick { QUICK } else { FULL };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut criterion = (!quick).then(|| {
        Criterion::default()
            .without_plots()
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(10))
            .sample_size(10)
            .configure_from_args()
    });
    e2e(&rt, criterion.as_mut(), &sizes);
    lateness(&rt, sizes.lateness);
    if let Some(c) = criterion {
        c.final_summary();
    }
}

/// `redis-benchmark -t lpush -P 1 -q` against the bench's server: requests per second.
fn baseline(requests: u64) -> f64 {
    let info = redis::Client::open(url()).unwrap().get_connection_info().clone();
    let (host, port) = match info.addr() {
        redis::ConnectionAddr::Tcp(h, p) => (h.clone(), *p),
        other => panic!("the baseline needs a TCP address, got {other:?}"),
    };
    let out = Command::new("redis-benchmark")
        .args(["-h", &host, "-p", &port.to_string(), "-t", "lpush", "-P", "1", "-q"])
        .args(["-n", &requests.to_string()])
        .output()
        .expect("redis-benchmark (apt-get install redis-tools)");
    let text = String::from_utf8_lossy(&out.stdout);
    // "LPUSH: 86206.90 requests per second, p50=0.287 msec" (after carriage-return progress).
    let line = text
        .rsplit(['\r', '\n'])
        .find(|l| l.starts_with("LPUSH:"))
        .unwrap_or_else(|| panic!("unexpected redis-benchmark output: {text}"));
    line["LPUSH:".len()..]
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected redis-benchmark line: {line}"))
}

/// Two nodes sharing `prefix`, each with a no-op subscription of 32 workers counting handlings.
async fn two_nodes(prefix: &str, counter: Arc<Counter>) -> Vec<Herald> {
    let mut nodes = Vec::new();
    for name in ["a", "b"] {
        let store = RedisStore::builder(url()).prefix(prefix).connect().await.unwrap();
        let herald = Herald::builder()
            .store(store)
            .workers(WORKERS)
            .unbounded()
            .system_events(false)
            .node(name)
            .build()
            .await
            .unwrap();
        let counter = counter.clone();
        herald
            .subscribe("bench", "bench.tick")
            .handle(move |_: u64, _: Context| {
                counter.0.fetch_add(1, Ordering::Relaxed);
                counter.1.notify_waiters();
                async { Ok::<_, HandlerError>(()) }
            })
            .await
            .unwrap();
        nodes.push(herald);
    }
    nodes
}

/// Waits (with a deadline) until the handlers ran `n` more times than `from`, then until the store
/// has recorded as many more successes than `acked` (acknowledgements are batched).
async fn acknowledged(herald: &Herald, counter: &Counter, from: u64, acked: u64, n: u64) {
    let deadline = Instant::now() + HANG;
    loop {
        let woken = counter.1.notified();
        if counter.0.load(Ordering::Relaxed) >= from + n {
            break;
        }
        tokio::time::timeout_at(deadline, woken)
            .await
            .expect("every event is handled");
    }
    loop {
        let s = herald.stats().await.unwrap().deliveries.succeeded;
        if s >= acked + n {
            return;
        }
        assert!(Instant::now() < deadline, "only {} of {n} acknowledged", s - acked);
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Handlings so far, and a signal on each.
type Counter = (AtomicU64, Notify);

async fn e2e_round(nodes: &[Herald], counter: &Counter, n: u64) -> Duration {
    let acked = nodes[0].stats().await.unwrap().deliveries.succeeded;
    let from = counter.0.load(Ordering::Relaxed);
    let start = Instant::now();
    let tasks: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            let herald = nodes[(p % 2) as usize].clone();
            tokio::spawn(async move {
                for i in (p..n).step_by(PUBLISHERS as usize) {
                    herald.publish_message(Message::json("bench.tick", &i)).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    acknowledged(&nodes[0], counter, from, acked, n).await;
    start.elapsed()
}

fn e2e(rt: &Runtime, c: Option<&mut Criterion>, sizes: &Sizes) {
    let prefix = format!("herald-bench-{:08x}", fastrand::u32(..));
    let counter = Arc::new((AtomicU64::new(0), Notify::new()));
    let nodes = rt.block_on(two_nodes(&prefix, counter.clone()));
    let n = sizes.e2e;
    let requests = sizes.baseline_requests;
    let (rates, bases) = (Mutex::new(Vec::<f64>::new()), Mutex::new(Vec::<f64>::new()));
    match c {
        Some(c) => {
            let mut g = c.benchmark_group("redis_e2e");
            g.throughput(Throughput::Elements(n))
                .sampling_mode(SamplingMode::Flat)
                .sample_size(10);
            g.bench_function("two_nodes", |b| {
                b.to_async(rt).iter_custom(|iters| {
                    let (nodes, rates, bases, counter) = (&nodes, &rates, &bases, &counter);
                    async move {
                        let mut total = Duration::ZERO;
                        for _ in 0..iters {
                            // A baseline round right before each herald round: both meet the
                            // machine (shared, its load changing) in the same state.
                            let base = tokio::task::spawn_blocking(move || baseline(requests)).await.unwrap();
                            bases.lock().unwrap().push(base);
                            let d = e2e_round(nodes, counter, n).await;
                            if std::env::var_os("HERALD_BENCH_VERBOSE").is_some() {
                                eprintln!("round: {:.0}/s, baseline {base:.0}/s", n as f64 / d.as_secs_f64());
                            }
                            rates.lock().unwrap().push(n as f64 / d.as_secs_f64());
                            total += d;
                        }
                        total
                    }
                })
            });
            g.finish();
        }
        None => {
            bases.lock().unwrap().push(baseline(requests));
            let d = rt.block_on(e2e_round(&nodes, &counter, n));
            rates.lock().unwrap().push(n as f64 / d.as_secs_f64());
        }
    }
    let median = |m: Mutex<Vec<f64>>| {
        let mut v = m.into_inner().unwrap();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (rate, base) = (median(rates), median(bases));
    println!(
        "BENCH redis_e2e events_per_s={rate:.0} baseline_per_s={base:.0} ratio={:.3}",
        rate / base
    );
    rt.block_on(async {
        for h in &nodes {
            h.shutdown(Duration::from_secs(5)).await;
        }
        RedisStore::builder(url())
            .prefix(prefix)
            .connect()
            .await
            .unwrap()
            .destroy()
            .await
            .unwrap();
    });
}

fn lateness(rt: &Runtime, n: u64) {
    let prefix = format!("herald-bench-late-{:08x}", fastrand::u32(..));
    let late = Arc::new(Mutex::new(Vec::<i64>::new()));
    let all = Arc::new(Notify::new());
    rt.block_on(async {
        let connect = || async {
            let store = RedisStore::builder(url())
                .prefix(prefix.as_str())
                .connect()
                .await
                .unwrap();
            Herald::builder()
                .store(store)
                .workers(WORKERS)
                .unbounded()
                .system_events(false)
                .build()
                .await
                .unwrap()
        };
        let (a, b) = (connect().await, connect().await);
        let clock = b.clock();
        let (on_late, on_all) = (late.clone(), all.clone());
        b.subscribe("late", "bench.later")
            .handle(move |_: u64, ctx: Context| {
                let ms = clock.now().millis_since(ctx.event().deliver_at());
                let mut v = on_late.lock().unwrap();
                v.push(ms);
                if v.len() as u64 == n {
                    on_all.notify_one();
                }
                async { Ok::<_, HandlerError>(()) }
            })
            .await
            .unwrap();
        let finished = all.notified();
        for i in 0..n {
            let delay = Duration::from_millis(500 + fastrand::u64(..3000));
            a.publish("bench.later", &i).delay(delay).await.unwrap();
        }
        tokio::time::timeout(HANG, finished)
            .await
            .expect("every delayed event fires");
        a.shutdown(Duration::from_secs(5)).await;
        b.shutdown(Duration::from_secs(5)).await;
        RedisStore::builder(url())
            .prefix(prefix.as_str())
            .connect()
            .await
            .unwrap()
            .destroy()
            .await
            .unwrap();
    });
    let mut v = late.lock().unwrap().clone();
    v.sort_unstable();
    let pct = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    println!(
        "BENCH redis_lateness p50_ms={} p99_ms={} max_ms={} min_ms={} events={}",
        pct(0.5),
        pct(0.99),
        v[v.len() - 1],
        v[0],
        v.len()
    );
}
