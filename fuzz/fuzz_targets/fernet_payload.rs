//! An encrypted payload from Redis: arbitrary bytes through `Fernet::decrypt` with fixed keys,
//! then msgpack, as `Serializer::deserialize` does with `symmetric_encryption_keys` set (the
//! pub/sub layer without a ttl, the core layer with 70 s).
//!
//! Properties: nothing panics; a token accepted with a ttl is accepted without one and gives
//! the same plaintext; the plaintext is decoded as a message exactly as unencrypted payloads
//! are.

#![no_main]

use channels_fuzz::{CORE_TTL, NOW, dispatch, fernet};
use channels_layer::Message;
use channels_layer::redis::fernet::FernetError;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let fernet = fernet();
    let pubsub = fernet.decrypt_at(data, None, NOW);
    let core = fernet.decrypt_at(data, Some(CORE_TTL), NOW);
    match (&pubsub, &core) {
        (Ok(a), Ok(b)) => assert_eq!(a, b),
        (Ok(_), Err(FernetError::Expired { .. } | FernetError::ClockSkew { .. })) => {}
        (Err(FernetError::InvalidToken), Err(FernetError::InvalidToken)) => {}
        other => panic!("ttl and no-ttl decrypts disagree: {other:?}"),
    }
    if let Ok(plaintext) = pubsub
        && let Ok(msg) = Message::from_msgpack(&plaintext)
    {
        dispatch(&msg);
        assert!(Message::from_msgpack(&msg.to_msgpack()).is_ok());
    }
});
