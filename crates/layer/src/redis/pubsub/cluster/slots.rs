//! Where a shard channel lives in a Redis Cluster: its hash slot (CRC16 of the name, or of its
//! `{hash tag}`, modulo 16384, as for keys), the map from slots to the masters that own them
//! (`CLUSTER SLOTS`), and the `redis+cluster://` URL.

use std::collections::HashMap;

use crate::error::LayerError;
use crate::redis::text::redact;

/// Slots in a Redis Cluster.
pub(super) const SLOTS: usize = 16384;

/// CRC16/XMODEM, the checksum Redis Cluster hashes keys and shard channels with.
fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in bytes {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The hash slot of `name`: only the part inside the first non-empty `{...}` counts, if any.
pub(super) fn slot(name: &str) -> u16 {
    let bytes = name.as_bytes();
    let hashed = match bytes.iter().position(|&b| b == b'{') {
        Some(open) => match bytes[open + 1..].iter().position(|&b| b == b'}') {
            Some(len) if len > 0 => &bytes[open + 1..open + 1 + len],
            _ => bytes,
        },
        None => bytes,
    };
    crc16(hashed) % SLOTS as u16
}

/// Which master owns each slot, as `host:port`.
#[derive(Debug, Clone, Default)]
pub(super) struct SlotMap {
    /// Every master's address, once.
    masters: Vec<String>,
    /// Per slot, an index into `masters` (`u16::MAX`: nobody serves it).
    owner: Vec<u16>,
}

impl SlotMap {
    /// The map from a `CLUSTER SLOTS` reply: `[[start, end, [host, port, id, ...], replicas...]]`.
    pub(super) fn from_cluster_slots(reply: &redis::Value) -> Result<Self, String> {
        let redis::Value::Array(ranges) = reply else {
            return Err(format!("CLUSTER SLOTS answered {reply:?}"));
        };
        let mut map = SlotMap {
            masters: Vec::new(),
            owner: vec![u16::MAX; SLOTS],
        };
        let mut index: HashMap<String, u16> = HashMap::new();
        for range in ranges {
            let redis::Value::Array(fields) = range else {
                return Err("CLUSTER SLOTS: a range is not an array".to_owned());
            };
            let (Some(start), Some(end), Some(master)) =
                (int(fields.first()), int(fields.get(1)), fields.get(2))
            else {
                return Err("CLUSTER SLOTS: a range lacks its bounds or master".to_owned());
            };
            let redis::Value::Array(node) = master else {
                return Err("CLUSTER SLOTS: a master is not an array".to_owned());
            };
            let (Some(host), Some(port)) = (text(node.first()), int(node.get(1))) else {
                return Err("CLUSTER SLOTS: a master lacks its address".to_owned());
            };
            let addr = if host.contains(':') {
                format!("[{host}]:{port}")
            } else {
                format!("{host}:{port}")
            };
            let next = map.masters.len() as u16;
            let i = *index.entry(addr.clone()).or_insert_with(|| {
                map.masters.push(addr);
                next
            });
            let (start, end) = (
                start.clamp(0, SLOTS as i64 - 1),
                end.clamp(0, SLOTS as i64 - 1),
            );
            for slot in start..=end {
                map.owner[slot as usize] = i;
            }
        }
        if map.masters.is_empty() {
            return Err("CLUSTER SLOTS: no slot is served".to_owned());
        }
        Ok(map)
    }

    /// The master serving `slot`, if the map knows one.
    pub(super) fn owner(&self, slot: u16) -> Option<&str> {
        let i = *self.owner.get(usize::from(slot))?;
        self.masters.get(usize::from(i)).map(String::as_str)
    }

    /// Records a `MOVED slot host:port` answer until the next full refresh.
    pub(super) fn moved(&mut self, slot: u16, addr: &str) {
        if self.owner.is_empty() {
            self.owner = vec![u16::MAX; SLOTS];
        }
        let i = match self.masters.iter().position(|m| m == addr) {
            Some(i) => i as u16,
            None => {
                self.masters.push(addr.to_owned());
                (self.masters.len() - 1) as u16
            }
        };
        self.owner[usize::from(slot)] = i;
    }

    pub(super) fn masters(&self) -> &[String] {
        &self.masters
    }

    pub(super) fn is_empty(&self) -> bool {
        self.masters.is_empty()
    }
}

fn int(v: Option<&redis::Value>) -> Option<i64> {
    match v? {
        redis::Value::Int(n) => Some(*n),
        redis::Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        _ => None,
    }
}

fn text(v: Option<&redis::Value>) -> Option<String> {
    match v? {
        redis::Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        redis::Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// `MOVED 3999 127.0.0.1:6381` as slot and address.
pub(super) fn parse_moved(error: &redis::RedisError) -> Option<(u16, String)> {
    let (addr, slot) = error.redirect_node()?;
    Some((slot, addr.to_owned()))
}

/// A `redis+cluster://[user:password@]HOST:PORT[,HOST:PORT...]` URL (`rediss+cluster://` for
/// TLS; `#insecure` carries over): how to reach any node given its address.
#[derive(Debug, Clone)]
pub(crate) struct ClusterUrl {
    tls: bool,
    userinfo: Option<String>,
    insecure: bool,
    /// The nodes to ask for the slot map first.
    pub(super) seeds: Vec<String>,
    /// Without credentials, for logs and errors.
    pub(super) display: String,
}

impl ClusterUrl {
    /// Whether `url` names a Redis Cluster.
    pub(crate) fn is_cluster_url(url: &str) -> bool {
        url.starts_with("redis+cluster://") || url.starts_with("rediss+cluster://")
    }

    pub(super) fn parse(url: &str) -> Result<Self, LayerError> {
        let bad = |why: &str| {
            LayerError::Config(format!(
                "{}: {why}; use redis+cluster://[user:password@]HOST:PORT[,HOST:PORT...]",
                redact(url)
            ))
        };
        let (tls, rest) = if let Some(rest) = url.strip_prefix("rediss+cluster://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("redis+cluster://") {
            (false, rest)
        } else {
            return Err(bad("not a redis+cluster:// URL"));
        };
        let (rest, fragment) = rest.split_once('#').unwrap_or((rest, ""));
        let insecure = match fragment {
            "" => false,
            "insecure" => true,
            _ => return Err(bad("the only fragment understood is #insecure")),
        };
        let authority = rest.trim_end_matches('/');
        if authority.contains('/') || authority.contains('?') {
            return Err(bad("a cluster has no database and takes no parameters"));
        }
        let (userinfo, hosts) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u.to_owned()), h),
            None => (None, authority),
        };
        let mut seeds = Vec::new();
        for host in hosts.split(',').filter(|h| !h.is_empty()) {
            match host.rsplit_once(':') {
                Some((h, p)) if !h.is_empty() && p.parse::<u16>().is_ok() => {
                    seeds.push(host.to_owned());
                }
                _ => return Err(bad(&format!("{host}: give HOST:PORT"))),
            }
        }
        if seeds.is_empty() {
            return Err(bad("no node address"));
        }
        let display = format!(
            "{}://{}",
            if tls {
                "rediss+cluster"
            } else {
                "redis+cluster"
            },
            seeds.join(",")
        );
        Ok(Self {
            tls,
            userinfo,
            insecure,
            seeds,
            display,
        })
    }

    /// The URL of the node at `addr` (`host:port`), in RESP3 when `resp3`.
    pub(super) fn node_url(&self, addr: &str, resp3: bool) -> String {
        format!(
            "{}://{}{addr}/{}{}",
            if self.tls { "rediss" } else { "redis" },
            self.userinfo
                .as_ref()
                .map(|u| format!("{u}@"))
                .unwrap_or_default(),
            if resp3 { "?protocol=resp3" } else { "" },
            if self.insecure { "#insecure" } else { "" }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis_cluster_keyslot() {
        // Redis' own test vectors (cluster spec) and CLUSTER KEYSLOT answers.
        assert_eq!(crc16(b"123456789"), 0x31c3);
        assert_eq!(slot("foo"), 12182);
        assert_eq!(slot("{user1000}.following"), slot("user1000"));
        assert_eq!(slot("foo{}{bar}"), slot("foo{}{bar}"));
        assert_eq!(slot("foo{{bar}}zap"), slot("{bar"));
        assert_eq!(slot("asgi__group__t3394"), 0);
    }

    #[test]
    fn a_cluster_url_lists_its_seeds_and_builds_node_urls() {
        let u = ClusterUrl::parse("redis+cluster://u:pw@a:7000,b:7001").unwrap();
        assert_eq!(u.seeds, ["a:7000", "b:7001"]);
        assert_eq!(u.display, "redis+cluster://a:7000,b:7001");
        assert_eq!(
            u.node_url("c:7002", true),
            "redis://u:pw@c:7002/?protocol=resp3"
        );
        let u = ClusterUrl::parse("rediss+cluster://a:7000#insecure").unwrap();
        assert_eq!(u.node_url("a:7000", false), "rediss://a:7000/#insecure");
        for bad in [
            "redis+cluster://",
            "redis+cluster://a",
            "redis+cluster://a:1/0",
        ] {
            assert!(ClusterUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_slot_map_follows_cluster_slots_and_moved() {
        use redis::Value::{Array, BulkString, Int};
        let node = |port: i64| Array(vec![BulkString(b"127.0.0.1".to_vec()), Int(port)]);
        let reply = Array(vec![
            Array(vec![Int(0), Int(8191), node(7000), node(7003)]),
            Array(vec![Int(8192), Int(16383), node(7001)]),
        ]);
        let mut map = SlotMap::from_cluster_slots(&reply).unwrap();
        assert_eq!(map.owner(0), Some("127.0.0.1:7000"));
        assert_eq!(map.owner(16383), Some("127.0.0.1:7001"));
        map.moved(0, "127.0.0.1:7002");
        assert_eq!(map.owner(0), Some("127.0.0.1:7002"));
        assert_eq!(map.masters().len(), 3);
    }
}
