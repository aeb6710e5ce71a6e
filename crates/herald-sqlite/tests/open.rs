//! Opening a store file: what survives a reopen, and each refusal with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::Duration;

use herald_core::{Pattern, Store, StoreError, SubscriptionName, SubscriptionSpec};
use herald_sqlite::{OpenError, SqliteStore};
use herald_testkit::setup;

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
        setup::declare(&store, "work", "job.*").await;
        let e = setup::due_now(&store, "job.run", "{}");
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
                known: CURRENT,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("was written by a newer herald (schema v99, this build knows v5): upgrade herald"),
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
    let event = |store: &SqliteStore| setup::due_now(store, "job.run", "{}");
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

/// The schema as herald wrote it at version 1, frozen here: files of older versions are made
/// from it, whatever the current schema is.
const SCHEMA_V1: &str = "
CREATE TABLE subscriptions (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    pattern TEXT NOT NULL
);
CREATE TABLE events (
    seq INTEGER PRIMARY KEY,
    id BLOB NOT NULL UNIQUE,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    content_type TEXT,
    source TEXT,
    headers TEXT,
    priority INTEGER NOT NULL,
    published_at INTEGER NOT NULL,
    deliver_at INTEGER NOT NULL,
    expires_at INTEGER,
    key TEXT,
    reply_to TEXT,
    status INTEGER NOT NULL,
    finished_at INTEGER
);
CREATE UNIQUE INDEX events_key ON events(key) WHERE key IS NOT NULL;
CREATE INDEX events_topic ON events(topic);
CREATE INDEX events_topic_status ON events(topic, status);
CREATE INDEX events_status ON events(status);
CREATE INDEX events_finished ON events(finished_at) WHERE finished_at IS NOT NULL;
CREATE TABLE deliveries (
    id BLOB PRIMARY KEY,
    event INTEGER NOT NULL,
    sub INTEGER NOT NULL,
    status INTEGER NOT NULL,
    claimed_from INTEGER,
    priority INTEGER NOT NULL,
    due INTEGER NOT NULL,
    expires_at INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    token INTEGER NOT NULL DEFAULT 0,
    lease_until INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    reply BLOB
) WITHOUT ROWID;
CREATE INDEX deliveries_event ON deliveries(event);
CREATE INDEX deliveries_waiting ON deliveries(sub, priority, due) WHERE status IN (5, 6, 7);
CREATE INDEX deliveries_later ON deliveries(sub, due, status) WHERE status IN (5, 7);
CREATE INDEX deliveries_leased ON deliveries(sub, lease_until) WHERE status = 8;
CREATE INDEX deliveries_expiring ON deliveries(sub, expires_at)
    WHERE expires_at IS NOT NULL AND status IN (5, 6, 7, 8);
CREATE TABLE attempts (
    delivery BLOB NOT NULL,
    number INTEGER NOT NULL,
    started_at INTEGER NOT NULL,
    finished_at INTEGER,
    outcome INTEGER,
    error TEXT,
    PRIMARY KEY (delivery, number)
) WITHOUT ROWID;
CREATE TABLE counters (
    key INTEGER PRIMARY KEY,
    n INTEGER NOT NULL
);
";

/// Version 2 added `subscriptions.removed`.
const SCHEMA_V2_STEP: &str = "ALTER TABLE subscriptions ADD COLUMN removed INTEGER NOT NULL DEFAULT 0;";

/// A new file of schema `version` (1 or 2), as that version created it.
fn old_file(path: &std::path::Path, version: u32) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA application_id = 1213353028;")
        .unwrap();
    conn.execute_batch(SCHEMA_V1).unwrap();
    if version >= 2 {
        conn.execute_batch(SCHEMA_V2_STEP).unwrap();
    }
    conn.execute_batch(&format!("PRAGMA user_version = {version};"))
        .unwrap();
    conn
}

/// The schema version this build writes.
const CURRENT: u32 = 5;

fn user_version(path: &std::path::Path) -> u32 {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap()
}

#[test]
fn a_file_of_schema_v1_is_migrated() {
    let dir = Dir::new("v1");
    let path = dir.file("herald.db");
    let conn = old_file(&path, 1);
    conn.execute_batch("INSERT INTO subscriptions (name, pattern) VALUES ('work', 'job.*');")
        .unwrap();
    drop(conn);
    rt().block_on(async {
        let store = SqliteStore::open(&path).unwrap();
        let sub = SubscriptionName::new("work").unwrap();
        store
            .publish(vec![setup::due_now(&store, "job.run", "{}")])
            .await
            .unwrap();
        assert_eq!(store.claim(&sub, 10, Duration::from_secs(30)).await.unwrap().len(), 1);
        assert_eq!(store.remove_subscription(&sub).await.unwrap(), 1);
    });
    assert_eq!(user_version(&path), CURRENT);
}

/// A file as version 2 left it: a running attempt has its row (unfinished), and an event's
/// roll-up is read from its deliveries. Version 3 moves the running attempt into its delivery and
/// keeps open counts on events: the history and the outcomes come out the same.
#[test]
fn a_file_of_schema_v2_is_migrated_with_its_data() {
    use herald_core::{
        AttemptOutcome, Completion, DeliveryId, DeliveryStatus, EventId, EventStatus, Lease, Outcome, Verdict,
    };
    let dir = Dir::new("v2");
    let path = dir.file("herald.db");
    let conn = old_file(&path, 2);
    let (active, running, two) = (EventId::new(), DeliveryId::new(), EventId::new());
    let (done, done_delivery, dead, waiting) =
        (EventId::new(), DeliveryId::new(), DeliveryId::new(), DeliveryId::new());
    let b = |u: uuid::Uuid| u.as_bytes().to_vec();
    conn.execute_batch("INSERT INTO subscriptions (id, name, pattern) VALUES (1, 'a', 'job.*'), (2, 'b', 'job.*');")
        .unwrap();
    let event = |seq: i64, id: EventId, status: i64, finished: Option<i64>| {
        conn.execute(
            "INSERT INTO events (seq, id, topic, payload, priority, published_at, deliver_at, status, finished_at)
             VALUES (?1, ?2, 'job.run', X'7B7D', 5, 1000, 1000, ?3, ?4)",
            rusqlite::params![seq, b(id.as_uuid()), status, finished],
        )
        .unwrap();
    };
    let delivery = |id: DeliveryId, event: i64, sub: i64, status: i64, attempts: u32, token: i64, lease: i64| {
        conn.execute(
            "INSERT INTO deliveries (id, event, sub, status, priority, due, attempts, token, lease_until)
             VALUES (?1, ?2, ?3, ?4, 5, 1000, ?5, ?6, ?7)",
            rusqlite::params![b(id.as_uuid()), event, sub, status, attempts, token, lease],
        )
        .unwrap();
    };
    // 1: finished, succeeded. 2: its delivery running (a lease far ahead). 3: one delivery dead,
    // one pending.
    event(1, done, 1, Some(1500));
    delivery(done_delivery, 1, 1, 1, 1, 1, 0);
    event(2, active, 9, None);
    delivery(running, 2, 1, 8, 1, 7, 4_000_000_000_000);
    event(3, two, 9, None);
    delivery(dead, 3, 1, 4, 1, 1, 0);
    delivery(waiting, 3, 2, 6, 0, 0, 0);
    conn.execute_batch(&format!(
        "INSERT INTO attempts (delivery, number, started_at, finished_at, outcome) VALUES
             (X'{}', 1, 1100, 1500, 1), (X'{}', 1, 1200, NULL, NULL), (X'{}', 1, 1300, 1400, 3);
         INSERT INTO counters (key, n) VALUES (1, 1), (4, 1), (6, 1), (8, 1), (100, 3);",
        done_delivery.as_uuid().simple(),
        running.as_uuid().simple(),
        dead.as_uuid().simple(),
    ))
    .unwrap();
    drop(conn);
    rt().block_on(async {
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(store.backlog(), Some(2));
        let rec = store.get(done).await.unwrap().unwrap();
        assert_eq!(rec.status, EventStatus::Succeeded);
        assert_eq!(rec.deliveries[0].attempts.len(), 1);
        // The running attempt shows, once, as before.
        let rec = store.get(active).await.unwrap().unwrap();
        assert_eq!(rec.status, EventStatus::Active);
        let attempts = &rec.deliveries[0].attempts;
        assert_eq!(attempts.len(), 1, "{attempts:?}");
        assert_eq!((attempts[0].number, attempts[0].started_at.as_millis()), (1, 1200));
        assert_eq!(attempts[0].finished_at, None);
        // Its outcome, under the lease v2 gave, ends it with its start kept.
        let now = store.clock().now();
        let applied = store
            .complete(vec![Outcome {
                lease: Lease {
                    delivery: running,
                    token: 7,
                },
                finished_at: now,
                verdict: Verdict::Succeeded { reply: None },
            }])
            .await
            .unwrap();
        assert_eq!(applied, vec![Completion::Applied]);
        let rec = store.get(active).await.unwrap().unwrap();
        assert_eq!(rec.status, EventStatus::Succeeded);
        let attempts = &rec.deliveries[0].attempts;
        assert_eq!(attempts.len(), 1, "{attempts:?}");
        assert_eq!(attempts[0].started_at.as_millis(), 1200);
        assert_eq!(attempts[0].outcome, Some(AttemptOutcome::Succeeded));
        // The event with a dead and a pending delivery is open; once the pending one succeeds it
        // finishes dead (the roll-up of both).
        assert_eq!(store.get(two).await.unwrap().unwrap().status, EventStatus::Pending);
        let claimed = store
            .claim(&SubscriptionName::new("b").unwrap(), 10, Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(claimed.len(), 1);
        let now = store.clock().now();
        store
            .complete(vec![Outcome {
                lease: claimed[0].lease,
                finished_at: now,
                verdict: Verdict::Succeeded { reply: None },
            }])
            .await
            .unwrap();
        let rec = store.get(two).await.unwrap().unwrap();
        assert_eq!(rec.status, EventStatus::Dead);
        assert!(rec.deliveries.iter().any(|d| d.status == DeliveryStatus::Succeeded));
        assert_eq!(store.backlog(), Some(0));
        let stats = store.stats().await.unwrap();
        assert_eq!(
            (stats.events, stats.deliveries.succeeded, stats.deliveries.dead),
            (3, 3, 1)
        );
    });
    assert_eq!(user_version(&path), CURRENT);
}
