//! Opening a store file: what survives a reopen, and each refusal with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::Duration;

use herald_core::{Event, EventParts, Pattern, Store, StoreError, SubscriptionName, SubscriptionSpec, Topic};
use herald_sqlite::{OpenError, SqliteStore};

/// A fresh directory for one test, removed when dropped.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let dir = std::env::temp_dir().join(format!("herald-sqlite-open-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Dir(dir)
    }

    fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn events_subscriptions_and_counts_survive_a_reopen() {
    let dir = Dir::new("reopen");
    let path = dir.file("nested/dir/herald.db");
    let sub = SubscriptionName::new("work").unwrap();
    let id = rt().block_on(async {
        let store = SqliteStore::open(&path).unwrap();
        store
            .declare(&SubscriptionSpec {
                name: sub.clone(),
                pattern: Pattern::new("job.*").unwrap(),
            })
            .await
            .unwrap();
        let mut e = EventParts::new(Topic::new("job.run").unwrap(), "{}");
        e.published_at = store.clock().now();
        e.deliver_at = e.published_at;
        let e = Event::from_parts(e);
        store.publish(vec![e.clone()]).await.unwrap();
        assert_eq!(store.backlog(), Some(1));
        e.id()
    });
    rt().block_on(async {
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(store.backlog(), Some(1), "the backlog is kept in the file");
        let stats = store.stats().await.unwrap();
        assert_eq!((stats.events, stats.deliveries.pending), (1, 1));
        let claimed = store.claim(&sub, 10, Duration::from_secs(30)).await.unwrap();
        assert_eq!(claimed.len(), 1, "the declared subscription and its delivery survived");
        assert_eq!(claimed[0].event.id(), id);
    });
}

#[test]
fn a_second_open_of_the_same_file_is_refused_until_the_first_closes() {
    let dir = Dir::new("locked");
    let path = dir.file("herald.db");
    let first = SqliteStore::open(&path).unwrap();
    let err = SqliteStore::open(&path).unwrap_err();
    assert!(matches!(err, OpenError::Locked { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains(&path.display().to_string()) && msg.contains("another process"),
        "{msg}"
    );
    drop(first);
    SqliteStore::open(&path).expect("the lock is released when the store is dropped");
}

#[test]
fn a_file_from_a_newer_herald_is_refused() {
    let dir = Dir::new("newer");
    let path = dir.file("herald.db");
    drop(SqliteStore::open(&path).unwrap());
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch("PRAGMA user_version = 99").unwrap();
    drop(conn);
    let err = SqliteStore::open(&path).unwrap_err();
    assert!(
        matches!(
            err,
            OpenError::NewerSchema {
                found: 99,
                known: 2,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("was written by a newer herald (schema v99, this build knows v2): upgrade herald"),
        "{err}"
    );
    assert!(matches!(StoreError::from(err), StoreError::Corrupt(_)));
}

#[test]
fn another_programs_database_is_refused() {
    let dir = Dir::new("foreign");
    let path = dir.file("other.db");
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch("CREATE TABLE customers (id INTEGER PRIMARY KEY)")
        .unwrap();
    drop(conn);
    let err = SqliteStore::open(&path).unwrap_err();
    assert!(matches!(err, OpenError::Foreign { .. }), "{err:?}");
    assert!(err.to_string().contains("not a herald store"), "{err}");
}

#[test]
fn a_damaged_file_is_refused() {
    let dir = Dir::new("corrupt");
    let path = dir.file("herald.db");
    std::fs::write(&path, vec![0x5a; 8192]).unwrap();
    let err = SqliteStore::open(&path).unwrap_err();
    assert!(matches!(err, OpenError::Corrupt { .. }), "{err:?}");
    assert!(err.to_string().contains("is not a database or is damaged"), "{err}");
}

#[test]
fn a_path_that_cannot_be_created_is_refused_with_the_os_error() {
    let dir = Dir::new("create");
    let blocker = dir.file("a-file");
    std::fs::write(&blocker, b"not a directory").unwrap();
    let err = SqliteStore::open(blocker.join("herald.db")).unwrap_err();
    assert!(matches!(err, OpenError::Create { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&blocker.display().to_string()), "{msg}");
    assert!(matches!(StoreError::from(err), StoreError::Unavailable { .. }));
}

#[test]
fn a_temporary_store_is_removed_when_dropped() {
    let store = SqliteStore::temporary().unwrap();
    let dir = store.path().parent().unwrap().to_path_buf();
    assert!(dir.exists());
    drop(store);
    assert!(!dir.exists());
}

#[test]
fn a_removed_subscription_stays_removed_after_a_reopen_and_keeps_its_history() {
    let dir = Dir::new("removed");
    let path = dir.file("herald.db");
    let sub = SubscriptionName::new("gone").unwrap();
    let spec = SubscriptionSpec {
        name: sub.clone(),
        pattern: Pattern::new("job.*").unwrap(),
    };
    let event = |store: &SqliteStore| {
        let mut e = EventParts::new(Topic::new("job.run").unwrap(), "{}");
        e.published_at = store.clock().now();
        e.deliver_at = e.published_at;
        Event::from_parts(e)
    };
    let id = rt().block_on(async {
        let store = SqliteStore::open(&path).unwrap();
        store.declare(&spec).await.unwrap();
        let e = event(&store);
        store.publish(vec![e.clone()]).await.unwrap();
        assert_eq!(store.remove_subscription(&sub).await.unwrap(), 1);
        e.id()
    });
    rt().block_on(async {
        let store = SqliteStore::open(&path).unwrap();
        assert!(matches!(
            store.claim(&sub, 1, Duration::from_secs(30)).await,
            Err(StoreError::UnknownSubscription(_))
        ));
        let rec = store.get(id).await.unwrap().unwrap();
        assert_eq!(rec.deliveries.len(), 1);
        assert_eq!(rec.deliveries[0].subscription, sub, "the history keeps the name");
        assert_eq!(rec.deliveries[0].status, herald_core::DeliveryStatus::Cancelled);
        assert_eq!(store.backlog(), Some(0));
        let e = event(&store);
        let out = store.publish(vec![e]).await.unwrap();
        assert!(
            matches!(out[0], herald_core::Published::Stored { deliveries: 0, .. }),
            "a removed subscription routes nothing: {out:?}"
        );
        store.declare(&spec).await.unwrap();
        let e = event(&store);
        store.publish(vec![e.clone()]).await.unwrap();
        let claimed = store.claim(&sub, 10, Duration::from_secs(30)).await.unwrap();
        assert_eq!(claimed.len(), 1, "declared again, it routes and is claimed from");
        assert_eq!(claimed[0].event.id(), e.id());
    });
}

#[test]
fn a_file_of_schema_v1_is_migrated() {
    let dir = Dir::new("v1");
    let path = dir.file("herald.db");
    drop(SqliteStore::open(&path).unwrap());
    // Back to what v1 wrote: no `removed` column, version 1.
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(
        "ALTER TABLE subscriptions DROP COLUMN removed; PRAGMA user_version = 1;
         INSERT INTO subscriptions (name, pattern) VALUES ('work', 'job.*');",
    )
    .unwrap();
    drop(conn);
    rt().block_on(async {
        let store = SqliteStore::open(&path).unwrap();
        let sub = SubscriptionName::new("work").unwrap();
        let mut e = EventParts::new(Topic::new("job.run").unwrap(), "{}");
        e.published_at = store.clock().now();
        e.deliver_at = e.published_at;
        store.publish(vec![Event::from_parts(e)]).await.unwrap();
        assert_eq!(store.claim(&sub, 10, Duration::from_secs(30)).await.unwrap().len(), 1);
        assert_eq!(store.remove_subscription(&sub).await.unwrap(), 1);
    });
    let conn = rusqlite::Connection::open(&path).unwrap();
    let v: u32 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
    assert_eq!(v, 2);
}
