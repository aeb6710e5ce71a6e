//! The schedules of one runtime and the task that fires each: sleep until the tick on the
//! runtime's clock, publish the tick's event under its key, announce what happened.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::{
    cron_key, CronError, CronInfo, CronRun, CronSpec, CronTaskChanged, CronTaskExecuted, CronTaskFailed, CronTick,
    Missed, CRON_EXECUTED_TOPIC, CRON_FAILED_TOPIC, CRON_HEADER, CRON_TICK_HEADER, NEXT_FIRES,
};
use crate::error::PublishError;
use crate::event::{Event, Headers, Priority};
use crate::runtime::{DeadLetter, Herald, Inner, Message, Room};
use crate::store::{EventFilter, PageRequest, Published, StoreError};
use crate::time::Timestamp;
use crate::topic::Topic;

/// The schedules of one runtime, by name.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    entries: Mutex<BTreeMap<String, Entry>>,
}

#[derive(Debug)]
struct Entry {
    config: Arc<Config>,
    paused: bool,
    /// Stops the running tick task; `None` while paused.
    stop: Option<CancellationToken>,
    /// Kept across replacements, pauses and resumes.
    status: Arc<Mutex<Status>>,
}

/// A schedule's settings, as declared.
#[derive(Debug, PartialEq)]
pub(super) struct Config {
    pub(super) name: String,
    pub(super) spec: CronSpec,
    pub(super) topic: Topic,
    pub(super) payload: Payload,
    pub(super) priority: Priority,
    pub(super) ttl: Option<Duration>,
    pub(super) headers: Headers,
    pub(super) missed: Missed,
}

/// What a tick's event carries.
#[derive(Debug, PartialEq)]
pub(super) enum Payload {
    /// A [`CronTick`] for the tick.
    Tick,
    /// The same bytes every tick.
    Fixed { bytes: Bytes, content_type: Option<String> },
}

/// What this runtime knows of a schedule's recent ticks.
#[derive(Clone, Debug, Default)]
struct Status {
    last: Option<(Timestamp, crate::event::EventId)>,
    last_error: Option<String>,
}

/// What declaring a schedule did.
pub(super) enum Change {
    Created,
    Updated,
    Unchanged,
}

/// A schedule as it was when looked at.
pub(super) struct View {
    pub(super) config: Arc<Config>,
    paused: bool,
    status: Status,
}

impl Config {
    fn message(&self, tick: Timestamp) -> Message {
        let message = match &self.payload {
            Payload::Tick => Message::json(
                self.topic.as_str(),
                &CronTick {
                    name: self.name.clone(),
                    tick,
                },
            ),
            Payload::Fixed { bytes, content_type } => Message::bytes(
                self.topic.as_str(),
                bytes.clone(),
                content_type.as_deref().unwrap_or(crate::event::JSON),
            ),
        };
        let mut message = message.at(tick).priority(self.priority).key(cron_key(&self.name, tick));
        if let Some(ttl) = self.ttl {
            message = message.ttl(ttl);
        }
        for (k, v) in self.headers.iter() {
            message = message.header(k, v);
        }
        // Set last, so that a user header cannot pose as herald's.
        message
            .header(CRON_HEADER, self.name.as_str())
            .header(CRON_TICK_HEADER, tick.to_string())
    }
}

fn lock(inner: &Inner) -> std::sync::MutexGuard<'_, BTreeMap<String, Entry>> {
    inner.crons.entries.lock().unwrap_or_else(|p| p.into_inner())
}

fn lock_status(status: &Mutex<Status>) -> std::sync::MutexGuard<'_, Status> {
    status.lock().unwrap_or_else(|p| p.into_inner())
}

/// Registers or replaces a schedule and (re)starts its task unless it is paused.
pub(super) fn register(herald: &Herald, config: Config) -> Result<Change, CronError> {
    let inner = &herald.inner;
    if inner.closing.load(Ordering::Relaxed) {
        return Err(CronError::ShuttingDown);
    }
    let config = Arc::new(config);
    let mut entries = lock(inner);
    match entries.get_mut(&config.name) {
        None => {
            let status = Arc::new(Mutex::new(Status::default()));
            let catch_up = config.missed == Missed::CatchUpOne;
            let stop = start(&herald.inner, &config, &status, catch_up);
            entries.insert(
                config.name.clone(),
                Entry {
                    config,
                    paused: false,
                    stop: Some(stop),
                    status,
                },
            );
            Ok(Change::Created)
        }
        Some(entry) if entry.config == config => Ok(Change::Unchanged),
        Some(entry) => {
            entry.config = config;
            if let Some(old) = entry.stop.take() {
                old.cancel();
                entry.stop = Some(start(&herald.inner, &entry.config, &entry.status, false));
            }
            Ok(Change::Updated)
        }
    }
}

/// Pauses or resumes; returns whether anything changed.
pub(super) fn set_paused(herald: &Herald, name: &str, paused: bool) -> Result<bool, CronError> {
    let inner = &herald.inner;
    let mut entries = lock(inner);
    let entry = entries
        .get_mut(name)
        .ok_or_else(|| CronError::NotFound(name.to_owned()))?;
    if entry.paused == paused {
        return Ok(false);
    }
    entry.paused = paused;
    if paused {
        if let Some(stop) = entry.stop.take() {
            stop.cancel();
        }
    } else {
        entry.stop = Some(start(inner, &entry.config, &entry.status, false));
    }
    Ok(true)
}

/// Removes a schedule and stops its task; returns what `cron.task.deleted` says of it.
pub(super) fn remove(inner: &Inner, name: &str) -> Result<CronTaskChanged, CronError> {
    let entry = lock(inner)
        .remove(name)
        .ok_or_else(|| CronError::NotFound(name.to_owned()))?;
    if let Some(stop) = entry.stop {
        stop.cancel();
    }
    Ok(changed(inner, &entry.config, entry.paused))
}

pub(super) fn views(inner: &Inner) -> Vec<View> {
    lock(inner)
        .values()
        .map(|e| View {
            config: e.config.clone(),
            paused: e.paused,
            status: lock_status(&e.status).clone(),
        })
        .collect()
}

/// The listing of one schedule: its next fires here, its last tick from here or the store.
pub(super) async fn info(inner: &Inner, view: View) -> Result<CronInfo, StoreError> {
    let now = inner.clock.now();
    let config = &view.config;
    let next = if view.paused {
        Vec::new()
    } else {
        config.spec.fires_after(now).take(NEXT_FIRES).collect()
    };
    let last = match view.status.last {
        Some((tick, event_id)) => Some(CronRun {
            tick,
            event_id,
            status: inner.store.get(event_id).await?.map(|r| r.status),
        }),
        None => match config.spec.latest_until(now) {
            Some(tick) => {
                let filter = EventFilter {
                    key: Some(cron_key(&config.name, tick)),
                    ..EventFilter::default()
                };
                let page = inner.store.query(&filter, PageRequest::first(1)).await?;
                page.items.into_iter().next().map(|r| CronRun {
                    tick,
                    event_id: r.event.id(),
                    status: Some(r.status),
                })
            }
            None => None,
        },
    };
    Ok(CronInfo {
        name: config.name.clone(),
        spec: config.spec.clone(),
        topic: config.topic.clone(),
        missed: config.missed,
        paused: view.paused,
        next,
        last,
        last_error: view.status.last_error,
    })
}

/// Spawns the tick task of a schedule; the returned token stops it. Shutdown stops it too (the
/// token is a child of the runtime's), and waits for it.
fn start(inner: &Arc<Inner>, config: &Arc<Config>, status: &Arc<Mutex<Status>>, catch_up: bool) -> CancellationToken {
    let stop = inner.stop_claiming.child_token();
    inner.background.spawn(run(
        inner.clone(),
        config.clone(),
        status.clone(),
        stop.clone(),
        catch_up,
    ));
    stop
}

async fn run(
    inner: Arc<Inner>,
    config: Arc<Config>,
    status: Arc<Mutex<Status>>,
    stop: CancellationToken,
    catch_up: bool,
) {
    let clock = inner.clock;
    let fire = |tick| fire_unless_stopped(&inner, &config, &status, &stop, tick);
    if catch_up {
        // The key makes this a no-op when the tick's event exists already (another node fired
        // it, or this schedule did before a restart): the check and the publish are one step.
        if let Some(tick) = config.spec.latest_until(clock.now()) {
            if !fire(tick).await {
                return;
            }
        }
    }
    let mut after = clock.now();
    loop {
        let Some(mut tick) = config.spec.next_after(after) else {
            tracing::info!(cron = %config.name, "herald: cron schedule has no further fire time");
            return;
        };
        // A timer deadline past tokio's range may wake early; the clock decides.
        while clock.now() < tick {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep_until(clock.instant_at(tick)) => {}
            }
        }
        // Woken late (a stalled process): fire the latest due tick once instead of a burst.
        let now = clock.now();
        if config.spec.next_after(tick).is_some_and(|next| next <= now) {
            if let Some(latest) = config.spec.latest_until(now) {
                tracing::warn!(cron = %config.name, %tick, %latest, "herald: cron woke late; firing only the latest due tick");
                tick = latest;
            }
        }
        if !fire(tick).await {
            return;
        }
        after = tick;
    }
}

async fn fire_unless_stopped(
    inner: &Inner,
    config: &Config,
    status: &Mutex<Status>,
    stop: &CancellationToken,
    tick: Timestamp,
) -> bool {
    tokio::select! {
        _ = stop.cancelled() => false,
        going_on = fire(inner, config, status, tick) => going_on,
    }
}

/// Publishes one tick's event, retrying a failing store until the next tick is due. Returns
/// false when the runtime is shutting down.
async fn fire(inner: &Inner, config: &Config, status: &Mutex<Status>, tick: Timestamp) -> bool {
    let mut backoff = Duration::from_millis(100);
    loop {
        match inner.publish_one(config.message(tick), Room::Wait).await {
            Ok(published) => {
                let id = published.id();
                {
                    let mut status = lock_status(status);
                    status.last = Some((tick, id));
                    status.last_error = None;
                }
                if let Published::Stored { .. } = published {
                    let executed = CronTaskExecuted {
                        name: config.name.clone(),
                        tick,
                        event_id: id,
                        topic: config.topic.clone(),
                        node: inner.node.to_string(),
                    };
                    announce(inner, CRON_EXECUTED_TOPIC, &executed).await;
                }
                return true;
            }
            Err(PublishError::ShuttingDown) => return false,
            Err(e) => {
                tracing::warn!(cron = %config.name, %tick, error = %e, "herald: could not publish a cron tick");
                lock_status(status).last_error = Some(format!("tick {tick}: {e}"));
                let retry_at = inner.clock.now() + backoff;
                if config.spec.next_after(tick).is_none_or(|next| next <= retry_at) {
                    return true;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

fn changed(inner: &Inner, config: &Config, paused: bool) -> CronTaskChanged {
    CronTaskChanged {
        name: config.name.clone(),
        expression: config.spec.expression().to_owned(),
        time_zone: config.spec.time_zone().to_owned(),
        topic: config.topic.clone(),
        paused,
        node: inner.node.to_string(),
        at: inner.clock.now(),
    }
}

/// Announces a schedule's change (created, updated) as it is now.
pub(super) async fn announce_change(inner: &Inner, name: &str, topic: &'static str) {
    let payload = {
        let entries = lock(inner);
        entries.get(name).map(|e| changed(inner, &e.config, e.paused))
    };
    if let Some(payload) = payload {
        announce(inner, topic, &payload).await;
    }
}

/// Publishes one of the cron lifecycle events, when the runtime publishes its own events.
pub(super) async fn announce<T: Serialize>(inner: &Inner, topic: &'static str, payload: &T) {
    announce_keyed(inner, Message::json(topic, payload)).await;
}

async fn announce_keyed(inner: &Inner, message: Message) {
    if !inner.system_events {
        return;
    }
    // Boxed: the publish future is large and these are rare.
    if let Err(e) = Box::pin(inner.publish_one(message, Room::Ignore)).await {
        tracing::warn!(error = %e, "herald: could not publish a cron lifecycle event");
    }
}

/// Announces `cron.task.failed` when the event whose delivery died (`dead`) is a tick's: called
/// by the runtime where the death is recorded, so once per death.
pub(crate) async fn tick_died(inner: &Inner, event: &Event, dead: &DeadLetter) {
    let Some(name) = event.headers().get(CRON_HEADER) else {
        return;
    };
    let tick = event
        .headers()
        .get(CRON_TICK_HEADER)
        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        .map_or(event.deliver_at(), |t| Timestamp::from_millis(t.as_millisecond()));
    let failed = CronTaskFailed {
        name: name.to_owned(),
        tick,
        event_id: dead.event_id,
        delivery_id: dead.delivery_id,
        subscription: dead.subscription.clone(),
        attempts: dead.attempts,
        reason: dead.reason.clone(),
    };
    // Keyed by the death, so a dead letter handled twice announces once.
    let key = format!(
        "{}:failed:{}:{}",
        cron_key(name, tick),
        failed.delivery_id,
        failed.attempts
    );
    announce_keyed(inner, Message::json(CRON_FAILED_TOPIC, &failed).key(key)).await;
}
