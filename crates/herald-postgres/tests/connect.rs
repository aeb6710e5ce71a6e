//! Connecting: migrations on connect (once, also when nodes start together), refusals that say
//! what to do, and wakeups between stores: NOTIFY across nodes, a listener that reconnects, and
//! polling where LISTEN is off.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use futures_util::StreamExt;
use herald_core::{
    Context, Event, EventParts, HandlerError, Herald, Pattern, Store, StoreError, SubscriptionName, SubscriptionSpec,
    Topic, Wakeup,
};
use herald_postgres::{ConnectError, PostgresStore};
use support::{drop_schema, fresh_schema, url};

const WAIT: Duration = Duration::from_secs(10);

async fn admin() -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(&url(), tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    client
}

async fn declare(store: &PostgresStore, name: &str, pattern: &str) {
    store
        .declare(&SubscriptionSpec {
            name: SubscriptionName::new(name).unwrap(),
            pattern: Pattern::new(pattern).unwrap(),
        })
        .await
        .unwrap();
}

fn event(store: &PostgresStore, topic: &str) -> Event {
    let mut e = EventParts::new(Topic::new(topic).unwrap(), &b"1"[..]);
    e.published_at = store.clock().now();
    e.deliver_at = e.published_at;
    Event::from_parts(e)
}

/// The next wakeup that is not `Lagged`, within [`WAIT`].
async fn next_due(w: &mut futures_util::stream::BoxStream<'static, Wakeup>) -> Option<Wakeup> {
    tokio::time::timeout(WAIT, async {
        loop {
            match w.next().await {
                Some(Wakeup::Lagged) => continue,
                other => return other,
            }
        }
    })
    .await
    .ok()
    .flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_connecting_at_once_migrate_once() {
    let schema = fresh_schema("herald_connect", "migrate").await;
    let connects: Vec<_> = (0..6)
        .map(|_| {
            let schema = schema.clone();
            tokio::spawn(async move { PostgresStore::builder(url()).schema(schema).connect().await })
        })
        .collect();
    for c in connects {
        let store = c.await.unwrap().expect("every node connects");
        assert_eq!(store.schema(), schema);
    }
    let version: i32 = admin()
        .await
        .query_one(&format!("SELECT max(version) FROM \"{schema}\".herald_schema"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(version, 1);
    drop_schema(&schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_from_a_newer_herald_is_refused() {
    let schema = fresh_schema("herald_connect", "newer").await;
    PostgresStore::builder(url()).schema(&schema).connect().await.unwrap();
    admin()
        .await
        .batch_execute(&format!("UPDATE \"{schema}\".herald_schema SET version = 99"))
        .await
        .unwrap();
    match PostgresStore::builder(url()).schema(&schema).connect().await {
        Err(
            e @ ConnectError::NewerSchema {
                found: 99, known: 1, ..
            },
        ) => {
            assert!(e.to_string().contains("upgrade herald"), "{e}");
            assert!(matches!(StoreError::from(e), StoreError::Corrupt(_)));
        }
        other => panic!("a newer schema must be refused, got {other:?}"),
    }
    drop_schema(&schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_settings_are_refused_with_what_to_do() {
    match PostgresStore::builder(url()).schema("Bad-Name").connect().await {
        Err(e @ ConnectError::InvalidSchema(_)) => assert!(e.to_string().contains("lowercase"), "{e}"),
        other => panic!("{other:?}"),
    }
    match PostgresStore::connect("postgres://postgres@127.0.0.1:1/test").await {
        Err(e @ ConnectError::Unreachable { .. }) => {
            assert!(e.to_string().contains("check that the server runs"), "{e}")
        }
        other => panic!("{other:?}"),
    }
    match PostgresStore::connect("postgres://postgres@127.0.0.1:5432/test?sslmode=nonsense").await {
        Err(ConnectError::InvalidUrl { .. }) => {}
        other => panic!("{other:?}"),
    }
    // Through the builder extension, the error comes out of build().
    use herald_postgres::PostgresBuilderExt;
    let built = Herald::builder()
        .postgres("postgres://postgres@127.0.0.1:1/test")
        .build()
        .await;
    assert!(matches!(
        built,
        Err(herald_core::Error::Store(StoreError::Unavailable { .. }))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_reach_other_nodes_and_the_listener_reconnects() {
    let schema = fresh_schema("herald_connect", "notify").await;
    let a = PostgresStore::builder(url()).schema(&schema).connect().await.unwrap();
    let b = PostgresStore::builder(url()).schema(&schema).connect().await.unwrap();
    assert!(a.is_listening() && b.is_listening());
    declare(&a, "work", "work.>").await;
    let mut on_a = a.wakeups();
    let mut on_b = b.wakeups();

    let e = event(&a, "work.one");
    let due = e.deliver_at();
    a.publish(vec![e]).await.unwrap();
    assert_eq!(
        next_due(&mut on_b).await,
        Some(Wakeup::Due(due)),
        "B hears of A's publish"
    );
    assert_eq!(
        next_due(&mut on_a).await,
        Some(Wakeup::Due(due)),
        "A announces its own publish"
    );
    // A's own NOTIFY comes back to A's listener, which skips it: nothing more for A.
    let e2 = event(&b, "work.two");
    let due2 = e2.deliver_at();
    b.publish(vec![e2]).await.unwrap();
    assert_eq!(
        next_due(&mut on_a).await,
        Some(Wakeup::Due(due2)),
        "A hears of B's publish, not its own twice"
    );
    assert_eq!(
        next_due(&mut on_b).await,
        Some(Wakeup::Due(due2)),
        "B announces its own publish"
    );

    // The server ends the LISTEN connections: each store reconnects, says it lagged (what was
    // announced meanwhile is lost), and hears again.
    let admin = admin().await;
    let listen = format!("LISTEN \"herald_{schema}\"");
    let killed: Vec<i32> = admin
        .query("SELECT pid FROM pg_stat_activity WHERE query = $1", &[&listen])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for pid in &killed {
        admin.execute("SELECT pg_terminate_backend($1)", &[pid]).await.unwrap();
    }
    assert_eq!(killed.len(), 2, "the two listeners");
    let until = tokio::time::Instant::now() + WAIT;
    loop {
        let back: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE query = $1 AND pid <> ALL($2)",
                &[&listen, &killed],
            )
            .await
            .unwrap()
            .get(0);
        if back == 2 {
            break;
        }
        assert!(tokio::time::Instant::now() < until, "the listeners did not come back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let lagged = tokio::time::timeout(WAIT, async {
        loop {
            if on_b.next().await == Some(Wakeup::Lagged) {
                return;
            }
        }
    })
    .await;
    assert!(lagged.is_ok(), "B says it lagged");
    let e3 = event(&a, "work.three");
    let due3 = e3.deliver_at();
    a.publish(vec![e3]).await.unwrap();
    assert_eq!(
        next_due(&mut on_b).await,
        Some(Wakeup::Due(due3)),
        "B hears again after reconnecting"
    );
    drop_schema(&schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_listen_a_node_polls_and_still_handles_other_nodes_work() {
    let schema = fresh_schema("herald_connect", "poll").await;
    let a = PostgresStore::builder(url()).schema(&schema).connect().await.unwrap();
    let b = PostgresStore::builder(url())
        .schema(&schema)
        .listen(false)
        .poll_interval(Duration::from_millis(100))
        .connect()
        .await
        .unwrap();
    assert!(!b.is_listening());
    let herald_b = Herald::builder().store(b).system_events(false).build().await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    herald_b
        .subscribe("work", "work.>")
        .handle(move |_: u64, ctx: Context| {
            let _ = tx.send(ctx.event_id());
            async { Ok::<_, HandlerError>(()) }
        })
        .await
        .unwrap();
    let herald_a = Herald::builder().store(a).system_events(false).build().await.unwrap();
    let id = herald_a.publish("work.polled", &1u64).await.unwrap();
    let got = tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("B polls and handles A's event");
    assert_eq!(got, Some(id));
    herald_a.shutdown(Duration::from_secs(5)).await;
    herald_b.shutdown(Duration::from_secs(5)).await;
    drop_schema(&schema).await;
}
