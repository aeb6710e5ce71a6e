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
//! | `GET, POST /v1/cron`, `GET, DELETE /v1/cron/{name}`, `.../pause`, `.../resume` | cron schedules of this server: next fire times, last tick and its event |
//! | `GET /v1/stats`, `GET /metrics`, `GET /healthz`, `GET /readyz` | counts, Prometheus text, probes |
//! | `GET /v1/stats/history`, `GET /v1/stats/stream` | throughput and lateness a second over the last 15 minutes; the same live as Server-Sent Events |
//! | `GET /` | the web dashboard (its page and assets load without a token; its calls need one) |
//!
//! Errors are `{"error": {"code", "message"}}`: 400 invalid, 401 no or wrong token, 404 unknown,
//! 409 wrong state, 413 body over `body_limit`, 429 queue full (with `Retry-After`), 503 shutting
//! down, 408 over `request_timeout_ms`.
//!
//! # The CLI
//! The other subcommands of `herald` are clients of this API:
//!
//! ```text
//! herald publish TOPIC [PAYLOAD_JSON] [--delay 30s | --at RFC3339] [--priority N] [--key K] [--ttl 1h]
//!                [--header k=v]...
//! herald schedule TOPIC PAYLOAD_JSON --delay 5m | --at RFC3339   # publish with a required time
//! herald cancel EVENT_ID
//! herald request TOPIC PAYLOAD_JSON [--timeout 5s]                # prints the reply
//! herald events [--topic P] [--status S] [--subscription N] [--since T] [--until T] [--key K]
//!               [--limit N] [--after CURSOR]
//! herald event EVENT_ID                                           # with deliveries and attempts
//! herald retry DELIVERY_ID
//! herald subs [list | pause NAME | resume NAME | delete NAME]
//! herald cron add NAME --expr EXPR --topic TOPIC [--tz ZONE] [--payload JSON]
//!                [--missed skip|catch-up-one] [--priority N] [--ttl 1h]
//! herald cron [list | remove NAME | pause NAME | resume NAME]    # list: next fires, last outcome
//! herald stats
//! herald bench [--duration 10s] [--connections 64] [--server URL]  # HTTP publish load generator
//! ```
//!
//! Every one takes `--server URL` (default `http://127.0.0.1:7420`, or `HERALD_SERVER`), `--token T`
//! (or `HERALD_TOKEN`) and `--json`, which prints the API's JSON answer as is instead of a table.
//! Payloads are JSON (a string keeps its quotes: `'"text"'`); durations are humantime (`30s`,
//! `1h 30m`); `--since`/`--until` take an RFC 3339 time, epoch milliseconds or a duration ago
//! (`10m`). `events` prints `more: --after CURSOR` when there is a next page. A failure prints the
//! API's message on stderr and exits 2 for a 4xx (or a bad argument), 1 otherwise (5xx, no
//! connection: "is `herald serve` running at URL?").
//!
//! # Cron
//! Schedules come from the config file's `[[cron]]` tables ([`CronEntry`]; checked at start: an
//! invalid expression or zone fails the start and names the schedule) and from `POST /v1/cron`
//! (kept in `cron.json` in the data directory with any durable store, mode 0600, and declared again at start).
//! Servers that share a store (`--store redis://...` or `postgres://...` with one `--namespace`)
//! publish each tick once between them: every server publishes the tick's event with the
//! idempotency key `cron:{name}:{tick}` and the store keeps one. Schedules are per server, like
//! subscriptions: pause and remove act on the server that receives them, so servers that share a
//! store should declare their schedules in the same config file. The embedded store is one process
//! per file, so a cluster needs Redis or PostgreSQL.

mod api;
mod config;
mod dashboard;
mod server;
mod store;
mod telemetry;

pub use config::{Config, ConfigError, ConfigLayer, CronEntry, StoreKind};
pub use server::{serve, shutdown_signal, ServeError, Server, ShutdownSignal};
pub use store::open_store;
pub use telemetry::install_recorder;
