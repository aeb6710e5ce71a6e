//! The file's layout: the tables and indexes, the schema version, and the migrations applied on
//! open.
//!
//! `PRAGMA user_version` holds the schema version and `PRAGMA application_id` marks the file as
//! herald's, so a file from a newer herald or from another program is refused before anything is
//! written to it.

use rusqlite::{Connection, OptionalExtension};

/// The schema version this build writes and reads.
pub(crate) const VERSION: u32 = 5;

/// `PRAGMA application_id` of a herald file: "HRLD".
pub(crate) const APPLICATION_ID: i32 = 0x4852_4c44;

/// Delivery status codes, ordered by how busy a delivery is, so that a finished event's rolled-up
/// status is the `MAX` of its deliveries' codes (0, no delivery: unrouted). Changing them is a
/// migration.
pub(crate) mod status {
    pub(crate) const UNROUTED: i64 = 0;
    pub(crate) const SUCCEEDED: i64 = 1;
    pub(crate) const EXPIRED: i64 = 2;
    pub(crate) const CANCELLED: i64 = 3;
    pub(crate) const DEAD: i64 = 4;
    pub(crate) const SCHEDULED: i64 = 5;
    pub(crate) const PENDING: i64 = 6;
    pub(crate) const RETRYING: i64 = 7;
    pub(crate) const ACTIVE: i64 = 8;
    /// `events.status` of an event with a delivery not finished. Which open status it shows
    /// (scheduled, pending, active, retrying) is rolled up from its deliveries when read, so that
    /// claims and retries never touch the event's row and its indexes.
    pub(crate) const OPEN: i64 = 9;
}

/// Attempt outcome codes.
pub(crate) mod outcome {
    pub(crate) const SUCCEEDED: i64 = 1;
    pub(crate) const FAILED: i64 = 2;
    pub(crate) const DEAD: i64 = 3;
    /// Kept for the code's sake: a released attempt is deleted, not recorded.
    pub(crate) const RELEASED: i64 = 4;
    pub(crate) const LEASE_EXPIRED: i64 = 5;
}

/// Keys of the `counters` table besides the delivery status codes (1..=8).
pub(crate) mod counter {
    pub(crate) const EVENTS: i64 = 100;
    pub(crate) const UNROUTED: i64 = 101;
}

/// Version 1: events, their deliveries, attempts, subscriptions and the running counts.
///
/// - `deliveries_waiting` serves claims: one index range per priority, due times up to now.
/// - `deliveries_later` serves `next_due` and the count of scheduled deliveries that came due.
/// - `deliveries_leased` serves lease expiry; `deliveries_expiring` the TTL check of a claim.
/// - `events_topic`, `events_topic_status` and `events_status` serve history pages, newest first by
///   `seq` (which every index of `events` ends with), so that a page reads only its own rows.
const V1: &str = "
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

/// Version 2: a subscription can be removed (`removed = 1`): it routes nothing and cannot be
/// claimed from, but its name stays for the history of its deliveries, and declaring it again
/// revives it.
const V2: &str = "
ALTER TABLE subscriptions ADD COLUMN removed INTEGER NOT NULL DEFAULT 0;
";

/// Version 3: fewer rows and index entries written per delivery.
///
/// - An attempt's row is written once, when it ends: the running attempt's start is kept in its
///   delivery (`deliveries.started_at`, set by the claim), and reads show it from there. Running
///   attempts of version 2 move into their deliveries.
/// - An event keeps how many of its deliveries are open (`open`) and the highest code of its
///   finished ones (`worst`), so that an outcome rolls its event up without reading the event's
///   deliveries: the event finishes, with status `worst`, when `open` reaches 0.
const V3: &str = "
ALTER TABLE deliveries ADD COLUMN started_at INTEGER;
ALTER TABLE events ADD COLUMN open INTEGER NOT NULL DEFAULT 0;
ALTER TABLE events ADD COLUMN worst INTEGER NOT NULL DEFAULT 0;
UPDATE events SET
    open = (SELECT COUNT(*) FROM deliveries d WHERE d.event = events.seq AND d.status >= 5),
    worst = (SELECT COALESCE(MAX(d.status), 0) FROM deliveries d WHERE d.event = events.seq AND d.status <= 4)
  WHERE status = 9;
UPDATE deliveries SET started_at = COALESCE(
    (SELECT a.started_at FROM attempts a WHERE a.delivery = deliveries.id AND a.number = deliveries.attempts),
    due)
  WHERE status = 8;
DELETE FROM attempts WHERE finished_at IS NULL AND EXISTS (
    SELECT 1 FROM deliveries d WHERE d.id = attempts.delivery AND d.status = 8 AND d.attempts = attempts.number);
";

/// Version 4: fewer index entries moved per delivery and per event.
///
/// - The partial indexes of open deliveries name their statuses as ranges (`BETWEEN 5 AND 7`,
///   `>= 5`) instead of `IN` lists. SQLite evaluates an index's condition on the old and the new
///   row whenever a delivery's status changes, and an `IN` list of three or more codes built a
///   temporary b-tree each time: four per claim or outcome of a delivery.
/// - The status indexes of events hold finished events only (`status < 9`), and open events have
///   an index of their own by `seq` (`events_open`). A publish adds one entry (to `events_open`)
///   instead of two, and an event that finishes moves out of `events_open` (an integer key)
///   instead of out of two indexes keyed by status and topic.
///
/// The statements these indexes serve name the same conditions, word for word, so that the
/// planner can use them.
const V4: &str = "
DROP INDEX deliveries_waiting;
CREATE INDEX deliveries_waiting ON deliveries(sub, priority, due) WHERE status BETWEEN 5 AND 7;
DROP INDEX deliveries_expiring;
CREATE INDEX deliveries_expiring ON deliveries(sub, expires_at) WHERE expires_at IS NOT NULL AND status >= 5;
DROP INDEX events_status;
CREATE INDEX events_status ON events(status) WHERE status < 9;
DROP INDEX events_topic_status;
CREATE INDEX events_topic_status ON events(topic, status) WHERE status < 9;
CREATE INDEX events_open ON events(seq) WHERE status = 9;
";

/// Version 5: an attempt that succeeded is kept in its delivery, not in `attempts`: its start in
/// `started_at` (where the claim put it) and its end in `finished_at`, which only a delivery that
/// succeeded has. Reads show it after the delivery's other attempts. The common life of a delivery
/// (claimed once, succeeded) then writes no attempt row at all. Files of earlier versions keep the
/// rows they have; their deliveries have no `finished_at`, so nothing is shown twice.
///
/// `deliveries_waiting` also holds what a claim reads of a waiting delivery (its expiry, event,
/// status, attempts and token), so that a claim reads the index alone, not each delivery's row
/// too.
const V5: &str = "
ALTER TABLE deliveries ADD COLUMN finished_at INTEGER;
DROP INDEX deliveries_waiting;
CREATE INDEX deliveries_waiting ON deliveries(sub, priority, due, expires_at, event, status, attempts, token)
    WHERE status BETWEEN 5 AND 7;
";

/// Each migration takes the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[V1, V2, V3, V4, V5];

/// What the file holds before any migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Found {
    /// Something this build can open (perhaps after migrations).
    Usable,
    /// A herald file of a newer schema.
    Newer(u32),
    /// A database of some other program.
    Foreign,
}

/// Reads the version marks of an open file.
pub(crate) fn inspect(conn: &Connection) -> rusqlite::Result<Found> {
    let app: i32 = conn.query_row("PRAGMA application_id", [], |r| r.get(0))?;
    let version: u32 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if app == APPLICATION_ID {
        return Ok(if version > VERSION {
            Found::Newer(version)
        } else {
            Found::Usable
        });
    }
    let any_table: Option<String> = conn
        .query_row("SELECT name FROM sqlite_master LIMIT 1", [], |r| r.get(0))
        .optional()?;
    Ok(if app == 0 && version == 0 && any_table.is_none() {
        Found::Usable
    } else {
        Found::Foreign
    })
}

/// Brings the schema up to [`VERSION`], each step in its own transaction.
pub(crate) fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    loop {
        let version: u32 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        let Some(step) = MIGRATIONS.get(version as usize) else {
            return Ok(());
        };
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        tx.execute_batch(step)?;
        tx.execute_batch(&format!(
            "PRAGMA application_id = {APPLICATION_ID}; PRAGMA user_version = {};",
            version + 1
        ))?;
        tx.commit()?;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn migrations_reach_the_current_version() {
        assert_eq!(MIGRATIONS.len(), VERSION as usize);
        let mut conn = Connection::open_in_memory().unwrap();
        assert_eq!(inspect(&conn).unwrap(), Found::Usable);
        migrate(&mut conn).unwrap();
        assert_eq!(inspect(&conn).unwrap(), Found::Usable);
        let v: u32 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(v, VERSION);
        migrate(&mut conn).unwrap();
    }
}

#[cfg(test)]
mod plans {
    //! The statements that must stay fast with millions of rows use the index meant for them.
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn plan(conn: &Connection, sql: &str) -> String {
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let params: Vec<i64> = vec![1; stmt.parameter_count()];
        let rows: Vec<String> = stmt
            .query_map(rusqlite::params_from_iter(params), |r| r.get::<_, String>(3))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        rows.join("\n")
    }

    /// The opcodes of `sql`'s program.
    fn opcodes(conn: &Connection, sql: &str) -> Vec<String> {
        let mut stmt = conn.prepare(&format!("EXPLAIN {sql}")).unwrap();
        let params: Vec<i64> = vec![1; stmt.parameter_count()];
        stmt.query_map(rusqlite::params_from_iter(params), |r| r.get::<_, String>(1))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    /// Changing a delivery's status re-checks the condition of every partial index on the old
    /// and the new row: none may build a temporary table to do it (as `status IN (5, 6, 7)` did).
    #[test]
    fn a_status_change_builds_no_temporary_table() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap();
        for sql in [
            "UPDATE deliveries SET status = ?2 WHERE id = ?1",
            "UPDATE events SET status = ?2, finished_at = ?3 WHERE seq = ?1",
            "INSERT INTO deliveries (id, event, sub, status, priority, due, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        ] {
            let ops = opcodes(&conn, sql);
            assert!(!ops.iter().any(|o| o == "OpenEphemeral"), "{sql}: {ops:?}");
        }
    }

    /// The multi-row updates by primary key run in one pass: the only temporary b-tree is the
    /// sorted `IN` list itself, none collecting the keys of the rows to update first.
    #[test]
    fn multi_row_updates_by_key_run_in_one_pass() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap();
        for n in [3, 32] {
            for sql in [
                crate::writer::lease_sql(n),
                crate::writer::succeed_sql(n),
                crate::writer::roll_up_sql(n),
            ] {
                let ops = opcodes(&conn, &sql);
                let temporary = ops.iter().filter(|o| *o == "OpenEphemeral").count();
                assert!(temporary <= 1, "{sql}: {ops:?}");
            }
        }
    }

    #[test]
    fn hot_statements_use_their_indexes() {
        let mut conn = Connection::open_in_memory().unwrap();
        rusqlite::vtab::array::load_module(&conn).unwrap();
        migrate(&mut conn).unwrap();
        let [leased, waiting, top] = crate::writer::CLAIM_SQL_FOR_TESTS;
        // The highest priority waiting: one seek to the end of the subscription's range.
        let p = plan(&conn, top);
        assert!(p.contains("COVERING INDEX deliveries_waiting (sub=?)"), "{p}");
        assert!(!p.contains("TEMP B-TREE"), "{top}\n{p}");
        // The leases that ran out are few: they are sorted by priority once found.
        let p = plan(&conn, leased);
        assert!(
            p.contains("USING INDEX deliveries_leased (sub=? AND lease_until<?)"),
            "{p}"
        );
        let p = plan(&conn, waiting);
        assert!(
            p.contains("USING COVERING INDEX deliveries_waiting (sub=? AND priority=? AND due<?)"),
            "{p}"
        );
        assert!(!p.contains("TEMP B-TREE"), "{waiting}\n{p}");
        for (sql, index) in [
            ("SELECT due FROM deliveries WHERE sub = ?1 AND status IN (5, 7) AND due > ?2 ORDER BY due LIMIT 1", "COVERING INDEX deliveries_later (sub=? AND due>?)"),
            ("SELECT lease_until FROM deliveries WHERE sub = ?1 AND status = 8 AND lease_until > ?2 ORDER BY lease_until LIMIT 1", "COVERING INDEX deliveries_leased (sub=? AND lease_until>?)"),
            ("SELECT COUNT(*), COALESCE(SUM(status = 7), 0) FROM deliveries WHERE sub = ?1 AND status IN (5, 7) AND due <= ?2", "COVERING INDEX deliveries_later (sub=? AND due<?)"),
            ("SELECT 1 FROM deliveries WHERE sub = ?1 AND expires_at IS NOT NULL AND status >= 5 AND expires_at <= ?2 LIMIT 1", "INDEX deliveries_expiring (sub=? AND expires_at>? AND expires_at<?)"),
            ("UPDATE deliveries SET status = 2 WHERE sub = ?1 AND expires_at IS NOT NULL AND status >= 5 AND expires_at <= ?2 AND ((status BETWEEN 5 AND 7 AND due <= ?2) OR (status = 8 AND lease_until <= ?2))", "INDEX deliveries_expiring (sub=?"),
            ("SELECT seq FROM events e WHERE 1 AND e.seq < ? AND e.topic = ? AND e.status = 1 AND e.status < 9 ORDER BY e.seq DESC", "INDEX events_topic_status (topic=? AND status=? AND rowid<?)"),
            ("SELECT seq FROM events e WHERE 1 AND e.seq < COALESCE((SELECT seq FROM events WHERE id = ?1), (SELECT seq + 1 FROM events WHERE id < ?1 ORDER BY id DESC LIMIT 1), 0) AND e.topic = ? AND e.status = 1 AND e.status < 9 ORDER BY e.seq DESC", "INDEX events_topic_status (topic=? AND status=? AND rowid<?)"),
            ("SELECT seq FROM events e WHERE 1 AND e.seq < ? AND e.topic = ? ORDER BY e.seq DESC", "INDEX events_topic (topic=? AND rowid<?)"),
            ("SELECT seq FROM events e WHERE 1 AND e.status = 4 AND e.status < 9 ORDER BY e.seq DESC", "INDEX events_status (status=?)"),
            ("SELECT seq FROM events e WHERE 1 AND e.seq < ? AND +e.topic >= ? AND +e.topic < ? ORDER BY e.seq DESC", "INTEGER PRIMARY KEY (rowid<?)"),
            ("SELECT seq FROM events e WHERE 1 AND e.status = 9 ORDER BY e.seq DESC", "INDEX events_open"),
            ("SELECT seq FROM events e WHERE 1 AND e.seq < ? AND e.status = 9 ORDER BY e.seq DESC", "INDEX events_open"),
            ("SELECT seq FROM events e WHERE 1 AND e.seq < ? AND e.topic = ? AND e.status = 9 ORDER BY e.seq DESC", "INDEX events_"),
            ("SELECT seq, status FROM events WHERE finished_at IS NOT NULL AND finished_at < ?1 LIMIT ?2", "INDEX events_finished"),
            // The statements of a group's outcomes and claims seek each row by its key.
            ("UPDATE deliveries SET status = ?2 WHERE id = ?1", "SEARCH deliveries USING PRIMARY KEY (id=?)"),
            ("UPDATE events SET open = open - ?1 WHERE seq IN (?2, ?3, ?4)", "SEARCH events USING INTEGER PRIMARY KEY (rowid=?)"),
            ("SELECT id FROM deliveries WHERE id IN rarray(?1) AND status = 8", "SEARCH deliveries USING PRIMARY KEY (id=?)"),
            ("SELECT seq, id, reply_to IS NOT NULL FROM events WHERE seq IN rarray(?1)", "SEARCH events USING INTEGER PRIMARY KEY (rowid=?)"),
        ] {
            let p = plan(&conn, sql);
            assert!(p.contains(index), "{sql}\n{p}");
            assert!(!p.contains("TEMP B-TREE"), "{sql}\n{p}");
        }
    }
}
