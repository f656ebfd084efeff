//! The browser side of the Django Channels tutorial: its HTML pages and their scripts.
//!
//! [`router`] serves the tutorial's two chat pages and everything they load:
//!
//! - `GET /`: an index page linking to both chats;
//! - `GET /chatone`: the single chat (`chatting.html`), which connects to `/room/123/`;
//! - `GET /chatgroup?groupID=N`: the group chat (`groupchatting.html`), which connects to
//!   `/group/N/`;
//! - `GET /static/chat.css`, `/static/chat.js`, `/static/chatone.js`, `/static/chatgroup.js`;
//! - `GET /favicon.ico`: `204 No Content`, so browsers log no 404 on every page.
//!
//! What it deliberately does **not** do: it has no WebSocket endpoint, no consumer and no channel
//! layer. The pages connect to `/room/…/` and `/group/…/`, which `channels-server` routes on the
//! same origin; this crate only renders HTML and serves assets, so it depends on neither
//! `channels-server` nor `channels-layer`.
//!
//! # Differences from the tutorial's pages
//!
//! - The WebSocket URL is derived from the page's own location (`ws:` or `wss:` and
//!   `location.host`) instead of the hard-coded `ws://127.0.0.1:8080`.
//! - The scripts and the style sheet are static files, not inline code, so every page is sent with
//!   a strict `Content-Security-Policy` ([`CONTENT_SECURITY_POLICY`]) that allows no inline script
//!   or style, plus `X-Content-Type-Options: nosniff` and `Referrer-Policy: no-referrer`.
//! - The group id reaches the script as a JSON data block (`<script type="application/json"
//!   id="group-id">`), never by splicing it into JavaScript, and the script percent-encodes it
//!   with `encodeURIComponent` before putting it in the WebSocket path.
//! - Without a `groupID` (or with an empty one) the group page is still rendered, with an empty
//!   id and a visible note, and it does not connect: the server's route `group/(\w+)/` would
//!   reject an empty id anyway.
//! - The group page shows `[连接已断开!]` when the socket closes, whoever closed it; the
//!   tutorial's group page printed it only from its close button.
//! - After an unexpected close (1001, 1006, 1011, 1012, 1013, 4008, 4009, 4401) the pages reconnect by
//!   themselves, with exponential backoff and full jitter, and never after 1000 (the echo
//!   chat's `exit`), 1003, 1008, 1009, 4400 or the close button; [`reconnect`] has the numbers.
//!   A reconnect opens the same path, so the group page rejoins its group. The tutorial's pages
//!   stayed disconnected.
//! - Both chat pages show the connection state in `<div id="status">`: 未连接 / not connected,
//!   连接中 / connecting, 已连接 / connected, 重新连接中 (第 N 次, X 秒后) / reconnecting,
//!   已断开 / disconnected. The tutorial's lines in `#message` (`[连接成功!]`, `[连接失败!]`,
//!   `[连接已断开!]`) are still appended on every open, error and close.
//! - For browser tests each page keeps `window.wsState` (`"idle"` before connecting, then
//!   `"connecting"`, `"open"`, `"error"`, `"closed"`, and `"reconnecting"` while it waits to
//!   retry), `window.wsCloseCode` (the last close event's code), `window.wsConnects` (how many
//!   times a socket opened) and `window.wsReconnectDelays` (every retry delay chosen, in ms),
//!   like the `websocketConnected` flag of Channels' Selenium tests. The pure function
//!   `window.channelsChat.backoffDelay(attempt, code, random)` computes a retry delay.
//!
//! # Layout
//!
//! - `pages`: the askama templates (`templates/*.html`) and their handlers.
//! - `assets`: the scripts and style sheet (`src/static/*`), embedded with `include_str!`.
//! - [`reconnect`]: the reconnect policy's numbers, checked against `static/chat.js`.

mod assets;
mod pages;
pub mod reconnect;

#[cfg(test)]
mod tests;

use axum::Router;
use axum::http::HeaderValue;
use axum::http::header::X_CONTENT_TYPE_OPTIONS;
use axum::http::header::{CONTENT_SECURITY_POLICY as CSP_HEADER, REFERRER_POLICY};
use axum::middleware;
use axum::response::Response;
use axum::routing::get;

/// The `Content-Security-Policy` sent with every response of [`router`].
///
/// Scripts, styles, images and WebSocket connections may come only from the page's own origin,
/// and nothing may be inline. Chromium and Firefox treat `ws:`/`wss:` to the same host as
/// `'self'` under `connect-src`.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; \
    form-action 'self'; frame-ancestors 'self'";

/// Builds the router for the chat pages and their static assets.
///
/// It is generic over the state type so the server can merge it into its own router; it reads
/// no state itself. Every response carries the headers described in the crate docs.
///
/// ```
/// let app: axum::Router = channels_web::router();
/// # let _ = app;
/// ```
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    router_with(PageOptions::default())
}

/// How the pages behave beyond the tutorial.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PageOptions {
    /// Where the pages fetch a connection token before each connect (the Django token view,
    /// e.g. `/ws/token/`, served on the same origin): a `200` with `{"token", "name"}` connects
    /// with the subprotocol pair `bearer, <token>` and shows who is signed in; a `401`/`403`
    /// says "not signed in" with a link to Django's login and stops. `None`: anonymous, as the
    /// tutorial.
    pub token_url: Option<String>,
    /// With group history on (`--history-size`), the group chat page asks for the group's last
    /// `history` messages when it opens (`?history=K`), keeps the offset and epoch of the
    /// latest message, resumes from them after every reconnect (`?since=...&epoch=...`), and
    /// shows a line when recovery failed. 0: as the tutorial.
    pub history: usize,
    /// With presence on (`--presence`), the group chat page asks for it (`?presence=1`) and
    /// shows who is online (count and names), updated as others join and leave.
    pub presence: bool,
}

impl PageOptions {
    /// The pages fetch a connection token from `url` before connecting.
    #[must_use]
    pub fn with_token_url(mut self, url: impl Into<String>) -> Self {
        self.token_url = Some(url.into());
        self
    }
}

impl PageOptions {
    /// The group chat page shows who is online.
    #[must_use]
    pub fn with_presence(mut self, presence: bool) -> Self {
        self.presence = presence;
        self
    }

    /// The group chat page shows the last `history` messages and recovers after reconnects.
    #[must_use]
    pub fn with_history(mut self, history: usize) -> Self {
        self.history = history;
        self
    }
}

/// [`router`] with `options`.
pub fn router_with<S: Clone + Send + Sync + 'static>(options: PageOptions) -> Router<S> {
    Router::new()
        .route("/", get(pages::index))
        .route("/chatone", get(pages::chat_one))
        .route("/chatgroup", get(pages::chat_group))
        .route("/static/chat.css", get(assets::chat_css))
        .route("/static/chat.js", get(assets::chat_js))
        .route("/static/chatone.js", get(assets::chat_one_js))
        .route("/static/chatgroup.js", get(assets::chat_group_js))
        .route("/favicon.ico", get(assets::favicon))
        .layer(axum::Extension(std::sync::Arc::new(options)))
        .layer(middleware::map_response(security_headers))
}

/// Adds the security headers to a response, replacing any the handler set.
async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        CSP_HEADER,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response
}
