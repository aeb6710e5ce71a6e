//! `herald bench`: a load generator for `POST /v1/events` over HTTP/1.1 keep-alive connections.
//!
//! Without `--server` it starts three targets in this process on free loopback ports and loads
//! each in turn for `--duration`: a trivial axum endpoint that parses the same JSON body and
//! answers an id (the baseline), `herald serve` on the memory store, and `herald serve` on the
//! embedded SQLite store in a temporary directory. Then, on a fresh SQLite server, it measures
//! lateness: `--lateness-events` events with `delay_ms` spread over `--lateness-spread`, claimed by
//! a pull consumer (long-poll claims of up to 100, acked), lateness being the claim's answer time
//! minus each delivery's `due`. With `--server URL` it loads only that server (no lateness run).
//!
//! Progress goes to stderr (one line rewritten each second) with a human summary per target;
//! stdout gets one machine-readable `BENCH http_publish store=...` line per target.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::http::{header, HeaderValue, Method, Request, Uri};
use axum::routing::post;
use axum::{Json, Router};
use bytes::Bytes;
use clap::Args;
use herald_server::{Config, Server, StoreKind};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use tokio::task::JoinHandle;

use super::client::{CliError, Client};

/// `herald bench` options.
#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    /// How long to load each target (`10s`, `1m`).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    duration: Duration,
    /// How many keep-alive HTTP/1.1 connections publish at once (one request in flight on each).
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Events for the lateness run on the SQLite store (0 skips it).
    #[arg(long, default_value_t = 1000)]
    lateness_events: usize,
    /// The lateness run's events are due spread over this long, starting 1s after publishing.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "3s")]
    lateness_spread: Duration,
    /// Load this running server (`http://host:port`) instead of the three in-process targets.
    #[arg(long)]
    server: Option<String>,
    /// A bearer token for --server, when it requires one.
    #[arg(long, env = "HERALD_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

/// The body every request publishes: a small event with no subscription to deliver it to.
const BODY: &[u8] = br#"{"topic":"bench.publish","payload":{"order":42,"item":"book","qty":1}}"#;

/// How long one request may take before it counts as an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `herald bench`; the process's exit code.
pub(crate) async fn run(args: BenchArgs) -> u8 {
    match bench(args).await {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("herald: {e}");
            e.exit_code()
        }
    }
}

async fn bench(args: BenchArgs) -> Result<(), CliError> {
    if args.connections == 0 {
        return Err(CliError::Usage("--connections must be at least 1".into()));
    }
    if args.duration.is_zero() {
        return Err(CliError::Usage("--duration must be more than 0s".into()));
    }
    let load = Load {
        connections: args.connections,
        duration: args.duration,
    };
    if let Some(server) = &args.server {
        let token = args.token.as_deref().filter(|t| !t.is_empty());
        let run = load.run(server, server, token).await?;
        println!(
            "BENCH http_publish store=external events_per_s={:.0} p50_ms={:.3} p99_ms={:.3}",
            run.per_s(),
            run.percentile_ms(50.0),
            run.percentile_ms(99.0)
        );
        return Ok(());
    }

    let (trivial_addr, trivial_task) = trivial().await?;
    let trivial_run = load.run("trivial", &format!("http://{trivial_addr}"), None).await;
    trivial_task.abort();
    let baseline = trivial_run?;
    println!("BENCH http_publish store=trivial events_per_s={:.0}", baseline.per_s());

    let memory = load.herald(StoreKind::Memory, PathBuf::new()).await?;
    let ratio = memory.per_s() / baseline.per_s();
    println!(
        "BENCH http_publish store=memory events_per_s={:.0} baseline_per_s={:.0} ratio={ratio:.2} p50_ms={:.3} p99_ms={:.3}",
        memory.per_s(),
        baseline.per_s(),
        memory.percentile_ms(50.0),
        memory.percentile_ms(99.0)
    );
    eprintln!(
        "target: memory/trivial ratio {ratio:.2} (target >= 0.5: {})",
        met(ratio >= 0.5)
    );

    if !cfg!(feature = "sqlite") {
        eprintln!("sqlite: skipped (this build has no embedded store)");
        return Ok(());
    }
    let data = TempDir::new()?;
    // The disk of the moment bounds a durable store: no publish is answered before a sync, and a
    // connection has one request in flight, so at most `connections` events share each sync.
    let syncs = fsync_rate(&data.path.join("fsync-probe"));
    let sqlite = load.herald(StoreKind::Sqlite, data.path.clone()).await;
    drop(data);
    let sqlite = sqlite?;
    let syncs = syncs?;
    let bound = syncs * load.connections as f64;
    println!(
        "BENCH http_publish store=sqlite events_per_s={:.0} p50_ms={:.3} p99_ms={:.3} fsync_per_s={syncs:.0} bound_per_s={bound:.0} of_bound={:.2}",
        sqlite.per_s(),
        sqlite.percentile_ms(50.0),
        sqlite.percentile_ms(99.0),
        sqlite.per_s() / bound
    );
    eprintln!(
        "target: sqlite {:.0} events/s (target >= 20000: {}); this disk syncs {syncs:.0} times/s, so {} connections \
         can be answered at most {bound:.0} times/s",
        sqlite.per_s(),
        met(sqlite.per_s() >= 20_000.0),
        load.connections
    );
    if args.lateness_events > 0 {
        let data = TempDir::new()?;
        let late = lateness(data.path.clone(), args.lateness_events, args.lateness_spread).await;
        drop(data);
        let late = late?;
        println!(
            "BENCH lateness store=sqlite events={} p50_ms={:.3} p99_ms={:.3} max_ms={:.3}",
            late.len(),
            percentile_us(&late, 50.0) as f64 / 1000.0,
            percentile_us(&late, 99.0) as f64 / 1000.0,
            percentile_us(&late, 100.0) as f64 / 1000.0
        );
    }
    Ok(())
}

/// How many appends of 4 KiB, each followed by `fdatasync`, the disk under `path` takes per second
/// (measured for about half a second).
fn fsync_rate(path: &std::path::Path) -> Result<f64, CliError> {
    use std::io::Write as _;
    let failed = |e: std::io::Error| CliError::Other(format!("cannot measure the disk at {}: {e}", path.display()));
    let mut file = std::fs::File::create(path).map_err(failed)?;
    let block = [0u8; 4096];
    let start = std::time::Instant::now();
    let mut n = 0u32;
    while n < 20 || start.elapsed() < Duration::from_millis(500) {
        file.write_all(&block).map_err(failed)?;
        file.sync_data().map_err(failed)?;
        n += 1;
    }
    let rate = f64::from(n) / start.elapsed().as_secs_f64();
    drop(file);
    std::fs::remove_file(path).map_err(failed)?;
    Ok(rate)
}

fn met(yes: bool) -> &'static str {
    if yes {
        "met"
    } else {
        "NOT met"
    }
}

/// The subscription and topic of the lateness run.
const LATE_SUB: &str = "bench-late";
const LATE_TOPIC: &str = "bench.late";

/// Starts `herald serve` on the SQLite store, publishes `n` events due over `spread` (from 1s on),
/// claims them with a pull consumer and returns, sorted, how late each was claimed in
/// microseconds (the claim's answer time minus the delivery's due time).
async fn lateness(data: PathBuf, n: usize, spread: Duration) -> Result<Vec<u64>, CliError> {
    let mut config = Config::default();
    config.store = StoreKind::Sqlite;
    config.data = data;
    config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.shutdown_timeout = Duration::from_secs(2);
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| CliError::Other(format!("cannot listen on a loopback port: {e}")))?;
    let server = Server::start(listener, config)
        .await
        .map_err(|e| CliError::Other(format!("cannot start herald on the sqlite store: {e}")))?;
    let base = format!("http://{}", server.local_addr());
    let measured = measure_lateness(&base, n, spread).await;
    if let Err(e) = server.shutdown().await {
        eprintln!("herald: stopping the lateness server failed: {e}");
    }
    let mut late = measured?;
    late.sort_unstable();
    eprintln!(
        "lateness: {} events due over {}, claimed by a pull consumer: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        late.len(),
        humantime::format_duration(spread),
        percentile_us(&late, 50.0) as f64 / 1000.0,
        percentile_us(&late, 99.0) as f64 / 1000.0,
        percentile_us(&late, 100.0) as f64 / 1000.0
    );
    Ok(late)
}

async fn measure_lateness(base: &str, n: usize, spread: Duration) -> Result<Vec<u64>, CliError> {
    let client = Client::new(base, None)?;
    client
        .post(
            "/v1/subscriptions",
            Some(&json!({ "name": LATE_SUB, "pattern": LATE_TOPIC })),
        )
        .await?;
    let spread_ms = u64::try_from(spread.as_millis()).unwrap_or(u64::MAX);
    let count = u64::try_from(n).unwrap_or(u64::MAX);
    let mut published = 0u64;
    while published < count {
        let batch: Vec<Value> = (published..count.min(published + 100))
            .map(|i| {
                let delay_ms = 1000 + spread_ms.saturating_mul(i) / count;
                json!({ "topic": LATE_TOPIC, "payload": { "n": i }, "delay_ms": delay_ms })
            })
            .collect();
        published += u64::try_from(batch.len()).unwrap_or(u64::MAX);
        client.post("/v1/events", Some(&json!({ "events": batch }))).await?;
    }
    let claim = format!("/v1/subscriptions/{LATE_SUB}/claim");
    let ack = format!("/v1/subscriptions/{LATE_SUB}/ack");
    let give_up = Instant::now() + spread + Duration::from_secs(30);
    let mut late = Vec::with_capacity(n);
    let mut shown = Instant::now();
    while late.len() < n {
        if Instant::now() > give_up {
            return Err(CliError::Other(format!(
                "lateness: only {} of {n} events were claimed within {}",
                late.len(),
                humantime::format_duration(spread + Duration::from_secs(30))
            )));
        }
        let answer = client
            .post(
                &claim,
                Some(&json!({ "max": 100, "lease_ms": 30_000, "wait_ms": 1000 })),
            )
            .await?;
        let now = SystemTime::now();
        let items = answer.json["items"].as_array().map(Vec::as_slice).unwrap_or_default();
        let mut leases = Vec::with_capacity(items.len());
        for item in items {
            let due = item["due"]
                .as_str()
                .and_then(|d| humantime::parse_rfc3339(d).ok())
                .ok_or_else(|| CliError::Other(format!("lateness: a claimed delivery has no due time: {item}")))?;
            let behind = now.duration_since(due).unwrap_or_default();
            late.push(u64::try_from(behind.as_micros()).unwrap_or(u64::MAX));
            leases.push(item["lease"].clone());
        }
        let bodies: Vec<Value> = leases.iter().map(|lease| json!({ "lease": lease })).collect();
        let acks = bodies.iter().map(|body| client.post(&ack, Some(body)));
        for acked in futures_util::future::join_all(acks).await {
            acked?;
        }
        if shown.elapsed() >= Duration::from_secs(1) {
            shown = Instant::now();
            eprint!(
                "\r{:<PROGRESS_WIDTH$}",
                format!("lateness: {} of {n} events claimed", late.len())
            );
        }
    }
    eprint!("\r{:PROGRESS_WIDTH$}\r", "");
    Ok(late)
}

/// The trivial baseline: parses the same JSON body and answers an id, storing nothing.
async fn trivial() -> Result<(SocketAddr, JoinHandle<()>), CliError> {
    let next = Arc::new(AtomicU64::new(1));
    let app = Router::new().route(
        "/v1/events",
        post(move |Json(_event): Json<Value>| {
            let id = next.fetch_add(1, Ordering::Relaxed);
            async move { Json(json!({ "id": format!("{id:032x}") })) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| CliError::Other(format!("cannot listen on a loopback port: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| CliError::Other(format!("cannot read the listening address: {e}")))?;
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            eprintln!("herald: the trivial endpoint failed: {e}");
        }
    });
    Ok((addr, task))
}

/// A directory under the system's temporary directory, removed when dropped.
struct TempDir {
    path: PathBuf,
}

impl TempDir {
    fn new() -> Result<TempDir, CliError> {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let path = std::env::temp_dir().join(format!("herald-bench-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path)
            .map_err(|e| CliError::Other(format!("cannot create {}: {e}", path.display())))?;
        Ok(TempDir { path })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            eprintln!("herald: cannot remove {}: {e}", self.path.display());
        }
    }
}

/// How hard to load a target.
#[derive(Debug, Clone, Copy)]
struct Load {
    connections: usize,
    duration: Duration,
}

impl Load {
    /// Starts `herald serve` in process on `store`, loads it, and stops it.
    async fn herald(&self, store: StoreKind, data: PathBuf) -> Result<Run, CliError> {
        let mut config = Config::default();
        config.store = store.clone();
        config.data = data;
        config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config.shutdown_timeout = Duration::from_secs(2);
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|e| CliError::Other(format!("cannot listen on a loopback port: {e}")))?;
        let server = Server::start(listener, config)
            .await
            .map_err(|e| CliError::Other(format!("cannot start herald on the {} store: {e}", store.as_str())))?;
        let base = format!("http://{}", server.local_addr());
        let run = self.run(store.as_str(), &base, None).await;
        if let Err(e) = server.shutdown().await {
            eprintln!("herald: stopping the {} server failed: {e}", store.as_str());
        }
        run
    }

    /// Publishes to `base` from `connections` connections until `duration` has passed.
    async fn run(&self, label: &str, base: &str, token: Option<&str>) -> Result<Run, CliError> {
        let uri: Uri = format!("{}/v1/events", base.trim_end_matches('/'))
            .parse()
            .map_err(|e| CliError::Usage(format!("'{base}' is not a URL: {e}")))?;
        if uri.scheme_str() != Some("http") {
            return Err(CliError::Usage(format!(
                "'{base}' must be an absolute http:// URL such as http://127.0.0.1:7420"
            )));
        }
        let auth = token
            .map(|t| HeaderValue::from_str(&format!("Bearer {t}")))
            .transpose()
            .map_err(|e| CliError::Usage(format!("the token cannot go in a header: {e}")))?;
        let count = Arc::new(AtomicU64::new(0));
        // A warm-up first (connections opened, caches and threads warm), not measured.
        let warmup = (self.duration / 10).min(Duration::from_secs(1));
        let start = Instant::now() + warmup;
        let deadline = start + self.duration;
        let workers: Vec<JoinHandle<Worker>> = (0..self.connections)
            .map(|_| {
                let target = Target {
                    uri: uri.clone(),
                    auth: auth.clone(),
                    count: Arc::clone(&count),
                };
                tokio::spawn(target.publish_until(start, deadline))
            })
            .collect();
        tokio::time::sleep_until(start.into()).await;
        let progress = tokio::spawn(progress(label.to_owned(), Arc::clone(&count), start, self.duration));
        let mut run = Run::default();
        for worker in workers {
            match worker.await {
                Ok(w) => run.add(w),
                Err(e) => {
                    run.errors += 1;
                    run.first_error
                        .get_or_insert_with(|| format!("a connection's task failed: {e}"));
                }
            }
        }
        run.elapsed = start.elapsed();
        progress.abort();
        eprint!("\r{:PROGRESS_WIDTH$}\r", "");
        run.latencies_us.sort_unstable();
        eprintln!(
            "{label}: {} events in {:.1}s over {} connections: {:.0}/s, latency p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms, {} errors{}",
            run.latencies_us.len(),
            run.elapsed.as_secs_f64(),
            self.connections,
            run.per_s(),
            run.percentile_ms(50.0),
            run.percentile_ms(99.0),
            run.percentile_ms(100.0),
            run.errors,
            run.first_error
                .as_deref()
                .map(|e| format!(" (first: {e})"))
                .unwrap_or_default()
        );
        if run.latencies_us.is_empty() {
            return Err(CliError::Other(format!(
                "no publish to {label} ({uri}) succeeded{}",
                run.first_error.as_deref().map(|e| format!(": {e}")).unwrap_or_default()
            )));
        }
        Ok(run)
    }
}

/// The progress line's width: shorter lines are padded to cover the previous one.
const PROGRESS_WIDTH: usize = 72;

/// Rewrites one stderr line each second with the running count.
async fn progress(label: String, count: Arc<AtomicU64>, start: Instant, duration: Duration) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    loop {
        tick.tick().await;
        let n = count.load(Ordering::Relaxed);
        let secs = start.elapsed().as_secs_f64();
        let line = format!(
            "{label}: {n} events, {secs:.0}/{:.0}s, {:.0}/s",
            duration.as_secs_f64(),
            n as f64 / secs.max(0.001)
        );
        eprint!("\r{line:<PROGRESS_WIDTH$}");
    }
}

/// What one connection publishes to.
struct Target {
    uri: Uri,
    auth: Option<HeaderValue>,
    count: Arc<AtomicU64>,
}

/// What one connection measured.
#[derive(Debug, Default)]
struct Worker {
    latencies_us: Vec<u64>,
    errors: u64,
    first_error: Option<String>,
}

impl Worker {
    fn fail(&mut self, error: impl FnOnce() -> String) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(error());
        }
    }
}

impl Target {
    /// One keep-alive connection publishing one event at a time until `deadline`, recording the
    /// publishes sent from `measure_from` on.
    async fn publish_until(self, measure_from: Instant, deadline: Instant) -> Worker {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        // One idle connection kept: each task reuses its own connection.
        let client: hyper_util::client::legacy::Client<HttpConnector, Full<Bytes>> =
            hyper_util::client::legacy::Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(1)
                .build(connector);
        let body = Bytes::from_static(BODY);
        let mut w = Worker::default();
        while Instant::now() < deadline {
            let mut builder = Request::builder()
                .method(Method::POST)
                .uri(self.uri.clone())
                .header(header::CONTENT_TYPE, "application/json");
            if let Some(a) = &self.auth {
                builder = builder.header(header::AUTHORIZATION, a.clone());
            }
            let request = match builder.body(Full::new(body.clone())) {
                Ok(r) => r,
                Err(e) => {
                    w.fail(|| format!("cannot build the request: {e}"));
                    break;
                }
            };
            let sent = Instant::now();
            let response = match tokio::time::timeout(REQUEST_TIMEOUT, client.request(request)).await {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => {
                    let mut cause: &dyn std::error::Error = &e;
                    while let Some(inner) = cause.source() {
                        cause = inner;
                    }
                    let detail = cause.to_string();
                    w.fail(|| detail);
                    // Do not spin on a refused connection.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
                Err(_) => {
                    w.fail(|| format!("no answer within {}", humantime::format_duration(REQUEST_TIMEOUT)));
                    continue;
                }
            };
            let status = response.status();
            let answer = match response.into_body().collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    w.fail(|| format!("reading the answer failed: {e}"));
                    continue;
                }
            };
            let took = sent.elapsed();
            if sent < measure_from {
                continue;
            }
            if status.is_success() {
                w.latencies_us.push(u64::try_from(took.as_micros()).unwrap_or(u64::MAX));
                self.count.fetch_add(1, Ordering::Relaxed);
            } else {
                w.fail(|| format!("{status}: {}", String::from_utf8_lossy(&answer).trim()));
            }
        }
        w
    }
}

/// What all connections to one target measured.
#[derive(Debug, Default)]
struct Run {
    /// Sorted (after [`Load::run`]) per-request latencies of the successful publishes.
    latencies_us: Vec<u64>,
    errors: u64,
    first_error: Option<String>,
    elapsed: Duration,
}

impl Run {
    fn add(&mut self, w: Worker) {
        self.latencies_us.extend(w.latencies_us);
        self.errors += w.errors;
        if self.first_error.is_none() {
            self.first_error = w.first_error;
        }
    }

    /// Successful publishes per second.
    fn per_s(&self) -> f64 {
        self.latencies_us.len() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The `p`th percentile (nearest rank) of the sorted latencies, in milliseconds.
    fn percentile_ms(&self, p: f64) -> f64 {
        percentile_us(&self.latencies_us, p) as f64 / 1000.0
    }
}

/// The nearest-rank `p`th percentile of `sorted` (0 when empty).
fn percentile_us(sorted: &[u64], p: f64) -> u64 {
    let n = sorted.len();
    if n == 0 {
        return 0;
    }
    let rank = (p / 100.0 * n as f64).ceil() as usize;
    sorted[rank.clamp(1, n) - 1]
}

#[cfg(test)]
mod tests {
    use super::percentile_us;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile_us(&v, 50.0), 50);
        assert_eq!(percentile_us(&v, 99.0), 99);
        assert_eq!(percentile_us(&v, 100.0), 100);
        assert_eq!(percentile_us(&[7], 50.0), 7);
        assert_eq!(percentile_us(&[], 99.0), 0);
    }
}
