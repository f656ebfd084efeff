//! The command line: everything the `channels-server` binary does, for your own binary too.
//!
//! ```no_run
//! fn main() -> std::process::ExitCode {
//!     channels_server::cli::run(channels_server::tutorial::app())
//! }
//! ```
//!
//! Your `main` passes your [`App`] instead and gets every flag and environment variable of
//! `channels-server` (see `--help`), its log formats, `--healthcheck`, the 4096-connection
//! accept backlog, `--workers`, the drain on SIGTERM/SIGINT, `/healthz`, `/readyz` and
//! `/metrics`.

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use crate::app::App;
use crate::config::{Config, LogFormat};

/// Parses flags and environment, sets up logging, binds, and serves `app` until
/// SIGTERM/SIGINT. Errors are printed to stderr with what to do about them.
pub fn run(app: App) -> ExitCode {
    run_with(|_| app)
}

/// [`run`] with an app made from the parsed configuration (for apps whose pages depend on a
/// flag, as the tutorial's on `--page-token-url`).
pub fn run_with(make_app: impl FnOnce(&Config) -> App) -> ExitCode {
    let config = Config::parse();
    if config.healthcheck {
        return healthcheck(&config);
    }
    let filter = match EnvFilter::try_new(&config.log_level) {
        Ok(filter) => filter,
        Err(error) => {
            eprintln!(
                "channels-server: invalid --log-level/CHANNELS_LOG {:?} ({error}): use a level \
                 such as info or debug",
                config.log_level
            );
            return ExitCode::from(2);
        }
    };
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    match config.log_format {
        LogFormat::Text => subscriber.init(),
        LogFormat::Json => subscriber.json().init(),
    }
    // One worker: everything on the thread that starts the server (tokio's current-thread
    // runtime), as the benchmark's replicas run. A multi-thread runtime of one worker would
    // run the accept loop on this thread and the connections on the worker, with a wake-up
    // across threads for each hand-over and the worker's idle search: 5-8 % more CPU per
    // delivery, 10 % fewer connections per second (BENCHMARKS.md).
    let mut builder = if config.workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        if config.workers > 0 {
            builder.worker_threads(config.workers);
        }
        builder
    };
    builder.enable_all();
    let runtime = match builder.build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("channels-server: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let app = make_app(&config);
    match runtime.block_on(serve(config, app)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            tracing::error!(error = %message, "exiting");
            eprintln!("channels-server: {message}");
            ExitCode::FAILURE
        }
    }
}

/// `GET /healthz` on this machine's server: exit 0 on 200.
fn healthcheck(config: &Config) -> ExitCode {
    use std::io::{Read, Write};
    use std::net::{Ipv4Addr, SocketAddr, TcpStream};
    use std::time::Duration;
    let mut addr = config.bind;
    if addr.ip().is_unspecified() {
        addr = SocketAddr::from((Ipv4Addr::LOCALHOST, addr.port()));
    }
    let check = || -> std::io::Result<bool> {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head)?;
        Ok(head.starts_with(b"HTTP/1.1 200"))
    };
    match check() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("channels-server: {addr}/healthz did not answer 200");
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("channels-server: {addr}/healthz unreachable: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Binds with a large accept backlog (the default 128 overflows when thousands of clients
/// reconnect at once after a replica drains).
fn listen(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

async fn serve(config: Config, app: App) -> Result<(), String> {
    let listener = listen(config.bind).map_err(|e| {
        format!(
            "cannot listen on {} ({e}): is another server using it? Choose another address \
                 with --bind or CHANNELS_BIND",
            config.bind
        )
    })?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(%addr, layer = ?config.layer_kind(), "listening");
    crate::serve(listener, config, app, crate::signal())
        .await
        .map_err(|e| e.to_string())
}
