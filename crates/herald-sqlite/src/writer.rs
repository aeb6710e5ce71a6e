//! The writer: one thread owns the only writing connection and group-commits the writes of all
//! concurrent callers into one transaction.
//!
//! Callers queue a [`Command`] and wait until its transaction is durable. The thread takes every
//! command queued while it was busy and commits them in one transaction (claims and lease
//! extensions go first, in a transaction of their own). Runs of publishes and of outcomes in a
//! group are applied as one: few statements per table for the whole run (multi-row inserts,
//! updates of the rows listed by key, `rarray` lists of ids to read), not one per row. An outcome
//! for a lease this writer gave reads nothing from the file (see [`Leases`]). If a statement fails, the
//! group is undone and each command runs again on its own, so one failing write does not refuse
//! the others.
//!
//! The commit does not wait for the disk (`synchronous = NORMAL`): a second thread, the sync
//! thread, takes each committed part, syncs the log once for every part committed since its last
//! sync, then sends their wakeups and answers, in commit order. So the writer applies the next
//! group while the last one is being synced, and nothing is answered or woken for before it is on
//! disk (see [`sync_loop`]).

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use herald_core::{
    Cancelled, Claimed, Completion, DeliveryId, Event, EventId, Lease, Outcome, Pattern, Published, Requeued,
    StoreError, SubscriptionName, SubscriptionSpec, Timestamp, Topic, Verdict, Wakeup,
};
use rusqlite::types::Value;
use rusqlite::vtab::array::Array;
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
    Remove {
        name: SubscriptionName,
        now: Timestamp,
    },
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
    Removed(u64),
    Published(Vec<Published>),
    Claimed(Vec<Claimed>),
    Extended(Vec<bool>),
    Completed(Vec<Completion>),
    Cancelled(Cancelled),
    Requeued(Requeued),
    Purged(u64),
}

/// Where a command's answer goes.
type ReplyTo = oneshot::Sender<Result<Reply, StoreError>>;

struct Request {
    command: Command,
    reply: ReplyTo,
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
    pub(crate) fn start(
        conn: Connection,
        wal: PathBuf,
        shared: Arc<Shared>,
        counts: Counts,
    ) -> std::io::Result<Writer> {
        let (tx, rx) = mpsc::channel();
        let (done_tx, done_rx) = mpsc::channel();
        let subs = shared.subscriptions();
        let syncer_shared = shared.clone();
        let syncer = std::thread::Builder::new()
            .name("herald-sqlite-sync".into())
            .spawn(move || sync_loop(done_rx, wal, syncer_shared))?;
        let thread = std::thread::Builder::new()
            .name("herald-sqlite-writer".into())
            .spawn(move || {
                let mut state = State {
                    conn,
                    shared,
                    counts,
                    subs,
                    routes: HashMap::new(),
                    recent: Recent::new(),
                    leases: Leases::new(),
                    lease_missed: false,
                    done: done_tx,
                };
                state.run(rx);
                // Every commit is answered (and synced) before the connection closes.
                drop(state.done);
                if syncer.join().is_err() {
                    tracing::error!("herald-sqlite: the sync thread panicked");
                }
                drop(state.conn);
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
    /// Events stored due now, for [`Recent`] once the transaction commits.
    published: Vec<(i64, Event)>,
    /// Events were deleted: their `seq`s may be given to new events.
    purged: bool,
}

/// The events most recently stored due at once, in `seq` order: a claim usually follows their
/// publish within milliseconds, and finds them here (a binary search) instead of reading and
/// decoding their rows again. Only committed events enter it, and a purge empties it (a deleted
/// event's `seq` may be given to a new one).
struct Recent {
    events: VecDeque<(i64, Event)>,
    /// The payload bytes of `events`.
    bytes: usize,
}

impl Recent {
    /// How many events it keeps at most: enough for a burst of publishes claimed right after
    /// (a claim of an event not kept reads and decodes its row).
    const CAPACITY: usize = 16_384;
    /// How many bytes of payload it keeps at most, so that large events cannot make it hold much
    /// memory: as much as SQLite's page cache of the writer.
    const PAYLOAD_BYTES: usize = 16 << 20;

    fn new() -> Self {
        Recent {
            events: VecDeque::new(),
            bytes: 0,
        }
    }

    fn get(&self, seq: i64) -> Option<&Event> {
        let i = self.events.binary_search_by_key(&seq, |(s, _)| *s).ok()?;
        self.events.get(i).map(|(_, e)| e)
    }

    fn apply(&mut self, fx: &mut Effects) {
        if fx.purged {
            self.events.clear();
            self.bytes = 0;
        }
        for (seq, event) in fx.published.drain(..) {
            // `seq`s only grow while nothing is purged; anything else is not kept.
            if self.events.back().is_some_and(|(last, _)| *last >= seq) {
                continue;
            }
            self.bytes += event.payload().len();
            self.events.push_back((seq, event));
            while self.events.len() > Self::CAPACITY || self.bytes > Self::PAYLOAD_BYTES {
                let Some((_, old)) = self.events.pop_front() else { break };
                self.bytes -= old.payload().len();
            }
        }
    }
}

/// Hashes the writer's own keys (delivery ids, whose last 8 bytes are random, and `seq`s) by
/// folding their bytes, for maps consulted for every delivery claimed and completed: SipHash, the
/// default, cost more than a thousand writer instructions per event under callgrind. These maps
/// are keyed by what the store generated, so nobody chooses keys to make them collide.
#[derive(Default, Clone, Copy)]
struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        // The high bits pick the bucket group: spread the low ones into them.
        self.0.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(26)
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(word)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }

    fn write_i64(&mut self, n: i64) {
        self.write_u64(n as u64);
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

/// The hasher of [`IdHasher`]'s maps.
type Ids = std::hash::BuildHasherDefault<IdHasher>;

/// The leases the claims gave, as the claims wrote them: an outcome naming one of these (its
/// token included) needs nothing read from the file, not the delivery's row nor its event's.
///
/// An entry holds while its delivery is leased with its token: only claims lease a delivery or
/// change its token, and each notes what it wrote here; a lease that ends other than by an
/// outcome (its subscription removed, its event expired) is forgotten where the writer ends it, a
/// claim again after the lease ran out replaces it, and every entry is dropped when a transaction
/// is undone. The updates an outcome makes still check `status = 8` (and the less common ones the
/// token too), and a group whose outcomes find a lease not holding is undone and runs again,
/// reading its leases from the file. A lease not noted (after a restart, say,
/// or once the map was emptied) is read from the file.
struct Leases {
    by_delivery: HashMap<DeliveryId, Leased, Ids>,
}

impl Leases {
    /// How many leases it keeps: more than any runtime holds at once. When full it is emptied
    /// (outcomes then read their deliveries until it fills again).
    const CAPACITY: usize = 1 << 16;

    fn new() -> Self {
        Leases {
            by_delivery: HashMap::default(),
        }
    }

    fn note(&mut self, delivery: DeliveryId, lease: Leased) {
        if self.by_delivery.len() >= Self::CAPACITY {
            self.by_delivery.clear();
        }
        self.by_delivery.insert(delivery, lease);
    }

    /// Forgets the lease of `delivery`, which ended other than by an outcome.
    fn forget(&mut self, delivery: DeliveryId) {
        self.by_delivery.remove(&delivery);
    }

    /// Takes the entry of `delivery` out if it holds `token`.
    fn take(&mut self, delivery: DeliveryId, token: i64) -> Option<Leased> {
        match self.by_delivery.get(&delivery) {
            Some(l) if l.token == token => self.by_delivery.remove(&delivery),
            _ => None,
        }
    }
}

struct State {
    conn: Connection,
    shared: Arc<Shared>,
    /// The committed counts.
    counts: Counts,
    subs: Vec<SubscriptionRow>,
    routes: HashMap<Topic, Arc<[i64]>>,
    recent: Recent,
    leases: Leases,
    /// Set when a run of outcomes found a lease noted in `leases` not holding, which undoes its
    /// transaction: the group then runs once more (see [`State::commit_part`]).
    lease_missed: bool,
    /// Where committed groups go to be synced and answered, in commit order.
    done: Sender<Done>,
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

    /// Commits one part and hands its answers to the sync thread, which sends them once the log
    /// is on disk (for parts that need it) and after every earlier part's.
    fn commit_part(&mut self, group: Vec<Request>) {
        let (commands, replies): (Vec<Command>, Vec<_>) = group.into_iter().map(|r| (r.command, r.reply)).unzip();
        let sync = Self::needs_sync(&commands);
        let mut wakeups = Vec::new();
        let mut applied = self.run_group(&commands, &mut wakeups);
        if applied.is_err() && std::mem::take(&mut self.lease_missed) {
            // A lease the writer had noted did not hold (see [`Leases`]), and the notes are gone
            // with the undone transaction: once more, reading the leases from the file.
            applied = self.run_group(&commands, &mut wakeups);
        }
        let results: Vec<Result<Reply, StoreError>> = match applied {
            Ok(results) => results,
            Err(_) if commands.len() > 1 => {
                // Something failed and undid the whole group: run each command on its own, so
                // that one failing write does not refuse the others.
                commands
                    .iter()
                    .map(|command| {
                        self.run_group(std::slice::from_ref(command), &mut wakeups)
                            .and_then(|mut r| r.pop().unwrap_or_else(|| Err(stopped())))
                    })
                    .collect()
            }
            Err(e) => commands.iter().map(|_| Err(copy_error(&e))).collect(),
        };
        let done = Done {
            answers: replies.into_iter().zip(results).collect(),
            wakeups,
            sync,
        };
        if let Err(mpsc::SendError(done)) = self.done.send(done) {
            // The sync thread is gone (it panicked): nothing can be confirmed durable.
            for (reply, _) in done.answers {
                let _ = reply.send(Err(stopped()));
            }
        }
    }

    /// Runs `commands` in one transaction and commits it (one sync for all). Returns each
    /// command's answer, or the error that undid the whole transaction.
    ///
    /// No savepoint per command: a failure (a full disk, an I/O error) is rare, and the caller then
    /// runs each command alone; savepoints would copy every page a command touches.
    fn run_group(
        &mut self,
        commands: &[Command],
        wakeups: &mut Vec<Wakeup>,
    ) -> Result<Vec<Result<Reply, StoreError>>, StoreError> {
        self.exec("BEGIN IMMEDIATE").map_err(store_error)?;
        let mut counts = self.counts;
        let mut fx = Effects::default();
        let mut results = Vec::with_capacity(commands.len());
        let mut failed = None;
        let mut rest = commands;
        while !rest.is_empty() {
            // Runs of publishes and of outcomes (one per worker, typically) are applied as one:
            // one statement per table for the whole run instead of one per row.
            let run = match &rest[0] {
                Command::Publish { .. } => rest.iter().take_while(|c| matches!(c, Command::Publish { .. })).count(),
                Command::Complete { .. } => rest
                    .iter()
                    .take_while(|c| matches!(c, Command::Complete { .. }))
                    .count(),
                _ => 1,
            };
            let (now, tail) = rest.split_at(run);
            rest = tail;
            let applied = if matches!(now[0], Command::Publish { .. } | Command::Complete { .. }) {
                self.apply_run(now, &mut counts, &mut fx).map(|r| {
                    results.extend(r);
                })
            } else {
                self.apply(&now[0], &mut counts, &mut fx).map(|r| results.push(r))
            };
            if let Err(e) = applied {
                failed = Some(e);
                break;
            }
        }
        let committed = match failed {
            Some(e) => Err(e),
            None => counts.save(&self.counts, &self.conn).and_then(|()| self.exec("COMMIT")),
        };
        if let Err(e) = committed {
            let _ = self.exec("ROLLBACK");
            // What the undone claims noted may not hold: outcomes read their leases from the file
            // until claims note them again.
            self.leases.by_delivery.clear();
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
        self.recent.apply(&mut fx);
        if fx.declared {
            self.shared.set_subscriptions(self.subs.clone());
        }
        // Many publishes of one group are due at the same millisecond: one wakeup says it.
        for w in fx.wakeups {
            if !wakeups.contains(&w) {
                wakeups.push(w);
            }
        }
        Ok(results)
    }

    /// Applies a run of publishes or of completions as one, and splits the answers per command.
    fn apply_run(
        &mut self,
        run: &[Command],
        counts: &mut Counts,
        fx: &mut Effects,
    ) -> rusqlite::Result<Vec<Result<Reply, StoreError>>> {
        let mut lens = Vec::with_capacity(run.len());
        let mut latest = Timestamp::EPOCH;
        match &run[0] {
            Command::Publish { .. } => {
                let mut all: Vec<&Event> = Vec::new();
                for c in run {
                    if let Command::Publish { events, now } = c {
                        all.extend(events.iter());
                        lens.push(events.len());
                        latest = latest.max(*now);
                    }
                }
                let mut out = self.publish(&all, latest, counts, fx)?.into_iter();
                Ok(lens
                    .into_iter()
                    .map(|n| Ok(Reply::Published(out.by_ref().take(n).collect())))
                    .collect())
            }
            _ => {
                let mut all: Vec<&Outcome> = Vec::new();
                for c in run {
                    if let Command::Complete { outcomes, now } = c {
                        all.extend(outcomes.iter());
                        lens.push(outcomes.len());
                        latest = latest.max(*now);
                    }
                }
                let mut out = self.complete(&all, latest, counts, fx)?.into_iter();
                Ok(lens
                    .into_iter()
                    .map(|n| Ok(Reply::Completed(out.by_ref().take(n).collect())))
                    .collect())
            }
        }
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
            Command::Remove { name, now } => {
                fx.declared = true;
                Reply::Removed(self.remove_subscription(name, *now, counts)?)
            }
            Command::Publish { events, now } => {
                let events: Vec<&Event> = events.iter().collect();
                Reply::Published(self.publish(&events, *now, counts, fx)?)
            }
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
            Command::Complete { outcomes, now } => {
                let outcomes: Vec<&Outcome> = outcomes.iter().collect();
                Reply::Completed(self.complete(&outcomes, *now, counts, fx)?)
            }
            Command::Cancel { id, to, now } => Reply::Cancelled(self.cancel(*id, *to, *now, counts)?),
            Command::Requeue { id, now } => Reply::Requeued(self.requeue(*id, *now, counts, fx)?),
            Command::Purge { before, max } => {
                fx.purged = true;
                Reply::Purged(self.purge(*before, *max, counts)?)
            }
        }))
    }

    // -----------------------------------------------------------------------------------------
    // Subscriptions and routing

    fn sub_id(&self, name: &SubscriptionName) -> Result<i64, StoreError> {
        self.subs
            .iter()
            .find(|s| &s.name == name && !s.removed)
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
                 ON CONFLICT (name) DO UPDATE SET pattern = excluded.pattern, removed = 0 RETURNING id",
            )?
            .query_row((spec.name.as_str(), spec.pattern.as_str()), |r| r.get(0))?;
        match self.subs.iter_mut().find(|s| s.id == id) {
            Some(s) => {
                s.pattern = spec.pattern.clone();
                s.removed = false;
            }
            None => self.subs.push(SubscriptionRow {
                id,
                name: spec.name.clone(),
                pattern: spec.pattern.clone(),
                removed: false,
            }),
        }
        self.routes.clear();
        Ok(())
    }

    /// Marks the subscription removed (its row stays, so that its deliveries' history keeps its
    /// name) and cancels its unfinished deliveries, leased ones too: their leases no longer hold,
    /// so their outcomes are stale. An attempt that was running stays in the history unfinished,
    /// as it is when its worker never reports. Returns how many deliveries were cancelled.
    fn remove_subscription(
        &mut self,
        name: &SubscriptionName,
        now: Timestamp,
        counts: &mut Counts,
    ) -> rusqlite::Result<u64> {
        let Some(sub) = self.subs.iter_mut().find(|s| &s.name == name && !s.removed) else {
            return Ok(0);
        };
        sub.removed = true;
        let id = sub.id;
        self.routes.clear();
        self.conn
            .prepare_cached("UPDATE subscriptions SET removed = 1 WHERE id = ?1")?
            .execute([id])?;
        // One statement per status set, so that each walks the partial index that holds it.
        let mut ended: Vec<(i64, i64)> = Vec::new();
        for sql in [
            "UPDATE deliveries SET claimed_from = status, status = 3
              WHERE sub = ?1 AND status BETWEEN 5 AND 7 RETURNING event, claimed_from, id, attempts, started_at",
            "UPDATE deliveries SET claimed_from = status, status = 3
              WHERE sub = ?1 AND status = 8 RETURNING event, claimed_from, id, attempts, started_at",
        ] {
            let rows = self
                .conn
                .prepare_cached(sql)?
                .query_map([id], |r| {
                    Ok((r.get(0)?, r.get(1)?, codec::delivery_id(r, 2)?, r.get(3)?, r.get(4)?))
                })?
                .collect::<rusqlite::Result<Vec<(i64, i64, DeliveryId, u32, Option<i64>)>>>()?;
            for (event, from, delivery, number, started) in rows {
                if from == status::ACTIVE {
                    self.leases.forget(delivery);
                    // The running attempt stays in the history, unfinished.
                    self.conn
                        .prepare_cached(
                            "INSERT OR REPLACE INTO attempts (delivery, number, started_at) VALUES (?1, ?2, ?3)",
                        )?
                        .execute((
                            &delivery.as_uuid().as_bytes()[..],
                            number,
                            started.unwrap_or(now.as_millis()),
                        ))?;
                }
                ended.push((event, from));
            }
        }
        for &(_, from) in &ended {
            counts.shift(from, status::CANCELLED);
        }
        let mut events: Vec<i64> = ended.iter().map(|&(e, _)| e).collect();
        events.sort_unstable();
        events.dedup();
        for seq in events {
            self.refresh_event(seq, now)?;
        }
        Ok(ended.len() as u64)
    }

    fn route(&mut self, topic: &Topic) -> Arc<[i64]> {
        if let Some(r) = self.routes.get(topic) {
            return r.clone();
        }
        let matched: Arc<[i64]> = self
            .subs
            .iter()
            .filter(|s| !s.removed && s.pattern.matches(topic))
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
        events: &[&Event],
        now: Timestamp,
        counts: &mut Counts,
        fx: &mut Effects,
    ) -> rusqlite::Result<Vec<Published>> {
        let routes: Vec<Arc<[i64]>> = events.iter().map(|e| self.route(e.topic())).collect();
        // The events, a chunk of rows per statement. A row whose id or key is taken is skipped
        // (`OR IGNORE`). SQLite numbers the rows a statement stores one after the other, each
        // `seq` one more than the largest so far, so the `n` rows stored end at the last insert
        // rowid: when the whole chunk was stored, its seqs follow its order; otherwise the stored
        // ones are read back by that range. (`RETURNING` would copy every row through a
        // temporary b-tree.)
        // Each event's seq, in the order of `events`; `None` for one not stored.
        let mut seqs: Vec<Option<i64>> = Vec::with_capacity(events.len());
        let mut at = 0;
        for chunk in chunks(events) {
            let sql = values_sql(
                "INSERT OR IGNORE INTO events (id, topic, payload, content_type, source, headers, priority,
                     published_at, deliver_at, expires_at, key, reply_to, status, finished_at, open) VALUES ",
                "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                chunk.len(),
                "",
            );
            let mut stmt = self.conn.prepare_cached(&sql)?;
            let mut p = 0;
            for (event, routes) in chunk.iter().zip(&routes[at..]) {
                let unrouted = routes.is_empty();
                let content_type = Some(event.content_type()).filter(|c| *c != herald_core::JSON);
                stmt.raw_bind_parameter(p + 1, &event.id().as_uuid().as_bytes()[..])?;
                stmt.raw_bind_parameter(p + 2, event.topic().as_str())?;
                stmt.raw_bind_parameter(p + 3, event.payload())?;
                bind_some(&mut stmt, p + 4, content_type)?;
                bind_some(&mut stmt, p + 5, event.source())?;
                bind_some(&mut stmt, p + 6, codec::headers_text(event.headers()))?;
                stmt.raw_bind_parameter(p + 7, event.priority().get())?;
                stmt.raw_bind_parameter(p + 8, event.published_at().as_millis())?;
                stmt.raw_bind_parameter(p + 9, event.deliver_at().as_millis())?;
                bind_some(&mut stmt, p + 10, event.expires_at().map(Timestamp::as_millis))?;
                bind_some(&mut stmt, p + 11, event.key())?;
                bind_some(&mut stmt, p + 12, event.reply_to())?;
                stmt.raw_bind_parameter(p + 13, if unrouted { status::UNROUTED } else { status::OPEN })?;
                bind_some(&mut stmt, p + 14, unrouted.then_some(now.as_millis()))?;
                stmt.raw_bind_parameter(p + 15, routes.len() as i64)?;
                p += 15;
            }
            let n = stmt.raw_execute()?;
            drop(stmt);
            let last = self.conn.last_insert_rowid();
            if n == chunk.len() {
                seqs.extend((last + 1 - n as i64..).take(n).map(Some));
            } else {
                let mut stored: HashMap<EventId, i64> = HashMap::with_capacity(n);
                if n > 0 {
                    let mut read = self
                        .conn
                        .prepare_cached("SELECT seq, id FROM events WHERE seq BETWEEN ?1 AND ?2")?;
                    let mut rows = read.query((last + 1 - n as i64, last))?;
                    while let Some(r) = rows.next()? {
                        stored.insert(codec::event_id(r, 1)?, r.get(0)?);
                    }
                }
                // Taken out once matched: the same event twice in a chunk was stored once.
                seqs.extend(chunk.iter().map(|e| stored.remove(&e.id())));
            }
            at += chunk.len();
        }
        let mut out = Vec::with_capacity(events.len());
        let mut deliveries: Vec<NewDelivery> = Vec::with_capacity(events.len());
        // The earliest due now and the earliest ahead, both announced: "due now" alone would hide
        // the later time from a timer with nothing else to wait for.
        let (mut earliest_now, mut earliest_ahead): (Option<Timestamp>, Option<Timestamp>) = (None, None);
        for ((event, routes), seq) in events.iter().zip(&routes).zip(seqs) {
            let Some(seq) = seq else {
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
            };
            let due = event.deliver_at();
            let code = if due <= now { status::PENDING } else { status::SCHEDULED };
            if code == status::PENDING && !routes.is_empty() {
                fx.published.push((seq, (*event).clone()));
            }
            for &sub in routes.iter() {
                deliveries.push(NewDelivery {
                    event: seq,
                    sub,
                    status: code,
                    source: event,
                });
            }
            counts.events += 1;
            if routes.is_empty() {
                counts.unrouted += 1;
            } else {
                counts.add(code, routes.len() as i64);
                let slot = if code == status::PENDING {
                    &mut earliest_now
                } else {
                    &mut earliest_ahead
                };
                *slot = Some(slot.map_or(due, |e| e.min(due)));
            }
            out.push(Published::Stored {
                id: event.id(),
                deliveries: u32::try_from(routes.len()).unwrap_or(u32::MAX),
            });
        }
        for chunk in chunks(&deliveries) {
            let sql = values_sql(
                "INSERT OR FAIL INTO deliveries (id, event, sub, status, priority, due, expires_at) VALUES ",
                "(?, ?, ?, ?, ?, ?, ?)",
                chunk.len(),
                "",
            );
            let mut stmt = self.conn.prepare_cached(&sql)?;
            let mut p = 0;
            for d in chunk {
                stmt.raw_bind_parameter(p + 1, &DeliveryId::new().as_uuid().as_bytes()[..])?;
                stmt.raw_bind_parameter(p + 2, d.event)?;
                stmt.raw_bind_parameter(p + 3, d.sub)?;
                stmt.raw_bind_parameter(p + 4, d.status)?;
                stmt.raw_bind_parameter(p + 5, d.source.priority().get())?;
                stmt.raw_bind_parameter(p + 6, d.source.deliver_at().as_millis())?;
                bind_some(&mut stmt, p + 7, d.source.expires_at().map(Timestamp::as_millis))?;
                p += 7;
            }
            stmt.raw_execute()?;
        }
        fx.wakeups
            .extend([earliest_now, earliest_ahead].into_iter().flatten().map(Wakeup::Due));
        Ok(out)
    }

    // -----------------------------------------------------------------------------------------
    // Claim, extend, complete

    /// Reads the deliveries of `sub` a claim of `max` may take, best first: the leases that ran
    /// out, then one index range per priority, highest first, each up to what is still missing,
    /// stopping once `max` are found (most claims read one range). Then each is leased by its
    /// key. Selecting and updating apart, inside the writer's transaction, leaves SQLite nothing
    /// to sort or to hold in temporary tables, as a single `UPDATE .. WHERE id IN (SELECT ..)
    /// RETURNING ..` had to.
    fn claim_candidates(&self, sub: i64, max: usize, now: Timestamp) -> rusqlite::Result<Vec<Candidate>> {
        let read = |r: &rusqlite::Row<'_>| -> rusqlite::Result<Candidate> {
            Ok(Candidate {
                id: codec::delivery_id(r, 0)?,
                event: r.get(1)?,
                from: r.get(2)?,
                attempts: r.get(3)?,
                token: r.get(4)?,
                due: codec::ts(r, 5)?,
                priority: r.get(6)?,
                started_at: r.get(7)?,
            })
        };
        let limit = i64::try_from(max).unwrap_or(i64::MAX);
        let mut found: Vec<Candidate> = self
            .conn
            .prepare_cached(CLAIM_LEASED)?
            .query_map((sub, now.as_millis(), limit), read)?
            .collect::<rusqlite::Result<_>>()?;
        let lost = found.len();
        // The ranges start at the highest priority anything waits at (one seek to the end of the
        // subscription's part of the index), not at 10: most deliveries have one priority, and
        // each empty range read costs a statement.
        let top: Option<u8> = self.conn.prepare_cached(CLAIM_TOP)?.query_row([sub], |r| r.get(0))?;
        let Some(top) = top else {
            return Ok(found);
        };
        let mut leg = self.conn.prepare_cached(CLAIM_WAITING)?;
        for priority in (0..=top.min(10)).rev() {
            let missing = max - (found.len() - lost);
            if missing == 0 {
                break;
            }
            let rows = leg.query_map(
                (
                    sub,
                    now.as_millis(),
                    i64::try_from(missing).unwrap_or(i64::MAX),
                    priority,
                ),
                read,
            )?;
            for r in rows {
                found.push(r?);
            }
        }
        if lost > 0 {
            found.sort_by_key(|c| (std::cmp::Reverse(c.priority), c.due));
            found.truncate(max);
        }
        Ok(found)
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
        let rows = self.claim_candidates(sub, max, now)?;
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        // Leased a chunk of rows per statement, listed by key: each one's attempt and token go up
        // by one from what was just read in this transaction. (SQLite updates the rows of an
        // `IN` list of parameters on the primary key in one pass; an `IN rarray(..)` list would be
        // copied into a temporary b-tree first, and a statement per row costs several times more.)
        for chunk in list_chunks(&rows) {
            let mut stmt = self.conn.prepare_cached(&lease_sql(chunk.len()))?;
            stmt.raw_bind_parameter(1, lease_until.as_millis())?;
            stmt.raw_bind_parameter(2, now.as_millis())?;
            for (i, c) in chunk.iter().enumerate() {
                stmt.raw_bind_parameter(i + 3, &c.id.as_uuid().as_bytes()[..])?;
            }
            let leased = stmt.raw_execute()?;
            if leased != chunk.len() {
                // Each was read as claimable in this transaction: the file says otherwise.
                return Err(rusqlite::Error::StatementChangedRows(leased));
            }
        }
        // The claimed deliveries' events, from the recent ones or in one statement.
        let mut events: HashMap<i64, Event, Ids> = HashMap::with_capacity_and_hasher(rows.len(), Ids::default());
        for r in &rows {
            if let Some(e) = self.recent.get(r.event) {
                events.insert(r.event, e.clone());
            }
        }
        let missing: Vec<Value> = rows
            .iter()
            .filter(|r| !events.contains_key(&r.event))
            .map(|r| Value::Integer(r.event))
            .collect();
        if !missing.is_empty() {
            let seqs: Array = Rc::new(missing);
            let mut stmt = self
                .conn
                .prepare_cached(&format!("SELECT {EVENT_COLUMNS} FROM events WHERE seq IN rarray(?1)"))?;
            let mut found = stmt.query([seqs])?;
            while let Some(r) = found.next()? {
                events.insert(r.get(0)?, event_from_row(r, 0)?);
            }
        }
        let mut out = Vec::with_capacity(rows.len());
        for c in rows {
            counts.shift(c.from, status::ACTIVE);
            if c.from == status::ACTIVE {
                self.close_lost_attempt(c.id, c.attempts, c.started_at, now)?;
            }
            // One delivery per event and subscription: each event is claimed once here.
            let event = events.remove(&c.event).ok_or(rusqlite::Error::QueryReturnedNoRows)?;
            self.leases.note(
                c.id,
                Leased {
                    token: c.token + 1,
                    event: c.event,
                    attempt: c.attempts + 1,
                    due: c.due,
                    request: Some(event.reply_to().is_some().then(|| event.id())),
                    started_at: Some(now.as_millis()),
                },
            );
            out.push(Claimed::new(
                Lease {
                    delivery: c.id,
                    token: (c.token + 1).unsigned_abs(),
                },
                lease_until,
                name.clone(),
                event,
                c.attempts + 1,
                c.due,
            ));
        }
        Ok(out)
    }

    /// Ends as expired the claimable deliveries of `sub` whose event expired: a claim skips them.
    fn expire_claimable(&mut self, sub: i64, now: Timestamp, counts: &mut Counts) -> rusqlite::Result<()> {
        // Most claims find nothing expired: a read says so for much less than the update, which
        // prepares its `RETURNING` rows and opens every index of the table.
        let any: Option<i64> = self
            .conn
            .prepare_cached(
                "SELECT 1 FROM deliveries
                  WHERE sub = ?1 AND expires_at IS NOT NULL AND status >= 5 AND expires_at <= ?2 LIMIT 1",
            )?
            .query_row((sub, now.as_millis()), |r| r.get(0))
            .optional()?;
        if any.is_none() {
            return Ok(());
        }
        let rows: Vec<(DeliveryId, i64, i64, u32, Option<i64>)> = self
            .conn
            .prepare_cached(
                "UPDATE deliveries SET claimed_from = status, status = 2
                  WHERE sub = ?1 AND expires_at IS NOT NULL AND status >= 5 AND expires_at <= ?2
                    AND ((status BETWEEN 5 AND 7 AND due <= ?2) OR (status = 8 AND lease_until <= ?2))
                  RETURNING id, event, claimed_from, attempts, started_at",
            )?
            .query_map((sub, now.as_millis()), |r| {
                Ok((codec::delivery_id(r, 0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })?
            .collect::<rusqlite::Result<_>>()?;
        for (delivery, event, from, attempts, started) in rows {
            counts.shift(from, status::EXPIRED);
            if from == status::ACTIVE {
                self.leases.forget(delivery);
                self.close_lost_attempt(delivery, attempts, started, now)?;
            }
            self.refresh_event(event, now)?;
        }
        Ok(())
    }

    /// Records that attempt `number` of `delivery`, started at `started` (if known), ended when its
    /// lease ran out, at `now`.
    fn close_lost_attempt(
        &self,
        delivery: DeliveryId,
        number: u32,
        started: Option<i64>,
        now: Timestamp,
    ) -> rusqlite::Result<()> {
        self.conn
            .prepare_cached(
                "INSERT OR REPLACE INTO attempts (delivery, number, started_at, finished_at, outcome, error)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(rusqlite::params![
                delivery.as_uuid().as_bytes(),
                number,
                started.unwrap_or(now.as_millis()),
                now.as_millis(),
                outcome::LEASE_EXPIRED,
                LEASE_RAN_OUT
            ])?;
        Ok(())
    }

    /// After deliveries of the event `seq` finished or reopened other than by an outcome (cancel,
    /// requeue, expiry, a removed subscription): its roll-up read again from its deliveries. The
    /// event is open while any delivery is; once all are finished, its status is their roll-up and
    /// `finished_at` says when.
    fn refresh_event(&self, seq: i64, now: Timestamp) -> rusqlite::Result<()> {
        self.conn
            .prepare_cached(
                "UPDATE events SET (status, finished_at, open, worst) = (
                    SELECT CASE WHEN m <= 4 THEN m ELSE 9 END, CASE WHEN m <= 4 THEN COALESCE(finished_at, ?2) END, o, w
                      FROM (SELECT COALESCE(MAX(status), 0) AS m, COALESCE(SUM(status >= 5), 0) AS o,
                                   COALESCE(MAX(CASE WHEN status <= 4 THEN status END), 0) AS w
                              FROM deliveries WHERE event = ?1))
                  WHERE seq = ?1",
            )?
            .execute((seq, now.as_millis()))?;
        Ok(())
    }

    /// Rolls up the events of deliveries that finished by an outcome, without reading their other
    /// deliveries: `ended` holds each finished delivery's event and status code. An event whose
    /// open count reaches 0 finishes with the highest code of its finished deliveries.
    fn roll_up(&self, mut ended: Vec<(i64, i64)>, now: Timestamp) -> rusqlite::Result<()> {
        ended.sort_unstable();
        // One row per event: how many of its deliveries finished, and their highest code.
        let mut per_event: Vec<(i64, i64, i64)> = Vec::with_capacity(ended.len());
        for (seq, code) in ended {
            match per_event.last_mut() {
                Some(last) if last.0 == seq => {
                    last.1 += 1;
                    last.2 = last.2.max(code);
                }
                _ => per_event.push((seq, 1, code)),
            }
        }
        // One statement per (count, code) pair and chunk of events listed by `seq`, usually one
        // pair for the whole run (each event had one delivery, which succeeded). A list of
        // parameters on the key is updated in one pass (an `IN rarray(..)` list was copied into a
        // temporary b-tree first), and costs much less than a statement per event.
        per_event.sort_unstable_by_key(|&(seq, n, code)| (n, code, seq));
        for group in per_event.chunk_by(|a, b| (a.1, a.2) == (b.1, b.2)) {
            for chunk in list_chunks(group) {
                let mut stmt = self.conn.prepare_cached(&roll_up_sql(chunk.len()))?;
                stmt.raw_bind_parameter(1, chunk[0].1)?;
                stmt.raw_bind_parameter(2, chunk[0].2)?;
                stmt.raw_bind_parameter(3, now.as_millis())?;
                for (i, &(seq, _, _)) in chunk.iter().enumerate() {
                    stmt.raw_bind_parameter(i + 4, seq)?;
                }
                stmt.raw_execute()?;
            }
        }
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
        outcomes: &[&Outcome],
        now: Timestamp,
        counts: &mut Counts,
        fx: &mut Effects,
    ) -> rusqlite::Result<Vec<Completion>> {
        // The leases the claims noted; the others are read, in one statement.
        let mut leased: HashMap<DeliveryId, Leased, Ids> =
            HashMap::with_capacity_and_hasher(outcomes.len(), Ids::default());
        let mut unread: Vec<Value> = Vec::new();
        for o in outcomes {
            let token = i64::try_from(o.lease.token).unwrap_or(-1);
            match self.leases.take(o.lease.delivery, token) {
                Some(l) => {
                    leased.insert(o.lease.delivery, l);
                }
                None => unread.push(Value::Blob(o.lease.delivery.as_uuid().as_bytes().to_vec())),
            }
        }
        // Whose events asked for an answer, for the leases read.
        let mut unknown: Vec<Value> = Vec::new();
        if !unread.is_empty() {
            let ids: Array = Rc::new(unread);
            let mut stmt = self.conn.prepare_cached(
                "SELECT id, token, event, attempts, due, started_at FROM deliveries
                  WHERE id IN rarray(?1) AND status = 8",
            )?;
            let mut rows = stmt.query([ids])?;
            while let Some(r) = rows.next()? {
                let id = codec::delivery_id(r, 0)?;
                let event: i64 = r.get(2)?;
                unknown.push(Value::Integer(event));
                leased.entry(id).or_insert(Leased {
                    token: r.get::<_, i64>(1)?,
                    event,
                    attempt: r.get(3)?,
                    due: codec::ts(r, 4)?,
                    request: None,
                    started_at: r.get(5)?,
                });
            }
        }
        if !unknown.is_empty() {
            let mut asked: HashMap<i64, Option<EventId>> = HashMap::with_capacity(unknown.len());
            let seqs: Array = Rc::new(unknown);
            let mut stmt = self
                .conn
                .prepare_cached("SELECT seq, id, reply_to IS NOT NULL FROM events WHERE seq IN rarray(?1)")?;
            let mut rows = stmt.query([seqs])?;
            while let Some(r) = rows.next()? {
                let id = codec::event_id(r, 1)?;
                asked.insert(r.get(0)?, r.get::<_, bool>(2)?.then_some(id));
            }
            for l in leased.values_mut() {
                if l.request.is_none() {
                    l.request = Some(asked.get(&l.event).copied().flatten());
                }
            }
        }
        let mut out = Vec::with_capacity(outcomes.len());
        // Successes without a reply (the common outcome): the delivery and when it ended.
        let mut plain: Vec<(DeliveryId, i64)> = Vec::with_capacity(outcomes.len());
        let mut finished: Vec<Finish<'_>> = Vec::with_capacity(outcomes.len());
        let mut ended_events: Vec<(i64, i64)> = Vec::new();
        // Each delivery moves by its key, guarded by its lease (see [`Leases`]): a multi-row
        // `UPDATE .. FROM (VALUES ..)` would first copy the rows into a temporary table. A
        // delivery whose attempt succeeded keeps that attempt's end (its start is there since the
        // claim).
        let mut finish = self.conn.prepare_cached(
            "UPDATE OR FAIL deliveries SET status = ?3, due = COALESCE(?4, due), last_error = COALESCE(?5, last_error),
                 reply = COALESCE(?6, reply), finished_at = ?7
              WHERE id = ?1 AND status = 8 AND token = ?2",
        )?;
        // A released attempt is not recorded: it never had a row, and its number is given back.
        let mut release = self.conn.prepare_cached(
            "UPDATE deliveries SET status = 6, attempts = attempts - 1, started_at = NULL
              WHERE id = ?1 AND status = 8 AND token = ?2",
        )?;
        for o in outcomes {
            let token = i64::try_from(o.lease.token).unwrap_or(-1);
            // Taken out once applied: a second outcome for the same lease is stale.
            if leased.get(&o.lease.delivery).is_none_or(|l| l.token != token) {
                out.push(Completion::Stale);
                continue;
            }
            let Some(l) = leased.remove(&o.lease.delivery) else {
                out.push(Completion::Stale);
                continue;
            };
            let id_bytes = *o.lease.delivery.as_uuid().as_bytes();
            let id = &id_bytes[..];
            let mut f = Finish {
                attempt: l.attempt,
                started_at: l.started_at.unwrap_or(now.as_millis()),
                finished_at: o.finished_at,
                outcome: outcome::SUCCEEDED,
                error: None,
                to: status::SUCCEEDED,
                due: None,
                reply: None,
                id: o.lease.delivery,
            };
            let request = l.request.flatten();
            match &o.verdict {
                Verdict::Succeeded { reply } => f.reply = reply.as_deref(),
                Verdict::Retry { at, error } => {
                    f.outcome = outcome::FAILED;
                    f.error = Some(error);
                    f.to = status::RETRYING;
                    f.due = Some(*at);
                }
                Verdict::Dead { reason } => {
                    f.outcome = outcome::DEAD;
                    f.error = Some(reason);
                    f.to = status::DEAD;
                }
                Verdict::Released => {
                    if release.execute((id, token))? == 0 {
                        out.push(Completion::Stale);
                        continue;
                    }
                    fx.wakeups.push(Wakeup::Due(l.due));
                    counts.shift(status::ACTIVE, status::PENDING);
                    out.push(Completion::Applied);
                    continue;
                }
                // A verdict added to herald-core: leave the delivery leased; the lease runs out
                // and it is attempted again.
                _ => {
                    out.push(Completion::Stale);
                    continue;
                }
            }
            let succeeded = f.outcome == outcome::SUCCEEDED;
            if succeeded && f.reply.is_none() {
                // Moved with the others like it after the loop, all at once.
                plain.push((o.lease.delivery, f.finished_at.as_millis()));
            } else if finish.execute((
                id,
                token,
                f.to,
                f.due.map(Timestamp::as_millis),
                f.error,
                f.reply,
                succeeded.then_some(f.finished_at.as_millis()),
            ))? == 0
            {
                out.push(Completion::Stale);
                continue;
            }
            match (f.to, request) {
                (status::RETRYING, _) => fx.wakeups.extend(f.due.map(Wakeup::Due)),
                (_, Some(event_id)) => fx.wakeups.push(Wakeup::Answered(event_id)),
                _ => {}
            }
            counts.shift(status::ACTIVE, f.to);
            if f.to <= status::DEAD {
                ended_events.push((l.event, f.to));
            }
            finished.push(f);
            out.push(Completion::Applied);
        }
        drop((finish, release));
        // The plain successes, a statement per chunk of those that ended at the same millisecond
        // (a run's outcomes end at a few). Their leases are known to hold (see [`Leases`]): a row
        // not moved means one ended where the writer could not see it, and the whole group is
        // undone and runs again, reading every lease from the file.
        plain.sort_unstable_by_key(|&(_, at)| at);
        for same in plain.chunk_by(|a, b| a.1 == b.1) {
            for chunk in list_chunks(same) {
                let mut stmt = self.conn.prepare_cached(&succeed_sql(chunk.len()))?;
                stmt.raw_bind_parameter(1, chunk[0].1)?;
                for (i, (id, _)) in chunk.iter().enumerate() {
                    stmt.raw_bind_parameter(i + 2, &id.as_uuid().as_bytes()[..])?;
                }
                let moved = stmt.raw_execute()?;
                if moved != chunk.len() {
                    self.lease_missed = true;
                    return Err(rusqlite::Error::StatementChangedRows(moved));
                }
            }
        }
        // A succeeded attempt stays in its delivery (`started_at`, `finished_at`): only the others
        // get a row.
        let recorded: Vec<&Finish<'_>> = finished.iter().filter(|f| f.outcome != outcome::SUCCEEDED).collect();
        for chunk in chunks(&recorded) {
            self.finish_attempts(chunk)?;
        }
        self.roll_up(ended_events, now)?;
        Ok(out)
    }

    /// Records the attempts of `chunk`, ended, in one statement (an attempt's row is written once,
    /// when it ends).
    fn finish_attempts(&self, chunk: &[&Finish<'_>]) -> rusqlite::Result<()> {
        let sql = values_sql(
            "INSERT OR FAIL INTO attempts (delivery, number, started_at, finished_at, outcome, error) VALUES ",
            "(?, ?, ?, ?, ?, ?)",
            chunk.len(),
            " ON CONFLICT (delivery, number) DO UPDATE SET started_at = excluded.started_at,
                 finished_at = excluded.finished_at, outcome = excluded.outcome, error = excluded.error",
        );
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let mut i = 0;
        for f in chunk {
            stmt.raw_bind_parameter(i + 1, &f.id.as_uuid().as_bytes()[..])?;
            stmt.raw_bind_parameter(i + 2, f.attempt)?;
            stmt.raw_bind_parameter(i + 3, f.started_at)?;
            stmt.raw_bind_parameter(i + 4, f.finished_at.as_millis())?;
            stmt.raw_bind_parameter(i + 5, f.outcome)?;
            stmt.raw_bind_parameter(i + 6, f.error)?;
            i += 6;
        }
        stmt.raw_execute()?;
        Ok(())
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
                  WHERE event = ?1 AND status BETWEEN 5 AND 7 RETURNING claimed_from",
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

/// The leases of `?1` that ran out by `?2`, the best `?3` by priority then due time: their
/// deliveries are claimed again. (Few at a time: sorting them costs nothing.)
const CLAIM_LEASED: &str = "SELECT id, event, status, attempts, token, due, priority, started_at FROM deliveries
     WHERE sub = ?1 AND status = 8 AND lease_until <= ?2 AND (expires_at IS NULL OR expires_at > ?2)
     ORDER BY priority DESC, due LIMIT ?3";

/// The highest priority of a delivery of `?1` waiting (due or not), `NULL` if none waits.
const CLAIM_TOP: &str = "SELECT MAX(priority) FROM deliveries WHERE sub = ?1 AND status BETWEEN 5 AND 7";

/// The deliveries of `?1` at priority `?4` waiting and due by `?2`, oldest due first, up to `?3`.
///
/// It reads `deliveries_waiting` alone (a covering index): `started_at`, which only a claim again
/// of a lost lease needs, is not read.
const CLAIM_WAITING: &str = "SELECT id, event, status, attempts, token, due, priority, NULL FROM deliveries
     WHERE sub = ?1 AND status BETWEEN 5 AND 7 AND priority = ?4 AND due <= ?2
       AND (expires_at IS NULL OR expires_at > ?2)
     ORDER BY due LIMIT ?3";

/// A delivery a claim may take, as read before it is leased.
struct Candidate {
    id: DeliveryId,
    event: i64,
    /// Its status before the claim.
    from: i64,
    /// Attempts made before this claim.
    attempts: u32,
    token: i64,
    due: Timestamp,
    priority: u8,
    /// When the attempt whose lease ran out started, for a delivery claimed again.
    started_at: Option<i64>,
}

/// A delivery a publish stores.
struct NewDelivery<'a> {
    event: i64,
    sub: i64,
    status: i64,
    source: &'a Event,
}

/// A committed part: its answers, and the wakeups to send with them.
struct Done {
    answers: Vec<(ReplyTo, Result<Reply, StoreError>)>,
    wakeups: Vec<Wakeup>,
    /// Whether the part must be on disk before it is answered (anything but claims and lease
    /// extensions).
    sync: bool,
}

/// The sync thread: takes every part committed since its last sync, syncs the log once for all
/// of them if any needs it, then sends their wakeups and answers them, in commit order.
///
/// The writer commits with `synchronous = NORMAL` (SQLite then syncs only at checkpoints) and
/// this thread syncs the log file itself: the same guarantee as `FULL` for everything answered
/// (nothing is answered, nor woken for, before the log holding it is on disk, and a commit cannot
/// survive without the commits before it), while the writer goes on with the next group during
/// the sync instead of waiting for it.
fn sync_loop(rx: Receiver<Done>, wal: PathBuf, shared: Arc<Shared>) {
    let mut log: Option<File> = None;
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        // No waiting for the group the writer may be committing now: it goes in the next sync. On
        // a fast disk, waiting to cover it too held this group's answers back for that group's
        // whole commit, and publishers waiting for their answers publish nothing meanwhile
        // (removing the wait: publish@64 0.43-0.45 -> 0.49-0.51 of the baseline, claim_ack
        // 0.33-0.37 -> 0.36-0.42, interleaved runs at 165-178k/s baselines).
        let synced = if batch.iter().any(|d| d.sync) {
            sync_log(&mut log, &wal)
        } else {
            Ok(())
        };
        for done in batch {
            match (&synced, done.sync) {
                (Err(e), true) => {
                    for (reply, _) in done.answers {
                        let _ = reply.send(Err(StoreError::Unavailable {
                            message: format!(
                                "the SQLite store could not sync its log '{}' to disk: {e}",
                                wal.display()
                            ),
                            source: None,
                        }));
                    }
                }
                _ => {
                    // Wakeups first: a caller that looks for them once answered finds them.
                    for w in done.wakeups {
                        shared.wake(w);
                    }
                    for (reply, result) in done.answers {
                        // A caller that stopped waiting does not undo the write.
                        let _ = reply.send(result);
                    }
                }
            }
        }
    }
}

/// Syncs the write-ahead log (opened on first use: SQLite creates it with the first write and
/// keeps it, the same file, while the writer's connection is open).
fn sync_log(log: &mut Option<File>, wal: &PathBuf) -> std::io::Result<()> {
    let file = match log {
        Some(f) => f,
        None => match File::open(wal) {
            Ok(f) => log.insert(f),
            // No log yet: nothing has been written since the file was opened.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        },
    };
    file.sync_data()
}

/// A leased delivery an outcome names, as the file holds it.
struct Leased {
    token: i64,
    event: i64,
    attempt: u32,
    due: Timestamp,
    /// The event's id if it is a request (has `reply_to`), `None` if not; unknown (the outer
    /// `None`) until read.
    request: Option<Option<EventId>>,
    /// When the running attempt started (unknown only in a damaged file).
    started_at: Option<i64>,
}

/// How one attempt ended and where its delivery goes.
struct Finish<'a> {
    id: DeliveryId,
    attempt: u32,
    started_at: i64,
    finished_at: Timestamp,
    outcome: i64,
    error: Option<&'a str>,
    to: i64,
    due: Option<Timestamp>,
    reply: Option<&'a [u8]>,
}

/// The row counts multi-row statements are prepared for: a run of rows goes in chunks of these
/// sizes, largest first, so that a few prepared shapes serve every length (powers of two: a run
/// of up to 63 rows takes at most six statements).
const CHUNKS: [usize; 6] = [32, 16, 8, 4, 2, 1];

/// Splits `rows` into chunks of the sizes in [`CHUNKS`].
fn chunks<T>(mut rows: &[T]) -> impl Iterator<Item = &[T]> {
    std::iter::from_fn(move || {
        let size = CHUNKS.iter().copied().find(|&c| c <= rows.len())?;
        let (chunk, rest) = rows.split_at(size);
        rows = rest;
        Some(chunk)
    })
}

/// The claim's update of `n` deliveries, listed by id after the lease's end (`?1`) and the
/// attempt's start (`?2`).
pub(crate) fn lease_sql(n: usize) -> String {
    values_sql(
        "UPDATE OR FAIL deliveries
            SET claimed_from = status, status = 8, attempts = attempts + 1, token = token + 1,
                lease_until = ?1, started_at = ?2
          WHERE id IN (",
        "?",
        n,
        ")",
    )
}

/// The roll-up of `n` events listed by `seq`, each of which had `?1` deliveries finish, the
/// highest with code `?2`, at `?3`: one pass over the rows (as [`lease_sql`]).
pub(crate) fn roll_up_sql(n: usize) -> String {
    values_sql(
        "UPDATE OR FAIL events SET open = open - ?1, worst = MAX(worst, ?2),
             status = CASE WHEN open > ?1 THEN status ELSE MAX(worst, ?2) END,
             finished_at = CASE WHEN open > ?1 THEN finished_at ELSE COALESCE(finished_at, ?3) END
           WHERE seq IN (",
        "?",
        n,
        ")",
    )
}

/// The update of `n` deliveries whose attempts succeeded without a reply, all at the same time
/// (`?1`), listed by id: one pass over the rows (as [`lease_sql`]).
pub(crate) fn succeed_sql(n: usize) -> String {
    values_sql(
        "UPDATE OR FAIL deliveries SET status = 1, finished_at = ?1 WHERE status = 8 AND id IN (",
        "?",
        n,
        ")",
    )
}

/// The longest `IN (?, ..)` list of a multi-row update.
const MAX_LIST: usize = 32;

/// The shortest `IN (?, ..)` list of a multi-row update: SQLite copies a list of two or more into
/// a temporary b-tree, which costs about as much as a few statements of one row each (under
/// callgrind), so fewer rows go one by one (`IN (?)` being an equality).
const MIN_LIST: usize = 6;

/// Splits `rows` into lists of [`MAX_LIST`] rows, then one of what is left if that is at least
/// [`MIN_LIST`] rows, else single rows. A statement is prepared for each length in use.
fn list_chunks<T>(mut rows: &[T]) -> impl Iterator<Item = &[T]> {
    std::iter::from_fn(move || {
        let size = match rows.len() {
            0 => return None,
            n if n >= MIN_LIST => n.min(MAX_LIST),
            _ => 1,
        };
        let (chunk, rest) = rows.split_at(size);
        rows = rest;
        Some(chunk)
    })
}

/// Binds `value` to parameter `i` of `stmt` unless it is `None`: a statement taken from the cache
/// has all its parameters `NULL` (rusqlite clears them when it is put back), and binding the
/// `NULL`s of the many optional columns of a multi-row insert again cost about a thousand writer
/// instructions per event under callgrind.
fn bind_some<T: rusqlite::ToSql>(
    stmt: &mut rusqlite::CachedStatement<'_>,
    i: usize,
    value: Option<T>,
) -> rusqlite::Result<()> {
    match value {
        Some(v) => stmt.raw_bind_parameter(i, v),
        None => Ok(()),
    }
}

/// `head`, then `row` `n` times separated by commas, then `tail`.
fn values_sql(head: &str, row: &str, n: usize, tail: &str) -> String {
    let mut sql = String::with_capacity(head.len() + (row.len() + 1) * n + tail.len());
    sql.push_str(head);
    for i in 0..n {
        if i > 0 {
            sql.push(',');
        }
        sql.push_str(row);
    }
    sql.push_str(tail);
    sql
}

#[cfg(test)]
pub(crate) const CLAIM_SQL_FOR_TESTS: [&str; 3] = [CLAIM_LEASED, CLAIM_WAITING, CLAIM_TOP];

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

#[cfg(test)]
mod tests {
    use super::*;

    fn lengths(n: usize) -> Vec<usize> {
        let rows = vec![0u8; n];
        list_chunks(&rows).map(<[u8]>::len).collect()
    }

    #[test]
    fn lists_are_long_or_single_rows() {
        assert_eq!(lengths(0), Vec::<usize>::new());
        assert_eq!(lengths(3), vec![1, 1, 1]);
        assert_eq!(lengths(MIN_LIST), vec![MIN_LIST]);
        assert_eq!(lengths(29), vec![29]);
        assert_eq!(lengths(70), vec![32, 32, 6]);
        assert_eq!(lengths(34), vec![32, 1, 1]);
    }
}
