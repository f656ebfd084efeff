//! `RedisPubSubChannelLayer`: channels_redis 4.3's pub/sub layer on the wire.
//!
//! Wire protocol (`channels-wire-spec.md` §2), shared with Python processes on the same Redis:
//!
//! * group `g` is the Redis channel `{prefix}__group__{g}`; `group_send` is one `PUBLISH` of the
//!   msgpack payload (no prefix bytes), Fernet-encrypted when keys are configured;
//! * `send` publishes to the channel name as given, so a consumer can also send to a Python
//!   `asgispecific.<hex>` channel;
//! * with several hosts, each Redis channel lives on `consistent_hash(channel, hosts)`.
//!
//! Subscription model: the local [registry](crate::registry) is the source of truth. A replica
//! `SUBSCRIBE`s to a group when its first local member joins and `UNSUBSCRIBE`s when the last one
//! leaves; its own channels are named `{prefix}specific.{replica}!{local}` and are all covered by
//! one `PSUBSCRIBE {prefix}specific.{replica}!*` on every shard (a Python `send()` picks the
//! shard by the full name). Messages published by this replica come back through Redis like
//! everyone else's, so every member on every replica sees one order per group. A subscription
//! is recorded before its `SUBSCRIBE` is sent and forgotten only after its `UNSUBSCRIBE`
//! succeeded, so a call that is cancelled (a client gone mid-handshake) or times out is undone
//! by the next reconciliation instead of leaking.
//!
//! Resilience: publishes have a deadline (1 s by default) and fail with
//! [`LayerError::Unavailable`] instead of hanging; each shard's subscriber reconnects forever,
//! is pinged every second to detect dead connections, and after any reconnect re-subscribes
//! everything the registry holds. A subscriber whose ping times out (a black-holed or half-open
//! connection, which no error would ever reveal) is replaced by a fresh connection, and
//! whatever the old one still delivers is ignored: after a partition heals, fresh messages flow
//! at once instead of queueing behind a stale backlog. A connection can also answer pings and
//! yet receive no messages (a proxy or a Redis that lost its subscriptions): each shard
//! therefore publishes a probe to its own pattern every ping interval, and a subscriber that
//! misses two probes in a row is replaced the same way. A probe counts only if it carries this
//! process's [tag](probe) and a number it has sent, so whoever else publishes to the
//! probe channel cannot keep a deaf subscriber in place. Anything undecodable that arrives
//! (forged probes included) is dropped, counted and logged. Messages published while a
//! subscriber is disconnected are lost (at most once), as with channels_redis.
//!
//! A shard given as `redis+sentinel://` follows its master: when the sentinels name another
//! one, the subscriber is replaced at once (even mid-ping) and resubscribed there, and the
//! publishers' connection and the pool are made anew (`redis/conn.rs`, `redis/sentinel/`).
//! Publishes share one pipelined connection per host; other commands (presence, history
//! reads) take pooled ones. A Redis Cluster
//! (`redis+cluster://`) is served by [`RedisClusterChannelLayer`] (`cluster/`), on sharded
//! pub/sub.

mod cluster;
mod config;
mod health;
mod names;
mod probe;
mod router;
mod subscriber;
mod subscriptions;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::task::JoinHandle;

pub(crate) use cluster::ClusterUrl;
pub use cluster::RedisClusterChannelLayer;
pub use config::RedisPubSubConfig;
pub use names::group_channel;

use super::Serializer;
use super::conn::bounded;
use super::history;
use super::presence;
use super::shard::consistent_hash;
use crate::config::LayerStats;
use crate::error::LayerError;
use crate::history::{HistoryLimits, HistoryRead, Since};
use crate::inbox::Inbox;
use crate::layer::ChannelLayer;
use crate::message::Message;
use crate::name::{ChannelName, GroupName};
use crate::presence::{Presence, PresenceMember};
use crate::registry::Registry;
use names::Names;
use router::Router;
use subscriber::Shard;
use subscriptions::Subscriptions;

#[derive(Debug)]
struct Inner {
    registry: Arc<Registry>,
    router: Arc<Router>,
    shards: Vec<Shard>,
    /// Per shard, every channel Redis may hold a subscription of ours to. Every change of a
    /// subscription happens under this lock, after reading the registry, so subscribe and
    /// unsubscribe never race (see [`Subscriptions`]).
    subscribed: tokio::sync::Mutex<Vec<Subscriptions>>,
    timeout: Duration,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// History settings, `None` when history is off.
    history: Option<HistoryLimits>,
    /// The publish-with-history script's text.
    publish_script: String,
}

/// A channel layer shared through Redis pub/sub, wire-compatible with channels_redis'
/// `RedisPubSubChannelLayer`: group `g` is the Redis channel `{prefix}__group__{g}`, one
/// `SUBSCRIBE` per group with local members, one `PSUBSCRIBE` for this replica's channels.
#[derive(Debug, Clone)]
pub struct RedisPubSubChannelLayer {
    inner: Arc<Inner>,
}

impl RedisPubSubChannelLayer {
    /// Connects to the hosts. If Redis is down the layer still starts, reports not ready, and
    /// connects as soon as Redis is back.
    pub async fn connect(config: RedisPubSubConfig) -> Result<Self, LayerError> {
        let layer = Self::new(config)?;
        let router = &layer.inner.router;
        for shard in 0..layer.inner.shards.len() {
            // A Sentinel shard asks for its master first (a failed lookup is retried by its
            // watcher, and followed by the ping loop).
            let s = &layer.inner.shards[shard];
            if s.host.resolved(layer.inner.timeout).await {
                s.follow_master();
            }
            match layer.inner.resync(shard).await {
                Ok(()) => {
                    router.resync[shard].store(false, Ordering::SeqCst);
                    router.connected[shard].store(true, Ordering::SeqCst);
                }
                Err(error) => {
                    let shard = &layer.inner.shards[shard];
                    let error = shard.explain(error).await;
                    let _ = shard.set_problem(Some(&error));
                    tracing::error!(
                        %error,
                        "redis is unreachable at startup: retrying in the background"
                    );
                }
            }
        }
        Ok(layer)
    }

    fn new(config: RedisPubSubConfig) -> Result<Self, LayerError> {
        if config.hosts.is_empty() {
            return Err(LayerError::Config("no Redis host given".to_owned()));
        }
        let replica = match config.replica_id.clone() {
            Some(id) => id,
            None => crate::name::random_id(),
        };
        let names = Names::new(&config.prefix, &replica)?;
        let registry = Registry::new(config.local.clone());
        let n = config.hosts.len();
        let serializer = Serializer::new(&config.encryption_keys, None)?;
        let router = Arc::new(Router::new(
            Arc::clone(&registry),
            names,
            serializer,
            n,
            config.local.history().is_some(),
        ));
        let shards = config
            .hosts
            .iter()
            .enumerate()
            .map(|(i, url)| Shard::new(i, url, &config, &router))
            .collect::<Result<Vec<_>, _>>()?;
        tracing::info!(
            replica = %replica,
            hosts = ?shards.iter().map(|s| s.host.display()).collect::<Vec<_>>(),
            "redis pub/sub channel layer"
        );
        let inner = Arc::new(Inner {
            registry,
            router,
            subscribed: tokio::sync::Mutex::new(vec![Subscriptions::default(); n]),
            shards,
            timeout: config.timeout,
            tasks: Mutex::default(),
            history: config.local.history(),
            publish_script: history::publish_script(),
        });
        let mut tasks = Vec::new();
        for shard in 0..n {
            tasks.push(tokio::spawn(health::ping_loop(
                Arc::downgrade(&inner),
                shard,
                config.ping_interval,
            )));
        }
        for shard in &inner.shards {
            if let Some(watcher) = shard.host.watcher(config.timeout) {
                tasks.push(tokio::spawn(watcher));
            }
        }
        tasks.push(tokio::spawn(subscriptions::reconcile_loop(
            Arc::downgrade(&inner),
            config.ping_interval,
        )));
        *crate::sync::lock(&inner.tasks) = tasks;
        Ok(Self { inner })
    }

    /// The `{prefix}specific.{replica}` part of this replica's channel names.
    pub fn channel_prefix(&self) -> &str {
        &self.inner.router.names.specific
    }
}

impl Inner {
    fn shard_of(&self, channel: &str) -> usize {
        consistent_hash(channel, self.shards.len())
    }

    async fn publish(&self, channel: &str, payload: Vec<u8>) -> Result<(), LayerError> {
        let shard = &self.shards[self.shard_of(channel)];
        match self.publish_on(shard, channel, payload).await {
            Ok(_receivers) => Ok(()),
            Err(error) => {
                self.router
                    .counters
                    .publish_errors
                    .fetch_add(1, Ordering::Relaxed);
                crate::log_limited!(warn, %error, %channel, "publish failed");
                Err(error)
            }
        }
    }

    /// The shard and presence keys of `group`; fails once the layer is closed.
    fn presence_keys(&self, group: &GroupName) -> Result<(&Shard, String, String), LayerError> {
        let (shard, hash, expiries) = self.presence_place(group)?;
        Ok((&self.shards[shard], hash, expiries))
    }

    /// The index of the shard that holds `group`'s presence, and its keys.
    fn presence_place(&self, group: &GroupName) -> Result<(usize, String, String), LayerError> {
        if self.registry.is_closed() {
            return Err(LayerError::Closed);
        }
        let channel = self.router.names.group_channel(group);
        let (hash, expiries) = presence::keys(&self.router.names.prefix, &channel);
        Ok((self.shard_of(&channel), hash, expiries))
    }

    /// One command on `shard` through its pool, within the timeout.
    async fn query_on<T: redis::FromRedisValue>(
        &self,
        shard: &Shard,
        what: &'static str,
        cmd: &redis::Cmd,
    ) -> Result<T, LayerError> {
        bounded(&shard.host, self.timeout, what, shard.pool.query::<T>(cmd)).await
    }

    /// Stores `payload` in `group`'s history and publishes it with its position, in one script
    /// on the group channel's shard.
    async fn publish_with_history(
        &self,
        group: &GroupName,
        limits: &HistoryLimits,
        payload: &[u8],
    ) -> Result<(), LayerError> {
        let names = &self.router.names;
        let channel = names.group_channel(group);
        let (meta, stream) = names.history_keys(group);
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(&self.publish_script).arg(2).arg(&meta).arg(&stream);
        history::append_args(&mut cmd, limits, payload);
        cmd.arg(&channel).arg(names.side_channel(group));
        let shard = &self.shards[self.shard_of(&channel)];
        let what = "EVAL history publish";
        let result = shard.pool.publish::<redis::Value>(&cmd);
        match bounded(&shard.host, self.timeout, what, result).await {
            Ok(_) => Ok(()),
            Err(error) => {
                self.router
                    .counters
                    .publish_errors
                    .fetch_add(1, Ordering::Relaxed);
                crate::log_limited!(warn, %error, %channel, "publish failed");
                Err(error)
            }
        }
    }

    /// One `PUBLISH` on `shard`'s publishers' connection, within the timeout.
    async fn publish_on(
        &self,
        shard: &Shard,
        channel: &str,
        payload: impl redis::ToRedisArgs + Send + Sync,
    ) -> Result<i64, LayerError> {
        let mut cmd = redis::cmd("PUBLISH");
        cmd.arg(channel).arg(payload);
        bounded(
            &shard.host,
            self.timeout,
            "PUBLISH",
            shard.pool.publish::<i64>(&cmd),
        )
        .await
    }
}

#[async_trait]
impl ChannelLayer for RedisPubSubChannelLayer {
    async fn new_channel(&self) -> Result<Inbox, LayerError> {
        // Covered by the replica's pattern subscription: no Redis call.
        let prefix = format!("{}!", self.inner.router.names.specific);
        self.inner
            .registry
            .open_new(&prefix, crate::name::random_id)
    }

    async fn open_channel(&self, name: &ChannelName) -> Result<Inbox, LayerError> {
        let inbox = self.inner.registry.open(name.clone())?;
        if !self.inner.router.names.is_own(name) {
            self.inner
                .ensure_subscribed(vec![name.as_str().to_owned()])
                .await?;
        }
        Ok(inbox)
    }

    async fn send(&self, channel: &ChannelName, msg: Message) -> Result<(), LayerError> {
        if self.inner.registry.is_closed() {
            return Err(LayerError::Closed);
        }
        // A channel of this process gets the message directly, which keeps Channels'
        // ChannelFull; anything else is published as named.
        self.inner.registry.check_message(&msg)?;
        if self.inner.registry.has_channel(channel) {
            return self.inner.registry.send(channel, msg).map(drop);
        }
        let payload = self.inner.router.serializer.serialize(&msg);
        self.inner.publish(channel.as_str(), payload).await
    }

    async fn group_add(&self, group: &GroupName, channel: &ChannelName) -> Result<(), LayerError> {
        self.inner.registry.group_add(group, channel)?;
        let names = &self.inner.router.names;
        let mut channels = vec![names.group_channel(group)];
        if self.inner.history.is_some() {
            // One SUBSCRIBE for both: positions and payloads arrive on one connection, in the
            // order the script published them.
            channels.push(names.side_channel(group));
        }
        self.inner.ensure_subscribed(channels).await
    }

    async fn group_discard(
        &self,
        group: &GroupName,
        channel: &ChannelName,
    ) -> Result<(), LayerError> {
        // The reconciler unsubscribes when this emptied the group.
        self.inner.registry.group_discard(group, channel);
        Ok(())
    }

    async fn group_send(&self, group: &GroupName, msg: Message) -> Result<(), LayerError> {
        if self.inner.registry.is_closed() {
            return Err(LayerError::Closed);
        }
        self.inner.registry.check_message(&msg)?;
        let payload = self.inner.router.serializer.serialize(&msg);
        if let Some(limits) = &self.inner.history {
            return self
                .inner
                .publish_with_history(group, limits, &payload)
                .await;
        }
        self.inner
            .publish(&self.inner.router.names.group_channel(group), payload)
            .await
    }

    fn history_size(&self) -> usize {
        self.inner.history.map_or(0, |limits| limits.size)
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

    async fn presence_add_many(
        &self,
        entries: &[(GroupName, PresenceMember)],
        ttl: Duration,
    ) -> Result<(), LayerError> {
        let cmds = presence::add_cmds(entries, ttl, |group| self.inner.presence_place(group))?;
        for (shard, cmd) in cmds {
            self.inner
                .query_on::<redis::Value>(&self.inner.shards[shard], "EVAL presence add", &cmd)
                .await?;
        }
        Ok(())
    }

    async fn presence_remove(
        &self,
        group: &GroupName,
        channel: &ChannelName,
    ) -> Result<bool, LayerError> {
        let (shard, hash, expiries) = self.inner.presence_keys(group)?;
        let cmd = presence::remove_cmd(&hash, &expiries, channel.as_str());
        let removed: i64 = self
            .inner
            .query_on(shard, "EVAL presence remove", &cmd)
            .await?;
        Ok(removed > 0)
    }

    async fn presence(&self, group: &GroupName) -> Result<Presence, LayerError> {
        let (shard, hash, expiries) = self.inner.presence_keys(group)?;
        let cmd = presence::read_cmd(&hash, &expiries);
        let reply = self
            .inner
            .query_on::<redis::Value>(shard, "EVAL presence read", &cmd)
            .await?;
        presence::parse_read(shard.host.display(), reply)
    }

    async fn history(&self, group: &GroupName, since: Since) -> Result<HistoryRead, LayerError> {
        if self.inner.registry.is_closed() {
            return Err(LayerError::Closed);
        }
        let limits = self.inner.history.ok_or(LayerError::HistoryOff)?;
        let names = &self.inner.router.names;
        let (meta, stream) = names.history_keys(group);
        let shard = &self.inner.shards[self.inner.shard_of(&names.group_channel(group))];
        let cmd = history::read_cmd(&meta, &stream, &limits, since);
        let reply = self
            .inner
            .query_on::<redis::Value>(shard, "EVAL history read", &cmd)
            .await?;
        history::parse_read(shard.host.display(), &self.inner.router.serializer, reply)
    }

    async fn flush(&self) -> Result<(), LayerError> {
        // channels_redis deletes nothing in Redis either: there is nothing stored.
        self.inner.registry.flush();
        self.inner.reconcile().await;
        Ok(())
    }

    async fn close(&self) -> Result<(), LayerError> {
        if self.inner.registry.is_closed() {
            return Ok(());
        }
        self.inner.registry.close();
        self.inner.reconcile().await;
        let tasks =
            std::mem::take(&mut *self.inner.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        for task in tasks {
            task.abort();
        }
        Ok(())
    }

    fn stats(&self) -> LayerStats {
        let c = &self.inner.router.counters;
        LayerStats {
            undecodable: c.undecodable.load(Ordering::Relaxed),
            publish_errors: c.publish_errors.load(Ordering::Relaxed),
            disconnects: c.disconnects.load(Ordering::Relaxed),
            unpositioned: self.inner.router.unpositioned.load(Ordering::Relaxed),
            master_switches: self
                .inner
                .shards
                .iter()
                .map(|s| s.host.master_switches())
                .sum(),
            ..self.inner.registry.stats()
        }
    }

    fn is_ready(&self) -> bool {
        !self.inner.registry.is_closed()
            && self
                .inner
                .router
                .connected
                .iter()
                .all(|c| c.load(Ordering::SeqCst))
    }

    fn not_ready_reason(&self) -> Option<String> {
        if self.inner.registry.is_closed() {
            return Some(LayerError::Closed.to_string());
        }
        let connected = &self.inner.router.connected;
        let shard = self
            .inner
            .shards
            .iter()
            .find(|s| !connected[s.index].load(Ordering::SeqCst))?;
        Some(shard.problem().unwrap_or_else(|| {
            format!(
                "the redis subscriber of {} is connecting",
                shard.host.display()
            )
        }))
    }
}
