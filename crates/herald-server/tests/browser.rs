//! The dashboard in a real browser: the `herald` binary serves it, headless Chromium (driven by
//! playwright-core, tests/browser/dashboard.mjs) signs in with the token, sees an event published
//! through the API, cancels a scheduled one, retries a dead delivery with a click, pauses a
//! subscription, sees the cron schedules (next fires, last outcome) and pauses one, filters the
//! list and takes a screenshot, whose path is printed as
//! `ARTIFACT screenshot=<path>`.
//!
//! Needs Debian's `chromium` and `npm ci` in tests/browser. Without them the test says SKIP and
//! passes, unless `HERALD_REQUIRE_BROWSER=1` (as in CI), when it fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::process::{Child, Command};
use tokio::time::Instant;

const TOKEN: &str = "browser-test-token";

/// What the browser needs, or why it cannot run.
struct Browser {
    chromium: PathBuf,
    script: PathBuf,
}

fn browser() -> Result<Browser, String> {
    let chromium =
        std::env::var_os("HERALD_CHROMIUM").map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from);
    if !chromium.exists() {
        return Err(format!(
            "{} is missing: apt-get install chromium (or set HERALD_CHROMIUM)",
            chromium.display()
        ));
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    if !dir.join("node_modules/playwright-core").exists() {
        return Err(format!(
            "playwright-core is not installed: run `npm ci` in {}",
            dir.display()
        ));
    }
    let node = std::process::Command::new("node").arg("--version").output();
    if !node.is_ok_and(|o| o.status.success()) {
        return Err("node is not on PATH: install Node.js 18 or later".to_owned());
    }
    Ok(Browser {
        chromium,
        script: dir.join("dashboard.mjs"),
    })
}

/// Starts `herald serve` with a token on the memory store; returns it with its base URL.
async fn spawn_server() -> (Child, String) {
    let args: Vec<String> = ["--listen", "127.0.0.1:0", "--store", "memory", "--token", TOKEN]
        .iter()
        .map(|a| (*a).to_owned())
        .collect();
    common::spawn_serve(&args, "error").await
}

/// A client of the server's API with the token.
struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut r = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(TOKEN);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let r = r.send().await.unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        let (status, v) = self.call(reqwest::Method::POST, path, Some(body)).await;
        assert!(status.is_success(), "POST {path}: {status} {v}");
        v
    }

    async fn get(&self, path: &str) -> Value {
        let (status, v) = self.call(reqwest::Method::GET, path, None).await;
        assert!(status.is_success(), "GET {path}: {status} {v}");
        v
    }

    async fn publish(&self, body: Value) -> String {
        self.post("/v1/events", body).await["id"].as_str().unwrap().to_owned()
    }
}

/// A loopback port that refuses connections: bound, then released.
fn refused_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// What the browser checks: an event, a dead delivery of another, and a scheduled one to cancel.
struct Seeded {
    event: String,
    dead_event: String,
    dead_delivery: String,
    scheduled_event: String,
}

/// A webhook receiver on loopback that takes every delivery (answers 200).
async fn receiver() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().route("/hook", axum::routing::post(|| async { "{}" }));
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/hook")
}

/// Subscriptions of every kind (a pull consumer, a webhook that succeeds, one to a refused port,
/// a paused one); a few seconds of traffic for the charts; then the events the browser looks
/// for, newest in the list: orders of which the pull consumer acks two and nacks one to death
/// (max_attempts 1), a scheduled one, and `order.paid`.
async fn seed(api: &Api) -> Seeded {
    let subscriptions = [
        json!({"name": "billing", "pattern": "order.*", "max_attempts": 1}),
        json!({"name": "ledger", "pattern": "metrics.*", "url": receiver().await, "secret": "s3"}),
        json!({
            "name": "audit-hook", "pattern": "audit.>", "max_attempts": 2, "backoff_ms": 100,
            "url": format!("http://127.0.0.1:{}/hook", refused_port()), "secret": "s3"
        }),
        json!({"name": "shipping", "pattern": "shipment.*"}),
    ];
    for sub in subscriptions {
        api.post("/v1/subscriptions", sub).await;
    }
    api.post("/v1/subscriptions/shipping/pause", json!({})).await;

    // A batch per sample until the history holds eight points.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut round = 0u64;
    loop {
        let history = api.get("/v1/stats/history").await;
        let points = history["points"].as_array().map_or(0, Vec::len);
        if points >= 8 {
            break;
        }
        assert!(Instant::now() < deadline, "the history did not fill: {history}");
        if points as u64 >= round {
            round += 1;
            let mut events: Vec<Value> = (0..6 + 9 * (round % 3))
                .map(|i| json!({"topic": "metrics.tick", "payload": {"round": round, "i": i}}))
                .collect();
            if round % 3 == 1 {
                events.push(json!({"topic": "audit.login", "payload": {"user": "ada", "round": round}}));
            }
            api.post("/v1/events", json!({ "events": events })).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    for order in [7101, 7102, 7103] {
        api.publish(json!({
            "topic": "order.created",
            "payload": {"order": order, "total": "49.90"},
            "key": format!("order-{order}")
        }))
        .await;
    }
    let claimed = api
        .post("/v1/subscriptions/billing/claim", json!({"max": 3, "wait_ms": 2000}))
        .await;
    let claimed = claimed["items"].as_array().unwrap_or_else(|| panic!("{claimed}"));
    assert_eq!(claimed.len(), 3, "{claimed:?}");
    for c in &claimed[..2] {
        api.post("/v1/subscriptions/billing/ack", json!({"lease": c["lease"]}))
            .await;
    }
    let dead = &claimed[2];
    api.post(
        "/v1/subscriptions/billing/nack",
        json!({"lease": dead["lease"], "error": "card declined: insufficient funds"}),
    )
    .await;
    let dead_delivery = dead["delivery_id"].as_str().unwrap().to_owned();
    let dead_event = dead["event"]["id"].as_str().unwrap().to_owned();

    let scheduled_event = api
        .publish(json!({"topic": "order.reminder", "payload": {"order": 7101}, "delay_ms": 3_600_000}))
        .await;
    api.publish(json!({"topic": "shipment.ready", "payload": {"order": 7102, "carrier": "dhl"}}))
        .await;
    // Cron schedules: one far off, one every two seconds (it has a last tick by the time the page
    // looks).
    api.post(
        "/v1/cron",
        json!({"name": "nightly-report", "expr": "0 3 * * *", "topic": "report.nightly", "tz": "Europe/Berlin"}),
    )
    .await;
    api.post(
        "/v1/cron",
        json!({"name": "heartbeat", "expr": "*/2 * * * * *", "topic": "clock.heartbeat", "payload": {"ok": true}}),
    )
    .await;
    let event = api
        .publish(json!({
            "topic": "order.paid",
            "payload": {"order": 7104, "amount": {"value": 129.5, "currency": "EUR"}, "items": 3},
            "key": "order-7104", "priority": 8, "headers": {"trace-id": "4bf92f3577b34da6"}
        }))
        .await;
    Seeded {
        event,
        dead_event,
        dead_delivery,
        scheduled_event,
    }
}

/// A line for the log even when the test harness captures output (CI reads it from there):
/// written to the process's stdout directly, which `println!` under capture is not.
fn announce(line: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Where the screenshot goes: beside the build, so CI keeps it with the target dir.
fn screenshot_path() -> PathBuf {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let dir = tmp.parent().unwrap_or(tmp).join("artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("dashboard.png")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_an_event_and_retries_a_dead_delivery_in_chromium() {
    let browser = match browser() {
        Ok(b) => b,
        Err(why) if std::env::var("HERALD_REQUIRE_BROWSER").as_deref() == Ok("1") => {
            panic!("HERALD_REQUIRE_BROWSER=1 but the browser test cannot run: {why}")
        }
        Err(why) => {
            announce(&format!(
                "SKIP the browser test: {why} (set HERALD_REQUIRE_BROWSER=1 to make this a failure)"
            ));
            return;
        }
    };
    let (mut server, base) = spawn_server().await;
    let api = Api {
        base: base.clone(),
        http: reqwest::Client::new(),
    };
    let seeded = seed(&api).await;
    let screenshot = screenshot_path();
    let _ = std::fs::remove_file(&screenshot);

    let run = Command::new("node")
        .arg(&browser.script)
        .current_dir(browser.script.parent().unwrap())
        .env("HERALD_URL", &base)
        .env("HERALD_TOKEN", TOKEN)
        .env("HERALD_EVENT", &seeded.event)
        .env("HERALD_DEAD_EVENT", &seeded.dead_event)
        .env("HERALD_DEAD_DELIVERY", &seeded.dead_delivery)
        .env("HERALD_SCHEDULED_EVENT", &seeded.scheduled_event)
        .env("HERALD_CHROMIUM", &browser.chromium)
        .env("HERALD_SCREENSHOT", &screenshot)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(180), run)
        .await
        .expect("the browser script did not finish within 180 s")
        .unwrap();
    print!("{}", String::from_utf8_lossy(&out.stdout));
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the browser script failed: {}", out.status);

    // What the click did, as the API sees it.
    let event = api.get(&format!("/v1/events/{}", seeded.dead_event)).await;
    let delivery = &event["deliveries"][0];
    assert_eq!(delivery["id"], seeded.dead_delivery.as_str());
    assert_ne!(delivery["status"], "dead", "{event}");
    let cancelled = api.get(&format!("/v1/events/{}", seeded.scheduled_event)).await;
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");
    let sub = api.get("/v1/subscriptions/audit-hook").await;
    assert_eq!(sub["paused"], true, "{sub}");
    let nightly = api.get("/v1/cron/nightly-report").await;
    assert_eq!(nightly["paused"], true, "{nightly}");
    let png = std::fs::read(&screenshot).unwrap();
    assert!(png.starts_with(b"\x89PNG"), "not a PNG: {}", screenshot.display());
    announce(&format!("ARTIFACT screenshot={}", screenshot.display()));

    server.start_kill().unwrap();
    server.wait().await.unwrap();
}
