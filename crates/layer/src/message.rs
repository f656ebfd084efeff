//! Channel-layer messages: a msgpack map with str keys, faithful to Python's types.
//!
//! A [`Message`] is what Channels calls a message: a `dict` with str keys, usually with a
//! `"type"` key that names the handler. Its values are [`Value`]s, one variant per type that
//! `msgpack` moves between Python and Rust without loss: `None`, `bool`, `int`, `float`, `str`,
//! `bytes`, `list` and `dict`. Key order is kept, as Python's `dict` keeps it, so a message
//! re-encodes to the bytes Python produced.
//!
//! Messages are immutable once shared: cloning one is a reference-count increment, so a group
//! send hands the same message to every local member without copying it.
//!
//! Typed structs convert with serde through msgpack ([`Message::from_serialize`],
//! [`Message::deserialize`]); use `serde_bytes` for byte fields, as Python `bytes` are msgpack
//! `bin`.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::codec;
use crate::position::Position;
pub use crate::value::{Map, MessageError, Value};

/// A channel-layer message: a [`Map`] behind a reference count, and, for a group message
/// delivered with history on, its [`Position`] in the group's history. The position is not
/// part of the map: it never reaches the wire, and equality compares the maps only.
///
/// ```
/// use channels_layer::{Message, Value};
/// let msg = Message::new("chat.message").with("text", "hi");
/// assert_eq!(msg.message_type(), Some("chat.message"));
/// assert_eq!(msg.handler_name().unwrap(), "chat_message");
/// let bytes = msg.to_msgpack();
/// assert_eq!(Message::from_msgpack(&bytes).unwrap(), msg);
/// ```
#[derive(Clone)]
pub struct Message(Arc<Map>, Option<Position>);

impl PartialEq for Message {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

/// Why a message's `type` cannot name a handler (Channels' `get_handler_name`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandlerNameError {
    /// No `type` key, or it is not a str.
    #[error("Incoming message has no 'type' attribute")]
    NoType,
    /// The handler name would start with `_` (the type starts with `.` or `_`).
    #[error("Malformed type in message (leading underscore)")]
    LeadingUnderscore,
}

impl Message {
    /// A message with just a `type`.
    pub fn new(message_type: &str) -> Self {
        let mut map = Map::new();
        map.insert("type", message_type);
        Self(Arc::new(map), None)
    }

    /// Wraps a map.
    pub fn from_map(map: Map) -> Self {
        Self(Arc::new(map), None)
    }

    /// Where this message sits in its group's history: set by the layer on a group message
    /// delivered with history on (`--history-size`), `None` otherwise (direct sends, history
    /// off, and group messages that did not go through history, such as a Python
    /// `group_send`).
    pub fn position(&self) -> Option<Position> {
        self.1
    }

    /// The message with `position` (layers set it on delivery).
    pub fn with_position(mut self, position: Option<Position>) -> Self {
        self.1 = position;
        self
    }

    /// Returns the message with `key` set to `value` (copy-on-write if shared).
    pub fn with(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.insert(key, value);
        self
    }

    /// Sets `key` to `value` (copy-on-write if shared).
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<Value>) {
        Arc::make_mut(&mut self.0).insert(key, value);
    }

    /// The map.
    pub fn map(&self) -> &Map {
        &self.0
    }

    /// The value under `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key)
    }

    /// The `type` key, if it is a str.
    pub fn message_type(&self) -> Option<&str> {
        self.get("type").and_then(Value::as_str)
    }

    /// The handler name Channels derives from `type`: dots become underscores, and a name
    /// starting with an underscore is rejected. Borrowed when `type` has no dot (no allocation
    /// on the delivery path of a type such as `send_msg`).
    pub fn handler_name(&self) -> Result<Cow<'_, str>, HandlerNameError> {
        let t = self.message_type().ok_or(HandlerNameError::NoType)?;
        if t.starts_with(['.', '_']) {
            return Err(HandlerNameError::LeadingUnderscore);
        }
        Ok(if t.contains('.') {
            Cow::Owned(t.replace('.', "_"))
        } else {
            Cow::Borrowed(t)
        })
    }

    /// Whether `other` is this very message, shared: one send handed to several receivers (a
    /// group message delivered to every local member), not merely an equal one. A consumer can
    /// key work done once per message on it.
    pub fn same(&self, other: &Message) -> bool {
        Arc::ptr_eq(&self.0, &other.0) && self.1 == other.1
    }

    /// Encodes as msgpack the way Python's `msgpack.packb` does (`use_bin_type=True`).
    pub fn to_msgpack(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        codec::encode_map(&mut out, &self.0);
        out
    }

    /// The length of [`to_msgpack`](Self::to_msgpack)'s bytes, without encoding.
    pub fn encoded_len(&self) -> usize {
        codec::map_encoded_len(&self.0)
    }

    /// Decodes msgpack bytes that hold exactly one map with str keys.
    pub fn from_msgpack(bytes: &[u8]) -> Result<Self, MessageError> {
        match codec::decode_exact(bytes)? {
            Value::Map(m) => Ok(Self::from_map(m)),
            _ => Err(MessageError::NotAMap),
        }
    }

    /// Converts a typed value (a struct or map) into a message, with msgpack's named-field
    /// encoding, so a struct becomes a dict as Python expects.
    ///
    /// ```
    /// #[derive(serde::Serialize)]
    /// struct Chat<'a> { r#type: &'a str, text: &'a str }
    /// let msg = channels_layer::Message::from_serialize(&Chat { r#type: "chat.message", text: "hi" })?;
    /// assert_eq!(msg.get("text").and_then(|v| v.as_str()), Some("hi"));
    /// # Ok::<(), channels_layer::MessageError>(())
    /// ```
    pub fn from_serialize<T: Serialize + ?Sized>(value: &T) -> Result<Self, MessageError> {
        let bytes =
            rmp_serde::to_vec_named(value).map_err(|e| MessageError::Serde(e.to_string()))?;
        Self::from_msgpack(&bytes)
    }

    /// Converts the message into a typed value.
    pub fn deserialize<T: DeserializeOwned>(&self) -> Result<T, MessageError> {
        rmp_serde::from_slice(&self.to_msgpack()).map_err(|e| MessageError::Serde(e.to_string()))
    }
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handler_name_follows_channels() {
        let name = |t: &str| Message::new(t).handler_name().map(Cow::into_owned);
        assert_eq!(name("chat.message").unwrap(), "chat_message");
        assert_eq!(name("a..b").unwrap(), "a__b");
        assert_eq!(name("x._y").unwrap(), "x__y");
        assert_eq!(
            name("_my_private_handler"),
            Err(HandlerNameError::LeadingUnderscore)
        );
        assert_eq!(
            name(".my_private_handler"),
            Err(HandlerNameError::LeadingUnderscore)
        );
        let untyped = Message::from_map(Map::new());
        assert_eq!(untyped.handler_name(), Err(HandlerNameError::NoType));
        assert_eq!(
            HandlerNameError::NoType.to_string(),
            "Incoming message has no 'type' attribute"
        );
    }

    #[test]
    fn insert_keeps_key_position() {
        let mut m = Map::new();
        m.insert("a", 1i64);
        m.insert("b", 2i64);
        m.insert("a", 3i64);
        let keys: Vec<_> = m.iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["a", "b"]);
        assert_eq!(m.get("a"), Some(&Value::Int(3)));
    }

    #[test]
    fn clones_share_until_written() {
        let a = Message::new("x");
        let mut b = a.clone();
        assert!(Arc::ptr_eq(&a.0, &b.0));
        b.insert("k", "v");
        assert!(a.get("k").is_none());
        assert_eq!(b.get("k").and_then(Value::as_str), Some("v"));
    }

    #[test]
    fn big_unsigned_ints_stay_unsigned() {
        assert_eq!(Value::from(5u64), Value::Int(5));
        assert_eq!(Value::from(u64::MAX), Value::UInt(u64::MAX));
    }

    #[test]
    fn typed_round_trip_keeps_bytes_as_bytes() {
        #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
        struct Event {
            r#type: String,
            #[serde(with = "serde_bytes")]
            blob: Vec<u8>,
            n: i64,
        }
        let ev = Event {
            r#type: "blob.event".into(),
            blob: vec![0, 255],
            n: -3,
        };
        let msg = Message::from_serialize(&ev).unwrap();
        assert_eq!(msg.get("blob"), Some(&Value::Bytes(vec![0, 255])));
        assert_eq!(msg.deserialize::<Event>().unwrap(), ev);
    }

    #[test]
    fn a_non_map_is_not_a_message() {
        assert_eq!(
            Message::from_serialize(&5).unwrap_err(),
            MessageError::NotAMap
        );
    }
}
