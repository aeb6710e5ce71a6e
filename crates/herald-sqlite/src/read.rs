//! Reads: history pages, single events, due times and the count of scheduled deliveries that came
//! due. Each runs on a reader connection of its own (WAL readers never wait for the writer) inside
//! one read transaction, so that what it returns is one consistent snapshot.

use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};

use herald_core::{
    Attempt, AttemptOutcome, DeliveryRecord, EventFilter, EventId, EventRecord, EventStatus, Page, PageRequest,
    Pattern, StoreError, SubscriptionName, Timestamp,
};
use rusqlite::types::Value;
use rusqlite::{Connection, OpenFlags, OptionalExtension};

use crate::codec::{self, event_from_row, store_error, EVENT_COLUMNS};
use crate::schema::status;
use crate::shared::Shared;

/// Idle reader connections kept for reuse; more are opened while more readers run at once.
const KEEP_IDLE: usize = 8;

/// A pool of reader connections to one file.
#[derive(Debug)]
pub(crate) struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl Readers {
    pub(crate) fn new(path: PathBuf) -> Self {
        Readers {
            path,
            idle: Mutex::new(Vec::new()),
        }
    }

    fn open(&self) -> rusqlite::Result<Connection> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.execute_batch("PRAGMA query_only = ON; PRAGMA busy_timeout = 5000; PRAGMA cache_size = -4096;")?;
        // History queries are built from the filter: keep the shapes in use prepared.
        conn.set_prepared_statement_cache_capacity(128);
        conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
        Ok(conn)
    }

    /// Runs `read` in one read transaction on a pooled connection.
    pub(crate) fn read<T>(&self, read: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        let pooled = self.idle.lock().unwrap_or_else(PoisonError::into_inner).pop();
        let mut conn = match pooled {
            Some(c) => c,
            None => self.open().map_err(store_error)?,
        };
        let result = (|| {
            let tx = conn.transaction()?;
            let out = read(&tx)?;
            tx.commit()?;
            Ok(out)
        })();
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < KEEP_IDLE {
            idle.push(conn);
        }
        result.map_err(store_error)
    }

    /// Closes the idle connections.
    pub(crate) fn close(&self) {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner).clear();
    }
}

/// The deliveries of the event `seq`, with their attempts when `with_attempts`.
fn deliveries(
    conn: &Connection,
    shared: &Shared,
    seq: i64,
    with_attempts: bool,
    now: Timestamp,
) -> rusqlite::Result<Vec<DeliveryRecord>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, sub, status, attempts, due, last_error, reply, started_at, finished_at FROM deliveries WHERE event = ?1
          ORDER BY sub",
    )?;
    let mut rows = stmt.query([seq])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        let id = codec::delivery_id(r, 0)?;
        let sub_id: i64 = r.get(1)?;
        let due = codec::ts(r, 4)?;
        let shown = codec::shown_status(r.get(2)?, due, now, 2)?;
        let subscription = match shared.sub_name(sub_id) {
            Some(n) => n,
            None => sub_name_from_file(conn, sub_id)?,
        };
        let mut d = DeliveryRecord::new(id, subscription, shown, due);
        d.attempt_count = r.get(3)?;
        d.last_error = r.get(5)?;
        d.reply = r.get::<_, Option<Vec<u8>>>(6)?.map(bytes::Bytes::from);
        if with_attempts {
            d.attempts = attempts(conn, r.get_ref(0)?.as_blob()?)?;
            // The running attempt, and one that succeeded, are kept in their delivery.
            let started: Option<i64> = r.get(7)?;
            let ended: Option<i64> = r.get(8)?;
            let inline = match (r.get::<_, i64>(2)?, started, ended) {
                (status::ACTIVE, Some(started), _) => {
                    Some(Attempt::started(d.attempt_count, Timestamp::from_millis(started)))
                }
                (status::SUCCEEDED, Some(started), Some(ended)) => {
                    let mut a = Attempt::started(d.attempt_count, Timestamp::from_millis(started));
                    a.finished_at = Some(Timestamp::from_millis(ended));
                    a.outcome = Some(AttemptOutcome::Succeeded);
                    Some(a)
                }
                _ => None,
            };
            if let Some(a) = inline {
                if d.attempts.last().is_none_or(|last| last.number < a.number) {
                    d.attempts.push(a);
                }
            }
        }
        out.push(d);
    }
    Ok(out)
}

fn sub_name_from_file(conn: &Connection, id: i64) -> rusqlite::Result<SubscriptionName> {
    let name: String = conn
        .prepare_cached("SELECT name FROM subscriptions WHERE id = ?1")?
        .query_row([id], |r| r.get(0))?;
    SubscriptionName::new(&name).map_err(|e| codec::bad_column(0, e.to_string()))
}

fn attempts(conn: &Connection, delivery: &[u8]) -> rusqlite::Result<Vec<Attempt>> {
    let mut stmt = conn.prepare_cached(
        "SELECT number, started_at, finished_at, outcome, error FROM attempts WHERE delivery = ?1 ORDER BY number",
    )?;
    let rows = stmt.query_map([delivery], |r| {
        let mut a = Attempt::started(r.get(0)?, codec::ts(r, 1)?);
        a.finished_at = codec::ts_opt(r, 2)?;
        a.outcome = codec::attempt_outcome(r.get(3)?, 3)?;
        a.error = r.get(4)?;
        Ok(a)
    })?;
    rows.collect()
}

/// One event with its deliveries and their attempts.
pub(crate) fn get(
    conn: &Connection,
    shared: &Shared,
    id: EventId,
    now: Timestamp,
) -> rusqlite::Result<Option<EventRecord>> {
    let found = conn
        .prepare_cached(&format!("SELECT {EVENT_COLUMNS} FROM events WHERE id = ?1"))?
        .query_row([&id.as_uuid().as_bytes()[..]], |r| {
            Ok((r.get::<_, i64>(0)?, event_from_row(r, 0)?))
        })
        .optional()?;
    let Some((seq, event)) = found else { return Ok(None) };
    let deliveries = deliveries(conn, shared, seq, true, now)?;
    Ok(Some(EventRecord::new(event, deliveries)))
}

/// The topic condition of a pattern: the exact topic, or the range of topics that start with its
/// literal segments (the pattern itself is then checked on each row).
enum TopicRange {
    Exact(String),
    Prefix(String),
    Any,
}

fn topic_range(p: &Pattern) -> TopicRange {
    let text = p.as_str();
    if p.is_exact() {
        return TopicRange::Exact(text.to_owned());
    }
    let literal: Vec<&str> = text.split('.').take_while(|s| *s != "*" && *s != ">").collect();
    if literal.is_empty() {
        TopicRange::Any
    } else {
        TopicRange::Prefix(format!("{}.", literal.join(".")))
    }
}

/// The SQL condition for an event status, over the events table aliased `e`. Every open status is
/// stored as open: which one an event shows is rolled up from its deliveries, and checked on each
/// row.
fn event_status_sql(s: EventStatus) -> String {
    let code = match s {
        EventStatus::Scheduled | EventStatus::Pending | EventStatus::Active | EventStatus::Retrying => status::OPEN,
        other => codec::event_status_code(other),
    };
    // The status indexes hold finished events only, and the planner uses a partial index when
    // the query names its condition.
    if code == status::OPEN {
        format!("e.status = {code}")
    } else {
        format!("e.status = {code} AND e.status < {}", status::OPEN)
    }
}

/// The SQL condition for a delivery in the status an event status names, over deliveries `d`.
fn delivery_status_sql(s: EventStatus, now: i64, args: &mut Vec<Value>) -> String {
    match s {
        EventStatus::Scheduled | EventStatus::Retrying => {
            args.push(Value::Integer(now));
            format!("d.status = {} AND d.due > ?", codec::event_status_code(s))
        }
        EventStatus::Pending => {
            args.push(Value::Integer(now));
            format!(
                "(d.status = {} OR (d.status IN ({}, {}) AND d.due <= ?))",
                status::PENDING,
                status::SCHEDULED,
                status::RETRYING
            )
        }
        EventStatus::Unrouted => "0".to_owned(),
        other => format!("d.status = {}", codec::event_status_code(other)),
    }
}

/// Events matching `filter`, newest first, one page.
pub(crate) fn query(
    conn: &Connection,
    shared: &Shared,
    filter: &EventFilter,
    page: PageRequest,
    now: Timestamp,
) -> rusqlite::Result<Page<EventRecord>> {
    let limit = page.limit.clamp(1, PageRequest::MAX_LIMIT) as usize;
    let mut sql = format!("SELECT {EVENT_COLUMNS} FROM events e WHERE 1");
    let mut args: Vec<Value> = Vec::new();
    let blob = |id: EventId| Value::Blob(id.as_uuid().as_bytes().to_vec());
    if let Some(after) = page.after {
        // Pages go by the order events were stored (`seq`, newest first). The cursor is the last
        // event of the previous page; if it was purged since, the page goes on below the newest
        // event older than it.
        sql.push_str(
            " AND e.seq < COALESCE((SELECT seq FROM events WHERE id = ?1),
                 (SELECT seq + 1 FROM events WHERE id < ?1 ORDER BY id DESC LIMIT 1), 0)",
        );
        args.push(blob(after));
    }
    let mut check_pattern = None;
    let mut check_status = None;
    if let Some(p) = &filter.topic {
        match topic_range(p) {
            TopicRange::Exact(t) => {
                sql.push_str(" AND e.topic = ?");
                args.push(Value::Text(t));
            }
            TopicRange::Prefix(prefix) => {
                // Topics hold no character between '.' and '/', so this range is the prefix.
                let end = format!("{}/", &prefix[..prefix.len() - 1]);
                // Unary `+`: not an index range, whose rows would need sorting; the page walks the
                // events newest first and stops when it is full.
                sql.push_str(" AND +e.topic >= ? AND +e.topic < ?");
                args.push(Value::Text(prefix));
                args.push(Value::Text(end));
                check_pattern = Some(p);
            }
            TopicRange::Any => check_pattern = Some(p),
        }
    }
    if let Some(key) = &filter.key {
        sql.push_str(" AND e.key = ?");
        args.push(Value::Text(key.clone()));
    }
    if let Some(since) = filter.since {
        sql.push_str(" AND e.published_at >= ?");
        args.push(Value::Integer(since.as_millis()));
    }
    if let Some(until) = filter.until {
        sql.push_str(" AND e.published_at < ?");
        args.push(Value::Integer(until.as_millis()));
    }
    match (&filter.subscription, filter.status) {
        (Some(name), status) => {
            let Some(sub) = shared.history_sub_id(name) else {
                return Ok(Page::new(Vec::new(), None));
            };
            sql.push_str(" AND EXISTS (SELECT 1 FROM deliveries d WHERE d.event = e.seq AND d.sub = ?");
            args.push(Value::Integer(sub));
            if let Some(s) = status {
                let cond = delivery_status_sql(s, now.as_millis(), &mut args);
                sql.push_str(" AND ");
                sql.push_str(&cond);
            }
            sql.push(')');
        }
        (None, Some(s)) => {
            sql.push_str(" AND ");
            sql.push_str(&event_status_sql(s));
            check_status = Some(s);
        }
        (None, None) => {}
    }
    sql.push_str(" ORDER BY e.seq DESC");
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut rows = stmt.query(rusqlite::params_from_iter(args))?;
    let mut items = Vec::with_capacity(limit.min(64));
    while let Some(r) = rows.next()? {
        let seq: i64 = r.get(0)?;
        let event = event_from_row(r, 0)?;
        if check_pattern.is_some_and(|p| !p.matches(event.topic())) {
            continue;
        }
        let record = EventRecord::new(event, deliveries(conn, shared, seq, false, now)?);
        if check_status.is_some_and(|s| record.status != s) {
            continue;
        }
        items.push(record);
        if items.len() > limit {
            break;
        }
    }
    Ok(Page::from_lookahead(items, limit))
}

/// The earliest due time or lease end of the subscriptions `subs` strictly after `after`.
pub(crate) fn next_due(conn: &Connection, subs: &[i64], after: Timestamp) -> rusqlite::Result<Option<Timestamp>> {
    let mut due = conn.prepare_cached(
        "SELECT due FROM deliveries WHERE sub = ?1 AND status IN (5, 7) AND due > ?2 ORDER BY due LIMIT 1",
    )?;
    let mut lease = conn.prepare_cached(
        "SELECT lease_until FROM deliveries WHERE sub = ?1 AND status = 8 AND lease_until > ?2
          ORDER BY lease_until LIMIT 1",
    )?;
    let mut earliest: Option<i64> = None;
    for &sub in subs {
        for stmt in [&mut due, &mut lease] {
            if let Some(t) = stmt
                .query_row((sub, after.as_millis()), |r| r.get::<_, i64>(0))
                .optional()?
            {
                earliest = Some(earliest.map_or(t, |e| e.min(t)));
            }
        }
    }
    Ok(earliest.map(Timestamp::from_millis))
}

/// How many scheduled and how many retrying deliveries came due by `now` without being claimed:
/// `stats` shows them as pending.
pub(crate) fn came_due(conn: &Connection, subs: &[i64], now: Timestamp) -> rusqlite::Result<(i64, i64)> {
    let mut stmt = conn.prepare_cached(
        "SELECT COUNT(*), COALESCE(SUM(status = 7), 0) FROM deliveries WHERE sub = ?1 AND status IN (5, 7) AND due <= ?2",
    )?;
    let (mut scheduled, mut retrying) = (0, 0);
    for &sub in subs {
        let (all, r) = stmt.query_row((sub, now.as_millis()), |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
        })?;
        scheduled += all - r;
        retrying += r;
    }
    Ok((scheduled, retrying))
}
