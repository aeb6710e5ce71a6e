//! Opening the configured store.

use std::sync::Arc;

use herald::{MemoryStore, Store};

use crate::config::{Config, StoreKind};
use crate::server::ServeError;

/// The store the configuration names: in memory, or the embedded store in `config.data`
/// (`<data>/herald.db`, the directory created if needed).
pub fn open_store(config: &Config) -> Result<Arc<dyn Store>, ServeError> {
    match config.store {
        StoreKind::Memory => Ok(Arc::new(MemoryStore::new())),
        StoreKind::Sqlite => open_sqlite(config),
    }
}

#[cfg(feature = "sqlite")]
fn open_sqlite(config: &Config) -> Result<Arc<dyn Store>, ServeError> {
    std::fs::create_dir_all(&config.data).map_err(|e| ServeError::Store(Box::new(e)))?;
    let store =
        herald::sqlite::SqliteStore::open(config.data.join("herald.db")).map_err(|e| ServeError::Store(Box::new(e)))?;
    Ok(Arc::new(store))
}

#[cfg(not(feature = "sqlite"))]
fn open_sqlite(_config: &Config) -> Result<Arc<dyn Store>, ServeError> {
    Err(ServeError::Config(crate::config::ConfigError::Invalid(
        "this build has no embedded store (the `sqlite` feature is off): use store = \"memory\"".into(),
    )))
}
