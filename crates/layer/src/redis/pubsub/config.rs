//! The settings of a [`RedisPubSubChannelLayer`](super::RedisPubSubChannelLayer).

use std::time::Duration;

use crate::config::LayerConfig;

/// Settings of a [`RedisPubSubChannelLayer`](super::RedisPubSubChannelLayer).
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
    /// Pooled connections per host, for commands other than publishes (presence, history
    /// reads); publishes share one pipelined connection per host.
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
                    .map(|h| crate::redis::conn::redact(h))
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
