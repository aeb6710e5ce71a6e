//! The writer: one thread owns the only writing connection and group-commits the writes of all
//! concurrent callers into one transaction.
//!
//! Callers queue a [`Command`] and wait until its transaction is durable. The thread takes every
//! command queued while the last commit was syncing and commits them in one transaction: one fsync
//! for the whole group (claims and lease extensions go first, in a transaction of their own that
//! does not wait for the disk). If a statement fails, the group is undone and each command runs
//! again on its own, so one failing write does not refuse the others. Only after a commit does the
//! thread publish the new counts and subscriptions and send wakeups.

use std::collections::HashMap;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use herald_core::{
    Cancelled, Claimed, Completion, DeliveryId, Event, EventId, Lease, Outcome, Pattern, Published, Requeued,
    StoreError, SubscriptionName, SubscriptionSpec, Timestamp, Topic, Verdict, Wakeup,
};
use rusqlite::{Connection, OptionalExtension};
use tokio::sync::oneshot;

use crate::codec::{self, event_from_row, store_error, EVENT_COLUMNS};
use crate::counts::Counts;
use crate::schema::{outcome, status};
use crate::shared::{Shared, SubscriptionRow};

/// The most commands one transaction takes, so that one commit cannot grow without bound.
const MAX_GROUP: usize = 1024;

/// The error recorded on an attempt whose lease ran out.
const LEASE_RAN_OUT: &str = "the lease ran out before an outcome was recorded";

/// A write, with the times it is judged by (read from the store's clock by the caller).
#[derive(Debug)]
pub(crate) enum Command {
    Declare(SubscriptionSpec),
    Publish {
        events: Vec<Event>,
        now: Timestamp,
    },
    Claim {
        subscription: SubscriptionName,
        max: usize,
        now: Timestamp,
        lease_until: Timestamp,
    },
    Extend {
        leases: Vec<Lease>,
        until: Timestamp,
    },
    Complete {
        outcomes: Vec<Outcome>,
        now: Timestamp,
    },
    Cancel {
        id: EventId,
        to: i64,
        now: Timestamp,
    },
    Requeue {
        id: DeliveryId,
        now: Timestamp,
    },
    Purge {
        before: Timestamp,
        max: usize,
    },
}

/// What a command did.
#[derive(Debug)]
pub(crate) enum Reply {
    Declared,
    Published(Vec<Published>),
    Claimed(Vec<Claimed>),
    Extended(Vec<bool>),
    Completed(Vec<Completion>),
    Cancelled(Cancelled),
    Requeued(Requeued),
    Purged(u64),
}

struct Request {
    command: Command,
    reply: oneshot::Sender<Result<Reply, StoreError>>,
}

/// The answer to a submitted command: await it, or block on it outside async code.
#[derive(Debug)]
pub(crate) struct Answer(oneshot::Receiver<Result<Reply, StoreError>>);

impl Answer {
    pub(crate) async fn wait(self) -> Result<Reply, StoreError> {
        self.0.await.map_err(|_| stopped())?
    }

    pub(crate) fn wait_blocking(self) -> Result<Reply, StoreError> {
        self.0.blocking_recv().map_err(|_| stopped())?
    }
}

/// The handle to the writer thread.
#[derive(Debug)]
pub(crate) struct Writer {
    queue: Mutex<Option<Sender<Request>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

fn stopped() -> StoreError {
    StoreError::Unavailable {
        message: "the SQLite store's writer thread has stopped".into(),
        source: None,
    }
}

impl Writer {
    /// Starts the writer thread on `conn`, which must be open, migrated and in WAL mode.
    pub(crate) fn start(conn: Connection, shared: Arc<Shared>, counts: Counts) -> std::io::Result<Writer> {
        let (tx, rx) = mpsc::channel();
        let subs = shared.subscriptions();
        let thread = std::thread::Builder::new()
            .name("herald-sqlite-writer".into())
            .spawn(move || {
                let mut state = State {
                    conn,
                    shared,
                    counts,
                    subs,
                    routes: HashMap::new(),
                    synced: true,
                };
                state.run(rx);
            })?;
        Ok(Writer {
            queue: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Queues `command` for the next group commit; the answer comes once it is durable.
    pub(crate) fn submit(&self, command: Command) -> Result<Answer, StoreError> {
        let (reply, answer) = oneshot::channel();
        let queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        let tx = queue.as_ref().ok_or_else(stopped)?;
        tx.send(Request { command, reply }).map_err(|_| stopped())?;
        Ok(Answer(answer))
    }

    /// Lets the thread finish what is queued, then waits for it to close its connection.
    pub(crate) fn stop(&self) {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner).take();
        let thread = self.thread.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(t) = thread {
            if t.join().is_err() {
                tracing::error!("herald-sqlite: the writer thread panicked");
            }
        }
    }
}

/// What a group changed besides its rows, acted on once it commits.
#[derive(Default)]
struct Effects {
    wakeups: Vec<Wakeup>,
    declared: bool,
}

struct State {
    conn: Connection,
    shared: Arc<Shared>,
    /// The committed counts.
    counts: Counts,
    subs: Vec<SubscriptionRow>,
    routes: HashMap<Topic, Arc<[i64]>>,
    /// Whether the connection is at `synchronous = FULL` (it is opened so).
    synced: bool,
}

impl State {
    fn run(&mut self, rx: Receiver<Request>) {
        while let Ok(first) = rx.recv() {
            let mut group = vec![first];
            while group.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(r) => group.push(r),
                    Err(_) => break,
                }
            }
            self.commit_group(group);
        }
    }

    fn exec(&self, sql: &str) -> rusqlite::Result<()> {
        self.conn.prepare_cached(sql)?.execute([])?;
        Ok(())
    }

    /// Whether the group's commit must reach the disk before anyone is answered. Claims and lease
    /// extensions alone need not: losing one to a power cut only makes its delivery claimable
    /// again, which the lease running out does anyway, and the next synced commit (an outcome, a
    /// publish) makes it durable too, since syncing the log syncs everything before it.
    fn needs_sync(commands: &[Command]) -> bool {
        commands
            .iter()
            .any(|c| !matches!(c, Command::Claim { .. } | Command::Extend { .. }))
    }

    fn set_sync(&mut self, full: bool) -> rusqlite::Result<()> {
        if self.synced != full {
            self.exec(if full {
                "PRAGMA synchronous = FULL"
            } else {
                "PRAGMA synchronous = NORMAL"
            })?;
            self.synced = full;
        }
        Ok(())
    }

    /// Commits the claims and lease extensions of the group first, without waiting for the disk,
    /// so that workers get their deliveries while the rest of the group (outcomes, publishes) is
    /// synced.
    fn commit_group(&mut self, group: Vec<Request>) {
        let (fast, durable): (Vec<Request>, Vec<Request>) = group
            .into_iter()
            .partition(|r| !Self::needs_sync(std::slice::from_ref(&r.command)));
        for part in [fast, durable] {
            if !part.is_empty() {
                self.commit_part(part);
            }
        }
    }

    fn commit_part(&mut self, group: Vec<Request>) {
        let (commands, replies): (Vec<Command>, Vec<_>) = group.into_iter().map(|r| (r.command, r.reply)).unzip();
        match self.run_group(&commands) {
            Ok(results) => {
                for (reply, result) in replies.into_iter().zip(results) {
                    // A caller that stopped waiting does not undo the write.
                    let _ = reply.send(result);
                }
            }
            Err(_) if commands.len() > 1 => {
                // Something failed and undid the whole group: run each command on its own, so
                // that one failing write does not refuse the others.
                for (command, reply) in commands.iter().zip(replies) {
                    let result = self
                        .run_group(std::slice::from_ref(command))
                        .and_then(|mut r| r.pop().unwrap_or_else(|| Err(stopped())));
                    let _ = reply.send(result);
                }
            }
            Err(e) => {
                for reply in replies {
                    let _ = reply.send(Err(copy_error(&e)));
                }
            }
        }
    }

    /// Runs `commands` in one transaction and commits it (one sync for all). Returns each
    /// command's answer, or the error that undid the whole transaction.
    ///
    /// No savepoint per command: a failure (a full disk, an I/O error) is rare, and the caller then
    /// runs each command alone; savepoints would copy every page a command touches.
    fn run_group(&mut self, commands: &[Command]) -> Result<Vec<Result<Reply, StoreError>>, StoreError> {
        self.set_sync(Self::needs_sync(commands))
            .and_then(|()| self.exec("BEGIN IMMEDIATE"))
            .map_err(store_error)?;
        let mut counts = self.counts;
        let mut fx = Effects::default();
        let mut results = Vec::with_capacity(commands.len());
        let mut failed = None;
        for command in commands {
            match self.apply(command, &mut counts, &mut fx) {
                Ok(r) => results.push(r),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        let committed = match failed {
            Some(e) => Err(e),
            None => counts.save(&self.counts, &self.conn).and_then(|()| self.exec("COMMIT")),
        };
        if let Err(e) = committed {
            let _ = self.exec("ROLLBACK");
            // Routing learnt from a declare that did not commit must be forgotten.
            if fx.declared {
                self.reload_subscriptions();
            }
            let e = store_error(e);
            tracing::error!(error = %e, commands = commands.len(), "herald-sqlite: a write failed and was undone");
            return Err(e);
        }
        self.counts = counts;
        self.shared.set_counts(counts);
        if fx.declared {
            self.shared.set_subscriptions(self.subs.clone());
        }
        // Many publishes of one group are due at the same millisecond: one wakeup says it.
        let mut sent: Vec<Wakeup> = Vec::with_capacity(fx.wakeups.len().min(16));
        for w in fx.wakeups {
            if !sent.contains(&w) {
                self.shared.wake(w);
                sent.push(w);
            }
        }
        Ok(results)
    }

    /// Applies one command. The outer error is a failed statement (the group is undone); the inner
    /// one a refusal that changed nothing (an undeclared subscription).
    fn apply(
        &mut self,
        command: &Command,
        counts: &mut Counts,
        fx: &mut Effects,
    ) -> rusqlite::Result<Result<Reply, StoreError>> {
        Ok(Ok(match command {
            Command::Declare(spec) => {
                fx.declared = true;
                self.declare(spec)?;
                Reply::Declared
            }
            Command::Publish { events, now } => Reply::Published(self.publish(events, *now, counts, fx)?),
            Command::Claim {
                subscription,
                max,
                now,
                lease_until,
            } => {
                let sub = match self.sub_id(subscription) {
                    Ok(sub) => sub,
                    Err(refused) => return Ok(Err(refused)),
                };
                Reply::Claimed(self.claim(sub, subscription, *max, *now, *lease_until, counts)?)
            }
            Command::Extend { leases, until } => Reply::Extended(self.extend(leases, *until)?),
            Command::Complete { outcomes, now } => Reply::Completed(self.complete(outcomes, *now, counts, fx)?),
            Command::Cancel { id, to, now } => Reply::Cancelled(self.cancel(*id, *to, *now, counts)?),
            Command::Requeue { id, now } => Reply::Requeued(self.requeue(*id, *now, counts, fx)?),
            Command::Purge { before, max } => Reply::Purged(self.purge(*before, *max, counts)?),
        }))
    }

    // -----------------------------------------------------------------------------------------
    // Subscriptions and routing

    fn sub_id(&self, name: &SubscriptionName) -> Result<i64, StoreError> {
        self.subs
            .iter()
            .find(|s| &s.name == name)
            .map(|s| s.id)
            .ok_or_else(|| StoreError::UnknownSubscription(name.clone()))
    }

    fn reload_subscriptions(&mut self) {
        match crate::shared::load_subscriptions(&self.conn) {
            Ok(subs) => self.subs = subs,
            Err(e) => tracing::error!(error = %e, "herald-sqlite: could not reload subscriptions"),
        }
        self.routes.clear();
    }

    fn declare(&mut self, spec: &SubscriptionSpec) -> rusqlite::Result<()> {
        let id: i64 = self
            .conn
            .prepare_cached(
                "INSERT INTO subscriptions (name, pattern) VALUES (?1, ?2)
             ON CONFLICT (name) DO UPDATE SET pattern = excluded.pattern RETURNING id",
            )?
            .query_row((spec.name.as_str(), spec.pattern.as_str()), |r| r.get(0))?;
        match self.subs.iter_mut().find(|s| s.id == id) {
            Some(s) => s.pattern = spec.pattern.clone(),
            None => self.subs.push(SubscriptionRow {
                id,
                name: spec.name.clone(),
                pattern: spec.pattern.clone(),
            }),
        }
        self.routes.clear();
        Ok(())
    }

    fn route(&mut self, topic: &Topic) -> Arc<[i64]> {
        if let Some(r) = self.routes.get(topic) {
            return r.clone();
        }
        let matched: Arc<[i64]> = self
            .subs
            .iter()
            .filter(|s| s.pattern.matches(topic))
            .map(|s| s.id)
            .collect();
        // Bounded, so that a stream of distinct topics cannot grow it without end.
        if self.routes.len() >= 10_000 {
            self.routes.clear();
        }
        self.routes.insert(topic.clone(), matched.clone());
        matched
    }

    // -----------------------------------------------------------------------------------------
    // Publish

    fn publish(
        &mut self,
        events: &[Event],
        now: Timestamp,
        counts: &mut Counts,
        fx: &mut Effects,
    ) -> rusqlite::Result<Vec<Published>> {
        let mut out = Vec::with_capacity(events.len());
        let mut earliest: Option<Timestamp> = None;
        for event in events {
            let routes = self.route(event.topic());
            let due = event.deliver_at();
            let code = if due <= now { status::PENDING } else { status::SCHEDULED };
            let event_code = if routes.is_empty() {
                status::UNROUTED
            } else {
                status::OPEN
            };
            let content_type = Some(event.content_type()).filter(|c| *c != herald_core::JSON);
            let inserted = self
                .conn
                .prepare_cached(
                    "INSERT OR IGNORE INTO events (id, topic, payload, content_type, source, headers, priority,
                         published_at, deliver_at, expires_at, key, reply_to, status, finished_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
                )?
                .execute(rusqlite::params![
                    event.id().as_uuid().as_bytes(),
                    event.topic().as_str(),
                    &event.payload()[..],
                    content_type,
                    event.source(),
                    codec::headers_text(event.headers()),
                    event.priority().get(),
                    event.published_at().as_millis(),
                    due.as_millis(),
                    event.expires_at().map(Timestamp::as_millis),
                    event.key(),
                    event.reply_to(),
                    event_code,
                    routes.is_empty().then_some(now.as_millis()),
                ])?;
            if inserted == 0 {
                // The key is held by a live event, or the same event was published before (a
                // retried publish whose answer was lost): nothing new is stored.
                let holder = match event.key() {
                    Some(key) => self
                        .conn
                        .prepare_cached("SELECT id FROM events WHERE key = ?1")?
                        .query_row([key], |r| codec::event_id(r, 0))
                        .optional()?,
                    None => None,
                };
                out.push(Published::Duplicate {
                    id: holder.unwrap_or(event.id()),
                });
                continue;
            }
            let seq = self.conn.last_insert_rowid();
            let mut insert = self.conn.prepare_cached(
                "INSERT INTO deliveries (id, event, sub, status, priority, due, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            for &sub in routes.iter() {
                insert.execute(rusqlite::params![
                    DeliveryId::new().as_uuid().as_bytes(),
                    seq,
                    sub,
                    code,
                    event.priority().get(),
                    due.as_millis(),
                    event.expires_at().map(Timestamp::as_millis),
                ])?;
            }
            counts.events += 1;
            if routes.is_empty() {
                counts.unrouted += 1;
            } else {
                counts.add(code, routes.len() as i64);
                earliest = Some(earliest.map_or(due, |e| e.min(due)));
            }
            out.push(Published::Stored {
                id: event.id(),
                deliveries: u32::try_from(routes.len()).unwrap_or(u32::MAX),
            });
        }
        fx.wakeups.extend(earliest.map(Wakeup::Due));
        Ok(out)
    }

    // -----------------------------------------------------------------------------------------
    // Claim, extend, complete

    /// The claim statement for `max` deliveries: one index range per priority (highest first),
    /// each up to `max` rows due by now, and the leases that ran out; the best `max` of them are
    /// leased in the same statement.
    fn claim_sql() -> String {
        let mut legs: Vec<String> = (0..=10u8)
            .rev()
            .map(|p| {
                format!(
                    "SELECT * FROM (SELECT id, priority, due FROM deliveries
                       WHERE sub = ?1 AND status IN (5, 6, 7) AND priority = {p} AND due <= ?2
                         AND (expires_at IS NULL OR expires_at > ?2)
                       ORDER BY due LIMIT ?3)"
                )
            })
            .collect();
        legs.push(
            "SELECT id, priority, due FROM deliveries
               WHERE sub = ?1 AND status = 8 AND lease_until <= ?2 AND (expires_at IS NULL OR expires_at > ?2)"
                .to_owned(),
        );
        format!(
            "UPDATE deliveries
                SET claimed_from = status, status = 8, attempts = attempts + 1, token = token + 1, lease_until = ?4
              WHERE id IN (SELECT id FROM ({}) ORDER BY priority DESC, due LIMIT ?3)
              RETURNING id, event, claimed_from, attempts, token, due, priority",
            legs.join(" UNION ALL ")
        )
    }

    fn claim(
        &mut self,
        sub: i64,
        name: &SubscriptionName,
        max: usize,
        now: Timestamp,
        lease_until: Timestamp,
        counts: &mut Counts,
    ) -> rusqlite::Result<Vec<Claimed>> {
        if max == 0 {
            return Ok(Vec::new());
        }
        self.expire_claimable(sub, now, counts)?;
        let max = i64::try_from(max).unwrap_or(i64::MAX);
        let rows: Vec<(DeliveryId, i64, i64, u32, u64, Timestamp, u8)> = self
            .conn
            .prepare_cached(&Self::claim_sql())?
            .query_map((sub, now.as_millis(), max, lease_until.as_millis()), |r| {
                Ok((
                    codec::delivery_id(r, 0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get::<_, i64>(4)?.unsigned_abs(),
                    codec::ts(r, 5)?,
                    r.get(6)?,
                ))
            })?
            .collect::<rusqlite::Result<_>>()?;
        let mut out = Vec::with_capacity(rows.len());
        let mut order = Vec::with_capacity(rows.len());
        for (delivery, event_seq, from, attempt, token, due, priority) in rows {
            counts.shift(from, status::ACTIVE);
            if from == status::ACTIVE {
                self.close_lost_attempt(delivery, attempt - 1, now)?;
            }
            self.conn
                .prepare_cached("INSERT INTO attempts (delivery, number, started_at) VALUES (?1, ?2, ?3)")?
                .execute((delivery.as_uuid().as_bytes(), attempt, now.as_millis()))?;
            let event = self
                .conn
                .prepare_cached(&format!("SELECT {EVENT_COLUMNS} FROM events WHERE seq = ?1"))?
                .query_row([event_seq], |r| event_from_row(r, 0))?;
            order.push((std::cmp::Reverse(priority), due));
            out.push(Claimed::new(
                Lease { delivery, token },
                lease_until,
                name.clone(),
                event,
                attempt,
                due,
            ));
        }
        let mut paired: Vec<_> = order.into_iter().zip(out).collect();
        paired.sort_by_key(|(k, _)| *k);
        Ok(paired.into_iter().map(|(_, c)| c).collect())
    }

    /// Ends as expired the claimable deliveries of `sub` whose event expired: a claim skips them.
    fn expire_claimable(&mut self, sub: i64, now: Timestamp, counts: &mut Counts) -> rusqlite::Result<()> {
        let rows: Vec<(DeliveryId, i64, i64, u32)> = self
            .conn
            .prepare_cached(
                "UPDATE deliveries SET claimed_from = status, status = 2
                  WHERE sub = ?1 AND expires_at IS NOT NULL AND status IN (5, 6, 7, 8) AND expires_at <= ?2
                    AND ((status IN (5, 6, 7) AND due <= ?2) OR (status = 8 AND lease_until <= ?2))
                  RETURNING id, event, claimed_from, attempts",
            )?
            .query_map((sub, now.as_millis()), |r| {
                Ok((codec::delivery_id(r, 0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })?
            .collect::<rusqlite::Result<_>>()?;
        for (delivery, event, from, attempts) in rows {
            counts.shift(from, status::EXPIRED);
            if from == status::ACTIVE {
                self.close_lost_attempt(delivery, attempts, now)?;
            }
            self.refresh_event(event, now)?;
        }
        Ok(())
    }

    /// Records that attempt `number` of `delivery` ended when its lease ran out, at `now`.
    fn close_lost_attempt(&self, delivery: DeliveryId, number: u32, now: Timestamp) -> rusqlite::Result<()> {
        self.conn
            .prepare_cached(
                "UPDATE attempts SET finished_at = ?3, outcome = ?4, error = ?5
                  WHERE delivery = ?1 AND number = ?2 AND finished_at IS NULL",
            )?
            .execute(rusqlite::params![
                delivery.as_uuid().as_bytes(),
                number,
                now.as_millis(),
                outcome::LEASE_EXPIRED,
                LEASE_RAN_OUT
            ])?;
        Ok(())
    }

    /// After a delivery of the event `seq` finished or reopened: the event is open while any
    /// delivery is; once all are finished, its status is their roll-up and `finished_at` says when.
    fn refresh_event(&self, seq: i64, now: Timestamp) -> rusqlite::Result<()> {
        self.conn
            .prepare_cached(
                "UPDATE events SET (status, finished_at) = (
                    SELECT CASE WHEN m <= 4 THEN m ELSE 9 END, CASE WHEN m <= 4 THEN COALESCE(finished_at, ?2) END
                      FROM (SELECT COALESCE(MAX(status), 0) AS m FROM deliveries WHERE event = ?1))
                  WHERE seq = ?1",
            )?
            .execute((seq, now.as_millis()))?;
        Ok(())
    }

    fn extend(&mut self, leases: &[Lease], until: Timestamp) -> rusqlite::Result<Vec<bool>> {
        let mut stmt = self
            .conn
            .prepare_cached("UPDATE deliveries SET lease_until = ?1 WHERE id = ?2 AND status = 8 AND token = ?3")?;
        leases
            .iter()
            .map(|l| {
                let token = i64::try_from(l.token).unwrap_or(-1);
                Ok(stmt.execute((until.as_millis(), l.delivery.as_uuid().as_bytes(), token))? == 1)
            })
            .collect()
    }

    fn complete(
        &mut self,
        outcomes: &[Outcome],
        now: Timestamp,
        counts: &mut Counts,
        fx: &mut Effects,
    ) -> rusqlite::Result<Vec<Completion>> {
        let mut out = Vec::with_capacity(outcomes.len());
        for o in outcomes {
            let id = *o.lease.delivery.as_uuid().as_bytes();
            let token = i64::try_from(o.lease.token).unwrap_or(-1);
            let found: Option<(i64, u32, Timestamp, EventId, bool)> = self
                .conn
                .prepare_cached(
                    "SELECT d.event, d.attempts, d.due, e.id, e.reply_to IS NOT NULL
                       FROM deliveries d JOIN events e ON e.seq = d.event
                      WHERE d.id = ?1 AND d.status = 8 AND d.token = ?2",
                )?
                .query_row((&id[..], token), |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        codec::ts(r, 2)?,
                        codec::event_id(r, 3)?,
                        r.get(4)?,
                    ))
                })
                .optional()?;
            let Some((event, attempt, due, event_id, is_request)) = found else {
                out.push(Completion::Stale);
                continue;
            };
            let finish = |conn: &Connection, code: i64, error: Option<&str>| -> rusqlite::Result<()> {
                conn.prepare_cached(
                    "UPDATE attempts SET finished_at = ?3, outcome = ?4, error = ?5 WHERE delivery = ?1 AND number = ?2",
                )?
                .execute(rusqlite::params![&id[..], attempt, o.finished_at.as_millis(), code, error])?;
                Ok(())
            };
            let to = match &o.verdict {
                Verdict::Succeeded { reply } => {
                    finish(&self.conn, outcome::SUCCEEDED, None)?;
                    self.conn
                        .prepare_cached("UPDATE deliveries SET status = 1, reply = ?2 WHERE id = ?1")?
                        .execute((&id[..], reply.as_deref()))?;
                    if is_request {
                        fx.wakeups.push(Wakeup::Answered(event_id));
                    }
                    status::SUCCEEDED
                }
                Verdict::Retry { at, error } => {
                    finish(&self.conn, outcome::FAILED, Some(error))?;
                    self.conn
                        .prepare_cached("UPDATE deliveries SET status = 7, due = ?2, last_error = ?3 WHERE id = ?1")?
                        .execute((&id[..], at.as_millis(), error))?;
                    fx.wakeups.push(Wakeup::Due(*at));
                    status::RETRYING
                }
                Verdict::Dead { reason } => {
                    finish(&self.conn, outcome::DEAD, Some(reason))?;
                    self.conn
                        .prepare_cached("UPDATE deliveries SET status = 4, last_error = ?2 WHERE id = ?1")?
                        .execute((&id[..], reason))?;
                    if is_request {
                        fx.wakeups.push(Wakeup::Answered(event_id));
                    }
                    status::DEAD
                }
                Verdict::Released => {
                    self.conn
                        .prepare_cached("DELETE FROM attempts WHERE delivery = ?1 AND number = ?2")?
                        .execute((&id[..], attempt))?;
                    self.conn
                        .prepare_cached("UPDATE deliveries SET status = 6, attempts = attempts - 1 WHERE id = ?1")?
                        .execute([&id[..]])?;
                    fx.wakeups.push(Wakeup::Due(due));
                    status::PENDING
                }
                // A verdict added to herald-core: leave the delivery leased; the lease runs out
                // and it is attempted again.
                _ => {
                    out.push(Completion::Stale);
                    continue;
                }
            };
            counts.shift(status::ACTIVE, to);
            if to <= status::DEAD {
                self.refresh_event(event, now)?;
            }
            out.push(Completion::Applied);
        }
        Ok(out)
    }

    // -----------------------------------------------------------------------------------------
    // Cancel, requeue, purge

    fn event_seq(&self, id: EventId) -> rusqlite::Result<Option<i64>> {
        self.conn
            .prepare_cached("SELECT seq FROM events WHERE id = ?1")?
            .query_row([&id.as_uuid().as_bytes()[..]], |r| r.get(0))
            .optional()
    }

    fn cancel(&mut self, id: EventId, to: i64, now: Timestamp, counts: &mut Counts) -> rusqlite::Result<Cancelled> {
        let Some(seq) = self.event_seq(id)? else {
            return Ok(Cancelled::NotFound);
        };
        let ended: Vec<i64> = self
            .conn
            .prepare_cached(
                "UPDATE deliveries SET claimed_from = status, status = ?2
                  WHERE event = ?1 AND status IN (5, 6, 7) RETURNING claimed_from",
            )?
            .query_map((seq, to), |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        if ended.is_empty() {
            return Ok(Cancelled::TooLate);
        }
        for &from in &ended {
            counts.shift(from, to);
        }
        self.refresh_event(seq, now)?;
        Ok(Cancelled::Ended(u32::try_from(ended.len()).unwrap_or(u32::MAX)))
    }

    fn requeue(
        &mut self,
        id: DeliveryId,
        now: Timestamp,
        counts: &mut Counts,
        fx: &mut Effects,
    ) -> rusqlite::Result<Requeued> {
        let bytes = *id.as_uuid().as_bytes();
        let found: Option<(i64, i64, Timestamp)> = self
            .conn
            .prepare_cached("SELECT status, event, due FROM deliveries WHERE id = ?1")?
            .query_row([&bytes[..]], |r| Ok((r.get(0)?, r.get(1)?, codec::ts(r, 2)?)))
            .optional()?;
        let Some((code, event, due)) = found else {
            return Ok(Requeued::NotFound);
        };
        if code != status::DEAD {
            return Ok(Requeued::NotDead(codec::shown_status(code, due, now, 0)?));
        }
        self.conn
            .prepare_cached("UPDATE deliveries SET status = 6, due = ?2 WHERE id = ?1")?
            .execute((&bytes[..], now.as_millis()))?;
        counts.shift(status::DEAD, status::PENDING);
        self.refresh_event(event, now)?;
        fx.wakeups.push(Wakeup::Due(now));
        Ok(Requeued::Requeued)
    }

    /// Deletes up to `max` events that finished before `before`, with their deliveries and
    /// attempts.
    fn purge(&mut self, before: Timestamp, max: usize, counts: &mut Counts) -> rusqlite::Result<u64> {
        let max = i64::try_from(max).unwrap_or(i64::MAX);
        let doomed: Vec<(i64, i64)> = self
            .conn
            .prepare_cached(
                "SELECT seq, status FROM events WHERE finished_at IS NOT NULL AND finished_at < ?1 LIMIT ?2",
            )?
            .query_map((before.as_millis(), max), |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        for &(seq, code) in &doomed {
            self.conn
                .prepare_cached("DELETE FROM attempts WHERE delivery IN (SELECT id FROM deliveries WHERE event = ?1)")?
                .execute([seq])?;
            let statuses: Vec<i64> = self
                .conn
                .prepare_cached("DELETE FROM deliveries WHERE event = ?1 RETURNING status")?
                .query_map([seq], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            for s in statuses {
                counts.add(s, -1);
            }
            self.conn
                .prepare_cached("DELETE FROM events WHERE seq = ?1")?
                .execute([seq])?;
            counts.events -= 1;
            if code == status::UNROUTED {
                counts.unrouted -= 1;
            }
        }
        Ok(doomed.len() as u64)
    }
}

#[cfg(test)]
pub(crate) fn claim_sql_for_tests() -> String {
    State::claim_sql()
}

/// A copy of a store error for each caller of a failed group (the source chain is flattened into
/// the message, since it cannot be cloned).
fn copy_error(e: &StoreError) -> StoreError {
    match e {
        StoreError::Corrupt(m) => StoreError::Corrupt(m.clone()),
        other => StoreError::Unavailable {
            message: other.to_string(),
            source: None,
        },
    }
}

/// Checks that a pattern read back from the file is valid.
pub(crate) fn pattern_from(text: &str, index: usize) -> rusqlite::Result<Pattern> {
    Pattern::new(text).map_err(|e| codec::bad_column(index, e.to_string()))
}
