//! Keyset pages: newest first, each page after the last id of the one before, with no overlap and
//! no gap, the last page without a cursor.

use std::time::Duration;

use herald_core::{EventFilter, EventId, PageRequest, Store, StoreError};

use crate::fixture::{advance, declare, event, filter, pattern, publish};

/// Reads every page of `filter` at `limit` and returns the pages' ids.
async fn pages(
    store: &(impl Store + ?Sized),
    filter: &EventFilter,
    limit: u32,
) -> Result<Vec<Vec<EventId>>, StoreError> {
    let mut out = Vec::new();
    let mut request = PageRequest::first(limit);
    loop {
        let page = store.query(filter, request).await?;
        let ids: Vec<EventId> = page.items.iter().map(|r| r.event.id()).collect();
        assert!(
            ids.len() <= limit as usize,
            "a page holds at most {limit} items, got {}",
            ids.len()
        );
        out.push(ids);
        match page.next {
            Some(next) => {
                assert_eq!(
                    out.last().and_then(|p| p.last()),
                    Some(&next),
                    "the cursor is the last id of its page"
                );
                assert!(out.len() <= 100, "paging does not end");
                request = PageRequest::after(next, limit);
            }
            None => return Ok(out),
        }
    }
}

/// Pages come newest first, hold `limit` items except the last, cover every match once (no overlap,
/// no gap, also when the filter skips events between pages), and the last page, even a full one,
/// has no `next`.
pub async fn query_pages_newest_first_without_gaps<S: Store + ?Sized>(store: &S) -> Result<(), StoreError> {
    declare(store, "all", ">").await?;
    let mut wanted = Vec::new();
    let mut everything = Vec::new();
    for i in 0..10 {
        let topic = if i % 3 == 2 { "page.other" } else { "page.wanted" };
        let id = publish(store, event(store, topic)).await?;
        if topic == "page.wanted" {
            wanted.push(id);
        }
        everything.push(id);
        advance(Duration::from_millis(1)).await;
    }
    wanted.reverse();
    everything.reverse();
    assert_eq!(wanted.len(), 7);

    let all = EventFilter::default();
    let got = pages(store, &all, 4).await?;
    let sizes: Vec<_> = got.iter().map(Vec::len).collect();
    assert_eq!(sizes, vec![4, 4, 2], "10 events in pages of 4");
    assert_eq!(
        got.concat(),
        everything,
        "pages of 4 cover every event once, newest first"
    );
    let got = pages(store, &all, 5).await?;
    assert_eq!(
        got.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![5, 5],
        "a full last page has no next"
    );
    assert_eq!(got.concat(), everything);

    let only = filter(|f| f.topic = Some(pattern("page.wanted")));
    for limit in [1, 2, 3, 6, 7, 8] {
        let got = pages(store, &only, limit).await?;
        assert_eq!(
            got.concat(),
            wanted,
            "pages of {limit} of a filtered query cover every match once, newest first"
        );
        let full = 7 / limit as usize;
        let rest = 7 % limit as usize;
        let mut sizes = vec![limit as usize; full];
        if rest > 0 {
            sizes.push(rest);
        }
        assert_eq!(
            got.iter().map(Vec::len).collect::<Vec<_>>(),
            sizes,
            "page sizes at limit {limit}"
        );
    }
    let after_last = store.query(&all, PageRequest::after(everything[9], 5)).await?;
    assert!(
        after_last.items.is_empty() && after_last.next.is_none(),
        "nothing comes after the oldest event"
    );
    Ok(())
}
