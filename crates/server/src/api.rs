//! The server API (`--api-bind`, `CHANNELS_API_KEY`): publish into groups and channels, read
//! presence and history, disconnect a user, over HTTP with JSON, for backends that do not speak
//! channels_redis and for operators. Its own listener, meant for a private interface; every
//! request but the OpenAPI document needs `X-API-Key`, compared in constant time.
//!
//! | method and path | body | answer |
//! |---|---|---|
//! | `POST /api/groups/{group}/send` | a Channels message `{"type": ..., ...}` | `202 {}`: published with `group_send` (Django members get it too) |
//! | `POST /api/channels/{channel}/send` | a Channels message | `202 {}`: sent to one channel |
//! | `GET /api/groups/{group}/presence` | | `200 {"count": N, "members": [{"user", "name", "channel", "replica", "joined_at"}]}` |
//! | `GET /api/groups/{group}/history?limit=K` | | `200 {"epoch": "...", "top": N, "messages": [{"offset": N, "message": {...}}]}`; 404 when history is off |
//! | `POST /api/users/{user}/disconnect` | | `202 {}`: every replica closes that user's connections with 4000 |
//! | `GET /api/openapi.json` | | the OpenAPI 3.0 document (no key needed) |
//!
//! Errors are `{"error": {"code": "...", "message": "..."}}`: `unauthorized` (401),
//! `bad_json`, `invalid_group`, `invalid_channel`, `invalid_user`, `invalid_limit`,
//! `bad_path` (400), `not_found`, `history_off` (404), `too_large` (413), `channel_full` (429) and
//! `layer_unavailable` (503). Bodies over `--api-max-body-bytes` (64 KiB) are refused with 413.
//! In messages, JSON maps, lists, strings, numbers, booleans and null map to Python's types;
//! Python `bytes` in history are shown as lists of numbers.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{DefaultBodyLimit, Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use channels_layer::{ChannelLayer, ChannelName, GroupName, LayerError, Message, Since, Value};
use serde_json::json;

use crate::presence::{Service, member_json};

/// The OpenAPI document served at `/api/openapi.json`.
pub const OPENAPI: &str = include_str!("api/openapi.json");

/// The largest request body by default.
pub const DEFAULT_MAX_BODY: usize = 64 * 1024;

/// What the API needs.
#[derive(Clone)]
pub(crate) struct ApiState {
    pub(crate) layer: Arc<dyn ChannelLayer>,
    pub(crate) service: Arc<Service>,
    pub(crate) key: Arc<[u8]>,
}

impl std::fmt::Debug for ApiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiState").finish_non_exhaustive()
    }
}

/// An API error: its HTTP status, code and message.
#[derive(Debug)]
struct ApiError(StatusCode, &'static str, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.1, "message": self.2}});
        (self.0, axum::Json(body)).into_response()
    }
}

impl From<LayerError> for ApiError {
    fn from(error: LayerError) -> Self {
        match error {
            LayerError::ChannelFull(_) => ApiError(
                StatusCode::TOO_MANY_REQUESTS,
                "channel_full",
                error.to_string(),
            ),
            LayerError::TooLarge { .. } => ApiError(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                error.to_string(),
            ),
            LayerError::HistoryOff => ApiError(
                StatusCode::NOT_FOUND,
                "history_off",
                "this server keeps no history: start it with --history-size".to_owned(),
            ),
            LayerError::InvalidMessage(_) => {
                ApiError(StatusCode::BAD_REQUEST, "bad_json", error.to_string())
            }
            other => ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                "layer_unavailable",
                other.to_string(),
            ),
        }
    }
}

/// The API router, every route but the OpenAPI document behind the key.
pub(crate) fn router(state: ApiState, max_body: usize) -> Router {
    let protected = Router::new()
        .route("/api/groups/{group}/send", post(group_send))
        .route("/api/channels/{channel}/send", post(channel_send))
        .route("/api/groups/{group}/presence", get(presence))
        .route("/api/groups/{group}/history", get(history))
        .route("/api/users/{user}/disconnect", post(disconnect))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_key,
        ));
    Router::new()
        .route("/api/openapi.json", get(openapi))
        .merge(protected)
        .fallback(|| async {
            ApiError(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such endpoint: see /api/openapi.json".to_owned(),
            )
        })
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}

/// Equal in constant time for equal lengths.
fn same_key(given: &[u8], key: &[u8]) -> bool {
    given.len() == key.len() && given.iter().zip(key).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

async fn require_key(
    State(state): State<ApiState>,
    headers: HeaderMap,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let given = headers
        .get("x-api-key")
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    if !same_key(given, &state.key) {
        return ApiError(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong X-API-Key".to_owned(),
        )
        .into_response();
    }
    next.run(request).await
}

async fn openapi() -> Response {
    ([("content-type", "application/json")], OPENAPI).into_response()
}

fn group_of(raw: &str) -> Result<GroupName, ApiError> {
    GroupName::new(raw)
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, "invalid_group", e.to_string()))
}

/// A Channels message from an API request body: a JSON object whose `type` is a string. The
/// error says what is wrong, for the `bad_json` answer.
pub fn parse_message(body: &[u8]) -> Result<Message, String> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))?;
    if !value.get("type").is_some_and(serde_json::Value::is_string) {
        return Err("the body must be a JSON object with a string \"type\"".to_owned());
    }
    Message::from_serialize(&value).map_err(|e| e.to_string())
}

fn message_of(body: &[u8]) -> Result<Message, ApiError> {
    parse_message(body).map_err(|m| ApiError(StatusCode::BAD_REQUEST, "bad_json", m))
}

/// A message as the API shows it in JSON (history answers): maps, lists, strings, numbers,
/// booleans and null as themselves, Python `bytes` as lists of numbers.
pub fn message_json(msg: &Message) -> serde_json::Value {
    map_json(msg.map())
}

fn accepted() -> Response {
    (StatusCode::ACCEPTED, axum::Json(json!({}))).into_response()
}

async fn group_send(
    State(state): State<ApiState>,
    group: Result<Path<String>, PathRejection>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let group = path_param(group)?;
    let group = group_of(&group)?;
    let msg = message_of(&body)?;
    state.layer.group_send(&group, msg).await?;
    Ok(accepted())
}

async fn channel_send(
    State(state): State<ApiState>,
    channel: Result<Path<String>, PathRejection>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let channel = path_param(channel)?;
    let channel = ChannelName::new(&channel)
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, "invalid_channel", e.to_string()))?;
    let msg = message_of(&body)?;
    state.layer.send(&channel, msg).await?;
    Ok(accepted())
}

async fn presence(
    State(state): State<ApiState>,
    group: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let group = path_param(group)?;
    let group = group_of(&group)?;
    let read = state.layer.presence(&group).await?;
    let members: Vec<serde_json::Value> = read.members.iter().map(member_json).collect();
    Ok(axum::Json(json!({"count": members.len(), "members": members})).into_response())
}

/// A path parameter, or a JSON `bad_path` error where axum would answer in plain text (a
/// percent-encoding that is not UTF-8).
fn path_param(param: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    param
        .map(|Path(value)| value)
        .map_err(|rejection| ApiError(StatusCode::BAD_REQUEST, "bad_path", rejection.body_text()))
}

/// `limit` of a history query: absent, or once as a number of messages.
fn limit_of(query: Option<&str>) -> Result<Option<usize>, ApiError> {
    let invalid = || {
        ApiError(
            StatusCode::BAD_REQUEST,
            "invalid_limit",
            "limit must be given at most once, as a number of messages".to_owned(),
        )
    };
    let mut limit = None;
    for pair in query.unwrap_or("").split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if key != "limit" {
            continue;
        }
        if limit.is_some() {
            return Err(invalid());
        }
        if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid());
        }
        // More than the history holds is all of it, however many digits it has.
        limit = Some(value.parse::<usize>().unwrap_or(usize::MAX));
    }
    Ok(limit)
}

async fn history(
    State(state): State<ApiState>,
    group: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let group = path_param(group)?;
    let group = group_of(&group)?;
    let size = state.layer.history_size();
    if size == 0 {
        return Err(LayerError::HistoryOff.into());
    }
    let limit = limit_of(query.as_deref())?.unwrap_or(size);
    let read = state.layer.history(&group, Since::Latest(limit)).await?;
    let messages: Vec<serde_json::Value> = read
        .messages
        .iter()
        .map(|m| {
            json!({
                "offset": m.position().map_or(0, |p| p.offset),
                "message": message_json(m),
            })
        })
        .collect();
    Ok(axum::Json(json!({
        "epoch": read.epoch.to_string(),
        "top": read.top,
        "messages": messages,
    }))
    .into_response())
}

async fn disconnect(
    State(state): State<ApiState>,
    user: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let user = path_param(user)?;
    if user.is_empty() || user.len() > 256 {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "invalid_user",
            "a user id is 1 to 256 bytes".to_owned(),
        ));
    }
    state.service.disconnect_user(&user).await?;
    Ok(accepted())
}

fn map_json(map: &channels_layer::Map) -> serde_json::Value {
    serde_json::Value::Object(
        map.iter()
            .map(|(k, v)| (k.to_owned(), value_json(v)))
            .collect(),
    )
}

fn value_json(value: &Value) -> serde_json::Value {
    match value {
        Value::Nil => serde_json::Value::Null,
        Value::Bool(b) => json!(b),
        Value::Int(i) => json!(i),
        Value::UInt(u) => json!(u),
        Value::Float(f) => json!(f),
        Value::Str(s) => json!(s),
        Value::Bytes(b) => json!(b),
        Value::List(items) => serde_json::Value::Array(items.iter().map(value_json).collect()),
        Value::Map(map) => map_json(map),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_compare_whole() {
        assert!(same_key(b"secret", b"secret"));
        assert!(!same_key(b"secreT", b"secret"));
        assert!(!same_key(b"secret!", b"secret"));
        assert!(!same_key(b"", b"secret"));
    }

    #[test]
    fn bodies_must_be_objects_with_a_type() {
        assert!(
            message_of(br#"{"type": "chat.message", "text": "hi", "n": [1, 2.5, null]}"#).is_ok()
        );
        for bad in [&b"not json"[..], b"[]", b"{}", br#"{"type": 5}"#, b"\xff"] {
            assert!(message_of(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_limit_is_digits_once_and_a_huge_one_is_everything() {
        assert_eq!(limit_of(None).ok(), Some(None));
        assert_eq!(limit_of(Some("limit=5&x=1")).ok(), Some(Some(5)));
        // Found by schemathesis: a schema-valid integer over u64.
        let huge = "limit=19146186112826501871175753700959322112";
        assert_eq!(limit_of(Some(huge)).ok(), Some(Some(usize::MAX)));
        for bad in [
            "limit=",
            "limit=-1",
            "limit=+5",
            "limit=1.5",
            "limit=a",
            "limit=1&limit=2",
        ] {
            assert!(limit_of(Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn numbers_survive_being_shown_and_read_again() {
        // Found by the api_message fuzz target: without serde_json's float_roundtrip a long
        // integer literal and its shortest decimal form could parse one ULP apart.
        let body = br#"{"type": "x", "f": -0.0, "u": 184467440167096744447440101674444073704401670951851615}"#;
        let msg = parse_message(body).unwrap();
        let again = parse_message(message_json(&msg).to_string().as_bytes()).unwrap();
        assert_eq!(msg, again);
    }

    #[test]
    fn the_openapi_document_is_json_with_every_path() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).unwrap();
        for path in [
            "/api/groups/{group}/send",
            "/api/channels/{channel}/send",
            "/api/groups/{group}/presence",
            "/api/groups/{group}/history",
            "/api/users/{user}/disconnect",
        ] {
            assert!(doc["paths"][path].is_object(), "{path}");
        }
    }
}
