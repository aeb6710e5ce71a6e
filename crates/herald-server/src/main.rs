//! The `herald` binary: `herald serve` runs the HTTP API over a herald store; the other
//! subcommands (`publish`, `events`, `subs`, ...) are clients of that API.

mod cli;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use herald_server::{Config, ConfigLayer, StoreKind};

/// Reliable events over HTTP.
#[derive(Debug, Parser)]
#[command(name = "herald", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the server until SIGTERM or Ctrl-C, then drains.
    Serve(ServeArgs),
    /// Measures HTTP publish throughput and latency (in-process targets, or --server URL).
    Bench(cli::bench::BenchArgs),
    #[command(flatten)]
    Client(cli::ClientCommand),
}

/// Flags win over `HERALD_*` environment variables, which win over the config file.
#[derive(Debug, Args)]
struct ServeArgs {
    /// The address to listen on [default: 127.0.0.1:7420]; beyond loopback needs --token.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// The data directory of the embedded store [default: ./herald-data].
    #[arg(long)]
    data: Option<PathBuf>,
    /// A TOML config file (also HERALD_CONFIG).
    #[arg(long)]
    config: Option<PathBuf>,
    /// The store: sqlite (embedded, durable), memory, or a shared store's URL (redis://..., postgres://...).
    #[arg(long)]
    store: Option<StoreKind>,
    /// The namespace in a shared store: Redis key prefix or PostgreSQL schema [default: herald].
    #[arg(long)]
    namespace: Option<String>,
    /// A PEM file of CA certificates https:// webhooks may chain to, besides Mozilla's roots.
    #[arg(long)]
    webhook_ca: Option<PathBuf>,
    /// The largest request body in bytes [default: 1048576].
    #[arg(long)]
    body_limit: Option<usize>,
    /// How long one HTTP request may take, in milliseconds [default: 30000].
    #[arg(long)]
    request_timeout_ms: Option<u64>,
    /// How long shutdown lets running work finish, in milliseconds [default: 10000].
    #[arg(long)]
    shutdown_timeout_ms: Option<u64>,
    /// Unfinished deliveries past which publishes get 429 [default: 100000].
    #[arg(long)]
    max_pending: Option<u64>,
    /// How many handlers may run at once [default: 64].
    #[arg(long)]
    workers: Option<usize>,
    /// A bearer token clients must present (repeat for several).
    #[arg(long = "token")]
    tokens: Vec<String>,
}

impl ServeArgs {
    fn layer(&self) -> ConfigLayer {
        let mut layer = ConfigLayer::default();
        layer.listen = self.listen;
        layer.data = self.data.clone();
        layer.store = self.store.clone();
        layer.namespace = self.namespace.clone();
        layer.webhook_ca = self.webhook_ca.clone();
        layer.body_limit = self.body_limit;
        layer.request_timeout_ms = self.request_timeout_ms;
        layer.shutdown_timeout_ms = self.shutdown_timeout_ms;
        layer.max_pending = self.max_pending;
        layer.workers = self.workers;
        layer.tokens = (!self.tokens.is_empty()).then(|| self.tokens.clone());
        layer
    }

    fn resolve(&self) -> Result<Config, herald_server::ConfigError> {
        let env = ConfigLayer::from_env(|k| std::env::var(k).ok())?;
        let file = match self
            .config
            .clone()
            .or_else(|| std::env::var_os("HERALD_CONFIG").map(PathBuf::from))
        {
            Some(path) => ConfigLayer::from_file(path)?,
            None => ConfigLayer::default(),
        };
        Config::resolve([self.layer(), env, file])
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("herald: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Serve(args) => runtime.block_on(serve(args)),
        Command::Bench(args) => ExitCode::from(runtime.block_on(cli::bench::run(args))),
        Command::Client(command) => ExitCode::from(runtime.block_on(cli::run(command))),
    }
}

async fn serve(args: ServeArgs) -> ExitCode {
    let config = match args.resolve() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("herald: {e}");
            return ExitCode::from(2);
        }
    };
    let listener = match tokio::net::TcpListener::bind(config.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("herald: cannot listen on {}: {e}", config.listen);
            return ExitCode::FAILURE;
        }
    };
    let store = match &config.store {
        StoreKind::Sqlite => format!("sqlite in {}", config.data.display()),
        other => other.to_string(),
    };
    // Listen for signals before saying we listen: a SIGTERM right after that line must drain.
    let mut signals = herald_server::ShutdownSignal::install();
    let server = match herald_server::Server::start(listener, config).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("herald: {e}");
            return ExitCode::FAILURE;
        }
    };
    // One line on stdout that scripts (and the tests) wait for.
    println!("herald listening on http://{} (store: {store})", server.local_addr());
    signals.recv().await;
    tracing::info!("herald: shutting down (a second signal stops at once)");
    tokio::spawn(async move {
        signals.recv().await;
        eprintln!("herald: stopped without draining");
        std::process::exit(130);
    });
    match server.shutdown().await {
        Ok(report) => {
            tracing::info!(
                drained = report.drained,
                interrupted = report.interrupted,
                unfinished = ?report.unfinished,
                "herald: stopped"
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("herald: {e}");
            ExitCode::FAILURE
        }
    }
}
