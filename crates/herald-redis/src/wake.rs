//! Wakeups between nodes: every script that makes a delivery due (or answers a request) publishes
//! `<node>|N` (ready now), `<node>|D|<ms>` or `<node>|A|<event id>` on the namespace's channel. Each store listens on a
//! dedicated pub/sub connection, hands other nodes' messages to its [`WakeupHub`] and skips its own
//! (those it hands over itself, as soon as the script returns). After a lost connection it
//! resubscribes and reports [`Wakeup::Lagged`]: messages sent meanwhile are gone.

use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use herald_core::store::WakeupHub;
use herald_core::{Clock, EventId, Timestamp, Wakeup};
use redis::aio::PubSub;
use redis::{Client, RedisError};

use crate::codec::parse_uuid;

/// Decodes a wakeup message without its node tag: `N` (due now, by this node's clock: a delivery
/// that is ready at once), `D|<ms>` or `A|<event id>`.
pub(crate) fn decode(msg: &[u8], clock: &Clock) -> Option<Wakeup> {
    match msg.split_first() {
        Some((b'N', _)) => Some(Wakeup::Due(clock.now())),
        Some((b'D', rest)) => {
            let ms = std::str::from_utf8(rest.strip_prefix(b"|")?)
                .ok()?
                .parse::<i64>()
                .ok()?;
            Some(Wakeup::Due(Timestamp::from_millis(ms)))
        }
        Some((b'A', rest)) => {
            let id = parse_uuid(rest.strip_prefix(b"|")?).ok()?;
            Some(Wakeup::Answered(EventId::from_uuid(id)))
        }
        _ => None,
    }
}

/// Subscribes to `channel`; returns the connection once Redis confirmed the subscription.
pub(crate) async fn subscribe(client: &Client, channel: &str) -> Result<PubSub, RedisError> {
    let mut ps = client.get_async_pubsub().await?;
    ps.subscribe(channel).await?;
    Ok(ps)
}

/// Forwards other nodes' wakeups to `hub` for as long as the hub lives, resubscribing after a
/// lost connection.
pub(crate) async fn listen(
    client: Client,
    first: PubSub,
    channel: String,
    node: String,
    clock: Clock,
    hub: Weak<WakeupHub>,
) {
    let mut connection = Some(first);
    let mut backoff = Duration::from_millis(50);
    loop {
        if let Some(mut ps) = connection.take() {
            let mut messages = ps.on_message();
            while let Some(msg) = messages.next().await {
                let Some(hub) = hub.upgrade() else { return };
                let payload = msg.get_payload_bytes();
                let Some(sep) = payload.iter().position(|b| *b == b'|') else {
                    continue;
                };
                if &payload[..sep] == node.as_bytes() {
                    continue;
                }
                if let Some(w) = decode(&payload[sep + 1..], &clock) {
                    hub.send(w);
                }
            }
            tracing::warn!(%channel, "herald-redis: the wakeup connection was lost; resubscribing");
        }
        let Some(live) = hub.upgrade() else { return };
        match subscribe(&client, &channel).await {
            Ok(ps) => {
                connection = Some(ps);
                backoff = Duration::from_millis(50);
                // Whatever was published while we were away is lost: re-check everything.
                live.send(Wakeup::Lagged);
            }
            Err(e) => {
                drop(live);
                tracing::debug!(error = %e, ?backoff, "herald-redis: cannot resubscribe to wakeups yet");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// Aborts the listener when the store goes.
#[derive(Debug)]
pub(crate) struct AbortOnDrop(pub(crate) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Hands the wakeups a script returned to this node's listeners.
pub(crate) fn deliver_local(hub: &Arc<WakeupHub>, clock: &Clock, wakes: Vec<Vec<u8>>) {
    for w in wakes.iter().filter_map(|m| decode(m, clock)) {
        hub.send(w);
    }
}
