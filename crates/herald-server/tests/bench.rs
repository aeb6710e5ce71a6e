//! `herald bench` as a child process: a short run prints one BENCH line per target with numbers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::process::Output;

/// Runs `herald bench ARGS` with no `HERALD_*` variables from the environment.
async fn bench(args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"));
    cmd.arg("bench").args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("HERALD_") {
            cmd.env_remove(k);
        }
    }
    let out = cmd.env("RUST_LOG", "warn").kill_on_drop(true).output().await.unwrap();
    assert!(
        out.status.success(),
        "herald bench failed: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The `key=value` fields of the `BENCH http_publish store=STORE` line, failing when it is missing.
fn fields(stdout: &str, store: &str) -> HashMap<String, String> {
    let prefix = format!("BENCH http_publish store={store} ");
    let line = stdout
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no line starting with {prefix:?} in:\n{stdout}"));
    line[prefix.len()..]
        .split_whitespace()
        .map(|kv| {
            let (k, v) = kv
                .split_once('=')
                .unwrap_or_else(|| panic!("{kv:?} is not key=value in {line:?}"));
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

/// Asserts that each of `keys` is in `fields` and is a number above 0.
fn positive(fields: &HashMap<String, String>, store: &str, keys: &[&str]) {
    for key in keys {
        let value = fields
            .get(*key)
            .unwrap_or_else(|| panic!("store={store}: no {key} in {fields:?}"));
        let n: f64 = value
            .parse()
            .unwrap_or_else(|e| panic!("store={store}: {key}={value} is not a number: {e}"));
        assert!(n > 0.0, "store={store}: {key}={value} is not above 0");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn prints_a_line_per_in_process_target() {
    let out = bench(&[
        "--duration",
        "1s",
        "--connections",
        "4",
        "--lateness-events",
        "50",
        "--lateness-spread",
        "500ms",
    ])
    .await;
    let stdout = String::from_utf8(out.stdout).unwrap();
    positive(&fields(&stdout, "trivial"), "trivial", &["events_per_s"]);
    positive(
        &fields(&stdout, "memory"),
        "memory",
        &["events_per_s", "baseline_per_s", "ratio", "p50_ms", "p99_ms"],
    );
    if cfg!(feature = "sqlite") {
        positive(
            &fields(&stdout, "sqlite"),
            "sqlite",
            &[
                "events_per_s",
                "p50_ms",
                "p99_ms",
                "fsync_per_s",
                "bound_per_s",
                "of_bound",
            ],
        );
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("events in"), "no summary on stderr:\n{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn loads_a_running_server() {
    let server = common::start(common::config()).await;
    let out = bench(&["--duration", "1s", "--connections", "2", "--server", &server.base]).await;
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("BENCH ")).count(),
        1,
        "{stdout}"
    );
    positive(
        &fields(&stdout, "external"),
        "external",
        &["events_per_s", "p50_ms", "p99_ms"],
    );
    let (_, page) = server.get("/v1/events?topic=bench.publish&limit=1").await;
    assert_eq!(page["items"][0]["topic"], "bench.publish", "{page}");
    server.stop().await;
}
