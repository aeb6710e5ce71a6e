//! `Herald::builder().redis(url)`: the Redis store in one call.

use herald_core::{HeraldBuilder, StoreError};

use crate::RedisStore;

mod sealed {
    pub trait Sealed {}
    impl Sealed for herald_core::HeraldBuilder {}
}

/// Adds [`redis`](RedisBuilderExt::redis) to [`HeraldBuilder`]. Sealed: only herald implements it.
pub trait RedisBuilderExt: sealed::Sealed + Sized {
    /// Uses the Redis (or Valkey) at `url` with the default prefix `herald` (use
    /// [`RedisStore::builder`] with [`HeraldBuilder::connect`] for another prefix). `build()`
    /// connects, and reports a Redis that cannot be reached.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), herald_core::Error> {
    /// use herald_core::Herald;
    /// use herald_redis::RedisBuilderExt;
    ///
    /// let herald = Herald::builder().redis("redis://127.0.0.1:6379").workers(32).build().await?;
    /// # herald.shutdown(std::time::Duration::from_secs(1)).await; Ok(()) }
    /// ```
    fn redis(self, url: impl Into<String>) -> Self;
}

impl RedisBuilderExt for HeraldBuilder {
    fn redis(self, url: impl Into<String>) -> Self {
        let builder = RedisStore::builder(url);
        self.connect(async move { builder.connect().await.map_err(StoreError::from) })
    }
}
