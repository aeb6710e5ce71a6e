//! `Herald::builder().sqlite(path)`: the embedded store in one call.

use std::path::Path;

use herald_core::{HeraldBuilder, StoreError};

use crate::SqliteStore;

mod sealed {
    pub trait Sealed {}
    impl Sealed for herald_core::HeraldBuilder {}
}

/// Adds [`sqlite`](SqliteBuilderExt::sqlite) to [`HeraldBuilder`]. Sealed: only herald implements it.
pub trait SqliteBuilderExt: sealed::Sealed + Sized {
    /// Uses the embedded store in the file at `path`, created (with its directory) if missing.
    /// An error opening it ([`OpenError`](crate::OpenError)) is reported by `build()`.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), herald_core::Error> {
    /// use herald_core::Herald;
    /// use herald_sqlite::SqliteBuilderExt;
    ///
    /// let herald = Herald::builder().sqlite("herald.db").workers(16).build().await?;
    /// # herald.shutdown(std::time::Duration::from_secs(1)).await; Ok(()) }
    /// ```
    fn sqlite(self, path: impl AsRef<Path>) -> Self;
}

impl SqliteBuilderExt for HeraldBuilder {
    fn sqlite(self, path: impl AsRef<Path>) -> Self {
        self.try_store(SqliteStore::open(path).map_err(StoreError::from))
    }
}
