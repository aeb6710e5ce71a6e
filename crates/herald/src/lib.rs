//! # herald
//!
//! Reliable events for Rust services: publish an event now, later or at a time, and have every
//! subscription whose pattern matches its topic handle it — with retries and exponential backoff,
//! per-attempt timeouts, panic isolation, a dead-letter set, priorities, request/reply, and a
//! history of every event and attempt to query.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), herald::Error> {
//! use herald::{Context, HandlerError, Herald};
//! use serde::{Deserialize, Serialize};
//! use std::time::Duration;
//!
//! #[derive(Serialize, Deserialize)]
//! struct OrderPaid { order: u64, cents: u64 }
//!
//! let herald = Herald::builder().build().await?;
//!
//! herald
//!     .subscribe("receipts", "order.paid")
//!     .max_attempts(5)
//!     .timeout(Duration::from_secs(10))
//!     .handle(|paid: OrderPaid, ctx: Context| async move {
//!         println!("receipt for order {} (attempt {})", paid.order, ctx.attempt());
//!         Ok::<_, HandlerError>(())
//!     })
//!     .await?;
//!
//! herald.publish("order.paid", &OrderPaid { order: 7, cents: 1999 }).await?;
//! herald
//!     .publish("order.paid", &OrderPaid { order: 8, cents: 500 })
//!     .delay(Duration::from_secs(30))
//!     .await?;
//!
//! herald.shutdown(Duration::from_secs(5)).await;
//! # Ok(()) }
//! ```
//!
//! ## Where things are
//! - [`Herald`]: publish ([`Herald::publish`], [`Herald::publish_batch`], [`Herald::request`]),
//!   subscribe ([`Herald::subscribe`]), cancel, retry, query ([`Herald::events`]), shut down.
//! - [`Store`]: where events live. [`MemoryStore`] is the in-process default; durable stores
//!   come as features of this crate (none is on by default):
//!
//! | feature | module | store |
//! |---|---|---|
//! | `sqlite` | `herald::sqlite` | the embedded durable store: one SQLite file, no server (`Herald::builder().sqlite("herald.db")`) |
//! | `redis` | `herald::redis` | Redis or Valkey, shared by any number of processes (`Herald::builder().redis("redis://127.0.0.1:6379")`) |
//! | `postgres` | `herald::postgres` | PostgreSQL, shared by any number of processes (`Herald::builder().postgres("postgres://app@db/app")`) |
//!
//! - Cron schedules (feature `cron`): `herald.cron("nightly-report", "0 3 * * *")` publishes one
//!   event per tick across every node that shares the store (module `herald::cron`).
//! - Topics are dotted lowercase names (`order.paid`); patterns add `*` (one segment) and a final
//!   `>` (the rest).
//! - Metrics go through the `metrics` facade (see the names in the README); spans through
//!   `tracing`.

pub use herald_core::*;

/// The embedded durable store: events, deliveries and history in one SQLite file, no server.
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), herald::Error> {
/// use herald::sqlite::SqliteBuilderExt;
/// use herald::Herald;
///
/// let herald = Herald::builder().sqlite("herald.db").build().await?;
/// # herald.shutdown(std::time::Duration::from_secs(1)).await; Ok(()) }
/// ```
#[cfg(feature = "sqlite")]
pub mod sqlite {
    pub use herald_sqlite::{OpenError, SqliteBuilderExt, SqliteStore, SqliteStoreBuilder};
}

/// A Redis (or Valkey) store that any number of processes share: due-ordered sorted sets, Lua
/// scripts for atomic claims and completions, pub/sub wakeups.
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), herald::Error> {
/// use herald::redis::RedisBuilderExt;
/// use herald::Herald;
///
/// let herald = Herald::builder().redis("redis://127.0.0.1:6379").build().await?;
/// # herald.shutdown(std::time::Duration::from_secs(1)).await; Ok(()) }
/// ```
#[cfg(feature = "redis")]
pub mod redis {
    pub use herald_redis::{ConnectError, RedisBuilderExt, RedisStore, RedisStoreBuilder};
}

/// A PostgreSQL store that any number of processes share: `SKIP LOCKED` claims, LISTEN/NOTIFY
/// wakeups, migrations on connect.
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), herald::Error> {
/// use herald::postgres::PostgresBuilderExt;
/// use herald::Herald;
///
/// let herald = Herald::builder().postgres("postgres://postgres@127.0.0.1/test").build().await?;
/// # herald.shutdown(std::time::Duration::from_secs(1)).await; Ok(()) }
/// ```
#[cfg(feature = "postgres")]
pub mod postgres {
    pub use herald_postgres::{ConnectError, PostgresBuilderExt, PostgresStore, PostgresStoreBuilder};
}
