//! Cron schedules through the server: `/v1/cron`, `[[cron]]` tables of the config file, API-made
//! schedules kept beside the embedded store across a restart, and `herald cron`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{config, error_code, eventually, start, TestServer};
use herald_server::{CronEntry, StoreKind};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::process::Command;

async fn delete(s: &TestServer, path: &str) -> (StatusCode, Value) {
    common::json(s.req(Method::DELETE, path).send().await.unwrap()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_list_pause_resume_and_delete() {
    let s = start(config()).await;
    let (status, created) = s
        .post(
            "/v1/cron",
            json!({
                "name": "nightly-report",
                "expr": "0 3 * * *",
                "topic": "report.nightly",
                "tz": "Europe/Berlin",
                "payload": {"format": "pdf"},
                "missed": "catch-up-one",
                "priority": 8,
                "ttl_ms": 3_600_000
            }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["expr"], "0 3 * * *");
    assert_eq!(created["tz"], "Europe/Berlin");
    assert_eq!(created["topic"], "report.nightly");
    assert_eq!(created["missed"], "catch-up-one");
    assert_eq!(created["origin"], "api");
    assert_eq!(created["paused"], false);
    let next = created["next"].as_array().unwrap();
    assert_eq!(next.len(), 5);
    // 03:00 in Berlin is 01:00 or 02:00 UTC.
    let first = next[0].as_str().unwrap();
    assert!(
        first.ends_with("T02:00:00.000Z") || first.ends_with("T01:00:00.000Z"),
        "{first}"
    );

    let (status, listed) = s.get("/v1/cron").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listed["items"][0]["name"], "nightly-report");

    let (status, paused) = s.post_empty("/v1/cron/nightly-report/pause").await;
    assert_eq!(status, StatusCode::OK, "{paused}");
    assert_eq!(paused["paused"], true);
    assert_eq!(paused["next"], json!([]), "a paused schedule has no next fires");

    // Replacing keeps it paused and answers 200.
    let (status, replaced) = s
        .post(
            "/v1/cron",
            json!({"name": "nightly-report", "expr": "0 4 * * *", "topic": "report.nightly"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{replaced}");
    assert_eq!(replaced["expr"], "0 4 * * *");
    assert_eq!(replaced["tz"], "UTC");
    assert_eq!(replaced["paused"], true);

    let (status, resumed) = s.post_empty("/v1/cron/nightly-report/resume").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(resumed["paused"], false);
    let (_, one) = s.get("/v1/cron/nightly-report").await;
    assert_eq!(one["next"][0].as_str().unwrap().get(10..), Some("T04:00:00.000Z"));

    let (status, removed) = delete(&s, "/v1/cron/nightly-report").await;
    assert_eq!(status, StatusCode::OK, "{removed}");
    let (_, listed) = s.get("/v1/cron").await;
    assert_eq!(listed["items"], json!([]));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_schedules_are_400_and_unknown_names_404() {
    let s = start(config()).await;
    let cases = [
        (
            json!({"name": "r", "expr": "0 25 * * *", "topic": "a.b"}),
            "cron expression '0 25 * * *' is invalid",
        ),
        (
            json!({"name": "r", "expr": "0 3 * * *", "topic": "a.b", "tz": "Europe/Berln"}),
            "time zone 'Europe/Berln' is unknown",
        ),
        (
            json!({"name": "r", "expr": "0 0 30 2 *", "topic": "a.b"}),
            "never fires",
        ),
        (
            json!({"name": "Bad Name", "expr": "0 3 * * *", "topic": "a.b"}),
            "cron name 'Bad Name' is invalid",
        ),
        (
            json!({"name": "r", "expr": "0 3 * * *", "topic": "a.b", "missed": "all"}),
            "unknown missed-tick policy 'all'",
        ),
        (json!({"name": "r", "expr": "0 3 * * *"}), "topic"),
    ];
    for (body, says) in cases {
        let (status, err) = s.post("/v1/cron", body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body} -> {err}");
        assert_eq!(error_code(&err), "invalid_request");
        let message = err["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{body}: {message}");
    }
    for (method, path) in [
        (Method::GET, "/v1/cron/nope"),
        (Method::DELETE, "/v1/cron/nope"),
        (Method::POST, "/v1/cron/nope/pause"),
        (Method::POST, "/v1/cron/nope/resume"),
    ] {
        let (status, err) = common::json(s.req(method.clone(), path).send().await.unwrap()).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}: {err}");
        assert_eq!(error_code(&err), "not_found");
        assert!(err["error"]["message"].as_str().unwrap().contains("'nope'"), "{err}");
    }
    let (_, listed) = s.get("/v1/cron").await;
    assert_eq!(listed["items"], json!([]), "nothing refused was declared");
    s.stop().await;
}

/// A schedule of the config file fires every second: its ticks' events carry the schedule's
/// payload, and the listing shows the last tick with its event and status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_schedules_fire_and_list_their_last_tick() {
    let mut c = config();
    let mut tick = CronEntry::new("heartbeat", "* * * * * *", "clock.tick");
    tick.payload = Some(json!({"from": "config"}));
    c.cron = vec![tick];
    let s = start(c).await;
    let (_, listed) = s.get("/v1/cron").await;
    assert_eq!(listed["items"][0]["origin"], "config", "{listed}");

    let last = eventually("a tick's event", || async {
        let (_, one) = s.get("/v1/cron/heartbeat").await;
        let last = one["last"].clone();
        (!last.is_null()).then_some(last)
    })
    .await;
    let event = s.event(last["event_id"].as_str().unwrap()).await;
    assert_eq!(event["topic"], "clock.tick");
    assert_eq!(event["payload"], json!({"from": "config"}));
    assert_eq!(
        event["key"],
        format!("cron:heartbeat:{}", last["tick"].as_str().unwrap())
    );
    assert_eq!(event["headers"]["herald-cron"], "heartbeat");
    assert_eq!(last["status"], "unrouted", "no subscription: {last}");
    s.stop().await;
}

/// API-made schedules (and whether they are paused) are kept beside the embedded store, in a
/// file only the owner can read, and declared again at the next start.
#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_schedules_survive_a_restart_with_the_embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config();
    c.store = StoreKind::Sqlite;
    c.data = dir.path().join("data");
    let s = start(c.clone()).await;
    for name in ["kept", "kept-paused"] {
        let (status, v) = s
            .post(
                "/v1/cron",
                json!({"name": name, "expr": "*/5 * * * *", "topic": "maintenance.cleanup", "payload": [1, 2]}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{v}");
    }
    let (status, _) = s.post_empty("/v1/cron/kept-paused/pause").await;
    assert_eq!(status, StatusCode::OK);
    s.stop().await;

    let file = dir.path().join("data").join("cron.json");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    }
    let saved: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(saved.as_array().unwrap().len(), 2, "{saved}");

    let s = start(c).await;
    let (_, listed) = s.get("/v1/cron").await;
    let items = listed["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{listed}");
    assert_eq!(items[0]["name"], "kept");
    assert_eq!(items[0]["paused"], false);
    assert_eq!(items[0]["origin"], "api");
    assert_eq!(items[1]["name"], "kept-paused");
    assert_eq!(items[1]["paused"], true);
    s.stop().await;
}

/// `herald serve` with an invalid `[[cron]]` table does not start, and says which schedule and
/// what is wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_config_schedule_fails_the_start() {
    let dir = tempfile::tempdir().unwrap();
    for (table, says) in [
        (
            "name = \"nightly\"\nexpr = \"0 3 * * * * *\"\ntopic = \"report.nightly\"",
            "cron expression '0 3 * * * * *' is invalid",
        ),
        (
            "name = \"nightly\"\nexpr = \"0 3 * * *\"\ntopic = \"report.nightly\"\ntz = \"Europe/Berln\"",
            "time zone 'Europe/Berln' is unknown",
        ),
    ] {
        let file = dir.path().join("herald.toml");
        std::fs::write(&file, format!("store = \"memory\"\n\n[[cron]]\n{table}\n")).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(&file)
            .env("RUST_LOG", "warn")
            .kill_on_drop(true)
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("cron schedule 'nightly'"), "{stderr}");
        assert!(stderr.contains(says), "{stderr}");
    }
}

/// What one run of the binary printed.
async fn herald(s: &TestServer, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(args)
        .args(["--server", &s.base])
        .env_remove("HERALD_SERVER")
        .env_remove("HERALD_TOKEN")
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

async fn ok(s: &TestServer, args: &[&str]) -> String {
    let (code, out, err) = herald(s, args).await;
    assert_eq!(code, 0, "herald {args:?}: {out}{err}");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_add_list_pause_resume_remove() {
    let s = start(config()).await;
    assert_eq!(ok(&s, &["cron", "list"]).await, "no cron schedules\n");

    let out = ok(
        &s,
        &[
            "cron",
            "add",
            "nightly-report",
            "--expr",
            "0 3 * * *",
            "--topic",
            "report.nightly",
            "--tz",
            "Europe/Berlin",
            "--payload",
            r#"{"format": "pdf"}"#,
            "--missed",
            "catch-up-one",
            "--priority",
            "8",
            "--ttl",
            "1h",
        ],
    )
    .await;
    assert!(out.starts_with("NAME"), "{out}");
    assert!(out.contains("0 3 * * * (Europe/Berlin)"), "{out}");
    let (_, v) = s.get("/v1/cron/nightly-report").await;
    assert_eq!(v["missed"], "catch-up-one");

    ok(
        &s,
        &[
            "cron",
            "add",
            "heartbeat",
            "--expr",
            "* * * * * *",
            "--topic",
            "clock.tick",
        ],
    )
    .await;
    // The table shows next fire times and, once it fired, the last tick's outcome.
    eventually("a heartbeat tick", || async {
        let (_, v) = s.get("/v1/cron/heartbeat").await;
        (!v["last"].is_null()).then_some(())
    })
    .await;
    let table = ok(&s, &["cron", "list"]).await;
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    assert!(
        lines[0].contains("NEXT FIRES") && lines[0].contains("LAST TICK") && lines[0].contains("OUTCOME"),
        "{table}"
    );
    let heartbeat = lines.iter().find(|l| l.starts_with("heartbeat")).unwrap();
    assert!(
        heartbeat.contains("running") && heartbeat.contains("unrouted"),
        "{table}"
    );
    assert!(heartbeat.contains("in ") || heartbeat.contains("now"), "{table}");
    let nightly = lines.iter().find(|l| l.starts_with("nightly-report")).unwrap();
    assert!(nightly.contains("in "), "next fires: {table}");

    let json: Value = serde_json::from_str(&ok(&s, &["cron", "list", "--json"]).await).unwrap();
    assert_eq!(json["items"].as_array().unwrap().len(), 2);

    let paused = ok(&s, &["cron", "pause", "heartbeat"]).await;
    assert!(paused.contains("paused"), "{paused}");
    let resumed = ok(&s, &["cron", "resume", "heartbeat"]).await;
    assert!(resumed.contains("running"), "{resumed}");
    let removed = ok(&s, &["cron", "remove", "heartbeat"]).await;
    assert!(removed.contains("removed cron schedule heartbeat"), "{removed}");

    // A refused expression: the API's message, exit 2.
    let (code, _, err) = herald(&s, &["cron", "add", "bad", "--expr", "61 * * * *", "--topic", "a.b"]).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("cron expression '61 * * * *' is invalid"), "{err}");
    let (code, _, err) = herald(&s, &["cron", "remove", "nope"]).await;
    assert_eq!(code, 2);
    assert!(err.contains("no cron schedule named 'nope'"), "{err}");
    s.stop().await;
}

/// Schedules are per server: pausing one on the server that receives the call leaves it running
/// on another server of the same store, whose ticks still reach the store (once each).
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_acts_on_the_server_that_receives_it() {
    let mut c = config();
    c.store = StoreKind::Redis("redis://127.0.0.1:6379".into());
    c.namespace = common::namespace("cronpause");
    c.cron = vec![CronEntry::new("beat", "* * * * * *", "clock.beat")];
    // Each server keeps its API-made schedules in its own data directory.
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut c2 = c.clone();
    c.data = dirs.0.path().to_owned();
    c2.data = dirs.1.path().to_owned();
    let a = start(c).await;
    let b = start(c2).await;

    let (status, paused) = a.post_empty("/v1/cron/beat/pause").await;
    assert_eq!(status, StatusCode::OK, "{paused}");
    assert_eq!(paused["paused"], true);
    let (_, other) = b.get("/v1/cron/beat").await;
    assert_eq!(other["paused"], false, "the other server goes on: {other}");

    // A tick after the pause still makes its event (published by b), seen through a.
    let after = herald::Timestamp::now_system() + std::time::Duration::from_millis(1500);
    eventually("a tick after the pause", || async {
        let (_, page) = a.get("/v1/events?topic=clock.beat&limit=5").await;
        let items = page["items"].as_array()?.clone();
        items
            .iter()
            .any(|e| {
                e["headers"]["herald-cron-tick"]
                    .as_str()
                    .and_then(|t| humantime::parse_rfc3339(t).ok())
                    .is_some_and(|t| herald::Timestamp::from(t) > after)
            })
            .then_some(())
    })
    .await;
    a.stop().await;
    b.stop().await;
}
