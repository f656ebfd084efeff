//! A checked WebSocket handshake on its way to its consumer: create the connection's channel,
//! run `connect`, answer 101 and hand the upgraded socket to the connection's driver.

use std::sync::Arc;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper::upgrade::OnUpgrade;
use tokio_tungstenite::WebSocketStream;
use tracing::Instrument;
use tungstenite::protocol::{Role, WebSocketConfig};

use crate::caps::CapGuard;
use crate::connection::driver;
use crate::connection::meter::FrameMeter;
use crate::consumer::{Consumer, Context, Scope};
use crate::hub::Hub;
use crate::metrics::Refusal;

/// A handshake that passed every check before the consumer, on its way to it.
pub(crate) struct Handshake {
    pub(crate) upgrade: OnUpgrade,
    /// The `Sec-WebSocket-Accept` value of the 101 response.
    pub(crate) accept: HeaderValue,
    pub(crate) scope: Scope,
    pub(crate) hub: Arc<Hub>,
    /// This connection's places under the connection caps, held until it ends.
    pub(crate) cap: CapGuard,
}

/// Creates the connection's channel, runs `connect`, and upgrades if it accepted.
pub(crate) async fn start<C: Consumer>(mut consumer: C, handshake: Handshake) -> Response {
    let Handshake {
        upgrade,
        accept,
        scope,
        hub,
        cap,
    } = handshake;
    let span = tracing::info_span!("ws", conn_id = hub.next_conn_id(), path = %scope.path);
    let limits = *hub.limits();
    let accepted = async {
        let inbox = match hub.layer().new_channel().await {
            Ok(inbox) => inbox,
            Err(error) => {
                channels_layer::log_limited!(
                    error,
                    %error,
                    "new_channel failed: refusing the connection"
                );
                hub.metrics().refused(Refusal::LayerUnavailable);
                return Err((
                    StatusCode::SERVICE_UNAVAILABLE,
                    "channel layer unavailable\n",
                ));
            }
        };
        let mut cx = Context::new(
            Arc::new(scope),
            inbox.name().clone(),
            Arc::clone(hub.layer()),
            Arc::clone(hub.metrics()),
            limits.max_outgoing_frames,
        );
        match consumer.connect(&mut cx).await {
            Ok(()) => Ok((cx, inbox)),
            Err(close) => {
                tracing::debug!(close_code = close.code, "connection denied");
                hub.metrics().refused(Refusal::Denied);
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
    // completes (hyper's graceful shutdown does not cover upgraded sockets).
    let token = hub.tracker().token();
    let config = WebSocketConfig::default()
        .read_buffer_size(limits.read_buffer_size)
        .write_buffer_size(0)
        .max_write_buffer_size(limits.max_write_buffer_size)
        .max_message_size(Some(limits.max_message_size))
        .max_frame_size(Some(limits.max_message_size));
    tokio::spawn(
        async move {
            let _tracked = (token, cap);
            let io = match upgrade.await {
                Ok(upgraded) => hyper_util::rt::TokioIo::new(upgraded),
                Err(error) => {
                    tracing::debug!(%error, "upgrade failed");
                    return;
                }
            };
            let io = FrameMeter::new(io, limits.max_messages_per_second);
            let socket = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
            driver::run(socket, consumer, cx, inbox, &hub).await;
        }
        .instrument(span),
    );
    let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    response
}
