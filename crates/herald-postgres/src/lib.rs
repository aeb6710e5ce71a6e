//! herald-postgres: the PostgreSQL store for herald. Any number of processes share one database
//! and behave as one system.
//!
//! ```no_run
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), herald_core::Error> {
//! use herald_core::Herald;
//! use herald_postgres::PostgresBuilderExt;
//!
//! let herald = Herald::builder().postgres("postgres://herald@127.0.0.1/app").build().await?;
//! # herald.shutdown(std::time::Duration::from_secs(1)).await; Ok(()) }
//! ```
//!
//! With options, build the store first:
//!
//! ```no_run
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use herald_core::Herald;
//! use herald_postgres::PostgresStore;
//!
//! let store = PostgresStore::builder("postgres://herald@127.0.0.1/app")
//!     .schema("billing_events")
//!     .pool_size(32)
//!     .connect()
//!     .await?;
//! let herald = Herald::builder().store(store).build().await?;
//! # herald.shutdown(std::time::Duration::from_secs(1)).await; Ok(()) }
//! ```
//!
//! # What it guarantees
//! - **Durable**: a publish returns once PostgreSQL committed it (with the server's
//!   `synchronous_commit`); so do outcomes, cancels and requeues.
//! - **One handler at a time per delivery, across nodes**: a claim leases deliveries with
//!   `FOR UPDATE SKIP LOCKED` and a random fencing token; an outcome or lease extension under a
//!   token that another claim replaced is refused ([`Completion::Stale`]). Claims and lease
//!   extensions commit without waiting for the disk (`synchronous_commit = off` for their
//!   transaction alone): losing one to a server crash only makes its delivery claimable again,
//!   as its lease running out would, and the next outcome's commit flushes it anyway.
//! - **Cheap claims**: one statement leases the best `n` pending deliveries (an index on
//!   subscription, priority and due time), takes over leases that ran out, moves scheduled
//!   deliveries that came due into the pending index, and ends expired ones; another statement
//!   records a whole batch of outcomes; a publish batch is one statement (arrays, `unnest`),
//!   and the publishes of concurrent callers are gathered into one such statement (four lanes,
//!   each taking whatever was queued while it was busy), so many callers publishing one event
//!   each share a commit.
//! - **At least once**: a node that dies leaves its deliveries leased; any node claims them again
//!   once their leases run out, and the lost attempt is recorded as `lease_expired`.
//! - **No silent loss in faults**: while the server is down or restarting, calls return
//!   [`StoreError::Unavailable`] (a publish that returned `Ok` is committed); the pool reconnects
//!   by itself and the runtime goes on.
//!
//! # Time: the server's clock, counted locally
//! The store's [`Clock`] starts at the server's `clock_timestamp()` read when it connects (five
//! reads, the one with the shortest round trip taken as of its answer's arrival: never ahead of
//! the server's clock, behind it by at most that round trip) and counts from there with tokio's
//! clock (`Clock::starting_at`). Every statement that judges a due
//! time or a lease takes that time as a parameter; none reads `now()`. So every node judges due
//! times and leases by the server's clock, whatever its own system clock says: a node whose clock
//! is seconds off neither fires a delay early nor takes a live lease. (Over days, a machine's
//! monotonic clock may drift from the server's by some milliseconds per hour; a node that runs for
//! weeks is best restarted, or run with NTP-disciplined clocks.) It also lets tests run on tokio's
//! paused clock.
//!
//! # Wakeups: LISTEN/NOTIFY, or polling
//! Every change that makes a delivery due or answers a request is announced with `pg_notify` on
//! the schema's channel (`herald_<schema>`), carrying the due time or the request's id. Retries,
//! releases, requeues and answers notify inside their own transaction, so at its commit. A publish
//! notifies in a transaction of its own sent right behind it on the same connection (pipelined, so
//! no extra round trip), which runs only once the publish committed: PostgreSQL holds a
//! cluster-wide lock from a notifying transaction's pre-commit until its commit is on disk, and
//! notifying inside every publish would queue all publishes of all nodes behind one WAL flush at
//! a time (single-event publishes ran about three times slower that way). Each store keeps one
//! connection that LISTENs and hands the wakeups to the runtime, whose timer then sleeps until
//! the due time: a delay published on node A fires on node B on its millisecond, with no polling.
//! A node's own changes are announced in process at once (its listener skips its own
//! notifications). When the LISTEN connection drops, the listener reconnects and tells the
//! runtime to re-check everything ([`Wakeup::Lagged`]).
//!
//! Where LISTEN is unavailable (a pooler such as PgBouncer in transaction mode does not carry
//! notifications), turn it off with [`PostgresStoreBuilder::listen`]`(false)`; the store also falls
//! back by itself when its first LISTEN fails. It then tells the runtime to re-check every
//! [`poll_interval`](PostgresStoreBuilder::poll_interval) (default 1 s): work published by other
//! nodes is then picked up to one interval late. What this node publishes is always announced in
//! process at once.
//!
//! # Schema
//! Everything lives in one schema (default `herald`, see [`PostgresStoreBuilder::schema`]), so
//! several herald systems can share a database. The schema is created and migrated when the
//! store connects, in one transaction under an advisory lock named after it, so that nodes
//! starting together migrate once. A schema written by a newer herald is refused
//! ([`ConnectError::NewerSchema`]). Tables: `subscriptions`, `events`, `deliveries`, `attempts`,
//! and `herald_schema` (the version).
//!
//! Subscriptions are declared in the database and routed there (each pattern kept as a regular
//! expression), so a publish on any node fans out to the subscriptions declared by every node.
//!
//! # Limits
//! - No TLS yet: connect over loopback, a private network or a local socket.
//! - Statements are prepared once per connection: behind a pooler in transaction mode, turn on
//!   its support for prepared statements (PgBouncer 1.21 and later: `max_prepared_statements`).
//!   Migrations need no session: their advisory lock is transaction-scoped.
//! - [`Store::backlog`] is `None`: counting unfinished deliveries across nodes is a scan, so the
//!   runtime's `max_pending` backpressure is off for this store.
//! - [`Store::stats`] counts rows: it costs a scan of the deliveries (the runtime asks every 5 s
//!   for its gauges). Keep history bounded with `HeraldBuilder::retention`.

mod codec;
mod ext;
mod listen;
mod publish;
mod read;
mod schema;
mod sql;

pub use ext::PostgresBuilderExt;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use futures_util::stream::BoxStream;
use herald_core::store::WakeupHub;
use herald_core::{
    CancelAs, Cancelled, Capabilities, Claimed, Clock, Completion, DeliveryId, Event, EventFilter, EventId,
    EventRecord, Lease, Outcome, Page, PageRequest, Published, Requeued, Stats, Store, StoreError, SubscriptionName,
    SubscriptionSpec, Timestamp, Verdict, Wakeup,
};
use tokio_postgres::types::ToSql;
use tokio_postgres::{NoTls, Row};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::codec::{column, store_error, ts};
use crate::schema::status;
use crate::sql::Statements;

/// The store could not connect. Each variant says what to do about it.
///
/// Converts into [`StoreError`], which is how [`PostgresBuilderExt::postgres`] reports it from
/// `build()`.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use herald_postgres::{ConnectError, PostgresStore};
///
/// let err = PostgresStore::builder("postgres://postgres@127.0.0.1:5432/test")
///     .schema("Orders!")
///     .connect()
///     .await
///     .unwrap_err();
/// assert!(matches!(err, ConnectError::InvalidSchema(_)));
/// # }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The connection string is not one PostgreSQL understands.
    #[error("'{url}' is not a valid PostgreSQL connection string ({source}): use postgres://user@host:port/database")]
    InvalidUrl {
        /// The connection string.
        url: String,
        /// Why it was refused.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The schema name is not one herald accepts.
    #[error("schema '{0}' is invalid: use 1 to 56 lowercase letters, digits and '_', starting with a letter or '_'")]
    InvalidSchema(String),
    /// The server could not be reached or refused the connection.
    #[error("cannot connect to PostgreSQL: {message}; check that the server runs and the connection string is right")]
    Unreachable {
        /// What went wrong.
        message: String,
        /// The client's error.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// The schema was written by a newer herald.
    #[error(
        "schema '{schema}' was written by a newer herald (version {found}, this build knows {known}): upgrade herald"
    )]
    NewerSchema {
        /// The schema.
        schema: String,
        /// Its version.
        found: i32,
        /// The newest version this build knows.
        known: i32,
    },
    /// Creating or migrating the schema failed.
    #[error("cannot create or migrate schema '{schema}': {source}; check that the user may create schemas and tables")]
    Migrate {
        /// The schema.
        schema: String,
        /// The server's error.
        #[source]
        source: tokio_postgres::Error,
    },
}

impl From<ConnectError> for StoreError {
    fn from(e: ConnectError) -> Self {
        match e {
            ConnectError::NewerSchema { .. } => StoreError::Corrupt(e.to_string()),
            other => StoreError::Unavailable {
                message: other.to_string(),
                source: Some(Box::new(other)),
            },
        }
    }
}

/// Configures a [`PostgresStore`].
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), herald_postgres::ConnectError> {
/// use herald_postgres::PostgresStore;
/// use std::time::Duration;
///
/// let store = PostgresStore::builder("postgres://herald@127.0.0.1/app")
///     .schema("herald")
///     .pool_size(16)
///     .listen(false) // behind PgBouncer in transaction mode
///     .poll_interval(Duration::from_millis(250))
///     .connect()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `connect` is awaited"]
pub struct PostgresStoreBuilder {
    url: String,
    schema: String,
    pool_size: usize,
    listen: bool,
    poll_interval: Duration,
}

impl PostgresStoreBuilder {
    /// The schema herald's tables live in (default `herald`), created if missing: 1 to 56
    /// lowercase letters, digits and `_`.
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// How many connections the pool keeps at most (default 16), besides the listener's.
    pub fn pool_size(mut self, n: usize) -> Self {
        self.pool_size = n.max(1);
        self
    }

    /// Whether to LISTEN for other nodes' wakeups (default: on). Off, the store polls instead:
    /// see the [crate docs](crate#wakeups-listennotify-or-polling).
    pub fn listen(mut self, on: bool) -> Self {
        self.listen = on;
        self
    }

    /// How often a store that does not LISTEN tells the runtime to re-check (default 1 s): the
    /// bound on how late it picks up work published by other nodes.
    pub fn poll_interval(mut self, every: Duration) -> Self {
        self.poll_interval = every.max(Duration::from_millis(1));
        self
    }

    /// Connects: opens the pool, creates or migrates the schema, reads the server's clock and
    /// starts listening.
    pub async fn connect(self) -> Result<PostgresStore, ConnectError> {
        if !valid_schema(&self.schema) {
            return Err(ConnectError::InvalidSchema(self.schema));
        }
        let mut config: tokio_postgres::Config = self.url.parse().map_err(|source| ConnectError::InvalidUrl {
            url: self.url.clone(),
            source,
        })?;
        if config.get_application_name().is_none() {
            config.application_name("herald");
        }
        // Notice a server that vanished without closing its connections (a host gone, a cable
        // pulled) in about a minute rather than TCP's two hours: the listener then reconnects and
        // statements fail instead of hanging. Socket options, so no timers run in the process.
        if config.get_keepalives_idle() == Duration::from_secs(2 * 60 * 60) {
            config
                .keepalives_idle(Duration::from_secs(30))
                .keepalives_interval(Duration::from_secs(10))
                .keepalives_retries(3);
        }
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(self.pool_size)
            .build()
            .map_err(|e| ConnectError::Unreachable {
                message: e.to_string(),
                source: None,
            })?;
        let mut client = pool.get().await.map_err(|e| ConnectError::Unreachable {
            message: e.to_string(),
            source: Some(Box::new(e)),
        })?;
        schema::migrate(&mut client, &self.schema).await?;
        // The server's clock, read a few times in microseconds. The read with the shortest round
        // trip is taken as of the moment its answer arrived: the server read its clock before it
        // answered, so this clock is never ahead of the server's (no node fires a delay early,
        // however loaded it was while connecting) and behind it by at most that round trip.
        let mut best = read_server_clock(&client).await?;
        for _ in 1..CLOCK_READS {
            let read = read_server_clock(&client).await?;
            if read.trip < best.trip {
                best = read;
            }
        }
        let (now_us, since_us) = (
            best.micros,
            i64::try_from(best.answered.elapsed().as_micros()).unwrap_or(0),
        );
        let clock = Clock::starting_at(Timestamp::from_millis((now_us + since_us) / 1000));
        drop(client);

        let node = format!("{:016x}", fastrand::u64(..));
        let hub = Arc::new(WakeupHub::with_clock(clock));
        let stop = CancellationToken::new();
        let channel = format!("herald_{}", self.schema);
        let listening = self.listen
            && match listen::start(listen::Listener {
                config,
                channel: channel.clone(),
                node: node.clone(),
                hub: hub.clone(),
                stop: stop.clone(),
            })
            .await
            {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(error = %e, interval = ?self.poll_interval,
                        "herald-postgres: LISTEN is unavailable; polling for other nodes' work instead");
                    false
                }
            };
        if !listening {
            listen::poll(hub.clone(), self.poll_interval, stop.clone());
        }
        let db = Arc::new(Db {
            pool,
            sql: Statements::new(&schema::quoted(&self.schema)),
            channel,
            notify_prefix: format!("{node} "),
            hub,
        });
        Ok(PostgresStore {
            inner: Arc::new(Inner {
                publisher: publish::Publisher::start(db.clone(), clock),
                db,
                schema: self.schema,
                clock,
                listening,
                stop,
            }),
        })
    }
}

fn valid_schema(s: &str) -> bool {
    let mut bytes = s.bytes();
    matches!(bytes.next(), Some(b'a'..=b'z' | b'_'))
        && s.len() <= 56
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// herald's store in PostgreSQL, shared by any number of nodes. See the [crate docs](crate).
///
/// Cheap to clone: clones share the pool and the listener.
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use herald_core::Herald;
/// use herald_postgres::PostgresStore;
///
/// let store = PostgresStore::connect("postgres://herald@127.0.0.1/app").await?;
/// let herald = Herald::builder().store(store).build().await?;
/// # herald.shutdown(std::time::Duration::from_secs(1)).await; Ok(()) }
/// ```
#[derive(Clone)]
pub struct PostgresStore {
    inner: Arc<Inner>,
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore")
            .field("schema", &self.inner.schema)
            .field("listening", &self.inner.listening)
            .finish_non_exhaustive()
    }
}

struct Inner {
    db: Arc<Db>,
    publisher: publish::Publisher,
    schema: String,
    clock: Clock,
    listening: bool,
    stop: CancellationToken,
}

/// What every statement needs: the pool, the statements, and where wakeups go.
pub(crate) struct Db {
    pool: Pool,
    sql: Statements,
    /// The NOTIFY channel.
    channel: String,
    /// `<node> `: what this node's notifications start with, so its listener skips them.
    notify_prefix: String,
    hub: Arc<WakeupHub>,
}

impl Db {
    /// Runs one statement (prepared once per connection), again if it collided with another.
    pub(crate) async fn rows(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>, StoreError> {
        let mut tries = 0;
        loop {
            let client = self.pool.get().await.map_err(|e| StoreError::Unavailable {
                message: format!("no PostgreSQL connection: {e}"),
                source: Some(Box::new(e)),
            })?;
            let result = match client.prepare_cached(sql).await {
                Ok(stmt) => client.query(&stmt, params).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(rows) => return Ok(rows),
                Err(e) if codec::is_transient(&e) && tries < TRANSIENT_RETRIES => tries += 1,
                Err(e) => return Err(store_error(e)),
            }
        }
    }

    /// Runs a statement built for one call (not prepared for reuse).
    pub(crate) async fn rows_once(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>, StoreError> {
        let client = self.pool.get().await.map_err(|e| StoreError::Unavailable {
            message: format!("no PostgreSQL connection: {e}"),
            source: Some(Box::new(e)),
        })?;
        client.query(sql, params).await.map_err(store_error)
    }

    /// Runs the publish statement and, right behind it on the same connection (pipelined: one
    /// round trip), the NOTIFY of the earliest due time in a transaction of its own.
    ///
    /// Not in the publish's own transaction: PostgreSQL holds a cluster-wide lock from a
    /// notifying transaction's pre-commit until its commit is on disk, which would serialize every
    /// publish of every node behind one WAL flush at a time (measured: 207 single-event publishes
    /// per second end to end, against thousands without it). The NOTIFY runs only after the
    /// publish committed (statements on one connection run in order), so no node is woken for
    /// what it cannot see yet; a server crash between the two loses only the wakeup, and every
    /// listener reconnects after that and re-checks everything anyway.
    async fn publish_and_notify(
        &self,
        params: &[&(dyn ToSql + Sync)],
        wake: Option<&str>,
    ) -> Result<Vec<Row>, StoreError> {
        let mut tries = 0;
        loop {
            let client = self.pool.get().await.map_err(|e| StoreError::Unavailable {
                message: format!("no PostgreSQL connection: {e}"),
                source: Some(Box::new(e)),
            })?;
            let publish = client.prepare_cached(&self.sql.publish).await.map_err(store_error)?;
            let result = match wake {
                Some(payload) => {
                    let notify = client.prepare_cached(&self.sql.notify).await.map_err(store_error)?;
                    let notify_params: [&(dyn ToSql + Sync); 2] = [&self.channel, &payload];
                    let (rows, notified) =
                        tokio::join!(client.query(&publish, params), client.query(&notify, &notify_params));
                    if let Err(e) = notified {
                        tracing::debug!(error = %e, "herald-postgres: a NOTIFY failed; other nodes re-check later");
                    }
                    rows
                }
                None => client.query(&publish, params).await,
            };
            match result {
                Ok(rows) => return Ok(rows),
                Err(e) if codec::is_transient(&e) && tries < TRANSIENT_RETRIES => tries += 1,
                Err(e) => return Err(store_error(e)),
            }
        }
    }

    pub(crate) fn due_prefix(&self) -> String {
        format!("{}d", self.notify_prefix)
    }

    /// Records for `events` with their deliveries (and attempts).
    pub(crate) async fn records(
        &self,
        events: Vec<(i64, Event)>,
        with_attempts: bool,
        now: Timestamp,
    ) -> Result<Vec<EventRecord>, StoreError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let seqs: Vec<i64> = events.iter().map(|(s, _)| *s).collect();
        let deliveries = self.rows(&self.sql.deliveries, &[&seqs]).await?;
        let attempts = if with_attempts {
            let ids: Vec<Uuid> = deliveries.iter().map(|r| column(r, 1)).collect::<Result<_, _>>()?;
            Some(self.rows(&self.sql.attempts, &[&ids]).await?)
        } else {
            None
        };
        read::records(events, &deliveries, attempts.as_deref(), now)
    }

    /// Stores `events` (the batches of every caller gathered meanwhile, see `publish`) with one
    /// statement, announces the earliest due time, and answers for each event in order.
    pub(crate) async fn publish(&self, events: &[Event], now: Timestamp) -> Result<Vec<Published>, StoreError> {
        // The same event twice in one batch is stored once: later copies are duplicates.
        let mut seen = std::collections::HashSet::with_capacity(events.len());
        let unique: Vec<&Event> = events.iter().filter(|e| seen.insert(e.id())).collect();
        let n = unique.len();
        let mut ids = Vec::with_capacity(n);
        let mut topics = Vec::with_capacity(n);
        let mut payloads: Vec<&[u8]> = Vec::with_capacity(n);
        let mut content_types = Vec::with_capacity(n);
        let mut sources = Vec::with_capacity(n);
        let mut headers = Vec::with_capacity(n);
        let mut priorities = Vec::with_capacity(n);
        let mut published = Vec::with_capacity(n);
        let mut deliver = Vec::with_capacity(n);
        let mut expires = Vec::with_capacity(n);
        let mut keys = Vec::with_capacity(n);
        let mut reply_to = Vec::with_capacity(n);
        for e in &unique {
            ids.push(e.id().as_uuid());
            topics.push(e.topic().as_str());
            payloads.push(e.payload());
            content_types.push(Some(e.content_type()).filter(|c| *c != herald_core::JSON));
            sources.push(e.source());
            headers.push(codec::headers_text(e.headers()));
            priorities.push(i16::from(e.priority().get()));
            published.push(e.published_at().as_millis());
            deliver.push(e.deliver_at().as_millis());
            expires.push(e.expires_at().map(Timestamp::as_millis));
            keys.push(e.key());
            reply_to.push(e.reply_to());
        }
        let now_ms = now.as_millis();
        // The earliest due now and the earliest ahead, both announced (`d<ms>[,<ms>]`): "due now"
        // alone would hide the later time from a timer with nothing else to wait for.
        let due_now = deliver.iter().filter(|t| **t <= now_ms).min();
        let ahead = deliver.iter().filter(|t| **t > now_ms).min();
        let wake = match (due_now, ahead) {
            (Some(a), Some(b)) => Some(format!("{}{a},{b}", self.due_prefix())),
            (Some(t), None) | (None, Some(t)) => Some(format!("{}{t}", self.due_prefix())),
            (None, None) => None,
        };
        let params: [&(dyn ToSql + Sync); 13] = [
            &ids,
            &topics,
            &payloads,
            &content_types,
            &sources,
            &headers,
            &priorities,
            &published,
            &deliver,
            &expires,
            &keys,
            &reply_to,
            &now_ms,
        ];
        let rows = self.publish_and_notify(&params, wake.as_deref()).await?;
        let mut stored: HashMap<Uuid, i32> = HashMap::with_capacity(rows.len());
        for r in &rows {
            stored.insert(column(r, 0)?, column(r, 1)?);
        }
        // Keys held by other events: one more read, only when a keyed event was not stored.
        let missing_keys: Vec<&str> = events
            .iter()
            .filter(|e| !stored.contains_key(&e.id().as_uuid()))
            .filter_map(|e| e.key())
            .collect();
        let mut holders: HashMap<String, Uuid> = HashMap::new();
        if !missing_keys.is_empty() {
            for r in self.rows(&self.sql.key_holders, &[&missing_keys]).await? {
                holders.insert(column(&r, 0)?, column(&r, 1)?);
            }
        }
        let mut out = Vec::with_capacity(events.len());
        let (mut earliest_now, mut earliest_ahead): (Option<Timestamp>, Option<Timestamp>) = (None, None);
        for e in events {
            match stored.remove(&e.id().as_uuid()) {
                Some(n) => {
                    if n > 0 {
                        let due = e.deliver_at();
                        let slot = if due <= now {
                            &mut earliest_now
                        } else {
                            &mut earliest_ahead
                        };
                        *slot = Some(slot.map_or(due, |t| t.min(due)));
                    }
                    out.push(Published::Stored {
                        id: e.id(),
                        deliveries: u32::try_from(n).unwrap_or(0),
                    });
                }
                None => {
                    let holder = e.key().and_then(|k| holders.get(k)).copied();
                    out.push(Published::Duplicate {
                        id: holder.map_or(e.id(), EventId::from_uuid),
                    });
                }
            }
        }
        for t in [earliest_now, earliest_ahead].into_iter().flatten() {
            self.hub.send(Wakeup::Due(t));
        }
        Ok(out)
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// How often a statement that collided with another (a deadlock, a serialization failure) is run
/// again before the error is returned.
const TRANSIENT_RETRIES: u32 = 8;

/// How many times a store reads the server's clock when it connects (it keeps the read with the
/// shortest round trip).
const CLOCK_READS: usize = 5;

/// One read of the server's clock: what it said, when its answer arrived, and the round trip.
struct ServerClockRead {
    micros: i64,
    answered: tokio::time::Instant,
    trip: Duration,
}

async fn read_server_clock(client: &deadpool_postgres::Client) -> Result<ServerClockRead, ConnectError> {
    let asked = tokio::time::Instant::now();
    let micros: i64 = client
        .query_one("SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::int8", &[])
        .await
        .and_then(|r| r.try_get(0))
        .map_err(|e| ConnectError::Unreachable {
            message: e.to_string(),
            source: Some(Box::new(e)),
        })?;
    let answered = tokio::time::Instant::now();
    Ok(ServerClockRead {
        micros,
        answered,
        trip: answered - asked,
    })
}

/// What [`purge`](Store::purge) deletes per statement, so that a large purge does not hold locks
/// on many rows at once.
const PURGE_CHUNK: i64 = 1000;

/// The error recorded on an attempt whose lease ran out.
const LEASE_RAN_OUT: &str = "the lease ran out before an outcome was recorded";

impl PostgresStore {
    /// Connects with the default options (schema `herald`); see [`PostgresStore::builder`].
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), herald_postgres::ConnectError> {
    /// let store = herald_postgres::PostgresStore::connect("postgres://herald@127.0.0.1/app").await?;
    /// assert_eq!(store.schema(), "herald");
    /// # Ok(()) }
    /// ```
    pub async fn connect(url: &str) -> Result<Self, ConnectError> {
        Self::builder(url).connect().await
    }

    /// Configures a store on the database at `url` (`postgres://user:password@host:port/db`, or
    /// the `key=value` form).
    pub fn builder(url: impl Into<String>) -> PostgresStoreBuilder {
        PostgresStoreBuilder {
            url: url.into(),
            schema: "herald".to_owned(),
            pool_size: 16,
            listen: true,
            poll_interval: Duration::from_secs(1),
        }
    }

    /// The schema the store's tables live in.
    pub fn schema(&self) -> &str {
        &self.inner.schema
    }

    /// Whether the store LISTENs for other nodes' wakeups (false: it polls).
    pub fn is_listening(&self) -> bool {
        self.inner.listening
    }
}

#[async_trait]
impl Store for PostgresStore {
    fn clock(&self) -> Clock {
        self.inner.clock
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::durable(true)
    }

    async fn declare(&self, subscription: &SubscriptionSpec) -> Result<(), StoreError> {
        let regex = codec::pattern_regex(&subscription.pattern);
        self.inner
            .db
            .rows(
                &self.inner.db.sql.declare,
                &[&subscription.name.as_str(), &subscription.pattern.as_str(), &regex],
            )
            .await?;
        Ok(())
    }

    async fn remove_subscription(&self, subscription: &SubscriptionName) -> Result<u64, StoreError> {
        let now = self.inner.clock.now().as_millis();
        let rows = self
            .inner
            .db
            .rows(&self.inner.db.sql.remove, &[&subscription.as_str(), &now])
            .await?;
        let n: i64 = rows.first().map(|r| column(r, 0)).transpose()?.unwrap_or(0);
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn publish(&self, events: Vec<Event>) -> Result<Vec<Published>, StoreError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        self.inner.publisher.publish(events).await
    }

    async fn claim(
        &self,
        subscription: &SubscriptionName,
        max: usize,
        lease: Duration,
    ) -> Result<Vec<Claimed>, StoreError> {
        let now = self.inner.clock.now();
        let lease_until = now + lease;
        let max_rows = i64::try_from(max).unwrap_or(i64::MAX);
        let rows = self
            .inner
            .db
            .rows(
                &self.inner.db.sql.claim,
                &[
                    &subscription.as_str(),
                    &now.as_millis(),
                    &max_rows,
                    &lease_until.as_millis(),
                    &LEASE_RAN_OUT,
                ],
            )
            .await?;
        if rows.is_empty() {
            return Err(StoreError::UnknownSubscription(subscription.clone()));
        }
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let Some(id) = column::<Option<Uuid>>(r, 1)? else {
                continue;
            };
            let attempt: i32 = column(r, 2)?;
            let token: i64 = column(r, 3)?;
            let due = ts(column(r, 4)?);
            let (_, event) = codec::event_from_row(r, 6)?;
            out.push(Claimed::new(
                Lease {
                    delivery: DeliveryId::from_uuid(id),
                    token: token.unsigned_abs(),
                },
                lease_until,
                subscription.clone(),
                event,
                u32::try_from(attempt).unwrap_or(0),
                due,
            ));
        }
        if !out.is_empty() {
            // Other nodes learn when these leases run out, to take the deliveries over if this
            // node dies: without it they found out only at their runtime's 30 s re-check. Sent
            // on the side, so the claim is not held up by it.
            let db = self.inner.db.clone();
            let payload = format!("{}{}", db.due_prefix(), lease_until.as_millis());
            tokio::spawn(async move {
                let params: [&(dyn ToSql + Sync); 2] = [&db.channel, &payload];
                if let Err(e) = db.rows_once(&db.sql.notify, &params).await {
                    tracing::debug!(error = %e, "herald-postgres: a lease NOTIFY failed; other nodes re-check later");
                }
            });
        }
        Ok(out)
    }

    async fn extend(&self, leases: &[Lease], lease: Duration) -> Result<Vec<bool>, StoreError> {
        if leases.is_empty() {
            return Ok(Vec::new());
        }
        let until = (self.inner.clock.now() + lease).as_millis();
        let ids: Vec<Uuid> = leases.iter().map(|l| l.delivery.as_uuid()).collect();
        let tokens: Vec<i64> = leases.iter().map(|l| i64::try_from(l.token).unwrap_or(-1)).collect();
        let rows = self
            .inner
            .db
            .rows(&self.inner.db.sql.extend, &[&ids, &tokens, &until])
            .await?;
        let mut held = std::collections::HashSet::with_capacity(rows.len());
        for r in &rows {
            held.insert((column::<Uuid>(r, 0)?, column::<i64>(r, 1)?));
        }
        Ok(ids
            .iter()
            .zip(&tokens)
            .map(|(id, t)| held.contains(&(*id, *t)))
            .collect())
    }

    async fn complete(&self, outcomes: Vec<Outcome>) -> Result<Vec<Completion>, StoreError> {
        if outcomes.is_empty() {
            return Ok(Vec::new());
        }
        let now = self.inner.clock.now().as_millis();
        let n = outcomes.len();
        let mut ids = Vec::with_capacity(n);
        let mut tokens = Vec::with_capacity(n);
        let mut finished = Vec::with_capacity(n);
        let mut verdicts: Vec<i16> = Vec::with_capacity(n);
        let mut at: Vec<Option<i64>> = Vec::with_capacity(n);
        let mut errors: Vec<Option<&str>> = Vec::with_capacity(n);
        let mut replies: Vec<Option<&[u8]>> = Vec::with_capacity(n);
        for o in &outcomes {
            let (code, when, error, reply) = match &o.verdict {
                Verdict::Succeeded { reply } => (1, None, None, reply.as_deref()),
                Verdict::Retry { at, error } => (2, Some(at.as_millis()), Some(error.as_str()), None),
                Verdict::Dead { reason } => (3, None, Some(reason.as_str()), None),
                Verdict::Released => (4, None, None, None),
                // A verdict added to herald-core: leave the delivery leased; the lease runs out
                // and it is attempted again.
                _ => (0, None, None, None),
            };
            ids.push(o.lease.delivery.as_uuid());
            tokens.push(i64::try_from(o.lease.token).unwrap_or(-1));
            finished.push(o.finished_at.as_millis());
            verdicts.push(code);
            at.push(when);
            errors.push(error);
            replies.push(reply);
        }
        let prefix = &self.inner.db.notify_prefix;
        let rows = self
            .inner
            .db
            .rows(
                &self.inner.db.sql.complete,
                &[
                    &ids,
                    &tokens,
                    &finished,
                    &verdicts,
                    &at,
                    &errors,
                    &replies,
                    &self.inner.db.channel,
                    prefix,
                    &now,
                ],
            )
            .await?;
        let mut out = vec![Completion::Stale; n];
        for r in &rows {
            let ord: i64 = column(r, 0)?;
            let verdict: i16 = column(r, 1)?;
            let due = ts(column(r, 2)?);
            let event = EventId::from_uuid(column(r, 3)?);
            let request: bool = column(r, 4)?;
            if let Some(slot) = usize::try_from(ord - 1).ok().and_then(|i| out.get_mut(i)) {
                *slot = Completion::Applied;
            }
            match verdict {
                2 | 4 => self.inner.db.hub.send(Wakeup::Due(due)),
                1 | 3 if request => self.inner.db.hub.send(Wakeup::Answered(event)),
                _ => {}
            }
        }
        Ok(out)
    }

    async fn cancel(&self, id: EventId, end: CancelAs) -> Result<Cancelled, StoreError> {
        let now = self.inner.clock.now().as_millis();
        let to = match end {
            CancelAs::Cancelled => status::CANCELLED,
            CancelAs::Expired => status::EXPIRED,
        };
        let rows = self
            .inner
            .db
            .rows(&self.inner.db.sql.cancel, &[&id.as_uuid(), &to, &now])
            .await?;
        let Some(r) = rows.first() else {
            return Ok(Cancelled::NotFound);
        };
        let n: i64 = column(r, 0)?;
        Ok(match u32::try_from(n).unwrap_or(u32::MAX) {
            0 => Cancelled::TooLate,
            n => Cancelled::Ended(n),
        })
    }

    async fn requeue(&self, id: DeliveryId) -> Result<Requeued, StoreError> {
        let now = self.inner.clock.now();
        let prefix = self.inner.db.due_prefix();
        let rows = self
            .inner
            .db
            .rows(
                &self.inner.db.sql.requeue,
                &[&id.as_uuid(), &now.as_millis(), &self.inner.db.channel, &prefix],
            )
            .await?;
        let Some(r) = rows.first() else {
            return Ok(Requeued::NotFound);
        };
        let code: i16 = column(r, 0)?;
        if code != status::DEAD {
            return Ok(Requeued::NotDead(codec::shown_status(code, ts(column(r, 1)?), now)?));
        }
        self.inner.db.hub.send(Wakeup::Due(now));
        Ok(Requeued::Requeued)
    }

    async fn next_due(
        &self,
        subscriptions: &[SubscriptionName],
        after: Timestamp,
    ) -> Result<Option<Timestamp>, StoreError> {
        if subscriptions.is_empty() {
            return Ok(None);
        }
        let names: Vec<&str> = subscriptions.iter().map(SubscriptionName::as_str).collect();
        let rows = self
            .inner
            .db
            .rows(&self.inner.db.sql.next_due, &[&names, &after.as_millis()])
            .await?;
        let t: Option<i64> = rows.first().map(|r| column(r, 0)).transpose()?.flatten();
        Ok(t.map(ts))
    }

    fn wakeups(&self) -> BoxStream<'static, Wakeup> {
        self.inner.db.hub.subscribe()
    }

    async fn query(&self, filter: &EventFilter, page: PageRequest) -> Result<Page<EventRecord>, StoreError> {
        let now = self.inner.clock.now();
        let (sql, args) = read::page_sql(&self.inner.db.sql.schema, filter, page, now);
        let params: Vec<&(dyn ToSql + Sync)> = args.iter().map(|a| &**a as &(dyn ToSql + Sync)).collect();
        let rows = self.inner.db.rows_once(&sql, &params).await?;
        let events = read::events(&rows)?;
        let records = self.inner.db.records(events, false, now).await?;
        Ok(read::page(records, page))
    }

    async fn get(&self, id: EventId) -> Result<Option<EventRecord>, StoreError> {
        let now = self.inner.clock.now();
        let rows = self
            .inner
            .db
            .rows(&self.inner.db.sql.get_event, &[&id.as_uuid()])
            .await?;
        let events = read::events(&rows)?;
        Ok(self.inner.db.records(events, true, now).await?.pop())
    }

    async fn stats(&self) -> Result<Stats, StoreError> {
        let now = self.inner.clock.now().as_millis();
        let rows = self.inner.db.rows(&self.inner.db.sql.stats, &[&now]).await?;
        let mut by: HashMap<i32, u64> = HashMap::new();
        for r in &rows {
            let n: i64 = column(r, 1)?;
            by.insert(column(r, 0)?, u64::try_from(n).unwrap_or(0));
        }
        let at = |code: i16| by.get(&i32::from(code)).copied().unwrap_or(0);
        let scheduled_due = by.get(&-3).copied().unwrap_or(0).min(at(status::SCHEDULED));
        let retrying_due = by.get(&-4).copied().unwrap_or(0).min(at(status::RETRYING));
        let mut stats = Stats::default();
        stats.events = by.get(&-1).copied().unwrap_or(0);
        stats.unrouted = by.get(&-2).copied().unwrap_or(0);
        let d = &mut stats.deliveries;
        // A scheduled or retrying delivery whose time has come shows as pending, as in `get`.
        d.scheduled = at(status::SCHEDULED) - scheduled_due;
        d.pending = at(status::PENDING) + scheduled_due + retrying_due;
        d.active = at(status::ACTIVE);
        d.retrying = at(status::RETRYING) - retrying_due;
        d.succeeded = at(status::SUCCEEDED);
        d.dead = at(status::DEAD);
        d.cancelled = at(status::CANCELLED);
        d.expired = at(status::EXPIRED);
        Ok(stats)
    }

    async fn purge(&self, before: Timestamp) -> Result<u64, StoreError> {
        let mut total = 0;
        loop {
            let rows = self
                .inner
                .db
                .rows(&self.inner.db.sql.purge, &[&before.as_millis(), &PURGE_CHUNK])
                .await?;
            let n: i64 = rows.first().map(|r| column(r, 0)).transpose()?.unwrap_or(0);
            total += u64::try_from(n).unwrap_or(0);
            if n < PURGE_CHUNK {
                return Ok(total);
            }
        }
    }

    fn backlog(&self) -> Option<u64> {
        None
    }
}
