//! Django Channels' channel layer, in Rust.
//!
//! A channel layer lets many consumers talk to each other: each consumer has a *channel* (an
//! inbox with a name), channels join named *groups*, and a message sent to a group reaches every
//! member. This crate knows nothing of HTTP or WebSockets; the server crate builds consumers on
//! it.
//!
//! # Layout
//!
//! * [`name`]: [`ChannelName`] and [`GroupName`], validated with Channels 4.3's rules.
//! * [`message`]: [`Message`] and [`Value`], msgpack maps faithful to Python's types.
//! * [`codec`]: msgpack encoding byte-compatible with Python, and a hardened decoder.
//! * [`ChannelLayer`]: the trait, with the delivery contract in its docs.
//! * [`history`]: per-group history with offsets and epochs, for recovery after a reconnect.
//! * [`presence`]: who is in a group, across processes.
//! * [`Inbox`]: the receiving end of a channel; dropping it leaves its groups.
//! * [`InMemoryChannelLayer`]: the single-process backend.
//! * [`ratelog`]: [`log_limited!`] for log lines that outsiders can trigger.
//! * `testing` (feature `testing`): the conformance suite every backend runs.
//!
//! # Example
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use channels_layer::{ChannelLayer, GroupName, InMemoryChannelLayer, Message};
//! let layer = InMemoryChannelLayer::default();
//! let mut alice = layer.new_channel().await?;
//! let mut bob = layer.new_channel().await?;
//! let room = GroupName::new("room")?;
//! layer.group_add(&room, alice.name()).await?;
//! layer.group_add(&room, bob.name()).await?;
//! layer.group_send(&room, Message::new("chat.message").with("text", "hi")).await?;
//! for inbox in [&mut alice, &mut bob] {
//!     let msg = inbox.recv().await.unwrap();
//!     assert_eq!(msg.get("text").and_then(|v| v.as_str()), Some("hi"));
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```

mod capacity;
pub mod codec;
mod config;
mod error;
pub mod history;
mod inbox;
mod layer;
mod memory;
pub mod message;
pub mod name;
mod position;
pub mod presence;
pub mod ratelog;
pub mod redis;
mod registry;
mod sync;
#[cfg(feature = "testing")]
pub mod testing;
mod value;

pub use capacity::{ChannelCapacity, InvalidPattern};
pub use config::{LayerConfig, LayerStats};
pub use error::LayerError;
pub use history::{Epoch, HistoryRead, Position, Since};
pub use inbox::{Bypass, Inbox, Received, Taken};
pub use layer::ChannelLayer;
pub use memory::InMemoryChannelLayer;
pub use message::{HandlerNameError, Map, Message, MessageError, Value};
pub use name::{ChannelName, GroupName, NameError, NameKind};
pub use presence::{Presence, PresenceMember};
pub use redis::{
    RedisChannelLayer, RedisClusterChannelLayer, RedisCoreConfig, RedisPubSubChannelLayer,
    RedisPubSubConfig,
};
