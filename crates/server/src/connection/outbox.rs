//! The frames waiting for one client, and the slow-consumer rule.
//!
//! Handlers queue frames here instead of waiting for the socket, so the connection keeps taking
//! its inbox while a client is slow to read, and what waits for the client is counted in bytes.
//! The rule judges what the client fails to take, not how much arrived at once:
//!
//! * While more than `--max-queued-bytes` wait (frames not yet taken by the operating system),
//!   the connection takes nothing new: its inbox keeps what arrives, up to its capacity (past
//!   it, group messages are dropped for this client and counted), and its client frames wait in
//!   the socket. A burst larger than the budget thus reaches a client that reads, however large
//!   the burst, and memory stays bounded.
//! * The driver closes the connection with [`Close::SLOW`](crate::consumer::Close::SLOW) (4008) when the
//!   writes made no progress for `--write-timeout-secs` while something waits (the client
//!   stopped reading), or when the queue stayed over its budget for that long (the client
//!   reads, but far slower than its messages come).
//!
//! Writing happens while the driver waits for its next event, in the same poll as the socket
//! read ([`Outbox::poll_write`]), so one task serves both directions.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;
use tungstenite::Message as Frame;

use super::Socket;

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
    /// Since when more than the budget waits.
    over_since: Option<Instant>,
    write_timeout: Duration,
    /// `--max-queued-bytes`; 0: no budget.
    budget: usize,
}

impl Outbox {
    pub(super) fn new(write_timeout: Duration, budget: usize) -> Self {
        Self {
            frames: VecDeque::new(),
            bytes: 0,
            in_flight: None,
            unflushed: false,
            progress_at: Instant::now(),
            check_at: None,
            over_since: None,
            write_timeout,
            budget,
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
        if self.over_since.is_none() && self.over_budget() {
            self.over_since = Some(Instant::now());
        }
    }

    /// Something was written to the socket outside this outbox and waits to be flushed (the
    /// rest of a frame a direct write left): flush it, and judge the client's progress on it
    /// as on a frame of ours.
    pub(super) fn flush_later(&mut self) {
        if self.is_idle() {
            self.progress_at = Instant::now();
            self.check_at
                .get_or_insert(self.progress_at + self.write_timeout);
        }
        self.unflushed = true;
    }

    /// Whether as much as the budget waits: the connection takes nothing new until the client
    /// has read some of it.
    pub(super) fn over_budget(&self) -> bool {
        self.over_budget_with(0)
    }

    /// Whether as much as the budget would wait with `extra` more bytes.
    pub(super) fn over_budget_with(&self, extra: usize) -> bool {
        self.budget > 0 && self.bytes + extra >= self.budget
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

    /// Why the client counts as slow, if it does: the writes made no progress for the write
    /// timeout while data waits, or the queue stayed over its budget that long. Called when the
    /// check time has come; moves the next check on.
    pub(super) fn stalled(&mut self, now: Instant) -> Option<&'static str> {
        if self.check_at.is_none_or(|at| at > now) {
            return None;
        }
        if self.is_idle() {
            self.check_at = None;
            return None;
        }
        let stuck = self.progress_at + self.write_timeout;
        if stuck <= now {
            return Some("write blocked past the write timeout");
        }
        let behind = self.over_since.map(|since| since + self.write_timeout);
        if behind.is_some_and(|at| at <= now) {
            return Some("over its queue budget for the write timeout");
        }
        self.check_at = Some(behind.map_or(stuck, |at| at.min(stuck)));
        None
    }

    /// Writes as much as the socket takes now; registers for a wake-up when it takes no more.
    /// Returns the socket's error, if any.
    pub(super) fn poll_write(
        &mut self,
        socket: &mut impl Socket,
        cx: &mut Context<'_>,
    ) -> Result<(), tungstenite::Error> {
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
    pub(super) async fn write_all(
        &mut self,
        socket: &mut impl Socket,
    ) -> Result<(), tungstenite::Error> {
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
            if self.over_since.is_some() && !self.over_budget() {
                self.over_since = None;
            }
        }
    }
}

fn payload_len(frame: &Frame) -> usize {
    match frame {
        Frame::Text(text) => text.len(),
        Frame::Binary(bytes) | Frame::Ping(bytes) | Frame::Pong(bytes) => bytes.len(),
        Frame::Close(close) => close.as_ref().map_or(0, |c| c.reason.len() + 2),
        Frame::Frame(frame) => frame.len(),
    }
}
