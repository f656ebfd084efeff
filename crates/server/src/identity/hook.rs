//! The connect hook: before the upgrade, ask the Django app who is connecting.
//!
//! One `POST` per handshake that carries no token, with a JSON description of the handshake
//! ([`HookRequest`]) and `Authorization: Bearer <secret>` when a secret is configured. The
//! answer decides: `200` with [`HookResponse`] accepts, `401`/`403` refuses with 403, and
//! anything else refuses with 503 (never accept on error). The client keeps connections alive
//! (a pool per replica), bounds each call by a timeout and the calls in flight by a cap (a
//! handshake past the cap is refused at once), and reads at most [`MAX_ANSWER_BYTES`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderValue, Method, Request, StatusCode, Uri, header};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::Semaphore;

use super::{AuthRefusal, Identity};

/// The largest answer the hook may give.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// The request headers forwarded to the hook (lowercase), the ones a Django view needs to
/// recognise the user: the session cookie, an `Authorization` header, the page's origin, the
/// browser, and the client address a proxy saw.
pub const FORWARDED_HEADERS: [&str; 5] = [
    "cookie",
    "authorization",
    "origin",
    "user-agent",
    "x-forwarded-for",
];

/// What the hook is told about a handshake (the JSON body of the `POST`).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct HookRequest {
    /// The percent-decoded path, e.g. `/group/1/`.
    pub path: String,
    /// The raw query string without `?` (a `token` parameter removed).
    pub query_string: String,
    /// The route's named captures (Channels' `url_route["kwargs"]`).
    pub route_kwargs: BTreeMap<String, String>,
    /// The forwarded request headers ([`FORWARDED_HEADERS`]), lowercase names; repeated
    /// headers are joined with `, ` (cookies with `; `).
    pub headers: BTreeMap<String, String>,
    /// The client's address as the replica saw it (`ip:port`).
    pub client: Option<String>,
    /// The replica's id.
    pub replica: String,
    /// The connection's channel name: Django can `channel_layer.send` to it.
    pub channel: String,
}

/// What the hook answers to accept a connection.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HookResponse {
    /// The user id (non-empty).
    pub user: String,
    /// The display name.
    #[serde(default)]
    pub name: Option<String>,
    /// The groups the connection may join: exact names or prefixes ending in `*`.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Public information about the user.
    #[serde(default)]
    pub info: Map<String, Value>,
}

impl HookResponse {
    /// Parses an answer body: the JSON above with a non-empty `user`.
    pub fn parse(body: &[u8]) -> Result<Self, String> {
        if body.len() > MAX_ANSWER_BYTES {
            return Err(format!("answer over {MAX_ANSWER_BYTES} bytes"));
        }
        // A JSON object, and only that: serde would also read a struct from an array
        // (`["7"]`), which no hook means to send (found by the `hook_answer` fuzz target).
        let value: Value =
            serde_json::from_slice(body).map_err(|error| format!("answer is not JSON: {error}"))?;
        if !value.is_object() {
            return Err("answer is not a JSON object".to_owned());
        }
        let answer: HookResponse = serde_json::from_value(value)
            .map_err(|error| format!("answer is not the hook JSON: {error}"))?;
        if answer.user.is_empty() {
            return Err("answer has an empty \"user\"".to_owned());
        }
        Ok(answer)
    }

    /// The identity this answer gives.
    pub fn into_identity(self) -> Identity {
        Identity::granted(self.user, self.name, &self.groups, self.info)
    }
}

/// A connect hook client.
#[derive(Clone)]
pub struct ConnectHook {
    uri: Uri,
    secret: Option<HeaderValue>,
    timeout: Duration,
    in_flight: Arc<Semaphore>,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl std::fmt::Debug for ConnectHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        f.debug_struct("ConnectHook")
            .field("uri", &self.uri)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// The default time a hook call may take.
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_millis(2000);
/// The default number of hook calls in flight per replica.
pub const DEFAULT_HOOK_MAX_IN_FLIGHT: usize = 64;

impl ConnectHook {
    /// A hook at `url` (`http://host[:port]/path`), with the defaults: a 2 s timeout and 64
    /// calls in flight.
    pub fn new(url: &str) -> Result<Self, String> {
        let uri: Uri = url
            .parse()
            .map_err(|error| format!("--connect-hook {url:?} is not a URL: {error}"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(format!(
                    "--connect-hook {url:?}: https is not supported yet; call the Django app \
                     over http inside your network (it carries the session cookie: keep it \
                     off the internet), or put a TLS sidecar in front"
                ));
            }
            _ => return Err(format!("--connect-hook {url:?} must start with http://")),
        }
        if uri.host().is_none() {
            return Err(format!("--connect-hook {url:?} has no host"));
        }
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_millis(500)));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(32)
            .build(connector);
        Ok(Self {
            uri,
            secret: None,
            timeout: DEFAULT_HOOK_TIMEOUT,
            in_flight: Arc::new(Semaphore::new(DEFAULT_HOOK_MAX_IN_FLIGHT)),
            client,
        })
    }

    /// Sends `Authorization: Bearer <secret>` with every call.
    pub fn secret(mut self, secret: &str) -> Result<Self, String> {
        let mut value = HeaderValue::from_str(&format!("Bearer {secret}"))
            .map_err(|_| "the connect hook secret must be printable ASCII".to_owned())?;
        value.set_sensitive(true);
        self.secret = Some(value);
        Ok(self)
    }

    /// The time a call may take, answer included.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The calls in flight at once (at least 1); handshakes past it are refused with 503.
    #[must_use]
    pub fn max_in_flight(mut self, max: usize) -> Self {
        self.in_flight = Arc::new(Semaphore::new(max.max(1)));
        self
    }

    /// Asks the hook about `request`.
    pub async fn ask(&self, request: &HookRequest) -> Result<Identity, AuthRefusal> {
        let Ok(_permit) = self.in_flight.try_acquire() else {
            return Err(AuthRefusal::HookBusy);
        };
        let body = serde_json::to_vec(request).map_err(|_| AuthRefusal::HookBadAnswer)?;
        let mut http = Request::builder()
            .method(Method::POST)
            .uri(self.uri.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, "application/json");
        if let Some(secret) = &self.secret {
            http = http.header(header::AUTHORIZATION, secret.clone());
        }
        let http = http
            .body(Full::new(Bytes::from(body)))
            .map_err(|_| AuthRefusal::HookUnreachable)?;
        let call = async {
            let response = self.client.request(http).await.map_err(|error| {
                channels_layer::log_limited!(warn, %error, hook = %self.uri, "connect hook unreachable");
                AuthRefusal::HookUnreachable
            })?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|error| {
                    if error.is::<http_body_util::LengthLimitError>() {
                        AuthRefusal::HookTooLarge
                    } else {
                        AuthRefusal::HookUnreachable
                    }
                })?
                .to_bytes();
            Ok::<_, AuthRefusal>((status, body))
        };
        let (status, body) = match tokio::time::timeout(self.timeout, call).await {
            Ok(answer) => answer?,
            Err(_) => {
                channels_layer::log_limited!(
                    warn,
                    hook = %self.uri,
                    timeout = ?self.timeout,
                    "connect hook timed out"
                );
                return Err(AuthRefusal::HookTimeout);
            }
        };
        match status {
            StatusCode::OK => HookResponse::parse(&body)
                .map(HookResponse::into_identity)
                .map_err(|error| {
                    channels_layer::log_limited!(warn, %error, hook = %self.uri, "connect hook answered badly");
                    AuthRefusal::HookBadAnswer
                }),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Err(AuthRefusal::HookDenied),
            other => {
                channels_layer::log_limited!(warn, status = other.as_u16(), hook = %self.uri, "connect hook answered with an error status");
                Err(AuthRefusal::HookStatus)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_json_object_with_a_user_is_an_answer() {
        let answer = HookResponse::parse(br#"{"user": "7", "groups": ["1"]}"#);
        assert_eq!(answer.map(|a| a.user).as_deref(), Ok("7"));
        for bad in [
            &br#"["7"]"#[..],
            br#"{"user": ""}"#,
            br#"{"user": 7}"#,
            br#"{"user": "7", "admin": true}"#,
            b"null",
            b"<html>",
        ] {
            assert!(
                HookResponse::parse(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let huge = format!(
            r#"{{"user": "7", "name": "{}"}}"#,
            "x".repeat(MAX_ANSWER_BYTES)
        );
        assert!(HookResponse::parse(huge.as_bytes()).is_err());
    }
}
