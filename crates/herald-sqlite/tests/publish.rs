//! What a publish stores, field by field.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use herald_core::{Event, EventParts, Store, Topic};
use herald_sqlite::SqliteStore;

/// The writer binds only the optional fields an event has, counting on a prepared statement's
/// parameters being `NULL` again once used: an event without them, stored by the same statement
/// right after one with all of them, has none.
#[test]
fn an_event_without_optional_fields_gets_none_from_the_one_before() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = SqliteStore::temporary().unwrap();
        let topic = Topic::new("job.run").unwrap();
        let now = store.clock().now();
        let mut full = EventParts::new(topic.clone(), "{}");
        full.published_at = now;
        full.deliver_at = now;
        full.content_type = Some("text/plain".into());
        full.source = Some("test".into());
        full.headers.insert("h", "v");
        full.expires_at = Some(now + Duration::from_secs(60));
        full.key = Some("k".into());
        full.reply_to = Some("node".into());
        let full = Event::from_parts(full);
        let mut bare = EventParts::new(topic, "{}");
        bare.published_at = now;
        bare.deliver_at = now;
        let bare = Event::from_parts(bare);
        for e in [&full, &bare] {
            store.publish(vec![e.clone()]).await.unwrap();
        }
        for e in [&full, &bare] {
            let stored = store.get(e.id()).await.unwrap().unwrap().event;
            assert_eq!(&stored, e);
        }
    });
}
