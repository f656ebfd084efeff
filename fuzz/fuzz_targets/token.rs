//! Connection tokens: arbitrary text, and arbitrary claims correctly signed with HS256.
//!
//! Properties: nothing panics; arbitrary text is never accepted (it carries no valid
//! signature); a correctly signed token is accepted only when its claims are what the server
//! promises to require: an object whose `sub` is a string (the identity's user), whose `exp` is
//! an integer (never a string, the GHSA-h395-gr6q-cpjc class) not in the past, and whose
//! `groups`, when present, is a list of strings.

#![no_main]

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use channels_server::identity::TokenVerifier;
use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::fuzz_target;

/// The claims the server relies on, everything else ignored.
#[derive(serde::Deserialize)]
struct Checked {
    sub: serde_json::Value,
    exp: serde_json::Value,
    #[serde(default)]
    groups: Option<serde_json::Value>,
}

const SECRET: &[u8] = b"fuzzing-secret-of-at-least-32-bytes!!";

fuzz_target!(|input: (bool, &[u8])| {
    let (signed, data) = input;
    let verifier = TokenVerifier::hs256(SECRET).expect("a 37-byte secret");
    let now = SystemTime::now();
    if !signed {
        let text = String::from_utf8_lossy(data);
        assert!(verifier.verify(&text, now).is_err(), "{text:?} accepted");
        return;
    }
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let message = format!("{header}.{}", URL_SAFE_NO_PAD.encode(data));
    let key = EncodingKey::from_secret(SECRET).expect("an HMAC key");
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::HS256)
        .expect("HMAC signs anything");
    let token = format!("{message}.{signature}");
    let Ok(identity) = verifier.verify(&token, now) else {
        return;
    };
    // Read back only the claims the server relies on: serde skips the others without checking
    // them (their UTF-8, their numbers' range), exactly as the verifier's own parse does.
    let Ok(claims) = serde_json::from_str::<Checked>(&String::from_utf8_lossy(data)) else {
        panic!("accepted claims that do not parse: {:?}", String::from_utf8_lossy(data));
    };
    assert_eq!(claims.sub.as_str(), Some(identity.user()), "{:?}", claims.sub);
    let exp = claims.exp.as_u64().expect("exp is an integer");
    let now_secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    assert!(exp + 5 >= now_secs, "expired token accepted: {exp}");
    if let Some(groups) = claims.groups {
        assert!(
            groups.as_array().is_some_and(|g| g.iter().all(|v| v.is_string())),
            "{groups}"
        );
    }
});
