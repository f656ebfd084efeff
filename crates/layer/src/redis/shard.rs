//! Which Redis shard a name lives on: channels_redis's `utils._consistent_hash`.
//!
//! Both Redis layers spread names over their configured hosts with [`consistent_hash`], and a
//! Rust replica must pick the same host as a Python one or the two never meet. What is hashed
//! is the caller's choice, and the two layers choose differently:
//!
//! * the pub/sub layer hashes the full Redis channel name it subscribes to, prefix included
//!   (`asgi__group__g1` for group `g1`);
//! * the core layer hashes the raw group name (`g1`) for group keys, and the non-local part of a
//!   channel name for channel keys.
//!
//! This module does not build those inputs; the backend that owns the naming does. Changing the
//! host list moves most names to other shards, as it does in Python: the 4096 slots are cut
//! into equal ranges, one per host, so there is no ring that keeps names in place when a host
//! is added.

/// The shard index in `0..ring_size` for `value`, exactly as channels_redis computes it.
///
/// The low 12 bits of the standard CRC-32 (`zlib.crc32`) of the UTF-8 bytes pick one of 4096
/// slots, and the slots are split evenly over the ring. A ring of 0 or 1 host always gives 0.
///
/// ```
/// use channels_layer::redis::shard::consistent_hash;
/// assert_eq!(consistent_hash("key_one", 10), 6);
/// assert_eq!(consistent_hash("key_one", 1), 0);
/// ```
pub fn consistent_hash(value: &str, ring_size: usize) -> usize {
    if ring_size <= 1 {
        return 0;
    }
    slot_to_shard(crc32fast::hash(value.as_bytes()) & 0xFFF, ring_size)
}

/// Maps a slot in `0..4096` to a shard with Python's float arithmetic.
///
/// Python computes `int(bigval / (4096 / float(ring_size)))`. The integer formula
/// `bigval * ring_size / 4096` is not equivalent: at slot 2048 with 186 hosts, for example,
/// `4096 / 186` rounds up, Python gets 92 and integers get 93. So this repeats the two f64
/// divisions and the truncation.
fn slot_to_shard(slot: u32, ring_size: usize) -> usize {
    // `ring_size as f64` is exact for any realistic host count (below 2^53), as in Python.
    let slots_per_shard = 4096.0 / ring_size as f64;
    // The quotient is in [0, ring_size), so truncating it cannot overflow or go negative.
    (f64::from(slot) / slots_per_shard) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_channels_redis_test_vectors() {
        // channels_redis tests/test_utils.py.
        assert_eq!(consistent_hash("key_one", 2), 1);
        assert_eq!(consistent_hash("key_one", 10), 6);
        assert_eq!(consistent_hash("key_two", 2), 0);
        assert_eq!(consistent_hash("key_two", 10), 4);
    }

    #[test]
    fn hashes_the_crc32_of_the_utf8_bytes() {
        // zlib.crc32(b"key_one") == 0xae659b21 and zlib.crc32(b"asgi__group__g1") == 0x5962c4d8.
        assert_eq!(crc32fast::hash(b"key_one"), 0xae65_9b21);
        assert_eq!(crc32fast::hash(b"asgi__group__g1"), 0x5962_c4d8);
        // Slot 0x4d8 = 1240 of 4096; Python gives 0, 0, 3 for rings of 2, 3 and 10.
        assert_eq!(consistent_hash("asgi__group__g1", 2), 0);
        assert_eq!(consistent_hash("asgi__group__g1", 3), 0);
        assert_eq!(consistent_hash("asgi__group__g1", 10), 3);
    }

    #[test]
    fn single_or_empty_ring_is_shard_zero() {
        assert_eq!(consistent_hash("key_one", 1), 0);
        assert_eq!(consistent_hash("key_one", 0), 0);
    }

    #[test]
    fn float_math_differs_from_integer_math_at_slot_2048() {
        // int(2048 / (4096 / float(n))) in Python, against 2048 * n // 4096.
        for (n, python, integer) in [
            (186, 92, 93),
            (198, 98, 99),
            (210, 104, 105),
            (234, 116, 117),
            (246, 122, 123),
        ] {
            assert_eq!(2048 * n / 4096, integer);
            assert_eq!(slot_to_shard(2048, n), python, "ring of {n}");
        }
        // zlib.crc32(b"g5622") == 0x2f84c800, whose low 12 bits are 2048.
        assert_eq!(crc32fast::hash(b"g5622") & 0xFFF, 2048);
        assert_eq!(consistent_hash("g5622", 186), 92);
        assert_eq!(consistent_hash("g5622", 246), 122);
    }

    #[test]
    fn every_slot_lands_inside_the_ring() {
        for n in 2..=300 {
            for slot in 0..4096 {
                assert!(slot_to_shard(slot, n) < n, "slot {slot}, ring of {n}");
            }
        }
    }
}
