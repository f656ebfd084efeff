//! An application: the WebSocket routes and HTTP routes a server serves, what a binary hands to
//! [`cli::run`](crate::cli::run).

use axum::Router;

use crate::routing::WsRouter;
use crate::server::ServerBuilder;

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
