//! Presence in Redis, shared by both Redis layers: the keys, the scripts and their replies
//! ([`crate::presence`] describes the layout).

use std::collections::HashMap;
use std::hash::Hash;
use std::time::Duration;

use crate::error::LayerError;
use crate::name::GroupName;
use crate::presence::{Presence, PresenceMember, unix_now};

/// The hash and the sorted set of the group whose pub/sub channel is `group_channel`.
pub(crate) fn keys(prefix: &str, group_channel: &str) -> (String, String) {
    (
        format!("{prefix}:presence:{{{group_channel}}}"),
        format!("{prefix}:presence-exp:{{{group_channel}}}"),
    )
}

/// Adds or refreshes members. KEYS: per member, its group's hash and expiries. ARGV: the keys'
/// TTL seconds, then per member: channel, member JSON, expiry (whole Unix seconds).
const ADD: &str = r"
local touched = {}
for i = 1, #KEYS / 2 do
  local hash, expiries, a = KEYS[2 * i - 1], KEYS[2 * i], 3 * i - 1
  redis.call('HSET', hash, ARGV[a], ARGV[a + 1])
  redis.call('ZADD', expiries, ARGV[a + 2], ARGV[a])
  if not touched[hash] then
    touched[hash] = true
    redis.call('EXPIRE', hash, ARGV[1])
    redis.call('EXPIRE', expiries, ARGV[1])
  end
end
return #KEYS / 2
";

/// At most this many members per [`ADD`] call, so that one call does not hold Redis long.
pub(crate) const ADD_BATCH: usize = 256;

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

/// A member with its group's hash and expiries.
type Keys<'a> = (String, String, &'a PresenceMember);

/// The `EVAL ADD` calls that add `entries`, expiring `ttl` from now: one per place (`K`: a
/// shard, or a Cluster slot's key, as `place` says for a group, with the group's hash and
/// expiries) and per [`ADD_BATCH`] members, each with its place, in order of first appearance.
pub(crate) fn add_cmds<K: Eq + Hash + Clone>(
    entries: &[(GroupName, PresenceMember)],
    ttl: Duration,
    place: impl Fn(&GroupName) -> Result<(K, String, String), LayerError>,
) -> Result<Vec<(K, redis::Cmd)>, LayerError> {
    let expiry = (unix_now() + ttl.as_secs_f64()).floor() as i64;
    let key_ttl = (ttl.as_secs() * 4).max(60);
    let mut places: Vec<(K, Vec<Keys<'_>>)> = Vec::new();
    let mut index: HashMap<K, usize> = HashMap::new();
    for (group, member) in entries {
        let (place, hash, expiries) = place(group)?;
        let i = *index.entry(place.clone()).or_insert_with(|| {
            places.push((place, Vec::new()));
            places.len() - 1
        });
        places[i].1.push((hash, expiries, member));
    }
    let mut cmds = Vec::new();
    for (place, members) in places {
        for chunk in members.chunks(ADD_BATCH) {
            let mut cmd = redis::cmd("EVAL");
            cmd.arg(ADD).arg(chunk.len() * 2);
            for (hash, expiries, _) in chunk {
                cmd.arg(hash).arg(expiries);
            }
            cmd.arg(key_ttl);
            for (_, _, member) in chunk {
                let json = serde_json::to_string(member)
                    .map_err(|e| LayerError::Config(format!("presence member: {e}")))?;
                cmd.arg(&member.channel).arg(json).arg(expiry);
            }
            cmds.push((place.clone(), cmd));
        }
    }
    Ok(cmds)
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
