//! The `ChannelLayer` trait.

use std::fmt;

use async_trait::async_trait;

use crate::config::LayerStats;
use crate::error::LayerError;
use crate::history::{HistoryRead, Since};
use crate::inbox::Inbox;
use crate::message::Message;
use crate::name::{ChannelName, GroupName};
use crate::presence::{Presence, PresenceMember};

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
/// * **History, when on.** With a history size ([`LayerConfig::history_size`](crate::LayerConfig)),
///   every `group_send` stores the message and delivers it with its
///   [`Position`](crate::Position) in one atomic step: every member sees a group's messages in
///   offset order (one order for all publishers), and [`history`](Self::history) gives back the
///   last messages so that a client can recover what it missed ([`crate::history`]). Messages
///   that did not go through this layer's `group_send` (a Python process's) arrive without a
///   position and are not stored.
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

    /// The number of messages kept per group (0: history off, the default). With history on,
    /// every [`group_send`](Self::group_send) stores the message in the group's history and
    /// delivers it with its [`Position`](crate::Position), in one atomic step, so every member
    /// sees the group's messages in offset order.
    fn history_size(&self) -> usize {
        0
    }

    /// Reads `group`'s history ([`crate::history`]); starts an epoch when the group has none.
    /// Fails with [`LayerError::HistoryOff`] when the layer keeps no history.
    async fn history(&self, group: &GroupName, since: Since) -> Result<HistoryRead, LayerError> {
        let _ = (group, since);
        Err(LayerError::HistoryOff)
    }

    /// Adds `member` to `group`'s presence, or refreshes it, until `ttl` from now
    /// ([`crate::presence`]). The caller refreshes it well within `ttl` while the member lives.
    async fn presence_add(
        &self,
        group: &GroupName,
        member: &PresenceMember,
        ttl: std::time::Duration,
    ) -> Result<(), LayerError>;

    /// [`presence_add`](Self::presence_add) for many members at once: a replica's joins of one
    /// moment, or its refresh. A Redis layer sends them in as few calls as their places allow;
    /// this default adds them one by one. On an error some may have been added: the caller
    /// adds them all again (adding is idempotent).
    async fn presence_add_many(
        &self,
        entries: &[(GroupName, PresenceMember)],
        ttl: std::time::Duration,
    ) -> Result<(), LayerError> {
        for (group, member) in entries {
            self.presence_add(group, member, ttl).await?;
        }
        Ok(())
    }

    /// Removes the member with `channel` from `group`'s presence; true if it was there.
    async fn presence_remove(
        &self,
        group: &GroupName,
        channel: &ChannelName,
    ) -> Result<bool, LayerError>;

    /// `group`'s members now; removes (and returns as expired) the entries whose process
    /// stopped refreshing them, so that exactly one reader reports each of those.
    async fn presence(&self, group: &GroupName) -> Result<Presence, LayerError>;

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

    /// Why the layer is not ready, for the operator (readiness probe body, logs): a Redis
    /// backend gives Redis' own error when Redis refused it (`NOAUTH Authentication
    /// required.`, `WRONGPASS ...`, `DENIED ...`, `NOPERM ...`), or what failed otherwise.
    /// `None` when it is ready or has nothing to say.
    fn not_ready_reason(&self) -> Option<String> {
        None
    }
}
