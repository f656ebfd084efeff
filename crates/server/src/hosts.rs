//! The `Host` check of WebSocket handshakes, against DNS rebinding: Django's `ALLOWED_HOSTS`.
//!
//! A page on `http://evil.example:8080` whose name the attacker re-points at `127.0.0.1` (or at
//! an address on a private network) can make a browser open a WebSocket to a server there, and
//! that handshake carries `Host: evil.example:8080` and `Origin: http://evil.example:8080`. The
//! default Origin policy (the Origin must name the request's own host) cannot tell that from a
//! real page of the server's, so the Host itself must be one the server knows it serves:
//!
//! * **`--allowed-hosts` given:** its entries, with Django's rules: `example.com` exactly,
//!   `.example.com` that domain and its subdomains, `*` any host. The port is not compared.
//! * **Not given (the default):** `localhost` and its subdomains, and any IP address (IPv4, or
//!   IPv6 in brackets). A rebinding attack needs a name it controls; a client that names the
//!   server by address (the bind address, or whatever address a proxy or a user typed) is not
//!   one. Real names must be listed.
//!
//! The check applies when `--allowed-hosts` is given, and under the default Origin policy. With
//! `--allowed-origins` set and no `--allowed-hosts`, the Origin is compared with a fixed list,
//! which a rebinding page cannot pass, so the Host is not checked (as before). A handshake whose
//! Host is not allowed gets HTTP 400, as Django answers a disallowed host.

use std::net::IpAddr;

use axum::http::{HeaderMap, header};

/// One `--allowed-hosts` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    /// `*`.
    Any,
    /// `example.com`.
    Exact(String),
    /// `.example.com`: the domain and its subdomains (stored without the dot).
    Domain(String),
}

/// The configured Host rules.
#[derive(Debug, Clone)]
pub(crate) struct HostPolicy {
    /// `None`: the default set (IP addresses and `localhost`).
    patterns: Option<Vec<Pattern>>,
    /// Whether handshakes are checked at all.
    check: bool,
}

impl HostPolicy {
    /// The policy for `--allowed-hosts` `patterns`, given whether `--allowed-origins` is set.
    pub(crate) fn new(patterns: &[String], origins_configured: bool) -> Self {
        let parsed: Vec<Pattern> = patterns.iter().filter_map(|p| parse(p).ok()).collect();
        Self {
            check: !patterns.is_empty() || !origins_configured,
            patterns: (!patterns.is_empty()).then_some(parsed),
        }
    }

    /// Whether a handshake with these request headers names a host this server serves.
    pub(crate) fn allows(&self, headers: &HeaderMap) -> bool {
        if !self.check {
            return true;
        }
        let mut values = headers.get_all(header::HOST).iter();
        let (Some(value), None) = (values.next(), values.next()) else {
            return false;
        };
        let Some(host) = value.to_str().ok().and_then(host_of) else {
            return false;
        };
        match &self.patterns {
            None => is_ip(&host) || host == "localhost" || host.ends_with(".localhost"),
            Some(patterns) => patterns.iter().any(|p| match p {
                Pattern::Any => true,
                Pattern::Exact(name) => host == *name,
                Pattern::Domain(domain) => {
                    host == *domain
                        || host
                            .strip_suffix(domain.as_str())
                            .is_some_and(|sub| sub.ends_with('.'))
                }
            }),
        }
    }
}

/// Checks one `--allowed-hosts` entry (clap's value parser).
pub(crate) fn validate_pattern(pattern: &str) -> Result<String, String> {
    parse(pattern).map(|_| pattern.to_owned())
}

fn parse(pattern: &str) -> Result<Pattern, String> {
    let p = pattern.trim().to_ascii_lowercase();
    if p == "*" {
        return Ok(Pattern::Any);
    }
    if p.starts_with("*.") {
        return Err(format!(
            "{pattern:?}: write {:?} for a domain and its subdomains",
            &p[1..]
        ));
    }
    if p.contains("://") || p.contains('/') {
        return Err(format!(
            "{pattern:?}: give a host name such as example.com, without scheme or path"
        ));
    }
    let (name, domain) = match p.strip_prefix('.') {
        Some(rest) => (rest, true),
        None => (p.as_str(), false),
    };
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'[' | b']' | b':'));
    if !valid {
        return Err(format!("{pattern:?} is not a host name"));
    }
    let name = host_of(name).ok_or_else(|| format!("{pattern:?} is not a host name"))?;
    Ok(if domain {
        Pattern::Domain(name)
    } else {
        Pattern::Exact(name)
    })
}

/// The host of a `Host` value, lowercased, without its port and without a trailing dot;
/// `None` if it is not `host[:port]`.
fn host_of(value: &str) -> Option<String> {
    let value = value.trim().to_ascii_lowercase();
    let host = if let Some(rest) = value.strip_prefix('[') {
        // [v6]:port
        let end = rest.find(']')?;
        let after = &rest[end + 1..];
        if !(after.is_empty() || after.strip_prefix(':').is_some_and(is_port)) {
            return None;
        }
        format!("[{}]", &rest[..end])
    } else {
        let (host, port) = match value.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (value.as_str(), None),
        };
        if port.is_some_and(|p| !is_port(p)) || host.contains(':') {
            return None;
        }
        host.to_owned()
    };
    let host = host.strip_suffix('.').unwrap_or(&host).to_owned();
    let ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'[' | b']' | b':'));
    ok.then_some(host)
}

fn is_port(port: &str) -> bool {
    !port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit())
}

fn is_ip(host: &str) -> bool {
    match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => host.parse::<IpAddr>().is_ok_and(|ip| ip.is_ipv4()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn with_host(host: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_str(host).unwrap());
        headers
    }

    #[test]
    fn by_default_addresses_and_localhost_only() {
        let policy = HostPolicy::new(&[], false);
        for ok in [
            "127.0.0.1:8080",
            "10.1.2.3",
            "[::1]:8080",
            "[2001:db8::1]",
            "localhost:8080",
            "LOCALHOST",
            "app.localhost:1",
            "localhost.",
        ] {
            assert!(policy.allows(&with_host(ok)), "{ok}");
        }
        for bad in [
            "evil.example:8080",
            "evil.example",
            "localhost.evil.example",
            "127.0.0.1.evil.example",
            "0x7f.1",
            "",
            "a b",
            "[::1",
            "127.0.0.1:80:80",
            "127.0.0.1:x",
        ] {
            assert!(!policy.allows(&with_host(bad)), "{bad}");
        }
        assert!(!policy.allows(&HeaderMap::new()), "no Host");
        let mut two = with_host("127.0.0.1");
        two.append(header::HOST, HeaderValue::from_static("evil.example"));
        assert!(!policy.allows(&two), "two Hosts");
    }

    #[test]
    fn allowed_hosts_have_djangos_rules() {
        let policy = HostPolicy::new(
            &["chat.example.com".to_owned(), ".example.org".to_owned()],
            false,
        );
        for ok in [
            "chat.example.com",
            "chat.example.com:443",
            "CHAT.example.com.",
            "example.org",
            "a.b.example.org:8080",
        ] {
            assert!(policy.allows(&with_host(ok)), "{ok}");
        }
        for bad in [
            "example.com",
            "www.chat.example.com",
            "evilexample.org",
            "example.org.evil.example",
            "127.0.0.1",
            "localhost",
        ] {
            assert!(!policy.allows(&with_host(bad)), "{bad}");
        }
        assert!(HostPolicy::new(&["*".to_owned()], false).allows(&with_host("x.example")));
    }

    #[test]
    fn an_origin_allowlist_alone_turns_the_check_off() {
        assert!(HostPolicy::new(&[], true).allows(&with_host("anything.example")));
        assert!(!HostPolicy::new(&["a.example".to_owned()], true).allows(&with_host("b.example")));
    }

    #[test]
    fn patterns_are_checked() {
        assert!(validate_pattern("example.com").is_ok());
        assert!(validate_pattern(".example.com").is_ok());
        assert!(validate_pattern("*").is_ok());
        for bad in [
            "*.example.com",
            "https://example.com",
            "example.com/x",
            "",
            "a b",
        ] {
            assert!(validate_pattern(bad).is_err(), "{bad}");
        }
    }
}
