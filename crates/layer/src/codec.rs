//! msgpack encoding and decoding of [`Value`]s, byte-compatible with Python's `msgpack` 1.x.
//!
//! Encoding matches `msgpack.packb` defaults: the smallest int encoding, floats as float64, str
//! as the str family and bytes as bin. Decoding matches `msgpack.unpackb(raw=False,
//! strict_map_key=True)` and is hardened for bytes that come from Redis, a trust boundary: it
//! accepts exactly one value with nothing after it, rejects extension types, non-str keys and
//! invalid UTF-8, limits nesting to [`MAX_DEPTH`], and never allocates more than the input could
//! hold (a length prefix larger than the remaining bytes is an error before any allocation).

use std::collections::HashMap;

use rmp::Marker;
use rmp::encode;

use crate::value::{Map, MessageError, Value};

/// Maps with more keys than this find repeated keys through a hash index instead of a scan.
const SCAN_LIMIT: usize = 16;

/// The deepest nesting the decoder accepts.
pub const MAX_DEPTH: usize = 64;

// Writing to a Vec cannot fail; the encoder's error type only exists for io::Write sinks.
const VEC_WRITE: &str = "writing msgpack into a Vec<u8> cannot fail";

pub(crate) fn encode_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Nil => encode::write_nil(out).expect(VEC_WRITE),
        Value::Bool(b) => encode::write_bool(out, *b).expect(VEC_WRITE),
        Value::Int(i) => {
            encode::write_sint(out, *i).expect(VEC_WRITE);
        }
        Value::UInt(u) => {
            encode::write_uint(out, *u).expect(VEC_WRITE);
        }
        Value::Float(x) => encode::write_f64(out, *x).expect(VEC_WRITE),
        Value::Str(s) => encode::write_str(out, s).expect(VEC_WRITE),
        Value::Bytes(b) => encode::write_bin(out, b).expect(VEC_WRITE),
        Value::List(items) => {
            encode::write_array_len(out, len_u32(items.len())).expect(VEC_WRITE);
            for item in items {
                encode_value(out, item);
            }
        }
        Value::Map(map) => encode_map(out, map),
    }
}

pub(crate) fn encode_map(out: &mut Vec<u8>, map: &Map) {
    encode::write_map_len(out, len_u32(map.len())).expect(VEC_WRITE);
    for (k, v) in map.iter() {
        encode::write_str(out, k).expect(VEC_WRITE);
        encode_value(out, v);
    }
}

/// The number of bytes [`encode_value`] writes for `value`, without writing them.
pub(crate) fn encoded_len(value: &Value) -> usize {
    match value {
        Value::Nil | Value::Bool(_) => 1,
        Value::Int(i) => int_len(*i),
        Value::UInt(u) => uint_len(*u),
        Value::Float(_) => 9,
        Value::Str(s) => str_header_len(s.len()) + s.len(),
        Value::Bytes(b) => bin_header_len(b.len()) + b.len(),
        Value::List(items) => {
            container_header_len(items.len()) + items.iter().map(encoded_len).sum::<usize>()
        }
        Value::Map(map) => map_encoded_len(map),
    }
}

/// The number of bytes [`encode_map`] writes for `map`.
pub(crate) fn map_encoded_len(map: &Map) -> usize {
    container_header_len(map.len())
        + map
            .iter()
            .map(|(k, v)| str_header_len(k.len()) + k.len() + encoded_len(v))
            .sum::<usize>()
}

fn uint_len(u: u64) -> usize {
    match u {
        0..=0x7f => 1,
        0x80..=0xff => 2,
        0x100..=0xffff => 3,
        0x1_0000..=0xffff_ffff => 5,
        _ => 9,
    }
}

fn int_len(i: i64) -> usize {
    // rmp's write_sint: non-negative values take the unsigned encodings.
    match i {
        0.. => uint_len(i.unsigned_abs()),
        -32..=-1 => 1,
        -128..=-33 => 2,
        -32_768..=-129 => 3,
        -2_147_483_648..=-32_769 => 5,
        _ => 9,
    }
}

fn str_header_len(len: usize) -> usize {
    match len {
        0..=31 => 1,
        32..=0xff => 2,
        0x100..=0xffff => 3,
        _ => 5,
    }
}

fn bin_header_len(len: usize) -> usize {
    match len {
        0..=0xff => 2,
        0x100..=0xffff => 3,
        _ => 5,
    }
}

fn container_header_len(len: usize) -> usize {
    match len {
        0..=15 => 1,
        16..=0xffff => 3,
        _ => 5,
    }
}

fn len_u32(len: usize) -> u32 {
    // A message over 4 GiB cannot be built from a bounded WebSocket frame or a Redis payload.
    u32::try_from(len).expect("msgpack containers hold fewer than 2^32 entries")
}

/// Decodes exactly one value from `bytes`.
pub fn decode_exact(bytes: &[u8]) -> Result<Value, MessageError> {
    let mut reader = Reader { buf: bytes, pos: 0 };
    let value = reader.value(0)?;
    match bytes.len() - reader.pos {
        0 => Ok(value),
        n => Err(MessageError::TrailingBytes(n)),
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

const EOF: MessageError = MessageError::Malformed("unexpected end of input");

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], MessageError> {
        let end = self.pos.checked_add(n).ok_or(EOF)?;
        let slice = self.buf.get(self.pos..end).ok_or(EOF)?;
        self.pos = end;
        Ok(slice)
    }

    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], MessageError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, MessageError> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Result<usize, MessageError> {
        Ok(usize::from(u16::from_be_bytes(self.array()?)))
    }
    fn u32(&mut self) -> Result<usize, MessageError> {
        usize::try_from(u32::from_be_bytes(self.array()?)).map_err(|_| EOF)
    }

    fn str(&mut self, len: usize) -> Result<String, MessageError> {
        let raw = self.take(len)?;
        std::str::from_utf8(raw)
            .map(str::to_owned)
            .map_err(|_| MessageError::InvalidUtf8)
    }

    fn value(&mut self, depth: usize) -> Result<Value, MessageError> {
        let marker = Marker::from_u8(self.u8()?);
        Ok(match marker {
            Marker::Null => Value::Nil,
            Marker::True => Value::Bool(true),
            Marker::False => Value::Bool(false),
            Marker::FixPos(n) => Value::Int(i64::from(n)),
            Marker::FixNeg(n) => Value::Int(i64::from(n)),
            Marker::U8 => Value::Int(i64::from(self.u8()?)),
            Marker::U16 => Value::Int(i64::from(u16::from_be_bytes(self.array()?))),
            Marker::U32 => Value::Int(i64::from(u32::from_be_bytes(self.array()?))),
            Marker::U64 => Value::from(u64::from_be_bytes(self.array()?)),
            Marker::I8 => Value::Int(i64::from(i8::from_be_bytes(self.array()?))),
            Marker::I16 => Value::Int(i64::from(i16::from_be_bytes(self.array()?))),
            Marker::I32 => Value::Int(i64::from(i32::from_be_bytes(self.array()?))),
            Marker::I64 => Value::Int(i64::from_be_bytes(self.array()?)),
            // Python turns a float32 into a float and packs it back as float64.
            Marker::F32 => Value::Float(f64::from(f32::from_be_bytes(self.array()?))),
            Marker::F64 => Value::Float(f64::from_be_bytes(self.array()?)),
            Marker::FixStr(n) => Value::Str(self.str(usize::from(n))?),
            Marker::Str8 => {
                let n = usize::from(self.u8()?);
                Value::Str(self.str(n)?)
            }
            Marker::Str16 => {
                let n = self.u16()?;
                Value::Str(self.str(n)?)
            }
            Marker::Str32 => {
                let n = self.u32()?;
                Value::Str(self.str(n)?)
            }
            Marker::Bin8 => {
                let n = usize::from(self.u8()?);
                Value::Bytes(self.take(n)?.to_vec())
            }
            Marker::Bin16 => {
                let n = self.u16()?;
                Value::Bytes(self.take(n)?.to_vec())
            }
            Marker::Bin32 => {
                let n = self.u32()?;
                Value::Bytes(self.take(n)?.to_vec())
            }
            Marker::FixArray(n) => self.list(usize::from(n), depth)?,
            Marker::Array16 => {
                let n = self.u16()?;
                self.list(n, depth)?
            }
            Marker::Array32 => {
                let n = self.u32()?;
                self.list(n, depth)?
            }
            Marker::FixMap(n) => self.map(usize::from(n), depth)?,
            Marker::Map16 => {
                let n = self.u16()?;
                self.map(n, depth)?
            }
            Marker::Map32 => {
                let n = self.u32()?;
                self.map(n, depth)?
            }
            Marker::FixExt1
            | Marker::FixExt2
            | Marker::FixExt4
            | Marker::FixExt8
            | Marker::FixExt16
            | Marker::Ext8
            | Marker::Ext16
            | Marker::Ext32 => return Err(MessageError::Extension),
            Marker::Reserved => return Err(MessageError::Malformed("reserved marker 0xc1")),
        })
    }

    fn enter(&self, depth: usize, min_bytes: usize, n: usize) -> Result<(), MessageError> {
        if depth >= MAX_DEPTH {
            return Err(MessageError::TooDeep(MAX_DEPTH));
        }
        // Every element takes at least one byte: refuse lengths the input cannot hold, before
        // allocating for them.
        if n.saturating_mul(min_bytes) > self.remaining() {
            return Err(EOF);
        }
        Ok(())
    }

    fn list(&mut self, n: usize, depth: usize) -> Result<Value, MessageError> {
        self.enter(depth, 1, n)?;
        let mut items = Vec::with_capacity(n);
        for _ in 0..n {
            items.push(self.value(depth + 1)?);
        }
        Ok(Value::List(items))
    }

    fn map(&mut self, n: usize, depth: usize) -> Result<Value, MessageError> {
        self.enter(depth, 2, n)?;
        let mut entries: Vec<(String, Value)> = Vec::with_capacity(n);
        // Repeated keys are looked up by scanning small maps and through an index for large ones,
        // so a map with many keys (from Redis, untrusted) decodes in linear time.
        let mut index: Option<HashMap<String, usize>> = (n > SCAN_LIMIT).then(HashMap::new);
        for _ in 0..n {
            let key = match self.value(depth + 1)? {
                Value::Str(k) => k,
                _ => return Err(MessageError::NonStrKey),
            };
            let value = self.value(depth + 1)?;
            let existing = match &index {
                Some(index) => index.get(&key).copied(),
                None => entries.iter().position(|(k, _)| *k == key),
            };
            // Python keeps the last value for a repeated key, at the first key's position.
            match existing {
                Some(i) => entries[i].1 = value,
                None => {
                    if let Some(index) = &mut index {
                        index.insert(key.clone(), entries.len());
                    }
                    entries.push((key, value));
                }
            }
        }
        Ok(Value::Map(Map::from_entries(entries)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Message;

    fn encode(v: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        encode_value(&mut out, v);
        out
    }

    #[test]
    fn encoded_len_is_what_the_encoder_writes() {
        let mut values = vec![Value::Nil, Value::Bool(false), Value::Float(1.5)];
        for i in [
            0i64,
            1,
            127,
            128,
            255,
            256,
            65_535,
            65_536,
            4_294_967_295,
            4_294_967_296,
            -1,
            -32,
            -33,
            -128,
            -129,
            -32_768,
            -32_769,
            -2_147_483_648,
            -2_147_483_649,
            i64::MIN,
            i64::MAX,
        ] {
            values.push(Value::Int(i));
        }
        for u in [0u64, 127, 128, 256, 70_000, u64::MAX] {
            values.push(Value::UInt(u));
        }
        for n in [0usize, 31, 32, 255, 256, 65_535, 65_536] {
            values.push(Value::Str("x".repeat(n)));
            values.push(Value::Bytes(vec![0; n]));
            values.push(Value::List(vec![Value::Nil; n.min(70_000)]));
            let map: Map = (0..n.min(20))
                .map(|i| (format!("k{i}"), Value::Nil))
                .collect();
            values.push(Value::Map(map));
        }
        values.push(Value::List(values.clone()));
        for v in &values {
            assert_eq!(encoded_len(v), encode(v).len(), "{v:?}");
        }
    }

    #[test]
    fn matches_channels_redis_serializer_vector() {
        // channels_redis tests: {"a": True, "b": None, "c": {"d": []}}
        let msg = Message::from_map(
            [
                ("a", Value::Bool(true)),
                ("b", Value::Nil),
                (
                    "c",
                    Value::Map([("d", Value::List(vec![]))].into_iter().collect()),
                ),
            ]
            .into_iter()
            .collect(),
        );
        let expected = b"\x83\xa1a\xc3\xa1b\xc0\xa1c\x81\xa1d\x90";
        assert_eq!(msg.to_msgpack(), expected);
        assert_eq!(Message::from_msgpack(expected).unwrap(), msg);
    }

    #[test]
    fn matches_the_observed_group_send_payload() {
        // channels-wire-spec 4.1: group_send("g1", {"type": "chat.message", "text": "hi"})
        let msg = Message::new("chat.message").with("text", "hi");
        let expected: &[u8] = &[
            0x82, 0xa4, b't', b'y', b'p', b'e', 0xac, b'c', b'h', b'a', b't', b'.', b'm', b'e',
            b's', b's', b'a', b'g', b'e', 0xa4, b't', b'e', b'x', b't', 0xa2, b'h', b'i',
        ];
        assert_eq!(msg.to_msgpack(), expected);
    }

    #[test]
    fn ints_use_the_smallest_encoding_like_python() {
        let cases: &[(Value, &[u8])] = &[
            (Value::Int(0), &[0x00]),
            (Value::Int(127), &[0x7f]),
            (Value::Int(128), &[0xcc, 0x80]),
            (Value::Int(-1), &[0xff]),
            (Value::Int(-33), &[0xd0, 0xdf]),
            (Value::Int(1 << 31), &[0xce, 0x80, 0, 0, 0]),
            (
                Value::UInt(u64::MAX),
                &[0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
            ),
            (Value::Int(i64::MIN), &[0xd3, 0x80, 0, 0, 0, 0, 0, 0, 0]),
            (Value::Float(1.5), &[0xcb, 0x3f, 0xf8, 0, 0, 0, 0, 0, 0]),
        ];
        for (v, bytes) in cases {
            assert_eq!(encode(v), *bytes, "{v:?}");
            assert_eq!(decode_exact(bytes).unwrap(), *v);
        }
    }

    #[test]
    fn str_and_bytes_stay_apart() {
        let v = Value::List(vec![Value::Str("é<&".into()), Value::Bytes(vec![0, 0xff])]);
        let bytes = encode(&v);
        assert_eq!(bytes[1], 0xa4, "str family");
        assert_eq!(decode_exact(&bytes).unwrap(), v);
    }

    #[test]
    fn long_str_and_bin_round_trip() {
        let v = Value::List(vec![
            Value::Str("x".repeat(70_000)),
            Value::Bytes(vec![7; 70_000]),
        ]);
        assert_eq!(decode_exact(&encode(&v)).unwrap(), v);
    }

    #[test]
    fn rejects_what_python_rejects_or_we_refuse() {
        assert_eq!(
            decode_exact(&[0x81, 0x01, 0x02]),
            Err(MessageError::NonStrKey)
        );
        assert_eq!(
            decode_exact(&[0x81, 0xc4, 0x01, b'k', 0x02]),
            Err(MessageError::NonStrKey)
        );
        assert_eq!(decode_exact(&[0xa1, 0xff]), Err(MessageError::InvalidUtf8));
        assert_eq!(
            decode_exact(&[0xd4, 0x01, 0x02]),
            Err(MessageError::Extension)
        );
        assert!(matches!(
            decode_exact(&[0xc1]),
            Err(MessageError::Malformed(_))
        ));
        assert_eq!(
            decode_exact(&[0xc0, 0xc0]),
            Err(MessageError::TrailingBytes(1))
        );
        assert!(decode_exact(&[]).is_err());
        assert_eq!(Message::from_msgpack(&[0x90]), Err(MessageError::NotAMap));
    }

    #[test]
    fn huge_length_prefixes_fail_without_allocating() {
        for bytes in [
            &[0xdd, 0xff, 0xff, 0xff, 0xff][..],
            &[0xdf, 0xff, 0xff, 0xff, 0xff][..],
            &[0xc6, 0xff, 0xff, 0xff, 0xff][..],
            &[0xdb, 0xff, 0xff, 0xff, 0xff][..],
        ] {
            assert!(decode_exact(bytes).is_err());
        }
    }

    #[test]
    fn deep_nesting_is_refused() {
        let mut bytes = vec![0x91; 100_000];
        bytes.push(0x90);
        assert_eq!(decode_exact(&bytes), Err(MessageError::TooDeep(MAX_DEPTH)));
        let mut ok = vec![0x91; MAX_DEPTH - 1];
        ok.push(0x90);
        assert!(decode_exact(&ok).is_ok());
    }

    #[test]
    fn a_map_with_many_keys_decodes_in_linear_time() {
        // 50,000 distinct keys and one repeat: a scan per key would take seconds.
        let n = 50_000u32;
        let mut bytes = vec![0xdf];
        bytes.extend_from_slice(&(n + 1).to_be_bytes());
        for i in 0..=n {
            let key = format!("k{}", i % n);
            bytes.push(0xa0 | u8::try_from(key.len()).unwrap());
            bytes.extend_from_slice(key.as_bytes());
            bytes.push(0x01);
        }
        let started = std::time::Instant::now();
        let Value::Map(map) = decode_exact(&bytes).unwrap() else {
            panic!("not a map")
        };
        assert_eq!(map.len(), n as usize, "the repeated key keeps one entry");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn float32_from_other_producers_reads_as_a_float() {
        let bytes = [0xca, 0x3f, 0x00, 0x00, 0x00];
        assert_eq!(decode_exact(&bytes).unwrap(), Value::Float(0.5));
    }
}
