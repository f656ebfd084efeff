//! The payload of the pub/sub layer's liveness probe: a probe number authenticated with a key
//! that never leaves the process, so that nobody else who can publish to Redis can make a probe
//! count, whatever number or bytes they send.
//!
//! Payload: `{n}:{tag}`, where `tag` is the base64url (unpadded) HMAC-SHA256 of `{shard}:{n}`
//! under a random 256-bit key drawn when the layer starts. The probe channel's name is public
//! (it sits inside the replica's pattern, and the replica id is in every handshake answer);
//! what makes a probe ours is the tag, compared in constant time. The tag authenticates with or
//! without encryption keys, so the probe is not Fernet-encrypted: it carries nothing secret, and
//! holding the shared encryption keys (as every replica and Django process does) is not enough
//! to forge it.
//!
//! The ping loop ([`super::health`]) sends [`ProbeKey::payload`], the push router checks
//! what comes back with [`ProbeKey::verify`]. Whether a verified number is one that was sent is
//! the caller's business.

use std::sync::atomic::Ordering;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::Inner;
use crate::error::LayerError;

/// The longest payload [`ProbeKey::payload`] makes is 64 bytes (20 digits, `:`, 43 for the
/// tag); anything longer is rejected before any work is done on it.
const MAX_PAYLOAD: usize = 64;

/// Why a payload on the probe channel does not count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ProbeRejected {
    /// Not `{number}:{tag}` with a decimal `u64` and a base64url tag.
    #[error("not a liveness probe of this layer's form")]
    Malformed,
    /// Well formed, but the tag is not this process's.
    #[error("liveness probe not signed by this process")]
    Forged,
}

/// The key that signs this process's liveness probes.
#[derive(Clone)]
pub(crate) struct ProbeKey {
    /// The HMAC, keyed once; cloned for each use.
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for ProbeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProbeKey(..)")
    }
}

impl ProbeKey {
    /// A fresh key from the thread's cryptographic generator (seeded by the operating system).
    pub(crate) fn random() -> Self {
        use rand::Rng;
        let mut key = [0u8; 32];
        rand::rng().fill(&mut key);
        Self::from_bytes(&key)
    }

    pub(super) fn from_bytes(key: &[u8]) -> Self {
        Self {
            mac: Hmac::new_from_slice(key).expect("HMAC accepts keys of any length"),
        }
    }

    pub(super) fn tagged(&self, shard: usize, n: u64) -> Hmac<Sha256> {
        let mut mac = self.mac.clone();
        mac.update(format!("{shard}:{n}").as_bytes());
        mac
    }

    /// The payload of probe number `n` of `shard`.
    pub(crate) fn payload(&self, shard: usize, n: u64) -> String {
        let tag = self.tagged(shard, n).finalize().into_bytes();
        format!("{n}:{}", URL_SAFE_NO_PAD.encode(tag))
    }

    /// The number of a probe of `shard` that this key signed.
    pub(crate) fn verify(&self, shard: usize, payload: &[u8]) -> Result<u64, ProbeRejected> {
        if payload.len() > MAX_PAYLOAD {
            return Err(ProbeRejected::Malformed);
        }
        let (number, tag) = std::str::from_utf8(payload)
            .ok()
            .and_then(|p| p.split_once(':'))
            .ok_or(ProbeRejected::Malformed)?;
        // Digits only: no sign, no space (`u64::from_str` would take a leading `+`).
        if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ProbeRejected::Malformed);
        }
        let n: u64 = number.parse().map_err(|_| ProbeRejected::Malformed)?;
        let tag = URL_SAFE_NO_PAD
            .decode(tag)
            .map_err(|_| ProbeRejected::Malformed)?;
        self.tagged(shard, n)
            .verify_slice(&tag)
            .map_err(|_| ProbeRejected::Forged)?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn a_probe_verifies_with_its_key_and_shard_only() {
        let key = ProbeKey::random();
        let payload = key.payload(0, 7);
        assert!(payload.len() <= MAX_PAYLOAD);
        assert_eq!(key.verify(0, payload.as_bytes()), Ok(7));
        let longest = key.payload(3, u64::MAX);
        assert!(longest.len() <= MAX_PAYLOAD, "{longest}");
        assert_eq!(key.verify(3, longest.as_bytes()), Ok(u64::MAX));
        // Another shard's probe, and another process's.
        assert_eq!(
            key.verify(1, payload.as_bytes()),
            Err(ProbeRejected::Forged)
        );
        let other = ProbeKey::random();
        assert_eq!(
            other.verify(0, payload.as_bytes()),
            Err(ProbeRejected::Forged)
        );
    }

    #[test]
    pub(super) fn forged_probes_are_rejected() {
        let key = ProbeKey::random();
        let real = key.payload(0, 5);
        let tag = real.split_once(':').map(|(_, t)| t).unwrap_or_default();
        let forged: Vec<Vec<u8>> = vec![
            // The old probe format: a bare number, huge or not.
            b"18446744073709551615".to_vec(),
            b"6".to_vec(),
            b"-1".to_vec(),
            b"".to_vec(),
            b"garbage".to_vec(),
            vec![0xff, 0xfe, b':', b'x'],
            // The real tag on another number, or a number with a sign or spaces.
            format!("6:{tag}").into_bytes(),
            format!("+5:{tag}").into_bytes(),
            format!("-5:{tag}").into_bytes(),
            format!(" 5:{tag}").into_bytes(),
            format!("18446744073709551616:{tag}").into_bytes(),
            format!("5:{tag}x").into_bytes(),
            format!("5:{}", &tag[1..]).into_bytes(),
            b"5:".to_vec(),
            format!("5:{tag}{}", "A".repeat(100)).into_bytes(),
        ];
        for payload in forged {
            assert!(
                key.verify(0, &payload).is_err(),
                "{:?} was taken",
                String::from_utf8_lossy(&payload)
            );
        }
        assert_eq!(key.verify(0, real.as_bytes()), Ok(5));
    }

    #[test]
    pub(super) fn the_key_is_not_printed() {
        let key = ProbeKey::from_bytes(b"do-not-print-me");
        assert_eq!(format!("{key:?}"), "ProbeKey(..)");
    }
}

// ===== the probe loop's state =====

/// The liveness probe of one shard: every ping interval, one `PUBLISH` to this replica's own
/// pattern through the publisher pool, which must come back through the subscriber.
#[derive(Debug, Default)]
pub(super) struct Probe {
    /// The number of the latest probe sent (0: none since the subscriber last connected).
    pub(super) sent: u64,
    /// The latest probe seen back at the previous tick.
    pub(super) seen_before: u64,
    /// Ticks in a row at which a probe was outstanding and none came back.
    pub(super) misses: u32,
}

impl Probe {
    /// Counts a miss when a probe is outstanding and nothing came back since the previous
    /// tick, fails at two misses in a row, and sends the next probe. Does nothing while the
    /// subscriber is (re)connecting. A slow but live subscriber keeps returning probes, late
    /// or not, and is never replaced.
    pub(super) async fn check(&mut self, inner: &Inner, i: usize) -> Result<(), LayerError> {
        let router = &inner.router;
        if !router.connected[i].load(Ordering::SeqCst) || router.resync[i].load(Ordering::SeqCst) {
            *self = Probe::default();
            return Ok(());
        }
        let seen = router.probe_seen[i].load(Ordering::SeqCst);
        if self.sent > seen && seen == self.seen_before {
            self.misses += 1;
            if self.misses >= 2 {
                *self = Probe::default();
                return Err(inner.shards[i].host.unavailable(
                    "two liveness probes in a row did not come back through the subscriber",
                ));
            }
        } else {
            self.misses = 0;
        }
        self.seen_before = seen;
        // Announced before it is published, since it may come back before PUBLISH returns.
        let next = router.probe_sent[i]
            .load(Ordering::SeqCst)
            .saturating_add(1);
        router.probe_sent[i].store(next, Ordering::SeqCst);
        let payload = router.probe_key.payload(i, next);
        let published = inner
            .publish_on(&inner.shards[i], &router.names.probe, payload)
            .await;
        match published {
            Ok(_) => self.sent = next,
            // Publishing is the pool's problem (group sends report it); only a probe that
            // reached Redis is waited for.
            Err(error) => tracing::debug!(%error, "liveness probe not sent"),
        }
        Ok(())
    }
}
