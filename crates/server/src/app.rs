//! An application: the WebSocket routes and HTTP routes a server serves, what a binary hands to
//! [`cli::run`](crate::cli::run).

use std::future::Future;

use axum::Router;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::routing::WsRouter;
use crate::server::{Server, ServerBuilder, ServerError};

/// What your server serves: WebSocket routes to your consumers, and optionally HTTP routes
/// (pages, assets, your own endpoints) beside `/healthz`, `/readyz` and `/metrics`.
///
/// ```
/// use channels_server::App;
/// use channels_server::routing::WsRouter;
/// # use channels_server::consumer::{ClientMessage, Close, Consumer, Context};
/// # #[derive(Default)] struct Echo;
/// # impl Consumer for Echo {
/// #     async fn receive(&mut self, cx: &mut Context, m: ClientMessage) -> Result<(), Close> { Ok(()) }
/// #     async fn event(&mut self, cx: &mut Context, e: channels_layer::Message) -> Result<(), Close> { Ok(()) }
/// # }
/// let app = App::new(WsRouter::new().route("ws/echo/$", Echo::default)?)
///     .http_routes(axum::Router::new().route("/", axum::routing::get(|| async { "hi" })));
/// # Ok::<(), regex::Error>(())
/// ```
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct App {
    routes: WsRouter,
    http: Router,
}

impl App {
    /// An app with these WebSocket routes and no HTTP routes.
    pub fn new(routes: WsRouter) -> Self {
        Self {
            routes,
            http: Router::new(),
        }
    }

    /// Adds HTTP routes (merged with those given before).
    pub fn http_routes(mut self, router: Router) -> Self {
        self.http = self.http.merge(router);
        self
    }

    /// The WebSocket routes.
    pub fn routes(&self) -> &WsRouter {
        &self.routes
    }

    /// Puts the app's routes into a server builder.
    pub fn into_builder(self, builder: ServerBuilder) -> ServerBuilder {
        builder.routes(self.routes).http_routes(self.http)
    }
}

/// Serves `app` with the command-line `config` on `listener` until `shutdown` resolves: builds
/// the configured channel layer (with the replica id settled once for the layer and the
/// server), binds `--metrics-bind` if given, and serves. What [`cli::run`](crate::cli::run)
/// does after logging and the runtime are set up; tests call it on `127.0.0.1:0`.
///
/// ```no_run
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// let config = channels_server::Config::default();
/// let app = channels_server::tutorial::app();
/// channels_server::serve(listener, config, app, channels_server::signal()).await?;
/// # Ok(())
/// # }
/// ```
pub async fn serve(
    listener: TcpListener,
    config: Config,
    app: App,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let server_config = config.server_config();
    let auth = config.authenticator().map_err(ServerError::Config)?;
    let layer = config.build_layer(&server_config.replica_id).await?;
    let mut builder = app.into_builder(Server::builder(server_config).layer(layer));
    if let Some(auth) = auth {
        tracing::info!(
            ?auth,
            "identity on: connections need a token or the connect hook's yes"
        );
        builder = builder.authenticator(auth);
    }
    if let Some(addr) = config.api_bind {
        let key = config
            .api_key
            .as_ref()
            .map(|k| k.expose().as_bytes())
            .unwrap_or_default();
        if key.len() < 16 {
            return Err(ServerError::Config(
                "--api-bind needs CHANNELS_API_KEY, at least 16 bytes (e.g. `openssl rand -hex \
                 32`): the API publishes into every group and disconnects users"
                    .to_owned(),
            ));
        }
        let api = TcpListener::bind(addr).await?;
        tracing::info!(%addr, "serving the server API: keep this address private");
        builder = builder.api_listener(api, key, config.api_max_body_bytes);
    }
    if let Some(addr) = config.metrics_bind {
        let metrics = TcpListener::bind(addr).await?;
        tracing::info!(%addr, "serving /metrics");
        builder = builder.metrics_listener(metrics);
    }
    builder.build().serve(listener, shutdown).await
}
