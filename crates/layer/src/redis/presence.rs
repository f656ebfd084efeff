//! Presence in Redis, shared by both Redis layers: the keys, the scripts and their replies
//! ([`crate::presence`] describes the layout).

use std::time::Duration;

use crate::error::LayerError;
use crate::presence::{Presence, PresenceMember, unix_now};

/// The hash and the sorted set of the group whose pub/sub channel is `group_channel`.
pub(crate) fn keys(prefix: &str, group_channel: &str) -> (String, String) {
    (
        format!("{prefix}:presence:{{{group_channel}}}"),
        format!("{prefix}:presence-exp:{{{group_channel}}}"),
    )
}

/// Adds or refreshes one member. KEYS: hash, expiries. ARGV: channel, member JSON, expiry (Unix
/// seconds), key TTL seconds.
const ADD: &str = r"
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[4])
return 1
";

/// Removes one member. KEYS: hash, expiries. ARGV: channel. Returns 1 if it was there.
const REMOVE: &str = r"
redis.call('ZREM', KEYS[2], ARGV[1])
return redis.call('HDEL', KEYS[1], ARGV[1])
";

/// Removes the expired members and returns `{number expired, expired JSON..., current
/// JSON...}`. KEYS: hash, expiries. ARGV: now (Unix seconds).
const READ: &str = r"
local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
local out = {#gone}
for _, channel in ipairs(gone) do
  local member = redis.call('HGET', KEYS[1], channel)
  if member then
    out[#out + 1] = member
  else
    out[1] = out[1] - 1
  end
  redis.call('HDEL', KEYS[1], channel)
end
if #gone > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
end
for _, member in ipairs(redis.call('HVALS', KEYS[1])) do
  out[#out + 1] = member
end
return out
";

fn eval(script: &str, hash: &str, expiries: &str) -> redis::Cmd {
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(script).arg(2).arg(hash).arg(expiries);
    cmd
}

/// `EVAL ADD` for `member`, expiring `ttl` from now.
pub(crate) fn add_cmd(
    hash: &str,
    expiries: &str,
    member: &PresenceMember,
    ttl: Duration,
) -> Result<redis::Cmd, LayerError> {
    let json = serde_json::to_string(member)
        .map_err(|e| LayerError::Config(format!("presence member: {e}")))?;
    let mut cmd = eval(ADD, hash, expiries);
    cmd.arg(&member.channel)
        .arg(json)
        .arg(unix_now() + ttl.as_secs_f64())
        .arg((ttl.as_secs() * 4).max(60));
    Ok(cmd)
}

/// `EVAL REMOVE` for `channel`.
pub(crate) fn remove_cmd(hash: &str, expiries: &str, channel: &str) -> redis::Cmd {
    let mut cmd = eval(REMOVE, hash, expiries);
    cmd.arg(channel);
    cmd
}

/// `EVAL READ` now.
pub(crate) fn read_cmd(hash: &str, expiries: &str) -> redis::Cmd {
    let mut cmd = eval(READ, hash, expiries);
    cmd.arg(unix_now());
    cmd
}

/// Parses [`READ`]'s reply. An entry that is not a member's JSON (written by something else)
/// is skipped and logged.
pub(crate) fn parse_read(host: &str, reply: redis::Value) -> Result<Presence, LayerError> {
    use redis::Value;
    let garbage = |what: &str| LayerError::Unavailable {
        host: host.to_owned(),
        reason: format!("unexpected presence reply: {what}"),
    };
    let Value::Array(items) = reply else {
        return Err(garbage("not an array"));
    };
    let mut items = items.into_iter();
    let expired = match items.next() {
        Some(Value::Int(n)) if n >= 0 => n as usize,
        _ => return Err(garbage("no count")),
    };
    let mut presence = Presence::default();
    for (i, item) in items.enumerate() {
        let Value::BulkString(json) = item else {
            return Err(garbage("a member is not a string"));
        };
        let member: PresenceMember = match serde_json::from_slice(&json) {
            Ok(member) => member,
            Err(error) => {
                crate::log_limited!(warn, %error, "presence entry is not a member: skipped");
                continue;
            }
        };
        if i < expired {
            presence.expired.push(member);
        } else {
            presence.members.push(member);
        }
    }
    Ok(presence)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_replies_are_errors_and_bad_entries_are_skipped() {
        use redis::Value;
        for bad in [
            Value::Nil,
            Value::Array(vec![]),
            Value::Array(vec![Value::Int(-1)]),
            Value::Array(vec![Value::Int(0), Value::Int(3)]),
        ] {
            assert!(parse_read("h", bad).is_err());
        }
        let member = PresenceMember {
            user: "u".into(),
            name: "U".into(),
            channel: "c".into(),
            replica: "r".into(),
            joined_at: 1.5,
        };
        let json = serde_json::to_vec(&member).unwrap();
        let reply = Value::Array(vec![
            Value::Int(1),
            Value::BulkString(json.clone()),
            Value::BulkString(b"{not json".to_vec()),
            Value::BulkString(json),
        ]);
        let presence = parse_read("h", reply).unwrap();
        assert_eq!(presence.expired, std::slice::from_ref(&member));
        assert_eq!(presence.members, [member]);
    }
}
