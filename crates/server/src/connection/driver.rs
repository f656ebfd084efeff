//! The per-connection loop: one task selects over shutdown, client frames, the inbox and one
//! timer.
//!
//! This replaces Channels' `await_many_dispatch`. Each iteration waits for one event, hands it
//! to the consumer, and queues the frames the handler produced in the connection's [`Outbox`],
//! which is written while the loop waits for the next event (in the same poll as the socket
//! read: this loop is the only place that reads the socket). While `--max-queued-bytes` wait
//! for the client, the loop takes nothing new; a client that takes nothing for
//! `--write-timeout-secs` is closed with [`Close::SLOW`] ([`Outbox`] has the rule), so it never
//! holds up anyone else, and the memory it can pin is bounded.
//!
//! The one timer is set to the earliest of: this connection's drain time (after a shutdown
//! began), its token's expiry ([`Close::TOKEN_EXPIRED`]), the keepalive check ([`Keepalive`]: ping a silent client, close with
//! [`Close::NO_PONG`] if it does not answer) and the write-stall check. Frames from the client
//! are metered below tungstenite ([`FrameMeter`](super::meter::FrameMeter): past the rate,
//! [`Close::RATE_LIMIT`]).

use std::task::Poll;
use std::time::SystemTime;

use channels_layer::{Inbox, Message, Received, Value};
use futures_util::StreamExt;
use tokio::time::Instant;
use tungstenite::Message as Frame;
use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;

use super::Socket;
use super::meter::RateLimited;
use super::outbox::Outbox;
use super::watch::{Keepalive, Liveness};
use crate::consumer::recovery::Admit;
use crate::consumer::{ClientMessage, Close, Consumer, Context, Outgoing};
use crate::hub::{Hub, Limits};
use crate::metrics::CloseLabel;

enum Event {
    /// The server began shutting down: pick this connection's drain time.
    ShutdownBegan,
    /// The connection's timer: the drain time, a keepalive check or a write check is due.
    Timer,
    /// The client took enough of its queue to be under its budget again.
    Resumed,
    Frame(Option<Result<Frame, tungstenite::Error>>),
    /// Writing to the socket failed: the connection is gone.
    WriteFailed(tungstenite::Error),
    Layer(Received),
}

/// How the loop ended.
enum End {
    /// The client closed (with its close frame, if any) or the connection dropped.
    ByClient(Option<CloseFrame>),
    /// The server closes with this code.
    ByServer(Close),
    /// The socket is unusable; nothing more can be sent.
    Broken,
}

/// Runs the connection to its end. `cx` comes from `connect`, which already accepted. With
/// `bypass`, the inbox has a [`Bypass`](channels_layer::Bypass) that writes to `socket`
/// ([`direct`](super::direct)): the loop arms it while it waits with nothing to write.
///
/// A plain function returning an `async move` block rather than an `async fn`: an `async fn`
/// moves each argument into a local of its own, so its future holds every argument twice (the
/// captured one and the local, about 0.7 KiB here), for as long as the connection lives.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn would keep its arguments twice"
)]
pub(crate) fn run<C: Consumer>(
    mut socket: impl Socket,
    mut consumer: C,
    mut cx: Context,
    mut inbox: Inbox,
    hub: &Hub,
    bypass: bool,
) -> impl Future<Output = ()> + Send {
    async move {
        // A reference, not a copy: the copy would live in the connection's future.
        let limits = hub.limits();
        // One wait for the whole connection: a fresh `cancelled()` per loop iteration would lock
        // the token's mutex and register (and unregister) a waiter for every message.
        let shutdown = hub.shutdown().clone();
        let shutdown = shutdown.cancelled_owned();
        tokio::pin!(shutdown);
        hub.metrics().connection_opened();
        let user = cx.service().map(|service| {
            let user = cx.user();
            service.connected(&user, cx.channel_name());
            user
        });
        tracing::debug!(channel = %cx.channel_name(), "connected");
        // In a block: a local that lives on past an await is kept in the connection's future.
        let (mut outbox, mut keepalive, timer, expires_at) = {
            let now = Instant::now();
            // A token's expiry, on this loop's clock.
            let expires_at = cx
                .scope()
                .identity()
                .and_then(|identity| identity.expires_at())
                .map(|at| now + at.duration_since(SystemTime::now()).unwrap_or_default());
            (
                Outbox::new(limits.write_timeout, limits.max_queued_bytes),
                Keepalive::new(limits.ping_interval, limits.pong_timeout, now),
                tokio::time::sleep_until(now),
                expires_at,
            )
        };
        tokio::pin!(timer);
        let mut armed: Option<Instant> = None;
        // Frames queued by `connect`, and a close it asked for.
        queue(&mut outbox, &mut cx);
        let mut end = cx.close.take().map(End::ByServer);
        if end.is_none() {
            end = Box::pin(replay(&mut consumer, &mut cx, &mut outbox))
                .await
                .err();
        }
        let mut drain_at: Option<Instant> = None;
        while end.is_none() {
            let timed = {
                let due = [
                    drain_at,
                    expires_at,
                    keepalive.check_at(),
                    outbox.check_at(),
                ]
                .into_iter()
                .flatten()
                .min();
                if let Some(due) = due
                    && armed != Some(due)
                {
                    timer.as_mut().reset(due);
                    armed = Some(due);
                }
                due.is_some()
            };
            // Over its budget, the connection takes nothing new (no client frame, no inbox
            // message) until the client has read enough; the inbox holds what arrives meanwhile,
            // up to its capacity.
            let open = !outbox.over_budget();
            // Group messages may go straight to the socket only while nothing of ours waits to be
            // written, so that none can overtake a frame sent before it.
            let arm = bypass && open && outbox.is_idle();
            let event = tokio::select! {
                biased;
                () = &mut shutdown, if drain_at.is_none() => Event::ShutdownBegan,
                () = &mut timer, if timed => Event::Timer,
                event = std::future::poll_fn(|task| {
                    // Write what waits, then read: both directions in one poll.
                    if let Err(error) = outbox.poll_write(&mut socket, task) {
                        return Poll::Ready(Event::WriteFailed(error));
                    }
                    if outbox.over_budget() {
                        return Poll::Pending;
                    }
                    if !open {
                        // Back under the budget: take the inbox again (its branch was off).
                        return Poll::Ready(Event::Resumed);
                    }
                    socket.poll_next_unpin(task).map(Event::Frame)
                }) => event,
                msg = inbox.recv_or_bypass(arm), if open => Event::Layer(msg),
            };
            if bypass && !matches!(event, Event::Layer(_)) {
                // Whatever this event makes the connection send goes before any later message.
                inbox.disarm();
            }
            let handled = match event {
                Event::ShutdownBegan => {
                    // Keep serving until this connection's batch is due.
                    drain_at = Some(Instant::now() + hub.drain_delay());
                    Ok(())
                }
                Event::Resumed => Ok(()),
                Event::Timer => {
                    // Never earlier than the time the timer was set for.
                    let now = armed.map_or_else(Instant::now, |at| Instant::now().max(at));
                    if expires_at.is_some_and(|at| at <= now) {
                        tracing::debug!("token expired: closing");
                        Err(End::ByServer(Close::TOKEN_EXPIRED))
                    } else {
                        on_timer(now, drain_at, &mut outbox, &mut keepalive)
                    }
                }
                Event::Frame(frame) => {
                    keepalive.seen(Instant::now());
                    if matches!(frame, Some(Ok(Frame::Text(_) | Frame::Binary(_)))) {
                        hub.metrics().message_in();
                    }
                    // The socket branch comes first in the select: without taking what waits in
                    // the inbox here, a client that sends without pause would starve its own inbox
                    // until it overflowed.
                    Box::pin(async {
                        on_frame(&mut consumer, &mut cx, frame).await?;
                        drain_inbox(&mut consumer, &mut cx, &mut inbox, &outbox).await
                    })
                    .await
                }
                Event::WriteFailed(error) => {
                    tracing::debug!(%error, "write failed: connection lost");
                    Err(End::Broken)
                }
                // Boxed like every handler: inline, the largest handler future would sit in every
                // connection's task for its whole life (one allocation per batch of messages; the
                // fan-out's fast path does not come here).
                Event::Layer(Received::Message(msg)) => {
                    Box::pin(on_layer(&mut consumer, &mut cx, &mut inbox, &outbox, msg)).await
                }
                Event::Layer(Received::Woken) => {
                    // The bypass left part of a frame with the socket: flush it before anything.
                    outbox.flush_later();
                    Ok(())
                }
                Event::Layer(Received::Ended) => {
                    // The layer was flushed or closed under us: this connection cannot get group
                    // messages any more, so it should reconnect.
                    tracing::warn!(
                        channel = %cx.channel_name(),
                        "inbox ended: layer flushed or closed"
                    );
                    Err(End::ByServer(Close::INTERNAL))
                }
            };
            queue(&mut outbox, &mut cx);
            end = match handled {
                Err(e) => Some(e),
                Ok(()) => cx.close.take().map(End::ByServer),
            };
            if end.is_none() && cx.is_recovering() {
                // A group joined by this handler may have history to replay.
                end = Box::pin(replay(&mut consumer, &mut cx, &mut outbox))
                    .await
                    .err();
            }
        }
        // Channels' websocket_disconnect: leave the groups, then tell the consumer. The groups are
        // left first, so a connection waiting for its close handshake takes no group messages.
        //
        // The awaits below and the handlers in the loop are boxed: the task of an idle
        // connection holds only the loop's own state, not room for the largest handler future
        // it might run (a group send through Redis).
        Box::pin(cx.discard_all_groups()).await;
        let code = match end {
            Some(End::ByClient(frame)) => {
                hub.metrics()
                    .closed_by_client(CloseLabel::of_client(frame.as_ref()));
                Box::pin(finish_client_close(&mut socket, limits)).await;
                frame.map(|f| u16::from(f.code))
            }
            Some(End::ByServer(close)) => {
                hub.metrics().closed_by_server(close.code);
                Box::pin(close_socket(&mut socket, &mut outbox, &close, limits)).await;
                None
            }
            Some(End::Broken) | None => {
                hub.metrics().closed_by_client(CloseLabel::None);
                None
            }
        };
        Box::pin(consumer.disconnect(&mut cx, code)).await;
        if let (Some(service), Some(user)) = (cx.service(), &user) {
            service.disconnected(user, cx.channel_name());
        }
        drop(inbox);
        hub.metrics().connection_closed();
        tracing::debug!(close_code = ?code, "disconnected");
    }
}

/// The timer fired: close for the drain or a stuck client, or ping a silent one.
fn on_timer(
    now: Instant,
    drain_at: Option<Instant>,
    outbox: &mut Outbox,
    keepalive: &mut Keepalive,
) -> Result<(), End> {
    if drain_at.is_some_and(|at| at <= now) {
        return Err(End::ByServer(Close::GOING_AWAY));
    }
    if let Some(stall) = outbox.stalled(now) {
        channels_layer::log_limited!(
            info,
            close_code = Close::SLOW.code,
            queued_bytes = outbox.bytes(),
            "client not reading: {stall}, closing"
        );
        return Err(End::ByServer(Close::SLOW));
    }
    match keepalive.check(now) {
        Liveness::Fine => Ok(()),
        Liveness::Ping => {
            outbox.push_control(Frame::Ping(axum::body::Bytes::new()));
            Ok(())
        }
        Liveness::Dead => {
            channels_layer::log_limited!(
                info,
                close_code = Close::NO_PONG.code,
                "client did not answer a ping: closing"
            );
            Err(End::ByServer(Close::NO_PONG))
        }
    }
}

async fn on_frame<C: Consumer>(
    consumer: &mut C,
    cx: &mut Context,
    frame: Option<Result<Frame, tungstenite::Error>>,
) -> Result<(), End> {
    let msg = match frame {
        None => return Err(End::ByClient(None)),
        Some(Ok(Frame::Text(text))) => ClientMessage::Text(text.as_str().to_owned()),
        Some(Ok(Frame::Binary(bytes))) => ClientMessage::Bytes(bytes.to_vec()),
        // tungstenite answers pings itself and queues the pong for the next write.
        Some(Ok(Frame::Ping(_) | Frame::Pong(_) | Frame::Frame(_))) => return Ok(()),
        Some(Ok(Frame::Close(frame))) => return Err(End::ByClient(frame)),
        Some(Err(error)) => return Err(read_error(error)),
    };
    consumer.receive(cx, msg).await.map_err(End::ByServer)
}

/// Handles a layer message, then whatever else is already queued (up to a batch), so that one
/// flush (one write) carries them all: under load this turns N syscalls into one.
async fn on_layer<C: Consumer>(
    consumer: &mut C,
    cx: &mut Context,
    inbox: &mut Inbox,
    outbox: &Outbox,
    msg: Message,
) -> Result<(), End> {
    deliver(consumer, cx, msg).await?;
    drain_inbox(consumer, cx, inbox, outbox).await
}

/// Hands a live layer message to the consumer; in recovery mode only in offset order
/// (duplicates skipped, a gap closes with [`Close::MISSED`]), with its position for the frames
/// it produces.
async fn deliver<C: Consumer>(consumer: &mut C, cx: &mut Context, msg: Message) -> Result<(), End> {
    if cx.service().is_some() && runtime_message(cx, &msg)? {
        return Ok(());
    }
    if !cx.is_recovering() {
        return consumer.event(cx, msg).await.map_err(End::ByServer);
    }
    match cx.admit(&msg) {
        Ok(Admit::Deliver) => {}
        Ok(Admit::Duplicate) => return Ok(()),
        Err(close) => {
            cx.metrics().missed();
            return Err(End::ByServer(close));
        }
    }
    cx.set_current(msg.position());
    let handled = consumer.event(cx, msg).await;
    cx.set_current(None);
    handled.map_err(End::ByServer)
}

/// The runtime's own messages (presence events, the API's disconnect): handled here, never
/// shown to the consumer. Returns whether `msg` was one.
fn runtime_message(cx: &mut Context, msg: &Message) -> Result<bool, End> {
    match msg.message_type() {
        Some(crate::presence::EVENT_TYPE) => {
            if cx.wants_presence() {
                let event = msg.get("event").and_then(Value::as_str).unwrap_or("");
                let mut frame = serde_json::Map::new();
                frame.insert("type".to_owned(), event.into());
                if let Some(member) = msg.get("member").and_then(Value::as_map) {
                    for (key, value) in member.iter() {
                        let value = match value {
                            Value::Str(s) => serde_json::Value::from(s.as_str()),
                            Value::Float(f) => serde_json::Value::from(*f),
                            _ => continue,
                        };
                        frame.insert(key.to_owned(), value);
                    }
                }
                cx.push_raw(serde_json::Value::Object(frame).to_string())
                    .map_err(End::ByServer)?;
            }
            Ok(true)
        }
        Some(crate::presence::DISCONNECT_TYPE) => Err(End::ByServer(Close::DISCONNECTED)),
        _ => Ok(false),
    }
}

/// Hands the history messages that group joins left (recovered or recent ones) to the
/// consumer, oldest first, before any live one; their frames go to the outbox as they come.
async fn replay<C: Consumer>(
    consumer: &mut C,
    cx: &mut Context,
    outbox: &mut Outbox,
) -> Result<(), End> {
    while let Some(msg) = cx.next_replay() {
        cx.set_current(msg.position());
        let handled = consumer.event(cx, msg).await;
        cx.set_current(None);
        queue(outbox, cx);
        handled.map_err(End::ByServer)?;
        if let Some(close) = cx.close.take() {
            return Err(End::ByServer(close));
        }
    }
    Ok(())
}

/// Handles the layer messages already waiting in the inbox, up to a write batch or the
/// connection's byte budget; never waits.
async fn drain_inbox<C: Consumer>(
    consumer: &mut C,
    cx: &mut Context,
    inbox: &mut Inbox,
    outbox: &Outbox,
) -> Result<(), End> {
    while cx.outgoing.len() < WRITE_BATCH && !outbox.over_budget_with(cx.outgoing_bytes()) {
        let Some(next) = inbox.try_recv() else {
            // In recovery mode a message dropped at the end of a burst has no later message to
            // reveal the gap: the drop itself does, once everything queued is delivered.
            if cx.is_recovering() && inbox.take_lost() {
                cx.metrics().missed();
                return Err(End::ByServer(Close::MISSED));
            }
            break;
        };
        deliver(consumer, cx, next).await?;
    }
    Ok(())
}

/// Frames written per flush at most when messages are waiting.
const WRITE_BATCH: usize = 64;

/// Maps a read error: an oversized message gets 1009, a protocol violation 1002, and anything
/// else means the connection is gone.
fn read_error(error: tungstenite::Error) -> End {
    use tungstenite::error::ProtocolError;
    match error {
        tungstenite::Error::Capacity(reason) => {
            channels_layer::log_limited!(info, %reason, "client message over the size limit");
            End::ByServer(Close::TOO_BIG)
        }
        // The TCP connection ended without a close frame: the client went away (a closed tab,
        // a lost network), which is not a protocol violation.
        tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
            tracing::debug!("connection closed without a close frame");
            End::ByClient(None)
        }
        tungstenite::Error::Protocol(reason) => {
            channels_layer::log_limited!(info, %reason, "client broke the WebSocket protocol");
            End::ByServer(Close::PROTOCOL)
        }
        tungstenite::Error::Utf8(_) => End::ByServer(Close::INVALID_DATA),
        tungstenite::Error::Io(error) if error.get_ref().is_some_and(|e| e.is::<RateLimited>()) => {
            channels_layer::log_limited!(
                info,
                close_code = Close::RATE_LIMIT.code,
                "client over its frame rate: closing"
            );
            End::ByServer(Close::RATE_LIMIT)
        }
        error => {
            tracing::debug!(%error, "connection lost");
            End::ByClient(None)
        }
    }
}

/// Moves the frames the handler queued to the outbox.
fn queue(outbox: &mut Outbox, cx: &mut Context) {
    if cx.outgoing.is_empty() {
        return;
    }
    cx.metrics().messages_out(cx.outgoing.len());
    cx.clear_outgoing_bytes();
    for frame in cx.outgoing.drain(..) {
        outbox.push(match frame {
            Outgoing::Text(text) => Frame::Text(text.into()),
            Outgoing::Bytes(bytes) => Frame::Binary(bytes.into()),
        });
    }
}

/// The client closed first: tungstenite has queued our close reply, which only goes out on the
/// next read or write. Read on (bounded) until the stream ends, so the client gets a clean close
/// instead of a dropped connection (its 1006).
async fn finish_client_close(socket: &mut impl Socket, limits: &Limits) {
    let drain = async { while let Some(Ok(_)) = socket.next().await {} };
    if tokio::time::timeout(limits.close_timeout, drain)
        .await
        .is_err()
    {
        tracing::debug!("client did not finish its close handshake in time");
    }
}

/// Writes what the handlers queued before the close (unless the client is not reading), sends
/// our close frame and waits (bounded) for the client's, so the close is clean.
async fn close_socket(
    socket: &mut impl Socket,
    outbox: &mut Outbox,
    close: &Close,
    limits: &Limits,
) {
    use futures_util::SinkExt;
    tracing::debug!(close_code = close.code, reason = %close.reason, "closing");
    let frame = Frame::Close(Some(CloseFrame {
        code: CloseCode::from(close.code),
        reason: close.reason.as_ref().into(),
    }));
    let handshake = async {
        if close.code != Close::SLOW.code && outbox.write_all(socket).await.is_err() {
            return;
        }
        if socket.send(frame).await.is_err() {
            return;
        }
        // Read until the client's close frame (or the end), discarding anything else.
        while let Some(Ok(frame)) = socket.next().await {
            if matches!(frame, Frame::Close(_)) {
                break;
            }
        }
    };
    if tokio::time::timeout(limits.close_timeout, handshake)
        .await
        .is_err()
    {
        tracing::debug!("client did not answer the close frame in time");
    }
}
