//! Running the server: start it on a listener, stop it with a drain.

use std::net::SocketAddr;
use std::time::Duration;

use herald::{Herald, ShutdownReport};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::api::{self, AppState};
use crate::config::{Config, ConfigError};
use crate::store::open_store;
use crate::telemetry::install_recorder;

/// The server could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The store could not be opened.
    #[error("cannot open the store: {0}")]
    Store(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The subscriptions saved by a previous run could not be restored.
    #[error("cannot restore the saved subscriptions: {0}")]
    Restore(String),
    /// A cron schedule of the config file, or one saved by a previous run, was refused.
    #[error("{0}")]
    Cron(String),
    /// The herald runtime could not start.
    #[error("cannot start herald: {0}")]
    Herald(#[from] herald::Error),
    /// Listening or serving failed.
    #[error("the HTTP server failed: {0}")]
    Io(#[from] std::io::Error),
}

/// A running server. Stop it with [`Server::shutdown`].
///
/// ```no_run
/// # async fn run() -> Result<(), herald_server::ServeError> {
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// let server = herald_server::Server::start(listener, herald_server::Config::default()).await?;
/// println!("listening on {}", server.local_addr());
/// server.shutdown().await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    state: AppState,
    stop: watch::Sender<bool>,
    http: JoinHandle<std::io::Result<()>>,
    upkeep: JoinHandle<()>,
}

impl Server {
    /// Opens the store, starts the herald runtime and serves the API on `listener`.
    pub async fn start(listener: TcpListener, config: Config) -> Result<Server, ServeError> {
        config.check()?;
        let http = api::webhook_client(config.webhook_ca.as_deref())
            .map_err(|e| ServeError::Config(crate::config::ConfigError::Invalid(e)))?;
        // Before the runtime: herald registers its metric handles when it is built.
        let metrics = install_recorder();
        let store = open_store(&config).await?;
        let herald = Herald::builder()
            .shared_store(store)
            .workers(config.workers)
            .max_pending(config.max_pending)
            .build()
            .await?;
        let addr = listener.local_addr()?;
        let state = AppState::new(herald, config, metrics.clone(), http);
        let restored = api::restore_subscriptions(&state).await.map_err(ServeError::Restore)?;
        if restored > 0 {
            tracing::info!(count = restored, "herald: restored the saved subscriptions");
        }
        let restored = match api::start_crons(&state).await {
            Ok(n) => n,
            Err(e) => {
                // The runtime is up: stop it before failing the start.
                let _ = state.herald().shutdown(Duration::from_secs(1)).await;
                return Err(ServeError::Cron(e));
            }
        };
        if restored > 0 {
            tracing::info!(count = restored, "herald: restored the saved cron schedules");
        }
        let app = api::router(state.clone());
        let (stop, mut stopped) = watch::channel(false);
        let http = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    // An error means the sender is gone: stop then too.
                    let _ = stopped.wait_for(|s| *s).await;
                })
                .await
        });
        let upkeep = tokio::spawn(async move {
            let Some(handle) = metrics else { return };
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                handle.run_upkeep();
            }
        });
        Ok(Server {
            addr,
            state,
            stop,
            http,
            upkeep,
        })
    }

    /// The address it listens on (useful after binding port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The herald runtime behind the API, to subscribe local handlers or inspect it.
    pub fn herald(&self) -> &Herald {
        self.state.herald()
    }

    /// Stops the server: `/readyz` fails and new work gets 503 at once, no new connections are
    /// accepted, and in-flight requests and running handlers get `shutdown_timeout` to finish
    /// (the runtime drains: see [`Herald::shutdown`]).
    pub async fn shutdown(self) -> Result<ShutdownReport, ServeError> {
        let Server {
            state,
            stop,
            mut http,
            upkeep,
            ..
        } = self;
        state.close();
        stop.send_replace(true);
        let within = state.config().shutdown_timeout;
        let herald = state.herald().clone();
        let (report, served) = tokio::join!(
            herald.shutdown(within),
            tokio::time::timeout(within + Duration::from_secs(1), &mut http)
        );
        upkeep.abort();
        match served {
            Ok(Ok(result)) => result?,
            Ok(Err(join)) => return Err(ServeError::Io(std::io::Error::other(join))),
            Err(_) => {
                http.abort();
                tracing::warn!("herald: connections still open at the shutdown deadline were closed");
            }
        }
        Ok(report)
    }
}

/// Serves until SIGTERM or SIGINT (Ctrl-C), then shuts down with a drain.
pub async fn serve(listener: TcpListener, config: Config) -> Result<ShutdownReport, ServeError> {
    let mut signals = ShutdownSignal::install();
    let server = Server::start(listener, config).await?;
    signals.recv().await;
    tracing::info!("herald: shutting down");
    server.shutdown().await
}

/// SIGTERM and SIGINT (Ctrl-C), listened for from the moment this is made: a signal that comes
/// before anyone awaits it is kept, not left to the default action (which kills the process
/// without a drain). Make it before announcing that the server listens.
#[derive(Debug)]
pub struct ShutdownSignal {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
}

impl ShutdownSignal {
    /// Starts listening.
    pub fn install() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let listen = |kind: SignalKind, name: &str| match signal(kind) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(error = %e, "herald: cannot listen for {name}");
                    None
                }
            };
            ShutdownSignal {
                term: listen(SignalKind::terminate(), "SIGTERM"),
                int: listen(SignalKind::interrupt(), "SIGINT"),
            }
        }
        #[cfg(not(unix))]
        ShutdownSignal {}
    }

    /// Resolves on the next SIGTERM or SIGINT.
    pub async fn recv(&mut self) {
        #[cfg(unix)]
        {
            async fn next(s: &mut Option<tokio::signal::unix::Signal>) {
                match s {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            }
            tokio::select! {
                _ = next(&mut self.term) => {}
                _ = next(&mut self.int) => {}
            }
        }
        #[cfg(not(unix))]
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "herald: cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    }
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    ShutdownSignal::install().recv().await
}
