//! A pub/sub payload from Redis without encryption, decoded as the layer decodes it
//! (`Message::from_msgpack`, which is `Serializer::deserialize` without keys).
//!
//! Properties: decoding never panics and agrees with `codec::decode_exact`; a payload that
//! decodes re-encodes to bytes that decode to the same message, and encoding is canonical (a
//! second round trip gives the same bytes).

#![no_main]

use channels_fuzz::{dispatch, same_map, same_message};
use channels_layer::{Message, MessageError, Value, codec};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let decoded = Message::from_msgpack(data);
    match (&decoded, codec::decode_exact(data)) {
        (Ok(msg), Ok(Value::Map(map))) => assert!(same_map(msg.map(), &map)),
        (Err(MessageError::NotAMap), Ok(value)) => {
            assert!(!matches!(value, Value::Map(_)), "a map was refused")
        }
        (Err(a), Err(b)) => assert_eq!(*a, b),
        (message, value) => {
            panic!("from_msgpack and decode_exact disagree: {message:?} vs {value:?}")
        }
    }
    let Ok(msg) = decoded else { return };
    dispatch(&msg);
    let bytes = msg.to_msgpack();
    let again = match Message::from_msgpack(&bytes) {
        Ok(again) => again,
        Err(error) => panic!("{msg:?} encodes to {bytes:02x?}, which does not decode: {error}"),
    };
    assert!(same_message(&msg, &again), "{msg:?} came back as {again:?}");
    assert_eq!(again.to_msgpack(), bytes, "encoding is not canonical");
});
