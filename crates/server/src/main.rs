//! `channels-server`: the binary. Configuration, logging, bind, run.

use anyhow::Context as _;
use channels_server::{Config, LogFormat};
use clap::Parser;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let filter = EnvFilter::try_new(&config.log_level).with_context(|| {
        format!(
            "invalid --log-level/CHANNELS_LOG {:?}: use a level such as info or debug",
            config.log_level
        )
    })?;
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    match config.log_format {
        LogFormat::Text => subscriber.init(),
        LogFormat::Json => subscriber.json().init(),
    }
    let listener = tokio::net::TcpListener::bind(config.bind)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {}: is another server using it? Choose another address with \
                 --bind or CHANNELS_BIND",
                config.bind
            )
        })?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, layer = ?config.layer_kind(), "listening");
    channels_server::run(listener, config, channels_server::signal()).await?;
    Ok(())
}
