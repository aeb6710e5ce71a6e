//! The test harness: a real server on a free loopback port, and a client for it.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::time::Duration;

use herald_server::{Config, Server, StoreKind};
use reqwest::{Method, Response, StatusCode};
use serde_json::Value;
use tokio::time::Instant;

/// A config for tests: memory store, loopback, port chosen by the listener.
pub fn config() -> Config {
    let mut c = Config::default();
    c.store = StoreKind::Memory;
    c.listen = "127.0.0.1:0".parse().unwrap();
    c
}

/// A running server and a client that talks to it.
pub struct TestServer {
    pub server: Server,
    pub base: String,
    pub http: reqwest::Client,
    pub token: Option<String>,
}

pub async fn start(config: Config) -> TestServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = Server::start(listener, config).await.unwrap();
    let base = format!("http://{}", server.local_addr());
    TestServer {
        server,
        base,
        http: reqwest::Client::new(),
        token: None,
    }
}

impl TestServer {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn req(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(method, self.url(path));
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        json(self.req(Method::GET, path).send().await.unwrap()).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        json(self.req(Method::POST, path).json(&body).send().await.unwrap()).await
    }

    pub async fn post_empty(&self, path: &str) -> (StatusCode, Value) {
        json(self.req(Method::POST, path).send().await.unwrap()).await
    }

    /// Publishes one event and returns its id.
    pub async fn publish(&self, body: Value) -> String {
        let (status, v) = self.post("/v1/events", body).await;
        assert_eq!(status, StatusCode::OK, "{v}");
        v["id"].as_str().unwrap().to_owned()
    }

    pub async fn event(&self, id: &str) -> Value {
        let (status, v) = self.get(&format!("/v1/events/{id}")).await;
        assert_eq!(status, StatusCode::OK, "{v}");
        v
    }

    pub async fn stop(self) {
        self.server.shutdown().await.unwrap();
    }
}

/// The status and JSON body of a response (`Value::Null` when the body is not JSON).
pub async fn json(r: Response) -> (StatusCode, Value) {
    let status = r.status();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Asserts the API's error shape and returns the error code.
pub fn error_code(body: &Value) -> &str {
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(!message.is_empty(), "not an API error: {body}");
    body["error"]["code"].as_str().unwrap()
}

/// Polls `check` until it yields a value, failing after 10 s.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A fresh namespace (Redis key prefix, PostgreSQL schema) for one test: `<prefix>_<16 hex>`.
pub fn namespace(prefix: &str) -> String {
    use std::hash::{BuildHasher, Hasher};
    // The std hasher is keyed randomly per process; the time tells tests of one process apart.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    format!("{prefix}_{:016x}", h.finish())
}

/// Starts the real `herald serve ARGS` (no `HERALD_*` variables from the environment, logging at
/// `log`), killed when the child is dropped; returns it with the base URL from its first stdout
/// line.
pub async fn spawn_serve(args: &[String], log: &str) -> (tokio::process::Child, String) {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"));
    cmd.arg("serve").args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("HERALD_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("RUST_LOG", log)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true);
    let mut child = cmd.spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
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
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, url)
}
