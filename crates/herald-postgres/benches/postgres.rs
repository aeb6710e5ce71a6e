//! Benchmarks of the PostgreSQL store on the server at `HERALD_PG_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`), beside `pgbench` run against the same server in the
//! same run (so the ratio says what herald makes of this server, whatever its disk and load).
//!
//! `cargo bench -p herald-postgres` prints:
//!
//! ```text
//! BENCH pg_baseline pgbench_clients=8 seconds=10 tps=..
//! BENCH pg_e2e events_per_s=.. baseline_tps=.. ratio=.. nodes=2 workers=32 publish_batch=50 publishers=4
//! BENCH pg_e2e_single events_per_s=.. baseline_tps=.. ratio=.. publish_batch=1 publishers=32 (full runs only)
//! BENCH pg_lateness p50_ms=.. p99_ms=.. max_ms=.. delays=..
//! ```
//!
//! - baseline: `pgbench -c 8 -T 10` (TPC-B-like transactions, 8 clients) on a database of its
//!   own, initialised with `pgbench -i` first: the transaction rate this server sustains.
//! - e2e: two herald nodes in this process share one schema, each with its own pool, listener and
//!   runtime of 32 workers, both subscribed (one subscription, competing consumers) with a no-op
//!   handler. Publishers on both nodes publish N events in batches (`publish_batch`, default 50:
//!   `HERALD_BENCH_BATCH`, from `HERALD_BENCH_PUBLISHERS`=4 tasks); a round ends when every event
//!   is handled and its outcome recorded. Events per second end to end (median of the rounds),
//!   against pgbench's tps. Target: 2x. Full runs also measure single-event publishes from 32
//!   tasks (`pg_e2e_single`), where each event costs a commit of its own.
//! - lateness: delays of 0.5 to 3 s published on node A fire on node B, which has the only
//!   subscription (it learns the due times from NOTIFY); lateness is the handler's start by B's
//!   clock minus the due time. Target: p99 at most 5 ms.
//!
//! Environment: `HERALD_BENCH_QUICK=1` (or criterion's `--test`): a seconds-long run (pgbench
//! `-T 2`, one e2e round of a few thousand events, fewer delays), what CI runs.
//! `HERALD_BENCH_ONLY=e2e,lateness`: only these cases (the baseline runs with e2e).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use criterion::{Criterion, SamplingMode, Throughput};
use herald_core::{Context, HandlerError, Herald, Message};
use herald_postgres::PostgresStore;
use tokio::runtime::Runtime;
use tokio::time::Instant;

const WORKERS: usize = 32;
const HANG: Duration = Duration::from_secs(600);

fn url() -> String {
    std::env::var("HERALD_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

fn main() {
    let quick = std::env::var_os("HERALD_BENCH_QUICK").is_some_and(|v| v != "0" && !v.is_empty())
        || std::env::args().any(|a| a == "--test");
    let batch: u64 = std::env::var("HERALD_BENCH_BATCH")
        .ok()
        .and_then(|b| b.parse().ok())
        .unwrap_or(50)
        .max(1);
    let publishers: u64 = std::env::var("HERALD_BENCH_PUBLISHERS")
        .ok()
        .and_then(|b| b.parse().ok())
        .unwrap_or(4)
        .max(1);
    if quick {
        println!("herald-postgres bench: quick mode");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let only = std::env::var("HERALD_BENCH_ONLY").ok();
    let wants = |case: &str| only.as_deref().is_none_or(|o| o.split(',').any(|c| c.trim() == case));
    let (n, delays) = if quick { (3_000, 100) } else { (20_000, 600) };
    // Lateness first: the e2e rounds leave the server vacuuming and checkpointing for a while.
    if wants("lateness") {
        let (p50, p99, max) = lateness(&rt, delays);
        println!(
            "BENCH pg_lateness p50_ms={p50:.2} p99_ms={p99:.2} max_ms={max:.2} delays={delays} load1={}",
            load()
        );
    }
    if wants("e2e") {
        let baseline = pgbench(if quick { 2 } else { 10 });
        let rate = e2e(&rt, quick, n, batch, publishers);
        println!(
            "BENCH pg_e2e events_per_s={rate:.0} baseline_tps={baseline:.0} ratio={:.2} nodes=2 workers={WORKERS} publish_batch={batch} publishers={publishers} load1={}",
            rate / baseline,
            load()
        );
        if !quick {
            // The same with one event per publish from 32 publishers (what an HTTP front end
            // does): every event then costs a commit of its own.
            let rate = e2e(&rt, quick, 5_000, 1, 32);
            println!(
                "BENCH pg_e2e_single events_per_s={rate:.0} baseline_tps={baseline:.0} ratio={:.2} nodes=2 workers={WORKERS} publish_batch=1 publishers=32 load1={}",
                rate / baseline,
                load()
            );
        }
    }
}

/// The machine's load average over the last minute: on a shared machine, what the figures were
/// measured under.
fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".to_owned())
}

// ---------------------------------------------------------------------------------------------
// Baseline: pgbench

/// `pgbench -c 8 -T seconds` on a database of its own (created, initialised, dropped); its tps.
fn pgbench(seconds: u32) -> f64 {
    let cfg: tokio_postgres::Config = url().parse().unwrap();
    let host = match cfg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => "127.0.0.1".to_owned(),
    };
    let port = cfg.get_ports().first().copied().unwrap_or(5432).to_string();
    let user = cfg.get_user().unwrap_or("postgres").to_owned();
    let admin_db = cfg.get_dbname().unwrap_or("postgres").to_owned();
    let db = format!("herald_pgbench_{}", std::process::id());
    let psql = |sql: &str| {
        let ok = Command::new("psql")
            .args(["-h", &host, "-p", &port, "-U", &user, "-d", &admin_db, "-qc", sql])
            .status()
            .expect("psql (apt-get install postgresql-client)");
        assert!(ok.success(), "psql -c {sql} failed");
    };
    psql(&format!("DROP DATABASE IF EXISTS {db}"));
    psql(&format!("CREATE DATABASE {db}"));
    let common = ["-h", &host, "-p", &port, "-U", &user];
    let init = Command::new("pgbench")
        .args(common)
        .args(["-i", "-q", &db])
        .output()
        .expect("pgbench (apt-get install postgresql-contrib or postgresql-client)");
    assert!(
        init.status.success(),
        "pgbench -i: {}",
        String::from_utf8_lossy(&init.stderr)
    );
    let run = Command::new("pgbench")
        .args(common)
        .args(["-c", "8", "-T", &seconds.to_string(), &db])
        .output()
        .unwrap();
    psql(&format!("DROP DATABASE IF EXISTS {db}"));
    let out = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "pgbench: {out} {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let tps = out
        .lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|t| t.parse::<f64>().ok())
        .expect("a tps line in pgbench's output");
    println!("BENCH pg_baseline pgbench_clients=8 seconds={seconds} tps={tps:.0}");
    tps
}

// ---------------------------------------------------------------------------------------------
// Shared pieces

/// A schema of its own for one case, dropped at the end.
struct Schema(String);

impl Schema {
    fn new(case: &str) -> Schema {
        Schema(format!("herald_bench_{}_{case}", std::process::id()))
    }

    async fn drop_it(&self) {
        let (client, conn) = tokio_postgres::connect(&url(), tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        client
            .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.0))
            .await
            .unwrap();
    }
}

async fn node(schema: &str) -> Herald {
    let store = PostgresStore::builder(url())
        .schema(schema)
        .pool_size(16)
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
}

// ---------------------------------------------------------------------------------------------
// End to end: publish -> no-op handler -> ack, two nodes

fn e2e(rt: &Runtime, quick: bool, n: u64, batch: u64, publishers: u64) -> f64 {
    let schema = Schema::new("e2e");
    let handled = Arc::new(AtomicU64::new(0));
    let nodes: Vec<Herald> = rt.block_on(async {
        let mut nodes = Vec::new();
        for _ in 0..2 {
            let herald = node(&schema.0).await;
            let count = handled.clone();
            herald
                .subscribe("bench", "bench.>")
                .handle(move |_: u64, _ctx: Context| {
                    count.fetch_add(1, Ordering::Relaxed);
                    async { Ok::<_, HandlerError>(()) }
                })
                .await
                .unwrap();
            nodes.push(herald);
        }
        nodes
    });
    let rates = Mutex::new(Vec::new());
    let admin = rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(&url(), tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        Arc::new(client)
    });
    let schema_name = schema.0.clone();
    let round = || {
        let (nodes, handled, rates) = (nodes.clone(), handled.clone(), &rates);
        let (admin, schema_name) = (admin.clone(), schema_name.clone());
        async move {
            let target = handled.load(Ordering::Relaxed) + n;
            let start = Instant::now();
            // Publishers on both nodes, each with its share in batches.
            let tasks: Vec<_> = (0..publishers)
                .map(|p| {
                    let herald = nodes[(p % 2) as usize].clone();
                    tokio::spawn(async move {
                        let mine: Vec<u64> = (p..n).step_by(publishers as usize).collect();
                        for chunk in mine.chunks(batch as usize) {
                            let messages: Vec<Message> = chunk.iter().map(|i| Message::json("bench.e2e", i)).collect();
                            herald.publish_batch(messages).await.unwrap();
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
            let deadline = Instant::now() + HANG;
            while handled.load(Ordering::Relaxed) < target {
                assert!(Instant::now() < deadline, "e2e: the events were not all handled");
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            // Handled is not yet acknowledged: wait until every outcome is recorded (no delivery
            // leased any more; a look at the index of leased deliveries, not a count of all).
            while leased(&admin, &schema_name).await {
                assert!(Instant::now() < deadline, "e2e: the outcomes were not all recorded");
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let took = start.elapsed();
            rates.lock().unwrap().push(n as f64 / took.as_secs_f64());
            took
        }
    };
    if quick {
        rt.block_on(round());
    } else {
        let mut c = Criterion::default()
            .without_plots()
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(20))
            .sample_size(10)
            .configure_from_args();
        let mut g = c.benchmark_group(format!("pg_e2e_batch{batch}_publishers{publishers}"));
        g.throughput(Throughput::Elements(n)).sampling_mode(SamplingMode::Flat);
        g.bench_function("publish_handle_ack", |b| {
            b.to_async(rt).iter_custom(|iters| {
                let round = &round;
                async move {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        total += round().await;
                    }
                    total
                }
            })
        });
        g.finish();
    }
    rt.block_on(async {
        for h in &nodes {
            h.shutdown(Duration::from_secs(5)).await;
        }
        schema.drop_it().await;
    });
    let mut v = rates.into_inner().unwrap();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Whether any delivery in `schema` is leased (handled but its outcome not recorded yet).
async fn leased(admin: &tokio_postgres::Client, schema: &str) -> bool {
    admin
        .query_one(
            &format!("SELECT EXISTS (SELECT 1 FROM \"{schema}\".deliveries WHERE status = 8)"),
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

// ---------------------------------------------------------------------------------------------
// Cross-node delay lateness

fn lateness(rt: &Runtime, delays: u64) -> (f64, f64, f64) {
    let schema = Schema::new("lateness");
    rt.block_on(async {
        let a = node(&schema.0).await;
        let b = node(&schema.0).await;
        let late = Arc::new(Mutex::new(Vec::with_capacity(delays as usize)));
        let done = Arc::new(tokio::sync::Notify::new());
        let (l2, d2, clock) = (late.clone(), done.clone(), b.clock());
        b.subscribe("late", "late.>")
            .handle(move |_: u64, ctx: Context| {
                let ms = clock.now().millis_since(ctx.due());
                let mut v = l2.lock().unwrap();
                v.push(ms as f64);
                if v.len() as u64 == delays {
                    d2.notify_one();
                }
                async { Ok::<_, HandlerError>(()) }
            })
            .await
            .unwrap();
        // Published from node A over about a second, each due 0.5 to 3 s after its publish.
        for i in 0..delays {
            let at = a.clock().now() + Duration::from_millis(fastrand::u64(500..3_000));
            a.publish("late.tick", &i).at(at).await.unwrap();
            if i % 10 == 9 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        tokio::time::timeout(HANG, done.notified())
            .await
            .expect("lateness hang");
        a.shutdown(Duration::from_secs(5)).await;
        b.shutdown(Duration::from_secs(5)).await;
        schema.drop_it().await;
        let mut v = late.lock().unwrap().clone();
        v.sort_by(f64::total_cmp);
        let q = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
        (q(0.5), q(0.99), q(1.0))
    })
}
