//! The Redis store against the whole Store contract (herald-testkit), on the Redis at
//! 127.0.0.1:6379. Each case gets its own random prefix; the keys are deleted when it passes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use async_trait::async_trait;
use futures_util::stream::BoxStream;
use herald_core::{
    CancelAs, Cancelled, Capabilities, Claimed, Clock, Completion, DeliveryId, Event, EventFilter, EventId,
    EventRecord, Lease, Outcome, Page, PageRequest, Published, Requeued, Stats, Store, StoreError, SubscriptionName,
    SubscriptionSpec, Timestamp, Wakeup,
};
use herald_redis::RedisStore;

const URL: &str = "redis://127.0.0.1:6379";

/// A store in a fresh namespace, whose keys are deleted when the case drops it.
async fn store() -> Scratch {
    let prefix = format!("herald-test-{:016x}", fastrand::u64(..));
    let store = RedisStore::builder(URL)
        .prefix(prefix)
        .timeouts(None, None)
        .connect()
        .await
        .expect("the Redis at 127.0.0.1:6379 (start it: redis-server --daemonize yes)");
    Scratch(Some(store))
}

herald_testkit::store_conformance!(store());

/// A store that deletes its keys when dropped (the suite's factory hands out the store itself, so
/// the clean-up rides on a wrapper that passes every call through).
#[derive(Debug)]
struct Scratch(Option<RedisStore>);

impl Drop for Scratch {
    fn drop(&mut self) {
        let Some(store) = self.0.take() else { return };
        let ns = store.namespace().to_owned();
        drop(store);
        // The case's runtime is gone by now: clean up with a blocking client.
        if let Ok(client) = redis::Client::open(URL) {
            if let Ok(mut conn) = client.get_connection() {
                let keys: Vec<String> = redis::cmd("KEYS")
                    .arg(format!("{ns}:*"))
                    .query(&mut conn)
                    .unwrap_or_default();
                if !keys.is_empty() {
                    let _: Result<(), _> = redis::cmd("UNLINK").arg(keys).query(&mut conn);
                }
            }
        }
    }
}

impl Scratch {
    fn s(&self) -> &RedisStore {
        self.0.as_ref().expect("the store lives until the wrapper is dropped")
    }
}

#[async_trait]
impl Store for Scratch {
    fn clock(&self) -> Clock {
        self.s().clock()
    }
    fn capabilities(&self) -> Capabilities {
        self.s().capabilities()
    }
    async fn declare(&self, s: &SubscriptionSpec) -> Result<(), StoreError> {
        self.s().declare(s).await
    }
    async fn remove_subscription(&self, s: &SubscriptionName) -> Result<u64, StoreError> {
        self.s().remove_subscription(s).await
    }
    async fn publish(&self, events: Vec<Event>) -> Result<Vec<Published>, StoreError> {
        self.s().publish(events).await
    }
    async fn claim(&self, s: &SubscriptionName, max: usize, lease: Duration) -> Result<Vec<Claimed>, StoreError> {
        self.s().claim(s, max, lease).await
    }
    async fn extend(&self, leases: &[Lease], lease: Duration) -> Result<Vec<bool>, StoreError> {
        self.s().extend(leases, lease).await
    }
    async fn complete(&self, outcomes: Vec<Outcome>) -> Result<Vec<Completion>, StoreError> {
        self.s().complete(outcomes).await
    }
    async fn cancel(&self, id: EventId, end: CancelAs) -> Result<Cancelled, StoreError> {
        self.s().cancel(id, end).await
    }
    async fn requeue(&self, id: DeliveryId) -> Result<Requeued, StoreError> {
        self.s().requeue(id).await
    }
    async fn next_due(&self, subs: &[SubscriptionName], after: Timestamp) -> Result<Option<Timestamp>, StoreError> {
        self.s().next_due(subs, after).await
    }
    fn wakeups(&self) -> BoxStream<'static, Wakeup> {
        self.s().wakeups()
    }
    async fn query(&self, filter: &EventFilter, page: PageRequest) -> Result<Page<EventRecord>, StoreError> {
        self.s().query(filter, page).await
    }
    async fn get(&self, id: EventId) -> Result<Option<EventRecord>, StoreError> {
        self.s().get(id).await
    }
    async fn stats(&self) -> Result<Stats, StoreError> {
        self.s().stats().await
    }
    async fn purge(&self, before: Timestamp) -> Result<u64, StoreError> {
        self.s().purge(before).await
    }
    fn backlog(&self) -> Option<u64> {
        self.s().backlog()
    }
}
