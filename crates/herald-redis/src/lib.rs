//! The Redis (and Valkey) store for herald: several nodes sharing one Redis.
//!
//! ```no_run
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use herald_core::{Context, Herald};
//! use herald_redis::RedisBuilderExt;
//!
//! // Every process that builds its herald this way (same URL, same prefix) is one system.
//! let herald = Herald::builder().redis("redis://127.0.0.1:6379").build().await?;
//! herald.subscribe("mail", "user.signed_up").handle(|n: u64, _: Context| async move {
//!     println!("welcome {n}");
//!     Ok::<_, herald_core::HandlerError>(())
//! }).await?;
//! herald.publish("user.signed_up", &7).delay(std::time::Duration::from_secs(60)).await?;
//! # herald.shutdown(std::time::Duration::from_secs(1)).await; Ok(()) }
//! ```
//!
//! # How it works
//!
//! Every change (publish with its idempotency key, claim, extend, complete, cancel, requeue,
//! declare, remove, purge) is one Lua script, so it is atomic however many nodes share the Redis.
//! Scripts are sent by hash (`EVALSHA`) and loaded again when Redis answers `NOSCRIPT` (after a
//! restart). The connection is a [`redis::aio::ConnectionManager`]: when it drops, calls fail with
//! [`StoreError::Unavailable`] (a publish never loses an event silently: it returns the error)
//! while the manager reconnects in the background; the runtime's workers retry on their own.
//!
//! ## Time: the server's clock, counted locally
//!
//! Due times and leases are judged by the Redis server's clock for every node. At connect the store
//! reads the server's `TIME` once and pins it to a tokio instant ([`Clock::starting_at`]); from
//! then on it counts with tokio's monotonic clock, and passes `now` to every script as an argument
//! (scripts never call `TIME`). A node whose system clock is off by seconds therefore still agrees
//! with the others to the millisecond (each runs behind the server by the round trip of its `TIME`
//! read, never ahead), neither
//! firing a delay early nor stealing a live lease. A monotonic clock drifts by a few parts per
//! million, so milliseconds over hours: reconnecting (a new store) re-reads `TIME`. Counting with
//! tokio's clock is also what lets the conformance suite run this store on a paused clock.
//!
//! ## Wakeups
//!
//! A script that makes a delivery due (publish, retry, release, requeue) publishes on the channel
//! `{prefix}:wake`: `N` for a delivery ready at once (each node reads it as "due now" by its own
//! clock), `D|<ms>` for a later due time; one that answers a request publishes `A|<event id>`. Each
//! message starts with the publishing node's id, so a node skips its own (it hands those to its
//! listeners as soon as the script returns). Each store listens on a dedicated pub/sub connection,
//! so a delay published on node A arms node B's timer for its millisecond without polling.
//!
//! A claim announces when its leases run out unless a lease of the same subscription ends earlier
//! (the nodes that follow it wake by then and ask the store for the next time), so the deliveries
//! of a node that died are taken over by the others when their leases end. After the listener loses its connection it
//! resubscribes and reports [`Wakeup::Lagged`], on which the runtime re-asks the store.
//!
//! ## Key layout
//!
//! Every key of one herald lives under `{prefix}:` (default prefix `herald`), the braces making the
//! whole prefix a Redis Cluster hash tag:
//!
//! | key | type | holds |
//! | --- | --- | --- |
//! | `{p}:subs` | hash | subscription name → pattern |
//! | `{p}:subsver` | string | bumped on every routing change |
//! | `{p}:e:<event id>` | hash | the event `b` (one value: topic, payload, priority, times, optional parts; versioned), its idempotency `key`, its deliveries `ds`, how many are `open` (counted when there are several) |
//! | `{p}:d:<delivery id>` | hash | `ev`, `sub`, `st` (status), `att`, `due`, `prio`, `ex`, `rt` and `n` (the event's expiry, request flag and number of deliveries), `tok` (lease token), `lu` (lease end), the latest attempt (`ts` started, `tf` finished, `to` outcome, `te` error), `err`, `rep` |
//! | `{p}:a:<delivery id>` | list | the attempts before the latest, `number\|started\|finished\|outcome\|error` (none for a delivery handled at its first attempt) |
//! | `{p}:s:<sub>:sched` | zset | scheduled and retrying deliveries by due ms |
//! | `{p}:s:<sub>:ready` | zset | due deliveries by `(10 - priority) * 2^42 + due ms`: priority first, then due time |
//! | `{p}:s:<sub>:lease` | zset | leased deliveries by lease end |
//! | `{p}:events` | zset | every event id (score 0, ordered as text: UUIDv7 ids sort by publication) |
//! | `{p}:finished` | zset | finished events by the time they finished, for `purge` |
//! | `{p}:k:<key>` | string | the event holding an idempotency key (until purged) |
//! | `{p}:counts` | hash | deliveries by status, `events`, `unrouted` |
//! | `{p}:token` | string | the lease-token counter |
//!
//! Ids are UUIDs as 32 hex digits. Nothing expires by itself: finished events stay until
//! [`purge`](herald_core::Store::purge) (the runtime's retention calls it).
//!
//! ## Redis Cluster
//!
//! A Lua script may only touch keys of one slot, and a publish fans out to several subscriptions.
//! This store chooses atomicity over sharding: one hash tag for the whole namespace, so every
//! script stays atomic and the store works on Cluster, but one herald's keys live in one slot, on
//! one primary. To spread load over a cluster, run several heralds under different prefixes (each
//! its own slot). The alternative, a tag per subscription with a non-atomic fan-out and a repair
//! path, would trade exactly-once fan-out for throughput; it is not built. Scripts name their slot
//! with their one declared key (`{p}:counts`) and build the others from the prefix, all in that
//! slot; they carry a `#!lua` shebang, so the server holds them to that slot (the test
//! `tests/cluster.rs` runs the conformance suite on a cluster node). The shebang needs Redis 7 or
//! Valkey (which implements the same scripting; it is not tested here, having no Debian package).
//!
//! ## Limits
//!
//! - [`query`](herald_core::Store::query) pages newest first by reading candidate events in id
//!   order and filtering them in the client; only a `key` filter is a direct lookup. A filter that
//!   matches few of many events reads many.
//! - [`backlog`](herald_core::Store::backlog) is `None`, so `max_pending` backpressure is off on
//!   this store: a count cached from this node's script replies would not see other nodes'
//!   acknowledgements, and a publisher waiting for room is woken only by this node's.
//! - Connection and response timeouts are on by default (5 s and 10 s); tests on tokio's paused
//!   clock turn them off ([`RedisStoreBuilder::timeouts`]), because a paused clock jumps ahead
//!   while the runtime waits for the network.
//! - Durable means as durable as the server is configured: with `appendonly yes` and
//!   `appendfsync always`, every publish that returned `Ok` survives a crash of Redis itself (the
//!   restart test kills the server with SIGKILL); with the default `everysec` up to a second of
//!   acknowledged changes can be lost when Redis (not herald) crashes.
//! - While Redis is unreachable, a call waits while the connection manager retries (a few
//!   seconds, backing off to 1 s between attempts) and then fails with
//!   [`StoreError::Unavailable`]; the runtime's workers retry on their own, and a publisher gets
//!   the error.
//! - Concurrent publishes are grouped: one script call carries everything that queued up while
//!   the calls in flight ran (up to 256 events; at most 4 calls in flight), so many publishers
//!   cost few round trips.
//!
//! ## Tests and benchmarks
//!
//! `tests/conformance.rs` runs the herald-testkit suite against the Redis at `127.0.0.1:6379`,
//! each case under its own random prefix; `tests/cluster.rs` runs it on a private cluster-mode
//! `redis-server`; `tests/nodes.rs` runs three real node processes (and uses `faketime` for
//! clock skew); `tests/restart.rs` kills and restarts a private `redis-server`.
//! `cargo bench -p herald-redis` prints `BENCH redis_e2e ...` (two nodes, 32 workers each,
//! against `redis-benchmark -t lpush -P 1`) and `BENCH redis_lateness ...`.

mod codec;
mod ext;
mod scripts;
mod wake;

pub use ext::RedisBuilderExt;

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::stream::BoxStream;
use herald_core::store::WakeupHub;
use herald_core::{
    CancelAs, Cancelled, Capabilities, Claimed, Clock, Completion, DeliveryId, DeliveryStatus, Event, EventFilter,
    EventId, EventRecord, Lease, Outcome, Page, PageRequest, Pattern, Published, Requeued, Stats, Store, StoreError,
    SubscriptionName, SubscriptionSpec, Timestamp, Verdict, Wakeup,
};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, Script, ScriptInvocation, Value};
use tokio::sync::{mpsc, oneshot, Semaphore};

use codec::{array, bytes, corrupt, int, string};
use scripts::Scripts;

/// Connecting to Redis failed. Converts into [`StoreError`], which is how
/// [`RedisBuilderExt::redis`] reports it from `build()`.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use herald_redis::{ConnectError, RedisStore};
///
/// let err = RedisStore::connect("http://127.0.0.1:6379").await.unwrap_err();
/// assert!(matches!(err, ConnectError::InvalidUrl { .. }));
/// assert!(err.to_string().contains("use redis://host:port/db"));
/// # }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The URL is not a Redis URL.
    #[error("'{url}' is not a Redis URL (use redis://host:port/db or rediss://...): {source}")]
    InvalidUrl {
        /// The URL given.
        url: String,
        /// Why the client refused it.
        #[source]
        source: redis::RedisError,
    },
    /// The prefix cannot be used.
    #[error("the key prefix '{0}' is not usable: use a non-empty prefix without '{{' or '}}'")]
    InvalidPrefix(String),
    /// Redis did not answer.
    #[error("cannot reach Redis: {source}; check that it runs and that the URL is right")]
    Unreachable {
        /// The client's error.
        #[source]
        source: redis::RedisError,
    },
}

impl From<ConnectError> for StoreError {
    fn from(e: ConnectError) -> Self {
        StoreError::unavailable(e)
    }
}

/// Configures a [`RedisStore`].
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), herald_redis::ConnectError> {
/// use herald_redis::RedisStore;
/// let store = RedisStore::builder("redis://127.0.0.1:6379").prefix("billing").connect().await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct RedisStoreBuilder {
    url: String,
    prefix: String,
    connection_timeout: Option<Duration>,
    response_timeout: Option<Duration>,
}

impl RedisStoreBuilder {
    /// The namespace: every key is `{prefix}:...` (default `herald`). Nodes sharing a prefix are
    /// one system; different prefixes on one Redis are independent.
    ///
    /// ```
    /// let builder = herald_redis::RedisStore::builder("redis://127.0.0.1").prefix("orders");
    /// ```
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How long to wait for a connection and for each answer (default: 5 s and 10 s). `None`
    /// waits as long as it takes: needed on tokio's paused clock, which jumps ahead while the
    /// runtime waits for the network.
    ///
    /// ```
    /// use std::time::Duration;
    /// let builder = herald_redis::RedisStore::builder("redis://127.0.0.1").timeouts(None, None);
    /// let builder = builder.timeouts(Some(Duration::from_secs(1)), Some(Duration::from_secs(2)));
    /// ```
    pub fn timeouts(mut self, connection: Option<Duration>, response: Option<Duration>) -> Self {
        self.connection_timeout = connection;
        self.response_timeout = response;
        self
    }

    /// Connects, reads the server's clock and subscribes to wakeups. Call it inside a tokio
    /// runtime: the store starts two tasks on it (the wakeup listener and the publisher).
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), herald_redis::ConnectError> {
    /// let store = herald_redis::RedisStore::builder("redis://127.0.0.1:6379").connect().await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect(self) -> Result<RedisStore, ConnectError> {
        if self.prefix.is_empty() || self.prefix.contains(['{', '}']) {
            return Err(ConnectError::InvalidPrefix(self.prefix));
        }
        let client = Client::open(self.url.as_str()).map_err(|source| ConnectError::InvalidUrl {
            url: self.url.clone(),
            source,
        })?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(self.connection_timeout)
            .set_response_timeout(self.response_timeout)
            .set_max_delay(Duration::from_secs(1));
        let unreachable = |source| ConnectError::Unreachable { source };
        let mut conn = ConnectionManager::new_with_config(client.clone(), config)
            .await
            .map_err(unreachable)?;
        // Pinned when the answer arrives, the clock runs behind the server's by the time the
        // answer took (never ahead): it errs on firing late, by a fraction of a millisecond on a
        // LAN. (Adding half the round trip would be closer on average but can run ahead when the
        // answer waited in this process: a node must not fire early.)
        let (secs, micros): (i64, i64) = redis::cmd("TIME").query_async(&mut conn).await.map_err(unreachable)?;
        let clock = Clock::starting_at(Timestamp::from_millis(secs.saturating_mul(1000) + micros / 1000));
        let tag = format!("{{{}}}", self.prefix);
        let channel = format!("{tag}:wake");
        let node = format!("{:016x}", fastrand::u64(..));
        let hub = Arc::new(WakeupHub::with_clock(clock));
        let first = wake::subscribe(&client, &channel).await.map_err(unreachable)?;
        let listener = tokio::spawn(wake::listen(
            client,
            first,
            channel,
            node.clone(),
            clock,
            Arc::downgrade(&hub),
        ));
        let ctx = Arc::new(Ctx {
            conn,
            scripts: Scripts::new(),
            counts_key: format!("{tag}:counts"),
            tag,
            node,
            clock,
            hub,
            routes: Mutex::new(None),
        });
        let (publishes, queue) = mpsc::unbounded_channel();
        let publisher = tokio::spawn(publish_batches(ctx.clone(), queue));
        Ok(RedisStore {
            ctx,
            publishes,
            _listener: wake::AbortOnDrop(listener),
            _publisher: wake::AbortOnDrop(publisher),
        })
    }
}

#[derive(Debug)]
struct Routes {
    version: String,
    subs: Vec<(String, Pattern)>,
}

/// A herald store in Redis (or Valkey), shared by any number of nodes. See the [crate docs](crate).
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use herald_core::Herald;
/// use herald_redis::RedisStore;
///
/// let store = RedisStore::connect("redis://127.0.0.1:6379").await?;
/// let herald = Herald::builder().store(store).build().await?;
/// # herald.shutdown(std::time::Duration::from_secs(1)).await; Ok(()) }
/// ```
pub struct RedisStore {
    ctx: Arc<Ctx>,
    publishes: mpsc::UnboundedSender<PublishJob>,
    _listener: wake::AbortOnDrop,
    _publisher: wake::AbortOnDrop,
}

/// What every call needs: the connection, the scripts, the namespace and the clock.
struct Ctx {
    conn: ConnectionManager,
    scripts: Scripts,
    tag: String,
    counts_key: String,
    node: String,
    clock: Clock,
    hub: Arc<WakeupHub>,
    routes: Mutex<Option<Arc<Routes>>>,
}

/// Publishes waiting for the publisher task, which sends all that queued up meanwhile in one
/// script call (group commit: the per-call cost of a script is most of a single publish's).
struct PublishJob {
    events: Vec<Event>,
    done: oneshot::Sender<Result<Vec<Published>, StoreError>>,
}

/// The most events the publisher sends in one script call.
const PUBLISH_BATCH: usize = 256;

/// How many publish script calls one store has in flight at most.
const PUBLISH_IN_FLIGHT: usize = 4;

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("namespace", &self.ctx.tag)
            .field("node", &self.ctx.node)
            .finish_non_exhaustive()
    }
}

/// The most deliveries one claim hands out (a script's arguments and replies stay bounded).
const MAX_CLAIM: usize = 1000;

/// How many finished events one purge script removes before the next call.
const PURGE_BATCH: usize = 500;

impl RedisStore {
    /// Connects with the default prefix (`herald`) and timeouts.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), herald_redis::ConnectError> {
    /// let store = herald_redis::RedisStore::connect("redis://127.0.0.1:6379").await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect(url: &str) -> Result<RedisStore, ConnectError> {
        Self::builder(url).connect().await
    }

    /// Configures a store for the Redis at `url` (`redis://[user:password@]host[:port][/db]`).
    ///
    /// ```
    /// let builder = herald_redis::RedisStore::builder("redis://127.0.0.1:6379/0").prefix("herald");
    /// ```
    pub fn builder(url: impl Into<String>) -> RedisStoreBuilder {
        RedisStoreBuilder {
            url: url.into(),
            prefix: "herald".to_owned(),
            connection_timeout: Some(Duration::from_secs(5)),
            response_timeout: Some(Duration::from_secs(10)),
        }
    }

    /// The hash-tagged namespace every key starts with, such as `{herald}`.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), herald_redis::ConnectError> {
    /// let store = herald_redis::RedisStore::builder("redis://127.0.0.1").prefix("a").connect().await?;
    /// assert_eq!(store.namespace(), "{a}");
    /// # Ok(()) }
    /// ```
    pub fn namespace(&self) -> &str {
        &self.ctx.tag
    }

    /// Deletes every key of this store's namespace (events, deliveries, subscriptions): for tests
    /// and for taking a herald down for good. Other nodes sharing the prefix lose their data too.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let store = herald_redis::RedisStore::builder("redis://127.0.0.1").prefix("scratch").connect().await?;
    /// let deleted = store.destroy().await?;
    /// # Ok(()) }
    /// ```
    pub async fn destroy(&self) -> Result<u64, StoreError> {
        let mut conn = self.ctx.conn.clone();
        let pattern = format!("{}:*", self.ctx.tag);
        let mut cursor: u64 = 0;
        let mut deleted = 0;
        loop {
            let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await
                .map_err(StoreError::unavailable)?;
            if !keys.is_empty() {
                let n: u64 = redis::cmd("UNLINK")
                    .arg(&keys)
                    .query_async(&mut conn)
                    .await
                    .map_err(StoreError::unavailable)?;
                deleted += n;
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        *self.ctx.routes.lock().unwrap_or_else(|p| p.into_inner()) = None;
        Ok(deleted)
    }
}

impl Ctx {
    /// Publishes `events` in one script call (a retry when the subscriptions changed meanwhile).
    async fn publish(&self, events: &[Event]) -> Result<Vec<Published>, StoreError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        for _ in 0..16 {
            let routes = self.routes().await?;
            let now = self.clock.now();
            let mut inv = self.invocation(&self.scripts.publish, now);
            inv.arg(&routes.version).arg(events.len());
            for e in events {
                inv.arg(codec::event_key(e.id()))
                    .arg(e.key().unwrap_or(""))
                    .arg(e.deliver_at().as_millis())
                    .arg(e.priority().get())
                    .arg(e.expires_at().map(|t| t.as_millis().to_string()).unwrap_or_default())
                    .arg(if e.reply_to().is_some() { "1" } else { "0" });
                let fields = codec::event_fields(e);
                inv.arg(fields.len() * 2);
                for (k, v) in fields {
                    inv.arg(k).arg(v);
                }
                let matched: Vec<&String> = routes
                    .subs
                    .iter()
                    .filter(|(_, p)| p.matches(e.topic()))
                    .map(|(n, _)| n)
                    .collect();
                inv.arg(matched.len());
                for name in matched {
                    inv.arg(name).arg(codec::delivery_key(DeliveryId::new()));
                }
            }
            let mut out = array(self.run(&inv).await?)?.into_iter();
            match string(out.next().unwrap_or(Value::Nil))?.as_str() {
                "ROUTES" => {
                    self.forget_routes();
                    continue;
                }
                "OK" => {}
                other => return Err(corrupt(format!("publish answered '{other}'"))),
            }
            self.wake_local(out.next().unwrap_or(Value::Nil))?;
            let mut published = Vec::with_capacity(events.len());
            for e in events {
                let (Some(kind), Some(value)) = (out.next(), out.next()) else {
                    return Err(corrupt("publish answered fewer entries than events"));
                };
                published.push(match string(kind)?.as_str() {
                    "S" => Published::Stored {
                        id: e.id(),
                        deliveries: u32::try_from(int(value)?).unwrap_or(0),
                    },
                    _ => Published::Duplicate {
                        id: EventId::from_uuid(codec::parse_uuid(&bytes(value)?)?),
                    },
                });
            }
            return Ok(published);
        }
        Err(StoreError::Unavailable {
            message: "subscriptions kept changing while publishing; try again".into(),
            source: None,
        })
    }

    /// A script call with the common arguments (namespace, now, node) in place.
    fn invocation<'a>(&self, script: &'a Script, now: Timestamp) -> ScriptInvocation<'a> {
        let mut inv = script.prepare_invoke();
        inv.key(&self.counts_key)
            .arg(&self.tag)
            .arg(now.as_millis())
            .arg(&self.node);
        inv
    }

    async fn run(&self, inv: &ScriptInvocation<'_>) -> Result<Value, StoreError> {
        let mut conn = self.conn.clone();
        inv.invoke_async::<Value>(&mut conn)
            .await
            .map_err(StoreError::unavailable)
    }

    fn wake_local(&self, wakes: Value) -> Result<(), StoreError> {
        let wakes = array(wakes)?.into_iter().map(bytes).collect::<Result<Vec<_>, _>>()?;
        wake::deliver_local(&self.hub, &self.clock, wakes);
        Ok(())
    }

    async fn routes(&self) -> Result<Arc<Routes>, StoreError> {
        if let Some(r) = self.routes.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            return Ok(r);
        }
        let inv = self.invocation(&self.scripts.routes, self.clock.now());
        let mut items = array(self.run(&inv).await?)?.into_iter();
        let version = string(items.next().unwrap_or(Value::Nil))?;
        let mut subs = Vec::new();
        while let (Some(name), Some(pattern)) = (items.next(), items.next()) {
            let pattern = Pattern::new(&string(pattern)?).map_err(corrupt)?;
            subs.push((string(name)?, pattern));
        }
        let routes = Arc::new(Routes { version, subs });
        *self.routes.lock().unwrap_or_else(|p| p.into_inner()) = Some(routes.clone());
        Ok(routes)
    }

    fn forget_routes(&self) {
        *self.routes.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    async fn read(&self, ids: &[String], with_attempts: bool) -> Result<Vec<EventRecord>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let now = self.clock.now();
        let mut inv = self.invocation(&self.scripts.read, now);
        inv.arg(if with_attempts { "1" } else { "0" });
        for id in ids {
            inv.arg(id);
        }
        array(self.run(&inv).await?)?
            .into_iter()
            .map(|v| codec::record(v, now, with_attempts))
            .collect()
    }
}

fn verdict_args(v: &Verdict) -> Result<(&'static str, Vec<u8>, Vec<u8>), StoreError> {
    Ok(match v {
        Verdict::Succeeded { reply } => match reply {
            Some(r) => ("S", r.to_vec(), b"1".to_vec()),
            None => ("S", Vec::new(), b"0".to_vec()),
        },
        Verdict::Retry { at, error } => ("R", at.as_millis().to_string().into_bytes(), error.clone().into_bytes()),
        Verdict::Dead { reason } => ("D", reason.clone().into_bytes(), Vec::new()),
        Verdict::Released => ("L", Vec::new(), Vec::new()),
        _ => return Err(StoreError::Unsupported("this verdict")),
    })
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[async_trait]
impl Store for RedisStore {
    fn clock(&self) -> Clock {
        self.ctx.clock
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::durable(true)
    }

    async fn declare(&self, subscription: &SubscriptionSpec) -> Result<(), StoreError> {
        let mut inv = self.ctx.invocation(&self.ctx.scripts.declare, self.ctx.clock.now());
        inv.arg(subscription.name.as_str()).arg(subscription.pattern.as_str());
        self.ctx.run(&inv).await?;
        self.ctx.forget_routes();
        Ok(())
    }

    async fn remove_subscription(&self, subscription: &SubscriptionName) -> Result<u64, StoreError> {
        let mut inv = self.ctx.invocation(&self.ctx.scripts.remove, self.ctx.clock.now());
        inv.arg(subscription.as_str());
        let n = int(self.ctx.run(&inv).await?)?;
        self.ctx.forget_routes();
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn publish(&self, events: Vec<Event>) -> Result<Vec<Published>, StoreError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let (done, answer) = oneshot::channel();
        let gone = || StoreError::Unavailable {
            message: "the store's publisher stopped (its runtime is shutting down)".into(),
            source: None,
        };
        self.publishes.send(PublishJob { events, done }).map_err(|_| gone())?;
        match answer.await {
            Ok(result) => result,
            Err(_) => Err(gone()),
        }
    }

    async fn claim(
        &self,
        subscription: &SubscriptionName,
        max: usize,
        lease: Duration,
    ) -> Result<Vec<Claimed>, StoreError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let max = max.min(MAX_CLAIM);
        let now = self.ctx.clock.now();
        let lease_ms = millis(lease);
        let lease_until = Timestamp::from_millis(now.as_millis().saturating_add(lease_ms));
        let mut inv = self.ctx.invocation(&self.ctx.scripts.claim, now);
        inv.arg(subscription.as_str()).arg(max).arg(lease_ms);
        let mut out = array(self.ctx.run(&inv).await?)?.into_iter();
        match string(out.next().unwrap_or(Value::Nil))?.as_str() {
            "OK" => {}
            "UNKNOWN" => return Err(StoreError::UnknownSubscription(subscription.clone())),
            other => return Err(corrupt(format!("claim answered '{other}'"))),
        }
        self.ctx.wake_local(out.next().unwrap_or(Value::Nil))?;
        let mut claimed = Vec::with_capacity(out.len());
        for entry in out {
            let mut f = array(entry)?.into_iter();
            let (Some(did), Some(token), Some(attempt), Some(due), Some(eid), Some(hash)) =
                (f.next(), f.next(), f.next(), f.next(), f.next(), f.next())
            else {
                return Err(corrupt("a short claim entry"));
            };
            let delivery = DeliveryId::from_uuid(codec::parse_uuid(&bytes(did)?)?);
            let token = u64::try_from(int(token)?).map_err(corrupt)?;
            let attempt = u32::try_from(int(attempt)?).map_err(corrupt)?;
            let due = Timestamp::from_millis(int(due)?);
            let event = codec::decode(EventId::from_uuid(codec::parse_uuid(&bytes(eid)?)?), hash)?;
            claimed.push(Claimed::new(
                Lease { delivery, token },
                lease_until,
                subscription.clone(),
                event,
                attempt,
                due,
            ));
        }
        Ok(claimed)
    }

    async fn extend(&self, leases: &[Lease], lease: Duration) -> Result<Vec<bool>, StoreError> {
        if leases.is_empty() {
            return Ok(Vec::new());
        }
        let mut inv = self.ctx.invocation(&self.ctx.scripts.extend, self.ctx.clock.now());
        inv.arg(millis(lease));
        for l in leases {
            inv.arg(codec::delivery_key(l.delivery)).arg(l.token.to_string());
        }
        array(self.ctx.run(&inv).await?)?
            .into_iter()
            .map(|v| int(v).map(|n| n == 1))
            .collect()
    }

    async fn complete(&self, outcomes: Vec<Outcome>) -> Result<Vec<Completion>, StoreError> {
        if outcomes.is_empty() {
            return Ok(Vec::new());
        }
        let mut inv = self.ctx.invocation(&self.ctx.scripts.complete, self.ctx.clock.now());
        for o in &outcomes {
            let (kind, a, b) = verdict_args(&o.verdict)?;
            inv.arg(codec::delivery_key(o.lease.delivery))
                .arg(o.lease.token.to_string())
                .arg(kind)
                .arg(o.finished_at.as_millis())
                .arg(a)
                .arg(b);
        }
        let mut out = array(self.ctx.run(&inv).await?)?.into_iter();
        self.ctx.wake_local(out.next().unwrap_or(Value::Nil))?;
        out.map(|v| int(v).map(|n| if n == 1 { Completion::Applied } else { Completion::Stale }))
            .collect()
    }

    async fn cancel(&self, id: EventId, end: CancelAs) -> Result<Cancelled, StoreError> {
        let to = match end {
            CancelAs::Cancelled => DeliveryStatus::Cancelled,
            CancelAs::Expired => DeliveryStatus::Expired,
        };
        let mut inv = self.ctx.invocation(&self.ctx.scripts.cancel, self.ctx.clock.now());
        inv.arg(codec::event_key(id)).arg(to.as_str());
        Ok(match int(self.ctx.run(&inv).await?)? {
            n if n < 0 => Cancelled::NotFound,
            0 => Cancelled::TooLate,
            n => Cancelled::Ended(u32::try_from(n).unwrap_or(u32::MAX)),
        })
    }

    async fn requeue(&self, id: DeliveryId) -> Result<Requeued, StoreError> {
        let mut inv = self.ctx.invocation(&self.ctx.scripts.requeue, self.ctx.clock.now());
        inv.arg(codec::delivery_key(id));
        let mut out = array(self.ctx.run(&inv).await?)?.into_iter();
        let kind = string(out.next().unwrap_or(Value::Nil))?;
        match kind.as_str() {
            "NOTFOUND" => Ok(Requeued::NotFound),
            "NOTDEAD" => Ok(Requeued::NotDead(codec::status(&string(
                out.next().unwrap_or(Value::Nil),
            )?)?)),
            _ => {
                self.ctx.wake_local(out.next().unwrap_or(Value::Nil))?;
                Ok(Requeued::Requeued)
            }
        }
    }

    async fn next_due(
        &self,
        subscriptions: &[SubscriptionName],
        after: Timestamp,
    ) -> Result<Option<Timestamp>, StoreError> {
        if subscriptions.is_empty() {
            return Ok(None);
        }
        let mut inv = self.ctx.invocation(&self.ctx.scripts.next_due, self.ctx.clock.now());
        inv.arg(after.as_millis());
        for s in subscriptions {
            inv.arg(s.as_str());
        }
        match self.ctx.run(&inv).await? {
            Value::Nil => Ok(None),
            v => Ok(Some(Timestamp::from_millis(int(v)?))),
        }
    }

    fn wakeups(&self) -> BoxStream<'static, Wakeup> {
        self.ctx.hub.subscribe()
    }

    async fn query(&self, filter: &EventFilter, page: PageRequest) -> Result<Page<EventRecord>, StoreError> {
        let limit = page.limit.clamp(1, PageRequest::MAX_LIMIT) as usize;
        let mut items = Vec::new();
        let mut conn = self.ctx.conn.clone();
        if let Some(key) = &filter.key {
            // A key names at most one live event: look it up instead of scanning.
            let held: Option<String> = redis::cmd("GET")
                .arg(format!("{}:k:{key}", self.ctx.tag))
                .query_async(&mut conn)
                .await
                .map_err(StoreError::unavailable)?;
            let held = held.filter(|id| page.after.is_none_or(|a| id.as_str() < codec::event_key(a).as_str()));
            for r in self.ctx.read(held.as_slice(), false).await? {
                if filter.matches(&r) {
                    items.push(r);
                }
            }
            return Ok(Page::from_lookahead(items, limit));
        }
        let chunk = (limit + 1).max(64);
        let mut cursor = page.after.map(codec::event_key);
        loop {
            let max = match &cursor {
                Some(c) => format!("({c}"),
                None => "+".to_owned(),
            };
            let ids: Vec<String> = redis::cmd("ZRANGE")
                .arg(format!("{}:events", self.ctx.tag))
                .arg(max)
                .arg("-")
                .arg("BYLEX")
                .arg("REV")
                .arg("LIMIT")
                .arg(0)
                .arg(chunk)
                .query_async(&mut conn)
                .await
                .map_err(StoreError::unavailable)?;
            let Some(last) = ids.last().cloned() else { break };
            for r in self.ctx.read(&ids, false).await? {
                if filter.matches(&r) {
                    items.push(r);
                    if items.len() > limit {
                        return Ok(Page::from_lookahead(items, limit));
                    }
                }
            }
            if ids.len() < chunk {
                break;
            }
            cursor = Some(last);
        }
        Ok(Page::from_lookahead(items, limit))
    }

    async fn get(&self, id: EventId) -> Result<Option<EventRecord>, StoreError> {
        Ok(self.ctx.read(&[codec::event_key(id)], true).await?.pop())
    }

    async fn stats(&self) -> Result<Stats, StoreError> {
        let inv = self.ctx.invocation(&self.ctx.scripts.stats, self.ctx.clock.now());
        let mut stats = Stats::default();
        let mut items = array(self.ctx.run(&inv).await?)?.into_iter();
        while let (Some(k), Some(v)) = (items.next(), items.next()) {
            let n = u64::try_from(int(v)?).unwrap_or(0);
            match string(k)?.as_str() {
                "events" => stats.events = n,
                "unrouted" => stats.unrouted = n,
                other => {
                    if let Ok(s) = other.parse::<DeliveryStatus>() {
                        *stats.deliveries.slot_mut(s) = n;
                    }
                }
            }
        }
        Ok(stats)
    }

    async fn purge(&self, before: Timestamp) -> Result<u64, StoreError> {
        let mut removed = 0;
        loop {
            let mut inv = self.ctx.invocation(&self.ctx.scripts.purge, self.ctx.clock.now());
            inv.arg(before.as_millis()).arg(PURGE_BATCH);
            let n = usize::try_from(int(self.ctx.run(&inv).await?)?).unwrap_or(0);
            removed += n as u64;
            if n < PURGE_BATCH {
                return Ok(removed);
            }
        }
    }

    fn backlog(&self) -> Option<u64> {
        None
    }
}

/// Sends queued publishes in batches: one script call for everything that queued up while the
/// calls in flight ran (at most [`PUBLISH_IN_FLIGHT`] at once, so that the round trip does not
/// bound the rate). Runs until the store is dropped.
async fn publish_batches(ctx: Arc<Ctx>, mut queue: mpsc::UnboundedReceiver<PublishJob>) {
    let slots = Arc::new(Semaphore::new(PUBLISH_IN_FLIGHT));
    while let Some(first) = queue.recv().await {
        // Wait for a free slot before gathering: what arrives meanwhile joins this batch.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut jobs = vec![first];
        let mut count = jobs[0].events.len();
        while count < PUBLISH_BATCH {
            match queue.try_recv() {
                Ok(job) => {
                    count += job.events.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        let ctx = ctx.clone();
        tokio::spawn(async move {
            send_batch(&ctx, jobs).await;
            drop(slot);
        });
    }
}

async fn send_batch(ctx: &Ctx, mut jobs: Vec<PublishJob>) {
    if jobs.len() == 1 {
        let job = jobs.remove(0);
        let _ = job.done.send(ctx.publish(&job.events).await);
        return;
    }
    let events: Vec<Event> = jobs.iter().flat_map(|j| j.events.iter().cloned()).collect();
    match ctx.publish(&events).await {
        Ok(published) => {
            let mut rest = published.into_iter();
            for job in jobs {
                let mine: Vec<Published> = rest.by_ref().take(job.events.len()).collect();
                let _ = job.done.send(Ok(mine));
            }
        }
        Err(e) => {
            for job in jobs {
                let _ = job.done.send(Err(copy_error(&e)));
            }
        }
    }
}

/// The same error for another caller of a shared batch (a store error is not `Clone`: its source
/// stays with the first).
fn copy_error(e: &StoreError) -> StoreError {
    match e {
        StoreError::Unavailable { message, .. } => StoreError::Unavailable {
            message: message.clone(),
            source: None,
        },
        StoreError::Unsupported(what) => StoreError::Unsupported(what),
        StoreError::UnknownSubscription(name) => StoreError::UnknownSubscription(name.clone()),
        StoreError::Corrupt(what) => StoreError::Corrupt(what.clone()),
        other => StoreError::Unavailable {
            message: other.to_string(),
            source: None,
        },
    }
}
