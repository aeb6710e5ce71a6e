//! Wakeups from other nodes: a dedicated connection LISTENs on the schema's channel, or, where
//! LISTEN is unavailable, a poll that tells the runtime to re-check at an interval.
//!
//! Every statement that makes a delivery due or answers a request NOTIFYs in its own transaction
//! with the due time (`<node> d<ms>`) or the request's id (`<node> a<uuid>`). This node's own
//! changes are announced in process as soon as their statement returns, so the listener skips
//! the notifications it sent itself.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use herald_core::store::WakeupHub;
use herald_core::{EventId, Timestamp, Wakeup};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::{AsyncMessage, NoTls, Notification};
use tokio_util::sync::CancellationToken;

/// How long the listener waits before connecting again, at first and at most.
const RECONNECT_MIN: Duration = Duration::from_millis(50);
const RECONNECT_MAX: Duration = Duration::from_secs(2);

/// How long a reconnect waits for the server to answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What the listener needs to run.
pub(crate) struct Listener {
    pub(crate) config: tokio_postgres::Config,
    pub(crate) channel: String,
    pub(crate) node: String,
    pub(crate) hub: Arc<WakeupHub>,
    pub(crate) stop: CancellationToken,
}

/// Starts the listener and waits for its first LISTEN to be in place, so that nothing another node
/// announces after `connect` returns is missed. Returns the error of that first attempt; the
/// caller then falls back to polling.
pub(crate) async fn start(listener: Listener) -> Result<(), tokio_postgres::Error> {
    let (ready_tx, ready_rx) = oneshot::channel();
    tokio::spawn(run(listener, ready_tx));
    match ready_rx.await {
        Ok(result) => result,
        // The task ended without a word: it can only have been stopped.
        Err(_) => Ok(()),
    }
}

async fn run(l: Listener, ready: oneshot::Sender<Result<(), tokio_postgres::Error>>) {
    let mut ready = Some(ready);
    let mut wait = RECONNECT_MIN;
    // Reconnects give up on a server that does not answer; the first connect has no timer, so
    // that it cannot fire early on a paused test clock.
    let mut reconnect = l.config.clone();
    reconnect.connect_timeout(CONNECT_TIMEOUT);
    loop {
        let config = if ready.is_some() { &l.config } else { &reconnect };
        let session = tokio::select! {
            _ = l.stop.cancelled() => return,
            s = session(config, &l.channel) => s,
        };
        match session {
            Ok((client, mut notifications)) => {
                match ready.take() {
                    Some(tx) => {
                        let _ = tx.send(Ok(()));
                    }
                    // Whatever was announced while the listener was away is lost: re-check all.
                    None => {
                        tracing::info!("herald-postgres: the listener is back; re-checking everything");
                        l.hub.send(Wakeup::Lagged);
                    }
                }
                wait = RECONNECT_MIN;
                loop {
                    tokio::select! {
                        _ = l.stop.cancelled() => return,
                        n = notifications.recv() => match n {
                            Some(n) => deliver(&l, &n),
                            None => break,
                        },
                    }
                }
                drop(client);
                tracing::warn!("herald-postgres: the LISTEN connection was lost; reconnecting");
                l.hub.send(Wakeup::Lagged);
            }
            Err(e) => {
                if let Some(tx) = ready.take() {
                    let _ = tx.send(Err(e));
                    return;
                }
                tracing::debug!(error = %e, ?wait, "herald-postgres: the listener could not reconnect; trying again");
                tokio::select! {
                    _ = l.stop.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
                wait = (wait * 2).min(RECONNECT_MAX);
            }
        }
    }
}

/// Connects, starts LISTEN, and returns the client (the connection lives as long as it does) with
/// the notifications that arrive on it; the receiver ends when the connection does.
async fn session(
    config: &tokio_postgres::Config,
    channel: &str,
) -> Result<(tokio_postgres::Client, mpsc::UnboundedReceiver<Notification>), tokio_postgres::Error> {
    let (client, mut connection) = config.connect(NoTls).await?;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    if tx.send(n).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "herald-postgres: the LISTEN connection failed");
                    return;
                }
            }
        }
    });
    client
        .batch_execute(&format!("LISTEN {}", crate::schema::quoted(channel)))
        .await?;
    Ok((client, rx))
}

fn deliver(l: &Listener, n: &Notification) {
    let Some((node, what)) = n.payload().split_once(' ') else {
        return;
    };
    if node == l.node {
        return;
    }
    for w in parse(what) {
        l.hub.send(w);
    }
}

/// A notification's payload after the node: `d<ms>[,<ms>...]` or `a<event id>`.
fn parse(what: &str) -> Vec<Wakeup> {
    if let Some(times) = what.strip_prefix('d') {
        return times
            .split(',')
            .filter_map(|ms| ms.parse().ok())
            .map(|ms| Wakeup::Due(Timestamp::from_millis(ms)))
            .collect();
    }
    what.strip_prefix('a')
        .and_then(|id| id.parse::<EventId>().ok())
        .map(Wakeup::Answered)
        .into_iter()
        .collect()
}

/// Polling instead of listening: tells the runtime to re-check every `interval`, so that what
/// other nodes publish is claimed at most about `interval` late.
pub(crate) fn poll(hub: Arc<WakeupHub>, interval: Duration, stop: CancellationToken) {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(interval) => hub.send(Wakeup::Lagged),
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_parse() {
        assert_eq!(
            parse("d1700000000000"),
            vec![Wakeup::Due(Timestamp::from_millis(1_700_000_000_000))]
        );
        assert_eq!(
            parse("d1700000000000,1700000005000"),
            vec![
                Wakeup::Due(Timestamp::from_millis(1_700_000_000_000)),
                Wakeup::Due(Timestamp::from_millis(1_700_000_005_000))
            ]
        );
        let id = EventId::new();
        assert_eq!(parse(&format!("a{id}")), vec![Wakeup::Answered(id)]);
        assert_eq!(parse("x"), vec![]);
        assert_eq!(parse("dnope"), vec![]);
    }
}
