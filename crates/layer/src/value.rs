//! The values inside a channel-layer message: [`Value`] (one variant per Python type msgpack
//! carries) and [`Map`] (a `dict` with str keys, in insertion order), and [`MessageError`].
//!
//! The codec encodes and decodes these; [`Message`](crate::Message) wraps a [`Map`].

use std::fmt;

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
