//! Where what arrives from Redis goes: group messages to the local members, direct messages to
//! one local inbox, this replica's liveness probes to their counters. Runs inside redis-rs' push
//! callback, so it never blocks.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::redis::subconn::Push;

use super::names::Names;
use super::probe::ProbeKey;
use crate::history::Position;
use crate::name::{ChannelName, GroupName};
use crate::redis::Serializer;
use crate::registry::Registry;

/// Counters of the Redis side.
#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) undecodable: AtomicU64,
    pub(super) publish_errors: AtomicU64,
    pub(super) disconnects: AtomicU64,
}

/// What the push callbacks need: it holds no reference back to the layer.
#[derive(Debug)]
pub(super) struct Router {
    pub(super) registry: Arc<Registry>,
    pub(super) names: Names,
    pub(super) serializer: Serializer,
    pub(super) counters: Counters,
    /// Per shard: whether its subscriber answered the latest ping after a full resync.
    pub(super) connected: Vec<AtomicBool>,
    /// Per shard: a disconnect was seen; resubscribe everything at the next good ping.
    pub(super) resync: Vec<AtomicBool>,
    /// Per shard: the generation of the current subscriber connection; pushes from older
    /// (replaced) connections are ignored.
    pub(super) generation: Vec<AtomicU64>,
    /// Per shard: woken when a subscriber connection is up (again), so that the ping loop
    /// resubscribes at once.
    pub(super) reconnected: Vec<tokio::sync::Notify>,
    /// Signs this process's liveness probes.
    pub(super) probe_key: ProbeKey,
    /// Per shard: the number of the latest liveness probe published (or being published).
    pub(super) probe_sent: Vec<AtomicU64>,
    /// Per shard: the number of the latest liveness probe that came back (never above
    /// `probe_sent`).
    pub(super) probe_seen: Vec<AtomicU64>,
    /// History on: side channels carry positions.
    history: bool,
    /// Per shard: the position that arrived on a side channel, for the very next message,
    /// with the group channel it is for. The history script publishes the two back to back,
    /// so anything else in between means they do not belong together.
    pending: Vec<Mutex<Option<(String, Position)>>>,
    /// Group messages delivered without a position while history is on (a `group_send` that
    /// did not go through the history script, such as Python's).
    pub(super) unpositioned: AtomicU64,
}

impl Router {
    /// A router for `shards` shards, none connected yet.
    pub(super) fn new(
        registry: Arc<Registry>,
        names: Names,
        serializer: Serializer,
        shards: usize,
        history: bool,
    ) -> Self {
        let zeros = || (0..shards).map(|_| AtomicU64::new(0)).collect();
        Self {
            registry,
            names,
            serializer,
            counters: Counters::default(),
            connected: (0..shards).map(|_| AtomicBool::new(false)).collect(),
            resync: (0..shards).map(|_| AtomicBool::new(true)).collect(),
            generation: zeros(),
            reconnected: (0..shards).map(|_| tokio::sync::Notify::new()).collect(),
            probe_key: ProbeKey::random(),
            probe_sent: zeros(),
            probe_seen: zeros(),
            history,
            pending: (0..shards).map(|_| Mutex::new(None)).collect(),
            unpositioned: AtomicU64::new(0),
        }
    }

    /// Takes the position waiting on `shard` if it is for `channel`.
    fn take_pending(&self, shard: usize, channel: &[u8]) -> Option<Position> {
        if !self.history {
            return None;
        }
        let pending = crate::sync::lock(&self.pending[shard]).take();
        pending.and_then(|(ch, position)| (ch.as_bytes() == channel).then_some(position))
    }

    /// A position arrived on a side channel: keep it for the next message of its group.
    fn position_arrived(&self, shard: usize, side: &str, marker: &[u8]) {
        let position = std::str::from_utf8(marker).ok().and_then(|m| {
            let (epoch, offset) = m.split_once(':')?;
            crate::redis::history::parse_position(epoch.as_bytes(), offset.as_bytes())
        });
        let Some(position) = position else {
            *crate::sync::lock(&self.pending[shard]) = None;
            return self.undecodable(side, "not a history position");
        };
        let group = &side[self.names.side.len()..];
        let channel = format!("{}{group}", self.names.group);
        *crate::sync::lock(&self.pending[shard]) = Some((channel, position));
    }

    pub(super) fn on_push(&self, shard: usize, generation: u64, push: Push<'_>) {
        if self.generation[shard].load(Ordering::SeqCst) != generation {
            return;
        }
        match push {
            Push::Message { channel, payload } => {
                if self.history
                    && let Ok(side) = std::str::from_utf8(channel)
                    && side.starts_with(&self.names.side)
                {
                    return self.position_arrived(shard, side, payload);
                }
                let position = self.take_pending(shard, channel);
                self.route(channel, payload, position);
            }
            Push::PMessage { channel, payload } => {
                let _ = self.take_pending(shard, channel);
                if channel == self.names.probe.as_bytes() {
                    self.probe_returned(shard, payload);
                } else {
                    self.route(channel, payload, None);
                }
            }
            Push::Disconnected => {
                self.resync[shard].store(true, Ordering::SeqCst);
                if self.connected[shard].swap(false, Ordering::SeqCst) {
                    self.counters.disconnects.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(shard, "redis subscriber disconnected: reconnecting");
                }
            }
            // The shard's ping loop subscribes at once rather than at its next tick (as
            // redis-rs' connection manager resubscribed at once).
            Push::Reconnected => {
                self.resync[shard].store(true, Ordering::SeqCst);
                self.reconnected[shard].notify_one();
            }
        }
    }

    /// A message on the probe channel came back through the subscriber of `shard`. It counts
    /// only if this process signed it and sent its number: anything else is dropped and
    /// counted as undecodable.
    pub(super) fn probe_returned(&self, shard: usize, payload: &[u8]) {
        match self.probe_key.verify(shard, payload) {
            Ok(n) if n <= self.probe_sent[shard].load(Ordering::SeqCst) => {
                self.probe_seen[shard].fetch_max(n, Ordering::SeqCst);
            }
            Ok(_) => self.undecodable(&self.names.probe, "liveness probe not sent yet"),
            Err(error) => self.undecodable(&self.names.probe, error),
        }
    }

    /// Delivers one published payload to the local inboxes it is for, a group message with its
    /// history position if one came with it. Never blocks: full inboxes drop (and count) the
    /// message.
    pub(super) fn route(&self, channel: &[u8], payload: &[u8], position: Option<Position>) {
        let Ok(channel) = std::str::from_utf8(channel) else {
            return self.undecodable("?", "channel name is not UTF-8");
        };
        let limit = self
            .serializer
            .payload_limit(self.registry.config().max_message_size);
        if payload.len() > limit && !self.registry.accept_size(channel, payload.len()) {
            return;
        }
        let msg = match self.serializer.deserialize(payload) {
            Ok(msg) => msg,
            Err(error) => return self.undecodable(channel, error),
        };
        if let Some(group) = channel.strip_prefix(&self.names.group) {
            match GroupName::new(group) {
                Ok(group) => {
                    if self.history && position.is_none() {
                        self.unpositioned.fetch_add(1, Ordering::Relaxed);
                    }
                    self.registry
                        .deliver_group(&group, &msg.with_position(position));
                }
                Err(error) => self.undecodable(channel, error),
            }
        } else if let Ok(name) = ChannelName::new(channel)
            && let Err(error) = self.registry.send(&name, msg)
        {
            crate::log_limited!(warn, %error, channel = %name, "message for a local channel dropped");
        }
    }

    pub(super) fn undecodable(&self, channel: &str, error: impl std::fmt::Display) {
        let n = self.counters.undecodable.fetch_add(1, Ordering::Relaxed) + 1;
        crate::log_limited!(
            warn,
            %channel,
            %error,
            total = n,
            "undecodable message from redis dropped"
        );
    }
}
