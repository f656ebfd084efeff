//! The per-connection loop: one task selects over shutdown, client frames and the inbox.
//!
//! This replaces Channels' `await_many_dispatch`. Each iteration waits for one event, hands it
//! to the consumer, then writes the frames the handler queued. Writes have a deadline: a client
//! that does not read is closed with [`Close::SLOW`], and while it is stuck its inbox fills and
//! the layer drops (and counts) further group messages for it, so it never holds up anyone else.

use axum::extract::ws::{CloseFrame, Message as Frame, Utf8Bytes, WebSocket};
use channels_layer::{Inbox, Message};
use futures_util::SinkExt;
use tokio::time::Instant;

use super::context::{ClientMessage, Context, Outgoing};
use super::{Close, Consumer};
use crate::state::Limits;

enum Event {
    /// The server began shutting down: pick this connection's drain time.
    ShutdownBegan,
    /// This connection's drain time came: close it.
    Drain,
    Frame(Option<Result<Frame, axum::Error>>),
    Layer(Option<Message>),
}

/// How the loop ended.
enum End {
    /// The client closed (with its code, if any) or the connection dropped.
    ByClient(Option<u16>),
    /// The server closes with this code.
    ByServer(Close),
    /// The socket is unusable; nothing more can be sent.
    Broken,
}

/// Runs the connection to its end. `cx` comes from `connect`, which already accepted.
pub(crate) async fn run<C: Consumer>(
    mut socket: WebSocket,
    mut consumer: C,
    mut cx: Context,
    mut inbox: Inbox,
) {
    let state = cx.state().clone();
    let limits = *state.limits();
    let shutdown = state.shutdown().clone();
    state.metrics().connection_opened();
    tracing::debug!(channel = %cx.channel_name(), "connected");
    // Frames queued by `connect`, and a close it asked for.
    let mut end = match flush(&mut socket, &mut cx, &limits).await {
        Err(end) => Some(end),
        Ok(()) => cx.close.take().map(End::ByServer),
    };
    let mut drain_at: Option<Instant> = None;
    while end.is_none() {
        let going_away = async {
            match drain_at {
                Some(at) => {
                    tokio::time::sleep_until(at).await;
                    Event::Drain
                }
                None => {
                    shutdown.cancelled().await;
                    Event::ShutdownBegan
                }
            }
        };
        let event = tokio::select! {
            biased;
            event = going_away => event,
            frame = socket.recv() => Event::Frame(frame),
            msg = inbox.recv() => Event::Layer(msg),
        };
        let handled = match event {
            Event::ShutdownBegan => {
                // Keep serving until this connection's batch is due.
                drain_at = Some(Instant::now() + state.drain_delay());
                Ok(())
            }
            Event::Drain => Err(End::ByServer(Close::GOING_AWAY)),
            Event::Frame(frame) => {
                if matches!(frame, Some(Ok(Frame::Text(_) | Frame::Binary(_)))) {
                    state.metrics().message_in();
                }
                on_frame(&mut consumer, &mut cx, frame).await
            }
            Event::Layer(Some(msg)) => on_layer(&mut consumer, &mut cx, &mut inbox, msg).await,
            Event::Layer(None) => {
                // The layer was flushed or closed under us: this connection cannot get group
                // messages any more, so it should reconnect.
                tracing::warn!(channel = %cx.channel_name(), "inbox ended: layer flushed or closed");
                Err(End::ByServer(Close::INTERNAL))
            }
        };
        end = match handled {
            Err(e) => Some(e),
            Ok(()) => match flush(&mut socket, &mut cx, &limits).await {
                Err(e) => Some(e),
                Ok(()) => cx.close.take().map(End::ByServer),
            },
        };
    }
    let code = match end {
        Some(End::ByClient(code)) => {
            state.metrics().closed_by_client(code);
            code
        }
        Some(End::ByServer(close)) => {
            state.metrics().closed_by_server(close.code);
            close_socket(&mut socket, &close, &limits).await;
            None
        }
        Some(End::Broken) | None => {
            state.metrics().closed_by_client(None);
            None
        }
    };
    // Channels' websocket_disconnect: leave the groups, then tell the consumer.
    cx.discard_all_groups().await;
    consumer.disconnect(&mut cx, code).await;
    drop(inbox);
    state.metrics().connection_closed();
    tracing::debug!(close_code = ?code, "disconnected");
}

async fn on_frame<C: Consumer>(
    consumer: &mut C,
    cx: &mut Context,
    frame: Option<Result<Frame, axum::Error>>,
) -> Result<(), End> {
    let msg = match frame {
        None => return Err(End::ByClient(None)),
        Some(Ok(Frame::Text(text))) => ClientMessage::Text(text.as_str().to_owned()),
        Some(Ok(Frame::Binary(bytes))) => ClientMessage::Bytes(bytes.to_vec()),
        // tungstenite answers pings itself and queues the pong for the next write.
        Some(Ok(Frame::Ping(_) | Frame::Pong(_))) => return Ok(()),
        Some(Ok(Frame::Close(frame))) => return Err(End::ByClient(frame.map(|f| f.code))),
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
    msg: Message,
) -> Result<(), End> {
    consumer.event(cx, msg).await.map_err(End::ByServer)?;
    while cx.outgoing.len() < WRITE_BATCH {
        let Some(next) = inbox.try_recv() else { break };
        consumer.event(cx, next).await.map_err(End::ByServer)?;
    }
    Ok(())
}

/// Frames written per flush at most when messages are waiting.
const WRITE_BATCH: usize = 64;

/// Maps a read error: an oversized message gets 1009, a protocol violation 1002, and anything
/// else means the connection is gone.
fn read_error(error: axum::Error) -> End {
    let inner = error.into_inner();
    match inner.downcast_ref::<tungstenite::Error>() {
        Some(tungstenite::Error::Capacity(reason)) => {
            tracing::info!(%reason, "client message over the size limit");
            End::ByServer(Close::TOO_BIG)
        }
        Some(tungstenite::Error::Protocol(reason)) => {
            tracing::info!(%reason, "client broke the WebSocket protocol");
            End::ByServer(Close::new(1002, "protocol error"))
        }
        Some(tungstenite::Error::Utf8(_)) => End::ByServer(Close::new(1007, "invalid utf-8")),
        _ => {
            tracing::debug!(error = %inner, "connection lost");
            End::ByClient(None)
        }
    }
}

/// Writes every queued frame, then flushes once.
async fn flush(socket: &mut WebSocket, cx: &mut Context, limits: &Limits) -> Result<(), End> {
    if cx.outgoing.is_empty() {
        return Ok(());
    }
    cx.state().metrics().messages_out(cx.outgoing.len());
    let write = async {
        while let Some(frame) = cx.outgoing.pop_front() {
            let frame = match frame {
                Outgoing::Text(text) => Frame::Text(text.into()),
                Outgoing::Bytes(bytes) => Frame::Binary(bytes.into()),
            };
            socket.feed(frame).await?;
        }
        socket.flush().await
    };
    match tokio::time::timeout(limits.write_timeout, write).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => {
            tracing::debug!(%error, "write failed: connection lost");
            Err(End::Broken)
        }
        Err(_) => {
            tracing::info!(close_code = Close::SLOW.code, "client not reading: closing");
            // The close frame waits behind the unread data; `close_socket` bounds that wait.
            Err(End::ByServer(Close::SLOW))
        }
    }
}

/// Sends our close frame and waits (bounded) for the client's, so the close is clean.
async fn close_socket(socket: &mut WebSocket, close: &Close, limits: &Limits) {
    tracing::debug!(close_code = close.code, reason = %close.reason, "closing");
    let frame = Frame::Close(Some(CloseFrame {
        code: close.code,
        reason: Utf8Bytes::from(close.reason.as_ref()),
    }));
    let handshake = async {
        if socket.send(frame).await.is_err() {
            return;
        }
        // Read until the client's close frame (or the end), discarding anything else.
        while let Some(Ok(frame)) = socket.recv().await {
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
