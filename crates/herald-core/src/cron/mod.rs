//! Cron: named schedules that publish one event per tick, across a cluster, with no leader.
//!
//! Every node that declares a schedule sleeps until its next tick (on the runtime's [`Clock`]) and
//! publishes the tick's event with the idempotency key `cron:{name}:{tick}` ([`cron_key`]); the
//! store keeps one event per key, so the tick yields exactly one event whichever nodes are up.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use herald_core::{Context, CronTick, HandlerError, Herald, Missed};
//!
//! let herald = Herald::builder().build().await?;
//! herald
//!     .subscribe("reports", "report.nightly")
//!     .handle(|tick: CronTick, _ctx: Context| async move {
//!         println!("{} for the tick of {}", tick.name, tick.tick);
//!         Ok::<_, HandlerError>(())
//!     })
//!     .await?;
//! let nightly = herald
//!     .cron("nightly-report", "0 3 * * *")
//!     .topic("report.nightly")
//!     .tz("Europe/Berlin")
//!     .missed(Missed::CatchUpOne)
//!     .await?;
//! for cron in herald.crons().await? {
//!     println!("{}: {} next at {:?}", cron.name, cron.spec, cron.next.first());
//! }
//! nightly.pause().await?;
//! # Ok(()) }
//! ```
//!
//! [`Clock`]: crate::Clock

mod error;
mod registry;
mod spec;

pub use error::CronError;
pub use spec::CronSpec;

pub(crate) use registry::{tick_died, Registry};

use std::fmt;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::str::FromStr;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::event::{encode_json, DeliveryId, EventId, Headers, Priority};
use crate::runtime::Herald;
use crate::store::{EventStatus, StoreError};
use crate::time::Timestamp;
use crate::topic::{SubscriptionName, Topic};

use registry::{Change, Config, Payload};

/// Published when a schedule is declared in a runtime; the payload is a [`CronTaskChanged`].
pub const CRON_CREATED_TOPIC: &str = "cron.task.created";
/// Published when a schedule is redeclared with other settings, paused or resumed; the payload
/// is a [`CronTaskChanged`].
pub const CRON_UPDATED_TOPIC: &str = "cron.task.updated";
/// Published when a schedule is removed; the payload is a [`CronTaskChanged`].
pub const CRON_DELETED_TOPIC: &str = "cron.task.deleted";
/// Published when a tick's event was stored (once per tick across nodes: only by the node whose
/// publish stored it); the payload is a [`CronTaskExecuted`].
pub const CRON_EXECUTED_TOPIC: &str = "cron.task.executed";
/// Published when a delivery of a tick's event died; the payload is a [`CronTaskFailed`].
pub const CRON_FAILED_TOPIC: &str = "cron.task.failed";
/// The header naming the schedule on every tick's event.
pub const CRON_HEADER: &str = "herald-cron";
/// The header holding the tick (RFC 3339, UTC, milliseconds) on every tick's event.
pub const CRON_TICK_HEADER: &str = "herald-cron-tick";
/// How many upcoming fire times [`Herald::crons`] lists per schedule.
pub const NEXT_FIRES: usize = 5;

/// The idempotency key of a schedule's tick: `cron:{name}:{tick}`, the tick in RFC 3339 (UTC,
/// milliseconds), so it reads the same on every node and in every listing.
///
/// ```
/// use herald_core::{cron_key, Timestamp};
/// assert_eq!(cron_key("nightly-report", Timestamp::from_millis(0)), "cron:nightly-report:1970-01-01T00:00:00.000Z");
/// ```
pub fn cron_key(name: &str, tick: Timestamp) -> String {
    format!("cron:{name}:{tick}")
}

/// What a schedule does about ticks that passed while no node ran it.
///
/// ```
/// use herald_core::Missed;
/// assert_eq!("catch-up-one".parse::<Missed>()?, Missed::CatchUpOne);
/// assert_eq!(Missed::default(), Missed::Skip);
/// # Ok::<(), herald_core::CronError>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Missed {
    /// Forget them: the schedule goes on from the next tick.
    #[default]
    Skip,
    /// When the schedule starts, publish one event for the latest tick before now, unless the
    /// store already holds that tick's event (its key).
    CatchUpOne,
}

impl Missed {
    /// Its name: `skip` or `catch-up-one`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Missed::Skip => "skip",
            Missed::CatchUpOne => "catch-up-one",
        }
    }
}

impl fmt::Display for Missed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Missed {
    type Err = CronError;
    fn from_str(s: &str) -> Result<Self, CronError> {
        match s {
            "skip" => Ok(Missed::Skip),
            "catch-up-one" => Ok(Missed::CatchUpOne),
            _ => Err(CronError::Missed(s.to_owned())),
        }
    }
}

/// The payload of a tick's event when the schedule sets none: which schedule, which tick.
///
/// ```
/// use herald_core::{Context, CronTick, HandlerError};
/// async fn nightly(tick: CronTick, _ctx: Context) -> Result<(), HandlerError> {
///     println!("{} at {}", tick.name, tick.tick);
///     Ok(())
/// }
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct CronTick {
    /// The schedule.
    pub name: String,
    /// The tick this event is for.
    pub tick: Timestamp,
}

/// The payload of `cron.task.created`, `cron.task.updated` and `cron.task.deleted`; subscribe to
/// `cron.task.*` for these, `cron.task.executed` ([`CronTaskExecuted`]) and `cron.task.failed`
/// ([`CronTaskFailed`]).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use herald_core::{CronTaskChanged, Herald, CRON_CREATED_TOPIC};
/// let herald = Herald::builder().build().await?;
/// herald
///     .subscribe("cron-audit", CRON_CREATED_TOPIC)
///     .handle(|change: CronTaskChanged, _ctx| async move {
///         println!("{} created '{}' ({})", change.node, change.name, change.expression);
///         Ok(())
///     })
///     .await?;
/// # Ok(()) }
/// ```
///
/// A schedule lives in each runtime that declares it, so each node announces its own changes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct CronTaskChanged {
    /// The schedule.
    pub name: String,
    /// Its expression.
    pub expression: String,
    /// Its time zone.
    pub time_zone: String,
    /// The topic of its events.
    pub topic: Topic,
    /// Whether it is paused (after the change).
    pub paused: bool,
    /// The node that changed it.
    pub node: String,
    /// When.
    pub at: Timestamp,
}

/// The payload of `cron.task.executed`: a tick's event was stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct CronTaskExecuted {
    /// The schedule.
    pub name: String,
    /// The tick.
    pub tick: Timestamp,
    /// The tick's event.
    pub event_id: EventId,
    /// Its topic.
    pub topic: Topic,
    /// The node whose publish stored it.
    pub node: String,
}

/// The payload of `cron.task.failed`: a delivery of a tick's event died.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct CronTaskFailed {
    /// The schedule.
    pub name: String,
    /// The tick.
    pub tick: Timestamp,
    /// The tick's event.
    pub event_id: EventId,
    /// The delivery that died.
    pub delivery_id: DeliveryId,
    /// The subscription that gave up.
    pub subscription: SubscriptionName,
    /// How many attempts were made.
    pub attempts: u32,
    /// Why it died.
    pub reason: String,
}

/// A tick a schedule fired and what became of its event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct CronRun {
    /// The tick.
    pub tick: Timestamp,
    /// Its event (published by this node or another).
    pub event_id: EventId,
    /// The event's status; `None` once the store no longer holds it (retention).
    pub status: Option<EventStatus>,
}

/// A schedule as [`Herald::crons`] lists it.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use herald_core::Herald;
/// let herald = Herald::builder().build().await?;
/// herald.cron("hourly-sync", "0 * * * *").topic("sync.run").await?;
/// let info = herald.cron_info("hourly-sync").await?.expect("declared above");
/// assert_eq!((info.topic.as_str(), info.paused), ("sync.run", false));
/// assert!(info.next.windows(2).all(|w| w[1].as_millis() - w[0].as_millis() == 3_600_000));
/// assert!(info.last.is_none(), "no tick has fired yet");
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct CronInfo {
    /// Its name.
    pub name: String,
    /// When it fires. [`CronSpec::fires_after`] gives more than [`next`](Self::next).
    pub spec: CronSpec,
    /// The topic of its events.
    pub topic: Topic,
    /// What it does about missed ticks.
    pub missed: Missed,
    /// Whether it is paused in this runtime.
    pub paused: bool,
    /// Its next [`NEXT_FIRES`] fire times; empty while paused.
    pub next: Vec<Timestamp>,
    /// The latest tick fired: the last this runtime fired, or else the latest due tick whose
    /// event the store holds (fired by another node or before a restart).
    pub last: Option<CronRun>,
    /// Why this runtime's latest attempt to publish a tick failed, if it did (cleared by the next
    /// tick published).
    pub last_error: Option<String>,
}

/// Declares a schedule: made by [`Herald::cron`]; `.await` registers it (or replaces the one of
/// the same name, announcing `cron.task.updated`) and returns its [`CronHandle`].
///
/// Errors (an invalid expression, time zone, name or topic) are reported when awaited.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use herald_core::{Herald, Missed};
/// let herald = Herald::builder().build().await?;
/// let handle = herald
///     .cron("digest", "30 8 * * mon-fri")
///     .topic("mail.digest")
///     .tz("America/New_York")
///     .missed(Missed::Skip)
///     .await?;
/// assert_eq!(handle.name(), "digest");
/// # Ok(()) }
/// ```
#[must_use = "a schedule does nothing until it is awaited"]
pub struct CronBuilder<'a> {
    herald: &'a Herald,
    name: String,
    expression: String,
    time_zone: String,
    topic: Option<String>,
    payload: Result<Payload, String>,
    priority: Priority,
    ttl: Option<Duration>,
    headers: Headers,
    missed: Missed,
}

impl fmt::Debug for CronBuilder<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CronBuilder")
            .field("name", &self.name)
            .field("expression", &self.expression)
            .field("time_zone", &self.time_zone)
            .field("topic", &self.topic)
            .field("missed", &self.missed)
            .finish_non_exhaustive()
    }
}

impl CronBuilder<'_> {
    /// The topic of its events (required).
    pub fn topic(mut self, topic: impl Into<String>) -> Self {
        self.topic = Some(topic.into());
        self
    }

    /// The payload of every tick's event, encoded as JSON (default: a [`CronTick`] naming the
    /// schedule and the tick).
    pub fn payload<T: Serialize + ?Sized>(mut self, payload: &T) -> Self {
        self.payload = encode_json(payload)
            .map(|bytes| Payload::Fixed {
                bytes,
                content_type: None,
            })
            .map_err(|e| e.to_string());
        self
    }

    /// Raw payload bytes of the given media type.
    pub fn payload_bytes(mut self, payload: impl Into<Bytes>, content_type: impl Into<String>) -> Self {
        self.payload = Ok(Payload::Fixed {
            bytes: payload.into(),
            content_type: Some(content_type.into()),
        });
        self
    }

    /// The IANA time zone the expression is read in (default: `UTC`).
    pub fn tz(mut self, time_zone: impl Into<String>) -> Self {
        self.time_zone = time_zone.into();
        self
    }

    /// The priority of its events (default: [`Priority::NORMAL`]).
    pub fn priority(mut self, p: Priority) -> Self {
        self.priority = p;
        self
    }

    /// Each tick's event expires unhandled if no attempt started within `ttl` of the tick.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Sets a header on its events (`herald-cron` and `herald-cron-tick` are herald's).
    pub fn header(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(key, value);
        self
    }

    /// What to do about ticks missed while no node ran the schedule (default: [`Missed::Skip`]).
    pub fn missed(mut self, missed: Missed) -> Self {
        self.missed = missed;
        self
    }

    fn into_config(self) -> Result<Config, CronError> {
        let name = valid_name(self.name)?;
        let spec = CronSpec::new(&self.expression, &self.time_zone)?;
        let topic = Topic::new(self.topic.as_deref().ok_or_else(|| CronError::NoTopic(name.clone()))?)?;
        let payload = self.payload.map_err(|message| CronError::Payload {
            name: name.clone(),
            message,
        })?;
        Ok(Config {
            name,
            spec,
            topic,
            payload,
            priority: self.priority,
            ttl: self.ttl,
            headers: self.headers,
            missed: self.missed,
        })
    }
}

impl<'a> IntoFuture for CronBuilder<'a> {
    type Output = Result<CronHandle, CronError>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send + 'a>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            let herald = self.herald;
            let config = self.into_config()?;
            let name = config.name.clone();
            let change = registry::register(herald, config)?;
            let topic = match change {
                Change::Created => CRON_CREATED_TOPIC,
                Change::Updated => CRON_UPDATED_TOPIC,
                Change::Unchanged => return Ok(CronHandle::new(herald, name)),
            };
            registry::announce_change(&herald.inner, &name, topic).await;
            Ok(CronHandle::new(herald, name))
        })
    }
}

/// A schedule declared in this runtime, by name: pause, resume, remove or inspect it.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use herald_core::Herald;
/// let herald = Herald::builder().build().await?;
/// let cleanup = herald.cron("cleanup", "*/10 * * * *").topic("maintenance.cleanup").await?;
/// cleanup.pause().await?;
/// assert!(cleanup.info().await?.unwrap().paused);
/// cleanup.resume().await?;
/// cleanup.remove().await?;
/// assert!(herald.crons().await?.is_empty());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct CronHandle {
    herald: Herald,
    name: String,
}

impl fmt::Debug for CronHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CronHandle").field("name", &self.name).finish()
    }
}

impl CronHandle {
    fn new(herald: &Herald, name: String) -> Self {
        CronHandle {
            herald: herald.clone(),
            name,
        }
    }

    /// The schedule's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// See [`Herald::cron_pause`].
    pub async fn pause(&self) -> Result<(), CronError> {
        self.herald.cron_pause(&self.name).await
    }

    /// See [`Herald::cron_resume`].
    pub async fn resume(&self) -> Result<(), CronError> {
        self.herald.cron_resume(&self.name).await
    }

    /// See [`Herald::cron_remove`].
    pub async fn remove(&self) -> Result<(), CronError> {
        self.herald.cron_remove(&self.name).await
    }

    /// See [`Herald::cron_info`].
    pub async fn info(&self) -> Result<Option<CronInfo>, StoreError> {
        self.herald.cron_info(&self.name).await
    }
}

impl Herald {
    /// Starts declaring the schedule `name` (lowercase letters, digits, `_`, `-`, dots) firing on
    /// the cron `expression`: 5 fields, or 6 with seconds first (see [`CronSpec`]). Set at least
    /// its topic, then `.await` it.
    ///
    /// Every node that declares the same schedule publishes each tick with the idempotency key
    /// `cron:{name}:{tick}`, so the store keeps exactly one event per tick. Redeclaring a name
    /// replaces its settings (announced as `cron.task.updated`; a paused schedule stays paused).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use herald_core::{Herald, Priority};
    /// use std::time::Duration;
    /// let herald = Herald::builder().build().await?;
    /// herald
    ///     .cron("nightly-report", "0 3 * * *")
    ///     .topic("report.nightly")
    ///     .payload(&serde_json::json!({"format": "pdf"}))
    ///     .tz("Europe/Berlin")
    ///     .priority(Priority::HIGH)
    ///     .ttl(Duration::from_secs(3600))
    ///     .header("tenant", "acme")
    ///     .await?;
    /// let err = herald.cron("bad", "0 25 * * *").topic("x").await.unwrap_err();
    /// assert!(err.to_string().starts_with("cron expression '0 25 * * *' is invalid"));
    /// # Ok(()) }
    /// ```
    pub fn cron(&self, name: &str, expression: &str) -> CronBuilder<'_> {
        CronBuilder {
            herald: self,
            name: name.to_owned(),
            expression: expression.to_owned(),
            time_zone: "UTC".to_owned(),
            topic: None,
            payload: Ok(Payload::Tick),
            priority: Priority::NORMAL,
            ttl: None,
            headers: Headers::new(),
            missed: Missed::Skip,
        }
    }

    /// Stops firing the schedule in this runtime (other nodes that declare it go on). Pausing a
    /// paused schedule does nothing.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use herald_core::Herald;
    /// # let herald = Herald::builder().build().await?;
    /// herald.cron("cleanup", "*/10 * * * *").topic("maintenance.cleanup").await?;
    /// herald.cron_pause("cleanup").await?;
    /// assert!(herald.cron_pause("nope").await.is_err());
    /// # Ok(()) }
    /// ```
    pub async fn cron_pause(&self, name: &str) -> Result<(), CronError> {
        if registry::set_paused(self, name, true)? {
            registry::announce_change(&self.inner, name, CRON_UPDATED_TOPIC).await;
        }
        Ok(())
    }

    /// Fires the schedule again from its next tick on: ticks that passed while it was paused are
    /// not made up.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use herald_core::Herald;
    /// # let herald = Herald::builder().build().await?;
    /// herald.cron("cleanup", "*/10 * * * *").topic("maintenance.cleanup").await?;
    /// herald.cron_pause("cleanup").await?;
    /// herald.cron_resume("cleanup").await?;
    /// # Ok(()) }
    /// ```
    pub async fn cron_resume(&self, name: &str) -> Result<(), CronError> {
        if registry::set_paused(self, name, false)? {
            registry::announce_change(&self.inner, name, CRON_UPDATED_TOPIC).await;
        }
        Ok(())
    }

    /// Removes the schedule from this runtime. Events of past ticks stay in the store.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use herald_core::Herald;
    /// # let herald = Herald::builder().build().await?;
    /// herald.cron("cleanup", "*/10 * * * *").topic("maintenance.cleanup").await?;
    /// herald.cron_remove("cleanup").await?;
    /// assert!(herald.cron_info("cleanup").await?.is_none());
    /// # Ok(()) }
    /// ```
    pub async fn cron_remove(&self, name: &str) -> Result<(), CronError> {
        let deleted = registry::remove(&self.inner, name)?;
        registry::announce(&self.inner, CRON_DELETED_TOPIC, &deleted).await;
        Ok(())
    }

    /// Every schedule of this runtime, by name: its spec, whether it is paused, its next fire
    /// times and its last tick with the status of that tick's event (one store look-up per
    /// schedule).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use herald_core::Herald;
    /// # let herald = Herald::builder().build().await?;
    /// herald.cron("every-minute", "* * * * *").topic("clock.minute").await?;
    /// let crons = herald.crons().await?;
    /// assert_eq!(crons[0].name, "every-minute");
    /// assert_eq!(crons[0].next.len(), herald_core::NEXT_FIRES);
    /// # Ok(()) }
    /// ```
    pub async fn crons(&self) -> Result<Vec<CronInfo>, StoreError> {
        let mut out = Vec::new();
        for view in registry::views(&self.inner) {
            out.push(registry::info(&self.inner, view).await?);
        }
        Ok(out)
    }

    /// The schedule `name` as [`crons`](Herald::crons) lists it, if this runtime has it.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use herald_core::Herald;
    /// # let herald = Herald::builder().build().await?;
    /// herald.cron("every-minute", "* * * * *").topic("clock.minute").await?;
    /// let info = herald.cron_info("every-minute").await?.unwrap();
    /// assert!(!info.paused);
    /// # Ok(()) }
    /// ```
    pub async fn cron_info(&self, name: &str) -> Result<Option<CronInfo>, StoreError> {
        match registry::views(&self.inner).into_iter().find(|v| v.config.name == name) {
            Some(view) => Ok(Some(registry::info(&self.inner, view).await?)),
            None => Ok(None),
        }
    }
}

/// The same rules as subscription names: the name goes into keys and headers as it is.
fn valid_name(name: String) -> Result<String, CronError> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && name.split('.').all(|s| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        });
    if ok {
        Ok(name)
    } else {
        Err(CronError::Name { name })
    }
}
