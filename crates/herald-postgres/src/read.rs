//! History reads: pages of events newest first with every filter of [`EventFilter`], and events
//! with their deliveries (and attempts, for `get`).

use std::collections::HashMap;

use herald_core::{
    Attempt, DeliveryId, DeliveryRecord, Event, EventFilter, EventRecord, EventStatus, PageRequest, SubscriptionName,
    Timestamp,
};
use herald_core::{Page, StoreError};
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;
use uuid::Uuid;

use crate::codec::{self, column, event_from_row, pattern_regex, ts, EVENT_COLUMNS};
use crate::schema::status;

/// A query parameter of any type.
pub(crate) type Param = Box<dyn ToSql + Sync + Send>;

/// The statement and parameters of one history page (`limit + 1` rows, to tell whether a next
/// page exists).
pub(crate) fn page_sql(schema: &str, filter: &EventFilter, page: PageRequest, now: Timestamp) -> (String, Vec<Param>) {
    let limit = i64::from(page.limit.clamp(1, PageRequest::MAX_LIMIT));
    let mut sql = format!("SELECT {EVENT_COLUMNS} FROM {schema}.events e WHERE true");
    let mut args: Vec<Param> = Vec::new();
    fn arg(args: &mut Vec<Param>, p: Param) -> String {
        args.push(p);
        format!("${}", args.len())
    }
    if let Some(after) = page.after {
        // Pages go by the order events were stored (`seq`, newest first). The cursor is the last
        // event of the previous page; if it was purged since, the page goes on below the newest
        // event older than it.
        let a = arg(&mut args, Box::new(after.as_uuid()));
        sql.push_str(&format!(
            " AND e.seq < COALESCE((SELECT seq FROM {schema}.events WHERE id = {a}),
                 (SELECT seq + 1 FROM {schema}.events WHERE id < {a} ORDER BY id DESC LIMIT 1), 0)"
        ));
    }
    if let Some(p) = &filter.topic {
        if p.is_exact() {
            let a = arg(&mut args, Box::new(p.as_str().to_owned()));
            sql.push_str(&format!(" AND e.topic = {a}"));
        } else {
            let a = arg(&mut args, Box::new(pattern_regex(p)));
            sql.push_str(&format!(" AND e.topic ~ {a}"));
        }
    }
    if let Some(key) = &filter.key {
        let a = arg(&mut args, Box::new(key.clone()));
        sql.push_str(&format!(" AND e.key = {a}"));
    }
    if let Some(since) = filter.since {
        let a = arg(&mut args, Box::new(since.as_millis()));
        sql.push_str(&format!(" AND e.published_at >= {a}"));
    }
    if let Some(until) = filter.until {
        let a = arg(&mut args, Box::new(until.as_millis()));
        sql.push_str(&format!(" AND e.published_at < {a}"));
    }
    // The status a delivery shows now: scheduled and retrying ones whose time has come are pending.
    let shown = |args: &mut Vec<Param>| {
        let n = arg(args, Box::new(now.as_millis()));
        format!("(CASE WHEN d.status IN (5, 7) AND d.due <= {n} THEN 6 ELSE d.status END)")
    };
    match (&filter.subscription, filter.status) {
        (Some(name), s) => {
            let a = arg(&mut args, Box::new(name.as_str().to_owned()));
            sql.push_str(&format!(
                " AND EXISTS (SELECT 1 FROM {schema}.deliveries d JOIN {schema}.subscriptions s ON s.id = d.sub
                               WHERE d.event = e.seq AND s.name = {a}"
            ));
            if let Some(s) = s {
                match event_status_code(s) {
                    Some(code) => {
                        let shown = shown(&mut args);
                        sql.push_str(&format!(" AND {shown} = {code}"));
                    }
                    None => sql.push_str(" AND false"),
                }
            }
            sql.push(')');
        }
        (None, Some(s)) => match event_status_code(s) {
            Some(code) if code >= status::SCHEDULED => {
                let shown = shown(&mut args);
                sql.push_str(&format!(
                    " AND e.status = {} AND (SELECT max({shown}) FROM {schema}.deliveries d WHERE d.event = e.seq) = {code}",
                    status::OPEN
                ));
            }
            Some(code) => sql.push_str(&format!(" AND e.status = {code}")),
            None => sql.push_str(" AND e.status = 0"),
        },
        (None, None) => {}
    }
    sql.push_str(&format!(" ORDER BY e.seq DESC LIMIT {}", limit + 1));
    (sql, args)
}

/// The code of the delivery status an event status names (unrouted: the code 0, which no
/// delivery has); `None` for a status this build does not know.
fn event_status_code(s: EventStatus) -> Option<i16> {
    Some(match s {
        EventStatus::Unrouted => status::UNROUTED,
        EventStatus::Scheduled => status::SCHEDULED,
        EventStatus::Pending => status::PENDING,
        EventStatus::Active => status::ACTIVE,
        EventStatus::Retrying => status::RETRYING,
        EventStatus::Succeeded => status::SUCCEEDED,
        EventStatus::Dead => status::DEAD,
        EventStatus::Cancelled => status::CANCELLED,
        EventStatus::Expired => status::EXPIRED,
        _ => return None,
    })
}

/// Events read from rows, in order, with their `seq`.
pub(crate) fn events(rows: &[Row]) -> Result<Vec<(i64, Event)>, StoreError> {
    rows.iter().map(|r| event_from_row(r, 0)).collect()
}

/// Builds records from events and the rows of the `deliveries` statement (and of `attempts`).
pub(crate) fn records(
    events: Vec<(i64, Event)>,
    deliveries: &[Row],
    attempts: Option<&[Row]>,
    now: Timestamp,
) -> Result<Vec<EventRecord>, StoreError> {
    let mut history: HashMap<Uuid, Vec<Attempt>> = HashMap::new();
    for r in attempts.unwrap_or(&[]) {
        let number: i32 = column(r, 1)?;
        let mut a = Attempt::started(u32::try_from(number).unwrap_or(0), ts(column(r, 2)?));
        a.finished_at = column::<Option<i64>>(r, 3)?.map(ts);
        a.outcome = codec::attempt_outcome(column(r, 4)?)?;
        a.error = column(r, 5)?;
        history.entry(column(r, 0)?).or_default().push(a);
    }
    let mut by_event: HashMap<i64, Vec<DeliveryRecord>> = HashMap::new();
    for r in deliveries {
        let event: i64 = column(r, 0)?;
        let id: Uuid = column(r, 1)?;
        let name: &str = column(r, 2)?;
        let subscription = SubscriptionName::new(name).map_err(codec::corrupt)?;
        let due = ts(column(r, 5)?);
        let shown = codec::shown_status(column(r, 3)?, due, now)?;
        let mut d = DeliveryRecord::new(DeliveryId::from_uuid(id), subscription, shown, due);
        d.attempt_count = u32::try_from(column::<i32>(r, 4)?).unwrap_or(0);
        d.last_error = column(r, 6)?;
        d.reply = column::<Option<Vec<u8>>>(r, 7)?.map(bytes::Bytes::from);
        if let Some(h) = history.remove(&id) {
            d.attempts = h;
        }
        by_event.entry(event).or_default().push(d);
    }
    Ok(events
        .into_iter()
        .map(|(seq, event)| EventRecord::new(event, by_event.remove(&seq).unwrap_or_default()))
        .collect())
}

/// A page from up to `limit + 1` records read newest first.
pub(crate) fn page(records: Vec<EventRecord>, page: PageRequest) -> Page<EventRecord> {
    Page::from_lookahead(records, page.limit.clamp(1, PageRequest::MAX_LIMIT) as usize)
}
