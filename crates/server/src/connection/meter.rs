//! The client's frame rate, counted on the wire.
//!
//! tungstenite hands the driver whole messages: the frames of a fragmented message
//! (continuations) and the control frames it answers itself never reach it. So the rate limit
//! is applied below tungstenite, on the bytes read from the socket: [`FrameMeter`] follows the
//! frame headers in the incoming byte stream (RFC 6455 §5.2: two bytes, an extended length, a
//! masking key; the payload is skipped, not copied) and takes one token of the connection's
//! [`RateLimit`] per frame: data, control, and every continuation frame that carries less than
//! [`FREE_CONTINUATION`] bytes. A continuation at least that large, and the final one, are
//! free: a message fragmented by a client library (say into 1,300-byte frames) costs what an
//! unfragmented one costs, and how many such frames one message can have is bounded by the
//! message size limit, while an endless message of empty fragments pays for every one. Past the
//! rate, the read fails with [`RateLimited`] and the driver closes the connection with 1008
//! `rate limit`; from then on the meter only passes bytes through, so the close handshake can
//! finish.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use super::watch::RateLimit;

/// The read error of a client over its frame rate.
#[derive(Debug, thiserror::Error)]
#[error("client over its frame rate")]
pub(crate) struct RateLimited;

/// Where the parser is in the incoming frame stream.
#[derive(Debug, Clone, Copy)]
enum Position {
    /// Inside a frame header: its first `have` bytes (2, plus an extended length of 2 or 8
    /// bytes that the second byte announces).
    Header { bytes: [u8; 10], have: usize },
    /// Inside a payload: this many bytes to skip.
    Payload(u64),
}

/// The payload from which a non-final continuation frame costs no token.
pub(crate) const FREE_CONTINUATION: u64 = 1024;

const HEADER_START: Position = Position::Header {
    bytes: [0; 10],
    have: 0,
};

/// A socket whose incoming frames each cost a token of the rate limit.
#[derive(Debug)]
pub(crate) struct FrameMeter<S> {
    inner: S,
    rate: Option<RateLimit>,
    position: Position,
}

impl<S> FrameMeter<S> {
    /// Meters `inner` with `per_second` frames a second (burst: twice that); 0: no limit, the
    /// bytes are not even looked at.
    pub(crate) fn new(inner: S, per_second: u32) -> Self {
        Self {
            inner,
            rate: (per_second > 0).then(|| RateLimit::new(per_second, Instant::now())),
            position: HEADER_START,
        }
    }

    /// Follows `data` (bytes just read) through the frame headers; returns the tokens the
    /// frames whose headers completed in it cost.
    fn frames_in(&mut self, mut data: &[u8]) -> u32 {
        let mut frames = 0;
        while !data.is_empty() {
            match &mut self.position {
                Position::Payload(remaining) => {
                    let skip =
                        usize::try_from(*remaining).map_or(data.len(), |r| r.min(data.len()));
                    data = &data[skip..];
                    *remaining -= skip as u64;
                    if *remaining == 0 {
                        self.position = HEADER_START;
                    }
                }
                Position::Header { bytes, have } => {
                    // The header's length is known from its second byte on.
                    let need = if *have >= 2 { header_len(bytes[1]) } else { 2 };
                    let take = (need - *have).min(data.len());
                    bytes[*have..*have + take].copy_from_slice(&data[..take]);
                    *have += take;
                    data = &data[take..];
                    if *have >= 2 && *have == header_len(bytes[1]) {
                        let len = payload_len(bytes);
                        let (fin, continuation) = (bytes[0] & 0x80 != 0, bytes[0] & 0x0f == 0);
                        if !(continuation && (fin || len >= FREE_CONTINUATION)) {
                            frames += 1;
                        }
                        let mask = if bytes[1] & 0x80 != 0 { 4 } else { 0 };
                        let payload = len.saturating_add(mask);
                        self.position = if payload == 0 {
                            HEADER_START
                        } else {
                            Position::Payload(payload)
                        };
                    }
                }
            }
        }
        frames
    }
}

/// The length of a header (without the masking key, which is counted as payload) from its
/// second byte: 2, plus 2 or 8 bytes of extended length.
fn header_len(second: u8) -> usize {
    match second & 0x7f {
        126 => 4,
        127 => 10,
        _ => 2,
    }
}

/// The payload length a complete header announces (the masking key is not counted).
fn payload_len(header: &[u8; 10]) -> u64 {
    match header[1] & 0x7f {
        126 => u64::from(u16::from_be_bytes([header[2], header[3]])),
        127 => u64::from_be_bytes([
            header[2], header[3], header[4], header[5], header[6], header[7], header[8], header[9],
        ]),
        short => u64::from(short),
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for FrameMeter<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if this.rate.is_some() && matches!(result, Poll::Ready(Ok(()))) {
            let frames = this.frames_in(&buf.filled()[before..]);
            if frames > 0
                && let Some(rate) = &mut this.rate
            {
                let now = Instant::now();
                if !(0..frames).all(|_| rate.take(now)) {
                    // Tripped once: the close handshake that follows is not metered.
                    this.rate = None;
                    return Poll::Ready(Err(io::Error::other(RateLimited)));
                }
            }
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FrameMeter<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame with `payload` bytes (the payload's content does not matter).
    fn frame(opcode: u8, fin: bool, payload: usize) -> Vec<u8> {
        let mut out = vec![opcode | if fin { 0x80 } else { 0 }];
        match payload {
            0..=125 => out.push(0x80 | payload as u8),
            126..=65_535 => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(payload as u16).to_be_bytes());
            }
            _ => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(payload as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&[1, 2, 3, 4]);
        out.extend(std::iter::repeat_n(b'x', payload));
        out
    }

    fn stream() -> Vec<u8> {
        let mut bytes = Vec::new();
        bytes.extend(frame(0x1, false, 3)); // text, not final
        for _ in 0..5 {
            bytes.extend(frame(0x0, false, 0)); // empty continuations
        }
        bytes.extend(frame(0x9, true, 0)); // ping between fragments
        bytes.extend(frame(0x0, true, 200)); // the last fragment, 16-bit length
        bytes.extend(frame(0x2, true, 70_000)); // binary, 64-bit length
        bytes.extend(frame(0x8, true, 2)); // close
        bytes
    }

    #[test]
    fn large_and_final_continuations_are_free() {
        let mut meter = FrameMeter::new((), 1);
        let mut bytes = frame(0x1, false, 1300);
        for _ in 0..49 {
            bytes.extend(frame(0x0, false, 1300));
        }
        bytes.extend(frame(0x0, true, 536));
        assert_eq!(
            meter.frames_in(&bytes),
            1,
            "one fragmented message, one token"
        );
    }

    #[test]
    fn every_frame_is_counted_whatever_the_read_sizes() {
        for chunk in [1, 2, 3, 7, 512, usize::MAX] {
            let mut meter = FrameMeter::new((), 1);
            let bytes = stream();
            let frames: u32 = bytes
                .chunks(chunk.min(bytes.len()))
                .map(|c| meter.frames_in(c))
                .sum();
            assert_eq!(frames, 9, "chunks of {chunk}: the final fragment is free");
            assert!(matches!(meter.position, Position::Header { have: 0, .. }));
        }
    }

    proptest::proptest! {
        /// Any sequence of frames, cut into reads of any sizes, costs what its frames cost one
        /// by one, and leaves the parser at a frame boundary.
        #[test]
        fn any_frames_in_any_reads_cost_their_tokens(
            frames in proptest::collection::vec((0u8..16, proptest::bool::ANY, 0usize..3000), 0..40),
            cuts in proptest::collection::vec(1usize..700, 1..20),
        ) {
            let mut bytes = Vec::new();
            let mut expected = 0;
            for (opcode, fin, len) in &frames {
                bytes.extend(frame(*opcode, *fin, *len));
                let continuation = *opcode == 0;
                if !(continuation && (*fin || *len as u64 >= FREE_CONTINUATION)) {
                    expected += 1;
                }
            }
            let mut meter = FrameMeter::new((), 1);
            let mut counted = 0;
            let mut rest = &bytes[..];
            for cut in cuts.iter().cycle() {
                if rest.is_empty() {
                    break;
                }
                let (now, later) = rest.split_at((*cut).min(rest.len()));
                counted += meter.frames_in(now);
                rest = later;
            }
            proptest::prop_assert_eq!(counted, expected);
            let at_boundary = matches!(meter.position, Position::Header { have: 0, .. });
            proptest::prop_assert!(at_boundary);
        }
    }

    #[tokio::test]
    async fn empty_continuations_past_the_rate_fail_the_read() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (client, server) = tokio::io::duplex(1 << 16);
        let mut meter = FrameMeter::new(server, 5);
        let mut client = client;
        let mut flood = frame(0x1, false, 1);
        for _ in 0..100 {
            flood.extend(frame(0x0, false, 0));
        }
        client.write_all(&flood).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let error = meter.read(&mut buf).await.unwrap_err();
        assert!(error.get_ref().is_some_and(|e| e.is::<RateLimited>()));
        // Tripped once; afterwards the bytes pass (the close handshake).
        client.write_all(&frame(0x8, true, 2)).await.unwrap();
        assert!(meter.read(&mut buf).await.unwrap() > 0);
    }
}
