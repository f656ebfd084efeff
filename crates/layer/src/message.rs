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

use std::fmt;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::codec;

/// A msgpack value with Python's types.
#[derive(Clone, PartialEq)]
pub enum Value {
    /// Python `None`, msgpack `nil`.
    Nil,
    /// Python `bool`.
    Bool(bool),
    /// Python `int` from `-2**63` to `2**63 - 1`.
    Int(i64),
    /// Python `int` from `2**63` to `2**64 - 1` (msgpack `uint64`); smaller values are `Int`.
    UInt(u64),
    /// Python `float` (always a double, as Python packs it).
    Float(f64),
    /// Python `str`, msgpack `str`.
    Str(String),
    /// Python `bytes`, msgpack `bin`.
    Bytes(Vec<u8>),
    /// Python `list` (and `tuple`, which msgpack sends as a list).
    List(Vec<Value>),
    /// Python `dict` with str keys.
    Map(Map),
}

impl Value {
    /// The text, if this is a `str`.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The bytes, if this is a `bytes`.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Bytes(b) => Some(b),
            _ => None,
        }
    }

    /// The map, if this is a `dict`.
    pub fn as_map(&self) -> Option<&Map> {
        match self {
            Value::Map(m) => Some(m),
            _ => None,
        }
    }

    /// The integer, if this is an `int` that fits an `i64`.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// Whether this is `None`.
    pub fn is_nil(&self) -> bool {
        matches!(self, Value::Nil)
    }
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Python's repr, which is what people compare against.
        match self {
            Value::Nil => f.write_str("None"),
            Value::Bool(true) => f.write_str("True"),
            Value::Bool(false) => f.write_str("False"),
            Value::Int(i) => write!(f, "{i}"),
            Value::UInt(u) => write!(f, "{u}"),
            Value::Float(x) => write!(f, "{x:?}"),
            Value::Str(s) => write!(f, "{s:?}"),
            Value::Bytes(b) => write!(f, "b{:?}", String::from_utf8_lossy(b)),
            Value::List(l) => f.debug_list().entries(l).finish(),
            Value::Map(m) => fmt::Debug::fmt(m, f),
        }
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Str(s.to_owned())
    }
}
impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::Str(s)
    }
}
impl From<Vec<u8>> for Value {
    fn from(b: Vec<u8>) -> Self {
        Value::Bytes(b)
    }
}
impl From<&[u8]> for Value {
    fn from(b: &[u8]) -> Self {
        Value::Bytes(b.to_vec())
    }
}
impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}
impl From<i64> for Value {
    fn from(i: i64) -> Self {
        Value::Int(i)
    }
}
impl From<u64> for Value {
    fn from(u: u64) -> Self {
        match i64::try_from(u) {
            Ok(i) => Value::Int(i),
            Err(_) => Value::UInt(u),
        }
    }
}
impl From<f64> for Value {
    fn from(x: f64) -> Self {
        Value::Float(x)
    }
}
impl From<Map> for Value {
    fn from(m: Map) -> Self {
        Value::Map(m)
    }
}
impl From<Vec<Value>> for Value {
    fn from(l: Vec<Value>) -> Self {
        Value::List(l)
    }
}

/// A `dict` with str keys, in insertion order.
///
/// Lookups scan the entries: channel-layer messages have a handful of keys.
#[derive(Clone, Default, PartialEq)]
pub struct Map(Vec<(String, Value)>);

impl Map {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// The value under `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Sets `key` to `value`, keeping the key's position if it exists (as a Python dict does).
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<Value>) {
        let key = key.into();
        let value = value.into();
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.0.push((key, value)),
        }
    }

    /// Removes `key` and returns its value.
    pub fn remove(&mut self, key: &str) -> Option<Value> {
        let i = self.0.iter().position(|(k, _)| k == key)?;
        Some(self.0.remove(i).1)
    }

    /// The entries in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &Value)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The number of entries.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the map has no entries.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Builds a map from entries that are known to have distinct keys (the decoder's path).
    pub(crate) fn from_entries(entries: Vec<(String, Value)>) -> Self {
        Self(entries)
    }
}

impl fmt::Debug for Map {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(k, v)| (k, v)))
            .finish()
    }
}

impl<K: Into<String>, V: Into<Value>> FromIterator<(K, V)> for Map {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut map = Map::new();
        for (k, v) in iter {
            map.insert(k, v);
        }
        map
    }
}

/// Why a message could not be built, encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MessageError {
    /// The bytes are not one complete msgpack value.
    #[error("not a msgpack value: {0}")]
    Malformed(&'static str),
    /// Bytes remain after the value.
    #[error("{0} bytes follow the msgpack value")]
    TrailingBytes(usize),
    /// A map key is not a str (Python's `strict_map_key` rejects ints; we also reject bytes).
    #[error("a map key is not a str")]
    NonStrKey,
    /// A str is not valid UTF-8 (Python decodes with `raw=False`).
    #[error("a str is not valid UTF-8")]
    InvalidUtf8,
    /// A msgpack extension type: Python's channel layers never produce one.
    #[error("msgpack extension types are not supported")]
    Extension,
    /// Nesting deeper than the decoder's limit.
    #[error("nested deeper than {0} levels")]
    TooDeep(usize),
    /// The value is valid msgpack but not a map, so not a Channels message.
    #[error("a message must be a map with str keys")]
    NotAMap,
    /// A typed value did not convert.
    #[error("serde conversion failed: {0}")]
    Serde(String),
}

/// A channel-layer message: a [`Map`] behind a reference count.
///
/// ```
/// use channels_layer::{Message, Value};
/// let msg = Message::new("chat.message").with("text", "hi");
/// assert_eq!(msg.message_type(), Some("chat.message"));
/// assert_eq!(msg.handler_name().unwrap(), "chat_message");
/// let bytes = msg.to_msgpack();
/// assert_eq!(Message::from_msgpack(&bytes).unwrap(), msg);
/// ```
#[derive(Clone, PartialEq)]
pub struct Message(Arc<Map>);

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
        Self(Arc::new(map))
    }

    /// Wraps a map.
    pub fn from_map(map: Map) -> Self {
        Self(Arc::new(map))
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
    /// starting with an underscore is rejected.
    pub fn handler_name(&self) -> Result<String, HandlerNameError> {
        let t = self.message_type().ok_or(HandlerNameError::NoType)?;
        let name = t.replace('.', "_");
        if name.starts_with('_') {
            return Err(HandlerNameError::LeadingUnderscore);
        }
        Ok(name)
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
        let name = |t: &str| Message::new(t).handler_name();
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
