//! What every backend is configured with ([`LayerConfig`]) and what it reports
//! ([`LayerStats`]).

use std::time::Duration;

use crate::capacity::ChannelCapacity;
use crate::error::LayerError;
use crate::history::HistoryLimits;

/// How long a message waits unread before it is dropped, as in Channels.
pub(crate) const DEFAULT_EXPIRY: Duration = Duration::from_secs(60);
/// How long a membership lasts after the latest `group_add`, as in Channels.
pub(crate) const DEFAULT_GROUP_EXPIRY: Duration = Duration::from_secs(86_400);

/// How long a group's history is kept after its latest message.
pub(crate) const DEFAULT_HISTORY_TTL: Duration = Duration::from_secs(300);

/// Local settings shared by every backend: capacities and expiry.
///
/// ```
/// use channels_layer::{ChannelCapacity, LayerConfig};
/// let config = LayerConfig {
///     channel_capacity: vec![ChannelCapacity::new("worker-*", 1000)?],
///     ..LayerConfig::default()
/// };
/// assert_eq!(config.capacity, 100);
/// # Ok::<(), channels_layer::InvalidPattern>(())
/// ```
#[derive(Debug, Clone)]
pub struct LayerConfig {
    /// How long a message waits unread before it is dropped (Channels' `expiry`, 60 s).
    pub expiry: Duration,
    /// How long a membership lasts after the latest `group_add` (Channels' `group_expiry`,
    /// 86400 s).
    pub group_expiry: Duration,
    /// Messages a channel holds before `send` fails (Channels' `capacity`, 100).
    pub capacity: usize,
    /// Capacities by channel-name glob; the first match wins (Channels' `channel_capacity`).
    pub channel_capacity: Vec<ChannelCapacity>,
    /// The largest message (its msgpack encoding, before encryption) the layer carries, in
    /// bytes; 0: no limit (Channels has none). Sending a larger one fails with
    /// [`LayerError::TooLarge`]; a larger one arriving from Redis is dropped once for the whole
    /// process (not once per member), counted in [`LayerStats::oversized`] and logged.
    pub max_message_size: usize,
    /// Messages kept per group for recovery and recent history (0: history off, the default).
    /// See [`crate::history`].
    pub history_size: usize,
    /// How long a group's history is kept after its latest message (300 s).
    pub history_ttl: Duration,
}

impl Default for LayerConfig {
    fn default() -> Self {
        Self {
            expiry: DEFAULT_EXPIRY,
            group_expiry: DEFAULT_GROUP_EXPIRY,
            capacity: 100,
            channel_capacity: Vec::new(),
            max_message_size: 0,
            history_size: 0,
            history_ttl: DEFAULT_HISTORY_TTL,
        }
    }
}

/// A snapshot of a layer's counters (monotonic since start) and sizes (now).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LayerStats {
    /// Channels with an inbox in this process.
    pub channels: usize,
    /// Groups with a member in this process.
    pub groups: usize,
    /// Messages queued for a local inbox.
    pub delivered: u64,
    /// Messages not queued because the channel was full (`send` failures and group drops).
    pub dropped_full: u64,
    /// Messages for a channel with no inbox.
    pub dropped_no_receiver: u64,
    /// Messages that expired unread.
    pub expired: u64,
    /// Payloads from the backend that could not be decoded (not msgpack, non-str keys, a bad
    /// encryption token) and were dropped.
    pub undecodable: u64,
    /// Publishes that failed (backend unavailable).
    pub publish_errors: u64,
    /// Times a backend connection was lost.
    pub disconnects: u64,
    /// Messages refused or dropped for being over `max_message_size`.
    pub oversized: u64,
    /// With history on, group messages that arrived without a position (sent by something
    /// that does not store history, such as a Python `group_send`): delivered live, not
    /// recoverable. The pub/sub layer counts them.
    pub unpositioned: u64,
    /// Times a Redis shard's master moved to another address (Sentinel failovers followed).
    pub master_switches: u64,
}

impl LayerConfig {
    /// The history settings, `None` when history is off.
    pub(crate) fn history(&self) -> Option<HistoryLimits> {
        (self.history_size > 0).then_some(HistoryLimits {
            size: self.history_size,
            ttl: self.history_ttl.max(Duration::from_secs(1)),
        })
    }

    /// `Err(TooLarge)` when a message of `size` encoded bytes is over the limit.
    pub(crate) fn check_size(&self, size: usize) -> Result<(), LayerError> {
        if self.max_message_size > 0 && size > self.max_message_size {
            return Err(LayerError::TooLarge {
                size,
                max: self.max_message_size,
            });
        }
        Ok(())
    }
}
