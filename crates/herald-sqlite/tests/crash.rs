//! Crash recovery with real processes killed by SIGKILL.
//!
//! The test binary runs itself again as the child process: `crash_child` is a no-op test unless
//! `HERALD_CRASH_ROLE` names a role. Nothing waits by sleeping: the parent reads the child's
//! stdout lines with a deadline, and the finishing process watches the store until the work is
//! done.
//!
//! - `a_worker_killed_mid_run_loses_nothing`: a process handles events (a handler that logs each
//!   attempt to a side file) and is killed mid-run; a second process finishes once the leases of
//!   the first run out. Every event is handled at least once; every event whose success was
//!   recorded is handled exactly once; only the attempts in flight at the kill (claimed, no outcome
//!   recorded) run twice, once their lease ran out.
//! - `a_publisher_killed_mid_run_loses_no_acknowledged_event`: every publish that returned `Ok`
//!   before the kill is in the store afterwards, and the file passes SQLite's integrity check.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use herald_core::{
    Context, Event, EventId, EventParts, HandlerError, Herald, Pattern, Store, SubscriptionName, SubscriptionSpec,
    Topic,
};
use herald_sqlite::SqliteStore;

const ROLE: &str = "HERALD_CRASH_ROLE";
const DB: &str = "HERALD_CRASH_DB";
const LOG: &str = "HERALD_CRASH_LOG";
const EVENTS: usize = 400;
const WORKERS: usize = 8;
/// The lease of the first (killed) process: what the second one waits for.
const LEASE: Duration = Duration::from_secs(1);
/// How long any step may take before the test fails instead of hanging.
const DEADLINE: Duration = Duration::from_secs(60);

/// Entry point of the child processes; does nothing in a normal test run.
#[test]
fn crash_child() {
    let Ok(role) = std::env::var(ROLE) else { return };
    let db = PathBuf::from(std::env::var(DB).unwrap());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    match role.as_str() {
        "worker" | "finisher" => rt.block_on(work(&db, &PathBuf::from(std::env::var(LOG).unwrap()), &role)),
        "publisher" => rt.block_on(publish_until_killed(&db)),
        other => panic!("unknown role {other}"),
    }
}

/// Handles events, logging each attempt's start and end to the side file; the finisher returns
/// once nothing is left open, the worker runs until it is killed.
async fn work(db: &Path, log: &Path, role: &str) {
    let log = Arc::new(std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap());
    let store = SqliteStore::open(db).unwrap();
    let herald = Herald::builder()
        .store(store)
        .workers(WORKERS)
        .lease(LEASE)
        .system_events(false)
        .build()
        .await
        .unwrap();
    let handled = Arc::new(tokio::sync::Notify::new());
    let notify = handled.clone();
    herald
        .subscribe("work", "job.run")
        .handle(move |n: u64, ctx: Context| {
            let log = log.clone();
            let notify = notify.clone();
            async move {
                let id = ctx.event().id();
                (&*log)
                    .write_all(format!("start {id} {n} {}\n", ctx.attempt()).as_bytes())
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
                (&*log).write_all(format!("done {id}\n").as_bytes()).unwrap();
                println!("done {id}");
                notify.notify_one();
                Ok::<_, HandlerError>(())
            }
        })
        .await
        .unwrap();
    let started = Instant::now();
    loop {
        let woken = handled.notified();
        if role == "finisher" && herald.stats().await.unwrap().deliveries.open() == 0 {
            println!("finished");
            herald.shutdown(Duration::from_secs(5)).await;
            return;
        }
        assert!(started.elapsed() < DEADLINE, "{role}: the work did not finish in time");
        // The lease expiry of the killed run's deliveries wakes the runtime, not this loop: a
        // bounded wait keeps the check going while those are claimed again.
        let _ = tokio::time::timeout(Duration::from_millis(200), woken).await;
    }
}

/// Publishes from several tasks, printing each id once its publish returned `Ok`.
async fn publish_until_killed(db: &Path) {
    let herald = Herald::builder()
        .store(SqliteStore::open(db).unwrap())
        .unbounded()
        .system_events(false)
        .build()
        .await
        .unwrap();
    herald
        .store()
        .declare(&SubscriptionSpec {
            name: SubscriptionName::new("audit").unwrap(),
            pattern: Pattern::new("pub.>").unwrap(),
        })
        .await
        .unwrap();
    let count = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let herald = herald.clone();
            let count = count.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                while started.elapsed() < DEADLINE {
                    let n = count.fetch_add(1, Ordering::Relaxed);
                    let id = herald.publish("pub.event", &n).await.unwrap();
                    println!("published {id}");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

/// A child process of this test binary in `role`, with its stdout read line by line.
struct ChildProcess {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl ChildProcess {
    fn spawn(role: &str, db: &Path, log: &Path) -> Self {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env(ROLE, role)
            .env(DB, db)
            .env(LOG, log)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        ChildProcess { child, lines }
    }

    /// Waits for stdout lines until `enough` says so; returns every line read.
    fn read_until(&self, what: &str, mut enough: impl FnMut(&str) -> bool) -> Vec<String> {
        let deadline = Instant::now() + DEADLINE;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let done = enough(&line);
                    seen.push(line);
                    if done {
                        return seen;
                    }
                }
                Err(e) => panic!("waiting for {what}: {e}; read {} lines", seen.len()),
            }
        }
    }

    /// Kills the process with SIGKILL and returns the lines it wrote before dying.
    fn kill(mut self) -> Vec<String> {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self.lines.iter().collect()
    }
}

struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let dir = std::env::temp_dir().join(format!("herald-sqlite-crash-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Dir(dir)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn a_worker_killed_mid_run_loses_nothing() {
    if std::env::var_os(ROLE).is_some() {
        return;
    }
    let dir = Dir::new("worker");
    let db = dir.0.join("herald.db");
    let log = dir.0.join("handled.log");
    let published: BTreeSet<EventId> = runtime().block_on(async {
        let store = SqliteStore::open(&db).unwrap();
        store
            .declare(&SubscriptionSpec {
                name: SubscriptionName::new("work").unwrap(),
                pattern: Pattern::new("job.run").unwrap(),
            })
            .await
            .unwrap();
        let now = store.clock().now();
        let events: Vec<Event> = (0..EVENTS)
            .map(|n| {
                let mut e = EventParts::new(Topic::new("job.run").unwrap(), serde_json::to_vec(&n).unwrap());
                e.published_at = now;
                e.deliver_at = now;
                Event::from_parts(e)
            })
            .collect();
        let ids = events.iter().map(Event::id).collect();
        store.publish(events).await.unwrap();
        ids
    });

    let worker = ChildProcess::spawn("worker", &db, &log);
    let mut done = 0;
    worker.read_until("the worker to handle a quarter of the events", |line| {
        done += usize::from(line.starts_with("done "));
        done >= EVENTS / 4
    });
    worker.kill();

    let finisher = ChildProcess::spawn("finisher", &db, &log);
    finisher.read_until("the finisher to finish", |line| line == "finished");
    let status = { finisher }.child.wait().unwrap();
    assert!(status.success(), "the finisher failed: {status}");

    let mut handled: BTreeMap<EventId, usize> = BTreeMap::new();
    for line in std::fs::read_to_string(&log).unwrap().lines() {
        if let Some(id) = line.strip_prefix("done ") {
            *handled.entry(id.parse().unwrap()).or_default() += 1;
        }
    }
    let sub = SubscriptionName::new("work").unwrap();
    let in_flight = runtime().block_on(async {
        let store = SqliteStore::open(&db).unwrap();
        herald_testkit::crash::check_at_least_once(&store, &sub, published.iter().copied(), &handled, LEASE).await
    });
    println!("{} attempts were in flight at the kill and ran again", in_flight.len());
}

#[test]
fn a_publisher_killed_mid_run_loses_no_acknowledged_event() {
    if std::env::var_os(ROLE).is_some() {
        return;
    }
    let dir = Dir::new("publisher");
    let db = dir.0.join("herald.db");
    let publisher = ChildProcess::spawn("publisher", &db, &dir.0.join("unused.log"));
    let mut n = 0;
    let mut lines = publisher.read_until("the publisher to publish", |line| {
        n += usize::from(line.starts_with("published "));
        n >= 500
    });
    lines.extend(publisher.kill());
    let acknowledged: Vec<EventId> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("published "))
        .map(|id| id.parse().unwrap())
        .collect();
    assert!(acknowledged.len() >= 500);

    let conn = rusqlite::Connection::open(&db).unwrap();
    let check: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(check, "ok");
    drop(conn);
    runtime().block_on(async {
        let store = SqliteStore::open(&db).unwrap();
        for id in &acknowledged {
            assert!(
                store.get(*id).await.unwrap().is_some(),
                "event {id} was acknowledged before the kill but is not in the store"
            );
        }
        let stats = store.stats().await.unwrap();
        assert!(stats.events >= acknowledged.len() as u64);
        assert_eq!(
            stats.deliveries.pending, stats.events,
            "every stored event has its delivery"
        );
    });
}
