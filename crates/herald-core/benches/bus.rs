//! Benchmarks of the in-process bus, each against a plain tokio-channel baseline in the same run.
//!
//! `cargo bench -p herald-core` prints one machine-readable line per case:
//!
//! ```text
//! BENCH bus_memory bytes_per_event=..
//! BENCH bus_throughput events_per_s=.. baseline_per_s=.. ratio=.. paired_ratio=..
//! BENCH bus_throughput_batch events_per_s=.. baseline_per_s=.. ratio=.. paired_ratio=..
//! BENCH bus_request_reply per_s=.. baseline_per_s=.. ratio=.. paired_ratio=..
//! BENCH bus_lateness p50_ms=.. p99_ms=.. max_ms=..
//! ```
//!
//! Every runtime is what a user gets from `Herald::builder()` with a `MemoryStore`: history, metrics
//! (through the `metrics` facade, no recorder installed), leases, system events and the default
//! subscription policy (30 s timeout, lease extension) all on. The benches only set `workers(32)` and
//! a `max_pending` large enough that no publisher waits for room.
//!
//! - throughput: 8 publisher tasks share N events; in `bus_throughput` each awaits one
//!   `herald.publish(..)` at a time, in `bus_throughput_batch` each calls `publish_batch` with 100
//!   messages at a time. A no-op typed handler (`u64` payload) counts the events in a static sink
//!   (no reference cloned per event), as the baseline's consumers count in theirs; a round ends when all N
//!   were handled. Baseline: the same 8 producers feeding an unbounded `async_channel` drained by 32
//!   consumer tasks that only count.
//! - request/reply: 32 requester tasks, each awaiting one `herald.request(..)` at a time (the handler
//!   returns n + 1, counting it in a static). Baseline: 32 requesters sending `(n, oneshot::Sender)`
//!   over a tokio `mpsc` to one server task that counts and answers each at once.
//! - lateness: 100,000 events published up front (`publish_batch`, 1,000 at a time) with `.at(t)`, t
//!   uniformly random over a 5 s window that opens 1 s later (room for the publishing); the handler
//!   compares `Instant::now()` with the instant the herald clock maps the due time to, at microsecond
//!   resolution. For comparison it also prints the floor tokio's 1 ms timer sets on the same schedule.
//! - memory: in a child process (the bench binary re-invoked with `HERALD_BENCH_CHILD=memory`), RSS
//!   (`/proc/self/statm`) before and after 1,000,000 events are scheduled an hour ahead, each with a JSON
//!   string payload whose encoding is 64 bytes.
//!
//! The measurement rates in the BENCH lines are the median over all rounds criterion ran (warm-up
//! included): one round is one pass of N events or round trips. Each herald round follows a
//! baseline round of its own (outside criterion's timing), as in the SQLite bench, so that both
//! medians come from the same stretch of time: on a shared machine the baseline alone moved 3x
//! between two runs a minute apart when the two were measured one after the other. `ratio` is the
//! ratio of the two medians; `paired_ratio` the median of each herald round's rate over its own
//! baseline round's, which a swing of the machine spanning a pair moves less.
//!
//! Environment:
//! - `HERALD_BENCH_QUICK=1` (also when run as criterion would test: `--test`, or no `--bench` as under
//!   `cargo test --benches`): every case once with smaller N (10,000 events, 2,000 round trips, 10,000
//!   delayed events over 1 s, 100,000 scheduled events), no criterion.
//! - `HERALD_BENCH_ONLY=throughput,request_reply,lateness,memory`: run only these cases (for profiling).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, SamplingMode, Throughput};
use herald_core::{Clock, Context, HandlerError, Herald, MemoryStore, Message};
use tokio::runtime::Runtime;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::time::Instant;

const WORKERS: usize = 32;
const PUBLISHERS: u64 = 8;
const BATCH: usize = 100;
const REQUESTERS: u64 = 32;
/// A round that has not finished after this long is reported as a hang.
const HANG: Duration = Duration::from_secs(120);
/// Events due this long after the lateness bench starts publishing, at the earliest.
const LATENESS_LEAD: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, Debug)]
struct Sizes {
    throughput: u64,
    round_trips: u64,
    late_events: usize,
    late_window_ms: u64,
    memory_events: usize,
}

const FULL: Sizes = Sizes {
    throughput: 100_000,
    round_trips: 20_000,
    late_events: 100_000,
    late_window_ms: 5_000,
    memory_events: 1_000_000,
};

const QUICK: Sizes = Sizes {
    throughput: 10_000,
    round_trips: 2_000,
    late_events: 10_000,
    late_window_ms: 1_000,
    memory_events: 100_000,
};

fn main() {
    let quick_env = std::env::var_os("HERALD_BENCH_QUICK").is_some_and(|v| v != "0" && !v.is_empty());
    if std::env::var("HERALD_BENCH_CHILD").as_deref() == Ok("memory") {
        // The parent says through the environment which size to use.
        memory_child(if quick_env { QUICK } else { FULL }.memory_events);
        return;
    }
    // Like criterion: without `--bench` (as under `cargo test --benches`) or with `--test`, a smoke run.
    let args: Vec<String> = std::env::args().collect();
    let test_mode = args.iter().any(|a| a == "--test") || !args.iter().any(|a| a == "--bench");
    let quick = quick_env || test_mode;
    let sizes = if quick { QUICK } else { FULL };
    let only = std::env::var("HERALD_BENCH_ONLY").ok();
    let wants = |case: &str| only.as_deref().is_none_or(|o| o.split(',').any(|c| c.trim() == case));
    if quick {
        println!("herald bench: quick mode, each case once with {sizes:?}");
    }

    // First, so that nothing else has grown the heap yet; in its own process all the same.
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
            .measurement_time(Duration::from_secs(4))
            .sample_size(10)
            .configure_from_args()
    });
    if wants("throughput") {
        throughput(&rt, criterion.as_mut(), sizes.throughput);
    }
    if wants("request_reply") {
        request_reply(&rt, criterion.as_mut(), sizes.round_trips);
    }
    if wants("lateness") {
        lateness(&rt, sizes.late_events, sizes.late_window_ms);
    }
    if let Some(c) = criterion {
        c.final_summary();
    }
}

// ---------------------------------------------------------------------------------------------
// Shared pieces

/// Counts handled events and wakes the waiter when a round's target is reached.
struct Sink {
    count: AtomicU64,
    target: AtomicU64,
    total: AtomicU64,
    done: Notify,
}

/// The throughput case's sinks: statics, so that herald's handler counts without cloning a
/// reference per event, as the baseline's consumers (which hold one each) count without one.
static HERALD_SINK: Sink = Sink::new();
static BASELINE_SINK: Sink = Sink::new();

impl Sink {
    const fn new() -> Self {
        Sink {
            count: AtomicU64::new(0),
            target: AtomicU64::new(0),
            total: AtomicU64::new(0),
            done: Notify::const_new(),
        }
    }

    fn arm(&self, n: u64) {
        self.count.store(0, Ordering::SeqCst);
        self.target.store(n, Ordering::SeqCst);
    }

    fn hit(&self) {
        self.total.fetch_add(1, Ordering::Relaxed);
        let c = self.count.fetch_add(1, Ordering::AcqRel) + 1;
        if c == self.target.load(Ordering::Acquire) {
            self.done.notify_one();
        }
    }

    async fn wait(&self, what: &str) {
        let n = self.target.load(Ordering::SeqCst);
        let deadline = Instant::now() + HANG;
        loop {
            let notified = self.done.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.count.load(Ordering::Acquire) >= n {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!(
                    "{what}: hang: only {} of {n} events handled after {HANG:?}",
                    self.count.load(Ordering::SeqCst)
                );
            }
        }
    }
}

/// The rate of every round (events or round trips per second), and the CPU time they took.
#[derive(Default)]
struct Rates {
    rates: Mutex<Vec<f64>>,
    /// Elements done and process CPU time (all threads) spent in the rounds: steadier than wall time
    /// on a machine shared with other work.
    cpu: Mutex<(u64, Duration)>,
}

impl Rates {
    fn add(&self, n: u64, d: Duration, cpu: Duration) {
        self.rates.lock().unwrap().push(n as f64 / d.as_secs_f64());
        let mut c = self.cpu.lock().unwrap();
        c.0 += n;
        c.1 += cpu;
    }

    /// `min/median/max over n rounds, CPU per element`, for a human reading the spread.
    fn spread(&self) -> String {
        let mut v = self.rates.lock().unwrap().clone();
        v.sort_by(f64::total_cmp);
        let (n, cpu) = *self.cpu.lock().unwrap();
        match (v.first(), v.last()) {
            (Some(lo), Some(hi)) => format!(
                "min {lo:.0} / median {:.0} / max {hi:.0} per s over {} rounds; {:.2} us of CPU each",
                v[v.len() / 2],
                v.len(),
                cpu.as_secs_f64() * 1e6 / n as f64
            ),
            _ => "no rounds".into(),
        }
    }

    /// The median rate; `None` when criterion's filter skipped the case.
    fn median(&self) -> Option<f64> {
        let mut v = self.rates.lock().unwrap().clone();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied()
    }

    /// The median, over rounds, of this round's rate divided by the rate of `base`'s round run
    /// just before it: a swing of the machine that spans a pair moves both of its rates.
    fn paired_ratio(&self, base: &Rates) -> Option<f64> {
        let (mine, base) = (self.rates.lock().unwrap(), base.rates.lock().unwrap());
        let mut v: Vec<f64> = mine.iter().zip(base.iter()).map(|(r, b)| r / b).collect();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied()
    }
}

/// Runs `round` under criterion (one criterion iteration is one round) or, in quick mode, once.
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
                            let cpu = cpu_time();
                            let (n, d) = round().await;
                            rates.add(n, d, cpu_time().saturating_sub(cpu));
                            total += d;
                        }
                        total
                    }
                })
            });
        }
        None => {
            let cpu = cpu_time();
            let (n, d) = rt.block_on(round());
            rates.add(n, d, cpu_time().saturating_sub(cpu));
        }
    }
}

/// CPU time of this process so far, all threads, from `/proc/self/stat` (user + system, in clock
/// ticks of 10 ms: the usual `USER_HZ`).
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat (Linux only)");
    // The fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
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

async fn bus(max_pending: u64) -> Herald {
    Herald::builder()
        .store(MemoryStore::new())
        .workers(WORKERS)
        .max_pending(max_pending)
        .build()
        .await
        .unwrap()
}

/// Checks, after the runtime stopped, that every event was handled exactly once.
async fn check_exactly_once(herald: &Herald, what: &str, published: u64, handled: u64) {
    let report = herald.shutdown(Duration::from_secs(10)).await;
    if published != handled || report.unfinished.unwrap_or(0) != 0 || report.interrupted != 0 {
        let stats = herald.stats().await;
        eprintln!(
            "herald bench: BUG in {what}: published {published}, handled {handled}; shutdown {report:?}; stats {stats:?}"
        );
    } else {
        println!("herald bench: {what}: {published} published, each handled exactly once, none left unfinished");
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Fire-and-forget throughput

async fn herald_round(herald: &Herald, sink: &Sink, n: u64, batch: bool) -> Duration {
    sink.arm(n);
    let start = Instant::now();
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            let herald = herald.clone();
            tokio::spawn(async move {
                let mine: Vec<u64> = (p..n).step_by(PUBLISHERS as usize).collect();
                if batch {
                    for chunk in mine.chunks(BATCH) {
                        herald
                            .publish_batch(chunk.iter().map(|i| Message::json("bench.tick", i)))
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
    for p in publishers {
        p.await.unwrap();
    }
    sink.wait(if batch {
        "bus_throughput_batch"
    } else {
        "bus_throughput"
    })
    .await;
    start.elapsed()
}

async fn channel_round(tx: &async_channel::Sender<u64>, sink: &Sink, n: u64) -> Duration {
    sink.arm(n);
    let start = Instant::now();
    let producers: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            let tx = tx.clone();
            tokio::spawn(async move {
                for i in (p..n).step_by(PUBLISHERS as usize) {
                    tx.send(i).await.unwrap();
                }
            })
        })
        .collect();
    for p in producers {
        p.await.unwrap();
    }
    sink.wait("baseline throughput").await;
    start.elapsed()
}

fn throughput(rt: &Runtime, c: Option<&mut Criterion>, n: u64) {
    let (sink, base_sink) = (&HERALD_SINK, &BASELINE_SINK);
    let herald = rt.block_on(async {
        let herald = bus(n.max(1_000_000)).await;
        herald
            .subscribe("bench-sink", "bench.tick")
            .handle(|_: u64, _ctx: Context| async {
                HERALD_SINK.hit();
                Ok::<_, HandlerError>(())
            })
            .await
            .unwrap();
        herald
    });
    let (tx, rx) = async_channel::unbounded::<u64>();
    let consumers: Vec<_> = (0..WORKERS)
        .map(|_| {
            let rx = rx.clone();
            rt.spawn(async move {
                while rx.recv().await.is_ok() {
                    BASELINE_SINK.hit();
                }
            })
        })
        .collect();
    drop(rx);

    let (single, batched) = (Rates::default(), Rates::default());
    // Each herald round follows a baseline round of its own: the two see the same machine.
    let (single_base, batched_base) = (Rates::default(), Rates::default());
    let published = AtomicU64::new(0);
    let mut g = group(c, "bus_throughput", n);
    for (name, rates, base, batch) in [
        ("herald_publish", &single, &single_base, false),
        ("herald_publish_batch", &batched, &batched_base, true),
    ] {
        measure(rt, g.as_mut(), name, rates, || async {
            let cpu = cpu_time();
            let d = channel_round(&tx, base_sink, n).await;
            base.add(n, d, cpu_time().saturating_sub(cpu));
            published.fetch_add(n, Ordering::Relaxed);
            (n, herald_round(&herald, sink, n, batch).await)
        });
    }
    if let Some(g) = g {
        g.finish();
    }
    drop(tx);
    rt.block_on(async {
        for c in consumers {
            c.await.unwrap();
        }
        check_exactly_once(
            &herald,
            "bus_throughput",
            published.load(Ordering::Relaxed),
            sink.total.load(Ordering::Relaxed),
        )
        .await;
    });
    for (name, rates) in [
        ("herald publish", &single),
        ("async_channel, alongside publish", &single_base),
        ("herald publish_batch", &batched),
        ("async_channel, alongside publish_batch", &batched_base),
    ] {
        println!("herald bench: throughput, {name}: {}", rates.spread());
    }
    for (name, rates, base) in [
        ("bus_throughput", &single, &single_base),
        ("bus_throughput_batch", &batched, &batched_base),
    ] {
        // Nothing when criterion's filter skipped the case (its baseline runs with it).
        if let (Some(r), Some(b), Some(paired)) = (rates.median(), base.median(), rates.paired_ratio(base)) {
            println!(
                "BENCH {name} events_per_s={r:.0} baseline_per_s={b:.0} ratio={:.3} paired_ratio={paired:.3}",
                r / b
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Request/reply

async fn herald_rr_round(herald: &Herald, m: u64) -> Duration {
    let start = Instant::now();
    let requesters: Vec<_> = (0..REQUESTERS)
        .map(|r| {
            let herald = herald.clone();
            tokio::spawn(async move {
                for i in (r..m).step_by(REQUESTERS as usize) {
                    let got: u64 = herald
                        .request("bench.rpc", &i)
                        .timeout(Duration::from_secs(30))
                        .await
                        .unwrap();
                    assert_eq!(got, i + 1, "a reply to the wrong request");
                }
            })
        })
        .collect();
    for r in requesters {
        tokio::time::timeout(HANG, r)
            .await
            .expect("bus_request_reply: hang")
            .unwrap();
    }
    start.elapsed()
}

type Call = (u64, oneshot::Sender<u64>);

async fn channel_rr_round(tx: &mpsc::Sender<Call>, m: u64) -> Duration {
    let start = Instant::now();
    let requesters: Vec<_> = (0..REQUESTERS)
        .map(|r| {
            let tx = tx.clone();
            tokio::spawn(async move {
                for i in (r..m).step_by(REQUESTERS as usize) {
                    let (reply, answer) = oneshot::channel();
                    tx.send((i, reply)).await.unwrap();
                    assert_eq!(answer.await.unwrap(), i + 1);
                }
            })
        })
        .collect();
    for r in requesters {
        r.await.unwrap();
    }
    start.elapsed()
}

/// Requests handled, counted by herald's handler and by the baseline's server alike (a static:
/// no reference cloned per request).
static RPC_HANDLED: AtomicU64 = AtomicU64::new(0);
static RPC_ANSWERED: AtomicU64 = AtomicU64::new(0);

fn request_reply(rt: &Runtime, c: Option<&mut Criterion>, m: u64) {
    let handled = &RPC_HANDLED;
    let herald = rt.block_on(async {
        let herald = bus(1_000_000).await;
        herald
            .subscribe("bench-rpc", "bench.rpc")
            .handle(|n: u64, _ctx: Context| async move {
                RPC_HANDLED.fetch_add(1, Ordering::Relaxed);
                Ok::<_, HandlerError>(n + 1)
            })
            .await
            .unwrap();
        herald
    });
    let (tx, mut rx) = mpsc::channel::<Call>(1024);
    let server = rt.spawn(async move {
        while let Some((n, reply)) = rx.recv().await {
            RPC_ANSWERED.fetch_add(1, Ordering::Relaxed);
            let _ = reply.send(n + 1);
        }
    });

    let (bus_rates, baseline) = (Rates::default(), Rates::default());
    let requested = AtomicU64::new(0);
    let mut g = group(c, "bus_request_reply", m);
    // Each herald round follows a baseline round of its own: the two see the same machine.
    measure(rt, g.as_mut(), "herald_request", &bus_rates, || async {
        let cpu = cpu_time();
        let d = channel_rr_round(&tx, m).await;
        baseline.add(m, d, cpu_time().saturating_sub(cpu));
        requested.fetch_add(m, Ordering::Relaxed);
        (m, herald_rr_round(&herald, m).await)
    });
    if let Some(g) = g {
        g.finish();
    }
    drop(tx);
    rt.block_on(async {
        server.await.unwrap();
        check_exactly_once(
            &herald,
            "bus_request_reply",
            requested.load(Ordering::Relaxed),
            handled.load(Ordering::Relaxed),
        )
        .await;
    });
    for (name, rates) in [("herald request", &bus_rates), ("mpsc + oneshot", &baseline)] {
        println!("herald bench: request/reply, {name}: {}", rates.spread());
    }
    // Nothing when criterion's filter skipped the case (its baseline runs with it).
    if let (Some(r), Some(base), Some(paired)) =
        (bus_rates.median(), baseline.median(), bus_rates.paired_ratio(&baseline))
    {
        println!(
            "BENCH bus_request_reply per_s={r:.0} baseline_per_s={base:.0} ratio={:.3} paired_ratio={paired:.3}",
            r / base
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Lateness of delayed events

fn lateness(rt: &Runtime, n: usize, window_ms: u64) {
    const UNSEEN: i64 = i64::MIN;
    let late_us: Arc<Vec<AtomicI64>> = Arc::new((0..n).map(|_| AtomicI64::new(UNSEEN)).collect());
    let sink = Arc::new(Sink::new());
    let duplicates = Arc::new(AtomicU64::new(0));
    let base = Instant::now();
    let clock = rt.block_on(async {
        let herald = bus((2 * n as u64).max(100_000)).await;
        let (late, s, dup) = (late_us.clone(), sink.clone(), duplicates.clone());
        herald
            .subscribe("bench-late", "bench.late")
            .handle(move |(i, due_us): (usize, u64), _ctx: Context| {
                let now_us = i64::try_from(base.elapsed().as_micros()).unwrap();
                let (late, s, dup) = (late.clone(), s.clone(), dup.clone());
                async move {
                    if late[i].swap(now_us - due_us as i64, Ordering::Relaxed) != UNSEEN {
                        dup.fetch_add(1, Ordering::Relaxed);
                    }
                    s.hit();
                    Ok::<_, HandlerError>(())
                }
            })
            .await
            .unwrap();
        sink.arm(n as u64);

        let clock = herald.clock();
        let opens = clock.now() + LATENESS_LEAD;
        let messages: Vec<Message> = (0..n)
            .map(|i| {
                let due = opens + Duration::from_millis(fastrand::u64(..window_ms));
                // The instant the runtime's clock reads `due`: what the timer sleeps until.
                let due_us = clock.instant_at(due).duration_since(base).as_micros() as u64;
                Message::json("bench.late", &(i, due_us)).at(due)
            })
            .collect();
        let publish_start = Instant::now();
        let mut messages = messages.into_iter();
        loop {
            let chunk: Vec<Message> = messages.by_ref().take(1_000).collect();
            if chunk.is_empty() {
                break;
            }
            herald.publish_batch(chunk).await.unwrap();
        }
        let publishing = publish_start.elapsed();
        if clock.now() > opens {
            eprintln!(
                "herald bench: publishing {n} delayed events took {publishing:?}, past the {LATENESS_LEAD:?} lead: \
                 the earliest are late by that"
            );
        }
        sink.wait("bus_lateness").await;
        check_exactly_once(&herald, "bus_lateness", n as u64, sink.total.load(Ordering::Relaxed)).await;
        clock
    });
    let mut v: Vec<i64> = late_us.iter().map(|a| a.load(Ordering::Relaxed)).collect();
    let unseen = v.iter().filter(|&&x| x == UNSEEN).count();
    let dups = duplicates.load(Ordering::Relaxed);
    if unseen > 0 || dups > 0 {
        eprintln!("herald bench: BUG in bus_lateness: {unseen} events never handled, {dups} handled twice");
    }
    v.retain(|&x| x != UNSEEN);
    v.sort_unstable();
    let early = v.iter().filter(|&&x| x < 0).count();
    println!(
        "herald bench: lateness of {} events over {window_ms} ms: min {:.3} ms, p90 {:.3} ms, p999 {:.3} ms, \
         {early} started before their due instant",
        v.len(),
        pct(&v, 0.0),
        pct(&v, 0.90),
        pct(&v, 0.999),
    );
    let floor = lateness_floor(rt, clock, n, window_ms);
    println!(
        "herald bench: lateness floor (one tokio task sleeping until each of {n} due instants, same clock): p50 {:.3} ms, \
         p99 {:.3} ms, max {:.3} ms",
        pct(&floor, 0.50),
        pct(&floor, 0.99),
        pct(&floor, 1.0)
    );
    println!(
        "BENCH bus_lateness p50_ms={:.3} p99_ms={:.3} max_ms={:.3}",
        pct(&v, 0.50),
        pct(&v, 0.99),
        pct(&v, 1.0)
    );
}

/// The `p` quantile (0..=1) of sorted microseconds, in milliseconds.
fn pct(sorted: &[i64], p: f64) -> f64 {
    let rank = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1] as f64 / 1000.0
}

/// What tokio's timer alone gives on the same schedule: one task sleeping until each due instant in
/// turn (as herald's timer does), recording how late it woke. The due times are whole milliseconds of
/// the same herald clock, so they have the same phase against tokio's 1 ms timer ticks as the
/// runtime's had. Sorted microseconds.
fn lateness_floor(rt: &Runtime, clock: Clock, n: usize, window_ms: u64) -> Vec<i64> {
    rt.block_on(async {
        let opens = clock.now() + Duration::from_millis(100);
        let mut due: Vec<Instant> = (0..n)
            .map(|_| clock.instant_at(opens + Duration::from_millis(fastrand::u64(..window_ms))))
            .collect();
        due.sort_unstable();
        let timer = tokio::spawn(async move {
            let mut late = Vec::with_capacity(due.len());
            for d in due {
                tokio::time::sleep_until(d).await;
                late.push(i64::try_from(Instant::now().duration_since(d).as_micros()).unwrap());
            }
            late
        });
        let mut late = timer.await.unwrap();
        late.sort_unstable();
        late
    })
}

// ---------------------------------------------------------------------------------------------
// 4. Memory per scheduled event

/// Resident memory in bytes, from `/proc/self/statm` (resident pages, 4 KiB each on the platforms
/// this runs on).
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm (Linux only)");
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

fn memory_in_child(quick: bool) {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = std::process::Command::new(exe);
    cmd.env("HERALD_BENCH_CHILD", "memory")
        .env("HERALD_BENCH_QUICK", if quick { "1" } else { "0" });
    let status = cmd.status().unwrap();
    assert!(status.success(), "the memory bench child failed: {status}");
}

fn memory_child(n: usize) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let herald = bus(2 * n as u64).await;
        herald
            .subscribe("bench-later", "bench.later")
            .handle(|_: String, _ctx: Context| async { Ok::<_, HandlerError>(()) })
            .await
            .unwrap();
        let payload = "x".repeat(62);
        assert_eq!(serde_json::to_vec(&payload).unwrap().len(), 64);
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
        let after = rss_bytes();
        let stats = herald.stats().await.unwrap();
        let scheduled = stats.deliveries.scheduled;
        assert_eq!(
            scheduled, n as u64,
            "scheduled deliveries after publishing {n}: {stats:?}"
        );
        println!(
            "herald bench: scheduled {n} events in {took:?}; RSS {:.1} MiB -> {:.1} MiB",
            before as f64 / 1048576.0,
            after as f64 / 1048576.0
        );
        println!(
            "BENCH bus_memory bytes_per_event={:.0}",
            after.saturating_sub(before) as f64 / n as f64
        );
    });
}
