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
//! The socket is shared ([`Shared`]): the member's task reads it as before, and both tasks
//! write under one lock, each write a whole frame. A direct write the socket takes only in part
//! leaves its rest under the lock, and nothing else is written before it: the loop's own writes
//! send it first ([`SplitIo`]), and a direct write is refused while any frame, the loop's own
//! or a direct one, is partly written. The loop disarms the bypass on every event it handles,
//! so a frame it sends can never be overtaken by a message that arrived later.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use channels_layer::{Bypass, Message, Taken};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
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
        let stream = &self.shared.stream;
        loop {
            ready!(stream.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            let room = unfilled.len();
            // A read that fills less than the room it had emptied the socket (epoll is edge
            // triggered): its readiness is cleared then, as tokio's own `TcpStream::poll_read`
            // does, so the next poll waits for the next edge instead of a `recv` that can only
            // answer EAGAIN (one wasted system call per client frame). `try_io` clears it when
            // its closure says `WouldBlock`; the bytes are kept in `short`. The layer's Redis
            // connections do the same (`channels_layer`'s `redis::subconn::Stream::read_some`).
            let mut short = 0;
            let read = stream.try_io(Interest::READABLE, || {
                let n = io::Read::read(&mut &*socket2::SockRef::from(stream), unfilled)?;
                if 0 < n && n < room {
                    short = n;
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                Ok(n)
            });
            match read {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock && short > 0 => {
                    buf.advance(short);
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
        // send(2) on the socket itself, not through tokio's readiness (`try_write`): that
        // costs a cache miss on the socket's readiness state per member (2-2.5 % of a replica
        // in the fan-out's profile) and is only needed to clear it on EAGAIN, which the
        // connection's own loop does when it writes what was declined here.
        match socket2::SockRef::from(&self.stream).send_with_flags(&frame, SEND_FLAGS) {
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

/// A direct write's flags: as std's `TcpStream::write` (which `try_write` ends in), a peer gone
/// is an `EPIPE` error, never a `SIGPIPE`, whatever the embedding program did with that signal.
#[cfg(any(target_os = "linux", target_os = "android"))]
const SEND_FLAGS: libc::c_int = libc::MSG_NOSIGNAL;
#[cfg(not(any(target_os = "linux", target_os = "android")))]
const SEND_FLAGS: libc::c_int = 0;

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
    use channels_layer::Value;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tungstenite::protocol::frame::Frame;
    use tungstenite::protocol::frame::coding::{Data, OpCode};

    /// The test consumer's shared text: the message's `text`.
    fn text_of(msg: &Message) -> Option<String> {
        msg.get("text").and_then(Value::as_str).map(str::to_owned)
    }

    /// A connected loopback pair with small buffers (so a few hundred kilobytes fill them): the
    /// server's end wrapped as a connection's socket with a bypass, and the client's end.
    async fn pair() -> (SplitIo, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        socket2::SockRef::from(&server)
            .set_send_buffer_size(16 * 1024)
            .expect("SO_SNDBUF");
        socket2::SockRef::from(&client)
            .set_recv_buffer_size(16 * 1024)
            .expect("SO_RCVBUF");
        let io = SplitIo::new(
            server,
            Bytes::new(),
            Some(text_of),
            Arc::new(Metrics::default()),
        );
        (io, client)
    }

    /// Reads `n` bytes from `client`.
    async fn read_n(client: &mut TcpStream, n: usize) -> Vec<u8> {
        let mut buf = vec![0; n];
        tokio::time::timeout(Duration::from_secs(10), client.read_exact(&mut buf))
            .await
            .expect("the bytes arrive")
            .expect("read");
        buf
    }

    /// While a frame of the connection's own is on the wire in part, a direct write is refused
    /// even when the socket has room again: it would land inside that frame.
    #[tokio::test]
    async fn no_direct_write_inside_a_partly_written_frame() {
        let (mut io, mut client) = pair().await;
        let own: Vec<u8> = (0..4 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
        let written = io.write(&own).await.expect("write");
        assert!(written < own.len(), "the socket took all {written} bytes");
        // Room again: the client reads what was written, the socket drains.
        let head = read_n(&mut client, written).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let msg = Message::new("chat.message").with("text", "direct");
        assert!(matches!(io.shared().take(&msg), Taken::Declined));
        // The connection's own frame ends, and only then may a direct write go.
        let rest = own.len() - written;
        let reader = tokio::spawn(async move {
            let tail = read_n(&mut client, rest).await;
            (client, tail)
        });
        io.write_all(&own[written..]).await.expect("write the rest");
        io.flush().await.expect("flush");
        let (mut client, tail) = reader.await.expect("reader");
        assert_eq!([head, tail].concat(), own);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(matches!(io.shared().take(&msg), Taken::Done));
        assert_eq!(read_n(&mut client, 8).await, text_frame(b"direct"));
    }

    /// A direct write the socket takes in part leaves the rest of its frame first in line: the
    /// connection's next write sends it before its own bytes, and no other direct write goes
    /// until it has.
    #[tokio::test]
    async fn the_rest_of_a_partly_written_direct_frame_goes_first() {
        let (mut io, mut client) = pair().await;
        let big = Message::new("chat.message").with("text", "d".repeat(4 * 1024 * 1024));
        let frame = text_frame(text_of(&big).expect("text").as_bytes());
        assert!(matches!(io.shared().take(&big), Taken::NeedsReader));
        // Room again, and part of the frame still to write: nothing else goes before it.
        let head = read_n(&mut client, 1024).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let small = Message::new("chat.message").with("text", "small");
        assert!(matches!(io.shared().take(&small), Taken::Declined));
        let own = b"the connection's own frame".to_vec();
        let total = frame.len() - head.len() + own.len();
        let reader = tokio::spawn(async move { read_n(&mut client, total).await });
        io.write_all(&own).await.expect("write");
        io.flush().await.expect("flush");
        let tail = reader.await.expect("reader");
        assert_eq!([head, tail].concat(), [&frame[..], &own[..]].concat());
    }

    /// A read that fills less than its buffer clears the socket's readiness (no `recv` is
    /// wasted on EAGAIN): the bytes that arrive afterwards still wake the reader, whether the
    /// previous read was short or filled its buffer.
    #[tokio::test]
    async fn reads_after_a_short_read_still_wake() {
        let (mut io, mut client) = pair().await;
        let mut buf = [0u8; 30];
        client.write_all(&[1; 70]).await.expect("write");
        let mut got = Vec::new();
        while got.len() < 70 {
            let n = tokio::time::timeout(Duration::from_secs(10), io.read(&mut buf))
                .await
                .expect("the bytes arrive")
                .expect("read");
            assert!(n > 0, "end of stream");
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, [1; 70]);
        for round in 2..5u8 {
            let writer = tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                client.write_all(&[round; 7]).await.expect("write");
                client
            });
            let n = tokio::time::timeout(Duration::from_secs(10), io.read(&mut buf))
                .await
                .expect("woken for the bytes written after a short read")
                .expect("read");
            assert_eq!(&buf[..n], &[round; 7]);
            client = writer.await.expect("writer");
        }
    }

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
