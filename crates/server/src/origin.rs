//! The Origin check of WebSocket handshakes, against Cross-Site WebSocket Hijacking: Channels'
//! `OriginValidator` and `AllowedHostsOriginValidator`, decided before the upgrade.
//!
//! A browser sends the page's origin (`scheme://host[:port]`) with every WebSocket handshake and
//! attaches the user's cookies whatever page opened the socket; the Origin header is how a server
//! tells its own pages from another site's.
//!
//! * **No patterns (the default):** the Origin's host and port must equal the request's `Host`
//!   header (the host the pages are served from; nginx forwards it as `$http_host`), with an
//!   `http` or `https` scheme. Without a port, `http` means 80 and `https` 443.
//! * **Patterns** (`--allowed-origins`), with Channels' rules: `*` allows everything (even a
//!   missing, `null` or malformed Origin); `example.com` matches that host on any scheme and
//!   port; `.example.com` matches `example.com` and every subdomain; `https://example.com[:port]`
//!   needs that scheme, host and port (80 for http/ws, 443 for https/wss when omitted). Hosts are
//!   compared whole, never as substrings: `.example.com` does not match `evilexample.com`, and
//!   `example.com` does not match `example.com.evil.example`.
//! * A handshake **without** an Origin header is accepted: it does not come from a browser page,
//!   so it cannot carry a victim's cookies (Centrifugo's rule; Channels refuses it unless `*`).
//! * Anything else is refused with HTTP 403: another origin, `null` (sandboxed frames, `file:`
//!   pages), an Origin that is not exactly `scheme://host[:port]` (paths, user info, control or
//!   non-ASCII bytes), and several Origin headers in one request.

use axum::http::{HeaderMap, HeaderValue, header};

/// Why a handshake's Origin was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OriginRefusal {
    /// A well-formed origin that no rule allows.
    NotAllowed,
    /// The opaque origin `null`.
    Null,
    /// Not `scheme://host[:port]`, or not ASCII.
    Malformed,
    /// More than one Origin header.
    Several,
}

impl OriginRefusal {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            OriginRefusal::NotAllowed => "origin not allowed",
            OriginRefusal::Null => "origin null",
            OriginRefusal::Malformed => "malformed origin",
            OriginRefusal::Several => "several origin headers",
        }
    }
}

/// One `--allowed-origins` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    /// `*`.
    Any,
    /// `example.com` or `.example.com`: the host on any scheme and port.
    Host(String),
    /// `scheme://host[:port]`.
    Exact {
        scheme: String,
        host: String,
        port: Option<u16>,
    },
}

/// The configured Origin rules.
#[derive(Debug, Clone, Default)]
pub(crate) struct OriginPolicy {
    patterns: Vec<Pattern>,
}

impl OriginPolicy {
    /// The policy for `patterns` (already checked by [`validate_pattern`] when they came from the
    /// command line). An invalid pattern set in code is logged and matches nothing: the check
    /// fails closed.
    pub(crate) fn new(patterns: &[String]) -> Self {
        let patterns = patterns
            .iter()
            .filter_map(|p| match parse_pattern(p) {
                Ok(pattern) => Some(pattern),
                Err(error) => {
                    tracing::error!(pattern = ?p, %error, "invalid allowed origin: ignored");
                    None
                }
            })
            .collect();
        Self { patterns }
    }

    /// Whether a handshake with these request headers may upgrade.
    pub(crate) fn check(&self, headers: &HeaderMap) -> Result<(), OriginRefusal> {
        if self.patterns.contains(&Pattern::Any) {
            return Ok(());
        }
        let mut values = headers.get_all(header::ORIGIN).iter();
        let Some(value) = values.next() else {
            return Ok(());
        };
        if values.next().is_some() {
            return Err(OriginRefusal::Several);
        }
        let text = value.to_str().map_err(|_| OriginRefusal::Malformed)?;
        if text == "null" {
            return Err(OriginRefusal::Null);
        }
        let text = text.to_ascii_lowercase();
        let origin = parse_origin(&text, false).ok_or(OriginRefusal::Malformed)?;
        let allowed = if self.patterns.is_empty() {
            same_host(&origin, headers.get(header::HOST))
        } else {
            self.patterns.iter().any(|p| matches(&origin, p))
        };
        if allowed {
            Ok(())
        } else {
            Err(OriginRefusal::NotAllowed)
        }
    }
}

/// Checks one `--allowed-origins` entry (clap's value parser), with a hint for the usual
/// mistakes.
pub(crate) fn validate_pattern(pattern: &str) -> Result<String, String> {
    parse_pattern(pattern).map(|_| pattern.to_owned())
}

fn parse_pattern(pattern: &str) -> Result<Pattern, String> {
    let p = pattern.trim().to_ascii_lowercase();
    if p == "*" {
        return Ok(Pattern::Any);
    }
    if p.is_empty() {
        return Err("empty origin pattern".to_owned());
    }
    if p.starts_with("*.") {
        return Err(format!(
            "{pattern:?}: write {:?} for a domain and its subdomains",
            &p[1..]
        ));
    }
    if p.contains("://") {
        let origin = parse_origin(&p, true).ok_or_else(|| {
            format!("{pattern:?} is not scheme://host[:port] (no path, no user info)")
        })?;
        return Ok(Pattern::Exact {
            scheme: origin.scheme.to_owned(),
            host: origin.host.to_owned(),
            port: origin.port,
        });
    }
    if p.contains(':') && !p.starts_with('[') {
        return Err(format!(
            "{pattern:?}: a bare host matches every port; write scheme://host:port to require one"
        ));
    }
    if !valid_host(&p, true) {
        return Err(format!("{pattern:?} is not a host name"));
    }
    Ok(Pattern::Host(p))
}

/// A parsed `scheme://host[:port]`, lower-cased.
#[derive(Debug, PartialEq, Eq)]
struct Origin<'a> {
    scheme: &'a str,
    host: &'a str,
    port: Option<u16>,
}

impl Origin<'_> {
    /// The explicit port, else the scheme's default.
    fn effective_port(&self) -> Option<u16> {
        self.port.or_else(|| default_port(self.scheme))
    }
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    }
}

/// Parses exactly `scheme://host[:port]` (what browsers send), already lower-cased; `None` for
/// anything else.
fn parse_origin(text: &str, allow_leading_dot: bool) -> Option<Origin<'_>> {
    let (scheme, authority) = text.split_once("://")?;
    let mut chars = scheme.chars();
    if !chars.next()?.is_ascii_lowercase()
        || !chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c))
    {
        return None;
    }
    let (host, port) = split_host_port(authority)?;
    if !valid_host(host, allow_leading_dot) {
        return None;
    }
    Some(Origin { scheme, host, port })
}

/// `host[:port]` or `[v6][:port]`: the host and the port, if any.
fn split_host_port(authority: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = if authority.starts_with('[') {
        let end = authority.find(']')?;
        let (host, rest) = authority.split_at(end + 1);
        match rest {
            "" => (host, None),
            _ => (host, Some(rest.strip_prefix(':')?)),
        }
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    let port = match port {
        None => None,
        Some(p) if !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) => {
            Some(p.parse().ok()?)
        }
        Some(_) => return None,
    };
    Some((host, port))
}

/// A DNS name or IPv4 address (letters, digits, `-`, `_`, `.`), or a bracketed IPv6 address.
fn valid_host(host: &str, allow_leading_dot: bool) -> bool {
    if let Some(inner) = host.strip_prefix('[') {
        return inner.strip_suffix(']').is_some_and(|v6| {
            !v6.is_empty()
                && v6
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        });
    }
    let name = match host.strip_prefix('.') {
        Some(rest) if allow_leading_dot => rest,
        _ => host,
    };
    !name.is_empty()
        && !name.starts_with('.')
        && !name.contains("..")
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
}

/// Django's `is_same_domain`: a pattern with a leading dot matches the domain and its
/// subdomains; any other pattern matches only itself.
fn is_same_domain(host: &str, pattern: &str) -> bool {
    match pattern.strip_prefix('.') {
        Some(domain) => host == domain || host.ends_with(pattern),
        None => host == pattern,
    }
}

fn matches(origin: &Origin<'_>, pattern: &Pattern) -> bool {
    match pattern {
        Pattern::Any => true,
        Pattern::Host(host) => is_same_domain(origin.host, host),
        Pattern::Exact { scheme, host, port } => {
            origin.scheme == scheme
                && origin.effective_port() == port.or_else(|| default_port(scheme))
                && is_same_domain(origin.host, host)
        }
    }
}

/// The default rule: an http(s) origin whose host and port are the request's `Host`.
fn same_host(origin: &Origin<'_>, host_header: Option<&HeaderValue>) -> bool {
    if !matches!(origin.scheme, "http" | "https") {
        return false;
    }
    let Some(host_header) = host_header.and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let host_header = host_header.to_ascii_lowercase();
    let Some((host, port)) = split_host_port(&host_header) else {
        return false;
    };
    // Without a port, the Host is on the default port of the scheme the page was loaded with
    // (a TLS-terminating proxy hides which one: take the origin's).
    host == origin.host && port.or_else(|| default_port(origin.scheme)) == origin.effective_port()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(origin: Option<&[u8]>, host: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_str(host).unwrap());
        if let Some(origin) = origin {
            h.insert(header::ORIGIN, HeaderValue::from_bytes(origin).unwrap());
        }
        h
    }

    fn check(patterns: &[&str], origin: &str, host: &str) -> Result<(), OriginRefusal> {
        let patterns: Vec<String> = patterns.iter().map(|p| (*p).to_owned()).collect();
        OriginPolicy::new(&patterns).check(&headers(Some(origin.as_bytes()), host))
    }

    #[test]
    fn default_policy_allows_the_requested_host_only() {
        let host = "chat.example.com:8080";
        assert_eq!(check(&[], "http://chat.example.com:8080", host), Ok(()));
        assert_eq!(check(&[], "https://chat.example.com:8080", host), Ok(()));
        assert_eq!(check(&[], "HTTP://CHAT.example.com:8080", host), Ok(()));
        for refused in [
            "http://chat.example.com",
            "http://chat.example.com:8081",
            "http://evil.example:8080",
            "http://chat.example.com.evil.example:8080",
            "http://example.com:8080",
            "ftp://chat.example.com:8080",
            "http://chat.example.com:8080/path",
            "http://user@chat.example.com:8080",
        ] {
            assert!(check(&[], refused, host).is_err(), "{refused}");
        }
        // Without a port in Host: the scheme's default port.
        assert_eq!(check(&[], "https://example.com", "example.com"), Ok(()));
        assert_eq!(check(&[], "http://example.com", "example.com"), Ok(()));
        assert!(check(&[], "http://example.com:8080", "example.com").is_err());
        assert_eq!(check(&[], "http://[::1]:8080", "[::1]:8080"), Ok(()));
        assert_eq!(
            check(&[], "null", host),
            Err(OriginRefusal::Null),
            "opaque origins"
        );
    }

    #[test]
    fn a_missing_origin_is_accepted_several_are_not() {
        let policy = OriginPolicy::new(&[]);
        assert_eq!(policy.check(&headers(None, "a")), Ok(()));
        let mut h = headers(Some(b"http://a"), "a");
        h.append(header::ORIGIN, HeaderValue::from_static("http://a"));
        assert_eq!(policy.check(&h), Err(OriginRefusal::Several));
    }

    #[test]
    fn channels_pattern_rules() {
        let p = &[
            "example.com",
            ".example.org",
            "https://app.example.net",
            "http://x.test:8000",
        ];
        let ok = [
            "http://example.com",
            "https://example.com:444",
            "wss://example.com",
            "https://example.org",
            "https://www.example.org",
            "http://a.b.example.org:1",
            "https://app.example.net",
            "https://app.example.net:443",
            "http://x.test:8000",
        ];
        for origin in ok {
            assert_eq!(check(p, origin, "elsewhere"), Ok(()), "{origin}");
        }
        let refused = [
            "http://www.example.com",
            "http://example.com.evil.example",
            "http://evilexample.org",
            "http://example.org.evil.example",
            "http://app.example.net",
            "https://app.example.net:8443",
            "https://www.app.example.net",
            "http://x.test",
            "https://x.test:8000",
            "http://evil.example",
        ];
        for origin in refused {
            assert_eq!(
                check(p, origin, "example.com"),
                Err(OriginRefusal::NotAllowed),
                "{origin}"
            );
        }
        // With patterns, the request's own host is not implied.
        assert!(check(p, "http://localhost:8080", "localhost:8080").is_err());
    }

    #[test]
    fn star_allows_everything() {
        for origin in ["null", "http://evil.example", "garbage"] {
            assert_eq!(check(&["*"], origin, "a"), Ok(()));
        }
    }

    #[test]
    fn control_and_non_ascii_bytes_are_malformed() {
        let policy = OriginPolicy::new(&["example.com".to_owned()]);
        for bad in [
            &b"http://example.com\x85"[..],
            b"http://exa\x85mple.com",
            b"http://example.com\tx",
            b"http://example.com evil",
            b"http://ex%61mple.com",
            b"example.com",
            b"http://",
            b"http://example.com:",
            b"http://example.com:99999",
        ] {
            assert_eq!(
                policy.check(&headers(Some(bad), "example.com")),
                Err(OriginRefusal::Malformed),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn invalid_patterns_are_explained() {
        assert!(
            validate_pattern("*.example.com")
                .unwrap_err()
                .contains(".example.com")
        );
        assert!(validate_pattern("example.com:8080").is_err());
        assert!(validate_pattern("https://example.com/path").is_err());
        assert!(validate_pattern("").is_err());
        for ok in [
            "*",
            "Example.COM",
            ".example.com",
            "https://a.b:1",
            "http://[::1]:80",
        ] {
            assert!(validate_pattern(ok).is_ok(), "{ok}");
        }
        // Set in code instead of on the command line: ignored, so nothing matches.
        let policy = OriginPolicy::new(&["*.example.com".to_owned()]);
        assert!(
            policy
                .check(&headers(Some(b"http://a.example.com"), "a"))
                .is_err()
        );
    }
}
