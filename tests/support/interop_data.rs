//! The message both interop suites (`interop.rs`, pub/sub layer; `interop_core.rs`, core
//! layer) send across the Rust/Python boundary, and the checks they share.
//!
//! Included with `#[path = "support/interop_data.rs"] mod interop_data;` next to
//! `#[path = "support/replica.rs"] mod replica;`, whose `Client` and `TIMEOUT` it uses.

#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    reason = "test support: a failed unwrap is a failed test"
)]

use std::time::Duration;

use channels_layer::{Inbox, Map, Message, Value};

use crate::replica::{Client, TIMEOUT};

/// The seed's group chat reply prefix.
pub const PREFIX: &str = "组内主动推送消息:";

/// The text of the `websocket.receive` event inside [`RICH_JSON`].
pub const TEXT: &str = "你好, Grüße 👋";

/// A `send_msg` event carrying every type a Python message can hold, in `layer_tool.py`'s
/// tagged JSON (`{"$bytes": hex}` is bytes) and formatted exactly as it prints messages
/// (`json.dumps(..., ensure_ascii=False)`). [`rich_message`] is the same message built in Rust.
/// More than 15 keys, so msgpack needs a map16.
pub const RICH_JSON: &str = concat!(
    r#"{"type": "send_msg", "message": {"type": "websocket.receive", "text": "你好, Grüße 👋"}, "#,
    r#""str": "naïve café ✓", "empty_str": "", "#,
    r#""bytes": {"$bytes": "00ff80e4bda0"}, "ascii_bytes": {"$bytes": "6869"}, "#,
    r#""empty_bytes": {"$bytes": ""}, "#,
    r#""nested": {"z": {"deep": [1, "two", {"$bytes": "03"}]}, "a": [], "m": {}}, "#,
    r#""list": [1, -1, 2.5, "x", null, true, false, [], {}], "#,
    r#""small": 7, "zero": 0, "negative": -42, "big": 8589934593, "#,
    r#""big_negative": -1099511627776, "max_i64": 9223372036854775807, "#,
    r#""min_i64": -9223372036854775808, "max_u64": 18446744073709551615, "#,
    r#""float": 1.5, "float_one": 1.0, "float_negative": -0.25, "#,
    r#""yes": true, "no": false, "none": null}"#,
);

/// [`RICH_JSON`] as a Rust [`Message`], fields in the same order.
pub fn rich_message() -> Message {
    fn map(entries: Vec<(&str, Value)>) -> Value {
        Value::Map(Map::from_iter(entries))
    }
    let receive = map(vec![
        ("type", "websocket.receive".into()),
        ("text", TEXT.into()),
    ]);
    let deep = Value::List(vec![Value::Int(1), "two".into(), Value::Bytes(vec![3])]);
    let nested = map(vec![
        ("z", map(vec![("deep", deep)])),
        ("a", Value::List(Vec::new())),
        ("m", map(Vec::new())),
    ]);
    let list = Value::List(vec![
        Value::Int(1),
        Value::Int(-1),
        Value::Float(2.5),
        "x".into(),
        Value::Nil,
        Value::Bool(true),
        Value::Bool(false),
        Value::List(Vec::new()),
        map(Vec::new()),
    ]);
    Message::new("send_msg")
        .with("message", receive)
        .with("str", "naïve café ✓")
        .with("empty_str", "")
        .with("bytes", vec![0x00_u8, 0xff, 0x80, 0xe4, 0xbd, 0xa0])
        .with("ascii_bytes", b"hi".to_vec())
        .with("empty_bytes", Vec::<u8>::new())
        .with("nested", nested)
        .with("list", list)
        .with("small", 7_i64)
        .with("zero", 0_i64)
        .with("negative", -42_i64)
        .with("big", (1_i64 << 33) + 1)
        .with("big_negative", -(1_i64 << 40))
        .with("max_i64", i64::MAX)
        .with("min_i64", i64::MIN)
        .with("max_u64", Value::UInt(u64::MAX))
        .with("float", 1.5)
        .with("float_one", 1.0)
        .with("float_negative", -0.25)
        .with("yes", true)
        .with("no", false)
        .with("none", Value::Nil)
}

/// `got` equals `expected` value by value (Str is not Bytes, Int is not Float) and key by key
/// in the same order; the first differing field is named.
pub fn assert_same_message(got: &Message, expected: &Message) {
    for (key, value) in expected.map().iter() {
        assert_eq!(got.get(key), Some(value), "field {key:?}");
    }
    let keys = |m: &Message| {
        m.map()
            .iter()
            .map(|(k, _)| k.to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(keys(got), keys(expected), "fields and their order");
    assert_eq!(got, expected);
}

/// A line `layer_tool.py` printed is [`RICH_JSON`]: the same values (1.0 a float, bytes tagged),
/// and the very same text, so the same key order too (for the core layer: `__asgi_channel__`
/// was removed and nothing else changed).
pub fn assert_rich_json(line: &str) {
    let got: serde_json::Value = serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("layer_tool printed {line:?}, not JSON: {e}"));
    let expected: serde_json::Value = serde_json::from_str(RICH_JSON).unwrap();
    assert_eq!(got, expected);
    assert!(got["float_one"].is_f64(), "1.0 became {}", got["float_one"]);
    assert_eq!(
        line, RICH_JSON,
        "same values, but not the same key order or text"
    );
}

/// The next message in `inbox`, within the timeout.
pub async fn recv(inbox: &mut Inbox) -> Message {
    tokio::time::timeout(TIMEOUT, inbox.recv())
        .await
        .expect("no message in the Rust inbox within the timeout")
        .expect("the Rust inbox closed")
}

/// Each of `clients` receives the group chat's reply to `text`.
pub async fn all_receive(clients: &mut [&mut Client], text: &str) {
    for client in clients {
        assert_eq!(client.recv_text().await, format!("{PREFIX}{text}"));
    }
}

/// Nothing more arrives at any of `clients` (checked concurrently).
pub async fn all_silent(clients: &mut [&mut Client]) {
    futures_util::future::join_all(
        clients
            .iter_mut()
            .map(|c| c.expect_silence(Duration::from_millis(300))),
    )
    .await;
}
