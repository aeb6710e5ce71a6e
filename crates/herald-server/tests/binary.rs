//! The `herald` binary as a child process: it serves, drains and exits on SIGTERM, and the
//! embedded store keeps what it stored across a restart.
#![allow(clippy::unwrap_used, clippy::expect_used)]
#![cfg_attr(not(feature = "sqlite"), allow(dead_code))]

use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Starts `herald serve` and returns it with its base URL, read from its first stdout line.
async fn spawn(args: &[&str], envs: &[(&str, &str)]) -> (Child, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
    cmd.arg("serve").args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("HERALD_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(envs.iter().copied())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    let mut child = cmd.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("the server did not report its address within 30 s")
        .unwrap()
        .expect("the server exited before listening");
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_owned();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    // Keep reading stdout so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, format!("{url}|{line}"))
}

/// Sends SIGTERM and waits for the exit, failing after `within`.
async fn terminate(mut child: Child, within: Duration) -> ExitStatus {
    let pid = child.id().unwrap().to_string();
    let sent = Command::new("kill").args(["-TERM", &pid]).status().await.unwrap();
    assert!(sent.success());
    tokio::time::timeout(within, child.wait())
        .await
        .expect("the server did not exit within the deadline after SIGTERM")
        .unwrap()
}

fn split(spawned: &str) -> (&str, &str) {
    spawned.split_once('|').unwrap()
}

async fn publish(base: &str, body: Value) -> String {
    let r = reqwest::Client::new()
        .post(format!("{base}/v1/events"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::OK);
    r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned()
}

fn data_arg(dir: &Path) -> String {
    dir.join("data").display().to_string()
}

#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_stops_on_sigterm_and_keeps_events_in_the_embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    let data = data_arg(dir.path());
    let (child, spawned) = spawn(&["--listen", "127.0.0.1:0", "--data", &data], &[]).await;
    let (base, line) = split(&spawned);
    assert!(
        line.contains("store: sqlite"),
        "the embedded store is the default: {line}"
    );
    let id = publish(
        base,
        json!({"topic": "order.paid", "payload": {"order": 7}, "delay_ms": 3_600_000}),
    )
    .await;
    let ready = reqwest::get(format!("{base}/readyz")).await.unwrap();
    assert_eq!(ready.status(), reqwest::StatusCode::OK);
    let status = terminate(child, Duration::from_secs(15)).await;
    assert!(status.success(), "exit status {status}");

    // Same data directory: the event is still there.
    let (child, spawned) = spawn(&["--listen", "127.0.0.1:0", "--data", &data], &[]).await;
    let (base, _) = split(&spawned);
    let event: Value = reqwest::get(format!("{base}/v1/events/{id}"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(event["payload"], json!({"order": 7}));
    assert_eq!(event["status"], "unrouted");
    let status = terminate(child, Duration::from_secs(15)).await;
    assert!(status.success(), "exit status {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_win_over_environment_over_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("herald.toml");
    // The file says sqlite and a fixed port; the environment says memory; the flag says port 0.
    std::fs::write(
        &file,
        format!(
            "listen = \"127.0.0.1:1\"\nstore = \"sqlite\"\ndata = \"{}\"\nbody_limit = 64\n",
            data_arg(dir.path())
        ),
    )
    .unwrap();
    let (child, spawned) = spawn(
        &["--config", &file.display().to_string(), "--listen", "127.0.0.1:0"],
        &[("HERALD_STORE", "memory")],
    )
    .await;
    let (base, line) = split(&spawned);
    assert!(line.contains("store: memory"), "{line}");
    // body_limit from the file applies.
    let r = reqwest::Client::new()
        .post(format!("{base}/v1/events"))
        .json(&json!({"topic": "a.b", "payload": "x".repeat(100)}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::PAYLOAD_TOO_LARGE);
    let status = terminate(child, Duration::from_secs(15)).await;
    assert!(status.success(), "exit status {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_config_exits_with_a_message() {
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--store",
            "memory",
            "--workers",
            "0",
        ])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("workers must be at least 1"));
}
