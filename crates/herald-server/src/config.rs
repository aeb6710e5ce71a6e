//! The server's configuration: a TOML file, then `HERALD_*` environment variables, then flags;
//! a later source wins over an earlier one, and defaults fill the rest.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Which store the server keeps events in.
///
/// In the config file, the environment (`HERALD_STORE`) and `--store`: `sqlite`, `memory`, or the
/// URL of a shared store, `redis://...` (also `rediss://`) or `postgres://...` (also
/// `postgresql://`), which several servers may share.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
#[non_exhaustive]
pub enum StoreKind {
    /// In process memory: fast, and gone when the process stops.
    Memory,
    /// The embedded durable store: one SQLite file in the data directory.
    Sqlite,
    /// A Redis (or Valkey) server, by URL: shared by every server that names it.
    Redis(String),
    /// A PostgreSQL database, by URL: shared by every server that names it.
    Postgres(String),
}

impl StoreKind {
    /// The default: the embedded store when this build has it, else memory.
    pub const DEFAULT: StoreKind = if cfg!(feature = "sqlite") {
        StoreKind::Sqlite
    } else {
        StoreKind::Memory
    };

    /// Its kind's name (`memory`, `sqlite`, `redis`, `postgres`).
    pub const fn as_str(&self) -> &'static str {
        match self {
            StoreKind::Memory => "memory",
            StoreKind::Sqlite => "sqlite",
            StoreKind::Redis(_) => "redis",
            StoreKind::Postgres(_) => "postgres",
        }
    }

    /// Whether what it holds outlives the process.
    pub const fn is_durable(&self) -> bool {
        !matches!(self, StoreKind::Memory)
    }
}

/// The URL without its password, for logs.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

impl std::fmt::Debug for StoreKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// The name, or the URL with its password hidden.
impl std::fmt::Display for StoreKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreKind::Redis(url) | StoreKind::Postgres(url) => f.write_str(&redact(url)),
            other => f.write_str(other.as_str()),
        }
    }
}

impl FromStr for StoreKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "memory" => Ok(StoreKind::Memory),
            "sqlite" => Ok(StoreKind::Sqlite),
            url if url.starts_with("redis://") || url.starts_with("rediss://") => Ok(StoreKind::Redis(url.to_owned())),
            url if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                Ok(StoreKind::Postgres(url.to_owned()))
            }
            other => Err(format!(
                "unknown store '{}': use 'sqlite', 'memory', a redis://host:port URL or a postgres://user@host/db URL",
                redact(other)
            )),
        }
    }
}

impl TryFrom<String> for StoreKind {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

/// The configuration could not be read or is not valid.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read the config file '{path}': {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The config file is not valid TOML for herald.
    #[error("the config file '{path}' is invalid: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong in it.
        #[source]
        source: Box<toml::de::Error>,
    },
    /// An environment variable has a value that does not parse.
    #[error("environment variable {name}={value:?} is invalid: {reason}")]
    Env {
        /// The variable.
        name: &'static str,
        /// Its value.
        value: String,
        /// What was expected.
        reason: String,
    },
    /// The settings do not make sense together.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// One source of settings (the file, the environment or the flags): each field it leaves `None`
/// falls through to the sources below it.
///
/// The file is TOML with the same names:
///
/// ```toml
/// listen = "127.0.0.1:7420"
/// data = "./herald-data"
/// store = "sqlite"            # or "memory"
/// body_limit = 1048576
/// request_timeout_ms = 30000
/// shutdown_timeout_ms = 10000
/// max_pending = 100000
/// workers = 64
/// tokens = ["a-long-random-token"]
///
/// # Cron schedules, declared at start (see [`CronEntry`]); every server that reads this file
/// # fires them, and a shared store keeps one event per tick.
/// [[cron]]
/// name = "nightly-report"
/// expr = "0 3 * * *"
/// topic = "report.nightly"
/// tz = "Europe/Berlin"
/// payload = { format = "pdf" }
/// missed = "catch-up-one"
/// ```
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ConfigLayer {
    /// The address to listen on.
    pub listen: Option<SocketAddr>,
    /// The data directory of the embedded store.
    pub data: Option<PathBuf>,
    /// The store.
    pub store: Option<StoreKind>,
    /// The namespace in a shared store: the Redis key prefix or the PostgreSQL schema.
    pub namespace: Option<String>,
    /// A PEM file of CA certificates that `https://` webhooks may also chain to.
    pub webhook_ca: Option<PathBuf>,
    /// The largest request body, in bytes.
    pub body_limit: Option<usize>,
    /// How long one HTTP request may take, in milliseconds.
    pub request_timeout_ms: Option<u64>,
    /// How long shutdown waits for running work, in milliseconds.
    pub shutdown_timeout_ms: Option<u64>,
    /// How many unfinished deliveries the store may hold before publishes get 429.
    pub max_pending: Option<u64>,
    /// How many handlers (webhook calls) may run at once.
    pub workers: Option<usize>,
    /// Bearer tokens that clients may present; when empty, no authentication.
    pub tokens: Option<Vec<String>>,
    /// Cron schedules declared at start (`[[cron]]` tables; only the file sets them).
    pub cron: Option<Vec<CronEntry>>,
}

/// A cron schedule: a `[[cron]]` table of the config file, and the body of `POST /v1/cron`.
///
/// ```
/// let layer = herald_server::ConfigLayer::from_toml(
///     r#"
///     [[cron]]
///     name = "cleanup"
///     expr = "*/10 * * * *"
///     topic = "maintenance.cleanup"
///     payload = { older_than_days = 30 }
///     "#,
/// )?;
/// let cron = &layer.cron.unwrap()[0];
/// assert_eq!(cron.tz, None); // UTC
/// assert_eq!(cron.payload, Some(serde_json::json!({"older_than_days": 30})));
/// # Ok::<(), toml::de::Error>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct CronEntry {
    /// The schedule's name: lowercase letters, digits, `_`, `-` and dots.
    pub name: String,
    /// The cron expression: 5 fields, or 6 with seconds first (`*/10 * * * * *`).
    pub expr: String,
    /// The topic of its events.
    pub topic: String,
    /// The IANA time zone the expression is read in (default `UTC`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tz: Option<String>,
    /// The payload of every tick's event, any JSON (default: `{"name", "tick"}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<serde_json::Value>,
    /// What to do about ticks missed while no server ran it: `skip` (default) or `catch-up-one`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missed: Option<String>,
    /// The priority of its events, 0..=10 (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u8>,
    /// Each tick's event expires if no attempt started within this many milliseconds of the tick.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
}

impl CronEntry {
    /// A schedule firing `topic` on `expr` (read in UTC), with the default payload and policy.
    ///
    /// ```
    /// let cron = herald_server::CronEntry::new("cleanup", "*/10 * * * *", "maintenance.cleanup");
    /// assert!(cron.check().is_ok());
    /// ```
    pub fn new(name: &str, expr: &str, topic: &str) -> Self {
        CronEntry {
            name: name.to_owned(),
            expr: expr.to_owned(),
            topic: topic.to_owned(),
            ..CronEntry::default()
        }
    }

    /// Its expression and zone, parsed.
    pub(crate) fn spec(&self) -> Result<herald::CronSpec, herald::CronError> {
        herald::CronSpec::new(&self.expr, self.tz.as_deref().unwrap_or("UTC"))
    }

    /// Its missed-tick policy, parsed.
    pub(crate) fn missed_policy(&self) -> Result<herald::Missed, herald::CronError> {
        self.missed.as_deref().map_or(Ok(herald::Missed::Skip), str::parse)
    }

    /// Checks what can be checked without a runtime: the expression, the zone, the policy, the
    /// priority and the ttl; the message says what is wrong.
    ///
    /// ```
    /// let mut cron = herald_server::CronEntry::new("report", "0 25 * * *", "report.daily");
    /// assert!(cron.check().unwrap_err().starts_with("cron expression '0 25 * * *' is invalid"));
    /// cron.expr = "0 3 * * *".into();
    /// cron.tz = Some("Mars/Olympus".into());
    /// assert!(cron.check().unwrap_err().starts_with("time zone 'Mars/Olympus' is unknown"));
    /// ```
    pub fn check(&self) -> Result<(), String> {
        self.spec().map_err(|e| e.to_string())?;
        self.missed_policy().map_err(|e| e.to_string())?;
        if let Some(p) = self.priority {
            herald::Priority::new(p).map_err(|e| format!("priority {p} is invalid: {e}"))?;
        }
        if self.ttl_ms == Some(0) {
            return Err("ttl_ms must be at least 1".to_owned());
        }
        Ok(())
    }
}

impl std::fmt::Debug for ConfigLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigLayer")
            .field("listen", &self.listen)
            .field("data", &self.data)
            .field("store", &self.store)
            .field(
                "tokens",
                &self.tokens.as_ref().map(|t| format!("[{} redacted]", t.len())),
            )
            .finish_non_exhaustive()
    }
}

impl ConfigLayer {
    /// Settings from the text of a TOML config file.
    pub fn from_toml(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }

    /// Settings from a TOML config file.
    pub fn from_file(path: impl Into<PathBuf>) -> Result<Self, ConfigError> {
        let path = path.into();
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        Self::from_toml(&text).map_err(|source| ConfigError::Parse {
            path,
            source: Box::new(source),
        })
    }

    /// Settings from `HERALD_*` variables, read through `var` (pass `|k| std::env::var(k).ok()`).
    ///
    /// `HERALD_LISTEN`, `HERALD_DATA`, `HERALD_STORE`, `HERALD_NAMESPACE`, `HERALD_WEBHOOK_CA`, `HERALD_BODY_LIMIT`,
    /// `HERALD_REQUEST_TIMEOUT_MS`, `HERALD_SHUTDOWN_TIMEOUT_MS`, `HERALD_MAX_PENDING`,
    /// `HERALD_WORKERS`, `HERALD_TOKENS` (comma-separated).
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        fn parsed<T: FromStr>(
            var: &impl Fn(&str) -> Option<String>,
            name: &'static str,
        ) -> Result<Option<T>, ConfigError>
        where
            T::Err: std::fmt::Display,
        {
            match var(name) {
                None => Ok(None),
                Some(value) => value.trim().parse().map(Some).map_err(|e: T::Err| ConfigError::Env {
                    name,
                    reason: e.to_string(),
                    value,
                }),
            }
        }
        Ok(ConfigLayer {
            listen: parsed(&var, "HERALD_LISTEN")?,
            data: var("HERALD_DATA").map(PathBuf::from),
            store: parsed(&var, "HERALD_STORE")?,
            namespace: var("HERALD_NAMESPACE"),
            webhook_ca: var("HERALD_WEBHOOK_CA").map(PathBuf::from),
            body_limit: parsed(&var, "HERALD_BODY_LIMIT")?,
            request_timeout_ms: parsed(&var, "HERALD_REQUEST_TIMEOUT_MS")?,
            shutdown_timeout_ms: parsed(&var, "HERALD_SHUTDOWN_TIMEOUT_MS")?,
            max_pending: parsed(&var, "HERALD_MAX_PENDING")?,
            workers: parsed(&var, "HERALD_WORKERS")?,
            tokens: var("HERALD_TOKENS").map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .map(str::to_owned)
                    .collect()
            }),
            cron: None,
        })
    }

    /// These settings, with `lower`'s where these have none.
    pub fn over(self, lower: ConfigLayer) -> ConfigLayer {
        ConfigLayer {
            listen: self.listen.or(lower.listen),
            data: self.data.or(lower.data),
            store: self.store.or(lower.store),
            namespace: self.namespace.or(lower.namespace),
            webhook_ca: self.webhook_ca.or(lower.webhook_ca),
            body_limit: self.body_limit.or(lower.body_limit),
            request_timeout_ms: self.request_timeout_ms.or(lower.request_timeout_ms),
            shutdown_timeout_ms: self.shutdown_timeout_ms.or(lower.shutdown_timeout_ms),
            max_pending: self.max_pending.or(lower.max_pending),
            workers: self.workers.or(lower.workers),
            tokens: self.tokens.or(lower.tokens),
            cron: self.cron.or(lower.cron),
        }
    }
}

/// The server's settings, resolved.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Config {
    /// The address to listen on (default `127.0.0.1:7420`).
    pub listen: SocketAddr,
    /// The data directory of the embedded store (default `./herald-data`).
    pub data: PathBuf,
    /// The store (default: the embedded store when built with the `sqlite` feature).
    pub store: StoreKind,
    /// The namespace in a shared store (default `herald`): the Redis key prefix or the PostgreSQL
    /// schema. Servers that share a store and a namespace are one system.
    pub namespace: String,
    /// A PEM file of CA certificates that `https://` webhooks may chain to besides Mozilla's roots
    /// (default: none), for receivers behind a private CA.
    pub webhook_ca: Option<PathBuf>,
    /// The largest request body in bytes (default 1 MiB); larger bodies get 413.
    pub body_limit: usize,
    /// How long one HTTP request may take (default 30 s).
    pub request_timeout: Duration,
    /// How long shutdown lets running work finish (default 10 s).
    pub shutdown_timeout: Duration,
    /// Unfinished deliveries past which publishes get 429 (default 100,000).
    pub max_pending: u64,
    /// How many handlers may run at once (default 64).
    pub workers: usize,
    /// Bearer tokens; required (non-empty) when `listen` is not a loopback address.
    pub tokens: Vec<String>,
    /// Cron schedules declared at start (from the config file's `[[cron]]` tables).
    pub cron: Vec<CronEntry>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the tokens themselves: configs end up in logs.
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("data", &self.data)
            .field("store", &self.store)
            .field("namespace", &self.namespace)
            .field("webhook_ca", &self.webhook_ca)
            .field("body_limit", &self.body_limit)
            .field("request_timeout", &self.request_timeout)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .field("max_pending", &self.max_pending)
            .field("workers", &self.workers)
            .field("tokens", &format_args!("[{} redacted]", self.tokens.len()))
            .field("cron", &self.cron)
            .finish()
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 7420)),
            data: PathBuf::from("./herald-data"),
            store: StoreKind::DEFAULT,
            namespace: "herald".to_owned(),
            webhook_ca: None,
            body_limit: 1024 * 1024,
            request_timeout: Duration::from_secs(30),
            shutdown_timeout: Duration::from_secs(10),
            max_pending: 100_000,
            workers: 64,
            tokens: Vec::new(),
            cron: Vec::new(),
        }
    }
}

impl Config {
    /// Resolves settings from sources listed from the highest precedence to the lowest (flags,
    /// environment, file), filling the rest with defaults, and checks them.
    pub fn resolve(layers: impl IntoIterator<Item = ConfigLayer>) -> Result<Config, ConfigError> {
        let merged = layers.into_iter().reduce(ConfigLayer::over).unwrap_or_default();
        let d = Config::default();
        let config = Config {
            listen: merged.listen.unwrap_or(d.listen),
            data: merged.data.unwrap_or(d.data),
            store: merged.store.unwrap_or(d.store),
            namespace: merged.namespace.unwrap_or(d.namespace),
            webhook_ca: merged.webhook_ca.or(d.webhook_ca),
            body_limit: merged.body_limit.unwrap_or(d.body_limit),
            request_timeout: merged
                .request_timeout_ms
                .map_or(d.request_timeout, Duration::from_millis),
            shutdown_timeout: merged
                .shutdown_timeout_ms
                .map_or(d.shutdown_timeout, Duration::from_millis),
            max_pending: merged.max_pending.unwrap_or(d.max_pending),
            workers: merged.workers.unwrap_or(d.workers),
            tokens: merged.tokens.unwrap_or(d.tokens),
            cron: merged.cron.unwrap_or(d.cron),
        };
        config.check()?;
        Ok(config)
    }

    /// Checks that the settings make sense together.
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.body_limit == 0 {
            return Err(ConfigError::Invalid("body_limit must be at least 1 byte".into()));
        }
        if self.workers == 0 {
            return Err(ConfigError::Invalid("workers must be at least 1".into()));
        }
        if self.max_pending == 0 {
            return Err(ConfigError::Invalid("max_pending must be at least 1".into()));
        }
        let ns = &self.namespace;
        if ns.is_empty()
            || ns.len() > 56
            || !ns
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            return Err(ConfigError::Invalid(format!(
                "namespace '{ns}' must be 1 to 56 lowercase letters, digits or '_' (it names a Redis key prefix or a \
                 PostgreSQL schema)"
            )));
        }
        if self.request_timeout < Duration::from_millis(100) {
            return Err(ConfigError::Invalid("request_timeout_ms must be at least 100".into()));
        }
        if self.tokens.is_empty() && !self.listen.ip().is_loopback() {
            return Err(ConfigError::Invalid(format!(
                "listening on {} (beyond loopback) needs authentication: set `tokens` in the config file, \
                 HERALD_TOKENS or --token, or listen on 127.0.0.1",
                self.listen
            )));
        }
        let mut names = std::collections::BTreeSet::new();
        for cron in &self.cron {
            if !names.insert(cron.name.as_str()) {
                return Err(ConfigError::Invalid(format!(
                    "cron schedule '{}' is declared twice: give each [[cron]] table its own name",
                    cron.name
                )));
            }
            cron.check().map_err(|e| {
                ConfigError::Invalid(format!("cron schedule '{}' (expr '{}'): {e}", cron.name, cron.expr))
            })?;
        }
        let missing = match self.store {
            StoreKind::Sqlite if !cfg!(feature = "sqlite") => Some("sqlite"),
            StoreKind::Redis(_) if !cfg!(feature = "redis") => Some("redis"),
            StoreKind::Postgres(_) if !cfg!(feature = "postgres") => Some("postgres"),
            _ => None,
        };
        if let Some(feature) = missing {
            return Err(ConfigError::Invalid(format!(
                "this build has no {feature} store (the `{feature}` feature of herald-server is off): \
                 rebuild with `--features {feature}` or use store = \"memory\""
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| (*v).to_owned())
    }

    #[test]
    fn stores_are_names_or_urls() {
        assert_eq!("sqlite".parse::<StoreKind>().unwrap(), StoreKind::Sqlite);
        assert_eq!(
            "redis://127.0.0.1:6379/0".parse::<StoreKind>().unwrap(),
            StoreKind::Redis("redis://127.0.0.1:6379/0".into())
        );
        let pg: StoreKind = "postgres://app:secret@127.0.0.1/herald".parse().unwrap();
        assert_eq!(pg.as_str(), "postgres");
        assert_eq!(
            pg.to_string(),
            "postgres://app:***@127.0.0.1/herald",
            "the password never shows"
        );
        let err = "mysql://app:secret@db/x".parse::<StoreKind>().unwrap_err();
        assert!(err.contains("redis://") && !err.contains("secret"), "{err}");
        let layer = ConfigLayer::from_toml("store = \"redis://127.0.0.1:6379\"").unwrap();
        assert_eq!(layer.store, Some(StoreKind::Redis("redis://127.0.0.1:6379".into())));
    }

    #[test]
    fn flags_win_over_env_which_wins_over_the_file() {
        let file = ConfigLayer::from_toml(
            "listen = \"127.0.0.1:1000\"\ndata = \"/from/file\"\nstore = \"memory\"\nbody_limit = 10\nworkers = 3\n",
        )
        .unwrap();
        let env = ConfigLayer::from_env(env(&[
            ("HERALD_LISTEN", "127.0.0.1:2000"),
            ("HERALD_DATA", "/from/env"),
        ]))
        .unwrap();
        let flags = ConfigLayer {
            listen: Some("127.0.0.1:3000".parse().unwrap()),
            ..Default::default()
        };
        let c = Config::resolve([flags, env, file]).unwrap();
        assert_eq!(c.listen.port(), 3000);
        assert_eq!(c.data, PathBuf::from("/from/env"));
        assert_eq!(c.store, StoreKind::Memory);
        assert_eq!(c.body_limit, 10);
        assert_eq!(c.workers, 3);
        assert_eq!(c.request_timeout, Duration::from_secs(30));
    }

    #[test]
    fn defaults_and_tokens_from_env() {
        let c = Config::resolve([ConfigLayer::from_env(env(&[("HERALD_TOKENS", "a, b,")])).unwrap()]).unwrap();
        assert_eq!(c.listen, SocketAddr::from(([127, 0, 0, 1], 7420)));
        assert_eq!(c.tokens, vec!["a".to_owned(), "b".to_owned()]);
        assert_eq!(c.body_limit, 1 << 20);
    }

    #[test]
    fn debug_output_never_shows_tokens() {
        let c = Config {
            tokens: vec!["hunter2".into()],
            ..Config::default()
        };
        assert!(!format!("{c:?}").contains("hunter2"));
        let l = ConfigLayer::from_env(env(&[("HERALD_TOKENS", "hunter2")])).unwrap();
        assert!(!format!("{l:?}").contains("hunter2"));
    }

    #[test]
    fn bad_sources_say_what_is_wrong() {
        let e = ConfigLayer::from_env(env(&[("HERALD_WORKERS", "many")])).unwrap_err();
        assert!(e.to_string().contains("HERALD_WORKERS"), "{e}");
        assert!(ConfigLayer::from_toml("colour = \"red\"").is_err());
        let beyond = ConfigLayer {
            listen: Some("0.0.0.0:7420".parse().unwrap()),
            ..Default::default()
        };
        let e = Config::resolve([beyond]).unwrap_err();
        assert!(e.to_string().contains("needs authentication"), "{e}");
    }

    #[test]
    fn cron_tables_are_checked_with_their_name() {
        let file = ConfigLayer::from_toml(
            "store = \"memory\"\n[[cron]]\nname = \"tick\"\nexpr = \"* * * * * *\"\ntopic = \"clock.tick\"\n\
             payload = { n = 1, tags = [\"a\"] }\nmissed = \"catch-up-one\"\npriority = 8\nttl_ms = 500\n",
        )
        .unwrap();
        let c = Config::resolve([file]).unwrap();
        assert_eq!(c.cron.len(), 1);
        assert_eq!(c.cron[0].payload, Some(serde_json::json!({"n": 1, "tags": ["a"]})));
        assert_eq!(c.cron[0].missed.as_deref(), Some("catch-up-one"));

        let bad = |table: &str| {
            let layer = ConfigLayer::from_toml(&format!("[[cron]]\n{table}")).unwrap();
            Config::resolve([layer]).unwrap_err().to_string()
        };
        let e = bad("name = \"report\"\nexpr = \"0 25 * * *\"\ntopic = \"r.d\"");
        assert!(
            e.contains("cron schedule 'report'") && e.contains("cron expression '0 25 * * *' is invalid"),
            "{e}"
        );
        let e = bad("name = \"report\"\nexpr = \"0 3 * * *\"\ntopic = \"r.d\"\ntz = \"Europe/Berln\"");
        assert!(
            e.contains("'report'") && e.contains("time zone 'Europe/Berln' is unknown"),
            "{e}"
        );
        let e = bad("name = \"report\"\nexpr = \"0 3 * * *\"\ntopic = \"r.d\"\nmissed = \"all\"");
        assert!(e.contains("unknown missed-tick policy 'all'"), "{e}");
        let twice = "name = \"a\"\nexpr = \"0 3 * * *\"\ntopic = \"r.d\"\n[[cron]]\nname = \"a\"\nexpr = \"0 4 * * *\"\ntopic = \"r.d\"";
        assert!(bad(twice).contains("declared twice"));
    }
}
