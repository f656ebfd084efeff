//! The core layer's bytes in Redis: key names, scores, payloads and the Lua scripts, as
//! channels_redis 4.3's `core.py` writes them (`channels-wire-spec.md` §3, §4.1, §4.2).
//!
//! Nothing here talks to Redis; the layer, the receive loops and the membership bookkeeping
//! build their commands from these pieces so that every process on the same Redis, Python or
//! Rust, reads what the others write.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::message::{Message, Value};
use crate::name::{ChannelName, GroupName};
use crate::redis::{PayloadError, Serializer};

/// Random bytes in front of every stored payload (channels_redis' `random_prefix_length`): they
/// make two equal messages distinct members of the sorted set.
pub(super) const RANDOM_PREFIX_LEN: usize = 12;

/// The message key that names the receiving channel(s) of a process-local key: a str for
/// `send`, a list of str for `group_send`.
pub(super) const CHANNEL_KEY: &str = "__asgi_channel__";

/// The Redis key names of one layer instance.
#[derive(Debug)]
pub(super) struct Keys {
    prefix: String,
    /// `specific.{client_prefix}!`: the non-local part of every channel this layer makes, and
    /// what the shard hash of its inbox key takes (without the layer prefix, as in Python).
    local_part: String,
    /// `{prefix}specific.{client_prefix}!`: the sorted set this layer's receive loop pops.
    inbox: String,
}

impl Keys {
    pub(super) fn new(prefix: &str, client_prefix: &str) -> Self {
        let local_part = format!("specific.{client_prefix}!");
        Self {
            prefix: prefix.to_owned(),
            inbox: format!("{prefix}{local_part}"),
            local_part,
        }
    }

    /// `specific.{client_prefix}!`
    pub(super) fn local_part(&self) -> &str {
        &self.local_part
    }

    /// `{prefix}specific.{client_prefix}!`
    pub(super) fn inbox(&self) -> &str {
        &self.inbox
    }

    /// The history keys of `group` (named after its pub/sub channel, as in the pub/sub layer).
    pub(super) fn history(&self, group: &GroupName) -> (String, String) {
        let channel = crate::redis::group_channel(&self.prefix, group);
        crate::redis::history::keys(&self.prefix, &channel)
    }

    /// The presence keys of `group` (named after its pub/sub channel, as in the pub/sub layer).
    pub(super) fn presence(&self, group: &GroupName) -> (String, String) {
        let channel = crate::redis::group_channel(&self.prefix, group);
        crate::redis::presence::keys(&self.prefix, &channel)
    }

    /// `{prefix}:group:{group}`
    pub(super) fn group(&self, group: &GroupName) -> String {
        format!("{}:group:{group}", self.prefix)
    }

    /// The sorted set holding messages for `non_local`, the non-local part of a channel name
    /// (or a whole general name): `{prefix}{non_local}`, with no separator.
    pub(super) fn channel(&self, non_local: &str) -> String {
        format!("{}{non_local}", self.prefix)
    }

    /// Whether `channel` is one of the names this layer instance makes.
    pub(super) fn is_own(&self, channel: &ChannelName) -> bool {
        channel.non_local_name() == self.local_part
    }

    /// A `SCAN MATCH` pattern for every key under the prefix, with the prefix's glob
    /// characters escaped.
    pub(super) fn scan_pattern(&self) -> String {
        let mut pattern = String::with_capacity(self.prefix.len() + 2);
        for c in self.prefix.chars() {
            if matches!(c, '*' | '?' | '[' | ']' | '\\') {
                pattern.push('\\');
            }
            pattern.push(c);
        }
        pattern.push('*');
        pattern
    }
}

/// The `{key}$inflight` companion of a message key (channels_redis' `_backup_channel_name`).
pub(super) fn inflight(key: &str) -> String {
    format!("{key}$inflight")
}

/// A random UUID4 in 32 lower-case hex digits, like Python's `uuid.uuid4().hex`.
pub(super) fn uuid4_hex() -> String {
    let mut bytes: [u8; 16] = rand::random();
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let mut hex = String::with_capacity(32);
    for b in bytes {
        // Writing to a String cannot fail.
        let _ = write!(hex, "{b:02x}");
    }
    hex
}

/// Seconds since the Unix epoch, as Python's `time.time()`: the score of what a process adds.
pub(super) fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The `ZREMRANGEBYSCORE key 0 <bound>` bound that drops members older than `age`.
///
/// Python sends `int(now) - int(age)`; we do the same for whole seconds, so the MONITOR trace
/// matches. A sub-second `age` (only tests use one) would round to 0 there and trim everything,
/// so it is computed exactly instead.
pub(super) fn trim_bound(now: f64, age: Duration) -> String {
    if age.subsec_nanos() == 0 && age.as_secs() > 0 {
        // Truncation is what Python's int() does; the clock is far from i64's limits.
        let whole = now.trunc() as i64;
        (whole - i64::try_from(age.as_secs()).unwrap_or(i64::MAX)).to_string()
    } else {
        (now - age.as_secs_f64()).to_string()
    }
}

/// Seconds for `EXPIRE`: Python's `int(expiry)`, but at least 1 (a 0 would delete the key).
pub(super) fn expire_secs(d: Duration) -> u64 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    secs.max(1)
}

/// What is stored in a sorted set: 12 random bytes, then the serialized (and maybe encrypted)
/// message.
pub(super) fn encode(serializer: &Serializer, msg: &Message) -> Vec<u8> {
    let body = serializer.serialize(msg);
    let mut out = Vec::with_capacity(RANDOM_PREFIX_LEN + body.len());
    out.extend_from_slice(&rand::random::<[u8; RANDOM_PREFIX_LEN]>());
    out.extend_from_slice(&body);
    out
}

/// `msg` with `__asgi_channel__` set to the channel it goes to (`send` to a `!` name).
pub(super) fn addressed_to(msg: Message, channel: &ChannelName) -> Message {
    msg.with(CHANNEL_KEY, channel.as_str())
}

/// `msg` with `__asgi_channel__` set to every member sharing one key (`group_send`).
pub(super) fn addressed_to_all(msg: &Message, channels: &[String]) -> Message {
    let list = channels.iter().map(|c| Value::Str(c.clone())).collect();
    msg.clone().with(CHANNEL_KEY, Value::List(list))
}

/// `msg` without `__asgi_channel__`, which is reserved for routing.
pub(super) fn without_routing(msg: Message) -> Message {
    if msg.get(CHANNEL_KEY).is_none() {
        return msg;
    }
    let mut map = msg.map().clone();
    map.remove(CHANNEL_KEY);
    Message::from_map(map)
}

/// A stored payload, decoded.
#[derive(Debug)]
pub(super) struct Decoded {
    /// The message without `__asgi_channel__`.
    pub(super) message: Message,
    /// The channels named by `__asgi_channel__`, if it was there.
    pub(super) channels: Option<Vec<String>>,
    /// The history position in the prefix, if the payload has one.
    pub(super) position: Option<crate::history::Position>,
}

/// Why a stored payload was rejected.
#[derive(Debug, thiserror::Error)]
pub(super) enum DecodeError {
    #[error("shorter than the {RANDOM_PREFIX_LEN} random prefix bytes")]
    Short,
    #[error(transparent)]
    Payload(#[from] PayloadError),
    #[error("__asgi_channel__ is neither a str nor a list of str")]
    Routing,
}

/// Drops the random prefix, decrypts, unpacks and pops `__asgi_channel__`.
pub(super) fn decode(serializer: &Serializer, payload: &[u8]) -> Result<Decoded, DecodeError> {
    let body = payload.get(RANDOM_PREFIX_LEN..).ok_or(DecodeError::Short)?;
    let message = serializer.deserialize(body)?;
    let channels = match message.get(CHANNEL_KEY) {
        None => None,
        Some(Value::Str(s)) => Some(vec![s.clone()]),
        Some(Value::List(items)) => Some(
            items
                .iter()
                .map(|v| v.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or(DecodeError::Routing)?,
        ),
        Some(_) => return Err(DecodeError::Routing),
    };
    Ok(Decoded {
        message: without_routing(message),
        channels,
        position: crate::redis::history::core_position(payload),
    })
}

/// `send`: channels_redis' four commands (trim, count, add, expire) as one atomic script.
///
/// KEYS: the message key. ARGV: payload, score (now), expiry seconds, trim bound, capacity.
/// Returns 1 if stored, 0 if the key was at capacity (Python raises `ChannelFull`).
pub(super) const SEND: &str = r"
redis.call('ZREMRANGEBYSCORE', KEYS[1], 0, ARGV[4])
if redis.call('ZCOUNT', KEYS[1], '-inf', '+inf') >= tonumber(ARGV[5]) then
  return 0
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
";

/// `group_send`, per shard: channels_redis' expiry pipeline and group_send script in one.
///
/// KEYS: n message keys. ARGV: n payloads, n capacities, score (now), expiry seconds, trim
/// bound. Each key is trimmed, then gets its payload if it holds fewer than its capacity.
/// Returns the 1-based indices of the keys that were full (Python returns only their count).
pub(super) const GROUP_SEND: &str = r"
local n = #KEYS
local now = ARGV[2 * n + 1]
local expiry = ARGV[2 * n + 2]
local bound = ARGV[2 * n + 3]
local over = {}
for i = 1, n do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], 0, bound)
  if redis.call('ZCOUNT', KEYS[i], '-inf', '+inf') < tonumber(ARGV[n + i]) then
    redis.call('ZADD', KEYS[i], now, ARGV[i])
    redis.call('EXPIRE', KEYS[i], expiry)
  else
    over[#over + 1] = i
  end
end
return over
";

/// The receive loop's batch pop, with channels_redis' `$inflight` backup.
///
/// KEYS: the message key, its `$inflight` key. ARGV: mode, batch size, backup TTL seconds.
/// Mode `ack` first deletes the backup (the previous batch was delivered); mode `restore` keeps
/// it and returns it along with the new batch (the previous reply may have been lost). Up to
/// `batch` members move from the key to the backup with their scores, atomically, so a reply
/// lost on the way loses nothing. Returns member, score, member, score, ... in score order.
pub(super) const POP: &str = r"
if ARGV[1] == 'ack' then
  redis.call('DEL', KEYS[2])
end
local popped = redis.call('ZPOPMIN', KEYS[1], ARGV[2])
for i = 1, #popped, 2 do
  redis.call('ZADD', KEYS[2], popped[i + 1], popped[i])
end
if #popped > 0 then
  redis.call('EXPIRE', KEYS[2], ARGV[3])
end
if ARGV[1] == 'restore' then
  return redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
end
return popped
";

/// `EVAL script <number of keys> keys...`, ready for its `ARGV`. Python sends `EVAL` with the
/// script text every time too; Redis caches the compiled script by its hash.
pub(super) fn eval(script: &str, keys: &[&str]) -> redis::Cmd {
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(script).arg(keys.len()).arg(keys);
    cmd
}

/// Pairs a flat `member, score, ...` reply; a score that is not a number is treated as 0.
pub(super) fn pairs(flat: Vec<Vec<u8>>) -> Vec<(Vec<u8>, f64)> {
    let mut out = Vec::with_capacity(flat.len() / 2);
    let mut items = flat.into_iter();
    while let (Some(member), Some(score)) = (items.next(), items.next()) {
        let score = std::str::from_utf8(&score)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0.0);
        out.push((member, score));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_python_s() {
        let keys = Keys::new("asgi", "3d79e405545f4b83876955816d75a561");
        assert_eq!(
            keys.inbox(),
            "asgispecific.3d79e405545f4b83876955816d75a561!"
        );
        assert_eq!(keys.group(&GroupName::new("g1").unwrap()), "asgi:group:g1");
        assert_eq!(keys.channel("worker-task"), "asgiworker-task");
        assert_eq!(inflight("asgiworker-task"), "asgiworker-task$inflight");
        assert_eq!(Keys::new("a*[b]", "x").scan_pattern(), r"a\*\[b\]*");
    }

    #[test]
    fn uuid4_hex_is_32_hex_digits_of_version_4() {
        let id = uuid4_hex();
        assert_eq!(id.len(), 32);
        assert!(
            id.chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_eq!(&id[12..13], "4");
        assert!(matches!(&id[16..17], "8" | "9" | "a" | "b"));
        assert_ne!(id, uuid4_hex());
    }

    #[test]
    fn trim_bounds_and_expiry_follow_python_for_whole_seconds() {
        assert_eq!(
            trim_bound(1_795_624_473.4, Duration::from_secs(60)),
            "1795624413"
        );
        assert_eq!(trim_bound(100.5, Duration::from_millis(300)), "100.2");
        assert_eq!(expire_secs(Duration::from_secs(60)), 60);
        assert_eq!(expire_secs(Duration::from_millis(300)), 1);
        assert_eq!(expire_secs(Duration::from_millis(1500)), 2);
    }

    #[test]
    fn payloads_round_trip_with_routing() {
        let serializer = Serializer::new(&[], None).unwrap();
        let channel = ChannelName::new("specific.abc!def").unwrap();
        let msg = Message::new("chat.message").with("text", "hi");
        let stored = encode(&serializer, &addressed_to(msg.clone(), &channel));
        // 12 random bytes, then a map of 3 with __asgi_channel__ last (spec §4.1).
        assert_eq!(stored[RANDOM_PREFIX_LEN], 0x83);
        assert!(stored.ends_with(b"\xb0__asgi_channel__\xb0specific.abc!def"));
        let decoded = decode(&serializer, &stored).unwrap();
        assert_eq!(decoded.message, msg);
        assert_eq!(decoded.channels, Some(vec![channel.as_str().to_owned()]));

        let all = ["a!1".to_owned(), "a!2".to_owned()];
        let stored = encode(&serializer, &addressed_to_all(&msg, &all));
        let decoded = decode(&serializer, &stored).unwrap();
        assert_eq!(decoded.channels.as_deref(), Some(&all[..]));
        assert_eq!(decoded.message, msg);
    }

    #[test]
    fn bad_payloads_are_rejected() {
        let serializer = Serializer::new(&[], None).unwrap();
        assert!(matches!(
            decode(&serializer, b"short"),
            Err(DecodeError::Short)
        ));
        let mut bad = vec![0; RANDOM_PREFIX_LEN];
        bad.extend_from_slice(b"\x81\xb0__asgi_channel__\x01");
        assert!(matches!(
            decode(&serializer, &bad),
            Err(DecodeError::Routing)
        ));
        let mut garbage = vec![0; RANDOM_PREFIX_LEN];
        garbage.push(0xc1);
        assert!(matches!(
            decode(&serializer, &garbage),
            Err(DecodeError::Payload(_))
        ));
    }

    #[test]
    fn pairs_splits_flat_replies() {
        let flat = vec![
            b"m1".to_vec(),
            b"1.5".to_vec(),
            b"m2".to_vec(),
            b"2".to_vec(),
        ];
        assert_eq!(
            pairs(flat),
            vec![(b"m1".to_vec(), 1.5), (b"m2".to_vec(), 2.0)]
        );
    }
}
