//! `InMemoryChannelLayer`: one process, no dependencies; the default backend.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::config::{LayerConfig, LayerStats};
use crate::error::LayerError;
use crate::history::{HistoryRead, MemoryHistory, Since};
use crate::inbox::Inbox;
use crate::layer::ChannelLayer;
use crate::message::Message;
use crate::name::{ChannelName, GroupName};
use crate::presence::{MemoryPresence, Presence, PresenceMember};
use crate::registry::Registry;

/// A channel layer inside one process, like Channels' `InMemoryChannelLayer`: for development
/// and for a single replica. Replicas do not see each other's groups; use a Redis layer for that.
///
/// Differences from upstream, on purpose:
/// * `channel_capacity` works (upstream never compiles it, and every `send` then fails);
/// * new channel names are `specific.inmemory!<12 letters and digits>` (upstream has a double
///   dot);
/// * a channel whose message expired stays in its groups: membership ends when its inbox is
///   dropped, which proves the reader is gone better than a slow read does.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use channels_layer::{ChannelLayer, GroupName, InMemoryChannelLayer, Message};
/// let layer = InMemoryChannelLayer::default();
/// let mut inbox = layer.new_channel().await?;
/// let room = GroupName::new("room")?;
/// layer.group_add(&room, inbox.name()).await?;
/// layer.group_send(&room, Message::new("chat.message")).await?;
/// assert_eq!(inbox.recv().await.unwrap().message_type(), Some("chat.message"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct InMemoryChannelLayer {
    registry: Arc<Registry>,
    /// Per-group history, when `history_size` is set.
    history: Option<Arc<MemoryHistory>>,
    presence: Arc<MemoryPresence>,
}

impl Default for InMemoryChannelLayer {
    fn default() -> Self {
        Self::new(LayerConfig::default())
    }
}

impl InMemoryChannelLayer {
    /// A layer with the given capacities and expiry.
    pub fn new(config: LayerConfig) -> Self {
        Self {
            history: config
                .history()
                .map(|limits| Arc::new(MemoryHistory::new(limits))),
            presence: Arc::default(),
            registry: Registry::new(config),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &LayerConfig {
        self.registry.config()
    }
}

#[async_trait]
impl ChannelLayer for InMemoryChannelLayer {
    async fn new_channel(&self) -> Result<Inbox, LayerError> {
        self.registry
            .open_new("specific.inmemory!", crate::name::random_id)
    }

    async fn open_channel(&self, name: &ChannelName) -> Result<Inbox, LayerError> {
        self.registry.open(name.clone())
    }

    async fn send(&self, channel: &ChannelName, msg: Message) -> Result<(), LayerError> {
        self.registry.check_message(&msg)?;
        self.registry.send(channel, msg).map(drop)
    }

    async fn group_add(&self, group: &GroupName, channel: &ChannelName) -> Result<(), LayerError> {
        self.registry.group_add(group, channel).map(drop)
    }

    async fn group_discard(
        &self,
        group: &GroupName,
        channel: &ChannelName,
    ) -> Result<(), LayerError> {
        self.registry.group_discard(group, channel);
        Ok(())
    }

    async fn group_send(&self, group: &GroupName, msg: Message) -> Result<(), LayerError> {
        if self.registry.is_closed() {
            return Err(LayerError::Closed);
        }
        self.registry.check_message(&msg)?;
        match &self.history {
            Some(history) => {
                history.append(group, msg, |msg| self.registry.deliver_group(group, msg));
            }
            None => {
                self.registry.deliver_group(group, &msg);
            }
        }
        Ok(())
    }

    fn history_size(&self) -> usize {
        self.registry.config().history_size
    }

    async fn history(&self, group: &GroupName, since: Since) -> Result<HistoryRead, LayerError> {
        if self.registry.is_closed() {
            return Err(LayerError::Closed);
        }
        match &self.history {
            Some(history) => Ok(history.read(group, since)),
            None => Err(LayerError::HistoryOff),
        }
    }

    async fn presence_add(
        &self,
        group: &GroupName,
        member: &PresenceMember,
        ttl: Duration,
    ) -> Result<(), LayerError> {
        if self.registry.is_closed() {
            return Err(LayerError::Closed);
        }
        self.presence.add(group, member, ttl);
        Ok(())
    }

    async fn presence_remove(
        &self,
        group: &GroupName,
        channel: &ChannelName,
    ) -> Result<bool, LayerError> {
        Ok(self.presence.remove(group, channel))
    }

    async fn presence(&self, group: &GroupName) -> Result<Presence, LayerError> {
        if self.registry.is_closed() {
            return Err(LayerError::Closed);
        }
        Ok(self.presence.read(group))
    }

    async fn flush(&self) -> Result<(), LayerError> {
        self.registry.flush();
        if let Some(history) = &self.history {
            history.clear();
        }
        self.presence.clear();
        Ok(())
    }

    async fn close(&self) -> Result<(), LayerError> {
        self.registry.close();
        Ok(())
    }

    fn stats(&self) -> LayerStats {
        self.registry.stats()
    }
}
