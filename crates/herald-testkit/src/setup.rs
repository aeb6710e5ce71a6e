//! The steps a backend's own store tests (beside the conformance suite) usually begin with, so
//! that each test reads as what it checks. Each panics with the error when the store refuses: they
//! are for tests.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use herald_core::{MemoryStore, Store};
//! use herald_testkit::setup;
//!
//! let store = MemoryStore::new();
//! let work = setup::declare(&store, "work", "job.*").await;
//! store.publish(vec![setup::due_now(&store, "job.run", "{}")]).await.unwrap();
//! assert_eq!(store.claim(&work, 10, std::time::Duration::from_secs(30)).await.unwrap().len(), 1);
//! # }
//! ```

use bytes::Bytes;
use herald_core::{Event, Store, SubscriptionName};

use crate::fixture;

/// Declares `subscription` with `pattern` and returns its name.
pub async fn declare(store: &(impl Store + ?Sized), subscription: &str, pattern: &str) -> SubscriptionName {
    fixture::declare(store, subscription, pattern)
        .await
        .unwrap_or_else(|e| panic!("declaring '{subscription}' ({pattern}): {e}"))
}

/// An event on `topic` carrying `payload`, published now by the store's clock and due at once.
pub fn due_now(store: &(impl Store + ?Sized), topic: &str, payload: impl Into<Bytes>) -> Event {
    Event::from_parts(fixture::due_now(store, topic, payload.into()))
}
