//! The fan-out's fast path (`--direct-delivery`): a group message written to the sockets of idle
//! members by the task that received it.
//!
//! Without it, a group message reaches each local member through its inbox: queued, the
//! member's task woken and scheduled, its loop polled, the consumer's `event` run, the frame
//! encoded and written. With it, when the consumer says a message's text is the same for every
//! member ([`Consumer::SHARED_TEXT`](crate::consumer::Consumer::SHARED_TEXT)), the frame is
//! encoded once per message on each thread and written from the delivering task, with one
//! `write` per member and nothing else, to every member that waits with nothing queued: the
//! inbox's [`Bypass`], which the member's loop arms only while it has nothing in flight.
//!
//! The socket is split: the member's task reads its half as before, and both tasks write
//! through one [`Writer`] under a lock, each write a whole frame. A write the socket takes
//! only in part leaves its rest with the writer, and nothing else is written before it: the
//! loop's own writes send it first ([`SplitIo`]), and a direct write is refused while any
//! frame is partly written ([`WriterState::clean`]). The loop disarms the bypass on every event
//! it handles, so a frame it sends can never be overtaken by a message that arrived later.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use channels_layer::{Bypass, Message, Taken};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::consumer::SharedText;
use crate::metrics::Metrics;

/// One connection's socket as its task ([`SplitIo`]) and the inbox's [`Bypass`] share it: one
/// allocation for both. The stream is used through its readiness (`&self`), so reads need no
/// lock; writes take the lock, so frames never interleave.
#[derive(Debug)]
pub(crate) struct Shared {
    stream: TcpStream,
    writes: Mutex<Writes>,
    /// The consumer's shared text: set when this socket has a bypass.
    render: Option<SharedText>,
    metrics: Arc<Metrics>,
}

#[derive(Debug, Default)]
struct Writes {
    /// The rest of a frame a direct write put on the socket in part: written before anything
    /// else.
    pending: Bytes,
    /// Set while a frame of the connection's own is partly written (tungstenite hands over its
    /// whole buffer each time, so a write that takes it all ends every frame in it).
    partial: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Writes> {
        self.writes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes `buf` as far as the socket takes it now, registering for write readiness when it
    /// takes nothing.
    fn poll_write_some(&self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.stream.poll_write_ready(cx))?;
            match self.stream.try_write(buf) {
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
                Ok(0) if !buf.is_empty() => {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                result => return Poll::Ready(result),
            }
        }
    }

    /// Writes what a direct write left, as far as the socket takes it.
    fn poll_pending(&self, writes: &mut Writes, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !writes.pending.is_empty() {
            let n = ready!(self.poll_write_some(cx, &writes.pending))?;
            writes.pending.advance(n);
        }
        Poll::Ready(Ok(()))
    }
}

/// A TCP socket after the WebSocket upgrade, read by the connection's task (after what the
/// HTTP server had already read) and written by it and, with the fast path, by the inbox's
/// bypass, through [`Shared`].
#[derive(Debug)]
pub(crate) struct SplitIo {
    /// Bytes the HTTP server read past the upgrade request (the client's first frames).
    prefix: Bytes,
    shared: Arc<Shared>,
}

impl SplitIo {
    /// Wraps `stream`; `prefix` is what was already read from it. `render` and `metrics` are
    /// for the bypass ([`shared`](Self::shared)), if the connection has one.
    pub(crate) fn new(
        stream: TcpStream,
        prefix: Bytes,
        render: Option<SharedText>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            // Copied: a slice of the HTTP server's read buffer, empty or not, would keep all of
            // it (kilobytes) alive for as long as the connection lives.
            prefix: Bytes::copy_from_slice(&prefix),
            shared: Arc::new(Shared {
                stream,
                writes: Mutex::default(),
                render,
                metrics,
            }),
        }
    }

    /// The connection's [`Bypass`].
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }
}

impl AsyncRead for SplitIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        loop {
            ready!(self.shared.stream.poll_read_ready(cx))?;
            match self.shared.stream.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
                Err(error) => return Poll::Ready(Err(error)),
            }
        }
    }
}

impl AsyncWrite for SplitIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let shared = &*self.shared;
        let mut writes = shared.lock();
        ready!(shared.poll_pending(&mut writes, cx))?;
        let n = ready!(shared.poll_write_some(cx, buf))?;
        writes.partial = n < buf.len();
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let shared = &*self.shared;
        let mut writes = shared.lock();
        shared.poll_pending(&mut writes, cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let shared = &*self.shared;
        let mut writes = shared.lock();
        ready!(shared.poll_pending(&mut writes, cx))?;
        // The write direction only, as a TCP stream's own shutdown does.
        Poll::Ready(socket2::SockRef::from(&shared.stream).shutdown(std::net::Shutdown::Write))
    }
}

impl Bypass for Shared {
    fn take(&self, msg: &Message) -> Taken {
        // The runtime's own messages (presence events, the API's disconnect) are its to handle.
        if matches!(
            msg.message_type(),
            Some(crate::presence::EVENT_TYPE | crate::presence::DISCONNECT_TYPE)
        ) {
            return Taken::Declined;
        }
        let Some(frame) = self.render.and_then(|render| shared_frame(msg, render)) else {
            return Taken::Declined;
        };
        let mut writes = self.lock();
        if writes.partial || !writes.pending.is_empty() {
            return Taken::Declined;
        }
        match self.stream.try_write(&frame) {
            Ok(n) if n == frame.len() => {
                self.metrics.message_out_direct();
                Taken::Done
            }
            // Part of the frame is on the wire: the connection's task writes the rest before
            // anything else.
            Ok(n) => {
                writes.pending = frame.slice(n..);
                self.metrics.message_out_direct();
                Taken::NeedsReader
            }
            // Full, or broken: the connection's own loop takes it (and sees the error).
            Err(_) => Taken::Declined,
        }
    }
}

/// The last frame rendered on this thread: the members of a group that get one message are
/// served one after the other, so one entry serves them all.
struct Rendered {
    msg: Message,
    /// The render function's address: two functions that share an address render alike.
    render: usize,
    /// `None`: the message has no shared text.
    frame: Option<Bytes>,
}

thread_local! {
    static LAST_RENDERED: RefCell<Option<Rendered>> = const { RefCell::new(None) };
}

/// The text frame of `msg` as `render` makes it, encoded once per message and thread.
fn shared_frame(msg: &Message, render: SharedText) -> Option<Bytes> {
    let key = render as usize;
    LAST_RENDERED.with_borrow_mut(|last| {
        if let Some(rendered) = last
            && rendered.render == key
            && rendered.msg.same(msg)
        {
            return rendered.frame.clone();
        }
        let frame = render(msg).map(|text| text_frame(text.as_bytes()));
        *last = Some(Rendered {
            msg: msg.clone(),
            render: key,
            frame: frame.clone(),
        });
        frame
    })
}

/// An unmasked, final text frame carrying `payload` (RFC 6455 5.2: servers do not mask).
fn text_frame(payload: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(payload.len() + 10);
    out.push(0x81);
    match payload.len() {
        len @ 0..=125 => out.push(len as u8),
        len @ 126..=0xffff => {
            out.push(126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            out.push(127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tungstenite::protocol::frame::Frame;
    use tungstenite::protocol::frame::coding::{Data, OpCode};

    /// Our encoding is tungstenite's, at every length class.
    #[test]
    fn text_frames_match_tungstenite() {
        for len in [0, 1, 125, 126, 127, 65_535, 65_536, 70_000] {
            let payload = "é".repeat(len / 2) + &"a".repeat(len % 2);
            let mut theirs = Vec::new();
            Frame::message(payload.clone(), OpCode::Data(Data::Text), true)
                .format(&mut theirs)
                .expect("format");
            assert_eq!(
                &text_frame(payload.as_bytes())[..],
                &theirs[..],
                "length {len}"
            );
        }
    }
}
