//! The static files the pages load, embedded in the binary with `include_str!`.
//!
//! Four small files do not justify an embedding crate (ecosystem.md §4.6). Each handler sets the
//! content type itself, because `X-Content-Type-Options: nosniff` makes browsers refuse a script
//! served with any other type.

use axum::http::StatusCode;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::IntoResponse;

const JAVASCRIPT: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// The files are small and change with every build, so browsers revalidate instead of caching.
const NO_CACHE: &str = "no-cache";

/// `GET /static/chat.css`: the tutorial's inline style, moved out so the CSP needs no
/// `'unsafe-inline'`.
pub(crate) async fn chat_css() -> impl IntoResponse {
    (
        [(CONTENT_TYPE, CSS), (CACHE_CONTROL, NO_CACHE)],
        include_str!("static/chat.css"),
    )
}

/// `GET /static/chat.js`: the WebSocket client shared by both chat pages.
pub(crate) async fn chat_js() -> impl IntoResponse {
    (
        [(CONTENT_TYPE, JAVASCRIPT), (CACHE_CONTROL, NO_CACHE)],
        include_str!("static/chat.js"),
    )
}

/// `GET /static/chatone.js`: starts the single chat on `/room/123/`.
pub(crate) async fn chat_one_js() -> impl IntoResponse {
    (
        [(CONTENT_TYPE, JAVASCRIPT), (CACHE_CONTROL, NO_CACHE)],
        include_str!("static/chatone.js"),
    )
}

/// `GET /static/chatgroup.js`: starts the group chat on `/group/<id>/`.
pub(crate) async fn chat_group_js() -> impl IntoResponse {
    (
        [(CONTENT_TYPE, JAVASCRIPT), (CACHE_CONTROL, NO_CACHE)],
        include_str!("static/chatgroup.js"),
    )
}

/// `GET /favicon.ico`: there is no icon; an empty answer keeps 404s out of the console log that
/// browser tests print.
pub(crate) async fn favicon() -> StatusCode {
    StatusCode::NO_CONTENT
}
