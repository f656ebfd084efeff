//! The frames waiting for one client, and the slow-consumer rule.
//!
//! Handlers queue frames here instead of waiting for the socket, so the connection keeps taking
//! its inbox while a client is slow to read, and what waits for the client is counted in bytes.
//! The driver closes the connection with [`Close::SLOW`](super::Close::SLOW) (4008) when
//! either
//!
//! * more than `--max-queued-bytes` wait (frames not yet taken by the operating system: the
//!   client stopped reading while messages keep coming), or
//! * the writes made no progress for `--write-timeout-secs` while something waits (the client
//!   stopped reading, whatever the traffic).
//!
//! Writing happens while the driver waits for its next event, in the same poll as the socket
//! read ([`Outbox::poll_write`]), so one task serves both directions.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ws::{Message as Frame, WebSocket};
use futures_util::Sink;
use tokio::time::Instant;

/// Frames for one client, in order.
#[derive(Debug)]
pub(super) struct Outbox {
    frames: VecDeque<Frame>,
    /// Payload bytes of the queued frames and of the frame being written.
    bytes: usize,
    /// Payload bytes of the frame handed to the socket and not yet known to be written.
    in_flight: Option<usize>,
    /// A frame was handed to the socket since the last flush.
    unflushed: bool,
    /// The last write progress, or when data began to wait (meaningful while not idle).
    progress_at: Instant,
    /// When the write stall is checked next: set when data begins to wait, moved on by the
    /// check itself, so steady traffic does not reset a timer per frame.
    check_at: Option<Instant>,
    write_timeout: Duration,
}

impl Outbox {
    pub(super) fn new(write_timeout: Duration) -> Self {
        Self {
            frames: VecDeque::new(),
            bytes: 0,
            in_flight: None,
            unflushed: false,
            progress_at: Instant::now(),
            check_at: None,
            write_timeout,
        }
    }

    /// Queues `frame` behind the others.
    pub(super) fn push(&mut self, frame: Frame) {
        if self.is_idle() {
            self.progress_at = Instant::now();
            self.check_at
                .get_or_insert(self.progress_at + self.write_timeout);
        }
        self.bytes += payload_len(&frame);
        self.frames.push_back(frame);
    }

    /// Queues a control frame (a ping) ahead of the data frames not yet started, so a client
    /// that reads a long backlog still sees it in time.
    pub(super) fn push_control(&mut self, frame: Frame) {
        self.push(frame);
        self.frames.rotate_right(1);
    }

    /// Bytes waiting for the client.
    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Nothing waits and everything written was flushed.
    pub(super) fn is_idle(&self) -> bool {
        self.frames.is_empty() && self.in_flight.is_none() && !self.unflushed
    }

    /// When [`stalled`](Self::stalled) should be asked next.
    pub(super) fn check_at(&self) -> Option<Instant> {
        self.check_at
    }

    /// Whether the writes have made no progress for the write timeout while data waits. Called
    /// when the check time has come; moves the next check on.
    pub(super) fn stalled(&mut self, now: Instant) -> bool {
        if self.check_at.is_none_or(|at| at > now) {
            return false;
        }
        if self.is_idle() {
            self.check_at = None;
            return false;
        }
        let deadline = self.progress_at + self.write_timeout;
        if deadline <= now {
            return true;
        }
        self.check_at = Some(deadline);
        false
    }

    /// Writes as much as the socket takes now; registers for a wake-up when it takes no more.
    /// Returns the socket's error, if any.
    pub(super) fn poll_write(
        &mut self,
        socket: &mut WebSocket,
        cx: &mut Context<'_>,
    ) -> Result<(), axum::Error> {
        loop {
            if self.frames.is_empty() {
                if !self.unflushed {
                    return Ok(());
                }
                return match Pin::new(&mut *socket).poll_flush(cx) {
                    Poll::Pending => Ok(()),
                    Poll::Ready(result) => {
                        result?;
                        self.unflushed = false;
                        self.written();
                        Ok(())
                    }
                };
            }
            // Ready once the previous frame has been written out in full.
            match Pin::new(&mut *socket).poll_ready(cx) {
                Poll::Pending => return Ok(()),
                Poll::Ready(result) => result?,
            }
            self.written();
            let Some(frame) = self.frames.pop_front() else {
                continue;
            };
            self.in_flight = Some(payload_len(&frame));
            self.unflushed = true;
            Pin::new(&mut *socket).start_send(frame)?;
        }
    }

    /// Writes everything that waits (for a clean close).
    pub(super) async fn write_all(&mut self, socket: &mut WebSocket) -> Result<(), axum::Error> {
        std::future::poll_fn(|cx| {
            self.poll_write(socket, cx)?;
            if self.is_idle() {
                Poll::Ready(Ok(()))
            } else {
                Poll::Pending
            }
        })
        .await
    }

    /// The frame in flight is written: count the progress.
    fn written(&mut self) {
        if let Some(len) = self.in_flight.take() {
            self.bytes -= len;
            self.progress_at = Instant::now();
        }
    }
}

fn payload_len(frame: &Frame) -> usize {
    match frame {
        Frame::Text(text) => text.len(),
        Frame::Binary(bytes) | Frame::Ping(bytes) | Frame::Pong(bytes) => bytes.len(),
        Frame::Close(close) => close.as_ref().map_or(0, |c| c.reason.len() + 2),
    }
}
