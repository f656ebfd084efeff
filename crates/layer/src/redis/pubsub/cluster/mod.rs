//! `RedisClusterChannelLayer`: the pub/sub layer on a Redis Cluster's sharded pub/sub (Redis
//! 7 `SSUBSCRIBE`/`SPUBLISH`), for deployments of Rust replicas only: channels_redis has no
//! Cluster support, so no Python process can join (django/channels_redis#420).
//!
//! Channels keep the pub/sub layer's names: group `g` is the shard channel
//! `{prefix}__group__{g}`, in the slot of that name, owned by one master (and heard by its
//! replicas). A replica's own channels `{prefix}specific.{replica}!{local}` share ONE shard
//! channel, `{prefix}specific.{replica}!` (sharded pub/sub has no patterns): a `send` to such a
//! name publishes there with the full name under `__asgi_channel__`, as channels_redis' core
//! layer marks a message for a `!` channel, and the receiving replica takes the key out and
//! delivers to that channel. Other channel names are shard channels as named.
//!
//! Subscriptions: the registry is the source of truth, as in the plain pub/sub layer. Each
//! needed channel is subscribed with its own `SSUBSCRIBE` (one slot per command, so never
//! `CROSSSLOT`) on a subscriber connection to the master that owns its slot: one connection
//! per master that owns a needed channel. The maintenance loop (`sync.rs`) refreshes the slot
//! map (`CLUSTER SLOTS`) every second and at once after a `MOVED`, a lost connection, or an
//! `SUNSUBSCRIBE` that Redis sends when a slot moves away (a reshard) or its master is demoted,
//! and resubscribes every channel that is not confirmed where its slot now lives. A publish
//! that gets `MOVED` is sent again once to the node named.
//!
//! Delivery is at most once, as everywhere: messages published while a channel's slot moves or
//! its master fails over are lost until the channel is subscribed on the new owner. Not done:
//! the liveness probe of the plain pub/sub layer (subscribers are pinged only), and ASK
//! redirections (a shard channel holds no keys, so a migrating slot answers `MOVED` only once
//! it has moved).

mod node;
mod query;
mod slots;
mod sync;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use tokio::task::JoinHandle;

pub(crate) use slots::ClusterUrl;

use super::config::RedisPubSubConfig;
use super::names::Names;
use super::router::Router;
use crate::config::LayerStats;
use crate::error::LayerError;
use crate::inbox::Inbox;
use crate::layer::ChannelLayer;
use crate::message::Message;
use crate::name::{ChannelName, GroupName};
use crate::presence::{Presence, PresenceMember};
use crate::redis::Serializer;
use crate::redis::conn::Lane;
use crate::redis::presence;
use crate::registry::Registry;
use crate::sync::lock;
use node::{Events, Node};
use slots::SlotMap;

/// The key that carries a `!` channel's full name inside a message to its replica's shard
/// channel (channels_redis' core layer uses the same key for the same purpose).
const CHANNEL_KEY: &str = "__asgi_channel__";

/// A channel Redis may hold a subscription of ours to.
#[derive(Debug)]
struct Sub {
    /// The node it was subscribed on.
    addr: String,
    /// The subscriber connection's generation then.
    generation: u64,
}

#[derive(Debug)]
struct Inner {
    registry: Arc<Registry>,
    router: Arc<Router>,
    url: ClusterUrl,
    map: RwLock<SlotMap>,
    /// Refresh the slot map at the next pass.
    stale: AtomicBool,
    nodes: Mutex<HashMap<String, Arc<Node>>>,
    /// Every subscription Redis confirmed (and no `SUNSUBSCRIBE` removed since).
    subs: tokio::sync::Mutex<HashMap<String, Sub>>,
    events: Arc<Events>,
    ready: AtomicBool,
    problem: Mutex<Option<String>>,
    /// Channels resubscribed on another node because their slot moved (reshard, failover).
    moves: AtomicU64,
    /// Where each needed channel was last subscribed, kept through failures: a channel
    /// subscribed again elsewhere counts as a move.
    placed: Mutex<HashMap<String, String>>,
    timeout: Duration,
    ping_interval: Duration,
    pool_size: usize,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// The pub/sub layer on a Redis Cluster (`redis+cluster://`): see the module documentation.
#[derive(Debug, Clone)]
pub struct RedisClusterChannelLayer {
    inner: Arc<Inner>,
}

impl RedisClusterChannelLayer {
    /// Connects to the cluster named by the one `redis+cluster://` URL in `config.hosts`. If the
    /// cluster is down the layer still starts, reports not ready, and connects when it is back.
    pub async fn connect(config: RedisPubSubConfig) -> Result<Self, LayerError> {
        let [url] = &config.hosts[..] else {
            return Err(LayerError::Config(
                "a Redis Cluster is one redis+cluster:// URL listing some of its nodes; it \
                 cannot be mixed with other shards"
                    .to_owned(),
            ));
        };
        if config.local.history().is_some() {
            return Err(LayerError::Config(
                "history (--history-size) is not available on a Redis Cluster yet: run the \
                 pub/sub layer on one Redis or a Sentinel-managed master for history, or turn \
                 history off"
                    .to_owned(),
            ));
        }
        let url = ClusterUrl::parse(url)?;
        let replica = config
            .replica_id
            .clone()
            .unwrap_or_else(crate::name::random_id);
        let names = Names::new(&config.prefix, &replica)?;
        let registry = Registry::new(config.local.clone());
        let serializer = Serializer::new(&config.encryption_keys, None)?;
        let router = Arc::new(Router::new(
            Arc::clone(&registry),
            names,
            serializer,
            0,
            false,
        ));
        tracing::info!(replica = %replica, cluster = %url.display, "redis cluster channel layer");
        let inner = Arc::new(Inner {
            registry,
            router,
            url,
            map: RwLock::default(),
            stale: AtomicBool::new(true),
            nodes: Mutex::default(),
            subs: tokio::sync::Mutex::default(),
            events: Arc::default(),
            ready: AtomicBool::new(false),
            problem: Mutex::new(None),
            moves: AtomicU64::new(0),
            placed: Mutex::default(),
            timeout: config.timeout,
            ping_interval: config.ping_interval,
            pool_size: config.pool_size,
            tasks: Mutex::default(),
        });
        inner.maintain(true).await;
        if let Some(error) = lock(&inner.problem).clone() {
            tracing::error!(%error, "redis cluster is unreachable at startup: retrying in the background");
        }
        let task = tokio::spawn(sync::maintain_loop(Arc::downgrade(&inner)));
        lock(&inner.tasks).push(task);
        Ok(Self { inner })
    }

    /// The `{prefix}specific.{replica}` part of this replica's channel names.
    pub fn channel_prefix(&self) -> &str {
        &self.inner.router.names.specific
    }
}

impl Inner {
    /// This replica's shard channel, where its own channels' messages arrive.
    fn inbox(&self) -> String {
        format!("{}!", self.router.names.specific)
    }

    /// The node at `addr`, made on first use.
    fn node(&self, addr: &str) -> Result<Arc<Node>, LayerError> {
        let mut nodes = lock(&self.nodes);
        if let Some(node) = nodes.get(addr) {
            return Ok(Arc::clone(node));
        }
        let node = Arc::new(Node::new(
            addr,
            &self.url.node_url(addr, false),
            self.url.node_url(addr, true),
            self.timeout,
            self.pool_size,
        )?);
        nodes.insert(addr.to_owned(), Arc::clone(&node));
        Ok(node)
    }

    fn unavailable(&self, reason: impl std::fmt::Display) -> LayerError {
        LayerError::Unavailable {
            host: self.url.display.clone(),
            reason: reason.to_string(),
        }
    }
}

/// Delivers one sharded message: to the local members of a group, or (on this replica's
/// shard channel) to the channel named under [`CHANNEL_KEY`].
pub(super) fn route(router: &Router, channel: &[u8], payload: &[u8]) {
    if !channel.ends_with(b"!") {
        return router.route(channel, payload, None);
    }
    let Ok(channel) = std::str::from_utf8(channel) else {
        return router.undecodable("?", "channel name is not UTF-8");
    };
    let msg = match router.serializer.deserialize(payload) {
        Ok(msg) => msg,
        Err(error) => return router.undecodable(channel, error),
    };
    let mut map = msg.map().clone();
    let target = map.remove(CHANNEL_KEY);
    let name = target
        .as_ref()
        .and_then(|v| v.as_str())
        .filter(|name| name.starts_with(channel))
        .and_then(|name| ChannelName::new(name).ok());
    let Some(name) = name else {
        return router.undecodable(channel, "no channel of this replica under __asgi_channel__");
    };
    if let Err(error) = router.registry.send(&name, Message::from_map(map)) {
        crate::log_limited!(warn, %error, channel = %name, "message for a local channel dropped");
    }
}

#[async_trait]
impl ChannelLayer for RedisClusterChannelLayer {
    async fn new_channel(&self) -> Result<Inbox, LayerError> {
        // Covered by the replica's shard channel: no Redis call.
        let prefix = self.inner.inbox();
        self.inner
            .registry
            .open_new(&prefix, crate::name::random_id)
    }

    async fn open_channel(&self, name: &ChannelName) -> Result<Inbox, LayerError> {
        let inbox = self.inner.registry.open(name.clone())?;
        if !self.inner.router.names.is_own(name) {
            self.inner.ensure(name.as_str()).await?;
        }
        Ok(inbox)
    }

    async fn send(&self, channel: &ChannelName, msg: Message) -> Result<(), LayerError> {
        let inner = &self.inner;
        if inner.registry.is_closed() {
            return Err(LayerError::Closed);
        }
        inner.registry.check_message(&msg)?;
        if inner.registry.has_channel(channel) {
            return inner.registry.send(channel, msg).map(drop);
        }
        match channel.as_str().find('!') {
            Some(bang) => {
                let shard_channel = &channel.as_str()[..=bang];
                let msg = msg.with(CHANNEL_KEY, channel.as_str());
                let payload = inner.router.serializer.serialize(&msg);
                inner.publish(shard_channel, &payload).await
            }
            None => {
                let payload = inner.router.serializer.serialize(&msg);
                inner.publish(channel.as_str(), &payload).await
            }
        }
    }

    async fn group_add(&self, group: &GroupName, channel: &ChannelName) -> Result<(), LayerError> {
        self.inner.registry.group_add(group, channel)?;
        self.inner
            .ensure(&self.inner.router.names.group_channel(group))
            .await
    }

    async fn group_discard(
        &self,
        group: &GroupName,
        channel: &ChannelName,
    ) -> Result<(), LayerError> {
        // The maintenance loop unsubscribes when this emptied the group.
        self.inner.registry.group_discard(group, channel);
        Ok(())
    }

    async fn group_send(&self, group: &GroupName, msg: Message) -> Result<(), LayerError> {
        let inner = &self.inner;
        if inner.registry.is_closed() {
            return Err(LayerError::Closed);
        }
        inner.registry.check_message(&msg)?;
        let payload = inner.router.serializer.serialize(&msg);
        inner
            .publish(&inner.router.names.group_channel(group), &payload)
            .await
    }

    async fn flush(&self) -> Result<(), LayerError> {
        self.inner.registry.flush();
        self.inner.maintain(false).await;
        Ok(())
    }

    async fn close(&self) -> Result<(), LayerError> {
        if self.inner.registry.is_closed() {
            return Ok(());
        }
        self.inner.registry.close();
        self.inner.maintain(false).await;
        for task in lock(&self.inner.tasks).drain(..) {
            task.abort();
        }
        for node in lock(&self.inner.nodes).values() {
            node.close_subscriber();
        }
        Ok(())
    }

    async fn presence_add(
        &self,
        group: &GroupName,
        member: &PresenceMember,
        ttl: Duration,
    ) -> Result<(), LayerError> {
        self.presence_add_many(&[(group.clone(), member.clone())], ttl)
            .await
    }

    /// One call per group (a group's keys share a slot; two groups' may not).
    async fn presence_add_many(
        &self,
        entries: &[(GroupName, PresenceMember)],
        ttl: Duration,
    ) -> Result<(), LayerError> {
        let cmds = presence::add_cmds(entries, ttl, |group| {
            let (hash, expiries) = self.inner.presence_keys(group);
            Ok((hash.clone(), hash, expiries))
        })?;
        for (hash, cmd) in cmds {
            self.inner
                .query::<redis::Value>(&hash, "EVAL presence add", Lane::Pool, &cmd)
                .await?;
        }
        Ok(())
    }

    async fn presence_remove(
        &self,
        group: &GroupName,
        channel: &ChannelName,
    ) -> Result<bool, LayerError> {
        let (hash, expiries) = self.inner.presence_keys(group);
        let cmd = presence::remove_cmd(&hash, &expiries, channel.as_str());
        let removed: i64 = self
            .inner
            .query(&hash, "EVAL presence remove", Lane::Pool, &cmd)
            .await?;
        Ok(removed > 0)
    }

    async fn presence(&self, group: &GroupName) -> Result<Presence, LayerError> {
        let (hash, expiries) = self.inner.presence_keys(group);
        let cmd = presence::read_cmd(&hash, &expiries);
        let reply = self
            .inner
            .query::<redis::Value>(&hash, "EVAL presence read", Lane::Pool, &cmd)
            .await?;
        presence::parse_read(&self.inner.url.display, reply)
    }

    fn stats(&self) -> LayerStats {
        let c = &self.inner.router.counters;
        LayerStats {
            undecodable: c.undecodable.load(Ordering::Relaxed),
            publish_errors: c.publish_errors.load(Ordering::Relaxed),
            disconnects: c.disconnects.load(Ordering::Relaxed),
            master_switches: self.inner.moves.load(Ordering::Relaxed),
            ..self.inner.registry.stats()
        }
    }

    fn is_ready(&self) -> bool {
        !self.inner.registry.is_closed() && self.inner.ready.load(Ordering::SeqCst)
    }

    fn not_ready_reason(&self) -> Option<String> {
        if self.inner.registry.is_closed() {
            return Some(LayerError::Closed.to_string());
        }
        if self.is_ready() {
            return None;
        }
        Some(lock(&self.inner.problem).clone().unwrap_or_else(|| {
            format!("the redis cluster {} is connecting", self.inner.url.display)
        }))
    }
}
