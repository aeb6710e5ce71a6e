//! herald-sqlite: herald's embedded durable store. One SQLite file, no server to install.
//!
//! ```no_run
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), herald_core::Error> {
//! use herald_core::Herald;
//! use herald_sqlite::SqliteBuilderExt;
//!
//! let herald = Herald::builder().sqlite("data/herald.db").build().await?;
//! # herald.shutdown(std::time::Duration::from_secs(1)).await; Ok(()) }
//! ```
//!
//! # What it guarantees
//! - **Durable**: `publish` returns once the events are in the file and the write-ahead log holding
//!   them is synced: what `synchronous=FULL` gives (`NORMAL` alone syncs only at checkpoints, so
//!   events already reported stored could be lost to a power cut), with the sync done by a thread
//!   of its own for every commit made since the last one. Outcomes, cancels, requeues and
//!   subscription changes are synced the same way. Claims and lease extensions alone are not waited
//!   for: losing one to a power cut only makes its delivery claimable again, as its lease running
//!   out would, and the next synced commit covers it. Nothing is answered (nor woken for) before
//!   every commit before it is synced; history reads on other connections may see a commit up to
//!   one sync (about a millisecond) before it is on disk.
//! - **At least once**: a delivery whose worker died is claimable again as soon as its lease runs
//!   out, by any worker of the next process; the lost attempt is recorded as `lease_expired`.
//! - **Flat memory**: scheduled events stay on disk; the runtime asks the store for the next due
//!   time only.
//!
//! # How it works
//! One writer thread owns the only writing connection and group-commits the writes of all
//! concurrent callers into one transaction, a statement per table for each run of publishes or
//! outcomes; a sync thread syncs the log once for every group committed meanwhile (one fsync for
//! many publishes and outcomes, while the writer goes on with the next group); reads run on
//! connections of their own and never wait for it. History pages come newest first in the order
//! events were stored; the cursor is the last event id of the previous page. A claim is one `UPDATE ... WHERE id
//! IN (SELECT ... ORDER BY priority DESC, due LIMIT n) RETURNING ...`. Due times and leases are judged
//! by the store's [`Clock`], passed into every statement, never by SQLite's own time.
//!
//! The file carries its schema version; migrations run when it is opened. A file written by a newer
//! herald, another program's database, a damaged file, a path that cannot be created, and a file
//! already open in another process are refused with an [`OpenError`] that says so.
//!
//! One process per file: the store keeps its counts and wakeups in process, so a second process
//! is refused ([`OpenError::Locked`]) rather than silently corrupting them.

mod codec;
mod counts;
mod ext;
mod lock;
mod read;
mod schema;
mod shared;
mod writer;

pub use ext::SqliteBuilderExt;

use std::fmt;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::stream::{self, BoxStream};
use herald_core::{
    CancelAs, Cancelled, Capabilities, Claimed, Clock, Completion, DeliveryId, Event, EventFilter, EventId,
    EventRecord, Lease, Outcome, Page, PageRequest, Published, Requeued, Stats, Store, StoreError, SubscriptionName,
    SubscriptionSpec, Timestamp, Wakeup,
};
use rusqlite::{Connection, ErrorCode, OpenFlags};
use tokio::runtime::RuntimeFlavor;
use tokio::sync::broadcast;

use crate::counts::Counts;
use crate::read::Readers;
use crate::schema::{status, Found};
use crate::shared::Shared;
use crate::writer::{Command, Reply, Writer};

/// The store file could not be opened. Each variant says what to do about it.
///
/// Converts into [`StoreError`], which is how [`SqliteBuilderExt::sqlite`] reports it from
/// `build()`.
///
/// ```
/// use herald_sqlite::{OpenError, SqliteStore};
///
/// let dir = std::env::temp_dir().join(format!("herald-doc-open-error-{}", std::process::id()));
/// let first = SqliteStore::open(dir.join("events.db"))?;
/// match SqliteStore::open(dir.join("events.db")) {
///     Err(e @ OpenError::Locked { .. }) => assert!(e.to_string().contains("in use by another process")),
///     other => panic!("expected Locked, got {other:?}"),
/// }
/// drop(first);
/// # std::fs::remove_dir_all(&dir).ok();
/// # Ok::<(), OpenError>(())
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// A directory or file on the way could not be created or opened.
    #[error("cannot create or open '{path}': {source}; check that the directory exists or can be created, and its permissions")]
    Create {
        /// The path that failed.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// Another process has the store open.
    #[error("'{path}' is in use by another process (it holds '{lock}'): herald opens a store file from one process at a time; stop the other process or give this one a file of its own")]
    Locked {
        /// The store file.
        path: PathBuf,
        /// The lock file the other process holds.
        lock: PathBuf,
    },
    /// The file was written by a newer herald.
    #[error("'{path}' was written by a newer herald (schema v{found}, this build knows v{known}): upgrade herald")]
    NewerSchema {
        /// The store file.
        path: PathBuf,
        /// The file's schema version.
        found: u32,
        /// The newest schema version this build knows.
        known: u32,
    },
    /// The file is another program's SQLite database.
    #[error("'{path}' is a SQLite database but not a herald store: give herald a file of its own")]
    Foreign {
        /// The store file.
        path: PathBuf,
    },
    /// The file is not a SQLite database, or it is damaged.
    #[error("'{path}' is not a database or is damaged ({source}): restore it from a backup, or move it away to start an empty store")]
    Corrupt {
        /// The store file.
        path: PathBuf,
        /// SQLite's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// SQLite failed in another way while opening the file.
    #[error("cannot open '{path}' with SQLite: {source}")]
    Sqlite {
        /// The store file.
        path: PathBuf,
        /// SQLite's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl OpenError {
    fn sqlite(path: &Path, e: rusqlite::Error) -> Self {
        let path = path.to_path_buf();
        match e.sqlite_error_code() {
            Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => OpenError::Corrupt {
                path,
                source: Box::new(e),
            },
            _ => OpenError::Sqlite {
                path,
                source: Box::new(e),
            },
        }
    }
}

impl From<OpenError> for StoreError {
    fn from(e: OpenError) -> Self {
        match e {
            OpenError::NewerSchema { .. } | OpenError::Foreign { .. } | OpenError::Corrupt { .. } => {
                StoreError::Corrupt(e.to_string())
            }
            other => StoreError::Unavailable {
                message: other.to_string(),
                source: Some(Box::new(other)),
            },
        }
    }
}

/// Opens a [`SqliteStore`] with options.
///
/// ```no_run
/// use herald_sqlite::SqliteStore;
/// let store = SqliteStore::builder("herald.db").open()?;
/// # Ok::<(), herald_sqlite::OpenError>(())
/// ```
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `open` is called"]
pub struct SqliteStoreBuilder {
    path: PathBuf,
    clock: Option<Clock>,
}

impl SqliteStoreBuilder {
    /// Judge due times and leases by this clock (default: a new [`Clock`], which follows tokio's
    /// clock from the moment the store opens).
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Opens (creating if needed) the file and its directory, takes the one-process lock, and
    /// brings the schema up to date.
    pub fn open(self) -> Result<SqliteStore, OpenError> {
        open(self.path, self.clock.unwrap_or_default(), None)
    }
}

/// herald's embedded durable store: events, deliveries and their history in one SQLite file.
/// See the [crate docs](crate).
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use herald_core::Herald;
/// use herald_sqlite::SqliteStore;
///
/// let store = SqliteStore::open("herald.db")?;
/// let herald = Herald::builder().store(store).build().await?;
/// # herald.shutdown(std::time::Duration::from_secs(1)).await; Ok(()) }
/// ```
#[derive(Clone)]
pub struct SqliteStore {
    clock: Clock,
    inner: Arc<Inner>,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    writer: Writer,
    readers: Readers,
    shared: Arc<Shared>,
    /// A directory made for a [`SqliteStore::temporary`] store, removed with it.
    temporary: Option<PathBuf>,
    _lock: lock::FileLock,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.writer.stop();
        self.readers.close();
        if let Some(dir) = &self.temporary {
            if let Err(e) = std::fs::remove_dir_all(dir) {
                tracing::warn!(dir = %dir.display(), error = %e, "herald-sqlite: could not remove a temporary store");
            }
        }
    }
}

fn open(path: PathBuf, clock: Clock, temporary: Option<PathBuf>) -> Result<SqliteStore, OpenError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| OpenError::Create {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    let lock = lock::lock(&path)?;
    // Opened once by hand first, so that a path that cannot be created fails with the OS's reason.
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|source| OpenError::Create {
            path: path.clone(),
            source,
        })?;
    let sql = |e| OpenError::sqlite(&path, e);
    let mut conn = Connection::open_with_flags(
        &path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sql)?;
    conn.busy_timeout(Duration::from_secs(5)).map_err(sql)?;
    // `rarray(?)`: the writer passes lists of ids to set-based statements.
    rusqlite::vtab::array::load_module(&conn).map_err(sql)?;
    // Every statement the writer runs stays prepared (rusqlite keeps 16 by default, fewer than
    // the writer has: re-preparing the claim statement would cost more than running it). The
    // multi-row updates alone are prepared for up to 27 list lengths each.
    conn.set_prepared_statement_cache_capacity(256);
    // A prepared statement keeps its plan whatever values are bound: without this, SQLite (built
    // with STAT4) prepares range statements again when their bound times change, which cost more
    // than running them.
    conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)
        .map_err(sql)?;
    match schema::inspect(&conn).map_err(sql)? {
        Found::Usable => {}
        Found::Newer(found) => {
            return Err(OpenError::NewerSchema {
                path,
                found,
                known: schema::VERSION,
            })
        }
        Found::Foreign => return Err(OpenError::Foreign { path }),
    }
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(sql)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(OpenError::Sqlite {
            path,
            source: format!("the file system does not support WAL mode (journal mode is '{mode}')").into(),
        });
    }
    // Checkpoints run on the writer's thread, each with two fsyncs (the log, then the file) that
    // stop every commit meanwhile. Every 8,192 pages (32 MiB of log) instead of SQLite's 1,000:
    // a page written again and again between two checkpoints is copied once, and under strace
    // the writer's time in checkpoint fsyncs fell from 0.58-0.62 s to 0.10-0.12 s in the
    // publish and claim benches.
    conn.execute_batch(
        "PRAGMA synchronous = FULL;
         PRAGMA cache_size = -16384;
         PRAGMA temp_store = MEMORY;
         PRAGMA journal_size_limit = 67108864;
         PRAGMA wal_autocheckpoint = 8192;",
    )
    .map_err(sql)?;
    schema::migrate(&mut conn).map_err(sql)?;
    let counts = Counts::load(&conn).map_err(sql)?;
    let subs = shared::load_subscriptions(&conn).map_err(sql)?;
    let shared = Arc::new(Shared::new(counts, subs));
    // The writer commits without waiting for the disk and its sync thread syncs the log before
    // anything is answered (see `writer`): `FULL`'s guarantee, with the sync off the writer.
    conn.execute_batch("PRAGMA synchronous = NORMAL;").map_err(sql)?;
    // SQLite's own (absolute) name of the file: the log is next to it, whatever the working
    // directory becomes.
    let wal = PathBuf::from(format!("{}-wal", conn.path().unwrap_or_default()));
    let writer = Writer::start(conn, wal, shared.clone(), counts).map_err(|source| OpenError::Create {
        path: path.clone(),
        source,
    })?;
    Ok(SqliteStore {
        clock,
        inner: Arc::new(Inner {
            readers: Readers::new(path.clone()),
            path,
            writer,
            shared,
            temporary,
            _lock: lock,
        }),
    })
}

/// What [`purge`](Store::purge) deletes per transaction, so that a large purge does not hold up
/// other writes.
const PURGE_CHUNK: usize = 1000;

fn mismatch() -> StoreError {
    StoreError::Unavailable {
        message: "the SQLite writer answered a different command (a bug in herald-sqlite)".into(),
        source: None,
    }
}

impl SqliteStore {
    /// Opens the store in the file at `path` with the default options; see [`SqliteStore::builder`].
    ///
    /// ```no_run
    /// let store = herald_sqlite::SqliteStore::open("data/herald.db")?;
    /// assert_eq!(store.path(), std::path::Path::new("data/herald.db"));
    /// # Ok::<(), herald_sqlite::OpenError>(())
    /// ```
    pub fn open(path: impl AsRef<Path>) -> Result<Self, OpenError> {
        Self::builder(path).open()
    }

    /// Configures a store in the file at `path`.
    pub fn builder(path: impl AsRef<Path>) -> SqliteStoreBuilder {
        SqliteStoreBuilder {
            path: path.as_ref().to_path_buf(),
            clock: None,
        }
    }

    /// A store in a new file in a new directory under the system's temporary directory, removed
    /// when the store is dropped: for tests and experiments.
    ///
    /// ```
    /// let store = herald_sqlite::SqliteStore::temporary()?;
    /// assert!(store.path().exists());
    /// # Ok::<(), herald_sqlite::OpenError>(())
    /// ```
    pub fn temporary() -> Result<Self, OpenError> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = std::env::temp_dir().join(format!(
            "herald-sqlite-{}-{nanos:08x}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).map_err(|source| OpenError::Create {
            path: dir.clone(),
            source,
        })?;
        let opened = open(dir.join("herald.db"), Clock::new(), Some(dir.clone()));
        if opened.is_err() {
            // Best effort: the error that matters is the one returned.
            let _ = std::fs::remove_dir_all(&dir);
        }
        opened
    }

    /// The store's file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs `f` on a thread of tokio's blocking pool. (On tokio's paused test clock, time does not
    /// jump ahead while such a task runs, as it could while awaiting another thread.)
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| StoreError::Unavailable {
                message: format!("a SQLite store task failed: {e}"),
                source: None,
            })?
    }

    /// Runs `command` in the writer's next group commit and waits until it is durable.
    async fn write(&self, command: Command) -> Result<Reply, StoreError> {
        let flavor = tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor());
        match flavor {
            // Only a current-thread runtime can have its clock paused: waiting there on a blocking
            // task keeps tokio from jumping time ahead while the writer works (awaiting the
            // writer thread directly would look idle and let the paused clock auto-advance).
            Ok(RuntimeFlavor::CurrentThread) => {
                self.blocking(move |inner| inner.writer.submit(command)?.wait_blocking())
                    .await
            }
            Ok(_) | Err(_) => self.inner.writer.submit(command)?.wait().await,
        }
    }
}

#[async_trait]
impl Store for SqliteStore {
    fn clock(&self) -> Clock {
        self.clock
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::durable(false)
    }

    async fn declare(&self, subscription: &SubscriptionSpec) -> Result<(), StoreError> {
        match self.write(Command::Declare(subscription.clone())).await? {
            Reply::Declared => Ok(()),
            _ => Err(mismatch()),
        }
    }

    async fn remove_subscription(&self, subscription: &SubscriptionName) -> Result<u64, StoreError> {
        let now = self.clock.now();
        let command = Command::Remove {
            name: subscription.clone(),
            now,
        };
        match self.write(command).await? {
            Reply::Removed(n) => Ok(n),
            _ => Err(mismatch()),
        }
    }

    async fn publish(&self, events: Vec<Event>) -> Result<Vec<Published>, StoreError> {
        let now = self.clock.now();
        match self.write(Command::Publish { events, now }).await? {
            Reply::Published(p) => Ok(p),
            _ => Err(mismatch()),
        }
    }

    async fn claim(
        &self,
        subscription: &SubscriptionName,
        max: usize,
        lease: Duration,
    ) -> Result<Vec<Claimed>, StoreError> {
        let now = self.clock.now();
        let command = Command::Claim {
            subscription: subscription.clone(),
            max,
            now,
            lease_until: now + lease,
        };
        match self.write(command).await? {
            Reply::Claimed(c) => Ok(c),
            _ => Err(mismatch()),
        }
    }

    async fn extend(&self, leases: &[Lease], lease: Duration) -> Result<Vec<bool>, StoreError> {
        let until = self.clock.now() + lease;
        let command = Command::Extend {
            leases: leases.to_vec(),
            until,
        };
        match self.write(command).await? {
            Reply::Extended(held) => Ok(held),
            _ => Err(mismatch()),
        }
    }

    async fn complete(&self, outcomes: Vec<Outcome>) -> Result<Vec<Completion>, StoreError> {
        let now = self.clock.now();
        match self.write(Command::Complete { outcomes, now }).await? {
            Reply::Completed(c) => Ok(c),
            _ => Err(mismatch()),
        }
    }

    async fn cancel(&self, id: EventId, end: CancelAs) -> Result<Cancelled, StoreError> {
        let now = self.clock.now();
        let to = match end {
            CancelAs::Cancelled => status::CANCELLED,
            CancelAs::Expired => status::EXPIRED,
        };
        match self.write(Command::Cancel { id, to, now }).await? {
            Reply::Cancelled(c) => Ok(c),
            _ => Err(mismatch()),
        }
    }

    async fn requeue(&self, id: DeliveryId) -> Result<Requeued, StoreError> {
        let now = self.clock.now();
        match self.write(Command::Requeue { id, now }).await? {
            Reply::Requeued(r) => Ok(r),
            _ => Err(mismatch()),
        }
    }

    async fn next_due(
        &self,
        subscriptions: &[SubscriptionName],
        after: Timestamp,
    ) -> Result<Option<Timestamp>, StoreError> {
        let ids: Vec<i64> = subscriptions
            .iter()
            .filter_map(|n| self.inner.shared.sub_id(n))
            .collect();
        if ids.is_empty() {
            return Ok(None);
        }
        self.blocking(move |inner| inner.readers.read(|conn| read::next_due(conn, &ids, after)))
            .await
    }

    fn wakeups(&self) -> BoxStream<'static, Wakeup> {
        let rx = self.inner.shared.listen();
        Box::pin(stream::unfold(rx, |mut rx| async move {
            match rx.recv().await {
                Ok(w) => Some((w, rx)),
                Err(broadcast::error::RecvError::Lagged(_)) => Some((Wakeup::Lagged, rx)),
                Err(broadcast::error::RecvError::Closed) => None,
            }
        }))
    }

    async fn query(&self, filter: &EventFilter, page: PageRequest) -> Result<Page<EventRecord>, StoreError> {
        let now = self.clock.now();
        let filter = filter.clone();
        self.blocking(move |inner| {
            inner
                .readers
                .read(|conn| read::query(conn, &inner.shared, &filter, page, now))
        })
        .await
    }

    async fn get(&self, id: EventId) -> Result<Option<EventRecord>, StoreError> {
        let now = self.clock.now();
        self.blocking(move |inner| inner.readers.read(|conn| read::get(conn, &inner.shared, id, now)))
            .await
    }

    async fn stats(&self) -> Result<Stats, StoreError> {
        let now = self.clock.now();
        let (counts, came_due) = self
            .blocking(move |inner| {
                let subs = inner.shared.sub_ids();
                // Counts and the due count from one moment: the writer cannot commit in between
                // unnoticed, because the counts are read inside the read transaction.
                inner.readers.read(|conn| {
                    let came_due = read::came_due(conn, &subs, now)?;
                    Ok((Counts::load(conn)?, came_due))
                })
            })
            .await?;
        let at = |code: i64| u64::try_from(counts.deliveries[code as usize]).unwrap_or(0);
        let scheduled_due = u64::try_from(came_due.0).unwrap_or(0).min(at(status::SCHEDULED));
        let retrying_due = u64::try_from(came_due.1).unwrap_or(0).min(at(status::RETRYING));
        let mut stats = Stats::default();
        stats.events = u64::try_from(counts.events).unwrap_or(0);
        stats.unrouted = u64::try_from(counts.unrouted).unwrap_or(0);
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
            let command = Command::Purge {
                before,
                max: PURGE_CHUNK,
            };
            match self.write(command).await? {
                Reply::Purged(n) => {
                    total += n;
                    if n < PURGE_CHUNK as u64 {
                        return Ok(total);
                    }
                }
                _ => return Err(mismatch()),
            }
        }
    }

    fn backlog(&self) -> Option<u64> {
        Some(self.inner.shared.backlog())
    }
}
