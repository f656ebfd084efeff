//! WebSocket close codes the server uses, with their meaning for a client.
//!
//! | code | name | when | should the client reconnect? |
//! |---|---|---|---|
//! | 1000 | [`Close::NORMAL`] | the consumer ended the conversation (the seed's `exit`) | no |
//! | 1001 | [`Close::GOING_AWAY`] | the server is shutting down or draining | yes, at once (another replica) |
//! | 1002 | [`Close::PROTOCOL`] | the client broke the WebSocket protocol (unmasked frame, bad opcode, ...) | no |
//! | 1003 | [`Close::UNSUPPORTED`] | a frame type the consumer does not take (binary to the echo chat) | no |
//! | 1007 | [`Close::INVALID_DATA`] | a text message that is not UTF-8 | no |
//! | 1008 | [`Close::POLICY`] | the client broke a rule | no |
//! | 1008 | [`Close::RATE_LIMIT`] (reason `rate limit`) | the client sent more than `--max-messages-per-second` frames a second (burst: twice that; every frame counts: pings, pongs and continuations under 1 KiB too) | no (not at once: the limit holds for a new connection too) |
//! | 1009 | [`Close::TOO_BIG`] | a message over the size limit (64 KiB by default) | no |
//! | 1011 | [`Close::INTERNAL`] | a server error; details are logged, never sent | yes, with backoff |
//! | 1013 | [`Close::TRY_AGAIN_LATER`] | the channel layer (Redis) is unavailable: a group message could not be sent, or the group could not be joined | yes, with backoff |
//! | 4008 | [`Close::SLOW`] | the client did not read its messages: a write stayed blocked for `--write-timeout-secs`, or more than `--max-queued-bytes` waited for it that long | yes, with backoff |
//! | 4009 | [`Close::NO_PONG`] | the client did not answer a server ping within `--pong-timeout-secs` (dead peer, suspended tab, broken network) | yes, with backoff |
//! | 4000 | [`Close::DISCONNECTED`] | the server API disconnected the connection's user | no |
//! | 4010 | [`Close::MISSED`] | in recovery mode (`?recover=1` with `--history-size`), a group message was missed: the connection's queue was full, or the group's history restarted | yes, at once, with `since` and `epoch` |
//! | 4401 | [`Close::TOKEN_EXPIRED`] | the connection token's `exp` passed (with identity on) | yes, after fetching a new token |
//! | 4403 | [`Close::FORBIDDEN`] | the connection's identity does not allow a group it asked to post into (with identity on) | no |
//!
//! Codes 4000–4999 are the application range of RFC 6455: apps define their own there (the
//! tutorial's 4400, [`tutorial::INVALID_GROUP`](crate::tutorial::INVALID_GROUP)). A consumer
//! that returns an error from `connect` before accepting gets HTTP 403 instead of a close code,
//! as in Channels. [`Close::ALL`] lists every code the framework itself sends.

use std::borrow::Cow;
use std::fmt;

use channels_layer::LayerError;

/// A close code and reason: the error type of consumer handlers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Close {
    /// The WebSocket close code.
    pub code: u16,
    /// A short reason; it must fit a close frame (123 bytes), so keep it to a few words.
    pub reason: Cow<'static, str>,
}

impl Close {
    /// 1000: normal closure.
    pub const NORMAL: Close = Close::new(1000, "");
    /// 1001: the server is going away (shutdown, drain).
    pub const GOING_AWAY: Close = Close::new(1001, "server shutting down");
    /// 1002: the client broke the WebSocket protocol.
    pub const PROTOCOL: Close = Close::new(1002, "protocol error");
    /// 1003: the consumer does not accept this kind of frame.
    pub const UNSUPPORTED: Close = Close::new(1003, "unsupported data");
    /// 1007: a text message that is not valid UTF-8.
    pub const INVALID_DATA: Close = Close::new(1007, "invalid utf-8");
    /// 1008: policy violation.
    pub const POLICY: Close = Close::new(1008, "policy violation");
    /// 1009: message too big.
    pub const TOO_BIG: Close = Close::new(1009, "message too big");
    /// 1011: internal error.
    pub const INTERNAL: Close = Close::new(1011, "internal error");
    /// 1013: the channel layer is unavailable; the client should retry later.
    pub const TRY_AGAIN_LATER: Close = Close::new(1013, "channel layer unavailable");
    /// 1008 with reason `rate limit`: the client sent messages faster than its rate limit.
    pub const RATE_LIMIT: Close = Close::new(1008, "rate limit");
    /// 4008: the client cannot keep up with its messages.
    pub const SLOW: Close = Close::new(4008, "slow consumer");
    /// 4009: the client did not answer a ping in time.
    pub const NO_PONG: Close = Close::new(4009, "no pong");
    /// 4000: the server API disconnected this connection's user (`POST
    /// /api/users/{user}/disconnect`).
    pub const DISCONNECTED: Close = Close::new(4000, "disconnected by the server");
    /// 4010: in recovery mode, a group message was missed (the connection's queue was full,
    /// or the history restarted): reconnect with `since` to get it back.
    pub const MISSED: Close = Close::new(4010, "missed messages: reconnect to recover");
    /// 4401: the connection token expired; fetch a new one and reconnect.
    pub const TOKEN_EXPIRED: Close = Close::new(4401, "token expired");
    /// 4403: the connection's identity does not allow this group.
    pub const FORBIDDEN: Close = Close::new(4403, "forbidden");

    /// Every code the framework itself sends (apps add their own in 4000–4999).
    pub const ALL: [Close; 16] = [
        Close::NORMAL,
        Close::GOING_AWAY,
        Close::PROTOCOL,
        Close::UNSUPPORTED,
        Close::INVALID_DATA,
        Close::POLICY,
        Close::RATE_LIMIT,
        Close::TOO_BIG,
        Close::INTERNAL,
        Close::TRY_AGAIN_LATER,
        Close::SLOW,
        Close::NO_PONG,
        Close::DISCONNECTED,
        Close::MISSED,
        Close::TOKEN_EXPIRED,
        Close::FORBIDDEN,
    ];

    /// A close with `code` and a static `reason`.
    pub const fn new(code: u16, reason: &'static str) -> Self {
        Self {
            code,
            reason: Cow::Borrowed(reason),
        }
    }
}

impl fmt::Display for Close {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "close {}", self.code)?;
        if !self.reason.is_empty() {
            write!(f, " ({})", self.reason)?;
        }
        Ok(())
    }
}

impl std::error::Error for Close {}

/// The close code for a failed channel-layer call: [`Close::TRY_AGAIN_LATER`] (1013) when the
/// layer is unavailable (Redis down: the client should come back later), [`Close::INTERNAL`]
/// (1011) otherwise.
///
/// ```
/// use channels_server::consumer::Close;
/// let down = channels_layer::LayerError::Unavailable { host: "r".into(), reason: "x".into() };
/// assert_eq!(Close::from(&down), Close::TRY_AGAIN_LATER);
/// ```
impl From<&LayerError> for Close {
    fn from(error: &LayerError) -> Self {
        match error {
            LayerError::Unavailable { .. } => Close::TRY_AGAIN_LATER,
            _ => Close::INTERNAL,
        }
    }
}
