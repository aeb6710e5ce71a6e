//! Cron across a cluster of real `herald serve` processes: three servers sharing one store and
//! namespace (Redis; PostgreSQL) declare the same every-second schedule from the same config
//! file; one is killed with SIGKILL halfway through a 20 s run. Every tick makes exactly one
//! event, no tick is missing while a server is up, and a pull consumer handles each once.
//!
//! The embedded SQLite store is one process per file by design (a lock file), so it cannot be
//! shared by three processes: the last test shows that a second server on the same data
//! directory refuses to start and says why. A cluster needs Redis or PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used)]
#![cfg_attr(not(any(feature = "redis", feature = "postgres")), allow(dead_code))]

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use tokio::process::{Child, Command};
use tokio::time::Instant;

/// How long the schedule runs, and when one server is killed.
const RUN: Duration = Duration::from_secs(20);
const KILL_AT: Duration = Duration::from_secs(10);

/// The servers, killed (SIGKILL) when dropped: on success, and on a panic mid-test too.
struct Cluster {
    servers: Vec<(Option<Child>, String)>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (child, _) in &mut self.servers {
            if let Some(child) = child {
                let _ = child.start_kill();
            }
        }
    }
}

async fn spawn(args: &[String]) -> (Child, String) {
    common::spawn_serve(args, "warn").await
}

fn unix_secs(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

/// Every event of `topic`, newest first, through all pages.
async fn events(http: &reqwest::Client, base: &str, topic: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut query = vec![("topic", topic.to_owned()), ("limit", "1000".to_owned())];
        if let Some(a) = &after {
            query.push(("after", a.clone()));
        }
        let page: Value = http
            .get(format!("{base}/v1/events"))
            .query(&query)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        out.extend(page["items"].as_array().unwrap().iter().cloned());
        match page["next"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => return out,
        }
    }
}

/// The tick of a schedule's event (whole seconds since the epoch), from its `herald-cron-tick`
/// header, checked against its idempotency key.
fn tick_of(event: &Value) -> i64 {
    let tick = event["headers"]["herald-cron-tick"].as_str().unwrap();
    assert_eq!(event["key"].as_str().unwrap(), format!("cron:every-second:{tick}"));
    let t = humantime::parse_rfc3339(tick).unwrap();
    let ms = t.duration_since(UNIX_EPOCH).unwrap().as_millis();
    assert_eq!(ms % 1000, 0, "ticks are whole seconds: {tick}");
    i64::try_from(ms / 1000).unwrap()
}

/// What the pull consumers did: the events they acked, and the calls that failed (kept for the
/// failure message: a slow store can fail a call without the test being wrong about ticks).
#[derive(Default)]
struct Log {
    acked: Vec<String>,
    errors: Vec<String>,
}

/// A pull consumer on one server: claims and acks until `stop`.
async fn consume(http: reqwest::Client, base: String, log: Arc<Mutex<Log>>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::SeqCst) {
        let claimed = http
            .post(format!("{base}/v1/subscriptions/ticks/claim"))
            .json(&json!({"max": 10, "wait_ms": 300}))
            .send()
            .await;
        let claimed: Value = match claimed {
            Ok(r) if r.status().is_success() => r.json().await.unwrap(),
            Ok(r) => {
                let error = format!("claim on {base}: {} {}", r.status(), r.text().await.unwrap_or_default());
                log.lock().unwrap().errors.push(error);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Err(e) => {
                log.lock().unwrap().errors.push(format!("claim on {base}: {e}"));
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        for item in claimed["items"].as_array().unwrap() {
            let id = item["event"]["id"].as_str().unwrap().to_owned();
            let acked = http
                .post(format!("{base}/v1/subscriptions/ticks/ack"))
                .json(&json!({"lease": item["lease"]}))
                .send()
                .await;
            let mut log = log.lock().unwrap();
            match acked {
                Ok(r) if r.status().is_success() => log.acked.push(id),
                Ok(r) => log.errors.push(format!("ack of {id} on {base}: {}", r.status())),
                Err(e) => log.errors.push(format!("ack of {id} on {base}: {e}")),
            }
        }
    }
}

async fn three_servers_fire_each_tick_once(store: &str) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("herald.toml");
    std::fs::write(
        &config,
        "[[cron]]\nname = \"every-second\"\nexpr = \"* * * * * *\"\ntopic = \"clock.tick\"\n",
    )
    .unwrap();
    let ns = common::namespace("cron");
    let args = |i: usize| -> Vec<String> {
        let data: &Path = dir.path();
        vec![
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--store".into(),
            store.into(),
            "--namespace".into(),
            ns.clone(),
            "--config".into(),
            config.display().to_string(),
            "--data".into(),
            data.join(format!("node{i}")).display().to_string(),
            "--shutdown-timeout-ms".into(),
            "2000".into(),
        ]
    };
    // The first server declares the store's schema (PostgreSQL migrations, under a lock) before
    // the others race for it; then the other two together.
    let first = spawn(&args(0)).await;
    let (args1, args2) = (args(1), args(2));
    let (second, third) = tokio::join!(spawn(&args1), spawn(&args2));
    let mut cluster = Cluster {
        servers: vec![
            (Some(first.0), first.1),
            (Some(second.0), second.1),
            (Some(third.0), third.1),
        ],
    };
    let bases: Vec<String> = cluster.servers.iter().map(|(_, b)| b.clone()).collect();
    let http = reqwest::Client::new();
    // A pull consumer of the ticks, declared in the shared store (each server knows it by name).
    for base in &bases {
        let r = http
            .post(format!("{base}/v1/subscriptions"))
            .json(&json!({"name": "ticks", "pattern": "clock.tick"}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    }
    // From here on every tick's event is routed to `ticks`, and some server is always up.
    let up = SystemTime::now();
    let started = Instant::now();
    let log = Arc::new(Mutex::new(Log::default()));
    let stop = Arc::new(AtomicBool::new(false));
    // Competing consumers on the two servers that stay up.
    let consumers: Vec<_> = bases[..2]
        .iter()
        .map(|base| tokio::spawn(consume(http.clone(), base.clone(), log.clone(), stop.clone())))
        .collect();

    tokio::time::sleep_until(started + KILL_AT).await;
    let mut victim = cluster.servers[2].0.take().unwrap();
    victim.start_kill().unwrap();
    let status = victim.wait().await.unwrap();
    assert!(!status.success(), "SIGKILL: {status}");
    let killed = unix_secs(SystemTime::now());

    tokio::time::sleep_until(started + RUN).await;
    let end = SystemTime::now();
    // The window of ticks that must each have exactly one event: whole seconds after `up` up to
    // `end`, less one second at each edge: the first tick after `up` may have been published
    // just before the subscription was declared on every path (unrouted), and the tick in the
    // second before `end` may still be in flight when `end` is read.
    let first_tick = unix_secs(up).ceil() as i64 + 1;
    let last_tick = unix_secs(end).floor() as i64 - 1;
    assert!(last_tick - first_tick >= 15, "a window of {first_tick}..={last_tick}");
    let window = first_tick..=last_tick;

    // Wait (bounded) until the consumers have handled every tick of the window.
    let deadline = Instant::now() + Duration::from_secs(15);
    let stored = loop {
        let stored = events(&http, &bases[0], "clock.tick").await;
        let done = window.clone().all(|t| {
            stored
                .iter()
                .any(|e| tick_of(e) == t && e["status"].as_str() == Some("succeeded"))
        });
        if done || Instant::now() > deadline {
            break stored;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Each consumer finishes its claim (a long poll of at most 300 ms) and its acks, then stops.
    stop.store(true, Ordering::SeqCst);
    for c in consumers {
        c.await.expect("a consumer failed");
    }

    // Exactly one event per tick, across everything stored.
    let mut by_tick: BTreeMap<i64, Vec<&Value>> = BTreeMap::new();
    for e in &stored {
        by_tick.entry(tick_of(e)).or_default().push(e);
    }
    for (tick, list) in &by_tick {
        assert_eq!(list.len(), 1, "tick {tick} has {} events: {list:?}", list.len());
    }
    // No tick of the window is missing, each was handled, and handled once.
    let (acked, errors) = {
        let log = log.lock().unwrap();
        (log.acked.clone(), log.errors.clone())
    };
    let missing: Vec<i64> = window.clone().filter(|t| !by_tick.contains_key(t)).collect();
    assert!(
        missing.is_empty(),
        "ticks {missing:?} have no event (window {first_tick}..={last_tick}, server 2 killed at {killed:.3}); \
         consumer errors: {errors:?}"
    );
    for t in window.clone() {
        let e = by_tick[&t][0];
        assert_eq!(e["status"], "succeeded", "tick {t}: {e}; consumer errors: {errors:?}");
        let id = e["id"].as_str().unwrap();
        let times = acked.iter().filter(|a| *a == id).count();
        assert_eq!(times, 1, "tick {t}'s event {id} was acked {times} times");
    }
    let mut seen = acked.clone();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), acked.len(), "an event was acked twice");

    // Which server stored each tick (cron.task.executed comes from the one whose publish won).
    let mut winners: BTreeMap<String, usize> = BTreeMap::new();
    for e in events(&http, &bases[0], "cron.task.executed").await {
        *winners
            .entry(e["payload"]["node"].as_str().unwrap_or("?").to_owned())
            .or_default() += 1;
    }
    println!(
        "cron cluster on {}: {} ticks in the window, {} events stored, {} acked; stored by node: {winners:?}; \
         consumer errors: {errors:?}",
        store.split(':').next().unwrap(),
        window.count(),
        stored.len(),
        acked.len()
    );
    drop(cluster);
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_three_servers_one_event_per_tick_with_one_killed() {
    three_servers_fire_each_tick_once("redis://127.0.0.1:6379").await;
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_three_servers_one_event_per_tick_with_one_killed() {
    three_servers_fire_each_tick_once("postgres://postgres@127.0.0.1:5432/test").await;
}

/// The embedded store is one process per file: a second `herald serve` on the same data
/// directory does not start, and says that the file is in use. Servers that should share a
/// store (and fire each cron tick once between them) need Redis or PostgreSQL.
#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_store_refuses_a_second_server_on_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data").display().to_string();
    let args: Vec<String> = ["--listen", "127.0.0.1:0", "--data", &data]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    let (first, _) = spawn(&args).await;
    let _cluster = Cluster {
        servers: vec![(Some(first), String::new())],
    };
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .arg("serve")
        .args(&args)
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a second server on the same file started: {stderr}"
    );
    assert!(
        stderr.contains("cannot open the store") && stderr.contains("is in use by another process"),
        "{stderr}"
    );
    assert!(stderr.contains("herald.db"), "it names the file: {stderr}");
}
