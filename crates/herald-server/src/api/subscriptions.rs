//! Subscriptions made through the API: webhook consumers (herald calls a URL) and pull consumers
//! (clients claim, ack, nack and extend over HTTP), and the registry that lists them.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use herald::{Backoff, Context, Event, Pattern, SubscribeError, SubscriptionName, SubscriptionSpec};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::webhook::{self, Target};
use super::{ApiError, AppState, JsonBody};

/// The subscriptions this server runs, by name.
#[derive(Debug)]
pub(crate) struct Registry {
    subs: Mutex<BTreeMap<String, Arc<Entry>>>,
    /// Where the definitions are kept across restarts (with a durable store), if anywhere.
    file: Option<PathBuf>,
}

/// One subscription made through the API.
#[derive(Debug)]
pub(crate) struct Entry {
    definition: CreateInput,
    pub(crate) name: SubscriptionName,
    pattern: Pattern,
    max_attempts: u32,
    timeout: Option<Duration>,
    pub(crate) consumer: Consumer,
}

/// Who consumes a subscription's deliveries.
#[derive(Debug)]
pub(crate) enum Consumer {
    /// Herald POSTs each delivery to a URL.
    Webhook {
        target: Target,
        running: herald::Subscription,
    },
    /// Clients claim deliveries over HTTP.
    Pull(Pull),
}

/// A pull consumer's policy and state.
#[derive(Debug)]
pub(crate) struct Pull {
    pub(crate) backoff: Backoff,
    pub(crate) paused: AtomicBool,
}

impl Entry {
    pub(crate) fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    fn is_paused(&self) -> bool {
        match &self.consumer {
            Consumer::Webhook { running, .. } => running.is_paused(),
            Consumer::Pull(p) => p.paused.load(Ordering::SeqCst),
        }
    }

    fn set_paused(&self, paused: bool) {
        match &self.consumer {
            Consumer::Webhook { running, .. } if paused => running.pause(),
            Consumer::Webhook { running, .. } => running.resume(),
            Consumer::Pull(p) => p.paused.store(paused, Ordering::SeqCst),
        }
    }

    fn view(&self) -> SubscriptionView {
        let (kind, url) = match &self.consumer {
            Consumer::Webhook { target, .. } => ("webhook", Some(target.url.to_string())),
            Consumer::Pull(_) => ("pull", None),
        };
        SubscriptionView {
            name: self.name.as_str().to_owned(),
            pattern: self.pattern.as_str().to_owned(),
            kind,
            url,
            paused: self.is_paused(),
            max_attempts: Some(self.max_attempts),
            timeout_ms: self.timeout.map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
        }
    }
}

/// A subscription as the API shows it.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct SubscriptionView {
    name: String,
    pattern: String,
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    url: Option<String>,
    paused: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_attempts: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timeout_ms: Option<u64>,
}

impl Registry {
    fn list(&self) -> Vec<SubscriptionView> {
        self.subs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|e| e.view())
            .collect()
    }

    /// The subscription named `name`, or 404.
    pub(crate) fn get(&self, name: &str) -> Result<Arc<Entry>, ApiError> {
        self.subs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
            .ok_or_else(|| {
                ApiError::not_found(format!(
                    "no subscription named '{name}' on this server: create it with POST /v1/subscriptions"
                ))
            })
    }

    fn contains(&self, name: &str) -> bool {
        self.subs.lock().unwrap_or_else(|p| p.into_inner()).contains_key(name)
    }

    /// A registry that keeps its definitions in `file` (none: in memory only).
    pub(crate) fn new(file: Option<PathBuf>) -> Self {
        Registry {
            subs: Mutex::new(BTreeMap::new()),
            file,
        }
    }

    fn remove(&self, name: &str) {
        let mut subs = self.subs.lock().unwrap_or_else(|p| p.into_inner());
        subs.remove(name);
        self.save(&subs);
    }

    fn insert(&self, entry: Entry) -> Arc<Entry> {
        let entry = Arc::new(entry);
        let mut subs = self.subs.lock().unwrap_or_else(|p| p.into_inner());
        subs.insert(entry.name.as_str().to_owned(), entry.clone());
        self.save(&subs);
        entry
    }

    /// Writes every definition to the file (a new file renamed over the old, readable by the
    /// owner only: it holds webhook secrets). Called under the lock, so writes are ordered.
    fn save(&self, subs: &BTreeMap<String, Arc<Entry>>) {
        let Some(file) = &self.file else { return };
        let definitions: Vec<&CreateInput> = subs.values().map(|e| &e.definition).collect();
        if let Err(e) = write_private(file, &definitions) {
            tracing::error!(file = %file.display(), error = %e, "herald: cannot save the subscriptions; they will be lost at restart");
        }
    }

    /// The saved definitions, if there is a file.
    fn load(&self) -> Result<Vec<CreateInput>, String> {
        let Some(file) = &self.file else { return Ok(Vec::new()) };
        match std::fs::read(file) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", file.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(format!("{}: {e}", file.display())),
        }
    }
}

/// Writes `definitions` as JSON to `file`: a new file (mode 0600) synced and renamed over the old.
pub(super) fn write_private<T: Serialize>(file: &std::path::Path, definitions: &[T]) -> std::io::Result<()> {
    use std::io::Write as _;
    let tmp = file.with_extension("json.tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options.open(&tmp)?;
    f.write_all(&serde_json::to_vec_pretty(definitions).map_err(std::io::Error::other)?)?;
    f.sync_all()?;
    std::fs::rename(&tmp, file)
}

/// The body of `POST /v1/subscriptions`: with a `url`, a webhook consumer; without, a pull
/// consumer. Also what the registry saves.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateInput {
    name: String,
    pattern: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_attempts: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timeout_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    concurrency: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    backoff_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    backoff_max_ms: Option<u64>,
}

impl std::fmt::Debug for CreateInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        f.debug_struct("CreateInput")
            .field("name", &self.name)
            .field("pattern", &self.pattern)
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

fn subscribe_error(e: SubscribeError) -> ApiError {
    match e {
        SubscribeError::Invalid(e) => ApiError::invalid(e.to_string()),
        SubscribeError::Options(_) => ApiError::invalid(e.to_string()),
        SubscribeError::Duplicate(_) => ApiError::conflict("exists", e.to_string()),
        SubscribeError::ShuttingDown => ApiError::shutting_down(),
        SubscribeError::Store(e) => e.into(),
        other => ApiError::internal(other.to_string()),
    }
}

/// `POST /v1/subscriptions`: 201 with the subscription.
pub(crate) async fn create(
    State(app): State<AppState>,
    JsonBody(input): JsonBody<CreateInput>,
) -> Result<(StatusCode, Json<SubscriptionView>), ApiError> {
    if app.is_closing() {
        return Err(ApiError::shutting_down());
    }
    let entry = app.0.subscriptions.insert(start(&app, input).await?);
    Ok((StatusCode::CREATED, Json(entry.view())))
}

/// Starts the subscriptions saved by a previous run; returns how many.
pub(crate) async fn restore(app: &AppState) -> Result<usize, String> {
    let definitions = app.0.subscriptions.load()?;
    let count = definitions.len();
    for definition in definitions {
        let name = definition.name.clone();
        let entry = start(app, definition)
            .await
            .map_err(|e| format!("cannot restore subscription '{name}': {e:?}"))?;
        app.0.subscriptions.insert(entry);
    }
    Ok(count)
}

/// Checks a definition and starts its consumer.
async fn start(app: &AppState, input: CreateInput) -> Result<Entry, ApiError> {
    let definition = input.clone();
    let name = SubscriptionName::new(&input.name).map_err(|e| ApiError::invalid(e.to_string()))?;
    let pattern = Pattern::new(&input.pattern).map_err(|e| ApiError::invalid(e.to_string()))?;
    if app.0.subscriptions.contains(name.as_str()) || app.herald().subscription(name.as_str()).is_some() {
        return Err(ApiError::conflict(
            "exists",
            format!("a subscription named '{name}' already exists: pick another name"),
        ));
    }
    let max_attempts = input.max_attempts.unwrap_or(5);
    if max_attempts == 0 {
        return Err(ApiError::invalid("max_attempts must be at least 1"));
    }
    let timeout = match input.timeout_ms {
        Some(0) => return Err(ApiError::invalid("timeout_ms must be at least 1")),
        Some(ms) => Some(Duration::from_millis(ms)),
        None => None,
    };
    // Exponential from `backoff_ms` (default 1 s) up to `backoff_max_ms` (default 10 min), with
    // full jitter: herald's default policy.
    let backoff = Backoff::exponential(Duration::from_millis(input.backoff_ms.unwrap_or(1000)))
        .cap(Duration::from_millis(input.backoff_max_ms.unwrap_or(600_000)));
    let consumer = match input.url {
        Some(url) => {
            let target = Target::new(&url, input.secret.as_deref().unwrap_or("")).map_err(ApiError::invalid)?;
            let client = app.0.http.clone();
            let for_handler = target.clone();
            let mut builder = app
                .herald()
                .subscribe(name.as_str(), pattern.as_str())
                .max_attempts(max_attempts)
                .backoff(backoff);
            if let Some(t) = timeout {
                builder = builder.timeout(t);
            }
            if let Some(c) = input.concurrency {
                builder = builder.concurrency(c);
            }
            let running = builder
                .handle_event(move |event: Event, ctx: Context| {
                    let client = client.clone();
                    let target = for_handler.clone();
                    async move { webhook::deliver(&client, &target, &event, &ctx).await }
                })
                .await
                .map_err(subscribe_error)?;
            Consumer::Webhook { target, running }
        }
        None => {
            if input.secret.is_some() || input.concurrency.is_some() || timeout.is_some() {
                return Err(ApiError::invalid(
                    "secret, concurrency and timeout_ms are for webhook subscriptions (with a url); a pull consumer \
                     sets its lease with each claim",
                ));
            }
            app.herald()
                .store()
                .declare(&SubscriptionSpec {
                    name: name.clone(),
                    pattern: pattern.clone(),
                })
                .await?;
            Consumer::Pull(Pull {
                backoff,
                paused: AtomicBool::new(false),
            })
        }
    };
    Ok(Entry {
        definition,
        name,
        pattern,
        max_attempts,
        timeout,
        consumer,
    })
}

/// A subscription found by name: made through the API, or running in the server's process
/// (subscribed in code by an application that embeds the server).
enum Found {
    Api(Arc<Entry>),
    Local(herald::Subscription),
}

fn find(app: &AppState, name: &str) -> Result<Found, ApiError> {
    match app.0.subscriptions.get(name) {
        Ok(entry) => Ok(Found::Api(entry)),
        Err(not_found) => app.herald().subscription(name).map(Found::Local).ok_or(not_found),
    }
}

fn local_view(sub: &herald::Subscription) -> SubscriptionView {
    SubscriptionView {
        name: sub.name().as_str().to_owned(),
        pattern: sub.pattern().as_str().to_owned(),
        kind: "local",
        url: None,
        paused: sub.is_paused(),
        max_attempts: None,
        timeout_ms: None,
    }
}

impl Found {
    fn view(&self) -> SubscriptionView {
        match self {
            Found::Api(entry) => entry.view(),
            Found::Local(sub) => local_view(sub),
        }
    }

    fn set_paused(&self, paused: bool) {
        match self {
            Found::Api(entry) => entry.set_paused(paused),
            Found::Local(sub) if paused => sub.pause(),
            Found::Local(sub) => sub.resume(),
        }
    }
}

/// `GET /v1/subscriptions`: webhook and pull consumers, and `local` ones (handlers in the
/// server's process), by name.
pub(crate) async fn list(State(app): State<AppState>) -> Json<Value> {
    let mut items = app.0.subscriptions.list();
    for sub in app.herald().subscriptions() {
        if !items.iter().any(|v| v.name == sub.name().as_str()) {
            items.push(local_view(&sub));
        }
    }
    items.sort_by(|a, b| a.name.cmp(&b.name));
    Json(json!({ "items": items }))
}

/// `GET /v1/subscriptions/{name}`.
pub(crate) async fn detail(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<SubscriptionView>, ApiError> {
    Ok(Json(find(&app, &name)?.view()))
}

/// `POST /v1/subscriptions/{name}/pause`: no new attempts (webhook, local) or claims (pull);
/// deliveries wait in the store.
pub(crate) async fn pause(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<SubscriptionView>, ApiError> {
    let found = find(&app, &name)?;
    found.set_paused(true);
    Ok(Json(found.view()))
}

/// `POST /v1/subscriptions/{name}/resume`.
pub(crate) async fn resume(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<SubscriptionView>, ApiError> {
    let found = find(&app, &name)?;
    found.set_paused(false);
    Ok(Json(found.view()))
}

/// `DELETE /v1/subscriptions/{name}`: stops the subscription, stops routing events to it and
/// cancels its unfinished deliveries; its history stays.
pub(crate) async fn delete(State(app): State<AppState>, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    let cancelled = match find(&app, &name)? {
        Found::Local(sub) => sub.unsubscribe().await?,
        Found::Api(entry) => {
            let cancelled = match &entry.consumer {
                Consumer::Webhook { running, .. } => running.clone().unsubscribe().await?,
                Consumer::Pull(_) => app.herald().store().remove_subscription(&entry.name).await?,
            };
            app.0.subscriptions.remove(&name);
            cancelled
        }
    };
    Ok(Json(json!({ "name": name, "cancelled": cancelled })))
}
