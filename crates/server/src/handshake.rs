//! A checked WebSocket handshake on its way to its consumer: create the connection's channel,
//! run `connect`, answer 101 and hand the upgraded socket to the connection's driver.

use std::sync::Arc;
use std::time::SystemTime;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use channels_layer::{Bypass, Inbox};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_util::task::task_tracker::TaskTrackerToken;
use tracing::Instrument;
use tungstenite::protocol::{Role, WebSocketConfig};

use crate::caps::CapGuard;
use crate::connection::direct::SplitIo;
use crate::connection::driver;
use crate::connection::meter::FrameMeter;
use crate::consumer::recovery::{Recovery, RecoveryRequest};
use crate::consumer::{Close, Consumer, Context, Scope, SharedText};
use crate::hub::Hub;
use crate::identity::{AuthRefusal, Authenticator, Credentials, FORWARDED_HEADERS, HookRequest};
use crate::metrics::Refusal;

/// A handshake that passed every check before the consumer, on its way to it.
pub(crate) struct Handshake {
    pub(crate) upgrade: OnUpgrade,
    /// The `Sec-WebSocket-Accept` value of the 101 response.
    pub(crate) accept: HeaderValue,
    pub(crate) scope: Scope,
    /// What the handshake carries towards its identity (a token).
    pub(crate) credentials: Credentials,
    pub(crate) hub: Arc<Hub>,
    /// This connection's places under the connection caps, held until it ends.
    pub(crate) cap: CapGuard,
}

/// Creates the connection's channel, runs `connect`, and upgrades if it accepted.
pub(crate) async fn start<C: Consumer>(mut consumer: C, handshake: Handshake) -> Response {
    let Handshake {
        upgrade,
        accept,
        mut scope,
        credentials,
        hub,
        cap,
    } = handshake;
    let span = tracing::info_span!("ws", conn_id = hub.next_conn_id(), path = %scope.path);
    let limits = *hub.limits();
    let accepted = async {
        // A token is judged before anything is created for the connection.
        let mut identity = match hub
            .auth()
            .map(|auth| auth.identity_of_token(&credentials, SystemTime::now()))
        {
            None | Some(Ok(None)) => None,
            Some(Ok(Some(identity))) => Some(identity),
            Some(Err(refusal)) => return Err(refuse_identity(&hub, refusal)),
        };
        // Recovery parameters are judged before anything is created, too (history on only).
        let recovery = if hub.layer().history_size() > 0 {
            match RecoveryRequest::parse(&scope.query_string) {
                Ok(request) => request.map(Recovery::new),
                Err(reason) => {
                    tracing::debug!(%reason, "handshake refused: recovery parameters");
                    hub.metrics().refused(Refusal::BadHandshake);
                    return Err((
                        StatusCode::BAD_REQUEST,
                        "invalid recovery parameters (recover=1, history=K, since=OFFSET&epoch=EPOCH)\n",
                    ));
                }
            }
        } else {
            None
        };
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
        if identity.is_none()
            && let Some(hook) = hub.auth().and_then(Authenticator::hook)
        {
            let request = hook_request(&scope, hub.replica(), inbox.name().as_str());
            match hook.ask(&request).await {
                Ok(answer) => identity = Some(answer),
                Err(refusal) => return Err(refuse_identity(&hub, refusal)),
            }
        }
        if let Some(identity) = &identity {
            tracing::debug!(user = identity.user(), "identified");
        }
        scope.identity = identity.map(Arc::new);
        let mut cx = Context::new(
            Arc::new(scope),
            inbox.name().clone(),
            Arc::clone(hub.layer()),
            Arc::clone(hub.metrics()),
            limits.max_outgoing_frames,
        );
        if let Some(recovery) = recovery {
            cx.set_recovery(recovery);
        }
        if let Some(service) = hub.service() {
            let events = scope_wants_presence(cx.scope().query_string());
            cx.set_service(std::sync::Arc::clone(service), events);
        }
        match consumer.connect(&mut cx).await {
            Ok(()) => Ok((cx, inbox)),
            Err(close) if close == Close::FORBIDDEN => {
                tracing::debug!("connection denied: a group its identity does not allow");
                hub.metrics().refused(Refusal::GroupForbidden);
                Err((StatusCode::FORBIDDEN, "not allowed to join this group\n"))
            }
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
    // The fan-out's fast path, where the consumer has a shared text and this connection sends
    // group messages as they are (no recovery positions, no presence wrapping).
    let direct = C::SHARED_TEXT
        .filter(|_| limits.direct_delivery && !cx.is_recovering() && !cx.wants_presence());
    // What the connection needs once upgraded, boxed while the upgrade is awaited: the task's
    // future keeps whatever it captured for as long as the connection lives, beside the
    // driver's own copy, so it captures one pointer instead.
    let accepted = Box::new(Accepted {
        tracked: (token, cap),
        consumer,
        cx,
        inbox,
        direct,
    });
    tokio::spawn(
        async move {
            let upgraded = match upgrade.await {
                Ok(upgraded) => upgraded,
                Err(error) => {
                    tracing::debug!(%error, "upgrade failed");
                    return;
                }
            };
            let Accepted {
                tracked: _tracked,
                consumer,
                cx,
                inbox,
                direct,
            } = Accepted::unbox(accepted);
            let limits = hub.limits();
            let config = WebSocketConfig::default()
                .read_buffer_size(limits.read_buffer_size)
                .write_buffer_size(0)
                .max_write_buffer_size(limits.max_write_buffer_size)
                .max_message_size(Some(limits.max_message_size))
                .max_frame_size(Some(limits.max_message_size));
            // The server's own listener gives plain TCP sockets: the connection owns its socket
            // (no HTTP server layers in between), shared with the bypass when there is one.
            match upgraded.downcast::<TokioIo<TcpStream>>() {
                Ok(parts) => {
                    let (io, inbox) = own_socket(parts, inbox, direct, &hub);
                    let socket =
                        WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
                    driver::run(socket, consumer, cx, inbox, &hub, direct.is_some()).await;
                }
                // Any other stream (none today): as hyper hands it over, without the bypass.
                // Boxed, so that the task of every connection is not as large as both paths.
                Err(upgraded) => {
                    let io =
                        FrameMeter::new(TokioIo::new(upgraded), limits.max_messages_per_second);
                    Box::pin(async move {
                        let socket =
                            WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
                        driver::run(socket, consumer, cx, inbox, &hub, false).await;
                    })
                    .await;
                }
            }
        }
        .instrument(span),
    );
    let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    if credentials.subprotocol {
        // Browsers fail a handshake that offered subprotocols and got none back.
        headers.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("bearer"),
        );
    }
    response
}

/// What an accepted handshake hands to its connection's task.
struct Accepted<C> {
    /// Held until the connection ends: its place under the caps and in the shutdown's count.
    tracked: (TaskTrackerToken, CapGuard),
    consumer: C,
    cx: Context,
    inbox: Inbox,
    direct: Option<SharedText>,
}

impl<C> Accepted<C> {
    /// The contents, with the box freed now: `*boxed` in the task would free it only when the
    /// task ends, since the task's future owns the box.
    #[expect(clippy::boxed_local, reason = "taking the box is what frees it")]
    fn unbox(boxed: Box<Self>) -> Self {
        *boxed
    }
}

/// The upgraded TCP socket as the connection's I/O, shared with `inbox`'s bypass when the
/// fan-out's fast path is on. Not inline in the task: the locals it borrows would stay in the
/// task's future for the connection's life.
fn own_socket(
    parts: hyper::upgrade::Parts<TokioIo<TcpStream>>,
    mut inbox: Inbox,
    direct: Option<SharedText>,
    hub: &Hub,
) -> (FrameMeter<SplitIo>, Inbox) {
    let io = SplitIo::new(
        parts.io.into_inner(),
        parts.read_buf,
        direct,
        Arc::clone(hub.metrics()),
    );
    if direct.is_some() {
        inbox.set_bypass(Arc::clone(io.shared()) as Arc<dyn Bypass>);
    }
    (
        FrameMeter::new(io, hub.limits().max_messages_per_second),
        inbox,
    )
}

/// Whether the query asks for presence events (`presence=1`).
fn scope_wants_presence(query: &str) -> bool {
    query
        .split('&')
        .any(|pair| pair == "presence=1" || pair == "presence=true")
}

/// Counts and answers a handshake refused for its identity. The token itself is never logged.
fn refuse_identity(hub: &Hub, refusal: AuthRefusal) -> (StatusCode, &'static str) {
    tracing::debug!(reason = refusal.label(), "handshake refused: identity");
    hub.metrics().refused(Refusal::Auth(refusal));
    refusal.response()
}

/// What the connect hook is told about this handshake.
fn hook_request(scope: &Scope, replica: &str, channel: &str) -> HookRequest {
    let mut headers = std::collections::BTreeMap::new();
    for name in FORWARDED_HEADERS {
        let separator = if name == "cookie" { "; " } else { ", " };
        let values: Vec<String> = scope
            .headers
            .get_all(name)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .collect();
        if !values.is_empty() {
            headers.insert(name.to_owned(), values.join(separator));
        }
    }
    HookRequest {
        path: scope.path.clone(),
        query_string: scope.query_string.clone(),
        route_kwargs: scope.url_route.kwargs.iter().cloned().collect(),
        headers,
        client: scope.client.map(|c| c.to_string()),
        replica: replica.to_owned(),
        channel: channel.to_owned(),
    }
}
