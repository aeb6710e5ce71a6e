//! Benchmarks of the SQLite store, each against a plain rusqlite baseline measured in the same run
//! on the same disk (so the ratios say what herald costs, whatever the disk of the moment).
//!
//! `cargo bench -p herald-sqlite` prints one machine-readable line per case:
//!
//! ```text
//! BENCH sqlite_publish publishers=1 events_per_s=.. baseline_per_s=.. ratio=..
//! BENCH sqlite_publish publishers=64 events_per_s=.. baseline_per_s=.. ratio=..
//! BENCH sqlite_claim_ack events_per_s=.. baseline_per_s=.. ratio=..
//! BENCH sqlite_query p50_ms=.. p99_ms=..
//! BENCH sqlite_memory scheduled=1000000 rss_mib=..
//! ```
//!
//! - baseline: a plain rusqlite loop inserting the rows a publish writes (one event row and one
//!   delivery row, primary keys only) into a WAL file with `synchronous=FULL`, in transactions of
//!   as many events as there are publishers (1 or 64): the durable-insert rate of this disk.
//! - publish: P tasks each awaiting one `herald.publish(..)` at a time (each returns once durable),
//!   into a subscription declared in the store (so each event gets its delivery) that no handler
//!   claims. Target at 64 publishers: at least half the baseline.
//! - claim_ack: N events published up front, then a subscription with a no-op handler starts on a
//!   runtime of 32 workers; the time until all N succeeded (each claimed, handled, acknowledged
//!   durably). Compared with the baseline's batched (64) insert rate; target at least 0.3.
//! - query: 1,000,000 events over 10 topics, each claimed and acknowledged (one in ten dead);
//!   the latency of page 50 (20 per page, reached by its keyset cursor) of one topic's succeeded
//!   events. Target p99 at most 5 ms.
//! - memory: in a child process (this binary re-invoked with `HERALD_BENCH_CHILD=memory`), the
//!   resident memory of the whole process (`/proc/self/statm`) after 1,000,000 events are scheduled
//!   an hour ahead through a runtime with a subscription. Target at most 64 MiB.
//!
//! Rates in the BENCH lines are the median over the rounds criterion ran (warm-up included).
//!
//! Environment:
//! - `HERALD_BENCH_QUICK=1` (or criterion's `--test`): each case once with small N, no criterion
//!   (what CI runs).
//! - `HERALD_BENCH_ONLY=publish,claim_ack,query,memory`: only these cases.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, SamplingMode, Throughput};
use herald_core::{
    Context, Event, EventFilter, EventParts, EventStatus, HandlerError, Herald, Message, Outcome, PageRequest, Pattern,
    Store, SubscriptionName, SubscriptionSpec, Topic, Verdict,
};
use herald_sqlite::SqliteStore;
use tokio::runtime::Runtime;
use tokio::sync::Notify;
use tokio::time::Instant;

const WORKERS: usize = 32;
const BASELINE_BATCH: usize = 64;
const HANG: Duration = Duration::from_secs(600);

#[derive(Clone, Copy, Debug)]
struct Sizes {
    publish_one: u64,
    publish_many: u64,
    claim_ack: u64,
    query_events: u64,
    query_samples: usize,
    memory_events: u64,
}

const FULL: Sizes = Sizes {
    publish_one: 2_000,
    publish_many: 20_000,
    claim_ack: 20_000,
    query_events: 1_000_000,
    query_samples: 2_000,
    memory_events: 1_000_000,
};

const QUICK: Sizes = Sizes {
    publish_one: 200,
    publish_many: 2_000,
    claim_ack: 2_000,
    query_events: 20_000,
    query_samples: 200,
    memory_events: 20_000,
};

fn main() {
    let quick = std::env::var_os("HERALD_BENCH_QUICK").is_some_and(|v| v != "0" && !v.is_empty())
        || std::env::args().any(|a| a == "--test");
    let sizes = if quick { QUICK } else { FULL };
    if std::env::var("HERALD_BENCH_CHILD").as_deref() == Ok("memory") {
        memory_child(sizes.memory_events);
        return;
    }
    let only = std::env::var("HERALD_BENCH_ONLY").ok();
    let wants = |case: &str| only.as_deref().is_none_or(|o| o.split(',').any(|c| c.trim() == case));
    if quick {
        println!("herald-sqlite bench: quick mode, each case once with {sizes:?}");
    }
    if wants("memory") {
        memory_in_child(quick);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut criterion = (!quick).then(|| {
        Criterion::default()
            .without_plots()
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(5))
            .sample_size(10)
            .configure_from_args()
    });
    if wants("publish") {
        publish(&rt, criterion.as_mut(), 1, sizes.publish_one);
        publish(&rt, criterion.as_mut(), 64, sizes.publish_many);
    }
    if wants("claim_ack") {
        claim_ack(&rt, criterion.as_mut(), sizes.claim_ack);
    }
    if wants("query") {
        query(&rt, sizes.query_events, sizes.query_samples);
    }
    if let Some(c) = criterion {
        c.final_summary();
    }
}

// ---------------------------------------------------------------------------------------------
// Shared pieces

/// The rate of every round.
#[derive(Default)]
struct Rates(Mutex<Vec<f64>>);

impl Rates {
    fn add(&self, n: u64, d: Duration) {
        self.0.lock().unwrap().push(n as f64 / d.as_secs_f64());
    }

    fn median(&self) -> f64 {
        let mut v = self.0.lock().unwrap().clone();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    }
}

/// Runs `round` under criterion (one iteration is one round) or, in quick mode, once.
fn measure<F, Fut>(rt: &Runtime, group: Option<&mut BenchmarkGroup<'_, WallTime>>, name: &str, rates: &Rates, round: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = (u64, Duration)>,
{
    match group {
        Some(g) => {
            g.bench_function(name, |b| {
                b.to_async(rt).iter_custom(|iters| {
                    let round = &round;
                    async move {
                        let mut total = Duration::ZERO;
                        for _ in 0..iters {
                            let (n, d) = round().await;
                            rates.add(n, d);
                            total += d;
                        }
                        total
                    }
                })
            });
        }
        None => {
            let (n, d) = rt.block_on(round());
            rates.add(n, d);
        }
    }
}

fn group<'a>(c: Option<&'a mut Criterion>, name: &str, elements: u64) -> Option<BenchmarkGroup<'a, WallTime>> {
    c.map(|c| {
        let mut g = c.benchmark_group(name);
        g.throughput(Throughput::Elements(elements))
            .sampling_mode(SamplingMode::Flat)
            .sample_size(10);
        g
    })
}

/// A directory for one case's files, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "herald-sqlite-bench-{}-{name}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn payload(i: u64) -> Vec<u8> {
    serde_json::to_vec(&i).unwrap()
}

// ---------------------------------------------------------------------------------------------
// The baseline: a plain rusqlite insert loop

/// Inserts `n` events' rows in transactions of `per_txn` events; returns the elapsed time.
fn baseline_round(path: &Path, n: u64, per_txn: usize) -> Duration {
    let mut conn = rusqlite::Connection::open(path).unwrap();
    conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get::<_, String>(0))
        .unwrap();
    conn.execute_batch(
        "PRAGMA synchronous = FULL;
         CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY, id BLOB NOT NULL, topic TEXT NOT NULL,
             payload BLOB NOT NULL, priority INTEGER NOT NULL, published_at INTEGER NOT NULL,
             deliver_at INTEGER NOT NULL, status INTEGER NOT NULL);
         CREATE TABLE IF NOT EXISTS deliveries (id BLOB PRIMARY KEY, event INTEGER NOT NULL, sub INTEGER NOT NULL,
             status INTEGER NOT NULL, priority INTEGER NOT NULL, due INTEGER NOT NULL) WITHOUT ROWID;",
    )
    .unwrap();
    let start = std::time::Instant::now();
    let mut i = 0u64;
    while i < n {
        let tx = conn.transaction().unwrap();
        for _ in 0..per_txn.min((n - i) as usize) {
            let now = herald_core::Timestamp::now_system().as_millis();
            tx.prepare_cached(
                "INSERT INTO events (id, topic, payload, priority, published_at, deliver_at, status)
                 VALUES (?1, ?2, ?3, 5, ?4, ?4, 6)",
            )
            .unwrap()
            .execute((uuid::Uuid::now_v7().as_bytes(), "bench.tick", payload(i), now))
            .unwrap();
            let seq = tx.last_insert_rowid();
            tx.prepare_cached(
                "INSERT INTO deliveries (id, event, sub, status, priority, due) VALUES (?1, ?2, 1, 6, 5, ?3)",
            )
            .unwrap()
            .execute((uuid::Uuid::now_v7().as_bytes(), seq, now))
            .unwrap();
            i += 1;
        }
        tx.commit().unwrap();
    }
    start.elapsed()
}

/// Runs `round` (the herald side) under criterion, each round right after a baseline round of `n`
/// events in transactions of `per_txn`, so that both meet the disk in the same state; returns the
/// median rates of both.
fn compare<F, Fut>(rt: &Runtime, c: Option<&mut Criterion>, name: &str, n: u64, per_txn: usize, round: F) -> (f64, f64)
where
    F: Fn() -> Fut,
    Fut: Future<Output = (u64, Duration)>,
{
    let scratch = Scratch::new("baseline");
    let path = scratch.file("baseline.db");
    let (rates, base) = (Rates::default(), Rates::default());
    let mut g = group(c, name, n);
    measure(rt, g.as_mut(), "herald", &rates, || {
        let (path, base, round) = (path.clone(), &base, &round);
        async move {
            let d = tokio::task::spawn_blocking(move || baseline_round(&path, n, per_txn))
                .await
                .unwrap();
            base.add(n, d);
            round().await
        }
    });
    if let Some(g) = g {
        g.finish();
    }
    (rates.median(), base.median())
}

// ---------------------------------------------------------------------------------------------
// 1. Durable publish throughput

async fn runtime_on(store: SqliteStore) -> Herald {
    Herald::builder()
        .store(store)
        .workers(WORKERS)
        .unbounded()
        .system_events(false)
        .build()
        .await
        .unwrap()
}

async fn declare(store: &dyn Store, name: &str, pattern: &str) {
    store
        .declare(&SubscriptionSpec {
            name: SubscriptionName::new(name).unwrap(),
            pattern: Pattern::new(pattern).unwrap(),
        })
        .await
        .unwrap();
}

fn publish(rt: &Runtime, c: Option<&mut Criterion>, publishers: u64, n: u64) {
    let herald = rt.block_on(async {
        let herald = runtime_on(SqliteStore::temporary().unwrap()).await;
        declare(&**herald.store(), "bench", "bench.tick").await;
        herald
    });
    let name = format!("sqlite_publish_{publishers}");
    let (rate, base) = compare(rt, c, &name, n, publishers as usize, || {
        let herald = herald.clone();
        async move {
            let start = Instant::now();
            let tasks: Vec<_> = (0..publishers)
                .map(|p| {
                    let herald = herald.clone();
                    tokio::spawn(async move {
                        for i in (p..n).step_by(publishers as usize) {
                            herald.publish("bench.tick", &i).await.unwrap();
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
            (n, start.elapsed())
        }
    });
    rt.block_on(herald.shutdown(Duration::from_secs(5)));
    println!(
        "BENCH sqlite_publish publishers={publishers} events_per_s={rate:.0} baseline_per_s={base:.0} ratio={:.2}",
        rate / base
    );
}

// ---------------------------------------------------------------------------------------------
// 2. Claim + ack throughput through the runtime

fn claim_ack(rt: &Runtime, c: Option<&mut Criterion>, n: u64) {
    let herald = rt.block_on(runtime_on(SqliteStore::temporary().unwrap()));
    let round_no = AtomicU64::new(0);
    let (rate, base) = compare(rt, c, "sqlite_claim_ack", n, BASELINE_BATCH, || {
        let herald = herald.clone();
        let r = round_no.fetch_add(1, Ordering::Relaxed);
        async move {
            let (name, topic) = (format!("ack-{r}"), format!("ack.r{r}"));
            declare(&**herald.store(), &name, &topic).await;
            let mut left = n;
            while left > 0 {
                let k = left.min(1_000);
                left -= k;
                herald
                    .publish_batch((0..k).map(|i| Message::json(topic.clone(), &i)))
                    .await
                    .unwrap();
            }
            let count = Arc::new(AtomicU64::new(0));
            let done = Arc::new(Notify::new());
            let start = Instant::now();
            let (c2, d2) = (count.clone(), done.clone());
            let sub = herald
                .subscribe(name.as_str(), topic.as_str())
                .handle(move |_: u64, _ctx: Context| {
                    if c2.fetch_add(1, Ordering::AcqRel) + 1 == n {
                        d2.notify_one();
                    }
                    async { Ok::<_, HandlerError>(()) }
                })
                .await
                .unwrap();
            tokio::time::timeout(HANG, done.notified())
                .await
                .expect("claim_ack hang");
            // Handled is not yet acknowledged: wait until every outcome is recorded.
            loop {
                let stats = herald.stats().await.unwrap();
                if stats.deliveries.open() == 0 {
                    break;
                }
                tokio::task::yield_now().await;
            }
            let took = start.elapsed();
            sub.pause();
            (n, took)
        }
    });
    rt.block_on(herald.shutdown(Duration::from_secs(5)));
    println!(
        "BENCH sqlite_claim_ack events_per_s={rate:.0} baseline_per_s={base:.0} ratio={:.2}",
        rate / base
    );
}

// ---------------------------------------------------------------------------------------------
// 3. History query latency

fn query(rt: &Runtime, n: u64, samples: usize) {
    const TOPICS: u64 = 10;
    const PAGE: u32 = 20;
    const PAGE_NO: usize = 50;
    rt.block_on(async {
        let store = SqliteStore::temporary().unwrap();
        declare(&store, "history", "q.>").await;
        let sub = SubscriptionName::new("history").unwrap();
        let topics: Vec<Topic> = (0..TOPICS).map(|t| Topic::new(&format!("q.t{t}")).unwrap()).collect();
        let fill = Instant::now();
        let mut i = 0u64;
        while i < n {
            let k = (n - i).min(2_000);
            let now = store.clock().now();
            let events: Vec<Event> = (i..i + k)
                .map(|j| {
                    let mut e = EventParts::new(topics[(j % TOPICS) as usize].clone(), payload(j));
                    e.published_at = now;
                    e.deliver_at = now;
                    Event::from_parts(e)
                })
                .collect();
            store.publish(events).await.unwrap();
            let claimed = store.claim(&sub, k as usize, Duration::from_secs(600)).await.unwrap();
            let now = store.clock().now();
            let outcomes = claimed
                .iter()
                .enumerate()
                .map(|(k, c)| Outcome {
                    lease: c.lease,
                    finished_at: now,
                    verdict: if (k as u64 / TOPICS) % 10 == 3 {
                        Verdict::Dead { reason: "bench".into() }
                    } else {
                        Verdict::Succeeded { reply: None }
                    },
                })
                .collect();
            store.complete(outcomes).await.unwrap();
            i += k;
        }
        println!("herald-sqlite bench: stored {n} handled events in {:?}", fill.elapsed());
        let stats = store.stats().await.unwrap();
        assert_eq!(stats.events, n, "{stats:?}");
        assert_eq!(stats.deliveries.open(), 0, "{stats:?}");

        // The cursor of page 49 of each topic's succeeded events.
        let mut cursors = Vec::new();
        for topic in &topics {
            let filter = EventFilter {
                topic: Some(Pattern::from(topic.clone())),
                status: Some(EventStatus::Succeeded),
                ..Default::default()
            };
            let mut page = PageRequest::first(PAGE);
            for _ in 1..PAGE_NO {
                let got = store.query(&filter, page).await.unwrap();
                page = PageRequest::after(got.next.expect("50 pages of 20 per topic"), PAGE);
            }
            cursors.push((filter, page));
        }
        let mut times = Vec::with_capacity(samples);
        for s in 0..samples {
            let (filter, page) = &cursors[s % cursors.len()];
            let start = Instant::now();
            let got = store.query(filter, *page).await.unwrap();
            times.push(start.elapsed().as_secs_f64() * 1000.0);
            assert_eq!(got.items.len(), PAGE as usize);
        }
        times.sort_by(f64::total_cmp);
        let pct = |p: f64| times[((times.len() - 1) as f64 * p) as usize];
        println!("BENCH sqlite_query p50_ms={:.3} p99_ms={:.3}", pct(0.50), pct(0.99));
    });
}

// ---------------------------------------------------------------------------------------------
// 4. Resident memory with a million events scheduled

/// Resident memory in bytes, from `/proc/self/statm` (4 KiB pages).
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm (Linux only)");
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

fn memory_in_child(quick: bool) {
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.env("HERALD_BENCH_CHILD", "memory");
    if quick {
        cmd.env("HERALD_BENCH_QUICK", "1");
    }
    let status = cmd.status().unwrap();
    assert!(status.success(), "the memory bench child failed: {status}");
}

fn memory_child(n: u64) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let herald = runtime_on(SqliteStore::temporary().unwrap()).await;
        herald
            .subscribe("bench-later", "bench.later")
            .handle(|_: String, _ctx: Context| async { Ok::<_, HandlerError>(()) })
            .await
            .unwrap();
        let payload = "x".repeat(62);
        let before = rss_bytes();
        let start = Instant::now();
        let mut left = n;
        while left > 0 {
            let k = left.min(1_000);
            left -= k;
            herald
                .publish_batch((0..k).map(|_| Message::json("bench.later", &payload).delay(Duration::from_secs(3600))))
                .await
                .unwrap();
        }
        let took = start.elapsed();
        let stats = herald.stats().await.unwrap();
        assert_eq!(stats.deliveries.scheduled, n, "{stats:?}");
        let after = rss_bytes();
        println!(
            "herald-sqlite bench: scheduled {n} events in {took:?}; RSS {:.1} MiB -> {:.1} MiB",
            before as f64 / 1048576.0,
            after as f64 / 1048576.0
        );
        println!(
            "BENCH sqlite_memory scheduled={n} rss_mib={:.1}",
            after as f64 / 1048576.0
        );
        herald.shutdown(Duration::from_secs(5)).await;
    });
}
