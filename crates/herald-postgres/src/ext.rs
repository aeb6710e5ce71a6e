//! `Herald::builder().postgres(url)`: the PostgreSQL store in one call.

use herald_core::{HeraldBuilder, StoreError};

use crate::PostgresStore;

mod sealed {
    pub trait Sealed {}
    impl Sealed for herald_core::HeraldBuilder {}
}

/// Adds [`postgres`](PostgresBuilderExt::postgres) to [`HeraldBuilder`]. Sealed: only herald
/// implements it.
pub trait PostgresBuilderExt: sealed::Sealed + Sized {
    /// Uses the PostgreSQL store at `url` with the default options (schema `herald`): `build()`
    /// connects and reports a [`ConnectError`](crate::ConnectError) as a
    /// [`StoreError`]. For options, connect a [`PostgresStore::builder`] and pass it to `store`.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), herald_core::Error> {
    /// use herald_core::Herald;
    /// use herald_postgres::PostgresBuilderExt;
    ///
    /// let herald = Herald::builder().postgres("postgres://herald@127.0.0.1/app").workers(32).build().await?;
    /// # herald.shutdown(std::time::Duration::from_secs(1)).await; Ok(()) }
    /// ```
    fn postgres(self, url: impl Into<String>) -> Self;
}

impl PostgresBuilderExt for HeraldBuilder {
    fn postgres(self, url: impl Into<String>) -> Self {
        let builder = PostgresStore::builder(url);
        self.connect(async move { builder.connect().await.map_err(StoreError::from) })
    }
}
