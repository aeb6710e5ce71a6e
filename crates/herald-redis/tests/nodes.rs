//! Several nodes, one system: real processes sharing one Redis namespace.
//!
//! The test binary runs itself again as each node: `node_child` is a no-op test unless
//! `HERALD_NODE_ROLE` is set. A node subscribes `work` to `job.>`, logs every attempt's start and
//! end to its own side file, prints `done <event id> <lateness ms>` (lateness by the Redis server's
//! `TIME`, read in the handler) and runs until it is killed. The parent (node A) publishes. Nothing
//! waits by sleeping: the parent reads the nodes' stdout lines with a deadline.
//!
//! - `three_nodes_handle_each_delivery_exactly_once`: no faults, every delivery handled once.
//! - `a_killed_node_s_deliveries_are_finished_by_the_others`: one node is killed with SIGKILL
//!   mid-run; the others take its deliveries once their leases run out.
//! - `a_delay_published_on_one_node_fires_on_another_on_its_millisecond`: node B's timer learns
//!   the due time from the wakeup (the runtime's safety re-check is 30 s away).
//! - `nodes_with_skewed_clocks_fire_nothing_early`: a node whose system clock runs 2 s ahead (and
//!   one 2 s behind), by libfaketime (`faketime`), fires nothing before its due time by the
//!   server's clock, nor late.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use herald_core::{Context, EventId, HandlerError, Herald, SubscriptionName};
use herald_redis::RedisStore;

const URL: &str = "redis://127.0.0.1:6379";
const ROLE: &str = "HERALD_NODE_ROLE";
const PREFIX: &str = "HERALD_NODE_PREFIX";
const LOG: &str = "HERALD_NODE_LOG";
const LEASE_MS: &str = "HERALD_NODE_LEASE_MS";
const HANDLE_MS: &str = "HERALD_NODE_HANDLE_MS";
/// How long any step may take before the test fails instead of hanging (and how long a node
/// lives at most, should its parent die without killing it).
const DEADLINE: Duration = Duration::from_secs(90);

/// Entry point of the node processes; does nothing in a normal test run.
#[test]
fn node_child() {
    let Ok(name) = std::env::var(ROLE) else { return };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(node(name));
}

fn env_ms(name: &str) -> Duration {
    Duration::from_millis(std::env::var(name).unwrap().parse().unwrap())
}

async fn server_ms(conn: &mut redis::aio::ConnectionManager) -> i64 {
    let (s, us): (i64, i64) = redis::cmd("TIME").query_async(conn).await.unwrap();
    s * 1000 + us / 1000
}

async fn node(name: String) {
    let prefix = std::env::var(PREFIX).unwrap();
    let log = PathBuf::from(std::env::var(LOG).unwrap());
    let handle_for = env_ms(HANDLE_MS);
    let log = Arc::new(std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap());
    let store = RedisStore::builder(URL).prefix(prefix).connect().await.unwrap();
    let mut time = redis::aio::ConnectionManager::new(redis::Client::open(URL).unwrap())
        .await
        .unwrap();
    let skew = herald_core::Timestamp::now_system().as_millis() - server_ms(&mut time).await;
    println!("skew {skew}");
    let herald = Herald::builder()
        .store(store)
        .workers(8)
        .lease(env_ms(LEASE_MS))
        .system_events(false)
        .node(name.clone())
        .build()
        .await
        .unwrap();
    herald
        .subscribe("work", "job.>")
        .handle(move |_: u64, ctx: Context| {
            let log = log.clone();
            let name = name.clone();
            let mut time = time.clone();
            async move {
                let late = server_ms(&mut time).await - ctx.event().deliver_at().as_millis();
                let id = ctx.event().id();
                (&*log)
                    .write_all(format!("start {id} {} {name}\n", ctx.attempt()).as_bytes())
                    .unwrap();
                tokio::time::sleep(handle_for).await;
                (&*log).write_all(format!("done {id} {name}\n").as_bytes()).unwrap();
                println!("done {id} {late}");
                Ok::<_, HandlerError>(())
            }
        })
        .await
        .unwrap();
    println!("ready");
    tokio::time::sleep(DEADLINE).await;
}

/// A node process with its stdout read line by line; killed when dropped.
struct Node {
    child: Child,
    lines: mpsc::Receiver<String>,
}

struct NodeSpec<'a> {
    name: &'a str,
    prefix: &'a str,
    log: &'a Path,
    lease: Duration,
    handle_for: Duration,
    faketime: Option<&'a str>,
}

impl Node {
    fn spawn(spec: NodeSpec<'_>) -> Node {
        let exe = std::env::current_exe().unwrap();
        let mut cmd = match spec.faketime {
            Some(offset) => {
                let mut c = Command::new("faketime");
                c.args(["-m", "-f", offset]).arg(exe);
                c
            }
            None => Command::new(exe),
        };
        let mut child = cmd
            .args(["--exact", "node_child", "--nocapture", "--test-threads=1"])
            .env(ROLE, spec.name)
            .env(PREFIX, spec.prefix)
            .env(LOG, spec.log)
            .env(LEASE_MS, spec.lease.as_millis().to_string())
            .env(HANDLE_MS, spec.handle_for.as_millis().to_string())
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
        Node { child, lines }
    }

    /// Reads lines until `ready`, returning the skew the node reported.
    fn ready(&self) -> i64 {
        let mut skew = None;
        let deadline = Instant::now() + DEADLINE;
        loop {
            let line = self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .expect("the node to start");
            // The first line follows libtest's `test node_child ... ` on the same line.
            if let Some((_, s)) = line.split_once("skew ") {
                skew = Some(s.parse().unwrap());
            }
            if line == "ready" {
                return skew.expect("the node reports its clock skew before it is ready");
            }
        }
    }

    /// SIGKILL, and the lines the node wrote before it died.
    fn kill(mut self) -> Vec<String> {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        std::mem::replace(&mut self.lines, mpsc::channel().1).iter().collect()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `done <id> <late>` lines from several nodes, with a deadline.
fn collect_done(
    nodes: &[&Node],
    mut enough: impl FnMut(&BTreeMap<EventId, Vec<i64>>) -> bool,
) -> BTreeMap<EventId, Vec<i64>> {
    let deadline = Instant::now() + DEADLINE;
    let mut done: BTreeMap<EventId, Vec<i64>> = BTreeMap::new();
    while !enough(&done) {
        assert!(
            Instant::now() < deadline,
            "the nodes did not finish in time: {} events done",
            done.len()
        );
        let mut got = false;
        for n in nodes {
            while let Ok(line) = n.lines.try_recv() {
                got = true;
                record_done(&mut done, &line);
            }
        }
        if !got {
            // Block on one node's lines for a moment: the others' lines wait in their channels.
            if let Ok(line) = nodes[0].lines.recv_timeout(Duration::from_millis(20)) {
                record_done(&mut done, &line);
            }
        }
    }
    done
}

fn record_done(done: &mut BTreeMap<EventId, Vec<i64>>, line: &str) {
    if let Some(rest) = line.strip_prefix("done ") {
        let (id, late) = rest.split_once(' ').unwrap();
        done.entry(id.parse().unwrap()).or_default().push(late.parse().unwrap());
    }
}

/// A namespace and a temp dir, both removed at the end.
struct Scratch {
    prefix: String,
    dir: PathBuf,
}

impl Scratch {
    fn new(name: &str) -> Scratch {
        let prefix = format!("herald-nodes-{name}-{:08x}", fastrand::u32(..));
        let dir = std::env::temp_dir().join(format!("{prefix}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch { prefix, dir }
    }

    fn log(&self, node: &str) -> PathBuf {
        self.dir.join(format!("{node}.log"))
    }

    fn lines(&self, node: &str) -> Vec<String> {
        std::fs::read_to_string(self.log(node))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        if let Ok(mut conn) = redis::Client::open(URL).and_then(|c| c.get_connection()) {
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{{{}}}:*", self.prefix))
                .query(&mut conn)
                .unwrap_or_default();
            if !keys.is_empty() {
                let _: Result<(), _> = redis::cmd("UNLINK").arg(keys).query(&mut conn);
            }
        }
    }
}

/// Node A: a herald in this process with no subscriptions, publishing.
async fn publisher(prefix: &str) -> Herald {
    let store = RedisStore::builder(URL).prefix(prefix).connect().await.unwrap();
    Herald::builder()
        .store(store)
        .unbounded()
        .system_events(false)
        .node("a")
        .build()
        .await
        .unwrap()
}

/// Waits (with a deadline) until `n` deliveries succeeded and none is open.
async fn settled(a: &Herald, n: u64) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let stats = a.stats().await.unwrap();
        if stats.deliveries.succeeded == n && stats.deliveries.open() == 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the outcomes were not recorded: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn spawn_nodes(s: &Scratch, names: &[&str], lease: Duration, handle_for: Duration) -> Vec<Node> {
    let nodes: Vec<Node> = names
        .iter()
        .map(|name| {
            Node::spawn(NodeSpec {
                name,
                prefix: &s.prefix,
                log: &s.log(name),
                lease,
                handle_for,
                faketime: None,
            })
        })
        .collect();
    for n in &nodes {
        n.ready();
    }
    nodes
}

/// Per event: how many attempts started and finished, from every node's side file.
fn handlings(
    s: &Scratch,
    names: &[&str],
) -> (
    BTreeMap<EventId, usize>,
    BTreeMap<EventId, usize>,
    BTreeMap<String, usize>,
) {
    let (mut started, mut finished, mut per_node) = (BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
    for name in names {
        for line in s.lines(name) {
            let mut f = line.split(' ');
            match (f.next(), f.next()) {
                (Some("start"), Some(id)) => *started.entry(id.parse().unwrap()).or_default() += 1,
                (Some("done"), Some(id)) => {
                    *finished.entry(id.parse().unwrap()).or_default() += 1;
                    *per_node.entry((*name).to_owned()).or_default() += 1;
                }
                _ => {}
            }
        }
    }
    (started, finished, per_node)
}

#[test]
fn three_nodes_handle_each_delivery_exactly_once() {
    if std::env::var_os(ROLE).is_some() {
        return;
    }
    const EVENTS: u64 = 600;
    let s = Scratch::new("once");
    let names = ["n1", "n2", "n3"];
    let nodes = spawn_nodes(&s, &names, Duration::from_secs(30), Duration::from_millis(2));
    let rt = runtime();
    let a = rt.block_on(publisher(&s.prefix));
    let ids: BTreeSet<EventId> = rt.block_on(async {
        let mut ids = BTreeSet::new();
        for n in 0..EVENTS {
            ids.insert(a.publish("job.run", &n).await.unwrap());
        }
        ids
    });
    let refs: Vec<&Node> = nodes.iter().collect();
    let done = collect_done(&refs, |d| d.len() as u64 == EVENTS);
    assert_eq!(done.keys().copied().collect::<BTreeSet<_>>(), ids);
    rt.block_on(settled(&a, EVENTS));
    drop(nodes);

    let (started, finished, per_node) = handlings(&s, &names);
    println!("handled per node: {per_node:?}");
    for id in &ids {
        assert_eq!(
            started.get(id),
            Some(&1),
            "event {id} started more than once without faults"
        );
        assert_eq!(
            finished.get(id),
            Some(&1),
            "event {id} handled more than once without faults"
        );
    }
    assert!(per_node.len() >= 2, "the work was shared between nodes: {per_node:?}");
    rt.block_on(async {
        settled(&a, EVENTS).await;
        a.shutdown(Duration::from_secs(5)).await;
    });
}

#[test]
fn a_killed_node_s_deliveries_are_finished_by_the_others() {
    if std::env::var_os(ROLE).is_some() {
        return;
    }
    const EVENTS: u64 = 400;
    const LEASE: Duration = Duration::from_secs(1);
    let s = Scratch::new("kill");
    let names = ["k1", "k2", "k3"];
    let mut nodes = spawn_nodes(&s, &names, LEASE, Duration::from_millis(20));
    let rt = runtime();
    let a = rt.block_on(publisher(&s.prefix));
    let ids: BTreeSet<EventId> = rt.block_on(async {
        let batch: Vec<_> = (0..EVENTS).map(|n| herald_core::Message::json("job.run", &n)).collect();
        a.publish_batch(batch).await.unwrap().into_iter().collect()
    });
    assert_eq!(ids.len() as u64, EVENTS);

    // Let the first node handle a few, then kill it mid-run.
    let mut done = collect_done(&[&nodes[0]], |d| d.len() >= 30);
    let victim = nodes.remove(0);
    for line in victim.kill() {
        record_done(&mut done, &line);
    }
    let refs: Vec<&Node> = nodes.iter().collect();
    let rest = collect_done(&refs, |d| {
        ids.iter().all(|id| d.contains_key(id) || done.contains_key(id))
    });
    rt.block_on(settled(&a, EVENTS));
    drop(nodes);

    let (started, _, per_node) = handlings(&s, &names);
    println!("handled per node: {per_node:?}; {} done before the kill", done.len());
    for id in &ids {
        assert!(
            done.contains_key(id) || rest.contains_key(id),
            "event {id} was never handled"
        );
    }
    let sub = SubscriptionName::new("work").unwrap();
    let in_flight = rt.block_on(async {
        // A node prints `done` before its outcome is recorded: wait for the store to agree.
        settled(&a, EVENTS).await;
        let in_flight =
            herald_testkit::crash::check_at_least_once(&**a.store(), &sub, ids.iter().copied(), &started, LEASE).await;
        a.shutdown(Duration::from_secs(5)).await;
        in_flight
    });
    println!("{} deliveries taken over after the kill", in_flight.len());
}

/// Publishes `n` events due 300..1800 ms from now on node A, and returns each node's lateness
/// (by the server's clock) once all are handled.
fn delays_fire_on_time(s: &Scratch, nodes: &[&Node], n: u64) -> Vec<i64> {
    let rt = runtime();
    let a = rt.block_on(publisher(&s.prefix));
    let ids: BTreeSet<EventId> = rt.block_on(async {
        let mut ids = BTreeSet::new();
        for i in 0..n {
            let delay = Duration::from_millis(300 + fastrand::u64(..1500));
            ids.insert(a.publish("job.later", &i).delay(delay).await.unwrap());
        }
        ids
    });
    let done = collect_done(nodes, |d| d.len() as u64 == n);
    assert_eq!(done.keys().copied().collect::<BTreeSet<_>>(), ids);
    rt.block_on(a.shutdown(Duration::from_secs(5)));
    let mut late: Vec<i64> = done.values().flatten().copied().collect();
    late.sort_unstable();
    late
}

#[test]
fn a_delay_published_on_one_node_fires_on_another_on_its_millisecond() {
    if std::env::var_os(ROLE).is_some() {
        return;
    }
    let s = Scratch::new("delay");
    let nodes = spawn_nodes(&s, &["b"], Duration::from_secs(30), Duration::ZERO);
    let late = delays_fire_on_time(&s, &[&nodes[0]], 40);
    println!("lateness on node b (ms, by the server's clock): {late:?}");
    assert!(late[0] >= 0, "a delay fired early: {late:?}");
    // Loose bounds for a shared CI machine; the benchmark measures the real figures.
    assert!(late[late.len() / 2] <= 50, "median lateness {late:?}");
    assert!(late[late.len() - 1] <= 500, "worst lateness {late:?}");
}

#[test]
fn nodes_with_skewed_clocks_fire_nothing_early() {
    if std::env::var_os(ROLE).is_some() {
        return;
    }
    if Command::new("faketime").arg("--version").output().is_err() {
        println!(
            "SKIPPED nodes_with_skewed_clocks_fire_nothing_early: the `faketime` tool is missing \
             (apt-get install faketime)"
        );
        return;
    }
    for offset in ["+2s", "-2s"] {
        let s = Scratch::new("skew");
        let node = Node::spawn(NodeSpec {
            name: "skewed",
            prefix: &s.prefix,
            log: &s.log("skewed"),
            lease: Duration::from_secs(30),
            handle_for: Duration::ZERO,
            faketime: Some(offset),
        });
        let skew = node.ready();
        let expected: i64 = if offset.starts_with('+') { 2000 } else { -2000 };
        assert!(
            (skew - expected).abs() < 500,
            "the node's system clock must really be skewed by {offset}: measured {skew} ms"
        );
        let late = delays_fire_on_time(&s, &[&node], 20);
        println!("clock skewed {offset} (measured {skew} ms): lateness by the server's clock {late:?}");
        assert!(late[0] >= 0, "a node skewed {offset} fired a delay early: {late:?}");
        assert!(
            late[late.len() - 1] < 1000,
            "a node skewed {offset} fired late by its own clock: {late:?}"
        );
    }
}
