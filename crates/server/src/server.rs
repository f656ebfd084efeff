//! The server: HTTP routes, WebSocket routes, and the shutdown sequence.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::Request;
use axum::routing::get;
use channels_layer::{ChannelLayer, LayerError};
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tower_service::Service;

use crate::caps::{CapRefusal, ConnectionCaps};
use crate::config::Config;
use crate::hosts::HostPolicy;
use crate::hub::Hub;
use crate::identity::Authenticator;
use crate::origin::OriginPolicy;
use crate::routing::WsRouter;
use crate::server_config::ServerConfig;
use crate::state::{Admission, AppState};
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
    /// A setting cannot be used (a key file, a hook URL); the text names the flag.
    #[error("{0}")]
    Config(String),
}

/// A configured server: health, readiness, metrics, your HTTP routes, and WebSocket consumers
/// over one channel layer.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use channels_layer::InMemoryChannelLayer;
/// use channels_server::routing::WsRouter;
/// use channels_server::{Server, ServerConfig};
/// # use channels_server::consumer::{ClientMessage, Close, Consumer, Context};
/// # #[derive(Default)] struct Echo;
/// # impl Consumer for Echo {
/// #     async fn receive(&mut self, cx: &mut Context, m: ClientMessage) -> Result<(), Close> { Ok(()) }
/// #     async fn event(&mut self, cx: &mut Context, e: channels_layer::Message) -> Result<(), Close> { Ok(()) }
/// # }
/// let server = Server::builder(ServerConfig::default())
///     .layer(Arc::new(InMemoryChannelLayer::default()))
///     .routes(WsRouter::new().route("echo/$", Echo::default)?)
///     .build();
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
/// server.serve(listener, channels_server::signal()).await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Server {
    state: AppState,
    /// The HTTP routes besides health, readiness and metrics.
    http: Router,
    drain_timeout: Duration,
    handshake_timeout: Option<Duration>,
    /// Caps on HTTP connections not (yet) upgraded.
    http_caps: Arc<ConnectionCaps>,
    /// Where `/metrics` is served instead of the main listener, if set.
    metrics_listener: Option<TcpListener>,
    /// The server API's listener and routes, if set.
    api: Option<(TcpListener, Router)>,
}

/// The most bytes of request headers an HTTP connection may buffer (hyper's read buffer): room
/// for large cookies, and a bound on what a client that trickles headers can pin.
const MAX_HEADER_BYTES: usize = 32 * 1024;

/// Builds a [`Server`]: its settings, channel layer, WebSocket routes and extra HTTP routes.
#[derive(Debug)]
#[must_use]
pub struct ServerBuilder {
    config: ServerConfig,
    layer: Option<Arc<dyn ChannelLayer>>,
    routes: WsRouter,
    http: Router,
    metrics_listener: Option<TcpListener>,
    auth: Option<Authenticator>,
    api: Option<(TcpListener, Vec<u8>, usize)>,
}

impl ServerBuilder {
    /// Serves the server API ([`crate::api`]) on `listener` (a private address), for clients
    /// that send `key` as `X-API-Key`; bodies over `max_body` bytes get 413.
    pub fn api_listener(mut self, listener: TcpListener, key: &[u8], max_body: usize) -> Self {
        self.api = Some((listener, key.to_vec(), max_body));
        self
    }

    /// Decides who connects: connection tokens, a connect hook, or both (default: nobody is
    /// asked, every connection is anonymous).
    pub fn authenticator(mut self, auth: Authenticator) -> Self {
        self.auth = Some(auth);
        self
    }

    /// The channel layer the consumers share (default: a fresh in-memory layer, for one
    /// replica).
    pub fn layer(mut self, layer: Arc<dyn ChannelLayer>) -> Self {
        self.layer = Some(layer);
        self
    }

    /// The WebSocket routes (Channels' `websocket_urlpatterns`).
    pub fn routes(mut self, routes: WsRouter) -> Self {
        self.routes = routes;
        self
    }

    /// HTTP routes served beside `/healthz`, `/readyz` and `/metrics` (pages, assets, your own
    /// endpoints); merged with those given before.
    pub fn http_routes(mut self, router: Router) -> Self {
        self.http = std::mem::take(&mut self.http).merge(router);
        self
    }

    /// Serves `/metrics` on `listener` (a private address) instead of the main listener.
    pub fn metrics_listener(mut self, listener: TcpListener) -> Self {
        self.metrics_listener = Some(listener);
        self
    }

    /// The server.
    pub fn build(self) -> Server {
        let config = self.config;
        let layer = self
            .layer
            .unwrap_or_else(|| Arc::new(channels_layer::InMemoryChannelLayer::default()));
        let service = (config.control || self.api.is_some()).then(|| {
            Arc::new(crate::presence::Service::new(
                Arc::clone(&layer),
                config.replica_id.clone(),
                config.presence,
            ))
        });
        let api = self
            .api
            .zip(service.clone())
            .map(|((listener, key, max_body), service)| {
                let state = crate::api::ApiState {
                    layer: Arc::clone(&layer),
                    service,
                    key: key.into(),
                };
                (listener, crate::api::router(state, max_body))
            });
        let hub = Arc::new(Hub::new(
            layer,
            config.limits(),
            config.replica_id.clone(),
            self.auth,
            service,
        ));
        let admission = Admission {
            origins: OriginPolicy::new(&config.allowed_origins),
            hosts: HostPolicy::new(&config.allowed_hosts, !config.allowed_origins.is_empty()),
            caps: Arc::new(ConnectionCaps::new(
                config.max_connections,
                config.max_connections_per_ip,
            )),
        };
        Server {
            state: AppState::new(hub, self.routes, admission),
            http: self.http,
            drain_timeout: config.drain_timeout,
            handshake_timeout: config.handshake_timeout,
            http_caps: Arc::new(ConnectionCaps::new(
                config.max_http_connections,
                config.max_http_connections_per_ip,
            )),
            metrics_listener: self.metrics_listener,
            api,
        }
    }
}

impl Server {
    /// A builder with these settings.
    pub fn builder(config: ServerConfig) -> ServerBuilder {
        ServerBuilder {
            config,
            layer: None,
            routes: WsRouter::new(),
            http: Router::new(),
            metrics_listener: None,
            auth: None,
            api: None,
        }
    }

    /// A server for `routes` over `layer`, with the settings of the command-line `config`
    /// (its replica id, or a random one) and no other HTTP routes: shorthand for
    /// [`Server::builder`].
    pub fn new(config: &Config, layer: Arc<dyn ChannelLayer>, routes: WsRouter) -> Self {
        Self::builder(config.server_config())
            .layer(layer)
            .routes(routes)
            .build()
    }

    /// Serves `/metrics` on `listener` (a private address) instead of the main listener.
    #[must_use]
    pub fn with_metrics_listener(mut self, listener: TcpListener) -> Self {
        self.metrics_listener = Some(listener);
        self
    }

    /// This server's replica id.
    pub fn replica_id(&self) -> &str {
        self.state.hub().replica()
    }

    /// The axum router: WebSocket handshakes go to the consumers, other requests to the HTTP
    /// routes, `/healthz`, `/readyz` and (unless it has its own listener) `/metrics`.
    pub fn router(&self) -> Router {
        let router = Router::new()
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(readyz).with_state(self.state.clone()));
        let router = if self.metrics_listener.is_none() {
            router.route("/metrics", get(metrics).with_state(self.state.clone()))
        } else {
            router
        };
        router
            .merge(self.http.clone())
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
        mut self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let token = self.state.hub().shutdown().clone();
        let router = self.router();
        let metrics_server = self.metrics_listener.take().map(|listener| {
            let router = Router::new()
                .route("/metrics", get(metrics))
                .with_state(self.state.clone());
            tokio::spawn(async move {
                if let Err(error) = axum::serve(listener, router).await {
                    tracing::error!(%error, "the metrics listener failed");
                }
            })
        });
        let control = self
            .state
            .hub()
            .service()
            .map(|service| tokio::spawn(Arc::clone(service).run(token.clone())));
        let api_server = self.api.take().map(|(listener, router)| {
            tokio::spawn(async move {
                if let Err(error) = axum::serve(listener, router).await {
                    tracing::error!(%error, "the API listener failed");
                }
            })
        });
        let mut http = tokio::spawn(accept(
            listener,
            router,
            self.state.clone(),
            Arc::clone(&self.http_caps),
            self.handshake_timeout,
        ));
        let early = tokio::select! {
            () = shutdown => None,
            result = &mut http => Some(result),
        };
        tracing::info!("shutting down: closing connections");
        token.cancel();
        let tracker = self.state.hub().tracker();
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
        for task in [control, api_server].into_iter().flatten() {
            task.abort();
        }
        self.state.hub().layer().close().await?;
        if let Some(task) = metrics_server {
            task.abort();
        }
        tracing::info!("shutdown complete");
        match http_result {
            Ok(result) => Ok(result?),
            Err(join) => Err(ServerError::Io(std::io::Error::other(join))),
        }
    }
}

/// Accepts connections and serves HTTP/1.1 on each (with upgrades) until the shutdown starts;
/// then stops accepting, lets each HTTP connection finish its request, and returns when they
/// have. Upgraded WebSockets are not HTTP connections any more: the [`TaskTracker`] of the
/// state tracks them and the shutdown drains them.
///
/// Unlike `axum::serve` (0.8), this gives every connection a deadline for its request headers
/// (slowloris), from the moment it is accepted, and for each later request on a kept-alive
/// connection.
///
/// [`TaskTracker`]: tokio_util::task::TaskTracker
async fn accept(
    listener: TcpListener,
    router: Router,
    state: AppState,
    caps: Arc<ConnectionCaps>,
    header_timeout: Option<Duration>,
) -> std::io::Result<()> {
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(MAX_HEADER_BYTES);
    let http1 = Arc::new(http1);
    let stop = state.hub().shutdown().clone();
    let connections = tokio_util::task::TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    accept_error(error).await;
                    continue;
                }
            },
        };
        // An HTTP connection holds a place until it ends or becomes a WebSocket (which then
        // counts under the WebSocket caps instead).
        let place = match caps.admit(Some(peer.ip())) {
            Ok(place) => place,
            Err(refusal) => {
                refuse_connection(&state, stream, refusal);
                continue;
            }
        };
        // Frames are small and latency matters: no Nagle delay waiting for the peer's ACK.
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
        let router = router.clone();
        // The peer address reaches the handlers as axum's `ConnectInfo`, as with
        // `into_make_service_with_connect_info`.
        let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            router.clone().call(req)
        });
        let http1 = Arc::clone(&http1);
        let stop = stop.clone();
        let state = state.clone();
        connections.spawn(async move {
            let _place = place;
            let conn = http1
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .with_upgrades();
            tokio::pin!(conn);
            let result = tokio::select! {
                result = conn.as_mut() => result,
                () = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(error) = result {
                if error.is_timeout() {
                    state.hub().metrics().header_timeout();
                    tracing::debug!(%peer, "request headers not received in time: closed");
                } else {
                    tracing::debug!(%peer, %error, "http connection ended with an error");
                }
            }
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
    Ok(())
}

/// Answers a connection over an HTTP connection cap with a fixed response (if the socket takes
/// it at once) and closes it; nothing of the request is read.
fn refuse_connection(state: &AppState, stream: tokio::net::TcpStream, refusal: CapRefusal) {
    let (reason, response): (_, &[u8]) = match refusal {
        CapRefusal::Replica => (
            "max_http_connections",
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 21\r\nConnection: close\r\n\r\n\
              too many connections\n",
        ),
        CapRefusal::PerAddress => (
            "max_http_connections_per_ip",
            b"HTTP/1.1 429 Too Many Requests\r\nContent-Length: 40\r\nConnection: close\r\n\r\n\
              too many connections from this address\n",
        ),
    };
    state.hub().metrics().http_refused(reason);
    channels_layer::log_limited!(info, reason, "http connection refused: cap reached");
    // Best effort: a socket that cannot take 100 bytes at once is not worth waiting for.
    let _ = stream.try_write(response);
}

/// An `accept` error: a failed handshake of one connection is skipped; anything else (out of
/// file descriptors) is logged and retried after a pause, as `axum::serve` does.
async fn accept_error(error: std::io::Error) {
    use std::io::ErrorKind;
    if matches!(
        error.kind(),
        ErrorKind::ConnectionRefused | ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!(%error, "accept failed: retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// Ready when the channel layer can carry messages and the server is not draining; a load
/// balancer stops sending new connections otherwise. A layer that is not ready says why (Redis'
/// own error when Redis refused it), for the operator who reads the probe.
async fn readyz(
    axum::extract::State(state): axum::extract::State<AppState>,
) -> (axum::http::StatusCode, String) {
    use axum::http::StatusCode;
    let layer = state.hub().layer();
    if state.hub().shutdown().is_cancelled() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n".to_owned())
    } else if !layer.is_ready() {
        let body = match layer.not_ready_reason() {
            Some(reason) => format!("channel layer disconnected: {reason}\n"),
            None => "channel layer disconnected\n".to_owned(),
        };
        (StatusCode::SERVICE_UNAVAILABLE, body)
    } else {
        (StatusCode::OK, "ready\n".to_owned())
    }
}

/// The Prometheus text exposition.
async fn metrics(
    axum::extract::State(state): axum::extract::State<AppState>,
) -> impl axum::response::IntoResponse {
    let body = state.hub().metrics().render(
        state.hub().layer().as_ref(),
        state.hub().shutdown().is_cancelled(),
    );
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
    if let Ok(value) = axum::http::HeaderValue::from_str(state.hub().replica()) {
        response.headers_mut().insert("x-channels-replica", value);
    }
    response
}
