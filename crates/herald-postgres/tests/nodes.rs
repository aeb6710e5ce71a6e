//! Several nodes, one system: real processes (this test binary run again as `node_child`) sharing
//! one schema on the PostgreSQL at `HERALD_PG_URL` (default `postgres://postgres@127.0.0.1:5432/test`).
//!
//! - `three_nodes_handle_each_delivery_once`: three nodes share the work; every delivery is
//!   handled exactly once and each node handled some.
//! - `a_killed_node_loses_nothing`: one of three nodes is killed with SIGKILL mid-run; the other two
//!   finish its deliveries once their leases run out; only the attempts in flight at the kill run
//!   twice.
//! - `a_delay_fires_on_another_node_on_its_millisecond`: delays published here (node A) fire on a
//!   child (node B), which learns their due times from NOTIFY: nothing fires early, and none waits
//!   for a poll (the runtime's only re-check is every 30 s).
//! - `a_node_with_a_skewed_clock_fires_nothing_early`: two nodes run under libfaketime with their
//!   clocks 2 s ahead and 2 s behind; nothing fires before its due time by the real clock, and no
//!   live lease is taken (each delivery runs once, though handlers outlast their first lease).
//!
//! Nothing waits by sleeping: the parent reads the children's stdout lines with a deadline.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use herald_core::{
    Context, EventFilter, EventId, EventStatus, HandlerError, Herald, Message, PageRequest, Pattern, Store,
    SubscriptionName, SubscriptionSpec, Timestamp,
};
use herald_postgres::PostgresStore;
use support::{drop_schema, fresh_schema, quantile, url, Children, Line};

const ROLE: &str = "HERALD_PG_NODE";
const SCHEMA: &str = "HERALD_PG_SCHEMA";
const LEASE_MS: &str = "HERALD_PG_LEASE_MS";
const HANDLER_MS: &str = "HERALD_PG_HANDLER_MS";
const SLOW_EVERY: &str = "HERALD_PG_SLOW_EVERY";
const PATTERN: &str = "HERALD_PG_PATTERN";
const AUDIT: &str = "HERALD_PG_AUDIT";
/// How long any step may take before the test fails instead of hanging.
const DEADLINE: Duration = Duration::from_secs(90);

/// Entry point of the child processes; does nothing in a normal test run.
///
/// A node subscribes `work` to `$HERALD_PG_PATTERN`; its handler prints
/// `start <event> <attempt> <system ms> <due ms>`, sleeps `$HERALD_PG_HANDLER_MS` (times 3 for
/// every `$HERALD_PG_SLOW_EVERY`th event, by payload) and prints `done <event>`.
#[test]
fn node_child() {
    let Ok(role) = std::env::var(ROLE) else { return };
    assert_eq!(role, "node");
    support::exit_with_parent();
    let env = |k: &str| std::env::var(k).unwrap();
    let schema = env(SCHEMA);
    let lease = Duration::from_millis(env(LEASE_MS).parse().unwrap());
    let handler = Duration::from_millis(env(HANDLER_MS).parse().unwrap());
    let slow_every: u64 = env(SLOW_EVERY).parse().unwrap();
    let pattern = env(PATTERN);
    let audit = std::env::var(AUDIT).is_ok_and(|v| v == "1");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        // A line of its own: the test harness has written "test node_child ... " without one.
        println!();
        println!("clock {}", Timestamp::now_system().as_millis());
        let store = PostgresStore::builder(url()).schema(schema).connect().await.unwrap();
        assert!(store.is_listening(), "the node must LISTEN");
        let herald = Herald::builder()
            .store(store)
            .workers(8)
            .lease(lease)
            .system_events(false)
            .build()
            .await
            .unwrap();
        herald
            .subscribe("work", &pattern)
            .handle(move |n: u64, ctx: Context| async move {
                let started = Timestamp::now_system().as_millis();
                println!(
                    "start {} {} {started} {}",
                    ctx.event_id(),
                    ctx.attempt(),
                    ctx.due().as_millis()
                );
                let slow = slow_every > 0 && n % slow_every == 0;
                tokio::time::sleep(if slow { handler * 3 } else { handler }).await;
                println!("done {}", ctx.event_id());
                Ok::<_, HandlerError>(())
            })
            .await
            .unwrap();
        if audit {
            // A second subscription to the same events: their deliveries finish on any node, and
            // the event is finished once both are.
            herald
                .subscribe("audit", &pattern)
                .handle(|_: u64, ctx: Context| async move {
                    println!("audit {}", ctx.event_id());
                    Ok::<_, HandlerError>(())
                })
                .await
                .unwrap();
        }
        println!("ready");
        std::future::pending::<()>().await;
    });
}

/// The settings of a test's nodes.
struct Nodes {
    schema: String,
    lease_ms: u64,
    handler_ms: u64,
    slow_every: u64,
    pattern: &'static str,
    audit: bool,
}

impl Nodes {
    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            (ROLE, "node".to_owned()),
            (SCHEMA, self.schema.clone()),
            (LEASE_MS, self.lease_ms.to_string()),
            (HANDLER_MS, self.handler_ms.to_string()),
            (SLOW_EVERY, self.slow_every.to_string()),
            (PATTERN, self.pattern.to_owned()),
            (AUDIT, if self.audit { "1" } else { "0" }.to_owned()),
        ]
    }

    /// Starts `n` nodes (each under `wrappers[i]`, if any) and waits until all are ready.
    fn start(&self, children: &mut Children, wrappers: &[&[&str]]) -> Vec<Line> {
        let n = wrappers.len();
        for w in wrappers {
            children.spawn("node_child", &self.env(), w);
        }
        let mut ready = 0;
        children.read_until("the nodes to be ready", DEADLINE, |l| {
            ready += usize::from(l.text == "ready");
            ready == n
        })
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A node in this process that publishes only, with the subscription declared in the store, so
/// that what it publishes before the children subscribe is routed too.
async fn publisher(schema: &str, pattern: &str, audit: bool) -> Herald {
    let store = PostgresStore::builder(url()).schema(schema).connect().await.unwrap();
    let names: &[&str] = if audit { &["work", "audit"] } else { &["work"] };
    for name in names {
        store
            .declare(&SubscriptionSpec {
                name: SubscriptionName::new(name).unwrap(),
                pattern: Pattern::new(pattern).unwrap(),
            })
            .await
            .unwrap();
    }
    Herald::builder()
        .store(store)
        .system_events(false)
        .unbounded()
        .build()
        .await
        .unwrap()
}

fn field(line: &Line, i: usize) -> &str {
    line.text.split(' ').nth(i).unwrap()
}

/// Per event, how many `start` lines (attempts that began) and `done` lines the nodes wrote.
fn tally(lines: &[Line]) -> (BTreeMap<EventId, usize>, BTreeMap<EventId, usize>) {
    let (mut started, mut done) = (BTreeMap::new(), BTreeMap::new());
    for l in lines {
        if l.text.starts_with("start ") {
            *started.entry(field(l, 1).parse().unwrap()).or_default() += 1;
        } else if l.text.starts_with("done ") {
            *done.entry(field(l, 1).parse().unwrap()).or_default() += 1;
        }
    }
    (started, done)
}

/// Publishes `n` events on `topic` (payload: their number) in batches from four tasks.
async fn publish_all(herald: &Herald, topic: &str, n: u64) -> BTreeSet<EventId> {
    let tasks: Vec<_> = (0..4u64)
        .map(|t| {
            let herald = herald.clone();
            let topic = topic.to_owned();
            tokio::spawn(async move {
                let mut ids = Vec::new();
                let mine: Vec<u64> = (0..n).filter(|i| i % 4 == t).collect();
                for chunk in mine.chunks(25) {
                    let batch = chunk.iter().map(|i| Message::json(&topic, i)).collect();
                    let batch: Vec<Message> = batch;
                    ids.extend(herald.publish_batch(batch).await.unwrap());
                }
                ids
            })
        })
        .collect();
    let mut all = BTreeSet::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

#[test]
fn three_nodes_handle_each_delivery_once() {
    if std::env::var_os(ROLE).is_some() {
        return;
    }
    let rt = runtime();
    let schema = rt.block_on(fresh_schema("herald_nodes", "once"));
    let herald = rt.block_on(publisher(&schema, "work.>", true));
    let nodes = Nodes {
        schema: schema.clone(),
        lease_ms: 30_000,
        handler_ms: 2,
        slow_every: 0,
        pattern: "work.>",
        audit: true,
    };
    let mut children = Children::new();
    let mut lines = nodes.start(&mut children, &[&[], &[], &[]]);
    const N: u64 = 900;
    let published = rt.block_on(publish_all(&herald, "work.job", N));
    assert_eq!(published.len(), N as usize);
    let mut done = BTreeSet::new();
    lines.extend(children.read_until("every event to be handled", DEADLINE, |l| {
        if l.text.starts_with("done ") {
            done.insert(field(l, 1).to_owned());
        }
        done.len() == N as usize
    }));
    // Every outcome recorded: nothing is open, nothing can run again.
    rt.block_on(async {
        let until = std::time::Instant::now() + DEADLINE;
        while herald.stats().await.unwrap().deliveries.succeeded < 2 * N {
            assert!(std::time::Instant::now() < until, "the outcomes were not all recorded");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    lines.extend(children.kill_all());
    let mut audited: BTreeMap<EventId, usize> = BTreeMap::new();
    for l in lines.iter().filter(|l| l.text.starts_with("audit ")) {
        *audited.entry(field(l, 1).parse().unwrap()).or_default() += 1;
    }
    assert_eq!(audited.keys().copied().collect::<BTreeSet<_>>(), published);
    assert!(audited.values().all(|&n| n == 1), "each audit delivery ran once");
    let (started, finished) = tally(&lines);
    assert_eq!(started.keys().copied().collect::<BTreeSet<_>>(), published);
    for (id, n) in &started {
        assert_eq!(*n, 1, "event {id} was handled {n} times by the three nodes");
    }
    assert_eq!(finished.len(), N as usize);
    let mut per_node = [0usize; 3];
    for l in lines.iter().filter(|l| l.text.starts_with("start ")) {
        per_node[l.child] += 1;
    }
    println!("events handled per node: {per_node:?}");
    assert!(per_node.iter().all(|&n| n > 0), "every node took a share: {per_node:?}");
    let stats = rt.block_on(herald.stats()).unwrap();
    assert_eq!(stats.deliveries.succeeded, 2 * N);
    assert_eq!(stats.deliveries.open(), 0);
    // Each event finished once both its deliveries did, whichever nodes finished them: the
    // stored event status (what status filters and retention read) says so.
    let mut finished_events = 0;
    let mut page = PageRequest::first(PageRequest::MAX_LIMIT);
    loop {
        let filter = EventFilter {
            status: Some(EventStatus::Succeeded),
            ..Default::default()
        };
        let got = rt.block_on(herald.store().query(&filter, page)).unwrap();
        finished_events += got.items.len();
        match got.next {
            Some(next) => page = PageRequest::after(next, PageRequest::MAX_LIMIT),
            None => break,
        }
    }
    assert_eq!(finished_events, N as usize, "every event is recorded succeeded");
    rt.block_on(herald.shutdown(Duration::from_secs(5)));
    rt.block_on(drop_schema(&schema));
}

#[test]
fn a_killed_node_loses_nothing() {
    if std::env::var_os(ROLE).is_some() {
        return;
    }
    let rt = runtime();
    let schema = rt.block_on(fresh_schema("herald_nodes", "kill"));
    let herald = rt.block_on(publisher(&schema, "work.>", false));
    let lease = Duration::from_secs(1);
    let nodes = Nodes {
        schema: schema.clone(),
        lease_ms: lease.as_millis() as u64,
        handler_ms: 10,
        slow_every: 0,
        pattern: "work.>",
        audit: false,
    };
    let mut children = Children::new();
    let mut lines = nodes.start(&mut children, &[&[], &[], &[]]);
    const N: u64 = 600;
    let published = rt.block_on(publish_all(&herald, "work.job", N));
    let mut by_victim = 0;
    lines.extend(children.read_until("node 0 to handle some events", DEADLINE, |l| {
        by_victim += usize::from(l.child == 0 && l.text.starts_with("done "));
        by_victim >= 40
    }));
    children.kill(0);
    println!("killed node 0 after it handled {by_victim} events");
    rt.block_on(async {
        let until = std::time::Instant::now() + DEADLINE;
        while herald.stats().await.unwrap().deliveries.succeeded < N {
            assert!(
                std::time::Instant::now() < until,
                "the other nodes did not finish the work"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    lines.extend(children.kill_all());
    let (started, _) = tally(&lines);
    let sub = SubscriptionName::new("work").unwrap();
    let in_flight = rt.block_on(herald_testkit::crash::check_at_least_once(
        &**herald.store(),
        &sub,
        published.iter().copied(),
        &started,
        lease,
    ));
    println!(
        "{} deliveries were in flight on the killed node and ran again",
        in_flight.len()
    );
    rt.block_on(herald.shutdown(Duration::from_secs(5)));
    rt.block_on(drop_schema(&schema));
}

#[test]
fn a_delay_fires_on_another_node_on_its_millisecond() {
    if std::env::var_os(ROLE).is_some() {
        return;
    }
    let rt = runtime();
    let schema = rt.block_on(fresh_schema("herald_nodes", "delay"));
    let herald = rt.block_on(publisher(&schema, "delay.>", false));
    let nodes = Nodes {
        schema: schema.clone(),
        lease_ms: 30_000,
        handler_ms: 1,
        slow_every: 0,
        pattern: "delay.>",
        audit: false,
    };
    let mut children = Children::new();
    nodes.start(&mut children, &[&[]]);
    const N: usize = 40;
    let dues: BTreeMap<EventId, Timestamp> = rt.block_on(async {
        let mut dues = BTreeMap::new();
        for i in 0..N {
            let at = herald.clock().now() + Duration::from_millis(fastrand::u64(300..2_500));
            let id = herald.publish("delay.tick", &i).at(at).await.unwrap();
            dues.insert(id, at);
        }
        dues
    });
    let mut fired = 0;
    let lines = children.read_until("every delay to fire on node B", DEADLINE, |l| {
        fired += usize::from(l.text.starts_with("start "));
        fired == N
    });
    let mut lateness = Vec::new();
    for l in lines.iter().filter(|l| l.text.starts_with("start ")) {
        let id: EventId = field(l, 1).parse().unwrap();
        let started: i64 = field(l, 3).parse().unwrap();
        let due = dues[&id];
        assert_eq!(
            field(l, 4).parse::<i64>().unwrap(),
            due.as_millis(),
            "the claim reports the due time"
        );
        let late = started - due.as_millis();
        assert!(late >= 0, "event {id} fired {}ms early on node B", -late);
        lateness.push(late as f64);
    }
    let (p50, max) = (quantile(&mut lateness, 0.5), quantile(&mut lateness, 1.0));
    println!("cross-node delay lateness over {N} delays: p50 {p50}ms, max {max}ms");
    assert!(
        max <= 250.0,
        "node B must learn due times from NOTIFY and fire on time (a re-check comes only every 30 s): max {max}ms"
    );
    drop(children);
    rt.block_on(herald.shutdown(Duration::from_secs(5)));
    rt.block_on(drop_schema(&schema));
}

#[test]
fn a_node_with_a_skewed_clock_fires_nothing_early() {
    if std::env::var_os(ROLE).is_some() {
        return;
    }
    if std::process::Command::new("faketime")
        .arg("--version")
        .output()
        .is_err()
    {
        println!("SKIPPED a_node_with_a_skewed_clock_fires_nothing_early: `faketime` is not installed (apt-get install faketime)");
        return;
    }
    let rt = runtime();
    let schema = rt.block_on(fresh_schema("herald_nodes", "skew"));
    let herald = rt.block_on(publisher(&schema, "skew.>", false));
    let lease = Duration::from_millis(600);
    let nodes = Nodes {
        schema: schema.clone(),
        lease_ms: lease.as_millis() as u64,
        handler_ms: 300,
        // Every third handler runs 900 ms: past its first lease, which the node extends.
        slow_every: 3,
        pattern: "skew.>",
        audit: false,
    };
    let mut children = Children::new();
    let before = Timestamp::now_system().as_millis();
    let lines = nodes.start(
        &mut children,
        &[&["faketime", "-m", "-f", "+2s"], &["faketime", "-m", "-f", "-2s"]],
    );
    // The skew is real: each child's system clock is 2 s off ours.
    for (child, skew) in [(0, 2_000i64), (1, -2_000)] {
        let l = lines
            .iter()
            .find(|l| l.child == child && l.text.starts_with("clock "))
            .unwrap();
        let theirs: i64 = field(l, 1).parse().unwrap();
        let off = theirs - before;
        assert!(
            (off - skew).abs() < 1_000,
            "node {child} should run {skew}ms off, but its clock read {off}ms off"
        );
    }
    const N: usize = 60;
    let dues: BTreeMap<EventId, Timestamp> = rt.block_on(async {
        let mut dues = BTreeMap::new();
        for i in 0..N {
            let at = herald.clock().now() + Duration::from_millis(fastrand::u64(200..3_000));
            let id = herald.publish("skew.tick", &(i as u64)).at(at).await.unwrap();
            dues.insert(id, at);
        }
        dues
    });
    let dues = Arc::new(dues);
    let mut done = 0;
    let lines = children.read_until("every delay to fire on the skewed nodes", DEADLINE, |l| {
        done += usize::from(l.text.starts_with("done "));
        done == N
    });
    rt.block_on(async {
        let until = std::time::Instant::now() + DEADLINE;
        while herald.stats().await.unwrap().deliveries.succeeded < N as u64 {
            assert!(std::time::Instant::now() < until, "the outcomes were not all recorded");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let mut lines = lines;
    lines.extend(children.kill_all());
    let mut per_node = [0usize; 2];
    for l in lines.iter().filter(|l| l.text.starts_with("start ")) {
        let id: EventId = field(l, 1).parse().unwrap();
        let due = dues[&id].as_millis();
        // Read by this process after the child wrote it: never earlier than the real start.
        assert!(
            l.at_ms >= due,
            "event {id} started on node {} (clock {}) {}ms before its due time",
            l.child,
            if l.child == 0 { "+2s" } else { "-2s" },
            due - l.at_ms
        );
        per_node[l.child] += 1;
    }
    println!("events handled by the +2s and -2s nodes: {per_node:?}");
    let (started, _) = tally(&lines);
    assert_eq!(started.len(), N, "every event fired");
    for (id, n) in &started {
        assert_eq!(*n, 1, "event {id} started {n} times: a live lease was taken");
    }
    drop(children);
    rt.block_on(herald.shutdown(Duration::from_secs(5)));
    rt.block_on(drop_schema(&schema));
}
