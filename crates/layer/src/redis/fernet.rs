//! Payload encryption for the Redis layers: channels_redis's `symmetric_encryption_keys`.
//!
//! channels_redis can encrypt every message it puts in Redis with
//! [Fernet](https://github.com/fernet/spec/blob/master/Spec.md): AES-128-CBC for secrecy plus
//! HMAC-SHA256 for integrity. It authenticates as well as encrypts, so a message that was altered
//! in Redis, or written by someone without a key, is rejected rather than decoded. [`Fernet`] is
//! that scheme, byte-compatible with Python's `cryptography` package, so Rust and Python replicas
//! that share a key list can read each other's messages.
//!
//! Like channels_redis, each configured key is hashed with SHA-256 and the digest is used as the
//! Fernet key (`Fernet(base64url(sha256(key)))`), so any string works as a key. The list behaves
//! as `MultiFernet`: the first key encrypts and every key is tried when decrypting, which is how
//! keys are rotated (put the new key first, and drop the old one once no message made with it
//! can still be waiting).
//!
//! What this does not do:
//!
//! * It hides message bodies only. Channel and group names are Redis keys and pub/sub channel
//!   names, and they stay in clear, as do message sizes, timing and the token's timestamp. Use
//!   TLS to Redis (`rediss://`) as well.
//! * It does not stop replays. The core layer limits a token's age (70 s by default); the
//!   pub/sub layer passes no limit, as channels_redis does.
//!
//! The Redis backends' serializer calls it: encrypt after msgpack packing (and before the core
//! layer's random prefix), decrypt in reverse.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aes::Aes128;
use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use cbc::cipher::block_padding::Pkcs7;
use cbc::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// The first byte of every token: Fernet spec version 0x80.
const VERSION: u8 = 0x80;
/// Version, big-endian timestamp and IV, in bytes.
const HEADER_LEN: usize = 1 + 8 + 16;
/// An HMAC-SHA256 tag, in bytes.
const TAG_LEN: usize = 32;
/// The AES block size; PKCS7 always adds at least one byte, so a ciphertext is at least a block.
const BLOCK_LEN: usize = 16;
/// How far in the future a token may be dated when a ttl is given (`cryptography`'s
/// `_MAX_CLOCK_SKEW`).
const MAX_CLOCK_SKEW_SECS: u64 = 60;

/// URL-safe base64 as Python's `base64.urlsafe_b64encode` writes it, padding included.
///
/// Decoding follows `urlsafe_b64decode` where it matters for real tokens: padding is required,
/// and the unused low bits of the last character are ignored (Python ignores them too, so a
/// token that differs only there is the same token). It is stricter on input no Fernet encoder
/// produces: Python silently drops characters outside the alphabet (such as a newline) and
/// anything after the padding, and accepts `+` and `/`; these are rejected here.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(true)
        .with_decode_padding_mode(DecodePaddingMode::RequireCanonical)
        .with_decode_allow_trailing_bits(true),
);

type HmacSha256 = Hmac<Sha256>;
type Aes128CbcEnc = cbc::Encryptor<Aes128>;
type Aes128CbcDec = cbc::Decryptor<Aes128>;

/// Why [`Fernet::new`] or [`Fernet::decrypt`] failed. No message includes key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FernetError {
    /// The key list was empty. Python's `MultiFernet` raises `ValueError` for this.
    #[error("no encryption keys were given: pass at least one key (the first one encrypts)")]
    NoKeys,
    /// The token is not base64, is not a version 0x80 Fernet token, was altered, or was made with
    /// a key that is not in the list. These are deliberately not told apart.
    #[error(
        "invalid Fernet token: it is malformed, was altered, or was made with a key that is not \
         in this list; check that every replica has the same symmetric encryption keys"
    )]
    InvalidToken,
    /// The token is authentic but older than the ttl allows. Reported only after the token's
    /// HMAC has been verified; Python reports this as `InvalidToken`.
    #[error(
        "Fernet token expired: made at {timestamp}, checked at {now}, limit {ttl:?}; the message \
         waited too long in Redis or the replicas' clocks disagree"
    )]
    Expired {
        /// When the token was made, in seconds since the Unix epoch.
        timestamp: u64,
        /// When it was checked, in seconds since the Unix epoch.
        now: u64,
        /// The age limit it was checked against.
        ttl: Duration,
    },
    /// The token is authentic but dated more than 60 s in the future; checked only when a ttl is
    /// given, as `cryptography` does. Reported only after the token's HMAC has been verified;
    /// Python reports this as `InvalidToken`.
    #[error(
        "Fernet token made at {timestamp} is more than 60 s ahead of this replica's clock \
         ({now}): synchronise the replicas' clocks"
    )]
    ClockSkew {
        /// When the token claims it was made, in seconds since the Unix epoch.
        timestamp: u64,
        /// When it was checked, in seconds since the Unix epoch.
        now: u64,
    },
}

/// The two halves of one hashed key. Deliberately not `Debug`.
#[derive(Clone)]
struct Key {
    /// HMAC-SHA256 key: the first half of the SHA-256 digest.
    signing: [u8; 16],
    /// AES-128 key: the second half.
    encryption: [u8; 16],
}

impl Key {
    /// Hashes a configured key as channels_redis does before handing it to `Fernet`.
    fn derive(secret: &[u8]) -> Self {
        let digest = Sha256::digest(secret);
        let mut key = Key {
            signing: [0; 16],
            encryption: [0; 16],
        };
        key.signing.copy_from_slice(&digest[..16]);
        key.encryption.copy_from_slice(&digest[16..]);
        key
    }

    fn mac(&self) -> HmacSha256 {
        HmacSha256::new_from_slice(&self.signing).expect("HMAC accepts keys of any length")
    }

    /// Whether `tag` is this key's HMAC of `signed`, compared in constant time.
    fn verifies(&self, signed: &[u8], tag: &[u8]) -> bool {
        let mut mac = self.mac();
        mac.update(signed);
        mac.verify_slice(tag).is_ok()
    }
}

/// A decoded token, split into its parts; the structure is checked, the HMAC is not.
struct Parts<'a> {
    /// Everything the HMAC covers: version, timestamp, IV and ciphertext.
    signed: &'a [u8],
    tag: &'a [u8],
    timestamp: u64,
    iv: &'a [u8],
    ciphertext: &'a [u8],
}

impl<'a> Parts<'a> {
    fn parse(data: &'a [u8]) -> Option<Self> {
        let body_len = data.len().checked_sub(HEADER_LEN + TAG_LEN)?;
        if data[0] != VERSION || body_len == 0 || !body_len.is_multiple_of(BLOCK_LEN) {
            return None;
        }
        let (signed, tag) = data.split_at(data.len() - TAG_LEN);
        let timestamp = u64::from_be_bytes(signed[1..9].try_into().ok()?);
        Some(Parts {
            signed,
            tag,
            timestamp,
            iv: &signed[9..HEADER_LEN],
            ciphertext: &signed[HEADER_LEN..],
        })
    }
}

/// Fernet encryption over a list of keys, as channels_redis's `symmetric_encryption_keys`.
///
/// The first key encrypts; decryption tries every key in order. Every replica, Rust or Python,
/// must hold the same keys. A list rather than one key is what makes rotation possible: deploy
/// `[new, old]` everywhere, then `[new]` once old messages are gone.
///
/// ```
/// use channels_layer::redis::fernet::Fernet;
/// let fernet = Fernet::new(["new-secret", "old-secret"])?;
/// let token = fernet.encrypt(b"\x80");
/// assert!(token.starts_with(b"gAAAAA"));
/// assert_eq!(fernet.decrypt(&token, None)?, b"\x80");
/// # Ok::<(), channels_layer::redis::fernet::FernetError>(())
/// ```
#[derive(Clone)]
pub struct Fernet {
    /// Never empty: [`Fernet::new`] refuses an empty list.
    keys: Vec<Key>,
}

impl fmt::Debug for Fernet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The number of keys only: key material must not reach logs.
        f.debug_struct("Fernet")
            .field("keys", &self.keys.len())
            .finish_non_exhaustive()
    }
}

impl Fernet {
    /// Builds the key list. Each key (any bytes, usually a UTF-8 string) is hashed with SHA-256:
    /// the first 16 bytes of the digest sign and the last 16 encrypt.
    ///
    /// Pass a list, not a single string: channels_redis raises `ValueError` for a bare string,
    /// and here a `&str` does not compile.
    ///
    /// ```
    /// use channels_layer::redis::fernet::{Fernet, FernetError};
    /// assert!(Fernet::new(["a-test-key"]).is_ok());
    /// assert!(matches!(Fernet::new(Vec::<String>::new()), Err(FernetError::NoKeys)));
    /// ```
    pub fn new<K: AsRef<[u8]>>(keys: impl IntoIterator<Item = K>) -> Result<Self, FernetError> {
        let keys: Vec<Key> = keys
            .into_iter()
            .map(|key| Key::derive(key.as_ref()))
            .collect();
        if keys.is_empty() {
            return Err(FernetError::NoKeys);
        }
        Ok(Self { keys })
    }

    /// Encrypts `plaintext` with the first key, dated now and with a random IV, and returns the
    /// token as URL-safe base64 (ASCII, padded, starting `gAAAAA`).
    ///
    /// ```
    /// # use channels_layer::redis::fernet::Fernet;
    /// let token = Fernet::new(["a-test-key"])?.encrypt(b"hello");
    /// assert!(token.ends_with(b"="));
    /// # Ok::<(), channels_layer::redis::fernet::FernetError>(())
    /// ```
    pub fn encrypt(&self, plaintext: &[u8]) -> Vec<u8> {
        // ThreadRng is a CSPRNG seeded from the OS; Python uses os.urandom.
        self.encrypt_at(plaintext, unix_now(), rand::random())
    }

    /// Encrypts with a given timestamp (seconds since the Unix epoch) and IV, which makes the
    /// token deterministic. For tests and test vectors only: reusing an IV leaks information.
    ///
    /// ```
    /// # use channels_layer::redis::fernet::Fernet;
    /// let fernet = Fernet::new(["a-test-key"])?;
    /// assert_eq!(fernet.encrypt_at(b"x", 0, [0; 16]), fernet.encrypt_at(b"x", 0, [0; 16]));
    /// # Ok::<(), channels_layer::redis::fernet::FernetError>(())
    /// ```
    pub fn encrypt_at(&self, plaintext: &[u8], timestamp: u64, iv: [u8; 16]) -> Vec<u8> {
        let key = self
            .keys
            .first()
            .expect("Fernet::new refuses an empty key list");
        let ciphertext = Aes128CbcEnc::new(&key.encryption.into(), &iv.into())
            .encrypt_padded_vec_mut::<Pkcs7>(plaintext);
        let mut data = Vec::with_capacity(HEADER_LEN + ciphertext.len() + TAG_LEN);
        data.push(VERSION);
        data.extend_from_slice(&timestamp.to_be_bytes());
        data.extend_from_slice(&iv);
        data.extend_from_slice(&ciphertext);
        let mut mac = key.mac();
        mac.update(&data);
        data.extend_from_slice(&mac.finalize().into_bytes());
        BASE64.encode(data).into_bytes()
    }

    /// Verifies and decrypts a token made with any of the keys.
    ///
    /// With `ttl`, the token must be at most `ttl` old (whole seconds; a fraction is dropped) and
    /// at most 60 s in the future. The core layer passes 70 s, the pub/sub layer `None`.
    ///
    /// ```
    /// # use channels_layer::redis::fernet::{Fernet, FernetError};
    /// # use std::time::Duration;
    /// let fernet = Fernet::new(["a-test-key"])?;
    /// let token = fernet.encrypt(b"hello");
    /// assert_eq!(fernet.decrypt(&token, Some(Duration::from_secs(70)))?, b"hello");
    /// assert!(matches!(fernet.decrypt(b"hello", None), Err(FernetError::InvalidToken)));
    /// # Ok::<(), FernetError>(())
    /// ```
    pub fn decrypt(&self, token: &[u8], ttl: Option<Duration>) -> Result<Vec<u8>, FernetError> {
        self.decrypt_at(token, ttl, unix_now())
    }

    /// [`Fernet::decrypt`] with the current time given, in seconds since the Unix epoch.
    ///
    /// ```
    /// # use channels_layer::redis::fernet::{Fernet, FernetError};
    /// # use std::time::Duration;
    /// let fernet = Fernet::new(["a-test-key"])?;
    /// let token = fernet.encrypt_at(b"hello", 1_000, [7; 16]);
    /// let ttl = Some(Duration::from_secs(70));
    /// assert_eq!(fernet.decrypt_at(&token, ttl, 1_070)?, b"hello");
    /// assert!(matches!(fernet.decrypt_at(&token, ttl, 1_071), Err(FernetError::Expired { .. })));
    /// # Ok::<(), FernetError>(())
    /// ```
    pub fn decrypt_at(
        &self,
        token: &[u8],
        ttl: Option<Duration>,
        now: u64,
    ) -> Result<Vec<u8>, FernetError> {
        let data = BASE64
            .decode(token)
            .map_err(|_| FernetError::InvalidToken)?;
        let parts = Parts::parse(&data).ok_or(FernetError::InvalidToken)?;
        for key in &self.keys {
            // The HMAC is checked before anything else is trusted, and before decrypting, so
            // a forged ciphertext never reaches AES or the padding check.
            if !key.verifies(parts.signed, parts.tag) {
                continue;
            }
            check_age(parts.timestamp, ttl, now)?;
            let decryptor = Aes128CbcDec::new_from_slices(&key.encryption, parts.iv)
                .map_err(|_| FernetError::InvalidToken)?;
            // Bad padding under a valid HMAC means the key's owner made a bad token. Python
            // then tries the next key, and so does this loop.
            if let Ok(plaintext) = decryptor.decrypt_padded_vec_mut::<Pkcs7>(parts.ciphertext) {
                return Ok(plaintext);
            }
        }
        Err(FernetError::InvalidToken)
    }
}

/// `cryptography`'s age rules: `timestamp + ttl < now` is too old and `now + 60 < timestamp` is
/// too far ahead, in Python's unbounded integers (u128 here, so nothing overflows).
fn check_age(timestamp: u64, ttl: Option<Duration>, now: u64) -> Result<(), FernetError> {
    let Some(ttl) = ttl else {
        return Ok(());
    };
    if u128::from(timestamp) + u128::from(ttl.as_secs()) < u128::from(now) {
        return Err(FernetError::Expired {
            timestamp,
            now,
            ttl,
        });
    }
    if u128::from(now) + u128::from(MAX_CLOCK_SKEW_SECS) < u128::from(timestamp) {
        return Err(FernetError::ClockSkew { timestamp, now });
    }
    Ok(())
}

/// Seconds since the Unix epoch, as Python's `int(time.time())`; 0 if the clock is before 1970.
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The msgpack bytes of `{"type": "chat.message", "text": "hi"}`.
    const PLAINTEXT: &[u8] = b"\x82\xa4type\xacchat.message\xa4text\xa2hi";
    const IV: [u8; 16] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15];
    const TIMESTAMP: u64 = 1_700_000_000;
    const TTL: Option<Duration> = Some(Duration::from_secs(70));

    // Made with cryptography 50.0.2 (Python 3.11):
    // fk = lambda k: Fernet(base64.urlsafe_b64encode(hashlib.sha256(k).digest()))
    // fk(key)._encrypt_from_parts(PLAINTEXT, 1700000000, bytes(range(16)))
    const TOKEN_A_TEST_KEY: &[u8] = b"gAAAAABlU_EAAAECAwQFBgcICQoLDA0OD7xN5qdsP4vMv1lrUBvRyXf1h2_qlW7_wIIMSmMyiCEZEPgeTDRIQQl9ANBQi1B2P4FuNiNASovFPP3J1GPi0o8=";
    const TOKEN_ANOTHER_KEY: &[u8] = b"gAAAAABlU_EAAAECAwQFBgcICQoLDA0OD-BnikJHnQE886pPVikPRaunp1rmUkWvhY9VL5PUMdX6X6s889gWjzUmewjJHH0q-3FNMKbfVjCruTrigr_okuo=";
    // fk(b"a-test-key")._encrypt_from_parts(b"", ...) and (b"0123456789abcdef", ...).
    const TOKEN_EMPTY: &[u8] = b"gAAAAABlU_EAAAECAwQFBgcICQoLDA0OD66U0aW9iPrUtKmMXyvrYCUh-wAvRAN72egjxQhdPMmK8fbCWOsbei2z-yrpUuCqtg==";
    const TOKEN_ONE_BLOCK: &[u8] = b"gAAAAABlU_EAAAECAwQFBgcICQoLDA0OD6C9U4GPAypVOleBNVtjJ2n4LbrCJNLdSmcCM8NN7UpisfYGQsTu50ISshHTWxjjsIj7YkEob8y2-eFehsc2irQ=";
    // MultiFernet([fk(b"a-test-key"), fk(b"another-key")]).encrypt(PLAINTEXT), random IV, made
    // at 1795629122.
    const TOKEN_PYTHON_RANDOM: &[u8] = b"gAAAAABrByBCToCGiolYZ4IOYhyhttYHKHfxO5_NjhNOlXybuLHBoB1f4cay2Pr53fc-Ij4_Q2G_vnhRzfl3jasRwtCKJb6biDTrAz6Vc0WUBaRPqd35nDs=";
    const PYTHON_RANDOM_MADE_AT: u64 = 1_795_629_122;

    fn fernet(keys: &[&str]) -> Fernet {
        Fernet::new(keys).unwrap()
    }

    /// Builds a token from raw parts with a valid HMAC, to test the checks behind the HMAC.
    fn signed_token(key: &str, version: u8, timestamp: u64, iv: [u8; 16], body: &[u8]) -> Vec<u8> {
        let key = Key::derive(key.as_bytes());
        let mut data = vec![version];
        data.extend_from_slice(&timestamp.to_be_bytes());
        data.extend_from_slice(&iv);
        data.extend_from_slice(body);
        let mut mac = key.mac();
        mac.update(&data);
        data.extend_from_slice(&mac.finalize().into_bytes());
        BASE64.encode(data).into_bytes()
    }

    fn is_invalid(result: Result<Vec<u8>, FernetError>) -> bool {
        matches!(result, Err(FernetError::InvalidToken))
    }

    #[test]
    fn encrypt_at_matches_python_cryptography() {
        let a = fernet(&["a-test-key"]);
        assert_eq!(a.encrypt_at(PLAINTEXT, TIMESTAMP, IV), TOKEN_A_TEST_KEY);
        assert_eq!(a.encrypt_at(b"", TIMESTAMP, IV), TOKEN_EMPTY);
        assert_eq!(
            a.encrypt_at(b"0123456789abcdef", TIMESTAMP, IV),
            TOKEN_ONE_BLOCK
        );
        let another = fernet(&["another-key"]);
        assert_eq!(
            another.encrypt_at(PLAINTEXT, TIMESTAMP, IV),
            TOKEN_ANOTHER_KEY
        );
        // The second key of a list never encrypts.
        let both = fernet(&["a-test-key", "another-key"]);
        assert_eq!(both.encrypt_at(PLAINTEXT, TIMESTAMP, IV), TOKEN_A_TEST_KEY);
    }

    #[test]
    fn decrypts_python_tokens() {
        let a = fernet(&["a-test-key"]);
        assert_eq!(a.decrypt(TOKEN_A_TEST_KEY, None).unwrap(), PLAINTEXT);
        assert_eq!(a.decrypt(TOKEN_EMPTY, None).unwrap(), b"");
        assert_eq!(
            a.decrypt(TOKEN_ONE_BLOCK, None).unwrap(),
            b"0123456789abcdef"
        );
        assert_eq!(a.decrypt(TOKEN_PYTHON_RANDOM, None).unwrap(), PLAINTEXT);
        let at = PYTHON_RANDOM_MADE_AT + 10;
        assert_eq!(
            a.decrypt_at(TOKEN_PYTHON_RANDOM, TTL, at).unwrap(),
            PLAINTEXT
        );
        let another = fernet(&["another-key"]);
        assert_eq!(another.decrypt(TOKEN_ANOTHER_KEY, None).unwrap(), PLAINTEXT);
    }

    #[test]
    fn encrypt_uses_now_and_a_fresh_iv() {
        let a = fernet(&["a-test-key"]);
        let before = unix_now();
        let (one, two) = (a.encrypt(PLAINTEXT), a.encrypt(PLAINTEXT));
        assert_ne!(one, two);
        assert!(one.starts_with(b"gAAAAA"));
        let data = BASE64.decode(&one).unwrap();
        let timestamp = u64::from_be_bytes(data[1..9].try_into().unwrap());
        assert!((before..=unix_now()).contains(&timestamp));
        assert_eq!(a.decrypt(&one, TTL).unwrap(), PLAINTEXT);
    }

    #[test]
    fn rotated_list_reads_tokens_of_the_old_key() {
        let old = fernet(&["old"]);
        let rotated = fernet(&["new", "old"]);
        let token = old.encrypt(PLAINTEXT);
        assert_eq!(rotated.decrypt(&token, TTL).unwrap(), PLAINTEXT);
        // Tokens of the rotated list are made with the new key, which the old list lacks.
        assert!(is_invalid(old.decrypt(&rotated.encrypt(PLAINTEXT), None)));
        assert!(is_invalid(fernet(&["other"]).decrypt(&token, None)));
        assert!(is_invalid(fernet(&["other"]).decrypt(&token, TTL)));
    }

    #[test]
    fn empty_key_list_is_refused() {
        assert!(matches!(
            Fernet::new(Vec::<&[u8]>::new()),
            Err(FernetError::NoKeys)
        ));
        // An empty key is a key (SHA-256 of nothing), as in channels_redis.
        assert!(Fernet::new([""]).is_ok());
    }

    #[test]
    fn debug_and_errors_show_no_key_material() {
        let f = fernet(&["a-test-key", "another-key"]);
        assert_eq!(format!("{f:?}"), "Fernet { keys: 2, .. }");
        let err = f.decrypt(b"garbage", None).unwrap_err();
        assert!(!err.to_string().contains("a-test-key"));
    }

    #[test]
    fn altering_any_decoded_byte_is_rejected() {
        let a = fernet(&["a-test-key"]);
        let data = BASE64.decode(TOKEN_A_TEST_KEY).unwrap();
        for i in 0..data.len() {
            for flip in [0x01, 0x80, 0xff] {
                let mut altered = data.clone();
                altered[i] ^= flip;
                let token = BASE64.encode(&altered);
                assert!(is_invalid(a.decrypt(token.as_bytes(), None)), "byte {i}");
            }
        }
    }

    #[test]
    fn altering_a_character_is_rejected_unless_only_unused_bits_change() {
        let a = fernet(&["a-test-key"]);
        let data = BASE64.decode(TOKEN_A_TEST_KEY).unwrap();
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=";
        for i in 0..TOKEN_A_TEST_KEY.len() {
            for &c in alphabet.iter().filter(|&&c| c != TOKEN_A_TEST_KEY[i]) {
                let mut token = TOKEN_A_TEST_KEY.to_vec();
                token[i] = c;
                // Python also ignores the unused bits of the last character, so a token
                // that decodes to the same bytes is the same token.
                let same_bytes = BASE64.decode(&token).is_ok_and(|d| d == data);
                let result = a.decrypt(&token, None);
                if same_bytes {
                    assert_eq!(result.unwrap(), PLAINTEXT);
                } else {
                    assert!(is_invalid(result), "char {i} -> {}", c as char);
                }
            }
        }
    }

    #[test]
    fn truncated_tokens_are_rejected() {
        let a = fernet(&["a-test-key"]);
        for len in 0..TOKEN_A_TEST_KEY.len() {
            assert!(
                is_invalid(a.decrypt(&TOKEN_A_TEST_KEY[..len], None)),
                "{len}"
            );
        }
        let data = BASE64.decode(TOKEN_A_TEST_KEY).unwrap();
        for len in 0..data.len() {
            let token = BASE64.encode(&data[..len]);
            assert!(is_invalid(a.decrypt(token.as_bytes(), None)), "{len} bytes");
        }
    }

    #[test]
    fn malformed_base64_is_rejected() {
        let a = fernet(&["a-test-key"]);
        let unpadded = TOKEN_A_TEST_KEY.strip_suffix(b"=").unwrap();
        // Python: binascii.Error "Incorrect padding", then InvalidToken.
        assert!(is_invalid(a.decrypt(unpadded, None)));
        let mut extra_pad = TOKEN_A_TEST_KEY.to_vec();
        extra_pad.push(b'=');
        assert!(is_invalid(a.decrypt(&extra_pad, None)));
        // Python would drop these characters; no encoder produces them, so they are refused.
        let mut newline = TOKEN_A_TEST_KEY.to_vec();
        newline.push(b'\n');
        assert!(is_invalid(a.decrypt(&newline, None)));
        let standard = TOKEN_A_TEST_KEY
            .iter()
            .map(|&c| match c {
                b'-' => b'+',
                b'_' => b'/',
                c => c,
            })
            .collect::<Vec<_>>();
        assert!(is_invalid(a.decrypt(&standard, None)));
        for garbage in [&b""[..], b"not a token!", b"====", b"\xff\xfe", b"gAAAAA"] {
            assert!(is_invalid(a.decrypt(garbage, None)));
        }
    }

    #[test]
    fn checks_behind_the_hmac_reject_authentic_tokens() {
        let a = fernet(&["a-test-key"]);
        let ciphertext =
            Aes128CbcEnc::new(&Key::derive(b"a-test-key").encryption.into(), &IV.into())
                .encrypt_padded_vec_mut::<Pkcs7>(b"hi");
        // Version 0x80 is the only one; the control token proves the rest is well formed.
        let good = signed_token("a-test-key", 0x80, TIMESTAMP, IV, &ciphertext);
        assert_eq!(a.decrypt(&good, None).unwrap(), b"hi");
        let wrong_version = signed_token("a-test-key", 0x81, TIMESTAMP, IV, &ciphertext);
        assert!(is_invalid(a.decrypt(&wrong_version, None)));
        // A ciphertext that is empty, or not whole blocks.
        for body in [
            &ciphertext[..0],
            &ciphertext[..15],
            &[ciphertext.as_slice(), b"x"].concat(),
        ] {
            let token = signed_token("a-test-key", 0x80, TIMESTAMP, IV, body);
            assert!(is_invalid(a.decrypt(&token, None)));
        }
        // A block whose last byte is 0 decrypts to invalid PKCS7 padding.
        let unpadded = Aes128CbcEnc::new(&Key::derive(b"a-test-key").encryption.into(), &IV.into())
            .encrypt_padded_vec_mut::<cbc::cipher::block_padding::NoPadding>(&[0; 16]);
        let bad_padding = signed_token("a-test-key", 0x80, TIMESTAMP, IV, &unpadded);
        assert!(is_invalid(a.decrypt(&bad_padding, None)));
    }

    #[test]
    fn ttl_limits_age_and_future_skew() {
        let a = fernet(&["a-test-key"]);
        let token = TOKEN_A_TEST_KEY;
        assert!(a.decrypt_at(token, TTL, TIMESTAMP + 70).is_ok());
        assert!(matches!(
            a.decrypt_at(token, TTL, TIMESTAMP + 71),
            Err(FernetError::Expired { timestamp: TIMESTAMP, now, .. }) if now == TIMESTAMP + 71
        ));
        // Fractions of a second are dropped, like an int ttl in Python.
        let ttl = Some(Duration::from_millis(70_999));
        assert!(matches!(
            a.decrypt_at(token, ttl, TIMESTAMP + 71),
            Err(FernetError::Expired { .. })
        ));
        assert!(a.decrypt_at(token, TTL, TIMESTAMP - 60).is_ok());
        assert!(matches!(
            a.decrypt_at(token, TTL, TIMESTAMP - 61),
            Err(FernetError::ClockSkew {
                timestamp: TIMESTAMP,
                ..
            })
        ));
        // Without a ttl neither rule applies, as in cryptography.
        assert!(a.decrypt_at(token, None, 0).is_ok());
        assert!(a.decrypt_at(token, None, u64::MAX).is_ok());
        // The age is judged only on authentic tokens.
        assert!(is_invalid(fernet(&["other"]).decrypt_at(
            token,
            TTL,
            u64::MAX
        )));
    }

    #[test]
    fn age_arithmetic_does_not_overflow() {
        let a = fernet(&["a-test-key"]);
        let future = a.encrypt_at(b"x", u64::MAX, IV);
        assert!(matches!(
            a.decrypt_at(&future, TTL, 0),
            Err(FernetError::ClockSkew { .. })
        ));
        assert!(a.decrypt_at(&future, TTL, u64::MAX).is_ok());
        let ancient = a.encrypt_at(b"x", 0, IV);
        assert!(
            a.decrypt_at(&ancient, Some(Duration::MAX), u64::MAX)
                .is_ok()
        );
        assert!(matches!(
            a.decrypt_at(&ancient, TTL, u64::MAX),
            Err(FernetError::Expired { .. })
        ));
    }

    proptest! {
        #[test]
        fn round_trips_any_plaintext(
            plaintext in proptest::collection::vec(any::<u8>(), 0..300),
            key in ".*",
            timestamp in any::<u64>(),
            iv in any::<[u8; 16]>(),
        ) {
            let f = Fernet::new([key.as_str(), "old"]).unwrap();
            let token = f.encrypt_at(&plaintext, timestamp, iv);
            prop_assert_eq!(f.decrypt_at(&token, None, 0).unwrap(), plaintext.clone());
            prop_assert_eq!(
                Fernet::new(["new", key.as_str()]).unwrap().decrypt_at(&token, TTL, timestamp).unwrap(),
                plaintext
            );
        }

        #[test]
        fn arbitrary_input_is_rejected_without_panicking(
            token in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            prop_assert!(is_invalid(fernet(&["a-test-key"]).decrypt(&token, TTL)));
        }

        #[test]
        fn well_formed_forgeries_are_rejected(
            mut data in proptest::collection::vec(any::<u8>(), 1..200),
        ) {
            // Valid base64 and version byte, so the HMAC check is what rejects these.
            data[0] = VERSION;
            let token = BASE64.encode(&data);
            prop_assert!(is_invalid(fernet(&["a-test-key"]).decrypt(token.as_bytes(), None)));
        }
    }
}
