//! Fernet with fuzzer-chosen plaintext, timestamp, IV, key and clock.
//!
//! Properties: `decrypt(encrypt(x)) == x` with the same key list, after a rotation (the key in
//! second place) and never with another key; the ttl verdict follows `cryptography`'s rules
//! exactly (older than `ttl` is `Expired`, more than 60 s ahead is `ClockSkew`); changing one
//! character of the token either leaves the decoded bytes alone (the unused low bits of the
//! last base64 character) or makes it `InvalidToken`, and never yields other plaintext; a
//! plaintext that is a msgpack message decodes the same as it would unencrypted.

#![no_main]

use std::time::Duration;

use arbitrary::Arbitrary;
use channels_fuzz::same_message;
use channels_layer::Message;
use channels_layer::redis::fernet::{Fernet, FernetError};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Input<'a> {
    key: &'a str,
    plaintext: &'a [u8],
    timestamp: u64,
    iv: [u8; 16],
    now: u64,
    ttl_secs: u64,
    /// A character of the token to change, and what to XOR it with.
    tamper: Option<(usize, u8)>,
}

fuzz_target!(|input: Input<'_>| {
    let Input {
        key,
        plaintext,
        timestamp,
        iv,
        now,
        ttl_secs,
        tamper,
    } = input;
    let fernet = Fernet::new([key, "old-key"]).expect("two keys");
    let token = fernet.encrypt_at(plaintext, timestamp, iv);
    assert!(
        token.is_ascii() && token.len().is_multiple_of(4),
        "not padded base64"
    );
    assert_eq!(fernet.decrypt_at(&token, None, now).unwrap(), plaintext);
    let rotated = Fernet::new(["new-key", key]).expect("two keys");
    assert_eq!(rotated.decrypt_at(&token, None, now).unwrap(), plaintext);
    if key != "other-key" {
        let other = Fernet::new(["other-key"]).expect("one key");
        assert!(matches!(
            other.decrypt_at(&token, None, now),
            Err(FernetError::InvalidToken)
        ));
    }

    let ttl = Duration::from_secs(ttl_secs);
    let verdict = fernet.decrypt_at(&token, Some(ttl), now);
    if u128::from(timestamp) + u128::from(ttl_secs) < u128::from(now) {
        assert!(
            matches!(verdict, Err(FernetError::Expired { .. })),
            "{verdict:?}"
        );
    } else if u128::from(now) + 60 < u128::from(timestamp) {
        assert!(
            matches!(verdict, Err(FernetError::ClockSkew { .. })),
            "{verdict:?}"
        );
    } else {
        assert_eq!(verdict.unwrap(), plaintext);
    }

    if let Some((index, flip)) = tamper {
        let index = index % token.len();
        let mut altered = token.clone();
        altered[index] ^= flip;
        if altered != token {
            match fernet.decrypt_at(&altered, None, now) {
                Ok(decrypted) => assert_eq!(decrypted, plaintext, "a forgery decrypted"),
                Err(FernetError::InvalidToken) => {}
                Err(other) => panic!("unexpected error without a ttl: {other}"),
            }
        }
    }

    if let Ok(direct) = Message::from_msgpack(plaintext) {
        let decrypted = fernet.decrypt_at(&token, None, now).unwrap();
        let through = Message::from_msgpack(&decrypted).expect("same bytes");
        assert!(same_message(&direct, &through));
    }
});
