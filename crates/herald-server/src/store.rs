//! Opening the configured store.

use std::sync::Arc;

use herald::{MemoryStore, Store};

use crate::config::{Config, StoreKind};
use crate::server::ServeError;

/// The store the configuration names: in memory, the embedded store in `config.data`
/// (`<data>/herald.db`, the directory created if needed), or a shared store by URL.
pub async fn open_store(config: &Config) -> Result<Arc<dyn Store>, ServeError> {
    match &config.store {
        StoreKind::Memory => Ok(Arc::new(MemoryStore::new())),
        StoreKind::Sqlite => open_sqlite(config),
        StoreKind::Redis(url) => open_redis(url, &config.namespace).await,
        StoreKind::Postgres(url) => open_postgres(url, &config.namespace).await,
    }
}

#[cfg_attr(
    not(any(feature = "sqlite", feature = "redis", feature = "postgres")),
    allow(dead_code)
)]
fn failed(e: impl std::error::Error + Send + Sync + 'static) -> ServeError {
    ServeError::Store(Box::new(e))
}

#[cfg_attr(all(feature = "sqlite", feature = "redis", feature = "postgres"), allow(dead_code))]
fn not_built(feature: &str) -> ServeError {
    ServeError::Config(crate::config::ConfigError::Invalid(format!(
        "this build has no {feature} store (the `{feature}` feature of herald-server is off): \
         rebuild with `--features {feature}` or use store = \"memory\""
    )))
}

#[cfg(feature = "sqlite")]
fn open_sqlite(config: &Config) -> Result<Arc<dyn Store>, ServeError> {
    std::fs::create_dir_all(&config.data).map_err(failed)?;
    let store = herald::sqlite::SqliteStore::open(config.data.join("herald.db")).map_err(failed)?;
    Ok(Arc::new(store))
}

#[cfg(not(feature = "sqlite"))]
fn open_sqlite(_config: &Config) -> Result<Arc<dyn Store>, ServeError> {
    Err(not_built("sqlite"))
}

#[cfg(feature = "redis")]
async fn open_redis(url: &str, namespace: &str) -> Result<Arc<dyn Store>, ServeError> {
    let store = herald_redis::RedisStore::builder(url)
        .prefix(namespace)
        .connect()
        .await
        .map_err(failed)?;
    Ok(Arc::new(store))
}

#[cfg(not(feature = "redis"))]
async fn open_redis(_url: &str, _namespace: &str) -> Result<Arc<dyn Store>, ServeError> {
    Err(not_built("redis"))
}

#[cfg(feature = "postgres")]
async fn open_postgres(url: &str, namespace: &str) -> Result<Arc<dyn Store>, ServeError> {
    let store = herald_postgres::PostgresStore::builder(url)
        .schema(namespace)
        .connect()
        .await
        .map_err(failed)?;
    Ok(Arc::new(store))
}

#[cfg(not(feature = "postgres"))]
async fn open_postgres(_url: &str, _namespace: &str) -> Result<Arc<dyn Store>, ServeError> {
    Err(not_built("postgres"))
}
