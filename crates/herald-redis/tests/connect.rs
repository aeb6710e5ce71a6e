//! Connecting: what a wrong URL, prefix or address reports, and a herald built on the store.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use herald_core::{Context, HandlerError, Herald};
use herald_redis::{ConnectError, RedisStore};

const URL: &str = "redis://127.0.0.1:6379";

#[tokio::test]
async fn a_prefix_with_braces_is_refused() {
    let err = RedisStore::builder(URL).prefix("a{b}").connect().await.unwrap_err();
    assert!(matches!(err, ConnectError::InvalidPrefix(_)), "{err}");
    let err = RedisStore::builder(URL).prefix("").connect().await.unwrap_err();
    assert!(matches!(err, ConnectError::InvalidPrefix(_)), "{err}");
}

#[tokio::test]
async fn a_bad_url_is_refused() {
    let err = RedisStore::connect("http://127.0.0.1:6379").await.unwrap_err();
    assert!(matches!(err, ConnectError::InvalidUrl { .. }), "{err}");
}

#[tokio::test]
async fn an_unreachable_redis_is_reported() {
    // A port nothing listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = RedisStore::builder(format!("redis://127.0.0.1:{port}"))
        .timeouts(Some(Duration::from_secs(1)), Some(Duration::from_secs(1)))
        .connect()
        .await
        .unwrap_err();
    assert!(matches!(err, ConnectError::Unreachable { .. }), "{err}");
    assert!(err.to_string().contains("cannot reach Redis"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_herald_runs_on_the_store() {
    let prefix = format!("herald-connect-{:08x}", fastrand::u32(..));
    let store = RedisStore::builder(URL).prefix(prefix.as_str());
    let herald = Herald::builder()
        .connect(async move { store.connect().await.map_err(Into::into) })
        .system_events(false)
        .build()
        .await
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    herald
        .subscribe("greet", "user.*")
        .handle(move |n: u64, _: Context| {
            let tx = tx.clone();
            async move {
                tx.send(n).unwrap();
                Ok::<_, HandlerError>(())
            }
        })
        .await
        .unwrap();
    herald.publish("user.joined", &7u64).await.unwrap();
    herald
        .publish("user.left", &8u64)
        .delay(Duration::from_millis(50))
        .await
        .unwrap();
    let mut got = Vec::new();
    for _ in 0..2 {
        got.push(
            tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .unwrap()
                .unwrap(),
        );
    }
    assert_eq!(got, vec![7, 8]);
    herald.shutdown(Duration::from_secs(5)).await;
    RedisStore::builder(URL)
        .prefix(prefix)
        .connect()
        .await
        .unwrap()
        .destroy()
        .await
        .unwrap();
}
