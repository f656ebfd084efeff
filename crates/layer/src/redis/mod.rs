//! The Redis backends and what they share: connections, sharding, the payload format and its
//! optional encryption.

mod conn;
mod core;
#[cfg(test)]
mod fake;
pub mod fernet;
mod history;
mod presence;
mod pubconn;
mod pubsub;
pub mod resp;
mod sentinel;
pub mod shard;
mod subconn;
pub(crate) mod text;

use std::time::Duration;

pub use core::{RedisChannelLayer, RedisCoreConfig};
pub use pubsub::{
    RedisClusterChannelLayer, RedisPubSubChannelLayer, RedisPubSubConfig, group_channel,
};
pub use sentinel::percent_encode;

/// Whether `url` names a Redis Cluster (`redis+cluster://`, `rediss+cluster://`): the
/// pub/sub layer then runs as [`RedisClusterChannelLayer`].
pub fn is_cluster_url(url: &str) -> bool {
    pubsub::ClusterUrl::is_cluster_url(url)
}

use crate::error::LayerError;
use crate::message::{Message, MessageError};
use fernet::Fernet;

/// channels_redis' serializer: msgpack, then Fernet when keys are set. (The core layer also
/// puts 12 random bytes in front; pub/sub does not.)
#[derive(Debug)]
pub(crate) struct Serializer {
    fernet: Option<Fernet>,
    /// Token age limit on decrypt: `None` for pub/sub, `expiry + 10 s` for core.
    ttl: Option<Duration>,
}

/// Why a payload from Redis was rejected.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PayloadError {
    #[error("not a valid encryption token for our keys: {0}")]
    Token(#[from] fernet::FernetError),
    #[error(transparent)]
    Message(#[from] MessageError),
}

impl Serializer {
    pub(crate) fn new(keys: &[String], ttl: Option<Duration>) -> Result<Self, LayerError> {
        let fernet = if keys.is_empty() {
            None
        } else {
            Some(Fernet::new(keys).map_err(|e| LayerError::Config(e.to_string()))?)
        };
        Ok(Self { fernet, ttl })
    }

    pub(crate) fn serialize(&self, msg: &Message) -> Vec<u8> {
        let packed = msg.to_msgpack();
        match &self.fernet {
            Some(f) => f.encrypt(&packed),
            None => packed,
        }
    }

    /// The largest payload from Redis that can hold a message of at most `max` msgpack bytes
    /// (0: no limit): room for the core layer's 12-byte prefix, and for Fernet's base64 and
    /// framing when keys are set. Larger payloads are dropped before they are decrypted or
    /// decoded.
    pub(crate) fn payload_limit(&self, max: usize) -> usize {
        match (max, &self.fernet) {
            (0, _) => usize::MAX,
            (max, None) => max.saturating_add(12),
            (max, Some(_)) => max.saturating_add(12 + 16).saturating_mul(4) / 3 + 128,
        }
    }

    pub(crate) fn deserialize(&self, payload: &[u8]) -> Result<Message, PayloadError> {
        self.deserialize_within(payload, self.ttl)
    }

    /// As [`deserialize`](Self::deserialize), with no age limit on a token: history entries are
    /// kept longer than messages wait in a queue.
    pub(crate) fn deserialize_any_age(&self, payload: &[u8]) -> Result<Message, PayloadError> {
        self.deserialize_within(payload, None)
    }

    fn deserialize_within(
        &self,
        payload: &[u8],
        ttl: Option<Duration>,
    ) -> Result<Message, PayloadError> {
        match &self.fernet {
            Some(f) => Ok(Message::from_msgpack(&f.decrypt(payload, ttl)?)?),
            None => Ok(Message::from_msgpack(payload)?),
        }
    }
}
