//! Pull consumers: claim deliveries under a lease, then ack (success, with an optional reply),
//! nack (failure: retried after a delay under the subscription's policy, or dead) or extend the
//! lease. Every call names its delivery by the opaque `lease` string that `claim` returned; a
//! lease lost to a newer claim (it ran out and someone else claimed the delivery) gets 409.

use std::str::FromStr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::Json;
use bytes::Bytes;
use futures_util::StreamExt;
use herald::{Claimed, Completion, DeliveryId, EventId, Lease, SubscriptionName, Verdict};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{json, Value};
use tokio::time::Instant;

use super::events::EventBody;
use super::subscriptions::{Consumer, Entry, Pull};
use super::{parse_json, ApiError, AppState, JsonBody, RawBody};

/// The most deliveries one claim returns.
const MAX_CLAIM: usize = 100;
/// The default lease of a claim.
const DEFAULT_LEASE: Duration = Duration::from_secs(30);

/// A lease as clients carry it: `<event id>.<delivery id>.<token>.<attempt>`. The attempt number
/// lets a nack judge the subscription's `max_attempts`, and the event id lets a death be announced,
/// without reading the delivery back.
struct LeaseRef {
    event: EventId,
    lease: Lease,
    attempt: u32,
}

impl LeaseRef {
    fn encode(c: &Claimed) -> String {
        format!("{}.{}.{}.{}", c.event.id(), c.lease.delivery, c.lease.token, c.attempt)
    }

    fn parse(text: &str) -> Result<Self, ApiError> {
        let bad = || {
            ApiError::invalid(format!(
                "lease '{text}' is not one that claim returned: pass the `lease` string of a claimed delivery"
            ))
        };
        let mut parts = text.split('.');
        let (Some(e), Some(d), Some(t), Some(a), None) =
            (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        Ok(LeaseRef {
            event: EventId::from_str(e).map_err(|_| bad())?,
            lease: Lease {
                delivery: DeliveryId::from_str(d).map_err(|_| bad())?,
                token: t.parse().map_err(|_| bad())?,
            },
            attempt: a.parse().map_err(|_| bad())?,
        })
    }
}

/// The pull consumer named `name`, or 404 / 409.
fn pull_subscription(app: &AppState, name: &str) -> Result<(std::sync::Arc<Entry>, SubscriptionName), ApiError> {
    let entry = match app.0.subscriptions.get(name) {
        Ok(entry) => entry,
        Err(_) if app.herald().subscription(name).is_some() => {
            return Err(ApiError::conflict(
                "not_pull",
                format!("subscription '{name}' has a handler in the server's process: nothing to claim"),
            ))
        }
        Err(not_found) => return Err(not_found),
    };
    match entry.consumer {
        Consumer::Pull(_) => {
            let name = entry.name.clone();
            Ok((entry, name))
        }
        Consumer::Webhook { .. } => Err(ApiError::conflict(
            "not_pull",
            format!("subscription '{name}' is a webhook subscription: herald delivers to its URL, nothing to claim"),
        )),
    }
}

fn pull_policy(entry: &Entry) -> Option<&Pull> {
    match &entry.consumer {
        Consumer::Pull(p) => Some(p),
        Consumer::Webhook { .. } => None,
    }
}

fn duration_ms(field: &str, ms: Option<u64>, default: Duration) -> Result<Duration, ApiError> {
    match ms {
        None => Ok(default),
        Some(ms) if ms < 10 => Err(ApiError::invalid(format!("{field} must be at least 10"))),
        Some(ms) => Ok(Duration::from_millis(ms)),
    }
}

/// The body of `claim`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ClaimInput {
    max: Option<usize>,
    lease_ms: Option<u64>,
    wait_ms: Option<u64>,
}

/// One claimed delivery.
#[derive(Debug, Serialize)]
pub(crate) struct ClaimedView {
    lease: String,
    lease_until: String,
    delivery_id: DeliveryId,
    attempt: u32,
    due: String,
    event: EventBody,
}

impl ClaimedView {
    fn new(c: &Claimed) -> Self {
        ClaimedView {
            lease: LeaseRef::encode(c),
            lease_until: c.lease_until.to_string(),
            delivery_id: c.lease.delivery,
            attempt: c.attempt,
            due: c.due.to_string(),
            event: EventBody::new(&c.event),
        }
    }
}

/// `POST /v1/subscriptions/{name}/claim`: up to `max` due deliveries (default 1, at most 100),
/// leased for `lease_ms` (default 30 s). When nothing is due it waits up to `wait_ms` (default 0:
/// answer at once) for something to become due: a long poll. An empty list when nothing came, or
/// when the subscription is paused.
pub(crate) async fn claim(
    State(app): State<AppState>,
    Path(name): Path<String>,
    body: RawBody,
) -> Result<Json<Value>, ApiError> {
    // An empty body claims one delivery with the default lease.
    let input: ClaimInput = if body.0.is_empty() {
        ClaimInput::default()
    } else {
        parse_json(&body.0)?
    };
    let (entry, name) = pull_subscription(&app, &name)?;
    let max = input.max.unwrap_or(1);
    if !(1..=MAX_CLAIM).contains(&max) {
        return Err(ApiError::invalid(format!(
            "max {max} is out of range: use 1..={MAX_CLAIM}"
        )));
    }
    let lease = duration_ms("lease_ms", input.lease_ms, DEFAULT_LEASE)?;
    let wait = Duration::from_millis(input.wait_ms.unwrap_or(0));
    // The answer must come before the HTTP timeout layer gives up on the request.
    let longest = app.config().request_timeout.saturating_sub(Duration::from_millis(100));
    if wait > longest {
        return Err(ApiError::invalid(format!(
            "wait_ms {} is longer than this server allows ({} ms, under its request_timeout_ms)",
            wait.as_millis(),
            longest.as_millis()
        )));
    }
    if app.is_closing() {
        return Err(ApiError::shutting_down());
    }
    let paused = pull_policy(&entry).is_some_and(|p| p.paused.load(Ordering::SeqCst));
    if paused {
        return Ok(Json(json!({ "items": [], "paused": true })));
    }
    let claimed = claim_within(&app, &name, max, lease, wait).await?;
    let now = app.herald().clock().now();
    for c in &claimed {
        let late_ms = now.millis_since(c.due).max(0);
        metrics::histogram!("herald_lateness_seconds", "subscription" => name.as_str().to_owned())
            .record(late_ms as f64 / 1000.0);
    }
    let items: Vec<ClaimedView> = claimed.iter().map(ClaimedView::new).collect();
    Ok(Json(json!({ "items": items, "paused": false })))
}

/// Claims; if nothing is due, claims again at the next due time the store knows of (a delivery
/// becoming due, a lease running out) or when the store announces a change, until something
/// comes or `wait` has passed.
async fn claim_within(
    app: &AppState,
    name: &SubscriptionName,
    max: usize,
    lease: Duration,
    wait: Duration,
) -> Result<Vec<Claimed>, ApiError> {
    let store = app.herald().store();
    if wait.is_zero() {
        return Ok(store.claim(name, max, lease).await?);
    }
    let deadline = Instant::now() + wait;
    let clock = app.herald().clock();
    // Listen before the first claim, so that a publish between the two is not missed.
    let mut wakeups = store.wakeups();
    let names = std::slice::from_ref(name);
    loop {
        let claimed = store.claim(name, max, lease).await?;
        if !claimed.is_empty() || Instant::now() >= deadline || app.is_closing() {
            return Ok(claimed);
        }
        let next = store.next_due(names, clock.now()).await?;
        // A millisecond late: the store judges "due" in whole milliseconds.
        let retry_at = next.map_or(deadline, |t| {
            (clock.instant_at(t) + Duration::from_millis(1)).min(deadline)
        });
        tokio::select! {
            w = wakeups.next() => {
                if w.is_none() {
                    // No more notifications: wait for the next due time, then claim again.
                    tokio::time::sleep_until(retry_at).await;
                }
            }
            _ = tokio::time::sleep_until(retry_at) => {}
        }
    }
}

/// Records one outcome through the runtime (a death is announced on `herald.event.dead`,
/// publishers waiting for room wake); 409 when the lease was lost.
async fn complete(app: &AppState, lease: &LeaseRef, verdict: Verdict) -> Result<(), ApiError> {
    match app.herald().settle(lease.event, lease.lease, verdict).await? {
        Completion::Applied => Ok(()),
        _ => Err(lease_lost(lease)),
    }
}

fn lease_lost(lease: &LeaseRef) -> ApiError {
    ApiError::conflict(
        "lease_lost",
        format!(
            "the lease on delivery {} is lost (it ran out and the delivery was claimed again, or it is finished): \
             extend leases before they run out",
            lease.lease.delivery
        ),
    )
}

/// The body of `ack`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AckInput {
    lease: String,
    reply: Option<Box<RawValue>>,
}

/// `POST /v1/subscriptions/{name}/ack`: the delivery succeeded; `reply` answers a request.
pub(crate) async fn ack(
    State(app): State<AppState>,
    Path(name): Path<String>,
    JsonBody(input): JsonBody<AckInput>,
) -> Result<Json<Value>, ApiError> {
    let (_, sub) = pull_subscription(&app, &name)?;
    let lease = LeaseRef::parse(&input.lease)?;
    let reply = input.reply.map(|r| Bytes::copy_from_slice(r.get().as_bytes()));
    complete(&app, &lease, Verdict::Succeeded { reply }).await?;
    count("herald_deliveries_succeeded_total", &sub);
    Ok(Json(
        json!({ "delivery_id": lease.lease.delivery, "status": "succeeded" }),
    ))
}

/// The body of `nack`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NackInput {
    lease: String,
    error: Option<String>,
    delay_ms: Option<u64>,
    #[serde(default)]
    dead: bool,
}

/// `POST /v1/subscriptions/{name}/nack`: the attempt failed. Retried after `delay_ms` (default:
/// the subscription's backoff) unless it was the last attempt or `dead` is true.
pub(crate) async fn nack(
    State(app): State<AppState>,
    Path(name): Path<String>,
    JsonBody(input): JsonBody<NackInput>,
) -> Result<Json<Value>, ApiError> {
    let (entry, sub) = pull_subscription(&app, &name)?;
    let lease = LeaseRef::parse(&input.lease)?;
    let error = input
        .error
        .unwrap_or_else(|| "the consumer reported a failure".to_owned());
    let last = lease.attempt >= entry.max_attempts();
    let verdict = if input.dead || last {
        let reason = if input.dead {
            error
        } else {
            format!(
                "gave up after {} attempt{}: {error}",
                lease.attempt,
                if lease.attempt == 1 { "" } else { "s" }
            )
        };
        Verdict::Dead { reason }
    } else {
        let delay = match (input.delay_ms, pull_policy(&entry)) {
            (Some(ms), _) => Duration::from_millis(ms),
            (None, Some(p)) => p.backoff.delay(lease.attempt),
            (None, None) => Duration::ZERO,
        };
        Verdict::Retry {
            at: app.herald().clock().now() + delay,
            error,
        }
    };
    let status = match &verdict {
        Verdict::Dead { .. } => "dead",
        _ => "retrying",
    };
    complete(&app, &lease, verdict).await?;
    count("herald_attempts_failed_total", &sub);
    count(
        if status == "dead" {
            "herald_deliveries_dead_total"
        } else {
            "herald_deliveries_retried_total"
        },
        &sub,
    );
    Ok(Json(json!({ "delivery_id": lease.lease.delivery, "status": status })))
}

/// Adds one to a per-subscription counter: the same series herald's own handlers count in, so
/// dashboards see pull consumers like any other subscription.
fn count(metric: &'static str, subscription: &SubscriptionName) {
    metrics::counter!(metric, "subscription" => subscription.as_str().to_owned()).increment(1);
}

/// The body of `extend`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ExtendInput {
    lease: String,
    lease_ms: Option<u64>,
}

/// `POST /v1/subscriptions/{name}/extend`: the lease runs `lease_ms` (default 30 s) from now.
pub(crate) async fn extend(
    State(app): State<AppState>,
    Path(name): Path<String>,
    JsonBody(input): JsonBody<ExtendInput>,
) -> Result<Json<Value>, ApiError> {
    pull_subscription(&app, &name)?;
    let lease = LeaseRef::parse(&input.lease)?;
    let d = duration_ms("lease_ms", input.lease_ms, DEFAULT_LEASE)?;
    let held = app.herald().store().extend(&[lease.lease], d).await?;
    if held.first() != Some(&true) {
        return Err(lease_lost(&lease));
    }
    let until = app.herald().clock().now() + d;
    Ok(Json(
        json!({ "delivery_id": lease.lease.delivery, "lease_until": until.to_string() }),
    ))
}
