//! The WebSocket handshake: check it, route it, build the scope, run `connect`, then upgrade.
//!
//! Every request passes through [`dispatch`] first, the way Channels' `ProtocolTypeRouter`
//! splits `websocket` from `http`: a WebSocket handshake is checked (Host, Origin, RFC 6455's
//! required headers) and routed with the [`WsRouter`] (no route: HTTP 404, before any upgrade),
//! everything else goes on to the HTTP routes.
//!
//! The upgrade itself is done here rather than by axum's `WebSocketUpgrade`, so that the
//! handshake is validated strictly (one `Sec-WebSocket-Version: 13`, a `Sec-WebSocket-Key` of 16
//! base64 bytes) and the socket is metered below tungstenite ([`FrameMeter`]).
//!
//! [`WsRouter`]: crate::routing::WsRouter
//! [`FrameMeter`]: crate::connection::meter::FrameMeter

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper::upgrade::OnUpgrade;

use crate::caps::CapRefusal;
use crate::consumer::{CompactHeaders, Scope};
use crate::handshake::Handshake;
use crate::identity::Credentials;
use crate::metrics::Refusal;
use crate::state::AppState;

fn is_websocket_handshake(req: &Request) -> bool {
    req.headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// A refusal before the upgrade: a status and a one-line body that says why.
fn refuse(status: StatusCode, body: &'static str) -> Response {
    (status, body).into_response()
}

/// Why a WebSocket handshake is malformed.
#[derive(Debug, Clone, Copy)]
enum BadHandshake {
    NotGet,
    NoConnectionUpgrade,
    Version,
    Key,
}

impl BadHandshake {
    fn into_response(self) -> Response {
        match self {
            BadHandshake::NotGet => refuse(
                StatusCode::METHOD_NOT_ALLOWED,
                "a WebSocket handshake is a GET request\n",
            ),
            BadHandshake::NoConnectionUpgrade => refuse(
                StatusCode::BAD_REQUEST,
                "a WebSocket handshake needs Connection: Upgrade\n",
            ),
            BadHandshake::Version => {
                let mut response = refuse(
                    StatusCode::UPGRADE_REQUIRED,
                    "this server speaks WebSocket version 13 only (one Sec-WebSocket-Version: 13)\n",
                );
                response.headers_mut().insert(
                    header::SEC_WEBSOCKET_VERSION,
                    HeaderValue::from_static("13"),
                );
                response
            }
            BadHandshake::Key => refuse(
                StatusCode::BAD_REQUEST,
                "Sec-WebSocket-Key must be one base64-encoded 16-byte value\n",
            ),
        }
    }
}

/// RFC 6455 §4.2.1: GET, `Connection: Upgrade`, exactly one `Sec-WebSocket-Version: 13` (§4.4:
/// otherwise 426 naming the version we speak) and exactly one `Sec-WebSocket-Key` that is the
/// base64 of 16 bytes. Returns the `Sec-WebSocket-Accept` value.
fn check_handshake(parts: &Parts) -> Result<HeaderValue, BadHandshake> {
    if parts.method != Method::GET {
        return Err(BadHandshake::NotGet);
    }
    let connection_upgrade = parts
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    if !connection_upgrade {
        return Err(BadHandshake::NoConnectionUpgrade);
    }
    let mut versions = parts.headers.get_all(header::SEC_WEBSOCKET_VERSION).iter();
    let version_ok = versions.next().is_some_and(|v| v == "13") && versions.next().is_none();
    if !version_ok {
        return Err(BadHandshake::Version);
    }
    let mut keys = parts.headers.get_all(header::SEC_WEBSOCKET_KEY).iter();
    match (keys.next(), keys.next()) {
        (Some(key), None) if is_valid_key(key.as_bytes()) => {
            let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
            // The accept key is base64: always a valid header value.
            HeaderValue::from_str(&accept).map_err(|_| BadHandshake::Key)
        }
        _ => Err(BadHandshake::Key),
    }
}

/// Whether `key` is the base64 encoding of 16 bytes: 22 base64 characters, the last of which
/// carries only 2 bits (so its low 4 bits are 0: one of `AQgw`), then `==`.
fn is_valid_key(key: &[u8]) -> bool {
    let is_b64 = |c: &u8| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/';
    key.len() == 24
        && key[..22].iter().all(is_b64)
        && matches!(key[21], b'A' | b'Q' | b'g' | b'w')
        && &key[22..] == b"=="
}

/// Middleware in front of every route: WebSocket handshakes go to their consumer.
pub(crate) async fn dispatch(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if !is_websocket_handshake(&req) {
        return next.run(req).await;
    }
    if state.hub().shutdown().is_cancelled() {
        state.hub().metrics().refused(Refusal::Draining);
        return (StatusCode::SERVICE_UNAVAILABLE, "server is shutting down\n").into_response();
    }
    let (mut parts, _body) = req.into_parts();
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    if !state.hosts().allows(&parts.headers) {
        let host = parts.headers.get(header::HOST).map(|v| {
            String::from_utf8_lossy(v.as_bytes())
                .chars()
                .take(100)
                .collect::<String>()
        });
        channels_layer::log_limited!(
            info,
            ?host,
            peer = ?peer.map(|p| p.ip()),
            "websocket handshake refused: host not in --allowed-hosts"
        );
        state.hub().metrics().refused(Refusal::Host);
        return refuse(
            StatusCode::BAD_REQUEST,
            "host not allowed: add it to --allowed-hosts (CHANNELS_ALLOWED_HOSTS)\n",
        );
    }
    if let Err(refusal) = state.origins().check(&parts.headers) {
        // The origin (shortened, escaped) and the peer: enough to diagnose a misconfigured
        // allowlist, without the other headers (cookies, tokens).
        let origin = parts.headers.get(header::ORIGIN).map(|v| {
            String::from_utf8_lossy(v.as_bytes())
                .chars()
                .take(100)
                .collect::<String>()
        });
        channels_layer::log_limited!(
            info,
            reason = refusal.as_str(),
            ?origin,
            peer = ?peer.map(|p| p.ip()),
            path = parts.uri.path(),
            "websocket handshake refused: origin"
        );
        state.hub().metrics().refused(Refusal::Origin);
        return (StatusCode::FORBIDDEN, "origin not allowed\n").into_response();
    }
    let accept = match check_handshake(&parts) {
        Ok(accept) => accept,
        Err(bad) => {
            state.hub().metrics().refused(Refusal::BadHandshake);
            return bad.into_response();
        }
    };
    let Ok(path) = percent_encoding::percent_decode_str(parts.uri.path()).decode_utf8() else {
        return (StatusCode::BAD_REQUEST, "path is not valid UTF-8\n").into_response();
    };
    let path = path.into_owned();
    let Some((endpoint, url_route)) = state.routes().resolve(&path) else {
        tracing::debug!(%path, "no websocket route");
        state.hub().metrics().refused(Refusal::NotFound);
        return (StatusCode::NOT_FOUND, "no WebSocket route for this path\n").into_response();
    };
    let cap = match state.caps().admit(peer.map(|p| p.ip())) {
        Ok(cap) => cap,
        Err(CapRefusal::Replica) => {
            channels_layer::log_limited!(
                info,
                "websocket handshake refused: --max-connections reached"
            );
            state.hub().metrics().refused(Refusal::MaxConnections);
            return (StatusCode::SERVICE_UNAVAILABLE, "too many connections\n").into_response();
        }
        Err(CapRefusal::PerAddress) => {
            channels_layer::log_limited!(
                info,
                peer = ?peer.map(|p| p.ip()),
                "websocket handshake refused: --max-connections-per-ip reached"
            );
            state.hub().metrics().refused(Refusal::MaxConnectionsPerIp);
            return (
                StatusCode::TOO_MANY_REQUESTS,
                "too many connections from this address\n",
            )
                .into_response();
        }
    };
    let Some(upgrade) = parts.extensions.remove::<OnUpgrade>() else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "this connection cannot be upgraded (HTTP/1.1 is needed)\n",
        );
    };
    let mut query_string = parts.uri.query().unwrap_or_default().to_owned();
    // The token leaves the headers and the query string here: the scope never holds it.
    let credentials = match state.hub().auth() {
        Some(auth) => auth.credentials(&mut parts.headers, &mut query_string),
        None => Credentials::default(),
    };
    let scope = Scope {
        path,
        query_string,
        client: peer,
        headers: CompactHeaders::new(&parts.headers),
        url_route,
        identity: None,
    };
    endpoint
        .start(Handshake {
            upgrade,
            accept,
            scope,
            credentials,
            hub: Arc::clone(state.hub()),
            cap,
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_must_be_16_bytes_of_base64() {
        assert!(is_valid_key(b"dGhlIHNhbXBsZSBub25jZQ=="));
        for bad in [
            &b""[..],
            b"dGhlIHNhbXBsZSBub25jZQ=",
            b"dGhlIHNhbXBsZSBub25jZR==",
            b"dGhlIHNhbXBsZSBub25jZ===",
            b"dGhlIHNhbXBsZSBub25j!Q==",
            b"dGhlIHNhbXBsZSBub25jZQ==AA",
            b"AAAAAAAAAAAAAAAAAAAAAAAA",
        ] {
            assert!(!is_valid_key(bad), "{}", String::from_utf8_lossy(bad));
        }
    }
}
