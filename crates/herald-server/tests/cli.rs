//! The `herald` client subcommands, run as the real binary against an in-process server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, SystemTime};

use axum::routing::post;
use axum::Router;
use common::{config, eventually, start, TestServer};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::process::Command;

/// What one run of the binary did.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn ok(self) -> String {
        assert_eq!(self.code, 0, "exit {}: {}{}", self.code, self.stdout, self.stderr);
        self.stdout
    }

    fn json(self) -> Value {
        let out = self.ok();
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
    }
}

/// Runs `herald ARGS` with `envs` (and no other `HERALD_*` variable).
async fn herald_env(args: &[&str], envs: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
    for (k, _) in std::env::vars() {
        if k.starts_with("HERALD_") {
            cmd.env_remove(k);
        }
    }
    let out = cmd
        .args(args)
        .envs(envs.iter().copied())
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

/// Runs `herald ARGS --server <the test server>`.
async fn herald(s: &TestServer, args: &[&str]) -> Run {
    let mut all = args.to_vec();
    all.extend(["--server", &s.base]);
    herald_env(&all, &[]).await
}

async fn create_sub(s: &TestServer, body: Value) {
    let (status, v) = s.post("/v1/subscriptions", body).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

fn millis(text: &Value) -> SystemTime {
    humantime::parse_rfc3339_weak(text.as_str().unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_and_schedule_send_every_option() {
    let s = start(config()).await;
    create_sub(&s, json!({"name": "workers", "pattern": "orders.*"})).await;

    let id = herald(
        &s,
        &[
            "publish",
            "orders.created",
            r#"{"n": 1}"#,
            "--priority",
            "8",
            "--key",
            "cust-7",
            "--ttl",
            "1h",
            "--header",
            "trace=abc",
            "--header",
            "tenant=t=1",
        ],
    )
    .await
    .ok();
    let id = id.trim();
    let e = s.event(id).await;
    assert_eq!(e["topic"], "orders.created");
    assert_eq!(e["payload"], json!({"n": 1}));
    assert_eq!(e["priority"], 8);
    assert_eq!(e["key"], "cust-7");
    assert_eq!(e["headers"], json!({"trace": "abc", "tenant": "t=1"}));
    let ttl = millis(&e["expires_at"])
        .duration_since(millis(&e["published_at"]))
        .unwrap();
    assert_eq!(ttl, Duration::from_secs(3600));

    // No payload is null; --json prints the API's answer.
    let answer = herald(&s, &["publish", "orders.bare", "--json"]).await.json();
    let bare = s.event(answer["id"].as_str().unwrap()).await;
    assert_eq!(bare["payload"], Value::Null);

    let delayed = herald(&s, &["publish", "orders.delayed", "1", "--delay", "30s"])
        .await
        .ok();
    let e = s.event(delayed.trim()).await;
    assert_eq!(e["status"], "scheduled");
    let delay = millis(&e["deliver_at"])
        .duration_since(millis(&e["published_at"]))
        .unwrap();
    assert_eq!(delay, Duration::from_secs(30));

    let at = rfc3339(SystemTime::now() + Duration::from_secs(3600));
    let scheduled = herald(&s, &["schedule", "orders.later", r#""remind""#, "--at", &at])
        .await
        .ok();
    let e = s.event(scheduled.trim()).await;
    assert_eq!(e["status"], "scheduled");
    assert_eq!(e["payload"], "remind");
    assert_eq!(e["deliver_at"], at.as_str());
    let scheduled = herald(&s, &["schedule", "orders.later", "2", "--delay", "5m"])
        .await
        .ok();
    assert_eq!(s.event(scheduled.trim()).await["status"], "scheduled");

    // Usage errors exit 2: schedule needs a time; --delay and --at exclude each other; bad JSON.
    let run = herald(&s, &["schedule", "orders.later", "1"]).await;
    assert_eq!(run.code, 2, "{run:?}");
    let run = herald(&s, &["publish", "orders.x", "1", "--delay", "1s", "--at", &at]).await;
    assert_eq!(run.code, 2, "{run:?}");
    let run = herald(&s, &["publish", "orders.x", "not json"]).await;
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("the payload is not JSON"), "{}", run.stderr);
    // The API's own 400 message.
    let run = herald(&s, &["publish", "orders.x", "1", "--priority", "11"]).await;
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("out of range"), "{}", run.stderr);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_filters_pages_detail_and_cancel() {
    let s = start(config()).await;
    create_sub(&s, json!({"name": "workers", "pattern": "orders.*"})).await;
    // A key with characters a URL must encode.
    let odd_key = "a b>c&d=e/f?g#h+%";
    let first = s
        .publish(json!({"topic": "orders.created", "payload": {"n": 1}, "key": odd_key, "delay_ms": 600_000}))
        .await;
    let second = s
        .publish(json!({"topic": "orders.created", "payload": {"n": 2}, "delay_ms": 600_000}))
        .await;
    let other = s.publish(json!({"topic": "audit.seen", "payload": 3})).await;

    let table = herald(&s, &["events", "--key", odd_key]).await.ok();
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("ID") && lines[0].contains("TOPIC") && lines[0].contains("STATUS"));
    assert_eq!(lines.len(), 2, "{table}");
    assert!(lines[1].contains(&first) && lines[1].contains("scheduled"), "{table}");
    // Delivery in ten minutes, shown relative to now.
    assert!(lines[1].contains("in 9m") || lines[1].contains("in 10m"), "{table}");
    assert!(lines[1].contains("workers:scheduled"), "{table}");
    // Columns are aligned: every row's STATUS starts where the header's does.
    let col = lines[0].find("STATUS").unwrap();
    assert_eq!(&lines[1][col..col + 9], "scheduled");

    let page = herald(&s, &["events", "--key", odd_key, "--json"]).await.json();
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    assert_eq!(page["items"][0]["key"], odd_key);

    // Pages: one at a time, newest first, with the cursor printed.
    let one = herald(&s, &["events", "--topic", "orders.>", "--limit", "1"])
        .await
        .ok();
    assert!(one.contains(&second) && !one.contains(&first), "{one}");
    let cursor = one
        .lines()
        .find_map(|l| l.strip_prefix("more: --after "))
        .unwrap_or_else(|| panic!("no cursor in {one}"));
    let next = herald(
        &s,
        &["events", "--topic", "orders.>", "--limit", "1", "--after", cursor],
    )
    .await
    .ok();
    assert!(next.contains(&first) && !next.contains(&second), "{next}");

    let filtered = herald(
        &s,
        &[
            "events",
            "--status",
            "scheduled",
            "--subscription",
            "workers",
            "--since",
            "10m",
            "--json",
        ],
    )
    .await
    .json();
    let ids: Vec<&str> = filtered["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [second.as_str(), first.as_str()]);
    let until = rfc3339(SystemTime::now() - Duration::from_secs(3600));
    let none = herald(&s, &["events", "--until", &until]).await.ok();
    assert_eq!(none.trim(), "no events");
    let unrouted = herald(&s, &["events", "--topic", "audit.seen", "--json"]).await.json();
    assert_eq!(unrouted["items"][0]["id"], other.as_str());
    let run = herald(&s, &["events", "--status", "sideways"]).await;
    assert_eq!(run.code, 2, "{run:?}");

    // Detail: fields, payload and deliveries.
    let detail = herald(&s, &["event", &first]).await.ok();
    for want in [
        first.as_str(),
        "orders.created",
        "scheduled",
        odd_key,
        "\"n\": 1",
        "DELIVERY",
        "workers",
    ] {
        assert!(detail.contains(want), "{want} is not in\n{detail}");
    }
    let detail = herald(&s, &["event", &first, "--json"]).await.json();
    assert_eq!(detail["deliveries"][0]["subscription"], "workers");
    assert!(detail["deliveries"][0]["attempts"].is_array());

    // Cancel, then cancel again: 409 is a client error.
    let out = herald(&s, &["cancel", &first]).await.ok();
    assert_eq!(out.trim(), format!("cancelled 1 delivery of event {first}"));
    assert_eq!(s.event(&first).await["status"], "cancelled");
    let again = herald(&s, &["cancel", &first]).await;
    assert_eq!(again.code, 2, "{again:?}");
    assert!(again.stderr.contains("cannot be cancelled"), "{}", again.stderr);
    let answer = herald(&s, &["cancel", &second, "--json"]).await.json();
    assert_eq!(answer["cancelled"], 1);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_delivery_shows_its_attempts_and_is_retried() {
    let s = start(config()).await;
    create_sub(&s, json!({"name": "workers", "pattern": "job.*", "max_attempts": 1})).await;
    let id = s
        .publish(json!({"topic": "job.build", "payload": {"repo": "herald"}}))
        .await;
    let claimed = eventually("a claim", || async {
        let (_, c) = s.post("/v1/subscriptions/workers/claim", json!({"max": 1})).await;
        c["items"].as_array().filter(|i| !i.is_empty()).map(|i| i[0].clone())
    })
    .await;
    let (status, v) = s
        .post(
            "/v1/subscriptions/workers/nack",
            json!({"lease": claimed["lease"], "error": "the build broke", "dead": true}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let e = s.event(&id).await;
    assert_eq!(e["status"], "dead");
    let delivery = e["deliveries"][0]["id"].as_str().unwrap().to_owned();

    let detail = herald(&s, &["event", &id]).await.ok();
    for want in ["dead", "the build broke", "SUBSCRIPTION", "OUTCOME", &delivery] {
        assert!(detail.contains(want), "{want} is not in\n{detail}");
    }

    let out = herald(&s, &["retry", &delivery]).await.ok();
    assert_eq!(out.trim(), format!("delivery {delivery} is pending again"));
    assert_ne!(s.event(&id).await["status"], "dead");
    // Not dead any more: 409, exit 2.
    let again = herald(&s, &["retry", &delivery, "--json"]).await;
    assert_eq!(again.code, 2, "{again:?}");
    assert!(again.stderr.contains("not dead"), "{}", again.stderr);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_prints_the_reply() {
    let s = start(config()).await;
    let app = Router::new().route(
        "/double",
        post(|body: axum::body::Bytes| async move {
            let n: u64 = serde_json::from_slice(&body).unwrap();
            json!({"answer": n * 2}).to_string()
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    create_sub(
        &s,
        json!({"name": "doubler", "pattern": "math.double", "url": format!("http://{addr}/double"), "secret": "s"}),
    )
    .await;

    let out = herald(&s, &["request", "math.double", "21", "--timeout", "5s"])
        .await
        .ok();
    let reply: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(reply, json!({"answer": 42}));
    let raw = herald(&s, &["request", "math.double", "2", "--json"]).await.json();
    assert_eq!(raw, json!({"reply": {"answer": 4}}));
    // Nothing answers this topic: the API's 404.
    let run = herald(&s, &["request", "math.nobody", "1", "--timeout", "1s"]).await;
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("math.nobody"), "{}", run.stderr);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subs_list_pause_resume_delete() {
    let s = start(config()).await;
    let empty = herald(&s, &["subs"]).await.ok();
    assert_eq!(empty.trim(), "no subscriptions");
    create_sub(
        &s,
        json!({"name": "workers", "pattern": "job.*", "max_attempts": 3, "timeout_ms": 30_000,
               "url": "http://127.0.0.1:9/hook", "secret": "s"}),
    )
    .await;
    create_sub(&s, json!({"name": "auditors", "pattern": "audit.>"})).await;

    let table = herald(&s, &["subs"]).await.ok();
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("NAME"), "{table}");
    assert!(
        lines[1].starts_with("auditors") && lines[1].contains("audit.>"),
        "{table}"
    );
    assert!(lines[1].contains("pull") && lines[1].contains("running"), "{table}");
    for want in ["workers", "webhook", "running", "30s", "http://127.0.0.1:9/hook"] {
        assert!(lines[2].contains(want), "{want} is not in {table}");
    }
    let list = herald(&s, &["subs", "list", "--json"]).await.json();
    assert_eq!(list["items"].as_array().unwrap().len(), 2);

    let paused = herald(&s, &["subs", "pause", "workers"]).await.ok();
    assert!(paused.contains("paused"), "{paused}");
    let (_, v) = s.get("/v1/subscriptions/workers").await;
    assert_eq!(v["paused"], true);
    // Common flags go before or after the action.
    let resumed = herald_env(&["subs", "--json", "resume", "workers", "--server", &s.base], &[])
        .await
        .json();
    assert_eq!(resumed["paused"], false);

    let deleted = herald(&s, &["subs", "delete", "auditors"]).await.ok();
    assert!(deleted.contains("deleted subscription auditors"), "{deleted}");
    let run = herald(&s, &["subs", "pause", "auditors"]).await;
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr.contains("no subscription named 'auditors'"),
        "{}",
        run.stderr
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_as_a_table_and_as_json() {
    let s = start(config()).await;
    create_sub(&s, json!({"name": "workers", "pattern": "job.*"})).await;
    s.publish(json!({"topic": "job.a", "payload": 1})).await;
    let table = herald(&s, &["stats"]).await.ok();
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("deliveries.pending") && l.ends_with(" 1")),
        "{table}"
    );
    let stats = herald(&s, &["stats", "--json"]).await.json();
    assert_eq!(stats["deliveries"]["pending"], 1);
    assert!(stats["events"].as_u64().unwrap() >= 1);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_id_is_a_404_with_exit_code_2() {
    let s = start(config()).await;
    let id = "01a21474-c3a3-7000-8a8d-2725827d7c6c";
    for args in [&["event", id][..], &["cancel", id][..], &["retry", id][..]] {
        let run = herald(&s, args).await;
        assert_eq!(run.code, 2, "{args:?}: {run:?}");
        assert!(run.stderr.starts_with("herald: no "), "{args:?}: {}", run.stderr);
        assert!(run.stderr.contains("404"), "{}", run.stderr);
        assert!(run.stdout.is_empty());
    }
    let run = herald(&s, &["event", id, "--json"]).await;
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains(&format!("no event {id}")), "{}", run.stderr);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_asks_whether_the_server_runs() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let run = herald_env(&["stats", "--server", &url], &[]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains(&format!("is `herald serve` running at {url}?")),
        "{}",
        run.stderr
    );
    // HERALD_SERVER is the default server.
    let run = herald_env(&["events"], &[("HERALD_SERVER", &url)]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains(&url), "{}", run.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_from_the_flag_or_the_environment() {
    let mut c = config();
    c.tokens = vec!["sesame".into()];
    let s = start(c).await;
    let run = herald(&s, &["stats"]).await;
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("Authorization: Bearer"), "{}", run.stderr);
    herald(&s, &["stats", "--token", "sesame"]).await.ok();
    let run = herald_env(&["subs", "--server", &s.base], &[("HERALD_TOKEN", "sesame")]).await;
    assert_eq!(run.ok().trim(), "no subscriptions");
    s.stop().await;
}
