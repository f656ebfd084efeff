#![allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]
//! Property tests of what crosses the Redis trust boundary (reliability-security.md T-F2,
//! T-S9): the msgpack codec, channel and group names, and the group → Redis channel mapping.
//! The cargo-fuzz targets in `fuzz/` check the same properties with coverage guidance; these
//! run in every `cargo test`.

use std::sync::LazyLock;

use channels_layer::redis::group_channel;
use channels_layer::{ChannelName, GroupName, Map, Message, MessageError, Value, codec};
use proptest::prelude::*;
use regex::Regex;

/// Cases per property: T-F2 asks for at least 10,000 where they are cheap.
const CASES: u32 = 10_000;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: CASES,
        // A failure is reported with its minimal input; persisting it would write files
        // next to the sources.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// A map key or str value: any Unicode, biased towards the short ASCII keys messages use.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-z_.]{0,8}",
        2 => prop::collection::vec(any::<char>(), 0..12).prop_map(String::from_iter),
        // Around the fixstr/str8 and str8/str16 boundaries (in bytes: "é" is two).
        1 => (15usize..17, 0usize..4).prop_map(|(e, x)| "é".repeat(e) + &"x".repeat(x)),
        1 => (255usize..257).prop_map(|n| "x".repeat(n)),
    ]
}

/// Any value Python's msgpack moves without loss, nested: str-keyed maps, lists, str, bin,
/// ints over the whole i64 range and u64 above it, floats other than NaN (NaN != NaN).
fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Nil),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::Int),
        // Python ints from 2**63 to 2**64 - 1 are msgpack uint64.
        ((i64::MAX as u64 + 1)..=u64::MAX).prop_map(Value::UInt),
        // From<u64> keeps small values signed, as the decoder does.
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("NaN is not equal to itself", |x| !x.is_nan())
            .prop_map(Value::Float),
        text().prop_map(Value::Str),
        prop::collection::vec(any::<u8>(), 0..40).prop_map(Value::Bytes),
        // Around the bin8/bin16 boundary.
        (255usize..257).prop_map(|n| Value::Bytes(vec![7; n])),
    ];
    // Up to 6 levels and about 48 nodes; 16 entries cross the fixarray/fixmap boundary.
    leaf.prop_recursive(6, 48, 17, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..17).prop_map(Value::List),
            prop::collection::vec((text(), inner), 0..17)
                .prop_map(|entries| Value::Map(entries.into_iter().collect::<Map>())),
        ]
    })
}

/// The same tree as an `rmpv` value, to compare with an independent msgpack implementation.
fn to_rmpv(value: &Value) -> rmpv::Value {
    match value {
        Value::Nil => rmpv::Value::Nil,
        Value::Bool(b) => rmpv::Value::Boolean(*b),
        Value::Int(i) => rmpv::Value::from(*i),
        Value::UInt(u) => rmpv::Value::from(*u),
        Value::Float(x) => rmpv::Value::F64(*x),
        Value::Str(s) => rmpv::Value::from(s.as_str()),
        Value::Bytes(b) => rmpv::Value::Binary(b.clone()),
        Value::List(items) => rmpv::Value::Array(items.iter().map(to_rmpv).collect()),
        Value::Map(map) => rmpv::Value::Map(
            map.iter()
                .map(|(k, v)| (rmpv::Value::from(k), to_rmpv(v)))
                .collect(),
        ),
    }
}

/// A message holding `value` under one key: the public encoder encodes messages (maps).
fn wrap(value: Value) -> Message {
    Message::from_map(Map::from_iter([("v", value)]))
}

/// Group names as `channels.layers` documents them (ASCII only: see `name.rs`).
static GROUP_RULE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\A[a-zA-Z0-9_.\-]{1,99}\z").unwrap());
/// Channel names; the length limit (under 100) is checked separately.
static CHANNEL_RULE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\A[a-zA-Z0-9_.\-]+(![a-zA-Z0-9_.\-]*)?\z").unwrap());

/// Strings near the name rules: name characters mixed with every character class the rules
/// exclude (glob and hash-tag characters, `:`, `!`, `/`, whitespace, control, non-ASCII
/// letters and digits), around the length limit.
fn near_names() -> impl Strategy<Value = String> {
    prop_oneof![
        r"[a-zA-Z0-9_.\-]{0,120}",
        r"[a-zA-Z0-9_.\-!]{0,110}",
        r"[a-zA-Z0-9_.\-*?\[\]{}:! \t\n\r\x00/\\é٣组]{0,110}",
        any::<String>(),
    ]
}

proptest! {
    #![proptest_config(config())]

    // One generated tree serves several properties: generating trees dominates the cost.
    #[test]
    fn any_value_round_trips_exactly_with_nothing_left_over(
        value in value(),
        cut in any::<prop::sample::Index>(),
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let msg = wrap(value);
        let bytes = msg.to_msgpack();
        // decode_exact refuses trailing bytes, so Ok means the encoding was consumed exactly.
        let decoded = codec::decode_exact(&bytes).unwrap();
        prop_assert_eq!(&decoded, &Value::Map(msg.map().clone()));
        prop_assert_eq!(&Message::from_msgpack(&bytes).unwrap(), &msg);
        // The bytes are what an independent encoder (rmpv, Python's conventions: smallest
        // ints, float64, str and bin families) writes for the same tree.
        let mut theirs = Vec::new();
        rmpv::encode::write_value(&mut theirs, &to_rmpv(&decoded)).unwrap();
        prop_assert_eq!(&bytes, &theirs);
        // msgpack is self-delimiting: one more byte is trailing, and no proper prefix decodes.
        let mut longer = bytes.clone();
        longer.push(0xc0);
        prop_assert_eq!(codec::decode_exact(&longer), Err(MessageError::TrailingBytes(1)));
        prop_assert!(codec::decode_exact(&bytes[..cut.index(bytes.len())]).is_err());
        // A damaged encoding never panics, and whatever it decodes to re-encodes and decodes.
        let mut damaged = bytes;
        let at = at.index(damaged.len());
        damaged[at] = byte;
        if let Ok(msg) = Message::from_msgpack(&damaged) {
            prop_assert!(Message::from_msgpack(&msg.to_msgpack()).is_ok());
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_decoder(
        bytes in prop::collection::vec(any::<u8>(), 0..512),
    ) {
        let ours = codec::decode_exact(&bytes);
        let _ = Message::from_msgpack(&bytes);
        // What we accept, rmpv reads as the same tree (we are stricter: no extension types,
        // str keys only, no trailing bytes, depth 64). Our re-encoding is canonical, so compare
        // that rather than the input bytes.
        if let Ok(value) = ours {
            let mut reader = bytes.as_slice();
            let theirs = rmpv::decode::read_value(&mut reader).unwrap();
            prop_assert!(reader.is_empty());
            let mut ours_again = Vec::new();
            let mut theirs_again = Vec::new();
            rmpv::encode::write_value(&mut ours_again, &to_rmpv(&value)).unwrap();
            rmpv::encode::write_value(&mut theirs_again, &canonical(theirs)).unwrap();
            prop_assert_eq!(ours_again, theirs_again);
        }
    }

    #[test]
    fn every_accepted_name_matches_the_documented_rule(name in near_names()) {
        prop_assert_eq!(GroupName::new(&name).is_ok(), GROUP_RULE.is_match(&name), "{:?}", name);
        prop_assert_eq!(
            ChannelName::new(&name).is_ok(),
            name.len() < 100 && CHANNEL_RULE.is_match(&name),
            "{:?}", name
        );
    }

    #[test]
    fn every_string_of_name_characters_up_to_99_long_is_a_group(name in r"[a-zA-Z0-9_.\-]{1,99}") {
        let group = GroupName::new(&name).unwrap();
        prop_assert_eq!(group.as_str(), name.as_str());
        prop_assert!(ChannelName::new(&name).is_ok());
    }

    #[test]
    fn names_of_100_or_more_characters_are_refused(name in r"[a-zA-Z0-9_.\-]{100,130}") {
        prop_assert!(GroupName::new(&name).is_err());
        prop_assert!(ChannelName::new(&name).is_err());
    }

    #[test]
    fn group_channels_are_injective_and_stay_inside_the_prefix(
        // Prefixes the layer accepts: name characters (it checks them with the channel rule).
        prefix in r"[a-zA-Z0-9_.\-]{0,40}",
        a in r"[a-zA-Z0-9_.\-]{1,99}",
        b in prop_oneof![r"[a-zA-Z0-9_.\-]{1,99}", r"[ab_]{1,3}"],
    ) {
        let (a, b) = (GroupName::new(&a).unwrap(), GroupName::new(&b).unwrap());
        let (channel_a, channel_b) = (group_channel(&prefix, &a), group_channel(&prefix, &b));
        prop_assert_eq!(a == b, channel_a == channel_b);
        for (group, channel) in [(&a, &channel_a), (&b, &channel_b)] {
            prop_assert!(channel.starts_with(&prefix));
            // The inverse the subscriber applies to an incoming channel gives the group back.
            let rest = channel.strip_prefix(&format!("{prefix}__group__")).unwrap();
            prop_assert_eq!(rest, group.as_str());
            // No glob (PSUBSCRIBE), hash-tag (cluster slot) or key separator character, and no
            // `!`, so a group channel never collides with a process-local channel.
            prop_assert!(
                !channel.contains(|c: char| "*?[]{}:!".contains(c) || c.is_whitespace()),
                "{:?}", channel
            );
        }
    }
}

/// An rmpv value as our decoder would give it back: maps keep the last value of a repeated
/// key at the first key's position (Python's dict), and F32 widens to F64.
fn canonical(value: rmpv::Value) -> rmpv::Value {
    match value {
        rmpv::Value::F32(x) => rmpv::Value::F64(f64::from(x)),
        rmpv::Value::Array(items) => rmpv::Value::Array(items.into_iter().map(canonical).collect()),
        rmpv::Value::Map(entries) => {
            let mut out: Vec<(rmpv::Value, rmpv::Value)> = Vec::new();
            for (k, v) in entries {
                let v = canonical(v);
                match out.iter_mut().find(|(key, _)| *key == k) {
                    Some(slot) => slot.1 = v,
                    None => out.push((k, v)),
                }
            }
            rmpv::Value::Map(out)
        }
        other => other,
    }
}

#[test]
fn the_channels_redis_vector_decodes_and_re_encodes_byte_for_byte() {
    // channels_redis tests: {"a": True, "b": None, "c": {"d": []}}
    let bytes = b"\x83\xa1a\xc3\xa1b\xc0\xa1c\x81\xa1d\x90";
    assert_eq!(Message::from_msgpack(bytes).unwrap().to_msgpack(), bytes);
}
