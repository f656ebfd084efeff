//! The one error type of the channel layer.

use crate::message::MessageError;
use crate::name::{ChannelName, NameError};

/// What went wrong in a channel-layer call.
///
/// Variants name what happened; a caller that wants Channels' semantics matches
/// [`LayerError::ChannelFull`] (Python's `ChannelFull`) and treats the rest as failures.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum LayerError {
    /// `send` found the channel's queue at capacity; the message was not queued.
    #[error("channel {0} is full: its receiver is not keeping up")]
    ChannelFull(ChannelName),
    /// A name that Channels would reject.
    #[error(transparent)]
    InvalidName(#[from] NameError),
    /// A message that cannot be encoded or decoded.
    #[error(transparent)]
    InvalidMessage(#[from] MessageError),
    /// `group_add` was given a channel that has no inbox in this process. Membership lives with
    /// the inbox (it ends when the inbox is dropped), so only local channels can join.
    #[error(
        "channel {0} has no inbox in this process: group_add() takes channels made by \
         new_channel() or open_channel() here"
    )]
    NotLocal(ChannelName),
    /// `open_channel` was called for a channel that already has an inbox; a channel has one
    /// reader.
    #[error("channel {0} already has an inbox: a channel has one reader")]
    ChannelInUse(ChannelName),
    /// The message is larger than the layer's `max_message_size`; it was not sent.
    #[error(
        "message of {size} bytes is over the channel layer's limit of {max} bytes: it was not sent"
    )]
    TooLarge {
        /// The message's encoded size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The layer was closed with `close()`.
    #[error("the channel layer is closed")]
    Closed,
    /// The backend (Redis) did not answer in time or refused the call; nothing was sent. The
    /// layer reconnects by itself: retry later.
    #[error("the channel layer's Redis at {host} is unavailable ({reason}): retry once it is back")]
    Unavailable {
        /// The Redis host, without credentials.
        host: String,
        /// What failed.
        reason: String,
    },
    /// History was asked for but the layer keeps none (`history_size` is 0).
    #[error("this channel layer keeps no history: set a history size (--history-size) to use it")]
    HistoryOff,
    /// The configuration cannot work (bad URL, bad prefix, no hosts).
    #[error("invalid channel layer configuration: {0}")]
    Config(String),
}
