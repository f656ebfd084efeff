//! The server: HTTP routes, WebSocket routes, and the shutdown sequence.

use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use channels_layer::{ChannelLayer, LayerError};
use tokio::net::TcpListener;

use crate::config::Config;
use crate::routing::WsRouter;
use crate::state::AppState;
use crate::upgrade::dispatch;

/// Why the server stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The listener failed.
    #[error("serving HTTP failed: {0}")]
    Io(#[from] std::io::Error),
    /// Building or closing the channel layer failed.
    #[error("channel layer: {0}")]
    Layer(#[from] LayerError),
}

/// A configured server: pages, health, and WebSocket consumers over one channel layer.
#[derive(Debug)]
pub struct Server {
    state: AppState,
    drain_timeout: Duration,
}

impl Server {
    /// A server for `routes` over `layer`, with the limits from `config`.
    pub fn new(config: &Config, layer: Arc<dyn ChannelLayer>, routes: WsRouter) -> Self {
        let replica = config.clone().replica_id();
        Self {
            state: AppState::new(layer, routes, config.limits(), replica),
            drain_timeout: config.drain_timeout(),
        }
    }

    /// The axum router: WebSocket handshakes go to the consumers, other requests to the pages
    /// and `/healthz`.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(readyz).with_state(self.state.clone()))
            .route("/metrics", get(metrics).with_state(self.state.clone()))
            .merge(channels_web::router())
            .fallback(|| async { (axum::http::StatusCode::NOT_FOUND, "not found\n") })
            .layer(axum::middleware::from_fn_with_state(
                self.state.clone(),
                dispatch,
            ))
            .layer(axum::middleware::map_response_with_state(
                self.state.clone(),
                replica_header,
            ))
    }

    /// Serves on `listener` until `shutdown` resolves, then drains: stops accepting, closes
    /// every WebSocket with 1001, waits up to the drain timeout for them to end, and closes the
    /// channel layer.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let token = self.state.shutdown().clone();
        let app = self
            .router()
            .into_make_service_with_connect_info::<SocketAddr>();
        let stop_accepting = token.clone();
        // Frames are small and latency matters: no Nagle delay waiting for the peer's ACK.
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            if let Err(error) = tcp.set_nodelay(true) {
                tracing::debug!(%error, "cannot set TCP_NODELAY");
            }
        });
        let mut http = tokio::spawn(
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop_accepting.cancelled().await })
                .into_future(),
        );
        let early = tokio::select! {
            () = shutdown => None,
            result = &mut http => Some(result),
        };
        tracing::info!("shutting down: closing connections");
        token.cancel();
        let tracker = self.state.tracker();
        tracker.close();
        if tokio::time::timeout(self.drain_timeout, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                remaining = tracker.len(),
                "drain timeout: exiting with connections still open"
            );
        }
        let http_result = match early {
            Some(result) => result,
            // Idle keep-alive connections close at once; bound the wait for busy ones.
            None => match tokio::time::timeout(Duration::from_secs(5), http).await {
                Ok(result) => result,
                Err(_) => Ok(Ok(())),
            },
        };
        self.state.layer().close().await?;
        tracing::info!("shutdown complete");
        match http_result {
            Ok(result) => Ok(result?),
            Err(join) => Err(ServerError::Io(std::io::Error::other(join))),
        }
    }
}

/// Ready when the channel layer can carry messages and the server is not draining; a load
/// balancer stops sending new connections otherwise.
async fn readyz(
    axum::extract::State(state): axum::extract::State<AppState>,
) -> (axum::http::StatusCode, &'static str) {
    use axum::http::StatusCode;
    if state.shutdown().is_cancelled() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    } else if !state.layer().is_ready() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "channel layer disconnected\n",
        )
    } else {
        (StatusCode::OK, "ready\n")
    }
}

/// The Prometheus text exposition.
async fn metrics(
    axum::extract::State(state): axum::extract::State<AppState>,
) -> impl axum::response::IntoResponse {
    let body = state
        .metrics()
        .render(state.layer().as_ref(), state.shutdown().is_cancelled());
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
}

/// Adds `X-Channels-Replica` to every response (the WebSocket 101 too), so a client or a test
/// can tell which replica served it.
async fn replica_header(
    axum::extract::State(state): axum::extract::State<AppState>,
    mut response: axum::response::Response,
) -> axum::response::Response {
    if let Ok(value) = axum::http::HeaderValue::from_str(state.replica()) {
        response.headers_mut().insert("x-channels-replica", value);
    }
    response
}

/// Runs the seed's chat server with `config` on `listener` until `shutdown` resolves.
///
/// ```no_run
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// let config = channels_server::Config::default();
/// channels_server::run(listener, config, channels_server::signal()).await?;
/// # Ok(())
/// # }
/// ```
pub async fn run(
    listener: TcpListener,
    mut config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    // One id for the layer's channel names and the server's header.
    config.replica_id();
    let layer = config.build_layer().await?;
    Server::new(&config, layer, crate::chat::routes())
        .serve(listener, shutdown)
        .await
}
