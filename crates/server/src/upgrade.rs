//! The WebSocket handshake: route, build the scope, run `connect`, then upgrade.
//!
//! Every request passes through [`dispatch`] first, the way Channels' `ProtocolTypeRouter`
//! splits `websocket` from `http`: a WebSocket handshake is routed with the [`WsRouter`] (no
//! route: HTTP 404, before any upgrade), everything else goes on to the HTTP routes.
//!
//! [`WsRouter`]: crate::routing::WsRouter

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tracing::Instrument;

use crate::caps::{CapGuard, CapRefusal};
use crate::consumer::driver;
use crate::consumer::{Consumer, Context, Scope};
use crate::metrics::Refusal;
use crate::state::AppState;

/// A handshake on its way to a consumer.
pub(crate) struct Connecting {
    ws: WebSocketUpgrade,
    scope: Scope,
    state: AppState,
    /// This connection's places under the connection caps, held until it ends.
    cap: CapGuard,
}

fn is_websocket_handshake(req: &Request) -> bool {
    req.headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// Middleware in front of every route: WebSocket handshakes go to their consumer.
pub(crate) async fn dispatch(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if !is_websocket_handshake(&req) {
        return next.run(req).await;
    }
    if state.shutdown().is_cancelled() {
        state.metrics().refused(Refusal::Draining);
        return (StatusCode::SERVICE_UNAVAILABLE, "server is shutting down\n").into_response();
    }
    let (mut parts, _body) = req.into_parts();
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    if let Err(refusal) = state.origins().check(&parts.headers) {
        // The origin (shortened, escaped) and the peer: enough to diagnose a misconfigured
        // allowlist, without the other headers (cookies, tokens).
        let origin = parts.headers.get(header::ORIGIN).map(|v| {
            String::from_utf8_lossy(v.as_bytes())
                .chars()
                .take(100)
                .collect::<String>()
        });
        tracing::info!(
            reason = refusal.as_str(),
            ?origin,
            peer = ?peer.map(|p| p.ip()),
            path = parts.uri.path(),
            "websocket handshake refused: origin"
        );
        state.metrics().refused(Refusal::Origin);
        return (StatusCode::FORBIDDEN, "origin not allowed\n").into_response();
    }
    let Ok(path) = percent_encoding::percent_decode_str(parts.uri.path()).decode_utf8() else {
        return (StatusCode::BAD_REQUEST, "path is not valid UTF-8\n").into_response();
    };
    let path = path.into_owned();
    let Some((endpoint, url_route)) = state.routes().resolve(&path) else {
        tracing::debug!(%path, "no websocket route");
        state.metrics().refused(Refusal::NotFound);
        return (StatusCode::NOT_FOUND, "no WebSocket route for this path\n").into_response();
    };
    let cap = match state.caps().admit(peer.map(|p| p.ip())) {
        Ok(cap) => cap,
        Err(CapRefusal::Replica) => {
            tracing::info!("websocket handshake refused: --max-connections reached");
            state.metrics().refused(Refusal::MaxConnections);
            return (StatusCode::SERVICE_UNAVAILABLE, "too many connections\n").into_response();
        }
        Err(CapRefusal::PerAddress) => {
            tracing::info!(
                peer = ?peer.map(|p| p.ip()),
                "websocket handshake refused: --max-connections-per-ip reached"
            );
            state.metrics().refused(Refusal::MaxConnectionsPerIp);
            return (
                StatusCode::TOO_MANY_REQUESTS,
                "too many connections from this address\n",
            )
                .into_response();
        }
    };
    let ws = match WebSocketUpgrade::from_request_parts(&mut parts, &state).await {
        Ok(ws) => ws,
        Err(rejection) => return rejection.into_response(),
    };
    let scope = Scope {
        path,
        query_string: parts.uri.query().unwrap_or_default().to_owned(),
        client: peer,
        headers: compact(&parts.headers),
        url_route,
    };
    endpoint
        .start(Connecting {
            ws,
            scope,
            state,
            cap,
        })
        .await
}

/// Creates the connection's channel, runs `connect`, and upgrades if it accepted.
pub(crate) async fn start<C: Consumer>(mut consumer: C, connecting: Connecting) -> Response {
    let Connecting {
        ws,
        scope,
        state,
        cap,
    } = connecting;
    let span = tracing::info_span!("ws", conn_id = state.next_conn_id(), path = %scope.path);
    let limits = *state.limits();
    let accepted = async {
        let inbox = match state.layer().new_channel().await {
            Ok(inbox) => inbox,
            Err(error) => {
                tracing::error!(%error, "new_channel failed: refusing the connection");
                state.metrics().refused(Refusal::LayerUnavailable);
                return Err((
                    StatusCode::SERVICE_UNAVAILABLE,
                    "channel layer unavailable\n",
                ));
            }
        };
        let mut cx = Context::new(Arc::new(scope), inbox.name().clone(), state.clone());
        match consumer.connect(&mut cx).await {
            Ok(()) => Ok((cx, inbox)),
            Err(close) => {
                tracing::debug!(close_code = close.code, "connection denied");
                state.metrics().refused(Refusal::Denied);
                Err((StatusCode::FORBIDDEN, "connection denied\n"))
            }
        }
    }
    .instrument(span.clone())
    .await;
    let (cx, inbox) = match accepted {
        Ok(accepted) => accepted,
        Err(refusal) => return refusal.into_response(),
    };
    // Tracked from here, so a shutdown waits for this connection even before the upgrade
    // completes (axum's graceful shutdown does not cover upgraded sockets).
    let token = state.tracker().token();
    let failed_span = span.clone();
    ws.read_buffer_size(limits.read_buffer_size)
        .write_buffer_size(0)
        .max_write_buffer_size(limits.max_write_buffer_size)
        .max_message_size(limits.max_message_size)
        .max_frame_size(limits.max_message_size)
        .on_failed_upgrade(move |error| {
            failed_span.in_scope(|| tracing::debug!(%error, "upgrade failed"));
        })
        .on_upgrade(move |socket| {
            async move {
                let _tracked = (token, cap);
                driver::run(socket, consumer, cx, inbox).await;
            }
            .instrument(span)
        })
}

/// A copy of `headers` that owns its bytes. hyper's header values are slices of the connection's
/// 8 KiB read buffer: keeping them for the scope's lifetime would pin that whole buffer for as
/// long as the WebSocket stays open (most of the memory of an idle connection).
fn compact(headers: &HeaderMap) -> HeaderMap {
    let mut copy = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        let mut owned = HeaderValue::from_bytes(value.as_bytes()).unwrap_or_else(|_| value.clone());
        owned.set_sensitive(value.is_sensitive());
        copy.append(name.clone(), owned);
    }
    copy
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compacted_headers_keep_every_value_in_order_and_sensitivity() {
        let mut headers = HeaderMap::new();
        headers.append(header::ORIGIN, HeaderValue::from_static("http://a.example"));
        headers.append("x-many", HeaderValue::from_static("1"));
        headers.append("x-many", HeaderValue::from_static("2"));
        let mut cookie = HeaderValue::from_static("session=secret");
        cookie.set_sensitive(true);
        headers.append(header::COOKIE, cookie);
        let copy = compact(&headers);
        assert_eq!(copy, headers);
        let many: Vec<_> = copy.get_all("x-many").iter().collect();
        assert_eq!(many, ["1", "2"]);
        assert!(copy[header::COOKIE].is_sensitive());
    }
}
