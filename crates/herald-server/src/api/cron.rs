//! Cron schedules over HTTP: list, create or replace, inspect, pause, resume and remove the
//! schedules of this server's runtime, and the registry that keeps the API-made ones across
//! restarts (beside the embedded store, like API-made subscriptions).
//!
//! Schedules live in each server, as subscriptions do: a call acts on the server that receives
//! it. Servers that share a store fire each tick once between them (the key `cron:{name}:{tick}`),
//! so they should declare the same schedules: the same `[[cron]]` tables in their config file.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use herald::{CronError, CronInfo, Herald, Priority};
use serde::Serialize;
use serde_json::{json, Value};

use super::{ApiError, AppState, JsonBody};
use crate::config::CronEntry;

/// The schedules made through the API (not those of the config file), by name, and where they
/// are saved.
#[derive(Debug)]
pub(crate) struct CronRegistry {
    made: Mutex<BTreeMap<String, Saved>>,
    file: Option<PathBuf>,
}

/// An API-made schedule as saved: its definition and whether it is paused.
#[derive(Clone, Debug, serde::Deserialize, Serialize)]
struct Saved {
    #[serde(flatten)]
    entry: CronEntry,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    paused: bool,
}

impl CronRegistry {
    /// A registry that saves to `file` (none: in memory only).
    pub(crate) fn new(file: Option<PathBuf>) -> Self {
        CronRegistry {
            made: Mutex::new(BTreeMap::new()),
            file,
        }
    }

    fn update(&self, change: impl FnOnce(&mut BTreeMap<String, Saved>)) {
        let mut made = self.made.lock().unwrap_or_else(|p| p.into_inner());
        change(&mut made);
        let Some(file) = &self.file else { return };
        let saved: Vec<&Saved> = made.values().collect();
        if let Err(e) = super::subscriptions::write_private(file, &saved) {
            tracing::error!(file = %file.display(), error = %e, "herald: cannot save the cron schedules; they will be lost at restart");
        }
    }

    fn contains(&self, name: &str) -> bool {
        self.made.lock().unwrap_or_else(|p| p.into_inner()).contains_key(name)
    }

    fn load(&self) -> Result<Vec<Saved>, String> {
        let Some(file) = &self.file else { return Ok(Vec::new()) };
        match std::fs::read(file) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", file.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(format!("{}: {e}", file.display())),
        }
    }
}

/// Declares `entry` in `herald` (or replaces the schedule of that name).
pub(crate) async fn declare(herald: &Herald, entry: &CronEntry) -> Result<(), CronError> {
    let mut cron = herald
        .cron(&entry.name, &entry.expr)
        .topic(entry.topic.as_str())
        .tz(entry.tz.as_deref().unwrap_or("UTC"))
        .missed(entry.missed_policy()?);
    if let Some(payload) = &entry.payload {
        cron = cron.payload(payload);
    }
    if let Some(p) = entry.priority {
        // Checked by `CronEntry::check` first; an invalid one keeps the default.
        if let Ok(p) = Priority::new(p) {
            cron = cron.priority(p);
        }
    }
    if let Some(ms) = entry.ttl_ms {
        cron = cron.ttl(Duration::from_millis(ms));
    }
    cron.await.map(|_| ())
}

/// Declares the config file's schedules, then those the API made before a restart (which
/// replace a config schedule of the same name); returns how many were restored.
pub(crate) async fn start(app: &AppState) -> Result<usize, String> {
    for entry in &app.config().cron {
        declare(app.herald(), entry)
            .await
            .map_err(|e| format!("cron schedule '{}' of the config file: {e}", entry.name))?;
    }
    let saved = app.0.crons.load()?;
    let count = saved.len();
    for s in saved {
        let name = s.entry.name.clone();
        let failed = |e: CronError| format!("cannot restore cron schedule '{name}': {e}");
        declare(app.herald(), &s.entry).await.map_err(failed)?;
        if s.paused {
            app.herald().cron_pause(&name).await.map_err(failed)?;
        }
        app.0.crons.update(|made| {
            made.insert(name.clone(), s);
        });
    }
    Ok(count)
}

fn cron_error(e: CronError) -> ApiError {
    match e {
        CronError::NotFound(name) => not_found(&name),
        CronError::ShuttingDown => ApiError::shutting_down(),
        other => ApiError::invalid(other.to_string()),
    }
}

fn not_found(name: &str) -> ApiError {
    ApiError::not_found(format!(
        "no cron schedule named '{name}' on this server: GET /v1/cron lists them, POST /v1/cron makes one"
    ))
}

/// A schedule as the API shows it: times in RFC 3339.
#[derive(Debug, Serialize)]
pub(crate) struct CronView {
    name: String,
    expr: String,
    tz: String,
    topic: String,
    missed: &'static str,
    paused: bool,
    /// `config` (the config file), `api` (made through the API) or `code` (declared by an
    /// application that embeds the server).
    origin: &'static str,
    next: Vec<String>,
    last: Option<LastRun>,
    last_error: Option<String>,
}

/// The latest tick and what became of its event.
#[derive(Debug, Serialize)]
struct LastRun {
    tick: String,
    event_id: String,
    status: Option<Value>,
}

fn view(app: &AppState, info: CronInfo) -> CronView {
    let origin = if app.0.crons.contains(&info.name) {
        "api"
    } else if app.config().cron.iter().any(|c| c.name == info.name) {
        "config"
    } else {
        "code"
    };
    CronView {
        expr: info.spec.expression().to_owned(),
        tz: info.spec.time_zone().to_owned(),
        topic: info.topic.as_str().to_owned(),
        missed: info.missed.as_str(),
        paused: info.paused,
        origin,
        next: info.next.iter().map(ToString::to_string).collect(),
        last: info.last.map(|run| LastRun {
            tick: run.tick.to_string(),
            event_id: run.event_id.to_string(),
            status: run.status.and_then(|s| serde_json::to_value(s).ok()),
        }),
        last_error: info.last_error,
        name: info.name,
    }
}

async fn found(app: &AppState, name: &str) -> Result<CronView, ApiError> {
    match app.herald().cron_info(name).await? {
        Some(info) => Ok(view(app, info)),
        None => Err(not_found(name)),
    }
}

/// `GET /v1/cron`: this server's schedules by name, with their next fire times and last tick.
pub(crate) async fn list(State(app): State<AppState>) -> Result<Json<Value>, ApiError> {
    let items: Vec<CronView> = app
        .herald()
        .crons()
        .await?
        .into_iter()
        .map(|info| view(&app, info))
        .collect();
    Ok(Json(json!({ "items": items })))
}

/// `POST /v1/cron`: declares a schedule, or replaces the one of that name (a paused one stays
/// paused); 201 when it is new, 200 when it replaced one.
pub(crate) async fn create(
    State(app): State<AppState>,
    JsonBody(entry): JsonBody<CronEntry>,
) -> Result<(StatusCode, Json<CronView>), ApiError> {
    if app.is_closing() {
        return Err(ApiError::shutting_down());
    }
    entry.check().map_err(ApiError::invalid)?;
    let existed = app.herald().cron_info(&entry.name).await?;
    declare(app.herald(), &entry).await.map_err(cron_error)?;
    let paused = existed.as_ref().is_some_and(|i| i.paused);
    let name = entry.name.clone();
    app.0.crons.update(|made| {
        made.insert(name.clone(), Saved { entry, paused });
    });
    let status = if existed.is_some() {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(found(&app, &name).await?)))
}

/// `GET /v1/cron/{name}`.
pub(crate) async fn detail(State(app): State<AppState>, Path(name): Path<String>) -> Result<Json<CronView>, ApiError> {
    Ok(Json(found(&app, &name).await?))
}

async fn set_paused(app: &AppState, name: &str, paused: bool) -> Result<CronView, ApiError> {
    if paused {
        app.herald().cron_pause(name).await.map_err(cron_error)?;
    } else {
        app.herald().cron_resume(name).await.map_err(cron_error)?;
    }
    if app.0.crons.contains(name) {
        app.0.crons.update(|made| {
            if let Some(s) = made.get_mut(name) {
                s.paused = paused;
            }
        });
    }
    found(app, name).await
}

/// `POST /v1/cron/{name}/pause`: this server stops firing it (other servers that declare it go on).
pub(crate) async fn pause(State(app): State<AppState>, Path(name): Path<String>) -> Result<Json<CronView>, ApiError> {
    Ok(Json(set_paused(&app, &name, true).await?))
}

/// `POST /v1/cron/{name}/resume`: fires again from its next tick.
pub(crate) async fn resume(State(app): State<AppState>, Path(name): Path<String>) -> Result<Json<CronView>, ApiError> {
    Ok(Json(set_paused(&app, &name, false).await?))
}

/// `DELETE /v1/cron/{name}`: removes it from this server; past ticks' events stay.
pub(crate) async fn delete(State(app): State<AppState>, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    app.herald().cron_remove(&name).await.map_err(cron_error)?;
    app.0.crons.update(|made| {
        made.remove(&name);
    });
    Ok(Json(json!({ "name": name, "removed": true })))
}
