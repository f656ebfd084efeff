//! `RedisChannelLayer`: channels_redis 4.3's core layer (sorted sets) on the wire.
//!
//! Use it to add Rust replicas to a Django deployment that already runs
//! `channels_redis.core.RedisChannelLayer`; for a new deployment the pub/sub layer is simpler
//! and keeps no state in Redis. Wire protocol (`channels-wire-spec.md` §3), shared with Python
//! processes with the same hosts (in the same order), prefix and encryption keys:
//!
//! * channels from [`new_channel`](ChannelLayer::new_channel) are
//!   `specific.{client_prefix}!{uuid4 hex}`, 74 characters, where `client_prefix` is a random
//!   UUID4 hex per layer instance; all of them share the sorted set
//!   `{prefix}specific.{client_prefix}!` on the shard `consistent_hash("specific.{client_prefix}!")`;
//! * a stored message is 12 random bytes, then msgpack (Fernet-encrypted when keys are set,
//!   with a token age limit of expiry + 10 s), scored with the sender's Unix time; a message for
//!   a `!` channel carries `__asgi_channel__`: the channel name for `send`, the list of members
//!   sharing the key for `group_send`;
//! * `send` trims the key (`ZREMRANGEBYSCORE 0 now-expiry`), fails with
//!   [`LayerError::ChannelFull`] at capacity, else `ZADD` + `EXPIRE expiry`, in one script. A
//!   `!` channel's key lives on `consistent_hash(non_local_name)`: where receivers (Python's
//!   too) read, although Python's own `send` hashes the full name (a known bug, spec §3.9); a
//!   general channel's shard is picked round-robin, as in Python;
//! * groups are sorted sets `{prefix}:group:{g}` on `consistent_hash(g)`, members full channel
//!   names scored with the time of the latest add, `EXPIRE group_expiry`; `group_send` trims
//!   members older than `group_expiry`, then writes one copy per message key with a script that
//!   checks each key's capacity (its first member's), the effect of upstream's Lua script.
//!   Full keys are skipped, counted and logged, never an error.
//!
//! Design (the submodules `reader`, `send` and `groups` give the details):
//!
//! * **One receive loop per replica** pops the inbox key in batches, with a
//!   `$inflight` backup that neither loses nor duplicates a message when a reply or an
//!   acknowledgement is lost, and delivers to local inboxes through the registry. A message
//!   older than `expiry` (by its score) is dropped as expired.
//! * **Sends to a channel of this process** go straight to its inbox without a round trip, so a
//!   full inbox fails with `ChannelFull` as in the other backends. Everything else, including
//!   every `group_send`, goes through Redis. A send to a channel of another process fails
//!   with `ChannelFull` only when that process's key holds `capacity` messages, i.e. when its
//!   receive loop is not popping (down or overloaded): the loop drains the key eagerly, and a
//!   full inbox drops and counts the message there (Python's receive buffer drops the oldest).
//! * **Membership**: only channels with an inbox here can join (the trait's rule;
//!   Python allows any channel). Dropping an inbox removes its memberships from Redis, and live
//!   memberships are refreshed before `group_expiry` runs out (`refresh_memberships`).
//!   A replica that dies without `close()` leaves its memberships until `group_expiry`, as
//!   Python's processes do; group sends keep writing to its key, which expires after `expiry`.
//! * **General channels** opened with `open_channel` are read on every shard by loops of their
//!   own; their sends from this process go straight to the local inbox, like any local channel.
//! * **Failure**: every Redis call has a deadline (1 s) and fails with
//!   [`LayerError::Unavailable`]; loops reconnect with backoff; after a shard comes back its
//!   memberships are written again; [`is_ready`](ChannelLayer::is_ready) reports whether every
//!   shard answers and the receive loop is connected. Messages stored in Redis survive a
//!   replica's reconnect; messages popped at the moment a connection dies may be lost (at most
//!   once).
//!
//! * **Sentinel**: a shard given as `redis+sentinel://` follows its master (see
//!   `redis/sentinel.rs`); after a failover the receive loops and the health loop reconnect to
//!   the new master, and the memberships are written there again.
//!
//! Not supported: the JSON serializer, and Redis Cluster (as in Python, the scripts touch keys
//! of several slots).

mod config;
mod groups;
mod reader;
mod send;
mod shard;
mod wire;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::task::JoinHandle;

pub use self::config::RedisCoreConfig;
use self::reader::{Reader, Target};
use self::shard::Shard;
use self::wire::Keys;
use super::Serializer;
use super::conn::Lane;
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
use crate::sync::lock;

/// Counters of the Redis side.
#[derive(Debug, Default)]
struct Counters {
    undecodable: AtomicU64,
    publish_errors: AtomicU64,
    /// Messages found expired when popped.
    expired: AtomicU64,
    /// `send` to a full remote key, and group members whose key was full.
    dropped_full: AtomicU64,
    /// Local deliveries dropped because the inbox was full (for log rate limiting; the
    /// registry counts them).
    full_logged: AtomicU64,
}

#[derive(Debug)]
struct Inner {
    registry: Arc<Registry>,
    keys: Keys,
    client_prefix: String,
    serializer: Serializer,
    shards: Vec<Shard>,
    timeout: Duration,
    block_timeout: Duration,
    ping_interval: Duration,
    reconnect_max_delay: Duration,
    refresh: bool,
    counters: Counters,
    /// The inbox receive loop's latest call succeeded.
    inbox_ready: AtomicBool,
    /// Why the receive loop last failed, for `not_ready_reason` (`None` once it runs).
    inbox_problem: Mutex<Option<String>>,
    /// Shard of the next send to a general channel.
    round_robin: AtomicUsize,
    /// Memberships this replica wrote to Redis, with the score written.
    memberships: Mutex<HashMap<(GroupName, ChannelName), f64>>,
    /// A membership write failed: the reconciler retries every second.
    retry: AtomicBool,
    /// Receive loops of general (and foreign `!`) channel keys opened here, by key.
    readers: Mutex<HashMap<String, Vec<JoinHandle<()>>>>,
    /// The inbox loop, the health loops and the reconciler.
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// History settings, `None` when history is off.
    history: Option<HistoryLimits>,
    /// The group-send-with-history script's text.
    history_script: String,
}

impl Inner {
    /// The shard and presence keys of `group` (on the group's shard); fails once the layer is
    /// closed.
    fn presence_keys(&self, group: &GroupName) -> Result<(&Shard, String, String), LayerError> {
        let (shard, hash, expiries) = self.presence_place(group)?;
        Ok((&self.shards[shard], hash, expiries))
    }

    /// The index of the shard that holds `group`'s presence, and its keys.
    fn presence_place(&self, group: &GroupName) -> Result<(usize, String, String), LayerError> {
        if self.registry.is_closed() {
            return Err(LayerError::Closed);
        }
        let (hash, expiries) = self.keys.presence(group);
        Ok((self.group_shard(group), hash, expiries))
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        for task in lock(&self.tasks).drain(..) {
            task.abort();
        }
        for task in lock(&self.readers).drain().flat_map(|(_, t)| t) {
            task.abort();
        }
    }
}

/// A channel layer shared through Redis sorted sets, wire-compatible with channels_redis'
/// `RedisChannelLayer`. The module documentation (`src/redis/core/mod.rs`) describes the
/// protocol and the design.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use channels_layer::{ChannelLayer, GroupName, Message, RedisChannelLayer, RedisCoreConfig};
/// let layer =
///     RedisChannelLayer::connect(RedisCoreConfig::new(vec!["redis://127.0.0.1:6379/0".into()]))
///         .await?;
/// let mut inbox = layer.new_channel().await?;
/// let room = GroupName::new("room")?;
/// layer.group_add(&room, inbox.name()).await?;
/// layer.group_send(&room, Message::new("chat.message").with("text", "hi")).await?;
/// assert_eq!(inbox.recv().await.unwrap().message_type(), Some("chat.message"));
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct RedisChannelLayer {
    inner: Arc<Inner>,
}

impl RedisChannelLayer {
    /// Connects to the hosts and starts the receive loop. If Redis is down the layer still
    /// starts, reports not ready, and connects as soon as Redis is back.
    pub async fn connect(config: RedisCoreConfig) -> Result<Self, LayerError> {
        let timeout = config.timeout;
        let layer = Self::new(config)?;
        let deadline = tokio::time::Instant::now() + timeout;
        while !layer.is_ready() {
            if tokio::time::Instant::now() >= deadline {
                let error = layer.not_ready_reason().unwrap_or_default();
                tracing::error!(
                    %error,
                    "redis is unreachable at startup: retrying in the background"
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(layer)
    }

    fn new(config: RedisCoreConfig) -> Result<Self, LayerError> {
        if config.hosts.is_empty() {
            return Err(LayerError::Config("no Redis host given".to_owned()));
        }
        if config.prefix.is_empty() {
            return Err(LayerError::Config(
                "the core layer needs a non-empty prefix: flush() deletes every key under it"
                    .to_owned(),
            ));
        }
        if config.local.history().is_some() && config.hosts.len() > 1 {
            return Err(LayerError::Config(
                "history with the core layer needs a single Redis host: storing a group's \
                 message and writing it to its members are one script on one Redis. Use the \
                 pub/sub layer (--layer redis-pubsub) to shard with history"
                    .to_owned(),
            ));
        }
        let client_prefix = wire::uuid4_hex();
        let keys = Keys::new(&config.prefix, &client_prefix);
        let shards = config
            .hosts
            .iter()
            .map(|url| Shard::new(url, config.timeout, config.pool_size))
            .collect::<Result<Vec<_>, _>>()?;
        // Python's Fernet age limit for core: expiry + 10 s.
        let ttl = config.local.expiry + Duration::from_secs(10);
        let inner = Arc::new(Inner {
            registry: Registry::new(config.local.clone()),
            serializer: Serializer::new(&config.encryption_keys, Some(ttl))?,
            keys,
            client_prefix,
            shards,
            timeout: config.timeout,
            block_timeout: config.block_timeout,
            ping_interval: config.ping_interval,
            reconnect_max_delay: config.reconnect_max_delay,
            refresh: config.refresh_memberships,
            counters: Counters::default(),
            inbox_ready: AtomicBool::new(false),
            inbox_problem: Mutex::new(None),
            round_robin: AtomicUsize::new(0),
            memberships: Mutex::default(),
            retry: AtomicBool::new(false),
            readers: Mutex::default(),
            tasks: Mutex::default(),
            history: config.local.history(),
            history_script: super::history::core_group_send_script(),
        });
        tracing::info!(
            client_prefix = %inner.client_prefix,
            hosts = ?inner.shards.iter().map(|s| s.host.display()).collect::<Vec<_>>(),
            "redis core channel layer"
        );
        let weak = Arc::downgrade(&inner);
        let inbox = Reader {
            shard: consistent_hash(inner.keys.local_part(), inner.shards.len()),
            key: inner.keys.inbox().to_owned(),
            target: Target::Routed,
            inbox: true,
        };
        let mut tasks = vec![tokio::spawn(inbox.run(weak.clone()))];
        for i in 0..inner.shards.len() {
            tasks.push(tokio::spawn(shard::health_loop(weak.clone(), i)));
        }
        for shard in &inner.shards {
            if let Some(watcher) = shard.host.watcher(config.timeout) {
                tasks.push(tokio::spawn(watcher));
            }
        }
        tasks.push(tokio::spawn(groups::reconcile_loop(weak)));
        *lock(&inner.tasks) = tasks;
        Ok(Self { inner })
    }

    /// This instance's `client_prefix` (a UUID4 in hex): its channels are
    /// `specific.{client_prefix}!...`.
    pub fn client_prefix(&self) -> &str {
        &self.inner.client_prefix
    }

    /// The sorted set holding this instance's incoming messages,
    /// `{prefix}specific.{client_prefix}!`.
    pub fn inbox_key(&self) -> &str {
        self.inner.keys.inbox()
    }
}

impl Inner {
    /// Deletes every key under the prefix on every shard, with `SCAN` (never `KEYS`).
    async fn delete_prefix(&self) -> Result<(), LayerError> {
        let pattern = self.keys.scan_pattern();
        for shard in &self.shards {
            let mut cursor: u64 = 0;
            loop {
                let (next, keys): (u64, Vec<Vec<u8>>) = shard
                    .query(
                        self.timeout,
                        "SCAN",
                        Lane::Pool,
                        redis::cmd("SCAN")
                            .arg(cursor)
                            .arg("MATCH")
                            .arg(&pattern)
                            .arg("COUNT")
                            .arg(1000),
                    )
                    .await?;
                if !keys.is_empty() {
                    shard
                        .query::<()>(self.timeout, "DEL", Lane::Pool, redis::cmd("DEL").arg(keys))
                        .await?;
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok(())
    }
}

#[async_trait]
impl ChannelLayer for RedisChannelLayer {
    async fn new_channel(&self) -> Result<Inbox, LayerError> {
        // Covered by the one receive loop: no Redis call, as in Python.
        self.inner
            .registry
            .open_new(self.inner.keys.local_part(), wire::uuid4_hex)
    }

    async fn open_channel(&self, name: &ChannelName) -> Result<Inbox, LayerError> {
        let inbox = self.inner.registry.open(name.clone())?;
        if !self.inner.keys.is_own(name) {
            // A general name is read on every shard; a foreign `!` name claims its whole key.
            self.inner.sync_readers(&Arc::downgrade(&self.inner));
        }
        Ok(inbox)
    }

    async fn send(&self, channel: &ChannelName, msg: Message) -> Result<(), LayerError> {
        self.inner.send(channel, msg).await
    }

    async fn group_add(&self, group: &GroupName, channel: &ChannelName) -> Result<(), LayerError> {
        self.inner.group_add(group, channel).await
    }

    async fn group_discard(
        &self,
        group: &GroupName,
        channel: &ChannelName,
    ) -> Result<(), LayerError> {
        self.inner.group_discard(group, channel).await
    }

    async fn group_send(&self, group: &GroupName, msg: Message) -> Result<(), LayerError> {
        if self.inner.registry.is_closed() {
            return Err(LayerError::Closed);
        }
        self.inner.group_send(group, &msg).await
    }

    fn history_size(&self) -> usize {
        self.inner.history.map_or(0, |limits| limits.size)
    }

    async fn history(&self, group: &GroupName, since: Since) -> Result<HistoryRead, LayerError> {
        if self.inner.registry.is_closed() {
            return Err(LayerError::Closed);
        }
        self.inner.history(group, since).await
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
        let cmds =
            super::presence::add_cmds(entries, ttl, |group| self.inner.presence_place(group))?;
        for (shard, cmd) in cmds {
            self.inner.shards[shard]
                .query::<redis::Value>(self.inner.timeout, "EVAL presence add", Lane::Pool, &cmd)
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
        let cmd = super::presence::remove_cmd(&hash, &expiries, channel.as_str());
        let removed: i64 = shard
            .query(self.inner.timeout, "EVAL presence remove", Lane::Pool, &cmd)
            .await?;
        Ok(removed > 0)
    }

    async fn presence(&self, group: &GroupName) -> Result<Presence, LayerError> {
        let (shard, hash, expiries) = self.inner.presence_keys(group)?;
        let cmd = super::presence::read_cmd(&hash, &expiries);
        let reply = shard
            .query::<redis::Value>(self.inner.timeout, "EVAL presence read", Lane::Pool, &cmd)
            .await?;
        super::presence::parse_read(shard.host.display(), reply)
    }

    async fn flush(&self) -> Result<(), LayerError> {
        if self.inner.registry.is_closed() {
            return Err(LayerError::Closed);
        }
        // As channels_redis: every key under the prefix goes, other processes' included.
        self.inner.delete_prefix().await?;
        lock(&self.inner.memberships).clear();
        self.inner.registry.flush();
        Ok(())
    }

    async fn close(&self) -> Result<(), LayerError> {
        let inner = &self.inner;
        if inner.registry.is_closed() {
            return Ok(());
        }
        inner.registry.close();
        // Leave every group now rather than leave members behind for group_expiry.
        if !inner.reconcile().await {
            tracing::warn!("closing without leaving every group: redis did not answer");
        }
        for task in lock(&inner.tasks).drain(..) {
            task.abort();
        }
        for task in lock(&inner.readers).drain().flat_map(|(_, t)| t) {
            task.abort();
        }
        inner.inbox_ready.store(false, Ordering::SeqCst);
        Ok(())
    }

    fn stats(&self) -> LayerStats {
        let c = &self.inner.counters;
        let local = self.inner.registry.stats();
        LayerStats {
            undecodable: c.undecodable.load(Ordering::Relaxed),
            publish_errors: c.publish_errors.load(Ordering::Relaxed),
            disconnects: self
                .inner
                .shards
                .iter()
                .map(|s| s.disconnects.load(Ordering::Relaxed))
                .sum(),
            master_switches: self
                .inner
                .shards
                .iter()
                .map(|s| s.host.master_switches())
                .sum(),
            expired: local.expired + c.expired.load(Ordering::Relaxed),
            dropped_full: local.dropped_full + c.dropped_full.load(Ordering::Relaxed),
            ..local
        }
    }

    fn is_ready(&self) -> bool {
        let inner = &self.inner;
        !inner.registry.is_closed()
            && inner.inbox_ready.load(Ordering::SeqCst)
            && inner
                .shards
                .iter()
                .all(|s| s.healthy.load(Ordering::SeqCst))
    }

    fn not_ready_reason(&self) -> Option<String> {
        let inner = &self.inner;
        if inner.registry.is_closed() {
            return Some(LayerError::Closed.to_string());
        }
        if let Some(shard) = inner
            .shards
            .iter()
            .find(|s| !s.healthy.load(Ordering::SeqCst))
        {
            return Some(
                shard.problem().unwrap_or_else(|| {
                    format!("redis shard {} is connecting", shard.host.display())
                }),
            );
        }
        if !inner.inbox_ready.load(Ordering::SeqCst) {
            return Some(
                lock(&inner.inbox_problem)
                    .clone()
                    .unwrap_or_else(|| "the redis receive loop is connecting".to_owned()),
            );
        }
        None
    }
}
