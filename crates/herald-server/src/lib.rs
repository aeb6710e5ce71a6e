//! herald-server: the library behind the `herald` binary. `herald serve` runs an HTTP API over a
//! herald store, so that services in any language can publish, request, query and consume events.
//!
//! - [`Config`]: settings from a TOML file, `HERALD_*` variables and flags ([`ConfigLayer`];
//!   flags win over the environment, which wins over the file).
//! - [`Server::start`] serves the API on a listener; [`serve`] does so until SIGTERM/SIGINT, then
//!   drains. [`open_store`] opens the configured store (the embedded SQLite store in `data` by
//!   default, or memory).
//!
//! # The API
//! JSON under `/v1`, described by the OpenAPI 3 document at `GET /v1/openapi.json`:
//!
//! | call | does |
//! |---|---|
//! | `POST /v1/events` | publish one event (`{"topic", "payload", "delay_ms" \| "at", "priority", "key", "ttl_ms", "headers"}`) or `{"events": [...]}`; CloudEvents 1.0 structured, batch and binary modes |
//! | `GET /v1/events` | the history, newest first: `topic`, `status`, `subscription`, `since`, `until`, `key`, `limit`, `after` → `{"items", "next"}` |
//! | `GET /v1/events/{id}` | one event with its deliveries and their attempts |
//! | `POST /v1/events/{id}/cancel` | cancel what has not started |
//! | `POST /v1/requests` | publish and wait for the reply, up to `timeout_ms` |
//! | `POST /v1/deliveries/{id}/retry` | a dead delivery runs again |
//! | `GET, POST /v1/subscriptions`, `GET, DELETE /v1/subscriptions/{name}`, `.../pause`, `.../resume` | webhook subscriptions (with a `url`) and pull consumers (without) |
//! | `POST /v1/subscriptions/{name}/claim \| ack \| nack \| extend` | pull consumers: leased deliveries |
//! | `GET /v1/stats`, `GET /metrics`, `GET /healthz`, `GET /readyz` | counts, Prometheus text, probes |
//!
//! Errors are `{"error": {"code", "message"}}`: 400 invalid, 401 no or wrong token, 404 unknown,
//! 409 wrong state, 413 body over `body_limit`, 429 queue full (with `Retry-After`), 503 shutting
//! down, 408 over `request_timeout_ms`.

mod api;
mod config;
mod server;
mod store;
mod telemetry;

pub use config::{Config, ConfigError, ConfigLayer, StoreKind};
pub use server::{serve, shutdown_signal, ServeError, Server};
pub use store::open_store;
pub use telemetry::install_recorder;
