//! Server API request bodies: arbitrary bytes as the body of `POST /api/groups/{group}/send`.
//!
//! Properties: nothing panics; an accepted body is a JSON object whose string `type` is the
//! message's type; the message shown back as JSON (as history answers show it) is accepted
//! again and gives the same message (floats within their last digit: JSON text is decimal).

#![no_main]

use channels_layer::{Message, Value};
use channels_server::api::{message_json, parse_message};
use libfuzzer_sys::fuzz_target;

fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Float(x), Value::Float(y)) => (x - y).abs() <= f64::EPSILON * x.abs().max(1.0),
        (Value::List(xs), Value::List(ys)) => {
            xs.len() == ys.len() && xs.iter().zip(ys).all(|(x, y)| same(x, y))
        }
        (Value::Map(xs), Value::Map(ys)) => {
            xs.len() == ys.len()
                && xs
                    .iter()
                    .all(|(k, x)| ys.get(k).is_some_and(|y| same(x, y)))
        }
        _ => a == b,
    }
}

fn same_message(a: &Message, b: &Message) -> bool {
    same(&Value::Map(a.map().clone()), &Value::Map(b.map().clone()))
}

fuzz_target!(|body: &[u8]| {
    let Ok(msg) = parse_message(body) else {
        return;
    };
    let json: serde_json::Value = serde_json::from_slice(body).expect("accepted bodies are JSON");
    let ty = json["type"].as_str().expect("accepted bodies have a string type");
    assert_eq!(msg.message_type(), Some(ty));
    let shown = message_json(&msg).to_string();
    let again = parse_message(shown.as_bytes()).expect("a message shown as JSON is accepted");
    assert!(same_message(&msg, &again), "{shown}");
});
