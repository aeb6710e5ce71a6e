//! Request/reply: the outcome of a request is kept on its delivery and announced as an answer.

use bytes::Bytes;
use herald_core::{DeliveryStatus, EventStatus, Store, StoreError, Verdict, Wakeup};

use crate::fixture::{
    assert_no_wakeup, claim_one, declare, delivery, event, next_wakeup, publish, record, settle, succeeded,
};

/// A request (an event with `reply_to`) that succeeds with a reply keeps the reply on its delivery
/// record and wakes listeners with [`Wakeup::Answered`]; an event without `reply_to` answers nobody.
pub async fn success_stores_the_reply_and_answers_the_request<S: Store + ?Sized>(store: &S) -> Result<(), StoreError> {
    let sub = declare(store, "pricing", "price.*").await?;
    let mut request = event(store, "price.quote");
    request.reply_to = Some("inbox.42".into());
    let id = publish(store, request).await?;
    let c = claim_one(store, &sub, "the request").await?;
    let mut wakeups = store.wakeups();
    settle(
        store,
        c.lease,
        Verdict::Succeeded {
            reply: Some(Bytes::from_static(b"{\"price\":7}")),
        },
    )
    .await?;
    assert_eq!(
        next_wakeup(&mut wakeups).await,
        Some(Wakeup::Answered(id)),
        "the answered request wakes its caller"
    );

    let rec = record(store, id).await?;
    assert_eq!(rec.status, EventStatus::Succeeded);
    let d = delivery(&rec, &sub);
    assert_eq!(d.status, DeliveryStatus::Succeeded);
    assert_eq!(
        d.reply.as_deref(),
        Some(&b"{\"price\":7}"[..]),
        "the reply is kept on the delivery record"
    );

    let plain = publish(store, event(store, "price.update")).await?;
    let c = claim_one(store, &sub, "the plain event").await?;
    let mut wakeups = store.wakeups();
    settle(store, c.lease, succeeded()).await?;
    assert_no_wakeup(&mut wakeups, "an event without reply_to is not a request");
    let rec = record(store, plain).await?;
    assert_eq!(delivery(&rec, &sub).reply, None, "no reply was given");
    Ok(())
}

/// A request whose delivery dies is answered too: its caller learns of the final failure.
pub async fn dead_request_is_answered<S: Store + ?Sized>(store: &S) -> Result<(), StoreError> {
    let sub = declare(store, "pricing", "price.*").await?;
    let mut request = event(store, "price.quote");
    request.reply_to = Some("inbox.42".into());
    let id = publish(store, request).await?;
    let c = claim_one(store, &sub, "the request").await?;
    let mut wakeups = store.wakeups();
    settle(
        store,
        c.lease,
        Verdict::Dead {
            reason: "no such product".into(),
        },
    )
    .await?;
    assert_eq!(
        next_wakeup(&mut wakeups).await,
        Some(Wakeup::Answered(id)),
        "a dead request is answered"
    );
    let rec = record(store, id).await?;
    let d = delivery(&rec, &sub);
    assert_eq!((d.status, d.reply.clone()), (DeliveryStatus::Dead, None));
    assert_eq!(
        d.last_error.as_deref(),
        Some("no such product"),
        "the caller can read why"
    );
    Ok(())
}
