//! The handshake's request headers as a connection's scope keeps them.
//!
//! A [`HeaderMap`] holds each value in an allocation of its own and its entries in a table
//! sized for growth: for a handshake's 6–15 headers about 0.8–1.5 KiB, kept for as long as the
//! connection lives, while most consumers never look at them after the handshake. Here every
//! name and value sits in one allocation, and the map is built the first time a consumer asks
//! for it ([`Scope::headers`](super::Scope::headers)).

use std::sync::OnceLock;

use axum::http::{HeaderMap, HeaderName, HeaderValue};

/// A value's flag byte: marked sensitive (kept from the request, so logging still hides it).
const SENSITIVE: u8 = 1;

/// Request headers in one allocation: per header, a flag byte, the name's and the value's
/// lengths (`u32`, little-endian), the name, the value; in the order of the request's
/// [`HeaderMap`] (a name's values together, in order).
#[derive(Debug, Clone, Default)]
pub(crate) struct CompactHeaders {
    raw: Box<[u8]>,
    /// Boxed: a `HeaderMap` inline is about 100 bytes in every scope, built or not.
    map: OnceLock<Box<HeaderMap>>,
}

impl CompactHeaders {
    /// A copy of `headers` that owns its bytes (hyper's values are slices of its read buffer,
    /// which would stay alive with them).
    pub(crate) fn new(headers: &HeaderMap) -> Self {
        let size: usize = headers
            .iter()
            .map(|(name, value)| 9 + name.as_str().len() + value.len())
            .sum();
        let mut raw = Vec::with_capacity(size);
        for (name, value) in headers {
            // hyper refuses a request whose headers are larger than its read buffer, so no
            // name or value comes near 4 GiB; one that did would be cut to its first 4 GiB.
            let name = clip(name.as_str().as_bytes());
            let value_bytes = clip(value.as_bytes());
            raw.push(if value.is_sensitive() { SENSITIVE } else { 0 });
            raw.extend_from_slice(&(name.len() as u32).to_le_bytes());
            raw.extend_from_slice(&(value_bytes.len() as u32).to_le_bytes());
            raw.extend_from_slice(name);
            raw.extend_from_slice(value_bytes);
        }
        Self {
            raw: raw.into_boxed_slice(),
            map: OnceLock::new(),
        }
    }

    /// Every header, `(name, value, sensitive)`, a name repeated once per value.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&str, &[u8], bool)> {
        let mut rest = &self.raw[..];
        std::iter::from_fn(move || {
            let (&flags, after) = rest.split_first()?;
            let (name_len, after) = split_u32(after)?;
            let (value_len, after) = split_u32(after)?;
            let (name, after) = after.split_at_checked(name_len)?;
            let (value, after) = after.split_at_checked(value_len)?;
            rest = after;
            // Names come from a `HeaderName`: lowercase ASCII.
            Some((
                std::str::from_utf8(name).unwrap_or_default(),
                value,
                flags & SENSITIVE != 0,
            ))
        })
    }

    /// The values of `name` (lowercase), in order.
    pub(crate) fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.iter()
            .filter(move |(n, _, _)| *n == name)
            .map(|(_, value, _)| value)
    }

    /// The headers as a map, built on the first call.
    pub(crate) fn map(&self) -> &HeaderMap {
        self.map.get_or_init(|| {
            let mut map = HeaderMap::new();
            for (name, value, sensitive) in self.iter() {
                // Both were a valid name and value when they were stored.
                let (Ok(name), Ok(mut value)) = (
                    HeaderName::from_bytes(name.as_bytes()),
                    HeaderValue::from_bytes(value),
                ) else {
                    continue;
                };
                value.set_sensitive(sensitive);
                map.append(name, value);
            }
            Box::new(map)
        })
    }
}

/// At most the first 4 GiB of `bytes` (their length must fit the `u32` it is stored as).
fn clip(bytes: &[u8]) -> &[u8] {
    &bytes[..bytes.len().min(u32::MAX as usize)]
}

/// A little-endian `u32` length off the front of `bytes`.
fn split_u32(bytes: &[u8]) -> Option<(usize, &[u8])> {
    let (head, rest) = bytes.split_first_chunk::<4>()?;
    Some((u32::from_le_bytes(*head) as usize, rest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::header;
    use proptest::prelude::Just;

    fn sample() -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.append(header::HOST, HeaderValue::from_static("chat.example"));
        headers.append(header::ORIGIN, HeaderValue::from_static("http://a.example"));
        headers.append("x-many", HeaderValue::from_static("1"));
        headers.append("x-many", HeaderValue::from_static("2"));
        headers.append("x-empty", HeaderValue::from_static(""));
        let mut cookie = HeaderValue::from_static("session=secret");
        cookie.set_sensitive(true);
        headers.append(header::COOKIE, cookie);
        headers.append(
            "x-bytes",
            HeaderValue::from_bytes(b"caf\xc3\xa9 \x80\xff").expect("obs-text is allowed"),
        );
        headers
    }

    #[test]
    fn the_map_is_the_request_s_every_value_in_order_and_sensitivity() {
        let headers = sample();
        let compact = CompactHeaders::new(&headers);
        let map = compact.map();
        assert_eq!(*map, headers);
        let many: Vec<_> = map.get_all("x-many").iter().collect();
        assert_eq!(many, ["1", "2"]);
        assert!(map[header::COOKIE].is_sensitive());
        assert!(!map[header::ORIGIN].is_sensitive());
        assert_eq!(map["x-bytes"].as_bytes(), b"caf\xc3\xa9 \x80\xff");
        // Built once.
        assert!(std::ptr::eq(map, compact.map()));
    }

    #[test]
    fn iteration_and_lookup_need_no_map() {
        let compact = CompactHeaders::new(&sample());
        let names: Vec<_> = compact.iter().map(|(name, _, _)| name).collect();
        assert_eq!(
            names,
            [
                "host", "origin", "x-many", "x-many", "x-empty", "cookie", "x-bytes"
            ]
        );
        let many: Vec<_> = compact.get_all("x-many").collect();
        assert_eq!(many, [b"1", b"2"]);
        assert_eq!(compact.get_all("x-empty").collect::<Vec<_>>(), [b""]);
        assert_eq!(compact.get_all("absent").count(), 0);
        assert!(compact.map.get().is_none());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            cases: 256,
            failure_persistence: None,
            ..Default::default()
        })]

        /// Any headers a request can carry (any valid names, any value bytes HTTP allows,
        /// repeated names, sensitive or not) come back as the same map, in the same order.
        #[test]
        fn any_headers_round_trip(
            entries in proptest::collection::vec(
                (
                    "[a-z0-9!#$%&'*+.^_`|~-]{1,40}",
                    proptest::collection::vec(
                        proptest::prop_oneof![Just(b'\t'), 0x20u8..0x7f, 0x80u8..=0xff],
                        0..64,
                    ),
                    proptest::bool::ANY,
                ),
                0..30,
            )
        ) {
            let mut headers = HeaderMap::new();
            for (name, value, sensitive) in &entries {
                let name = HeaderName::from_bytes(name.as_bytes()).expect("a token");
                let mut value = HeaderValue::from_bytes(value).expect("field bytes");
                value.set_sensitive(*sensitive);
                headers.append(name, value);
            }
            let compact = CompactHeaders::new(&headers);
            let listed: Vec<_> = compact.iter().map(|(n, v, s)| (n.to_owned(), v.to_vec(), s)).collect();
            let expected: Vec<_> = headers
                .iter()
                .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec(), v.is_sensitive()))
                .collect();
            proptest::prop_assert_eq!(listed, expected);
            let map = compact.map();
            proptest::prop_assert_eq!(map, &headers);
            for (a, b) in map.iter().zip(headers.iter()) {
                proptest::prop_assert_eq!(a.1.is_sensitive(), b.1.is_sensitive());
            }
        }
    }

    #[test]
    fn no_headers() {
        let compact = CompactHeaders::new(&HeaderMap::new());
        assert_eq!(compact.iter().count(), 0);
        assert!(compact.map().is_empty());
    }
}
