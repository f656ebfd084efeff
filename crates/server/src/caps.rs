//! Connection caps: WebSocket connections per replica and per client address.
//!
//! A handshake takes a [`CapGuard`] before the upgrade; the guard lives as long as the
//! connection (it moves into the connection's task) and gives its places back when dropped, so
//! a refused, failed or finished connection never leaves a count behind. Past a cap the
//! handshake is refused (HTTP 503 for the replica, 429 for one address) and the sockets already
//! open are not touched.
//!
//! Addresses are the TCP peer's: IPv4 addresses one by one (IPv4-mapped IPv6 counts as IPv4),
//! IPv6 addresses by their /64 network, since one host usually holds a whole /64. Behind a proxy
//! every client has the proxy's address; `X-Forwarded-For` is not trusted.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// Which cap refused a handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CapRefusal {
    /// `--max-connections`: the replica is full.
    Replica,
    /// `--max-connections-per-ip`: this address holds too many.
    PerAddress,
}

/// The counters behind the caps; 0 means no cap.
#[derive(Debug)]
pub(crate) struct ConnectionCaps {
    max_total: usize,
    max_per_address: usize,
    total: AtomicUsize,
    per_address: Mutex<HashMap<IpAddr, usize>>,
}

/// One connection's places in the counts, given back on drop.
#[derive(Debug)]
pub(crate) struct CapGuard {
    caps: Arc<ConnectionCaps>,
    address: Option<IpAddr>,
}

impl ConnectionCaps {
    pub(crate) fn new(max_total: usize, max_per_address: usize) -> Self {
        Self {
            max_total,
            max_per_address,
            total: AtomicUsize::new(0),
            per_address: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a place for a connection from `peer`, or says which cap is reached.
    pub(crate) fn admit(self: &Arc<Self>, peer: Option<IpAddr>) -> Result<CapGuard, CapRefusal> {
        let total = self.total.fetch_add(1, Ordering::AcqRel);
        // The guard gives the place back if a check below fails.
        let mut guard = CapGuard {
            caps: Arc::clone(self),
            address: None,
        };
        if self.max_total > 0 && total >= self.max_total {
            return Err(CapRefusal::Replica);
        }
        if self.max_per_address > 0
            && let Some(peer) = peer
        {
            let key = address_key(peer);
            let mut map = self.lock();
            let count = map.entry(key).or_default();
            if *count >= self.max_per_address {
                return Err(CapRefusal::PerAddress);
            }
            *count += 1;
            guard.address = Some(key);
        }
        Ok(guard)
    }

    /// Connections counted now.
    #[cfg(test)]
    pub(crate) fn open(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.per_address
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for CapGuard {
    fn drop(&mut self) {
        self.caps.total.fetch_sub(1, Ordering::AcqRel);
        if let Some(key) = self.address {
            let mut map = self.caps.lock();
            if let Some(count) = map.get_mut(&key) {
                *count -= 1;
                if *count == 0 {
                    map.remove(&key);
                }
            }
        }
    }
}

/// The counting key of an address: IPv4 as is, IPv6 by its /64.
fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_count_and_release() {
        let caps = Arc::new(ConnectionCaps::new(3, 2));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = caps.admit(Some(a)).unwrap();
        let a2 = caps.admit(Some(a)).unwrap();
        assert_eq!(caps.admit(Some(a)).unwrap_err(), CapRefusal::PerAddress);
        let b1 = caps.admit(Some(b)).unwrap();
        assert_eq!(caps.admit(Some(b)).unwrap_err(), CapRefusal::Replica);
        assert_eq!(caps.open(), 3);
        drop(a1);
        let a3 = caps.admit(Some(a)).unwrap();
        drop((a2, a3, b1));
        assert_eq!(caps.open(), 0);
        assert!(caps.lock().is_empty(), "no address left behind");
    }

    #[test]
    fn zero_means_no_cap_and_v6_counts_per_64() {
        let caps = Arc::new(ConnectionCaps::new(0, 1));
        let x: IpAddr = "2001:db8:1:2::10".parse().unwrap();
        let y: IpAddr = "2001:db8:1:2::20".parse().unwrap();
        let z: IpAddr = "2001:db8:1:3::10".parse().unwrap();
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        let v4: IpAddr = "10.0.0.1".parse().unwrap();
        let _x = caps.admit(Some(x)).unwrap();
        assert_eq!(caps.admit(Some(y)).unwrap_err(), CapRefusal::PerAddress);
        let _z = caps.admit(Some(z)).unwrap();
        let _m = caps.admit(Some(mapped)).unwrap();
        assert_eq!(caps.admit(Some(v4)).unwrap_err(), CapRefusal::PerAddress);
        let unlimited = Arc::new(ConnectionCaps::new(0, 0));
        let guards: Vec<_> = (0..100)
            .map(|_| unlimited.admit(Some(v4)).unwrap())
            .collect();
        assert_eq!(unlimited.open(), 100);
        drop(guards);
    }
}
