//! The `ChannelLayer` trait, its configuration and its statistics.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;

use crate::capacity::ChannelCapacity;
use crate::error::LayerError;
use crate::message::Message;
use crate::name::{ChannelName, GroupName};
use crate::registry::{DEFAULT_EXPIRY, DEFAULT_GROUP_EXPIRY, Inbox};

/// A channel layer: named channels, groups of channels, and messages between them, in
/// Django Channels' vocabulary.
///
/// # Delivery contract
///
/// * **At most once.** A message is delivered once or not at all; nothing is retried. A message
///   is lost when its channel's inbox is gone, when it waited longer than the expiry (60 s by
///   default) unread, or, for a group send, when a member's queue is full.
/// * **Ordered per publisher.** Messages from one caller to one channel, or to one group, arrive
///   in the order they were sent. Messages from different publishers interleave in some order.
/// * **Bounded.** Every channel has a capacity (100 by default). [`send`](Self::send) to a full
///   channel fails with [`LayerError::ChannelFull`]; [`group_send`](Self::group_send) never fails
///   for a full member, it skips that member, counts the drop and logs it. Nothing is dropped
///   silently.
/// * **Membership ends with the inbox.** Dropping an [`Inbox`] leaves every group it joined.
///   Membership also expires `group_expiry` (one day by default) after the latest `group_add`.
///
/// Names are validated when they are parsed into [`ChannelName`] and [`GroupName`], so no method
/// here checks them again.
#[async_trait]
pub trait ChannelLayer: Send + Sync + fmt::Debug + 'static {
    /// Creates a process-local channel with a fresh unique name (`...!<random>`) and returns its
    /// inbox.
    async fn new_channel(&self) -> Result<Inbox, LayerError>;

    /// Opens the inbox of a named channel such as a worker channel (`thumbnails-generate`).
    /// A channel has one reader, so a second open fails with [`LayerError::ChannelInUse`] while
    /// the first inbox lives. Messages sent before the open are not kept.
    async fn open_channel(&self, name: &ChannelName) -> Result<Inbox, LayerError>;

    /// Sends `msg` to one channel. Fails with [`LayerError::ChannelFull`] if its queue is at
    /// capacity. A message to a channel that has no inbox anywhere is lost.
    async fn send(&self, channel: &ChannelName, msg: Message) -> Result<(), LayerError>;

    /// Adds a channel of this process to `group`. Adding twice refreshes the membership.
    async fn group_add(&self, group: &GroupName, channel: &ChannelName) -> Result<(), LayerError>;

    /// Removes `channel` from `group`; discarding a non-member does nothing.
    async fn group_discard(
        &self,
        group: &GroupName,
        channel: &ChannelName,
    ) -> Result<(), LayerError>;

    /// Sends `msg` to every member of `group`, in every process sharing the layer. `Ok` means
    /// the layer accepted the message for delivery, not that every member got it (see the
    /// delivery contract).
    async fn group_send(&self, group: &GroupName, msg: Message) -> Result<(), LayerError>;

    /// Drops every channel and group this layer holds; open inboxes end.
    async fn flush(&self) -> Result<(), LayerError>;

    /// Flushes and refuses further calls with [`LayerError::Closed`]. Idempotent.
    async fn close(&self) -> Result<(), LayerError>;

    /// Counters and sizes, for metrics.
    fn stats(&self) -> LayerStats;

    /// Whether the layer can carry messages now (a Redis backend: every shard's subscriber is
    /// connected). Readiness probes report this.
    fn is_ready(&self) -> bool {
        true
    }
}

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
}

impl Default for LayerConfig {
    fn default() -> Self {
        Self {
            expiry: DEFAULT_EXPIRY,
            group_expiry: DEFAULT_GROUP_EXPIRY,
            capacity: 100,
            channel_capacity: Vec::new(),
            max_message_size: 0,
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
}

impl LayerConfig {
    /// `Err(TooLarge)` when a message of `size` encoded bytes is over the limit.
    pub fn check_size(&self, size: usize) -> Result<(), LayerError> {
        if self.max_message_size > 0 && size > self.max_message_size {
            return Err(LayerError::TooLarge {
                size,
                max: self.max_message_size,
            });
        }
        Ok(())
    }
}
