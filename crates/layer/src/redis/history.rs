//! Group history in Redis, shared by both Redis layers: the keys, the Lua scripts that store
//! and read it, and the parsing of their replies.
//!
//! For group `g` under prefix `asgi` (its pub/sub channel `asgi__group__g`), on the shard that
//! carries the group:
//!
//! * `asgi:hmeta:{asgi__group__g}`: a hash, `e` = the epoch (8 hex digits), `s` = the latest
//!   offset; kept a day after the latest message (or the history TTL if longer);
//! * `asgi:hist:{asgi__group__g}`: a stream, one entry per message with ID `<offset>-0` and one
//!   field `d` = the payload exactly as published (msgpack, or its Fernet token), at most the
//!   history size of them, kept the history TTL after the latest message.
//!
//! The braces are literal: a Redis Cluster hash tag that keeps both keys in the group
//! channel's slot. The script that stores a message also delivers it (a `PUBLISH`, or the core
//! layer's `ZADD`s), so storing and delivering are one atomic step and every member sees the
//! offsets in order.

use std::time::Duration;

use crate::error::LayerError;
use crate::history::{Epoch, HistoryLimits, HistoryRead, Position, Since};
use crate::redis::Serializer;

/// The meta hash and the stream of the group whose pub/sub channel is `group_channel`.
pub(crate) fn keys(prefix: &str, group_channel: &str) -> (String, String) {
    (
        format!("{prefix}:hmeta:{{{group_channel}}}"),
        format!("{prefix}:hist:{{{group_channel}}}"),
    )
}

/// The start of every storing script. KEYS[1] meta, KEYS[2] stream; ARGV[1] the payload to
/// keep, ARGV[2] size, ARGV[3] TTL seconds, ARGV[4] meta TTL seconds, ARGV[5] a fresh epoch
/// (used when the group has none: its stream is then dropped, offsets start at 1). Leaves the
/// epoch in `e` and the new offset in `o`.
const APPEND: &str = r"
local e = redis.call('HGET', KEYS[1], 'e')
if not e then
  e = ARGV[5]
  redis.call('HSET', KEYS[1], 'e', e, 's', 0)
  redis.call('DEL', KEYS[2])
end
local o = redis.call('HINCRBY', KEYS[1], 's', 1)
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[2], o .. '-0', 'd', ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[3])
";

/// The pub/sub layer's publish with history: [`APPEND`], then the position on the group's side
/// channel (ARGV[7]) and right after it the payload, byte for byte what channels_redis
/// publishes, on the group channel (ARGV[6]). Returns `{epoch, offset}`.
pub(crate) fn publish_script() -> String {
    format!(
        "{APPEND}
redis.call('PUBLISH', ARGV[7], e .. ':' .. o)
redis.call('PUBLISH', ARGV[6], ARGV[1])
return {{e, o}}
"
    )
}

/// The first bytes of the 12-byte prefix of a core-layer payload that carries a position:
/// `0xC1 'h' '1'`, then the epoch (4 bytes) and the offset (5 bytes), big-endian. Python
/// drops the 12 prefix bytes unread, as it drops its own random ones.
pub(crate) const CORE_MAGIC: [u8; 3] = [0xc1, b'h', b'1'];

/// The core layer's group send with history, on one Redis: [`APPEND`], then for each member
/// key KEYS[2 + i] the payload ARGV[5 + i] (without prefix) behind the position prefix, if
/// the key holds fewer than ARGV[5 + n + i] messages; ARGV[5 + 2n + 1] is the expiry in
/// seconds. Scores come from Redis' clock, so the offsets of one group are also in score
/// order. Returns the 1-based indices of the keys that were full.
pub(crate) fn core_group_send_script() -> String {
    format!(
        r"{APPEND}
local n = #KEYS - 2
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local expiry = tonumber(ARGV[5 + 2 * n + 1])
local prefix = '\193h1'
for i = 1, 8, 2 do
  prefix = prefix .. string.char(tonumber(string.sub(e, i, i + 1), 16))
end
local ob = ''
local x = o
for i = 1, 5 do
  ob = string.char(x % 256) .. ob
  x = math.floor(x / 256)
end
prefix = prefix .. ob
local over = {{}}
for i = 1, n do
  local key = KEYS[2 + i]
  redis.call('ZREMRANGEBYSCORE', key, 0, now - expiry)
  if redis.call('ZCOUNT', key, '-inf', '+inf') < tonumber(ARGV[5 + n + i]) then
    redis.call('ZADD', key, now, prefix .. ARGV[5 + i])
    redis.call('EXPIRE', key, expiry)
  else
    over[#over + 1] = i
  end
end
return over
"
    )
}

/// The position in a core-layer payload's 12-byte prefix, if it has one.
pub(crate) fn core_position(payload: &[u8]) -> Option<Position> {
    let prefix = payload.get(..12)?;
    if prefix[..3] != CORE_MAGIC {
        return None;
    }
    let epoch = u32::from_be_bytes([prefix[3], prefix[4], prefix[5], prefix[6]]);
    let mut offset = [0u8; 8];
    offset[3..].copy_from_slice(&prefix[7..12]);
    Some(Position {
        epoch: Epoch::from_bits(epoch),
        offset: u64::from_be_bytes(offset),
    })
}

/// Reads a history. KEYS[1] meta, KEYS[2] stream; ARGV[1] a fresh epoch (kept if the group has
/// none), ARGV[2] meta TTL seconds, ARGV[3] `after` or `latest`, ARGV[4] the offset (after) or
/// count (latest), ARGV[5] the most entries to return. Returns `{epoch, top, id, payload, ...}`
/// oldest first.
pub(crate) const READ: &str = r"
local e = redis.call('HGET', KEYS[1], 'e')
if not e then
  e = ARGV[1]
  redis.call('HSET', KEYS[1], 'e', e, 's', 0)
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  redis.call('DEL', KEYS[2])
end
local top = tonumber(redis.call('HGET', KEYS[1], 's'))
local out = {e, top}
local n = tonumber(ARGV[5])
if n > 0 then
  if ARGV[3] == 'after' then
    local entries = redis.call('XRANGE', KEYS[2], (tonumber(ARGV[4]) + 1) .. '-0', '+', 'COUNT', n)
    for _, entry in ipairs(entries) do
      out[#out + 1] = entry[1]
      out[#out + 1] = entry[2][2]
    end
  else
    local entries = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', n)
    for i = #entries, 1, -1 do
      out[#out + 1] = entries[i][1]
      out[#out + 1] = entries[i][2][2]
    end
  end
end
return out
";

fn secs(d: Duration) -> u64 {
    d.as_secs().max(1)
}

/// The arguments of a storing script after the keys: payload, size, TTL, meta TTL, epoch.
pub(crate) fn append_args(cmd: &mut redis::Cmd, limits: &HistoryLimits, payload: &[u8]) {
    cmd.arg(payload)
        .arg(limits.size)
        .arg(secs(limits.ttl))
        .arg(secs(limits.meta_ttl()))
        .arg(Epoch::random().to_string());
}

/// `EVAL READ` for `since` on the keys of one group.
pub(crate) fn read_cmd(
    meta: &str,
    stream: &str,
    limits: &HistoryLimits,
    since: Since,
) -> redis::Cmd {
    let (mode, n, limit) = match since {
        Since::Latest(n) => ("latest", n as u64, n.min(limits.size)),
        Since::After(offset) => ("after", offset, limits.size),
    };
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(READ)
        .arg(2)
        .arg(meta)
        .arg(stream)
        .arg(Epoch::random().to_string())
        .arg(secs(limits.meta_ttl()))
        .arg(mode)
        .arg(n)
        .arg(limit);
    cmd
}

/// A history reply that is not what [`READ`] returns: Redis' answer is garbage.
fn garbage(host: &str, what: impl std::fmt::Display) -> LayerError {
    LayerError::Unavailable {
        host: host.to_owned(),
        reason: format!("unexpected history reply: {what}"),
    }
}

/// Parses `epoch:offset` (a side-channel marker, or the parts of a reply).
pub(crate) fn parse_position(epoch: &[u8], offset: &[u8]) -> Option<Position> {
    let epoch = std::str::from_utf8(epoch).ok()?.parse().ok()?;
    let offset = std::str::from_utf8(offset).ok()?.parse().ok()?;
    Some(Position { epoch, offset })
}

/// Parses a stream entry ID `<offset>-0`.
fn entry_offset(id: &[u8]) -> Option<u64> {
    let id = std::str::from_utf8(id).ok()?;
    id.strip_suffix("-0")?.parse().ok()
}

/// Decodes [`READ`]'s reply. An entry that does not decode (written with other encryption
/// keys) is skipped, which the caller sees as a gap.
pub(crate) fn parse_read(
    host: &str,
    serializer: &Serializer,
    reply: redis::Value,
) -> Result<HistoryRead, LayerError> {
    use redis::Value;
    let Value::Array(items) = reply else {
        return Err(garbage(host, "not an array"));
    };
    let mut items = items.into_iter();
    let epoch: Epoch = match items.next() {
        Some(Value::BulkString(e)) => std::str::from_utf8(&e)
            .ok()
            .and_then(|e| e.parse().ok())
            .ok_or_else(|| garbage(host, "bad epoch"))?,
        _ => return Err(garbage(host, "no epoch")),
    };
    let top = match items.next() {
        Some(Value::Int(top)) if top >= 0 => top as u64,
        _ => return Err(garbage(host, "no top offset")),
    };
    let mut messages = Vec::new();
    while let Some(id) = items.next() {
        let (Value::BulkString(id), Some(Value::BulkString(payload))) = (id, items.next()) else {
            return Err(garbage(host, "bad entry"));
        };
        let offset = entry_offset(&id).ok_or_else(|| garbage(host, "bad entry id"))?;
        match serializer.deserialize_any_age(&payload) {
            Ok(msg) => messages.push(msg.with_position(Some(Position { epoch, offset }))),
            Err(error) => {
                crate::log_limited!(warn, %error, offset, "history entry does not decode: skipped");
            }
        }
    }
    Ok(HistoryRead {
        epoch,
        top,
        messages,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_the_group_channel_as_hash_tag() {
        assert_eq!(
            keys("asgi", "asgi__group__g"),
            (
                "asgi:hmeta:{asgi__group__g}".to_owned(),
                "asgi:hist:{asgi__group__g}".to_owned()
            )
        );
    }

    #[test]
    fn core_prefixes_carry_positions() {
        let mut payload = CORE_MAGIC.to_vec();
        payload.extend_from_slice(&[0, 0, 0, 10, 0, 0, 0, 1, 2, 0x93]);
        assert_eq!(
            core_position(&payload),
            Some(Position {
                epoch: Epoch::from_bits(10),
                offset: 258
            })
        );
        payload[0] = 0;
        assert_eq!(core_position(&payload), None, "a random prefix");
        assert_eq!(core_position(&CORE_MAGIC), None, "too short");
    }

    #[test]
    fn positions_and_ids_parse_strictly() {
        assert_eq!(
            parse_position(b"0000000a", b"17"),
            Some(Position {
                epoch: Epoch::from_bits(10),
                offset: 17
            })
        );
        assert_eq!(parse_position(b"xyz", b"17"), None);
        assert_eq!(parse_position(b"0000000a", b"-1"), None);
        assert_eq!(entry_offset(b"17-0"), Some(17));
        assert_eq!(entry_offset(b"17-1"), None);
        assert_eq!(entry_offset(b"17"), None);
    }

    #[test]
    fn garbage_replies_are_errors_not_panics() {
        use redis::Value;
        let serializer = Serializer::new(&[], None).unwrap();
        let bad = [
            Value::Nil,
            Value::Array(vec![]),
            Value::Array(vec![Value::BulkString(b"zz".to_vec()), Value::Int(1)]),
            Value::Array(vec![
                Value::BulkString(b"0000000a".to_vec()),
                Value::Int(-1),
            ]),
            Value::Array(vec![
                Value::BulkString(b"0000000a".to_vec()),
                Value::Int(1),
                Value::BulkString(b"1-0".to_vec()),
            ]),
            Value::Array(vec![
                Value::BulkString(b"0000000a".to_vec()),
                Value::Int(1),
                Value::BulkString(b"one".to_vec()),
                Value::BulkString(b"\x80".to_vec()),
            ]),
        ];
        for reply in bad {
            assert!(parse_read("h", &serializer, reply).is_err());
        }
        let ok = Value::Array(vec![
            Value::BulkString(b"0000000a".to_vec()),
            Value::Int(2),
            Value::BulkString(b"2-0".to_vec()),
            Value::BulkString(crate::Message::new("m").to_msgpack()),
            Value::BulkString(b"3-0".to_vec()),
            Value::BulkString(b"not msgpack".to_vec()),
        ]);
        let read = parse_read("h", &serializer, ok).unwrap();
        assert_eq!(read.top, 2);
        assert_eq!(read.messages.len(), 1, "the undecodable entry is skipped");
        assert_eq!(read.messages[0].position().map(|p| p.offset), Some(2));
    }
}
