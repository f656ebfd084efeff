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
//! process's [tag](super::liveness) and a number it has sent, so whoever else publishes to the
//! probe channel cannot keep a deaf subscriber in place. Anything undecodable that arrives
//! (forged probes included) is dropped, counted and logged. Messages published while a
//! subscriber is disconnected are lost (at most once), as with channels_redis.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use deadpool_redis::Pool;
use redis::aio::ConnectionManager;
use redis::{PushInfo, PushKind};
use tokio::task::JoinHandle;

use super::Serializer;
use super::conn::{HostUrl, bounded};
use super::liveness::ProbeKey;
use super::shard::consistent_hash;
use crate::config::{LayerConfig, LayerStats};
use crate::error::LayerError;
use crate::inbox::Inbox;
use crate::layer::ChannelLayer;
use crate::message::Message;
use crate::name::{ChannelName, GroupName};
use crate::registry::Registry;

/// Settings of a [`RedisPubSubChannelLayer`].
#[derive(Clone)]
#[non_exhaustive]
pub struct RedisPubSubConfig {
    /// Redis URLs (`redis://` or `rediss://`), in the same order as every other process's:
    /// the order decides the shards.
    pub hosts: Vec<String>,
    /// Prefix of every Redis channel (channels_redis' `prefix`, `asgi` by default). ASCII
    /// letters, digits, `-`, `_` and `.` only, so it can sit in a `PSUBSCRIBE` pattern.
    pub prefix: String,
    /// This replica's id inside its channel names; random when `None`.
    pub replica_id: Option<String>,
    /// channels_redis' `symmetric_encryption_keys`: the first encrypts, all decrypt.
    pub encryption_keys: Vec<String>,
    /// Local capacities and expiry.
    pub local: LayerConfig,
    /// Deadline of every Redis call.
    pub timeout: Duration,
    /// How often each subscriber connection is pinged.
    pub ping_interval: Duration,
    /// Longest wait between reconnection attempts.
    pub reconnect_max_delay: Duration,
    /// Publisher connections per host.
    pub pool_size: usize,
}

impl std::fmt::Debug for RedisPubSubConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisPubSubConfig")
            .field(
                "hosts",
                &self
                    .hosts
                    .iter()
                    .map(|h| super::conn::redact(h))
                    .collect::<Vec<_>>(),
            )
            .field("prefix", &self.prefix)
            .field("replica_id", &self.replica_id)
            .field("encryption_keys", &self.encryption_keys.len())
            .finish_non_exhaustive()
    }
}

impl Default for RedisPubSubConfig {
    fn default() -> Self {
        Self {
            hosts: vec!["redis://127.0.0.1:6379".to_owned()],
            prefix: "asgi".to_owned(),
            replica_id: None,
            encryption_keys: Vec::new(),
            local: LayerConfig::default(),
            timeout: Duration::from_secs(1),
            ping_interval: Duration::from_secs(1),
            reconnect_max_delay: Duration::from_millis(500),
            pool_size: 16,
        }
    }
}

impl RedisPubSubConfig {
    /// The default settings for these hosts.
    pub fn new(hosts: Vec<String>) -> Self {
        Self {
            hosts,
            ..Self::default()
        }
    }
}

/// The Redis channel that carries `group` under `prefix`: `{prefix}__group__{group}`, as
/// channels_redis' pub/sub layer names it. (Public for the property tests and fuzz targets.)
///
/// ```
/// use channels_layer::GroupName;
/// use channels_layer::redis::group_channel;
/// assert_eq!(group_channel("asgi", &GroupName::new("g1")?), "asgi__group__g1");
/// # Ok::<(), channels_layer::NameError>(())
/// ```
pub fn group_channel(prefix: &str, group: &GroupName) -> String {
    format!("{}{group}", group_channel_prefix(prefix))
}

/// What every group's Redis channel starts with: `{prefix}__group__`.
fn group_channel_prefix(prefix: &str) -> String {
    format!("{prefix}__group__")
}

/// The Redis channels of this replica.
#[derive(Debug)]
struct Names {
    /// `{prefix}__group__`
    group: String,
    /// `{prefix}specific.{replica}`, the non-`!` part of this replica's channel names.
    specific: String,
    /// `{prefix}specific.{replica}!*`
    pattern: String,
    /// `{prefix}specific.{replica}!~probe`: inside the pattern, never a local channel's name
    /// (`~` is not allowed in channel names). Anyone may publish to it; only this process's
    /// signed probes count.
    probe: String,
}

impl Names {
    fn group_channel(&self, group: &GroupName) -> String {
        format!("{}{group}", self.group)
    }

    fn is_own(&self, channel: &ChannelName) -> bool {
        channel
            .as_str()
            .strip_prefix(&self.specific)
            .is_some_and(|rest| rest.starts_with('!'))
    }
}

/// Counters of the Redis side.
#[derive(Debug, Default)]
struct Counters {
    undecodable: AtomicU64,
    publish_errors: AtomicU64,
    disconnects: AtomicU64,
}

/// What the push callbacks need: it holds no reference back to the layer.
#[derive(Debug)]
struct Router {
    registry: Arc<Registry>,
    names: Names,
    serializer: Serializer,
    counters: Counters,
    /// Per shard: whether its subscriber answered the latest ping after a full resync.
    connected: Vec<AtomicBool>,
    /// Per shard: a disconnect was seen; resubscribe everything at the next good ping.
    resync: Vec<AtomicBool>,
    /// Per shard: the generation of the current subscriber connection; pushes from older
    /// (replaced) connections are ignored.
    generation: Vec<AtomicU64>,
    /// Signs this process's liveness probes.
    probe_key: ProbeKey,
    /// Per shard: the number of the latest liveness probe published (or being published).
    probe_sent: Vec<AtomicU64>,
    /// Per shard: the number of the latest liveness probe that came back (never above
    /// `probe_sent`).
    probe_seen: Vec<AtomicU64>,
}

impl Router {
    fn on_push(&self, shard: usize, generation: u64, push: PushInfo) {
        if self.generation[shard].load(Ordering::SeqCst) != generation {
            return;
        }
        match push.kind {
            PushKind::Message => {
                if let [
                    redis::Value::BulkString(ch),
                    redis::Value::BulkString(payload),
                ] = &push.data[..]
                {
                    self.route(ch, payload);
                }
            }
            PushKind::PMessage => {
                if let [
                    _,
                    redis::Value::BulkString(ch),
                    redis::Value::BulkString(payload),
                ] = &push.data[..]
                {
                    if *ch == self.names.probe.as_bytes() {
                        self.probe_returned(shard, payload);
                    } else {
                        self.route(ch, payload);
                    }
                }
            }
            PushKind::Disconnection => {
                self.resync[shard].store(true, Ordering::SeqCst);
                if self.connected[shard].swap(false, Ordering::SeqCst) {
                    self.counters.disconnects.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(shard, "redis subscriber disconnected: reconnecting");
                }
            }
            _ => {}
        }
    }

    /// A message on the probe channel came back through the subscriber of `shard`. It counts
    /// only if this process signed it and sent its number: anything else is dropped and
    /// counted as undecodable.
    fn probe_returned(&self, shard: usize, payload: &[u8]) {
        match self.probe_key.verify(shard, payload) {
            Ok(n) if n <= self.probe_sent[shard].load(Ordering::SeqCst) => {
                self.probe_seen[shard].fetch_max(n, Ordering::SeqCst);
            }
            Ok(_) => self.undecodable(&self.names.probe, "liveness probe not sent yet"),
            Err(error) => self.undecodable(&self.names.probe, error),
        }
    }

    /// Delivers one published payload to the local inboxes it is for. Never blocks: full
    /// inboxes drop (and count) the message.
    fn route(&self, channel: &[u8], payload: &[u8]) {
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
                    self.registry.deliver_group(&group, &msg);
                }
                Err(error) => self.undecodable(channel, error),
            }
        } else if let Ok(name) = ChannelName::new(channel)
            && let Err(error) = self.registry.send(&name, msg)
        {
            crate::log_limited!(warn, %error, channel = %name, "message for a local channel dropped");
        }
    }

    fn undecodable(&self, channel: &str, error: impl std::fmt::Display) {
        let n = self.counters.undecodable.fetch_add(1, Ordering::Relaxed) + 1;
        // Log the first few, then every thousandth: garbage must not flood the logs.
        if n <= 10 || n.is_multiple_of(1000) {
            tracing::warn!(
                %channel,
                %error,
                total = n,
                "undecodable message from redis dropped"
            );
        }
    }
}

#[derive(Debug)]
struct Shard {
    index: usize,
    host: HostUrl,
    pool: Pool,
    /// The current subscriber connection (cloned out for each use: clones share it).
    subscriber: Mutex<ConnectionManager>,
    router: Arc<Router>,
    timeout: Duration,
    reconnect_max_delay: Duration,
}

impl Shard {
    fn new(
        index: usize,
        url: &str,
        config: &RedisPubSubConfig,
        router: &Arc<Router>,
    ) -> Result<Self, LayerError> {
        let host = HostUrl::parse(url)?;
        let subscriber = Self::connect_subscriber(
            &host,
            index,
            config.timeout,
            config.reconnect_max_delay,
            router,
        )?;
        Ok(Shard {
            index,
            pool: host.pool(config.timeout, config.pool_size)?,
            subscriber: Mutex::new(subscriber),
            host,
            router: Arc::clone(router),
            timeout: config.timeout,
            reconnect_max_delay: config.reconnect_max_delay,
        })
    }

    /// A lazily connecting subscriber whose pushes reach the router tagged with the shard's
    /// current generation.
    fn connect_subscriber(
        host: &HostUrl,
        index: usize,
        timeout: Duration,
        max_delay: Duration,
        router: &Arc<Router>,
    ) -> Result<ConnectionManager, LayerError> {
        let generation = router.generation[index].load(Ordering::SeqCst);
        let router = Arc::clone(router);
        host.subscriber(timeout, max_delay, move |push| {
            router.on_push(index, generation, push);
            Ok(())
        })
    }

    fn subscriber(&self) -> ConnectionManager {
        self.subscriber
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Drops the subscriber connection for a new one, which the next good ping resubscribes;
    /// anything the old one still delivers is ignored from now on.
    fn replace_subscriber(&self) -> Result<(), LayerError> {
        self.router.generation[self.index].fetch_add(1, Ordering::SeqCst);
        self.router.resync[self.index].store(true, Ordering::SeqCst);
        let fresh = Self::connect_subscriber(
            &self.host,
            self.index,
            self.timeout,
            self.reconnect_max_delay,
            &self.router,
        )?;
        *self.subscriber.lock().unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(())
    }
}

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
            match layer.inner.resync(shard).await {
                Ok(()) => {
                    router.resync[shard].store(false, Ordering::SeqCst);
                    router.connected[shard].store(true, Ordering::SeqCst);
                }
                Err(error) => tracing::error!(
                    %error,
                    "redis is unreachable at startup: retrying in the background"
                ),
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
        let specific = format!("{}specific.{replica}", config.prefix);
        // The longest name we make must still be a valid channel name, and the prefix must be
        // safe inside a PSUBSCRIBE pattern: the channel-name rule guarantees both.
        ChannelName::new(&format!("{specific}!{}", "x".repeat(12))).map_err(|_| {
            LayerError::Config(format!(
                "prefix {:?} and replica id {replica:?} must be ASCII letters, digits, '-', '_' \
                 or '.', and short enough for channel names under 100 characters",
                config.prefix
            ))
        })?;
        let names = Names {
            group: group_channel_prefix(&config.prefix),
            pattern: format!("{specific}!*"),
            probe: format!("{specific}!~probe"),
            specific,
        };
        let registry = Registry::new(config.local.clone());
        let n = config.hosts.len();
        let router = Arc::new(Router {
            registry: Arc::clone(&registry),
            names,
            serializer: Serializer::new(&config.encryption_keys, None)?,
            counters: Counters::default(),
            connected: (0..n).map(|_| AtomicBool::new(false)).collect(),
            resync: (0..n).map(|_| AtomicBool::new(true)).collect(),
            generation: (0..n).map(|_| AtomicU64::new(0)).collect(),
            probe_key: ProbeKey::random(),
            probe_sent: (0..n).map(|_| AtomicU64::new(0)).collect(),
            probe_seen: (0..n).map(|_| AtomicU64::new(0)).collect(),
        });
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
        });
        let mut tasks = Vec::new();
        for shard in 0..n {
            tasks.push(tokio::spawn(ping_loop(
                Arc::downgrade(&inner),
                shard,
                config.ping_interval,
            )));
        }
        tasks.push(tokio::spawn(reconcile_loop(
            Arc::downgrade(&inner),
            config.ping_interval,
        )));
        *inner.tasks.lock().unwrap_or_else(|e| e.into_inner()) = tasks;
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

    /// One `PUBLISH` on `shard` through its pool, within the timeout.
    async fn publish_on(
        &self,
        shard: &Shard,
        channel: &str,
        payload: impl redis::ToRedisArgs + Send + Sync,
    ) -> Result<i64, LayerError> {
        bounded(&shard.host, self.timeout, "PUBLISH", async {
            let mut conn = shard.pool.get().await.map_err(|e| {
                redis::RedisError::from(std::io::Error::new(
                    std::io::ErrorKind::NotConnected,
                    e.to_string(),
                ))
            })?;
            redis::cmd("PUBLISH")
                .arg(channel)
                .arg(payload)
                .query_async::<i64>(&mut conn)
                .await
        })
        .await
    }

    /// Subscribes to `channel` unless Redis already confirmed it. Safe to cancel: see
    /// [`Subscriptions`].
    async fn ensure_subscribed(&self, channel: String) -> Result<(), LayerError> {
        let i = self.shard_of(&channel);
        let mut subscribed = self.subscribed.lock().await;
        if subscribed[i].is_confirmed(&channel) {
            return Ok(());
        }
        subscribed[i]
            .apply(Change::Subscribe, &self.shards[i], self.timeout, &[channel])
            .await
    }

    /// The channels the registry needs, per shard.
    fn desired(&self) -> Vec<HashSet<String>> {
        let (groups, channels) = self.registry.snapshot();
        let mut desired = vec![HashSet::new(); self.shards.len()];
        let names = &self.router.names;
        let wanted = groups.iter().map(|g| names.group_channel(g)).chain(
            channels
                .iter()
                .filter(|c| !names.is_own(c))
                .map(|c| c.as_str().to_owned()),
        );
        for channel in wanted {
            desired[self.shard_of(&channel)].insert(channel);
        }
        desired
    }

    /// Brings the subscriptions in line with the registry: unsubscribes everything Redis may
    /// hold that no local member needs any more, subscribes what is needed and not confirmed.
    /// What fails stays unsettled and is retried by the next pass.
    async fn reconcile(&self) {
        let mut subscribed = self.subscribed.lock().await;
        let desired = self.desired();
        for (i, shard) in self.shards.iter().enumerate() {
            let subscribed = &mut subscribed[i];
            let stale = subscribed.stale(&desired[i]);
            if let Err(error) = subscribed
                .apply(Change::Unsubscribe, shard, self.timeout, &stale)
                .await
            {
                tracing::debug!(%error, "unsubscribe postponed");
            }
            let missing = subscribed.missing(&desired[i]);
            if let Err(error) = subscribed
                .apply(Change::Subscribe, shard, self.timeout, &missing)
                .await
            {
                tracing::debug!(%error, "subscribe postponed");
            }
        }
    }

    /// Whether a connected shard has a subscription whose state Redis did not confirm (a
    /// cancelled or failed call): the periodic pass of [`reconcile_loop`] then settles it. A
    /// disconnected shard is left to its [`resync`](Self::resync), and a busy lock to its
    /// holder.
    fn unsettled(&self) -> bool {
        let Ok(subscribed) = self.subscribed.try_lock() else {
            return false;
        };
        let router = &self.router;
        subscribed.iter().enumerate().any(|(i, s)| {
            router.connected[i].load(Ordering::SeqCst)
                && !router.resync[i].load(Ordering::SeqCst)
                && s.has_unsettled()
        })
    }

    /// After a (re)connect: the pattern, then every channel the registry needs, from scratch
    /// (the connection may be a new one), and away with everything else Redis may hold.
    async fn resync(&self, i: usize) -> Result<(), LayerError> {
        let shard = &self.shards[i];
        let mut sub = shard.subscriber();
        let mut subscribed = self.subscribed.lock().await;
        bounded(
            &shard.host,
            self.timeout,
            "PSUBSCRIBE",
            sub.psubscribe(&self.router.names.pattern),
        )
        .await?;
        let desired = self.desired().swap_remove(i);
        let subscribed = &mut subscribed[i];
        let all: Vec<String> = desired.iter().cloned().collect();
        subscribed
            .apply(Change::Subscribe, shard, self.timeout, &all)
            .await?;
        let stale = subscribed.stale(&desired);
        subscribed
            .apply(Change::Unsubscribe, shard, self.timeout, &stale)
            .await
    }
}

/// What one shard's subscriber connection may be subscribed to, and whether Redis confirmed
/// it. A channel is entered (unconfirmed) *before* its `SUBSCRIBE` is sent and removed only
/// after an `UNSUBSCRIBE` of it succeeded. A call cancelled or timed out in between may still
/// reach Redis (and redis-rs replays whatever Redis confirmed after a reconnect), so its
/// channel stays here, unconfirmed, until a later pass settles it: the subscriptions converge
/// to the registry wherever a call is cancelled.
#[derive(Debug, Default, Clone)]
struct Subscriptions(HashMap<String, bool>);

/// What [`Subscriptions::apply`] asks of Redis.
#[derive(Debug, Clone, Copy)]
enum Change {
    Subscribe,
    Unsubscribe,
}

impl Subscriptions {
    /// Redis answered the latest `SUBSCRIBE` of `channel` and no `UNSUBSCRIBE` followed.
    fn is_confirmed(&self, channel: &str) -> bool {
        self.0.get(channel).copied().unwrap_or(false)
    }

    fn has_unsettled(&self) -> bool {
        self.0.values().any(|confirmed| !confirmed)
    }

    /// What Redis may hold that `desired` does not want.
    fn stale(&self, desired: &HashSet<String>) -> Vec<String> {
        self.0
            .keys()
            .filter(|c| !desired.contains(*c))
            .cloned()
            .collect()
    }

    /// What `desired` wants and Redis did not confirm.
    fn missing(&self, desired: &HashSet<String>) -> Vec<String> {
        desired
            .iter()
            .filter(|c| !self.is_confirmed(c))
            .cloned()
            .collect()
    }

    /// Sends `change` for `channels` on `shard`, 512 at a time. A batch is unconfirmed while
    /// its call runs (Redis may run it even if the call is cancelled or times out), then
    /// confirmed (subscribed) or forgotten (unsubscribed) once Redis answered. Stops at the
    /// first failure.
    async fn apply(
        &mut self,
        change: Change,
        shard: &Shard,
        timeout: Duration,
        channels: &[String],
    ) -> Result<(), LayerError> {
        let mut sub = shard.subscriber();
        for batch in channels.chunks(512) {
            self.mark(batch, false);
            match change {
                Change::Subscribe => {
                    bounded(&shard.host, timeout, "SUBSCRIBE", sub.subscribe(batch)).await?;
                    self.mark(batch, true);
                }
                Change::Unsubscribe => {
                    bounded(&shard.host, timeout, "UNSUBSCRIBE", sub.unsubscribe(batch)).await?;
                    for channel in batch {
                        self.0.remove(channel);
                    }
                }
            }
        }
        Ok(())
    }

    fn mark(&mut self, channels: &[String], confirmed: bool) {
        for channel in channels {
            self.0.insert(channel.clone(), confirmed);
        }
    }
}

/// Pings shard `i`'s subscriber; marks it disconnected on failure, and resubscribes everything
/// when it answers again. While it answers, the [`Probe`] checks that it also receives.
async fn ping_loop(inner: Weak<Inner>, i: usize, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut probe = Probe::default();
    loop {
        ticker.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let shard = &inner.shards[i];
        let router = &inner.router;
        let mut sub = shard.subscriber();
        let ping = tokio::time::timeout(
            inner.timeout,
            redis::cmd("PING").query_async::<redis::Value>(&mut sub),
        )
        .await;
        drop(sub);
        let ping = match ping {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) if !error.is_timeout() => {
                Err(shard.host.unavailable(format!("PING failed: {error}")))
            }
            Ok(Err(_)) | Err(_) => {
                // No answer and no error: the connection may be black-holed or half-open, and
                // redis-rs only reconnects on errors. Start over with a fresh one.
                if let Err(error) = shard.replace_subscriber() {
                    tracing::error!(%error, "cannot replace the redis subscriber");
                }
                Err(shard.host.unavailable(format!(
                    "PING timed out after {:?}: connection replaced",
                    inner.timeout
                )))
            }
        };
        match ping {
            Ok(_) => {
                if router.resync[i].swap(false, Ordering::SeqCst) {
                    if let Err(error) = inner.resync(i).await {
                        router.resync[i].store(true, Ordering::SeqCst);
                        tracing::warn!(%error, "resubscribe failed: retrying");
                        continue;
                    }
                    if !router.connected[i].swap(true, Ordering::SeqCst) {
                        tracing::info!(host = shard.host.display(), "redis subscriber connected");
                    }
                }
                // It answers; does it also hear?
                if let Err(error) = probe.check(&inner, i).await {
                    if let Err(error) = shard.replace_subscriber() {
                        tracing::error!(%error, "cannot replace the redis subscriber");
                    }
                    if router.connected[i].swap(false, Ordering::SeqCst) {
                        router.counters.disconnects.fetch_add(1, Ordering::Relaxed);
                    }
                    tracing::error!(%error, "redis subscriber hears nothing: connection replaced");
                }
            }
            Err(error) => {
                router.resync[i].store(true, Ordering::SeqCst);
                if router.connected[i].swap(false, Ordering::SeqCst) {
                    router.counters.disconnects.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(%error, "redis subscriber unreachable: reconnecting");
                }
            }
        }
    }
}

/// The liveness probe of one shard: every ping interval, one `PUBLISH` to this replica's own
/// pattern through the publisher pool, which must come back through the subscriber.
#[derive(Debug, Default)]
struct Probe {
    /// The number of the latest probe sent (0: none since the subscriber last connected).
    sent: u64,
    /// The latest probe seen back at the previous tick.
    seen_before: u64,
    /// Ticks in a row at which a probe was outstanding and none came back.
    misses: u32,
}

impl Probe {
    /// Counts a miss when a probe is outstanding and nothing came back since the previous
    /// tick, fails at two misses in a row, and sends the next probe. Does nothing while the
    /// subscriber is (re)connecting. A slow but live subscriber keeps returning probes, late
    /// or not, and is never replaced.
    async fn check(&mut self, inner: &Inner, i: usize) -> Result<(), LayerError> {
        let router = &inner.router;
        if !router.connected[i].load(Ordering::SeqCst) || router.resync[i].load(Ordering::SeqCst) {
            *self = Probe::default();
            return Ok(());
        }
        let seen = router.probe_seen[i].load(Ordering::SeqCst);
        if self.sent > seen && seen == self.seen_before {
            self.misses += 1;
            if self.misses >= 2 {
                *self = Probe::default();
                return Err(inner.shards[i].host.unavailable(
                    "two liveness probes in a row did not come back through the subscriber",
                ));
            }
        } else {
            self.misses = 0;
        }
        self.seen_before = seen;
        // Announced before it is published, since it may come back before PUBLISH returns.
        let next = router.probe_sent[i]
            .load(Ordering::SeqCst)
            .saturating_add(1);
        router.probe_sent[i].store(next, Ordering::SeqCst);
        let payload = router.probe_key.payload(i, next);
        let published = inner
            .publish_on(&inner.shards[i], &router.names.probe, payload)
            .await;
        match published {
            Ok(_) => self.sent = next,
            // Publishing is the pool's problem (group sends report it); only a probe that
            // reached Redis is waited for.
            Err(error) => tracing::debug!(%error, "liveness probe not sent"),
        }
        Ok(())
    }
}

/// Follows registry changes with (un)subscriptions. Every `interval` it also settles what a
/// cancelled or failed call left unconfirmed, so that no subscription waits for the next
/// registry change (which may never come) to be retried or removed.
async fn reconcile_loop(inner: Weak<Inner>, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let registry = match inner.upgrade() {
            Some(inner) => Arc::clone(&inner.registry),
            None => return,
        };
        // A change notification that loses the race to the tick is kept by `Notify` for the
        // next turn.
        let changed = tokio::select! {
            () = registry.changed() => true,
            _ = ticker.tick() => false,
        };
        drop(registry);
        let Some(inner) = inner.upgrade() else { return };
        if changed || inner.unsettled() {
            inner.reconcile().await;
        }
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
                .ensure_subscribed(name.as_str().to_owned())
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
        self.inner
            .ensure_subscribed(self.inner.router.names.group_channel(group))
            .await
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
        self.inner
            .publish(&self.inner.router.names.group_channel(group), payload)
            .await
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
}
