//! `herald serve --store redis://...` and `--store postgres://...`: two servers sharing one store
//! and namespace are one system. Each test works in its own random namespace on the Redis and the
//! PostgreSQL already running on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use herald_server::StoreKind;
use reqwest::StatusCode;
use serde_json::json;

use common::TestServer;

async fn server(store: &StoreKind, namespace: &str) -> (TestServer, tempfile::TempDir) {
    let data = tempfile::tempdir().unwrap();
    let mut config = common::config();
    config.store = store.clone();
    config.namespace = namespace.to_owned();
    config.data = data.path().to_owned();
    (common::start(config).await, data)
}

/// A delayed event published on one server is claimed through the other when it is due, acked
/// there, and the first server's history shows it succeeded.
async fn two_servers_share_one_store(store: StoreKind) {
    let ns = common::namespace("srv");
    let (a, a_data) = server(&store, &ns).await;
    let (b, _b_data) = server(&store, &ns).await;
    for s in [&a, &b] {
        let (status, body) = s
            .post("/v1/subscriptions", json!({"name": "workers", "pattern": "job.>"}))
            .await;
        assert!(status.is_success(), "{status} {body}");
    }
    let id = a
        .publish(json!({"topic": "job.run", "payload": {"n": 1}, "delay_ms": 300}))
        .await;
    assert_eq!(a.event(&id).await["status"], "scheduled");

    let (status, claimed) = b
        .post("/v1/subscriptions/workers/claim", json!({"wait_ms": 10_000}))
        .await;
    assert_eq!(status, StatusCode::OK, "{claimed}");
    let item = &claimed["items"][0];
    assert_eq!(item["event"]["id"], id.as_str(), "{claimed}");
    let (status, ack) = b
        .post("/v1/subscriptions/workers/ack", json!({"lease": item["lease"]}))
        .await;
    assert_eq!(status, StatusCode::OK, "{ack}");
    assert_eq!(a.event(&id).await["status"], "succeeded");

    let (_, stats) = a.get("/v1/stats").await;
    assert!(stats.to_string().contains("succeeded"), "{stats}");
    a.stop().await;
    b.stop().await;

    // API-made subscriptions are kept in each server's data directory, and come back at restart.
    let saved = std::fs::read_to_string(a_data.path().join("subscriptions.json")).unwrap();
    assert!(saved.contains("\"workers\""), "{saved}");
    let mut config = common::config();
    config.store = store.clone();
    config.namespace = ns.clone();
    config.data = a_data.path().to_owned();
    let again = common::start(config).await;
    let (_, subs) = again.get("/v1/subscriptions").await;
    assert!(subs.to_string().contains("\"workers\""), "{subs}");
    again.stop().await;
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread")]
async fn redis_servers_share_one_store() {
    two_servers_share_one_store(StoreKind::Redis("redis://127.0.0.1:6379".into())).await;
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread")]
async fn postgres_servers_share_one_store() {
    two_servers_share_one_store(StoreKind::Postgres("postgres://postgres@127.0.0.1:5432/test".into())).await;
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn a_store_that_cannot_be_reached_is_a_clear_error() {
    let mut config = common::config();
    config.store = StoreKind::Redis("redis://127.0.0.1:1".into());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = tokio::time::timeout(Duration::from_secs(30), herald_server::Server::start(listener, config))
        .await
        .expect("a refused connection must fail fast")
        .expect_err("the server must not start without its store");
    let text = err.to_string();
    assert!(text.contains("cannot open the store"), "{text}");
}
