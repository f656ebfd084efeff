//! The settings of the core layer, channels_redis' `RedisChannelLayer` `CONFIG`.

use std::time::Duration;

use crate::config::LayerConfig;

/// Settings of a [`RedisChannelLayer`](super::RedisChannelLayer), channels_redis' `RedisChannelLayer` `CONFIG`.
#[derive(Clone)]
#[non_exhaustive]
pub struct RedisCoreConfig {
    /// Redis URLs (`redis://` or `rediss://`), in the same order as every other process's:
    /// the order decides the shards.
    pub hosts: Vec<String>,
    /// Prefix of every key (channels_redis' `prefix`, `asgi` by default). Not empty: `flush`
    /// deletes every key that starts with it.
    pub prefix: String,
    /// channels_redis' `symmetric_encryption_keys`: the first encrypts, all decrypt.
    pub encryption_keys: Vec<String>,
    /// Capacities, `expiry` (60 s) and `group_expiry` (86400 s).
    pub local: LayerConfig,
    /// Deadline of every Redis call.
    pub timeout: Duration,
    /// How long one `BZPOPMIN` blocks (channels_redis' `brpop_timeout`, 5 s).
    pub block_timeout: Duration,
    /// Re-add this replica's live memberships every `group_expiry / 4`, so that a channel
    /// whose inbox lives longer than `group_expiry` stays in its groups. Python does not: its
    /// members drop out `group_expiry` after their latest `group_add`. With `false` the layer
    /// behaves as Python and as the trait's delivery contract states.
    pub refresh_memberships: bool,
    /// How often each shard is pinged.
    pub ping_interval: Duration,
    /// Longest wait between reconnection attempts.
    pub reconnect_max_delay: Duration,
    /// Pooled connections per host, for commands other than sends (membership writes,
    /// presence, history reads); sends share one pipelined connection per host, and each
    /// blocking reader has its own.
    pub pool_size: usize,
}

impl std::fmt::Debug for RedisCoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCoreConfig")
            .field(
                "hosts",
                &self
                    .hosts
                    .iter()
                    .map(|h| crate::redis::conn::redact(h))
                    .collect::<Vec<_>>(),
            )
            .field("prefix", &self.prefix)
            .field("encryption_keys", &self.encryption_keys.len())
            .field("refresh_memberships", &self.refresh_memberships)
            .finish_non_exhaustive()
    }
}

impl Default for RedisCoreConfig {
    fn default() -> Self {
        Self {
            hosts: vec!["redis://127.0.0.1:6379".to_owned()],
            prefix: "asgi".to_owned(),
            encryption_keys: Vec::new(),
            local: LayerConfig::default(),
            timeout: Duration::from_secs(1),
            block_timeout: Duration::from_secs(5),
            refresh_memberships: true,
            ping_interval: Duration::from_secs(1),
            reconnect_max_delay: Duration::from_millis(500),
            pool_size: 16,
        }
    }
}

impl RedisCoreConfig {
    /// The default settings for these hosts.
    pub fn new(hosts: Vec<String>) -> Self {
        Self {
            hosts,
            ..Self::default()
        }
    }
}
